//! The errors of a run ([`crate::client`]), apart so that the end-of-run checks
//! ([`crate::verify`]) use them without using the client.

use std::path::PathBuf;

use hugepage::MemoryError;

use crate::connect::ConnectError;

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
    /// The transfer failed (server gone, protocol error, placement error).
    #[error("{0}")]
    Transfer(String),
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
