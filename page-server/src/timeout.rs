//! The two sides of an admitted connection, each with its time limit.
//!
//! [`Inbound`] reads first the bytes the admission loop read already, then the socket: during
//! the handshake until its deadline; on an urgent connection, silence is cut after the idle
//! timeout once the session has nothing left to send. [`Outbound`] ends a write that waited
//! the idle timeout for the client to read. [`idle`] turns either timeout into
//! [`ServeError::Idle`].

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use uffd_core::Conn;

use crate::session::Session;
use crate::ServeError;

/// What a connection's reads may wait for ([`Inbound`]).
#[derive(Debug)]
pub(crate) enum ReadLimit {
    /// The handshake: everything must have arrived by this instant.
    Handshake(Instant),
    /// An urgent connection: silence is cut after `timeout` (SO_RCVTIMEO) once the session
    /// has nothing left to send.
    Idle {
        /// The session the connection carries.
        session: Arc<Session>,
        /// `Config::idle_timeout`.
        timeout: Duration,
    },
    /// No limit (a background connection is not read after its hello).
    None,
}

/// The read side of a connection, with its time limit: first the bytes the admission loop
/// read already, then the socket. The limit changes once the handshake is over, while the
/// [`FrameReader`](uffd_core::FrameReader) owns this, hence the cell.
#[derive(Debug)]
pub(crate) struct Inbound {
    conn: Conn,
    first: Vec<u8>,
    at: usize,
    limit: RefCell<ReadLimit>,
}

impl Inbound {
    pub(crate) fn new(conn: Conn, first: Vec<u8>, deadline: Instant) -> Inbound {
        Inbound {
            conn,
            first,
            at: 0,
            limit: RefCell::new(ReadLimit::Handshake(deadline)),
        }
    }

    /// Replaces the limit (after the handshake).
    pub(crate) fn set_limit(&self, limit: ReadLimit) -> io::Result<()> {
        // Each read of an urgent connection waits at most the idle timeout, and then looks at
        // the session (see `read`).
        let timeout = match &limit {
            ReadLimit::Idle { timeout, .. } => Some(*timeout),
            ReadLimit::Handshake(_) | ReadLimit::None => None,
        };
        self.conn.set_read_timeout(timeout)?;
        *self.limit.borrow_mut() = limit;
        Ok(())
    }
}

/// A read or write that gave up after SO_RCVTIMEO / SO_SNDTIMEO: EAGAIN on a blocking socket.
/// (Not ETIMEDOUT, which is TCP itself giving up on the peer, e.g. keepalive.)
fn timed_out(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::WouldBlock
}

impl Read for Inbound {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at < self.first.len() {
            let n = buf.len().min(self.first.len() - self.at);
            buf[..n].copy_from_slice(&self.first[self.at..self.at + n]);
            self.at += n;
            return Ok(n);
        }
        match self.limit.get_mut() {
            ReadLimit::Handshake(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no complete hello within the handshake timeout",
                    ));
                }
                self.conn.set_read_timeout(Some(left))?;
                self.conn.read(buf)
            }
            ReadLimit::Idle { session, .. } => loop {
                match self.conn.read(buf) {
                    // The client may fault at any moment while pages are left to send (a
                    // client without a background connection may rightly be silent for
                    // hours): keep waiting. Nothing was consumed, so nothing is lost.
                    Err(err) if timed_out(&err) && !nothing_left(session) => continue,
                    other => return other,
                }
            },
            ReadLimit::None => self.conn.read(buf),
        }
    }
}

/// The write side of a connection. Its socket's SO_SNDTIMEO is the idle timeout: the kernel
/// ends a write that waited that long for the client to read with EAGAIN or, if it could
/// move a few bytes first, with a short count. Both mean the client read nothing for that
/// long, and both are `WouldBlock` here ([`ServeError::Idle`] in the end).
#[derive(Debug)]
pub(crate) struct Outbound {
    conn: Conn,
    idle: Duration,
}

impl Outbound {
    pub(crate) fn new(conn: Conn, idle: Duration) -> io::Result<Outbound> {
        conn.set_write_timeout(Some(idle))?;
        Ok(Outbound { conn, idle })
    }

    /// The connection's socket.
    pub(crate) fn conn(&self) -> &Conn {
        &self.conn
    }

    /// A write that returned only after the whole timeout made (almost) no progress.
    fn check(&self, started: Instant, written: io::Result<usize>) -> io::Result<usize> {
        match written {
            Ok(_) if started.elapsed() >= self.idle => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "the client read nothing for the idle timeout",
            )),
            other => other,
        }
    }
}

impl Write for Outbound {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let started = Instant::now();
        let written = self.conn.write(buf);
        self.check(started, written)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let started = Instant::now();
        let written = self.conn.write_vectored(bufs);
        self.check(started, written)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Every page of the session has been claimed by a sender: the client needs nothing more.
fn nothing_left(session: &Session) -> bool {
    session.sent_pages() >= session.image.pages()
}

/// A socket timeout (an idle write, or an idle urgent read) becomes [`ServeError::Idle`].
pub(crate) fn idle(err: ServeError, timeout: Duration) -> ServeError {
    match &err {
        ServeError::Io(e) | ServeError::Wire(uffd_core::WireError::Io(e)) if timed_out(e) => {
            ServeError::Idle(timeout)
        }
        _ => err,
    }
}
