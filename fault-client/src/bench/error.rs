//! Why a bench failed, by step: [`BenchError`], and [`LocalError`] for the in-process cases.

use uffd_core::cpu::CpuError;
use uffd_core::handler::{HandlerError, FILL};
use uffd_core::region::RegionError;
use uffd_core::uffd::UffdError;

use crate::client::ClientError;
use crate::demo::ServerChildError;

/// Why `fault-client bench` failed, by step.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The CPUs this process may run on cannot be read.
    #[error("{0}")]
    Cpus(#[from] CpuError),
    /// A local case failed.
    #[error("bench case {case}: {source}")]
    Local {
        /// The case's name.
        case: String,
        /// Why.
        source: LocalError,
    },
    /// A page-server child could not be started.
    #[error("starting a page-server ({which}): {source}")]
    StartServer {
        /// `preempt` or `--no-preempt`.
        which: &'static str,
        /// Why.
        source: ServerChildError,
    },
    /// The thread of a remote run could not be started.
    #[error("starting a bench run thread: {0}")]
    SpawnRun(std::io::Error),
    /// A remote run failed.
    #[error("bench case {case}: {source}")]
    Remote {
        /// The case's name.
        case: String,
        /// Why.
        source: ClientError,
    },
    /// The thread of a remote run panicked.
    #[error("bench case {case}: the run thread panicked")]
    RunPanicked {
        /// The case's name.
        case: String,
    },
    /// The JSON could not be written.
    #[error("serialising the bench: {0}")]
    Json(serde_json::Error),
    /// Runs never finished (the table or JSON is printed first).
    #[error("runs that never finished (a fault was never resolved): {runs}")]
    Hung {
        /// Each hung case, with how many of its runs hung.
        runs: String,
    },
}

/// Why a local measurement failed, by step.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The measured region cannot be mapped.
    #[error("mapping the {what} region: {source}")]
    Map {
        /// `first-touch` or `round-trip`.
        what: &'static str,
        /// Why.
        source: RegionError,
    },
    /// No userfaultfd.
    #[error("opening a userfaultfd: {0}")]
    Open(UffdError),
    /// The region cannot be registered.
    #[error("registering the round-trip region: {0}")]
    Register(UffdError),
    /// The in-process fault handler failed.
    #[error("{0}")]
    Handler(#[from] HandlerError),
    /// A thread cannot be pinned to its CPU.
    #[error("{0}")]
    Pin(#[from] CpuError),
    /// The measuring thread panicked.
    #[error("the {0} thread panicked")]
    Panicked(&'static str),
    /// A page does not hold what the handler copied into it.
    #[error("page {page} holds {got:#04x} after its fault, not the COPY source's {FILL:#04x}")]
    WrongContent {
        /// The page's index.
        page: usize,
        /// The byte read.
        got: u8,
    },
}
