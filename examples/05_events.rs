//! Step 5: the non-cooperative events: fork, MADV_DONTNEED, mremap, munmap.
//!
//! A handler that serves memory it does not control (a VM, a process it tracks) asks
//! UFFDIO_API for event features and then learns about changes to the registered ranges:
//! FORK (with a new userfaultfd for the child), REMOVE, REMAP and UNMAP. The thread that caused
//! an event sleeps until the handler reads it, and while it is unread every placement ioctl
//! fails with EAGAIN: read events before retrying a placement, or you livelock.
//!
//! Run: `cargo run --release --example 05_events`

mod common;

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use common::{in_child, join, next_event, page_of, read_byte, scope_or_exit, Ended, PAGE};
use nix::sys::mman::MmapAdvise;
use uffd_core::place::{self, Outcome, Source};
use uffd_core::sys::feature;
use uffd_core::{Event, Modes, Region, Userfaultfd};

const PAGES: usize = 8;

fn main() -> Result<()> {
    let features =
        feature::EVENT_FORK | feature::EVENT_REMAP | feature::EVENT_REMOVE | feature::EVENT_UNMAP;
    let uffd = Userfaultfd::open(features).context("open a userfaultfd with event features")?;
    let region = Region::anonymous(PAGES * PAGE).context("mmap")?;
    let (base, page) = (region.addr(), PAGE as u64);
    let at = |i: u64| base + i * page;
    uffd.register(base, region.len() as u64, Modes::MISSING)
        .context("UFFDIO_REGISTER")?;
    // Pages 0..6 present (page i holds byte i); pages 6 and 7 missing.
    let image: Vec<u8> = (0..6).flat_map(page_of).collect();
    place::fill(&uffd, base, Source::Bytes(&image), page)?;

    // FORK: fork() itself waits until the event is read. The child's registered ranges report
    // to a new userfaultfd that comes with the event; the child faults on page 6, still missing.
    scope_or_exit("fork", |s| {
        let forker = s.spawn(|| in_child(|| i32::from(read_byte(at(6)) != b'C')));
        let event = next_event(&uffd)?;
        let Event::Fork { child } = event else {
            bail!("expected FORK, got {event:?}");
        };
        println!("fork: FORK event, child userfaultfd {}", child.raw_fd());
        let event = next_event(&child)?;
        let Event::Fault { addr, .. } = event else {
            bail!("expected the child's fault, got {event:?}");
        };
        ensure!(addr == at(6), "the child faulted at {addr:#x}");
        let outcome = place::copy(&child, addr, &page_of(b'C'), true)?;
        println!("fork: child faulted on page 6 -> COPY 'C' through its descriptor: {outcome:?}");
        let ended = join(forker)??;
        ensure!(
            ended == Ended::Exited(0),
            "the child did not read 'C': {ended:?}"
        );
        // The child is gone: no end-of-file on its descriptor, but ioctls answer ESRCH.
        let after = place::copy(&child, at(7), &page_of(0), true)?;
        println!("fork: child exited 0; a COPY through its descriptor now: {after:?}");
        ensure!(
            after == Outcome::Gone,
            "expected ESRCH after the child exited"
        );
        Ok(())
    });
    ensure!(
        !uffd.wait_readable(Duration::ZERO)?,
        "the child's fault reached the parent"
    );

    // REMOVE: MADV_DONTNEED of pages 0..2. While the event is unread, a COPY is EAGAIN.
    let removed = events_of(
        &uffd,
        || {
            region
                .advise(0, 2 * PAGE, MmapAdvise::MADV_DONTNEED, "MADV_DONTNEED")
                .map_err(Into::into)
        },
        || {
            let outcome = place::copy(&uffd, at(7), &page_of(7), true)?;
            println!("remove: COPY of page 7 while the event is unread: {outcome:?}");
            ensure!(outcome == Outcome::Retry, "expected EAGAIN (Retry)");
            Ok(())
        },
    )?;
    ensure!(
        matches!(removed[..], [Event::Remove { start, end }] if start == at(0) && end == at(2)),
        "expected REMOVE of pages 0..2, got {removed:?}"
    );
    println!("remove: {}", show(&removed[0]));
    // Pages 0 and 1 are missing again: a COPY places them (the next touch would fault).
    let outcome = place::copy(&uffd, at(0), &page_of(9), true)?;
    ensure!(
        outcome == Outcome::Placed(page),
        "page 0 was not missing: {outcome:?}"
    );
    println!("remove: page 0 is missing again: COPY {outcome:?}");

    // REMAP: mremap pages 2..4 onto another mapping. They keep their content and their
    // registration; the handler must place their faults at the new address from now on.
    let moved_to = Region::anonymous(2 * PAGE).context("mmap the destination")?;
    let to = moved_to.addr();
    let remapped = events_of(&uffd, || remap(at(2), 2 * PAGE, to), || Ok(()))?;
    for event in &remapped {
        println!("remap: {}", show(event));
    }
    ensure!(
        matches!(remapped.first(), Some(Event::Remap { from, to: t, len }) if *from == at(2) && *t == to && *len == 2 * page),
        "expected REMAP of pages 2..4, got {remapped:?}"
    );
    ensure!(
        read_byte(to + page) == 3,
        "page 3 lost its content in the move"
    );

    // UNMAP: munmap of pages 4..6.
    let unmapped = events_of(&uffd, || unmap(at(4), 2 * PAGE), || Ok(()))?;
    ensure!(
        matches!(unmapped[..], [Event::Unmap { start, end }] if start == at(4) && end == at(6)),
        "expected UNMAP of pages 4..6, got {unmapped:?}"
    );
    println!("unmap: {}", show(&unmapped[0]));

    // Close the descriptor before the mappings go: an munmap of a registered range would wait
    // for its UNMAP event to be read, and nobody would read it.
    drop(uffd);
    drop(moved_to);
    drop(region);
    println!("ok: FORK, REMOVE (with EAGAIN while unread), REMAP and UNMAP all seen");
    Ok(())
}

/// Runs `action` on another thread (it sleeps in the kernel until its event is read), calls
/// `while_unread` once an event is queued, then reads events until the action has returned.
fn events_of(
    uffd: &Userfaultfd,
    action: impl FnOnce() -> Result<()> + Send,
    while_unread: impl FnOnce() -> Result<()>,
) -> Result<Vec<Event>> {
    Ok(scope_or_exit("event", |s| {
        let thread = s.spawn(action);
        ensure!(
            uffd.wait_readable(Duration::from_secs(5))?,
            "no event within 5 s"
        );
        while_unread()?;
        let (mut buffer, mut events) = (Userfaultfd::event_buffer(8), Vec::new());
        loop {
            if uffd.wait_readable(Duration::from_millis(20))? {
                uffd.read_events(&mut buffer, &mut events)?;
            } else if thread.is_finished() {
                break;
            }
        }
        join(thread)??;
        Ok(events)
    }))
}

/// `mremap(from, len) -> to`, replacing the mapping at `to`.
fn remap(from: u64, len: usize, to: u64) -> Result<()> {
    let flags = libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED;
    // SAFETY: both ranges belong to this example's own mappings, and nothing holds a
    // reference into either: the pages are only touched through raw addresses.
    let ret = unsafe { libc::mremap(from as *mut _, len, len, flags, to as *mut libc::c_void) };
    ensure!(
        ret != libc::MAP_FAILED,
        "mremap: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// `munmap(start, len)`.
fn unmap(start: u64, len: usize) -> Result<()> {
    // SAFETY: the range is part of this example's region, never referenced by a Rust object;
    // the region's own munmap later covers it again, which is harmless for an unmapped range.
    let ret = unsafe { libc::munmap(start as *mut libc::c_void, len) };
    ensure!(ret == 0, "munmap: {}", std::io::Error::last_os_error());
    Ok(())
}

/// An event with its addresses in hex.
fn show(event: &Event) -> String {
    match event {
        Event::Remove { start, end } => format!("REMOVE {start:#x}..{end:#x}"),
        Event::Unmap { start, end } => format!("UNMAP {start:#x}..{end:#x}"),
        Event::Remap { from, to, len } => format!("REMAP {len} bytes {from:#x} -> {to:#x}"),
        other => format!("{other:?}"),
    }
}
