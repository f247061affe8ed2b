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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use uffd_core::convert::{u64_from, usize_from};
use uffd_core::place::{self, PlaceError, Stop};
use uffd_core::region::{Region, RegionError};
use uffd_core::{PageBitmap, Userfaultfd};

use crate::backing::{Backing, HugetlbPlacement, PAGE, PAGE_BYTES};
use crate::chunks::{pieces, Piece};
use crate::gathered::Gathered;
use crate::hugetlb;
use crate::mappings::Mappings;
use crate::moves::Dst;
use crate::runs::{place_runs, run_at, MappedRun, Placed};
use crate::thp::{self, ThpError, ThpStage};

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

/// What one call did: the sum of its placements (each a [`uffd_core::place::Filled`] in
/// 4 KiB pages: `pages_placed`, `pages_present`, `stopped`), plus what only an assembler
/// knows: pages gathered into staging, units finished, units left without a huge mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// 4 KiB pages newly present in the region (their bits were set by this call).
    pub pages_placed: u64,
    /// 4 KiB pages of the data that were found already present (placed by another path).
    pub pages_present: u64,
    /// 4 KiB pages written into a staging page by this call, to be placed with their unit.
    pub pages_gathered: u64,
    /// Units this call finished: placed, or found placed by someone else. For anon, a unit is
    /// a 4 KiB page.
    pub units_completed: u64,
    /// Set when placing stopped early: `Retry` (read the userfaultfd's events, then call
    /// [`Assembler::retry`]) or `Gone` (the process owning the region exited).
    pub stopped: Option<Stop>,
    /// THP units placed but left mapped with 4 KiB pages (MADV_COLLAPSE failed).
    pub units_not_huge: u64,
}

impl Progress {
    /// Adds `other` to `self`; the first stop wins.
    pub fn merge(&mut self, other: &Progress) {
        self.pages_placed += other.pages_placed;
        self.pages_present += other.pages_present;
        self.pages_gathered += other.pages_gathered;
        self.units_completed += other.units_completed;
        self.units_not_huge += other.units_not_huge;
        self.stopped = self.stopped.or(other.stopped);
    }

    /// Adds one unit's (or range's) placement, except its stop: callers decide what a stop
    /// means for their slot.
    fn absorb(&mut self, placed: &Placed) {
        self.pages_placed += placed.pages.placed;
        self.pages_present += placed.pages.present;
        if placed.not_huge {
            self.units_not_huge += 1;
        }
    }
}

/// Pages that became present in the region: `len` bytes at image `offset`, mapped by one
/// placement ioctl (a unit's UFFDIO_MOVE, COPY or CONTINUE, or one run of its pages) that was
/// issued at `began` and returned at `ended`. The threads waiting on these pages were woken
/// in between. See [`Assembler::take_mapped`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapped {
    /// Image offset of the first page.
    pub offset: u64,
    /// Bytes made present.
    pub len: u64,
    /// Just before the ioctl.
    pub began: Instant,
    /// Just after it returned.
    pub ended: Instant,
}

impl Mapped {
    fn of_run(start: u64, run: &MappedRun) -> Mapped {
        Mapped {
            offset: start + run.first as u64 * PAGE,
            len: run.pages as u64 * PAGE,
            began: run.began,
            ended: run.ended,
        }
    }
}

/// Where a unit's chunks are gathered.
#[derive(Debug)]
enum Stage {
    /// A THP of our own, moved into place.
    Thp(ThpStage),
    /// An anonymous buffer of one unit, copied into place (hugetlb, copy way).
    Buffer(Region),
    /// The unit's own page in the alias mapping (hugetlb, continue way).
    Alias,
}

/// One unit in progress.
#[derive(Debug)]
struct Slot {
    stage: Stage,
    have: Gathered,
    /// Every page not gathered is zero in the staging page, so a zero run needs no writes.
    fresh: bool,
    /// Complete, but its placement stopped (Retry): waits for [`Assembler::retry`].
    waiting: bool,
}

/// Staging memory kept for reuse once its unit is placed, in bytes (at least one staging
/// page is kept): a new staging buffer costs a fresh mapping and fresh, zeroed memory.
const SPARE_BYTES: u64 = 32 << 20;

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

    /// anon: nothing to assemble; COPY (or ZEROPAGE) every page not yet present.
    fn anon(
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
        progress.stopped = placed.pages.stopped;
        Ok(progress)
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
        let pages_per_unit = self.mem.backing.pages_per_unit();
        let first_page = self.first_page(piece.unit);
        let p0 = usize_from(piece.offset_in_unit / PAGE);
        let np = usize_from(piece.len / PAGE);
        if !self.slots.contains_key(&piece.unit) {
            if (p0..p0 + np).all(|i| received.get(first_page + i)) {
                progress.pages_present += np as u64;
                return Ok(());
            }
            if src.is_none() && np == pages_per_unit && self.mem.backing.hugetlb_size().is_some() {
                return self.zero_unit(piece.unit, received, progress);
            }
            let slot = self.new_slot(piece.unit)?;
            self.slots.insert(piece.unit, slot);
        }
        let Some(slot) = self.slots.get_mut(&piece.unit) else {
            return Ok(());
        };
        let base = match &slot.stage {
            Stage::Thp(stage) => stage.as_ptr(),
            Stage::Buffer(region) => region.as_ptr(),
            Stage::Alias => match &self.mem.alias {
                // The unit's page in the alias mapping.
                Some(alias) => alias
                    .as_ptr()
                    .wrapping_add(usize_from(piece.unit * self.mem.backing.unit())),
                None => return Ok(()),
            },
        };
        for i in p0..p0 + np {
            if received.get(first_page + i) {
                // Present already: never write it (through the alias that would change live
                // memory), and count it once.
                if !slot.have.has(i) {
                    progress.pages_present += 1;
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
        if !slot.waiting && slot.have.complete(|i| received.get(first_page + i)) {
            self.place(piece.unit, received, progress)?;
        }
        Ok(())
    }

    /// A staging page for a new unit: a spare one, or a new one.
    fn new_slot(&mut self, unit: u64) -> Result<Slot> {
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

    /// Places the complete unit `unit` and releases its slot (unless it must be retried).
    fn place(&mut self, unit: u64, received: &PageBitmap, progress: &mut Progress) -> Result<()> {
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
                progress.stopped = progress.stopped.or(Some(Stop::Retry));
            }
            Some(Stop::Gone) => {
                self.slots.remove(&unit);
                progress.stopped = Some(Stop::Gone);
            }
        }
        Ok(())
    }

    /// A whole zero hugetlb unit with nothing gathered: placed straight from zeros.
    fn zero_unit(
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
            stop => progress.stopped = progress.stopped.or(stop),
        }
        Ok(())
    }

    /// Makes sure unit `unit`'s huge page is in the memfd's page cache (continue way).
    fn touch_alias(&self, unit: u64) {
        if let Some(alias) = &self.mem.alias {
            let offset = usize_from(unit * self.mem.backing.unit());
            // SAFETY: `offset` is the start of a unit inside the alias mapping (`unit` <
            // units). Reading it makes the kernel allocate the zeroed huge page into the
            // memfd's page cache (a shared hugetlb mapping does so on reads too) without
            // mapping it in the region; a page already there is left as it is.
            unsafe { std::ptr::read_volatile(alias.as_ptr().add(offset)) };
        }
    }

    fn recycle(&mut self, stage: Stage) {
        let keep = usize_from((SPARE_BYTES / self.mem.backing.unit()).max(1));
        if matches!(stage, Stage::Alias) || self.spare.len() >= keep {
            return;
        }
        self.spare.push(stage);
    }
}

/// The address of hugetlb unit `unit` (of `unit_len` bytes), which can only be placed whole.
fn whole(dst: &Dst, unit_len: u64, unit: u64) -> Result<u64> {
    dst.huge(unit_len).ok_or(AssembleError::NotWhole { unit })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_merges() {
        let mut a = Progress {
            pages_placed: 1,
            ..Progress::default()
        };
        a.merge(&Progress {
            pages_placed: 2,
            pages_present: 3,
            units_completed: 1,
            stopped: Some(Stop::Retry),
            units_not_huge: 0,
            pages_gathered: 0,
        });
        assert_eq!(
            (a.pages_placed, a.pages_present, a.units_completed),
            (3, 3, 1)
        );
        assert_eq!(a.stopped, Some(Stop::Retry));
    }

    #[test]
    fn assembler_is_send() {
        fn send<T: Send>() {}
        send::<Assembler>();
    }
}
