//! Placing the gathered pages of a unit in runs, skipping pages already present.
//!
//! Used wherever a unit is placed 4 KiB page by 4 KiB page: plain anonymous chunks (COPY),
//! zero runs (ZEROPAGE), and the pages of a THP that were not placed urgently (MOVE). A run is a
//! maximal stretch of gathered pages whose `received` bit is clear; one ioctl places it. The
//! client's bitmap can lag behind the page tables (another thread placed a page and has not
//! set its bit yet), so the kernel's answer is the final word: a COPY or MOVE stops at the first
//! page that exists (EAGAIN with the bytes done, or EEXIST), and that page is counted present.
//!
//! Every gathered page is accounted exactly once: it leaves the [`Gathered`] set either as
//! placed (its bit set by us) or as present (someone else's page).

use std::time::Instant;

use uffd_core::place::{self, Filled, Outcome};
use uffd_core::PageBitmap;

use crate::backing::PAGE;
use crate::gathered::Gathered;
use crate::moves::Dst;

/// Pages `first..first + pages` of a unit (or range) that one placement ioctl made present,
/// and when that ioctl was issued and returned: the threads waiting on those pages were woken
/// in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MappedRun {
    /// First page, counted from the start of the unit (or range).
    pub first: usize,
    /// Pages made present.
    pub pages: usize,
    /// Just before the ioctl.
    pub began: Instant,
    /// Just after it returned.
    pub ended: Instant,
}

impl MappedRun {
    /// Times `op` and describes the `pages` it made present from `first` (none: None).
    pub fn timed<T>(
        first: usize,
        op: impl FnOnce() -> T,
        pages: impl Fn(&T) -> usize,
    ) -> (T, Option<MappedRun>) {
        let began = Instant::now();
        let result = op();
        let ended = Instant::now();
        let n = pages(&result);
        let run = (n > 0).then_some(MappedRun {
            first,
            pages: n,
            began,
            ended,
        });
        (result, run)
    }
}

/// The 4 KiB pages a placement ioctl's `outcome` says it placed, at most `max`.
pub(crate) fn pages_placed(outcome: &place::Result<Outcome>, max: usize) -> usize {
    match outcome {
        Ok(Outcome::Placed(bytes)) => usize::try_from(bytes / PAGE).unwrap_or(0).min(max),
        _ => 0,
    }
}

/// What placing a unit (or its runs) did: the page counts every placement has, plus what
/// only a unit has. Summed per call into [`crate::Progress`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Placed {
    /// 4 KiB pages made present (their bits are set now) and gathered pages found already
    /// present; where it stopped early, the pages not yet accounted stay in the set.
    pub pages: Filled,
    /// A THP unit that ended up mapped by 4 KiB pages (collapse failed).
    pub not_huge: bool,
    /// The runs of pages made present, one per ioctl that placed any.
    pub mapped: Vec<MappedRun>,
}

/// Places every page of `have` whose bit (at `first_page + i` in `received`) is clear, one run
/// per `op(index, pages)` call. `op` returns the ioctl's outcome for the run.
pub(crate) fn place_runs(
    received: &PageBitmap,
    first_page: usize,
    have: &mut Gathered,
    mut op: impl FnMut(usize, usize) -> place::Result<Outcome>,
) -> place::Result<Placed> {
    let mut out = Placed::default();
    let pages = have.pages();
    let mut i = 0;
    while i < pages {
        if !have.has(i) {
            i += 1;
            continue;
        }
        if received.get(first_page + i) {
            have.remove(i);
            out.pages.present += 1;
            i += 1;
            continue;
        }
        let mut end = i + 1;
        while end < pages && have.has(end) && !received.get(first_page + end) {
            end += 1;
        }
        let (outcome, run) = MappedRun::timed(i, || op(i, end - i), |o| pages_placed(o, end - i));
        out.mapped.extend(run);
        match outcome? {
            Outcome::Placed(bytes) => {
                // The kernel reports bytes of this run; a short count means it stopped at a
                // page that exists, which the next round finds with EEXIST.
                let done = usize::try_from(bytes / PAGE).unwrap_or(0).min(end - i);
                for p in i..i + done {
                    received.set(first_page + p);
                    have.remove(p);
                }
                out.pages.placed += done as u64;
                if done == 0 {
                    have.remove(i);
                    out.pages.present += 1;
                    i += 1;
                } else {
                    i += done;
                }
            }
            Outcome::AlreadyPresent => {
                have.remove(i);
                out.pages.present += 1;
                i += 1;
            }
            stop => {
                out.pages.stopped = stop.stop();
                break;
            }
        }
    }
    Ok(out)
}

/// Places pages `i..i+n` of a range at `dst` as one run, with one `op(address, first page,
/// pages)` call per piece that is contiguous in memory (a move of the region may have cut the
/// run). The pieces' outcomes are combined as one ioctl's would be: the pages placed from
/// the start of the run up to the first piece that stopped short; if the very first piece
/// placed nothing, its own outcome. So [`place_runs`] meets the stopping page next time.
pub(crate) fn run_at(
    dst: &Dst,
    i: usize,
    n: usize,
    mut op: impl FnMut(u64, usize, usize) -> place::Result<Outcome>,
) -> place::Result<Outcome> {
    let mut done = 0;
    for (at, first, pages) in dst.pieces(i, n) {
        match op(at, first, pages)? {
            Outcome::Placed(bytes) => {
                done += bytes;
                if bytes < pages as u64 * PAGE {
                    break;
                }
            }
            other if done == 0 => return Ok(other),
            _ => break,
        }
    }
    Ok(Outcome::Placed(done))
}

#[cfg(test)]
mod tests {
    use super::*;
    use uffd_core::place::Stop;

    #[test]
    fn runs_skip_received_and_absent_pages() {
        let received = PageBitmap::new(64);
        received.set(10 + 3);
        let mut have = Gathered::new(8);
        for i in [0, 1, 2, 3, 4, 6, 7] {
            have.insert(i);
        }
        let mut calls = Vec::new();
        let placed = place_runs(&received, 10, &mut have, |i, n| {
            calls.push((i, n));
            Ok(Outcome::Placed(n as u64 * PAGE))
        })
        .expect("no error");
        assert_eq!(calls, vec![(0, 3), (4, 1), (6, 2)]);
        assert_eq!(
            (
                placed.pages.placed,
                placed.pages.present,
                placed.pages.stopped
            ),
            (6, 1, None)
        );
        assert!(!placed.not_huge);
        assert_eq!(have.count(), 0);
        assert_eq!(received.count(), 7);
        assert!(!received.get(15), "page 5 was never gathered");
    }

    #[test]
    fn a_short_run_finds_the_present_page_next() {
        let received = PageBitmap::new(4);
        let mut have = Gathered::full(4);
        // The kernel places 2 pages and stops (page 2 exists), then says EEXIST for page 2.
        let mut answers = vec![
            Outcome::Placed(2 * PAGE),
            Outcome::AlreadyPresent,
            Outcome::Placed(PAGE),
        ];
        answers.reverse();
        let placed = place_runs(&received, 0, &mut have, |_, _| {
            Ok(answers.pop().unwrap_or(Outcome::Retry))
        })
        .expect("no error");
        assert_eq!((placed.pages.placed, placed.pages.present), (3, 1));
        assert!(received.get(0) && !received.get(2) && received.get(3));
    }

    #[test]
    fn a_run_cut_by_a_move_is_placed_in_pieces() {
        // Pages 0..4 of a range: 0 and 1 at 0x10000, 2 moved to 0x50000, 3 right after it.
        let dst = Dst::Pages(vec![0x10000, 0x11000, 0x50000, 0x51000]);
        let mut calls = Vec::new();
        let outcome = run_at(&dst, 1, 3, |at, first, pages| {
            calls.push((at, first, pages));
            Ok(Outcome::Placed(pages as u64 * PAGE))
        })
        .expect("no error");
        assert_eq!(outcome, Outcome::Placed(3 * PAGE));
        assert_eq!(calls, vec![(0x11000, 1, 1), (0x50000, 2, 2)]);
        // The second piece finds its first page present: the run reports the first piece
        // only, and the next round meets the present page (EEXIST).
        let mut answers = vec![Outcome::AlreadyPresent, Outcome::Placed(PAGE)];
        let outcome = run_at(&dst, 1, 3, |_, _, _| {
            Ok(answers.pop().unwrap_or(Outcome::Retry))
        })
        .expect("no error");
        assert_eq!(outcome, Outcome::Placed(PAGE));
        // A first piece that cannot start says so itself.
        let outcome = run_at(&dst, 0, 4, |_, _, _| Ok(Outcome::Retry)).expect("no error");
        assert_eq!(outcome, Outcome::Retry);
        // Contiguous: one call.
        let mut calls = 0;
        run_at(&Dst::At(0x20000), 2, 5, |at, first, pages| {
            calls += 1;
            assert_eq!((at, first, pages), (0x22000, 2, 5));
            Ok(Outcome::Placed(5 * PAGE))
        })
        .expect("no error");
        assert_eq!(calls, 1);
    }

    #[test]
    fn retry_keeps_the_rest() {
        let received = PageBitmap::new(4);
        let mut have = Gathered::full(4);
        let placed =
            place_runs(&received, 0, &mut have, |_, _| Ok(Outcome::Retry)).expect("no error");
        assert_eq!(placed.pages.stopped, Some(Stop::Retry));
        assert_eq!(have.count(), 4);
    }
}
