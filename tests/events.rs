//! Non-cooperative events end to end: while a client runs against a real page-server, the
//! application moves part or all of the region with `mremap` (REMAP) or forks (FORK). Every
//! byte is checked against the image: pages that had arrived must have moved (or be shared
//! with the child) with their content, pages that had not must be fetched to where they are
//! now (`fault-client/src/events.rs`, `Pager::page_addr` / `image_page`).
//!
//! The tests run one at a time ([`serial`]): a fork in one of them would queue a FORK event on
//! every other test's userfaultfd of this process, and the fork waits until each is read.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{have_uffd, pool_has, synthetic, TestServer, PAGE};
use fault_client::client::{Client, ClientOptions};
use hugepage::{Backing, HugetlbPlacement};
use page_server::Image;
use uffd_core::convert::usize_from;

const MIB: u64 = 1 << 20;

static SERIAL: Mutex<()> = Mutex::new(());

/// The watchdog limit of the longest tests (1 GiB images).
const LONG: Duration = Duration::from_secs(180);

/// One test at a time (see the module doc).
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The start of every test here: one at a time, userfaultfd available, a watchdog armed.
/// None: skipped (no userfaultfd).
fn begin(test: &'static str, limit: Duration) -> Option<(MutexGuard<'static, ()>, Watchdog)> {
    let serial = serial();
    if !have_uffd() {
        return None;
    }
    Some((serial, Watchdog::arm(test, limit)))
}

/// [`begin`], for a test that needs `pages` free 2 MiB hugetlb pages (None: skipped).
fn begin_hugetlb(
    test: &'static str,
    limit: Duration,
    pages: u64,
) -> Option<(MutexGuard<'static, ()>, Watchdog)> {
    let running = begin(test, limit)?;
    pool_has(2 * MIB, pages).then_some(running)
}

/// Aborts the test process if the test is still running after `limit`: a lost wake-up leaves
/// a thread blocked on a fault for ever, which must fail the run, not hang it.
struct Watchdog {
    done: Arc<AtomicBool>,
}

impl Watchdog {
    fn arm(what: &'static str, limit: Duration) -> Watchdog {
        let done = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&done);
        std::thread::spawn(move || {
            let start = Instant::now();
            while !flag.load(Ordering::Acquire) {
                if start.elapsed() > limit {
                    eprintln!("{what}: still running after {limit:?}: a fault was never resolved");
                    std::process::abort();
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Watchdog { done }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Release);
    }
}

fn open(server: &TestServer, backing: Backing, background: bool) -> Client {
    open_with(server, backing, HugetlbPlacement::Copy, background)
}

/// The bytes of page `p` where the page is now (it is faulted in if missing).
fn page_bytes(client: &Client, p: u64) -> &[u8] {
    let addr = client.pager().page_addr(p) as *const u8;
    // SAFETY: page `p` lies in the registered region (at its current address), which lives as
    // long as the client; a missing page is fetched while this thread waits. Nothing writes the
    // region during the test.
    unsafe { std::slice::from_raw_parts(addr, usize_from(PAGE)) }
}

fn is_image_page(client: &Client, image: &Image, p: u64) -> bool {
    page_bytes(client, p) == image.bytes(p * PAGE, PAGE).expect("image bytes")
}

/// The pages of the image that differ from it in the client's region (all are read).
fn wrong_pages(client: &Client, image: &Image) -> Vec<u64> {
    (0..client.pager().pages)
        .filter(|&p| !is_image_page(client, image, p))
        .collect()
}

/// Waits up to 10 s for `done` (an event the handler applies just after the kernel let the
/// application go on).
fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A free range of `len` bytes aligned to `align`, reserved `PROT_NONE`: the target of an
/// `mremap(MREMAP_FIXED)` (which replaces the reservation; it is not registered, so that
/// queues no UNMAP event).
fn reserve(len: u64, align: u64) -> u64 {
    let total = usize_from(len + align);
    // SAFETY: a fresh anonymous mapping at a kernel-chosen address aliases nothing.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            total,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert_ne!(base, libc::MAP_FAILED, "mmap: {}", errno());
    let base = base as u64;
    let start = base.next_multiple_of(align);
    // Give back what the alignment left over on both sides.
    for (at, n) in [
        (base, start - base),
        (start + len, base + total as u64 - start - len),
    ] {
        if n > 0 {
            // SAFETY: the range is part of the reservation just made, used by nobody.
            let rc = unsafe { libc::munmap(at as *mut libc::c_void, usize_from(n)) };
            assert_eq!(rc, 0, "munmap: {}", errno());
        }
    }
    start
}

/// Moves `len` bytes at `from` to `to` (a reserved range), as an application would.
fn move_range(from: u64, len: u64, to: u64) {
    let moved = try_move_range(from, len, to);
    assert_eq!(moved.as_ref().ok(), Some(&to), "mremap: {moved:?}");
}

/// `mremap(MREMAP_MAYMOVE | MREMAP_FIXED)`: the new address, or the kernel's refusal.
fn try_move_range(from: u64, len: u64, to: u64) -> std::io::Result<u64> {
    // SAFETY: `from..from+len` is (part of) the client's region, which the pager follows when
    // it learns of the move (REMAP); `to` is a reservation of ours. No Rust reference points
    // into either range.
    let moved = unsafe {
        libc::mremap(
            from as *mut libc::c_void,
            usize_from(len),
            usize_from(len),
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            to as *mut libc::c_void,
        )
    };
    if moved == libc::MAP_FAILED {
        return Err(errno());
    }
    Ok(moved as u64)
}

fn unmap(addr: u64, len: u64) {
    // SAFETY: the range is a mapping of this test that nothing references any more.
    let rc = unsafe { libc::munmap(addr as *mut libc::c_void, usize_from(len)) };
    assert_eq!(rc, 0, "munmap: {}", errno());
}

/// True if nothing is mapped at `addr` any more (`mincore` answers ENOMEM).
fn unmapped(addr: u64) -> bool {
    let mut vec = [0u8; 1];
    // SAFETY: mincore only writes one byte per page into `vec`, which has room for one page.
    let rc = unsafe {
        libc::mincore(
            addr as *mut libc::c_void,
            usize_from(PAGE),
            vec.as_mut_ptr(),
        )
    };
    rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOMEM)
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

fn counter(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Moves image pages `first..end` (all of them: the whole region) to a new address while the
/// client runs with the background stream off, after every third page and `first` arrived.
fn remap_case(backing: Backing, image_len: u64, first: u64, end: u64) {
    let server = TestServer::start(synthetic(image_len, 41, 0.2));
    let client = open(&server, backing, false);
    let pager = Arc::clone(client.pager());
    let pages = pager.pages;
    let arrived: Vec<u64> = (0..pages).filter(|p| p % 3 == 0 || *p == first).collect();
    for &p in &arrived {
        client.touch(p);
    }
    // A touch returns once the page is mapped; the receiver records it, and the fault handler
    // counts its request, just after.
    eventually("the touched pages recorded", || {
        arrived
            .iter()
            .all(|&p| pager.page_state.received.get(usize_from(p)))
    });
    let requests = arrived.len() as u64;
    eventually("one request per touched page", || {
        counter(&pager.counters.requests) == requests
    });

    // The move: 2 MiB-aligned, so THP units stay whole.
    let from = pager.page_addr(first);
    let len = (end - first) * PAGE;
    let to = reserve(len, 2 * MIB);
    let faults = counter(&pager.counters.faults);
    move_range(from, len, to);
    eventually("the REMAP event", || pager.page_addr(first) == to);
    assert_eq!(counter(&pager.counters.events_remap), 1);
    assert!(unmapped(from), "the old range is gone");
    assert_eq!(pager.page_addr(end - 1), to + len - PAGE);

    // Pages that had arrived moved with their content: read in place, no fault, no request.
    let moved = first..end;
    for p in moved.clone().filter(|p| arrived.contains(p)) {
        assert!(
            is_image_page(&client, &server.image, p),
            "{backing}: page {p} arrived before the move and differs after it"
        );
    }
    assert_eq!(
        counter(&pager.counters.faults),
        faults,
        "no fault for pages present"
    );
    assert_eq!(counter(&pager.counters.requests), requests);

    // Pages that had not arrived are fetched into the new place: one request each.
    let missing: Vec<u64> = moved.clone().filter(|p| !arrived.contains(p)).collect();
    for &p in &missing {
        client.touch(p);
        assert!(
            is_image_page(&client, &server.image, p),
            "{backing}: page {p} fetched after the move differs from the image"
        );
    }
    eventually("one request per missing page of the moved range", || {
        counter(&pager.counters.requests) == requests + missing.len() as u64
    });
    // And the whole image, moved part or not.
    let wrong = wrong_pages(&client, &server.image);
    assert!(wrong.is_empty(), "{backing}: pages differ: {wrong:?}");
    eventually("every page recorded", || pager.complete());
    let fatal = pager.fatal();
    assert!(fatal.is_none(), "{fatal:?}");

    // Unmapping the moved range (UNMAP at the new address) marks exactly those pages gone.
    unmap(to, len);
    eventually("the UNMAP event", || {
        pager.page_state.gone.count() == moved.clone().count()
    });
    assert!(moved
        .clone()
        .all(|p| pager.page_state.gone.get(usize_from(p))));
    drop(pager);
    client.close().expect("close");
    eprintln!(
        "{backing}: pages {first}..{end} of {pages} moved: {} had arrived, {} fetched after the move, all {pages} verified",
        end - first - missing.len() as u64,
        missing.len()
    );
}

#[test]
fn remap_part_of_the_region_anon() {
    let Some(_running) = begin("remap_part_of_the_region_anon", Duration::from_secs(60)) else {
        return;
    };
    // 4 MiB; pages 256..768 (2 MiB in the middle) move.
    remap_case(Backing::Anon, 4 * MIB, 256, 768);
}

#[test]
fn remap_the_whole_region_anon() {
    let Some(_running) = begin("remap_the_whole_region_anon", Duration::from_secs(60)) else {
        return;
    };
    remap_case(Backing::Anon, 4 * MIB, 0, 1024);
}

#[test]
fn remap_part_and_whole_region_thp() {
    let Some(_running) = begin("remap_part_and_whole_region_thp", Duration::from_secs(60)) else {
        return;
    };
    // 8 MiB = four THP units; the middle two move, then (another client) all four.
    remap_case(Backing::Thp, 8 * MIB, 512, 1536);
    remap_case(Backing::Thp, 8 * MIB, 0, 2048);
}

/// A move made while the background stream runs: image pages `first..end` go to a fresh
/// 2 MiB-aligned reservation, plus `skew` bytes (so not 2 MiB-aligned when `skew` > 0), once
/// the stream is one eighth through.
#[derive(Debug, Clone, Copy)]
struct StreamMove {
    first: u64,
    end: u64,
    skew: u64,
}

/// What a [`StreamMove`] run saw (every page was verified before this is returned).
#[derive(Debug)]
struct Moved {
    /// Pages present when the move happened (fewer than all: the stream was running).
    present_at_move: usize,
    /// Units (of the backing) with all their pages inside the moved range, and how many of
    /// them still had a page missing just after the move: those were placed at the new
    /// address.
    units_moved: u64,
    units_missing_after_move: u64,
    /// After the run: units mapped huge in the whole region and in the moved range
    /// (PAGEMAP_SCAN), and units the pager counted as placed but not mapped huge.
    huge: u64,
    huge_in_moved_range: u64,
    not_huge: u64,
}

fn open_with(
    server: &TestServer,
    backing: Backing,
    placement: HugetlbPlacement,
    background: bool,
) -> Client {
    let mut options = ClientOptions::new(server.endpoint.clone());
    options.backing = backing;
    options.hugetlb = placement;
    options.background = background;
    Client::open(&options).unwrap_or_else(|e| panic!("client ({backing} {placement}): {e}"))
}

/// Runs a client with the stream on over a `image_len` image, makes the move `m` while the
/// stream places pages (one page of the moved range touched before the move, one after it),
/// waits for the whole image, and checks every page where it is now; then unmaps the moved
/// range, which must mark exactly its pages gone.
fn move_while_streaming(
    backing: Backing,
    placement: HugetlbPlacement,
    image_len: u64,
    m: StreamMove,
) -> Moved {
    let server = TestServer::start(synthetic(image_len, 43, 0.1));
    let client = open_with(&server, backing, placement, true);
    let pager = Arc::clone(client.pager());
    let unit = pager.memory.unit();
    let unit_pages = unit / PAGE;
    // Not when that unit is the whole moved range (a 1 GiB page): the stream would finish it
    // for the fault before the move.
    if m.end - m.first > unit_pages {
        client.touch(m.first);
    }
    // Well ahead of the moved ranges below (which start at half the image or at 0), so that
    // the stream still has units of them to place after the move. In bytes received, not
    // pages present: a 1 GiB unit is present all at once.
    eventually("the stream under way", || {
        counter(&pager.counters.bytes_received) >= image_len / 8
    });
    let len = (m.end - m.first) * PAGE;
    // hugetlb moves only to addresses aligned to its huge pages.
    let to = reserve(len + m.skew, unit.max(2 * MIB)) + m.skew;
    move_range(pager.page_addr(m.first), len, to);
    // The kernel lets the mremap return once the REMAP event is read; the pager applies it
    // just after.
    eventually("the REMAP event", || pager.page_addr(m.first) == to);
    let present_at_move = pager.page_state.received.count();
    let whole_units = m.first.div_ceil(unit_pages)..m.end / unit_pages;
    let units_missing_after_move = whole_units
        .clone()
        .filter(|u| !pager.unit_present(u * unit_pages, unit_pages))
        .count() as u64;
    assert!(
        present_at_move < usize_from(pager.pages),
        "the stream was still running at the move"
    );
    // A fault at the new address, most likely before the stream gets there. On a thread: if
    // the pager fails, the fault is never resolved, and the failure must show at once.
    let late = m.end - 3;
    let late_addr = usize_from(pager.page_addr(late));
    // SAFETY: the page lies in the client's region at its new address; the thread waits in
    // the fault until the page is placed.
    let fault =
        std::thread::spawn(move || unsafe { std::ptr::read_volatile(late_addr as *const u8) });

    client.wait_complete().expect("the whole image arrives");
    fault.join().expect("the fault at the new address");
    assert!(is_image_page(&client, &server.image, late), "page {late}");
    let fatal = pager.fatal();
    assert!(fatal.is_none(), "{fatal:?}");
    // What the end of `fault-client run` does for THP (units with urgent pages).
    let huge = pager.memory.collapse_remaining().expect("collapse");
    let wrong = wrong_pages(&client, &server.image);
    assert!(wrong.is_empty(), "{backing} {m:?}: pages differ: {wrong:?}");
    let exact = pager.memory.huge_pages_mapped_exact().expect("pagemap");
    // Two counts of the same thing: the collapse pass (THP) or smaps (hugetlb) against
    // PAGEMAP_SCAN, both over where the region is now.
    assert_eq!(huge, exact, "{backing} {m:?}: huge units");
    let in_moved = hugepage::pagemap::Pagemap::open()
        .and_then(|p| p.huge_bytes(to, len))
        .expect("pagemap")
        / pager.memory.unit();
    let moved = Moved {
        present_at_move,
        units_moved: whole_units.count() as u64,
        units_missing_after_move,
        huge: exact,
        huge_in_moved_range: in_moved,
        not_huge: counter(&pager.counters.huge_pages_not_collapsed),
    };

    unmap(to, len);
    eventually("the UNMAP event", || {
        pager.page_state.gone.count() as u64 == m.end - m.first
    });
    assert!((m.first..m.end).all(|p| pager.page_state.gone.get(usize_from(p))));
    drop(pager);
    client.close().expect("close");
    eprintln!("{backing} {placement} {m:?}: {moved:?}, all pages verified");
    moved
}

#[test]
fn remap_while_the_background_stream_runs() {
    let Some(_running) = begin(
        "remap_while_the_background_stream_runs",
        Duration::from_secs(60),
    ) else {
        return;
    };
    let pages = 64 * MIB / PAGE;
    let r = move_while_streaming(
        Backing::Anon,
        HugetlbPlacement::Copy,
        64 * MIB,
        StreamMove {
            first: pages / 2,
            end: pages,
            skew: 0,
        },
    );
    eprintln!(
        "the second half moved when {} of {pages} pages were present; all verified",
        r.present_at_move
    );
}

/// THP with the stream on: the background assembler places each unit where it is now. A
/// unit moved whole to a 2 MiB-aligned address still arrives as one THP (UFFDIO_MOVE of the
/// staging page, or COPY runs and a collapse); a unit cut by the move, or moved to an
/// address not 2 MiB-aligned, cannot be mapped by one PMD: it is copied 4 KiB-wise to where
/// each page is and counted as not huge.
#[test]
fn remap_part_and_whole_thp_region_while_the_stream_runs() {
    let Some(_running) = begin(
        "remap_part_and_whole_thp_region_while_the_stream_runs",
        Duration::from_secs(120),
    ) else {
        return;
    };
    let pages = 64 * MIB / PAGE;
    let units = pages / 512;
    // The third quarter, to an aligned address: every unit stays whole.
    let aligned = StreamMove {
        first: pages / 2,
        end: pages * 3 / 4,
        skew: 0,
    };
    let r = move_while_streaming(Backing::Thp, HugetlbPlacement::Copy, 64 * MIB, aligned);
    assert_eq!(r.units_moved, units / 4);
    assert!(r.units_missing_after_move > 0, "{r:?}");
    assert!(r.huge * 4 >= units * 3, "most units must end huge: {r:?}");
    assert!(r.huge_in_moved_range * 4 >= r.units_moved * 3, "{r:?}");
    // The same range, to an address 4 KiB past a 2 MiB boundary; and a range that starts
    // 100 pages into a unit (the unit is cut in two; every later unit is misaligned too).
    for m in [
        StreamMove {
            skew: PAGE,
            ..aligned
        },
        StreamMove {
            first: pages / 2 + 100,
            ..aligned
        },
    ] {
        let r = move_while_streaming(Backing::Thp, HugetlbPlacement::Copy, 64 * MIB, m);
        assert!(r.units_missing_after_move > 0, "{r:?}");
        assert_eq!(r.huge_in_moved_range, 0, "no PMD fits there: {r:?}");
        assert!(
            r.not_huge >= r.units_missing_after_move,
            "each unit placed after the move counts as not huge: {r:?}"
        );
        assert!(r.huge <= units - r.units_moved, "{r:?}");
    }
    // The whole region: the unit the stream is assembling at the move moves with the rest.
    let whole = StreamMove {
        first: 0,
        end: pages,
        skew: 0,
    };
    let r = move_while_streaming(Backing::Thp, HugetlbPlacement::Copy, 64 * MIB, whole);
    assert!(r.units_missing_after_move > 0, "{r:?}");
    assert!(
        r.huge * 4 >= r.units_moved * 3,
        "most units must end huge: {r:?}"
    );
}

/// hugetlb-1g, continue way, the whole region (one 1 GiB page) moved while the stream is
/// writing it through the alias: the CONTINUE of the complete page goes to the new address.
#[test]
fn remap_hugetlb_1g_while_the_stream_runs() {
    let Some(_running) = begin("remap_hugetlb_1g_while_the_stream_runs", LONG) else {
        return;
    };
    if !pool_has(1 << 30, 1) {
        return;
    }
    let whole = StreamMove {
        first: 0,
        end: (1 << 30) / PAGE,
        skew: 0,
    };
    let r = move_while_streaming(
        Backing::Hugetlb1G,
        HugetlbPlacement::Continue,
        1 << 30,
        whole,
    );
    assert_eq!(r.units_missing_after_move, 1, "{r:?}");
    assert_eq!((r.huge, r.huge_in_moved_range), (1, 1), "{r:?}");
}

/// A move of a hugetlb range to an address that is not huge-page-aligned is refused by the
/// kernel (EINVAL to the application): no event, and the run goes on as if nothing happened.
fn misaligned_move_of_hugetlb_is_refused() {
    let server = TestServer::start(synthetic(8 * MIB, 44, 0.1));
    let client = open_with(&server, Backing::Hugetlb2M, HugetlbPlacement::Copy, true);
    let pager = Arc::clone(client.pager());
    let to = reserve(4 * MIB + PAGE, 2 * MIB) + PAGE;
    let refused = try_move_range(pager.page_addr(512), 4 * MIB, to);
    assert_eq!(
        refused.map_err(|e| e.raw_os_error()),
        Err(Some(libc::EINVAL))
    );
    client.wait_complete().expect("the whole image arrives");
    assert_eq!(counter(&pager.counters.events_remap), 0);
    let wrong = wrong_pages(&client, &server.image);
    assert!(wrong.is_empty(), "pages differ: {wrong:?}");
    drop(pager);
    client.close().expect("close");
}

/// hugetlbfs with the stream on, both placement ways: the kernel moves a registered hugetlb
/// range (REMAP, then UNMAP of the old range) when addresses and length are huge-page-aligned;
/// COPY and CONTINUE go to the new address. For CONTINUE the content is written through the
/// alias mapping at the unit's page-cache offset, which the move does not change.
#[test]
fn remap_hugetlb_2m_while_the_stream_runs() {
    let Some(_running) = begin_hugetlb(
        "remap_hugetlb_2m_while_the_stream_runs",
        Duration::from_secs(120),
        16,
    ) else {
        return;
    };
    misaligned_move_of_hugetlb_is_refused();
    let pages = 32 * MIB / PAGE;
    for placement in [HugetlbPlacement::Copy, HugetlbPlacement::Continue] {
        for m in [
            StreamMove {
                first: pages / 2,
                end: pages * 3 / 4,
                skew: 0,
            },
            StreamMove {
                first: 0,
                end: pages,
                skew: 0,
            },
        ] {
            let r = move_while_streaming(Backing::Hugetlb2M, placement, 32 * MIB, m);
            assert!(r.units_missing_after_move > 0, "{r:?}");
            assert_eq!(r.huge, 16, "every unit is one huge page: {r:?}");
            assert_eq!(r.huge_in_moved_range, r.units_moved, "{r:?}");
        }
    }
}

/// One page the forked child checks: its address and the image bytes it must hold.
struct Check {
    addr: *const u8,
    expected: *const u8,
}

/// In the child: reads every checked page and compares it with the image, byte by byte.
/// Returns 0, or 1 + the index of the first wrong page (only the first 100 are checked). Reads and compares only:
/// the parent process has other threads, so the child must not allocate, lock or panic.
fn child_checks(checks: &[Check]) -> i32 {
    for (index, check) in (1..=100).zip(checks) {
        for i in 0..usize_from(PAGE) {
            // SAFETY: both ranges are one page, mapped in the child's copy of the address
            // space (the region's missing pages are resolved through the child's userfaultfd).
            let (got, want) = unsafe {
                (
                    std::ptr::read_volatile(check.addr.add(i)),
                    *check.expected.add(i),
                )
            };
            if got != want {
                return index;
            }
        }
    }
    0
}

/// Forks a child that runs [`child_checks`] and exits with its result; waits for it at most
/// `limit`, then kills it. Returns the child's exit status.
fn fork_and_check(checks: &[Check], limit: Duration) -> i32 {
    assert!(
        checks.len() <= 100,
        "the exit status names one of 100 pages at most"
    );
    // SAFETY: the child only reads memory, compares bytes and calls `_exit`, all of which are
    // safe in the child of a multithreaded process (no allocation, no lock, no unwinding).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", errno());
    if pid == 0 {
        let code = child_checks(checks);
        // SAFETY: `_exit` ends the child at once, without running the parent's atexit work.
        unsafe { libc::_exit(code) };
    }
    let deadline = Instant::now() + limit;
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child; `status` is a valid out-parameter.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        assert!(rc >= 0, "waitpid: {}", errno());
        if rc == pid {
            break;
        }
        if Instant::now() > deadline {
            // SAFETY: `pid` is our child, not reaped yet.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            panic!("the forked child did not finish within {limit:?} (a fault never resolved)");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        libc::WIFEXITED(status),
        "the child did not exit normally: status {status:#x}"
    );
    libc::WEXITSTATUS(status)
}

/// FORK needs CAP_SYS_PTRACE (the client asks for it only then).
fn can_trace() -> bool {
    const CAP_SYS_PTRACE: u32 = 19;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    if effective & (1 << CAP_SYS_PTRACE) == 0 {
        uffd_testkit::skip("UFFD_FEATURE_EVENT_FORK needs CAP_SYS_PTRACE");
        return false;
    }
    true
}

/// A child forked while pages are missing reads the image: pages present at the fork are
/// shared with it, missing ones are fetched on demand through the parent (a child handler
/// serves the child's userfaultfd). The parent's region is still right afterwards.
fn fork_case(background: bool) {
    let server = TestServer::start(synthetic(if background { 64 } else { 4 } * MIB, 47, 0.2));
    let client = open(&server, Backing::Anon, background);
    let pager = Arc::clone(client.pager());
    let pages = pager.pages;
    // The child reads the last 64 pages (the stream sends them last) and the first one;
    // every fourth of them arrived before the fork. Everything the child needs is computed
    // before the fork.
    let child_pages: Vec<u64> = [0].into_iter().chain(pages - 64..pages).collect();
    let touched: Vec<u64> = child_pages.iter().step_by(4).copied().collect();
    for &p in &touched {
        client.touch(p);
    }
    eventually("the touched pages recorded", || {
        touched
            .iter()
            .all(|&p| pager.page_state.received.get(usize_from(p)))
    });
    let missing_at_fork = child_pages
        .iter()
        .filter(|&&p| !pager.page_state.received.get(usize_from(p)))
        .count();
    assert!(missing_at_fork > 0, "the child must find missing pages");
    let expected: Vec<Vec<u8>> = child_pages
        .iter()
        .map(|&p| server.image.bytes(p * PAGE, PAGE).expect("image bytes"))
        .collect();
    let checks: Vec<Check> = child_pages
        .iter()
        .zip(&expected)
        .map(|(&p, bytes)| Check {
            addr: pager.page_addr(p) as *const u8,
            expected: bytes.as_ptr(),
        })
        .collect();
    let status = fork_and_check(&checks, Duration::from_secs(30));
    let bad = usize::try_from(status - 1)
        .ok()
        .and_then(|i| child_pages.get(i));
    assert_eq!(status, 0, "the child read page {bad:?} wrong");
    assert_eq!(counter(&pager.counters.events_fork), 1);
    // The child is gone: its handler thread stops (it probes the child's address space).
    let deadline = Instant::now() + Duration::from_secs(5);
    while child_handlers() > 0 {
        assert!(
            Instant::now() < deadline,
            "the child's handler thread outlived the child"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The child's missing pages were fetched through the parent, which has them now.
    assert!(child_pages
        .iter()
        .all(|&p| pager.page_state.received.get(usize_from(p))));
    let wrong = wrong_pages(&client, &server.image);
    assert!(wrong.is_empty(), "the parent's pages differ: {wrong:?}");
    if background {
        client.wait_complete().expect("the stream completes");
    }
    drop(pager);
    client.close().expect("close");
    eprintln!(
        "fork (background {background}): the child read {} pages ({missing_at_fork} missing at the fork), all right; parent verified",
        child_pages.len()
    );
}

#[test]
fn fork_child_reads_missing_and_present_pages() {
    let Some(_running) = begin(
        "fork_child_reads_missing_and_present_pages",
        Duration::from_secs(90),
    ) else {
        return;
    };
    if !can_trace() {
        return;
    }
    fork_case(false);
    fork_case(true);
}

/// Growing the region with `mremap` (in place, or moving it: the kernel chooses) leaves the
/// extension registered with the userfaultfd. Without userfaultfd a read there gives zeros,
/// and so it must with the pager (`pager::zero_outside_image`), not wait forever.
#[test]
fn grown_region_extension_reads_zero() {
    let Some(_running) = begin("grown_region_extension_reads_zero", Duration::from_secs(60)) else {
        return;
    };
    let server = TestServer::start(synthetic(4 * MIB, 41, 0.2));
    let client = open(&server, Backing::Anon, false);
    let pager = Arc::clone(client.pager());
    let len = pager.pages * PAGE;
    client.touch(0);
    // SAFETY: grows the client's region as an application might; no Rust reference points
    // into it. The result is checked below.
    let grown = unsafe {
        libc::mremap(
            pager.page_addr(0) as *mut libc::c_void,
            usize_from(len),
            usize_from(len + 16 * PAGE),
            libc::MREMAP_MAYMOVE,
        )
    };
    assert_ne!(grown, libc::MAP_FAILED, "mremap: {}", errno());
    let extension = grown as u64 + len + PAGE;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: the address is inside the grown mapping, which stays mapped until this
        // test ends (its thread is released when the client closes, at the latest).
        let byte = unsafe { std::ptr::read_volatile(extension as *const u8) };
        let _ = tx.send(byte);
    });
    let read = rx.recv_timeout(Duration::from_secs(5));
    // Closing the client closes the userfaultfd, which releases a thread still waiting (it
    // then reads the kernel's zero page); only then may the mapping go.
    drop(pager);
    client.close().expect("close");
    if rx.recv_timeout(Duration::from_secs(5)).is_ok() || read.is_ok() {
        // SAFETY: the grown mapping is ours, and the reading thread is done with it.
        unsafe { libc::munmap(grown, usize_from(len + 16 * PAGE)) };
    }
    assert_eq!(
        read,
        Ok(0),
        "a read in the grown part must give zero, not wait for ever"
    );
}

/// Threads of this process named `child-handler` (the pager's handlers of forked children).
fn child_handlers() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .flatten()
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.trim() == "child-handler")
                })
                .count()
        })
        .unwrap_or(0)
}
