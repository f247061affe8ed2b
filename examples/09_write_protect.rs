//! Step 9: write-protect. Registered with WP, a range can be write-protected with
//! UFFDIO_WRITEPROTECT: reads go on, and a write stops the writer and sends a WP fault, which
//! the handler resolves by removing the protection (after, say, saving the old content: a live
//! snapshot). With UFFD_FEATURE_WP_ASYNC the kernel resolves WP faults itself and only records
//! which pages were written; PAGEMAP_SCAN reads that record and protects the pages again in
//! one call: a dirty-page tracker without any fault message.
//!
//! Run: `cargo run --release --example 09_write_protect`

mod common;

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use common::{join, next_event, page_of, read_byte, scope_or_exit, write_byte, PAGE};
use uffd_core::place::{self, Source};
use uffd_core::sys::feature;
use uffd_core::uffd::FaultKind;
use uffd_core::{Event, Modes, Pagemap, Region, Userfaultfd};

const PAGES: usize = 16;

fn main() -> Result<()> {
    sync_snapshot()?;
    async_dirty_tracking()?;
    println!("ok: a WP fault resolved by the handler; async WP dirty pages found by PAGEMAP_SCAN");
    Ok(())
}

/// Sync write-protect: the handler saves a page's old content before letting the write in.
fn sync_snapshot() -> Result<()> {
    let uffd =
        Userfaultfd::open(feature::PAGEFAULT_FLAG_WP).context("open a userfaultfd with WP")?;
    let region = Region::anonymous(4 * PAGE)?;
    let modes = Modes {
        missing: true,
        write_protect: true,
        minor: false,
    };
    uffd.register(region.addr(), region.len() as u64, modes)?;
    let at = |page: u64| region.addr() + page * PAGE as u64;
    let image: Vec<u8> = (b'a'..=b'd').flat_map(page_of).collect();
    place::fill(&uffd, region.addr(), Source::Bytes(&image), PAGE as u64)?;
    uffd.write_protect(region.addr(), region.len() as u64, true)?;
    ensure!(read_byte(at(2)) == b'c', "page 2 content");
    ensure!(
        !uffd.wait_readable(Duration::from_millis(20))?,
        "a read of a WP page faulted"
    );
    println!("sync: 4 pages write-protected; reading them faults no more");
    let saved = scope_or_exit("sync WP", |s| {
        let writer = s.spawn(|| write_byte(at(1), b'X'));
        let event = next_event(&uffd)?;
        let Event::Fault {
            addr, write, kind, ..
        } = event
        else {
            bail!("expected a fault, got {event:?}");
        };
        println!("sync: fault at {addr:#x}, write {write}, kind {kind:?}");
        ensure!(
            kind == FaultKind::WriteProtect && addr == at(1),
            "expected a WP fault on page 1"
        );
        // The writer is asleep: save the page as it was, then let the write in.
        // SAFETY: page 1 is present and its only writer sleeps until we un-protect it.
        let saved = unsafe { std::slice::from_raw_parts(addr as *const u8, PAGE) }.to_vec();
        uffd.write_protect(addr, PAGE as u64, false)?; // also wakes the writer
        join(writer)?;
        Ok(saved)
    });
    ensure!(
        saved == page_of(b'b'),
        "the snapshot of page 1 is not its old content"
    );
    ensure!(read_byte(at(1)) == b'X', "the write to page 1 was lost");
    println!("sync: saved page 1 ('b'), un-protected it, the write of 'X' went through");
    Ok(())
}

/// Async write-protect: no messages, the kernel keeps the dirty record; PAGEMAP_SCAN reads
/// and re-arms it.
fn async_dirty_tracking() -> Result<()> {
    let features = feature::PAGEFAULT_FLAG_WP | feature::WP_ASYNC | feature::WP_UNPOPULATED;
    let uffd = Userfaultfd::open(features).context("open a userfaultfd with WP_ASYNC")?;
    let region = Region::anonymous(PAGES * PAGE)?;
    let modes = Modes {
        missing: false,
        write_protect: true,
        minor: false,
    };
    uffd.register(region.addr(), region.len() as u64, modes)?;
    let at = |page: usize| region.addr() + (page * PAGE) as u64;
    uffd.write_protect(region.addr(), region.len() as u64, true)?;
    // PAGEMAP_SCAN with PM_SCAN_WP_MATCHING: report the written pages, protect them again.
    let pagemap = Pagemap::open()?;
    let scan = || written_pages(&pagemap, region.addr(), PAGES);

    for page in [3, 7, 11] {
        write_byte(at(page), 1); // resolved by the kernel: no message, no sleep
    }
    let dirty = scan()?;
    println!("async: wrote pages 3, 7, 11; PAGEMAP_SCAN reports written {dirty:?}");
    ensure!(dirty == [3, 7, 11], "expected pages 3, 7, 11");
    ensure!(
        scan()?.is_empty(),
        "the scan did not protect the pages again"
    );
    write_byte(at(5), 2);
    let dirty = scan()?;
    println!("async: the scan re-protected them; after a write to page 5: {dirty:?}");
    ensure!(dirty == [5], "expected page 5 only");
    ensure!(
        !uffd.wait_readable(Duration::ZERO)?,
        "async WP queued a message"
    );
    Ok(())
}

/// The pages of `start..` written since the last scan, write-protecting them again.
fn written_pages(pagemap: &Pagemap, start: u64, pages: usize) -> Result<Vec<usize>> {
    let runs = pagemap.take_written(start, (pages * PAGE) as u64)?;
    let written = runs
        .iter()
        .flat_map(|&(run, len)| (run..run + len).step_by(PAGE))
        .map(|addr| usize::try_from(addr - start).map(|offset| offset / PAGE))
        .collect::<Result<_, _>>()?;
    Ok(written)
}
