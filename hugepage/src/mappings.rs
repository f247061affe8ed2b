//! The mappings behind a [`crate::Memory`], shared by it and every [`crate::Assembler`] it
//! made: the registered region, what the backing needs beside it (the continue way's alias
//! and memfd, the copy way's zero source), and where the region's pages are now.
//!
//! They live below both users so that the memory can make assemblers and the assemblers can
//! place into the memory without either module using the other.

use std::mem::ManuallyDrop;

use uffd_core::region::{Memfd, Region};

use crate::backing::{Backing, HugetlbPlacement};
use crate::moves::{Dst, Moves};
use crate::pagemap::Pagemap;

/// Everything the assemblers share.
#[derive(Debug)]
pub(crate) struct Mappings {
    pub(crate) backing: Backing,
    pub(crate) placement: HugetlbPlacement,
    /// The registered region. Unmapped by `Mappings`' drop: where it is now, if the
    /// application moved parts of it.
    pub(crate) region: ManuallyDrop<Region>,
    /// Continue way: the second mapping of the memfd, where chunks are written.
    pub(crate) alias: Option<Region>,
    /// Continue way: the memfd itself (kept for its lifetime's sake and for hole punching).
    pub(crate) _memfd: Option<Memfd>,
    /// Copy way: a unit-sized mapping never written, read as zeros.
    pub(crate) zero: Option<Region>,
    pub(crate) pagemap: Pagemap,
    /// Where the region's pages are now (the application may move them with mremap).
    pub(crate) moves: Moves,
}

impl Drop for Mappings {
    fn drop(&mut self) {
        // SAFETY: `region` is taken once, here, and not used after: `self` is being dropped.
        let region = unsafe { ManuallyDrop::take(&mut self.region) };
        if self.moves.moved() {
            // The application moved parts with mremap: unmap them where they are now, and
            // leave the holes they left alone (another mapping may live there by now).
            region.unmap_moved(&self.moves.ranges());
        } else {
            drop(region);
        }
    }
}

impl Mappings {
    /// Where image bytes `offset..offset+len` (4 KiB-aligned) are now.
    pub(crate) fn dst(&self, offset: u64, len: u64) -> Dst {
        self.moves.dst(offset, len)
    }

    /// Where unit `index` is now.
    pub(crate) fn unit_dst(&self, index: u64) -> Dst {
        let unit = self.backing.unit();
        self.dst(index * unit, unit)
    }
}
