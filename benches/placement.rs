//! Placement and fault-path costs of userfaultfd inside one process (no network).
//!
//! Run: `cargo bench --bench placement` (root, or access to `/dev/userfaultfd`; hugetlb cases
//! grow the 2M pool if it is too small, which needs root, and shrink it back at the end).
//!
//! Cases, each with mapping, registration and content preparation in untimed setup
//! (`iter_custom` with fresh fixtures in chunks, only the measured loop inside the clock):
//! - `ioctl/*`: the placement ioctls alone, no fault pending: UFFDIO_COPY of 4K, 64K and 2M
//!   (4K pages, anonymous), ZEROPAGE 4K, CONTINUE of shmem 4K and hugetlbfs 2M, MOVE 4K and of
//!   a whole 2M THP, and a WRITEPROTECT protect + un-protect pair on one 4K page.
//! - `fault/<path>/{same_cpu,diff_cpu}`: the full fault round trip (the access that faults,
//!   the handler's poll + read + ioctl, the wake-up), with the faulting thread and the handler
//!   pinned to the same CPU or to two different CPUs. See `uffd_testkit::local`.
//! - `fault/first_touch_4k`: a plain kernel first-touch fault on an unregistered anonymous page,
//!   the baseline.
//!
//! After criterion, each fault case is run once more for a fixed number of faults to report
//! per-fault percentiles, and a markdown summary (criterion medians, per-fault p50/p99,
//! same-CPU vs different-CPU ratios) is printed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode};
use uffd_core::place::{self, Outcome, PlaceError};
use uffd_core::region::HUGE_2M;
use uffd_core::sys::feature;
use uffd_core::{page_size, Modes, Region, Summary, Userfaultfd};
use uffd_testkit::local::{
    self, CpuLoad, FaultPath, Fixture, HugepageReservation, LoadShare, Pinning, RoundTrip, FILL,
    VERIFY_OFFSET,
};

/// 2M pages the hugetlb cases use at most at once (one fixture chunk).
const HUGETLB_CHUNK: usize = 8;
/// Faults per percentile run after criterion (4K paths / 2M paths).
const PERCENTILE_FAULTS: (usize, usize) = (4000, 300);
/// The fault round trips measured.
const FAULT_PATHS: [FaultPath; 6] = [
    FaultPath::Copy4k,
    FaultPath::Zeropage4k,
    FaultPath::ContinueShmem4k,
    FaultPath::Move4k,
    FaultPath::WriteProtect4k,
    FaultPath::HugetlbCopy2m,
];
const PINNINGS: [Pinning; 2] = [Pinning::SameCpu, Pinning::DifferentCpus];

/// One line of the final summary.
struct Row {
    /// Criterion's directory for the case, relative to the criterion home (`ioctl/copy_4k`).
    id: String,
    /// Per-operation percentiles from the separate run, for fault cases.
    per_op: Option<Summary>,
    /// CPU time other processes used while the case ran (a 2-vCPU VM is easily disturbed).
    load: Option<LoadShare>,
}

fn main() {
    // `cargo bench` passes `--bench`; without it criterion runs each case once as a test.
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let mut criterion = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .nresamples(20_000)
        .configure_from_args();

    if let Err(err) = Userfaultfd::open(0) {
        eprintln!("SKIPPED: the placement benchmarks need a userfaultfd: {err}");
        return;
    }
    let cpus = local::allowed_cpus().expect("reading the CPU affinity");
    println!(
        "placement bench: kernel {}, allowed CPUs {cpus:?}, THP {}",
        uffd_core::probe().kernel,
        uffd_core::probe::thp_mode("enabled").unwrap_or_else(|| "unknown".into()),
    );
    let hugepages = match local::reserve_hugepages_2m(HUGETLB_CHUNK as u64) {
        Ok(reservation) => {
            println!("{}", reservation.note);
            Some(reservation)
        }
        Err(err) => {
            println!("hugetlb cases skipped: {err:#}");
            None
        }
    };

    let mut rows = Vec::new();
    ioctl_benches(&mut criterion, hugepages.as_ref(), &mut rows);
    fault_benches(&mut criterion, hugepages.as_ref(), bench_mode, &mut rows);
    criterion.final_summary();
    print_summary(&rows);
    if let Some(reservation) = hugepages {
        if let Some(set_to) = reservation.set_to {
            println!(
                "restoring the 2M hugetlb pool from {set_to} to {} pages",
                reservation.previous
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Placement ioctls alone
// ---------------------------------------------------------------------------------------------

/// Runs `iters` operations on fresh fixtures of at most `chunk` operations each, timing only
/// the loop of operations; `check` verifies each placement afterwards, untimed.
fn chunked<S>(
    iters: u64,
    chunk: usize,
    mut setup: impl FnMut(usize) -> S,
    mut op: impl FnMut(&S, usize),
    mut check: impl FnMut(&S, usize),
) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = usize::try_from(iters).expect("iteration count fits usize");
    while left > 0 {
        let n = left.min(chunk);
        let fixture = setup(n);
        let start = Instant::now();
        for i in 0..n {
            op(&fixture, i);
        }
        total += start.elapsed();
        for i in 0..n {
            check(&fixture, i);
        }
        left -= n;
    }
    total
}

/// Panics unless the ioctl placed exactly `len` bytes.
#[inline]
fn placed(outcome: Result<Outcome, PlaceError>, len: usize) {
    match outcome {
        Ok(Outcome::Placed(n)) if n == len as u64 => {}
        other => panic!("expected Placed({len}), got {other:?}"),
    }
}

/// Source and destination of whole-THP moves: `pages` 2M THPs, and an empty, 2M-aligned,
/// registered range of the same size.
struct ThpMove {
    /// Registered, empty.
    dst: Region,
    /// MADV_HUGEPAGE, populated by one write per 2M (a THP each, if the kernel has them).
    src: Region,
}

impl ThpMove {
    fn new(uffd: &Userfaultfd, pages: usize) -> ThpMove {
        let len = pages * HUGE_2M;
        let src = Region::thp(len).expect("mapping the THP source");
        for i in 0..pages {
            // SAFETY: in bounds of the unregistered source mapping, which nothing borrows; the
            // write fault in a 2M-aligned MADV_HUGEPAGE range allocates a THP.
            unsafe {
                src.as_ptr()
                    .add(i * HUGE_2M + VERIFY_OFFSET)
                    .write_volatile(FILL)
            };
        }
        let dst = Region::anonymous_aligned(len, HUGE_2M).expect("mapping the THP destination");
        uffd.register(dst.addr(), len as u64, Modes::MISSING)
            .expect("registering the THP destination");
        ThpMove { dst, src }
    }

    fn move_one(&self, uffd: &Userfaultfd, i: usize) {
        let offset = (i * HUGE_2M) as u64;
        // SAFETY: the source is private anonymous memory of this process that nothing borrows.
        let outcome = unsafe {
            place::move_(
                uffd,
                self.dst.addr() + offset,
                self.src.addr() + offset,
                HUGE_2M as u64,
                true,
            )
        };
        placed(outcome, HUGE_2M);
    }

    fn verify(&self, i: usize) {
        // SAFETY: the page was moved in (present), in bounds.
        let got = unsafe {
            self.dst
                .as_ptr()
                .add(i * HUGE_2M + VERIFY_OFFSET)
                .read_volatile()
        };
        assert_eq!(got, FILL, "THP {i} moved with the wrong content");
    }
}

/// `AnonHugePages` (kB) of the mapping that contains `addr` (0 if smaps cannot say).
fn anon_huge_kb(addr: u64) -> u64 {
    hugepage::smaps::read_self()
        .ok()
        .and_then(|vmas| vmas.into_iter().find(|v| (v.start..v.end).contains(&addr)))
        .map_or(0, |v| v.anon_huge_kb)
}

/// Checks once, outside the timing, that the THP case really moves THPs.
fn check_thp_move(uffd: &Userfaultfd) {
    const PAGES: usize = 4;
    let fixture = ThpMove::new(uffd, PAGES);
    let src_kb = anon_huge_kb(fixture.src.addr());
    for i in 0..PAGES {
        fixture.move_one(uffd, i);
        fixture.verify(i);
    }
    let dst_kb = anon_huge_kb(fixture.dst.addr());
    let want = (PAGES * HUGE_2M / 1024) as u64;
    if src_kb == want && dst_kb == want {
        println!("move_thp_2m: source and destination both {want} kB AnonHugePages: THPs moved");
    } else {
        println!(
            "WARNING move_thp_2m: AnonHugePages source {src_kb} kB, destination {dst_kb} kB \
             (want {want}): not (all) moved as THPs, the case measures something else"
        );
    }
}

fn ioctl_benches(c: &mut Criterion, hugepages: Option<&HugepageReservation>, rows: &mut Vec<Row>) {
    let uffd = Userfaultfd::open(feature::MOVE | feature::MINOR_SHMEM | feature::MINOR_HUGETLBFS)
        .expect("opening a userfaultfd");
    let uffd = &uffd;
    let ps = page_size();
    let src_4k = vec![FILL; ps];
    let src_64k = vec![FILL; 16 * ps];
    let src_2m = vec![FILL; HUGE_2M];
    check_thp_move(uffd);
    let mut group = c.benchmark_group("ioctl");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1500));
    let mut started = CpuLoad::now().ok();
    let mut add = |id: &str| {
        rows.push(Row {
            id: format!("ioctl/{id}"),
            per_op: None,
            load: started.and_then(|load| load.since().ok()),
        });
        started = CpuLoad::now().ok();
    };

    for (id, src) in [
        ("copy_4k", &src_4k),
        ("copy_64k", &src_64k),
        ("copy_2m", &src_2m),
    ] {
        let per_op = src.len() / ps;
        group.bench_function(id, |b| {
            b.iter_custom(|iters| {
                chunked(
                    iters,
                    (4096 / per_op).max(8),
                    |n| Fixture::new(uffd, FaultPath::Copy4k, n * per_op).expect("fixture"),
                    |f, i| {
                        placed(
                            place::copy(uffd, f.page_addr(i * per_op), src, true),
                            src.len(),
                        )
                    },
                    |f, i| (0..per_op).for_each(|p| f.verify(i * per_op + p).expect("content")),
                )
            })
        });
        add(id);
    }

    group.bench_function("zeropage_4k", |b| {
        b.iter_custom(|iters| {
            chunked(
                iters,
                4096,
                |n| Fixture::new(uffd, FaultPath::Zeropage4k, n).expect("fixture"),
                |f, i| placed(place::zeropage(uffd, f.page_addr(i), ps as u64, true), ps),
                |f, i| f.verify(i).expect("content"),
            )
        })
    });
    add("zeropage_4k");

    group.bench_function("continue_shmem_4k", |b| {
        b.iter_custom(|iters| {
            chunked(
                iters,
                4096,
                |n| Fixture::new(uffd, FaultPath::ContinueShmem4k, n).expect("fixture"),
                |f, i| placed(place::continue_(uffd, f.page_addr(i), ps as u64, true), ps),
                |f, i| f.verify(i).expect("content"),
            )
        })
    });
    add("continue_shmem_4k");

    group.bench_function("move_4k", |b| {
        b.iter_custom(|iters| {
            chunked(
                iters,
                4096,
                |n| Fixture::new(uffd, FaultPath::Move4k, n).expect("fixture"),
                |f, i| {
                    let dst = f.page_addr(i);
                    // SAFETY: the fixture's MOVE sources are private pages nothing borrows.
                    let outcome = unsafe {
                        place::move_(uffd, dst, dst.wrapping_add(f.move_delta()), ps as u64, true)
                    };
                    placed(outcome, ps);
                },
                |f, i| f.verify(i).expect("content"),
            )
        })
    });
    add("move_4k");

    {
        let fixture = Fixture::new(uffd, FaultPath::WriteProtect4k, 1).expect("fixture");
        let addr = fixture.page_addr(0);
        group.bench_function("wp_toggle_4k", |b| {
            // The fixture starts protected: un-protect, protect again.
            b.iter(|| {
                uffd.write_protect(addr, ps as u64, false)
                    .expect("un-protect");
                uffd.write_protect(addr, ps as u64, true).expect("protect");
            })
        });
        add("wp_toggle_4k");
    }

    // The 2M cases spend far longer in setup (allocating and zeroing 2M per page) than in the
    // ioctl. Criterion plans iteration counts from the warm-up's wall time, setup included, so
    // the wall time stays near the measurement time; flat sampling, because the few
    // iterations per sample would make a linear fit meaningless.
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(1500));

    group.bench_function("move_thp_2m", |b| {
        b.iter_custom(|iters| {
            chunked(
                iters,
                16,
                |n| ThpMove::new(uffd, n),
                |f, i| f.move_one(uffd, i),
                |f, i| f.verify(i),
            )
        })
    });
    add("move_thp_2m");

    if hugepages.is_some() {
        let huge = HUGE_2M as u64;
        group.bench_function("continue_hugetlb_2m", |b| {
            b.iter_custom(|iters| {
                chunked(
                    iters,
                    HUGETLB_CHUNK,
                    |n| Fixture::new(uffd, FaultPath::ContinueHugetlb2m, n).expect("fixture"),
                    |f, i| placed(place::continue_(uffd, f.page_addr(i), huge, true), HUGE_2M),
                    |f, i| f.verify(i).expect("content"),
                )
            })
        });
        add("continue_hugetlb_2m");
    }
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// Fault round trips
// ---------------------------------------------------------------------------------------------

fn fault_benches(
    c: &mut Criterion,
    hugepages: Option<&HugepageReservation>,
    bench_mode: bool,
    rows: &mut Vec<Row>,
) {
    let mut group = c.benchmark_group("fault");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));

    for path in FAULT_PATHS {
        if path.needs_hugetlb() && hugepages.is_none() {
            continue;
        }
        for pinning in PINNINGS {
            let mut round_trip = match RoundTrip::new(path, pinning) {
                Ok(rt) => rt,
                Err(err) => {
                    println!("fault/{}/{} skipped: {err:#}", path.name(), pinning.name());
                    continue;
                }
            };
            if path.needs_hugetlb() {
                round_trip = round_trip.with_chunk(HUGETLB_CHUNK);
            }
            let mut ran = false;
            let started = CpuLoad::now().ok();
            group.bench_function(BenchmarkId::new(path.name(), pinning.name()), |b| {
                ran = true;
                b.iter_custom(|iters| {
                    let n = usize::try_from(iters).expect("iteration count fits usize");
                    round_trip
                        .run(n)
                        .expect("fault round trips")
                        .into_iter()
                        .sum()
                })
            });
            if ran {
                let faults = match (bench_mode, path.needs_hugetlb()) {
                    (false, _) => 3,
                    (true, false) => PERCENTILE_FAULTS.0,
                    (true, true) => PERCENTILE_FAULTS.1,
                };
                let samples = round_trip.run(faults).expect("percentile run");
                rows.push(Row {
                    id: format!("fault/{}/{}", path.name(), pinning.name()),
                    per_op: Some(local::summary(&samples)),
                    load: started.and_then(|load| load.since().ok()),
                });
            }
        }
    }

    let cpu = Pinning::SameCpu
        .cpus()
        .ok()
        .and_then(|(faulting, _)| faulting);
    let mut ran = false;
    let started = CpuLoad::now().ok();
    group.bench_function("first_touch_4k", |b| {
        ran = true;
        b.iter_custom(|iters| {
            let n = usize::try_from(iters).expect("iteration count fits usize");
            local::first_touch(n, cpu)
                .expect("first-touch faults")
                .into_iter()
                .sum()
        })
    });
    if ran {
        let faults = if bench_mode { PERCENTILE_FAULTS.0 } else { 3 };
        let samples = local::first_touch(faults, cpu).expect("percentile run");
        rows.push(Row {
            id: "fault/first_touch_4k".into(),
            per_op: Some(local::summary(&samples)),
            load: started.and_then(|load| load.since().ok()),
        });
    }
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// Summary
// ---------------------------------------------------------------------------------------------

/// Where criterion writes its results, found the way criterion finds it (without running
/// `cargo metadata`: `CRITERION_HOME`, `$CARGO_TARGET_DIR/criterion`, `target/criterion`).
fn criterion_home() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir).join("criterion"),
        None => PathBuf::from("target/criterion"),
    }
}

/// Criterion's median time per iteration of a case, in microseconds.
fn criterion_median_us(id: &str) -> Option<f64> {
    let path = criterion_home().join(id).join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["median"]["point_estimate"]
        .as_f64()
        .map(|ns| ns / 1000.0)
}

fn print_summary(rows: &[Row]) {
    let fmt = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.2}"));
    let load = |l: Option<LoadShare>| {
        l.map_or("n/a".to_string(), |l| {
            format!("{:.0}% / {:.0}%", l.others * 100.0, l.steal * 100.0)
        })
    };
    println!("\n## Summary (microseconds)\n");
    println!("Other load: CPU time of other processes / hypervisor steal, in % of all CPUs, while");
    println!("the case ran; anything above a few % makes the numbers suspect.\n");
    println!("| case | criterion median | per-fault p50 | p90 | p99 | faults | other load |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        let median = criterion_median_us(&row.id);
        match row.per_op {
            Some(s) => println!(
                "| {} | {} | {:.2} | {:.2} | {:.2} | {} | {} |",
                row.id,
                fmt(median),
                s.p50,
                s.p90,
                s.p99,
                s.count,
                load(row.load)
            ),
            None => println!(
                "| {} | {} | | | | | {} |",
                row.id,
                fmt(median),
                load(row.load)
            ),
        }
    }

    println!("\n## Different CPUs vs same CPU\n");
    println!(
        "| fault path | same-CPU median | diff-CPU median | ratio | same p50 | diff p50 | ratio |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let find = |id: String| rows.iter().find(|r| r.id == id);
    for path in FAULT_PATHS {
        let same = find(format!("fault/{}/same_cpu", path.name()));
        let diff = find(format!("fault/{}/diff_cpu", path.name()));
        let (Some(same), Some(diff)) = (same, diff) else {
            continue;
        };
        let (sm, dm) = (criterion_median_us(&same.id), criterion_median_us(&diff.id));
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if a > 0.0 => format!("{:.2}x", b / a),
            _ => "n/a".into(),
        };
        let (sp, dp) = (same.per_op.map(|s| s.p50), diff.per_op.map(|s| s.p50));
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            path.name(),
            fmt(sm),
            fmt(dm),
            ratio(sm, dm),
            fmt(sp),
            fmt(dp),
            ratio(sp, dp)
        );
    }
}
