//! The urgent connection: page requests, each answered at once with the pages the client
//! does not have yet.

use std::io::{Read, Write};

use uffd_core::{Frame, FrameReader, FrameWriter, Limits};

use crate::send::send_claim;
use crate::session::Session;
use crate::ServeError;

/// Answers requests until the client closes the connection.
pub fn serve<R: Read, W: Write>(
    session: &Session,
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    limits: &Limits,
) -> Result<(), ServeError> {
    let page = session.image.page_size();
    let mut buf = Vec::new();
    while let Some(frame) = reader.read_frame(limits)? {
        match frame {
            Frame::Request { offset, len } => {
                let claim = session.claim_urgent(offset / page, (offset + len) / page);
                if !session.policy.preempt {
                    session.wait_unit_boundary();
                }
                // Urgent answers go out in the largest frames: the client places a whole
                // unit at once anyway.
                let sent = send_claim(
                    writer,
                    &session.image,
                    &claim,
                    uffd_core::proto::MAX_CHUNK as u64,
                    &session.fault_injection,
                    &mut buf,
                    || true,
                );
                session.urgent_done();
                sent?;
            }
            other => return Err(ServeError::Unexpected(other.kind())),
        }
    }
    Ok(())
}
