//! `uffd_core::FrameReader` over an in-memory reader that returns the input in small pieces
//! (sizes from the input; 0 = `Interrupted`, 255 = a fatal reset), reading frames until an
//! error or the end. Checks: no panic; the same frames, byte counts and ending as `decode` on
//! the whole buffer; a bounded number of reads; and bounded memory: no input makes the
//! reader allocate more than its one payload buffer (`MAX_PAYLOAD`) and a little more.
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use libfuzzer_sys::fuzz_target;
use uffd_lab_fuzz::oracle;

/// The system allocator, counting the bytes live and the peak since the last reset.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(size: usize) {
    let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so
// `System`'s guarantees hold; the counters are only bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded from the caller, who upholds `alloc`'s contract.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded from the caller, who upholds `alloc_zeroed`'s contract.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded from the caller: `ptr` was allocated by this allocator (that is,
        // by `System`) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded from the caller, who upholds `realloc`'s contract.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        new
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The reader's payload buffer, and room for the harness's own small allocations.
const MEMORY_BOUND: usize = uffd_core::proto::MAX_PAYLOAD + (64 << 10);

fuzz_target!(|data: &[u8]| {
    let (limits, pieces, bytes) = oracle::split_stream_input(data);
    let pieces = oracle::usable_pieces(pieces);
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let stats = oracle::check_stream(&limits, &pieces, bytes);
    let peak = PEAK.load(Ordering::Relaxed) - base;
    assert!(
        peak <= MEMORY_BOUND,
        "reading {} bytes ({} frames) allocated {peak} bytes at the peak",
        bytes.len(),
        stats.frames
    );
});
