//! Page placement: resolving missing pages with UFFDIO_COPY, ZEROPAGE, CONTINUE and MOVE.
//!
//! The kernel's answers are turned into values, because most of them are normal events in a
//! pager, not failures:
//!
//! | kernel answer                       | [`Outcome`]                                   |
//! |-------------------------------------|-----------------------------------------------|
//! | success                             | `Placed(len)`                                  |
//! | EAGAIN with progress > 0            | `Placed(progress)`: stopped at a present page  |
//! | EEXIST                              | `AlreadyPresent`: the other path was first     |
//! | EAGAIN, no progress                 | `Retry`: a non-cooperative event is unread     |
//! | ESRCH                               | `Gone`: the process that owns the mm exited     |
//! | anything else                       | a [`PlaceError`]                               |
//!
//! A multi-page COPY works page by page and stops at the first page that already exists, so
//! [`fill`] drives a range to the end: it skips present pages one at a time and reports how
//! many pages it placed and how many were already there, as a [`Filled`]. `Retry` and `Gone`
//! end the placement of a range; [`Outcome::stop`] says which [`Stop`] each one is, for every
//! pager that places ranges (here and in the `hugepage` crate).

use nix::errno::Errno;

use crate::convert::usize_from;
use crate::sys::{self, RangeAnswer};
use crate::uffd::Userfaultfd;

/// A placement ioctl's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// This many bytes from the start of the range were placed (and woken, unless DONTWAKE).
    Placed(u64),
    /// The first page of the range is already mapped: it came by another path.
    AlreadyPresent,
    /// Nothing was done because an event (REMOVE, REMAP, UNMAP, FORK) waits to be read, or the
    /// address space is changing: read events, then try again.
    Retry,
    /// The process owning the registered memory has exited.
    Gone,
}

impl Outcome {
    /// Why a placement must stop here, if it must: `Retry` and `Gone` end a range's
    /// placement, `Placed` and `AlreadyPresent` let it go on.
    pub fn stop(self) -> Option<Stop> {
        match self {
            Outcome::Placed(_) | Outcome::AlreadyPresent => None,
            Outcome::Retry => Some(Stop::Retry),
            Outcome::Gone => Some(Stop::Gone),
        }
    }
}

/// Which placement ioctl failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// UFFDIO_COPY.
    Copy,
    /// UFFDIO_ZEROPAGE.
    Zeropage,
    /// UFFDIO_CONTINUE.
    Continue,
    /// UFFDIO_MOVE.
    Move,
    /// UFFDIO_POISON.
    Poison,
}

impl Op {
    /// The ioctl's name as the uapi header spells it.
    pub fn name(self) -> &'static str {
        match self {
            Op::Copy => "UFFDIO_COPY",
            Op::Zeropage => "UFFDIO_ZEROPAGE",
            Op::Continue => "UFFDIO_CONTINUE",
            Op::Move => "UFFDIO_MOVE",
            Op::Poison => "UFFDIO_POISON",
        }
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A placement that failed for a reason a pager cannot handle (bad range, wrong mapping type,
/// out of memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{op} of {len} bytes at {dst:#x} failed: {errno}")]
pub struct PlaceError {
    /// The ioctl.
    pub op: Op,
    /// Destination address.
    pub dst: u64,
    /// Length asked for.
    pub len: u64,
    /// The kernel's answer.
    pub errno: Errno,
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, PlaceError>;

fn classify(op: Op, dst: u64, len: u64, answer: RangeAnswer) -> Result<Outcome> {
    let progress = u64::try_from(answer.progress).unwrap_or(0);
    match answer.result {
        Ok(()) => Ok(Outcome::Placed(if progress == 0 { len } else { progress })),
        Err(Errno::EAGAIN) if progress > 0 => Ok(Outcome::Placed(progress)),
        Err(Errno::EAGAIN) => Ok(Outcome::Retry),
        Err(Errno::EEXIST) => Ok(Outcome::AlreadyPresent),
        Err(Errno::ESRCH) => Ok(Outcome::Gone),
        Err(errno) => Err(PlaceError {
            op,
            dst,
            len,
            errno,
        }),
    }
}

/// UFFDIO_COPY of `src` to `dst`, waking the faulting threads unless `wake` is false.
pub fn copy(uffd: &Userfaultfd, dst: u64, src: &[u8], wake: bool) -> Result<Outcome> {
    let mode = if wake { 0 } else { sys::MODE_DONTWAKE };
    let len = src.len() as u64;
    // SAFETY: `src` is a live slice, readable for its whole length during the call.
    let answer = unsafe { sys::copy(uffd.raw_fd(), dst, src.as_ptr(), len, mode) };
    classify(Op::Copy, dst, len, answer)
}

/// UFFDIO_ZEROPAGE over `dst..dst+len`.
pub fn zeropage(uffd: &Userfaultfd, dst: u64, len: u64, wake: bool) -> Result<Outcome> {
    let mode = if wake { 0 } else { sys::MODE_DONTWAKE };
    let answer = sys::zeropage(uffd.raw_fd(), dst, len, mode);
    classify(Op::Zeropage, dst, len, answer)
}

/// UFFDIO_CONTINUE over `dst..dst+len` (the pages must be in the page cache).
pub fn continue_(uffd: &Userfaultfd, dst: u64, len: u64, wake: bool) -> Result<Outcome> {
    let mode = if wake { 0 } else { sys::MODE_DONTWAKE };
    let answer = sys::continue_(uffd.raw_fd(), dst, len, mode);
    classify(Op::Continue, dst, len, answer)
}

/// UFFDIO_MOVE of `len` bytes from `src` to `dst`.
///
/// # Safety
/// The pages at `src..src+len` leave the source mapping: no live Rust reference may point
/// into that range, and the source must be private anonymous memory of this process.
pub unsafe fn move_(
    uffd: &Userfaultfd,
    dst: u64,
    src: u64,
    len: u64,
    wake: bool,
) -> Result<Outcome> {
    let mode = if wake { 0 } else { sys::MODE_DONTWAKE };
    // SAFETY: forwarded from the caller.
    let answer = unsafe { sys::move_(uffd.raw_fd(), dst, src, len, mode) };
    classify(Op::Move, dst, len, answer)
}

/// UFFDIO_POISON over `dst..dst+len`: later accesses raise SIGBUS.
pub fn poison(uffd: &Userfaultfd, dst: u64, len: u64, wake: bool) -> Result<Outcome> {
    let mode = if wake { 0 } else { sys::MODE_DONTWAKE };
    let answer = sys::poison(uffd.raw_fd(), dst, len, mode);
    classify(Op::Poison, dst, len, answer)
}

/// Why a placement stopped before the end of its range ([`Outcome::stop`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// An event must be read first; the rest of the range is still missing.
    Retry,
    /// The owning process exited.
    Gone,
}

/// What placing a range did, in pages: [`fill`]'s answer, and what the `hugepage` crate
/// counts for a unit (in 4 KiB pages) before adding it to its per-call totals.
///
/// Every page of the range up to the stop is counted once, as placed or as present.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Filled {
    /// Pages this call made present.
    pub placed: u64,
    /// Pages skipped because they were already present (they came by another path).
    pub present: u64,
    /// Why it stopped early, if it did; the unfilled part starts `placed + present` pages in.
    pub stopped: Option<Stop>,
}

impl Filled {
    /// Adds `other` to `self`; the first stop wins.
    pub fn add(&mut self, other: &Filled) {
        self.placed += other.placed;
        self.present += other.present;
        self.stopped = self.stopped.or(other.stopped);
    }
}

/// How to place one piece of a range: COPY from a buffer or ZEROPAGE.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// Copy these bytes (the range's length is the slice's).
    Bytes(&'a [u8]),
    /// Map zero pages over this many bytes.
    Zero(u64),
}

impl Source<'_> {
    fn len(&self) -> u64 {
        match self {
            Source::Bytes(bytes) => bytes.len() as u64,
            Source::Zero(len) => *len,
        }
    }
}

/// Places a whole range at `dst`, page by page where it must: pages that are already present
/// are skipped (they came by another path), the rest are placed and woken. The range's
/// length is a multiple of `page`, the size [`Filled`] counts in.
pub fn fill(uffd: &Userfaultfd, dst: u64, source: Source<'_>, page: u64) -> Result<Filled> {
    let len = source.len();
    let mut done = Filled::default();
    let mut at = 0;
    while at < len {
        let outcome = match source {
            // `at` is below the slice's length, which is a usize.
            Source::Bytes(bytes) => copy(uffd, dst + at, &bytes[usize_from(at)..], true)?,
            Source::Zero(_) => zeropage(uffd, dst + at, len - at, true)?,
        };
        match outcome {
            Outcome::Placed(n) => {
                done.placed += n / page;
                at += n;
            }
            Outcome::AlreadyPresent => {
                done.present += 1;
                at += page;
            }
            stop => {
                done.stopped = stop.stop();
                break;
            }
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::{page_size, Region};
    use crate::uffd::Modes;

    fn setup(pages: usize) -> Option<(Userfaultfd, Region)> {
        let uffd = match Userfaultfd::open(0) {
            Ok(uffd) => uffd,
            Err(err) => {
                uffd_testkit::skip(&err.to_string());
                return None;
            }
        };
        let region = Region::anonymous(pages * page_size()).expect("mmap");
        uffd.register(region.addr(), region.len() as u64, Modes::MISSING)
            .expect("register");
        Some((uffd, region))
    }

    #[test]
    fn copy_then_eexist() {
        let Some((uffd, region)) = setup(2) else {
            return;
        };
        let page = vec![7u8; page_size()];
        assert_eq!(
            copy(&uffd, region.addr(), &page, true),
            Ok(Outcome::Placed(page.len() as u64))
        );
        assert_eq!(
            copy(&uffd, region.addr(), &page, true),
            Ok(Outcome::AlreadyPresent)
        );
        // SAFETY: page 0 is present.
        assert_eq!(unsafe { *region.as_ptr() }, 7);
    }

    #[test]
    fn fill_skips_present_pages_in_the_middle() {
        let Some((uffd, region)) = setup(8) else {
            return;
        };
        let ps = page_size() as u64;
        let one = vec![1u8; page_size()];
        // Pages 2 and 5 come "urgently" first.
        copy(&uffd, region.addr() + 2 * ps, &one, true).expect("copy");
        copy(&uffd, region.addr() + 5 * ps, &one, true).expect("copy");
        let all = vec![9u8; 8 * page_size()];
        let filled = fill(&uffd, region.addr(), Source::Bytes(&all), ps).expect("fill");
        assert_eq!(filled.placed, 6);
        assert_eq!(filled.present, 2);
        assert_eq!(filled.stopped, None);
        for p in 0..8 {
            // SAFETY: every page is present now.
            let byte = unsafe { *region.as_ptr().add(p * page_size()) };
            assert_eq!(byte, if p == 2 || p == 5 { 1 } else { 9 }, "page {p}");
        }
    }

    #[test]
    fn zero_fill_range() {
        let Some((uffd, region)) = setup(4) else {
            return;
        };
        let ps = page_size() as u64;
        copy(&uffd, region.addr() + ps, &vec![3u8; page_size()], true).expect("copy");
        let filled = fill(&uffd, region.addr(), Source::Zero(4 * ps), ps).expect("fill");
        assert_eq!((filled.placed, filled.present), (3, 1));
        // SAFETY: every page is present.
        let bytes = unsafe { region.as_slice() };
        assert!(bytes[..page_size()].iter().all(|&b| b == 0));
        assert!(bytes[page_size()..2 * page_size()].iter().all(|&b| b == 3));
    }

    #[test]
    fn bad_range_is_an_error() {
        let Some((uffd, _region)) = setup(1) else {
            return;
        };
        // Address 0 is never registered.
        let err = copy(&uffd, 0, &vec![0u8; page_size()], true).expect_err("EINVAL/ENOENT");
        assert_eq!(err.op, Op::Copy);
        // The message names the ioctl as the uapi header and the man pages spell it.
        let expected = format!("UFFDIO_COPY of {} bytes at 0x0 failed: ", page_size());
        assert!(err.to_string().starts_with(&expected), "{err}");
    }
}
