//! `hugepage`: the huge-page assembler.
//!
//! Huge pages travel from the page server in small chunks (any order, any 4 KiB-multiple size,
//! interleaved with chunks of other huge pages). Each connection gathers them in temporary
//! huge pages of its own and places a huge page *atomically* once it is complete: a thread that
//! touches it blocks in its fault until the whole page is mapped, and never sees part of one.
//! How a background page travels through the workspace end to end is in `DESIGN.md`.
//!
//! # Layout
//! - [`backing`]: anon, thp, hugetlb-2m, hugetlb-1g; placement unit and fault request unit;
//!   the hugetlb placement ways (copy, continue).
//! - [`memory`]: the registered region and what each backing needs beside it; makes the
//!   assemblers.
//! - `mappings` (private): the mappings a [`Memory`] shares with its assemblers.
//! - `moves` (private): where the region's pages are now, after the application's `mremap`s.
//! - [`assembler`]: one per connection: what a call did ([`Progress`]), slots of units in
//!   progress and their staging pages (`staging`), placing a complete unit (`place`).
//! - [`thp`]: staging THPs moved into place with UFFDIO_MOVE, collapse after urgent pages.
//! - [`hugetlb`]: whole-huge-page COPY, or alias mapping + UFFDIO_CONTINUE.
//! - `gathered` / `runs` (private): which pages a unit holds; placing runs around present pages.
//! - [`chunks`]: cutting chunks at unit boundaries; chunk orders for the bench and tests.
//! - [`pool`]: hugetlb pools: availability, growing them, the sysctl to fix them.
//! - [`smaps`], [`pagemap`]: how the kernel really maps a range (AnonHugePages, PAGEMAP_SCAN;
//!   `pagemap` is [`uffd_core::pagemap`], re-exported here).
//! - [`pattern`]: a deterministic image to assemble and verify.
//! - [`bench`](mod@bench), [`status`], [`cli`]: what the `hugepage` binary runs.
//!
//! Modules depend one way; each uses only modules on the lines above its own (a module that
//! is used does not use its user):
//! 1. `backing`, `gathered`, `pagemap`, `pool`, `smaps`
//! 2. `chunks`, `moves`, `pattern`
//! 3. `mappings`, `runs`
//! 4. `hugetlb`, `thp`
//! 5. `assembler`
//! 6. `memory`
//! 7. `bench`, `status`
//! 8. `cli`
//!
//! # Limits worth knowing
//! - THP: a unit whose range saw a fault or an urgent 4 KiB page cannot be moved in as one THP;
//!   it is placed around those pages and collapsed (`MADV_COLLAPSE`, a 2 MiB copy; far
//!   slower where a VM's memory is cold) in the background. The registered region is deliberately not
//!   `MADV_HUGEPAGE` (see [`thp`]); with THP `always` faults pay the 2 MiB zeroing again.
//! - hugetlb continue way: chunks are written through the alias mapping. A page whose bit is
//!   set is never written, but two connections assembling the *same* unit could still write
//!   (identical image bytes) just after the other's CONTINUE mapped it: give each unit to one
//!   connection, or use the copy way, if the guest may have changed the page since.
//! - Placement stops with `Stop::Retry` while a non-cooperative event is unread: read the
//!   events, then call [`Assembler::retry`].
//! - A region the application moved with `mremap` ([`Memory::add_move`]): each unit is placed
//!   where it is now; a THP unit cut by the move, or moved to an address not 2 MiB-aligned,
//!   arrives as 4 KiB pages (no PMD can map it) and counts in `units_not_huge`.
//!
//! # Example
//! ```no_run
//! use std::sync::Arc;
//! use hugepage::{Backing, HugetlbPlacement, Memory};
//! use uffd_core::{PageBitmap, Userfaultfd};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let memory = Memory::new(Backing::Thp, 8 << 20, HugetlbPlacement::Copy)?;
//! let uffd = Arc::new(Userfaultfd::open(memory.uffd_features())?);
//! memory.register(&uffd)?;
//! let received = PageBitmap::new(memory.pages());
//! let mut assembler = memory.assembler(uffd)?;
//! // Chunks arrive in any order; the huge page is placed with the chunk that completes it.
//! let chunk = vec![0xAB; 1 << 20];
//! assembler.data(1 << 20, &chunk, &received)?;
//! let progress = assembler.data(0, &chunk, &received)?;
//! assert_eq!(progress.units_completed, 1);
//! # Ok(()) }
//! ```

pub mod assembler;
pub mod backing;
pub mod bench;
pub mod chunks;
pub mod cli;
mod gathered;
pub mod hugetlb;
mod mappings;
pub mod memory;
mod moves;
pub use uffd_core::pagemap;
pub mod pattern;
pub mod pool;
mod runs;
pub mod smaps;
pub mod status;
pub mod thp;

pub use assembler::{AssembleError, Assembler, Mapped, Progress};
pub use backing::{Backing, HugetlbPlacement, PAGE, PAGE_BYTES};
pub use bench::{BenchConfig, BenchReport};
pub use chunks::{Chunk, Order};
pub use memory::{Memory, MemoryError};
pub use moves::Move;
pub use pattern::Pattern;
