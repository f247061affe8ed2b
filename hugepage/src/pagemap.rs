//! `PAGEMAP_SCAN` (Linux 6.7): which pages of a range are mapped as huge pages, cheaply.
//!
//! smaps answers per VMA and costs a walk of every VMA of the process; the assembler needs to
//! know, right after placing one unit, whether *that* 2 MiB range ended up PMD-mapped (a MOVE
//! into a range where a fault already allocated a page table splits the THP, and the range must
//! then be collapsed). The `PAGEMAP_SCAN` ioctl on `/proc/self/pagemap` walks just the range
//! and reports runs of pages with their categories; `PAGE_IS_HUGE` is set for pages mapped by a
//! PMD (THP) or a hugetlb entry, not for a THP mapped by 4 KiB PTEs.

use std::fs::File;
use std::os::fd::AsRawFd;

use nix::errno::Errno;

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

/// `struct page_region` (include/uapi/linux/fs.h).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

/// `struct pm_scan_arg`.
#[repr(C)]
#[derive(Debug, Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

const _: () = assert!(std::mem::size_of::<PmScanArg>() == 96);

const PAGE_IS_PRESENT: u64 = 1 << 3;
const PAGE_IS_PFNZERO: u64 = 1 << 5;
const PAGE_IS_HUGE: u64 = 1 << 6;

nix::ioctl_readwrite!(pagemap_scan, b'f', 16, PmScanArg);

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

    /// Bytes of `start..start+len` that are present and mapped as huge pages.
    pub fn huge_bytes(&self, start: u64, len: u64) -> Result<u64> {
        let mut huge = 0;
        self.scan(
            start,
            len,
            PAGE_IS_PRESENT,
            PAGE_IS_PRESENT | PAGE_IS_HUGE,
            |r| {
                if r.categories & PAGE_IS_HUGE != 0 {
                    huge += r.end - r.start;
                }
            },
        )?;
        Ok(huge)
    }

    /// The runs (start, length) of `start..start+len` that map the shared zero page.
    pub fn zero_page_runs(&self, start: u64, len: u64) -> Result<Vec<(u64, u64)>> {
        let mut runs = Vec::new();
        self.scan(start, len, PAGE_IS_PFNZERO, PAGE_IS_PFNZERO, |r| {
            runs.push((r.start, r.end - r.start));
        })?;
        Ok(runs)
    }

    /// PAGEMAP_SCAN of `start..start+len` for the pages in every category of
    /// `category_mask`: calls `each` with every run found.
    fn scan(
        &self,
        start: u64,
        len: u64,
        category_mask: u64,
        return_mask: u64,
        mut each: impl FnMut(&PageRegion),
    ) -> Result<()> {
        let end = start + len;
        let mut regions = [PageRegion::default(); 32];
        let mut at = start;
        while at < end {
            let mut arg = PmScanArg {
                size: std::mem::size_of::<PmScanArg>() as u64,
                start: at,
                end,
                vec: regions.as_mut_ptr() as u64,
                vec_len: regions.len() as u64,
                category_mask,
                return_mask,
                ..PmScanArg::default()
            };
            // SAFETY: `arg` is a valid pm_scan_arg whose `vec` points to `regions`, writable
            // for `vec_len` entries for the whole call; the kernel only walks our own page
            // tables and writes `arg` and `regions`.
            let filled =
                unsafe { pagemap_scan(self.file.as_raw_fd(), &mut arg) }.map_err(|errno| {
                    PagemapError::Scan {
                        start: at,
                        len: end - at,
                        errno,
                    }
                })?;
            let filled = usize::try_from(filled).unwrap_or(0).min(regions.len());
            regions[..filled].iter().for_each(&mut each);
            if arg.walk_end <= at {
                break;
            }
            at = arg.walk_end;
        }
        Ok(())
    }

    /// True when the whole of `start..start+len` is present and mapped as huge pages.
    pub fn is_huge(&self, start: u64, len: u64) -> Result<bool> {
        self.huge_bytes(start, len).map(|bytes| bytes == len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::mman::MmapAdvise;
    use uffd_core::region::{Region, HUGE_2M};

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
            uffd_core::testing::skip("the kernel gave no THP (fragmented memory?)");
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
}
