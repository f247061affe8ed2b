//! The handshake frames: the hello (its token and image identity checked), a resuming
//! client's have frames, and the answer: the welcome, then the checksums or the synthetic
//! image's parameters if the hello asked for them. Which session a hello opens or joins is
//! the registry's business (`registry.rs`); the order of the steps is the server's
//! (`server.rs`).

use std::io::{Read, Write};

use uffd_core::proto::{self, Hello, Welcome};
use uffd_core::{Frame, FrameReader, FrameWriter, Limits};

use crate::image::Image;
use crate::ServeError;

/// Reads the first frame, which must be a hello with the right token (`token`, None: no
/// authentication) for this image (`image_id`; a hello's 0 accepts any). None: the client
/// closed the connection before sending anything. The hello's token is dropped.
pub(crate) fn read_hello<R: Read>(
    reader: &mut FrameReader<R>,
    limits: &Limits,
    token: Option<&[u8]>,
    image_id: u64,
) -> Result<Option<Hello<'static>>, ServeError> {
    let hello = match reader.read_frame(limits)? {
        Some(Frame::Hello(hello)) => hello,
        Some(other) => return Err(ServeError::HandshakeRequired(other.kind())),
        None => return Ok(None),
    };
    check_token(token, hello.token)?;
    if hello.image_id != 0 && hello.image_id != image_id {
        return Err(ServeError::ImageMismatch);
    }
    Ok(Some(Hello {
        token: &[],
        ..hello
    }))
}

fn check_token(expected: Option<&[u8]>, token: &[u8]) -> Result<(), ServeError> {
    let Some(expected) = expected else {
        return Ok(());
    };
    // Compare every byte whatever the first difference, so timing reveals nothing.
    let same = expected.len() == token.len()
        && expected
            .iter()
            .zip(token)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Ok(())
    } else {
        Err(ServeError::Unauthorized)
    }
}

/// Reads the have frames of a resuming client: its whole received bitmap (of an image of
/// `pages` pages), in order.
pub(crate) fn read_have<R: Read>(
    reader: &mut FrameReader<R>,
    limits: &Limits,
    pages: u64,
) -> Result<Vec<u64>, ServeError> {
    let words = usize::try_from(pages.div_ceil(64)).unwrap_or(usize::MAX);
    let mut have = Vec::with_capacity(words);
    while have.len() < words {
        match reader.read_frame(limits)? {
            Some(frame @ Frame::Have { first_word, .. }) if first_word == have.len() as u64 => {
                have.extend(frame.have_words());
            }
            Some(other) => return Err(ServeError::Unexpected(other.kind())),
            None => return Err(ServeError::Io(std::io::ErrorKind::UnexpectedEof.into())),
        }
    }
    Ok(have)
}

/// Sends the welcome to session `session` and, if the hello asks for checksums, either the
/// synthetic image's parameters (a client that can regenerate it says so,
/// `HELLO_SYNTHETIC_OK`) or the checksums.
pub(crate) fn welcome<W: Write>(
    writer: &mut FrameWriter<W>,
    image: &Image,
    session: u64,
    hello_flags: u8,
) -> Result<(), ServeError> {
    let want_sums = hello_flags & proto::HELLO_WANT_CHECKSUMS != 0;
    let synthetic = image
        .synthetic_params()
        .filter(|_| want_sums && hello_flags & proto::HELLO_SYNTHETIC_OK != 0);
    writer.send(&Frame::Welcome(Welcome {
        version: proto::VERSION,
        flags: if synthetic.is_some() {
            proto::WELCOME_SYNTHETIC_FOLLOWS
        } else if want_sums {
            proto::WELCOME_CHECKSUMS_FOLLOW
        } else {
            0
        },
        session,
        image_size: image.len(),
        page_size: u32::try_from(image.page_size()).unwrap_or(u32::MAX),
        image_id: image.id(),
    }))?;
    if let Some(synthetic) = synthetic {
        writer.send(&Frame::Synthetic {
            seed: synthetic.seed(),
            zero_fraction: synthetic.zero_fraction(),
        })?;
    } else if want_sums {
        send_checksums(writer, image)?;
    }
    Ok(())
}

/// Sends every page checksum, a frame's worth at a time (for a synthetic image they are
/// computed here, so nothing of the size of the image is held).
fn send_checksums<W: Write>(writer: &mut FrameWriter<W>, image: &Image) -> Result<(), ServeError> {
    let per_frame = ((proto::MAX_PAYLOAD - 8) / 8) as u64;
    let mut first = 0;
    while first < image.pages() {
        let count = per_frame.min(image.pages() - first);
        let raw = proto::encode_u64s(image.checksums(first, count)?);
        writer.send(&Frame::Checksums {
            first_page: first,
            raw: &raw,
        })?;
        first += count;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMAGE_ID: u64 = 0xfeed;

    /// The bytes of `frames`, as a client sends them.
    fn wire(frames: &[Frame<'_>]) -> FrameReader<std::io::Cursor<Vec<u8>>> {
        let mut writer = FrameWriter::new(Vec::new());
        for frame in frames {
            writer.send(frame).expect("encode");
        }
        FrameReader::new(std::io::Cursor::new(writer.get_ref().clone()))
    }

    fn hello(token: &[u8], image_id: u64) -> Frame<'_> {
        Frame::Hello(Hello {
            version: proto::VERSION,
            role: proto::Role::Urgent,
            flags: 0,
            session: 0,
            unit: 4096,
            image_id,
            token,
        })
    }

    fn read(frames: &[Frame<'_>], token: Option<&[u8]>) -> Result<Option<u64>, ServeError> {
        let limits = Limits::new(1 << 20, 4096);
        let hello = read_hello(&mut wire(frames), &limits, token, IMAGE_ID)?;
        Ok(hello.map(|h| {
            assert!(h.token.is_empty(), "the token is not kept");
            h.unit
        }))
    }

    #[test]
    fn a_hello_passes_with_the_right_token_and_image() {
        assert_eq!(
            read(&[hello(b"s3cret", 0)], Some(b"s3cret")).expect("accepted"),
            Some(4096)
        );
        assert_eq!(
            read(&[hello(b"", IMAGE_ID)], None).expect("accepted"),
            Some(4096)
        );
        assert_eq!(
            read(&[], None).expect("accepted"),
            None,
            "end of stream: no hello"
        );
    }

    #[test]
    fn a_wrong_hello_or_another_frame_first_is_refused() {
        for token in [&b""[..], b"s3cre", b"s3creT", b"s3cret!"] {
            assert!(
                matches!(
                    read(&[hello(token, 0)], Some(b"s3cret")),
                    Err(ServeError::Unauthorized)
                ),
                "token {token:?}"
            );
        }
        assert!(matches!(
            read(&[hello(b"", IMAGE_ID + 1)], None),
            Err(ServeError::ImageMismatch)
        ));
        assert!(matches!(
            read(&[Frame::End], None),
            Err(ServeError::HandshakeRequired(proto::Kind::End))
        ));
    }
}
