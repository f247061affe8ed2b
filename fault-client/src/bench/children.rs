//! Child processes and run supervision: the two page-server children, and each remote run on
//! a thread of its own with a timeout, so that a hang is reported (with the kernel stacks of
//! both sides) instead of waited on.

use std::fmt::Write as _;
use std::sync::mpsc::RecvTimeoutError;

use super::args::Plan;
use super::cases::{remote_config, skip_reason, Case};
use super::error::BenchError;
use super::results::Row;
use crate::client::{self, ClientError};
use crate::demo::ServerChild;
use crate::report::Report;

/// The two page-server children: the default one (preempts) and a `--no-preempt` one.
#[derive(Debug)]
pub(super) struct Servers {
    pub(super) preempt: ServerChild,
    pub(super) no_preempt: ServerChild,
}

impl Servers {
    pub(super) fn start(plan: &Plan) -> Result<Servers, BenchError> {
        Ok(Servers {
            preempt: start_server(plan, true)?,
            no_preempt: start_server(plan, false)?,
        })
    }

    pub(super) fn for_case(&self, case: Case) -> &ServerChild {
        match case.server() {
            Some(false) => &self.no_preempt,
            _ => &self.preempt,
        }
    }
}

/// Runs the remote `cases` round after round (so that a burst of other load on the machine
/// spreads over every case instead of spoiling one) and makes a row of each.
pub(super) fn run_rounds(cases: &[Case], plan: &Plan) -> Result<Vec<Row>, BenchError> {
    let servers = Servers::start(plan)?;
    let mut reports: Vec<Vec<Report>> = vec![Vec::new(); cases.len()];
    let mut hung = vec![0u64; cases.len()];
    let mut skipped: Vec<Option<String>> = cases.iter().map(|&c| skip_reason(c, plan)).collect();
    for round in 1..=plan.runs {
        for (i, &case) in cases.iter().enumerate() {
            // A case that hung once is not run again: the hang is the finding, and each
            // costs a whole timeout.
            if skipped[i].is_some() || hung[i] > 0 {
                continue;
            }
            eprintln!("bench: round {round}/{}: {}", plan.runs, case.id());
            match run_remote(case, plan, servers.for_case(case))? {
                RunEnd::Done(report) => reports[i].push(*report),
                RunEnd::Skipped(why) => skipped[i] = Some(why),
                RunEnd::Hung => {
                    eprintln!(
                        "bench: {} did not finish within {:?}; its threads stay blocked until \
                         the bench exits, and the case is not run again. Where each thread of \
                         the client and of the server waits:\n{}{}",
                        case.id(),
                        plan.run_timeout(),
                        thread_stacks("client (this process)", std::process::id()),
                        thread_stacks("page-server", servers.for_case(case).pid()),
                    );
                    hung[i] += 1;
                }
            }
        }
    }
    // Dropping the servers here ends the sessions of hung runs too (their clients see EOF).
    drop(servers);
    Ok(cases
        .iter()
        .zip(reports)
        .zip(hung)
        .zip(skipped)
        .map(|(((&case, reports), hung), skipped)| match skipped {
            Some(why) => Row::skipped(case, why),
            None => Row::remote(case, &reports, hung),
        })
        .collect())
}

pub(super) fn start_server(plan: &Plan, preempt: bool) -> Result<ServerChild, BenchError> {
    let size = plan.image_bytes.to_string();
    let mut args = vec!["--synthetic", &size, "--zero-fraction", "0"];
    if !preempt {
        args.push("--no-preempt");
    }
    ServerChild::start(&args).map_err(|source| BenchError::StartServer {
        which: if preempt { "preempt" } else { "--no-preempt" },
        source,
    })
}

/// How one run of a remote case ended.
#[derive(Debug)]
pub(super) enum RunEnd {
    /// It finished.
    Done(Box<Report>),
    /// The hugetlb pool was taken meanwhile by another process (as when it was short from the
    /// start): the case is skipped.
    Skipped(String),
    /// It did not finish within [`Plan::run_timeout`]: a workload thread is blocked on a fault
    /// that nothing resolves. Its thread is left behind, blocked (the memory stays mapped while
    /// a thread may touch it), until the process exits.
    Hung,
}

/// One run of a remote case, on a thread of its own so that a hang is reported, not waited on.
pub(super) fn run_remote(
    case: Case,
    plan: &Plan,
    server: &ServerChild,
) -> Result<RunEnd, BenchError> {
    let config = remote_config(case, plan, server);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("bench-run".into())
        .spawn(move || {
            // The receiver is gone only after a timeout: nobody wants the result any more.
            let _ = tx.send(client::run(&config));
        })
        .map_err(BenchError::SpawnRun)?;
    match rx.recv_timeout(plan.run_timeout()) {
        Ok(Ok(report)) => Ok(RunEnd::Done(Box::new(report))),
        Ok(Err(ClientError::Memory(hugepage::MemoryError::Pool(err)))) => {
            Ok(RunEnd::Skipped(err.to_string()))
        }
        Ok(Err(source)) => Err(BenchError::Remote {
            case: case.id(),
            source,
        }),
        Err(RecvTimeoutError::Timeout) => Ok(RunEnd::Hung),
        Err(RecvTimeoutError::Disconnected) => Err(BenchError::RunPanicked { case: case.id() }),
    }
}

/// The threads of process `pid` with their name, the kernel function each sleeps in
/// (`wchan`) and its kernel stack (root only): tells a fault nobody resolved
/// (`handle_userfault`) from a thread waiting for the network or for a lock.
pub(super) fn thread_stacks(what: &str, pid: u32) -> String {
    let mut out = format!("  {what}, pid {pid}:\n");
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        let _ = writeln!(out, "    (cannot read /proc/{pid}/task)");
        return out;
    };
    for task in tasks.flatten() {
        let dir = task.path();
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        let _ = writeln!(
            out,
            "    {} {} in {}",
            task.file_name().to_string_lossy(),
            read("comm").trim(),
            read("wchan").trim()
        );
        for frame in read("stack").lines().take(12) {
            let _ = writeln!(out, "        {frame}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_stacks_name_every_thread() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        let parked = std::thread::Builder::new()
            .name("stack-probe".into())
            .spawn(move || {
                // The thread names itself when it starts: dump only once it runs.
                let _ = ready_tx.send(());
                rx.recv()
            })
            .expect("thread");
        ready_rx.recv().expect("probe thread started");
        let dump = thread_stacks("test", std::process::id());
        drop(tx);
        let _ = parked.join();
        assert!(dump.contains("stack-probe in "), "{dump}");
        assert!(dump.starts_with("  test, pid "), "{dump}");
        let none = thread_stacks("gone", u32::MAX);
        assert!(none.contains("cannot read"), "{none}");
    }
}
