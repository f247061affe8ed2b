//! hugetlbfs: a unit is one huge page, and it is placed in one ioctl or not at all.
//!
//! The kernel accepts only huge-page-sized, aligned placements on hugetlbfs (a smaller COPY is
//! EINVAL) and has no ZEROPAGE there. Two ways are offered ([`crate::HugetlbPlacement`]):
//! - **Copy**: chunks are gathered in an anonymous staging buffer (THP-backed, so it faults in
//!   2 MiB at a time), then one UFFDIO_COPY of the whole huge page copies it into a fresh
//!   hugetlb page and wakes the waiters. A zero page is copied from a never-written anonymous
//!   mapping, whose reads all hit the shared zero page: it costs no memory.
//! - **Continue** (zero-copy): the region is a hugetlb memfd mapped twice. Chunks are written
//!   through the second mapping (the alias), which puts the huge page in the page cache
//!   without mapping it in the region; UFFDIO_CONTINUE then maps it there. A zero page is just
//!   touched through the alias (the kernel hands out zeroed huge pages).
//!
//! Either way a thread touching the unit blocks in its fault until the ioctl maps the whole
//! page: nobody can see a partly written huge page.
//!
//! The alias of the continue way is live memory once the page is mapped in the region, so the
//! assembler never writes a page whose `received` bit is set. Between another connection's
//! CONTINUE of the same unit and its setting of the bits there is a short window in which a
//! duplicate chunk would still be written (with the same image bytes).
//!
//! The pool: both ways reserve their huge pages when the region is mapped (private mappings
//! and the memfd alike), so [`crate::Memory::new`] checks `free - reserved` first and names
//! the sysctl to raise when it is short.

use uffd_core::place::{self, Outcome, PlaceError};
use uffd_core::{PageBitmap, Userfaultfd};

use crate::gathered::Gathered;
use crate::runs::{MappedRun, Placed};

/// Result alias of this module (placement errors are the only failures here).
pub type Result<T> = std::result::Result<T, PlaceError>;

/// Places the unit at `dst` with one UFFDIO_COPY of `src` (the whole huge page).
pub(crate) fn copy_unit(
    uffd: &Userfaultfd,
    dst: u64,
    src: &[u8],
    have: &mut Gathered,
    received: &PageBitmap,
    first_page: usize,
) -> Result<Placed> {
    let (outcome, run) = whole_unit(have.pages(), || place::copy(uffd, dst, src, true));
    Ok(account(outcome?, run, have, received, first_page))
}

/// Maps the unit at `dst` (whose page is in the memfd's page cache) with UFFDIO_CONTINUE.
pub(crate) fn continue_unit(
    uffd: &Userfaultfd,
    dst: u64,
    len: u64,
    have: &mut Gathered,
    received: &PageBitmap,
    first_page: usize,
) -> Result<Placed> {
    let (outcome, run) = whole_unit(have.pages(), || place::continue_(uffd, dst, len, true));
    Ok(account(outcome?, run, have, received, first_page))
}

/// Runs a whole-unit placement ioctl, timed: a unit of `pages` pages is mapped whole or not
/// at all.
fn whole_unit(
    pages: usize,
    op: impl FnOnce() -> Result<Outcome>,
) -> (Result<Outcome>, Option<MappedRun>) {
    MappedRun::timed(0, op, |outcome| match outcome {
        Ok(Outcome::Placed(_)) => pages,
        _ => 0,
    })
}

/// Turns the outcome of a whole-unit placement (and `run`, its timing when it mapped the unit)
/// into page counts and bits.
fn account(
    outcome: Outcome,
    run: Option<MappedRun>,
    have: &mut Gathered,
    received: &PageBitmap,
    first_page: usize,
) -> Placed {
    let pages = have.pages();
    let mut out = Placed::default();
    match outcome {
        // A hugetlb placement is all or nothing: every page of the unit is new.
        Outcome::Placed(_) => {
            out.pages.placed = (0..pages).filter(|&i| received.set(first_page + i)).count() as u64;
            out.mapped.extend(run);
            *have = Gathered::new(pages);
        }
        // Another connection (or the demand path) placed this huge page first.
        Outcome::AlreadyPresent => {
            out.pages.present = have.count() as u64;
            *have = Gathered::new(pages);
        }
        stop => out.pages.stopped = stop.stop(),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use uffd_core::place::Stop;

    #[test]
    fn accounting_of_whole_unit_outcomes() {
        let received = PageBitmap::new(1024);
        let mut have = Gathered::full(512);
        let placed = account(Outcome::Placed(2 << 20), None, &mut have, &received, 512);
        assert_eq!((placed.pages.placed, placed.pages.present), (512, 0));
        assert_eq!(received.count(), 512);
        assert!(received.get(512) && !received.get(511));
        assert_eq!(have.count(), 0);

        let mut have = Gathered::full(512);
        have.remove(3);
        let placed = account(Outcome::AlreadyPresent, None, &mut have, &received, 0);
        assert_eq!((placed.pages.placed, placed.pages.present), (0, 511));
        assert_eq!(received.count(), 512, "no bit for someone else's page");

        let mut have = Gathered::full(512);
        let placed = account(Outcome::Retry, None, &mut have, &received, 0);
        assert_eq!(placed.pages.stopped, Some(Stop::Retry));
        assert_eq!(have.count(), 512, "kept for the retry");
    }
}
