//! One connection's answer checked against the model: every frame decodes, the handshake is
//! the one expected, and every page is the image's.

use std::collections::BTreeSet;

use page_server::Image;
use uffd_core::proto::{self, ErrorCode, Frame, Limits, Role};

use super::connection::{End, Received, DEADLINE, MAX_RECEIVED};
use super::expect::{Expect, Welcomed};
use super::target::{Target, PAGE};

/// What one played script amounted to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Connections opened.
    pub connections: usize,
    /// Frames received.
    pub frames: usize,
    /// Connections answered with an error frame.
    pub refused: usize,
    /// Welcomes received.
    pub welcomes: usize,
    /// Pages received as data or zero frames.
    pub pages: u64,
}

/// What one connection received, checked.
#[derive(Debug, Default)]
pub(super) struct Seen {
    pub(super) session: Option<u64>,
    pub(super) urgent: bool,
    pub(super) pages: Vec<u64>,
    pub(super) have: BTreeSet<u64>,
    pub(super) end: bool,
}

/// Frames, briefly (no page contents).
fn describe(frames: &[Frame<'_>]) -> String {
    let items: Vec<String> = frames
        .iter()
        .map(|f| match *f {
            Frame::Welcome(w) => format!("welcome(session {:#x}, flags {})", w.session, w.flags),
            Frame::Checksums { first_page, raw } => {
                format!("checksums({first_page}, {} pages)", raw.len() / 8)
            }
            Frame::Data { offset, bytes } => format!("data({offset:#x}+{:#x})", bytes.len()),
            Frame::Zero { offset, len } => format!("zero({offset:#x}+{len:#x})"),
            Frame::Error { code, message } => format!("error({code:?}: {message})"),
            ref other => format!("{:?}", other.kind()),
        })
        .collect();
    format!("[{}]", items.join(", "))
}

/// Checks what one connection received against what the model expected; counts it in
/// `summary`. `relaxed`: the connection's session was replaced by a resumption, so its answers
/// may stop anywhere.
pub(super) fn check_connection(
    target: &Target<'_>,
    expected: &Expect,
    got: &Received,
    relaxed: bool,
    summary: &mut Summary,
) -> Result<Seen, String> {
    let image = target.image;
    match got.end {
        End::TimedOut => return Err(format!("not closed within {DEADLINE:?} (hang)")),
        End::Overflow => return Err(format!("more than {MAX_RECEIVED} bytes received")),
        End::Failed(kind) => return Err(format!("reading failed: {kind:?}")),
        End::Eof | End::Reset | End::Aborted => {}
    }
    let Decoded {
        frames,
        error_at,
        truncated,
    } = decode_all(&got.bytes, &target.limits())?;
    if got.end == End::Reset && error_at.is_none() && !relaxed {
        return Err("reset by the server without an error frame".into());
    }
    summary.frames += frames.len();
    let mut seen = Seen::default();
    let refused = |frames: &[Frame<'_>], code: ErrorCode| match frames {
        [Frame::Error { code: c, .. }] if *c == code => Ok(()),
        other => Err(format!(
            "expected one {code:?} error frame, got {} (truncated tail: {truncated})",
            describe(other)
        )),
    };
    let w = match expected.clone() {
        Expect::Silence => {
            if !frames.is_empty() || truncated {
                return Err(format!("expected silence, got {}", describe(&frames)));
            }
            return Ok(seen);
        }
        Expect::Refused(code) => {
            refused(&frames, code)?;
            summary.refused += 1;
            return Ok(seen);
        }
        Expect::Welcome(w) => {
            if let (Some(code), [Frame::Error { .. }]) = (w.may_refuse, &frames[..]) {
                refused(&frames, code)?;
                summary.refused += 1;
                return Ok(seen);
            }
            w
        }
    };
    let rest = match frames.split_first() {
        Some((Frame::Welcome(welcome), tail)) => {
            if welcome.version != proto::VERSION
                || welcome.image_size != image.len()
                || u64::from(welcome.page_size) != image.page_size()
                || welcome.image_id != image.id()
                || (welcome.flags & proto::WELCOME_CHECKSUMS_FOLLOW != 0)
                    != (w.checksums && !w.synthetic)
                || (welcome.flags & proto::WELCOME_SYNTHETIC_FOLLOWS != 0) != w.synthetic
                || w.session.is_some_and(|id| id != welcome.session)
                || welcome.session == 0
            {
                return Err(format!("bad welcome {welcome:?} for {w:?}"));
            }
            seen.session = Some(welcome.session);
            summary.welcomes += 1;
            tail
        }
        _ if relaxed && frames.is_empty() => return Ok(seen),
        _ => {
            return Err(format!(
                "expected a welcome first, got {}",
                describe(&frames)
            ))
        }
    };
    seen.urgent = w.role == Role::Urgent;
    seen.have = w.have.clone();
    let Some(rest) = after_description(image, &w, rest, relaxed)? else {
        return Ok(seen);
    };
    check_answers(image, &w, rest, truncated, &mut seen)?;
    if w.role == Role::Urgent {
        if truncated && !relaxed {
            return Err("an urgent answer was cut short".into());
        }
        if w.then.is_some() && error_at.is_none() && !relaxed {
            return Err(format!("expected a final {:?} error frame", w.then));
        }
        if let Some(p) = seen.pages.iter().find(|p| !w.requested.contains(p)) {
            return Err(format!("page {p} sent on the urgent connection unasked"));
        }
    }
    summary.pages += seen.pages.len() as u64;
    Ok(seen)
}

/// Everything one connection received, decoded.
struct Decoded<'a> {
    frames: Vec<Frame<'a>>,
    /// Where the error frame is, if one came (it must be the last frame).
    error_at: Option<usize>,
    /// Bytes after the last whole frame (a frame cut short by the close).
    truncated: bool,
}

/// Decodes everything the server sent on one connection: every frame must decode, and
/// nothing may follow an error frame.
fn decode_all<'a>(bytes: &'a [u8], limits: &Limits) -> Result<Decoded<'a>, String> {
    let mut frames = Vec::new();
    let mut pos = 0;
    let mut error_at = None;
    while pos < bytes.len() {
        match proto::decode(&bytes[pos..], limits) {
            Ok(Some((frame, used))) => {
                if error_at.is_some() {
                    return Err(format!("a {:?} frame after the error frame", frame.kind()));
                }
                if matches!(frame, Frame::Error { .. }) {
                    error_at = Some(frames.len());
                }
                frames.push(frame);
                pos += used;
            }
            Ok(None) => break,
            Err(err) => {
                return Err(format!(
                    "the server sent a frame that does not decode ({err}) at byte {pos}: {:02x?}",
                    &bytes[pos..bytes.len().min(pos + 48)]
                ))
            }
        }
    }
    let truncated = pos < bytes.len();
    if error_at.is_some() && truncated {
        return Err("bytes after the error frame".into());
    }
    Ok(Decoded {
        frames,
        error_at,
        truncated,
    })
}

/// After the welcome, the image's description the hello asked for: the synthetic image's
/// parameters, or the checksums of every page (each the image's). Returns the frames after it,
/// or `None` if a relaxed connection's answer stopped before it.
fn after_description<'f, 'a>(
    image: &Image,
    w: &Welcomed,
    mut rest: &'f [Frame<'a>],
    relaxed: bool,
) -> Result<Option<&'f [Frame<'a>]>, String> {
    if w.synthetic {
        let params = image
            .synthetic_params()
            .map(|s| (s.seed(), s.zero_fraction()));
        match rest.split_first() {
            Some((
                Frame::Synthetic {
                    seed,
                    zero_fraction,
                },
                tail,
            )) if Some((*seed, *zero_fraction)) == params => rest = tail,
            _ if relaxed && rest.is_empty() => return Ok(None),
            _ => {
                return Err(format!(
                    "expected the synthetic frame, got {}",
                    describe(rest)
                ))
            }
        }
    } else if w.checksums {
        let mut next = 0u64;
        while next < image.pages() {
            let Some((frame @ Frame::Checksums { first_page, .. }, tail)) = rest.split_first()
            else {
                if relaxed && rest.is_empty() {
                    return Ok(None);
                }
                return Err(format!("checksums end at page {next}"));
            };
            if *first_page != next {
                return Err(format!("checksums from page {first_page}, expected {next}"));
            }
            for (k, sum) in frame.checksums().enumerate() {
                let page = next + k as u64;
                if image.checksums(page, 1).ok() != Some(vec![sum]) {
                    return Err(format!("wrong checksum of page {page}"));
                }
            }
            next += frame.checksums().count() as u64;
            rest = tail;
        }
    }
    Ok(Some(rest))
}

/// The answers after the handshake: pages, each the image's and in the right kind of frame
/// (recorded in `seen`), and what may end them: an end frame closing a background stream, the
/// error frame the model expects on an urgent connection.
fn check_answers(
    image: &Image,
    w: &Welcomed,
    rest: &[Frame<'_>],
    truncated: bool,
    seen: &mut Seen,
) -> Result<(), String> {
    for (k, frame) in rest.iter().enumerate() {
        let last = k + 1 == rest.len();
        match *frame {
            Frame::Data { offset, bytes } => {
                if image.bytes(offset, bytes.len() as u64).ok().as_deref() != Some(bytes) {
                    return Err(format!("wrong bytes in data at {offset:#x}"));
                }
                for p in offset / PAGE..(offset + bytes.len() as u64) / PAGE {
                    if image.is_zero_page(p) {
                        return Err(format!("zero page {p} sent as data"));
                    }
                    seen.pages.push(p);
                }
            }
            Frame::Zero { offset, len } => {
                for p in offset / PAGE..(offset + len) / PAGE {
                    if !image.is_zero_page(p) {
                        return Err(format!("data page {p} announced as zero"));
                    }
                    seen.pages.push(p);
                }
            }
            Frame::End if w.role == Role::Background && last && !truncated => seen.end = true,
            Frame::Error { code, .. } if w.role == Role::Urgent && Some(code) == w.then => {}
            ref other => {
                return Err(format!(
                    "unexpected {} (frame {k} of the answers)",
                    describe(std::slice::from_ref(other))
                ))
            }
        }
    }
    Ok(())
}
