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

#[cfg(test)]
mod tests {
    use std::error::Error;

    use super::*;
    use crate::control::RunControl;

    #[test]
    fn a_failed_run_tells_what_failed_typed_and_once() {
        let run = RunControl::default();
        run.fail(Fatal::RecoveryImpossible(ConnectError::Closed));
        // Only the first fatal error counts.
        run.fail(Fatal::StartWatchdog(std::io::Error::other("later")));
        let err = ClientError::from(run.check().expect_err("the run failed"));
        assert!(
            matches!(
                err.fatal(),
                Some(Fatal::RecoveryImpossible(ConnectError::Closed))
            ),
            "{err:?}"
        );
        // The source chain reaches the typed errors: RunFailed → Fatal → ConnectError.
        let fatal = err.source().expect("the run's fatal error");
        assert!(fatal.downcast_ref::<Fatal>().is_some(), "{fatal:?}");
        let cause = fatal.source().expect("the failed reconnection");
        assert!(cause.downcast_ref::<ConnectError>().is_some(), "{cause:?}");
        // What the binary prints: each cause once.
        assert_eq!(
            uffd_core::logging::error_chain(&err),
            "recovery impossible: the page server closed the connection during the handshake"
        );
    }
}
