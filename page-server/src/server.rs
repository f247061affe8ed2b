//! The server and the life of one connection.
//!
//! New connections wait in the admission table ([`crate::admission`], one event loop, no
//! thread) until their first frame has arrived; then each gets a thread, which runs the
//! handshake (`handshake.rs`): its first frame must be a hello. An urgent hello with session 0
//! opens a session, a resuming one reopens it, a background hello joins one (`registry.rs`);
//! then the connection gets its socket options (`sockopt.rs`) and its idle limit
//! (`timeout.rs`), is welcomed, and is served ([`crate::urgent`], [`crate::background`]) until
//! it ends. Any bad frame is answered with an error frame and the connection is closed; other
//! clients never notice. What one peer can hold on to is bounded: see [`crate::config`].

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use uffd_core::proto::{self, ErrorCode, Role};
use uffd_core::repeat::Repeats;
use uffd_core::{Conn, Endpoint, Frame, FrameReader, FrameWriter, Limits, Listener};

use crate::admission::{self, Admission, Arrival, Refused};
use crate::config::Config;
use crate::handshake;
use crate::image::Image;
use crate::registry::Registry;
use crate::session::Session;
use crate::sockopt;
use crate::timeout::{self, Inbound, Outbound, ReadLimit};
use crate::ServeError;

#[derive(Debug)]
struct Shared {
    image: Arc<Image>,
    config: Config,
    limits: Limits,
    registry: Registry,
    /// Connections in the admission table (no hello yet).
    pending: AtomicUsize,
    /// Handshake threads ([`HandshakeSlot`]).
    handshaking: AtomicUsize,
    /// Connection threads running.
    connections: AtomicUsize,
    /// Connections and sessions closed on an error, for the log (a client that keeps
    /// failing must not write a line each time).
    closes: Repeats,
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
        let registry = Registry::new(
            Arc::clone(&image),
            config.policy,
            config.fault_injection,
            config.max_sessions,
        );
        Ok(Server {
            listener,
            shared: Arc::new(Shared {
                image,
                config,
                limits,
                registry,
                pending: AtomicUsize::new(0),
                handshaking: AtomicUsize::new(0),
                connections: AtomicUsize::new(0),
                closes: Repeats::default(),
            }),
        })
    }

    /// The address actually bound (the real port when asked for port 0).
    pub fn local_endpoint(&self) -> Result<Endpoint, ServeError> {
        self.listener.local_endpoint().map_err(ServeError::Io)
    }

    /// Number of live sessions.
    pub fn sessions(&self) -> usize {
        self.shared.registry.len()
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
        self.shared.registry.close_all();
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
        sockopt::liveness(&arrival.conn, self.shared.config.peer_timeout);
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
            let line = shared.closes.line("connections closed on an error", || {
                format!("closing connection from {peer}: {err}")
            });
            if let Some(line) = line {
                tracing::info!("{line}");
            }
            tell(&mut writer, &err);
        }
    }
    linger_close(&writer);
}

/// Closes the connection without losing an error frame sent last (see `Conn::linger_close`).
fn linger_close(writer: &FrameWriter<Outbound>) {
    if let Ok(mut conn) = writer.get_ref().conn().try_clone() {
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

/// The handshake, then the service of the connection by its role.
fn serve_connection(
    shared: &Shared,
    reader: &mut FrameReader<Inbound>,
    writer: &mut FrameWriter<Outbound>,
    tracked: Conn,
    slot: HandshakeSlot,
) -> Result<(), ServeError> {
    let token = shared.config.token.as_deref();
    let Some(hello) = handshake::read_hello(reader, &shared.limits, token, shared.image.id())?
    else {
        return Ok(());
    };
    let session = match (hello.role, hello.session) {
        (Role::Urgent, 0) => shared.registry.open(0, hello.unit, &[])?,
        (Role::Urgent, id) if hello.flags & proto::HELLO_RESUME != 0 => {
            let have = handshake::read_have(reader, &shared.limits, shared.image.pages())?;
            shared.registry.open(id, hello.unit, &have)?
        }
        (Role::Urgent, _) => return Err(ServeError::UnknownSession(hello.session)),
        (Role::Background, id) => shared.registry.join(id)?,
    };
    session.track(tracked);
    sockopt::tune(
        writer.get_ref().conn(),
        hello.role,
        shared.config.max_bandwidth,
    );
    // The handshake is over: from now on, no progress for the idle timeout ends the session.
    // (No `?` from here on: the session is registered, and the code below unregisters it.)
    drop(slot);
    let limit = match hello.role {
        Role::Urgent => ReadLimit::Idle {
            session: Arc::clone(&session),
            timeout: shared.config.idle_timeout,
        },
        Role::Background => ReadLimit::None,
    };
    let welcomed = reader
        .get_ref()
        .set_limit(limit)
        .map_err(ServeError::from)
        .and_then(|()| handshake::welcome(writer, &shared.image, session.id, hello.flags));
    match hello.role {
        Role::Urgent => {
            serve_urgent(shared, &session, reader, writer, welcomed);
            Ok(())
        }
        Role::Background => serve_background(shared, &session, writer, welcomed),
    }
}

/// Answers the requests of an urgent connection (if `welcomed`), then ends its session: the
/// urgent connection carries the session, so when it goes (even before its welcome was sent),
/// the session ends.
fn serve_urgent(
    shared: &Shared,
    session: &Arc<Session>,
    reader: &mut FrameReader<Inbound>,
    writer: &mut FrameWriter<Outbound>,
    welcomed: Result<(), ServeError>,
) {
    // Checked at start-up (`cli::run`).
    uffd_core::cpu::set_realtime_or_warn(shared.config.urgent_priority);
    let idle_timeout = shared.config.idle_timeout;
    let r = welcomed
        .and_then(|()| crate::urgent::serve(session, reader, writer, &shared.limits))
        .map_err(|err| timeout::idle(err, idle_timeout));
    if let Err(err @ ServeError::Idle(_)) = &r {
        tracing::warn!(
            session = session.id,
            "ending the session: urgent connection: {err}"
        );
    } else if let Err(err) = &r {
        if matches!(err, ServeError::Source(_)) {
            tracing::warn!(session = session.id, "ending the session: {err}");
        } else {
            let line = shared.closes.line("connections closed on an error", || {
                format!("closing session {}: {err}", session.id)
            });
            if let Some(line) = line {
                tracing::info!("{line}");
            }
        }
        tell(writer, err);
        linger_close(writer);
    }
    shared.registry.end(session);
}

/// Streams the session's pages on its background connection (if `welcomed`).
fn serve_background(
    shared: &Shared,
    session: &Arc<Session>,
    writer: &mut FrameWriter<Outbound>,
    welcomed: Result<(), ServeError>,
) -> Result<(), ServeError> {
    let idle_timeout = shared.config.idle_timeout;
    let r = welcomed
        .and_then(|()| crate::background::stream(session, writer))
        .map_err(|err| timeout::idle(err, idle_timeout));
    session.detach_background();
    if let Err(err @ ServeError::Source(_)) = &r {
        // Every session that needs the pages it could not read fails the same way: tell the
        // client why before its connections are closed, so it stops with the reason instead
        // of reconnecting to the same failure.
        tracing::warn!(session = session.id, "ending the session: {err}");
        tell(writer, err);
        shared.registry.end(session);
        return Ok(());
    }
    if let Err(err @ ServeError::Idle(_)) = &r {
        // The client stopped reading its stream: end the whole session (a live client
        // reconnects and resumes it).
        tracing::warn!(
            session = session.id,
            "ending the session: background connection: {err}"
        );
        shared.registry.end(session);
    }
    if session.is_closed() {
        // Errors after the session was closed are the shutdown itself.
        return Ok(());
    }
    r
}
