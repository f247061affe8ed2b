//! The report of a run, as plain data; its JSON keys are stable (the lab's `output` prints it
//! as a table or as one JSON object).

use serde::Serialize;

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
