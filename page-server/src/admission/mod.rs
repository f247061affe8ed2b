//! Admission: every connection from `accept` until its first frame has arrived, served by the
//! accepting thread alone, as one event loop (`poll(2)` over non-blocking sockets).
//!
//! A connection that has not sent its hello costs a table entry (its socket, a deadline and
//! at most one hello's bytes) and no thread, so idle or dribbling connections hold neither
//! threads nor memory. The table holds at most `max_pending` connections; when it is full, the
//! **oldest** pending connection is dropped to make room for the new one (the defence of SYN
//! caches and sshd's `MaxStartups`), never the new one. A client that sends its hello at once
//! is done within a round trip, long before it can become the oldest, so it is admitted
//! however many connections sit idle. `max_per_source` (optional) bounds the pending
//! connections of one IP address the same way: that address's oldest goes first. Each
//! connection has `hello_timeout` to send its hello.
//!
//! Once the first frame has arrived (a hello; for anything else its header, the handshake
//! thread reads the rest and answers with the right error frame), the connection leaves the
//! table and goes to the `admit` callback (the server starts its handshake thread), with the
//! bytes read so far. Bad headers are answered here: an error frame, then the connection is
//! drained for a moment before it is closed, so the frame is not lost to a reset.
//!
//! This file is the event loop and its rules; `pending` reads one connection's first frame,
//! `table` keeps the pending connections in accept order and counts them per source.

use std::io::{self, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use uffd_core::proto::ErrorCode;
use uffd_core::{Conn, Frame, Listener};

mod pending;
mod table;

use pending::{read_some, Pending, State, Step};
use table::Table;

/// How long a refused connection is drained after its error frame before it is closed.
const LINGER: Duration = Duration::from_millis(200);

/// The admission rules.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Connections waiting for their first frame, at most; a new one beyond that replaces
    /// the oldest.
    pub max_pending: usize,
    /// Pending connections of one IP address, at most (None: no limit); a new one beyond
    /// that replaces that address's oldest.
    pub max_per_source: Option<usize>,
    /// Time from the accept until the whole first frame has arrived.
    pub hello_timeout: Duration,
    /// Largest payload a frame header may announce (the server's decoder limit).
    pub max_payload: usize,
}

/// A connection whose first frame has arrived (a whole hello, or the header of another
/// frame), handed to the handshake. The socket is blocking again.
#[derive(Debug)]
pub struct Arrival {
    /// The connection.
    pub conn: Conn,
    /// The bytes read from it so far (the start of the stream).
    pub first: Vec<u8>,
    /// When the whole handshake must be over (the hello deadline).
    pub deadline: Instant,
}

/// A connection the handshake could not take; it is answered with an error frame and closed.
#[derive(Debug)]
pub struct Refused {
    /// The connection.
    pub arrival: Arrival,
    /// The error frame's code.
    pub code: ErrorCode,
    /// The error frame's message.
    pub message: String,
}

/// The admission table and its event loop.
#[derive(Debug)]
pub struct Admission<'a> {
    listener: &'a Listener,
    rules: Rules,
    /// Pending connections by accept order: the first entry is the oldest.
    table: Table,
    /// Published table size ([`crate::Server::pending`]).
    published: &'a AtomicUsize,
    drops: Tally,
}

impl<'a> Admission<'a> {
    /// An empty table for `listener`; its size is published in `published`.
    pub fn new(listener: &'a Listener, rules: Rules, published: &'a AtomicUsize) -> Admission<'a> {
        Admission {
            listener,
            rules,
            table: Table::default(),
            published,
            drops: Tally::default(),
        }
    }

    /// Runs the event loop until `shutdown` becomes true; each connection whose first frame
    /// has arrived goes to `admit`. Pending connections are closed on return.
    pub fn run(
        &mut self,
        shutdown: &AtomicBool,
        mut admit: impl FnMut(Arrival) -> Result<(), Refused>,
    ) -> io::Result<()> {
        self.listener.set_nonblocking(true)?;
        while !shutdown.load(Ordering::Acquire) {
            let (accept, ready) = self.wait()?;
            // Hellos and closes first: a connection whose hello is in, or whose peer has gone,
            // must not be pushed out by the connections accepted next.
            for id in ready {
                self.progress(id, &mut admit);
            }
            if accept {
                self.accept_some();
            }
            self.expire(Instant::now());
            self.published.store(self.table.len(), Ordering::Release);
        }
        self.table.clear();
        self.published.store(0, Ordering::Release);
        Ok(())
    }

    /// Polls the listener and every pending connection, at most 100 ms or until the next
    /// deadline. Returns whether the listener is ready, and the ready pending connections.
    fn wait(&self) -> io::Result<(bool, Vec<u64>)> {
        let now = Instant::now();
        let next = self.table.iter().map(|(_, p)| p.deadline).min();
        let timeout = next
            .map_or(Duration::from_millis(100), |d| {
                d.saturating_duration_since(now)
            })
            .min(Duration::from_millis(100));
        // Rounded up: a deadline a fraction of a millisecond away must not spin.
        let millis = u16::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(100);
        let mut fds = Vec::with_capacity(self.table.len() + 1);
        fds.push(PollFd::new(self.listener.as_fd(), PollFlags::POLLIN));
        fds.extend(
            self.table
                .iter()
                .map(|(_, p)| PollFd::new(p.conn.as_fd(), PollFlags::POLLIN)),
        );
        match nix::poll::poll(&mut fds, PollTimeout::from(millis)) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => return Ok((false, Vec::new())),
            Err(errno) => return Err(errno.into()),
        }
        let ready = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
        let accept = ready(&fds[0]);
        let ids = self
            .table
            .iter()
            .zip(&fds[1..])
            .filter(|(_, fd)| ready(fd))
            .map(|((id, _), _)| id)
            .collect();
        Ok((accept, ids))
    }

    /// Accepts what the listener has, up to an eighth of a table per turn, so that a burst
    /// needs several turns to push a connection out, and its hello is read at each turn.
    fn accept_some(&mut self) {
        for _ in 0..(self.rules.max_pending / 8).max(16) {
            match self.listener.accept() {
                Ok(conn) => self.add(conn),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.raw_os_error() == Some(libc::EMFILE) => {
                    // Out of descriptors: the oldest pending connection makes room (the new
                    // one waits in the listen backlog until the next turn).
                    self.drops.count("out of file descriptors");
                    match self.table.oldest() {
                        Some(id) => self.evict(id, "the server is out of file descriptors"),
                        // Sessions hold them all: the listener stays ready, so pause rather
                        // than spin until one ends.
                        None => std::thread::sleep(Duration::from_millis(10)),
                    }
                    return;
                }
                Err(err) => {
                    tracing::warn!("accept failed: {err}");
                    return;
                }
            }
        }
    }

    fn add(&mut self, conn: Conn) {
        if conn.set_nonblocking(true).is_err() {
            return;
        }
        let source = conn.peer_ip();
        if let (Some(limit), Some(ip)) = (self.rules.max_per_source, source) {
            if self.table.count_from(ip) >= limit {
                if let Some(id) = self.table.oldest_from(ip) {
                    self.drops.count("--max-pending-per-source");
                    let why = format!(
                        "{limit} connections from {ip} were waiting for their hello \
                         (--max-pending-per-source) and this one had waited longest"
                    );
                    self.evict(id, &why);
                }
            }
        }
        if self.table.len() >= self.rules.max_pending {
            if let Some(id) = self.table.oldest() {
                self.drops.count("--max-pending");
                let why = format!(
                    "{} connections were waiting for their hello (--max-pending) and this \
                     one had waited longest",
                    self.rules.max_pending
                );
                self.evict(id, &why);
            }
        }
        self.table.insert(Pending {
            conn,
            source,
            deadline: Instant::now() + self.rules.hello_timeout,
            state: State::Hello {
                buf: Vec::new(),
                filled: 0,
            },
        });
    }

    /// Drops a pending connection to make room: an error frame if it fits, then the close.
    fn evict(&mut self, id: u64, why: &str) {
        if let Some(mut pending) = self.table.remove(id) {
            let message = format!("dropped: {why}");
            send_error(&mut pending.conn, ErrorCode::TooManySessions, &message);
        }
    }

    fn progress(&mut self, id: u64, admit: &mut impl FnMut(Arrival) -> Result<(), Refused>) {
        let Some(pending) = self.table.get_mut(id) else {
            return;
        };
        match read_some(pending, self.rules.max_payload) {
            Step::Wait => {}
            Step::Gone => {
                self.table.remove(id);
            }
            Step::Bad(err) => {
                if let Some(pending) = self.table.remove(id) {
                    tracing::info!(peer = %pending.conn.peer(), "closing connection: {err}");
                    let code = err.code().unwrap_or(ErrorCode::Protocol);
                    self.refuse(pending.conn, code, &err.to_string());
                }
            }
            Step::Arrived => {
                let Some(pending) = self.table.remove(id) else {
                    return;
                };
                let State::Hello { mut buf, filled } = pending.state else {
                    return;
                };
                buf.truncate(filled);
                if pending.conn.set_nonblocking(false).is_err() {
                    return;
                }
                let arrival = Arrival {
                    conn: pending.conn,
                    first: buf,
                    deadline: pending.deadline,
                };
                if let Err(refused) = admit(arrival) {
                    self.drops.count("handshakes in progress");
                    if refused.arrival.conn.set_nonblocking(true).is_ok() {
                        self.refuse(refused.arrival.conn, refused.code, &refused.message);
                    }
                }
            }
        }
    }

    /// Answers with an error frame, stops writing, and keeps the connection in the table a
    /// moment to drain what the peer still sends (closing a socket with unread input makes
    /// the kernel answer with a reset, which can destroy the error frame before it is read).
    fn refuse(&mut self, mut conn: Conn, code: ErrorCode, message: &str) {
        if conn.set_nonblocking(true).is_err() {
            return;
        }
        send_error(&mut conn, code, message);
        let _ = match &conn {
            Conn::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
            Conn::Unix(s) => s.shutdown(std::net::Shutdown::Write),
        };
        // Not counted per source: it is on its way out.
        self.table.insert(Pending {
            conn,
            source: None,
            deadline: Instant::now() + LINGER,
            state: State::Closing,
        });
        if self.table.len() > self.rules.max_pending {
            if let Some(oldest) = self.table.oldest() {
                self.evict(oldest, "too many connections waiting for their hello");
            }
        }
    }

    /// Closes the connections whose deadline has passed.
    fn expire(&mut self, now: Instant) {
        for id in self.table.expired(now) {
            if let Some(pending) = self.table.remove(id) {
                if matches!(pending.state, State::Hello { .. }) {
                    tracing::debug!(
                        peer = %pending.conn.peer(),
                        "closing connection: no hello within {:?}",
                        self.rules.hello_timeout
                    );
                }
            }
        }
    }
}

/// Writes an error frame on a non-blocking connection; one that does not fit is not sent.
fn send_error(conn: &mut Conn, code: ErrorCode, message: &str) {
    let mut frame = bytes::BytesMut::new();
    Frame::Error { code, message }.encode(&mut frame);
    let _ = conn.write_all(&frame);
}

/// Connections dropped to make room, told in the log at most once a second (a flood must not
/// flood the log).
#[derive(Debug, Default)]
struct Tally {
    since_last: u64,
    last: Option<Instant>,
}

impl Tally {
    fn count(&mut self, limit: &str) {
        self.since_last += 1;
        if self
            .last
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
        {
            tracing::warn!(
                dropped = self.since_last,
                "dropping the oldest connections waiting for their hello ({limit})"
            );
            self.since_last = 0;
            self.last = Some(Instant::now());
        }
    }
}
