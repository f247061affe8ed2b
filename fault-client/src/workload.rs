//! Workloads: which pages the application threads touch, and the fault latency they see.
//!
//! A touch is a volatile one-byte read of a page. When the page was not present before the
//! read, the read's duration is a fault latency sample: from the access, through the fault,
//! the request, the answer and its placement, to the wake-up.

use std::sync::Mutex;
use std::time::Instant;

use crate::trace::Trace;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use uffd_core::{Latency, PageBitmap};

/// Access patterns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Each thread reads its share of the touched pages in address order.
    Seq,
    /// Uniformly random pages.
    Random,
    /// Zipf-distributed pages (exponent 1): a few pages are hot. Ranks are scattered over the
    /// image by a fixed permutation.
    Zipf,
    /// Touch nothing: only the background stream fills the region.
    None,
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Workload::Seq => "seq",
            Workload::Random => "random",
            Workload::Zipf => "zipf",
            Workload::None => "none",
        })
    }
}

/// The pages thread `thread` of `threads` touches, in order.
pub fn plan(
    workload: Workload,
    pages: u64,
    touches: u64,
    thread: u64,
    threads: u64,
    seed: u64,
) -> Vec<u64> {
    let share = touches / threads + u64::from(thread < touches % threads);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ thread.wrapping_mul(0x9E37_79B9));
    match workload {
        Workload::None => Vec::new(),
        Workload::Seq => {
            let start = (0..thread)
                .map(|t| touches / threads + u64::from(t < touches % threads))
                .sum::<u64>();
            (start..start + share).map(|p| p % pages).collect()
        }
        Workload::Random => (0..share).map(|_| rng.random_range(0..pages)).collect(),
        Workload::Zipf => {
            // The permutation must be the same for every thread: seed it with `seed` alone.
            let mut order: Vec<u64> = (0..pages).collect();
            order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
            let zipf = match Zipf::new(pages as f64, 1.0) {
                Ok(z) => z,
                Err(_) => return Vec::new(),
            };
            (0..share)
                .map(|_| {
                    let rank = zipf.sample(&mut rng) as u64;
                    order[(rank.max(1) - 1).min(pages - 1) as usize]
                })
                .collect()
        }
    }
}

/// Touches `plan`'s pages of the region at `base`; returns the fault latencies seen. Every
/// 64 samples they are also added to `live`, for the progress line, and each goes to `trace`
/// as a `touch` event if there is one.
pub fn touch(
    base: u64,
    page_size: u64,
    plan: &[u64],
    received: &PageBitmap,
    live: &Mutex<Latency>,
    trace: Option<&Trace>,
) -> Latency {
    let mut latency = Latency::new();
    let mut batch = Latency::new();
    for &page in plan {
        let was_present = received.get(page as usize);
        let addr = (base + page * page_size) as *const u8;
        let start = Instant::now();
        // SAFETY: `addr` lies inside the registered region, which outlives the workload; a
        // missing page blocks this thread until the pager places it.
        unsafe { std::ptr::read_volatile(addr) };
        if !was_present {
            let took = start.elapsed();
            latency.record(took);
            batch.record(took);
            if let Some(trace) = trace {
                trace.touch(start, took, page * page_size, page_size);
            }
            if batch.count() >= 64 {
                live.lock().unwrap_or_else(|e| e.into_inner()).merge(&batch);
                batch = Latency::new();
            }
        }
    }
    live.lock().unwrap_or_else(|e| e.into_inner()).merge(&batch);
    latency
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_and_stay_in_range() {
        for workload in [Workload::Seq, Workload::Random, Workload::Zipf] {
            let total: usize = (0..3)
                .map(|t| plan(workload, 100, 250, t, 3, 9).len())
                .sum();
            assert_eq!(total, 250, "{workload}");
            for t in 0..3 {
                assert!(plan(workload, 100, 250, t, 3, 9).iter().all(|&p| p < 100));
            }
        }
        assert!(plan(Workload::None, 100, 250, 0, 1, 9).is_empty());
    }

    #[test]
    fn seq_covers_each_page_once() {
        let mut all: Vec<u64> = (0..4)
            .flat_map(|t| plan(Workload::Seq, 64, 64, t, 4, 0))
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..64).collect::<Vec<_>>());
    }

    #[test]
    fn zipf_is_skewed() {
        let plan = plan(Workload::Zipf, 10_000, 20_000, 0, 1, 3);
        let mut counts = std::collections::HashMap::new();
        for p in plan {
            *counts.entry(p).or_insert(0u32) += 1;
        }
        let max = counts.values().copied().max().unwrap_or(0);
        assert!(
            max > 1000,
            "the hottest page should take a large share, got {max}"
        );
    }
}
