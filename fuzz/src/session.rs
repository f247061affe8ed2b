//! The hostile-session harness: a script of client operations (hellos of every kind, requests
//! with any offsets and lengths, arbitrary frames, raw garbage, resets) is played against a
//! live page-server over TCP, on up to four connections, and everything the server answers
//! is checked against a model of the protocol:
//!
//! - every byte the server sends decodes as frames against the image's limits;
//! - the first frame the client sent decides the answer: nothing (an incomplete or absent
//!   hello), exactly one error frame with the right code, or a welcome with the image's true
//!   size, page size and id, followed by the checksums if asked (equal to the image's), or
//!   the synthetic image's parameters if the hello says the client can regenerate it;
//! - an error frame is the last thing on a connection, which is then closed, within 10 s;
//! - data frames carry the image's bytes and never a zero page, zero frames only zero pages;
//!   an urgent connection only gets pages it asked for; no page is sent twice in a session;
//!   a background stream that ends with an end frame has, with the urgent answers, sent
//!   every page;
//! - with an in-process server, every session is gone once its connections are (no leak).
//!
//! Afterwards a well-behaved client ([`still_serves`]) must still get its page.
//!
//! Shared by the `session` fuzz target (through `src/lib.rs`) and by `tests/fuzz_session.rs`
//! (which includes this file with `#[path]`). The script's byte format is documented on
//! [`Script::parse`]; `fuzz/examples/gen_corpus.rs` writes seeds with [`Script::encode`].

use std::collections::{BTreeSet, HashMap};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use page_server::{Config, Image};
use uffd_core::proto::{self, ErrorCode, Frame, Hello, Limits, Role, HEADER_LEN};
use uffd_core::{Conn, FrameReader};

/// Page size of the served image.
pub const PAGE: u64 = 4096;
/// The served image: 69 pages and 1000 bytes, 70 pages in all (the last one is partial, served
/// padded; not a multiple of 64, so a have bitmap's last word has unused bits).
pub const IMAGE_LEN: u64 = 69 * PAGE + 1000;
/// Pages of the served image.
pub const IMAGE_PAGES: u64 = IMAGE_LEN.div_ceil(PAGE);
/// The token of server variant B.
pub const TOKEN: &[u8] = b"fuzz-token";

const MAX_CONNS: usize = 4;
const MAX_OPS: usize = 128;
const MAX_WAITS: usize = 8;
/// A connection must be answered and closed within this time.
const DEADLINE: Duration = Duration::from_secs(10);
/// More than this from the server on one connection is a failure (the image is 280 KiB).
const MAX_RECEIVED: usize = 16 << 20;
/// A background hello that joins an unknown session uses this id.
const NO_SESSION: u64 = 0xdead_0000_0000_0001;

/// The image every harness server serves.
pub fn image() -> Image {
    Image::synthetic(IMAGE_LEN, 7, 0.3, PAGE).expect("synthetic image")
}

/// Server variant A: the defaults (preemption, 64 KiB chunks, no token).
/// Variant B: a token, 4 KiB chunks, no preemption (urgent answers wait for the unit on the
/// wire). `tolerate_leaks` lifts the session limit so leaked sessions cannot refuse hellos.
pub fn configure(config: &mut Config, variant_b: bool, tolerate_leaks: bool) {
    if variant_b {
        config.token = Some(TOKEN.to_vec());
        config.policy.chunk = PAGE;
        config.policy.preempt = false;
    }
    if tolerate_leaks {
        config.max_sessions = usize::MAX;
    }
}

/// A hello as the script describes it (see [`Script::parse`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HelloOp {
    /// Role byte: 1 urgent, 2 background, anything else is written as is.
    pub role: u8,
    /// Hello flags (1: send checksums, 4: a synthetic image's parameters will do).
    pub flags: u8,
    /// 0: new session; 1: join connection 0's session; n: the unknown id n * 0x0101..01.
    pub session: u8,
    /// Placement unit: `1 << (unit_log2 % 64)`.
    pub unit_log2: u8,
    /// Image id: 0 any, 1 the served image's, n the wrong id n.
    pub image: u8,
    /// Token: 0 none, 1 the right one, n a wrong one of `n % 32 + 1` bytes.
    pub token: u8,
    /// Damage: 1 bad magic, 2 bad version, 3 token length one too long, 4 cut in half,
    /// 5 header flags set (ignored by the decoder), anything else none.
    pub twist: u8,
}

/// One operation of a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Open the next connection; later operations go to it (at most four connections).
    Connect,
    /// Send a hello.
    Hello(HelloOp),
    /// Request pages `first..first+count` (page-aligned; may be empty or past the end).
    Request {
        /// First page.
        first: u8,
        /// Pages.
        count: u8,
    },
    /// Request any byte range.
    RequestRaw {
        /// Offset in bytes.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
    /// Send raw bytes (at most 255).
    Raw(Vec<u8>),
    /// Send a frame with this kind byte, flags and payload (reserved bits 0, true length).
    Frame {
        /// Kind byte.
        kind: u8,
        /// Flags byte.
        flags: u8,
        /// Payload (at most 65535 bytes).
        payload: Vec<u8>,
    },
    /// Reset the connection (close with SO_LINGER 0) without reading the rest.
    Abort,
    /// Wait up to 50 ms for the next frame on this connection.
    Wait,
}

/// A script: the server variant and the operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// Use server variant B (token, no preemption).
    pub variant_b: bool,
    /// The operations, in order.
    pub ops: Vec<Op>,
}

impl Script {
    /// Parses a fuzz input. Format: one config byte (bit 0: server variant B), then
    /// operations, each an opcode and its arguments:
    ///
    /// | opcode | operation | arguments |
    /// |-------:|-----------|-----------|
    /// | 0 | connect | |
    /// | 1 | hello | role, flags, session, unit_log2, image, token, twist (1 byte each) |
    /// | 2 | request pages | first, count (1 byte each) |
    /// | 3 | request bytes | offset u64 LE, length u64 LE |
    /// | 4 | raw | n, n bytes |
    /// | 5 | frame | kind, flags, n u16 LE, n payload bytes |
    /// | 6 | abort | |
    /// | 7 | wait | |
    /// | other | raw | the opcode byte itself is sent |
    ///
    /// An operation cut short by the end of the input is dropped.
    pub fn parse(data: &[u8]) -> Script {
        let (variant_b, mut rest) = match data.split_first() {
            Some((&config, rest)) => (config & 1 != 0, rest),
            None => (false, data),
        };
        let mut ops = Vec::new();
        while let Some((&code, args)) = rest.split_first() {
            if ops.len() >= MAX_OPS {
                break;
            }
            let (op, used) = match code {
                0 => (Op::Connect, 0),
                1 => match args.first_chunk::<7>() {
                    Some(&[role, flags, session, unit_log2, image, token, twist]) => (
                        Op::Hello(HelloOp {
                            role,
                            flags,
                            session,
                            unit_log2,
                            image,
                            token,
                            twist,
                        }),
                        7,
                    ),
                    None => break,
                },
                2 => match args.first_chunk::<2>() {
                    Some(&[first, count]) => (Op::Request { first, count }, 2),
                    None => break,
                },
                3 => match args.first_chunk::<16>() {
                    Some(raw) => {
                        let (offset, len) = raw.split_at(8);
                        (
                            Op::RequestRaw {
                                offset: u64::from_le_bytes(offset.try_into().expect("8 bytes")),
                                len: u64::from_le_bytes(len.try_into().expect("8 bytes")),
                            },
                            16,
                        )
                    }
                    None => break,
                },
                4 => match args.split_first() {
                    Some((&n, bytes)) if bytes.len() >= usize::from(n) => (
                        Op::Raw(bytes[..usize::from(n)].to_vec()),
                        1 + usize::from(n),
                    ),
                    _ => break,
                },
                5 => match args.first_chunk::<4>() {
                    Some(&[kind, flags, lo, hi]) => {
                        let n = usize::from(u16::from_le_bytes([lo, hi]));
                        if args.len() < 4 + n {
                            break;
                        }
                        let payload = args[4..4 + n].to_vec();
                        (
                            Op::Frame {
                                kind,
                                flags,
                                payload,
                            },
                            4 + n,
                        )
                    }
                    None => break,
                },
                6 => (Op::Abort, 0),
                7 => (Op::Wait, 0),
                other => (Op::Raw(vec![other]), 0),
            };
            ops.push(op);
            rest = &args[used..];
        }
        Script { variant_b, ops }
    }

    /// Encodes the script in the format [`Script::parse`] reads.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![u8::from(self.variant_b)];
        for op in &self.ops {
            match op {
                Op::Connect => out.push(0),
                Op::Hello(h) => out.extend_from_slice(&[
                    1,
                    h.role,
                    h.flags,
                    h.session,
                    h.unit_log2,
                    h.image,
                    h.token,
                    h.twist,
                ]),
                Op::Request { first, count } => out.extend_from_slice(&[2, *first, *count]),
                Op::RequestRaw { offset, len } => {
                    out.push(3);
                    out.extend_from_slice(&offset.to_le_bytes());
                    out.extend_from_slice(&len.to_le_bytes());
                }
                Op::Raw(bytes) => {
                    let bytes = &bytes[..bytes.len().min(255)];
                    out.push(4);
                    out.push(u8::try_from(bytes.len()).unwrap_or(u8::MAX));
                    out.extend_from_slice(bytes);
                }
                Op::Frame {
                    kind,
                    flags,
                    payload,
                } => {
                    let payload = &payload[..payload.len().min(usize::from(u16::MAX))];
                    out.extend_from_slice(&[5, *kind, *flags]);
                    let n = u16::try_from(payload.len()).unwrap_or(u16::MAX);
                    out.extend_from_slice(&n.to_le_bytes());
                    out.extend_from_slice(payload);
                }
                Op::Abort => out.push(6),
                Op::Wait => out.push(7),
            }
        }
        out
    }
}

/// The server a script is played against.
pub struct Target<'a> {
    /// `host:port`.
    pub addr: &'a str,
    /// The image it serves (the harness checks every page against it).
    pub image: &'a Image,
    /// Its token, if it requires one.
    pub token: Option<&'a [u8]>,
    /// Its number of live sessions, when the harness can see it (an in-process server):
    /// checked to fall back to zero once a script's connections are closed.
    pub sessions: Option<&'a (dyn Fn() -> usize + Sync)>,
    /// Sessions of earlier scripts may still be registered (a server whose leaks are not
    /// checked): "too many sessions" is then an acceptable answer to a new session's hello,
    /// and a background hello naming any id may be welcomed (a resumption creates a session
    /// with the id the client names, and it may have outlived its script).
    pub leftover_sessions: bool,
}

impl std::fmt::Debug for Target<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("addr", &self.addr)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl Target<'_> {
    fn limits(&self) -> Limits {
        Limits::new(self.image.len(), self.image.page_size())
    }
}

/// What one played script amounted to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Connections opened.
    pub connections: usize,
    /// Frames received.
    pub frames: usize,
    /// Connections answered with an error frame.
    pub refused: usize,
    /// Welcomes received.
    pub welcomes: usize,
    /// Pages received as data or zero frames.
    pub pages: u64,
}

#[derive(Debug, Default)]
struct Track {
    frames: usize,
    session: Option<u64>,
    done: bool,
}

#[derive(Debug, Default)]
struct Shared {
    track: Mutex<Track>,
    changed: Condvar,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Track> {
        self.track.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `ready` holds or `timeout` passes.
    fn wait_for(&self, timeout: Duration, ready: impl Fn(&Track) -> bool) {
        let deadline = Instant::now() + timeout;
        let mut track = self.lock();
        while !ready(&track) {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return;
            };
            track = match self.changed.wait_timeout(track, left) {
                Ok((t, _)) => t,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Eof,
    Reset,
    TimedOut,
    Aborted,
    Overflow,
    Failed(io::ErrorKind),
}

#[derive(Debug)]
struct Received {
    bytes: Vec<u8>,
    end: End,
}

#[derive(Debug)]
struct Live {
    writer: Option<TcpStream>,
    shared: Arc<Shared>,
    reader: Option<JoinHandle<Received>>,
    sent: Vec<u8>,
    write_failed: bool,
    aborted: bool,
    /// The session id a join hello on this connection named.
    joined: Option<u64>,
    background_hello: bool,
}

fn set_linger_zero(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ = nix::sys::socket::setsockopt(stream, nix::sys::socket::sockopt::Linger, &linger);
}

/// Reads everything the server sends on `stream` until it closes, counting frames and noting
/// the first welcome's session for the others.
fn read_all(mut stream: TcpStream, shared: Arc<Shared>, limits: Limits) -> Received {
    let started = Instant::now();
    let _ = stream.set_read_timeout(Some(Duration::from_millis(20)));
    let mut bytes = Vec::new();
    let mut parsed = 0;
    let mut buf = vec![0u8; 64 << 10];
    let end = loop {
        if shared.stop.load(Ordering::Acquire) {
            set_linger_zero(&stream);
            break End::Aborted;
        }
        if started.elapsed() > DEADLINE {
            break End::TimedOut;
        }
        match stream.read(&mut buf) {
            Ok(0) => break End::Eof,
            Ok(n) => {
                bytes.extend_from_slice(&buf[..n]);
                if bytes.len() > MAX_RECEIVED {
                    break End::Overflow;
                }
                let mut track = shared.lock();
                while let Ok(Some((frame, used))) = proto::decode(&bytes[parsed..], &limits) {
                    parsed += used;
                    track.frames += 1;
                    if let Frame::Welcome(w) = frame {
                        track.session.get_or_insert(w.session);
                    }
                }
                drop(track);
                shared.changed.notify_all();
            }
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(err) if err.kind() == io::ErrorKind::ConnectionReset => break End::Reset,
            Err(err) => break End::Failed(err.kind()),
        }
    };
    shared.lock().done = true;
    shared.changed.notify_all();
    drop(stream);
    Received { bytes, end }
}

fn connect(target: &Target<'_>) -> Live {
    let stream = TcpStream::connect(target.addr).expect("connect to the server");
    let _ = stream.set_nodelay(true);
    stream
        .set_write_timeout(Some(DEADLINE))
        .expect("write timeout");
    let shared = Arc::new(Shared::default());
    let read_half = stream.try_clone().expect("clone the socket");
    let limits = target.limits();
    let for_reader = Arc::clone(&shared);
    let reader = std::thread::Builder::new()
        .name("fuzz-reader".into())
        .spawn(move || read_all(read_half, for_reader, limits))
        .expect("spawn a reader");
    Live {
        writer: Some(stream),
        shared,
        reader: Some(reader),
        sent: Vec::new(),
        write_failed: false,
        aborted: false,
        joined: None,
        background_hello: false,
    }
}

impl Live {
    fn write(&mut self, bytes: &[u8]) {
        if self.write_failed || self.aborted {
            return;
        }
        let Some(stream) = self.writer.as_mut() else {
            return;
        };
        match stream.write_all(bytes) {
            Ok(()) => self.sent.extend_from_slice(bytes),
            Err(err) => {
                assert!(
                    !matches!(
                        err.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ),
                    "the server stopped reading: a write blocked for {DEADLINE:?}"
                );
                // The server closed the connection (after an error frame or its stream).
                self.write_failed = true;
            }
        }
    }

    fn abort(&mut self) {
        if self.aborted {
            return;
        }
        self.aborted = true;
        if let Some(stream) = self.writer.take() {
            set_linger_zero(&stream);
        }
        self.shared.stop.store(true, Ordering::Release);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }

    fn half_close(&mut self) {
        if let Some(stream) = &self.writer {
            let _ = stream.shutdown(Shutdown::Write);
        }
    }

    fn finish(&mut self) -> Option<Received> {
        let received = self.reader.take().map(|r| r.join().expect("reader thread"));
        self.writer = None;
        received
    }
}

fn hello_bytes(h: &HelloOp, target: &Target<'_>, join: Option<u64>) -> Vec<u8> {
    let role = if h.role == 2 {
        Role::Background
    } else {
        Role::Urgent
    };
    let wrong_token = vec![b'x'; usize::from(h.token % 32) + 1];
    let token: &[u8] = match h.token {
        0 => b"",
        1 => target.token.unwrap_or(TOKEN),
        _ => &wrong_token,
    };
    let session = match h.session {
        0 => 0,
        1 => join.unwrap_or(NO_SESSION),
        n => u64::from(n) * 0x0101_0101_0101_0101,
    };
    let image_id = match h.image {
        0 => 0,
        1 => target.image.id(),
        n => u64::from(n),
    };
    let mut bytes = crate::frames::encode(&Frame::Hello(Hello {
        version: proto::VERSION,
        role,
        flags: h.flags,
        session,
        unit: 1u64 << (h.unit_log2 % 64),
        image_id,
        token,
    }));
    if h.role != 1 && h.role != 2 {
        bytes[HEADER_LEN + 6] = h.role;
    }
    match h.twist {
        1 => bytes[HEADER_LEN] ^= 0x20,
        2 => bytes[HEADER_LEN + 4] = 2,
        3 => {
            let len = u16::try_from(token.len() + 1).unwrap_or(u16::MAX);
            bytes[HEADER_LEN + 32..HEADER_LEN + 34].copy_from_slice(&len.to_le_bytes());
        }
        4 => bytes.truncate(bytes.len() / 2),
        5 => bytes[1] = 0xff,
        _ => {}
    }
    bytes
}

fn request_bytes(offset: u64, len: u64) -> Vec<u8> {
    // Encoded by hand: the encoder is not asked to produce invalid requests.
    let mut out = Vec::with_capacity(HEADER_LEN + 16);
    out.extend_from_slice(&[proto::Kind::Request as u8, 0, 0, 0, 16, 0, 0, 0]);
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out
}

/// Plays `ops` against `target` and checks every answer; panics on a violation.
pub fn play(target: &Target<'_>, ops: &[Op]) -> Summary {
    let mut conns = vec![connect(target)];
    let mut waits = 0;
    for op in ops {
        let current = conns.len() - 1;
        match op {
            Op::Connect => {
                if conns.len() < MAX_CONNS {
                    conns.push(connect(target));
                }
            }
            Op::Hello(h) => {
                let join = if h.session == 1 && current > 0 {
                    // Connection 0's welcome names the session, if the model says one comes
                    // (if it is late, the hello names no session, and the model follows).
                    let first = &conns[0];
                    if matches!(expect(target, first, &BTreeSet::new()), Expect::Welcome(_)) {
                        first
                            .shared
                            .wait_for(Duration::from_secs(2), |t| t.session.is_some() || t.done);
                    }
                    let session = first.shared.lock().session;
                    Some(session.unwrap_or(NO_SESSION))
                } else {
                    None
                };
                let bytes = hello_bytes(h, target, join);
                let conn = &mut conns[current];
                if conn.sent.is_empty() {
                    conn.joined = join;
                    conn.background_hello = h.role == 2;
                }
                conn.write(&bytes);
            }
            Op::Request { first, count } => {
                let bytes = request_bytes(u64::from(*first) * PAGE, u64::from(*count) * PAGE);
                conns[current].write(&bytes);
            }
            Op::RequestRaw { offset, len } => conns[current].write(&request_bytes(*offset, *len)),
            Op::Raw(bytes) => conns[current].write(bytes),
            Op::Frame {
                kind,
                flags,
                payload,
            } => {
                let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
                let mut bytes = vec![*kind, *flags, 0, 0];
                bytes.extend_from_slice(&len.to_le_bytes());
                bytes.extend_from_slice(payload);
                conns[current].write(&bytes);
            }
            Op::Abort => conns[current].abort(),
            Op::Wait => {
                if waits < MAX_WAITS {
                    waits += 1;
                    let shared = &conns[current].shared;
                    let seen = shared.lock().frames;
                    shared.wait_for(Duration::from_millis(50), |t| t.frames > seen || t.done);
                }
            }
        }
    }
    // Close: background connections first, each read to its end, so their streams can
    // complete before closing the urgent connection ends the session.
    let mut received: Vec<Option<Received>> = (0..conns.len()).map(|_| None).collect();
    for background in [true, false] {
        for (i, conn) in conns.iter_mut().enumerate().rev() {
            if conn.background_hello == background {
                conn.half_close();
                if background {
                    received[i] = conn.finish();
                }
            }
        }
    }
    for (i, conn) in conns.iter_mut().enumerate() {
        if received[i].is_none() {
            received[i] = conn.finish();
        }
    }
    let summary = check(target, &conns, &received);
    if let (Some(sessions), false) = (target.sessions, target.leftover_sessions) {
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut live = sessions();
        while live != 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
            live = sessions();
        }
        assert_eq!(
            live, 0,
            "{live} session(s) still registered 2 s after all their connections closed (leak)"
        );
    }
    summary
}

/// What the server must answer on a connection, from the bytes the client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    /// No frame at all, then the close (no hello, or an incomplete first frame).
    Silence,
    /// One error frame with this code, then the close.
    Refused(ErrorCode),
    /// A welcome (or, if `may_refuse`, that error instead), then the answers.
    Welcome(Welcomed),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Welcomed {
    role: Role,
    checksums: bool,
    /// Asked for checksums, and a synthetic image's parameters will do (and it is one).
    synthetic: bool,
    may_refuse: Option<ErrorCode>,
    /// The session id the welcome must carry (joins and resumptions name it).
    session: Option<u64>,
    /// A resumption (urgent hello with a session id and `HELLO_RESUME`).
    resumed: bool,
    /// Urgent: the error frame ending the connection, if a later frame is bad.
    then: Option<ErrorCode>,
    /// Urgent: the pages the requests asked for.
    requested: BTreeSet<u64>,
    /// Resumption: the pages the client said it has (never sent again).
    have: BTreeSet<u64>,
}

/// The requests that follow the handshake at `pos`, and the error that ends them, if any.
fn requests(sent: &[u8], mut pos: usize, limits: &Limits) -> (BTreeSet<u64>, Option<ErrorCode>) {
    let mut requested = BTreeSet::new();
    loop {
        match proto::decode(&sent[pos..], limits) {
            Ok(Some((Frame::Request { offset, len }, used))) => {
                requested.extend(offset / PAGE..(offset + len) / PAGE);
                pos += used;
            }
            Ok(Some(_)) | Err(_) => return (requested, Some(ErrorCode::Protocol)),
            Ok(None) => return (requested, None),
        }
    }
}

/// `resumed`: the sessions earlier connections of the script resumed (created or replaced).
fn expect(target: &Target<'_>, conn: &Live, resumed: &BTreeSet<u64>) -> Expect {
    let limits = target.limits();
    let sent = &conn.sent;
    let (hello, mut pos) = match proto::decode(sent, &limits) {
        Err(_) => return Expect::Refused(ErrorCode::Protocol),
        Ok(None) => return Expect::Silence,
        Ok(Some((Frame::Hello(hello), used))) => (hello, used),
        Ok(Some(_)) => return Expect::Refused(ErrorCode::HandshakeRequired),
    };
    if let Some(token) = target.token {
        if hello.token != token {
            return Expect::Refused(ErrorCode::Unauthorized);
        }
    }
    if hello.image_id != 0 && hello.image_id != target.image.id() {
        return Expect::Refused(ErrorCode::ImageMismatch);
    }
    let full = target
        .leftover_sessions
        .then_some(ErrorCode::TooManySessions);
    let mut welcomed = Welcomed {
        role: hello.role,
        checksums: hello.flags & proto::HELLO_WANT_CHECKSUMS != 0,
        synthetic: hello.flags & proto::HELLO_WANT_CHECKSUMS != 0
            && hello.flags & proto::HELLO_SYNTHETIC_OK != 0
            && target.image.synthetic_params().is_some(),
        may_refuse: None,
        session: None,
        resumed: false,
        then: None,
        requested: BTreeSet::new(),
        have: BTreeSet::new(),
    };
    match (hello.role, hello.session) {
        (Role::Urgent, 0) => {
            (welcomed.requested, welcomed.then) = requests(sent, pos, &limits);
            welcomed.may_refuse = full;
        }
        (Role::Urgent, id) if hello.flags & proto::HELLO_RESUME != 0 => {
            // The whole received bitmap follows, in have frames, before the welcome.
            let words = target.image.pages().div_ceil(64);
            let mut have = Vec::new();
            while (have.len() as u64) < words {
                match proto::decode(&sent[pos..], &limits) {
                    Ok(Some((frame @ Frame::Have { first_word, .. }, used)))
                        if first_word == have.len() as u64 =>
                    {
                        have.extend(frame.have_words());
                        pos += used;
                    }
                    Ok(Some(_)) | Err(_) => return Expect::Refused(ErrorCode::Protocol),
                    // The end of the stream inside the handshake: closed without a word.
                    Ok(None) => return Expect::Silence,
                }
            }
            welcomed.have = (0..target.image.pages())
                .filter(|&p| have[(p / 64) as usize] & (1 << (p % 64)) != 0)
                .collect();
            (welcomed.requested, welcomed.then) = requests(sent, pos, &limits);
            welcomed.session = Some(id);
            welcomed.resumed = true;
            welcomed.may_refuse = full;
        }
        (Role::Urgent, _) => return Expect::Refused(ErrorCode::UnknownSession),
        (Role::Background, id)
            if (Some(id) == conn.joined && id != NO_SESSION)
                || resumed.contains(&id)
                || target.leftover_sessions =>
        {
            // The session may have ended (its urgent connection failed) or have its
            // background connection already: "unknown session" is then the answer.
            welcomed.session = Some(id);
            welcomed.may_refuse = Some(ErrorCode::UnknownSession);
        }
        (Role::Background, _) => return Expect::Refused(ErrorCode::UnknownSession),
    }
    Expect::Welcome(welcomed)
}

/// What one connection received, checked.
#[derive(Debug, Default)]
struct Seen {
    session: Option<u64>,
    urgent: bool,
    pages: Vec<u64>,
    have: BTreeSet<u64>,
    end: bool,
}

/// The session id of the welcome that starts `bytes`, if it starts with one.
fn welcome_session(bytes: &[u8], limits: &Limits) -> Option<u64> {
    match proto::decode(bytes, limits) {
        Ok(Some((Frame::Welcome(w), _))) => Some(w.session),
        _ => None,
    }
}

fn check(target: &Target<'_>, conns: &[Live], received: &[Option<Received>]) -> Summary {
    let limits = target.limits();
    let mut summary = Summary {
        connections: conns.len(),
        ..Summary::default()
    };
    // A resumption replaces the live session of that id and shuts its connections down,
    // wherever they were: those may end anyhow, and the session's page accounting restarts.
    // Sessions welcomed on more than one urgent connection are such sessions.
    let mut resumed = BTreeSet::new();
    let expects: Vec<Expect> = conns
        .iter()
        .map(|conn| {
            let e = expect(target, conn, &resumed);
            if let Expect::Welcome(Welcomed {
                resumed: true,
                session: Some(id),
                ..
            }) = e
            {
                resumed.insert(id);
            }
            e
        })
        .collect();
    let mut urgent_welcomes: HashMap<u64, usize> = HashMap::new();
    for (got, e) in received.iter().zip(&expects) {
        if let (Some(got), Expect::Welcome(w)) = (got, e) {
            if let (Role::Urgent, Some(id)) = (w.role, welcome_session(&got.bytes, &limits)) {
                *urgent_welcomes.entry(id).or_default() += 1;
            }
        }
    }
    let replaced = |id: Option<u64>| id.is_some_and(|id| urgent_welcomes.get(&id) > Some(&1));
    let mut seen = Vec::new();
    for (i, (conn, got)) in conns.iter().zip(received).enumerate() {
        let Some(got) = got else {
            continue; // aborted: nothing to check
        };
        if conn.aborted || got.end == End::Aborted {
            continue;
        }
        let relaxed = replaced(welcome_session(&got.bytes, &limits));
        let what = format!("connection {i} (sent {} bytes)", conn.sent.len());
        let s = check_connection(target, &expects[i], got, relaxed, &mut summary)
            .unwrap_or_else(|why| panic!("{what}: {why}"));
        seen.push(s);
    }
    // Per session: no page twice (nor one the client has); a complete background stream
    // completes the image, with the urgent answers and the pages the client had.
    let mut sessions: HashMap<u64, Vec<&Seen>> = HashMap::new();
    for s in &seen {
        if let Some(id) = s.session.filter(|&id| !replaced(Some(id))) {
            sessions.entry(id).or_default().push(s);
        }
    }
    for (id, members) in sessions {
        let mut pages: BTreeSet<u64> = members.iter().flat_map(|s| s.have.clone()).collect();
        for s in &members {
            for &p in &s.pages {
                assert!(
                    pages.insert(p),
                    "session {id:#x}: page {p} sent twice (or sent although the client has it)"
                );
            }
        }
        let complete = members.iter().any(|s| s.end && !s.urgent);
        let has_urgent = members.iter().any(|s| s.urgent);
        if complete && has_urgent {
            assert_eq!(
                pages.len() as u64,
                target.image.pages(),
                "session {id:#x}: the background stream ended but pages are missing"
            );
        }
    }
    summary
}

/// Frames, briefly (no page contents).
fn describe(frames: &[Frame<'_>]) -> String {
    let items: Vec<String> = frames
        .iter()
        .map(|f| match *f {
            Frame::Welcome(w) => format!("welcome(session {:#x}, flags {})", w.session, w.flags),
            Frame::Checksums { first_page, raw } => {
                format!("checksums({first_page}, {} pages)", raw.len() / 8)
            }
            Frame::Data { offset, bytes } => format!("data({offset:#x}+{:#x})", bytes.len()),
            Frame::Zero { offset, len } => format!("zero({offset:#x}+{len:#x})"),
            Frame::Error { code, message } => format!("error({code:?}: {message})"),
            ref other => format!("{:?}", other.kind()),
        })
        .collect();
    format!("[{}]", items.join(", "))
}

fn check_connection(
    target: &Target<'_>,
    expected: &Expect,
    got: &Received,
    relaxed: bool,
    summary: &mut Summary,
) -> Result<Seen, String> {
    let image = target.image;
    let limits = target.limits();
    match got.end {
        End::TimedOut => return Err(format!("not closed within {DEADLINE:?} (hang)")),
        End::Overflow => return Err(format!("more than {MAX_RECEIVED} bytes received")),
        End::Failed(kind) => return Err(format!("reading failed: {kind:?}")),
        End::Eof | End::Reset | End::Aborted => {}
    }
    // Decode everything the server sent.
    let mut frames = Vec::new();
    let mut pos = 0;
    let mut error_at = None;
    while pos < got.bytes.len() {
        match proto::decode(&got.bytes[pos..], &limits) {
            Ok(Some((frame, used))) => {
                if error_at.is_some() {
                    return Err(format!("a {:?} frame after the error frame", frame.kind()));
                }
                if matches!(frame, Frame::Error { .. }) {
                    error_at = Some(frames.len());
                }
                frames.push(frame);
                pos += used;
            }
            Ok(None) => break,
            Err(err) => {
                return Err(format!(
                    "the server sent a frame that does not decode ({err}) at byte {pos}: {:02x?}",
                    &got.bytes[pos..got.bytes.len().min(pos + 48)]
                ))
            }
        }
    }
    let truncated = pos < got.bytes.len();
    if error_at.is_some() && truncated {
        return Err("bytes after the error frame".into());
    }
    if got.end == End::Reset && error_at.is_none() && !relaxed {
        return Err("reset by the server without an error frame".into());
    }
    summary.frames += frames.len();
    let mut seen = Seen::default();
    let refused = |frames: &[Frame<'_>], code: ErrorCode| match frames {
        [Frame::Error { code: c, .. }] if *c == code => Ok(()),
        other => Err(format!(
            "expected one {code:?} error frame, got {} (truncated tail: {truncated})",
            describe(other)
        )),
    };
    let w = match expected.clone() {
        Expect::Silence => {
            if !frames.is_empty() || truncated {
                return Err(format!("expected silence, got {}", describe(&frames)));
            }
            return Ok(seen);
        }
        Expect::Refused(code) => {
            refused(&frames, code)?;
            summary.refused += 1;
            return Ok(seen);
        }
        Expect::Welcome(w) => {
            if let (Some(code), [Frame::Error { .. }]) = (w.may_refuse, &frames[..]) {
                refused(&frames, code)?;
                summary.refused += 1;
                return Ok(seen);
            }
            w
        }
    };
    let mut rest = &frames[..];
    match rest.split_first() {
        Some((Frame::Welcome(welcome), tail)) => {
            if welcome.version != proto::VERSION
                || welcome.image_size != image.len()
                || u64::from(welcome.page_size) != image.page_size()
                || welcome.image_id != image.id()
                || (welcome.flags & proto::WELCOME_CHECKSUMS_FOLLOW != 0)
                    != (w.checksums && !w.synthetic)
                || (welcome.flags & proto::WELCOME_SYNTHETIC_FOLLOWS != 0) != w.synthetic
                || w.session.is_some_and(|id| id != welcome.session)
                || welcome.session == 0
            {
                return Err(format!("bad welcome {welcome:?} for {w:?}"));
            }
            seen.session = Some(welcome.session);
            summary.welcomes += 1;
            rest = tail;
        }
        _ if relaxed && frames.is_empty() => return Ok(seen),
        _ => {
            return Err(format!(
                "expected a welcome first, got {}",
                describe(&frames)
            ))
        }
    }
    seen.urgent = w.role == Role::Urgent;
    seen.have = w.have.clone();
    if w.synthetic {
        let params = image
            .synthetic_params()
            .map(|s| (s.seed(), s.zero_fraction()));
        match rest.split_first() {
            Some((
                Frame::Synthetic {
                    seed,
                    zero_fraction,
                },
                tail,
            )) if Some((*seed, *zero_fraction)) == params => rest = tail,
            _ if relaxed && rest.is_empty() => return Ok(seen),
            _ => {
                return Err(format!(
                    "expected the synthetic frame, got {}",
                    describe(rest)
                ))
            }
        }
    } else if w.checksums {
        let mut next = 0u64;
        while next < image.pages() {
            let Some((frame @ Frame::Checksums { first_page, .. }, tail)) = rest.split_first()
            else {
                if relaxed && rest.is_empty() {
                    return Ok(seen);
                }
                return Err(format!("checksums end at page {next}"));
            };
            if *first_page != next {
                return Err(format!("checksums from page {first_page}, expected {next}"));
            }
            for (k, sum) in frame.checksums().enumerate() {
                let page = next + k as u64;
                if image.checksums(page, 1).ok() != Some(vec![sum]) {
                    return Err(format!("wrong checksum of page {page}"));
                }
            }
            next += frame.checksums().count() as u64;
            rest = tail;
        }
    }
    for (k, frame) in rest.iter().enumerate() {
        let last = k + 1 == rest.len();
        match *frame {
            Frame::Data { offset, bytes } => {
                if image.bytes(offset, bytes.len() as u64).ok().as_deref() != Some(bytes) {
                    return Err(format!("wrong bytes in data at {offset:#x}"));
                }
                for p in offset / PAGE..(offset + bytes.len() as u64) / PAGE {
                    if image.is_zero_page(p) {
                        return Err(format!("zero page {p} sent as data"));
                    }
                    seen.pages.push(p);
                }
            }
            Frame::Zero { offset, len } => {
                for p in offset / PAGE..(offset + len) / PAGE {
                    if !image.is_zero_page(p) {
                        return Err(format!("data page {p} announced as zero"));
                    }
                    seen.pages.push(p);
                }
            }
            Frame::End if w.role == Role::Background && last && !truncated => seen.end = true,
            Frame::Error { code, .. } if w.role == Role::Urgent && Some(code) == w.then => {}
            ref other => {
                return Err(format!(
                    "unexpected {} (frame {k} of the answers)",
                    describe(std::slice::from_ref(other))
                ))
            }
        }
    }
    if w.role == Role::Urgent {
        if truncated && !relaxed {
            return Err("an urgent answer was cut short".into());
        }
        if w.then.is_some() && error_at.is_none() && !relaxed {
            return Err(format!("expected a final {:?} error frame", w.then));
        }
        if let Some(p) = seen.pages.iter().find(|p| !w.requested.contains(p)) {
            return Err(format!("page {p} sent on the urgent connection unasked"));
        }
    }
    summary.pages += seen.pages.len() as u64;
    Ok(seen)
}

/// A well-behaved client: hello, one request for `page`, and the answer must be the image's
/// page (as data, or as a zero frame for a zero page), then a clean close.
pub fn still_serves(target: &Target<'_>, page: u64) {
    let page = page % IMAGE_PAGES;
    let stream = TcpStream::connect(target.addr).expect("a fresh connection is accepted");
    stream
        .set_read_timeout(Some(DEADLINE))
        .expect("read timeout");
    let mut bytes = crate::frames::encode(&Frame::Hello(Hello {
        version: proto::VERSION,
        role: Role::Urgent,
        flags: 0,
        session: 0,
        unit: PAGE,
        image_id: target.image.id(),
        token: target.token.unwrap_or(b""),
    }));
    bytes.extend_from_slice(&request_bytes(page * PAGE, PAGE));
    (&stream).write_all(&bytes).expect("send hello and request");
    let mut reader = FrameReader::new(Conn::Tcp(stream.try_clone().expect("clone")));
    let limits = target.limits();
    match reader.read_frame(&limits) {
        Ok(Some(Frame::Welcome(w))) => assert_eq!(w.image_id, target.image.id()),
        other => panic!("the server no longer serves: {other:?} instead of a welcome"),
    }
    match reader.read_frame(&limits) {
        Ok(Some(Frame::Data { offset, bytes })) => {
            assert_eq!((offset, bytes.len() as u64), (page * PAGE, PAGE));
            assert!(
                image_bytes_are(target.image, offset, bytes),
                "wrong page bytes"
            );
        }
        Ok(Some(Frame::Zero { offset, len })) => {
            assert_eq!((offset, len), (page * PAGE, PAGE));
            assert!(target.image.is_zero_page(page));
        }
        other => panic!("the server no longer serves page {page}: {other:?}"),
    }
    stream.shutdown(Shutdown::Write).expect("half-close");
    match reader.read_frame(&limits) {
        Ok(None) => {}
        other => panic!("expected the close after the answer, got {other:?}"),
    }
}

fn image_bytes_are(image: &Image, offset: u64, bytes: &[u8]) -> bool {
    image.bytes(offset, bytes.len() as u64).ok().as_deref() == Some(bytes)
}
