//! `page-server`: serves a memory image to any number of fault-clients.
//!
//! Each client session has two connections. The **urgent** connection carries page requests
//! (a client thread is blocked on a fault until the answer is placed), answered at once. The
//! **background** connection streams every page the client does not have yet, in order, and
//! steps aside for urgent answers at chunk boundaries. See `DESIGN.md` for the whole path.
//!
//! # Layout
//! In the order a connection meets them:
//! - [`config`]: the settings, and the limits on what one peer can hold on to.
//! - [`image`]: the served bytes, zero pages, per-page checksums, image identity.
//! - [`admission`]: new connections until their hello has arrived: one event loop and its
//!   limits; `pending` (one connection's first frame, the hello deadline) and `table` (the
//!   pending connections, oldest dropped first, counted per source).
//! - [`server`]: the [`Server`] (bind, serve, shutdown) and the life of one connection, step
//!   by step, each step in a module of its own (private):
//!   - `sockopt`: socket options: peer liveness (keepalive, `TCP_USER_TIMEOUT`), and per role
//!     `TCP_NOTSENT_LOWAT`, `IP_TOS` and pacing;
//!   - `timeout`: the read and write sides of a connection with their time limits (the
//!     handshake deadline, the idle timeout);
//!   - `handshake`: the hello (token, image identity), a resuming client's have frames, the
//!     welcome and the checksums or synthetic parameters that follow it;
//!   - `registry`: the sessions by id: open, resume, join, end, the session limit.
//! - [`session`]: which pages were sent, and the coordination of the two senders
//!   (preemption at chunk boundaries, no page on two connections).
//! - [`urgent`]: answering requests. [`background`]: the stream. [`send`]: pages to frames.
//! - [`error`]: why a connection stopped, and the error frame the client is told.
//! - [`inject`]: fault injection, the test hook that breaks connections on purpose
//!   (`--drop-every`), called from `send`.
//! - [`cli`]: the command line, and [`run`] which the binary calls.
//!
//! Modules depend one way: `cli` → `server` → (`admission`, the step modules, `urgent`,
//! `background`) → `send` → `session` → `image`, with `config` and `error` used from above.

pub mod admission;
pub mod background;
pub mod cli;
pub mod config;
pub mod error;
mod handshake;
pub mod image;
pub mod inject;
mod registry;
pub mod send;
pub mod server;
pub mod session;
mod sockopt;
mod timeout;
pub mod urgent;

pub use cli::{run, Args, RunError};
pub use config::Config;
pub use error::ServeError;
pub use image::Image;
pub use inject::FaultInjection;
pub use server::Server;
pub use session::Policy;
