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
//!   thread on a halted vCPU dominates that round trip (about 40 us across CPUs against 9 us on
//!   one CPU or unpinned, on the 2-vCPU development VM), while the remote path's threads are
//!   unpinned and the scheduler often wakes them on the faulting CPU.
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

use std::fmt::Write as _;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use hugepage::Backing;
use serde::Serialize;
use uffd_core::cpu::{allowed_cpus, pin_current_thread};
use uffd_core::handler::{Handler, CHECK_OFFSET, FILL, GATE_TIMEOUT};
use uffd_core::{page_size, Latency, Modes, Region, Userfaultfd};

use crate::client::{self, ClientError, RunConfig};
use crate::demo::ServerChild;
use crate::report::Report;
use crate::workload::Workload;

/// Default image size of a full run.
const DEFAULT_SIZE: u64 = 256 << 20;
/// Image size with `--quick`.
const QUICK_SIZE: u64 = 16 << 20;
/// Default fraction of the pages a remote-fault run touches.
const DEFAULT_TOUCH: f64 = 0.02;
/// Touch fraction with `--quick` (the image is smaller: about as many faults).
const QUICK_TOUCH: f64 = 0.05;
/// Local samples (round trips, and first touches) of a full run, and with `--quick`.
const LOCAL_SAMPLES: usize = 5000;
const QUICK_LOCAL_SAMPLES: usize = 300;
/// Runs of each remote case in a full run.
const DEFAULT_RUNS: u64 = 5;
/// A remote run that takes longer than this (plus a second per the next constant's bytes)
/// counts as hung.
const RUN_TIMEOUT_BASE: Duration = Duration::from_secs(10);
const RUN_TIMEOUT_BYTES_PER_S: u64 = 32 << 20;
/// The loopback note printed under the table and carried in the JSON.
const LOOPBACK_NOTE: &str = "loopback: the link is not the bottleneck, so preemption effects \
     should be small here: a gap between the -bg and -bg-nopreempt rows is time urgent answers \
     wait for the server's background sender, not queueing on a link; the shaped-link \
     benchmark is scripts/preempt-bench.sh";

/// Arguments of `fault-client bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Synthetic image size (default 256MiB; 16MiB with --quick).
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes)]
    pub size: Option<u64>,
    /// Fraction of the pages each remote-fault run touches (default 0.02; 0.05 with --quick).
    #[arg(long, value_name = "FRACTION", value_parser = parse_fraction)]
    pub touch: Option<f64>,
    /// Runs of each remote case; each column of a remote row is the median over them
    /// (default 5; 1 with --quick).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=100))]
    pub runs: Option<u64>,
    /// Fewer samples, one run per case and a small image: a smoke run of a few seconds.
    #[arg(long)]
    pub quick: bool,
    /// One JSON object (rows and ratios) instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Leave out the hugetlb-2m rows (they are marked skipped).
    #[arg(long)]
    pub skip_hugetlb: bool,
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    match parse_size::parse_size(s) {
        Ok(0) => Err("the image cannot be empty".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("`{s}` is not a size (e.g. 64MiB, 1GiB): {e}")),
    }
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if f > 0.0 && f <= 1.0 => Ok(f),
        _ => Err(format!("`{s}` is not a fraction in (0, 1]")),
    }
}

/// Runs `fault-client bench` and prints the table or the JSON.
pub fn run(args: &BenchArgs) -> Result<()> {
    let plan = Plan::from_args(args);
    let bench = measure(&plan)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&bench).context("serialising the bench")?
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
        bail!(
            "runs that never finished (a fault was never resolved): {}",
            hung.join(", ")
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// What to run
// ---------------------------------------------------------------------------------------------

/// The settings of one bench, after defaults.
#[derive(Debug, Clone, Copy)]
struct Plan {
    image_bytes: u64,
    touch: f64,
    local_samples: usize,
    runs: u64,
    quick: bool,
    skip_hugetlb: bool,
}

impl Plan {
    /// How long one remote run may take before it counts as hung: 10 s, plus 1 s per 32 MiB
    /// of image (a normal run of 256 MiB takes about 1 s here).
    fn run_timeout(&self) -> Duration {
        RUN_TIMEOUT_BASE + Duration::from_secs(self.image_bytes / RUN_TIMEOUT_BYTES_PER_S)
    }

    fn from_args(args: &BenchArgs) -> Plan {
        let (size, touch, samples, runs) = if args.quick {
            (QUICK_SIZE, QUICK_TOUCH, QUICK_LOCAL_SAMPLES, 1)
        } else {
            (DEFAULT_SIZE, DEFAULT_TOUCH, LOCAL_SAMPLES, DEFAULT_RUNS)
        };
        Plan {
            image_bytes: args.size.unwrap_or(size),
            touch: args.touch.unwrap_or(touch),
            local_samples: samples,
            runs: args.runs.unwrap_or(runs),
            quick: args.quick,
            skip_hugetlb: args.skip_hugetlb,
        }
    }
}

/// The background stream of a remote-fault case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    /// No background connection.
    Off,
    /// Background on, default server (preempts for urgent answers).
    Preempt,
    /// Background on, server started with `--no-preempt`.
    NoPreempt,
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    LocalRoundTrip,
    LocalFirstTouch,
    Fault(Backing, Stream),
    Transfer(Backing),
}

const BACKINGS: [Backing; 3] = [Backing::Anon, Backing::Thp, Backing::Hugetlb2M];

impl Case {
    /// Every case, in table order.
    fn all() -> Vec<Case> {
        let mut cases = vec![Case::LocalRoundTrip, Case::LocalFirstTouch];
        for backing in BACKINGS {
            for stream in [Stream::Off, Stream::Preempt, Stream::NoPreempt] {
                cases.push(Case::Fault(backing, stream));
            }
        }
        cases.push(Case::Transfer(Backing::Anon));
        cases.push(Case::Transfer(Backing::Thp));
        cases
    }

    /// The row's name (the `case` key of the JSON).
    fn id(self) -> String {
        match self {
            Case::LocalRoundTrip => "local-roundtrip-4k".into(),
            Case::LocalFirstTouch => "local-first-touch-4k".into(),
            Case::Fault(backing, Stream::Off) => format!("remote-{}", backing.name()),
            Case::Fault(backing, Stream::Preempt) => format!("remote-{}-bg", backing.name()),
            Case::Fault(backing, Stream::NoPreempt) => {
                format!("remote-{}-bg-nopreempt", backing.name())
            }
            Case::Transfer(backing) => format!("transfer-{}", backing.name()),
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Case::LocalRoundTrip | Case::LocalFirstTouch => "local",
            Case::Fault(..) => "remote",
            Case::Transfer(_) => "transfer",
        }
    }

    fn backing(self) -> Option<Backing> {
        match self {
            Case::LocalRoundTrip | Case::LocalFirstTouch => None,
            Case::Fault(backing, _) | Case::Transfer(backing) => Some(backing),
        }
    }

    fn background(self) -> bool {
        matches!(
            self,
            Case::Fault(_, Stream::Preempt | Stream::NoPreempt) | Case::Transfer(_)
        )
    }

    /// Whether the server of this case preempts (None: no server, or no stream to preempt).
    fn preempt(self) -> Option<bool> {
        match self {
            Case::Fault(_, Stream::Preempt) | Case::Transfer(_) => Some(true),
            Case::Fault(_, Stream::NoPreempt) => Some(false),
            _ => None,
        }
    }

    /// Which server the case runs against: `Some(preempt)`, or None for local cases.
    fn server(self) -> Option<bool> {
        match self {
            Case::LocalRoundTrip | Case::LocalFirstTouch => None,
            Case::Fault(_, stream) => Some(stream != Stream::NoPreempt),
            Case::Transfer(_) => Some(true),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------------

/// One measured case. The keys are a contract for scripts: add, never rename.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The case name (see the module documentation).
    pub case: String,
    /// `local`, `remote` or `transfer`.
    pub kind: &'static str,
    /// `anon`, `thp`, `hugetlb-2m`; null for local cases.
    pub backing: Option<&'static str>,
    /// The background stream was on.
    pub background: bool,
    /// The server preempted the stream for urgent answers (null without a stream).
    pub preempt: Option<bool>,
    /// Runs measured (remote cases: each column is the median over the runs; local: 1).
    pub runs: u64,
    /// Runs that never finished (a fault was never resolved); not in `runs`. A case is not
    /// run again after a hang, so this is 0 or 1.
    pub hung: u64,
    /// Median fault latency in microseconds (null when nothing faulted or skipped).
    pub p50_us: Option<f64>,
    /// 99th percentile fault latency in microseconds.
    pub p99_us: Option<f64>,
    /// Mean fault latency in microseconds.
    pub mean_us: Option<f64>,
    /// Latency samples, all runs together.
    pub samples: u64,
    /// Faults per run (local: one per sample; remote: messages read from the userfaultfd).
    pub faults: u64,
    /// Faults of all runs together (to compare with `samples`).
    #[serde(skip)]
    faults_total: u64,
    /// Touches that found their page present (no fault, no sample), all runs together.
    pub touches_present: u64,
    /// Wall time of a run: local, the measuring loop; remote, the run as `run` reports it.
    pub elapsed_s: Option<f64>,
    /// Bytes received per second, in MiB/s (null for local cases).
    pub throughput_mib_s: Option<f64>,
    /// Huge pages mapped huge at the end (null for anon and local cases).
    pub huge_pages_mapped: Option<u64>,
    /// Huge pages the region holds (null for anon and local cases).
    pub huge_pages_total: Option<u64>,
    /// Why the case was not measured (null when it was).
    pub skipped: Option<String>,
}

impl Row {
    fn empty(case: Case) -> Row {
        Row {
            case: case.id(),
            kind: case.kind(),
            backing: case.backing().map(Backing::name),
            background: case.background(),
            preempt: case.preempt(),
            runs: 0,
            hung: 0,
            p50_us: None,
            p99_us: None,
            mean_us: None,
            samples: 0,
            faults: 0,
            faults_total: 0,
            touches_present: 0,
            elapsed_s: None,
            throughput_mib_s: None,
            huge_pages_mapped: None,
            huge_pages_total: None,
            skipped: None,
        }
    }

    fn skipped(case: Case, why: String) -> Row {
        Row {
            skipped: Some(why),
            ..Row::empty(case)
        }
    }

    fn local(case: Case, measured: &Measured) -> Row {
        let s = measured.latency.summary();
        Row {
            runs: 1,
            p50_us: Some(s.p50),
            p99_us: Some(s.p99),
            mean_us: Some(s.mean),
            samples: s.count,
            faults: s.count,
            faults_total: s.count,
            elapsed_s: Some(measured.elapsed.as_secs_f64()),
            ..Row::empty(case)
        }
    }

    /// Each column is the median over `reports` (latencies over the runs that faulted).
    fn remote(case: Case, reports: &[Report], hung: u64) -> Row {
        let faulted: Vec<&Report> = reports
            .iter()
            .filter(|r| r.latency_us.samples > 0)
            .collect();
        let latency = |f: fn(&Report) -> f64| median(faulted.iter().map(|r| f(r)));
        let all = |f: fn(&Report) -> f64| median(reports.iter().map(f));
        let whole = |f: fn(&Report) -> u64| median_u64(reports.iter().map(f));
        let huge = reports.iter().any(|r| r.huge_pages_total > 0);
        Row {
            runs: reports.len() as u64,
            hung,
            p50_us: latency(|r| r.latency_us.p50),
            p99_us: latency(|r| r.latency_us.p99),
            mean_us: latency(|r| r.latency_us.mean),
            samples: reports.iter().map(|r| r.latency_us.samples).sum(),
            faults: whole(|r| r.faults).unwrap_or(0),
            faults_total: reports.iter().map(|r| r.faults).sum(),
            touches_present: reports.iter().map(|r| r.touches_present).sum(),
            elapsed_s: all(|r| r.elapsed_s),
            throughput_mib_s: all(|r| r.throughput_mib_s),
            huge_pages_mapped: huge.then(|| whole(|r| r.huge_pages_mapped)).flatten(),
            huge_pages_total: huge.then(|| whole(|r| r.huge_pages_total)).flatten(),
            ..Row::empty(case)
        }
    }
}

/// The median of `values` by the nearest rank (the lower middle one of an even count, as
/// every percentile of the workspace: [`uffd_core::stats`]); None when empty.
fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let values: Vec<f64> = values.collect();
    uffd_core::stats::percentile(&values, 0.5)
}

fn median_u64(values: impl Iterator<Item = u64>) -> Option<u64> {
    let mut sorted: Vec<u64> = values.collect();
    sorted.sort_unstable();
    uffd_core::stats::rank(sorted.len(), 0.5).map(|r| sorted[r - 1])
}

/// The ratios the comparison is read by (null when a case they need was skipped).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Ratios {
    /// `remote-anon` p50 / `local-roundtrip-4k` p50.
    pub remote_anon_p50_over_local_p50: Option<f64>,
    /// `transfer-thp` elapsed / `transfer-anon` elapsed.
    pub thp_over_anon_transfer_time: Option<f64>,
    /// `remote-hugetlb-2m` p50 / `remote-anon` p50.
    pub hugetlb_2m_p50_over_anon_p50: Option<f64>,
    /// `remote-thp-bg` p99 / `remote-thp-bg-nopreempt` p99.
    pub thp_bg_p99_preempt_over_no_preempt: Option<f64>,
}

impl Ratios {
    fn from_rows(rows: &[Row]) -> Ratios {
        let get = |case: Case, field: fn(&Row) -> Option<f64>| {
            let id = case.id();
            rows.iter().find(|r| r.case == id).and_then(field)
        };
        let p50 = |r: &Row| r.p50_us;
        let p99 = |r: &Row| r.p99_us;
        let elapsed = |r: &Row| r.elapsed_s;
        let (anon, thp) = (Backing::Anon, Backing::Thp);
        Ratios {
            remote_anon_p50_over_local_p50: ratio(
                get(Case::Fault(anon, Stream::Off), p50),
                get(Case::LocalRoundTrip, p50),
            ),
            thp_over_anon_transfer_time: ratio(
                get(Case::Transfer(thp), elapsed),
                get(Case::Transfer(anon), elapsed),
            ),
            hugetlb_2m_p50_over_anon_p50: ratio(
                get(Case::Fault(Backing::Hugetlb2M, Stream::Off), p50),
                get(Case::Fault(anon, Stream::Off), p50),
            ),
            thp_bg_p99_preempt_over_no_preempt: ratio(
                get(Case::Fault(thp, Stream::Preempt), p99),
                get(Case::Fault(thp, Stream::NoPreempt), p99),
            ),
        }
    }
}

fn ratio(numerator: Option<f64>, denominator: Option<f64>) -> Option<f64> {
    let (n, d) = (numerator?, denominator?);
    let r = n / d;
    // A latency or a time of 0 is no measurement: no ratio rather than 0.00x.
    (n > 0.0 && d > 0.0 && r.is_finite()).then_some(r)
}

/// Everything one bench measured. The keys are a contract for scripts: add, never rename.
#[derive(Debug, Clone, Serialize)]
pub struct Bench {
    /// Synthetic image size in bytes.
    pub image_bytes: u64,
    /// Fraction of the pages each remote-fault run touched.
    pub touch: f64,
    /// `--quick`.
    pub quick: bool,
    /// Runs of each remote case.
    pub runs: u64,
    /// `(faulting CPU, handler CPU)` of the local round trip (null: unpinned).
    pub local_cpus: Option<(usize, usize)>,
    /// The cases, in table order.
    pub rows: Vec<Row>,
    /// The ratios.
    pub ratios: Ratios,
    /// How to read the numbers.
    pub notes: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// Running the cases
// ---------------------------------------------------------------------------------------------

/// Runs every case: the local ones first, then `plan.runs` rounds of the remote ones.
fn measure(plan: &Plan) -> Result<Bench> {
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

/// The two page-server children: the default one (preempts) and a `--no-preempt` one.
#[derive(Debug)]
struct Servers {
    preempt: ServerChild,
    no_preempt: ServerChild,
}

impl Servers {
    fn start(plan: &Plan) -> Result<Servers> {
        Ok(Servers {
            preempt: start_server(plan, true)?,
            no_preempt: start_server(plan, false)?,
        })
    }

    fn for_case(&self, case: Case) -> &ServerChild {
        match case.server() {
            Some(false) => &self.no_preempt,
            _ => &self.preempt,
        }
    }
}

/// Runs the remote `cases` round after round (so that a burst of other load on the machine
/// spreads over every case instead of spoiling one) and makes a row of each.
fn run_rounds(cases: &[Case], plan: &Plan) -> Result<Vec<Row>> {
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

/// A note naming the remote rows whose p50 is below the local first-touch p50 (the kernel's
/// plain fault, the floor under every userfault), or that have more samples than faults:
/// either would be a measuring error.
fn below_floor_note(rows: &[Row]) -> Option<String> {
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
fn hung_notes(cases: &[Case], rows: &[Row], plan: &Plan) -> Vec<String> {
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
fn reproduce(case: Case, plan: &Plan) -> String {
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

fn notes_for(cpus: Option<(usize, usize)>, runs: u64) -> Vec<String> {
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

fn run_local(case: Case, plan: &Plan, cpus: Option<(usize, usize)>) -> Result<Row> {
    eprintln!("bench: {}", case.id());
    let n = plan.local_samples;
    let measured = match case {
        Case::LocalRoundTrip => local_round_trips(n, cpus),
        _ => first_touches(n, cpus.map(|(faulting, _)| faulting)),
    }
    .with_context(|| format!("bench case {}", case.id()))?;
    Ok(Row::local(case, &measured))
}

fn start_server(plan: &Plan, preempt: bool) -> Result<ServerChild> {
    let size = plan.image_bytes.to_string();
    let mut args = vec!["--synthetic", &size, "--zero-fraction", "0"];
    if !preempt {
        args.push("--no-preempt");
    }
    ServerChild::start(&args).with_context(|| {
        format!(
            "starting a page-server ({})",
            if preempt { "preempt" } else { "--no-preempt" }
        )
    })
}

/// How one run of a remote case ended.
#[derive(Debug)]
enum RunEnd {
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
fn run_remote(case: Case, plan: &Plan, server: &ServerChild) -> Result<RunEnd> {
    let config = remote_config(case, plan, server);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("bench-run".into())
        .spawn(move || {
            // The receiver is gone only after a timeout: nobody wants the result any more.
            let _ = tx.send(client::run(&config));
        })
        .context("starting a bench run thread")?;
    match rx.recv_timeout(plan.run_timeout()) {
        Ok(Ok(report)) => Ok(RunEnd::Done(Box::new(report))),
        Ok(Err(ClientError::Memory(hugepage::MemoryError::Pool(err)))) => {
            Ok(RunEnd::Skipped(err.to_string()))
        }
        Ok(Err(err)) => Err(anyhow!(err)).with_context(|| format!("bench case {}", case.id())),
        Err(RecvTimeoutError::Timeout) => Ok(RunEnd::Hung),
        Err(RecvTimeoutError::Disconnected) => {
            bail!("bench case {}: the run thread panicked", case.id())
        }
    }
}

/// The threads of process `pid` with their name, the kernel function each sleeps in
/// (`wchan`) and its kernel stack (root only): tells a fault nobody resolved
/// (`handle_userfault`) from a thread waiting for the network or for a lock.
fn thread_stacks(what: &str, pid: u32) -> String {
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

fn remote_config(case: Case, plan: &Plan, server: &ServerChild) -> RunConfig {
    let mut config = RunConfig::new(server.endpoint.clone());
    config.workload = match case {
        Case::Transfer(_) => Workload::None,
        _ => Workload::Random,
    };
    config.threads = 1;
    config.touch = plan.touch;
    config.background = case.background();
    config.backing = case.backing().unwrap_or(Backing::Anon);
    config.quiet = true;
    // A lost connection to our own loopback child is a failure, not something to ride out.
    config.reconnect_timeout = Duration::ZERO;
    config
}

/// Why a hugetlb case cannot run: `--skip-hugetlb`, or a pool too short for the image.
fn skip_reason(case: Case, plan: &Plan) -> Option<String> {
    let size = case.backing()?.hugetlb_size()?;
    if plan.skip_hugetlb {
        return Some("--skip-hugetlb".into());
    }
    let pages = plan.image_bytes.div_ceil(size);
    hugepage::pool::check_available(size, pages)
        .err()
        .map(|err| err.to_string())
}

// ---------------------------------------------------------------------------------------------
// CPU pinning
// ---------------------------------------------------------------------------------------------

/// `(faulting CPU, handler CPU)`: the first two allowed CPUs, or None with only one.
fn local_cpus() -> Result<Option<(usize, usize)>> {
    Ok(match allowed_cpus()?.as_slice() {
        [first, second, ..] => Some((*first, *second)),
        _ => None,
    })
}

// ---------------------------------------------------------------------------------------------
// Local measurements
// ---------------------------------------------------------------------------------------------

/// Latency samples of a local case and the wall time of its loop.
#[derive(Debug)]
struct Measured {
    latency: Latency,
    elapsed: Duration,
}

/// `n` plain first-touch faults: timed writes to unregistered anonymous pages, on a thread
/// pinned to `cpu` if given.
fn first_touches(n: usize, cpu: Option<usize>) -> Result<Measured> {
    let page = page_size();
    let region = Region::anonymous(n * page).context("mapping the first-touch region")?;
    let region = &region;
    std::thread::scope(|s| {
        s.spawn(move || {
            cpu.map_or(Ok(()), pin_current_thread)?;
            let mut latency = Latency::new();
            let start = Instant::now();
            for i in 0..n {
                latency.record(write_page(region, i * page));
            }
            Ok(Measured {
                latency,
                elapsed: start.elapsed(),
            })
        })
        .join()
        .map_err(|_| anyhow!("the first-touch thread panicked"))?
    })
}

/// Writes one byte at `offset` of `region` and returns how long the write took.
fn write_page(region: &Region, offset: usize) -> Duration {
    assert!(offset < region.len(), "offset {offset} outside the region");
    // SAFETY: in bounds (asserted); the mapping is writable and only accessed through raw
    // pointers. In a registered range the write blocks until the handler resolves the fault.
    let ptr = unsafe { region.as_ptr().add(offset) };
    let start = Instant::now();
    // SAFETY: as above.
    unsafe { ptr.write_volatile(0x5A) };
    start.elapsed()
}

/// `n` in-process 4 KiB COPY round trips: a registered region, the minimal handler
/// ([`uffd_core::handler`]) on `cpus.1` and the faulting thread on `cpus.0` (unpinned when
/// None).
fn local_round_trips(n: usize, cpus: Option<(usize, usize)>) -> Result<Measured> {
    let page = page_size();
    let uffd = Arc::new(Userfaultfd::open(0).context("opening a userfaultfd")?);
    // Declared before the handler: it is stopped (dropped) before the region is unmapped, and
    // no thread is blocked on it when the descriptor closes.
    let region = Region::anonymous(n * page).context("mapping the round-trip region")?;
    uffd.register(region.addr(), region.len() as u64, Modes::MISSING)
        .context("registering the round-trip region")?;
    let handler = Handler::spawn(
        Arc::clone(&uffd),
        page as u64,
        cpus.map(|(_, h)| h),
        Handler::copy_fill(page as u64),
    )?;
    let (handler, region) = (&handler, &region);
    std::thread::scope(|s| {
        s.spawn(move || -> Result<Measured> {
            cpus.map_or(Ok(()), |(faulting, _)| pin_current_thread(faulting))?;
            fault_gated(region, handler, n)
        })
        .join()
        .map_err(|_| anyhow!("the faulting thread panicked"))?
    })
}

/// The faulting side: touches the `n` pages in order, each once the handler is back in its
/// wait (untimed), and checks that each page holds the COPY source afterwards.
fn fault_gated(region: &Region, handler: &Handler, n: usize) -> Result<Measured> {
    let page = page_size();
    let mut latency = Latency::new();
    let start = Instant::now();
    for i in 0..n {
        handler.wait_until_waiting(i as u64, GATE_TIMEOUT)?;
        let took = write_page(region, i * page);
        handler.check()?;
        let offset = i * page + CHECK_OFFSET;
        // SAFETY: in bounds (n pages were mapped); the page is present now (the write above
        // returned), so the read does not fault.
        let got = unsafe { region.as_ptr().add(offset).read_volatile() };
        ensure!(
            got == FILL,
            "page {i} holds {got:#04x} after its fault, not the COPY source's {FILL:#04x}"
        );
        latency.record(took);
    }
    Ok(Measured {
        latency,
        elapsed: start.elapsed(),
    })
}

// ---------------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------------

impl Bench {
    /// The table, the ratios under it, and the notes.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "fault-client bench: synthetic {} image (no zero pages) on loopback, \
             remote runs touch {} of the pages{}",
            size_name(self.image_bytes),
            self.touch,
            if self.quick { " (--quick)" } else { "" }
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<31} {:>9} {:>9} {:>9} {:>7} {:>9} {:>8} {:>10}",
            "case", "p50 us", "p99 us", "mean us", "faults", "elapsed s", "MiB/s", "huge pages"
        );
        for row in &self.rows {
            let _ = writeln!(out, "{}", table_line(row));
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "ratios");
        for (name, value, meaning) in self.ratio_lines() {
            let _ = writeln!(out, "  {name:<44} {:>8}  {meaning}", fmt_ratio(value));
        }
        let _ = writeln!(out);
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        out
    }

    fn ratio_lines(&self) -> [(&'static str, Option<f64>, &'static str); 4] {
        let r = &self.ratios;
        [
            (
                "remote-anon p50 / local-roundtrip-4k p50",
                r.remote_anon_p50_over_local_p50,
                "what TCP, the server and the pager add to a bare round trip",
            ),
            (
                "transfer-thp / transfer-anon time",
                r.thp_over_anon_transfer_time,
                "< 1: 2 MiB units fill the image faster",
            ),
            (
                "remote-hugetlb-2m p50 / remote-anon p50",
                r.hugetlb_2m_p50_over_anon_p50,
                "one 2 MiB fault against one 4 KiB fault",
            ),
            (
                "remote-thp-bg p99: preempt / no-preempt",
                r.thp_bg_p99_preempt_over_no_preempt,
                "< 1: preemption shortens the tail",
            ),
        ]
    }
}

fn table_line(row: &Row) -> String {
    if let Some(why) = &row.skipped {
        return format!("{:<31} skipped: {why}", row.case);
    }
    let huge = match (row.huge_pages_mapped, row.huge_pages_total) {
        (Some(mapped), Some(total)) => format!("{mapped}/{total}"),
        _ => "-".into(),
    };
    let mut line = format!(
        "{:<31} {:>9} {:>9} {:>9} {:>7} {:>9} {:>8} {:>10}",
        row.case,
        fmt_opt(row.p50_us, 1),
        fmt_opt(row.p99_us, 1),
        fmt_opt(row.mean_us, 1),
        row.faults,
        fmt_opt(row.elapsed_s, 3),
        fmt_opt(row.throughput_mib_s, 1),
        huge
    );
    if row.hung > 0 {
        let _ = write!(line, "  HUNG {}/{}", row.hung, row.hung + row.runs);
    }
    line
}

fn fmt_opt(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.decimals$}"))
}

fn fmt_ratio(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.2}x"))
}

/// `256 MiB`, `1 GiB`, or bytes.
fn size_name(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b => format!("{b} bytes"),
    }
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

    #[test]
    fn case_names_are_unique_and_in_order() {
        let ids: Vec<String> = Case::all().into_iter().map(Case::id).collect();
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len());
        assert_eq!(ids.first().map(String::as_str), Some("local-roundtrip-4k"));
        assert!(ids.contains(&"remote-hugetlb-2m-bg-nopreempt".to_string()));
        assert_eq!(ids.last().map(String::as_str), Some("transfer-thp"));
    }

    #[test]
    fn ratios_need_both_sides() {
        assert_eq!(ratio(Some(4.0), Some(2.0)), Some(2.0));
        assert_eq!(ratio(None, Some(2.0)), None);
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert_eq!(ratio(Some(0.0), Some(2.0)), None, "never 0.00x");
    }

    #[test]
    fn skipped_rows_show_the_reason() {
        let row = Row::skipped(Case::Fault(Backing::Hugetlb2M, Stream::Off), "short".into());
        assert!(table_line(&row).contains("skipped: short"));
        let ratios = Ratios::from_rows(&[row]);
        assert_eq!(ratios.hugetlb_2m_p50_over_anon_p50, None);
    }

    #[test]
    fn local_paths_measure() -> Result<()> {
        if let Err(err) = Userfaultfd::open(0) {
            uffd_core::testing::skip(&err.to_string());
            return Ok(());
        }
        let cpus = local_cpus()?;
        assert_eq!(local_round_trips(20, cpus)?.latency.count(), 20);
        assert_eq!(first_touches(20, None)?.latency.count(), 20);
        Ok(())
    }
}
