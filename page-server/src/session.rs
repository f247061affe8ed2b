//! A client session: the pages already sent to one client, and the coordination between its
//! two senders.
//!
//! Every page is sent to a client once. A sender *claims* pages in the session's `sent` bitmap
//! before writing them, under the session lock, so the urgent and background senders never
//! both send a page. The background sender works one *unit* at a time (a base page, or a huge
//! page when the client places huge pages): while a unit is half sent, its pages belong to the
//! background connection alone — an urgent request for one of them does not send it again on
//! the urgent connection ("split brain"), it makes the background finish that unit at once,
//! ignoring other urgent work, so that request cannot starve.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use uffd_core::convert::usize_from;
use uffd_core::{Conn, PageBitmap};

use crate::image::Image;
use crate::inject::FaultInjection;

/// How the background stream treats urgent work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Background data frames carry at most this many bytes (a multiple of the page size).
    pub chunk: u64,
    /// Pause the background stream at the next chunk boundary while urgent requests are being
    /// answered. Without it, urgent answers wait until the unit on the wire is complete (the
    /// single-channel behaviour of postcopy without a preempt channel).
    pub preempt: bool,
}

#[derive(Debug, Default)]
struct State {
    /// The unit the background sender is in the middle of, as a page range.
    current: Option<(u64, u64)>,
    /// A request hit `current`: finish it without pausing.
    hurry: bool,
    /// Urgent requests being answered now.
    urgent_pending: usize,
    /// Connections to shut down when the session ends.
    conns: Vec<Conn>,
    /// A background connection is attached.
    background: bool,
    /// Units the background has finished (so a waiter can tell one unit from the next).
    units_done: u64,
}

/// One client's session.
#[derive(Debug)]
pub struct Session {
    /// Random identifier, carried in each hello of the session.
    pub id: u64,
    /// The image served.
    pub image: Arc<Image>,
    /// Background unit in pages (1, or the pages of one huge page).
    pub unit_pages: u64,
    /// Stream policy.
    pub policy: Policy,
    /// The test hook that breaks connections on purpose (none unless set with
    /// [`Session::with_fault_injection`]).
    pub fault_injection: FaultInjection,
    sent: PageBitmap,
    state: Mutex<State>,
    changed: Condvar,
    closed: AtomicBool,
}

/// Pages claimed for sending: page index ranges, in order.
pub type Claim = Vec<(u64, u64)>;

impl Session {
    /// A new session over `image`, placing in units of `unit` bytes.
    pub fn new(id: u64, image: Arc<Image>, unit: u64, policy: Policy) -> Session {
        let pages = image.pages();
        Session {
            id,
            unit_pages: (unit / image.page_size()).max(1),
            image,
            policy,
            fault_injection: FaultInjection::default(),
            sent: PageBitmap::new(usize::try_from(pages).unwrap_or(usize::MAX)),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            closed: AtomicBool::new(false),
        }
    }

    /// The session with the test hook `inject` ([`crate::inject`]).
    pub fn with_fault_injection(mut self, inject: FaultInjection) -> Session {
        self.fault_injection = inject;
        self
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in another connection thread must not take this session down with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resuming: marks as sent the pages the client says it has (bitmap words from
    /// `first_word`). Pages it does not have will be sent again.
    pub fn mark_present(&self, first_word: usize, words: &[u64]) {
        self.sent.merge_words(first_word, words);
    }

    /// Pages sent (or being sent) so far.
    pub fn sent_pages(&self) -> u64 {
        self.sent.count() as u64
    }

    /// Remembers a connection, to shut it down when the session ends.
    pub fn track(&self, conn: Conn) {
        self.lock().conns.push(conn);
    }

    /// Marks a background connection attached; false if one already is.
    pub fn attach_background(&self) -> bool {
        let mut state = self.lock();
        !std::mem::replace(&mut state.background, true)
    }

    /// The background connection is gone: another may attach.
    pub fn detach_background(&self) {
        self.lock().background = false;
    }

    /// Ends the session: shuts down its connections, wakes its senders.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let mut state = self.lock();
        for conn in state.conns.drain(..) {
            conn.shutdown();
        }
        drop(state);
        self.changed.notify_all();
    }

    /// True once the session has ended.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Urgent side: claims the unsent pages of `first..end` for the urgent connection.
    /// Pages inside the unit the background is sending are left to it, and it is told to
    /// finish that unit without pausing. Returns the claimed runs; the caller must call
    /// [`Session::urgent_done`] after sending them.
    pub fn claim_urgent(&self, first: u64, end: u64) -> Claim {
        let mut state = self.lock();
        let mut claim = Claim::new();
        for page in first..end {
            if let Some((start, stop)) = state.current {
                if (start..stop).contains(&page) {
                    state.hurry = true;
                    continue;
                }
            }
            if self.sent.set(usize_from(page)) {
                push_page(&mut claim, page);
            }
        }
        state.urgent_pending += 1;
        drop(state);
        self.changed.notify_all();
        claim
    }

    /// Urgent side, without preemption: waits until the background unit on the wire is
    /// complete, as a single channel would.
    pub fn wait_unit_boundary(&self) {
        let mut state = self.lock();
        // Wait for the unit on the wire now, not for a moment with no unit at all: the
        // background starts the next one at once, and the answer would never get its turn.
        let unit = state.units_done;
        while state.current.is_some() && state.units_done == unit && !self.is_closed() {
            state = self.wait(state);
        }
    }

    /// Urgent side: the answer to a request has been written.
    pub fn urgent_done(&self) {
        let mut state = self.lock();
        state.urgent_pending = state.urgent_pending.saturating_sub(1);
        drop(state);
        self.changed.notify_all();
    }

    /// Background side: claims the next unit with unsent pages at or after page `from`
    /// (several consecutive units when units are single pages, up to one chunk) and makes it
    /// the current unit. None when every page has been claimed.
    pub fn claim_background(&self, from: u64) -> Option<Claim> {
        let pages = self.image.pages();
        let mut state = self.lock();
        let first = self.sent.next_clear(usize::try_from(from).ok()?)? as u64;
        let unit_start = first / self.unit_pages * self.unit_pages;
        let mut end = (unit_start + self.unit_pages).min(pages);
        if self.unit_pages == 1 {
            // Base pages: batch consecutive unsent pages into one chunk.
            let max = (self.policy.chunk / self.image.page_size()).max(1);
            end = first + 1;
            while end < pages && end - first < max && !self.sent.get(usize_from(end)) {
                end += 1;
            }
        }
        let mut claim = Claim::new();
        for page in unit_start.max(first)..end {
            if self.sent.set(usize_from(page)) {
                push_page(&mut claim, page);
            }
        }
        state.current = Some((unit_start, end));
        state.hurry = false;
        Some(claim)
    }

    /// Background side: called before each chunk after the first of a unit. With
    /// preemption, waits while urgent requests are being answered, unless a request is
    /// waiting for this very unit. Returns false if the session closed.
    pub fn yield_to_urgent(&self) -> bool {
        if !self.policy.preempt {
            return !self.is_closed();
        }
        let mut state = self.lock();
        while state.urgent_pending > 0 && !state.hurry && !self.is_closed() {
            state = self.wait(state);
        }
        !self.is_closed()
    }

    /// Background side: waits while urgent requests are answered, between units.
    pub fn wait_urgent_idle(&self) -> bool {
        if !self.policy.preempt {
            return !self.is_closed();
        }
        let mut state = self.lock();
        while state.urgent_pending > 0 && !self.is_closed() {
            state = self.wait(state);
        }
        !self.is_closed()
    }

    /// Background side: the current unit is completely written.
    pub fn unit_done(&self) {
        let mut state = self.lock();
        state.current = None;
        state.units_done += 1;
        state.hurry = false;
        drop(state);
        self.changed.notify_all();
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        // A bounded wait, so a missed notification can only delay, never hang.
        match self.changed.wait_timeout(guard, Duration::from_millis(50)) {
            Ok((guard, _)) => guard,
            Err(poisoned) => poisoned.into_inner().0,
        }
    }
}

fn push_page(claim: &mut Claim, page: u64) {
    match claim.last_mut() {
        Some((_, end)) if *end == page => *end += 1,
        _ => claim.push((page, page + 1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(pages: u64, unit_pages: u64, preempt: bool) -> Session {
        let image = Arc::new(Image::synthetic(pages * 4096, 1, 0.0, 4096).expect("image"));
        Session::new(
            1,
            image,
            unit_pages * 4096,
            Policy {
                chunk: 16 * 4096,
                preempt,
            },
        )
    }

    #[test]
    fn every_page_is_claimed_once() {
        let s = session(100, 1, true);
        let urgent = s.claim_urgent(50, 52);
        assert_eq!(urgent, vec![(50, 52)]);
        s.urgent_done();
        let mut got = Vec::new();
        let mut from = 0;
        while let Some(claim) = s.claim_background(from) {
            from = claim.last().map_or(from, |r| r.1);
            got.extend(claim);
            s.unit_done();
        }
        let total: u64 = got.iter().map(|(a, b)| b - a).sum();
        assert_eq!(total, 98);
        assert!(got.iter().all(|&(a, b)| b <= 50 || a >= 52));
        assert!(got.iter().all(|&(a, b)| b - a <= 16));
    }

    #[test]
    fn background_pauses_for_urgent_work_unless_a_request_waits_for_its_unit() {
        let s = Arc::new(session(2048, 512, true));
        assert_eq!(s.claim_background(0), Some(vec![(0, 512)]));
        // Urgent work elsewhere: the background waits at its next chunk boundary...
        assert_eq!(s.claim_urgent(1000, 1001), vec![(1000, 1001)]);
        let waiter = {
            let s = Arc::clone(&s);
            std::thread::spawn(move || assert!(s.yield_to_urgent()))
        };
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !waiter.is_finished(),
            "the background must pause while urgent work is pending"
        );
        // ...until a request lands in its half-sent unit: then it must finish the unit at once,
        // however much other urgent work is pending (no starvation).
        assert!(s.claim_urgent(10, 11).is_empty());
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while !waiter.is_finished() {
            if std::time::Instant::now() > deadline {
                // Release the waiter so the test fails instead of hanging.
                s.close();
                panic!("the half-sent unit starved behind other urgent work");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // (Not timed from the waiter's side: under load its thread may start late, so its own
        // clock says nothing about the pause; `is_finished` above does.)
        waiter.join().expect("waiter");
        s.urgent_done();
        s.urgent_done();
        s.unit_done();
    }

    #[test]
    fn without_preemption_urgent_waits_for_the_unit_boundary() {
        let s = Arc::new(session(1024, 512, false));
        s.claim_background(0).expect("unit");
        let urgent = {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                assert_eq!(s.claim_urgent(600, 601), vec![(600, 601)]);
                s.wait_unit_boundary();
            })
        };
        std::thread::sleep(Duration::from_millis(150));
        assert!(
            !urgent.is_finished(),
            "urgent must wait for the unit on the wire"
        );
        assert!(
            s.yield_to_urgent(),
            "the background never pauses without preemption"
        );
        s.unit_done();
        urgent.join().expect("urgent");
    }

    #[test]
    fn request_inside_current_unit_is_left_to_background() {
        let s = session(1024, 512, true);
        let claim = s.claim_background(0).expect("unit");
        assert_eq!(claim, vec![(0, 512)]);
        // A page of the half-sent unit: not claimed again, and the background must hurry.
        assert!(s.claim_urgent(100, 101).is_empty());
        assert!(s.yield_to_urgent(), "hurry overrides the pause");
        s.urgent_done();
        s.unit_done();
        // A page of the next unit is the urgent connection's.
        assert_eq!(s.claim_urgent(600, 601), vec![(600, 601)]);
        s.urgent_done();
        let next = s.claim_background(512).expect("unit");
        assert_eq!(next, vec![(512, 600), (601, 1024)]);
    }
}
