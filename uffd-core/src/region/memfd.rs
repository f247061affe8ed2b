//! Memory files (`memfd_create`: shmem or hugetlbfs) and their shared mappings. Mapping the
//! same memfd twice gives the alias pair that minor faults and UFFDIO_CONTINUE work with: the
//! registered mapping faults, the other one fills the page cache.

use std::num::NonZeroUsize;

use nix::sys::mman::{self, MapFlags, ProtFlags};

use super::{page_size, Region, RegionError, Result, HUGE_1G, HUGE_2M};

/// An anonymous memory file (`memfd_create`): shmem, or hugetlbfs with `huge` pages.
#[derive(Debug)]
pub struct Memfd {
    fd: std::os::fd::OwnedFd,
    len: usize,
    page: usize,
}

impl Memfd {
    /// Creates a memfd of `len` bytes (rounded up to its page size). `huge` = None for shmem
    /// with base pages, or Some(2 MiB / 1 GiB) for hugetlbfs pages from the pool.
    pub fn new(name: &str, len: usize, huge: Option<usize>) -> Result<Self> {
        use nix::sys::memfd::{memfd_create, MFdFlags};
        let mut flags = MFdFlags::MFD_CLOEXEC;
        let page = match huge {
            Some(size) => {
                flags |= MFdFlags::MFD_HUGETLB
                    | match size {
                        HUGE_2M => MFdFlags::MFD_HUGE_2MB,
                        HUGE_1G => MFdFlags::MFD_HUGE_1GB,
                        _ => return Err(RegionError::HugeSize(size)),
                    };
                size
            }
            None => page_size(),
        };
        let len = len.div_ceil(page) * page;
        let fd = memfd_create(name, flags).map_err(|errno| RegionError::Map {
            len,
            what: "memfd_create",
            errno,
        })?;
        nix::unistd::ftruncate(&fd, i64::try_from(len).unwrap_or(i64::MAX)).map_err(|errno| {
            RegionError::Map {
                len,
                what: "ftruncate memfd",
                errno,
            }
        })?;
        Ok(Memfd { fd, len, page })
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Its page size (base or huge).
    pub fn page(&self) -> usize {
        self.page
    }

    /// Punches out `offset..offset+len` (`fallocate(PUNCH_HOLE)`): the pages leave the page
    /// cache, so the range is MISSING again in every mapping.
    pub fn punch_hole(&self, offset: usize, len: usize) -> Result<()> {
        use nix::fcntl::{fallocate, FallocateFlags};
        fallocate(
            &self.fd,
            FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
            i64::try_from(offset).unwrap_or(i64::MAX),
            i64::try_from(len).unwrap_or(i64::MAX),
        )
        .map_err(|errno| RegionError::Map {
            len,
            what: "fallocate(PUNCH_HOLE)",
            errno,
        })
    }
}

impl Region {
    /// Maps `len` bytes of `memfd` (from offset 0) `MAP_SHARED`. Mapping the same memfd twice
    /// gives the alias pair that minor faults and UFFDIO_CONTINUE work with.
    pub fn shared(memfd: &Memfd, len: usize) -> Result<Self> {
        let len = len.div_ceil(memfd.page) * memfd.page;
        let len_nz = NonZeroUsize::new(len).ok_or(RegionError::Empty)?;
        // SAFETY: a new shared mapping of our own memfd at a kernel-chosen address aliases no
        // Rust object; the memfd is at least `len` long (Memfd::new sized it).
        let map_start = unsafe {
            mman::mmap(
                None,
                len_nz,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                &memfd.fd,
                0,
            )
        }
        .map_err(|errno| RegionError::Map {
            len,
            what: "shared memfd",
            errno,
        })?;
        Ok(Region::whole(map_start, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shmem_alias_sees_writes() {
        let memfd = Memfd::new("alias-test", 8192, None).expect("memfd");
        let a = Region::shared(&memfd, memfd.len()).expect("map a");
        let b = Region::shared(&memfd, memfd.len()).expect("map b");
        // SAFETY: both mappings are 8 KiB of the same shmem file; nothing else accesses them.
        unsafe { a.as_ptr().add(4096).write(42) };
        // SAFETY: as above.
        assert_eq!(unsafe { b.as_ptr().add(4096).read() }, 42);
    }
}
