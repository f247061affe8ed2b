//! The error frame: a fatal error, sent either way just before the sender closes the
//! connection. (Errors of decoding are [`ProtoError`](super::ProtoError).)

use bytes::{Buf, BufMut, BytesMut};

use super::header::Header;
use super::{malformed, need, Kind, ProtoError, Result, MAX_TEXT};

wire_enum! {
    /// Error frame codes.
    pub enum ErrorCode: u16 {
        /// A frame could not be decoded.
        Protocol = 1, "protocol";
        /// A frame other than hello arrived first.
        HandshakeRequired = 2, "handshake required";
        /// A background hello named a session the server does not know.
        UnknownSession = 3, "unknown session";
        /// The server has as many sessions as it allows.
        TooManySessions = 4, "too many sessions";
        /// The token did not match.
        Unauthorized = 5, "unauthorized";
        /// The client resumed against a different image.
        ImageMismatch = 6, "image mismatch";
        /// The peer shut down.
        Shutdown = 7, "shutdown";
        /// Anything else.
        Internal = 8, "internal";
        /// The server cannot read its image any more (a file that shrank or fails to read).
        SourceFailed = 9, "source failed";
    }
}

impl ErrorCode {
    /// Decodes a code; unknown codes map to `Internal`.
    pub fn from_u16(code: u16) -> ErrorCode {
        ErrorCode::from_wire(code).unwrap_or(ErrorCode::Internal)
    }
}

/// An error payload before its message: code u16.
const CODE_LEN: usize = 2;

/// Parses an error frame: `(code, message)`, the message UTF-8 of at most [`MAX_TEXT`] bytes.
pub(super) fn parse_error<'a>(p: &mut &'a [u8]) -> Result<(ErrorCode, &'a str)> {
    let kind = Kind::Error;
    need(kind, p, CODE_LEN)?;
    let code = ErrorCode::from_u16(p.get_u16_le());
    if p.len() > MAX_TEXT {
        return Err(malformed(kind, "message too long"));
    }
    let message = std::str::from_utf8(p).map_err(|_| ProtoError::BadText)?;
    *p = &[];
    Ok((code, message))
}

/// Encodes an error frame; a message longer than [`MAX_TEXT`] is cut at a character
/// boundary.
pub(super) fn encode_error(code: ErrorCode, message: &str, dst: &mut BytesMut) {
    let message = truncate_utf8(message, MAX_TEXT);
    Header::put(Kind::Error, 0, CODE_LEN + message.len(), dst);
    dst.put_u16_le(code as u16);
    dst.put_slice(message.as_bytes());
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::super::tests::{limits, roundtrip};
    use super::super::{decode, Frame};
    use super::*;

    #[test]
    fn error_frames_round_trip() {
        roundtrip(Frame::Error {
            code: ErrorCode::UnknownSession,
            message: "no such session",
        });
    }

    #[test]
    fn unknown_codes_are_internal() {
        assert_eq!(ErrorCode::from_u16(9), ErrorCode::SourceFailed);
        assert_eq!(ErrorCode::from_u16(0), ErrorCode::Internal);
        assert_eq!(ErrorCode::from_u16(10), ErrorCode::Internal);
    }

    #[test]
    fn long_messages_are_cut_at_a_character() {
        let long = "é".repeat(MAX_TEXT);
        let mut buf = BytesMut::new();
        encode_error(ErrorCode::Internal, &long, &mut buf);
        let Some((Frame::Error { message, .. }, _)) = decode(&buf, &limits()).expect("valid")
        else {
            panic!("not an error frame");
        };
        assert_eq!(message.len(), MAX_TEXT);
        assert!(message.chars().all(|c| c == 'é'));
    }
}
