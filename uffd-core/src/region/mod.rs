//! Memory regions: mappings that own their `munmap`.
//!
//! A [`Region`] is the memory a userfaultfd is registered on. It is only ever accessed through
//! raw pointers (the kernel fills it behind Rust's back), so it hands out addresses, not slices,
//! except through the explicitly `unsafe` [`Region::as_slice`].
//!
//! This file maps private memory (anonymous, THP-aligned, hugetlb) and unmaps it; `memfd`
//! holds memory files and their shared mappings (the alias pair of minor faults), `advice`
//! the `madvise(2)` advice that may be given for any range (collapse, populate).

use std::num::NonZeroUsize;
use std::ptr::NonNull;

use nix::errno::Errno;
use nix::sys::mman::{self, MapFlags, ProtFlags};

mod advice;
mod memfd;

pub use advice::{advise_range, Advice, AdviseError};
pub use memfd::Memfd;

/// The base page size of this architecture (x86_64: 4 KiB).
pub fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

/// The PMD-level huge page size on x86_64.
pub const HUGE_2M: usize = 2 << 20;

/// The PUD-level huge page size on x86_64.
pub const HUGE_1G: usize = 1 << 30;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    /// A zero-length region was asked for.
    #[error("a region cannot be empty")]
    Empty,
    /// `mmap(2)` failed.
    #[error("mmap of {len} bytes ({what}) failed: {errno}")]
    Map {
        /// Requested length.
        len: usize,
        /// Which kind of mapping.
        what: &'static str,
        /// The kernel's answer.
        errno: Errno,
    },
    /// Not a huge page size this architecture has.
    #[error("{0} bytes is not a huge page size (2 MiB or 1 GiB)")]
    HugeSize(usize),
    /// `madvise(2)` failed.
    #[error("madvise({advice}) failed: {errno}")]
    Advise {
        /// Advice name.
        advice: &'static str,
        /// The kernel's answer.
        errno: Errno,
    },
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, RegionError>;

/// A private anonymous mapping, unmapped on drop.
#[derive(Debug)]
pub struct Region {
    /// Start of the usable range (aligned as requested).
    start: NonNull<u8>,
    len: usize,
    /// The whole mapping as returned by mmap, which may be larger to allow alignment.
    map_start: NonNull<libc::c_void>,
    map_len: usize,
}

// SAFETY: a Region is an address range; it holds no thread-affine state, and every access to
// its memory goes through raw pointers whose synchronisation is the user's (and the kernel's).
unsafe impl Send for Region {}
// SAFETY: as above: `&Region` only exposes addresses and lengths.
unsafe impl Sync for Region {}

impl Region {
    /// Maps `len` bytes (rounded up to the page size) of private anonymous memory.
    /// `MAP_NORESERVE`: nothing is committed until pages are placed.
    pub fn anonymous(len: usize) -> Result<Self> {
        Self::anonymous_aligned(len, page_size())
    }

    /// Maps `len` bytes of private anonymous memory whose start is aligned to `align`
    /// (a power of two), e.g. 2 MiB so that whole PMDs fit: the shape THP needs.
    pub fn anonymous_aligned(len: usize, align: usize) -> Result<Self> {
        let page = page_size();
        let len = len.div_ceil(page) * page;
        let len_nz = NonZeroUsize::new(len).ok_or(RegionError::Empty)?;
        let align = align.max(page);
        let map_len = if align > page { len + align } else { len };
        let map_len_nz = NonZeroUsize::new(map_len).ok_or(RegionError::Empty)?;
        // SAFETY: an anonymous mapping at a kernel-chosen address aliases no Rust object.
        let map_start = unsafe {
            mman::mmap_anonymous(
                None,
                map_len_nz,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE,
            )
        }
        .map_err(|errno| RegionError::Map {
            len,
            what: "anonymous",
            errno,
        })?;
        let base = map_start.as_ptr() as usize;
        let start = base.next_multiple_of(align);
        let region = Region {
            start: NonNull::new(start as *mut u8).ok_or(RegionError::Empty)?,
            len: len_nz.get(),
            map_start,
            map_len,
        };
        Ok(region)
    }

    /// Maps `len` bytes (rounded up to 2 MiB) of 2 MiB-aligned private anonymous memory
    /// advised `MADV_HUGEPAGE`: eligible for transparent huge pages when THP is `madvise`.
    pub fn thp(len: usize) -> Result<Self> {
        let region = Self::anonymous_aligned(len.div_ceil(HUGE_2M) * HUGE_2M, HUGE_2M)?;
        region.advise(
            0,
            region.len,
            mman::MmapAdvise::MADV_HUGEPAGE,
            "MADV_HUGEPAGE",
        )?;
        Ok(region)
    }

    /// Maps `len` bytes (rounded up to `huge`) of private anonymous hugetlbfs memory with huge
    /// pages of `huge` bytes (2 MiB or 1 GiB), from the pool in
    /// `/sys/kernel/mm/hugepages/hugepages-<size>kB` (ENOMEM if the pool is too small).
    pub fn hugetlb(len: usize, huge: usize) -> Result<Self> {
        let len = len.div_ceil(huge) * huge;
        let len_nz = NonZeroUsize::new(len).ok_or(RegionError::Empty)?;
        let flags = MapFlags::MAP_PRIVATE | MapFlags::MAP_HUGETLB | huge_flag(huge)?;
        // SAFETY: a new anonymous mapping at a kernel-chosen address aliases no Rust object.
        let map_start = unsafe {
            mman::mmap_anonymous(
                None,
                len_nz,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                flags,
            )
        }
        .map_err(|errno| RegionError::Map {
            len,
            what: "hugetlb",
            errno,
        })?;
        Ok(Region::whole(map_start, len))
    }

    /// A mapping of `len` bytes at `map_start` that is used whole (no alignment slack).
    fn whole(map_start: NonNull<libc::c_void>, len: usize) -> Region {
        Region {
            start: map_start.cast(),
            len,
            map_start,
            map_len: len,
        }
    }

    /// Start address.
    pub fn addr(&self) -> u64 {
        self.start.as_ptr() as u64
    }

    /// Start pointer.
    pub fn as_ptr(&self) -> *mut u8 {
        self.start.as_ptr()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: regions are never empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when `addr` lies inside the region.
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.addr() && addr - self.addr() < self.len as u64
    }

    /// Applies `madvise(advice)` to `offset..offset+len` of the region. `MADV_COLLAPSE`, which
    /// nix's `MmapAdvise` does not name, goes through [`advise_range`].
    pub fn advise(
        &self,
        offset: usize,
        len: usize,
        advice: mman::MmapAdvise,
        name: &'static str,
    ) -> Result<()> {
        assert!(offset + len <= self.len, "advise range outside the region");
        // SAFETY: `start + offset` is inside this mapping (asserted above).
        let ptr = unsafe { self.start.as_ptr().add(offset) };
        let ptr = NonNull::new(ptr.cast::<libc::c_void>()).ok_or(RegionError::Empty)?;
        // SAFETY: the range lies inside a mapping this Region owns; advice may discard pages,
        // which the caller asked for by name.
        unsafe { mman::madvise(ptr, len, advice) }.map_err(|errno| RegionError::Advise {
            advice: name,
            errno,
        })
    }

    /// Views the region as bytes.
    ///
    /// # Safety
    /// Every page of the range must be present (or the caller must accept blocking on faults
    /// that something will resolve), and nothing may write the region while the slice lives.
    pub unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: the caller promised the conditions above; the range is mapped.
        unsafe { std::slice::from_raw_parts(self.start.as_ptr(), self.len) }
    }
}

fn huge_flag(huge: usize) -> Result<MapFlags> {
    match huge {
        HUGE_2M => Ok(MapFlags::MAP_HUGE_2MB),
        HUGE_1G => Ok(MapFlags::MAP_HUGE_1GB),
        _ => Err(RegionError::HugeSize(huge)),
    }
}

impl Region {
    /// Unmaps the region after the application moved parts of it with `mremap`: the slack of
    /// the mapping around the usable range, and each range where the region's pages are now
    /// (`now`: start and length, from the caller's map of the moves), but not the holes the
    /// moves left behind — another `mmap` may have taken them since, and plain drop would
    /// unmap that mapping.
    pub fn unmap_moved(self, now: &[(u64, u64)]) {
        let this = std::mem::ManuallyDrop::new(self);
        let map_start = this.map_start.as_ptr() as u64;
        let map_end = map_start + this.map_len as u64;
        let (start, end) = (this.addr(), this.addr() + this.len as u64);
        let slack = [(map_start, start - map_start), (end, map_end - end)];
        for &(addr, len) in slack.iter().chain(now).filter(|&&(_, len)| len > 0) {
            let (Some(ptr), Ok(len)) = (
                NonNull::new(addr as *mut libc::c_void),
                usize::try_from(len),
            ) else {
                continue;
            };
            // SAFETY: the slack was mapped by this Region and never handed out; each range of
            // `now` holds this region's own pages (moved, not shared), and the Region is given
            // up here, so nothing refers to them any more.
            if let Err(errno) = unsafe { mman::munmap(ptr, len) } {
                tracing::warn!(addr, len, "munmap failed: {errno}");
            }
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: `map_start..map_start+map_len` is exactly the mapping this Region created
        // and nothing else unmaps it. (Where the application may have moved parts of it with
        // mremap, its owner gives it up with `unmap_moved` instead.)
        let result = unsafe { mman::munmap(self.map_start, self.map_len) };
        if let Err(errno) = result {
            tracing::warn!("munmap failed: {errno}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_rounds_to_pages() {
        let region = Region::anonymous(100).expect("mmap");
        assert_eq!(region.len(), page_size());
        assert!(region.contains(region.addr()));
        assert!(!region.contains(region.addr() + page_size() as u64));
    }

    #[test]
    fn aligned_start() {
        let region = Region::anonymous_aligned(HUGE_2M, HUGE_2M).expect("mmap");
        assert_eq!(region.addr() % HUGE_2M as u64, 0);
        assert_eq!(region.len(), HUGE_2M);
    }

    #[test]
    fn thp_is_aligned_and_advised() {
        let region = Region::thp(3 << 20).expect("mmap");
        assert_eq!(region.len(), 4 << 20);
        assert_eq!(region.addr() % HUGE_2M as u64, 0);
    }

    #[test]
    fn empty_is_refused() {
        assert!(matches!(Region::anonymous(0), Err(RegionError::Empty)));
    }
}
