//! Malformed and hostile clients: each gets an error frame and is disconnected, and the
//! server keeps serving everyone else. And the server's limits: connections waiting for
//! their hello are capped, and connections that make no progress are cut.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use common::{eventually, hello, synthetic, Observed, TestServer, PAGE};
use page_server::Image;
use uffd_core::convert::usize_from;
use uffd_core::proto::{self, ErrorCode, Frame, Hello, Limits, Role};
use uffd_core::{Conn, Endpoint, FrameReader, FrameWriter};

fn addr(server: &TestServer) -> String {
    tcp(&server.endpoint)
}

fn tcp(endpoint: &Endpoint) -> String {
    match endpoint {
        Endpoint::Tcp(a) => a.clone(),
        Endpoint::Unix(_) => unreachable!("tests use TCP"),
    }
}

/// Sends `bytes` on a fresh connection; returns the error frame the server answers with,
/// after checking that the server then closes the connection.
fn error_for(server: &TestServer, bytes: &[u8]) -> (ErrorCode, String) {
    error_at(&addr(server), server.image.len(), bytes)
}

/// [`error_for`] a server at `addr` serving `image_len` bytes.
fn error_at(addr: &str, image_len: u64, bytes: &[u8]) -> (ErrorCode, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.write_all(bytes).expect("write");
    error_on(&stream, image_len, bytes)
}

/// The error frame the server sends on `stream` (after `bytes` were sent on it), after
/// checking that the server then closes the connection.
fn error_on(stream: &TcpStream, image_len: u64, bytes: &[u8]) -> (ErrorCode, String) {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut reader = FrameReader::new(Conn::Tcp(stream.try_clone().expect("clone")));
    let limits = Limits::new(image_len, PAGE);
    let mut answer = None;
    loop {
        match reader.read_frame(&limits) {
            Ok(Some(Frame::Error { code, message })) => {
                answer = Some((code, message.to_string()));
            }
            Ok(Some(_)) => {} // a welcome before the error
            Ok(None) => break,
            Err(err) => panic!("server should close cleanly after its error frame: {err}"),
        }
    }
    answer.unwrap_or_else(|| {
        panic!(
            "an error frame before the close for {:?}",
            &bytes[..bytes.len().min(16)]
        )
    })
}

/// A normal client still gets a full, verified image.
fn others_still_served(server: &TestServer) {
    served_at(&server.endpoint);
}

fn served_at(endpoint: &Endpoint) -> fault_client::Report {
    let mut cfg = fault_client::RunConfig::new(endpoint.clone());
    cfg.verify = true;
    cfg.threads = 2;
    cfg.quiet = true;
    let report = fault_client::client::run(&cfg).expect("a well-behaved client is served");
    assert_eq!(report.verified, Some(true));
    report
}

#[test]
fn garbage_bad_magic_huge_lengths_out_of_range_and_early_requests() {
    if !common::have_uffd() {
        return;
    }
    let server = TestServer::start(synthetic(1 << 20, 1, 0.0));

    // Garbage: an unknown frame kind.
    let (code, msg) = error_for(&server, b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(code, ErrorCode::Protocol, "{msg}");

    // Bad magic.
    let mut bad = hello(Role::Urgent, 0);
    bad[proto::HEADER_LEN] ^= 0xff;
    let (code, msg) = error_for(&server, &bad);
    assert_eq!(code, ErrorCode::Protocol);
    assert!(msg.contains("magic"), "{msg}");

    // Unknown version.
    let mut bad = hello(Role::Urgent, 0);
    bad[proto::HEADER_LEN + 4] = 99;
    let (_, msg) = error_for(&server, &bad);
    assert!(msg.contains("version"), "{msg}");

    // A header announcing a 4 GiB payload.
    let (code, msg) = error_for(
        &server,
        &[proto::Kind::Data as u8, 0, 0, 0, 0xff, 0xff, 0xff, 0xff],
    );
    assert_eq!(code, ErrorCode::Protocol);
    assert!(msg.contains("exceeds"), "{msg}");

    // A request before the handshake.
    let mut early = BytesMut::new();
    Frame::Request {
        offset: 0,
        len: PAGE,
    }
    .encode(&mut early);
    let (code, _) = error_for(&server, &early);
    assert_eq!(code, ErrorCode::HandshakeRequired);

    // A request outside the image, after a proper hello.
    let mut out = hello(Role::Urgent, 0);
    Frame::Request {
        offset: 1 << 30,
        len: PAGE,
    }
    .encode(&mut out);
    let (code, msg) = error_for(&server, &out);
    assert_eq!(code, ErrorCode::Protocol);
    assert!(msg.contains("outside"), "{msg}");

    // A misaligned request.
    let mut out = hello(Role::Urgent, 0);
    let mut raw = BytesMut::new();
    raw.put_u8(proto::Kind::Request as u8);
    raw.put_u8(0);
    raw.put_u16_le(0);
    raw.put_u32_le(16);
    raw.put_u64_le(17);
    raw.put_u64_le(PAGE);
    out.extend_from_slice(&raw);
    let (_, msg) = error_for(&server, &out);
    assert!(msg.contains("aligned"), "{msg}");

    // A background hello for a session that does not exist.
    let (code, _) = error_for(&server, &hello(Role::Background, 0xdead_beef));
    assert_eq!(code, ErrorCode::UnknownSession);

    // A frame kind the server never accepts (a data frame from a client).
    let mut out = hello(Role::Urgent, 0);
    Frame::Data {
        offset: 0,
        bytes: &[0u8; 4096],
    }
    .encode(&mut out);
    let (code, _) = error_for(&server, &out);
    assert_eq!(code, ErrorCode::Protocol);

    others_still_served(&server);
}

#[test]
fn hostile_clients_alongside_a_real_one() {
    if !common::have_uffd() {
        return;
    }
    let server = TestServer::start(synthetic(32 << 20, 9, 0.1));
    let target = addr(&server);
    // Hostile clients hammer the server while a real client runs.
    let hostile = std::thread::spawn(move || {
        for i in 0..200u8 {
            if let Ok(mut s) = TcpStream::connect(&target) {
                let junk: Vec<u8> = (0..64)
                    .map(|j| i.wrapping_mul(31).wrapping_add(j))
                    .collect();
                let _ = s.write_all(&junk);
                let mut sink = [0u8; 256];
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = s.read(&mut sink);
            }
        }
    });
    others_still_served(&server);
    hostile.join().expect("hostile thread");
    others_still_served(&server);
}

#[test]
fn silent_client_is_dropped_after_the_handshake_timeout() {
    let server = TestServer::start_with(synthetic(1 << 20, 1, 0.0), |c| {
        c.handshake_timeout = Duration::from_millis(300);
    });
    let mut stream = TcpStream::connect(addr(&server)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    let started = std::time::Instant::now();
    // The server closes the connection (EOF) once the timeout passes.
    let n = stream.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "expected EOF");
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[test]
fn token_is_enforced() {
    let server = TestServer::start_with(synthetic(1 << 20, 1, 0.0), |c| {
        c.token = Some(b"s3cret".to_vec());
    });
    let (code, _) = error_for(&server, &hello(Role::Urgent, 0));
    assert_eq!(code, ErrorCode::Unauthorized);
    // With the right token, the welcome comes back.
    let conn = Conn::connect(&server.endpoint, Duration::from_secs(5)).expect("connect");
    let mut writer = FrameWriter::new(conn.try_clone().expect("clone"));
    writer
        .send(&Frame::Hello(Hello {
            version: proto::VERSION,
            role: Role::Urgent,
            flags: 0,
            session: 0,
            unit: PAGE,
            image_id: 0,
            token: b"s3cret",
        }))
        .expect("hello");
    let mut reader = FrameReader::new(conn);
    let frame = reader
        .read_frame(&Limits::handshake(PAGE))
        .expect("read")
        .expect("frame");
    assert!(matches!(frame, Frame::Welcome(_)), "{frame:?}");
}

#[test]
fn session_limit_is_enforced() {
    let server = TestServer::start_with(synthetic(1 << 20, 1, 0.0), |c| c.max_sessions = 1);
    let _first = TcpStream::connect(addr(&server)).and_then(|mut s| {
        s.write_all(&hello(Role::Urgent, 0))?;
        // The welcome (8-byte header + 35-byte payload): the session is open.
        let mut welcome = [0u8; 43];
        s.read_exact(&mut welcome)?;
        Ok(s)
    });
    let (code, _) = error_for(&server, &hello(Role::Urgent, 0));
    assert_eq!(code, ErrorCode::TooManySessions);
}

/// Opens a session by hand: an urgent hello with no token, and its welcome. Returns the
/// connection and the session id.
fn raw_session(endpoint: &Endpoint) -> (FrameReader<Conn>, FrameWriter<Conn>, u64) {
    let mut conn = Conn::connect(endpoint, Duration::from_secs(5)).expect("connect");
    conn.write_all(&hello(Role::Urgent, 0)).expect("hello");
    let writer = FrameWriter::new(conn.try_clone().expect("clone"));
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut reader = FrameReader::new(conn);
    let session = match reader.read_frame(&Limits::handshake(PAGE)) {
        Ok(Some(Frame::Welcome(welcome))) => welcome.session,
        other => panic!("expected a welcome, got {other:?}"),
    };
    (reader, writer, session)
}

/// Reads until the server closes the connection (EOF or a reset); returns how long it took.
fn closed_within(reader: &mut FrameReader<Conn>, limits: &Limits) -> Duration {
    let started = Instant::now();
    loop {
        match reader.read_frame(limits) {
            Ok(Some(_)) => {}
            Ok(None) => return started.elapsed(),
            Err(uffd_core::WireError::Io(err)) if err.kind() == std::io::ErrorKind::WouldBlock => {
                panic!("the server did not close the connection within the read timeout")
            }
            Err(_) => return started.elapsed(), // reset
        }
    }
}

#[test]
fn connections_beyond_max_pending_push_out_the_oldest() {
    if !common::have_uffd() {
        return;
    }
    let image_len = 4 << 20;
    let server = Observed::start(synthetic(image_len, 3, 0.1), |c| {
        c.max_pending = 4;
        c.handshake_timeout = Duration::from_secs(60);
    });
    // 54 connections that never say hello: the table keeps the newest four, and none of
    // them costs a thread.
    let idle: Vec<TcpStream> = (0..54)
        .map(|_| TcpStream::connect(server.addr()).expect("connect"))
        .collect();
    eventually("four pending connections", || server.server.pending() == 4);
    // The fifty oldest were dropped, each told why in an error frame, then closed.
    for stream in &idle[..50] {
        let (code, message) = error_on(stream, image_len, b"");
        assert_eq!(code, ErrorCode::TooManySessions, "{message}");
        assert!(message.contains("waited longest"), "{message}");
    }
    assert_eq!(server.server.pending(), 4);
    // The four newest are still waiting: nothing was sent to them.
    for stream in &idle[50..] {
        stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let err = (&*stream)
            .read(&mut [0u8; 64])
            .expect_err("the newest connections are kept, unanswered");
        assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock, "{err}");
    }
    assert_eq!(
        server.server.connections(),
        0,
        "no thread for a connection that has not sent its hello"
    );
    // A real client is served while the places are taken: it pushes out the oldest.
    let started = Instant::now();
    served_at(&server.endpoint);
    let served_in = started.elapsed();
    drop(idle);
    eventually("the places freed", || server.server.pending() == 0);
    server.wait_idle();
    eprintln!("50 of 54 idle connections pushed out by --max-pending 4; a real client served in {served_in:?}");
}

#[test]
fn client_that_stops_reading_its_stream_is_cut_after_the_idle_timeout() {
    if !common::have_uffd() {
        return;
    }
    let idle_timeout = Duration::from_secs(1);
    // Larger than the socket buffers on both sides, and no zero pages: the stream blocks.
    let image_len = 64 << 20;
    let server = Observed::start(synthetic(image_len, 5, 0.0), |c| {
        c.idle_timeout = idle_timeout;
    });
    let (mut urgent, _urgent_tx, session) = raw_session(&server.endpoint);
    // The background connection joins the session, and is never read.
    let mut background = TcpStream::connect(server.addr()).expect("connect");
    background
        .write_all(&hello(Role::Background, session))
        .expect("background hello");
    // Another session is served meanwhile.
    let other = {
        let endpoint = server.endpoint.clone();
        std::thread::spawn(move || served_at(&endpoint))
    };
    let cut_after = closed_within(&mut urgent, &Limits::new(image_len, PAGE));
    assert!(
        cut_after >= idle_timeout && cut_after < idle_timeout * 3,
        "session cut after {cut_after:?}"
    );
    let report = other.join().expect("the other client");
    drop(background);
    server.wait_idle();
    eprintln!(
        "stalled session cut after {cut_after:?} (--idle-timeout {idle_timeout:?}); the other client verified ({} reconnects)",
        report.reconnects
    );
}

#[test]
fn silent_urgent_connection_is_cut_only_when_nothing_is_left_to_send() {
    let idle_timeout = Duration::from_millis(500);
    let image_len = 1 << 20;
    let server = Observed::start(synthetic(image_len, 6, 0.1), |c| {
        c.idle_timeout = idle_timeout;
    });
    let limits = Limits::new(image_len, PAGE);
    let (mut reader, mut writer, _) = raw_session(&server.endpoint);
    // Silent for four idle timeouts with pages left to send (no background connection):
    // kept, since the client may fault at any moment.
    std::thread::sleep(idle_timeout * 4);
    // Then it asks for every page, and gets them all.
    writer
        .send(&Frame::Request {
            offset: 0,
            len: image_len,
        })
        .expect("the connection is still open");
    let mut pages = 0;
    while pages < image_len / PAGE {
        pages += match reader.read_frame(&limits).expect("read").expect("a frame") {
            Frame::Data { bytes, .. } => bytes.len() as u64 / PAGE,
            Frame::Zero { len, .. } => len / PAGE,
            other => panic!("unexpected {other:?}"),
        };
    }
    // Nothing is left to send now: silence is cut after the idle timeout.
    let cut_after = closed_within(&mut reader, &limits);
    assert!(
        cut_after < idle_timeout + Duration::from_secs(3),
        "cut after {cut_after:?}"
    );
    server.wait_idle();
}

#[test]
fn fault_client_across_idle_timeouts() {
    if !common::have_uffd() {
        return;
    }
    use fault_client::client::{Client, ClientOptions};
    let idle_timeout = Duration::from_millis(300);
    let server = Observed::start(synthetic(8 << 20, 7, 0.1), |c| {
        c.idle_timeout = idle_timeout;
    });
    let image = Image::synthetic(8 << 20, 7, 0.1, PAGE).expect("the same image");
    let page = |client: &Client, p: u64| {
        client.touch(p);
        let addr = client.pager().page_addr(p) as *const u8;
        // SAFETY: page `p` is present (just touched) in the client's region, which lives as
        // long as the client; nothing writes it.
        unsafe {
            std::slice::from_raw_parts(addr, usize_from(PAGE))
                == image.bytes(p * PAGE, PAGE).expect("image bytes")
        }
    };
    // On demand only, silent for ten idle timeouts between two faults: never cut.
    let mut options = ClientOptions::new(server.endpoint.clone());
    options.background = false;
    let client = Client::open(&options).expect("client");
    assert!(page(&client, 1));
    std::thread::sleep(idle_timeout * 10);
    assert!(page(&client, 2000));
    assert_eq!(
        client.pager().counters.reconnects.load(Ordering::Relaxed),
        0
    );
    client.close().expect("close");
    // With the stream: once everything has arrived the session has nothing left to send and
    // its silent urgent connection is cut; the client reconnects and resumes, no harm done.
    let client = Client::open(&ClientOptions::new(server.endpoint.clone())).expect("client");
    client.wait_complete().expect("the image arrives");
    eventually("a reconnection", || {
        client.pager().counters.reconnects.load(Ordering::Relaxed) > 0
    });
    let fatal = client.pager().fatal();
    assert!(fatal.is_none(), "{fatal:?}");
    assert!((0..client.pager().pages).all(|p| page(&client, p)));
    client.close().expect("close");
    server.wait_idle();
}
