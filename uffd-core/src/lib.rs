//! `uffd-core`: the building blocks of on-demand paging with Linux userfaultfd.
//!
//! A region of memory is registered with a userfaultfd; a thread that touches a missing page
//! sleeps in the kernel while a message describing the fault is queued on the descriptor; a
//! handler reads it, obtains the page (here: from a page server over TCP), places it with an
//! ioctl, and the kernel wakes the thread. The path of a fault and of a background page through
//! the whole workspace is in `DESIGN.md`.
//!
//! # Layout
//! - [`convert`]: `u64` ↔ `usize` on a 64-bit target, justified once.
//! - [`sys`]: the raw ioctls, and the only `ioctl(2)` calls (COPY, ZEROPAGE, CONTINUE, MOVE,
//!   POISON, WAKE, API; USERFAULTFD_IOC_NEW on `/dev/userfaultfd`; PAGEMAP_SCAN on
//!   `/proc/self/pagemap`).
//! - [`uffd`]: the descriptor: creation and UFFDIO_API (`open`), registration (`register`),
//!   reading fault and event messages (`event`).
//! - [`region`]: mappings that own their `munmap`; memory files and their shared mappings
//!   (`memfd`); `madvise` advice for any range (`advice`).
//! - [`pagemap`]: PAGEMAP_SCAN: which pages are huge or the zero page; async write-protect
//!   dirty tracking.
//! - [`place`]: placement with outcomes as values (`Placed`, `AlreadyPresent`, `Retry`, `Gone`).
//! - [`proto`]: the versioned wire protocol (frames, strict decoder); see `docs/protocol.md`.
//! - [`wire`]: frames over a byte stream: `endpoint` (endpoints, listening, connecting), `conn`
//!   (connections and their socket options), `framed` (framed reading and writing).
//! - [`bitmap`]: lock-free page bitmaps (received, requested, sent).
//! - [`stats`]: latency histograms and the one percentile definition.
//! - [`handler`]: a minimal in-process fault handler thread (poll, read, resolve), the
//!   baseline round trip that benchmarks and tests use.
//! - [`repeat`]: repeated log events told as one summary line per period.
//! - [`logging`]: the log set-up the binaries share (stderr, `RUST_LOG`).
//! - [`synthetic`]: synthetic images, generated page by page from `(seed, index)`.
//! - [`probe`](mod@probe): what the kernel and the process allow.
//! - [`cpu`]: CPU affinity (for measurements) and real-time scheduling for the urgent path.
//! - [`units`]: sizes, durations, rates and fractions as the command lines write them.
//!
//! Modules depend one way; each uses only modules on the lines above its own:
//! 1. `convert`, `logging`
//! 2. `sys`, `region`, `bitmap`, `stats`, `repeat`, `cpu`, `proto`, `units`
//! 3. `uffd`, `pagemap`, `synthetic`, `wire`
//! 4. `place`, `probe`
//! 5. `handler`

pub mod bitmap;
pub mod convert;
pub mod cpu;
pub mod handler;
pub mod logging;
pub mod pagemap;
pub mod place;
pub mod probe;
pub mod proto;
pub mod region;
pub mod repeat;
pub mod stats;
pub mod synthetic;
pub mod sys;
pub mod uffd;
pub mod units;
pub mod wire;

pub use bitmap::PageBitmap;
pub use pagemap::Pagemap;
pub use place::{Filled, Outcome, PlaceError, Source};
pub use probe::{probe, Probe};
pub use proto::{Frame, Limits, ProtoError};
pub use region::{page_size, Region};
pub use stats::{Latency, Summary};
pub use synthetic::Synthetic;
pub use uffd::{Event, Modes, Userfaultfd};
pub use wire::{
    BatchReader, Conn, Endpoint, FrameBatch, FrameReader, FrameWriter, Listener, WireError,
};

/// Content checksum of one page, as the protocol carries it (xxh3-64).
pub fn checksum(page: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(page)
}
