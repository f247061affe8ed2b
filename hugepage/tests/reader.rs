//! A reader thread spins on a huge page while its chunks arrive: it blocks in its fault until
//! the whole page is placed, and every byte it ever reads is the final content.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{assert_all_huge, deliver, random_chunks, setup, verify};
use hugepage::{Backing, HugetlbPlacement, Pattern};
use uffd_core::convert::usize_from;
use uffd_core::uffd::Event;
use uffd_core::Userfaultfd;

/// The first events the userfaultfd reports (waiting up to 5 s for any).
fn first_events(uffd: &Userfaultfd) -> Vec<Event> {
    let mut buf = Userfaultfd::event_buffer(16);
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while events.is_empty() && Instant::now() < deadline {
        uffd.wait_readable(Duration::from_millis(100))
            .expect("poll");
        uffd.read_events(&mut buf, &mut events).expect("read");
    }
    events
}

/// A thread reading page 0 of the region, blocked in its fault (read here) until the
/// assembler places unit 0.
fn wait_in_unit_0(s: &common::Setup) -> std::thread::JoinHandle<u8> {
    let target = s.memory.addr();
    // SAFETY: page 0 of the registered region, which outlives the thread (the callers join
    // it); the read blocks in the fault until the assembler places unit 0.
    let reader =
        std::thread::spawn(move || unsafe { std::ptr::read_volatile(target as *const u8) });
    let events = first_events(&s.uffd);
    assert!(
        matches!(events.first(), Some(Event::Fault { addr, .. }) if *addr == target),
        "expected the reader's fault, got {events:?}"
    );
    reader
}

fn reader_sees_all_or_nothing(backing: Backing, placement: HugetlbPlacement) {
    let Some(s) = setup(backing, placement, 2) else {
        return;
    };
    let unit = backing.unit();
    let pattern = Arc::new(Pattern::new(21));
    // The reader spins on unit 1.
    let target = s.memory.addr() + unit;
    let passes = Arc::new(AtomicUsize::new(0));
    let bad = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (passes, bad, stop, pattern) =
            (passes.clone(), bad.clone(), stop.clone(), pattern.clone());
        std::thread::spawn(move || {
            let mut seen = vec![0u8; usize_from(unit)];
            while !stop.load(Ordering::Acquire) || passes.load(Ordering::Acquire) == 0 {
                // SAFETY: `target..target+unit` is unit 1 of the registered region, alive until
                // the test joins this thread; reading a missing page blocks in the fault until
                // the assembler places the unit.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        target as *const u8,
                        seen.as_mut_ptr(),
                        seen.len(),
                    )
                };
                if pattern.check(unit, &seen).is_err() {
                    bad.fetch_add(1, Ordering::AcqRel);
                }
                passes.fetch_add(1, Ordering::AcqRel);
            }
        })
    };
    // The reader's fault is reported (and it stays blocked).
    let events = first_events(&s.uffd);
    match events.first() {
        Some(Event::Fault { addr, .. }) => assert!((target..target + unit).contains(addr)),
        other => panic!("expected the reader's fault, got {other:?}"),
    }
    let chunks: Vec<_> = random_chunks(2, unit, 16, &[], 4)
        .into_iter()
        .filter(|d| d.offset >= unit)
        .collect();
    let mut assembler = s.assembler();
    for (i, &d) in chunks.iter().enumerate() {
        assert_eq!(
            passes.load(Ordering::Acquire),
            0,
            "the reader got through before chunk {i}"
        );
        let progress = deliver(&mut assembler, d, &pattern, &s.received);
        let last = i + 1 == chunks.len();
        assert_eq!(progress.units_completed, u64::from(last));
        if i % 16 == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while passes.load(Ordering::Acquire) < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    stop.store(true, Ordering::Release);
    reader.join().expect("reader");
    assert!(
        passes.load(Ordering::Acquire) >= 3,
        "the reader was never woken"
    );
    assert_eq!(
        bad.load(Ordering::Acquire),
        0,
        "the reader saw a partial huge page"
    );
    // Unit 0 arrives afterwards; the whole region ends right and huge.
    let rest: Vec<_> = random_chunks(1, unit, 64, &[], 5);
    common::feed(&mut assembler, &rest, &pattern, &s.received);
    verify(&s.memory, &s.received, &pattern, &[]);
    assert_all_huge(&s.memory);
}

#[test]
fn thp_reader_blocks_until_the_huge_page_is_placed() {
    reader_sees_all_or_nothing(Backing::Thp, HugetlbPlacement::Copy);
}

#[test]
fn hugetlb_copy_reader_blocks_until_the_huge_page_is_placed() {
    reader_sees_all_or_nothing(Backing::Hugetlb2M, HugetlbPlacement::Copy);
}

#[test]
fn hugetlb_continue_reader_blocks_until_the_huge_page_is_placed() {
    reader_sees_all_or_nothing(Backing::Hugetlb2M, HugetlbPlacement::Continue);
}

/// THP: a thread waits in a unit (its fault gave the unit's range a page table) while the unit
/// is assembled, and the unit has zero pages. The UFFDIO_MOVE of the staging THP into a PMD
/// with a page table splits the staging THP, and since Linux 6.12 a split maps every
/// zero-filled subpage to the shared zero page; those PTEs are moved as they are, and
/// MADV_COLLAPSE refuses a uffd-armed range mapping the zero page (EBUSY). The pager must
/// still end with the unit mapped huge.
#[test]
fn thp_unit_with_zero_pages_and_a_waiting_reader_ends_huge() {
    let Some(s) = setup(Backing::Thp, HugetlbPlacement::Copy, 2) else {
        return;
    };
    let unit = Backing::Thp.unit();
    let pattern = Pattern::new(22);
    // Unit 0 holds two zero runs (the image's zero pages arrive as zero frames).
    let zero = [(10 * 4096, 6 * 4096), (300 * 4096, 4096)];
    let reader = wait_in_unit_0(&s);
    let mut assembler = s.assembler();
    let progress = common::feed(
        &mut assembler,
        &random_chunks(2, unit, 64, &zero, 6),
        &pattern,
        &s.received,
    );
    assert_eq!(progress.units_completed, 2);
    reader.join().expect("reader");
    verify(&s.memory, &s.received, &pattern, &zero);
    assert_eq!(progress.units_not_huge, 0, "{progress:?}");
    assert_all_huge(&s.memory);
}

#[test]
fn thp_staging_split_by_a_waiting_reader_is_mapped_again_not_collapsed() {
    let Some(s) = setup(Backing::Thp, HugetlbPlacement::Copy, 3) else {
        return;
    };
    let unit = Backing::Thp.unit();
    let pattern = Pattern::new(23);
    let reader = wait_in_unit_0(&s);
    let mut assembler = s.assembler();
    let chunks = random_chunks(3, unit, 64, &[], 7);
    let (first, rest): (Vec<_>, Vec<_>) = chunks.into_iter().partition(|d| d.offset < unit);
    // Unit 0: its page table (from the reader's fault) makes the kernel split the staging
    // THP to move it, which leaves the staging range with a page table of its own.
    let progress = common::feed(&mut assembler, &first, &pattern, &s.received);
    assert_eq!(progress.units_completed, 1);
    reader.join().expect("reader");
    // The next units' staging THPs are populated as THPs, without MADV_COLLAPSE (a fault
    // into a range that has a page table only ever maps 4 KiB pages).
    assembler.prepare_spare().expect("prepare");
    let progress = common::feed(&mut assembler, &rest, &pattern, &s.received);
    assert_eq!(progress.units_completed, 2);
    assert_eq!(assembler.staging_collapses(), 0);
    verify(&s.memory, &s.received, &pattern, &[]);
    assert_all_huge(&s.memory);
}
