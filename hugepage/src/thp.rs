//! Transparent huge pages: assemble in a THP staging page, then UFFDIO_MOVE it into place.
//!
//! UFFDIO_COPY always installs 4 KiB pages, even into `MADV_HUGEPAGE` memory, so a THP region
//! filled by COPY never has a single huge page. UFFDIO_MOVE does better: moving a PMD-mapped
//! THP (source and destination 2 MiB-aligned, whole 2 MiB, destination PMD empty) re-links
//! the huge page into the registered region in about a microsecond, and every thread waiting
//! on the range wakes up to a complete huge page.
//!
//! The staging page is a 2 MiB-aligned `MADV_HUGEPAGE` mapping, populated with
//! `MADV_POPULATE_WRITE` so that the kernel allocates (and zeroes) one THP for it before the
//! first chunk is written; `PAGEMAP_SCAN` confirms it is PMD-mapped, and if not it is collapsed
//! (`MADV_COLLAPSE`) while it is still private. After the MOVE the staging range is a hole and
//! is populated again for the next unit.
//!
//! The unit cannot arrive as one THP when its destination PMD is not empty:
//! - some pages of the unit were placed urgently (a fault asked for one 4 KiB page): the
//!   missing pages are copied from the staging page in runs around them (COPY rather than
//!   MOVE keeps the staging THP whole for the next unit);
//! - a thread faulted in the unit and is waiting: with the region *not* THP-eligible (see
//!   below) the fault allocated a page table before sleeping, and the kernel splits the THP
//!   and moves its 512 pages one by one.
//!
//! Either way, once all 512 pages are present the range is collapsed with `MADV_COLLAPSE`
//! (it works on a registered range only when all 512 PTEs are present, none is the zero page
//! and none is write-protected) and ends up PMD-mapped. A thread waiting in the unit wakes when
//! the run holding its page has moved: it only ever sees complete 4 KiB pages of the image.
//!
//! # Why the registered region is not `MADV_HUGEPAGE`
//! A write fault in an empty THP-eligible registered range allocates and zeroes a 2 MiB folio,
//! throws it away and only then reports the userfault (several times slower than a plain
//! userfault: docs/kernel-notes.md). Urgent
//! 4 KiB faults are the latency-critical path, so the region is left without `MADV_HUGEPAGE`
//! (with THP in `madvise` mode it is not eligible); only the staging pages are advised.
//! `MADV_COLLAPSE` ignores the sysfs mode and still works there. The price is paid in the
//! background: a unit whose range saw a fault (or an urgent page) costs a collapse (a new THP and
//! a 2 MiB copy) instead of a 1 us MOVE. With THP `always` every anonymous range is eligible
//! and the fault cost comes back; nothing here can avoid it.
//!
//! # Keeping the urgent path clear
//! A collapse copies the unit while it holds the mmap lock for writing: every fault of the
//! process waits for it. So the staging THP (whose pages are all in the region by then) is
//! freed just before, on the same CPU, and the collapse gets it back from that CPU's free list:
//! memory touched a moment ago, against ten times as long for a THP the guest had not touched
//! for long (a VM that reports free memory to its host takes a host fault per 4 KiB of such a
//! THP; docs/kernel-notes.md has the figures). Populating the next staging THP can cost the
//! same for the same reason; the pager does that between frames, outside its events lock
//! ([`crate::Assembler::prepare_spare`]), so the fault handler never waits for it (the stream
//! does).

use nix::sys::mman::MmapAdvise;
use uffd_core::place::{self, Outcome, PlaceError};
use uffd_core::region::{advise_range, Advice, AdviseError, Region, RegionError, HUGE_2M};
use uffd_core::{PageBitmap, Userfaultfd};

use crate::backing::{PAGE, PAGE_BYTES};
use crate::gathered::Gathered;
use crate::moves::Dst;
use crate::pagemap::Pagemap;
use crate::runs::{pages_placed, place_runs, run_at, MappedRun, Placed};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ThpError {
    /// Mapping, populating or discarding a staging page failed.
    #[error("THP staging page: {0}")]
    Staging(#[from] RegionError),
    /// UFFDIO_MOVE failed for a reason a pager cannot handle.
    #[error(transparent)]
    Move(#[from] PlaceError),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, ThpError>;

const UNIT: u64 = HUGE_2M as u64;
const PAGES: usize = HUGE_2M / PAGE_BYTES;

/// A 2 MiB staging page: one THP gathering one unit's chunks.
#[derive(Debug)]
pub(crate) struct ThpStage {
    region: Region,
    /// Populated since the last MOVE (a THP, or at least 512 zeroed pages, is there).
    ready: bool,
    /// PAGEMAP_SCAN said it is PMD-mapped (for diagnostics: a 4K-mapped staging page still
    /// works, the unit is collapsed after the MOVE).
    huge: bool,
    /// The range has a page table left (its THP was split): the next [`ThpStage::prepare`]
    /// maps a new range instead of faulting 4 KiB pages into that table.
    split: bool,
    /// Times this staging page had to be collapsed after populating (diagnostics).
    pub(crate) collapses: u64,
}

impl ThpStage {
    /// Maps a staging page (nothing allocated yet).
    pub(crate) fn new() -> Result<Self> {
        Ok(ThpStage {
            region: Region::thp(HUGE_2M)?,
            ready: false,
            huge: false,
            split: false,
            collapses: 0,
        })
    }

    /// Makes sure the staging page is populated, preferably as a THP. After this, every byte
    /// of it is zero.
    pub(crate) fn prepare(&mut self, pagemap: &Pagemap) -> Result<()> {
        if self.ready {
            return Ok(());
        }
        if std::mem::take(&mut self.split) {
            // A fault only allocates a THP where the PMD is empty, and the split left a page
            // table here; a new mapping has none (swapping the mapping costs microseconds
            // under the mmap lock).
            self.region = Region::thp(HUGE_2M)?;
        }
        self.populate(pagemap)?;
        if !self.huge {
            // No THP (none was free at fault time: fragmentation): build one now, while the
            // page is private and holds nothing. Last resort: MADV_COLLAPSE holds the mmap
            // lock for writing, and every fault of the process waits for it.
            self.collapses += 1;
            self.huge = advise_range(self.addr(), UNIT, Advice::Collapse).is_ok()
                && pagemap.is_huge(self.addr(), UNIT).unwrap_or(false);
            tracing::debug!(huge = self.huge, "staging page was not a THP; collapsed");
        }
        self.ready = true;
        Ok(())
    }

    fn populate(&mut self, pagemap: &Pagemap) -> Result<()> {
        self.region.advise(
            0,
            HUGE_2M,
            MmapAdvise::MADV_POPULATE_WRITE,
            "MADV_POPULATE_WRITE",
        )?;
        self.huge = pagemap.is_huge(self.addr(), UNIT).unwrap_or(false);
        Ok(())
    }

    /// True when populated since the last MOVE: it holds a previous unit's data.
    pub(crate) fn is_ready(&self) -> bool {
        self.ready
    }

    /// Start of the staging page.
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.region.as_ptr()
    }

    fn addr(&self) -> u64 {
        self.region.addr()
    }

    /// Drops whatever the staging page still holds (pages skipped by a run MOVE).
    fn discard(&mut self) -> Result<()> {
        self.region
            .advise(0, HUGE_2M, MmapAdvise::MADV_DONTNEED, "MADV_DONTNEED")?;
        self.ready = false;
        Ok(())
    }
}

/// Collapses the placed unit at `addr..addr+len` (every page present) into a THP.
///
/// First, every page of it that maps the shared zero page gets a private zeroed page instead:
/// since Linux 6.12 (b1f202060afe, "remap unused subpages to shared zeropage when splitting
/// isolated thp") splitting an anonymous THP maps each zero-filled subpage to the zero page,
/// and a UFFDIO_MOVE of the staging THP into a PMD that has a page table (a thread faulted in
/// the unit and waits there) splits it, then moves those zero-page PTEs as they are. On a
/// userfaultfd-armed range MADV_COLLAPSE refuses any zero-page PTE (SCAN_EXCEED_NONE_PTE:
/// EBUSY), so without this the unit would stay 4K-mapped for good. MADV_POPULATE_WRITE over
/// just those pages breaks the copy-on-write: the content stays zero, nothing is written.
pub(crate) fn collapse_placed(
    pagemap: &Pagemap,
    addr: u64,
    len: u64,
) -> std::result::Result<(), AdviseError> {
    for (start, bytes) in pagemap.zero_page_runs(addr, len).unwrap_or_default() {
        // The run lies in the region and maps the zero page, so it is present: the write
        // faults only replace the zero page by private zeroed pages (no userfault, no content
        // change). It cannot have become none since the scan while a placement holds the
        // events lock for reading: an MADV_DONTNEED zaps only after its REMOVE event is read,
        // which waits for that lock; after a munmap or mremap no mapping is left there and the
        // advice fails (ENOMEM), which is only logged. (The final pass,
        // `Memory::collapse_remaining`, holds no lock: a page zapped there is a plain
        // userfault that the fault handler resolves.)
        if let Err(err) = advise_range(start, bytes, Advice::PopulateWrite) {
            tracing::debug!(%err, "MADV_POPULATE_WRITE of zero pages failed");
        }
    }
    advise_range(addr, len, Advice::Collapse)
}

/// Places one complete unit at `dst` (where its pages are now) from `stage`. `have` holds
/// the gathered pages (the others are present already); `first_page` is the unit's first bit
/// in `received`.
///
/// A unit the application moved in part, or to an address not 2 MiB-aligned (mremap of
/// anonymous memory allows any page-aligned destination), cannot be mapped by one PMD: its
/// pages are copied 4 KiB-wise to where each is, and it counts as not huge.
pub(crate) fn place(
    uffd: &Userfaultfd,
    pagemap: &Pagemap,
    dst: &Dst,
    stage: &mut ThpStage,
    have: &mut Gathered,
    received: &PageBitmap,
    first_page: usize,
) -> Result<Placed> {
    let mut out = Placed::default();
    let huge = dst.huge(UNIT);
    let whole = have.count() == PAGES && (0..PAGES).all(|i| !received.get(first_page + i));
    let mut moved = 0;
    if let (Some(dst), true) = (huge, whole) {
        let src = stage.addr();
        // SAFETY: the staging page belongs to this unit's slot; no Rust reference points into
        // it (chunks are written through raw pointers), so its pages may leave.
        let (outcome, run) = MappedRun::timed(
            0,
            || unsafe { place::move_(uffd, dst, src, UNIT, true) },
            |o| pages_placed(o, PAGES),
        );
        out.mapped.extend(run);
        match outcome? {
            Outcome::Placed(bytes) => {
                // Short when a page appeared since the check (an urgent fault): the kernel
                // stopped there and the runs below finish the unit.
                moved = usize::try_from(bytes / PAGE).unwrap_or(0).min(PAGES);
                for i in 0..moved {
                    received.set(first_page + i);
                    have.remove(i);
                }
                out.pages.placed = moved as u64;
            }
            Outcome::AlreadyPresent => {}
            stop => {
                out.pages.stopped = stop.stop();
                return Ok(out);
            }
        }
    }
    if have.count() > 0 {
        // Some pages are present already (or the unit is not where a PMD can take it), so the
        // unit cannot arrive as one THP: COPY the others around them. MOVE would do too, but
        // it splits the staging THP and leaves it in pieces; after COPY it is whole, and the
        // collapse below can have it (see there).
        let base = stage.as_ptr();
        let runs = place_runs(received, first_page, have, |i, n| {
            run_at(dst, i, n, |addr, first, pages| {
                let offset = first * PAGE_BYTES;
                // SAFETY: `first + pages` <= 512, so the range lies inside the 2 MiB staging
                // page, which nothing writes while this slice lives.
                let bytes =
                    unsafe { std::slice::from_raw_parts(base.add(offset), pages * PAGE_BYTES) };
                // Each run wakes the threads waiting on its own pages: they see complete 4 KiB
                // pages as soon as those are in.
                place::copy(uffd, addr, bytes, true)
            })
        })?;
        out.pages.add(&runs.pages);
        out.mapped.extend(runs.mapped);
        if out.pages.stopped.is_some() {
            return Ok(out);
        }
    }
    // A whole MOVE took the staging THP (its range is a hole now); a MOVE cut short split it
    // and left holes; after COPY runs it is intact, holding this unit's data.
    if moved == PAGES {
        stage.ready = false;
    } else if moved > 0 {
        stage.discard()?;
        stage.split = true;
    }
    match huge {
        Some(dst) if !pagemap.is_huge(dst, UNIT).unwrap_or(false) => {
            // All 512 pages moved but no PMD: the kernel split the staging THP to move them
            // one by one (the destination had a page table).
            stage.split |= moved == PAGES;
            // Free the staging THP first, and collapse on the same CPU: every page of it is
            // in the region now. The collapse allocates a THP and copies the unit into it
            // while it holds the mmap lock for writing, so every fault of the process waits
            // for that copy. The 2 MiB freed here is the first one this CPU's allocator hands
            // out again (its per-CPU list of THPs): memory this thread touched a moment ago.
            // Any other THP may be memory nobody touched for a long time, and on a VM whose
            // guest hands free memory back to the host (free page reporting) every 4 KiB of
            // that is a host fault inside the lock: about ten times as long a write-lock hold
            // with a cold THP, also when the thread moved to the other CPU between the free
            // and the collapse, hence the pinning. The next unit populates a new staging THP
            // outside the lock.
            let _stay = uffd_core::cpu::StayOnCpu::here();
            if stage.ready {
                stage.discard()?;
            }
            if let Err(err) = collapse_placed(pagemap, dst, UNIT) {
                tracing::debug!(%err, "the unit stays 4K-mapped");
                out.not_huge = true;
            }
        }
        Some(_) => {}
        // A collapse would take the aligned 2 MiB around the pages, which hold other units'
        // pages or none of the region's.
        None => out.not_huge = true,
    }
    Ok(out)
}
