//! What one call of the assembler did: [`Progress`] (page and unit counts, the stop) and
//! [`Mapped`] (each placement ioctl's pages and times).

use std::time::Instant;

use uffd_core::place::Filled;

use crate::backing::PAGE;
use crate::runs::{MappedRun, Placed};

/// What one call did: the sum of its placements ([`Filled`], in 4 KiB pages: placed, found
/// present, the stop), plus what only an assembler knows: pages gathered into staging, units
/// finished, units left without a huge mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// 4 KiB pages newly present in the region (their bits were set by this call), pages of
    /// the data found already present (placed by another path), and the stop if placing
    /// stopped early: `Retry` (read the userfaultfd's events, then call
    /// [`Assembler::retry`](super::Assembler::retry)) or `Gone` (the process owning the
    /// region exited).
    pub pages: Filled,
    /// 4 KiB pages written into a staging page by this call, to be placed with their unit.
    pub pages_gathered: u64,
    /// Units this call finished: placed, or found placed by someone else. For anon, a unit is
    /// a 4 KiB page.
    pub units_completed: u64,
    /// THP units placed but left mapped with 4 KiB pages (MADV_COLLAPSE failed).
    pub units_not_huge: u64,
}

impl Progress {
    /// Adds `other` to `self`; the first stop wins.
    pub fn merge(&mut self, other: &Progress) {
        self.pages.add(&other.pages);
        self.pages_gathered += other.pages_gathered;
        self.units_completed += other.units_completed;
        self.units_not_huge += other.units_not_huge;
    }

    /// Adds one unit's (or range's) placement, except its stop: callers decide what a stop
    /// means for their slot.
    pub(super) fn absorb(&mut self, placed: &Placed) {
        self.pages.placed += placed.pages.placed;
        self.pages.present += placed.pages.present;
        if placed.not_huge {
            self.units_not_huge += 1;
        }
    }
}

/// Pages that became present in the region: `len` bytes at image `offset`, mapped by one
/// placement ioctl (a unit's UFFDIO_MOVE, COPY or CONTINUE, or one run of its pages) that was
/// issued at `began` and returned at `ended`. The threads waiting on these pages were woken
/// in between. See [`Assembler::take_mapped`](super::Assembler::take_mapped).
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
    pub(super) fn of_run(start: u64, run: &MappedRun) -> Mapped {
        Mapped {
            offset: start + run.first as u64 * PAGE,
            len: run.pages as u64 * PAGE,
            began: run.began,
            ended: run.ended,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uffd_core::place::Stop;

    #[test]
    fn progress_merges() {
        let mut a = Progress {
            pages: Filled {
                placed: 1,
                ..Filled::default()
            },
            ..Progress::default()
        };
        a.merge(&Progress {
            pages: Filled {
                placed: 2,
                present: 3,
                stopped: Some(Stop::Retry),
            },
            units_completed: 1,
            units_not_huge: 0,
            pages_gathered: 0,
        });
        assert_eq!(
            (a.pages.placed, a.pages.present, a.units_completed),
            (3, 3, 1)
        );
        assert_eq!(a.pages.stopped, Some(Stop::Retry));
    }
}
