//! Playing a script against a server: the bytes each operation sends, the order in which the
//! connections close, and a well-behaved client to show the server still serves afterwards.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use page_server::Image;
use uffd_core::proto::{self, Frame, Hello, Role, HEADER_LEN};
use uffd_core::{Conn, FrameReader};

use super::answer::Summary;
use super::check::check;
use super::connection::{connect, Received, DEADLINE};
use super::expect::{expect, Expect};
use super::script::{HelloOp, Op};
use super::target::{Target, IMAGE_PAGES, NO_SESSION, PAGE, TOKEN};

/// Connections a script may open.
const MAX_CONNS: usize = 4;
/// `Wait` operations a script may take (each up to 50 ms).
const MAX_WAITS: usize = 8;

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
