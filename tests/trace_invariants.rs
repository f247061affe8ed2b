//! What a `--trace` of a huge-page run must say, checked on real runs (thp, hugetlb-2m by COPY
//! and by CONTINUE, hugetlb-1g) with the background stream on and two workload threads:
//!
//! - every `fault` has exactly one `resolved`, and none is resolved as a `duplicate`;
//! - a `resolved` (other than `already_present`) is stamped with the `arrival` of the ioctl
//!   that mapped the page, never when a chunk of its unit was merely gathered;
//! - each `touch` (an access that waited) has a fault of its own thread on its page, and ends
//!   after the ioctl that mapped that page began (the woken thread may return before the
//!   placing thread reads its clock after the ioctl, never before the ioctl);
//! - the report: `latency_us.samples` never exceeds `faults`, equals the touches in the
//!   trace, and with `touches_present` adds up to `touches`; the page counters add up to the
//!   image's pages (the padding of the last huge page is not counted).
//!
//! The hugetlb pools are reserved by `scripts/hugepages.sh` (run by `scripts/test.sh`); a short pool skips with the reason
//! (a failure under CI=true).

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use common::{have_uffd, pool_has, synthetic, TestServer};
use fault_client::trace::{self, EventKind, Line, Resolution};
use fault_client::{RunConfig, Workload};
use hugepage::{Backing, HugetlbPlacement};

/// The trace prints tenths of microseconds.
const ROUNDING_US: f64 = 0.1;

fn traced_run(
    image_len: u64,
    backing: Backing,
    placement: HugetlbPlacement,
) -> (fault_client::Report, Vec<Line>) {
    let server = TestServer::start(synthetic(image_len, 5, 0.1));
    let dir = std::env::temp_dir().join(format!(
        "uffd-trace-invariants-{}-{backing}-{placement:?}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let path: PathBuf = dir.join("trace.csv");
    let mut config = RunConfig::new(server.endpoint.clone());
    config.client.backing = backing;
    config.client.hugetlb = placement;
    config.workload = Workload::Random;
    config.threads = 2;
    config.touch = 0.25;
    config.client.background = true;
    config.quiet = true;
    config.client.trace = Some(path.clone());
    let report = fault_client::client::run(&config)
        .unwrap_or_else(|e| panic!("{backing} {placement:?}: {e}"));
    let lines = trace::read(&path).expect("the trace parses");
    let _ = std::fs::remove_dir_all(&dir);
    (report, lines)
}

/// `unit`: the size of the pages faults are reported in (hugetlbfs reports the huge page's
/// start, THP the 4 KiB page).
fn check(name: &str, unit: u64, report: &fault_client::Report, lines: &[Line]) {
    let of = |kind: EventKind| lines.iter().filter(move |l| l.event == kind);
    let page = 4096;

    // The report.
    let samples = report.latency_us.samples;
    assert!(
        samples <= report.faults,
        "{name}: {samples} latency samples but {} faults",
        report.faults
    );
    assert_eq!(
        samples + report.touches_present,
        report.touches,
        "{name}: every touch is a sample or found its page present"
    );
    assert_eq!(
        of(EventKind::Touch).count() as u64,
        samples,
        "{name}: one touch event per sample"
    );
    assert_eq!(
        report.pages_urgent + report.pages_background + report.pages_zero,
        report.pages,
        "{name}: each page of the image counted once, padding never: {report:?}"
    );

    // One resolved per fault, per page.
    let mut per_page: HashMap<u64, (i64, i64)> = HashMap::new();
    for l in of(EventKind::Fault) {
        per_page.entry(l.offset).or_default().0 += 1;
    }
    for l in of(EventKind::Resolved) {
        per_page.entry(l.offset).or_default().1 += 1;
    }
    let wrong: Vec<_> = per_page.iter().filter(|(_, (f, r))| f != r).collect();
    assert!(
        wrong.is_empty(),
        "{name}: pages whose faults and resolutions differ (offset, (faults, resolved)): {:?}",
        &wrong[..wrong.len().min(10)]
    );
    assert!(of(EventKind::Fault).count() as u64 <= report.faults);

    // Arrivals that made pages present (not duplicates), and each page's first one.
    let arrivals: Vec<&Line> = of(EventKind::Arrival)
        .filter(|l| l.resolution != Some(Resolution::Duplicate))
        .collect();
    let mut mapped_by: HashMap<u64, &Line> = HashMap::new();
    for a in &arrivals {
        for p in (a.offset..a.offset + a.len).step_by(page) {
            let first = mapped_by.entry(p).or_insert(a);
            if a.t_us < first.t_us {
                *first = a;
            }
        }
    }

    // Resolutions name the ioctl that mapped the page.
    for r in of(EventKind::Resolved) {
        assert_ne!(r.resolution, Some(Resolution::Duplicate), "{name}: {r:?}");
        if r.resolution == Some(Resolution::AlreadyPresent) {
            continue;
        }
        let arrival = arrivals.iter().any(|a| {
            (a.t_us - r.t_us).abs() < ROUNDING_US / 2.0
                && (a.offset..a.offset + a.len).contains(&r.offset)
                && a.resolution == r.resolution
        });
        assert!(
            arrival,
            "{name}: {r:?} is not stamped with an arrival of its page"
        );
    }

    // Each waiting touch: a fault of its thread on its page, and the page mapped by an ioctl
    // that ended after the touch began and began before it ended.
    let mut touches_of: HashMap<u32, Vec<&Line>> = HashMap::new();
    for t in of(EventKind::Touch) {
        let tid = t
            .tid
            .unwrap_or_else(|| panic!("{name}: a touch without tid: {t:?}"));
        touches_of.entry(tid).or_default().push(t);
    }
    for (tid, touches) in &mut touches_of {
        touches.sort_by(|a, b| a.t_us.total_cmp(&b.t_us));
        for (i, t) in touches.iter().enumerate() {
            let next = touches.get(i + 1).map_or(f64::INFINITY, |n| n.t_us);
            let faulted = of(EventKind::Fault).any(|f| {
                f.tid == Some(*tid)
                    && f.offset == t.offset / unit * unit
                    && f.t_us >= t.t_us
                    && f.t_us < next
            });
            assert!(faulted, "{name}: {t:?} has no fault of its thread");
            let a = mapped_by
                .get(&t.offset)
                .unwrap_or_else(|| panic!("{name}: the page of {t:?} never arrived"));
            let began = a.t_us - a.latency_us.unwrap_or(0.0);
            assert!(
                began <= t.end_us() + ROUNDING_US,
                "{name}: {t:?} ended before the ioctl that mapped its page began: {a:?}"
            );
            assert!(
                a.t_us + ROUNDING_US >= t.t_us,
                "{name}: {t:?} waited on a page mapped before it began: {a:?}"
            );
        }
    }
}

fn image(size: u64) -> u64 {
    // Not a whole number of huge pages: the last one is partly padding.
    size + 3 * 4096
}

#[test]
fn thp_trace_resolves_each_fault_once_at_its_mapping() {
    if !have_uffd() {
        return;
    }
    let (report, lines) = traced_run(image(16 << 20), Backing::Thp, HugetlbPlacement::Copy);
    check("thp", 4096, &report, &lines);
}

#[test]
fn hugetlb_2m_traces_resolve_each_fault_once_at_its_mapping() {
    if !have_uffd() || !pool_has(2 << 20, 9) {
        return;
    }
    for placement in [HugetlbPlacement::Copy, HugetlbPlacement::Continue] {
        let (report, lines) = traced_run(image(16 << 20), Backing::Hugetlb2M, placement);
        check(
            &format!("hugetlb-2m {placement:?}"),
            2 << 20,
            &report,
            &lines,
        );
    }
}

#[test]
fn hugetlb_1g_trace_resolves_each_fault_once_and_counts_no_padding() {
    if !have_uffd() || !pool_has(1 << 30, 1) {
        return;
    }
    let (report, lines) = traced_run(image(4 << 20), Backing::Hugetlb1G, HugetlbPlacement::Copy);
    check("hugetlb-1g", 1 << 30, &report, &lines);
}
