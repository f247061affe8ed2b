//! Stall detection: a page server that stops answering while the client waits for pages.
//!
//! TCP alone does not notice everything: a link that goes silent (no RST, no FIN) leaves a
//! blocked read waiting for ever, and a stopped server process (SIGSTOP, a debugger, a paused
//! VM) keeps its kernel acknowledging every byte while no answer ever comes. The socket
//! options ([`uffd_core::Conn::set_liveness`]) cover the first case at the TCP level; this
//! watchdog covers both at the application level:
//!
//! **A stall** is `stall_timeout` of silence while the client *waits* for something: nothing
//! has arrived on either connection and no page was placed, no request was sent and no
//! connection was opened, and yet a request is unanswered or the background stream is not
//! finished. A client that waits for nothing may be silent for hours (its server has nothing
//! to say either); a server that is merely slow keeps sending something. A stall is
//! reported through [`Pager::lost`], like a failed connection: the link supervisor
//! reconnects and resumes within `--reconnect-timeout`, or ends the run with the stall as the
//! reason.

use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::pager::Pager;

/// When the client last heard from the server, and when it last asked for something.
#[derive(Debug)]
pub struct Liveness {
    epoch: Instant,
    /// Nanoseconds since `epoch` of the last bytes received or page placed.
    heard: AtomicU64,
    /// Nanoseconds since `epoch` of the last request sent or connection opened.
    asked: AtomicU64,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness {
            epoch: Instant::now(),
            heard: AtomicU64::new(0),
            asked: AtomicU64::new(0),
        }
    }
}

impl Liveness {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Bytes arrived, or a page was placed.
    pub fn heard(&self) {
        self.heard.fetch_max(self.now(), Ordering::Relaxed);
    }

    /// A request went out, or a new connection was opened: an answer may take a while.
    pub fn asked(&self) {
        self.asked.fetch_max(self.now(), Ordering::Relaxed);
    }

    /// Time since the last of both.
    pub fn silence(&self) -> Duration {
        let last = self
            .heard
            .load(Ordering::Relaxed)
            .max(self.asked.load(Ordering::Relaxed));
        Duration::from_nanos(self.now().saturating_sub(last))
    }
}

/// A reader that tells [`Liveness::heard`] of every byte it reads (a large frame crossing a
/// slow link arrives piece by piece: each piece counts).
#[derive(Debug)]
pub struct Heard<'a, R> {
    inner: R,
    liveness: &'a Liveness,
}

impl<'a, R> Heard<'a, R> {
    /// Wraps `inner`.
    pub fn new(inner: R, liveness: &'a Liveness) -> Self {
        Heard { inner, liveness }
    }
}

impl<R: Read> Read for Heard<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.liveness.heard();
        }
        Ok(n)
    }
}

/// The stall message: the reason a run ends with when the server stays silent.
pub fn stall_message(stall_timeout: Duration) -> String {
    let secs = stall_timeout.as_secs_f64();
    let secs = if secs.fract() == 0.0 {
        format!("{secs:.0}")
    } else {
        format!("{secs:.1}")
    };
    format!("no answer from the page server for {secs} s; the link may be down")
}

/// The connections' `TCP_USER_TIMEOUT` for a given stall timeout: half as long again, so that
/// when both could fire the watchdog speaks first, with the clearer reason.
pub fn tcp_timeout(stall_timeout: Duration) -> Duration {
    stall_timeout + stall_timeout / 2
}

/// The watchdog thread: reports a stall of the current generation through [`Pager::lost`].
/// Returns when the pager stops or the run has failed.
pub fn watch(pager: &Pager, stall_timeout: Duration, background: bool) {
    let tick = (stall_timeout / 10).clamp(Duration::from_millis(10), Duration::from_millis(250));
    // Once per generation: the next one is reported only after the supervisor opened it.
    let mut reported = None;
    while !pager.stopping() && pager.fatal().is_none() {
        // In short naps: a stopping pager waits for this thread to end.
        let started = Instant::now();
        while started.elapsed() < tick && !pager.stopping() {
            std::thread::sleep(Duration::from_millis(10));
        }
        let generation = pager.generation.load(Ordering::Acquire);
        if reported == Some(generation)
            || pager.liveness.silence() < stall_timeout
            || !waiting(pager, background)
        {
            continue;
        }
        tracing::warn!("{}", stall_message(stall_timeout));
        pager.lost(generation, stall_message(stall_timeout));
        reported = Some(generation);
    }
}

/// True while the client waits for the server: a request is unanswered, or the background
/// stream has not finished.
fn waiting(pager: &Pager, background: bool) -> bool {
    if pager.complete() {
        return false;
    }
    if background && !pager.background_done() {
        return true;
    }
    unanswered(pager)
}

/// A request whose unit still lacks a page that nobody discarded or unmapped.
fn unanswered(pager: &Pager) -> bool {
    let unit_pages = (pager.memory.request_unit() / pager.page).max(1);
    let settled = |p: u64| {
        let p = p as usize;
        pager.received.get(p) || pager.discarded.get(p) || pager.gone.get(p)
    };
    let words = pager.requested.to_words();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_counts_from_the_last_sign_of_life() {
        let l = Liveness::default();
        std::thread::sleep(Duration::from_millis(30));
        assert!(l.silence() >= Duration::from_millis(30));
        l.asked();
        assert!(l.silence() < Duration::from_millis(30));
        std::thread::sleep(Duration::from_millis(30));
        l.heard();
        assert!(l.silence() < Duration::from_millis(30));
    }

    #[test]
    fn reads_are_heard() {
        let l = Liveness::default();
        std::thread::sleep(Duration::from_millis(30));
        let mut r = Heard::new(&b"abc"[..], &l);
        let mut buf = [0u8; 2];
        assert_eq!(r.read(&mut buf).expect("read"), 2);
        assert!(l.silence() < Duration::from_millis(30));
    }

    #[test]
    fn stall_message_names_the_timeout() {
        assert_eq!(
            stall_message(Duration::from_secs(10)),
            "no answer from the page server for 10 s; the link may be down"
        );
        assert!(stall_message(Duration::from_millis(1500)).contains("1.5 s"));
    }
}
