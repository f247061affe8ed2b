//! The command line of the `fault-client` binary.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use uffd_core::units::{self, ParseError};
use uffd_core::Endpoint;

use crate::bench::BenchError;
use crate::client::{ClientError, RunConfig};
use crate::demo::DemoError;
use crate::plot::PlotError;
use crate::trace::ReadTraceError;
use crate::workload::Workload;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// `--token-file` cannot be read.
    #[error("cannot read token file {path}: {source}")]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The run failed.
    #[error(transparent)]
    Run(#[from] ClientError),
    /// `--verify` (or the demo) found a page that differs from the server's image.
    #[error("verification failed: the region differs from the server's image")]
    Verification,
    /// The probe's JSON could not be written.
    #[error("writing the probe as JSON: {0}")]
    ProbeJson(serde_json::Error),
    /// `fault-client plot` failed.
    #[error(transparent)]
    Plot(#[from] PlotError),
    /// `fault-client stages` could not read its trace.
    #[error(transparent)]
    Stages(#[from] ReadTraceError),
    /// `fault-client demo` failed.
    #[error(transparent)]
    Demo(#[from] DemoError),
    /// `fault-client bench` failed.
    #[error(transparent)]
    Bench(#[from] BenchError),
}

/// Fill a userfaultfd-registered region on demand from a page-server, and measure it.
#[derive(Debug, Parser)]
#[command(name = "fault-client", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Map a region of the image's size, register it, run a workload over it and report.
    Run(RunArgs),
    /// Show what this kernel and process allow (userfaultfd access, features, huge pages).
    Probe {
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Draw a trace (from `run --trace`): fault-latency histogram and CDF, and a timeline of
    /// page arrivals over the address space. The format follows the extension: .svg or .png.
    Plot {
        /// The trace file.
        trace: PathBuf,
        /// The picture to write.
        #[arg(long, value_name = "FILE.svg|FILE.png")]
        out: PathBuf,
    },
    /// The one-command demo: starts a page-server child on loopback with a synthetic image,
    /// runs the random workload on 4 threads with the background stream, verifies, reports.
    Demo {
        /// Synthetic image size.
        #[arg(long, default_value = "256MiB")]
        size: String,
        /// Workload threads.
        #[arg(long, default_value_t = 4)]
        threads: u64,
        /// Fraction of the pages touched.
        #[arg(long, default_value_t = 0.05)]
        touch: f64,
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Split each urgent fault of a trace (from `run --trace`) into its stages: the fault
    /// handler (fault -> request), the round trip (request -> answer: network and server), and
    /// the placement (answer -> placed); p50/p90/p99/max of each (`-` without samples).
    Stages {
        /// The trace file.
        trace: PathBuf,
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The standard comparison set in one run: local userfaultfd round trip and first-touch
    /// fault, remote faults over loopback (anon, thp, hugetlb-2m; without the background
    /// stream, with it, and with a --no-preempt server), whole-image transfers; one table
    /// with ratios, or one JSON object.
    Bench(crate::bench::BenchArgs),
}

/// Arguments of `fault-client run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The page server: HOST:PORT or unix:PATH.
    #[arg(long, value_name = "ADDR")]
    pub server: Endpoint,
    /// Access pattern of the workload threads.
    #[arg(long, value_enum, default_value_t = Workload::Random)]
    pub workload: Workload,
    /// Workload threads.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub threads: u64,
    /// Touches, as a fraction of the image's pages (0..=1).
    #[arg(long, default_value_t = 0.25, value_name = "FRACTION", value_parser = units::parse_fraction)]
    pub touch: f64,
    /// How the region is backed: anon (4 KiB pages), thp (transparent huge pages, placed
    /// whole with UFFDIO_MOVE), hugetlb-2m or hugetlb-1g (hugetlbfs pool pages).
    #[arg(long, default_value = "anon", value_name = "BACKING")]
    pub backing: hugepage::Backing,
    /// hugetlbfs only: place each huge page with one UFFDIO_COPY, or write it through an
    /// alias mapping and map it with UFFDIO_CONTINUE.
    #[arg(long, default_value = "copy", value_name = "copy|continue")]
    pub hugetlb_placement: hugepage::HugetlbPlacement,
    /// Do not open the background stream: pages arrive only when faulted.
    #[arg(long)]
    pub no_background: bool,
    /// At the end, check every page against the server's checksums, or, for a synthetic
    /// image, against the page regenerated here from its seed (touching the rest, so the
    /// whole image arrives).
    #[arg(long)]
    pub verify: bool,
    /// Write the final region (the image's true length) to FILE.
    #[arg(long, value_name = "FILE")]
    pub dump: Option<PathBuf>,
    /// Record every fault, its resolution, every chunk gathered, every placement and every
    /// access that waited to FILE (CSV; see `fault-client plot` and `stages`).
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// After a lost connection, keep reconnecting (and resume the session) for this many
    /// seconds without a new page before giving up (a link lost again and again without a
    /// new page is retried with back-off, and counts as no progress); 0 fails at the first
    /// loss.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub reconnect_timeout: u64,
    /// Count the page server as lost after SECS without a sign of life from it while the
    /// client waits for pages (a request unanswered, the stream unfinished): a link gone
    /// silent, a stopped server. Then reconnect and resume as after a dropped connection;
    /// after --reconnect-timeout the run ends with "no answer from the page server for SECS
    /// s; the link may be down" and exit status 1. Also the connections' TCP_USER_TIMEOUT
    /// and keepalive. A client waiting for nothing may stay silent for ever.
    #[arg(long, default_value_t = 10, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub stall_timeout: u64,
    /// Seed of the workload's random choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Read the token the server requires from FILE.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// One JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// No live progress line (it is only drawn when stderr is a terminal).
    #[arg(long)]
    pub quiet: bool,
    /// Fail fast instead of waiting: negotiate UFFD_FEATURE_SIGBUS, so touching a page that
    /// has not arrived yet raises SIGBUS in the workload at once (no requests are sent; only
    /// the background stream fills the region). For workloads that prefer an error to a wait.
    #[arg(long)]
    pub fail_fast: bool,
    /// Cap the background connection's TCP receive window at SIZE (TCP_WINDOW_CLAMP): at
    /// most SIZE of background data is in flight, so where the bottleneck is one FIFO queue
    /// (a shaped link, a switch port) an urgent answer waits behind at most SIZE of it. Keep
    /// SIZE above the link's bandwidth-delay product or the stream slows down. Default: the
    /// kernel's autotuning.
    #[arg(long, value_name = "SIZE", value_parser = parse_window)]
    pub background_window: Option<u32>,
    /// Run the fault handler and the urgent receiver as SCHED_FIFO threads at this
    /// real-time priority (1-99; needs CAP_SYS_NICE, e.g. root). On a machine whose few CPUs
    /// are busy placing the background stream, a woken fault handler otherwise waits for
    /// other threads' time slices (milliseconds) before it reads the fault. The workload and
    /// the background threads stay on the normal scheduler.
    #[arg(long, value_name = "PRIO", value_parser = clap::value_parser!(i32).range(1..=99))]
    pub urgent_rt_priority: Option<i32>,
}

/// A receive window: 4 KiB to 1 GiB.
fn parse_window(s: &str) -> Result<u32, ParseError> {
    let bytes = units::parse_bytes_between(s, 4096, 1 << 30)?;
    // At most 1 GiB: always fits.
    Ok(u32::try_from(bytes).unwrap_or(u32::MAX))
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<(), CommandError> {
    match cli.command {
        Command::Run(args) => {
            let mut config = RunConfig::new(args.server);
            config.workload = args.workload;
            config.threads = args.threads;
            config.touch = args.touch;
            config.client.background = !args.no_background;
            config.verify = args.verify;
            config.dump = args.dump;
            config.seed = args.seed;
            config.client.trace = args.trace;
            config.client.backing = args.backing;
            config.quiet = args.quiet;
            config.client.fail_fast = args.fail_fast;
            config.client.background_window = args.background_window;
            config.client.urgent_priority = args.urgent_rt_priority;
            config.client.hugetlb = args.hugetlb_placement;
            config.client.reconnect_timeout =
                std::time::Duration::from_secs(args.reconnect_timeout);
            config.client.stall_timeout = std::time::Duration::from_secs(args.stall_timeout);
            if let Some(path) = args.token_file {
                let token = match std::fs::read(&path) {
                    Ok(token) => token,
                    Err(source) => return Err(CommandError::TokenFile { path, source }),
                };
                config.client.token = token.trim_ascii().to_vec();
            }
            let report = crate::progress::run(&config)?;
            print_report(&report, args.json);
            if report.verified == Some(false) {
                return Err(CommandError::Verification);
            }
            Ok(())
        }
        Command::Probe { json } => {
            let probe = uffd_core::probe();
            if json {
                let json = serde_json::to_string(&probe).map_err(CommandError::ProbeJson)?;
                println!("{json}");
            } else {
                print!("{}", crate::probe_table(&probe));
            }
            Ok(())
        }
        Command::Plot { trace, out } => {
            let summary = crate::plot::plot(&trace, &out)?;
            println!("{summary}");
            Ok(())
        }
        Command::Stages { trace, json } => {
            let stages = crate::stages::stages(&trace)?;
            if json {
                println!("{}", stages.to_json());
            } else {
                print!("{}", stages.to_table());
            }
            Ok(())
        }
        Command::Demo {
            size,
            threads,
            touch,
            json,
        } => {
            let report = crate::demo::demo(&size, threads, touch)?;
            print_report(&report, json);
            if report.verified != Some(true) {
                return Err(CommandError::Verification);
            }
            Ok(())
        }
        Command::Bench(args) => Ok(crate::bench::run(&args)?),
    }
}

fn print_report(report: &crate::report::Report, json: bool) {
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table());
    }
}
