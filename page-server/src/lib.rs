//! `page-server`: serves a memory image to any number of fault-clients.
//!
//! Each client session has two connections. The **urgent** connection carries page requests
//! (a client thread is blocked on a fault until the answer is placed), answered at once. The
//! **background** connection streams every page the client does not have yet, in order, and
//! steps aside for urgent answers at chunk boundaries. See `DESIGN.md` for the whole path.
//!
//! # Layout
//! - [`image`]: the served bytes, zero pages, per-page checksums, image identity.
//! - [`admission`]: new connections until their hello has arrived: one event loop, the
//!   pending table (oldest dropped first), the hello deadline.
//! - [`server`]: the handshake, the session registry, liveness of established connections,
//!   shutdown.
//! - [`session`]: which pages were sent, and the coordination of the two senders
//!   (preemption at chunk boundaries, no page on two connections).
//! - [`urgent`]: answering requests. [`background`]: the stream. [`send`]: pages to frames.
//! - [`cli`]: the command line, and [`run`] which the binary calls.

pub mod admission;
pub mod background;
pub mod cli;
pub mod image;
pub mod send;
pub mod server;
pub mod session;
pub mod urgent;

pub use cli::{run, Args};
pub use image::Image;
pub use server::{Config, Server};
pub use session::Policy;

use uffd_core::proto::Kind;

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
