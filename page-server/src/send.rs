//! Writing claimed pages: runs of data pages become data frames of at most one chunk, runs of
//! zero pages become zero frames (zero pages never travel as data). Data is read from the
//! image into the sender's own buffer first (a file is read with `pread`, a synthetic image
//! generated), so a source that fails is an error of this send, never a signal.

use std::io::Write;

use uffd_core::{Frame, FrameWriter};

use crate::image::Image;
use crate::inject::FaultInjection;
use crate::session::Claim;
use crate::ServeError;

/// Writes `claim` (page index runs) as frames of at most `chunk` data bytes, read from the
/// image into `buf` (the calling sender's own buffer, grown to the largest frame it sends).
/// Before every data frame but the first, `between_chunks` is asked whether to go on (it may
/// block, e.g. to let urgent answers through); a false answer stops the send with `Ok(false)`.
/// A page the image cannot produce is [`ServeError::Source`]. After each frame the test hook
/// `inject` may fail the connection ([`FaultInjection`], `--drop-every`).
pub fn send_claim<W: Write>(
    writer: &mut FrameWriter<W>,
    image: &Image,
    claim: &Claim,
    chunk: u64,
    inject: &FaultInjection,
    buf: &mut Vec<u8>,
    mut between_chunks: impl FnMut() -> bool,
) -> Result<bool, ServeError> {
    let page = image.page_size();
    let mut first_frame = true;
    for &(start, end) in claim {
        let mut p = start;
        while p < end {
            let zero = image.is_zero_page(p);
            let mut q = p + 1;
            while q < end && image.is_zero_page(q) == zero && (zero || (q - p) * page < chunk) {
                q += 1;
            }
            if !first_frame && !zero && !between_chunks() {
                return Ok(false);
            }
            first_frame = false;
            let (offset, len) = (p * page, (q - p) * page);
            if zero {
                writer.send(&Frame::Zero { offset, len })?;
            } else {
                let bytes = &mut buf_of(buf, len)[..];
                image.read_into(offset, bytes)?;
                writer.send(&Frame::Data { offset, bytes })?;
            }
            inject.after_frame(writer)?;
            p = q;
        }
    }
    Ok(true)
}

/// The first `len` bytes of `buf`, grown if needed.
fn buf_of(buf: &mut Vec<u8>, len: u64) -> &mut [u8] {
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if buf.len() < len {
        buf.resize(len, 0);
    }
    &mut buf[..len]
}
