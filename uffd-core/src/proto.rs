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

use bytes::{Buf, BufMut, BytesMut};

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

/// Hello flag: send the per-page checksums after the welcome.
pub const HELLO_WANT_CHECKSUMS: u8 = 1;
/// Hello flag (urgent connection, non-zero session): resume that session. Have frames
/// covering the whole received bitmap follow the hello, before the server answers.
pub const HELLO_RESUME: u8 = 2;
/// Welcome flag: checksum frames follow this welcome.
pub const WELCOME_CHECKSUMS_FOLLOW: u8 = 1;
/// Hello flag (with [`HELLO_WANT_CHECKSUMS`]): the client can regenerate a synthetic image
/// itself ([`crate::synthetic`]), so for one the server may describe it instead of sending
/// a checksum per page.
pub const HELLO_SYNTHETIC_OK: u8 = 4;
/// Welcome flag: a synthetic frame (the image's parameters) follows this welcome, in place of
/// the checksum frames.
pub const WELCOME_SYNTHETIC_FOLLOWS: u8 = 2;

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

/// Frame kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Client → server: first frame on every connection.
    Hello = 1,
    /// Server → client: answer to a hello.
    Welcome = 2,
    /// Server → client: a run of per-page checksums.
    Checksums = 3,
    /// Client → server: send this range now (urgent connection).
    Request = 4,
    /// Server → client: page contents.
    Data = 5,
    /// Server → client: a range of zero pages (never sent as data).
    Zero = 6,
    /// Server → client: the background stream has sent everything.
    End = 7,
    /// Either way: a fatal error; the sender closes the connection.
    Error = 8,
    /// Client → server: pages the client already has (a received-bitmap slice), for resuming.
    Have = 9,
    /// Server → client: the parameters of a synthetic image, in place of its checksums.
    Synthetic = 12,
}

impl Kind {
    fn from_u8(byte: u8) -> Result<Kind> {
        Ok(match byte {
            1 => Kind::Hello,
            2 => Kind::Welcome,
            3 => Kind::Checksums,
            4 => Kind::Request,
            5 => Kind::Data,
            6 => Kind::Zero,
            7 => Kind::End,
            8 => Kind::Error,
            9 => Kind::Have,
            12 => Kind::Synthetic,
            other => return Err(ProtoError::UnknownKind(other)),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Hello => "hello",
            Kind::Welcome => "welcome",
            Kind::Checksums => "checksums",
            Kind::Request => "request",
            Kind::Data => "data",
            Kind::Zero => "zero",
            Kind::End => "end",
            Kind::Error => "error",
            Kind::Have => "have",
            Kind::Synthetic => "synthetic",
        }
    }
}

/// Which connection of a session a hello opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// Page requests, answered at once.
    Urgent = 1,
    /// The stream of every page the client does not have yet.
    Background = 2,
}

/// Error frame codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// A frame could not be decoded.
    Protocol = 1,
    /// A frame other than hello arrived first.
    HandshakeRequired = 2,
    /// A background hello named a session the server does not know.
    UnknownSession = 3,
    /// The server has as many sessions as it allows.
    TooManySessions = 4,
    /// The token did not match.
    Unauthorized = 5,
    /// The client resumed against a different image.
    ImageMismatch = 6,
    /// The peer shut down.
    Shutdown = 7,
    /// Anything else.
    Internal = 8,
    /// The server cannot read its image any more (a file that shrank or fails to read).
    SourceFailed = 9,
}

impl ErrorCode {
    /// Decodes a code; unknown codes map to `Internal`.
    pub fn from_u16(code: u16) -> ErrorCode {
        match code {
            1 => ErrorCode::Protocol,
            2 => ErrorCode::HandshakeRequired,
            3 => ErrorCode::UnknownSession,
            4 => ErrorCode::TooManySessions,
            5 => ErrorCode::Unauthorized,
            6 => ErrorCode::ImageMismatch,
            7 => ErrorCode::Shutdown,
            9 => ErrorCode::SourceFailed,
            _ => ErrorCode::Internal,
        }
    }
}

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
        let kind = Kind::from_u8(b.get_u8())?;
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

    fn put(kind: Kind, flags: u8, len: usize, dst: &mut BytesMut) {
        dst.put_u8(kind as u8);
        dst.put_u8(flags);
        dst.put_u16_le(0);
        // Encoders only build payloads below MAX_PAYLOAD.
        dst.put_u32_le(u32::try_from(len).unwrap_or(u32::MAX));
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

/// Client → server, first frame of every connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello<'a> {
    /// Protocol version.
    pub version: u16,
    /// Which connection this is.
    pub role: Role,
    /// `HELLO_*` flags.
    pub flags: u8,
    /// 0 to open a new session (urgent only); else the session to join or resume.
    pub session: u64,
    /// The client's placement unit in bytes (page size, or the huge page size): the server
    /// sends background pages in whole units, in chunks.
    pub unit: u64,
    /// The image id the client expects (0: any), so a resumed session cannot mix images.
    pub image_id: u64,
    /// Shared secret, empty when none.
    pub token: &'a [u8],
}

/// Server → client answer to a hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Welcome {
    /// Protocol version.
    pub version: u16,
    /// `WELCOME_*` flags.
    pub flags: u8,
    /// The session this connection belongs to.
    pub session: u64,
    /// True image length in bytes (the last page may be partial: it is served zero-padded).
    pub image_size: u64,
    /// Page size of the server.
    pub page_size: u32,
    /// Identity of the image content (a hash of its checksums and size).
    pub image_id: u64,
}

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

fn malformed(kind: Kind, why: &'static str) -> ProtoError {
    ProtoError::Malformed {
        kind: kind.name(),
        why,
    }
}

fn need(kind: Kind, p: &[u8], n: usize) -> Result<()> {
    if p.remaining() < n {
        Err(malformed(kind, "payload too short"))
    } else {
        Ok(())
    }
}

fn done(kind: Kind, p: &[u8]) -> Result<()> {
    if p.has_remaining() {
        Err(malformed(kind, "trailing bytes"))
    } else {
        Ok(())
    }
}

fn check_magic_version(p: &mut &[u8]) -> Result<u16> {
    let magic = p.get_u32_le();
    if magic != MAGIC {
        return Err(ProtoError::BadMagic(magic));
    }
    let version = p.get_u16_le();
    if version != VERSION {
        return Err(ProtoError::UnsupportedVersion(version));
    }
    Ok(version)
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
            Kind::Hello => {
                need(kind, p, 4 + 2 + 1 + 1 + 8 + 8 + 8 + 2)?;
                let version = check_magic_version(&mut p)?;
                let role = match p.get_u8() {
                    1 => Role::Urgent,
                    2 => Role::Background,
                    _ => return Err(malformed(kind, "unknown role")),
                };
                let flags = p.get_u8();
                let session = p.get_u64_le();
                let unit = p.get_u64_le();
                let image_id = p.get_u64_le();
                let token_len = usize::from(p.get_u16_le());
                if token_len > MAX_TEXT {
                    return Err(malformed(kind, "token too long"));
                }
                need(kind, p, token_len)?;
                let token = &p[..token_len];
                p.advance(token_len);
                if unit < limits.page_size || !unit.is_power_of_two() || unit > (1 << 30) {
                    return Err(malformed(kind, "unit is not a power of two in page..1GiB"));
                }
                Frame::Hello(Hello {
                    version,
                    role,
                    flags,
                    session,
                    unit,
                    image_id,
                    token,
                })
            }
            Kind::Welcome => {
                need(kind, p, 4 + 2 + 1 + 8 + 8 + 4 + 8)?;
                let version = check_magic_version(&mut p)?;
                let flags = p.get_u8();
                let session = p.get_u64_le();
                let image_size = p.get_u64_le();
                let page_size = p.get_u32_le();
                let image_id = p.get_u64_le();
                if !page_size.is_power_of_two() || page_size < 512 {
                    return Err(malformed(kind, "page size is not a power of two >= 512"));
                }
                if image_size == 0 || image_size > MAX_IMAGE {
                    return Err(malformed(kind, "image size is 0 or above 64 TiB"));
                }
                Frame::Welcome(Welcome {
                    version,
                    flags,
                    session,
                    image_size,
                    page_size,
                    image_id,
                })
            }
            Kind::Checksums => {
                need(kind, p, 8)?;
                let first_page = p.get_u64_le();
                if !p.len().is_multiple_of(8) || p.is_empty() {
                    return Err(malformed(kind, "checksums are not whole u64s"));
                }
                let count = (p.len() / 8) as u64;
                match first_page.checked_add(count) {
                    Some(end) if end <= limits.pages() => {}
                    _ => {
                        return Err(ProtoError::OutOfRange {
                            offset: first_page.saturating_mul(limits.page_size),
                            len: count.saturating_mul(limits.page_size),
                            size: limits.image_size,
                        })
                    }
                }
                let raw = p;
                p = &[];
                Frame::Checksums { first_page, raw }
            }
            Kind::Request => {
                need(kind, p, 16)?;
                let offset = p.get_u64_le();
                let len = p.get_u64_le();
                if len > MAX_REQUEST {
                    return Err(malformed(kind, "request longer than 1 GiB"));
                }
                limits.check_range(offset, len)?;
                Frame::Request { offset, len }
            }
            Kind::Data => {
                need(kind, p, 8)?;
                let offset = p.get_u64_le();
                let len = p.len() as u64;
                if len == 0 {
                    return Err(malformed(kind, "empty data"));
                }
                // Data is whole pages; the last page of the image is sent zero-padded.
                limits.check_range(offset, len)?;
                let bytes = p;
                p = &[];
                Frame::Data { offset, bytes }
            }
            Kind::Zero => {
                need(kind, p, 16)?;
                let offset = p.get_u64_le();
                let len = p.get_u64_le();
                limits.check_range(offset, len)?;
                Frame::Zero { offset, len }
            }
            Kind::End => Frame::End,
            Kind::Error => {
                need(kind, p, 2)?;
                let code = ErrorCode::from_u16(p.get_u16_le());
                if p.len() > MAX_TEXT {
                    return Err(malformed(kind, "message too long"));
                }
                let message = std::str::from_utf8(p).map_err(|_| ProtoError::BadText)?;
                p = &[];
                Frame::Error { code, message }
            }
            Kind::Have => {
                need(kind, p, 8)?;
                let first_word = p.get_u64_le();
                if !p.len().is_multiple_of(8) || p.is_empty() {
                    return Err(malformed(kind, "bitmap is not whole u64 words"));
                }
                let words = (p.len() / 8) as u64;
                match first_word.checked_add(words) {
                    Some(end) if end <= limits.pages().div_ceil(64) => {}
                    _ => {
                        return Err(ProtoError::OutOfRange {
                            offset: first_word.saturating_mul(64 * limits.page_size),
                            len: words.saturating_mul(64 * limits.page_size),
                            size: limits.image_size,
                        })
                    }
                }
                let raw = p;
                p = &[];
                Frame::Have { first_word, raw }
            }
            Kind::Synthetic => {
                need(kind, p, 16)?;
                let seed = p.get_u64_le();
                let zero_fraction = f64::from_bits(p.get_u64_le());
                if !(0.0..=1.0).contains(&zero_fraction) {
                    return Err(malformed(kind, "zero fraction outside 0..=1"));
                }
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
        raw.chunks_exact(8).map(|mut c| c.get_u64_le())
    }

    /// The words of a `Have` frame (empty for other kinds).
    pub fn have_words(&self) -> impl Iterator<Item = u64> + 'a {
        let raw: &'a [u8] = match *self {
            Frame::Have { raw, .. } => raw,
            _ => &[],
        };
        raw.chunks_exact(8).map(|mut c| c.get_u64_le())
    }

    /// Appends the encoded frame (header and payload) to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        match *self {
            Frame::Hello(h) => {
                Header::put(Kind::Hello, 0, 34 + h.token.len(), dst);
                dst.put_u32_le(MAGIC);
                dst.put_u16_le(h.version);
                dst.put_u8(h.role as u8);
                dst.put_u8(h.flags);
                dst.put_u64_le(h.session);
                dst.put_u64_le(h.unit);
                dst.put_u64_le(h.image_id);
                dst.put_u16_le(u16::try_from(h.token.len()).unwrap_or(u16::MAX));
                dst.put_slice(h.token);
            }
            Frame::Welcome(w) => {
                Header::put(Kind::Welcome, 0, 35, dst);
                dst.put_u32_le(MAGIC);
                dst.put_u16_le(w.version);
                dst.put_u8(w.flags);
                dst.put_u64_le(w.session);
                dst.put_u64_le(w.image_size);
                dst.put_u32_le(w.page_size);
                dst.put_u64_le(w.image_id);
            }
            Frame::Checksums { first_page, raw } => {
                Header::put(Kind::Checksums, 0, 8 + raw.len(), dst);
                dst.put_u64_le(first_page);
                dst.put_slice(raw);
            }
            Frame::Request { offset, len } => {
                Header::put(Kind::Request, 0, 16, dst);
                dst.put_u64_le(offset);
                dst.put_u64_le(len);
            }
            Frame::Data { offset, bytes } => {
                encode_data_header(offset, bytes.len(), dst);
                dst.put_slice(bytes);
            }
            Frame::Zero { offset, len } => {
                Header::put(Kind::Zero, 0, 16, dst);
                dst.put_u64_le(offset);
                dst.put_u64_le(len);
            }
            Frame::End => Header::put(Kind::End, 0, 0, dst),
            Frame::Error { code, message } => {
                let message = truncate_utf8(message, MAX_TEXT);
                Header::put(Kind::Error, 0, 2 + message.len(), dst);
                dst.put_u16_le(code as u16);
                dst.put_slice(message.as_bytes());
            }
            Frame::Have { first_word, raw } => {
                Header::put(Kind::Have, 0, 8 + raw.len(), dst);
                dst.put_u64_le(first_word);
                dst.put_slice(raw);
            }
            Frame::Synthetic {
                seed,
                zero_fraction,
            } => {
                Header::put(Kind::Synthetic, 0, 16, dst);
                dst.put_u64_le(seed);
                dst.put_u64_le(zero_fraction.to_bits());
            }
        }
    }
}

/// Encodes the header and offset of a data frame whose `len` bytes follow separately, so a
/// sender can write the page contents straight from the image (`writev`), without copying.
pub fn encode_data_header(offset: u64, len: usize, dst: &mut BytesMut) {
    Header::put(Kind::Data, 0, 8 + len, dst);
    dst.put_u64_le(offset);
}

/// Encodes u64s as the little-endian bytes of a checksums or have frame.
pub fn encode_u64s(values: impl IntoIterator<Item = u64>) -> BytesMut {
    let mut out = BytesMut::new();
    for v in values {
        out.put_u64_le(v);
    }
    out
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
    use super::*;
    use proptest::prelude::*;

    const PAGE: u64 = 4096;

    fn limits() -> Limits {
        Limits::new(64 * PAGE, PAGE)
    }

    fn roundtrip(frame: Frame<'_>) {
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        let (decoded, used) = decode(&buf, &limits()).expect("valid").expect("complete");
        assert_eq!(used, buf.len());
        assert_eq!(decoded, frame);
        // Every strict prefix is incomplete, never an error.
        for cut in 0..buf.len() {
            assert_eq!(decode(&buf[..cut], &limits()), Ok(None), "prefix {cut}");
        }
    }

    #[test]
    fn every_kind_round_trips() {
        let page = vec![0xA5u8; PAGE as usize];
        let sums = encode_u64s([1, 2, 3]);
        let words = encode_u64s([u64::MAX]);
        roundtrip(Frame::Hello(Hello {
            version: VERSION,
            role: Role::Background,
            flags: HELLO_WANT_CHECKSUMS,
            session: 42,
            unit: 2 << 20,
            image_id: 7,
            token: b"secret",
        }));
        roundtrip(Frame::Welcome(Welcome {
            version: VERSION,
            flags: WELCOME_CHECKSUMS_FOLLOW,
            session: 42,
            image_size: 12345,
            page_size: 4096,
            image_id: 99,
        }));
        roundtrip(Frame::Checksums {
            first_page: 5,
            raw: &sums,
        });
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
        roundtrip(Frame::Error {
            code: ErrorCode::UnknownSession,
            message: "no such session",
        });
        roundtrip(Frame::Have {
            first_word: 0,
            raw: &words,
        });
        roundtrip(Frame::Synthetic {
            seed: 42,
            zero_fraction: 0.25,
        });
    }

    #[test]
    fn synthetic_frame_bytes_and_bounds() {
        let mut buf = BytesMut::new();
        Frame::Synthetic {
            seed: 7,
            zero_fraction: 0.5,
        }
        .encode(&mut buf);
        let mut expected = vec![12, 0, 0, 0, 16, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0];
        expected.extend_from_slice(&0.5f64.to_bits().to_le_bytes());
        assert_eq!(&buf[..], &expected[..]);
        for bad in [1.5f64, -0.1, f64::NAN] {
            let mut buf = BytesMut::new();
            Frame::Synthetic {
                seed: 7,
                zero_fraction: bad,
            }
            .encode(&mut buf);
            assert!(
                matches!(decode(&buf, &limits()), Err(ProtoError::Malformed { .. })),
                "{bad}"
            );
        }
        assert_eq!(ErrorCode::from_u16(9), ErrorCode::SourceFailed);
    }

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
    fn rejects_bad_magic_and_version() {
        let mut buf = BytesMut::new();
        Frame::Hello(Hello {
            version: VERSION,
            role: Role::Urgent,
            flags: 0,
            session: 0,
            unit: PAGE,
            image_id: 0,
            token: b"",
        })
        .encode(&mut buf);
        let mut bad_magic = buf.clone();
        bad_magic[HEADER_LEN] ^= 0xff;
        assert!(matches!(
            decode(&bad_magic, &limits()),
            Err(ProtoError::BadMagic(_))
        ));
        let mut bad_version = buf.clone();
        bad_version[HEADER_LEN + 4] = 77;
        assert_eq!(
            decode(&bad_version, &limits()),
            Err(ProtoError::UnsupportedVersion(77))
        );
    }

    #[test]
    fn rejects_out_of_range_and_misaligned() {
        let mut buf = BytesMut::new();
        Frame::Request {
            offset: 64 * PAGE,
            len: PAGE,
        }
        .encode(&mut buf);
        assert!(matches!(
            decode(&buf, &limits()),
            Err(ProtoError::OutOfRange { .. })
        ));
        buf.clear();
        Frame::Request {
            offset: u64::MAX - 4095,
            len: PAGE,
        }
        .encode(&mut buf);
        assert!(matches!(
            decode(&buf, &limits()),
            Err(ProtoError::OutOfRange { .. })
        ));
        buf.clear();
        Frame::Request {
            offset: 1,
            len: PAGE,
        }
        .encode(&mut buf);
        assert!(matches!(
            decode(&buf, &limits()),
            Err(ProtoError::Misaligned { .. })
        ));
        buf.clear();
        Frame::Request {
            offset: 0,
            len: PAGE,
        }
        .encode(&mut buf);
        assert!(matches!(
            decode(&buf, &Limits::handshake(PAGE)),
            Err(ProtoError::OutOfRange { .. })
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

    proptest! {
        #[test]
        fn decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes, &limits());
        }

        #[test]
        fn data_frames_round_trip(page in 0u64..64, pages in 1u64..4, fill in any::<u8>()) {
            let pages = pages.min(64 - page);
            let bytes = vec![fill; (pages * PAGE) as usize];
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
