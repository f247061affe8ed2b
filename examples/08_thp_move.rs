//! Step 8: transparent huge pages. UFFDIO_COPY always installs 4 KiB pages; UFFDIO_MOVE of a
//! PMD-mapped THP into an empty, 2 MiB-aligned destination moves the huge page whole. A range
//! filled by 4 KiB pages becomes one huge page with MADV_COLLAPSE, but only once all 512 pages
//! are present and none is the shared zero page.
//!
//! Run: `cargo run --release --example 08_thp_move`

mod common;

use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use common::{page_of, write_byte, PAGE};
use nix::errno::Errno;
use nix::sys::mman::MmapAdvise;
use uffd_core::place::{self, Outcome};
use uffd_core::region::{advise_range, Advice, HUGE_2M};
use uffd_core::sys::feature;
use uffd_core::{Modes, Pagemap, Region, Userfaultfd};

const HUGE: u64 = HUGE_2M as u64;

fn main() -> Result<()> {
    let thp = uffd_core::probe::thp_mode("enabled").unwrap_or_else(|| "absent".into());
    if thp == "never" || thp == "absent" {
        bail!("THP is {thp}; fix: `echo madvise > /sys/kernel/mm/transparent_hugepage/enabled`");
    }
    let uffd =
        Userfaultfd::open(feature::MOVE).context("open a userfaultfd with MOVE (Linux 6.8)")?;
    let pagemap = Pagemap::open()?;
    // Three 2 MiB units, registered. Not MADV_HUGEPAGE: see hugepage/src/thp.rs for why.
    let dst = Region::anonymous_aligned(3 * HUGE_2M, HUGE_2M).context("mmap")?;
    uffd.register(dst.addr(), dst.len() as u64, Modes::MISSING)?;
    let unit = |u: u64| dst.addr() + u * HUGE;

    // 1. MOVE: a THP assembled in a staging range moves in whole.
    let staging = Region::thp(HUGE_2M).context("mmap the staging range")?;
    staging.advise(
        0,
        HUGE_2M,
        MmapAdvise::MADV_POPULATE_WRITE,
        "MADV_POPULATE_WRITE",
    )?;
    // A page fault gets a THP only if one is free at once; MADV_COLLAPSE (the fallback
    // hugepage/src/thp.rs uses too) compacts memory to find one.
    if !pagemap.is_huge(staging.addr(), HUGE)? {
        collapse(staging.addr()).context("no THP for the staging range, even by MADV_COLLAPSE")?;
    }
    ensure!(
        pagemap.is_huge(staging.addr(), HUGE)?,
        "the kernel gave no THP for the staging range (memory fragmented?); fix: \
         `echo 1 > /proc/sys/vm/compact_memory`, then run again"
    );
    let image = pattern();
    // SAFETY: `staging` is 2 MiB of our own mapping; nothing else references it.
    unsafe { std::ptr::copy_nonoverlapping(image.as_ptr(), staging.as_ptr(), HUGE_2M) };
    let started = Instant::now();
    // SAFETY: no reference points into `staging`; it is private anonymous memory of ours.
    let moved = unsafe { place::move_(&uffd, unit(0), staging.addr(), HUGE, true)? };
    let took = started.elapsed();
    println!("move: UFFDIO_MOVE of a THP -> {moved:?} in {took:?}");
    ensure!(moved == Outcome::Placed(HUGE), "MOVE: {moved:?}");
    ensure!(
        pagemap.is_huge(unit(0), HUGE)?,
        "unit 0 is not mapped huge after the MOVE"
    );
    ensure!(
        pagemap.huge_bytes(staging.addr(), HUGE)? == 0,
        "the staging range still holds it"
    );
    ensure!(content(unit(0)) == image, "unit 0 content differs");
    println!("move: unit 0 is one PMD-mapped huge page; the staging range is a hole now");

    // 2. COPY installs 512 base pages; MADV_COLLAPSE makes them one huge page.
    ensure!(
        place::copy(&uffd, unit(1), &image, true)? == Outcome::Placed(HUGE),
        "COPY failed"
    );
    let huge = pagemap.is_huge(unit(1), HUGE)?;
    println!("copy: 2 MiB UFFDIO_COPY -> mapped huge: {huge}");
    ensure!(!huge, "a COPY produced a huge page");
    collapse(unit(1)).context("MADV_COLLAPSE of a complete unit")?;
    ensure!(
        pagemap.is_huge(unit(1), HUGE)?,
        "unit 1 is not huge after MADV_COLLAPSE"
    );
    ensure!(
        content(unit(1)) == image,
        "unit 1 content changed in the collapse"
    );
    println!("copy: MADV_COLLAPSE -> ok, unit 1 is mapped huge");

    // 3. What MADV_COLLAPSE needs in a registered range: every PTE present, none the zero page.
    let hole = 100 * PAGE;
    place::copy(&uffd, unit(2), &image[..hole], true)?;
    place::copy(
        &uffd,
        unit(2) + (hole + PAGE) as u64,
        &image[hole + PAGE..],
        true,
    )?;
    let missing = collapse(unit(2));
    println!("collapse: one page missing -> {missing:?}");
    ensure!(missing.is_err(), "collapsed a unit with a missing page");
    place::zeropage(&uffd, unit(2) + hole as u64, PAGE as u64, true)?;
    let zero = collapse(unit(2));
    println!("collapse: one zero page -> {zero:?}");
    ensure!(zero.is_err(), "collapsed a unit holding the zero page");
    // A write replaces the zero page with a page of its own (copy-on-write, no userfault).
    write_byte(unit(2) + hole as u64, image[hole]);
    collapse(unit(2)).context("MADV_COLLAPSE once every page is a real page")?;
    ensure!(
        pagemap.is_huge(unit(2), HUGE)?,
        "unit 2 is not huge after MADV_COLLAPSE"
    );
    println!("collapse: after a write over the zero page -> ok, unit 2 is mapped huge");
    println!("ok: a THP moved in whole; 4 KiB pages collapsed once complete and real");
    Ok(())
}

/// 2 MiB of content: page p holds byte p % 255 + 1, never 0, so that no page of it could pass
/// for the zero page.
fn pattern() -> Vec<u8> {
    (1..=u8::MAX)
        .cycle()
        .take(HUGE_2M / PAGE)
        .flat_map(page_of)
        .collect()
}

/// The 2 MiB at `addr`, copied out.
fn content(addr: u64) -> Vec<u8> {
    // SAFETY: every unit read here is fully present and nothing writes it meanwhile.
    unsafe { std::slice::from_raw_parts(addr as *const u8, HUGE_2M) }.to_vec()
}

/// `madvise(MADV_COLLAPSE)` over one unit, with the kernel's answer as an errno to print.
fn collapse(addr: u64) -> Result<(), Errno> {
    advise_range(addr, HUGE, Advice::Collapse).map_err(|err| err.errno)
}
