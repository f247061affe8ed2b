//! The notes under the table: how to read it, hung runs with the commands that reproduce
//! them, and measuring errors.

use hugepage::Backing;

use super::args::Plan;
use super::cases::{Case, Stream};
use super::results::Row;
use super::table::fmt_opt;

/// The loopback note printed under the table and carried in the JSON.
pub(super) const LOOPBACK_NOTE: &str =
    "loopback: the link is not the bottleneck, so preemption effects \
     should be small here: a gap between the -bg and -bg-nopreempt rows is time urgent answers \
     wait for the server's background sender, not queueing on a link; the shaped-link \
     benchmark is scripts/preempt-bench.sh";

/// A note naming the remote rows whose p50 is below the local first-touch p50 (the kernel's
/// plain fault, the floor under every userfault), or that have more samples than faults:
/// either would be a measuring error.
pub(super) fn below_floor_note(rows: &[Row]) -> Option<String> {
    let floor = rows
        .iter()
        .find(|r| r.case == Case::LocalFirstTouch.id())
        .and_then(|r| r.p50_us)?;
    let rows: Vec<String> = rows
        .iter()
        .filter(|r| r.kind == "remote")
        .filter(|r| r.p50_us.is_some_and(|p| p < floor) || r.samples > r.faults_total)
        .map(|r| {
            format!(
                "{} (p50 {}, {} samples, {} faults)",
                r.case,
                fmt_opt(r.p50_us, 2),
                r.samples,
                r.faults_total
            )
        })
        .collect();
    (!rows.is_empty()).then(|| {
        format!(
            "MEASURING ERROR: below the local first-touch p50 ({floor:.2} us) or more samples \
             than faults: {}",
            rows.join(", ")
        )
    })
}

/// One note per case with hung runs, with the commands that reproduce it.
pub(super) fn hung_notes(cases: &[Case], rows: &[Row], plan: &Plan) -> Vec<String> {
    cases
        .iter()
        .filter_map(|&case| {
            let row = rows.iter().find(|r| r.case == case.id())?;
            (row.hung > 0).then(|| {
                format!(
                    "HUNG: {} of {} runs of {} never finished within {:?} (the case was not \
                     run again; the kernel stacks of the client's and the server's threads \
                     are on stderr); reproduce: `{}`",
                    row.hung,
                    row.hung + row.runs,
                    row.case,
                    plan.run_timeout(),
                    reproduce(case, plan)
                )
            })
        })
        .collect()
}

/// The two commands that run `case` by hand.
pub(super) fn reproduce(case: Case, plan: &Plan) -> String {
    let server_flag = if case.server() == Some(false) {
        " --no-preempt"
    } else {
        ""
    };
    let client_flags = match case {
        Case::Transfer(_) => " --workload none",
        Case::Fault(_, Stream::Off) => " --no-background",
        _ => "",
    };
    let backing = case.backing().unwrap_or(Backing::Anon).name();
    format!(
        "page-server --listen 127.0.0.1:7070 --synthetic {} --zero-fraction 0{server_flag} & \
         fault-client run --server 127.0.0.1:7070 --threads 1 --touch {} \
         --backing {backing}{client_flags}",
        plan.image_bytes, plan.touch,
    )
}

pub(super) fn notes_for(cpus: Option<(usize, usize)>, runs: u64) -> Vec<String> {
    let local = match cpus {
        Some((faulting, handler)) => format!(
            "local round trip: faulting thread on CPU {faulting}, handler on CPU {handler} \
             (cross-CPU wake-ups; the remote threads are unpinned, so on a VM the remote p50 \
             can be below it)"
        ),
        None => "local round trip: only one CPU allowed, threads unpinned".to_string(),
    };
    vec![
        local,
        format!(
            "remote rows: random workload, 1 thread, each column the median of {runs} runs \
             (faults: per run); -bg rows end when the whole image is present, so only the \
             touches that beat the stream fault"
        ),
        LOOPBACK_NOTE.to_string(),
    ]
}
