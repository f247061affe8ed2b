//! Step 2: the minimal fault handler, the userfaultfd(2) man-page example in Rust.
//!
//! The main thread maps four pages, registers them for MISSING faults and touches each one.
//! Every first touch puts the main thread to sleep in the kernel and queues a message on the
//! userfaultfd; the handler thread reads it, fills the page with UFFDIO_COPY (which also wakes
//! the sleeping thread), and the touch returns with the handler's content.
//!
//! Run: `cargo run --release --example 02_minimal_handler`

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use common::{exit_on_error, join, page_of, read_byte, PAGE};
use uffd_core::place::{self, Outcome};
use uffd_core::{Event, Modes, Region, Userfaultfd};

const PAGES: usize = 4;

fn main() -> Result<()> {
    // 1. A userfaultfd with no extra features, and a region of private anonymous memory.
    let uffd = Userfaultfd::open(0).context("open a userfaultfd (run 01_probe for the fixes)")?;
    let region = Region::anonymous(PAGES * PAGE).context("mmap the region")?;
    // 2. UFFDIO_REGISTER: faults on missing pages of the range now go to `uffd`. The answer is
    //    the set of ioctls allowed on this range (COPY, ZEROPAGE, WAKE, ...).
    let ioctls = uffd
        .register(region.addr(), region.len() as u64, Modes::MISSING)
        .context("UFFDIO_REGISTER")?;
    println!(
        "registered {} pages at {:#x}, ioctls {ioctls:#x}",
        PAGES,
        region.addr()
    );

    let faults = AtomicUsize::new(0);
    std::thread::scope(|s| -> Result<()> {
        // 3. The handler: wait for a message, read it, resolve the fault.
        let handler = s.spawn(|| {
            exit_on_error("handler", || -> Result<()> {
                let mut buffer = Userfaultfd::event_buffer(1);
                let mut events = Vec::new();
                while faults.load(Ordering::Relaxed) < PAGES {
                    // The descriptor is O_NONBLOCK, so poll(2) is how a handler waits.
                    if !uffd.wait_readable(Duration::from_secs(5))? {
                        bail!("no fault message within 5 s");
                    }
                    uffd.read_events(&mut buffer, &mut events)?;
                    for event in events.drain(..) {
                        let Event::Fault { addr, write, .. } = event else {
                            bail!("unexpected event {event:?}");
                        };
                        let n = faults.fetch_add(1, Ordering::Relaxed);
                        // The man page's content: 'A' for the first fault, 'B' for the second...
                        let content = page_of(b'A' + u8::try_from(n)?);
                        // 4. UFFDIO_COPY allocates the page, copies into it, maps it, and wakes
                        //    the threads waiting on it. The address is page-aligned already.
                        let outcome = place::copy(&uffd, addr, &content, true)?;
                        println!(
                        "handler: fault #{} at {addr:#x} ({}) -> UFFDIO_COPY of '{}': {outcome:?}",
                        n + 1,
                        if write { "write" } else { "read" },
                        char::from(content[0]),
                    );
                        ensure!(outcome == Outcome::Placed(PAGE as u64), "COPY: {outcome:?}");
                    }
                }
                Ok(())
            })
        });
        // 5. The "application": touch each page; each first touch sleeps until the handler is done.
        for page in 0..PAGES {
            let addr = region.addr() + (page * PAGE) as u64;
            let byte = read_byte(addr + 123);
            println!("main: page {page} reads '{}'", char::from(byte));
            ensure!(
                byte == b'A' + u8::try_from(page)?,
                "page {page} has the wrong content"
            );
        }
        join(handler)?;
        Ok(())
    })?;

    // A second touch finds the page mapped: no fault, no message.
    let again = read_byte(region.addr());
    ensure!(again == b'A', "page 0 changed");
    ensure!(
        !uffd.wait_readable(Duration::from_millis(20))?,
        "a touch of a present page queued a message"
    );
    println!("ok: {PAGES} faults, each resolved by UFFDIO_COPY; touching again faults no more");
    Ok(())
}
