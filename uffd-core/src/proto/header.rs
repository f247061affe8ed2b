//! The frame header: the 8 bytes before every payload.
//!
//! ```text
//! kind: u8 | flags: u8 | reserved: u16 (zero) | payload length: u32 (little endian)
//! ```

use bytes::{Buf, BufMut, BytesMut};

use super::{Kind, ProtoError, Result, HEADER_LEN};

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Kind of the payload.
    pub kind: Kind,
    /// Per-kind flags.
    pub flags: u8,
    /// Payload length.
    pub len: u32,
}

impl Header {
    /// Checks a header: known kind, zero reserved bits, payload no longer than `max_payload`.
    pub fn parse(bytes: [u8; HEADER_LEN], max_payload: usize) -> Result<Header> {
        let mut b = &bytes[..];
        let byte = b.get_u8();
        let kind = Kind::from_wire(byte).ok_or(ProtoError::UnknownKind(byte))?;
        let flags = b.get_u8();
        let reserved = b.get_u16_le();
        let len = b.get_u32_le();
        if reserved != 0 {
            return Err(ProtoError::Reserved(reserved));
        }
        if len as usize > max_payload {
            return Err(ProtoError::Oversized {
                len: len.into(),
                max: max_payload as u64,
            });
        }
        Ok(Header { kind, flags, len })
    }

    /// Appends the header of a `kind` frame whose payload is `len` bytes.
    pub(super) fn put(kind: Kind, flags: u8, len: usize, dst: &mut BytesMut) {
        dst.put_u8(kind as u8);
        dst.put_u8(flags);
        dst.put_u16_le(0);
        // Encoders only build payloads below MAX_PAYLOAD.
        dst.put_u32_le(u32::try_from(len).unwrap_or(u32::MAX));
    }
}

#[cfg(test)]
mod tests {
    use bytes::BufMut;

    use super::super::tests::limits;
    use super::super::{decode, ProtoError};
    use super::*;

    #[test]
    fn rejects_bad_headers() {
        assert_eq!(
            decode(&[99, 0, 0, 0, 0, 0, 0, 0], &limits()),
            Err(ProtoError::UnknownKind(99))
        );
        assert_eq!(
            decode(&[7, 0, 1, 0, 0, 0, 0, 0], &limits()),
            Err(ProtoError::Reserved(1))
        );
        let huge = [5, 0, 0, 0, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            decode(&huge, &limits()),
            Err(ProtoError::Oversized { .. })
        ));
    }

    #[test]
    fn rejects_trailing_bytes() {
        let mut buf = BytesMut::new();
        Header::put(Kind::End, 0, 1, &mut buf);
        buf.put_u8(0);
        assert!(matches!(
            decode(&buf, &limits()),
            Err(ProtoError::Malformed { .. })
        ));
    }
}
