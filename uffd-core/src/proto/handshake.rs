//! The handshake: the client's hello, the server's welcome, and the synthetic frame a server
//! may send after its welcome in place of an image's checksums.

use bytes::{Buf, BufMut, BytesMut};

use super::header::Header;
use super::{
    malformed, need, Kind, Limits, ProtoError, Result, MAGIC, MAX_IMAGE, MAX_TEXT, VERSION,
};

/// Hello flag: send the per-page checksums after the welcome.
pub const HELLO_WANT_CHECKSUMS: u8 = 1;
/// Hello flag (urgent connection, non-zero session): resume that session. Have frames
/// covering the whole received bitmap follow the hello, before the server answers.
pub const HELLO_RESUME: u8 = 2;
/// Hello flag (with [`HELLO_WANT_CHECKSUMS`]): the client can regenerate a synthetic image
/// itself ([`crate::synthetic`]), so for one the server may describe it instead of sending
/// a checksum per page.
pub const HELLO_SYNTHETIC_OK: u8 = 4;
/// Welcome flag: checksum frames follow this welcome.
pub const WELCOME_CHECKSUMS_FOLLOW: u8 = 1;
/// Welcome flag: a synthetic frame (the image's parameters) follows this welcome, in place of
/// the checksum frames.
pub const WELCOME_SYNTHETIC_FOLLOWS: u8 = 2;

wire_enum! {
    /// Which connection of a session a hello opens.
    pub enum Role: u8 {
        /// Page requests, answered at once.
        Urgent = 1, "urgent";
        /// The stream of every page the client does not have yet.
        Background = 2, "background";
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

/// A hello's payload before its token: magic u32, version u16, role u8, flags u8, session
/// u64, unit u64, image id u64, token length u16.
const HELLO_FIXED_LEN: usize = 4 + 2 + 1 + 1 + 8 + 8 + 8 + 2;

impl<'a> Hello<'a> {
    /// Parses a hello; its token is borrowed from the payload.
    pub(super) fn parse(p: &mut &'a [u8], limits: &Limits) -> Result<Hello<'a>> {
        let kind = Kind::Hello;
        need(kind, p, HELLO_FIXED_LEN)?;
        let version = check_magic_version(p)?;
        let role = Role::from_wire(p.get_u8()).ok_or_else(|| malformed(kind, "unknown role"))?;
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
        Ok(Hello {
            version,
            role,
            flags,
            session,
            unit,
            image_id,
            token,
        })
    }

    /// Appends the hello (header and payload) to `dst`.
    pub(super) fn encode(&self, dst: &mut BytesMut) {
        Header::put(Kind::Hello, 0, HELLO_FIXED_LEN + self.token.len(), dst);
        dst.put_u32_le(MAGIC);
        dst.put_u16_le(self.version);
        dst.put_u8(self.role as u8);
        dst.put_u8(self.flags);
        dst.put_u64_le(self.session);
        dst.put_u64_le(self.unit);
        dst.put_u64_le(self.image_id);
        dst.put_u16_le(u16::try_from(self.token.len()).unwrap_or(u16::MAX));
        dst.put_slice(self.token);
    }
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

/// A welcome's payload: magic u32, version u16, flags u8, session u64, image size u64, page
/// size u32, image id u64.
const WELCOME_LEN: usize = 4 + 2 + 1 + 8 + 8 + 4 + 8;

impl Welcome {
    /// Parses a welcome: a power-of-two page size, an image of 1 byte to [`MAX_IMAGE`].
    pub(super) fn parse(p: &mut &[u8]) -> Result<Welcome> {
        let kind = Kind::Welcome;
        need(kind, p, WELCOME_LEN)?;
        let version = check_magic_version(p)?;
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
        Ok(Welcome {
            version,
            flags,
            session,
            image_size,
            page_size,
            image_id,
        })
    }

    /// Appends the welcome (header and payload) to `dst`.
    pub(super) fn encode(&self, dst: &mut BytesMut) {
        Header::put(Kind::Welcome, 0, WELCOME_LEN, dst);
        dst.put_u32_le(MAGIC);
        dst.put_u16_le(self.version);
        dst.put_u8(self.flags);
        dst.put_u64_le(self.session);
        dst.put_u64_le(self.image_size);
        dst.put_u32_le(self.page_size);
        dst.put_u64_le(self.image_id);
    }
}

/// Reads the magic and the version that open a hello and a welcome.
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

/// A synthetic frame's payload: seed u64, zero fraction f64 (its IEEE 754 bits).
const SYNTHETIC_LEN: usize = 8 + 8;

/// Parses a synthetic frame: `(seed, zero fraction)`.
pub(super) fn parse_synthetic(p: &mut &[u8]) -> Result<(u64, f64)> {
    let kind = Kind::Synthetic;
    need(kind, p, SYNTHETIC_LEN)?;
    let seed = p.get_u64_le();
    let zero_fraction = f64::from_bits(p.get_u64_le());
    if !(0.0..=1.0).contains(&zero_fraction) {
        return Err(malformed(kind, "zero fraction outside 0..=1"));
    }
    Ok((seed, zero_fraction))
}

pub(super) fn encode_synthetic(seed: u64, zero_fraction: f64, dst: &mut BytesMut) {
    Header::put(Kind::Synthetic, 0, SYNTHETIC_LEN, dst);
    dst.put_u64_le(seed);
    dst.put_u64_le(zero_fraction.to_bits());
}

#[cfg(test)]
mod tests {
    use super::super::tests::{limits, roundtrip, PAGE};
    use super::super::{decode, Frame, HEADER_LEN};
    use super::*;

    #[test]
    fn hello_welcome_and_synthetic_round_trip() {
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
}
