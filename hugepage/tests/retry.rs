//! While a non-cooperative event is unread, placement ioctls fail with EAGAIN: the assembler
//! reports `Stop::Retry`, keeps the complete unit, and places it on `retry()` once the events
//! are read.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{random_chunks, verify};
use hugepage::{Backing, HugetlbPlacement, Memory, Pattern};
use uffd_core::convert::usize_from;
use uffd_core::place::Stop;
use uffd_core::sys::feature;
use uffd_core::uffd::Event;
use uffd_core::{PageBitmap, Userfaultfd};

#[test]
fn a_pending_remove_event_makes_the_unit_wait_for_retry() {
    let memory = Memory::new(
        Backing::Thp,
        2 * usize_from(Backing::Thp.unit()),
        HugetlbPlacement::Copy,
    )
    .expect("map");
    let uffd = match Userfaultfd::open(memory.uffd_features() | feature::EVENT_REMOVE) {
        Ok(uffd) => Arc::new(uffd),
        Err(err) => return uffd_testkit::skip(&err.to_string()),
    };
    memory.register(&uffd).expect("register");
    let received = PageBitmap::new(memory.pages());
    let pattern = Pattern::new(41);
    let unit = Backing::Thp.unit();
    let chunks: Vec<_> = random_chunks(1, unit, 64, &[], 2);
    let (last, first) = chunks.split_last().expect("chunks");
    let mut assembler = memory.assembler(uffd.clone()).expect("assembler");
    common::feed(&mut assembler, first, &pattern, &received);

    // MADV_DONTNEED on unit 1 queues a REMOVE event; the thread sleeps until it is read.
    let unit1 = memory.addr() + unit;
    let advisor = std::thread::spawn(move || {
        // SAFETY: unit 1 of the region is mapped and holds nothing; MADV_DONTNEED there only
        // queues the event.
        unsafe {
            libc::madvise(
                unit1 as *mut libc::c_void,
                usize_from(unit),
                libc::MADV_DONTNEED,
            )
        }
    });
    let mut buf = Userfaultfd::event_buffer(4);
    let mut events = Vec::new();
    // Wait until the event is queued, without reading it.
    while !uffd.wait_readable(Duration::from_millis(10)).expect("poll") {}
    let progress = assembler
        .data(
            last.offset,
            &pattern.bytes(last.offset, last.len),
            &received,
        )
        .expect("data");
    assert_eq!(progress.pages.stopped, Some(Stop::Retry));
    assert_eq!((progress.units_completed, assembler.pending()), (0, 1));

    uffd.read_events(&mut buf, &mut events).expect("read");
    assert!(
        matches!(events.first(), Some(Event::Remove { .. })),
        "{events:?}"
    );
    assert_eq!(advisor.join().expect("advisor"), 0);
    let progress = assembler.retry(&received).expect("retry");
    assert_eq!(
        (progress.units_completed, progress.pages.stopped),
        (1, None)
    );
    assert_eq!(progress.pages.placed, 512);
    assert_eq!(assembler.pending(), 0);
    // Unit 1 arrives normally afterwards.
    let rest = random_chunks(2, unit, 64, &[], 3);
    let rest: Vec<_> = rest.into_iter().filter(|d| d.offset >= unit).collect();
    common::feed(&mut assembler, &rest, &pattern, &received);
    verify(&memory, &received, &pattern, &[]);
    common::assert_all_huge(&memory);
}
