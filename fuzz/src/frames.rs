//! Decoder limits chosen by the first bytes of a fuzz input, and valid frames of every kind
//! (the seed corpus generator and the proptest suite mutate them).
//!
//! Shared by the fuzz targets (through `src/lib.rs`) and by `tests/fuzz_session.rs` (which
//! includes this file with `#[path]`), so it depends only on `uffd-core` and `bytes`.

use bytes::BytesMut;
use uffd_core::proto::{self, ErrorCode, Frame, Hello, Limits, Role, Welcome};

/// The page size of the limits the inputs usually select.
pub const PAGE: u64 = 4096;

/// Page sizes an input can select (all powers of two, as `Limits` requires).
const PAGE_SIZES: [u64; 4] = [4096, 512, 65536, 2 << 20];

/// Decoder limits selected by the first bytes of `data`; returns them and the rest.
///
/// Selector byte `s`: page size `PAGE_SIZES[s & 3]`; then by `(s >> 2) & 3`:
/// 0: handshake limits (image size 0, every range refused);
/// 1: `Limits::new` of a small image, size from the next 2 bytes (in units of 1000 bytes);
/// 2: `Limits::new` of an image whose size is the next 8 bytes masked below 2^52;
/// 3: a `Limits` literal whose image size is any u64 rounded down to a page multiple (as
///    `Limits::new` cannot build them: it overflows near `u64::MAX`).
///
/// Bit 4 selects a small `max_payload` (one page and an offset) instead of `MAX_PAYLOAD`.
pub fn limits_from(data: &[u8]) -> (Limits, &[u8]) {
    let Some((&sel, mut rest)) = data.split_first() else {
        return (Limits::new(64 * PAGE, PAGE), data);
    };
    let page = PAGE_SIZES[usize::from(sel & 3)];
    let mut take = |n: usize| -> u64 {
        let mut word = [0u8; 8];
        let n = n.min(rest.len());
        word[..n].copy_from_slice(&rest[..n]);
        rest = &rest[n..];
        u64::from_le_bytes(word)
    };
    let mut limits = match (sel >> 2) & 3 {
        0 => Limits::handshake(page),
        1 => Limits::new(take(2) * 1000, page),
        2 => Limits::new(take(8) & ((1 << 52) - 1), page),
        _ => Limits {
            image_size: take(8) / page * page,
            page_size: page,
            max_payload: proto::MAX_PAYLOAD,
        },
    };
    if sel & 0x10 != 0 {
        limits.max_payload = 4096 + 8;
    }
    (limits, rest)
}

/// The selector byte that makes [`limits_from`] pick `Limits::new(pages * 4096, 4096)`
/// (followed by the two size bytes it needs); used by the corpus generator.
pub fn small_image_selector(image_size: u64) -> Vec<u8> {
    let units = u16::try_from(image_size.div_ceil(1000)).unwrap_or(u16::MAX);
    let mut out = vec![1 << 2];
    out.extend_from_slice(&units.to_le_bytes());
    out
}

/// Encodes one frame.
pub fn encode(frame: &Frame<'_>) -> Vec<u8> {
    let mut buf = BytesMut::new();
    frame.encode(&mut buf);
    buf.to_vec()
}

/// Valid encoded frames of every kind for `limits` (the range-carrying kinds only when the
/// limits admit a range, i.e. the image is not empty). Every one of them decodes.
pub fn valid_frames(limits: &Limits) -> Vec<Vec<u8>> {
    let page = limits.page_size;
    let pages = limits.pages();
    let mut out = Vec::new();
    for (role, flags, session, unit, token) in [
        (Role::Urgent, 0, 0, page, &b""[..]),
        (
            Role::Urgent,
            proto::HELLO_WANT_CHECKSUMS,
            0,
            2 << 20,
            &b"token"[..],
        ),
        (
            Role::Background,
            0,
            0x1234_5678_9abc_def0,
            1 << 30,
            &b""[..],
        ),
    ] {
        out.push(encode(&Frame::Hello(Hello {
            version: proto::VERSION,
            role,
            flags,
            session,
            unit: unit.max(page),
            image_id: session ^ 7,
            token,
        })));
    }
    out.push(encode(&Frame::Welcome(Welcome {
        version: proto::VERSION,
        flags: proto::WELCOME_CHECKSUMS_FOLLOW,
        session: 42,
        image_size: limits
            .image_size
            .saturating_sub(100)
            .clamp(1, proto::MAX_IMAGE),
        page_size: u32::try_from(page).unwrap_or(4096),
        image_id: 99,
    })));
    out.push(encode(&Frame::End));
    out.push(encode(&Frame::Error {
        code: ErrorCode::UnknownSession,
        message: "unknown session 0x2a",
    }));
    out.push(encode(&Frame::Error {
        code: ErrorCode::Internal,
        message: "",
    }));
    if pages > 0 {
        let count = pages.min(3);
        let sums = proto::encode_u64s((0..count).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
        out.push(encode(&Frame::Checksums {
            first_page: pages - count,
            raw: &sums,
        }));
        out.push(encode(&Frame::Request {
            offset: 0,
            len: page,
        }));
        out.push(encode(&Frame::Request {
            offset: (pages - 1) * page,
            len: page,
        }));
        out.push(encode(&Frame::Request {
            offset: 0,
            len: pages.min(proto::MAX_REQUEST / page) * page,
        }));
        // Data frames no longer than the payload limit allows.
        let max_pages = ((limits.max_payload - 8) as u64 / page).min(pages).min(2);
        if max_pages > 0 {
            let bytes: Vec<u8> = (0..max_pages * page).map(|i| (i % 251) as u8).collect();
            out.push(encode(&Frame::Data {
                offset: (pages - max_pages) * page,
                bytes: &bytes,
            }));
        }
        out.push(encode(&Frame::Zero {
            offset: 0,
            len: pages * page,
        }));
        let words = pages.div_ceil(64).min(4);
        let have = proto::encode_u64s((0..words).map(|w| !0u64 >> (w % 64)));
        out.push(encode(&Frame::Have {
            first_word: 0,
            raw: &have,
        }));
    }
    out
}

/// Small mutations of a valid frame, as a fuzzer would make them: every strict prefix length
/// class, a flipped bit in the header, a wrong length, appended garbage.
pub fn corrupted(frame: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    if frame.len() > 1 {
        out.push(frame[..frame.len() / 2].to_vec());
        out.push(frame[..frame.len() - 1].to_vec());
    }
    out.push(frame[..frame.len().min(proto::HEADER_LEN - 1)].to_vec());
    let mut reserved = frame.to_vec();
    reserved[2] = 1;
    out.push(reserved);
    let mut longer = frame.to_vec();
    longer[4] = longer[4].wrapping_add(1);
    out.push(longer);
    let mut kind = frame.to_vec();
    kind[0] = 0x42;
    out.push(kind);
    if frame.len() > proto::HEADER_LEN {
        let mut flipped = frame.to_vec();
        flipped[proto::HEADER_LEN] ^= 0x80;
        out.push(flipped);
    }
    let mut trailing = frame.to_vec();
    trailing.extend_from_slice(b"\xff\x00garbage");
    out.push(trailing);
    out
}
