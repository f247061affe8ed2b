//! The fault handler thread: reads the userfaultfd, applies the application's events
//! ([`crate::events`]) with no placement in flight, and turns each fault into a request on the
//! urgent connection ([`Pager::request`]), or resolves it locally (a discarded page, the part
//! of the region past the image).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hugepage::Backing;
use uffd_core::place::Stop;
use uffd_core::{Event, Userfaultfd};

use crate::events;
use crate::fatal::{Fatal, PlacerError};
use crate::pager::{Channel, Pager};
use crate::placer::Placer;
use crate::trace::Resolution;
use crate::workload::Waits;
use uffd_core::convert::usize_from;

/// The fault handler thread: faults become requests; events are applied.
pub fn handle_faults(pager: &Arc<Pager>) {
    /// Whoever waits for this thread to record a read stops waiting once it is gone.
    struct Closing<'a>(&'a Waits);
    impl Drop for Closing<'_> {
        fn drop(&mut self) {
            self.0.close();
        }
    }
    let _closing = Closing(&pager.waits);
    let mut buffer = Userfaultfd::event_buffer(64);
    let mut events = Vec::with_capacity(64);
    let mut faults = Vec::with_capacity(64);
    let mut deferred = Vec::new();
    let mut local: Option<Placer> = None;
    while !pager.run.stopping() {
        let wait = if deferred.is_empty() { 100 } else { 1 };
        match pager.uffd.wait_readable(Duration::from_millis(wait)) {
            Ok(true) => {}
            Ok(false) if deferred.is_empty() => continue,
            Ok(false) => {}
            Err(err) => return pager.run.fail(Fatal::ReadFaults(err)),
        }
        events.clear();
        faults.clear();
        {
            // Read and apply events with no placement in flight (see crate::events).
            let _guard = pager
                .page_state
                .events_lock
                .write()
                .unwrap_or_else(|e| e.into_inner());
            pager.waits.begin_read();
            let read = pager.uffd.read_events(&mut buffer, &mut events);
            // Before `end_read`: a thread that waited on one of these faults may run on (and
            // start its next access) as soon as that returns.
            let read_at = Instant::now();
            for event in &events {
                if let Event::Fault { tid: Some(tid), .. } = event {
                    pager.waits.record(*tid);
                }
            }
            pager.waits.end_read();
            if let Err(err) = read {
                return pager.run.fail(Fatal::ReadFaults(err));
            }
            for event in events.drain(..) {
                match event {
                    Event::Fault { addr, tid, .. } => {
                        pager.counters.faults.fetch_add(1, Ordering::Relaxed);
                        // Before the fault is handled: it is resolved exactly once, when its
                        // page is found present or becomes present (see crate::trace).
                        if let (Some(trace), Some(page)) = (&pager.trace, pager.image_page(addr)) {
                            trace.fault(read_at, page * pager.page, pager.page, tid);
                        }
                        faults.push(addr);
                    }
                    other => {
                        if let Err(why) = events::apply(pager, other) {
                            return pager.run.fail(why);
                        }
                    }
                }
            }
        }
        // Faults whose local placement met a pending event are tried again after the next
        // read of the events (this thread is the one that reads them: waiting here would
        // deadlock).
        faults.append(&mut deferred);
        for &addr in &faults {
            match handle_fault(pager, addr, &mut local) {
                Ok(Handled::Done) => {}
                Ok(Handled::Deferred) => deferred.push(addr),
                Err(why) => return pager.run.fail(why),
            }
        }
    }
}

/// What became of one fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Requested, resolved locally, or found present: nothing more to do here.
    Done,
    /// A pending event stopped a local placement: try again after reading the events.
    Deferred,
}

/// Handles one fault.
fn handle_fault(
    pager: &Pager,
    addr: u64,
    local: &mut Option<Placer>,
) -> Result<Handled, PlacerError> {
    let Some(page) = pager.image_page(addr) else {
        return zero_outside_image(pager, addr);
    };
    let unit_pages = (pager.memory.request_unit() / pager.page).max(1);
    if pager.page_state.received.get(usize_from(page)) {
        if let Some(trace) = &pager.trace {
            trace.already_present(page * pager.page, pager.page);
        }
        // Placed between the fault and now: the placement woke the thread already, unless it
        // faulted just after; a wake is harmless either way.
        let _ = pager.uffd.wake(pager.page_addr(page), pager.page);
        return Ok(Handled::Done);
    }
    let padding = page >= pager.pages && unit_pages == 1;
    if padding || pager.page_state.discarded.get(usize_from(page)) {
        // Discarded by the application (or padding past the image): reads as zero, locally.
        if local.is_none() {
            *local = Some(Placer::new(pager, Channel::Urgent)?);
        }
        let unit = pager.memory.request_unit();
        let first = page * pager.page / unit * unit;
        if let Some(placer) = local.as_mut() {
            let progress = placer.place(pager, first, None, unit)?;
            if let Some(trace) = &pager.trace {
                for mapped in placer.take_mapped() {
                    trace.arrival(&mapped, pager.page, Resolution::Zero, "local");
                }
            }
            if progress.pages.stopped == Some(Stop::Retry) {
                return Ok(Handled::Deferred);
            }
            pager
                .counters
                .pages_discarded_zeroed
                .fetch_add(progress.pages.placed, Ordering::Relaxed);
        }
        return Ok(Handled::Done);
    }
    pager.request(page);
    Ok(Handled::Done)
}

/// A fault in the registered range but outside the image: the part an `mremap` grew the
/// region by (the kernel keeps the registration on the extension). Without userfaultfd that
/// memory would read as zero, so it does here.
fn zero_outside_image(pager: &Pager, addr: u64) -> Result<Handled, PlacerError> {
    let backing = pager.memory.backing();
    let huge = matches!(backing, Backing::Hugetlb2M | Backing::Hugetlb1G);
    // hugetlbfs has no UFFDIO_ZEROPAGE: a whole huge page of zeros is copied instead.
    let size = if huge { backing.unit() } else { pager.page };
    let at = addr / size * size;
    let zeros;
    let source = if huge {
        zeros = vec![0u8; usize_from(size)];
        uffd_core::Source::Bytes(&zeros)
    } else {
        uffd_core::Source::Zero(size)
    };
    let filled = uffd_core::place::fill(&pager.uffd, at, source, size)?;
    Ok(if filled.stopped == Some(Stop::Retry) {
        Handled::Deferred
    } else {
        Handled::Done
    })
}
