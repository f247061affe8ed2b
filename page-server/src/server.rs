//! The handshake and the session registry.
//!
//! New connections wait in the admission table ([`crate::admission`], one event loop, no
//! thread) until their first frame has arrived; then each gets a thread. Its first frame must
//! be a hello: an urgent hello with session 0 opens a session, a background hello joins one.
//! Any bad frame is answered with an error frame and the connection is closed; other clients
//! never notice.
//!
//! **Limits.** What one peer can hold on to is bounded (see [`Config`]):
//! - connections that have not sent their hello: at most `max_pending` (a new one beyond that
//!   replaces the oldest), at most `max_pending_per_source` from one address, each for at most
//!   `handshake_timeout`; handshakes past the hello (a resuming client's have frames): at
//!   most `max_pending` threads;
//! - sessions: at most `max_sessions`;
//! - an established connection that makes no progress for `idle_timeout` is closed and its
//!   session ended: a write that cannot proceed (the client stopped reading, `Outbound`),
//!   or silence on the urgent connection once the session has nothing left to send
//!   (`Inbound`);
//! - a client that vanished without a word (its host or link gone: no TCP acknowledgement,
//!   no keepalive answer) is dropped after `peer_timeout` (TCP keepalive and
//!   `TCP_USER_TIMEOUT`, [`Conn::set_liveness`]), and its threads and session with it.
//!
//! Frames are written with blocking writes and nothing is queued in memory, so a slow reader
//! costs its socket buffers and its thread, never more.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uffd_core::proto::{self, ErrorCode, Hello, Role, Welcome};
use uffd_core::repeat::{Repeats, Tell};
use uffd_core::{Conn, Endpoint, Frame, FrameReader, FrameWriter, Limits, Listener};

use crate::admission::{self, Admission, Arrival, Refused};
use crate::image::Image;
use crate::session::{Policy, Session};
use crate::ServeError;

/// Server settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub listen: Endpoint,
    /// Background chunking and preemption.
    pub policy: Policy,
    /// Sessions served at once; more are refused with an error frame.
    pub max_sessions: usize,
    /// How long a new connection may take to send its hello (all of it, and a resuming
    /// client's have frames), from its accept.
    pub handshake_timeout: Duration,
    /// Connections that have not sent their hello, at most. They cost no thread; when the
    /// table is full, the oldest is dropped (with a `TooManySessions` error frame) to make
    /// room for the new one. Also the most handshake threads (connections past their hello
    /// that have not been welcomed yet); beyond that a hello is refused with
    /// `TooManySessions`.
    pub max_pending: usize,
    /// Connections from one IP address that have not sent their hello, at most (None: no
    /// limit); beyond that the address's oldest is dropped.
    pub max_pending_per_source: Option<usize>,
    /// A client whose TCP stops answering for this long (no acknowledgement of data sent, no
    /// answer to keepalive probes, or a receive window that stays shut) is dropped
    /// ([`Conn::set_liveness`]): a host or link that vanished without a word costs its
    /// threads and session only this long.
    pub peer_timeout: Duration,
    /// An established connection that makes no progress for this long is closed and its
    /// session ended: a write blocked this long (the client stopped reading), or an urgent
    /// connection silent this long while the session has nothing left to send. A silent
    /// urgent connection whose session still has pages to send is never cut: its client may
    /// fault at any moment.
    pub idle_timeout: Duration,
    /// Shared secret clients must present (None: no authentication).
    pub token: Option<Vec<u8>>,
    /// Pace each background connection at this many bytes per second at most
    /// (`SO_MAX_PACING_RATE`; None: as fast as TCP goes). Urgent connections are never paced.
    pub max_bandwidth: Option<u64>,
    /// Run the thread serving each urgent connection `SCHED_FIFO` at this priority
    /// ([`uffd_core::cpu::set_realtime`]; None: the normal scheduler). On a host whose CPUs
    /// are busy with the background streams, a woken urgent thread otherwise waits for
    /// their time slices before it reads the request.
    pub urgent_priority: Option<i32>,
}

impl Config {
    /// Defaults: 64 KiB chunks, preemption on, 64 sessions, 5 s handshake, 128 pending
    /// connections (no per-source limit), 30 s peer timeout, 300 s idle timeout, no token,
    /// background not paced.
    pub fn new(listen: Endpoint) -> Config {
        Config {
            listen,
            policy: Policy {
                chunk: 64 << 10,
                preempt: true,
                drop_every: None,
            },
            max_sessions: 64,
            handshake_timeout: Duration::from_secs(5),
            max_pending: 128,
            max_pending_per_source: None,
            peer_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            token: None,
            max_bandwidth: None,
            urgent_priority: None,
        }
    }
}

#[derive(Debug)]
struct Shared {
    image: Arc<Image>,
    config: Config,
    limits: Limits,
    sessions: Mutex<HashMap<u64, Arc<Session>>>,
    /// Connections in the admission table (no hello yet).
    pending: AtomicUsize,
    /// Handshake threads ([`HandshakeSlot`]).
    handshaking: AtomicUsize,
    /// Connection threads running.
    connections: AtomicUsize,
    /// Connections and sessions closed on an error, for the log (a client that keeps
    /// failing must not write a line each time).
    closes: Repeats,
    /// Sessions resumed, for the log.
    resumes: Repeats,
}

impl Shared {
    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A bound server.
#[derive(Debug)]
pub struct Server {
    listener: Listener,
    shared: Arc<Shared>,
}

impl Server {
    /// Binds the listening socket.
    pub fn bind(config: Config, image: Arc<Image>) -> Result<Server, ServeError> {
        let listener = Listener::bind(&config.listen).map_err(|source| ServeError::Bind {
            addr: config.listen.to_string(),
            source,
        })?;
        let limits = Limits::new(image.len(), image.page_size());
        Ok(Server {
            listener,
            shared: Arc::new(Shared {
                image,
                config,
                limits,
                sessions: Mutex::new(HashMap::new()),
                pending: AtomicUsize::new(0),
                handshaking: AtomicUsize::new(0),
                connections: AtomicUsize::new(0),
                closes: Repeats::default(),
                resumes: Repeats::default(),
            }),
        })
    }

    /// The address actually bound (the real port when asked for port 0).
    pub fn local_endpoint(&self) -> Result<Endpoint, ServeError> {
        self.listener.local_endpoint().map_err(ServeError::Io)
    }

    /// Number of live sessions.
    pub fn sessions(&self) -> usize {
        self.shared.sessions().len()
    }

    /// Connections being served by a thread (their hello has arrived).
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::Acquire)
    }

    /// Connections waiting for their hello in the admission table (no thread; at most
    /// `max_pending`).
    pub fn pending(&self) -> usize {
        self.shared.pending.load(Ordering::Acquire)
    }

    /// Serves until `shutdown` becomes true, then closes every session.
    pub fn serve(&self, shutdown: &AtomicBool) -> Result<(), ServeError> {
        let config = &self.shared.config;
        let rules = admission::Rules {
            max_pending: config.max_pending.max(1),
            max_per_source: config.max_pending_per_source,
            hello_timeout: config.handshake_timeout,
            max_payload: self.shared.limits.max_payload,
        };
        Admission::new(&self.listener, rules, &self.shared.pending)
            .run(shutdown, |arrival| self.start_handshake(arrival))?;
        let sessions: Vec<_> = self.shared.sessions().drain().map(|(_, s)| s).collect();
        for session in sessions {
            session.close();
        }
        tracing::info!("shut down");
        Ok(())
    }

    /// Starts the thread that finishes `arrival`'s handshake and then serves it.
    fn start_handshake(&self, arrival: Arrival) -> Result<(), Refused> {
        let Some(slot) = HandshakeSlot::take(&self.shared) else {
            let limit = self.shared.config.max_pending;
            return Err(Refused {
                arrival,
                code: ErrorCode::TooManySessions,
                message: format!("too many handshakes in progress (limit {limit})"),
            });
        };
        if let Err(err) = arrival.conn.set_liveness(self.shared.config.peer_timeout) {
            tracing::debug!("keepalive / TCP_USER_TIMEOUT not set: {err}");
        }
        let shared = Arc::clone(&self.shared);
        let spawned = std::thread::Builder::new()
            .name("conn".into())
            .spawn(move || handle(arrival, &shared, slot));
        if let Err(err) = spawned {
            tracing::warn!("cannot spawn a connection thread: {err}");
        }
        Ok(())
    }
}

/// A handshake thread: one of `Config::max_pending`, given back when dropped (once the
/// session is registered or joined, or when the connection ends before that).
#[derive(Debug)]
struct HandshakeSlot(Arc<Shared>);

impl HandshakeSlot {
    /// A slot, or None if `max_pending` handshakes are under way already.
    fn take(shared: &Arc<Shared>) -> Option<HandshakeSlot> {
        let limit = shared.config.max_pending;
        shared
            .handshaking
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        Some(HandshakeSlot(Arc::clone(shared)))
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.0.handshaking.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Sets an int socket option; a failure is only logged (at debug): these options tune, the
/// connection works without them.
fn set_option(conn: &Conn, level: libc::c_int, name: libc::c_int, value: libc::c_int, what: &str) {
    if let Err(err) = conn.set_int_option(level, name, value) {
        tracing::debug!(what, "setsockopt failed: {err}");
    }
}

/// What a connection's reads may wait for ([`Inbound`]).
#[derive(Debug)]
enum ReadLimit {
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
/// [`FrameReader`] owns this, hence the cell.
#[derive(Debug)]
struct Inbound {
    conn: Conn,
    first: Vec<u8>,
    at: usize,
    limit: RefCell<ReadLimit>,
}

impl Inbound {
    fn new(conn: Conn, first: Vec<u8>, deadline: Instant) -> Inbound {
        Inbound {
            conn,
            first,
            at: 0,
            limit: RefCell::new(ReadLimit::Handshake(deadline)),
        }
    }

    /// Replaces the limit (after the handshake).
    fn set_limit(&self, limit: ReadLimit) -> io::Result<()> {
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
struct Outbound {
    conn: Conn,
    idle: Duration,
}

impl Outbound {
    fn new(conn: Conn, idle: Duration) -> io::Result<Outbound> {
        conn.set_write_timeout(Some(idle))?;
        Ok(Outbound { conn, idle })
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
fn idle(err: ServeError, timeout: Duration) -> ServeError {
    match &err {
        ServeError::Io(e) | ServeError::Wire(uffd_core::WireError::Io(e)) if timed_out(e) => {
            ServeError::Idle(timeout)
        }
        _ => err,
    }
}

fn handle(arrival: Arrival, shared: &Shared, slot: HandshakeSlot) {
    shared.connections.fetch_add(1, Ordering::AcqRel);
    serve_and_close(arrival, shared, slot);
    shared.connections.fetch_sub(1, Ordering::AcqRel);
}

fn serve_and_close(arrival: Arrival, shared: &Shared, slot: HandshakeSlot) {
    let Arrival {
        conn,
        first,
        deadline,
    } = arrival;
    let peer = conn.peer();
    let (read_half, tracked) = match (conn.try_clone(), conn.try_clone()) {
        (Ok(r), Ok(t)) => (r, t),
        _ => return,
    };
    let mut reader = FrameReader::new(Inbound::new(read_half, first, deadline));
    let Ok(outbound) = Outbound::new(conn, shared.config.idle_timeout) else {
        return;
    };
    let mut writer = FrameWriter::new(outbound);
    match serve_connection(shared, &mut reader, &mut writer, tracked, slot) {
        Ok(()) => tracing::debug!(%peer, "connection closed"),
        Err(err) => {
            info_repeated(&shared.closes, "connections closed on an error", || {
                format!("closing connection from {peer}: {err}")
            });
            tell(&mut writer, &err);
        }
    }
    if let Ok(mut conn) = writer.get_ref().conn.try_clone() {
        conn.linger_close(1 << 20, Duration::from_millis(200));
    }
}

/// Sends the error frame for `err`, if the client should hear about it.
fn tell(writer: &mut FrameWriter<Outbound>, err: &ServeError) {
    if let Some(code) = err.code() {
        let message = err.to_string();
        let _ = writer.send(&Frame::Error {
            code,
            message: &message,
        });
    }
}

fn serve_connection(
    shared: &Shared,
    reader: &mut FrameReader<Inbound>,
    writer: &mut FrameWriter<Outbound>,
    tracked: Conn,
    slot: HandshakeSlot,
) -> Result<(), ServeError> {
    let hello = match reader.read_frame(&shared.limits)? {
        Some(Frame::Hello(hello)) => owned_hello(hello),
        Some(other) => return Err(ServeError::HandshakeRequired(other.kind())),
        None => return Ok(()),
    };
    check_token(shared, &hello.1)?;
    let hello = hello.0;
    if hello.image_id != 0 && hello.image_id != shared.image.id() {
        return Err(ServeError::ImageMismatch);
    }
    let session = match (hello.role, hello.session) {
        (Role::Urgent, 0) => open_session(shared, 0, hello.unit, &[])?,
        (Role::Urgent, id) if hello.flags & proto::HELLO_RESUME != 0 => {
            let have = read_have(reader, shared)?;
            open_session(shared, id, hello.unit, &have)?
        }
        (Role::Urgent, _) => return Err(ServeError::UnknownSession(hello.session)),
        (Role::Background, id) => {
            let session = shared
                .sessions()
                .get(&id)
                .cloned()
                .ok_or(ServeError::UnknownSession(id))?;
            if !session.attach_background() {
                return Err(ServeError::BackgroundTaken);
            }
            session
        }
    };
    session.track(tracked);
    tune_socket(
        &writer.get_ref().conn,
        hello.role,
        shared.config.max_bandwidth,
    );
    // The handshake is over: from now on, no progress for the idle timeout ends the session.
    // (No `?` from here on: the session is registered, and the code below unregisters it.)
    drop(slot);
    let idle_timeout = shared.config.idle_timeout;
    let limit = match hello.role {
        Role::Urgent => ReadLimit::Idle {
            session: Arc::clone(&session),
            timeout: idle_timeout,
        },
        Role::Background => ReadLimit::None,
    };
    let welcomed = reader
        .get_ref()
        .set_limit(limit)
        .map_err(ServeError::from)
        .and_then(|()| welcome(shared, writer, &session, hello.flags));
    let result = match hello.role {
        Role::Urgent => {
            // Checked at start-up (`cli::run`).
            uffd_core::cpu::set_realtime_or_warn(shared.config.urgent_priority);
            let r = welcomed
                .and_then(|()| crate::urgent::serve(&session, reader, writer, &shared.limits))
                .map_err(|err| idle(err, idle_timeout));
            if let Err(err @ ServeError::Idle(_)) = &r {
                tracing::warn!(
                    session = session.id,
                    "ending the session: urgent connection: {err}"
                );
            } else if let Err(err) = &r {
                if matches!(err, ServeError::Source(_)) {
                    tracing::warn!(session = session.id, "ending the session: {err}");
                } else {
                    info_repeated(&shared.closes, "connections closed on an error", || {
                        format!("closing session {}: {err}", session.id)
                    });
                }
                tell(writer, err);
                if let Ok(mut conn) = writer.get_ref().conn.try_clone() {
                    conn.linger_close(1 << 20, Duration::from_millis(200));
                }
            }
            // The urgent connection carries the session: when it goes (even before its
            // welcome was sent), the session ends.
            end_session(shared, &session);
            return Ok(());
        }
        Role::Background => {
            let r = welcomed
                .and_then(|()| crate::background::stream(&session, writer))
                .map_err(|err| idle(err, idle_timeout));
            session.detach_background();
            if let Err(err @ ServeError::Source(_)) = &r {
                // Every session that needs the pages it could not read fails the same way:
                // tell the client why before its connections are closed, so it stops with the
                // reason instead of reconnecting to the same failure.
                tracing::warn!(session = session.id, "ending the session: {err}");
                tell(writer, err);
                end_session(shared, &session);
                return Ok(());
            }
            if let Err(err @ ServeError::Idle(_)) = &r {
                // The client stopped reading its stream: end the whole session (a live
                // client reconnects and resumes it).
                tracing::warn!(
                    session = session.id,
                    "ending the session: background connection: {err}"
                );
                end_session(shared, &session);
            }
            r
        }
    };
    if session.is_closed() {
        // Errors after the session was closed are the shutdown itself.
        return Ok(());
    }
    result
}

/// Sends the welcome and, if the hello asks for checksums, either the synthetic image's
/// parameters (a client that can regenerate it says so, `HELLO_SYNTHETIC_OK`) or the checksums.
fn welcome(
    shared: &Shared,
    writer: &mut FrameWriter<Outbound>,
    session: &Session,
    hello_flags: u8,
) -> Result<(), ServeError> {
    let want_sums = hello_flags & proto::HELLO_WANT_CHECKSUMS != 0;
    let synthetic = shared
        .image
        .synthetic_params()
        .filter(|_| want_sums && hello_flags & proto::HELLO_SYNTHETIC_OK != 0);
    writer.send(&Frame::Welcome(Welcome {
        version: proto::VERSION,
        flags: if synthetic.is_some() {
            proto::WELCOME_SYNTHETIC_FOLLOWS
        } else if want_sums {
            proto::WELCOME_CHECKSUMS_FOLLOW
        } else {
            0
        },
        session: session.id,
        image_size: shared.image.len(),
        page_size: u32::try_from(shared.image.page_size()).unwrap_or(u32::MAX),
        image_id: shared.image.id(),
    }))?;
    if let Some(synthetic) = synthetic {
        writer.send(&Frame::Synthetic {
            seed: synthetic.seed(),
            zero_fraction: synthetic.zero_fraction(),
        })?;
    } else if want_sums {
        send_checksums(writer, &shared.image)?;
    }
    Ok(())
}

/// Removes `session` from the registry (unless a resumed session has replaced it) and closes
/// it, so that no session outlives its urgent connection.
fn end_session(shared: &Shared, session: &Arc<Session>) {
    let mut sessions = shared.sessions();
    if sessions
        .get(&session.id)
        .is_some_and(|s| Arc::ptr_eq(s, session))
    {
        sessions.remove(&session.id);
    }
    drop(sessions);
    session.close();
}

/// A hello without borrowed fields, plus its token.
fn owned_hello(hello: Hello<'_>) -> (Hello<'static>, Vec<u8>) {
    let token = hello.token.to_vec();
    (
        Hello {
            token: &[],
            ..hello
        },
        token,
    )
}

fn check_token(shared: &Shared, token: &[u8]) -> Result<(), ServeError> {
    let Some(expected) = &shared.config.token else {
        return Ok(());
    };
    // Compare every byte whatever the first difference, so timing reveals nothing.
    let same = expected.len() == token.len()
        && expected
            .iter()
            .zip(token)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Ok(())
    } else {
        Err(ServeError::Unauthorized)
    }
}

/// Opens a session: a new one (`id` 0), or the resumption of session `id` by a client that
/// already has the pages set in `have` (its received bitmap). A resumed session replaces
/// the old one, whose connections are closed; after a server restart it is simply created.
fn open_session(
    shared: &Shared,
    id: u64,
    unit: u64,
    have: &[u64],
) -> Result<Arc<Session>, ServeError> {
    let mut sessions = shared.sessions();
    let replaced = id != 0 && sessions.contains_key(&id);
    if !replaced && sessions.len() >= shared.config.max_sessions {
        return Err(ServeError::TooManySessions(shared.config.max_sessions));
    }
    let id = if id != 0 {
        id
    } else {
        loop {
            let id: u64 = rand::random();
            if id != 0 && !sessions.contains_key(&id) {
                break id;
            }
        }
    };
    let session = Arc::new(Session::new(
        id,
        Arc::clone(&shared.image),
        unit,
        shared.config.policy,
    ));
    session.mark_present(0, have);
    let old = sessions.insert(id, Arc::clone(&session));
    drop(sessions);
    if let Some(old) = old {
        old.close();
    }
    if have.is_empty() {
        tracing::info!(session = id, unit, "session opened");
    } else {
        info_repeated(&shared.resumes, "sessions resumed", || {
            format!(
                "session {id} resumed ({} pages present)",
                session.sent_pages()
            )
        });
    }
    Ok(session)
}

/// Logs a repeated event at info level: the event itself (`line`) if it is the first for a
/// while, else at most one summary per period ("N `what` in the last 10 s").
fn info_repeated(repeats: &Repeats, what: &str, line: impl FnOnce() -> String) {
    match repeats.event() {
        Tell::Nothing => {}
        Tell::This => tracing::info!("{}", line()),
        Tell::Summary(n, period) => tracing::info!(
            "{n} {what} in the last {:.0} s (latest: {})",
            period.as_secs_f64(),
            line()
        ),
    }
}

/// Reads the have frames of a resuming client: its whole received bitmap, in order.
fn read_have(reader: &mut FrameReader<Inbound>, shared: &Shared) -> Result<Vec<u64>, ServeError> {
    let words = usize::try_from(shared.image.pages().div_ceil(64)).unwrap_or(usize::MAX);
    let mut have = Vec::with_capacity(words);
    while have.len() < words {
        match reader.read_frame(&shared.limits)? {
            Some(frame @ Frame::Have { first_word, .. }) if first_word == have.len() as u64 => {
                have.extend(frame.have_words());
            }
            Some(other) => return Err(ServeError::Unexpected(other.kind())),
            None => return Err(ServeError::Io(std::io::ErrorKind::UnexpectedEof.into())),
        }
    }
    Ok(have)
}

/// Sends every page checksum, a frame's worth at a time (for a synthetic image they are
/// computed here, so nothing of the size of the image is held).
fn send_checksums(writer: &mut FrameWriter<Outbound>, image: &Image) -> Result<(), ServeError> {
    let per_frame = ((proto::MAX_PAYLOAD - 8) / 8) as u64;
    let mut first = 0;
    while first < image.pages() {
        let count = per_frame.min(image.pages() - first);
        let raw = proto::encode_u64s(image.checksums(first, count)?);
        writer.send(&Frame::Checksums {
            first_page: first,
            raw: &raw,
        })?;
        first += count;
    }
    Ok(())
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

/// Socket options that keep urgent answers from queueing behind background bytes on a shared
/// link (measured on the tbf lab, see BENCHMARKS.md):
/// - `TCP_NOTSENT_LOWAT` on both connections: the background sender's "pause" at a chunk
///   boundary is real only if megabytes of it are not already sitting unsent in the socket;
///   likewise an urgent answer counts as sent only when it is nearly on the wire.
/// - `IP_TOS` low-delay on the urgent connection, so a priority-aware queue sends it first.
/// - With `--max-bandwidth`, `SO_MAX_PACING_RATE` on the background connection: on a FIFO
///   bottleneck, only a sender slower than the bottleneck keeps no standing queue there for
///   urgent answers to wait behind (no pause at a chunk boundary can take back bytes already
///   queued at the bottleneck).
fn tune_socket(conn: &Conn, role: Role, max_bandwidth: Option<u64>) {
    let (lowat, what) = (libc::TCP_NOTSENT_LOWAT, "TCP_NOTSENT_LOWAT");
    match role {
        Role::Background => {
            set_option(conn, libc::IPPROTO_TCP, lowat, 128 << 10, what);
            if let Some(rate) = max_bandwidth {
                // Asked for explicitly: say so if it did not take.
                if let Err(err) = conn.set_pacing_rate(rate) {
                    tracing::warn!(rate, "SO_MAX_PACING_RATE failed: {err}");
                }
            }
        }
        Role::Urgent => {
            set_option(conn, libc::IPPROTO_TCP, lowat, 64 << 10, what);
            let lowdelay = libc::c_int::from(libc::IPTOS_LOWDELAY);
            set_option(conn, libc::IPPROTO_IP, libc::IP_TOS, lowdelay, "IP_TOS");
        }
    }
}
