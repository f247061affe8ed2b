//! Why a connection or the server stopped, and what the client is told about it.

use uffd_core::proto::{ErrorCode, Kind};

use crate::image;

/// Why a connection or the server stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// Socket or decoding failure.
    #[error(transparent)]
    Wire(#[from] uffd_core::WireError),
    /// Socket failure.
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    /// The first frame was not a hello.
    #[error("expected a hello first, got a {0:?} frame")]
    HandshakeRequired(Kind),
    /// A frame that has no meaning on this connection.
    #[error("unexpected {0:?} frame")]
    Unexpected(Kind),
    /// A background hello for a session that does not exist.
    #[error("unknown session {0:#x}")]
    UnknownSession(u64),
    /// The session already has a background connection.
    #[error("the session already has a background connection")]
    BackgroundTaken,
    /// The session limit is reached.
    #[error("too many sessions (limit {0})")]
    TooManySessions(usize),
    /// Wrong or missing token.
    #[error("unauthorized: wrong or missing token")]
    Unauthorized,
    /// The client expects another image.
    #[error("the client expects a different image")]
    ImageMismatch,
    /// An established connection made no progress for the idle timeout: a write blocked
    /// that long, or the urgent connection was silent that long with nothing left to send.
    #[error("no progress for {0:?} (--idle-timeout)")]
    Idle(std::time::Duration),
    /// The image cannot produce a page any more (its file shrank or fails to read).
    #[error("image source failed: {0}")]
    Source(#[from] image::ImageError),
}

impl ServeError {
    /// The error frame code to tell the client, if the client should be told.
    pub(crate) fn code(&self) -> Option<ErrorCode> {
        match self {
            ServeError::Wire(uffd_core::WireError::Proto(_)) => Some(ErrorCode::Protocol),
            ServeError::Wire(_) | ServeError::Io(_) | ServeError::Bind { .. } => None,
            // The client is not reading, or an error frame would stop a client that only
            // needs to reconnect: just close.
            ServeError::Idle(_) => None,
            ServeError::HandshakeRequired(_) => Some(ErrorCode::HandshakeRequired),
            ServeError::Unexpected(_) => Some(ErrorCode::Protocol),
            ServeError::UnknownSession(_) | ServeError::BackgroundTaken => {
                Some(ErrorCode::UnknownSession)
            }
            ServeError::TooManySessions(_) => Some(ErrorCode::TooManySessions),
            ServeError::Unauthorized => Some(ErrorCode::Unauthorized),
            ServeError::ImageMismatch => Some(ErrorCode::ImageMismatch),
            ServeError::Source(_) => Some(ErrorCode::SourceFailed),
        }
    }
}
