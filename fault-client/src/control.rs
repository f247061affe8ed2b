//! Run control: whether the run goes on, why it failed, and the wake-up of the thread that
//! waits for the run to finish or fail.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::fatal::Fatal;

/// The run failed: [`RunControl::wait_until`] gave up waiting with the first fatal error,
/// which is also its [`source`](std::error::Error::source).
#[derive(Debug, Clone)]
pub struct RunFailed {
    /// The first fatal error, as the thread that met it reported it ([`RunControl::fail`]).
    fatal: Arc<Fatal>,
}

impl RunFailed {
    /// Why the run stopped.
    pub fn fatal(&self) -> &Fatal {
        &self.fatal
    }
}

impl std::fmt::Display for RunFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.fatal.fmt(f)
    }
}

impl std::error::Error for RunFailed {
    /// The [`Fatal`] itself (not its `Arc`), so that a caller walking the chain can
    /// downcast to it.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.fatal)
    }
}

/// Shared by every thread of a run: the stop flag, the first fatal error, and a condition
/// the main thread waits on.
#[derive(Debug, Default)]
pub struct RunControl {
    /// Set once the run is over: every thread returns.
    stop: AtomicBool,
    /// The first fatal error: the run fails with it.
    fatal: Mutex<Option<Arc<Fatal>>>,
    /// Wakes [`RunControl::wait_until`] to re-check its condition.
    progress: Condvar,
    progress_lock: Mutex<()>,
}

impl RunControl {
    /// Records the first fatal error and wakes the main thread.
    pub fn fail(&self, why: impl Into<Fatal>) {
        let why = why.into();
        let mut fatal = self.fatal.lock().unwrap_or_else(|e| e.into_inner());
        if fatal.is_none() && !self.stop.load(Ordering::Acquire) {
            tracing::debug!("fatal: {why}");
            *fatal = Some(Arc::new(why));
        }
        drop(fatal);
        self.notify();
    }

    /// The fatal error, if any.
    pub fn fatal(&self) -> Option<Arc<Fatal>> {
        self.fatal.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The run so far: failed with its fatal error, or not (yet).
    pub fn check(&self) -> Result<(), RunFailed> {
        match self.fatal() {
            Some(fatal) => Err(RunFailed { fatal }),
            None => Ok(()),
        }
    }

    /// Tells every thread to stop (the run is over).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.notify();
    }

    /// True once [`RunControl::stop`] was called.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Wakes the main thread to re-check its condition.
    pub fn notify(&self) {
        let _guard = self.progress_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.progress.notify_all();
    }

    /// Waits until `done()` or a fatal error, checking at least every 50 ms.
    pub fn wait_until(&self, done: impl Fn() -> bool) -> Result<(), RunFailed> {
        let mut guard = self.progress_lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            self.check()?;
            if done() {
                return Ok(());
            }
            guard = match self.progress.wait_timeout(guard, Duration::from_millis(50)) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }
}
