//! The handler thread: the minimal fault handler of [`uffd_core::handler`], resolving each
//! fault with the ioctl of one [`FaultPath`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use uffd_core::handler::{self, Resolve};
use uffd_core::place::{self, Outcome};
use uffd_core::Userfaultfd;

#[cfg(doc)]
use super::Fixture;
use super::{FaultPath, FILL};

/// The minimal fault handler of [`uffd_core::handler`] on its own (optionally pinned) thread,
/// resolving each fault with the ioctl of its [`FaultPath`] (which wakes the faulting thread).
/// Stops and joins on drop.
///
/// If resolving fails, the handler records the error and unregisters the faulting page so
/// that the faulting thread is released (by an ordinary fault) instead of sleeping forever;
/// see [`Handler::check`].
#[derive(Debug)]
pub struct Handler {
    inner: handler::Handler,
    path: FaultPath,
    /// MOVE: source minus destination, set per fixture.
    move_delta: Arc<AtomicU64>,
}

impl Handler {
    /// Starts the handler thread for `path` on `uffd`, pinned to `cpu` if given. Returns once
    /// the thread runs (and is pinned).
    pub fn spawn(uffd: Arc<Userfaultfd>, path: FaultPath, cpu: Option<usize>) -> Result<Handler> {
        let move_delta = Arc::new(AtomicU64::new(0));
        let resolve = resolver(path, Arc::clone(&move_delta));
        let inner = handler::Handler::spawn(uffd, path.page_size() as u64, cpu, resolve)
            .with_context(|| format!("fault handler for {}", path.name()))?;
        Ok(Handler {
            inner,
            path,
            move_delta,
        })
    }

    /// Faults resolved so far.
    pub fn resolved(&self) -> u64 {
        self.inner.resolved()
    }

    /// Waits (yielding the CPU) until the handler has resolved at least `resolved` faults and
    /// gone back to its wait.
    pub fn wait_until_waiting(&self, resolved: u64, timeout: Duration) -> Result<()> {
        self.inner
            .wait_until_waiting(resolved, timeout)
            .with_context(|| self.path.name())
    }

    /// Sets where MOVE takes its pages from: `source = destination + delta` (wrapping).
    ///
    /// # Safety
    /// Until it is changed again, every address `fault + delta` for a fault the handler will
    /// see must be private anonymous memory of this process that no Rust reference points
    /// into (the pages leave it), e.g. [`Fixture::move_delta`] of the fixture being touched.
    pub unsafe fn set_move_delta(&self, delta: u64) {
        self.move_delta.store(delta, Ordering::Release);
    }

    /// The first error the handler met, if any.
    pub fn check(&self) -> Result<()> {
        self.inner.check().with_context(|| self.path.name())
    }
}

/// Resolves a fault of `path` on the page at its start with the path's ioctl.
fn resolver(path: FaultPath, move_delta: Arc<AtomicU64>) -> Resolve {
    let page = path.page_size() as u64;
    let source = vec![FILL; path.page_size()];
    Box::new(move |uffd, start| {
        Ok(match path {
            FaultPath::Copy4k | FaultPath::HugetlbCopy2m => {
                place::copy(uffd, start, &source, true)?
            }
            FaultPath::Zeropage4k => place::zeropage(uffd, start, page, true)?,
            FaultPath::ContinueShmem4k | FaultPath::ContinueHugetlb2m => {
                place::continue_(uffd, start, page, true)?
            }
            FaultPath::Move4k => {
                let src = start.wrapping_add(move_delta.load(Ordering::Acquire));
                // SAFETY: `set_move_delta`'s contract: `src` is a populated private page of
                // this process that nothing borrows.
                unsafe { place::move_(uffd, start, src, page, true) }?
            }
            FaultPath::WriteProtect4k => {
                uffd.write_protect(start, page, false)?;
                Outcome::Placed(page)
            }
        })
    })
}
