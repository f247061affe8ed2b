//! `fault-client bench`: the standard comparison set in one run, as one table with ratios (or
//! one JSON object with `--json`).
//!
//! # The cases
//! Every row is one measurement; its name is its key in the JSON (`case`).
//!
//! - `local-roundtrip-4k`: the in-process userfaultfd round trip. A region of this process is
//!   registered MISSING; a minimal handler thread polls the descriptor, reads the message and
//!   resolves it with one 4 KiB UFFDIO_COPY, which wakes the faulting thread. The two threads
//!   are pinned to different CPUs (a real pager's handler is not on the faulting thread's CPU).
//!   Before each access the faulting thread waits, untimed, until the handler is back in
//!   `poll(2)`: each sample is one isolated fault, from just before the access to its return.
//! - `local-first-touch-4k`: a write to an unregistered anonymous page, the kernel's own
//!   first-touch fault (allocate and zero a page). The floor under every other row.
//! - `remote-<backing>`: a page-server child on loopback (synthetic image, no zero pages), the
//!   real fault-client pager, the random workload on one thread touching `--touch` of the pages,
//!   no background stream: every sample is a fault answered over the urgent connection. For
//!   `hugetlb-2m` one fault fetches a whole 2 MiB page.
//! - `remote-<backing>-bg`: the same with the background stream on, against the default
//!   server (which pauses the stream for urgent answers: preemption). The run ends when the
//!   whole image is present, so elapsed and MiB/s are those of the whole transfer; only the
//!   touches that beat the stream fault.
//! - `remote-<backing>-bg-nopreempt`: the same against a server started with `--no-preempt`.
//! - `transfer-<backing>`: `--workload none`, the background stream alone fills the region:
//!   elapsed and MiB/s of the whole image (no latencies: nothing faults).
//!
//! The backings are `anon` (4 KiB pages), `thp` (2 MiB units placed with UFFDIO_MOVE) and
//! `hugetlb-2m` (pool pages, one UFFDIO_COPY per 2 MiB). The hugetlb rows say `skipped` with the
//! reason when the pool is short (or with `--skip-hugetlb`) instead of failing the bench.
//!
//! # How the remote cases run
//! Two page-server children serve the same synthetic image, one default and one
//! `--no-preempt`. The remote cases run `--runs` rounds (default 5), every case once per
//! round, so a burst of other load on this shared machine spreads over all cases instead of
//! spoiling one; each column of a remote row is the median over the runs (`faults` per run,
//! `samples` summed). Each run has its own thread and a timeout (10 s plus 1 s per 32 MiB):
//! a run that does not return in time is reported as hung (`hung`, a `HUNG` note with the
//! commands that reproduce it, the kernel stacks of the client's and the server's threads on
//! stderr, exit status 1) instead of hanging the bench, and its case is not run again.
//!
//! A latency sample is an access that waited on a userfault: the fault handler read a fault
//! message from the accessing thread while it ran (UFFD_FEATURE_THREAD_ID, see
//! [`crate::workload`]), so a row never has more samples than faults. Accesses that found their
//! page present are counted in `touches_present`, never in the latencies. A row without
//! samples prints `-` (JSON `null`), and so does every ratio that needs it. A note names any
//! remote row whose p50 is below the local first-touch p50: no userfault can be that fast, so
//! such a row would be a measuring error.
//!
//! # Reading the ratios
//! - `remote_anon_p50_over_local_p50`: what the network, the server and the real pager add to
//!   the bare userfaultfd round trip (`remote-anon` p50 / `local-roundtrip-4k` p50). On a VM
//!   it can be below 1: the local threads are pinned to two CPUs on purpose, and waking a
//!   thread on a halted vCPU dominates that round trip (many times the same-CPU round trip:
//!   BENCHMARKS.md §3), while the remote path's threads are unpinned and the scheduler often
//!   wakes them on the faulting CPU.
//! - `thp_over_anon_transfer_time`: `transfer-thp` / `transfer-anon` elapsed; below 1 the
//!   2 MiB units fill the image faster than 4 KiB placements.
//! - `hugetlb_2m_p50_over_anon_p50`: the cost of one 2 MiB fault against one 4 KiB fault
//!   (`remote-hugetlb-2m` p50 / `remote-anon` p50); 512 times the bytes.
//! - `thp_bg_p99_preempt_over_no_preempt`: the fault tail with the stream on, preemption on vs
//!   off (`remote-thp-bg` p99 / `remote-thp-bg-nopreempt` p99); below 1 preemption helps.
//!
//! On loopback the link is not the bottleneck, so preemption effects should be small here: a
//! gap between the `-bg` and `-bg-nopreempt` rows is time urgent answers wait for the server's
//! background sender, not queueing on a link. `scripts/preempt-bench.sh` measures preemption
//! on a shaped link.
//!
//! # Layout
//! `args` (the flags and the `Plan` they give), `cases` (the rows and how each runs),
//! `local` (the in-process measurements), `children` (the page-server children and each remote
//! run supervised with a timeout), `results` (rows, medians, ratios), `notes` and `table`;
//! `error` (why a bench failed, by step).

mod args;
mod cases;
mod children;
mod error;
mod local;
mod notes;
mod results;
mod table;

pub use args::BenchArgs;
pub use error::{BenchError, LocalError};
pub use results::{Bench, Ratios, Row};

use args::Plan;
use cases::Case;
use children::run_rounds;
use local::{local_cpus, run_local};
use notes::{below_floor_note, hung_notes, notes_for};

/// Runs `fault-client bench` and prints the table or the JSON.
pub fn run(args: &BenchArgs) -> Result<(), BenchError> {
    let plan = Plan::from_args(args);
    let bench = measure(&plan)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&bench).map_err(BenchError::Json)?
        );
    } else {
        print!("{}", bench.to_table());
    }
    let hung: Vec<String> = bench
        .rows
        .iter()
        .filter(|r| r.hung > 0)
        .map(|r| format!("{} ({} of {} runs)", r.case, r.hung, r.hung + r.runs))
        .collect();
    if !hung.is_empty() {
        return Err(BenchError::Hung {
            runs: hung.join(", "),
        });
    }
    Ok(())
}

/// Runs every case: the local ones first, then `plan.runs` rounds of the remote ones.
fn measure(plan: &Plan) -> Result<Bench, BenchError> {
    let cpus = local_cpus()?;
    let cases = Case::all();
    let mut rows = Vec::with_capacity(cases.len());
    for &case in cases.iter().filter(|c| c.server().is_none()) {
        rows.push(run_local(case, plan, cpus)?);
    }
    let remote: Vec<Case> = cases.into_iter().filter(|c| c.server().is_some()).collect();
    rows.extend(run_rounds(&remote, plan)?);
    let ratios = Ratios::from_rows(&rows);
    let mut notes = hung_notes(&remote, &rows, plan);
    notes.extend(notes_for(cpus, plan.runs));
    notes.extend(below_floor_note(&rows));
    Ok(Bench {
        image_bytes: plan.image_bytes,
        touch: plan.touch,
        quick: plan.quick,
        runs: plan.runs,
        local_cpus: cpus,
        rows,
        ratios,
        notes,
    })
}
