//! Fault injection: a hook for tests and demos, never for production use.
//!
//! `page-server --drop-every N` closes each connection once it has sent N frames, so a test or
//! a demo can watch the client reconnect and resume its session. Everything the server does on
//! purpose to break a connection is here; the send path only calls [`FaultInjection::after_frame`].

use std::io::{self, Write};

use uffd_core::FrameWriter;

/// Failures the server causes on purpose (the default: none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultInjection {
    /// Close a connection once it has sent this many frames (`--drop-every N`).
    pub drop_every: Option<u64>,
}

impl FaultInjection {
    /// Called after each frame a sender writes: fails the connection with
    /// [`io::ErrorKind::ConnectionAborted`] once it has sent `drop_every` frames.
    pub fn after_frame<W: Write>(&self, writer: &FrameWriter<W>) -> io::Result<()> {
        match self.drop_every {
            Some(n) if writer.frames_written() >= n => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("fault injection: connection dropped after {n} frames"),
            )),
            _ => Ok(()),
        }
    }
}
