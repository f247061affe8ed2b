//! Malformed and hostile clients: each gets an error frame and is disconnected, and the
//! server keeps serving everyone else.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use common::{synthetic, TestServer, PAGE};
use uffd_core::proto::{self, ErrorCode, Frame, Hello, Limits, Role};
use uffd_core::{Conn, Endpoint, FrameReader, FrameWriter};

fn addr(server: &TestServer) -> String {
    match &server.endpoint {
        Endpoint::Tcp(a) => a.clone(),
        Endpoint::Unix(_) => unreachable!("tests use TCP"),
    }
}

fn hello(role: Role, session: u64) -> BytesMut {
    let mut buf = BytesMut::new();
    Frame::Hello(Hello {
        version: proto::VERSION,
        role,
        flags: 0,
        session,
        unit: PAGE,
        image_id: 0,
        token: b"",
    })
    .encode(&mut buf);
    buf
}

/// Sends `bytes` on a fresh connection; returns the error frame the server answers with,
/// after checking that the server then closes the connection.
fn error_for(server: &TestServer, bytes: &[u8]) -> (ErrorCode, String) {
    let mut stream = TcpStream::connect(addr(server)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(bytes).expect("write");
    let mut reader = FrameReader::new(Conn::Tcp(stream.try_clone().expect("clone")));
    let limits = Limits::new(server.image.len(), PAGE);
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
    let mut cfg = fault_client::RunConfig::new(server.endpoint.clone());
    cfg.verify = true;
    cfg.threads = 2;
    let report = fault_client::client::run(&cfg).expect("a well-behaved client is served");
    assert_eq!(report.verified, Some(true));
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
        for i in 0..200u32 {
            if let Ok(mut s) = TcpStream::connect(&target) {
                let junk: Vec<u8> = (0..64).map(|j| (i.wrapping_mul(31) + j) as u8).collect();
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
