//! Step 4: a background filler racing the faults. EEXIST is the kernel deciding the race.
//!
//! A pager has two ways for a page to arrive: on demand (a fault asked for it) and in the
//! background (everything is streamed in order). Both use UFFDIO_COPY, and a page can be placed
//! only once: whichever COPY comes second fails with EEXIST. That is not an error: the page is
//! there, and the first COPY woke its waiters. No lock between the two paths is needed.
//!
//! Run: `cargo run --release --example 04_race`

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use common::{exit_on_error, join, next_event, read_byte, scope_or_exit, PAGE};
use uffd_core::place::{self, Outcome, Source};
use uffd_core::{Event, Modes, Region, Userfaultfd};

/// Pages in the region (4 MiB).
const PAGES: usize = 1024;

fn main() -> Result<()> {
    let uffd = Userfaultfd::open(0).context("open a userfaultfd (run 01_probe for the fixes)")?;
    let region = Region::anonymous(PAGES * PAGE).context("mmap")?;
    uffd.register(region.addr(), region.len() as u64, Modes::MISSING)
        .context("UFFDIO_REGISTER")?;
    // The "image" both paths place from: page i holds byte i % 251 everywhere.
    let image: Vec<u8> = (0..PAGES * PAGE).map(|b| content(b / PAGE)).collect();
    let page_at = |addr: u64| -> &[u8] {
        let offset = usize::try_from(addr - region.addr()).unwrap_or(0);
        &image[offset..offset + PAGE]
    };

    // Part 1, slowed down: the fault is read, the background places the page, then the
    // handler's COPY comes second.
    scope_or_exit("race, part 1", |s| {
        let toucher = s.spawn(|| read_byte(region.addr()));
        let event = next_event(&uffd)?;
        let Event::Fault { addr, .. } = event else {
            bail!("expected a fault, got {event:?}");
        };
        let background = place::copy(&uffd, addr, page_at(addr), true)?;
        let handler = place::copy(&uffd, addr, page_at(addr), true)?;
        println!("part 1: background COPY {background:?}, then the handler's COPY {handler:?}");
        ensure!(
            handler == Outcome::AlreadyPresent,
            "second COPY was not EEXIST"
        );
        let byte = join(toucher)?;
        ensure!(byte == content(0), "page 0 has the wrong content");
        Ok(())
    });

    // Part 2, at full speed: a workload touches pages from the end, the handler answers its
    // faults, and after 32 faults a background filler places the whole range from the start.
    let (handled, eexist, done) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicBool::new(false),
    );
    let filled = scope_or_exit("race, part 2", |s| {
        s.spawn(|| {
            exit_on_error("handler", || -> Result<()> {
                let (mut buffer, mut events) = (Userfaultfd::event_buffer(16), Vec::new());
                while !done.load(Ordering::Acquire) {
                    if !uffd.wait_readable(Duration::from_millis(10))? {
                        continue;
                    }
                    uffd.read_events(&mut buffer, &mut events)?;
                    for event in events.drain(..) {
                        let Event::Fault { addr, .. } = event else {
                            bail!("unexpected event {event:?}");
                        };
                        match place::copy(&uffd, addr, page_at(addr), true)? {
                            Outcome::Placed(_) => handled.fetch_add(1, Ordering::Relaxed),
                            // The filler won: the page is there and its COPY woke the thread.
                            Outcome::AlreadyPresent => eexist.fetch_add(1, Ordering::Relaxed),
                            other => bail!("COPY at {addr:#x}: {other:?}"),
                        };
                    }
                }
                Ok(())
            })
        });
        let workload = s.spawn(|| {
            (0..PAGES)
                .rev()
                .all(|page| read_byte(region.addr() + (page * PAGE) as u64 + 7) == content(page))
        });
        while handled.load(Ordering::Relaxed) < 32 {
            std::thread::yield_now();
        }
        // `fill` issues one COPY for the rest of the range; the kernel stops it at each page that
        // is already present (EAGAIN with progress, then EEXIST) and `fill` steps over that page.
        let filled = place::fill(&uffd, region.addr(), Source::Bytes(&image), PAGE as u64)?;
        let ok = join(workload)?;
        done.store(true, Ordering::Release);
        ensure!(ok, "the workload read a wrong byte");
        Ok(filled)
    });

    let (handled, eexist) = (handled.into_inner(), eexist.into_inner());
    let by_filler = usize::try_from(filled.placed)?;
    let skipped = usize::try_from(filled.present)?;
    println!("part 2: handler placed {handled} pages, its COPY was EEXIST {eexist} times");
    println!("part 2: filler placed {by_filler} pages; its COPY was EEXIST at {skipped} pages");
    // Every page was placed exactly once, by one path or the other (page 0 in part 1).
    ensure!(
        1 + by_filler + handled == PAGES,
        "pages placed twice or not at all"
    );
    ensure!(
        skipped == 1 + handled,
        "the filler skipped pages nobody else placed"
    );
    // SAFETY: every page is present now (the filler went over the whole range).
    let bytes = unsafe { region.as_slice() };
    ensure!(
        bytes == image.as_slice(),
        "the region differs from the image"
    );
    println!("ok: every page placed once; the loser of each race got EEXIST");
    Ok(())
}

/// What every byte of page `page` of the image holds.
fn content(page: usize) -> u8 {
    u8::try_from(page % 251).expect("a remainder of 251 fits in a byte")
}
