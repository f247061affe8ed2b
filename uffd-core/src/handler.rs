//! A minimal in-process fault handler: the smallest complete userfaultfd program.
//!
//! One thread does what every userfaultfd pager does, with nothing else in the way:
//!
//! 1. `poll(2)` the descriptor until a message is there (it is opened `O_NONBLOCK`);
//! 2. `read(2)` the messages (several may come in one read);
//! 3. for each fault, *resolve* it: one ioctl maps the missing page (by default a UFFDIO_COPY
//!    of a page from a local source, filled with [`FILL`]) and wakes the faulting thread.
//!
//! It is the baseline "fault round trip" that the remote path is compared with (`fault-client
//! bench`, the criterion benches), and the handler the tests and benches use to time other
//! ioctls (pass another [`Resolve`]).
//!
//! For measuring one fault at a time, the handler publishes how many faults it has resolved
//! each time it goes back to `poll(2)`: [`Handler::wait_until_waiting`] lets the faulting
//! thread wait (untimed) until the handler is idle again, so every sample is one isolated
//! fault, not a pipeline in which the next message is already queued.
//!
//! If a fault cannot be resolved, the handler records the error and unregisters the faulting
//! page: the faulting thread is released by an ordinary fault (its content is then wrong,
//! which [`Handler::check`] explains) instead of sleeping forever.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::place::{self, Outcome, Stop};
use crate::uffd::{Event, Userfaultfd};

/// What the default source page holds: a resolved page shows it (a zero-filled page would not).
pub const FILL: u8 = 0xA5;
/// Where a faulting thread checks the content after its fault: not offset 0, which its own
/// timed access writes.
pub const CHECK_OFFSET: usize = 8;
/// How long a faulting thread waits for the handler to be idle again, by default.
pub const GATE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the handler sleeps in `poll(2)` before it looks at its stop flag.
const POLL_SLICE: Duration = Duration::from_millis(20);
/// How often a placement that answered EAGAIN is tried again. EAGAIN means an event is
/// unread; this handler negotiates none, so it is not expected at all.
const RETRIES: usize = 1000;

/// An error a [`Resolve`] may return.
pub type ResolveError = Box<dyn std::error::Error + Send + Sync>;

/// How a fault is resolved: called with the descriptor and the start of the faulting page,
/// it issues one ioctl (which wakes the thread) and returns the kernel's answer.
pub type Resolve = Box<dyn FnMut(&Userfaultfd, u64) -> Result<Outcome, ResolveError> + Send>;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The thread could not be started.
    #[error("cannot start the fault handler thread: {0}")]
    Spawn(std::io::Error),
    /// The handler thread could not be pinned to its CPU.
    #[error("fault handler: {0}")]
    Pin(crate::cpu::CpuError),
    /// The handler thread ended before it started serving.
    #[error("fault handler: exited before starting")]
    Exited,
    /// The handler thread failed (its first error).
    #[error("fault handler: {0}")]
    Failed(Arc<Failure>),
    /// The handler did not become idle in time.
    #[error("the fault handler did not come back to its wait within {timeout:?} (resolved {resolved} of {wanted})")]
    Timeout {
        /// How long the caller waited.
        timeout: Duration,
        /// Faults resolved by then.
        resolved: u64,
        /// Faults the caller waited for.
        wanted: u64,
    },
}

/// The first error the handler thread met, by the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// `poll(2)` on the descriptor failed.
    #[error("waiting for faults: {0}")]
    Wait(crate::uffd::UffdError),
    /// `read(2)` of the fault messages failed.
    #[error("reading fault messages: {0}")]
    Read(crate::uffd::UffdError),
    /// The fault on the page at `start` could not be resolved.
    #[error("resolving the fault at {start:#x}: {source}")]
    Resolve {
        /// The faulting page.
        start: u64,
        /// Why.
        source: ResolveFaultError,
    },
    /// Releasing the faulting thread after a failure (unregistering its page) failed too.
    #[error("unregistering {start:#x} after a failure: {source}")]
    Unregister {
        /// The faulting page.
        start: u64,
        /// Why.
        source: crate::uffd::UffdError,
    },
}

/// State shared by the handler thread and its owner.
struct Shared {
    uffd: Arc<Userfaultfd>,
    page: u64,
    stop: AtomicBool,
    /// Faults resolved so far.
    resolved: AtomicU64,
    /// `resolved` when the handler last went (back) to `poll(2)`; u64::MAX before the first.
    waiting_at: AtomicU64,
    /// The first error.
    error: Mutex<Option<Arc<Failure>>>,
}

impl Shared {
    fn fail(&self, failure: Failure) {
        let mut slot = self.error.lock().unwrap_or_else(|e| e.into_inner());
        slot.get_or_insert(Arc::new(failure));
    }
}

/// The handler thread; stopped and joined on drop (drop it only when no thread can still be
/// blocked on a fault it should resolve).
pub struct Handler {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handler")
            .field("page", &self.shared.page)
            .field("resolved", &self.resolved())
            .finish()
    }
}

impl Handler {
    /// Resolves by UFFDIO_COPY of one `page`-byte page filled with [`FILL`].
    pub fn copy_fill(page: u64) -> Resolve {
        let source = vec![FILL; usize::try_from(page).unwrap_or(4096)];
        Box::new(move |uffd, start| Ok(place::copy(uffd, start, &source, true)?))
    }

    /// Starts the handler thread for faults on `uffd`, in pages of `page` bytes, resolved by
    /// `resolve`; pinned to `cpu` if given. Returns once the thread runs (and is pinned).
    pub fn spawn(
        uffd: Arc<Userfaultfd>,
        page: u64,
        cpu: Option<usize>,
        resolve: Resolve,
    ) -> Result<Handler, HandlerError> {
        let shared = Arc::new(Shared {
            uffd,
            page,
            stop: AtomicBool::new(false),
            resolved: AtomicU64::new(0),
            waiting_at: AtomicU64::new(u64::MAX),
            error: Mutex::new(None),
        });
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("uffd-handler".into())
            .spawn(move || {
                let pinned = cpu.map_or(Ok(()), crate::cpu::pin_current_thread);
                let ok = pinned.is_ok();
                // The owner waits for this message; if it is gone, nobody needs us.
                let _ = ready_tx.send(pinned);
                if ok {
                    serve(&thread_shared, resolve);
                }
            })
            .map_err(HandlerError::Spawn)?;
        let handler = Handler {
            shared,
            thread: Some(thread),
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(handler),
            Ok(Err(err)) => Err(HandlerError::Pin(err)),
            Err(_) => Err(HandlerError::Exited),
        }
    }

    /// Faults resolved so far.
    pub fn resolved(&self) -> u64 {
        self.shared.resolved.load(Ordering::Acquire)
    }

    /// Waits (yielding the CPU, so that a handler pinned to the caller's CPU can run) until
    /// the handler has resolved at least `resolved` faults and is back in `poll(2)`.
    pub fn wait_until_waiting(&self, resolved: u64, timeout: Duration) -> Result<(), HandlerError> {
        let deadline = Instant::now() + timeout;
        loop {
            let at = self.shared.waiting_at.load(Ordering::Acquire);
            if at != u64::MAX && at >= resolved {
                return Ok(());
            }
            self.check()?;
            if Instant::now() >= deadline {
                return Err(HandlerError::Timeout {
                    timeout,
                    resolved: self.resolved(),
                    wanted: resolved,
                });
            }
            std::thread::yield_now();
        }
    }

    /// The first error the handler met, if any.
    pub fn check(&self) -> Result<(), HandlerError> {
        let slot = self.shared.error.lock().unwrap_or_else(|e| e.into_inner());
        match slot.as_ref() {
            Some(failure) => Err(HandlerError::Failed(Arc::clone(failure))),
            None => Ok(()),
        }
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The handler loop: poll, read, resolve.
fn serve(shared: &Shared, mut resolve: Resolve) {
    let uffd = &*shared.uffd;
    let mut buf = Userfaultfd::event_buffer(16);
    let mut events = Vec::with_capacity(16);
    while !shared.stop.load(Ordering::Acquire) {
        shared
            .waiting_at
            .store(shared.resolved.load(Ordering::Acquire), Ordering::Release);
        match uffd.wait_readable(POLL_SLICE) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(err) => return shared.fail(Failure::Wait(err)),
        }
        events.clear();
        if let Err(err) = uffd.read_events(&mut buf, &mut events) {
            return shared.fail(Failure::Read(err));
        }
        for event in &events {
            // No event features are negotiated: faults are the only messages.
            let Event::Fault { addr, .. } = event else {
                continue;
            };
            let start = addr & !(shared.page - 1);
            if let Err(source) = resolve_one(shared, &mut resolve, start) {
                shared.fail(Failure::Resolve { start, source });
                // Release the faulting thread: without registration its access is an
                // ordinary fault.
                if let Err(source) = uffd.unregister(start, shared.page) {
                    shared.fail(Failure::Unregister { start, source });
                }
            }
            shared.resolved.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// Why one fault could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveFaultError {
    /// The resolve function failed.
    #[error("{0}")]
    Resolve(ResolveError),
    /// The page was there already, and waking its waiters failed.
    #[error("UFFDIO_WAKE: {0}")]
    Wake(crate::uffd::UffdError),
    /// The region's owner is gone.
    #[error("the process owning the region exited")]
    Gone,
    /// The kernel kept answering EAGAIN (the mappings keep changing).
    #[error("placement at {start:#x} answered EAGAIN {RETRIES} times")]
    Retries {
        /// The page.
        start: u64,
    },
}

/// Resolves the fault on the page at `start`; a page that is there already only needs the
/// wake-up.
fn resolve_one(
    shared: &Shared,
    resolve: &mut Resolve,
    start: u64,
) -> Result<(), ResolveFaultError> {
    let uffd = &*shared.uffd;
    for _ in 0..RETRIES {
        let outcome = resolve(uffd, start).map_err(ResolveFaultError::Resolve)?;
        match outcome.stop() {
            None if outcome == Outcome::AlreadyPresent => {
                return uffd
                    .wake(start, shared.page)
                    .map_err(ResolveFaultError::Wake)
            }
            None => return Ok(()),
            Some(Stop::Retry) => std::thread::yield_now(),
            Some(Stop::Gone) => return Err(ResolveFaultError::Gone),
        }
    }
    Err(ResolveFaultError::Retries { start })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::{page_size, Region};
    use crate::uffd::Modes;

    #[test]
    fn faults_are_resolved_with_the_fill_page_one_at_a_time() {
        let uffd = match Userfaultfd::open(0) {
            Ok(uffd) => Arc::new(uffd),
            Err(err) => return uffd_testkit::skip(&err.to_string()),
        };
        let page = page_size();
        let region = Region::anonymous(4 * page).expect("mmap");
        uffd.register(region.addr(), region.len() as u64, Modes::MISSING)
            .expect("register");
        let handler = Handler::spawn(
            Arc::clone(&uffd),
            page as u64,
            None,
            Handler::copy_fill(page as u64),
        )
        .expect("spawn");
        for i in 0..4 {
            handler
                .wait_until_waiting(i as u64, GATE_TIMEOUT)
                .expect("idle");
            // SAFETY: in bounds; the page is resolved by the handler; nothing borrows it.
            unsafe { region.as_ptr().add(i * page).write_volatile(1) };
            // SAFETY: the page is present now.
            let got = unsafe { region.as_ptr().add(i * page + CHECK_OFFSET).read_volatile() };
            assert_eq!(got, FILL);
        }
        // The woken thread may run before the handler counts its fault: wait for the count.
        handler
            .wait_until_waiting(4, GATE_TIMEOUT)
            .expect("all four counted");
        handler.check().expect("no error");
        assert_eq!(handler.resolved(), 4);
    }

    #[test]
    fn a_failing_resolution_releases_the_thread_and_is_reported() {
        let uffd = match Userfaultfd::open(0) {
            Ok(uffd) => Arc::new(uffd),
            Err(err) => return uffd_testkit::skip(&err.to_string()),
        };
        let page = page_size();
        let region = Region::anonymous(page).expect("mmap");
        uffd.register(region.addr(), page as u64, Modes::MISSING)
            .expect("register");
        let failing: Resolve = Box::new(|_, _| Err("no page for you".into()));
        let handler = Handler::spawn(Arc::clone(&uffd), page as u64, None, failing).expect("spawn");
        // SAFETY: in bounds; released by the handler's unregister; nothing borrows it.
        unsafe { region.as_ptr().write_volatile(1) };
        let err = handler.check().expect_err("the failure is kept");
        assert!(err.to_string().contains("no page for you"), "{err}");
        let HandlerError::Failed(failure) = err else {
            panic!("not a failure of the thread: {err}");
        };
        assert!(
            matches!(*failure, Failure::Resolve { start, .. } if start == region.addr()),
            "{failure:?}"
        );
    }
}
