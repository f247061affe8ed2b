//! The per-page tables exchanged around a (re)connection: the server's checksums (one
//! xxh3-64 per page, sent after a welcome that says so) and the client's have frames (its
//! received bitmap, sent after a resuming hello). Both payloads are a first index and then
//! little-endian u64s: checksums count pages, have frames count 64-page bitmap words.

use bytes::{Buf, BufMut, BytesMut};

use super::header::Header;
use super::{malformed, need, Kind, Limits, ProtoError, Result};

/// The payload before the u64s: the index of the first one, u64.
const FIRST_LEN: usize = 8;

/// Parses a checksums frame: `(first page, raw checksum bytes)`, inside the image.
pub(super) fn parse_checksums<'a>(p: &mut &'a [u8], limits: &Limits) -> Result<(u64, &'a [u8])> {
    let (first_page, raw) = parse_run(Kind::Checksums, p, "checksums are not whole u64s")?;
    let count = (raw.len() / 8) as u64;
    match first_page.checked_add(count) {
        Some(end) if end <= limits.pages() => Ok((first_page, raw)),
        _ => Err(ProtoError::OutOfRange {
            offset: first_page.saturating_mul(limits.page_size),
            len: count.saturating_mul(limits.page_size),
            size: limits.image_size,
        }),
    }
}

pub(super) fn encode_checksums(first_page: u64, raw: &[u8], dst: &mut BytesMut) {
    encode_run(Kind::Checksums, first_page, raw, dst);
}

/// Parses a have frame: `(first word, raw bitmap words)`, inside the image's bitmap.
pub(super) fn parse_have<'a>(p: &mut &'a [u8], limits: &Limits) -> Result<(u64, &'a [u8])> {
    let (first_word, raw) = parse_run(Kind::Have, p, "bitmap is not whole u64 words")?;
    let words = (raw.len() / 8) as u64;
    match first_word.checked_add(words) {
        Some(end) if end <= limits.pages().div_ceil(64) => Ok((first_word, raw)),
        _ => Err(ProtoError::OutOfRange {
            offset: first_word.saturating_mul(64 * limits.page_size),
            len: words.saturating_mul(64 * limits.page_size),
            size: limits.image_size,
        }),
    }
}

pub(super) fn encode_have(first_word: u64, raw: &[u8], dst: &mut BytesMut) {
    encode_run(Kind::Have, first_word, raw, dst);
}

/// The first index and the raw u64s (at least one, whole) of a `kind` payload.
fn parse_run<'a>(kind: Kind, p: &mut &'a [u8], not_whole: &'static str) -> Result<(u64, &'a [u8])> {
    need(kind, p, FIRST_LEN)?;
    let first = p.get_u64_le();
    if !p.len().is_multiple_of(8) || p.is_empty() {
        return Err(malformed(kind, not_whole));
    }
    Ok((first, std::mem::take(p)))
}

fn encode_run(kind: Kind, first: u64, raw: &[u8], dst: &mut BytesMut) {
    Header::put(kind, 0, FIRST_LEN + raw.len(), dst);
    dst.put_u64_le(first);
    dst.put_slice(raw);
}

/// The u64s of a checksums or have payload.
pub(super) fn u64s(raw: &[u8]) -> impl Iterator<Item = u64> + '_ {
    raw.chunks_exact(8).map(|mut c| c.get_u64_le())
}

/// Encodes u64s as the little-endian bytes of a checksums or have frame.
pub fn encode_u64s(values: impl IntoIterator<Item = u64>) -> BytesMut {
    let mut out = BytesMut::new();
    for v in values {
        out.put_u64_le(v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests::{limits, roundtrip};
    use super::super::{decode, Frame};
    use super::*;

    #[test]
    fn checksums_and_have_round_trip() {
        let sums = encode_u64s([1, 2, 3]);
        let words = encode_u64s([u64::MAX]);
        roundtrip(Frame::Checksums {
            first_page: 5,
            raw: &sums,
        });
        roundtrip(Frame::Have {
            first_word: 0,
            raw: &words,
        });
    }

    #[test]
    fn tables_stay_inside_the_image() {
        // 64 pages: checksums 0..64, one bitmap word.
        let mut buf = BytesMut::new();
        encode_checksums(63, &encode_u64s([1, 2]), &mut buf);
        assert!(matches!(
            decode(&buf, &limits()),
            Err(ProtoError::OutOfRange { .. })
        ));
        buf.clear();
        encode_have(1, &encode_u64s([0]), &mut buf);
        assert!(matches!(
            decode(&buf, &limits()),
            Err(ProtoError::OutOfRange { .. })
        ));
        buf.clear();
        encode_have(0, &[1, 2, 3], &mut buf);
        assert!(matches!(
            decode(&buf, &limits()),
            Err(ProtoError::Malformed { .. })
        ));
    }
}
