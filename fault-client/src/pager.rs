//! The pager: the state of a registered region filled on demand from the page server.
//!
//! Three kinds of threads share one [`Pager`]:
//! - the **fault handler** (`fault.rs`) polls the userfaultfd; each fault on a page nobody
//!   asked for yet becomes one request on the urgent connection ([`Pager::request`]; the
//!   `requested` bitmap makes that true however many threads fault on the page);
//! - the **urgent receiver** and the **background receiver** (`receive.rs`) read frames and
//!   place pages (`placer.rs`) with UFFDIO_COPY / ZEROPAGE, which wakes the threads waiting on
//!   them. The kernel refuses to place a page twice (EEXIST), so a page that arrives on both
//!   connections is placed once.
//!
//! If the server goes away, the pager records a fatal error and the run stops. The userfaultfd
//! is never closed while a thread may still be blocked on a fault: closing it would let such a
//! thread run on a zero-filled page. Blocked threads keep the pager (and so the descriptor)
//! alive until the process exits.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use hugepage::{Mapped, Memory};
use uffd_core::{Frame, Limits, Userfaultfd};

use crate::control::RunControl;
use crate::link_state::LinkState;
use crate::pages::PageState;
use crate::workload::Waits;
use uffd_core::convert::usize_from;

/// Counters of a run (all monotonic).
#[derive(Debug, Default)]
pub struct Counters {
    /// Fault messages read from the userfaultfd.
    pub faults: AtomicU64,
    /// Requests sent on the urgent connection.
    pub requests: AtomicU64,
    /// Data pages placed from the urgent connection.
    pub pages_urgent: AtomicU64,
    /// Data pages placed from the background connection.
    pub pages_background: AtomicU64,
    /// Zero pages placed (either connection).
    pub pages_zero: AtomicU64,
    /// Pages that arrived but were already present.
    pub pages_duplicate: AtomicU64,
    /// Bytes read from both connections.
    pub bytes_received: AtomicU64,
    /// Times the link was re-established after a connection was lost.
    pub reconnects: AtomicU64,
    /// THP units placed but left mapped with base pages (MADV_COLLAPSE failed).
    pub huge_pages_not_collapsed: AtomicU64,
    /// REMOVE events (MADV_DONTNEED) read.
    pub events_remove: AtomicU64,
    /// UNMAP events read.
    pub events_unmap: AtomicU64,
    /// REMAP events read.
    pub events_remap: AtomicU64,
    /// FORK events read.
    pub events_fork: AtomicU64,
    /// Faults on discarded pages, resolved locally with zeros.
    pub pages_discarded_zeroed: AtomicU64,
}

/// Which connection a receiver reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// Answers to requests.
    Urgent,
    /// The stream.
    Background,
}

impl Channel {
    /// `urgent` or `background`.
    pub fn name(self) -> &'static str {
        match self {
            Channel::Urgent => "urgent",
            Channel::Background => "background",
        }
    }
}

/// State shared by the pager's threads.
#[derive(Debug)]
pub struct Pager {
    /// The registered memory.
    pub memory: Memory,
    /// The descriptor it is registered with.
    pub uffd: Arc<Userfaultfd>,
    /// Base page size.
    pub page: u64,
    /// Pages in the image.
    pub pages: u64,
    /// Which pages are present, requested, discarded or unmapped, and the events lock.
    pub page_state: PageState,
    /// Set when the urgent connection placed pages directly inside huge-page units (THP): the
    /// background assembler re-checks its units, which may be complete now.
    pub recheck: AtomicBool,
    /// Counters.
    pub counters: Counters,
    /// Decoder limits for the server's frames.
    pub limits: Limits,
    image_size: u64,
    /// The `--trace` file, if any.
    pub trace: Option<crate::trace::Trace>,
    /// Fault messages read per thread: which workload accesses waited on a userfault.
    pub waits: Waits,
    /// When the server was last heard from and last asked ([`crate::liveness`]).
    pub liveness: crate::liveness::Liveness,
    /// The connections: the request path, the generation, and why it was lost.
    pub link: LinkState,
    /// Whether the run goes on, and why it failed.
    pub run: RunControl,
}

impl Pager {
    /// A pager over `memory`, registered with `uffd`, for an image of `image_size` bytes.
    pub fn new(
        memory: Memory,
        uffd: Arc<Userfaultfd>,
        image_size: u64,
        trace: Option<crate::trace::Trace>,
    ) -> Pager {
        let page = uffd_core::page_size() as u64;
        let pages = image_size.div_ceil(page);
        let slots = memory.pages();
        Pager {
            memory,
            uffd,
            page,
            pages,
            page_state: PageState::new(slots),
            recheck: AtomicBool::new(false),
            counters: Counters::default(),
            limits: Limits::new(image_size, page),
            image_size,
            trace,
            waits: Waits::default(),
            liveness: crate::liveness::Liveness::default(),
            link: LinkState::default(),
            run: RunControl::default(),
        }
    }

    /// The fatal error, if any ([`RunControl::fatal`]).
    pub fn fatal(&self) -> Option<Arc<crate::fatal::Fatal>> {
        self.run.fatal()
    }

    /// Tells every thread to stop (the run is over), the link supervisor too.
    pub fn stop(&self) {
        self.run.stop();
        self.link.wake();
    }

    /// True if every page of the request unit starting at `first` is present.
    pub fn unit_present(&self, first: u64, unit_pages: u64) -> bool {
        (first..(first + unit_pages).min(self.pages))
            .all(|p| self.page_state.received.get(usize_from(p)))
    }

    /// The received bitmap as words, for resuming a session.
    pub fn present_words(&self) -> Vec<u64> {
        self.page_state.received.to_words()
    }

    /// The image size the session started with.
    pub fn limits_image_size(&self) -> u64 {
        self.image_size
    }

    /// Address of page `index` (where it is now, if the application moved it).
    pub fn page_addr(&self, index: u64) -> u64 {
        self.memory.page_addr(index)
    }

    /// The image page at `addr`, following moves; None outside the region (and at the old
    /// place of a moved range).
    pub fn image_page(&self, addr: u64) -> Option<u64> {
        self.memory.region_page(addr)
    }

    /// The image pages of `start..end`.
    pub fn pages_in(&self, start: u64, end: u64) -> Vec<u64> {
        (start / self.page..end.div_ceil(self.page))
            .filter_map(|p| self.image_page(p * self.page))
            .collect()
    }

    /// Pages of `mapped` past the end of the image: the zero padding of the last huge page,
    /// which the counters leave out.
    pub(crate) fn padding_pages(&self, mapped: &Mapped) -> u64 {
        let image_end = self.pages * self.page;
        let end = mapped.offset + mapped.len;
        end.saturating_sub(image_end.max(mapped.offset)) / self.page
    }

    /// True when every page is present, discarded or unmapped: nothing more will come.
    pub fn complete(&self) -> bool {
        let total = self.page_state.received.len();
        if self.page_state.discarded.count() == 0 && self.page_state.gone.count() == 0 {
            return self.page_state.received.count() == total;
        }
        let settled = (0..total)
            .filter(|&p| {
                self.page_state.received.get(p)
                    || self.page_state.discarded.get(p)
                    || self.page_state.gone.get(p)
            })
            .count();
        settled == total
    }

    /// Requests the unit holding `page` unless it was requested already. Returns true if a
    /// request went out (or will, when the link is back).
    pub fn request(&self, page: u64) -> bool {
        let unit_pages = (self.memory.request_unit() / self.page).max(1);
        let first = page / unit_pages * unit_pages;
        if first >= self.pages || !self.page_state.requested.set(usize_from(first)) {
            return false;
        }
        // The last unit of a huge-page backing may reach past the image: ask for the image's
        // part; the padding is zeroed with it.
        let len = unit_pages.min(self.pages - first) * self.page;
        let request = Frame::Request {
            offset: first * self.page,
            len,
        };
        // While the link is down the request stays marked; the link supervisor re-sends
        // every unanswered request once it has reconnected.
        let generation = self.link.generation.load(Ordering::Acquire);
        let mut tx = self.link.lock_urgent();
        if let Some(writer) = tx.as_mut() {
            let at = std::time::Instant::now();
            match writer.send(&request) {
                Ok(()) => {
                    self.liveness.asked();
                    self.counters.requests.fetch_add(1, Ordering::Relaxed);
                    if let Some(trace) = &self.trace {
                        trace.request(at, first * self.page, len);
                    }
                }
                Err(err) => {
                    *tx = None;
                    drop(tx);
                    let why = crate::fatal::Loss::Request(err);
                    self.link.lost(&self.run, generation, why);
                }
            }
        }
        true
    }
}

impl Drop for Pager {
    fn drop(&mut self) {
        // Unregister before the region is unmapped: with EVENT_UNMAP negotiated, munmap of a
        // registered range queues an UNMAP event and sleeps until someone reads it, and the
        // fault handler is gone by now. (Dropping the pager means no thread can still be
        // blocked on a fault of the region: each such thread holds the pager.)
        // Where the region is now: a part the application moved stays registered there.
        for (start, len) in self.memory.ranges() {
            let _ = self.uffd.unregister(start, len);
        }
    }
}

/// Spawns a named thread running `f` with the pager.
pub fn spawn(
    name: &str,
    pager: &Arc<Pager>,
    f: impl FnOnce(&Pager) + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let pager = Arc::clone(pager);
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || f(&pager))
}
