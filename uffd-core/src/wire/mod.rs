//! Frames over a byte stream: endpoints (`HOST:PORT` or `unix:PATH`), connections and their
//! socket options, and a blocking reader and writer of [`proto`](mod@crate::proto) frames.
//!
//! # Layout
//! - `conn.rs`: [`Conn`], a connected stream, and its socket options (liveness, receive-window
//!   clamp, pacing rate);
//! - `endpoint.rs`: [`Endpoint`] parsing, [`Conn::connect`], [`Listener`] and the open-files
//!   limit a server raises;
//! - `framed.rs`: [`FrameReader`], [`FrameWriter`], [`BatchReader`] and [`FrameBatch`], and
//!   [`WireError`].
//!
//! `endpoint.rs` uses `conn.rs`; `framed.rs` uses neither (it reads and writes any stream).

mod conn;
mod endpoint;
mod framed;

pub use conn::Conn;
pub use endpoint::{raise_open_files_limit, Endpoint, EndpointParseError, Listener};
pub use framed::{BatchReader, FrameBatch, FrameReader, FrameWriter, Result, WireError};
