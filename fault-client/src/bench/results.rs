//! What a bench measured: its rows, its ratios, and the medians over runs.

use std::time::Duration;

use hugepage::Backing;
use serde::Serialize;
use uffd_core::Latency;

use super::cases::{Case, Stream};
use crate::report::Report;

/// Latency samples of a local case and the wall time of its loop.
#[derive(Debug)]
pub(super) struct Measured {
    pub(super) latency: Latency,
    pub(super) elapsed: Duration,
}

/// One measured case. The keys are a contract for scripts: add, never rename.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The case name (see the module documentation).
    pub case: String,
    /// `local`, `remote` or `transfer`.
    pub kind: &'static str,
    /// `anon`, `thp`, `hugetlb-2m`; null for local cases.
    pub backing: Option<&'static str>,
    /// The background stream was on.
    pub background: bool,
    /// The server preempted the stream for urgent answers (null without a stream).
    pub preempt: Option<bool>,
    /// Runs measured (remote cases: each column is the median over the runs; local: 1).
    pub runs: u64,
    /// Runs that never finished (a fault was never resolved); not in `runs`. A case is not
    /// run again after a hang, so this is 0 or 1.
    pub hung: u64,
    /// Median fault latency in microseconds (null when nothing faulted or skipped).
    pub p50_us: Option<f64>,
    /// 99th percentile fault latency in microseconds.
    pub p99_us: Option<f64>,
    /// Mean fault latency in microseconds.
    pub mean_us: Option<f64>,
    /// Latency samples, all runs together.
    pub samples: u64,
    /// Faults per run (local: one per sample; remote: messages read from the userfaultfd).
    pub faults: u64,
    /// Faults of all runs together (to compare with `samples`).
    #[serde(skip)]
    pub(super) faults_total: u64,
    /// Touches that found their page present (no fault, no sample), all runs together.
    pub touches_present: u64,
    /// Wall time of a run: local, the measuring loop; remote, the run as `run` reports it.
    pub elapsed_s: Option<f64>,
    /// Bytes received per second, in MiB/s (null for local cases).
    pub throughput_mib_s: Option<f64>,
    /// Huge pages mapped huge at the end (null for anon and local cases).
    pub huge_pages_mapped: Option<u64>,
    /// Huge pages the region holds (null for anon and local cases).
    pub huge_pages_total: Option<u64>,
    /// Why the case was not measured (null when it was).
    pub skipped: Option<String>,
}

impl Row {
    pub(super) fn empty(case: Case) -> Row {
        Row {
            case: case.id(),
            kind: case.kind(),
            backing: case.backing().map(Backing::name),
            background: case.background(),
            preempt: case.preempt(),
            runs: 0,
            hung: 0,
            p50_us: None,
            p99_us: None,
            mean_us: None,
            samples: 0,
            faults: 0,
            faults_total: 0,
            touches_present: 0,
            elapsed_s: None,
            throughput_mib_s: None,
            huge_pages_mapped: None,
            huge_pages_total: None,
            skipped: None,
        }
    }

    pub(super) fn skipped(case: Case, why: String) -> Row {
        Row {
            skipped: Some(why),
            ..Row::empty(case)
        }
    }

    pub(super) fn local(case: Case, measured: &Measured) -> Row {
        let s = measured.latency.summary();
        Row {
            runs: 1,
            p50_us: Some(s.p50),
            p99_us: Some(s.p99),
            mean_us: Some(s.mean),
            samples: s.count,
            faults: s.count,
            faults_total: s.count,
            elapsed_s: Some(measured.elapsed.as_secs_f64()),
            ..Row::empty(case)
        }
    }

    /// Each column is the median over `reports` (latencies over the runs that faulted).
    pub(super) fn remote(case: Case, reports: &[Report], hung: u64) -> Row {
        let faulted: Vec<&Report> = reports
            .iter()
            .filter(|r| r.latency_us.samples > 0)
            .collect();
        let latency = |f: fn(&Report) -> f64| median(faulted.iter().map(|r| f(r)));
        let all = |f: fn(&Report) -> f64| median(reports.iter().map(f));
        let whole = |f: fn(&Report) -> u64| median_u64(reports.iter().map(f));
        let huge = reports.iter().any(|r| r.huge_pages_total > 0);
        Row {
            runs: reports.len() as u64,
            hung,
            p50_us: latency(|r| r.latency_us.p50),
            p99_us: latency(|r| r.latency_us.p99),
            mean_us: latency(|r| r.latency_us.mean),
            samples: reports.iter().map(|r| r.latency_us.samples).sum(),
            faults: whole(|r| r.faults).unwrap_or(0),
            faults_total: reports.iter().map(|r| r.faults).sum(),
            touches_present: reports.iter().map(|r| r.touches_present).sum(),
            elapsed_s: all(|r| r.elapsed_s),
            throughput_mib_s: all(|r| r.throughput_mib_s),
            huge_pages_mapped: huge.then(|| whole(|r| r.huge_pages_mapped)).flatten(),
            huge_pages_total: huge.then(|| whole(|r| r.huge_pages_total)).flatten(),
            ..Row::empty(case)
        }
    }
}

/// The median of `values` by the nearest rank (the lower middle one of an even count, as
/// every percentile of the workspace: [`uffd_core::stats`]); None when empty.
pub(super) fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let values: Vec<f64> = values.collect();
    uffd_core::stats::percentile(&values, 0.5)
}

pub(super) fn median_u64(values: impl Iterator<Item = u64>) -> Option<u64> {
    let mut sorted: Vec<u64> = values.collect();
    sorted.sort_unstable();
    uffd_core::stats::rank(sorted.len(), 0.5).map(|r| sorted[r - 1])
}

/// The ratios the comparison is read by (null when a case they need was skipped).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Ratios {
    /// `remote-anon` p50 / `local-roundtrip-4k` p50.
    pub remote_anon_p50_over_local_p50: Option<f64>,
    /// `transfer-thp` elapsed / `transfer-anon` elapsed.
    pub thp_over_anon_transfer_time: Option<f64>,
    /// `remote-hugetlb-2m` p50 / `remote-anon` p50.
    pub hugetlb_2m_p50_over_anon_p50: Option<f64>,
    /// `remote-thp-bg` p99 / `remote-thp-bg-nopreempt` p99.
    pub thp_bg_p99_preempt_over_no_preempt: Option<f64>,
}

impl Ratios {
    pub(super) fn from_rows(rows: &[Row]) -> Ratios {
        let get = |case: Case, field: fn(&Row) -> Option<f64>| {
            let id = case.id();
            rows.iter().find(|r| r.case == id).and_then(field)
        };
        let p50 = |r: &Row| r.p50_us;
        let p99 = |r: &Row| r.p99_us;
        let elapsed = |r: &Row| r.elapsed_s;
        let (anon, thp) = (Backing::Anon, Backing::Thp);
        Ratios {
            remote_anon_p50_over_local_p50: ratio(
                get(Case::Fault(anon, Stream::Off), p50),
                get(Case::LocalRoundTrip, p50),
            ),
            thp_over_anon_transfer_time: ratio(
                get(Case::Transfer(thp), elapsed),
                get(Case::Transfer(anon), elapsed),
            ),
            hugetlb_2m_p50_over_anon_p50: ratio(
                get(Case::Fault(Backing::Hugetlb2M, Stream::Off), p50),
                get(Case::Fault(anon, Stream::Off), p50),
            ),
            thp_bg_p99_preempt_over_no_preempt: ratio(
                get(Case::Fault(thp, Stream::Preempt), p99),
                get(Case::Fault(thp, Stream::NoPreempt), p99),
            ),
        }
    }
}

pub(super) fn ratio(numerator: Option<f64>, denominator: Option<f64>) -> Option<f64> {
    let (n, d) = (numerator?, denominator?);
    let r = n / d;
    // A latency or a time of 0 is no measurement: no ratio rather than 0.00x.
    (n > 0.0 && d > 0.0 && r.is_finite()).then_some(r)
}

/// Everything one bench measured. The keys are a contract for scripts: add, never rename.
#[derive(Debug, Clone, Serialize)]
pub struct Bench {
    /// Synthetic image size in bytes.
    pub image_bytes: u64,
    /// Fraction of the pages each remote-fault run touched.
    pub touch: f64,
    /// `--quick`.
    pub quick: bool,
    /// Runs of each remote case.
    pub runs: u64,
    /// `(faulting CPU, handler CPU)` of the local round trip (null: unpinned).
    pub local_cpus: Option<(usize, usize)>,
    /// The cases, in table order.
    pub rows: Vec<Row>,
    /// The ratios.
    pub ratios: Ratios,
    /// How to read the numbers.
    pub notes: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_need_both_sides() {
        assert_eq!(ratio(Some(4.0), Some(2.0)), Some(2.0));
        assert_eq!(ratio(None, Some(2.0)), None);
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert_eq!(ratio(Some(0.0), Some(2.0)), None, "never 0.00x");
    }
}
