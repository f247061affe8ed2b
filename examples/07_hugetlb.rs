//! Step 7: hugetlbfs. A fault in a huge page is resolved for the whole huge page at once:
//! by one huge-page-sized UFFDIO_COPY, or by UFFDIO_CONTINUE after the content was written
//! through a second mapping of the same file (a MINOR fault).
//!
//! Needs two 2 MiB pages in the hugetlb pool. As root the example reserves what is missing
//! and gives it back at the end; otherwise it prints the command that reserves them.
//!
//! Run: `cargo run --release --example 07_hugetlb`

mod common;

use anyhow::{bail, ensure, Context, Result};
use common::{join, next_event, page_of, read_byte, scope_or_exit, PAGE};
use hugepage::pool;
use uffd_core::place::{self, Outcome};
use uffd_core::probe::names;
use uffd_core::region::{Memfd, HUGE_2M};
use uffd_core::sys::{feature, ioctl_bit};
use uffd_core::uffd::FaultKind;
use uffd_core::{Event, Modes, Region, Userfaultfd};

fn main() -> Result<()> {
    // One huge page for part 1, one for the memfd of part 2.
    let raised = pool::ensure_available(HUGE_2M as u64, 2, pool::is_root())
        .context("this example needs two free 2 MiB huge pages")?;
    if let Some(raised) = &raised {
        println!(
            "pool: grown from {} to {} pages for this run",
            raised.from, raised.to
        );
    }
    let result = copy_whole_page().and_then(|()| minor_fault_and_continue());
    if let Some(raised) = raised {
        let now = raised.restore().context("giving the huge pages back")?;
        println!("pool: given back, {} pages now", now.total);
    }
    result?;
    println!("ok: a 2 MiB page placed by one COPY, another mapped by CONTINUE after a MINOR fault");
    Ok(())
}

/// The image content: every 4 KiB page holds its index within the huge page, modulo 256 (the
/// 512 pages count through the bytes twice).
fn pattern() -> Vec<u8> {
    (0..=u8::MAX)
        .cycle()
        .take(HUGE_2M / PAGE)
        .flat_map(page_of)
        .collect()
}

/// Part 1: a MISSING fault in a private hugetlb mapping, resolved by one 2 MiB UFFDIO_COPY.
fn copy_whole_page() -> Result<()> {
    let uffd = Userfaultfd::open(feature::MISSING_HUGETLBFS).context("open a userfaultfd")?;
    let region = Region::hugetlb(HUGE_2M, HUGE_2M).context("mmap one 2 MiB hugetlb page")?;
    let ioctls = uffd.register(region.addr(), HUGE_2M as u64, Modes::MISSING)?;
    println!(
        "copy: hugetlb range ioctls: {}",
        names(ioctls, &ioctl_bit::NAMES).join(" ")
    );
    ensure!(
        ioctls & ioctl_bit::ZEROPAGE == 0,
        "hugetlbfs offered ZEROPAGE"
    );
    let image = pattern();
    scope_or_exit("copy", |s| {
        // Touch page 300 of the huge page (1.2 MiB in).
        let toucher = s.spawn(|| read_byte(region.addr() + 300 * PAGE as u64));
        let addr = next_fault(&uffd)?.0;
        // Faults in hugetlb memory are reported at the start of the huge page.
        println!(
            "copy: fault at {addr:#x} (huge page starts at {:#x})",
            region.addr()
        );
        // A 4 KiB COPY is refused: dst and len must be aligned to the huge page size.
        let small = place::copy(&uffd, addr, &image[..PAGE], true);
        let shown = small.map_or_else(|e| e.to_string(), |o| format!("{o:?}"));
        println!("copy: 4 KiB UFFDIO_COPY -> {shown}");
        ensure!(
            matches!(small, Err(e) if e.errno == nix::errno::Errno::EINVAL),
            "expected EINVAL"
        );
        let whole = place::copy(&uffd, region.addr(), &image, true)?;
        println!("copy: 2 MiB UFFDIO_COPY -> {whole:?}");
        ensure!(
            whole == Outcome::Placed(HUGE_2M as u64),
            "2 MiB COPY: {whole:?}"
        );
        let byte = join(toucher)?;
        ensure!(usize::from(byte) == 300 % 256, "page 300 reads {byte}");
        Ok(())
    });
    // SAFETY: the whole huge page is mapped now, and nothing writes it.
    let mapped = unsafe { region.as_slice() };
    ensure!(mapped == image.as_slice(), "content differs");
    Ok(())
}

/// Part 2: a hugetlb memfd mapped twice. The registered mapping takes MINOR faults; the
/// content is written through the other one (the alias) and UFFDIO_CONTINUE maps it.
fn minor_fault_and_continue() -> Result<()> {
    let uffd = Userfaultfd::open(feature::MISSING_HUGETLBFS | feature::MINOR_HUGETLBFS)
        .context("open a userfaultfd with MINOR_HUGETLBFS")?;
    let memfd = Memfd::new("uffd-lab-tutorial", HUGE_2M, Some(HUGE_2M)).context("memfd")?;
    let registered = Region::shared(&memfd, HUGE_2M).context("map the memfd")?;
    let alias = Region::shared(&memfd, HUGE_2M).context("map the memfd again")?;
    let modes = Modes {
        missing: true,
        minor: true,
        write_protect: false,
    };
    let ioctls = uffd.register(registered.addr(), HUGE_2M as u64, modes)?;
    println!(
        "minor: ioctls: {}",
        names(ioctls, &ioctl_bit::NAMES).join(" ")
    );
    // Write the content through the alias: the page enters the page cache, but the
    // registered mapping does not map it yet.
    let image = pattern();
    // SAFETY: `alias` is 2 MiB of our own shared mapping; nothing else references it.
    unsafe { std::ptr::copy_nonoverlapping(image.as_ptr(), alias.as_ptr(), HUGE_2M) };
    scope_or_exit("minor", |s| {
        let toucher = s.spawn(|| read_byte(registered.addr() + 7 * PAGE as u64));
        let (addr, kind) = next_fault(&uffd)?;
        println!("minor: fault at {addr:#x}, kind {kind:?}");
        ensure!(
            kind == FaultKind::Minor,
            "expected a MINOR fault, got {kind:?}"
        );
        // CONTINUE maps the page already in the page cache: no copy of 2 MiB.
        let outcome = place::continue_(&uffd, registered.addr(), HUGE_2M as u64, true)?;
        println!("minor: UFFDIO_CONTINUE of 2 MiB -> {outcome:?}");
        ensure!(
            outcome == Outcome::Placed(HUGE_2M as u64),
            "CONTINUE: {outcome:?}"
        );
        let byte = join(toucher)?;
        ensure!(byte == 7, "page 7 reads {byte}");
        Ok(())
    });
    let again = place::continue_(&uffd, registered.addr(), HUGE_2M as u64, true)?;
    println!("minor: CONTINUE again -> {again:?}");
    ensure!(
        again == Outcome::AlreadyPresent,
        "a second CONTINUE was not EEXIST"
    );
    // SAFETY: mapped now, and nothing writes it.
    let mapped = unsafe { registered.as_slice() };
    ensure!(mapped == image.as_slice(), "content differs");
    Ok(())
}

/// Waits for the next message, which must be a fault: its address and kind.
fn next_fault(uffd: &Userfaultfd) -> Result<(u64, FaultKind)> {
    match next_event(uffd)? {
        Event::Fault { addr, kind, .. } => Ok((addr, kind)),
        other => bail!("expected a fault, got {other:?}"),
    }
}
