//! The assembler: gathers the chunks of each unit in a staging page owned by one connection,
//! and places the unit in one step once it is complete.
//!
//! A connection receives chunks in any order and of any 4 KiB-multiple size, possibly
//! interleaved between units. For each unit in progress the assembler keeps a *slot*: a staging
//! page (a THP, an anonymous buffer, or the unit's page in the alias mapping of a hugetlb
//! memfd) and the set of pages gathered so far. A unit is complete when each of its pages is
//! gathered or already present in the region (the client's `received` bitmap); then it is
//! placed by the backing's way ([`crate::thp`], [`crate::hugetlb`]) and the slot's staging page
//! is kept for the next unit.
//!
//! Bits in `received` are set for every 4 KiB page this assembler makes present, and only for
//! those, so that the client can count pages with `PageBitmap::set`'s answer and knows which
//! pages arrived urgently by another path.
//!
//! This file holds the assembler's state and what a connection calls; `progress` is what a
//! call reports, `staging` the per-unit bookkeeping (slots, staging pages, writing chunks into
//! them), `place` placing a complete unit by the backing's way.

use std::collections::HashMap;
use std::sync::Arc;

use uffd_core::convert::usize_from;
use uffd_core::place::PlaceError;
use uffd_core::region::RegionError;
use uffd_core::{PageBitmap, Userfaultfd};

use crate::backing::{Backing, PAGE, PAGE_BYTES};
use crate::chunks::{pieces, Piece};
use crate::mappings::Mappings;
use crate::thp::ThpError;

mod place;
mod progress;
mod staging;

pub use progress::{Mapped, Progress};
use staging::{Slot, Stage};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    /// Offset or length not a multiple of 4 KiB.
    #[error("chunk at {offset:#x} of {len} bytes is not 4 KiB-aligned")]
    Misaligned {
        /// Image offset.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// The chunk reaches past the region.
    #[error("chunk at {offset:#x} of {len} bytes reaches past the {size}-byte region")]
    OutOfRange {
        /// Image offset.
        offset: u64,
        /// Length.
        len: u64,
        /// Region size.
        size: u64,
    },
    /// The `received` bitmap is smaller than the region.
    #[error("the received bitmap has {bits} bits but the region has {pages} pages")]
    Bitmap {
        /// Bits in the bitmap.
        bits: usize,
        /// Pages in the region.
        pages: usize,
    },
    /// A placement ioctl failed for a reason a pager cannot handle.
    #[error(transparent)]
    Place(#[from] PlaceError),
    /// The THP way failed.
    #[error(transparent)]
    Thp(#[from] ThpError),
    /// A staging buffer could not be mapped.
    #[error("mapping a staging buffer failed: {0}")]
    Staging(#[from] RegionError),
    /// A hugetlb unit is no longer one aligned huge page in the region. The kernel moves
    /// hugetlb ranges only whole and aligned (mremap answers EINVAL otherwise), so this
    /// would be a pager bug, not something an application can do.
    #[error(
        "hugetlb unit {unit} is not one aligned huge page in the region any more \
         (after the application's mremap)"
    )]
    NotWhole {
        /// The unit.
        unit: u64,
    },
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, AssembleError>;

/// One connection's assembler. See the module documentation.
#[derive(Debug)]
pub struct Assembler {
    mem: Arc<Mappings>,
    uffd: Arc<Userfaultfd>,
    slots: HashMap<u64, Slot>,
    spare: Vec<Stage>,
    /// What the placements since the last [`Assembler::take_mapped`] made present.
    mapped: Vec<Mapped>,
}

impl Assembler {
    pub(crate) fn new(mem: Arc<Mappings>, uffd: Arc<Userfaultfd>) -> Self {
        Assembler {
            mem,
            uffd,
            slots: HashMap::new(),
            spare: Vec::new(),
            mapped: Vec::new(),
        }
    }

    /// The pages made present since the last call, one entry per placement ioctl, in order.
    /// A chunk that only went into a staging page is not here (see
    /// [`Progress::pages_gathered`]): its pages become present with their unit. Callers that
    /// time faults or count pages by range drain this after each call; others may ignore it
    /// (it is cleared here only).
    pub fn take_mapped(&mut self) -> Vec<Mapped> {
        std::mem::take(&mut self.mapped)
    }

    /// Places or gathers `bytes` at image `offset` (both multiples of 4 KiB). `received` is
    /// the client's per-4 KiB-page bitmap (set = present in the region). Returns what got
    /// placed now.
    pub fn data(&mut self, offset: u64, bytes: &[u8], received: &PageBitmap) -> Result<Progress> {
        let len = bytes.len() as u64;
        self.check(offset, len, received)?;
        if self.mem.backing == Backing::Anon {
            return self.anon(offset, len, Some(bytes), received);
        }
        let mut progress = Progress::default();
        for piece in pieces(offset, len, self.mem.backing.unit()) {
            let start = usize_from(piece.offset_in_chunk);
            let src = &bytes[start..start + usize_from(piece.len)];
            self.gather(piece, Some(src), received, &mut progress)?;
        }
        Ok(progress)
    }

    /// A run of zero pages at image `offset`. hugetlbfs has no ZEROPAGE: a whole zero unit is
    /// copied from a zero source or touched in the alias; partial runs are zeroed in the
    /// staging page. THP units stay THPs (zeros gathered in the staging THP); anon uses
    /// UFFDIO_ZEROPAGE.
    pub fn zero(&mut self, offset: u64, len: u64, received: &PageBitmap) -> Result<Progress> {
        self.check(offset, len, received)?;
        if self.mem.backing == Backing::Anon {
            return self.anon(offset, len, None, received);
        }
        let mut progress = Progress::default();
        for piece in pieces(offset, len, self.mem.backing.unit()) {
            self.gather(piece, None, received, &mut progress)?;
        }
        Ok(progress)
    }

    /// Tries again to place the complete units whose placement stopped with `Retry`.
    pub fn retry(&mut self, received: &PageBitmap) -> Result<Progress> {
        let mut progress = Progress::default();
        let waiting: Vec<u64> = self
            .slots
            .iter()
            .filter(|(_, s)| s.waiting)
            .map(|(&u, _)| u)
            .collect();
        for unit in waiting {
            self.place(unit, received, &mut progress)?;
        }
        Ok(progress)
    }

    /// Places every started unit that is complete now: one whose missing pages have since
    /// become present in the region by another path (e.g. the last 4 KiB page of a THP unit
    /// answered on the urgent connection after the unit's last chunk arrived here). Call it
    /// when another connection placed pages, or the unit waits for a chunk that never comes.
    pub fn complete_ready(&mut self, received: &PageBitmap) -> Result<Progress> {
        let mut progress = Progress::default();
        let mut ready = Vec::new();
        for (&unit, slot) in self.slots.iter_mut() {
            let first_page = usize_from(unit) * self.mem.backing.pages_per_unit();
            if slot.waiting || slot.have.complete(|i| received.get(first_page + i)) {
                ready.push(unit);
            }
        }
        for unit in ready {
            self.place(unit, received, &mut progress)?;
        }
        Ok(progress)
    }

    /// Units started but not placed yet.
    pub fn pending(&self) -> usize {
        self.slots.len()
    }

    /// The index in `received` of unit `unit`'s first 4 KiB page.
    fn first_page(&self, unit: u64) -> usize {
        usize_from(unit) * self.mem.backing.pages_per_unit()
    }

    fn check(&self, offset: u64, len: u64, received: &PageBitmap) -> Result<()> {
        if !offset.is_multiple_of(PAGE) || !len.is_multiple_of(PAGE) {
            return Err(AssembleError::Misaligned { offset, len });
        }
        let size = self.mem.region.len() as u64;
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(AssembleError::OutOfRange { offset, len, size });
        }
        let pages = self.mem.region.len() / PAGE_BYTES;
        if received.len() < pages {
            return Err(AssembleError::Bitmap {
                bits: received.len(),
                pages,
            });
        }
        Ok(())
    }

    /// Gathers one piece (data, or zeros when `src` is None) into its unit's slot, and places
    /// the unit if that completed it.
    fn gather(
        &mut self,
        piece: Piece,
        src: Option<&[u8]>,
        received: &PageBitmap,
        progress: &mut Progress,
    ) -> Result<()> {
        if !self.slots.contains_key(&piece.unit) {
            let first_page = self.first_page(piece.unit);
            let p0 = usize_from(piece.offset_in_unit / PAGE);
            let np = usize_from(piece.len / PAGE);
            if (p0..p0 + np).all(|i| received.get(first_page + i)) {
                progress.pages.present += np as u64;
                return Ok(());
            }
            let whole_unit = np == self.mem.backing.pages_per_unit();
            if src.is_none() && whole_unit && self.mem.backing.hugetlb_size().is_some() {
                return self.zero_unit(piece.unit, received, progress);
            }
            let slot = self.new_slot(piece.unit)?;
            self.slots.insert(piece.unit, slot);
        }
        if self.stage(piece, src, received, progress) {
            self.place(piece.unit, received, progress)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assembler_is_send() {
        fn send<T: Send>() {}
        send::<Assembler>();
    }
}
