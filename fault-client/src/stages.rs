//! `fault-client stages TRACE`: where the time of each urgent fault goes, from a `--trace`
//! file.
//!
//! Each `request` of the trace is matched with the fault that caused it (the last `fault`
//! inside the requested range read at or before the request), the answer that came back (the
//! first `answer` at the same offset after it) and the answer's placement (the first urgent
//! `arrival` at that offset after it). That splits a fault into three stages:
//!
//! | stage | from → to | what it is |
//! |-------|-----------|------------|
//! | handler | `fault` → `request` | the fault handler: read the message, decide, write the request |
//! | round trip | `request` → `answer` | the network both ways, and the server (claim and write) |
//! | placement | `answer` → `arrival` | UFFDIO_COPY / ZEROPAGE (or the assembler), which wakes the thread |
//!
//! With the workload's `touch` events two more stages frame these, for each fault whose page
//! access is in the trace: the `touch` of the faulting thread (`tid`) inside the requested
//! range whose span holds the fault. (The range, not the fault's page: hugetlbfs reports a
//! fault at the start of its huge page, the touch names the 4 KiB page it read.)
//!
//! | stage | from → to | what it is |
//! |-------|-----------|------------|
//! | delivery | `touch` → `fault` | the kernel's fault path (mmap and VMA locks, the userfault message) and the handler waking up to read it |
//! | wake-up | `arrival` → end of the `touch` | the woken thread getting a CPU and returning from the fault (0 when it returned before the receiver stamped the arrival) |
//!
//! and `touch` is every access's own latency (the workload's samples). A tail in `touch` that
//! no stage shows is an access that never became a request (it waited for a huge page the
//! background was sending, or for a page in flight).
//!
//! An answer of several frames (a huge page) is timed to its first frame: the round trip ends
//! when the first bytes are in, and the rest of the transfer counts as placement. A request
//! the server does not answer on the urgent connection (it had sent the page on the background
//! connection already, or is sending the huge page that holds it and finishes that instead)
//! has no urgent answer and is counted apart. The trace's clock is the client's, so the
//! server's share of the round trip cannot be told from the network's here.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use uffd_core::stats::percentile;

use crate::trace::{self, EventKind, ReadTraceError};

/// The stages of the urgent faults of one trace, in microseconds.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Stages {
    /// Requests in the trace.
    pub requests: usize,
    /// Requests answered on the urgent connection (the ones measured).
    pub measured: usize,
    /// fault → request.
    pub handler: Vec<f64>,
    /// request → answer.
    pub round_trip: Vec<f64>,
    /// answer → placed.
    pub placement: Vec<f64>,
    /// fault → placed.
    pub total: Vec<f64>,
    /// touch began → fault read (only faults whose touch is in the trace).
    pub delivery: Vec<f64>,
    /// placed → touch returned (the same faults).
    pub wakeup: Vec<f64>,
    /// Every touch's latency: the workload's samples.
    pub touch: Vec<f64>,
}

/// Reads the trace at `path` ([`crate::trace::read`]) and matches its requests.
pub fn stages(path: &Path) -> Result<Stages, ReadTraceError> {
    // Page offset → (time, thread) of its faults; offset → times answers / urgent arrivals came.
    let mut faults: BTreeMap<u64, Vec<(f64, Option<u32>)>> = BTreeMap::new();
    let mut answers: HashMap<u64, Vec<f64>> = HashMap::new();
    let mut arrivals: HashMap<u64, Vec<f64>> = HashMap::new();
    // Page offset → (start, latency, thread) of the workload's accesses to it.
    let mut touches: BTreeMap<u64, Vec<(f64, f64, Option<u32>)>> = BTreeMap::new();
    let mut requests = Vec::new();
    for line in trace::read(path)? {
        let t = line.t_us;
        let offset = line.offset;
        match line.event {
            EventKind::Fault => faults.entry(offset).or_default().push((t, line.tid)),
            EventKind::Request => requests.push((t, offset, line.len)),
            EventKind::Answer => answers.entry(offset).or_default().push(t),
            EventKind::Arrival if line.channel.as_deref() == Some("urgent") => {
                arrivals.entry(offset).or_default().push(t)
            }
            EventKind::Touch => touches.entry(offset).or_default().push((
                t,
                line.latency_us.unwrap_or(0.0),
                line.tid,
            )),
            _ => {}
        }
    }
    let first_after = |times: Option<&Vec<f64>>, t: f64| {
        times.and_then(|v| v.iter().copied().filter(|&x| x >= t).reduce(f64::min))
    };
    let mut out = Stages {
        requests: requests.len(),
        touch: touches.values().flatten().map(|&(_, l, _)| l).collect(),
        ..Stages::default()
    };
    for (t_request, offset, len) in requests {
        let fault = faults
            .range(offset..offset + len.max(1))
            .flat_map(|(&page, v)| v.iter().map(move |&(t, tid)| (t, page, tid)))
            .filter(|&(t, _, _)| t <= t_request)
            .reduce(|a, b| if b.0 > a.0 { b } else { a });
        let Some(answer) = first_after(answers.get(&offset), t_request) else {
            continue;
        };
        let Some(placed) = first_after(arrivals.get(&offset), answer) else {
            continue;
        };
        out.measured += 1;
        out.round_trip.push(answer - t_request);
        out.placement.push(placed - answer);
        if let Some((fault, _, tid)) = fault {
            out.handler.push(t_request - fault);
            out.total.push(placed - fault);
            // The access that raised this fault: by the same thread (traces with thread ids),
            // in the requested range, under way when the fault was read (the trace prints tenths of
            // microseconds). The woken thread can return before the receiver stamps the
            // arrival (the wake-up is inside the placement ioctl): such a wake-up counts as 0.
            let touch = touches
                .range(offset..offset + len.max(1))
                .flat_map(|(_, v)| v.iter().copied())
                .filter(|&(t, l, who)| {
                    t <= fault + 0.1
                        && t + l + 0.1 >= fault
                        && (tid.is_none() || who.is_none() || who == tid)
                })
                .reduce(|a, b| if b.0 > a.0 { b } else { a });
            if let Some((t, l, _)) = touch {
                out.delivery.push((fault - t).max(0.0));
                out.wakeup.push((t + l - placed).max(0.0));
            }
        }
    }
    Ok(out)
}

/// A stage's percentiles for the table: `-` when it has no samples.
fn cell(values: &[f64], q: f64) -> String {
    percentile(values, q).map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}

impl Stages {
    fn rows(&self) -> Vec<(&'static str, &[f64])> {
        let mut rows = Vec::new();
        if !self.touch.is_empty() {
            rows.push(("delivery (touch -> fault)", &self.delivery[..]));
        }
        rows.extend([
            ("handler (fault -> request)", &self.handler[..]),
            ("round trip (request -> answer)", &self.round_trip[..]),
            ("placement (answer -> placed)", &self.placement[..]),
        ]);
        if !self.touch.is_empty() {
            rows.push(("wake-up (placed -> touch ends)", &self.wakeup[..]));
        }
        rows.push(("whole (fault -> placed)", &self.total[..]));
        if !self.touch.is_empty() {
            rows.push(("touch (every access, workload)", &self.touch[..]));
        }
        rows
    }

    /// A readable table (`-` for a stage without samples).
    pub fn to_table(&self) -> String {
        let mut out = format!(
            "{} requests, {} answered on the urgent connection (measured)\n\
             {:<32} {:>9} {:>9} {:>9} {:>9}\n",
            self.requests, self.measured, "stage (us)", "p50", "p90", "p99", "max"
        );
        for (name, values) in self.rows() {
            out += &format!(
                "{name:<32} {:>9} {:>9} {:>9} {:>9}\n",
                cell(values, 0.5),
                cell(values, 0.9),
                cell(values, 0.99),
                cell(values, 1.0)
            );
        }
        out
    }

    /// One JSON object: `requests`, `measured`, `touches`, and per stage (`handler`,
    /// `round_trip`, `placement`, `total`, and from traces with touch events `delivery`,
    /// `wakeup`, `touch`) its `samples`, `p50`, `p90`, `p99`, `max` in microseconds (`null`
    /// for a stage without samples).
    pub fn to_json(&self) -> String {
        let stage = |values: &[f64]| {
            serde_json::json!({
                "samples": values.len(),
                "p50": percentile(values, 0.5),
                "p90": percentile(values, 0.9),
                "p99": percentile(values, 0.99),
                "max": percentile(values, 1.0),
            })
        };
        serde_json::json!({
            "requests": self.requests,
            "measured": self.measured,
            "handler": stage(&self.handler),
            "round_trip": stage(&self.round_trip),
            "placement": stage(&self.placement),
            "total": stage(&self.total),
            "touches": self.touch.len(),
            "delivery": stage(&self.delivery),
            "wakeup": stage(&self.wakeup),
            "touch": stage(&self.touch),
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_matched_with_their_fault_answer_and_placement() {
        let dir = std::env::temp_dir().join(format!("stages-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("t.csv");
        std::fs::write(
            &path,
            "t_us,event,offset,len,latency_us,resolution,channel\n\
             9.0,touch,8192,4096,48.0,,\n\
             10.0,fault,8192,4096,,,\n\
             12.0,request,8192,4096,,,urgent\n\
             15.0,arrival,0,65536,,background,background\n\
             52.0,answer,8192,4096,,,urgent\n\
             55.5,arrival,8192,4096,,urgent,urgent\n\
             55.5,resolved,8192,4096,45.5,urgent,urgent\n\
             60.0,fault,4194304,4096,,,\n\
             61.0,request,2097152,2097152,,,urgent\n\
             70.0,arrival,2097152,2097152,,background,background\n",
        )
        .expect("write");
        let stages = stages(&path).expect("stages");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(stages.requests, 2);
        // The second request's page came by the background connection: not measured.
        assert_eq!(stages.measured, 1);
        assert_eq!(stages.handler, vec![2.0]);
        assert_eq!(stages.round_trip, vec![40.0]);
        assert_eq!(stages.placement, vec![3.5]);
        assert_eq!(stages.total, vec![45.5]);
        // The access began 1 us before the handler read the fault and returned 1.5 us
        // after the placement woke it.
        assert_eq!(stages.delivery, vec![1.0]);
        assert_eq!(stages.wakeup, vec![1.5]);
        assert_eq!(stages.touch, vec![48.0]);
        assert!(stages.to_table().contains("delivery (touch -> fault)"));
        assert!(stages.to_table().contains("round trip (request -> answer)"));
        let json: serde_json::Value = serde_json::from_str(&stages.to_json()).expect("json");
        assert_eq!(json["round_trip"]["p50"], 40.0);
        assert_eq!(json["touches"], 1);
        assert_eq!(json["wakeup"]["max"], 1.5);
    }

    #[test]
    fn a_bad_number_names_its_line_and_column() {
        let path = std::env::temp_dir().join(format!("stages-bad-{}.csv", std::process::id()));
        std::fs::write(
            &path,
            "t_us,event,offset,len,latency_us,resolution,channel\n\
             1.0,fault,4096,4096,,,\n\
             2.0,fault,-4096,4096,,,\n",
        )
        .expect("write");
        let err = stages(&path).expect_err("negative offset").to_string();
        let _ = std::fs::remove_file(&path);
        assert!(err.contains("line 3") && err.contains("offset"), "{err}");
    }

    #[test]
    fn a_hugetlb_touch_is_matched_inside_its_huge_page_by_its_thread() {
        let path = std::env::temp_dir().join(format!("stages-huge-{}.csv", std::process::id()));
        // hugetlbfs reports the fault at the huge page's start; two threads touch pages of it.
        std::fs::write(
            &path,
            "t_us,event,offset,len,latency_us,resolution,channel,tid\n\
             9.0,touch,2105344,4096,100.0,,,7\n\
             9.5,touch,2113536,4096,100.0,,,8\n\
             10.0,fault,2097152,4096,,,,7\n\
             12.0,request,2097152,2097152,,,urgent,\n\
             52.0,answer,2097152,65536,,,urgent,\n\
             90.0,gathered,2097152,65536,,urgent,urgent,\n\
             105.0,arrival,2097152,2097152,2.0,urgent,urgent,\n\
             105.0,resolved,2097152,4096,95.0,urgent,urgent,\n",
        )
        .expect("write");
        let stages = stages(&path).expect("stages");
        let _ = std::fs::remove_file(&path);
        assert_eq!(stages.measured, 1);
        assert_eq!(stages.placement, vec![53.0]);
        // Thread 7's touch (began at 9.0, ended at 109.0), not thread 8's.
        assert_eq!(stages.delivery, vec![1.0]);
        assert_eq!(stages.wakeup, vec![4.0]);
    }

    #[test]
    fn a_stage_without_samples_is_a_dash_and_null() {
        let stages = Stages {
            requests: 1,
            measured: 1,
            round_trip: vec![40.0],
            ..Stages::default()
        };
        let table = stages.to_table();
        let handler = table
            .lines()
            .find(|l| l.starts_with("handler"))
            .expect("handler row");
        assert_eq!(handler.split_whitespace().filter(|&c| c == "-").count(), 4);
        assert!(!table.contains(" 0.0 "), "{table}");
        let json: serde_json::Value = serde_json::from_str(&stages.to_json()).expect("json");
        assert!(json["handler"]["p50"].is_null());
        assert_eq!(json["handler"]["samples"], 0);
        assert_eq!(json["round_trip"]["p99"], 40.0);
    }
}
