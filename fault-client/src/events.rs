//! Non-cooperative events: what the application does to the region behind the pager's back.
//!
//! | event  | cause                         | what the pager does                                 |
//! |--------|-------------------------------|-----------------------------------------------------|
//! | REMOVE | `madvise(MADV_DONTNEED)`      | the pages are *discarded*: a later touch reads zero  |
//! | UNMAP  | `munmap`, or the old range of an `mremap` | the pages are *gone*: never placed again |
//! | REMAP  | `mremap` moved part of the region | later placements there go to the new address     |
//! | FORK   | `fork(2)`                     | a child handler serves the child's faults           |
//!
//! **Moves, per backing** (the map of where each page is now: `hugepage::Memory::add_move`,
//! `page_addr`; tested in `tests/events.rs`):
//!
//! | backing | what the kernel allows | later placements |
//! |---------|------------------------|------------------|
//! | anon    | any page-aligned range and destination | COPY / ZEROPAGE of each page at its address |
//! | thp     | the same                | a unit still contiguous and 2 MiB-aligned: as one THP (MOVE of the staging page, or COPY runs + collapse); a unit cut by the move or moved to an address not 2 MiB-aligned: COPY of 4 KiB pieces to where each page is, counted not huge; urgent 4 KiB pages at their address |
//! | hugetlb-2m/1g | only huge-page-aligned addresses (EINVAL otherwise; the length is rounded up to whole huge pages, and so is the REMAP event's) | COPY or CONTINUE of the whole huge page at its new address; the continue way still writes the alias at the unit's page-cache offset, which a move does not change |
//!
//! **Discard semantics.** `MADV_DONTNEED` on private anonymous memory means "I no longer need
//! this content": without userfaultfd the next touch reads zeros. The pager keeps that meaning:
//! a discarded page is never fetched again; a fault on it is resolved locally with a zero page,
//! and page data that was already on its way for it is placed as zeros. (This is what QEMU
//! postcopy does for pages the guest's balloon discarded, and what CRIU lazy-pages does on
//! REMOVE.) One limit: in the huge-page backings, data already gathered in an assembler's
//! staging page when the discard happens is placed as it was.
//!
//! **Why a lock.** While an event is unread, every placement ioctl fails with EAGAIN and the
//! thread that caused it sleeps in the kernel until the event is read. The fault handler reads
//! events under the write side of [`PageState::events_lock`](crate::pages::PageState); receivers hold
//! the read side from "is this page discarded?" to the placement ioctl. So no placement can
//! slip in between the kernel's discard and the pager learning about it. The read side covers
//! the placement and nothing slower: the handler needs the write side to read *any* message,
//! faults included, so every millisecond a receiver holds the read side is a millisecond
//! added to the faults that arrive meanwhile. (Populating the next THP staging page, which
//! can take milliseconds, happens outside it: [`crate::placer::Placer::prepare_ahead`].)

use std::sync::Arc;

use uffd_core::{Event, Userfaultfd};

use crate::fatal::EventError;
use crate::pager::Pager;
use uffd_core::convert::usize_from;

/// A moved range: `len` bytes that were at `from` are now at `to`.
pub use hugepage::Move;

/// Applies one non-fault event. Called by the fault handler with the events lock held for
/// writing. Returns an error for what the pager cannot honour.
pub fn apply(pager: &Arc<Pager>, event: Event) -> Result<(), EventError> {
    match event {
        Event::Fault { .. } => Ok(()),
        Event::Remove { start, end } => {
            pager
                .counters
                .events_remove
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            for page in pager.pages_in(start, end) {
                pager.page_state.received.clear(usize_from(page));
                pager.page_state.discarded.set(usize_from(page));
            }
            Ok(())
        }
        Event::Unmap { start, end } => {
            pager
                .counters
                .events_unmap
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            for page in pager.pages_in(start, end) {
                pager.page_state.gone.set(usize_from(page));
            }
            pager.run.notify();
            Ok(())
        }
        Event::Remap { from, to, len } => {
            pager
                .counters
                .events_remap
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Every later placement (direct, or of a whole unit by an assembler) asks the
            // memory where its pages are now.
            pager.memory.add_move(Move { from, to, len });
            Ok(())
        }
        Event::Fork { child } => {
            pager
                .counters
                .events_fork
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let p = Arc::clone(pager);
            std::thread::Builder::new()
                .name("child-handler".into())
                .spawn(move || serve_child(&p, child))
                .map(drop)
                .map_err(EventError::SpawnChildHandler)
        }
    }
}

/// Serves the faults of a forked child. At fork time the child shares every present page
/// with the parent; it faults only on pages that were still missing. Each is resolved with
/// the parent's copy once that has arrived (fetched on demand if needed), which is the
/// image's content as long as the parent has not written the page since it arrived.
fn serve_child(pager: &Pager, child: Userfaultfd) {
    let mut buffer = Userfaultfd::event_buffer(16);
    let mut events = Vec::new();
    let unit = if pager.memory.backing().hugetlb_size().is_some() {
        pager.memory.unit()
    } else {
        pager.page
    };
    while !pager.run.stopping() {
        match child.wait_readable(std::time::Duration::from_millis(100)) {
            Ok(true) => {}
            // Quiet: stop serving once the child has exited (this thread and the child's
            // descriptor would otherwise live until the run ends).
            Ok(false) if child.owner_exited(pager.memory.addr()) => return,
            Ok(false) => continue,
            Err(_) => return,
        }
        events.clear();
        if child.read_events(&mut buffer, &mut events).is_err() {
            return;
        }
        for event in events.drain(..) {
            // The child's own non-fault events only need to be read (it sleeps until then).
            let Event::Fault { addr, .. } = event else {
                continue;
            };
            let start = addr / unit * unit;
            let Some(first) = pager.image_page(start) else {
                continue;
            };
            let pages = unit / pager.page;
            let wanted = first..(first + pages).min(pager.pages);
            for page in wanted.clone() {
                pager.request(page);
            }
            let ready = pager.run.wait_until(|| {
                wanted
                    .clone()
                    .all(|p| pager.page_state.received.get(usize_from(p)))
            });
            if ready.is_err() {
                return;
            }
            // SAFETY: the parent's pages are present (checked above) and the pager never
            // unmaps them while it runs; nothing writes them during the copy.
            let bytes = unsafe {
                std::slice::from_raw_parts(pager.page_addr(first) as *const u8, usize_from(unit))
            };
            match uffd_core::place::copy(&child, start, bytes, true) {
                Ok(uffd_core::Outcome::Gone) => return, // the child exited
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!("cannot resolve a fault of the forked child: {err}");
                    return;
                }
            }
        }
    }
}
