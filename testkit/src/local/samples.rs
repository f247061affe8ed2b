//! Percentiles of measured samples, by the workspace's one percentile rule.

use std::time::Duration;

use uffd_core::{Latency, Summary};

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

    #[test]
    fn median_of_odd_and_empty() {
        let ms = Duration::from_millis;
        assert_eq!(median(&[ms(3), ms(1), ms(2)]), ms(2));
        assert_eq!(median(&[]), Duration::ZERO);
    }
}
