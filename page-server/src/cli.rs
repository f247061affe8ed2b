//! The command line of the `page-server` binary.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::{ArgGroup, Parser};
use uffd_core::units::{self, ParseError};
use uffd_core::Endpoint;

use crate::config::Config;
use crate::image::{Image, ImageError};
use crate::server::Server;
use crate::ServeError;

/// Why the server did not start, or stopped, by step.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// SIGINT or SIGTERM cannot be caught.
    #[error("cannot handle SIGINT and SIGTERM: {0}")]
    Signals(std::io::Error),
    /// Neither `--image` nor `--synthetic` (clap asks for one; a caller of [`run`] may not).
    #[error("give --image FILE or --synthetic SIZE")]
    NoImage,
    /// The image cannot be opened or generated.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// `--urgent-rt-priority` is not allowed here.
    #[error("--urgent-rt-priority: cannot run threads SCHED_FIFO: {0}")]
    RealTime(uffd_core::cpu::CpuError),
    /// `--token-file` cannot be read.
    #[error("cannot read token file {path}: {source}")]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `--token-file` holds nothing but white space.
    #[error("token file {path} is empty")]
    EmptyToken {
        /// The file.
        path: PathBuf,
    },
    /// The `listening on ADDR` line cannot be written.
    #[error("writing the listening address to stdout: {0}")]
    PrintAddress(std::io::Error),
    /// Binding, or serving, failed.
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// Serve a memory image to fault-clients: urgent page requests on one connection, a
/// background stream of everything else on another.
///
/// The first line printed on stdout is `listening on ADDR` with the real bound address, so
/// `--listen 127.0.0.1:0` works in scripts. Logs go to stderr (set RUST_LOG, e.g. debug).
#[derive(Debug, Parser)]
#[command(name = "page-server", version)]
#[command(group(ArgGroup::new("source").required(true).args(["image", "synthetic"])))]
pub struct Args {
    /// Address to listen on: HOST:PORT or unix:PATH.
    #[arg(long, default_value = "127.0.0.1:7070", value_name = "ADDR")]
    pub listen: Endpoint,

    /// Serve this file (read page by page as clients need it; a size that is not a multiple
    /// of the page size is served zero-padded, and the handshake carries the true length). A
    /// file that shrinks while served ends the sessions that need its lost pages with an
    /// error that says so; the server goes on serving.
    #[arg(long, value_name = "FILE")]
    pub image: Option<PathBuf>,

    /// Serve a deterministic synthetic image of this size (e.g. 256MiB, 1GiB, 1TiB): each page
    /// is generated from the seed when it is sent, so any size starts at once and costs no
    /// memory.
    #[arg(long, value_name = "SIZE", value_parser = parse_image_size)]
    pub synthetic: Option<u64>,

    /// Seed of the synthetic image.
    #[arg(long, default_value_t = 1, requires = "synthetic")]
    pub seed: u64,

    /// Fraction of zero pages in the synthetic image (0..=1).
    #[arg(
        long,
        default_value_t = 0.1,
        requires = "synthetic",
        value_name = "F",
        value_parser = units::parse_fraction
    )]
    pub zero_fraction: f64,

    /// Largest data frame of the background stream; huge pages travel in chunks of this size
    /// and an urgent request can interrupt the stream at each chunk boundary.
    #[arg(long, default_value = "64KiB", value_name = "SIZE", value_parser = parse_chunk)]
    pub chunk: u64,

    /// Never pause the background stream for urgent requests: an urgent answer waits until
    /// the huge page on the wire is complete (for comparison).
    #[arg(long)]
    pub no_preempt: bool,

    /// Close each connection after it has sent N frames (the client reconnects and resumes;
    /// for tests and demos of recovery).
    #[arg(
        long,
        value_name = "N",
        value_parser = clap::value_parser!(u64).range(1..),
        help_heading = "Fault injection (tests and demos)"
    )]
    pub drop_every: Option<u64>,

    /// Sessions served at once.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub max_sessions: usize,

    /// Connections that have not sent their hello yet, at most. They wait in one event loop
    /// and cost no thread; when N are waiting, a new connection makes the server drop the
    /// OLDEST one (with a "too many sessions" error frame), so a flood of idle or dribbling
    /// connections cannot lock a real client out: one that sends its hello at once is
    /// admitted within a round trip. Also the most handshakes past the hello at once (a
    /// resuming client's have frames; beyond that a hello is refused).
    #[arg(
        long,
        default_value_t = 128,
        value_name = "N",
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
    )]
    pub max_pending: usize,

    /// Connections from one IP address that have not sent their hello yet, at most; beyond
    /// that the address's own oldest is dropped. Default: no per-address limit (clients
    /// behind one NAT address would share it).
    #[arg(
        long,
        value_name = "N",
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
    )]
    pub max_pending_per_source: Option<usize>,

    /// Time a new connection has to send its whole hello (and, resuming, its have frames)
    /// before it is closed.
    #[arg(long, default_value = "5s", value_name = "DURATION", value_parser = units::parse_duration)]
    pub hello_timeout: Duration,

    /// Drop a client whose TCP stops answering for this long: data not acknowledged, or
    /// keepalive probes unanswered (its host or link vanished without a word), or a receive
    /// window kept shut (TCP keepalive + TCP_USER_TIMEOUT). Its threads and session go with
    /// it; a live client reconnects and resumes.
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = units::parse_duration)]
    pub peer_timeout: Duration,

    /// Close a connection that makes no progress for this long, and end its session: a
    /// client that stopped reading (a write blocked this long), or an urgent connection
    /// silent this long once every page of its session has been sent. A silent client whose
    /// session still has pages to send is never cut (it may fault at any moment); a live
    /// client that is cut reconnects and resumes. Seconds, or e.g. 500ms, 30s, 5m, 1h.
    #[arg(long, default_value = "300s", value_name = "DURATION", value_parser = units::parse_duration)]
    pub idle_timeout: Duration,

    /// Require clients to present the contents of this file as a token.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// Pace each background stream at this rate at most (SO_MAX_PACING_RATE; urgent answers
    /// are never paced), like QEMU's max-postcopy-bandwidth. On a link whose bottleneck is
    /// one FIFO queue, a rate a little below the link's (e.g. 900mbit on 1 Gbit/s) keeps the
    /// background from queueing there in front of urgent answers. Bits per second as tc
    /// writes them (900mbit, 1gbit, 500kbit) or bytes per second (100MiB/s).
    #[arg(long, value_name = "RATE", value_parser = units::parse_rate)]
    pub max_bandwidth: Option<u64>,

    /// Serve each urgent connection from a SCHED_FIFO thread at this real-time priority
    /// (1-99; needs CAP_SYS_NICE, e.g. root). On a host whose few CPUs are busy streaming, a
    /// woken urgent thread otherwise waits for other threads' time slices (milliseconds)
    /// before it reads the request. The background streams stay on the normal scheduler.
    #[arg(long, value_name = "PRIO", value_parser = clap::value_parser!(i32).range(1..=99))]
    pub urgent_rt_priority: Option<i32>,
}

/// A synthetic image's size (`256MiB`, `1GiB`, `1TiB`).
fn parse_image_size(s: &str) -> Result<u64, ParseError> {
    units::parse_bytes(s)
}

/// A chunk: a multiple of the page size, at most the protocol's largest frame.
fn parse_chunk(s: &str) -> Result<u64, ParseError> {
    let page = uffd_core::page_size() as u64;
    units::parse_multiple(s, page, Some(uffd_core::proto::MAX_CHUNK as u64))
}

/// Runs the server until SIGINT or SIGTERM.
pub fn run(args: Args) -> Result<(), RunError> {
    // Before anything is printed: a script may signal as soon as it sees the address.
    let shutdown = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&shutdown)).map_err(RunError::Signals)?;
    }
    let page = uffd_core::page_size() as u64;
    let image = match (&args.image, args.synthetic) {
        (Some(path), _) => Image::from_file(path, page)?,
        (None, Some(size)) => Image::synthetic(size, args.seed, args.zero_fraction, page)?,
        (None, None) => return Err(RunError::NoImage),
    };
    let mut config = Config::new(args.listen.clone());
    config.policy.chunk = args.chunk;
    config.policy.preempt = !args.no_preempt;
    config.fault_injection.drop_every = args.drop_every;
    config.max_sessions = args.max_sessions;
    config.max_pending = args.max_pending;
    config.max_pending_per_source = args.max_pending_per_source;
    config.handshake_timeout = args.hello_timeout;
    config.peer_timeout = args.peer_timeout;
    config.idle_timeout = args.idle_timeout;
    config.max_bandwidth = args.max_bandwidth;
    if let Some(priority) = args.urgent_rt_priority {
        uffd_core::cpu::check_realtime(priority).map_err(RunError::RealTime)?;
        config.urgent_priority = Some(priority);
    }
    if let Some(path) = &args.token_file {
        let token = std::fs::read(path).map_err(|source| RunError::TokenFile {
            path: path.clone(),
            source,
        })?;
        let token = token.trim_ascii().to_vec();
        if token.is_empty() {
            return Err(RunError::EmptyToken { path: path.clone() });
        }
        config.token = Some(token);
    }
    tracing::info!(
        "serving {} ({} bytes, {} pages)",
        image.description(),
        image.len(),
        image.pages()
    );
    // Every connection costs a descriptor, pending ones included.
    match uffd_core::wire::raise_open_files_limit() {
        Ok(limit) => tracing::debug!(limit, "open files"),
        Err(err) => tracing::warn!("cannot raise the open-files limit: {err}"),
    }
    let server = Server::bind(config, Arc::new(image))?;
    let endpoint = server.local_endpoint()?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on {endpoint}")
        .and_then(|()| stdout.flush())
        .map_err(RunError::PrintAddress)?;
    server.serve(&shutdown)?;
    Ok(())
}
