//! Accepting connections, the handshake, and the session registry.
//!
//! Each connection gets a thread. Its first frame must be a hello: an urgent hello with
//! session 0 opens a session, a background hello joins one. Any bad frame is answered with an
//! error frame and the connection is closed; other clients never notice.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout};
use uffd_core::proto::{self, ErrorCode, Hello, Role, Welcome};
use uffd_core::{Conn, Endpoint, Frame, FrameReader, FrameWriter, Limits, Listener};

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
    /// How long a new connection may take to send its hello.
    pub handshake_timeout: Duration,
    /// Shared secret clients must present (None: no authentication).
    pub token: Option<Vec<u8>>,
}

impl Config {
    /// Defaults: 64 KiB chunks, preemption on, 64 sessions, 10 s handshake, no token.
    pub fn new(listen: Endpoint) -> Config {
        Config {
            listen,
            policy: Policy {
                chunk: 64 << 10,
                preempt: true,
                drop_every: None,
            },
            max_sessions: 64,
            handshake_timeout: Duration::from_secs(10),
            token: None,
        }
    }
}

#[derive(Debug)]
struct Shared {
    image: Arc<Image>,
    config: Config,
    limits: Limits,
    sessions: Mutex<HashMap<u64, Arc<Session>>>,
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

    /// Serves until `shutdown` becomes true, then closes every session.
    pub fn serve(&self, shutdown: &AtomicBool) -> Result<(), ServeError> {
        while !shutdown.load(Ordering::Acquire) {
            let mut fds = [PollFd::new(self.listener_fd(), PollFlags::POLLIN)];
            match nix::poll::poll(&mut fds, PollTimeout::from(100u8)) {
                Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                Ok(_) => {}
                Err(errno) => return Err(ServeError::Io(errno.into())),
            }
            match self.listener.accept() {
                Ok(conn) => {
                    let shared = Arc::clone(&self.shared);
                    let spawned = std::thread::Builder::new()
                        .name("conn".into())
                        .spawn(move || handle(conn, &shared));
                    if let Err(err) = spawned {
                        tracing::warn!("cannot spawn a connection thread: {err}");
                    }
                }
                Err(err) => tracing::warn!("accept failed: {err}"),
            }
        }
        let sessions: Vec<_> = self.shared.sessions().drain().map(|(_, s)| s).collect();
        for session in sessions {
            session.close();
        }
        tracing::info!("shut down");
        Ok(())
    }

    fn listener_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match &self.listener {
            Listener::Tcp(l) => l.as_fd(),
            Listener::Unix(l, _) => l.as_fd(),
        }
    }
}

fn handle(conn: Conn, shared: &Shared) {
    let peer = conn.peer();
    let (read_half, tracked) = match (conn.try_clone(), conn.try_clone()) {
        (Ok(r), Ok(t)) => (r, t),
        _ => return,
    };
    let mut reader = FrameReader::new(read_half);
    let mut writer = FrameWriter::new(conn);
    match serve_connection(shared, &mut reader, &mut writer, tracked) {
        Ok(()) => tracing::debug!(%peer, "connection closed"),
        Err(err) => {
            tracing::info!(%peer, "closing connection: {err}");
            tell(&mut writer, &err);
        }
    }
    if let Ok(mut conn) = writer.get_ref().try_clone() {
        conn.linger_close(1 << 20, Duration::from_millis(200));
    }
}

/// Sends the error frame for `err`, if the client should hear about it.
fn tell(writer: &mut FrameWriter<Conn>, err: &ServeError) {
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
    reader: &mut FrameReader<Conn>,
    writer: &mut FrameWriter<Conn>,
    tracked: Conn,
) -> Result<(), ServeError> {
    let timeout = Some(shared.config.handshake_timeout);
    reader.get_ref().set_read_timeout(timeout)?;
    let hello = match reader.read_frame(&shared.limits)? {
        Some(Frame::Hello(hello)) => owned_hello(hello),
        Some(other) => return Err(ServeError::HandshakeRequired(other.kind())),
        None => return Ok(()),
    };
    reader.get_ref().set_read_timeout(None)?;
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
    tune_socket(writer.get_ref(), hello.role);
    let want_sums = hello.flags & proto::HELLO_WANT_CHECKSUMS != 0;
    let welcomed = welcome(shared, writer, &session, want_sums);
    let result = match hello.role {
        Role::Urgent => {
            let r = welcomed
                .and_then(|()| crate::urgent::serve(&session, reader, writer, &shared.limits));
            if let Err(err) = &r {
                tracing::info!(session = session.id, "closing session: {err}");
                tell(writer, err);
                if let Ok(mut conn) = writer.get_ref().try_clone() {
                    conn.linger_close(1 << 20, Duration::from_millis(200));
                }
            }
            // The urgent connection carries the session: when it goes (even before its
            // welcome was sent), the session ends.
            end_session(shared, &session);
            return Ok(());
        }
        Role::Background => {
            let r = welcomed.and_then(|()| crate::background::stream(&session, writer));
            session.detach_background();
            r
        }
    };
    if session.is_closed() {
        // Errors after the session was closed are the shutdown itself.
        return Ok(());
    }
    result
}

/// Sends the welcome, and the checksums if asked for.
fn welcome(
    shared: &Shared,
    writer: &mut FrameWriter<Conn>,
    session: &Session,
    want_sums: bool,
) -> Result<(), ServeError> {
    writer.send(&Frame::Welcome(Welcome {
        version: proto::VERSION,
        flags: if want_sums {
            proto::WELCOME_CHECKSUMS_FOLLOW
        } else {
            0
        },
        session: session.id,
        image_size: shared.image.len(),
        page_size: u32::try_from(shared.image.page_size()).unwrap_or(u32::MAX),
        image_id: shared.image.id(),
    }))?;
    if want_sums {
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
        tracing::info!(
            session = id,
            present = session.sent_pages(),
            "session resumed"
        );
    }
    Ok(session)
}

/// Reads the have frames of a resuming client: its whole received bitmap, in order.
fn read_have(reader: &mut FrameReader<Conn>, shared: &Shared) -> Result<Vec<u64>, ServeError> {
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

fn send_checksums(writer: &mut FrameWriter<Conn>, image: &Image) -> Result<(), ServeError> {
    let per_frame = (proto::MAX_PAYLOAD - 8) / 8;
    for (i, sums) in image.checksums().chunks(per_frame).enumerate() {
        let raw = proto::encode_u64s(sums.iter().copied());
        writer.send(&Frame::Checksums {
            first_page: (i * per_frame) as u64,
            raw: &raw,
        })?;
    }
    Ok(())
}

impl ServeError {
    /// The error frame code to tell the client, if the client should be told.
    fn code(&self) -> Option<ErrorCode> {
        match self {
            ServeError::Wire(uffd_core::WireError::Proto(_)) => Some(ErrorCode::Protocol),
            ServeError::Wire(_) | ServeError::Io(_) | ServeError::Bind { .. } => None,
            ServeError::HandshakeRequired(_) => Some(ErrorCode::HandshakeRequired),
            ServeError::Unexpected(_) => Some(ErrorCode::Protocol),
            ServeError::UnknownSession(_) | ServeError::BackgroundTaken => {
                Some(ErrorCode::UnknownSession)
            }
            ServeError::TooManySessions(_) => Some(ErrorCode::TooManySessions),
            ServeError::Unauthorized => Some(ErrorCode::Unauthorized),
            ServeError::ImageMismatch => Some(ErrorCode::ImageMismatch),
        }
    }
}

/// Socket options that keep urgent answers from queueing behind background bytes on a shared
/// link (measured on the tbf lab, see BENCHMARKS.md):
/// - `TCP_NOTSENT_LOWAT` on both connections: the background sender's "pause" at a chunk
///   boundary is real only if megabytes of it are not already sitting unsent in the socket;
///   likewise an urgent answer counts as sent only when it is nearly on the wire.
/// - `IP_TOS` low-delay on the urgent connection, so a priority-aware queue sends it first.
fn tune_socket(conn: &Conn, role: Role) {
    use std::os::fd::AsRawFd;
    let Conn::Tcp(stream) = conn else { return };
    let fd = stream.as_raw_fd();
    let set = |level: libc::c_int, name: libc::c_int, value: libc::c_int, what: &str| {
        // SAFETY: `fd` is a live socket owned by `stream`; the option value is a c_int whose
        // size is passed along, and the kernel only reads it.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            tracing::debug!(
                what,
                "setsockopt failed: {}",
                std::io::Error::last_os_error()
            );
        }
    };
    match role {
        Role::Background => set(
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            128 << 10,
            "TCP_NOTSENT_LOWAT",
        ),
        Role::Urgent => {
            set(
                libc::IPPROTO_TCP,
                libc::TCP_NOTSENT_LOWAT,
                64 << 10,
                "TCP_NOTSENT_LOWAT",
            );
            set(
                libc::IPPROTO_IP,
                libc::IP_TOS,
                libc::c_int::from(libc::IPTOS_LOWDELAY),
                "IP_TOS",
            );
        }
    }
}
