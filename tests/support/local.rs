//! In-process fault paths: a minimal userfaultfd handler thread, CPU pinning, fresh registered
//! regions, and the measurements built from them (fault round trips, plain first-touch faults).
//!
//! # What a fault round trip is
//! The time one thread spends on one access to a page that is not there yet, from just before
//! the access to just after it returns. In between, the kernel queues a fault message and puts
//! the thread to sleep; the [`Handler`] thread returns from `poll(2)`, reads the message and
//! resolves the fault with one ioctl (COPY, ZEROPAGE, CONTINUE, MOVE or WRITEPROTECT), which also
//! wakes the faulting thread. Mapping, registration and preparing the content are done before
//! the clock starts, in a fresh [`Fixture`] per batch of faults.
//!
//! Before each access the faulting thread waits, untimed, until the handler has resolved every
//! earlier fault and gone back to its wait: each sample is one isolated fault, not a pipeline in
//! which the next message is already queued when the handler looks for it
//! ([`RoundTrip::with_gate`] turns this off, [`RoundTrip::with_gap`] adds an idle gap).
//!
//! Where the two threads run matters more than which ioctl resolves the fault: on a VM, waking a
//! thread that sleeps on another vCPU is an inter-processor interrupt, and if that vCPU has
//! halted (nothing else to run), the host must also wake it; so [`Pinning`] puts the threads
//! on the same CPU or on two different CPUs. For the same reason other processes change the
//! results several-fold on a small VM: [`CpuLoad`] tells how busy the machine was meanwhile.
//!
//! # Entry points
//! - [`copy_fault_round_trips`]: N in-process 4K COPY round trips, handler on another CPU; the
//!   in-process term of "remote fault vs (local round trip + TCP request/response)".
//! - [`RoundTrip`]: a handler kept across calls, for repeated measurement (criterion's
//!   `iter_custom`); [`fault_round_trips`] is its one-shot form for any [`FaultPath`].
//! - [`first_touch`]: plain kernel faults on unregistered anonymous pages, the baseline.
//! - [`median`], [`summary`]: percentiles of the returned samples; [`CpuLoad`]: background load.
//! - [`Fixture`], [`Handler`], [`PinGuard`], [`reserve_hugepages_2m`], [`anon_huge_kb`]: the
//!   pieces, for benchmarks that time the placement ioctls alone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use uffd_core::handler::{self, Resolve, GATE_TIMEOUT};
use uffd_core::place::{self, Outcome};
use uffd_core::region::{Memfd, HUGE_2M};
use uffd_core::{page_size, Latency, Modes, Region, Summary, Userfaultfd};

/// The byte every prepared page holds at [`VERIFY_OFFSET`] (COPY sources, CONTINUE page cache,
/// MOVE sources, write-protected pages): the minimal handler's fill byte. Non-zero, so a
/// kernel zero-fill is told apart.
pub use uffd_core::handler::FILL;

/// Where content is checked after a fault; the access itself is at offset 0.
pub const VERIFY_OFFSET: usize = handler::CHECK_OFFSET;

/// The byte a write access stores at offset 0.
const TOUCH: u8 = 0x5A;

// ---------------------------------------------------------------------------------------------
// CPU pinning
// ---------------------------------------------------------------------------------------------

use uffd_core::cpu::set_affinity;
pub use uffd_core::cpu::{allowed_cpus, pin_current_thread};

/// The CPU the calling thread runs on now (`sched_getcpu`), if the kernel says.
pub fn current_cpu() -> Option<usize> {
    // SAFETY: sched_getcpu takes no arguments and has no memory-safety preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).ok()
}

/// Pins the calling thread to one CPU until dropped, then restores its previous mask.
///
/// Must be dropped on the thread that created it (it is `!Send`, like the pin it undoes).
#[derive(Debug)]
pub struct PinGuard {
    previous: Vec<usize>,
    /// Affinity is per thread: restoring it from another thread would pin the wrong one.
    _not_send: std::marker::PhantomData<*const ()>,
}

impl PinGuard {
    /// Pins the calling thread to `cpu`.
    pub fn pin(cpu: usize) -> Result<PinGuard> {
        let previous = allowed_cpus()?;
        pin_current_thread(cpu)?;
        Ok(PinGuard {
            previous,
            _not_send: std::marker::PhantomData,
        })
    }
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        if let Err(err) = set_affinity(&self.previous) {
            eprintln!("warning: could not restore the CPU affinity: {err:#}");
        }
    }
}

/// Where the faulting thread and the handler thread run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pinning {
    /// Both on the first allowed CPU: the handler runs when the faulting thread sleeps, and the
    /// wake-up is a local one (no IPI).
    SameCpu,
    /// Faulting thread on the first allowed CPU, handler on the second: each direction is a
    /// cross-CPU wake-up. The default, because a real pager's handler is not on the faulting
    /// thread's CPU.
    #[default]
    DifferentCpus,
    /// Left to the scheduler.
    Unpinned,
}

impl Pinning {
    /// `(faulting CPU, handler CPU)`, chosen from the calling thread's allowed CPUs.
    pub fn cpus(self) -> Result<(Option<usize>, Option<usize>)> {
        if self == Pinning::Unpinned {
            return Ok((None, None));
        }
        let cpus = allowed_cpus()?;
        match (self, cpus.as_slice()) {
            (Pinning::SameCpu, [first, ..]) => Ok((Some(*first), Some(*first))),
            (Pinning::DifferentCpus, [first, second, ..]) => Ok((Some(*first), Some(*second))),
            _ => bail!("{self:?} needs more CPUs than this thread may use ({cpus:?})"),
        }
    }

    /// A short name for tables: `same_cpu`, `diff_cpu`, `unpinned`.
    pub fn name(self) -> &'static str {
        match self {
            Pinning::SameCpu => "same_cpu",
            Pinning::DifferentCpus => "diff_cpu",
            Pinning::Unpinned => "unpinned",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Huge pages
// ---------------------------------------------------------------------------------------------

const POOL_2M: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB";

fn read_number(path: &str) -> Result<u64> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    text.trim()
        .parse()
        .with_context(|| format!("{path} holds {text:?}, not a number"))
}

/// A grown 2 MiB hugetlb pool; shrinks it back on drop (only if nobody changed it since).
#[derive(Debug)]
pub struct HugepageReservation {
    /// `nr_hugepages` before.
    pub previous: u64,
    /// What this reservation set it to, if it changed anything.
    pub set_to: Option<u64>,
    /// One line saying what was done, for the benchmark's output.
    pub note: String,
}

/// Makes sure at least `pages` 2 MiB huge pages are free in the pool, growing
/// `nr_hugepages` of the 2 MiB pool (the same pool as `/proc/sys/vm/nr_hugepages` when the
/// default huge page size is 2 MiB) if needed. Needs root to grow it.
pub fn reserve_hugepages_2m(pages: u64) -> Result<HugepageReservation> {
    let nr_path = format!("{POOL_2M}/nr_hugepages");
    let previous = read_number(&nr_path)?;
    let free = read_number(&format!("{POOL_2M}/free_hugepages"))?;
    let reserved = read_number(&format!("{POOL_2M}/resv_hugepages"))?;
    let available = free.saturating_sub(reserved);
    if available >= pages {
        return Ok(HugepageReservation {
            previous,
            set_to: None,
            note: format!("2M hugetlb pool: {available} pages available, none added"),
        });
    }
    let wanted = previous + (pages - available);
    std::fs::write(&nr_path, format!("{wanted}\n"))
        .with_context(|| format!("writing {wanted} to {nr_path} (needs root)"))?;
    let got = read_number(&nr_path)?;
    ensure!(
        got >= wanted,
        "asked for {wanted} 2M huge pages, the kernel gave {got} (memory fragmented?)"
    );
    Ok(HugepageReservation {
        previous,
        set_to: Some(got),
        note: format!("2M hugetlb pool: wrote {wanted} to {nr_path} (was {previous}, now {got})"),
    })
}

impl Drop for HugepageReservation {
    fn drop(&mut self) {
        let Some(set_to) = self.set_to else { return };
        let nr_path = format!("{POOL_2M}/nr_hugepages");
        // Someone else resized the pool meanwhile: their setting wins.
        if read_number(&nr_path).ok() != Some(set_to) {
            return;
        }
        if let Err(err) = std::fs::write(&nr_path, format!("{}\n", self.previous)) {
            eprintln!(
                "warning: could not restore {nr_path} to {}: {err}",
                self.previous
            );
        }
    }
}

/// `AnonHugePages` (kB) of the mapping that contains `addr`, from `/proc/self/smaps`: how much
/// of it is backed by transparent huge pages.
pub fn anon_huge_kb(addr: u64) -> Result<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").context("reading /proc/self/smaps")?;
    let mut inside = false;
    for line in smaps.lines() {
        let head = line.split_whitespace().next().unwrap_or("");
        if let Some((start, end)) = head.split_once('-') {
            if let (Ok(start), Ok(end)) =
                (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
            {
                inside = (start..end).contains(&addr);
                continue;
            }
        }
        if inside {
            if let Some(rest) = line.strip_prefix("AnonHugePages:") {
                let kb = rest.trim().trim_end_matches("kB").trim();
                return kb
                    .parse()
                    .with_context(|| format!("AnonHugePages value {kb:?}"));
            }
        }
    }
    bail!("no mapping with AnonHugePages contains {addr:#x}")
}

// ---------------------------------------------------------------------------------------------
// Fault paths and fixtures
// ---------------------------------------------------------------------------------------------

/// Which kind of page a fault finds, and which ioctl resolves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultPath {
    /// Private anonymous 4K page, MISSING; resolved by UFFDIO_COPY of a 4K page. Write access.
    Copy4k,
    /// Private anonymous 4K page, MISSING; resolved by UFFDIO_ZEROPAGE. Read access: a write
    /// would take a second (copy-on-write) fault after the zero page is mapped.
    Zeropage4k,
    /// shmem memfd mapped twice; the page is in the page cache (written through the alias) but
    /// not mapped in the registered mapping, which is registered MINOR; resolved by
    /// UFFDIO_CONTINUE. Write access.
    ContinueShmem4k,
    /// hugetlbfs memfd (2M pages) mapped twice, as [`FaultPath::ContinueShmem4k`]. Write access.
    ContinueHugetlb2m,
    /// Private anonymous 4K page, MISSING; resolved by UFFDIO_MOVE of a populated page from a
    /// source region of this process. Write access.
    Move4k,
    /// A present private anonymous 4K page, write-protected in a range registered WP; resolved
    /// by un-protecting it (UFFDIO_WRITEPROTECT without DONTWAKE). Write access.
    WriteProtect4k,
    /// Private hugetlbfs 2M page, MISSING; resolved by UFFDIO_COPY of 2 MiB. Write access.
    HugetlbCopy2m,
}

impl FaultPath {
    /// Every path, in table order.
    pub const ALL: [FaultPath; 7] = [
        FaultPath::Copy4k,
        FaultPath::Zeropage4k,
        FaultPath::ContinueShmem4k,
        FaultPath::ContinueHugetlb2m,
        FaultPath::Move4k,
        FaultPath::WriteProtect4k,
        FaultPath::HugetlbCopy2m,
    ];

    /// A short name for tables and benchmark ids.
    pub fn name(self) -> &'static str {
        match self {
            FaultPath::Copy4k => "copy_4k",
            FaultPath::Zeropage4k => "zeropage_4k",
            FaultPath::ContinueShmem4k => "continue_shmem_4k",
            FaultPath::ContinueHugetlb2m => "continue_hugetlb_2m",
            FaultPath::Move4k => "move_4k",
            FaultPath::WriteProtect4k => "wp_4k",
            FaultPath::HugetlbCopy2m => "hugetlb_copy_2m",
        }
    }

    /// The page size the fault is resolved in.
    pub fn page_size(self) -> usize {
        match self {
            FaultPath::ContinueHugetlb2m | FaultPath::HugetlbCopy2m => HUGE_2M,
            _ => page_size(),
        }
    }

    /// True when the path needs 2 MiB pages from the hugetlb pool (one per fixture page).
    pub fn needs_hugetlb(self) -> bool {
        self.page_size() == HUGE_2M
    }

    /// The `sys::feature` bits the userfaultfd must negotiate for this path.
    pub fn features(self) -> u64 {
        use uffd_core::sys::feature;
        match self {
            FaultPath::Move4k => feature::MOVE,
            FaultPath::ContinueShmem4k => feature::MINOR_SHMEM,
            FaultPath::ContinueHugetlb2m => feature::MINOR_HUGETLBFS,
            FaultPath::HugetlbCopy2m => feature::MISSING_HUGETLBFS,
            FaultPath::Copy4k | FaultPath::Zeropage4k | FaultPath::WriteProtect4k => 0,
        }
    }

    /// The access that faults: a read for ZEROPAGE, a write otherwise.
    fn writes(self) -> bool {
        self != FaultPath::Zeropage4k
    }

    /// The byte at [`VERIFY_OFFSET`] once the fault is resolved.
    pub fn expected_byte(self) -> u8 {
        match self {
            FaultPath::Zeropage4k => 0,
            _ => FILL,
        }
    }
}

/// Writes one byte of a mapping this process owns.
///
/// # Safety
/// `offset` < `region.len()`, and no Rust reference points into the region. If the page is in a
/// registered range and missing, something must resolve the fault.
unsafe fn poke(region: &Region, offset: usize, value: u8) {
    // SAFETY: forwarded from the caller: in bounds, writable, not borrowed.
    unsafe { region.as_ptr().add(offset).write_volatile(value) }
}

/// A fresh registered region of `pages` pages of one [`FaultPath`], prepared so that the first
/// access to each page takes exactly that kind of fault: nothing of it has been touched through
/// the registered mapping.
///
/// Fields drop in order: the registered mapping is unmapped first, then the alias, the memfd
/// and the MOVE sources. Never drop a fixture while a thread is blocked on a fault in it.
#[derive(Debug)]
pub struct Fixture {
    /// The registered range, the one the faulting thread touches.
    region: Region,
    /// CONTINUE: the second mapping of the memfd, through which the content was written.
    alias: Option<Region>,
    /// CONTINUE: the file behind both mappings.
    memfd: Option<Memfd>,
    /// MOVE: populated private pages at the same offsets as the destination pages.
    source: Option<Region>,
    path: FaultPath,
    pages: usize,
}

impl Fixture {
    /// Maps, prepares and registers `pages` pages for `path` on `uffd` (which must have
    /// negotiated `path.features()`). hugetlb paths need `pages` free 2M pages in the pool.
    pub fn new(uffd: &Userfaultfd, path: FaultPath, pages: usize) -> Result<Fixture> {
        ensure!(pages > 0, "a fixture needs at least one page");
        let page = path.page_size();
        let len = pages
            .checked_mul(page)
            .context("fixture length overflows usize")?;
        let missing = Modes::MISSING;
        let mut fixture = match path {
            FaultPath::Copy4k | FaultPath::Zeropage4k | FaultPath::Move4k => Fixture {
                region: Region::anonymous(len).context("mapping the anonymous range")?,
                alias: None,
                memfd: None,
                source: None,
                path,
                pages,
            },
            FaultPath::HugetlbCopy2m => Fixture {
                region: Region::hugetlb(len, HUGE_2M)
                    .context("mapping private hugetlb memory (is the 2M pool big enough?)")?,
                alias: None,
                memfd: None,
                source: None,
                path,
                pages,
            },
            FaultPath::WriteProtect4k => {
                let region = Region::anonymous(len).context("mapping the anonymous range")?;
                for i in 0..pages {
                    // SAFETY: in bounds; the range is not registered yet, so this is an
                    // ordinary fault; nothing borrows the region.
                    unsafe { poke(&region, i * page + VERIFY_OFFSET, FILL) };
                }
                Fixture {
                    region,
                    alias: None,
                    memfd: None,
                    source: None,
                    path,
                    pages,
                }
            }
            FaultPath::ContinueShmem4k | FaultPath::ContinueHugetlb2m => {
                let huge = (page == HUGE_2M).then_some(HUGE_2M);
                let memfd = Memfd::new("uffd-lab-continue", len, huge)
                    .context("creating the memfd (hugetlb: is the 2M pool big enough?)")?;
                let region = Region::shared(&memfd, len).context("mapping the memfd")?;
                let alias = Region::shared(&memfd, len).context("mapping the memfd alias")?;
                for i in 0..pages {
                    // SAFETY: in bounds of the alias, which is not registered; nothing
                    // borrows it. This puts the page in the page cache.
                    unsafe { poke(&alias, i * page + VERIFY_OFFSET, FILL) };
                }
                Fixture {
                    region,
                    alias: Some(alias),
                    memfd: Some(memfd),
                    source: None,
                    path,
                    pages,
                }
            }
        };
        let modes = match path {
            FaultPath::WriteProtect4k => Modes {
                write_protect: true,
                ..Modes::default()
            },
            FaultPath::ContinueShmem4k | FaultPath::ContinueHugetlb2m => Modes {
                minor: true,
                ..Modes::default()
            },
            _ => missing,
        };
        let (start, len64) = (fixture.region.addr(), len as u64);
        uffd.register(start, len64, modes)
            .with_context(|| format!("registering {} for {}", len, path.name()))?;
        match path {
            FaultPath::WriteProtect4k => uffd
                .write_protect(start, len64, true)
                .context("write-protecting the range")?,
            FaultPath::Move4k => {
                let source = Region::anonymous(len).context("mapping the MOVE sources")?;
                for i in 0..pages {
                    // SAFETY: in bounds; the source is not registered; nothing borrows it.
                    unsafe { poke(&source, i * page + VERIFY_OFFSET, FILL) };
                }
                fixture.source = Some(source);
            }
            _ => {}
        }
        Ok(fixture)
    }

    /// The fault path it was prepared for.
    pub fn path(&self) -> FaultPath {
        self.path
    }

    /// Number of pages.
    pub fn pages(&self) -> usize {
        self.pages
    }

    /// The registered range.
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// Address of page `i` of the registered range.
    pub fn page_addr(&self, i: usize) -> u64 {
        assert!(i < self.pages, "page {i} of {}", self.pages);
        self.region.addr() + (i * self.path.page_size()) as u64
    }

    /// CONTINUE: the unregistered second mapping of the memfd.
    pub fn alias(&self) -> Option<&Region> {
        self.alias.as_ref()
    }

    /// CONTINUE: the memfd behind both mappings.
    pub fn memfd(&self) -> Option<&Memfd> {
        self.memfd.as_ref()
    }

    /// MOVE: the populated source pages, at the same offsets as the destination pages.
    pub fn source(&self) -> Option<&Region> {
        self.source.as_ref()
    }

    /// MOVE: `source - destination` (wrapping), the same for every page; 0 for other paths.
    pub fn move_delta(&self) -> u64 {
        self.source
            .as_ref()
            .map_or(0, |s| s.addr().wrapping_sub(self.region.addr()))
    }

    /// Accesses page `i` the way its path faults (read for ZEROPAGE, write otherwise) and
    /// returns how long the access took. Blocks until something resolves the fault: call it only
    /// while a [`Handler`] serves this fixture's userfaultfd.
    pub fn touch(&self, i: usize) -> Duration {
        assert!(i < self.pages, "page {i} of {}", self.pages);
        // SAFETY: offset 0 of page `i` is inside the mapping (asserted above), which only ever
        // is accessed through raw pointers.
        let ptr = unsafe { self.region.as_ptr().add(i * self.path.page_size()) };
        let start = Instant::now();
        if self.path.writes() {
            // SAFETY: `ptr` is in the writable mapping; nothing borrows it.
            unsafe { ptr.write_volatile(TOUCH) };
        } else {
            // SAFETY: `ptr` is in the readable mapping.
            std::hint::black_box(unsafe { ptr.read_volatile() });
        }
        start.elapsed()
    }

    /// Checks the content of page `i` at [`VERIFY_OFFSET`] after its fault was resolved (or
    /// after a placement ioctl placed it). Do not call it on a page that is still missing and
    /// that nothing will resolve: the read would block forever.
    pub fn verify(&self, i: usize) -> Result<()> {
        assert!(i < self.pages, "page {i} of {}", self.pages);
        let offset = i * self.path.page_size() + VERIFY_OFFSET;
        // SAFETY: in bounds; the page is present (the caller's promise), so the read returns.
        let got = unsafe { self.region.as_ptr().add(offset).read_volatile() };
        let want = self.path.expected_byte();
        ensure!(
            got == want,
            "{}: page {i} holds {got:#04x} at offset {VERIFY_OFFSET}, expected {want:#04x}",
            self.path.name()
        );
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The handler thread
// ---------------------------------------------------------------------------------------------

/// The minimal fault handler of [`uffd_core::handler`] on its own (optionally pinned) thread,
/// resolving each fault with the ioctl of its [`FaultPath`] (which wakes the faulting thread).
/// Stops and joins on drop.
///
/// If resolving fails, the handler records the error and unregisters the faulting page so
/// that the faulting thread is released (by an ordinary fault) instead of sleeping forever;
/// see [`Handler::check`].
#[derive(Debug)]
pub struct Handler {
    inner: handler::Handler,
    path: FaultPath,
    /// MOVE: source minus destination, set per fixture.
    move_delta: Arc<AtomicU64>,
}

impl Handler {
    /// Starts the handler thread for `path` on `uffd`, pinned to `cpu` if given. Returns once
    /// the thread runs (and is pinned).
    pub fn spawn(uffd: Arc<Userfaultfd>, path: FaultPath, cpu: Option<usize>) -> Result<Handler> {
        let move_delta = Arc::new(AtomicU64::new(0));
        let resolve = resolver(path, Arc::clone(&move_delta));
        let inner = handler::Handler::spawn(uffd, path.page_size() as u64, cpu, resolve)
            .with_context(|| format!("fault handler for {}", path.name()))?;
        Ok(Handler {
            inner,
            path,
            move_delta,
        })
    }

    /// Faults resolved so far.
    pub fn resolved(&self) -> u64 {
        self.inner.resolved()
    }

    /// Waits (yielding the CPU) until the handler has resolved at least `resolved` faults and
    /// gone back to its wait.
    pub fn wait_until_waiting(&self, resolved: u64, timeout: Duration) -> Result<()> {
        self.inner
            .wait_until_waiting(resolved, timeout)
            .with_context(|| self.path.name())
    }

    /// Sets where MOVE takes its pages from: `source = destination + delta` (wrapping).
    ///
    /// # Safety
    /// Until it is changed again, every address `fault + delta` for a fault the handler will
    /// see must be private anonymous memory of this process that no Rust reference points
    /// into (the pages leave it), e.g. [`Fixture::move_delta`] of the fixture being touched.
    pub unsafe fn set_move_delta(&self, delta: u64) {
        self.move_delta.store(delta, Ordering::Release);
    }

    /// The first error the handler met, if any.
    pub fn check(&self) -> Result<()> {
        self.inner.check().with_context(|| self.path.name())
    }
}

/// Resolves a fault of `path` on the page at its start with the path's ioctl.
fn resolver(path: FaultPath, move_delta: Arc<AtomicU64>) -> Resolve {
    let page = path.page_size() as u64;
    let source = vec![FILL; path.page_size()];
    Box::new(move |uffd, start| {
        Ok(match path {
            FaultPath::Copy4k | FaultPath::HugetlbCopy2m => {
                place::copy(uffd, start, &source, true)?
            }
            FaultPath::Zeropage4k => place::zeropage(uffd, start, page, true)?,
            FaultPath::ContinueShmem4k | FaultPath::ContinueHugetlb2m => {
                place::continue_(uffd, start, page, true)?
            }
            FaultPath::Move4k => {
                let src = start.wrapping_add(move_delta.load(Ordering::Acquire));
                // SAFETY: `set_move_delta`'s contract: `src` is a populated private page of
                // this process that nothing borrows.
                unsafe { place::move_(uffd, start, src, page, true) }?
            }
            FaultPath::WriteProtect4k => {
                uffd.write_protect(start, page, false)?;
                Outcome::Placed(page)
            }
        })
    })
}

// ---------------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------------

/// A userfaultfd, a [`Handler`] and a CPU placement, kept across calls to [`RoundTrip::run`].
#[derive(Debug)]
pub struct RoundTrip {
    /// Declared first: stopped and joined before the descriptor can close.
    handler: Handler,
    uffd: Arc<Userfaultfd>,
    path: FaultPath,
    pinning: Pinning,
    faulting_cpu: Option<usize>,
    /// Pages per fixture: larger runs are split, with unmap and re-map between (untimed).
    chunk: usize,
    /// Faults measured so far (= faults the handler must have resolved before the next one).
    touched: u64,
    /// Wait for the handler to be back in its wait before each access.
    gate: bool,
    /// Untimed busy wait after the gate, before each access.
    gap: Duration,
}

impl RoundTrip {
    /// Opens a userfaultfd with `path.features()` and starts a handler, both threads placed
    /// by `pinning`. hugetlb paths need free 2M pages (see [`reserve_hugepages_2m`]): up to
    /// [`RoundTrip::chunk`] of them during a run.
    pub fn new(path: FaultPath, pinning: Pinning) -> Result<RoundTrip> {
        let (faulting_cpu, handler_cpu) = pinning.cpus()?;
        let uffd = Arc::new(
            Userfaultfd::open(path.features())
                .with_context(|| format!("opening a userfaultfd for {}", path.name()))?,
        );
        let handler = Handler::spawn(Arc::clone(&uffd), path, handler_cpu)?;
        Ok(RoundTrip {
            handler,
            uffd,
            path,
            pinning,
            faulting_cpu,
            chunk: if path.needs_hugetlb() { 4 } else { 1024 },
            touched: 0,
            gate: true,
            gap: Duration::ZERO,
        })
    }

    /// Sets how many pages one fixture holds (default 1024 base pages or 4 huge pages).
    pub fn with_chunk(mut self, pages: usize) -> RoundTrip {
        self.chunk = pages.max(1);
        self
    }

    /// Whether each access waits (untimed) until the handler is back in its wait (default
    /// true). Without it, faults follow each other back to back.
    pub fn with_gate(mut self, gate: bool) -> RoundTrip {
        self.gate = gate;
        self
    }

    /// An untimed busy wait before each access, after the gate (default none).
    pub fn with_gap(mut self, gap: Duration) -> RoundTrip {
        self.gap = gap;
        self
    }

    /// Pages per fixture.
    pub fn chunk(&self) -> usize {
        self.chunk
    }

    /// The fault path.
    pub fn path(&self) -> FaultPath {
        self.path
    }

    /// The CPU placement.
    pub fn pinning(&self) -> Pinning {
        self.pinning
    }

    /// Measures `n` fault round trips, one sample per fault, on the calling thread (pinned for
    /// the duration if the [`Pinning`] says so). Every resolved page's content is checked.
    pub fn run(&mut self, n: usize) -> Result<Vec<Duration>> {
        let mut samples = Vec::with_capacity(n);
        self.run_into(n, &mut samples)?;
        Ok(samples)
    }

    /// As [`RoundTrip::run`], appending to `samples`.
    pub fn run_into(&mut self, n: usize, samples: &mut Vec<Duration>) -> Result<()> {
        let _pin = self.faulting_cpu.map(PinGuard::pin).transpose()?;
        let mut left = n;
        while left > 0 {
            let pages = left.min(self.chunk);
            let fixture = Fixture::new(&self.uffd, self.path, pages)?;
            // SAFETY: the fixture's MOVE sources are populated private pages of this process
            // that nothing borrows, and the fixture outlives every fault taken below.
            unsafe { self.handler.set_move_delta(fixture.move_delta()) };
            for i in 0..pages {
                self.handler
                    .wait_until_waiting(self.touched, GATE_TIMEOUT)?;
                let took = fixture.touch(i);
                self.touched += 1;
                self.handler.check()?;
                fixture.verify(i)?;
                samples.push(took);
            }
            left -= pages;
        }
        Ok(())
    }
}

/// Measures `n` round trips of `path` with a fresh userfaultfd and handler.
pub fn fault_round_trips(path: FaultPath, pinning: Pinning, n: usize) -> Result<Vec<Duration>> {
    RoundTrip::new(path, pinning)?.run(n)
}

/// Measures `n` in-process 4K COPY fault round trips with the handler on a different CPU from
/// the faulting thread (the calling thread, pinned meanwhile): one duration per fault, from
/// just before the access to just after it returns.
pub fn copy_fault_round_trips(n: usize) -> Result<Vec<Duration>> {
    fault_round_trips(FaultPath::Copy4k, Pinning::DifferentCpus, n)
}

/// Measures `n` plain first-touch faults (writes to unregistered private anonymous 4K pages:
/// the kernel allocates and zeroes a page), pinned to `cpu` if given. The baseline the
/// userfaultfd round trips are compared with.
pub fn first_touch(n: usize, cpu: Option<usize>) -> Result<Vec<Duration>> {
    const CHUNK: usize = 4096;
    let _pin = cpu.map(PinGuard::pin).transpose()?;
    let page = page_size();
    let mut samples = Vec::with_capacity(n);
    let mut left = n;
    while left > 0 {
        let pages = left.min(CHUNK);
        let region = Region::anonymous(pages * page).context("mapping the anonymous range")?;
        for i in 0..pages {
            // SAFETY: in bounds; an unregistered private mapping that nothing borrows.
            let ptr = unsafe { region.as_ptr().add(i * page) };
            let start = Instant::now();
            // SAFETY: as above.
            unsafe { ptr.write_volatile(TOUCH) };
            samples.push(start.elapsed());
        }
        left -= pages;
    }
    Ok(samples)
}

/// A snapshot of CPU time, to tell afterwards how busy the machine was with *other* work while
/// something was measured (other processes on a 2-vCPU VM change fault costs several-fold).
#[derive(Debug, Clone, Copy)]
pub struct CpuLoad {
    /// Busy ticks of all CPUs (`user + nice + system + irq + softirq`, from `/proc/stat`).
    busy: u64,
    /// All ticks of all CPUs, idle and steal included.
    total: u64,
    /// Steal ticks: time the hypervisor ran something else.
    steal: u64,
    /// This process's `utime + stime` (`/proc/self/stat`).
    own: u64,
}

/// How busy the machine was between two [`CpuLoad`] snapshots, as fractions of all CPUs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadShare {
    /// CPU time of other processes (and the kernel on their behalf), 0.0..=1.0 of all CPUs.
    pub others: f64,
    /// CPU time the hypervisor stole.
    pub steal: f64,
}

impl CpuLoad {
    /// Takes a snapshot.
    pub fn now() -> Result<CpuLoad> {
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let line = stat
            .lines()
            .find(|l| l.starts_with("cpu "))
            .context("/proc/stat has no `cpu` line")?;
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        let at = |i: usize| f.get(i).copied().unwrap_or(0);
        // user nice system idle iowait irq softirq steal (guest time is inside user already)
        let busy = at(0) + at(1) + at(2) + at(5) + at(6);
        let total = (0..8).map(at).sum();
        let own_stat =
            std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let after = own_stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .context("malformed /proc/self/stat")?;
        let own_fields: Vec<&str> = after.split_whitespace().collect();
        let tick = |i: usize| {
            own_fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok(CpuLoad {
            busy,
            total,
            steal: at(7),
            own: tick(11) + tick(12),
        })
    }

    /// What other processes and the hypervisor used since `self`.
    pub fn since(&self) -> Result<LoadShare> {
        let now = CpuLoad::now()?;
        let total = now.total.saturating_sub(self.total).max(1) as f64;
        let others = now
            .busy
            .saturating_sub(self.busy)
            .saturating_sub(now.own.saturating_sub(self.own));
        Ok(LoadShare {
            others: others as f64 / total,
            steal: now.steal.saturating_sub(self.steal) as f64 / total,
        })
    }
}

/// The median of `samples` (zero when empty), by the nearest rank like every percentile of
/// the workspace ([`uffd_core::stats`]).
pub fn median(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    uffd_core::stats::rank(sorted.len(), 0.5).map_or(Duration::ZERO, |r| sorted[r - 1])
}

/// p50/p90/p99/max/mean of `samples` in microseconds.
pub fn summary(samples: &[Duration]) -> Summary {
    let mut latency = Latency::new();
    for &sample in samples {
        latency.record(sample);
    }
    latency.summary()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skip_without_uffd() -> bool {
        match Userfaultfd::open(0) {
            Ok(_) => false,
            Err(err) => {
                uffd_testkit::skip(&err.to_string());
                true
            }
        }
    }

    #[test]
    fn pin_guard_restores_the_mask() -> Result<()> {
        let before = allowed_cpus()?;
        let first = *before.first().context("no CPU allowed")?;
        {
            let _pin = PinGuard::pin(first)?;
            assert_eq!(allowed_cpus()?, vec![first]);
            assert_eq!(current_cpu(), Some(first));
        }
        assert_eq!(allowed_cpus()?, before);
        Ok(())
    }

    #[test]
    fn every_4k_path_round_trips() -> Result<()> {
        if skip_without_uffd() {
            return Ok(());
        }
        for path in FaultPath::ALL.into_iter().filter(|p| !p.needs_hugetlb()) {
            // Two chunks, to cross a fixture boundary.
            let samples = RoundTrip::new(path, Pinning::Unpinned)?
                .with_chunk(3)
                .run(5)?;
            assert_eq!(samples.len(), 5, "{}", path.name());
        }
        Ok(())
    }

    #[test]
    fn hugetlb_paths_round_trip() -> Result<()> {
        if skip_without_uffd() {
            return Ok(());
        }
        let _pool = match reserve_hugepages_2m(2) {
            Ok(pool) => pool,
            Err(err) => {
                uffd_testkit::skip(&format!("{err:#}"));
                return Ok(());
            }
        };
        for path in FaultPath::ALL.into_iter().filter(|p| p.needs_hugetlb()) {
            let samples = RoundTrip::new(path, Pinning::Unpinned)?
                .with_chunk(2)
                .run(3)?;
            assert_eq!(samples.len(), 3, "{}", path.name());
        }
        Ok(())
    }

    #[test]
    fn first_touch_counts() -> Result<()> {
        assert_eq!(first_touch(10, None)?.len(), 10);
        Ok(())
    }

    #[test]
    fn median_of_odd_and_empty() {
        let ms = Duration::from_millis;
        assert_eq!(median(&[ms(3), ms(1), ms(2)]), ms(2));
        assert_eq!(median(&[]), Duration::ZERO);
    }
}
