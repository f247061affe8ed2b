//! The trace as the plot sees it: the events it draws, split by kind, and the latencies of
//! the resolved faults.

use std::path::Path;

use uffd_core::stats::percentile_sorted;

use super::error::PlotError;
use super::{MIB, MIN_LATENCY_US};
use crate::trace::{self, EventKind, Resolution as How};

/// A `fault` event: the handler read a fault message for the page at `offset`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Fault {
    pub(super) t_ms: f64,
    pub(super) offset: u64,
    pub(super) len: u64,
}

/// A `resolved` event: a fault's page became present, `latency_us` after the fault.
#[derive(Debug, Clone, Copy)]
pub(super) struct Resolved {
    pub(super) latency_us: f64,
    pub(super) how: How,
}

/// An `arrival` event: `len` bytes at `offset` were placed.
#[derive(Debug, Clone, Copy)]
pub(super) struct Arrival {
    pub(super) t_ms: f64,
    pub(super) offset: u64,
    pub(super) len: u64,
    pub(super) how: How,
}

/// A whole trace, split by event kind.
#[derive(Debug, Default)]
pub(super) struct Events {
    pub(super) faults: Vec<Fault>,
    pub(super) resolved: Vec<Resolved>,
    pub(super) arrivals: Vec<Arrival>,
}

impl Events {
    /// The time of the last fault or arrival, in ms (0 without any).
    pub(super) fn duration_ms(&self) -> f64 {
        let faults = self.faults.iter().map(|f| f.t_ms);
        let arrivals = self.arrivals.iter().map(|a| a.t_ms);
        faults.chain(arrivals).fold(0.0, f64::max)
    }

    /// The highest byte any event touches, in MiB, rounded up to a whole MiB.
    pub(super) fn image_mib(&self) -> f64 {
        let faults = self.faults.iter().map(|f| f.offset + f.len);
        let arrivals = self.arrivals.iter().map(|a| a.offset + a.len);
        let end = faults.chain(arrivals).max().unwrap_or(0);
        (end as f64 / MIB).ceil().max(1.0)
    }

    /// Bytes placed by arrivals that were not duplicates.
    pub(super) fn bytes_placed(&self) -> u64 {
        let placed = self.arrivals.iter().filter(|a| a.how != How::Duplicate);
        placed.map(|a| a.len).sum()
    }
}

/// Reads the trace at `path` ([`crate::trace::read`]; an error names the line that is wrong).
pub(super) fn read_trace(path: &Path) -> Result<Events, PlotError> {
    let mut events = Events::default();
    for line in trace::read(path)? {
        let t_ms = line.t_us / 1000.0;
        let (offset, len) = (line.offset, line.len);
        let how = |line: &trace::Line| {
            line.resolution.ok_or_else(|| PlotError::NoResolution {
                path: path.to_path_buf(),
                event: line.event.name(),
            })
        };
        match line.event {
            EventKind::Fault => events.faults.push(Fault { t_ms, offset, len }),
            EventKind::Resolved => events.resolved.push(Resolved {
                latency_us: line.latency_us.unwrap_or(0.0),
                how: how(&line)?,
            }),
            EventKind::Arrival => events.arrivals.push(Arrival {
                t_ms,
                offset,
                len,
                how: how(&line)?,
            }),
            // Chunks in staging (not present yet), the urgent connection's own stages and the
            // workload's accesses: not drawn (`fault-client stages` reads the last two).
            EventKind::Gathered | EventKind::Request | EventKind::Answer | EventKind::Touch => {}
        }
    }
    Ok(events)
}

/// The latencies of the resolved faults, sorted, overall and per resolution.
#[derive(Debug)]
pub(super) struct Latency {
    /// Every latency (µs, at least [`MIN_LATENCY_US`]), ascending.
    pub(super) all: Vec<f64>,
    /// Per resolution that has samples, ascending.
    pub(super) by_how: Vec<(How, Vec<f64>)>,
    pub(super) p50: f64,
    pub(super) p99: f64,
}

impl Latency {
    /// `None` when no fault was resolved.
    pub(super) fn new(resolved: &[Resolved]) -> Option<Latency> {
        let sorted = |how: Option<How>| {
            let mut v: Vec<f64> = resolved
                .iter()
                .filter(|r| how.is_none_or(|h| r.how == h))
                .map(|r| r.latency_us.max(MIN_LATENCY_US))
                .collect();
            v.sort_by(f64::total_cmp);
            v
        };
        let all = sorted(None);
        if all.is_empty() {
            return None;
        }
        let by_how = How::ALL
            .iter()
            .map(|&how| (how, sorted(Some(how))))
            .filter(|(_, v)| !v.is_empty())
            .collect();
        Some(Latency {
            p50: percentile_sorted(&all, 0.5).unwrap_or(0.0),
            p99: percentile_sorted(&all, 0.99).unwrap_or(0.0),
            all,
            by_how,
        })
    }

    /// The x range of both latency panels: whole decades around the samples.
    pub(super) fn axis_range(&self) -> (f64, f64) {
        let first = self.all.first().copied().unwrap_or(1.0);
        let last = self.all.last().copied().unwrap_or(1.0);
        let lo = 10f64.powf(first.log10().floor());
        let hi = 10f64.powf(last.log10().ceil()).max(lo * 10.0);
        (lo, hi)
    }
}
