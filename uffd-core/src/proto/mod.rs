//! The wire protocol between page-server and fault-client: frames, their encoding and a
//! strict decoder. The format is specified in `docs/protocol.md`.
//!
//! Every frame is an 8-byte header followed by a payload:
//!
//! ```text
//! kind: u8 | flags: u8 | reserved: u16 (zero) | payload length: u32 (little endian)
//! ```
//!
//! Decoding is two steps, as in mini-redis: [`Header::parse`] checks the kind and bounds the
//! length before any payload is read, then [`Frame::parse`] checks every field of the payload
//! against [`Limits`] (image size, page alignment) and borrows the payload's bytes, so a data
//! frame's page contents are never copied by the decoder. [`decode`] does both on a buffer.
//!
//! # Layout
//! One file per frame family; in each, a frame's payload length, its parse and its encode
//! stand side by side.
//! - this file: the constants, [`Kind`] (one table: wire byte and name), [`ProtoError`] and
//!   [`Limits`], which every family uses;
//! - `header.rs`: [`Header`], the 8 bytes before every payload;
//! - `handshake.rs`: hello, welcome and synthetic; [`Role`] and the hello and welcome flags;
//! - `pages.rs`: request, data, zero and end;
//! - `resume.rs`: checksums and have, the per-page tables exchanged around a (re)connection;
//! - `error.rs`: the error frame and [`ErrorCode`];
//! - `frame.rs`: [`Frame`], dispatching by kind to the families, and [`decode`].
//!
//! Each file uses only this one and the files listed before it.

use bytes::Buf;

/// Declares a wire enum from one table: each variant with its wire number and its name, so
/// that decoding a number and naming a variant cannot disagree with the declaration.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $enum:ident: $repr:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal, $name:literal; )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr($repr)]
        pub enum $enum {
            $( $(#[$vmeta])* $variant = $value, )+
        }

        impl $enum {
            /// The variant whose wire number is `value`; None for a number this build does
            /// not know.
            pub fn from_wire(value: $repr) -> Option<$enum> {
                match value {
                    $( $value => Some($enum::$variant), )+
                    _ => None,
                }
            }

            /// Its name, as errors and logs print it.
            pub fn name(self) -> &'static str {
                match self {
                    $( $enum::$variant => $name, )+
                }
            }
        }
    };
}

mod error;
mod frame;
mod handshake;
mod header;
mod pages;
mod resume;

pub use error::ErrorCode;
pub use frame::{decode, Frame};
pub use handshake::{
    Hello, Role, Welcome, HELLO_RESUME, HELLO_SYNTHETIC_OK, HELLO_WANT_CHECKSUMS,
    WELCOME_CHECKSUMS_FOLLOW, WELCOME_SYNTHETIC_FOLLOWS,
};
pub use header::Header;
pub use pages::encode_data_header;
pub use resume::encode_u64s;

/// First four bytes of a hello and a welcome payload: "UFDL".
pub const MAGIC: u32 = u32::from_be_bytes(*b"UFDL");
/// Protocol version spoken by this build.
pub const VERSION: u16 = 1;
/// Size of the frame header.
pub const HEADER_LEN: usize = 8;
/// Largest data chunk: one 2 MiB huge page (1 GiB huge pages always travel in chunks).
pub const MAX_CHUNK: usize = 2 << 20;
/// Largest payload: a maximal data chunk and its offset.
pub const MAX_PAYLOAD: usize = MAX_CHUNK + 8;
/// Largest range one request may ask for.
pub const MAX_REQUEST: u64 = 1 << 30;
/// Largest image a session may serve: 64 TiB (x86_64 user space is 128 TiB).
pub const MAX_IMAGE: u64 = 1 << 46;
/// Longest error message and token.
pub const MAX_TEXT: usize = 1024;

/// Why a frame was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// The header names a kind this version does not know.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// The header's reserved bits are not zero.
    #[error("reserved header bits set: {0:#x}")]
    Reserved(u16),
    /// The payload length exceeds the limit.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    Oversized {
        /// Announced payload length.
        len: u64,
        /// Limit.
        max: u64,
    },
    /// A hello or welcome does not start with [`MAGIC`].
    #[error("bad magic {0:#010x}")]
    BadMagic(u32),
    /// The peer speaks another protocol version.
    #[error("unsupported protocol version {0} (this build speaks {VERSION})")]
    UnsupportedVersion(u16),
    /// The payload is shorter or longer than its kind requires.
    #[error("malformed {kind} frame: {why}")]
    Malformed {
        /// Frame kind.
        kind: &'static str,
        /// What is wrong.
        why: &'static str,
    },
    /// An offset/length pair falls outside the image.
    #[error("range {offset:#x}+{len:#x} outside the image of {size:#x} bytes")]
    OutOfRange {
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
        /// Image size (page-rounded).
        size: u64,
    },
    /// An offset or length is not a multiple of the page size.
    #[error("range {offset:#x}+{len:#x} is not aligned to {page} bytes")]
    Misaligned {
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
        /// Page size.
        page: u64,
    },
    /// A text field is not UTF-8.
    #[error("text field is not UTF-8")]
    BadText,
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, ProtoError>;

wire_enum! {
    /// Frame kinds: the first byte of every header.
    pub enum Kind: u8 {
        /// Client → server: first frame on every connection.
        Hello = 1, "hello";
        /// Server → client: answer to a hello.
        Welcome = 2, "welcome";
        /// Server → client: a run of per-page checksums.
        Checksums = 3, "checksums";
        /// Client → server: send this range now (urgent connection).
        Request = 4, "request";
        /// Server → client: page contents.
        Data = 5, "data";
        /// Server → client: a range of zero pages (never sent as data).
        Zero = 6, "zero";
        /// Server → client: the background stream has sent everything.
        End = 7, "end";
        /// Either way: a fatal error; the sender closes the connection.
        Error = 8, "error";
        /// Client → server: pages the client already has (a received-bitmap slice), for
        /// resuming.
        Have = 9, "have";
        /// Server → client: the parameters of a synthetic image, in place of its checksums.
        Synthetic = 12, "synthetic";
    }
}

/// What the decoder checks offsets against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Image size rounded up to whole pages; 0 before the handshake (every range is refused).
    pub image_size: u64,
    /// Page size: offsets and lengths are multiples of it.
    pub page_size: u64,
    /// Largest payload accepted.
    pub max_payload: usize,
}

impl Limits {
    /// Limits for an image of `image_size` bytes (rounded up to pages).
    pub fn new(image_size: u64, page_size: u64) -> Limits {
        Limits {
            // Saturating: a hostile welcome may announce any size (it is refused later).
            image_size: image_size.div_ceil(page_size).saturating_mul(page_size),
            page_size,
            max_payload: MAX_PAYLOAD,
        }
    }

    /// Limits before the image size is known: no range is valid.
    pub fn handshake(page_size: u64) -> Limits {
        Limits::new(0, page_size)
    }

    /// Number of pages in the image.
    pub fn pages(&self) -> u64 {
        self.image_size / self.page_size
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        if !offset.is_multiple_of(self.page_size) || !len.is_multiple_of(self.page_size) || len == 0
        {
            return Err(ProtoError::Misaligned {
                offset,
                len,
                page: self.page_size,
            });
        }
        match offset.checked_add(len) {
            Some(end) if end <= self.image_size => Ok(()),
            _ => Err(ProtoError::OutOfRange {
                offset,
                len,
                size: self.image_size,
            }),
        }
    }
}

fn malformed(kind: Kind, why: &'static str) -> ProtoError {
    ProtoError::Malformed {
        kind: kind.name(),
        why,
    }
}

/// Checks that at least `n` bytes of a `kind` payload remain.
fn need(kind: Kind, p: &[u8], n: usize) -> Result<()> {
    if p.remaining() < n {
        Err(malformed(kind, "payload too short"))
    } else {
        Ok(())
    }
}

/// Checks that a `kind` payload was read to its end.
fn done(kind: Kind, p: &[u8]) -> Result<()> {
    if p.has_remaining() {
        Err(malformed(kind, "trailing bytes"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! What the families' tests share.

    use bytes::BytesMut;

    use super::*;

    pub(super) const PAGE: u64 = 4096;

    /// An image of 64 pages.
    pub(super) fn limits() -> Limits {
        Limits::new(64 * PAGE, PAGE)
    }

    /// Encodes `frame`, decodes it back whole, and checks that every strict prefix is
    /// incomplete, never an error.
    pub(super) fn roundtrip(frame: Frame<'_>) {
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        let (decoded, used) = decode(&buf, &limits()).expect("valid").expect("complete");
        assert_eq!(used, buf.len());
        assert_eq!(decoded, frame);
        for cut in 0..buf.len() {
            assert_eq!(decode(&buf[..cut], &limits()), Ok(None), "prefix {cut}");
        }
    }

    #[test]
    fn kinds_decode_from_their_byte_and_name_themselves() {
        assert_eq!(Kind::from_wire(4), Some(Kind::Request));
        assert_eq!(Kind::Request as u8, 4);
        assert_eq!(Kind::Synthetic.name(), "synthetic");
        for unknown in [0, 10, 11, 13, 255] {
            assert_eq!(Kind::from_wire(unknown), None, "{unknown}");
        }
    }
}
