//! The receiver threads: read frames from a connection and place their pages. The urgent
//! receiver places each answer as it comes; the background receiver is a two-stage pipeline.

use std::sync::atomic::Ordering;
use std::time::Duration;

use uffd_core::{BatchReader, Conn, Frame, FrameBatch, FrameReader};

use crate::fatal::{Loss, PlacerError, ReceiveError};
use crate::liveness::Heard;
use crate::pager::{Channel, Pager};
use crate::placer::{account, place_frame, Placer};
use crate::trace::Resolution;

/// Batches in flight between the background reader and its placer.
const PIPELINE_DEPTH: usize = 4;
/// Bytes read into a batch at most (it also holds at least one largest frame).
const BATCH_BYTES: usize = 1 << 20;

/// The background receiver, as a two-stage pipeline: this thread reads frames while a placer
/// thread places the previous ones, so that receiving (a copy out of the socket) and placing
/// (page allocation and UFFDIO_COPY) run on two CPUs at once. Frames travel between the two
/// in batches of up to 1 MiB, read from the socket straight into the batch (a
/// [`uffd_core::BatchReader`]): every hand-over may cost a cross-CPU wake-up, tens of
/// microseconds on a VM, so handing over each 64 KiB frame alone would cost more than the
/// placement. A batch is handed over as soon as the socket has nothing more buffered, so a
/// slow stream is never held back.
pub fn receive_pipelined(pager: &Pager, reader: FrameReader<Conn>, generation: u64) {
    use std::sync::mpsc;
    let (full_tx, full_rx) = mpsc::sync_channel::<FrameBatch>(PIPELINE_DEPTH);
    let (free_tx, free_rx) = mpsc::sync_channel::<FrameBatch>(PIPELINE_DEPTH);
    for _ in 0..PIPELINE_DEPTH {
        let _ = free_tx.send(FrameBatch::new(BATCH_BYTES, &pager.limits));
    }
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut placer = match Placer::new(pager, Channel::Background) {
                Ok(a) => a,
                Err(err) => return pager.run.fail(err),
            };
            loop {
                let batch = match full_rx.recv_timeout(Duration::from_millis(20)) {
                    Ok(batch) => batch,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if let Err(why) = complete_ready(pager, &mut placer) {
                            return pager.run.fail(why);
                        }
                        continue;
                    }
                    // The stream ended: finish the units that only waited for pages coming
                    // by the urgent connection, while this generation lasts.
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        while placer.pending() > 0
                            && !pager.run.stopping()
                            && pager.link.generation.load(Ordering::Acquire) == generation
                        {
                            if let Err(why) = complete_ready(pager, &mut placer) {
                                return pager.run.fail(why);
                            }
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        return;
                    }
                };
                for (header, payload) in batch.frames() {
                    let frame = match uffd_core::Frame::parse(header, payload, &pager.limits) {
                        Ok(frame) => frame,
                        Err(source) => {
                            return pager.run.fail(ReceiveError::Parse {
                                connection: Channel::Background.name(),
                                source,
                            })
                        }
                    };
                    if let Err(why) = handle_frame(pager, &mut placer, Channel::Background, frame) {
                        return pager.run.fail(why);
                    }
                    // Outside the events lock: the fault handler never waits for this.
                    if let Err(why) = placer.prepare_ahead() {
                        return pager.run.fail(why);
                    }
                }
                if let Err(why) = complete_ready(pager, &mut placer) {
                    return pager.run.fail(why);
                }
                // Placing is progress too: the reader may be waiting for this batch.
                pager.liveness.heard();
                if free_tx.send(batch).is_err() {
                    return;
                }
            }
        });
        let mut reader = BatchReader::new(Heard::new(reader.into_inner(), &pager.liveness));
        let mut last_bytes = 0;
        // The end frame may still be in the placer's queue when the server closes.
        let mut saw_end = false;
        for mut batch in free_rx.iter() {
            let result = reader.fill(&mut batch, &pager.limits);
            saw_end |= batch
                .frames()
                .any(|(header, _)| header.kind == uffd_core::proto::Kind::End);
            count_received(pager, reader.bytes_read(), &mut last_bytes);
            // Whole frames read before an error are placed all the same.
            let sent = full_tx.send(batch).is_ok();
            match result {
                Ok(true) if sent => {}
                Ok(true) => break,
                Ok(false) if saw_end => break,
                Ok(false) => {
                    let why = Loss::Closed {
                        connection: Channel::Background.name(),
                    };
                    pager.link.lost(&pager.run, generation, why);
                    break;
                }
                Err(source) => {
                    let why = Loss::Failed {
                        connection: Channel::Background.name(),
                        source,
                    };
                    pager.link.lost(&pager.run, generation, why);
                    break;
                }
            }
        }
        drop(full_tx);
    });
}

/// THP: the urgent connection placed 4 KiB pages inside units this assembler may be holding
/// complete but for those pages: place them now.
fn complete_ready(pager: &Pager, placer: &mut Placer) -> Result<(), PlacerError> {
    if !pager.recheck.swap(false, Ordering::AcqRel) {
        return Ok(());
    }
    let Placer::Assemble(assembler) = placer else {
        return Ok(());
    };
    let _guard = pager
        .page_state
        .events_lock
        .read()
        .unwrap_or_else(|e| e.into_inner());
    let progress = assembler.complete_ready(&pager.page_state.received)?;
    if progress.pages.stopped.is_some() {
        pager.recheck.store(true, Ordering::Release); // try again on the next turn
    }
    account(
        pager,
        placer,
        Resolution::Background,
        Channel::Background,
        &progress,
    );
    if progress.pages.placed > 0 && pager.complete() {
        pager.run.notify();
    }
    Ok(())
}

fn handle_frame(
    pager: &Pager,
    placer: &mut Placer,
    channel: Channel,
    frame: Frame<'_>,
) -> Result<(), ReceiveError> {
    match frame {
        Frame::Data { offset, bytes } => Ok(place_frame(
            pager,
            placer,
            channel,
            offset,
            Some(bytes),
            bytes.len() as u64,
        )?),
        Frame::Zero { offset, len } => Ok(place_frame(pager, placer, channel, offset, None, len)?),
        Frame::End if channel == Channel::Background => {
            pager.link.finish_background();
            pager.run.notify();
            Ok(())
        }
        Frame::Error { code, message } => Err(ReceiveError::Server {
            code,
            message: message.to_string(),
        }),
        other => Err(ReceiveError::Unexpected {
            kind: other.kind(),
            connection: channel.name(),
        }),
    }
}

/// A receiver thread: reads frames from one connection and places their pages.
pub fn receive(pager: &Pager, channel: Channel, reader: FrameReader<Conn>, generation: u64) {
    let mut placer = match Placer::new(pager, channel) {
        Ok(a) => a,
        Err(err) => return pager.run.fail(err),
    };
    let connection = channel.name();
    // The handshake's bytes count as received; from here every read is a sign of life.
    pager
        .counters
        .bytes_received
        .fetch_add(reader.bytes_read(), Ordering::Relaxed);
    let mut reader = FrameReader::new(Heard::new(reader.into_inner(), &pager.liveness));
    let mut last_bytes = 0;
    loop {
        let frame = match reader.read_frame(&pager.limits) {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                if !(channel == Channel::Background && pager.link.background_done()) {
                    pager
                        .link
                        .lost(&pager.run, generation, Loss::Closed { connection });
                }
                return;
            }
            Err(source) => {
                pager
                    .link
                    .lost(&pager.run, generation, Loss::Failed { connection, source });
                return;
            }
        };
        if let (Some(trace), Channel::Urgent) = (&pager.trace, channel) {
            match &frame {
                Frame::Data { offset, bytes } => trace.answer(*offset, bytes.len() as u64),
                Frame::Zero { offset, len } => trace.answer(*offset, *len),
                _ => {}
            }
        }
        let result = handle_frame(pager, &mut placer, channel, frame);
        count_received(pager, reader.bytes_read(), &mut last_bytes);
        if let Err(why) = result {
            return pager.run.fail(why);
        }
    }
}

/// Adds the bytes a reader has read since `last` (its count then) to the run's counter.
fn count_received(pager: &Pager, now: u64, last: &mut u64) {
    pager
        .counters
        .bytes_received
        .fetch_add(now - *last, Ordering::Relaxed);
    *last = now;
}
