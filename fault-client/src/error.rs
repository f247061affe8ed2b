//! The errors of a run ([`crate::client`]), apart so that the end-of-run checks
//! ([`crate::verify`]) use them without using the client. A run that failed while running
//! is [`ClientError::Run`]: why is typed ([`crate::fatal::Fatal`], [`ClientError::fatal`]).

use std::path::PathBuf;

use hugepage::MemoryError;

use crate::connect::ConnectError;
use crate::control::RunFailed;
use crate::fatal::Fatal;

/// Errors of a run.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting or the handshake failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The region could not be set up.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// No userfaultfd.
    #[error(transparent)]
    Uffd(#[from] uffd_core::uffd::UffdError),
    /// The run failed (server gone, protocol error, placement error): why is
    /// [`RunFailed::fatal`] (also [`ClientError::fatal`]).
    #[error(transparent)]
    Run(#[from] RunFailed),
    /// A workload thread panicked.
    #[error("a workload thread panicked")]
    WorkloadPanicked,
    /// A thread could not be started.
    #[error("cannot start a thread: {0}")]
    Spawn(std::io::Error),
    /// The urgent path cannot be made real-time ([`ClientOptions::urgent_priority`](crate::client::ClientOptions::urgent_priority)).
    #[error("cannot run the urgent path SCHED_FIFO: {0}")]
    Realtime(#[from] uffd_core::cpu::CpuError),
    /// Writing the dump failed.
    #[error("cannot write {path}: {source}")]
    Dump {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl ClientError {
    /// Why the run stopped, if it failed while running ([`ClientError::Run`]).
    pub fn fatal(&self) -> Option<&Fatal> {
        match self {
            ClientError::Run(failed) => Some(failed.fatal()),
            _ => None,
        }
    }
}
