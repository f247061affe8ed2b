//! `PAGEMAP_SCAN` (Linux 6.7): what the kernel recorded about each page of a range, cheaply.
//!
//! The ioctl on `/proc/self/pagemap` walks just the range asked for and reports runs of pages
//! that share the categories asked for (`PAGE_IS_*`). Two uses here:
//! - **How a range is mapped.** smaps answers per VMA and walks every VMA of the process; a
//!   pager that has just placed a 2 MiB unit wants to know whether *that* range ended up
//!   PMD-mapped. `PAGE_IS_HUGE` is set for pages mapped by a PMD (THP) or a hugetlb entry, not
//!   for a THP mapped by 4 KiB PTEs; `PAGE_IS_PFNZERO` for pages mapping the shared zero page.
//! - **Dirty tracking with async write-protect.** On a range registered for WP with
//!   `UFFD_FEATURE_WP_ASYNC`, the kernel resolves write faults itself and only marks the page
//!   written (`PAGE_IS_WRITTEN`); a scan with `PM_SCAN_WP_MATCHING` reports those pages and
//!   write-protects them again in the same call ([`Pagemap::take_written`]).
//!
//! (Documentation/admin-guide/mm/pagemap.rst, "Pagemap Scan IOCTL".)

use std::fs::File;
use std::os::fd::AsRawFd;

use nix::errno::Errno;

use crate::sys::{self, page_region, pm_scan_arg};

/// `PAGE_IS_WPALLOWED`: the page is in a range armed for async write-protect.
pub const PAGE_IS_WPALLOWED: u64 = 1 << 0;
/// `PAGE_IS_WRITTEN`: written since it was last write-protected (async WP).
pub const PAGE_IS_WRITTEN: u64 = 1 << 1;
/// `PAGE_IS_FILE`: file-backed (shmem included).
pub const PAGE_IS_FILE: u64 = 1 << 2;
/// `PAGE_IS_PRESENT`: mapped to a page in memory.
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
/// `PAGE_IS_SWAPPED`: swapped out.
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;
/// `PAGE_IS_PFNZERO`: maps the shared zero page.
pub const PAGE_IS_PFNZERO: u64 = 1 << 5;
/// `PAGE_IS_HUGE`: mapped by a PMD (THP) or a hugetlb entry.
pub const PAGE_IS_HUGE: u64 = 1 << 6;

/// `PM_SCAN_WP_MATCHING`: write-protect the pages reported (async WP ranges).
pub const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
/// `PM_SCAN_CHECK_WPASYNC`: fail instead of scanning a page not armed for async WP.
pub const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum PagemapError {
    /// `/proc/self/pagemap` could not be opened.
    #[error("opening /proc/self/pagemap failed: {0}")]
    Open(std::io::Error),
    /// The ioctl failed (ENOTTY/EINVAL before Linux 6.7).
    #[error("PAGEMAP_SCAN of {len} bytes at {start:#x} failed: {errno} (needs Linux 6.7)")]
    Scan {
        /// Start of the range.
        start: u64,
        /// Length.
        len: u64,
        /// The kernel's answer.
        errno: Errno,
    },
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, PagemapError>;

/// What a scan looks for, and what it does to what it finds (the masks of `pm_scan_arg`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Query {
    /// `PM_SCAN_*` bits.
    pub flags: u64,
    /// Categories that match when clear rather than set.
    pub inverted: u64,
    /// A page is reported only if it matches all of these...
    pub all_of: u64,
    /// ...and at least one of these (0: no such condition).
    pub any_of: u64,
    /// Categories reported with each run.
    pub report: u64,
}

/// An open `/proc/self/pagemap`.
#[derive(Debug)]
pub struct Pagemap {
    file: File,
}

impl Pagemap {
    /// Opens this process's pagemap.
    pub fn open() -> Result<Self> {
        File::open("/proc/self/pagemap")
            .map(|file| Pagemap { file })
            .map_err(PagemapError::Open)
    }

    /// Scans `start..start+len` for the pages `query` matches: calls `each` with every run
    /// found, in address order.
    pub fn scan(
        &self,
        start: u64,
        len: u64,
        query: Query,
        mut each: impl FnMut(&page_region),
    ) -> Result<()> {
        let end = start + len;
        let mut regions = [page_region::default(); 32];
        let mut at = start;
        while at < end {
            let mut arg = pm_scan_arg {
                flags: query.flags,
                start: at,
                end,
                category_inverted: query.inverted,
                category_mask: query.all_of,
                category_anyof_mask: query.any_of,
                return_mask: query.report,
                ..pm_scan_arg::default()
            };
            let filled = sys::pagemap_scan(self.file.as_raw_fd(), &mut arg, &mut regions).map_err(
                |errno| PagemapError::Scan {
                    start: at,
                    len: end - at,
                    errno,
                },
            )?;
            regions[..filled].iter().for_each(&mut each);
            // The walk stops where the run array filled up; go on from there.
            if arg.walk_end <= at {
                break;
            }
            at = arg.walk_end;
        }
        Ok(())
    }

    /// Bytes of `start..start+len` that are present and mapped as huge pages.
    pub fn huge_bytes(&self, start: u64, len: u64) -> Result<u64> {
        let query = Query {
            all_of: PAGE_IS_PRESENT,
            report: PAGE_IS_PRESENT | PAGE_IS_HUGE,
            ..Query::default()
        };
        let mut huge = 0;
        self.scan(start, len, query, |r| {
            if r.categories & PAGE_IS_HUGE != 0 {
                huge += r.end - r.start;
            }
        })?;
        Ok(huge)
    }

    /// True when the whole of `start..start+len` is present and mapped as huge pages.
    pub fn is_huge(&self, start: u64, len: u64) -> Result<bool> {
        self.huge_bytes(start, len).map(|bytes| bytes == len)
    }

    /// The runs (start, length) of `start..start+len` that map the shared zero page.
    pub fn zero_page_runs(&self, start: u64, len: u64) -> Result<Vec<(u64, u64)>> {
        let query = Query {
            all_of: PAGE_IS_PFNZERO,
            report: PAGE_IS_PFNZERO,
            ..Query::default()
        };
        self.runs(start, len, query)
    }

    /// Async write-protect dirty tracking: the runs (start, length) of `start..start+len`
    /// written since the last call (or since the range was write-protected), each
    /// write-protected again by the same scan. The range must be registered for WP on a
    /// userfaultfd with `UFFD_FEATURE_WP_ASYNC` (otherwise the scan fails: EPERM).
    pub fn take_written(&self, start: u64, len: u64) -> Result<Vec<(u64, u64)>> {
        let query = Query {
            flags: PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
            all_of: PAGE_IS_WRITTEN,
            report: PAGE_IS_WRITTEN,
            ..Query::default()
        };
        self.runs(start, len, query)
    }

    fn runs(&self, start: u64, len: u64, query: Query) -> Result<Vec<(u64, u64)>> {
        let mut runs = Vec::new();
        self.scan(start, len, query, |r| runs.push((r.start, r.end - r.start)))?;
        Ok(runs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::{Region, HUGE_2M};
    use nix::sys::mman::MmapAdvise;

    #[test]
    fn a_populated_thp_is_huge_and_4k_pages_are_not() {
        let pagemap = Pagemap::open().expect("pagemap");
        let thp = Region::thp(HUGE_2M).expect("mmap");
        thp.advise(
            0,
            HUGE_2M,
            MmapAdvise::MADV_POPULATE_WRITE,
            "MADV_POPULATE_WRITE",
        )
        .expect("populate");
        if !pagemap.is_huge(thp.addr(), HUGE_2M as u64).expect("scan") {
            uffd_testkit::skip("the kernel gave no THP (fragmented memory?)");
        }
        let small = Region::anonymous_aligned(HUGE_2M, HUGE_2M).expect("mmap");
        small
            .advise(0, HUGE_2M, MmapAdvise::MADV_NOHUGEPAGE, "MADV_NOHUGEPAGE")
            .expect("advise");
        small
            .advise(
                0,
                HUGE_2M,
                MmapAdvise::MADV_POPULATE_WRITE,
                "MADV_POPULATE_WRITE",
            )
            .expect("populate");
        assert_eq!(
            pagemap
                .huge_bytes(small.addr(), HUGE_2M as u64)
                .expect("scan"),
            0
        );
        assert!(!pagemap.is_huge(small.addr(), 4096).expect("scan"));
    }

    #[test]
    fn read_pages_map_the_zero_page() {
        let pagemap = Pagemap::open().expect("pagemap");
        let page = crate::region::page_size();
        let region = Region::anonymous_aligned(4 * page, HUGE_2M).expect("mmap");
        region
            .advise(0, 4 * page, MmapAdvise::MADV_NOHUGEPAGE, "MADV_NOHUGEPAGE")
            .expect("advise");
        // SAFETY: pages 1 and 2 are ours; a read fault of an untouched private anonymous
        // page maps the shared zero page.
        unsafe {
            std::ptr::read_volatile(region.as_ptr().add(page));
            std::ptr::read_volatile(region.as_ptr().add(2 * page));
        }
        let runs = pagemap
            .zero_page_runs(region.addr(), region.len() as u64)
            .expect("scan");
        assert_eq!(runs, [(region.addr() + page as u64, 2 * page as u64)]);
    }

    #[test]
    fn take_written_reports_each_write_once() {
        use crate::sys::feature;
        let features = feature::PAGEFAULT_FLAG_WP | feature::WP_ASYNC | feature::WP_UNPOPULATED;
        let uffd = match crate::Userfaultfd::open(features) {
            Ok(uffd) => uffd,
            Err(err) => return uffd_testkit::skip(&err.to_string()),
        };
        let page = crate::region::page_size();
        let region = Region::anonymous(8 * page).expect("mmap");
        let (start, len) = (region.addr(), region.len() as u64);
        let modes = crate::Modes {
            write_protect: true,
            ..crate::Modes::default()
        };
        uffd.register(start, len, modes).expect("register");
        uffd.write_protect(start, len, true).expect("write-protect");
        let pagemap = Pagemap::open().expect("pagemap");
        assert_eq!(pagemap.take_written(start, len).expect("scan"), []);
        for p in [2, 3, 6] {
            // SAFETY: page `p` is inside the region; async WP resolves the write fault itself.
            unsafe { std::ptr::write_volatile(region.as_ptr().add(p * page), 1) };
        }
        let page = page as u64;
        assert_eq!(
            pagemap.take_written(start, len).expect("scan"),
            [(start + 2 * page, 2 * page), (start + 6 * page, page)]
        );
        // The scan protected them again: nothing is written until the next write.
        assert_eq!(pagemap.take_written(start, len).expect("scan"), []);
        // A range not armed for async WP is refused rather than reported clean.
        let plain = Region::anonymous(crate::region::page_size()).expect("mmap");
        assert!(pagemap.take_written(plain.addr(), page).is_err());
    }
}
