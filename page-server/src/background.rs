//! The background connection: streams every page the client does not have yet, in address
//! order, unit by unit, then an end frame.

use std::io::Write;

use uffd_core::{Frame, FrameWriter};

use crate::send::send_claim;
use crate::session::Session;
use crate::ServeError;

/// Streams the session's unsent pages to `writer`. Returns when everything was sent (after
/// the end frame) or the session closed.
pub fn stream<W: Write>(session: &Session, writer: &mut FrameWriter<W>) -> Result<(), ServeError> {
    let mut from = 0;
    let mut buf = Vec::new();
    loop {
        // Between units: urgent answers first.
        if !session.wait_urgent_idle() {
            return Ok(());
        }
        let Some(claim) = session.claim_background(from) else {
            break;
        };
        from = claim.last().map_or(from, |r| r.1);
        let result = send_claim(
            writer,
            &session.image,
            &claim,
            session.policy.chunk,
            &session.fault_injection,
            &mut buf,
            || session.yield_to_urgent(),
        );
        session.unit_done();
        if !result? {
            return Ok(());
        }
    }
    writer.send(&Frame::End)?;
    tracing::debug!(session = session.id, "background stream complete");
    Ok(())
}
