//! The report of a run: a readable table, or one JSON object with stable keys.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;
use uffd_core::Latency;

use crate::client::RunConfig;
use crate::pager::Pager;

/// Fault latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct LatencyUs {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
    /// Number of samples: accesses that waited on a userfault (the fault handler read a fault
    /// message from the accessing thread while it ran). Never more than `faults`.
    pub samples: u64,
}

/// Everything a run measured. The JSON keys are a contract: add, never rename.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Fault messages read from the userfaultfd.
    pub faults: u64,
    /// Requests sent on the urgent connection.
    pub requests: u64,
    /// Data pages placed from urgent answers.
    pub pages_urgent: u64,
    /// Data pages placed from the background stream.
    pub pages_background: u64,
    /// Zero pages placed (UFFDIO_ZEROPAGE), from either connection.
    pub pages_zero: u64,
    /// Pages that arrived when already present (normal when both paths race).
    pub pages_duplicate: u64,
    /// Bytes read from the server (frames, both connections).
    pub bytes_received: u64,
    /// From the start of the workload until it finished and (with the background stream)
    /// the whole image was present.
    pub elapsed_s: f64,
    /// Fault latency seen by the workload threads, from the access to its return.
    pub latency_us: LatencyUs,
    /// Every page matched the server's checksum (null when not verified).
    pub verified: Option<bool>,
    /// `bytes_received / elapsed_s`, in MiB/s.
    pub throughput_mib_s: f64,
    /// True image size in bytes.
    pub image_bytes: u64,
    /// Pages in the image.
    pub pages: u64,
    /// Pages present at the end.
    pub pages_present: u64,
    /// The workload.
    pub workload: String,
    /// Workload threads.
    pub threads: u64,
    /// Touches performed.
    pub touches: u64,
    /// Touches that raised no fault message (the page was present): not latency samples.
    pub touches_present: u64,
    /// Background stream on.
    pub background: bool,
    /// How the region was backed.
    pub backing: String,
    /// Times the connections were re-established after a loss.
    pub reconnects: u64,
    /// Huge pages mapped as huge pages in the region when the run ended (from smaps:
    /// AnonHugePages for THP, hugetlb pages for hugetlbfs; 0 for anon).
    pub huge_pages_mapped: u64,
    /// Huge pages the region holds (the image rounded up to the unit; 0 for anon).
    pub huge_pages_total: u64,
    /// THP units placed whose MADV_COLLAPSE failed, left mapped with base pages.
    pub huge_pages_not_collapsed: u64,
}

impl Report {
    /// Collects the report of a finished run.
    pub fn new(
        config: &RunConfig,
        pager: &Pager,
        image_bytes: u64,
        touches: u64,
        elapsed: Duration,
        latency: &Latency,
        verified: Option<bool>,
    ) -> Report {
        let c = &pager.counters;
        let s = latency.summary();
        let bytes_received = c.bytes_received.load(Ordering::Relaxed);
        let elapsed_s = elapsed.as_secs_f64();
        Report {
            faults: c.faults.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            pages_urgent: c.pages_urgent.load(Ordering::Relaxed),
            pages_background: c.pages_background.load(Ordering::Relaxed),
            pages_zero: c.pages_zero.load(Ordering::Relaxed),
            pages_duplicate: c.pages_duplicate.load(Ordering::Relaxed),
            bytes_received,
            elapsed_s,
            latency_us: LatencyUs {
                p50: s.p50,
                p90: s.p90,
                p99: s.p99,
                max: s.max,
                mean: s.mean,
                samples: s.count,
            },
            verified,
            throughput_mib_s: if elapsed_s > 0.0 {
                bytes_received as f64 / elapsed_s / f64::from(1u32 << 20)
            } else {
                0.0
            },
            image_bytes,
            pages: pager.pages,
            pages_present: (0..pager.pages)
                .filter(|&p| pager.received.get(p as usize))
                .count() as u64,
            workload: config.workload.to_string(),
            threads: config.threads,
            touches,
            touches_present: 0,
            background: config.background,
            backing: pager.memory.backing().to_string(),
            reconnects: c.reconnects.load(Ordering::Relaxed),
            huge_pages_mapped: if pager.memory.unit() > pager.page {
                pager.memory.huge_pages_mapped().unwrap_or(0)
            } else {
                0
            },
            huge_pages_not_collapsed: c.huge_pages_not_collapsed.load(Ordering::Relaxed),
            huge_pages_total: if pager.memory.unit() > pager.page {
                pager.memory.units()
            } else {
                0
            },
        }
    }

    /// The report as one line of JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The report as a readable table.
    pub fn to_table(&self) -> String {
        let l = &self.latency_us;
        let verified = match self.verified {
            Some(true) => "yes, every page matches",
            Some(false) => "NO: pages differ from the server's",
            None => "not checked (--verify)",
        };
        format!(
            "image            {} bytes ({} pages, backing {}, {}/{} huge pages mapped huge)\n\
             workload         {} x {} threads, {} touches ({} found the page present), background {}\n\
             faults           {} ({} requests)\n\
             pages            {} urgent, {} background, {} zero, {} duplicate\n\
             received         {} bytes in {:.3} s ({:.1} MiB/s), {} reconnects\n\
             fault latency    p50 {:.1} us  p90 {:.1} us  p99 {:.1} us  max {:.1} us  ({} samples)\n\
             verified         {}\n",
            self.image_bytes,
            self.pages,
            self.backing,
            self.huge_pages_mapped,
            self.huge_pages_total,
            self.workload,
            self.threads,
            self.touches,
            self.touches_present,
            if self.background { "on" } else { "off" },
            self.faults,
            self.requests,
            self.pages_urgent,
            self.pages_background,
            self.pages_zero,
            self.pages_duplicate,
            self.bytes_received,
            self.elapsed_s,
            self.throughput_mib_s,
            self.reconnects,
            l.p50,
            l.p90,
            l.p99,
            l.max,
            l.samples,
            verified,
        )
    }
}
