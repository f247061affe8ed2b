//! Shared set-up for the integration tests: a registered region of a given backing (growing
//! the hugetlb pool when root), chunk lists, feeding and verification.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use hugepage::pool::{self, PoolError};
use hugepage::{
    Assembler, Backing, HugetlbPlacement, Memory, MemoryError, Pattern, Progress, PAGE, PAGE_BYTES,
};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use uffd_core::{PageBitmap, Userfaultfd};

/// A registered region with its descriptor and bitmap.
pub struct Setup {
    pub memory: Memory,
    pub uffd: Arc<Userfaultfd>,
    pub received: PageBitmap,
}

impl Setup {
    pub fn assembler(&self) -> Assembler {
        self.memory.assembler(self.uffd.clone()).expect("assembler")
    }
}

/// hugetlb mappings reserve their pages when created: checking the pool and mapping must not
/// interleave between the tests of one binary.
static POOL: Mutex<()> = Mutex::new(());

/// Maps and registers `units` units of `backing`, or skips (returns None) when the machine
/// cannot: no userfaultfd, or a hugetlb pool that is short and cannot be grown.
pub fn setup(backing: Backing, placement: HugetlbPlacement, units: u64) -> Option<Setup> {
    let _guard = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(size) = backing.hugetlb_size() {
        match pool::ensure_available(size, units, pool::is_root()) {
            Ok(Some(raised)) => eprintln!(
                "grew the {} pool from {} to {} pages",
                pool::size_name(size),
                raised.from,
                raised.to
            ),
            Ok(None) => {}
            Err(err) => {
                uffd_testkit::skip(&err.to_string());
                return None;
            }
        }
    }
    let features = hugepage::memory::needed_features(backing, placement);
    let uffd = match Userfaultfd::open(features) {
        Ok(uffd) => Arc::new(uffd),
        Err(err) => {
            uffd_testkit::skip(&err.to_string());
            return None;
        }
    };
    let len = usize::try_from(units * backing.unit()).expect("fits");
    let memory = match Memory::new(backing, len, placement) {
        Ok(memory) => memory,
        Err(err @ MemoryError::Pool(PoolError::Short { .. })) => {
            uffd_testkit::skip(&err.to_string());
            return None;
        }
        Err(err) => panic!("mapping {backing}: {err}"),
    };
    memory.register(&uffd).expect("register");
    let received = PageBitmap::new(memory.pages());
    Some(Setup {
        memory,
        uffd,
        received,
    })
}

/// One delivery: data from the pattern, or a zero run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub offset: u64,
    pub len: u64,
    pub zero: bool,
}

/// Cuts the image (`units` units) into chunks of random sizes (1..=max_pages pages), never
/// crossing a unit boundary or the edge of a zero range, and shuffles them all together.
/// Pages inside `zero` (byte ranges) arrive as zero runs.
pub fn random_chunks(
    units: u64,
    unit: u64,
    max_pages: u64,
    zero: &[(u64, u64)],
    seed: u64,
) -> Vec<Delivery> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let pages = units * unit / PAGE;
    let mut all = Vec::new();
    let mut p = 0;
    while p < pages {
        let is_zero = in_zero(p * PAGE, zero);
        let mut end = p + 1;
        while end < pages
            && end - p < max_pages
            && !(end * PAGE).is_multiple_of(unit)
            && in_zero(end * PAGE, zero) == is_zero
        {
            end += 1;
        }
        let len = rng.random_range(1..=end - p);
        all.push(Delivery {
            offset: p * PAGE,
            len: len * PAGE,
            zero: is_zero,
        });
        p += len;
    }
    all.shuffle(&mut rng);
    all
}

/// Whether image offset `at` lies in one of the `zero` byte ranges.
pub fn in_zero(at: u64, zero: &[(u64, u64)]) -> bool {
    zero.iter()
        .any(|&(start, len)| start <= at && at < start + len)
}

/// Feeds one delivery, generating its bytes from the pattern.
pub fn deliver(
    assembler: &mut Assembler,
    d: Delivery,
    pattern: &Pattern,
    received: &PageBitmap,
) -> Progress {
    let progress = if d.zero {
        assembler.zero(d.offset, d.len, received)
    } else {
        assembler.data(d.offset, &pattern.bytes(d.offset, d.len), received)
    }
    .expect("assemble");
    assert_eq!(progress.pages.stopped, None, "no events are negotiated");
    progress
}

/// Feeds every delivery; returns the summed progress.
pub fn feed(
    assembler: &mut Assembler,
    deliveries: &[Delivery],
    pattern: &Pattern,
    received: &PageBitmap,
) -> Progress {
    let mut total = Progress::default();
    for &d in deliveries {
        total.merge(&deliver(assembler, d, pattern, received));
    }
    total
}

/// Checks every byte of the region: pages in `zero` are zero, the rest is the pattern.
pub fn verify(memory: &Memory, received: &PageBitmap, pattern: &Pattern, zero: &[(u64, u64)]) {
    assert!(
        received.is_full(),
        "{} pages missing",
        received.len() - received.count()
    );
    // SAFETY: every page is present (all bits set) and nothing writes the region now.
    let bytes = unsafe { memory.as_slice() };
    for (p, page) in bytes.chunks(PAGE_BYTES).enumerate() {
        let offset = p as u64 * PAGE;
        if in_zero(offset, zero) {
            hugepage::pattern::check_zero(offset, page).expect("zero page");
        } else {
            pattern.check(offset, page).expect("content");
        }
    }
}

/// Asserts that every unit is mapped as a huge page, by smaps and by PAGEMAP_SCAN.
pub fn assert_all_huge(memory: &Memory) {
    let units = memory.units();
    assert_eq!(memory.huge_pages_mapped().expect("smaps"), units, "smaps");
    assert_eq!(
        memory.huge_pages_mapped_exact().expect("pagemap"),
        units,
        "pagemap"
    );
}
