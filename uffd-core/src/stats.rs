//! Latency statistics: an HDR histogram of nanoseconds, summarised in microseconds, and the
//! one percentile definition every tool of the workspace uses.
//!
//! Each thread records into its own [`Latency`] (no shared state in the hot path); the
//! histograms are merged once at the end.
//!
//! # Percentiles
//! Everywhere a percentile is printed it is the **nearest rank**: the `q`-quantile of `n`
//! sorted samples is the sample of rank `ceil(q * n)` (at least 1), so it is always one of the
//! samples, p100 is the largest, and the median of an even count is the lower middle one.
//! [`percentile`] computes it from samples; [`Latency`] from its histogram, which keeps three
//! significant digits (hdrhistogram's `value_at_quantile` uses the same rank).

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest value tracked: 100 s in nanoseconds. Larger samples are clamped.
const MAX_NS: u64 = 100_000_000_000;

/// A latency histogram (3 significant digits, 1 ns .. 100 s).
#[derive(Debug, Clone)]
pub struct Latency {
    hist: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

/// Percentiles of a [`Latency`], in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct Summary {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest sample.
    pub max: f64,
    /// Arithmetic mean.
    pub mean: f64,
}

impl Latency {
    /// An empty histogram.
    pub fn new() -> Self {
        let hist = Histogram::new_with_bounds(1, MAX_NS, 3)
            .expect("static bounds 1..100s with 3 digits are valid");
        Latency { hist }
    }

    /// Records one sample.
    pub fn record(&mut self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(MAX_NS);
        self.hist.saturating_record(ns.clamp(1, MAX_NS));
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Latency) {
        // Both histograms have the same bounds, so `add` cannot fail.
        let _ = self.hist.add(&other.hist);
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The value at `quantile` (0.0..=1.0).
    pub fn quantile(&self, quantile: f64) -> Duration {
        Duration::from_nanos(self.hist.value_at_quantile(quantile))
    }

    /// p50/p90/p99/max/mean in microseconds (all zero when empty).
    pub fn summary(&self) -> Summary {
        if self.hist.is_empty() {
            return Summary::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Summary {
            count: self.hist.len(),
            p50: us(self.hist.value_at_quantile(0.50)),
            p90: us(self.hist.value_at_quantile(0.90)),
            p99: us(self.hist.value_at_quantile(0.99)),
            max: us(self.hist.max()),
            mean: self.hist.mean() / 1000.0,
        }
    }
}

/// The rank (from 1) of the `q`-quantile (0..=1) among `n` sorted samples: `ceil(q * n)`,
/// at least 1 and at most `n`. None when `n` is 0.
pub fn rank(n: usize, q: f64) -> Option<usize> {
    if n == 0 {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * n as f64).ceil();
    // `rank` lies in 0..=n (q is clamped to 0..=1; NaN becomes 0), so nothing is cut or
    // flipped.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let rank = rank as usize;
    Some(rank.clamp(1, n))
}

/// The nearest-rank `q`-quantile (0..=1) of `samples` (any order); None when there are none.
pub fn percentile(samples: &[f64], q: f64) -> Option<f64> {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    percentile_sorted(&sorted, q)
}

/// [`percentile`] of samples sorted in ascending order (no copy).
pub fn percentile_sorted(sorted: &[f64], q: f64) -> Option<f64> {
    rank(sorted.len(), q).map(|r| sorted[r - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(50.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&v, 1.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[2.0, 1.0], 0.5), Some(1.0), "lower middle");
        assert_eq!(percentile(&[7.0], 0.99), Some(7.0));
        assert_eq!(percentile(&[], 0.5), None);
        // The histogram agrees, to its three significant digits.
        let mut h = Latency::new();
        for us in 1..=100 {
            h.record(Duration::from_micros(us));
        }
        for q in [0.5, 0.9, 0.99] {
            let want = percentile(&v, q).unwrap_or(0.0);
            let got = h.quantile(q).as_secs_f64() * 1e6;
            assert!((got - want).abs() <= want * 1e-3, "q {q}: {got} vs {want}");
        }
    }

    #[test]
    fn summary_in_microseconds() {
        let mut a = Latency::new();
        for us in 1..=100 {
            a.record(Duration::from_micros(us));
        }
        let mut b = Latency::new();
        b.record(Duration::from_millis(5));
        a.merge(&b);
        let s = a.summary();
        assert_eq!(s.count, 101);
        assert!((s.p50 - 51.0).abs() < 0.1, "{s:?}");
        assert!((s.max - 5000.0).abs() < 5.0, "{s:?}");
    }

    #[test]
    fn empty_summary_is_zero() {
        assert_eq!(Latency::new().summary(), Summary::default());
    }
}
