//! The state of each page of the region: present, requested, discarded or unmapped. The
//! receivers and the fault handler set `received` and `requested`; the application's events
//! ([`crate::events`]) set `discarded` and `gone`, under the write side of `events_lock`.

use std::sync::RwLock;

use uffd_core::PageBitmap;

/// One bit per page of the region for each state, and the lock that orders placements with
/// the application's events.
#[derive(Debug)]
pub struct PageState {
    /// Pages present in the region (which may be longer than the image: huge-page backings
    /// round it up to whole huge pages; the padding is placed as zeros with the last one).
    pub received: PageBitmap,
    /// Pages (first page of each request unit) already requested.
    pub requested: PageBitmap,
    /// Pages the application discarded (MADV_DONTNEED): they read as zero from now on.
    pub discarded: PageBitmap,
    /// Pages the application unmapped: never placed again.
    pub gone: PageBitmap,
    /// Held for writing while the fault handler reads and applies events; for reading by a
    /// receiver from "is this page discarded?" to its placement ioctl (see [`crate::events`]).
    pub events_lock: RwLock<()>,
}

impl PageState {
    /// Every page missing, nothing requested, discarded or unmapped.
    pub fn new(slots: usize) -> PageState {
        PageState {
            received: PageBitmap::new(slots),
            requested: PageBitmap::new(slots),
            discarded: PageBitmap::new(slots),
            gone: PageBitmap::new(slots),
            events_lock: RwLock::new(()),
        }
    }
}
