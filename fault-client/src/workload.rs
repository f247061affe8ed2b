//! Workloads: which pages the application threads touch, and the fault latency they see.
//!
//! A touch is a volatile one-byte read of a page. Its duration is a fault latency sample only
//! when the access really waited on a userfault: when the fault handler read a fault message
//! from the touching thread while the access ran. The kernel names the thread in each message
//! (UFFD_FEATURE_THREAD_ID), and [`Waits`] counts the messages per thread. Checking the page's
//! `received` bit before the access is not enough: a huge unit is mapped before its bits are
//! set, and an access in that window returns in a fraction of a microsecond without faulting.
//! Accesses that raised no fault message are counted apart (`touches_present` in the report).
//! One of them may still have slept a moment: when a placement maps the page while the fault
//! message is still queued, the kernel wakes the thread and drops the message, so no fault is
//! counted for it either; every sample is one of the run's `faults`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::trace::Trace;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use uffd_core::convert::usize_from;
use uffd_core::{Latency, PageBitmap};

/// Fault messages read per thread, for telling which accesses waited on a userfault.
///
/// The fault handler calls [`Waits::begin_read`] before each `read(2)` of the userfaultfd,
/// [`Waits::record`] for each fault message and [`Waits::end_read`] once they are recorded. A
/// woken thread can return from its access before the handler has recorded the message that
/// read took (the read dequeues it, a placement wakes the thread, and the handler is still
/// between the read and the record). So [`Waits::faults_of`] first waits until every read begun
/// before it was called is recorded: a read that took this thread's message began before the
/// thread was woken. That wait is short (the read does not block) and outside the timed access.
#[derive(Debug, Default)]
pub struct Waits {
    faults: Mutex<HashMap<u32, u64>>,
    reads_begun: AtomicU64,
    reads_done: AtomicU64,
    closed: AtomicBool,
}

impl Waits {
    /// The handler is about to read the userfaultfd.
    pub fn begin_read(&self) {
        self.reads_begun.fetch_add(1, Ordering::SeqCst);
    }

    /// The handler read a fault message from thread `tid`.
    pub fn record(&self, tid: u32) {
        *self
            .faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(tid)
            .or_default() += 1;
    }

    /// Every message of the read begun last is recorded.
    pub fn end_read(&self) {
        let begun = self.reads_begun.load(Ordering::SeqCst);
        self.reads_done.store(begun, Ordering::SeqCst);
    }

    /// The handler stopped: nothing more will be recorded (nobody waits for it then).
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// Fault messages of thread `tid` read so far, including those of every read begun before
    /// this call.
    pub fn faults_of(&self, tid: u32) -> u64 {
        let begun = self.reads_begun.load(Ordering::SeqCst);
        while self.reads_done.load(Ordering::SeqCst) < begun && !self.closed.load(Ordering::SeqCst)
        {
            std::thread::yield_now();
        }
        let faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        faults.get(&tid).copied().unwrap_or(0)
    }
}

/// The calling thread's id, as fault messages name it.
pub fn thread_id() -> u32 {
    u32::try_from(nix::unistd::gettid().as_raw()).unwrap_or(0)
}

/// Access patterns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "lab", derive(clap::ValueEnum))]
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
                    // Zipf samples are whole numbers in 1..=pages.
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                    let rank = zipf.sample(&mut rng) as u64;
                    order[usize_from((rank.max(1) - 1).min(pages - 1))]
                })
                .collect()
        }
    }
}

/// What one workload thread's touches saw.
#[derive(Debug, Default)]
pub struct Touched {
    /// The accesses that waited on a userfault: one sample each.
    pub latency: Latency,
    /// The accesses that raised no fault message (the page was present).
    pub present: u64,
}

/// Touches `plan`'s pages of the region at `base`; returns the fault latencies seen (see the
/// module documentation for which accesses are samples). Every 64 samples they are also added
/// to `live`, for the progress line, and each goes to `trace` as a `touch` event if there is
/// one.
pub fn touch(
    base: u64,
    page_size: u64,
    plan: &[u64],
    received: &PageBitmap,
    waits: &Waits,
    live: &Mutex<Latency>,
    trace: Option<&Trace>,
) -> Touched {
    let tid = thread_id();
    let mut touched = Touched::default();
    let mut batch = Latency::new();
    let mut faults = waits.faults_of(tid);
    for &page in plan {
        // A page marked received is mapped: its access cannot fault.
        let was_present = received.get(usize_from(page));
        let addr = (base + page * page_size) as *const u8;
        let start = Instant::now();
        // SAFETY: `addr` lies inside the registered region, which outlives the workload; a
        // missing page blocks this thread until the pager places it.
        unsafe { std::ptr::read_volatile(addr) };
        let took = start.elapsed();
        if was_present {
            touched.present += 1;
            continue;
        }
        let after = waits.faults_of(tid);
        if after == faults {
            touched.present += 1;
            continue;
        }
        faults = after;
        touched.latency.record(took);
        batch.record(took);
        if let Some(trace) = trace {
            trace.touch(start, took, page * page_size, page_size, tid);
        }
        if batch.count() >= 64 {
            live.lock().unwrap_or_else(|e| e.into_inner()).merge(&batch);
            batch = Latency::new();
        }
    }
    live.lock().unwrap_or_else(|e| e.into_inner()).merge(&batch);
    touched
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_count_per_thread_and_wait_for_a_read_in_progress() {
        let waits = std::sync::Arc::new(Waits::default());
        assert_eq!(waits.faults_of(7), 0);
        waits.begin_read();
        let reader = {
            let waits = std::sync::Arc::clone(&waits);
            // A thread woken while the handler is between its read and the record: it must
            // see its fault once the read is recorded, not 0.
            std::thread::spawn(move || waits.faults_of(7))
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        waits.record(7);
        waits.record(9);
        waits.end_read();
        assert_eq!(reader.join().expect("reader"), 1);
        assert_eq!(waits.faults_of(9), 1);
        // A handler that is gone leaves nobody waiting.
        waits.begin_read();
        waits.close();
        assert_eq!(waits.faults_of(7), 1);
    }

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
