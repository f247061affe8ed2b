//! Why a run stops: [`Fatal`], the first fatal error any thread of the run meets, named by the
//! operation that failed; [`Loss`], why a connection was lost; and the errors of the
//! operations the threads run (placing, handling a frame, applying an event).
//!
//! They are defined here, below the threads that raise them ([`crate::placer`],
//! [`crate::receive`], [`crate::events`], [`crate::fault`], [`crate::link`]), so that the run
//! control ([`crate::control`]) can hold them and a caller of the `Client` API can match on
//! what failed.

use std::sync::Arc;
use std::time::Duration;

use hugepage::{AssembleError, MemoryError};
use uffd_core::proto::{ErrorCode, Kind};
use uffd_core::uffd::UffdError;
use uffd_core::{PlaceError, ProtoError, WireError};

use crate::connect::ConnectError;

/// Why the run stopped: the first fatal error of any of its threads.
#[derive(Debug, thiserror::Error)]
pub enum Fatal {
    /// The fault handler could not wait for or read the userfaultfd's messages.
    #[error(transparent)]
    ReadFaults(UffdError),
    /// The fault handler could not honour an event of the application.
    #[error(transparent)]
    ApplyEvent(#[from] EventError),
    /// Placing pages failed outside a frame: starting a receiver's placer, completing or
    /// preparing huge-page units, or the fault handler's local zero pages.
    #[error(transparent)]
    Place(#[from] PlacerError),
    /// A receiver could not handle a frame (placing its pages included).
    #[error(transparent)]
    Receive(#[from] ReceiveError),
    /// The stall watchdog thread could not be started.
    #[error("cannot start the stall watchdog: {0}")]
    StartWatchdog(#[source] std::io::Error),
    /// A connection was lost and reconnecting is off (`--reconnect-timeout 0`).
    #[error(transparent)]
    Lost(Arc<Loss>),
    /// The link was lost again and again without a new page for the reconnect timeout.
    #[error(
        "no new page for {timeout:?} (--reconnect-timeout): the connection to the page server \
         was lost {losses} times (last: {last}){}",
        and_reconnecting_failed(.reconnect)
    )]
    NoProgress {
        /// The reconnect timeout.
        timeout: Duration,
        /// Losses without a new page in between.
        losses: u64,
        /// The last loss.
        last: Arc<Loss>,
        /// The reconnection that failed after it, if one was tried.
        #[source]
        reconnect: Option<ConnectError>,
    },
    /// The link was lost once and reconnecting failed until the reconnect timeout.
    #[error("lost the page server ({last}) and could not reconnect within {timeout:?}: {source}")]
    Reconnect {
        /// The loss.
        last: Arc<Loss>,
        /// The reconnect timeout.
        timeout: Duration,
        /// The last reconnection's error.
        source: ConnectError,
    },
    /// Reconnecting was refused for a reason retrying cannot fix (another image, a refused
    /// token, a server that cannot read its image, another page size).
    #[error("recovery impossible: {0}")]
    RecoveryImpossible(#[source] ConnectError),
}

/// The end of [`Fatal::NoProgress`]'s message: the failed reconnection, if any.
fn and_reconnecting_failed(reconnect: &Option<ConnectError>) -> String {
    reconnect.as_ref().map_or_else(String::new, |err| {
        format!(", and reconnecting failed: {err}")
    })
}

/// Why a connection to the page server was lost: the link supervisor reconnects, or ends the
/// run with it ([`Fatal::Lost`]; the `last` loss of [`Fatal::NoProgress`] and
/// [`Fatal::Reconnect`]).
#[derive(Debug, thiserror::Error)]
pub enum Loss {
    /// The server closed the connection.
    #[error("the page server closed the {connection} connection")]
    Closed {
        /// `urgent` or `background`.
        connection: &'static str,
    },
    /// Reading the connection failed.
    #[error("{connection} connection to the page server failed: {source}")]
    Failed {
        /// `urgent` or `background`.
        connection: &'static str,
        /// Why.
        source: WireError,
    },
    /// Sending a request on the urgent connection failed.
    #[error("urgent connection lost: {0}")]
    Request(#[source] std::io::Error),
    /// The stall watchdog ([`crate::watchdog`]): no answer for the stall timeout while one
    /// was awaited.
    #[error(
        "no answer from the page server for {} s; the link may be down",
        seconds(*.timeout)
    )]
    Stall {
        /// The stall timeout (`--stall-timeout`).
        timeout: Duration,
    },
}

/// Whole seconds without a fraction, else to a tenth.
fn seconds(duration: Duration) -> String {
    let secs = duration.as_secs_f64();
    if secs.fract() == 0.0 {
        format!("{secs:.0}")
    } else {
        format!("{secs:.1}")
    }
}

/// Errors of placing pages ([`crate::placer`]).
#[derive(Debug, thiserror::Error)]
pub enum PlacerError {
    /// Starting the huge-page assembler of a receiver failed.
    #[error(transparent)]
    NewAssembler(MemoryError),
    /// Gathering or placing a huge page failed.
    #[error(transparent)]
    Assemble(#[from] AssembleError),
    /// A direct placement ioctl failed.
    #[error(transparent)]
    Fill(#[from] PlaceError),
    /// The process owning the region exited.
    #[error("the process owning the region exited")]
    OwnerExited,
}

/// Errors of handling a frame ([`crate::receive`]).
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// Placing the frame's pages failed.
    #[error(transparent)]
    Place(#[from] PlacerError),
    /// A frame read whole does not decode.
    #[error("{connection} connection to the page server failed: {source}")]
    Parse {
        /// `urgent` or `background`.
        connection: &'static str,
        /// Why.
        source: ProtoError,
    },
    /// The server sent an error frame.
    #[error("page server error ({code:?}): {message}")]
    Server {
        /// The error code.
        code: ErrorCode,
        /// The server's message.
        message: String,
    },
    /// A frame this connection never carries.
    #[error("unexpected {kind:?} frame on the {connection} connection")]
    Unexpected {
        /// Its kind.
        kind: Kind,
        /// `urgent` or `background`.
        connection: &'static str,
    },
}

/// Errors of applying an event ([`crate::events`]).
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// A FORK event's child handler thread could not be started.
    #[error("cannot start a handler for the forked child: {0}")]
    SpawnChildHandler(#[source] std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stall_names_its_timeout() {
        let stall = |timeout| Loss::Stall { timeout }.to_string();
        assert_eq!(
            stall(Duration::from_secs(10)),
            "no answer from the page server for 10 s; the link may be down"
        );
        assert!(stall(Duration::from_millis(1500)).contains("1.5 s"));
    }

    #[test]
    fn giving_up_tells_the_losses_and_the_failed_reconnection() {
        let last = Arc::new(Loss::Closed {
            connection: "urgent",
        });
        let fatal = |reconnect| Fatal::NoProgress {
            timeout: Duration::from_secs(2),
            losses: 3,
            last: Arc::clone(&last),
            reconnect,
        };
        let lost = "no new page for 2s (--reconnect-timeout): the connection to the page \
                    server was lost 3 times (last: the page server closed the urgent connection)";
        assert_eq!(fatal(None).to_string(), lost);
        let refused = ConnectError::Closed;
        let text = fatal(Some(refused)).to_string();
        assert_eq!(
            text,
            format!("{lost}, and reconnecting failed: {}", ConnectError::Closed)
        );
    }

    #[test]
    fn a_lost_link_that_did_not_come_back_tells_both() {
        let fatal = Fatal::Reconnect {
            last: Arc::new(Loss::Stall {
                timeout: Duration::from_secs(10),
            }),
            timeout: Duration::from_secs(5),
            source: ConnectError::Closed,
        };
        assert_eq!(
            fatal.to_string(),
            "lost the page server (no answer from the page server for 10 s; the link may be \
             down) and could not reconnect within 5s: the page server closed the connection \
             during the handshake"
        );
    }
}
