//! Pages: the client's request for a range, and the server's data, zero and end frames that
//! answer it or stream the image in the background.

use bytes::{Buf, BufMut, BytesMut};

use super::header::Header;
use super::{malformed, need, Kind, Limits, Result, MAX_REQUEST};

/// A request's payload: offset u64, length u64.
const REQUEST_LEN: usize = 8 + 8;

/// Parses a request: `(offset, len)`, whole pages inside the image, at most [`MAX_REQUEST`].
pub(super) fn parse_request(p: &mut &[u8], limits: &Limits) -> Result<(u64, u64)> {
    let kind = Kind::Request;
    need(kind, p, REQUEST_LEN)?;
    let offset = p.get_u64_le();
    let len = p.get_u64_le();
    if len > MAX_REQUEST {
        return Err(malformed(kind, "request longer than 1 GiB"));
    }
    limits.check_range(offset, len)?;
    Ok((offset, len))
}

pub(super) fn encode_request(offset: u64, len: u64, dst: &mut BytesMut) {
    Header::put(Kind::Request, 0, REQUEST_LEN, dst);
    dst.put_u64_le(offset);
    dst.put_u64_le(len);
}

/// A data payload before its bytes: offset u64.
const DATA_OFFSET_LEN: usize = 8;

/// Parses a data frame: `(offset, bytes)`, the bytes borrowed from the payload.
pub(super) fn parse_data<'a>(p: &mut &'a [u8], limits: &Limits) -> Result<(u64, &'a [u8])> {
    let kind = Kind::Data;
    need(kind, p, DATA_OFFSET_LEN)?;
    let offset = p.get_u64_le();
    let len = p.len() as u64;
    if len == 0 {
        return Err(malformed(kind, "empty data"));
    }
    // Data is whole pages; the last page of the image is sent zero-padded.
    limits.check_range(offset, len)?;
    Ok((offset, std::mem::take(p)))
}

pub(super) fn encode_data(offset: u64, bytes: &[u8], dst: &mut BytesMut) {
    encode_data_header(offset, bytes.len(), dst);
    dst.put_slice(bytes);
}

/// Encodes the header and offset of a data frame whose `len` bytes follow separately, so a
/// sender can write the page contents straight from the image (`writev`), without copying.
pub fn encode_data_header(offset: u64, len: usize, dst: &mut BytesMut) {
    Header::put(Kind::Data, 0, DATA_OFFSET_LEN + len, dst);
    dst.put_u64_le(offset);
}

/// A zero frame's payload: offset u64, length u64.
const ZERO_LEN: usize = 8 + 8;

/// Parses a zero frame: `(offset, len)`, whole pages inside the image.
pub(super) fn parse_zero(p: &mut &[u8], limits: &Limits) -> Result<(u64, u64)> {
    need(Kind::Zero, p, ZERO_LEN)?;
    let offset = p.get_u64_le();
    let len = p.get_u64_le();
    limits.check_range(offset, len)?;
    Ok((offset, len))
}

pub(super) fn encode_zero(offset: u64, len: u64, dst: &mut BytesMut) {
    Header::put(Kind::Zero, 0, ZERO_LEN, dst);
    dst.put_u64_le(offset);
    dst.put_u64_le(len);
}

/// The end frame has an empty payload (anything in it is refused as trailing bytes).
pub(super) fn encode_end(dst: &mut BytesMut) {
    Header::put(Kind::End, 0, 0, dst);
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::tests::{limits, roundtrip, PAGE};
    use super::super::{decode, Frame, ProtoError};
    use super::*;
    use crate::convert::usize_from;

    #[test]
    fn request_data_zero_and_end_round_trip() {
        let page = vec![0xA5u8; usize_from(PAGE)];
        roundtrip(Frame::Request {
            offset: PAGE,
            len: PAGE,
        });
        roundtrip(Frame::Data {
            offset: 3 * PAGE,
            bytes: &page,
        });
        roundtrip(Frame::Zero {
            offset: 0,
            len: 64 * PAGE,
        });
        roundtrip(Frame::End);
    }

    #[test]
    fn rejects_out_of_range_and_misaligned() {
        // (offset, len, limits, misaligned rather than out of range)
        let cases = [
            (64 * PAGE, PAGE, limits(), false),
            (u64::MAX - 4095, PAGE, limits(), false),
            (1, PAGE, limits(), true),
            // Before the image size is known no range is valid.
            (0, PAGE, Limits::handshake(PAGE), false),
        ];
        for (offset, len, limits, misaligned) in cases {
            let mut buf = BytesMut::new();
            Frame::Request { offset, len }.encode(&mut buf);
            match decode(&buf, &limits) {
                Err(ProtoError::Misaligned { .. }) if misaligned => {}
                Err(ProtoError::OutOfRange { .. }) if !misaligned => {}
                other => panic!("{offset:#x}+{len:#x}: {other:?}"),
            }
        }
    }

    proptest! {
        #[test]
        fn data_frames_round_trip(page in 0u64..64, pages in 1u64..4, fill in any::<u8>()) {
            let pages = pages.min(64 - page);
            let bytes = vec![fill; usize_from(pages * PAGE)];
            let frame = Frame::Data { offset: page * PAGE, bytes: &bytes };
            let mut buf = BytesMut::new();
            frame.encode(&mut buf);
            let (decoded, used) = decode(&buf, &limits()).expect("valid").expect("complete");
            prop_assert_eq!(used, buf.len());
            prop_assert_eq!(decoded, frame);
        }

        #[test]
        fn requests_round_trip_or_are_refused(offset in any::<u64>(), len in any::<u64>()) {
            let mut buf = BytesMut::new();
            Frame::Request { offset, len }.encode(&mut buf);
            match decode(&buf, &limits()) {
                Ok(Some((Frame::Request { offset: o, len: l }, _))) => {
                    prop_assert_eq!((o, l), (offset, len));
                    prop_assert!(offset % PAGE == 0 && len % PAGE == 0 && len > 0);
                    prop_assert!(offset + len <= 64 * PAGE);
                }
                Ok(other) => prop_assert!(false, "unexpected {:?}", other),
                Err(_) => prop_assert!(
                    offset % PAGE != 0 || len % PAGE != 0 || len == 0
                        || offset.checked_add(len).is_none_or(|e| e > 64 * PAGE)
                        || len > MAX_REQUEST
                ),
            }
        }
    }
}
