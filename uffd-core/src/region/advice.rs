//! `madvise(2)` advice that may be given for any range of the process, not only a
//! [`Region`](super::Region)'s own: `MADV_COLLAPSE` and `MADV_POPULATE_WRITE`.

use nix::errno::Errno;

/// `madvise(2)` advice that keeps what the memory holds, so that it may be given for any range
/// of this process: inside a [`Region`](super::Region), or where the application moved a
/// region's pages with `mremap`. (Advice that may discard pages goes through
/// [`Region::advise`](super::Region::advise), on memory the Region owns.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advice {
    /// `MADV_COLLAPSE` (Linux 6.1): copy the range's pages into new huge pages and map those
    /// by PMD, whatever the THP sysfs mode says (but not in a `MADV_NOHUGEPAGE` range:
    /// EINVAL). Synchronous: it holds the mmap lock for writing while it copies. In a range
    /// registered with a userfaultfd it needs every page present and none the shared zero
    /// page (EBUSY or EAGAIN otherwise).
    Collapse,
    /// `MADV_POPULATE_WRITE` (Linux 5.14): fault every page in writable, as a write would,
    /// without writing: a missing page is allocated zeroed (or raises a userfault in a
    /// registered range), a zero-page mapping gets a private zeroed page.
    PopulateWrite,
}

impl Advice {
    /// The advice's name, as madvise(2) spells it.
    pub fn name(self) -> &'static str {
        match self {
            Advice::Collapse => "MADV_COLLAPSE",
            Advice::PopulateWrite => "MADV_POPULATE_WRITE",
        }
    }

    fn raw(self) -> libc::c_int {
        match self {
            Advice::Collapse => libc::MADV_COLLAPSE,
            Advice::PopulateWrite => libc::MADV_POPULATE_WRITE,
        }
    }
}

/// [`advise_range`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{advice} of {len} bytes at {addr:#x} failed: {errno}", advice = .advice.name())]
pub struct AdviseError {
    /// The advice.
    pub advice: Advice,
    /// Start of the range.
    pub addr: u64,
    /// Length of the range.
    pub len: u64,
    /// The kernel's answer (ENOMEM where nothing is mapped).
    pub errno: Errno,
}

/// Gives `advice` for `addr..addr+len` (page-aligned start).
pub fn advise_range(addr: u64, len: u64, advice: Advice) -> std::result::Result<(), AdviseError> {
    let fail = |errno| AdviseError {
        advice,
        addr,
        len,
        errno,
    };
    let bytes = usize::try_from(len).map_err(|_| fail(Errno::EINVAL))?;
    // SAFETY: both kinds of advice leave the content of every page as it was and unmap
    // nothing (MADV_COLLAPSE copies pages into a huge page and swaps the mapping under the
    // mmap lock; MADV_POPULATE_WRITE only faults pages in), so no Rust object changes under
    // its owner. A range that is not mapped, or not suitable, is refused with an errno.
    let ret = unsafe { libc::madvise(addr as *mut libc::c_void, bytes, advice.raw()) };
    Errno::result(ret).map(drop).map_err(fail)
}

#[cfg(test)]
mod tests {
    use nix::sys::mman;

    use super::*;
    use crate::region::{Region, HUGE_2M};

    #[test]
    fn collapse_makes_one_huge_page_of_4k_pages() {
        let pagemap = crate::Pagemap::open().expect("pagemap");
        let region = Region::anonymous_aligned(HUGE_2M, HUGE_2M).expect("mmap");
        let (addr, len) = (region.addr(), HUGE_2M as u64);
        // Refused over memory that is not mapped at all.
        let unmapped = advise_range(0, len, Advice::Collapse).expect_err("address 0");
        assert_eq!(unmapped.advice, Advice::Collapse);
        assert!(unmapped
            .to_string()
            .starts_with("MADV_COLLAPSE of 2097152 bytes at 0x0"));
        region
            .advise(
                0,
                HUGE_2M,
                mman::MmapAdvise::MADV_NOHUGEPAGE,
                "MADV_NOHUGEPAGE",
            )
            .expect("advise");
        advise_range(addr, len, Advice::PopulateWrite).expect("populate");
        // SAFETY: the region is ours and populated; nothing else refers to it.
        unsafe { region.as_ptr().add(4096).write(5) };
        assert_eq!(pagemap.huge_bytes(addr, len).expect("scan"), 0);
        // MADV_NOHUGEPAGE kept the populate to 4 KiB pages whatever the THP mode; MADV_COLLAPSE
        // ignores the sysfs mode but not that, so lift it.
        region
            .advise(0, HUGE_2M, mman::MmapAdvise::MADV_HUGEPAGE, "MADV_HUGEPAGE")
            .expect("advise");
        match advise_range(addr, len, Advice::Collapse) {
            Ok(()) => assert!(pagemap.is_huge(addr, len).expect("scan")),
            // No free huge page even after compaction: a property of this machine's memory.
            Err(err) if err.errno == Errno::ENOMEM => uffd_testkit::skip(&err.to_string()),
            Err(err) => panic!("{err}"),
        }
        // SAFETY: as above; the collapse kept the content.
        assert_eq!(unsafe { region.as_ptr().add(4096).read() }, 5);
    }
}
