//! The annotated frame dumps in `docs/protocol.md` are exact: each one is compared byte for
//! byte with what the encoder writes for the frame it describes.
//!
//! A dump is a fenced block whose info string is `hexdump NAME`. Each line holds hex bytes,
//! then (after two or more spaces) what they mean; a line `...` ends a dump that shows only the
//! start of its frame.

use bytes::BytesMut;
use uffd_core::proto::{ErrorCode, Hello, Role, Welcome, HELLO_WANT_CHECKSUMS, VERSION};
use uffd_core::Frame;

const DOC: &str = include_str!("../../docs/protocol.md");

/// The dump named `name`: its bytes, and whether it shows the whole frame.
fn dump(name: &str) -> (Vec<u8>, bool) {
    let fence = format!("```hexdump {name}");
    let start = DOC
        .find(&fence)
        .unwrap_or_else(|| panic!("docs/protocol.md has no dump `{name}`"));
    let body = &DOC[start + fence.len()..];
    let body = &body[..body.find("```").expect("unterminated dump")];
    let mut bytes = Vec::new();
    let mut whole = true;
    for line in body.lines().filter(|l| !l.trim().is_empty()) {
        if line.trim() == "..." {
            whole = false;
            continue;
        }
        let hex = line.split("  ").next().unwrap_or("");
        for pair in hex.split_whitespace() {
            let byte = u8::from_str_radix(pair, 16)
                .unwrap_or_else(|_| panic!("dump `{name}`: `{pair}` is not a hex byte"));
            bytes.push(byte);
        }
    }
    (bytes, whole)
}

fn check(name: &str, frame: &Frame<'_>) {
    let mut encoded = BytesMut::new();
    frame.encode(&mut encoded);
    let (documented, whole) = dump(name);
    if whole {
        assert_eq!(documented, encoded.as_ref(), "dump `{name}` differs");
    } else {
        assert!(documented.len() < encoded.len(), "dump `{name}` is longer");
        assert_eq!(
            documented,
            encoded[..documented.len()],
            "dump `{name}` differs"
        );
    }
}

#[test]
fn hello_dump_is_exact() {
    let hello = Hello {
        version: VERSION,
        role: Role::Urgent,
        flags: HELLO_WANT_CHECKSUMS,
        session: 0,
        unit: 4096,
        image_id: 0,
        token: b"key",
    };
    check("hello", &Frame::Hello(hello));
}

#[test]
fn welcome_dump_is_exact() {
    let welcome = Welcome {
        version: VERSION,
        flags: uffd_core::proto::WELCOME_CHECKSUMS_FOLLOW,
        session: 7,
        image_size: 256 << 20,
        page_size: 4096,
        image_id: 0x0123_4567_89AB_CDEF,
    };
    check("welcome", &Frame::Welcome(welcome));
}

#[test]
fn request_dump_is_exact() {
    check(
        "request",
        &Frame::Request {
            offset: 5 * 4096,
            len: 4096,
        },
    );
}

#[test]
fn data_dump_is_exact() {
    let page = [0xAB_u8; 4096];
    check(
        "data",
        &Frame::Data {
            offset: 5 * 4096,
            bytes: &page,
        },
    );
}

#[test]
fn error_dump_is_exact() {
    check(
        "error",
        &Frame::Error {
            code: ErrorCode::ImageMismatch,
            message: "other image",
        },
    );
}

#[test]
fn magic_is_the_documented_bytes() {
    let (hello, _) = dump("hello");
    assert_eq!(&hello[8..12], &[0x4C, 0x44, 0x46, 0x55]);
    assert_eq!(uffd_core::proto::MAGIC, 0x5546_444C);
}

#[test]
fn synthetic_dump_is_exact() {
    check(
        "synthetic",
        &Frame::Synthetic {
            seed: 7,
            zero_fraction: 0.5,
        },
    );
}
