//! Placing a complete unit by the backing's way: a staging THP moved in ([`crate::thp`]), a
//! hugetlb page copied or continued ([`crate::hugetlb`]), a whole zero hugetlb unit straight
//! from zeros; and plain anonymous chunks, page runs placed as they come.

use uffd_core::convert::{u64_from, usize_from};
use uffd_core::place::{self, Stop};
use uffd_core::PageBitmap;

use super::staging::Stage;
use super::{AssembleError, Assembler, Mapped, Progress, Result};
use crate::backing::{PAGE, PAGE_BYTES};
use crate::gathered::Gathered;
use crate::hugetlb;
use crate::moves::Dst;
use crate::runs::{place_runs, run_at};
use crate::thp;

impl Assembler {
    /// anon: nothing to assemble; COPY (or ZEROPAGE) every page not yet present.
    pub(super) fn anon(
        &mut self,
        offset: u64,
        len: u64,
        bytes: Option<&[u8]>,
        received: &PageBitmap,
    ) -> Result<Progress> {
        let first_page = usize_from(offset / PAGE);
        // Where the pages are now (a move of the region may have cut the range).
        let dst = self.mem.dst(offset, len);
        let mut all = Gathered::full(usize_from(len / PAGE));
        let uffd = &self.uffd;
        let placed = place_runs(received, first_page, &mut all, |i, n| {
            run_at(&dst, i, n, |addr, first, pages| {
                let at = first * PAGE_BYTES;
                let run = pages * PAGE_BYTES;
                match bytes {
                    Some(bytes) => place::copy(uffd, addr, &bytes[at..at + run], true),
                    None => place::zeropage(uffd, addr, u64_from(run), true),
                }
            })
        })?;
        self.mapped
            .extend(placed.mapped.iter().map(|run| Mapped::of_run(offset, run)));
        let mut progress = Progress::default();
        progress.absorb(&placed);
        progress.units_completed = placed.pages.placed + placed.pages.present;
        progress.pages.stopped = placed.pages.stopped;
        Ok(progress)
    }

    /// Places the complete unit `unit` and releases its slot (unless it must be retried).
    pub(super) fn place(
        &mut self,
        unit: u64,
        received: &PageBitmap,
        progress: &mut Progress,
    ) -> Result<()> {
        let first_page = self.first_page(unit);
        let Some(slot) = self.slots.get_mut(&unit) else {
            return Ok(());
        };
        // Where the unit is now: the application may have moved it (see crate::moves).
        let dst = self.mem.unit_dst(unit);
        let unit_len = self.mem.backing.unit();
        let placed = match &mut slot.stage {
            Stage::Thp(stage) => thp::place(
                &self.uffd,
                &self.mem.pagemap,
                &dst,
                stage,
                &mut slot.have,
                received,
                first_page,
            )?,
            Stage::Buffer(region) => {
                let dst = whole(&dst, unit_len, unit)?;
                // SAFETY: the staging buffer is mapped for its whole length, owned by this
                // slot and not written while the slice lives (this call only reads it).
                let src =
                    unsafe { std::slice::from_raw_parts(region.as_ptr(), usize_from(unit_len)) };
                hugetlb::copy_unit(&self.uffd, dst, src, &mut slot.have, received, first_page)?
            }
            // The alias is written at the unit's page-cache offset, which a move of the
            // region does not change; only the registered mapping's address moves.
            Stage::Alias => hugetlb::continue_unit(
                &self.uffd,
                whole(&dst, unit_len, unit)?,
                unit_len,
                &mut slot.have,
                received,
                first_page,
            )?,
        };
        let start = unit * unit_len;
        self.mapped
            .extend(placed.mapped.iter().map(|run| Mapped::of_run(start, run)));
        progress.absorb(&placed);
        match placed.pages.stopped {
            None => {
                progress.units_completed += 1;
                if let Some(slot) = self.slots.remove(&unit) {
                    self.recycle(slot.stage);
                }
            }
            Some(Stop::Retry) => {
                slot.waiting = true;
                progress.pages.stopped = progress.pages.stopped.or(Some(Stop::Retry));
            }
            Some(Stop::Gone) => {
                self.slots.remove(&unit);
                progress.pages.stopped = Some(Stop::Gone);
            }
        }
        Ok(())
    }

    /// A whole zero hugetlb unit with nothing gathered: placed straight from zeros.
    pub(super) fn zero_unit(
        &mut self,
        unit: u64,
        received: &PageBitmap,
        progress: &mut Progress,
    ) -> Result<()> {
        let pages = self.mem.backing.pages_per_unit();
        let first_page = self.first_page(unit);
        let unit_len = self.mem.backing.unit();
        let dst = whole(&self.mem.unit_dst(unit), unit_len, unit)?;
        let mut have = Gathered::full(pages);
        let placed = match (&self.mem.zero, &self.mem.alias) {
            (Some(zero), _) => {
                // SAFETY: the zero source is a unit-sized private mapping that nothing ever
                // writes; reading it maps the shared zero page.
                let src =
                    unsafe { std::slice::from_raw_parts(zero.as_ptr(), usize_from(unit_len)) };
                hugetlb::copy_unit(&self.uffd, dst, src, &mut have, received, first_page)?
            }
            (None, Some(_)) => {
                self.touch_alias(unit);
                hugetlb::continue_unit(&self.uffd, dst, unit_len, &mut have, received, first_page)?
            }
            (None, None) => return Ok(()),
        };
        let start = unit * unit_len;
        self.mapped
            .extend(placed.mapped.iter().map(|run| Mapped::of_run(start, run)));
        progress.absorb(&placed);
        match placed.pages.stopped {
            None => progress.units_completed += 1,
            stop => progress.pages.stopped = progress.pages.stopped.or(stop),
        }
        Ok(())
    }
}

/// The address of hugetlb unit `unit` (of `unit_len` bytes), which can only be placed whole.
fn whole(dst: &Dst, unit_len: u64, unit: u64) -> Result<u64> {
    dst.huge(unit_len).ok_or(AssembleError::NotWhole { unit })
}
