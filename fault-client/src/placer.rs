//! Placement: how a receiver (or the fault handler, for a discarded page) makes pages
//! present, directly with UFFDIO_COPY / ZEROPAGE or through a huge-page assembler, honouring
//! what the application did to the region meanwhile (see [`crate::events`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hugepage::{Assembler, Backing, Mapped, Progress};
use uffd_core::place::Stop;

use crate::fatal::PlacerError;
use crate::pager::{Channel, Pager};
use crate::trace::Resolution;
use uffd_core::convert::usize_from;

/// What the application made of a page since the run began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PageClass {
    /// Still wanted: placed with the server's content.
    Wanted,
    /// Discarded (MADV_DONTNEED): placed as zeros.
    Discarded,
    /// Unmapped: never placed.
    Gone,
}

/// How one receiver places pages.
pub enum Placer {
    /// Straight into the region with UFFDIO_COPY / ZEROPAGE: base pages, and the urgent 4 KiB
    /// pages inside THP units (a faulting thread waits for that page alone). Holds what it
    /// made present since the last [`Placer::take_mapped`].
    Direct(Vec<Mapped>),
    /// Through this connection's huge-page assembler: units placed whole, atomically.
    Assemble(Assembler),
}

impl std::fmt::Debug for Placer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Placer::Direct(_) => "Placer::Direct",
            Placer::Assemble(_) => "Placer::Assemble",
        })
    }
}

impl Placer {
    /// Units started but not placed yet (0 for direct placement).
    pub fn pending(&self) -> usize {
        match self {
            Placer::Direct(_) => 0,
            Placer::Assemble(assembler) => assembler.pending(),
        }
    }

    /// What the placements since the last call made present, one entry per placement ioctl
    /// (direct placement: per frame).
    pub fn take_mapped(&mut self) -> Vec<Mapped> {
        match self {
            Placer::Direct(mapped) => std::mem::take(mapped),
            Placer::Assemble(assembler) => assembler.take_mapped(),
        }
    }

    /// The placer for `channel`'s receiver.
    pub fn new(pager: &Pager, channel: Channel) -> Result<Placer, PlacerError> {
        let backing = pager.memory.backing();
        if backing == Backing::Anon || (backing == Backing::Thp && channel == Channel::Urgent) {
            return Ok(Placer::Direct(Vec::new()));
        }
        let mut assembler = pager
            .memory
            .assembler(Arc::clone(&pager.uffd))
            .map_err(PlacerError::NewAssembler)?;
        // The padding past the image in the last unit is zero: gather it now, so that the
        // unit completes when the image's pages of it arrive.
        let image_end = pager.pages * pager.page;
        let padding = pager.memory.len() as u64 - image_end;
        if padding > 0 {
            assembler.zero(image_end, padding, &pager.page_state.received)?;
        }
        Ok(Placer::Assemble(assembler))
    }

    /// Gets the assembler's next staging page ready ([`hugepage::Assembler::prepare_spare`]).
    /// Call it without the events lock.
    pub fn prepare_ahead(&mut self) -> Result<(), PlacerError> {
        match self {
            Placer::Assemble(assembler) => Ok(assembler.prepare_spare()?),
            Placer::Direct(_) => Ok(()),
        }
    }

    /// Places (or gathers) `bytes`, or `len` zero bytes, at image `offset`, honouring what
    /// the application did meanwhile: discarded pages are placed as zeros, unmapped pages are
    /// dropped (see [`crate::events`]).
    pub fn place(
        &mut self,
        pager: &Pager,
        offset: u64,
        bytes: Option<&[u8]>,
        len: u64,
    ) -> Result<Progress, PlacerError> {
        let _guard = pager
            .page_state
            .events_lock
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let ps = pager.page;
        let moved = pager.memory.moved();
        let plain =
            pager.page_state.discarded.count() == 0 && pager.page_state.gone.count() == 0 && !moved;
        if plain {
            return self.place_run(pager, offset, bytes, len);
        }
        let class = |p: u64| {
            if pager.page_state.gone.get(usize_from(p)) {
                PageClass::Gone
            } else if pager.page_state.discarded.get(usize_from(p)) {
                PageClass::Discarded
            } else {
                PageClass::Wanted
            }
        };
        let (first, n) = (offset / ps, len / ps);
        // Direct placement fills a contiguous range; a moved range is not contiguous in
        // memory any more, so it goes page by page. The assembler follows moves itself.
        let direct_moved = moved && matches!(self, Placer::Direct(_));
        let mut total = Progress::default();
        let mut i = 0;
        while i < n {
            let c = class(first + i);
            let mut j = i + 1;
            while j < n && class(first + j) == c && !direct_moved {
                j += 1;
            }
            let (o, l) = ((first + i) * ps, (j - i) * ps);
            let step = match c {
                PageClass::Wanted => self.place_run(
                    pager,
                    o,
                    bytes.map(|b| &b[usize_from(i * ps)..usize_from(j * ps)]),
                    l,
                )?,
                PageClass::Discarded => self.place_run(pager, o, None, l)?,
                PageClass::Gone => Progress::default(),
            };
            let stopped = step.pages.stopped.is_some();
            total.merge(&step);
            if stopped && matches!(self, Placer::Direct(_)) {
                break;
            }
            i = j;
        }
        Ok(total)
    }

    fn place_run(
        &mut self,
        pager: &Pager,
        offset: u64,
        bytes: Option<&[u8]>,
        len: u64,
    ) -> Result<Progress, PlacerError> {
        match self {
            Placer::Assemble(assembler) => match bytes {
                Some(bytes) => assembler.data(offset, bytes, &pager.page_state.received),
                None => assembler.zero(offset, len, &pager.page_state.received),
            }
            .map_err(PlacerError::from),
            Placer::Direct(_) if bytes.is_none() && pager.memory.backing() == Backing::Thp => {
                // Not UFFDIO_ZEROPAGE inside a THP unit: MADV_COLLAPSE refuses a range that
                // maps the shared zero page, and the unit is collapsed once complete. Copy
                // zeros instead.
                const ZEROS: [u8; 4096] = [0; 4096];
                let mut total = Progress::default();
                let mut at = offset;
                while at < offset + len {
                    // place_run, not place: the events lock is held by our caller already.
                    let step = self.place_run(
                        pager,
                        at,
                        Some(&ZEROS[..usize_from(pager.page)]),
                        pager.page,
                    )?;
                    total.merge(&step);
                    if step.pages.stopped.is_some() {
                        break;
                    }
                    at += pager.page;
                }
                Ok(total)
            }
            Placer::Direct(mapped) => {
                let page = pager.page;
                let source = match bytes {
                    Some(bytes) => uffd_core::Source::Bytes(bytes),
                    None => uffd_core::Source::Zero(len),
                };
                // Where the page is now: the application may have moved it with mremap.
                let dst = pager.page_addr(offset / page);
                let began = Instant::now();
                let filled = uffd_core::place::fill(&pager.uffd, dst, source, page)?;
                // Every page up to the stop is present now, placed here or before.
                let done = filled.placed + filled.present;
                if filled.placed > 0 {
                    mapped.push(Mapped {
                        offset,
                        len: done * page,
                        began,
                        ended: Instant::now(),
                    });
                }
                let first = offset / page;
                pager
                    .page_state
                    .received
                    .set_range(usize_from(first), usize_from(first + done));
                if pager.memory.unit() > page {
                    pager.recheck.store(true, Ordering::Release);
                }
                Ok(Progress {
                    pages: filled,
                    pages_gathered: 0,
                    units_completed: done,
                    units_not_huge: 0,
                })
            }
        }
    }

    /// Completes what a `Retry` stop left: complete units again, or the rest of a range.
    fn retry(
        &mut self,
        pager: &Pager,
        offset: u64,
        bytes: Option<&[u8]>,
        len: u64,
    ) -> Result<Progress, PlacerError> {
        match self {
            Placer::Assemble(assembler) => {
                // Under the events lock like every placement: the stop was an event pending,
                // and once the fault handler has read it (an mremap's REMAP) the ioctls work
                // again before the move is applied; without the lock a unit could be placed
                // at its old address in between (UFFDIO_MOVE failed ENOENT there).
                let _guard = pager
                    .page_state
                    .events_lock
                    .read()
                    .unwrap_or_else(|e| e.into_inner());
                Ok(assembler.retry(&pager.page_state.received)?)
            }
            // `place` takes the events lock itself. Pages placed before the stop answer EEXIST
            // now and are skipped.
            Placer::Direct(_) => self.place(pager, offset, bytes, len),
        }
    }
}

/// Places the pages of one frame (`bytes`, or `len` zero bytes at image `offset`) that came
/// by `channel`, completes what a pending event stopped, and counts and traces the result.
pub fn place_frame(
    pager: &Pager,
    placer: &mut Placer,
    channel: Channel,
    offset: u64,
    bytes: Option<&[u8]>,
    len: u64,
) -> Result<(), PlacerError> {
    let how = match (bytes.is_some(), channel) {
        (false, _) => Resolution::Zero,
        (true, Channel::Urgent) => Resolution::Urgent,
        (true, Channel::Background) => Resolution::Background,
    };
    let mut progress = placer.place(pager, offset, bytes, len)?;
    if let Some(trace) = &pager.trace {
        if progress.pages_gathered > 0 {
            trace.gathered(offset, len, how, channel.name());
        } else if progress.pages.placed == 0 && progress.pages.present > 0 {
            trace.duplicate(offset, len, channel.name());
        }
    }
    loop {
        account(pager, placer, how, channel, &progress);
        match progress.pages.stopped {
            None => break,
            Some(Stop::Gone) => return Err(PlacerError::OwnerExited),
            // An event is pending (the fault handler reads it) or the address space is
            // changing: give it a moment, then complete what is left.
            Some(Stop::Retry) => {
                std::thread::sleep(Duration::from_micros(50));
                progress = placer.retry(pager, offset, bytes, len)?;
            }
        }
    }
    if pager.complete() {
        pager.run.notify();
    }
    Ok(())
}

/// Counts what one placement call made present (pages of the image only, never the padding
/// of the last huge page) and traces each range as an arrival.
pub(crate) fn account(
    pager: &Pager,
    placer: &mut Placer,
    how: Resolution,
    channel: Channel,
    progress: &Progress,
) {
    let mapped = placer.take_mapped();
    let padding: u64 = mapped.iter().map(|m| pager.padding_pages(m)).sum();
    let counter = match how {
        Resolution::Urgent => &pager.counters.pages_urgent,
        Resolution::Background => &pager.counters.pages_background,
        _ => &pager.counters.pages_zero,
    };
    counter.fetch_add(
        progress.pages.placed.saturating_sub(padding),
        Ordering::Relaxed,
    );
    pager
        .counters
        .huge_pages_not_collapsed
        .fetch_add(progress.units_not_huge, Ordering::Relaxed);
    pager
        .counters
        .pages_duplicate
        .fetch_add(progress.pages.present, Ordering::Relaxed);
    if let Some(trace) = &pager.trace {
        for m in &mapped {
            trace.arrival(m, pager.page, how, channel.name());
        }
    }
}
