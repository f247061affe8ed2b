//! Signs of life: when the client last heard from the page server, and when it last asked.
//!
//! TCP alone does not notice everything: a link that goes silent (no RST, no FIN) leaves a
//! blocked read waiting for ever, and a stopped server process (SIGSTOP, a debugger, a paused
//! VM) keeps its kernel acknowledging every byte while no answer ever comes. The socket
//! options ([`uffd_core::Conn::set_liveness`]) cover the first case at the TCP level; the
//! watchdog ([`crate::watchdog`]) covers both at the application level, with the clock kept
//! here.

use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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

/// The connections' `TCP_USER_TIMEOUT` for a given stall timeout: half as long again, so that
/// when both could fire the watchdog speaks first, with the clearer reason.
pub fn tcp_timeout(stall_timeout: Duration) -> Duration {
    stall_timeout + stall_timeout / 2
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
}
