//! The stall watchdog: a thread that ends a wait on a silent page server (see
//! [`crate::liveness`] for why TCP alone does not notice).
//!
//! **A stall** is `stall_timeout` of silence while the client *waits* for something: nothing
//! has arrived on either connection and no page was placed, no request was sent and no
//! connection was opened, and yet a request is unanswered or the background stream is not
//! finished. A client that waits for nothing may be silent for hours (its server has nothing
//! to say either); a server that is merely slow keeps sending something. A stall is
//! reported through [`LinkState::lost`](crate::link_state::LinkState::lost), like a failed connection: the link supervisor
//! reconnects and resumes within `--reconnect-timeout`, or ends the run with the stall as the
//! reason.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::fatal::Loss;
use crate::pager::Pager;
use uffd_core::convert::usize_from;

/// The watchdog thread: reports a stall of the current generation through [`LinkState::lost`](crate::link_state::LinkState::lost).
/// Returns when the pager stops or the run has failed.
pub fn watch(pager: &Pager, stall_timeout: Duration, background: bool) {
    let tick = (stall_timeout / 10).clamp(Duration::from_millis(10), Duration::from_millis(250));
    // Once per generation: the next one is reported only after the supervisor opened it.
    let mut reported = None;
    while !pager.run.stopping() && pager.run.fatal().is_none() {
        // In short naps: a stopping pager waits for this thread to end.
        let started = Instant::now();
        while started.elapsed() < tick && !pager.run.stopping() {
            std::thread::sleep(Duration::from_millis(10));
        }
        let generation = pager.link.generation.load(Ordering::Acquire);
        if reported == Some(generation)
            || pager.liveness.silence() < stall_timeout
            || !waiting(pager, background)
        {
            continue;
        }
        let stall = Loss::Stall {
            timeout: stall_timeout,
        };
        tracing::warn!("{stall}");
        pager.link.lost(&pager.run, generation, stall);
        reported = Some(generation);
    }
}

/// True while the client waits for the server: a request is unanswered, or the background
/// stream has not finished.
fn waiting(pager: &Pager, background: bool) -> bool {
    if pager.complete() {
        return false;
    }
    if background && !pager.link.background_done() {
        return true;
    }
    unanswered(pager)
}

/// A request whose unit still lacks a page that nobody discarded or unmapped.
fn unanswered(pager: &Pager) -> bool {
    let unit_pages = (pager.memory.request_unit() / pager.page).max(1);
    let settled = |p: u64| {
        let p = usize_from(p);
        pager.page_state.received.get(p)
            || pager.page_state.discarded.get(p)
            || pager.page_state.gone.get(p)
    };
    let words = pager.page_state.requested.to_words();
    words.iter().enumerate().any(|(w, &word)| {
        let mut bits = word;
        while bits != 0 {
            let first = w as u64 * 64 + u64::from(bits.trailing_zeros());
            bits &= bits - 1;
            let end = (first + unit_pages).min(pager.pages);
            if !(first..end).all(settled) {
                return true;
            }
        }
        false
    })
}
