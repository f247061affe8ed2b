//! [`Frame`]: the one form between bytes and the pager or server. Parsing and encoding
//! dispatch by kind to the family files, which hold each frame's layout.

use bytes::BytesMut;

use super::error::{self, ErrorCode};
use super::handshake::{self, Hello, Welcome};
use super::header::Header;
use super::{done, pages, resume, Kind, Limits, Result, HEADER_LEN};

/// A frame, borrowing its variable-length fields from the buffer it was decoded from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Frame<'a> {
    /// See [`Hello`].
    Hello(Hello<'a>),
    /// See [`Welcome`].
    Welcome(Welcome),
    /// Checksums (xxh3-64 of each page) of pages `first_page..`, 8 little-endian bytes each.
    Checksums {
        /// Index of the first page.
        first_page: u64,
        /// Raw checksum bytes; see [`Frame::checksums`].
        raw: &'a [u8],
    },
    /// Send `offset..offset+len` now.
    Request {
        /// Byte offset in the image.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
    /// Page contents at `offset`.
    Data {
        /// Byte offset in the image.
        offset: u64,
        /// The bytes.
        bytes: &'a [u8],
    },
    /// `offset..offset+len` is all zero.
    Zero {
        /// Byte offset.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// Background stream complete.
    End,
    /// Fatal error.
    Error {
        /// What went wrong.
        code: ErrorCode,
        /// Human-readable detail.
        message: &'a str,
    },
    /// The client has the pages whose bits are set, starting at bitmap word `first_word`.
    Have {
        /// Index of the first 64-bit word.
        first_word: u64,
        /// Raw little-endian words; see [`Frame::have_words`].
        raw: &'a [u8],
    },
    /// The image is synthetic ([`crate::Synthetic`] with the welcome's size and page size).
    Synthetic {
        /// Its seed.
        seed: u64,
        /// Its fraction of zero pages, 0..=1.
        zero_fraction: f64,
    },
}

impl<'a> Frame<'a> {
    /// The frame's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Frame::Hello(_) => Kind::Hello,
            Frame::Welcome(_) => Kind::Welcome,
            Frame::Checksums { .. } => Kind::Checksums,
            Frame::Request { .. } => Kind::Request,
            Frame::Data { .. } => Kind::Data,
            Frame::Zero { .. } => Kind::Zero,
            Frame::End => Kind::End,
            Frame::Error { .. } => Kind::Error,
            Frame::Have { .. } => Kind::Have,
            Frame::Synthetic { .. } => Kind::Synthetic,
        }
    }

    /// Parses a payload whose header was checked by [`Header::parse`].
    pub fn parse(header: Header, payload: &'a [u8], limits: &Limits) -> Result<Frame<'a>> {
        let kind = header.kind;
        let mut p = payload;
        let frame = match kind {
            Kind::Hello => Frame::Hello(Hello::parse(&mut p, limits)?),
            Kind::Welcome => Frame::Welcome(Welcome::parse(&mut p)?),
            Kind::Checksums => {
                let (first_page, raw) = resume::parse_checksums(&mut p, limits)?;
                Frame::Checksums { first_page, raw }
            }
            Kind::Request => {
                let (offset, len) = pages::parse_request(&mut p, limits)?;
                Frame::Request { offset, len }
            }
            Kind::Data => {
                let (offset, bytes) = pages::parse_data(&mut p, limits)?;
                Frame::Data { offset, bytes }
            }
            Kind::Zero => {
                let (offset, len) = pages::parse_zero(&mut p, limits)?;
                Frame::Zero { offset, len }
            }
            Kind::End => Frame::End,
            Kind::Error => {
                let (code, message) = error::parse_error(&mut p)?;
                Frame::Error { code, message }
            }
            Kind::Have => {
                let (first_word, raw) = resume::parse_have(&mut p, limits)?;
                Frame::Have { first_word, raw }
            }
            Kind::Synthetic => {
                let (seed, zero_fraction) = handshake::parse_synthetic(&mut p)?;
                Frame::Synthetic {
                    seed,
                    zero_fraction,
                }
            }
        };
        done(kind, p)?;
        Ok(frame)
    }

    /// The checksums of a `Checksums` frame (empty for other kinds).
    pub fn checksums(&self) -> impl Iterator<Item = u64> + 'a {
        let raw: &'a [u8] = match *self {
            Frame::Checksums { raw, .. } => raw,
            _ => &[],
        };
        resume::u64s(raw)
    }

    /// The words of a `Have` frame (empty for other kinds).
    pub fn have_words(&self) -> impl Iterator<Item = u64> + 'a {
        let raw: &'a [u8] = match *self {
            Frame::Have { raw, .. } => raw,
            _ => &[],
        };
        resume::u64s(raw)
    }

    /// Appends the encoded frame (header and payload) to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        match *self {
            Frame::Hello(h) => h.encode(dst),
            Frame::Welcome(w) => w.encode(dst),
            Frame::Checksums { first_page, raw } => resume::encode_checksums(first_page, raw, dst),
            Frame::Request { offset, len } => pages::encode_request(offset, len, dst),
            Frame::Data { offset, bytes } => pages::encode_data(offset, bytes, dst),
            Frame::Zero { offset, len } => pages::encode_zero(offset, len, dst),
            Frame::End => pages::encode_end(dst),
            Frame::Error { code, message } => error::encode_error(code, message, dst),
            Frame::Have { first_word, raw } => resume::encode_have(first_word, raw, dst),
            Frame::Synthetic {
                seed,
                zero_fraction,
            } => handshake::encode_synthetic(seed, zero_fraction, dst),
        }
    }
}

/// Decodes one frame from the start of `buf`: `Ok(None)` if more bytes are needed, else the
/// frame and the number of bytes it used.
pub fn decode<'a>(buf: &'a [u8], limits: &Limits) -> Result<Option<(Frame<'a>, usize)>> {
    let Some(head) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let header = Header::parse(*head, limits.max_payload)?;
    let end = HEADER_LEN + header.len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    let frame = Frame::parse(header, &buf[HEADER_LEN..end], limits)?;
    Ok(Some((frame, end)))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::tests::limits;
    use super::*;

    proptest! {
        #[test]
        fn decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes, &limits());
        }
    }
}
