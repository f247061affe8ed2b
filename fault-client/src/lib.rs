//! `fault-client`: maps a region, registers it with userfaultfd, and fills it on demand from
//! a page-server, the way postcopy live migration fills a guest's memory.
//!
//! A fault becomes one request on the urgent connection; pages from the background stream are
//! placed as they arrive; the kernel's EEXIST makes sure no page is placed twice. See
//! `DESIGN.md` for the whole path of a fault.
//!
//! # Layout
//! The engine (always built; it links no plotting or terminal crates), from the bottom up:
//! each module uses only modules listed before it.
//! - [`trace`]: `--trace`, a CSV line per fault, per urgent request and answer, and per
//!   arriving page; [`report`]: what a run measured, as data; [`connect`]: the handshake of
//!   the urgent and background connections; [`fatal`]: why a run stops ([`fatal::Fatal`],
//!   one variant per operation that failed), why a connection was lost, and the errors of
//!   placing, handling a frame and applying an event.
//! - [`control`]: run control (stop, the first fatal error, the main thread's wake-up);
//!   [`error`]: the errors of a run ([`ClientError`]);
//!   [`liveness`]: when the server was last heard from; [`pages`]: what each page is
//!   (present, requested, discarded, unmapped) and the events lock; [`workload`]: the
//!   application threads (seq, random, zipf) and their fault latency.
//! - [`link_state`]: the request path and the connection generation the threads share.
//! - [`pager`]: the state every thread shares: the region, the page state, the link state,
//!   the run control, the counters; and [`Pager::request`](pager::Pager::request).
//! - [`placer`]: placing pages directly or through the `hugepage` crate's assembler (huge
//!   pages placed whole); [`events`]: what the application does to the region (discard,
//!   unmap, move, fork); [`watchdog`]: stall detection.
//! - [`receive`]: the receiver threads; [`fault`]: the fault handler thread.
//! - [`link`]: the connections, their receivers, and recovery (reconnect and resume).
//! - [`verify`]: the end of a run (fetch everything, verify, dump); [`client`]: one run from
//!   connect to report.
//!
//! The lab, on top of the engine (the `lab` feature, on by default; the `fault-client` binary
//! needs it):
//! - `cli`: the command line; `cli::run` is what the binary calls.
//! - `output`: the report and the probe as a table or JSON; `progress`: the live progress line.
//! - `trace::parse` reads a trace back; `plot` draws it, `stages` splits each urgent fault
//!   into its stages; `plot/`: `events`, `histogram`, `cdf`, `timeline`, `chart`, `text`, `render`.
//! - `demo`: the one-command demo (a page-server child process).
//! - `bench`: `fault-client bench`, the standard comparison set as one table.

pub mod client;
pub mod connect;
pub mod control;
pub mod error;
pub mod events;
pub mod fatal;
pub mod fault;
pub mod link;
pub mod link_state;
pub mod liveness;
pub mod pager;
pub mod pages;
pub mod placer;
pub mod receive;
pub mod report;
pub mod trace;
pub mod verify;
pub mod watchdog;
pub mod workload;

pub use client::{ClientError, RunConfig};
pub use report::Report;
pub use workload::Workload;

#[cfg(feature = "lab")]
pub mod bench;
#[cfg(feature = "lab")]
pub mod cli;
#[cfg(feature = "lab")]
pub mod demo;
#[cfg(feature = "lab")]
pub mod output;
#[cfg(feature = "lab")]
pub mod plot;
#[cfg(feature = "lab")]
pub mod progress;
#[cfg(feature = "lab")]
pub mod stages;

#[cfg(feature = "lab")]
pub use cli::{run, Cli, CommandError};
#[cfg(feature = "lab")]
pub use output::probe_table;
