//! Step 3: zero pages, placing without waking (DONTWAKE) then one UFFDIO_WAKE, and reading
//! several fault messages with one read(2).
//!
//! - UFFDIO_ZEROPAGE maps the shared zero page: the cheapest answer for a page known to be
//!   zero. A later write is an ordinary copy-on-write fault the kernel handles alone.
//! - Every placement ioctl takes a DONTWAKE mode: place many pages, then wake every waiter of
//!   a range with one UFFDIO_WAKE.
//! - One read(2) returns as many queued messages as the buffer holds.
//!
//! Run: `cargo run --release --example 03_zero_wake_batch`

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use common::{
    exit_on_error, join, next_event, page_of, read_byte, scope_or_exit, write_byte, PAGE,
};
use uffd_core::place::{self, Outcome};
use uffd_core::{Event, Modes, Region, Userfaultfd};

/// Threads that fault at the same time in part 2.
const THREADS: usize = 8;

fn main() -> Result<()> {
    let uffd = Userfaultfd::open(0).context("open a userfaultfd (run 01_probe for the fixes)")?;
    let region = Region::anonymous((1 + THREADS) * PAGE).context("mmap")?;
    uffd.register(region.addr(), region.len() as u64, Modes::MISSING)
        .context("UFFDIO_REGISTER")?;
    let mut buffer = Userfaultfd::event_buffer(2 * THREADS);
    let mut events = Vec::new();

    // Part 1: a read fault on page 0, answered with the zero page.
    scope_or_exit("zero page", |s| {
        let reader = s.spawn(|| read_byte(region.addr() + 42));
        let event = next_event(&uffd)?;
        let Event::Fault { addr, .. } = event else {
            bail!("expected one fault, got {event:?}");
        };
        let outcome = place::zeropage(&uffd, addr, PAGE as u64, true)?;
        println!("zero: fault at {addr:#x} -> UFFDIO_ZEROPAGE: {outcome:?}");
        let byte = join(reader)?;
        ensure!(byte == 0, "page 0 reads {byte}, not 0");
        Ok(())
    });
    // Writing the zero page is copy-on-write inside the kernel: no message for the handler.
    write_byte(region.addr(), 7);
    ensure!(read_byte(region.addr()) == 7, "write to page 0 lost");
    ensure!(
        !uffd.wait_readable(Duration::from_millis(20))?,
        "a write to a zero page queued a message"
    );
    println!("zero: page 0 reads 0; a write to it then faulted no more (kernel copy-on-write)");

    // Part 2: THREADS threads fault at once; the handler reads them in batches, places every
    // page with DONTWAKE, checks that nobody woke, then wakes them all with one UFFDIO_WAKE.
    let finished = AtomicUsize::new(0);
    let first = region.addr() + PAGE as u64;
    scope_or_exit("wake", |s| {
        let threads: Vec<_> = (0..THREADS)
            .map(|i| {
                let finished = &finished;
                s.spawn(move || {
                    let byte = read_byte(first + (i * PAGE) as u64);
                    finished.fetch_add(1, Ordering::SeqCst);
                    byte
                })
            })
            .collect();
        exit_on_error("handler", || -> Result<()> {
            let (mut faults, mut reads, mut largest) = (Vec::new(), 0, 0);
            while faults.len() < THREADS {
                ensure!(
                    uffd.wait_readable(Duration::from_secs(5))?,
                    "faults missing"
                );
                // Let the other threads' faults queue up behind the first one.
                std::thread::sleep(Duration::from_millis(50));
                uffd.read_events(&mut buffer, &mut events)?;
                reads += 1;
                largest = largest.max(events.len());
                println!("batch: read(2) #{reads} returned {} messages", events.len());
                for event in events.drain(..) {
                    let Event::Fault { addr, .. } = event else {
                        bail!("unexpected event {event:?}");
                    };
                    faults.push(addr);
                }
            }
            ensure!(largest > 1, "every read(2) returned one message");
            for &addr in &faults {
                let content = page_of(page_index(first, addr)?);
                // DONTWAKE: the page is mapped, but its waiter keeps sleeping.
                let outcome = place::copy(&uffd, addr, &content, false)?;
                ensure!(outcome == Outcome::Placed(PAGE as u64), "COPY: {outcome:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
            let awake = finished.load(Ordering::SeqCst);
            println!(
                "wake: {THREADS} pages placed with DONTWAKE; threads finished so far: {awake}"
            );
            ensure!(awake == 0, "{awake} threads woke without UFFDIO_WAKE");
            uffd.wake(first, (THREADS * PAGE) as u64)?;
            println!("wake: one UFFDIO_WAKE over {THREADS} pages");
            Ok(())
        });
        for (i, thread) in threads.into_iter().enumerate() {
            let byte = join(thread)?;
            ensure!(byte == u8::try_from(i)?, "thread {i} read {byte}");
        }
        Ok(())
    });
    ensure!(
        finished.load(Ordering::SeqCst) == THREADS,
        "not every thread finished"
    );
    println!("ok: zero page placed, {THREADS} faults read in batches, all woken by one WAKE");
    Ok(())
}

/// The content of a part-2 page: its index after `first`.
fn page_index(first: u64, addr: u64) -> Result<u8> {
    Ok(u8::try_from((addr - first) / PAGE as u64)?)
}
