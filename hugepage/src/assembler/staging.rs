//! The assembler's per-unit bookkeeping: a slot for each unit in progress, its staging page
//! (a THP of our own, an anonymous buffer, or the unit's page in the hugetlb alias), the pages
//! gathered in it, and the spare staging pages kept for the next units.

use uffd_core::convert::usize_from;
use uffd_core::region::Region;
use uffd_core::PageBitmap;

use super::{Assembler, Progress, Result};
use crate::backing::{Backing, HugetlbPlacement, PAGE, PAGE_BYTES};
use crate::chunks::Piece;
use crate::gathered::Gathered;
use crate::thp::ThpStage;

/// Where a unit's chunks are gathered.
#[derive(Debug)]
pub(super) enum Stage {
    /// A THP of our own, moved into place.
    Thp(ThpStage),
    /// An anonymous buffer of one unit, copied into place (hugetlb, copy way).
    Buffer(Region),
    /// The unit's own page in the alias mapping (hugetlb, continue way).
    Alias,
}

/// One unit in progress.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) stage: Stage,
    pub(super) have: Gathered,
    /// Every page not gathered is zero in the staging page, so a zero run needs no writes.
    fresh: bool,
    /// Complete, but its placement stopped (Retry): waits for [`Assembler::retry`].
    pub(super) waiting: bool,
}

/// Staging memory kept for reuse once its unit is placed, in bytes (at least one staging
/// page is kept): a new staging buffer costs a fresh mapping and fresh, zeroed memory.
const SPARE_BYTES: u64 = 32 << 20;

impl Assembler {
    /// THP: populates the staging page the next unit will take, now, so that its first chunk
    /// finds it ready. Call it between placements, outside whatever a placement holds to keep
    /// the fault handler out (a pager's events lock): populating a staging THP allocates and
    /// zeroes 2 MiB, milliseconds where that memory is new to the machine (on a VM whose
    /// guest reports free memory to the host: a host fault per 4 KiB), and no fault needs to
    /// wait for that. Cheap when the spare is ready already; nothing to do for the other
    /// backings (their staging memory is written in place).
    pub fn prepare_spare(&mut self) -> Result<()> {
        if self.mem.backing != Backing::Thp {
            return Ok(());
        }
        if self.spare.is_empty() {
            self.spare.push(Stage::Thp(ThpStage::new()?));
        }
        // `new_slot` takes the last one.
        if let Some(Stage::Thp(stage)) = self.spare.last_mut() {
            stage.prepare(&self.mem.pagemap)?;
        }
        Ok(())
    }

    /// THP: how often a staging page held now came out of populating without a THP and
    /// had to be collapsed (MADV_COLLAPSE, which stops every fault of the process while it
    /// runs). Zero in normal operation; for tests and diagnostics.
    pub fn staging_collapses(&self) -> u64 {
        let stages = self
            .spare
            .iter()
            .chain(self.slots.values().map(|s| &s.stage));
        stages
            .map(|stage| match stage {
                Stage::Thp(stage) => stage.collapses,
                _ => 0,
            })
            .sum()
    }

    /// Writes the pages of `piece` (data, or zeros when `src` is None) into the staging page
    /// of its unit's slot, except those already present in the region. True when that
    /// completed the unit (and it is not waiting for a retry): time to place it.
    pub(super) fn stage(
        &mut self,
        piece: Piece,
        src: Option<&[u8]>,
        received: &PageBitmap,
        progress: &mut Progress,
    ) -> bool {
        let first_page = self.first_page(piece.unit);
        let p0 = usize_from(piece.offset_in_unit / PAGE);
        let np = usize_from(piece.len / PAGE);
        let Some(slot) = self.slots.get_mut(&piece.unit) else {
            return false;
        };
        let base = match &slot.stage {
            Stage::Thp(stage) => stage.as_ptr(),
            Stage::Buffer(region) => region.as_ptr(),
            Stage::Alias => match &self.mem.alias {
                // The unit's page in the alias mapping.
                Some(alias) => alias
                    .as_ptr()
                    .wrapping_add(usize_from(piece.unit * self.mem.backing.unit())),
                None => return false,
            },
        };
        for i in p0..p0 + np {
            if received.get(first_page + i) {
                // Present already: never write it (through the alias that would change live
                // memory), and count it once.
                if !slot.have.has(i) {
                    progress.pages.present += 1;
                }
                continue;
            }
            let page = PAGE_BYTES;
            // SAFETY: `base` is the start of a unit-sized staging page that this slot owns
            // (or the unit's page in the alias mapping, which is not mapped in the region
            // yet: its `received` bit is clear), and `i` < pages per unit, so the 4 KiB at
            // `base + i * 4 KiB` are inside it. Staging memory is only accessed through raw
            // pointers, so no Rust reference aliases it.
            let dst = unsafe { base.add(i * page) };
            match src {
                Some(src) => {
                    let from = &src[(i - p0) * page..(i - p0 + 1) * page];
                    // SAFETY: `dst` is valid for 4 KiB of writes (above); `from` is a
                    // distinct 4 KiB slice of the caller's buffer.
                    unsafe { std::ptr::copy_nonoverlapping(from.as_ptr(), dst, page) };
                }
                None if slot.fresh && !slot.have.has(i) => {}
                None => {
                    // SAFETY: `dst` is valid for 4 KiB of writes (above).
                    unsafe { std::ptr::write_bytes(dst, 0, page) };
                }
            }
            if !slot.have.has(i) {
                progress.pages_gathered += 1;
            }
            slot.have.insert(i);
        }
        !slot.waiting && slot.have.complete(|i| received.get(first_page + i))
    }

    /// A staging page for a new unit: a spare one, or a new one.
    pub(super) fn new_slot(&mut self, unit: u64) -> Result<Slot> {
        let pages = self.mem.backing.pages_per_unit();
        let (stage, fresh) = match self.spare.pop() {
            // Populated again below (zeroed) unless it kept the last unit's data.
            Some(Stage::Thp(stage)) => {
                let fresh = !stage.is_ready();
                (Stage::Thp(stage), fresh)
            }
            Some(other) => (other, false),
            None => match (self.mem.backing, self.mem.placement) {
                (Backing::Thp, _) => (Stage::Thp(ThpStage::new()?), true),
                (_, HugetlbPlacement::Continue) => (Stage::Alias, true),
                (_, HugetlbPlacement::Copy) => {
                    let unit = usize_from(self.mem.backing.unit());
                    (Stage::Buffer(Region::thp(unit)?), true)
                }
            },
        };
        let mut slot = Slot {
            stage,
            have: Gathered::new(pages),
            fresh,
            waiting: false,
        };
        match &mut slot.stage {
            Stage::Thp(stage) => stage.prepare(&self.mem.pagemap)?,
            // Pages left zero are never written, but CONTINUE needs the page in the cache.
            Stage::Alias => self.touch_alias(unit),
            Stage::Buffer(_) => {}
        }
        Ok(slot)
    }

    /// Makes sure unit `unit`'s huge page is in the memfd's page cache (continue way).
    pub(super) fn touch_alias(&self, unit: u64) {
        if let Some(alias) = &self.mem.alias {
            let offset = usize_from(unit * self.mem.backing.unit());
            // SAFETY: `offset` is the start of a unit inside the alias mapping (`unit` <
            // units). Reading it makes the kernel allocate the zeroed huge page into the
            // memfd's page cache (a shared hugetlb mapping does so on reads too) without
            // mapping it in the region; a page already there is left as it is.
            unsafe { std::ptr::read_volatile(alias.as_ptr().add(offset)) };
        }
    }

    pub(super) fn recycle(&mut self, stage: Stage) {
        let keep = usize_from((SPARE_BYTES / self.mem.backing.unit()).max(1));
        if matches!(stage, Stage::Alias) || self.spare.len() >= keep {
            return;
        }
        self.spare.push(stage);
    }
}
