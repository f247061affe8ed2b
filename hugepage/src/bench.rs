//! `hugepage bench`: assemble an image from chunks without any server, place it, verify it.
//!
//! The image is a deterministic [`Pattern`]. Its chunks are fed to one [`Assembler`](crate::Assembler) in the
//! chosen [`Order`]; with `preempted`, some pages of each unit are placed "urgently" (as a
//! fault would) right after the unit's first chunk arrives: single 4 KiB pages for THP and
//! anon, whole huge pages through a second assembler for hugetlb. Then every byte of the
//! region is compared with the pattern, and the report says how the pages ended up mapped.
//!
//! Latency per unit is the duration of the `data()` call that completed it: the last chunk's
//! copy into the staging page plus the placement (MOVE, COPY or CONTINUE, and a collapse when
//! the unit was preempted).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use uffd_core::convert::usize_from;
use uffd_core::place::{self, PlaceError, Stop};
use uffd_core::uffd::UffdError;
use uffd_core::{Latency, PageBitmap, Summary, Userfaultfd};

use crate::assembler::{AssembleError, Progress};
use crate::backing::{Backing, HugetlbPlacement, PAGE, PAGE_BYTES};
use crate::chunks::{self, ChunkError, Order};
use crate::memory::{needed_features, Memory, MemoryError};
use crate::pattern::{Mismatch, Pattern};
use crate::pool::{self, PoolError, Raised};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Bad chunk size.
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    /// The hugetlb pool is short.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// No userfaultfd.
    #[error(transparent)]
    Uffd(#[from] UffdError),
    /// Mapping or registering the region failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The assembler failed.
    #[error(transparent)]
    Assemble(#[from] AssembleError),
    /// An urgent 4 KiB placement failed.
    #[error("urgent placement: {0}")]
    Urgent(#[from] PlaceError),
    /// Placement stopped (no events are negotiated, so this should not happen).
    #[error("placement stopped early: {0:?}")]
    Stopped(Stop),
    /// Pages missing after every chunk was fed.
    #[error("{missing} pages were never placed ({pending} units still pending)")]
    Incomplete {
        /// Pages without their bit.
        missing: usize,
        /// Units left in the assembler.
        pending: usize,
    },
    /// The region differs from the image.
    #[error("content check failed: {0}")]
    Content(#[from] Mismatch),
    /// Zero units or pages asked for.
    #[error("nothing to do: --pages must be at least 1")]
    Empty,
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, BenchError>;

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// The backing.
    pub backing: Backing,
    /// The hugetlb placement way.
    pub placement: HugetlbPlacement,
    /// Chunk size in bytes (a multiple of 4 KiB).
    pub chunk: u64,
    /// Chunk order.
    pub order: Order,
    /// Number of units (huge pages; 4 KiB pages for anon).
    pub units: u64,
    /// Units whose chunks are interleaved (shuffled and preempted orders).
    pub window: usize,
    /// Pattern and order seed.
    pub seed: u64,
    /// 4 KiB pages placed urgently in each THP/anon unit with `preempted`.
    pub urgent_per_unit: usize,
    /// Grow the hugetlb pool if it is short (needs root).
    pub may_grow_pool: bool,
    /// Runs of the whole bench, each on a fresh region; the last one is reported. In a VM,
    /// memory the guest has never touched costs a host fault per 4 KiB on first use (~5 ms per
    /// 2 MiB here), so a first round warms it up.
    pub rounds: u32,
}

impl BenchConfig {
    /// Defaults for a backing: 64 units of 2 MiB, 2 of 1 GiB, 1024 pages for anon.
    pub fn new(backing: Backing) -> Self {
        BenchConfig {
            backing,
            placement: HugetlbPlacement::Copy,
            chunk: 64 << 10,
            order: Order::Shuffled,
            units: default_units(backing),
            window: 4,
            seed: 1,
            urgent_per_unit: 4,
            may_grow_pool: true,
            rounds: 2,
        }
    }
}

/// The default number of units for a backing.
pub fn default_units(backing: Backing) -> u64 {
    match backing {
        Backing::Anon => 1024,
        Backing::Thp | Backing::Hugetlb2M => 64,
        Backing::Hugetlb1G => 2,
    }
}

/// What a bench run measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Backing name.
    pub backing: String,
    /// hugetlb placement way, for hugetlb backings.
    pub placement: Option<String>,
    /// Chunk order.
    pub order: String,
    /// Chunk size in bytes.
    pub chunk: u64,
    /// Units assembled.
    pub units: u64,
    /// Unit size in bytes.
    pub unit: u64,
    /// Chunks fed.
    pub chunks: usize,
    /// Rounds run (the figures are the last round's).
    pub rounds: u32,
    /// The pool growth this run did (and undid), if any.
    pub pool_raised: Option<String>,
    /// From the last chunk to placed, in microseconds: one sample per `data()` call that
    /// completed a unit.
    pub latency_us: Summary,
    /// Time spent in the assembler for the whole image (pattern generation excluded).
    pub assemble_ms: f64,
    /// Image bytes per second of assembler time, in MiB/s.
    pub throughput_mib_s: f64,
    /// 4 KiB pages the assembler placed.
    pub pages_placed: u64,
    /// 4 KiB pages it found placed already (urgent ones).
    pub pages_present: u64,
    /// 4 KiB pages placed urgently by the bench.
    pub urgent_pages: u64,
    /// THP units left 4K-mapped (collapse failed).
    pub units_not_huge: u64,
    /// Huge pages mapped as huge pages, from smaps.
    pub huge_pages_mapped: u64,
    /// The same from PAGEMAP_SCAN over exactly the region.
    pub huge_pages_mapped_exact: u64,
    /// Huge pages expected (units, except for anon).
    pub huge_pages_expected: u64,
    /// Bytes compared with the pattern.
    pub verified_bytes: u64,
    /// Time the comparison took.
    pub verify_ms: f64,
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let placement = self
            .placement
            .as_ref()
            .map(|p| format!(" ({p})"))
            .unwrap_or_default();
        writeln!(
            f,
            "{}{placement}: {} units of {}, {} chunks of {} KiB, order {} (round {})",
            self.backing,
            self.units,
            pool::size_name(self.unit),
            self.chunks,
            self.chunk / 1024,
            self.order,
            self.rounds
        )?;
        if let Some(raised) = &self.pool_raised {
            writeln!(f, "  pool: {raised}")?;
        }
        let l = &self.latency_us;
        writeln!(
            f,
            "  last chunk -> placed: p50 {:.1} us, p99 {:.1} us, max {:.1} us ({} units)",
            l.p50, l.p99, l.max, l.count
        )?;
        writeln!(
            f,
            "  assembly: {:.1} ms, {:.0} MiB/s; pages placed {}, found present {}, urgent {}",
            self.assemble_ms,
            self.throughput_mib_s,
            self.pages_placed,
            self.pages_present,
            self.urgent_pages
        )?;
        writeln!(
            f,
            "  mapped as huge pages: {} of {} (smaps), {} (pagemap); not collapsed: {}",
            self.huge_pages_mapped,
            self.huge_pages_expected,
            self.huge_pages_mapped_exact,
            self.units_not_huge
        )?;
        write!(
            f,
            "  verified {} MiB byte for byte in {:.1} ms",
            self.verified_bytes >> 20,
            self.verify_ms
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs the bench; `note` receives remarks worth printing (pool changes).
pub fn run(config: &BenchConfig, note: &mut dyn FnMut(&str)) -> Result<BenchReport> {
    let backing = config.backing;
    let unit = backing.unit();
    if config.units == 0 {
        return Err(BenchError::Empty);
    }
    chunks::unit_chunks(0, unit, config.chunk)?;
    let raised = match backing.hugetlb_size() {
        Some(size) => {
            let raised = pool::ensure_available(
                size,
                config.units,
                config.may_grow_pool && pool::is_root(),
            )?;
            if let Some(r) = &raised {
                note(&format!(
                    "grew the {} hugetlb pool from {} to {} pages (will shrink it back)",
                    pool::size_name(size),
                    r.from,
                    r.to
                ));
            }
            raised
        }
        None => None,
    };
    let mut result = Err(BenchError::Empty);
    for round in 1..=config.rounds.max(1) {
        result = run_with_memory(config, raised.as_ref()).map(|mut report| {
            report.rounds = round;
            report
        });
        if result.is_err() {
            break;
        }
    }
    if let Some(r) = raised {
        if let Err(err) = r.restore() {
            note(&format!("could not shrink the pool back: {err}"));
        }
    }
    result
}

fn run_with_memory(config: &BenchConfig, raised: Option<&Raised>) -> Result<BenchReport> {
    let backing = config.backing;
    let unit = backing.unit();
    let uffd = Arc::new(Userfaultfd::open(needed_features(
        backing,
        config.placement,
    ))?);
    let len = usize::try_from(config.units * unit).map_err(|_| BenchError::Empty)?;
    let memory = Memory::new(backing, len, config.placement)?;
    memory.register(&uffd)?;
    let received = PageBitmap::new(memory.pages());
    let mut assembler = memory.assembler(uffd.clone())?;
    let pattern = Pattern::new(config.seed);
    let plan = chunks::plan(
        config.units,
        unit,
        config.chunk,
        config.order,
        config.window,
        config.seed,
    )?;
    let preempted = config.order == Order::Preempted;
    let urgent = if preempted && backing.hugetlb_size().is_none() {
        chunks::urgent_pages(config.units, unit, config.urgent_per_unit, config.seed)
    } else {
        Vec::new()
    };
    let mut seen = vec![false; usize::try_from(config.units).unwrap_or(0)];
    let mut latency = Latency::new();
    let mut total = Progress::default();
    let mut busy = Duration::ZERO;
    let mut urgent_pages = 0;
    let mut buf = Vec::new();
    for chunk in &plan {
        buf.resize(usize_from(chunk.len), 0);
        pattern.fill(chunk.offset, &mut buf);
        let started = Instant::now();
        let progress = assembler.data(chunk.offset, &buf, &received)?;
        let took = started.elapsed();
        busy += took;
        if progress.units_completed > 0 {
            latency.record(took);
        }
        if let Some(stop) = progress.pages.stopped {
            return Err(BenchError::Stopped(stop));
        }
        total.merge(&progress);
        let u = usize_from(chunk.offset / unit);
        if preempted && !seen[u] {
            seen[u] = true;
            urgent_pages += preempt(config, &memory, &uffd, &received, &pattern, &urgent, u)?;
        }
    }
    let missing = received.len() - received.count();
    if missing > 0 || assembler.pending() > 0 {
        return Err(BenchError::Incomplete {
            missing,
            pending: assembler.pending(),
        });
    }
    let huge_pages_mapped = memory.huge_pages_mapped()?;
    let huge_pages_mapped_exact = memory.huge_pages_mapped_exact()?;
    let started = Instant::now();
    // SAFETY: every bit of `received` is set, so every page is present; nothing writes the
    // region any more.
    let bytes = unsafe { memory.as_slice() };
    pattern.check(0, bytes)?;
    let verify = started.elapsed();
    let image = config.units * unit;
    Ok(BenchReport {
        backing: backing.to_string(),
        placement: backing.hugetlb_size().map(|_| config.placement.to_string()),
        order: config.order.to_string(),
        chunk: config.chunk,
        units: config.units,
        unit,
        chunks: plan.len(),
        rounds: 1,
        pool_raised: raised.map(|r| {
            format!(
                "grew the {} pool from {} to {} pages for this run",
                pool::size_name(r.size),
                r.from,
                r.to
            )
        }),
        latency_us: latency.summary(),
        assemble_ms: ms(busy),
        throughput_mib_s: image as f64 / f64::from(1 << 20) / busy.as_secs_f64().max(1e-9),
        pages_placed: total.pages.placed,
        pages_present: total.pages.present,
        urgent_pages,
        units_not_huge: total.units_not_huge,
        huge_pages_mapped,
        huge_pages_mapped_exact,
        huge_pages_expected: if backing == Backing::Anon {
            0
        } else {
            config.units
        },
        verified_bytes: bytes.len() as u64,
        verify_ms: ms(verify),
    })
}

/// Urgent placements inside unit `u`, right after its first chunk arrived. Returns the pages.
fn preempt(
    config: &BenchConfig,
    memory: &Memory,
    uffd: &Arc<Userfaultfd>,
    received: &PageBitmap,
    pattern: &Pattern,
    urgent: &[Vec<u64>],
    u: usize,
) -> Result<u64> {
    match config.backing.hugetlb_size() {
        None => {
            let mut page = vec![0u8; PAGE_BYTES];
            let mut placed = 0;
            for &p in urgent.get(u).map(Vec::as_slice).unwrap_or(&[]) {
                pattern.page(p, &mut page);
                if let place::Outcome::Placed(_) =
                    place::copy(uffd, memory.addr() + p * PAGE, &page, true)?
                {
                    received.set(usize_from(p));
                    placed += 1;
                }
            }
            Ok(placed)
        }
        // hugetlb faults ask for whole huge pages: every 4th unit arrives whole on a second
        // connection (the demand path) while the background stream has started on it.
        Some(unit) if u % 4 == 1 => {
            let mut demand = memory.assembler(uffd.clone())?;
            let bytes = pattern.bytes(u as u64 * unit, unit);
            let progress = demand.data(u as u64 * unit, &bytes, received)?;
            Ok(progress.pages.placed)
        }
        Some(_) => Ok(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anon_bench_runs_and_verifies() {
        if Userfaultfd::open(0).is_err() {
            return uffd_testkit::skip("no userfaultfd");
        }
        let config = BenchConfig {
            units: 64,
            chunk: 16 << 10,
            order: Order::Preempted,
            rounds: 1,
            ..BenchConfig::new(Backing::Anon)
        };
        let report = run(&config, &mut |_| {}).expect("bench");
        assert_eq!(report.verified_bytes, 64 * 4096);
        assert_eq!(report.pages_placed + report.urgent_pages, 64);
        assert!(report.to_string().contains("anon"));
    }
}
