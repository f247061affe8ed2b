//! The link's state shared with the other threads: the request path, the current generation
//! of connections, why it was lost, and whether its background stream has ended. The link
//! supervisor ([`crate::link`]) owns the changes; receivers and the fault handler report here.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use uffd_core::{Conn, FrameWriter};

use crate::control::RunControl;
use crate::fatal::Loss;

/// The state of the connections.
#[derive(Debug, Default)]
pub struct LinkState {
    /// The current connection generation (see [`crate::link`]).
    pub generation: AtomicU64,
    /// Where requests go; None while the link is being re-established.
    urgent_tx: Mutex<Option<FrameWriter<Conn>>>,
    /// Why the current generation's connections were lost, until the link is back.
    lost: Mutex<Option<Arc<Loss>>>,
    /// Wakes the supervisor waiting in [`LinkState::wait_lost`].
    changed: Condvar,
    /// The current background connection sent its end frame.
    background_done: AtomicBool,
}

impl LinkState {
    /// A connection of `generation` failed: the link supervisor reconnects (older
    /// generations' failures are the supervisor's own doing and are ignored).
    pub fn lost(&self, run: &RunControl, generation: u64, why: Loss) {
        if run.stopping() || generation != self.generation.load(Ordering::Acquire) {
            return;
        }
        let mut lost = self.lost.lock().unwrap_or_else(|e| e.into_inner());
        if lost.is_none() {
            *lost = Some(Arc::new(why));
        }
        self.changed.notify_all();
    }

    /// Blocks until a connection is lost (returns why) or the run stops (None).
    pub fn wait_lost(&self, run: &RunControl) -> Option<Arc<Loss>> {
        let mut lost = self.lost.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if run.stopping() {
                return None;
            }
            if let Some(why) = lost.clone() {
                return Some(why);
            }
            lost = match self.changed.wait_timeout(lost, Duration::from_millis(100)) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// The link is back.
    pub fn clear_lost(&self) {
        *self.lost.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Wakes the supervisor to see that the run stops.
    pub fn wake(&self) {
        let _guard = self.lost.lock().unwrap_or_else(|e| e.into_inner());
        self.changed.notify_all();
    }

    /// The request path (None while reconnecting).
    pub fn lock_urgent(&self) -> std::sync::MutexGuard<'_, Option<FrameWriter<Conn>>> {
        self.urgent_tx.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new background connection starts its stream afresh.
    pub fn reset_background(&self) {
        self.background_done.store(false, Ordering::Release);
    }

    /// The background stream sent its end frame.
    pub fn finish_background(&self) {
        self.background_done.store(true, Ordering::Release);
    }

    /// True once the background stream sent its end frame.
    pub fn background_done(&self) -> bool {
        self.background_done.load(Ordering::Acquire)
    }
}
