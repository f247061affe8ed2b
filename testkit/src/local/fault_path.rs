//! The kinds of fault measured: which page a fault finds and which ioctl resolves it.

use uffd_core::page_size;
use uffd_core::region::HUGE_2M;

use super::FILL;
#[cfg(doc)]
use super::VERIFY_OFFSET;

/// Which kind of page a fault finds, and which ioctl resolves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultPath {
    /// Private anonymous 4K page, MISSING; resolved by UFFDIO_COPY of a 4K page. Write access.
    Copy4k,
    /// Private anonymous 4K page, MISSING; resolved by UFFDIO_ZEROPAGE. Read access: a write
    /// would take a second (copy-on-write) fault after the zero page is mapped.
    Zeropage4k,
    /// shmem memfd mapped twice; the page is in the page cache (written through the alias) but
    /// not mapped in the registered mapping, which is registered MINOR; resolved by
    /// UFFDIO_CONTINUE. Write access.
    ContinueShmem4k,
    /// hugetlbfs memfd (2M pages) mapped twice, as [`FaultPath::ContinueShmem4k`]. Write access.
    ContinueHugetlb2m,
    /// Private anonymous 4K page, MISSING; resolved by UFFDIO_MOVE of a populated page from a
    /// source region of this process. Write access.
    Move4k,
    /// A present private anonymous 4K page, write-protected in a range registered WP; resolved
    /// by un-protecting it (UFFDIO_WRITEPROTECT without DONTWAKE). Write access.
    WriteProtect4k,
    /// Private hugetlbfs 2M page, MISSING; resolved by UFFDIO_COPY of 2 MiB. Write access.
    HugetlbCopy2m,
}

impl FaultPath {
    /// Every path, in table order.
    pub const ALL: [FaultPath; 7] = [
        FaultPath::Copy4k,
        FaultPath::Zeropage4k,
        FaultPath::ContinueShmem4k,
        FaultPath::ContinueHugetlb2m,
        FaultPath::Move4k,
        FaultPath::WriteProtect4k,
        FaultPath::HugetlbCopy2m,
    ];

    /// A short name for tables and benchmark ids.
    pub fn name(self) -> &'static str {
        match self {
            FaultPath::Copy4k => "copy_4k",
            FaultPath::Zeropage4k => "zeropage_4k",
            FaultPath::ContinueShmem4k => "continue_shmem_4k",
            FaultPath::ContinueHugetlb2m => "continue_hugetlb_2m",
            FaultPath::Move4k => "move_4k",
            FaultPath::WriteProtect4k => "wp_4k",
            FaultPath::HugetlbCopy2m => "hugetlb_copy_2m",
        }
    }

    /// The page size the fault is resolved in.
    pub fn page_size(self) -> usize {
        match self {
            FaultPath::ContinueHugetlb2m | FaultPath::HugetlbCopy2m => HUGE_2M,
            _ => page_size(),
        }
    }

    /// True when the path needs 2 MiB pages from the hugetlb pool (one per fixture page).
    pub fn needs_hugetlb(self) -> bool {
        self.page_size() == HUGE_2M
    }

    /// The `sys::feature` bits the userfaultfd must negotiate for this path.
    pub fn features(self) -> u64 {
        use uffd_core::sys::feature;
        match self {
            FaultPath::Move4k => feature::MOVE,
            FaultPath::ContinueShmem4k => feature::MINOR_SHMEM,
            FaultPath::ContinueHugetlb2m => feature::MINOR_HUGETLBFS,
            FaultPath::HugetlbCopy2m => feature::MISSING_HUGETLBFS,
            FaultPath::Copy4k | FaultPath::Zeropage4k | FaultPath::WriteProtect4k => 0,
        }
    }

    /// The access that faults: a read for ZEROPAGE, a write otherwise.
    pub(super) fn writes(self) -> bool {
        self != FaultPath::Zeropage4k
    }

    /// The byte at [`VERIFY_OFFSET`] once the fault is resolved.
    pub fn expected_byte(self) -> u8 {
        match self {
            FaultPath::Zeropage4k => 0,
            _ => FILL,
        }
    }
}
