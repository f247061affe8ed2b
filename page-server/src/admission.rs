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

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use uffd_core::proto::{self, ErrorCode, Header, Kind, HEADER_LEN};
use uffd_core::{Conn, Frame, Listener, WireError};

use crate::ServeError;

/// The longest hello payload: its fixed fields (34 bytes, see docs/protocol.md) and the
/// longest token. A longer "hello" is read by the handshake thread, which refuses it.
const HELLO_MAX: usize = 34 + proto::MAX_TEXT;

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

#[derive(Debug)]
enum State {
    /// Reading the first frame: `buf[..filled]` has arrived, `buf.len()` is what is needed.
    Hello { buf: Vec<u8>, filled: usize },
    /// An error frame was sent; what the peer still sends is read and dropped until it
    /// closes or the deadline passes.
    Closing,
}

#[derive(Debug)]
struct Pending {
    conn: Conn,
    source: Option<IpAddr>,
    deadline: Instant,
    state: State,
}

/// What reading a pending connection came to.
enum Step {
    /// Waiting for more bytes.
    Wait,
    /// Closed (end of stream, error, or drained).
    Gone,
    /// The first frame (or its header) is complete.
    Arrived,
    /// The header does not decode.
    Bad(ServeError),
}

/// The admission table and its event loop.
#[derive(Debug)]
pub struct Admission<'a> {
    listener: &'a Listener,
    rules: Rules,
    /// Pending connections by accept order: the first entry is the oldest.
    table: BTreeMap<u64, Pending>,
    per_source: HashMap<IpAddr, usize>,
    next_id: u64,
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
            table: BTreeMap::new(),
            per_source: HashMap::new(),
            next_id: 0,
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
        let next = self.table.values().map(|p| p.deadline).min();
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
                .values()
                .map(|p| PollFd::new(p.conn.as_fd(), PollFlags::POLLIN)),
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
            .keys()
            .zip(&fds[1..])
            .filter(|(_, fd)| ready(fd))
            .map(|(&id, _)| id)
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
                    match self.table.keys().next() {
                        Some(&id) => self.evict(id, "the server is out of file descriptors"),
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
            if self.per_source.get(&ip).is_some_and(|&n| n >= limit) {
                let oldest = self
                    .table
                    .iter()
                    .find(|(_, p)| p.source == Some(ip))
                    .map(|(&id, _)| id);
                if let Some(id) = oldest {
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
            if let Some(&id) = self.table.keys().next() {
                self.drops.count("--max-pending");
                let why = format!(
                    "{} connections were waiting for their hello (--max-pending) and this \
                     one had waited longest",
                    self.rules.max_pending
                );
                self.evict(id, &why);
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        if let Some(ip) = source {
            *self.per_source.entry(ip).or_default() += 1;
        }
        self.table.insert(
            id,
            Pending {
                conn,
                source,
                deadline: Instant::now() + self.rules.hello_timeout,
                state: State::Hello {
                    buf: Vec::new(),
                    filled: 0,
                },
            },
        );
    }

    /// Removes a pending connection from the table (closing it when the result is dropped).
    fn remove(&mut self, id: u64) -> Option<Pending> {
        let pending = self.table.remove(&id)?;
        if let Some(ip) = pending.source {
            if let Some(n) = self.per_source.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    self.per_source.remove(&ip);
                }
            }
        }
        Some(pending)
    }

    /// Drops a pending connection to make room: an error frame if it fits, then the close.
    fn evict(&mut self, id: u64, why: &str) {
        if let Some(mut pending) = self.remove(id) {
            let message = format!("dropped: {why}");
            send_error(&mut pending.conn, ErrorCode::TooManySessions, &message);
        }
    }

    fn progress(&mut self, id: u64, admit: &mut impl FnMut(Arrival) -> Result<(), Refused>) {
        let Some(pending) = self.table.get_mut(&id) else {
            return;
        };
        match read_some(pending, self.rules.max_payload) {
            Step::Wait => {}
            Step::Gone => {
                self.remove(id);
            }
            Step::Bad(err) => {
                if let Some(pending) = self.remove(id) {
                    tracing::info!(peer = %pending.conn.peer(), "closing connection: {err}");
                    let code = err.code().unwrap_or(ErrorCode::Protocol);
                    self.refuse(pending.conn, code, &err.to_string());
                }
            }
            Step::Arrived => {
                let Some(pending) = self.remove(id) else {
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
        let id = self.next_id;
        self.next_id += 1;
        // Not counted per source: it is on its way out.
        self.table.insert(
            id,
            Pending {
                conn,
                source: None,
                deadline: Instant::now() + LINGER,
                state: State::Closing,
            },
        );
        if self.table.len() > self.rules.max_pending {
            if let Some(&oldest) = self.table.keys().next() {
                self.evict(oldest, "too many connections waiting for their hello");
            }
        }
    }

    /// Closes the connections whose deadline has passed.
    fn expire(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .table
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            if let Some(pending) = self.remove(id) {
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

/// Reads what a pending connection has for us, without blocking.
fn read_some(pending: &mut Pending, max_payload: usize) -> Step {
    let (buf, filled) = match &mut pending.state {
        State::Closing => return drain(&mut pending.conn),
        State::Hello { buf, filled } => (buf, filled),
    };
    loop {
        if buf.is_empty() {
            buf.resize(HEADER_LEN, 0);
        }
        let n = match pending.conn.read(&mut buf[*filled..]) {
            Ok(0) => return Step::Gone,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Step::Wait,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Step::Gone,
        };
        *filled += n;
        if *filled < buf.len() {
            continue;
        }
        if buf.len() > HEADER_LEN {
            return Step::Arrived; // the whole hello
        }
        let head: [u8; HEADER_LEN] = match buf[..HEADER_LEN].try_into() {
            Ok(head) => head,
            Err(_) => return Step::Gone,
        };
        match Header::parse(head, max_payload) {
            Err(err) => return Step::Bad(ServeError::Wire(WireError::Proto(err))),
            Ok(header) if header.kind == Kind::Hello && (header.len as usize) <= HELLO_MAX => {
                buf.resize(HEADER_LEN + header.len as usize, 0);
                if *filled == buf.len() {
                    return Step::Arrived;
                }
            }
            // Not a hello, or too long for one: the handshake thread reads the rest and
            // answers it.
            Ok(_) => return Step::Arrived,
        }
    }
}

/// Reads and drops what a closing connection still sends.
fn drain(conn: &mut Conn) -> Step {
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        match conn.read(&mut sink) {
            Ok(0) => return Step::Gone,
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Step::Wait,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Step::Gone,
        }
    }
    Step::Wait
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    /// A pending entry reading from one end of a socket pair; the other end is returned.
    fn pending() -> (Pending, UnixStream) {
        let (ours, theirs) = UnixStream::pair().expect("pair");
        let conn = Conn::Unix(ours);
        conn.set_nonblocking(true).expect("non-blocking");
        let pending = Pending {
            conn,
            source: None,
            deadline: Instant::now() + Duration::from_secs(5),
            state: State::Hello {
                buf: Vec::new(),
                filled: 0,
            },
        };
        (pending, theirs)
    }

    fn hello() -> Vec<u8> {
        let mut buf = bytes::BytesMut::new();
        Frame::Hello(proto::Hello {
            version: proto::VERSION,
            role: proto::Role::Urgent,
            flags: 0,
            session: 0,
            unit: 4096,
            image_id: 0,
            token: b"secret",
        })
        .encode(&mut buf);
        buf.to_vec()
    }

    fn first(pending: &Pending) -> &[u8] {
        match &pending.state {
            State::Hello { buf, filled } => &buf[..*filled],
            State::Closing => &[],
        }
    }

    #[test]
    fn a_hello_in_pieces_arrives_whole_and_nothing_more_is_read() {
        let (mut p, mut peer) = pending();
        let hello = hello();
        assert!(matches!(read_some(&mut p, 1 << 20), Step::Wait));
        for piece in hello.chunks(5) {
            assert!(matches!(read_some(&mut p, 1 << 20), Step::Wait));
            peer.write_all(piece).expect("write");
        }
        // A request right behind the hello stays in the socket for the handshake thread.
        peer.write_all(&[4, 0, 0, 0, 16, 0, 0, 0]).expect("write");
        assert!(matches!(read_some(&mut p, 1 << 20), Step::Arrived));
        assert_eq!(first(&p), &hello[..]);
    }

    #[test]
    fn another_first_frame_is_handed_over_after_its_header() {
        let (mut p, mut peer) = pending();
        let mut request = bytes::BytesMut::new();
        Frame::Request {
            offset: 0,
            len: 4096,
        }
        .encode(&mut request);
        peer.write_all(&request).expect("write");
        assert!(matches!(read_some(&mut p, 1 << 20), Step::Arrived));
        assert_eq!(first(&p), &request[..HEADER_LEN]);
    }

    #[test]
    fn a_bad_header_or_the_end_of_stream() {
        let (mut p, mut peer) = pending();
        peer.write_all(b"GET / HTTP/1.1\r\n").expect("write");
        assert!(matches!(read_some(&mut p, 1 << 20), Step::Bad(_)));
        let (mut p, peer) = pending();
        drop(peer);
        assert!(matches!(read_some(&mut p, 1 << 20), Step::Gone));
    }
}
