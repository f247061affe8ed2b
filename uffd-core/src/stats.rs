//! Latency statistics: an HDR histogram of nanoseconds, summarised in microseconds.
//!
//! Each thread records into its own [`Latency`] (no shared state in the hot path); the
//! histograms are merged once at the end.

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

#[cfg(test)]
mod tests {
    use super::*;

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
