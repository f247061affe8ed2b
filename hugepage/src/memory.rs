//! The registered region, and whatever else a backing needs beside it.
//!
//! | backing       | registered region                          | beside it                        |
//! |---------------|--------------------------------------------|----------------------------------|
//! | anon          | private anonymous, 4 KiB                   | –                                |
//! | thp           | private anonymous, 2 MiB-aligned, *not* `MADV_HUGEPAGE` (see [`crate::thp`]) | staging THPs per assembler |
//! | hugetlb, copy | private hugetlb mapping                    | a zero source; staging per assembler |
//! | hugetlb, continue | hugetlb memfd, `MAP_SHARED`            | the alias mapping of the memfd   |
//!
//! A [`Memory`] is shared by every connection: each gets its own [`Assembler`] (with its own
//! staging pages) from [`Memory::assembler`].

use std::mem::ManuallyDrop;
use std::sync::Arc;

use uffd_core::region::{Memfd, Region, RegionError, HUGE_2M};
use uffd_core::sys::{feature, ioctl_bit};
use uffd_core::uffd::UffdError;
use uffd_core::{Modes, Userfaultfd};

use crate::assembler::Assembler;
use crate::backing::{Backing, HugetlbPlacement, PAGE, PAGE_BYTES};
use crate::mappings::Mappings;
use crate::moves::{Move, Moves};
use crate::pagemap::{Pagemap, PagemapError};
use crate::pool::{self, PoolError};
use crate::smaps::{self, SmapsError};
use crate::thp;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// A zero-length region.
    #[error("the region cannot be empty")]
    Empty,
    /// The hugetlb pool cannot hold the region.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// A mapping failed.
    #[error("mapping the {backing} region failed: {source}")]
    Map {
        /// The backing.
        backing: Backing,
        /// The mapping error.
        source: RegionError,
    },
    /// `/proc/self/pagemap` is unusable.
    #[error(transparent)]
    Pagemap(#[from] PagemapError),
    /// smaps could not be read.
    #[error(transparent)]
    Smaps(#[from] SmapsError),
    /// The userfaultfd lacks features this backing needs.
    #[error(
        "the userfaultfd was opened without {missing:?}, which the {backing} backing needs: \
         open it with Memory::uffd_features()"
    )]
    Features {
        /// The backing.
        backing: Backing,
        /// Names of the missing features.
        missing: Vec<&'static str>,
    },
    /// UFFDIO_REGISTER failed.
    #[error(transparent)]
    Register(#[from] UffdError),
    /// The registered range does not allow a needed ioctl.
    #[error("the registered {backing} range does not allow UFFDIO_{ioctl}")]
    Ioctl {
        /// The backing.
        backing: Backing,
        /// The missing ioctl.
        ioctl: &'static str,
    },
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, MemoryError>;

/// The registered region (and its alias or zero source).
#[derive(Debug, Clone)]
pub struct Memory {
    inner: Arc<Mappings>,
}

impl Memory {
    /// Maps a region of `len` bytes (rounded up to the unit). `hugetlb` only matters for the
    /// hugetlb backings. hugetlb backings check first that the pool has enough available
    /// pages and fail with the command that fixes it.
    pub fn new(backing: Backing, len: usize, hugetlb: HugetlbPlacement) -> Result<Memory> {
        let unit = backing.unit();
        let len = (len as u64).div_ceil(unit) * unit;
        if len == 0 {
            return Err(MemoryError::Empty);
        }
        let len = usize::try_from(len).map_err(|_| MemoryError::Empty)?;
        let map = |source| MemoryError::Map { backing, source };
        let (region, alias, memfd, zero) = match backing.hugetlb_size() {
            None => {
                // Not MADV_HUGEPAGE even for THP: see the thp module on fault costs.
                let align = if backing == Backing::Thp { HUGE_2M } else { 1 };
                let region = Region::anonymous_aligned(len, align).map_err(map)?;
                (region, None, None, None)
            }
            Some(size) => {
                let huge = usize::try_from(size).map_err(|_| MemoryError::Empty)?;
                pool::check_available(size, len as u64 / size)?;
                match hugetlb {
                    HugetlbPlacement::Copy => {
                        let region = Region::hugetlb(len, huge).map_err(|e| short(e, backing))?;
                        let zero = Region::anonymous(huge).map_err(map)?;
                        (region, None, None, Some(zero))
                    }
                    HugetlbPlacement::Continue => {
                        let memfd = Memfd::new("uffd-lab-hugepage", len, Some(huge))
                            .map_err(|e| short(e, backing))?;
                        let region = Region::shared(&memfd, len).map_err(|e| short(e, backing))?;
                        let alias = Region::shared(&memfd, len).map_err(|e| short(e, backing))?;
                        (region, Some(alias), Some(memfd), None)
                    }
                }
            }
        };
        let moves = Moves::new(region.addr(), len as u64);
        Ok(Memory {
            inner: Arc::new(Mappings {
                backing,
                placement: hugetlb,
                moves,
                region: ManuallyDrop::new(region),
                alias,
                _memfd: memfd,
                zero,
                pagemap: Pagemap::open()?,
            }),
        })
    }

    /// The backing.
    pub fn backing(&self) -> Backing {
        self.inner.backing
    }

    /// The hugetlb placement way (meaningful for hugetlb backings only).
    pub fn placement(&self) -> HugetlbPlacement {
        self.inner.placement
    }

    /// Start address of the registered region.
    pub fn addr(&self) -> u64 {
        self.inner.region.addr()
    }

    /// Length of the region in bytes (a multiple of the unit).
    pub fn len(&self) -> usize {
        self.inner.region.len()
    }

    /// Always false: a region is never empty.
    pub fn is_empty(&self) -> bool {
        self.inner.region.is_empty()
    }

    /// Number of 4 KiB pages: the size of the `received` bitmap.
    pub fn pages(&self) -> usize {
        self.len() / PAGE_BYTES
    }

    /// Number of units.
    pub fn units(&self) -> u64 {
        self.len() as u64 / self.unit()
    }

    /// The background placement unit: 4K anon, 2M thp/hugetlb-2m, 1G hugetlb-1g.
    pub fn unit(&self) -> u64 {
        self.inner.backing.unit()
    }

    /// What one fault requests: 4K for anon and thp, the huge page for hugetlb.
    pub fn request_unit(&self) -> u64 {
        self.inner.backing.request_unit()
    }

    /// The UFFD feature bits to negotiate for this memory.
    pub fn uffd_features(&self) -> u64 {
        needed_features(self.inner.backing, self.inner.placement)
    }

    /// Registers the region: MISSING, plus MINOR for the Continue way. Checks that the
    /// descriptor has the features and the range the ioctls this backing places with.
    pub fn register(&self, uffd: &Userfaultfd) -> Result<()> {
        self.check_features(uffd)?;
        let continue_way = self.continue_way();
        let modes = Modes {
            minor: continue_way,
            ..Modes::MISSING
        };
        let ioctls = uffd.register(self.addr(), self.len() as u64, modes)?;
        let needed = match self.inner.backing {
            Backing::Anon => Some(("COPY", ioctl_bit::COPY)),
            Backing::Thp => Some(("MOVE", ioctl_bit::MOVE)),
            Backing::Hugetlb2M | Backing::Hugetlb1G if continue_way => {
                Some(("CONTINUE", ioctl_bit::CONTINUE))
            }
            Backing::Hugetlb2M | Backing::Hugetlb1G => Some(("COPY", ioctl_bit::COPY)),
        };
        match needed {
            Some((name, bit)) if ioctls & bit == 0 => Err(MemoryError::Ioctl {
                backing: self.inner.backing,
                ioctl: name,
            }),
            _ => Ok(()),
        }
    }

    /// A new assembler (one per connection), placing through `uffd`.
    pub fn assembler(&self, uffd: Arc<Userfaultfd>) -> Result<Assembler> {
        self.check_features(&uffd)?;
        Ok(Assembler::new(self.inner.clone(), uffd))
    }

    /// Where 4 KiB page `page` of the region is now (it moves when the application moves it
    /// with mremap; see [`Memory::add_move`]).
    pub fn page_addr(&self, page: u64) -> u64 {
        self.inner.moves.addr(page * PAGE)
    }

    /// The 4 KiB page of the region mapped at `addr` now; None where no part of the region is
    /// (outside it, or the old place of a moved range).
    pub fn region_page(&self, addr: u64) -> Option<u64> {
        self.inner.moves.offset(addr).map(|offset| offset / PAGE)
    }

    /// Records that the application moved `m.len` bytes at `m.from` to `m.to` (an mremap, as
    /// UFFD_EVENT_REMAP reports it): later placements of those pages go to the new address.
    /// Call it with no placement in flight (the pager's events lock held for writing).
    pub fn add_move(&self, m: Move) {
        self.inner.moves.apply(m);
    }

    /// True once any part of the region was moved.
    pub fn moved(&self) -> bool {
        self.inner.moves.moved()
    }

    /// The address ranges `(start, len)` the region occupies now (one until it is moved).
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        self.inner.moves.ranges()
    }

    /// Huge pages mapped as huge pages in the region now, from `/proc/self/smaps`:
    /// `AnonHugePages` for THP, `Private_Hugetlb + Shared_Hugetlb` for hugetlb, summed over the
    /// VMAs that overlap the region where it is now (0 for anon).
    pub fn huge_pages_mapped(&self) -> Result<u64> {
        let ranges = self.ranges();
        let vmas = smaps::read_self()?;
        let overlapping = vmas.iter().filter(|v| {
            ranges
                .iter()
                .any(|&(start, len)| v.overlaps(start, start + len))
        });
        let kb: u64 = match self.inner.backing {
            Backing::Anon => 0,
            Backing::Thp => overlapping.map(|v| v.anon_huge_kb).sum(),
            Backing::Hugetlb2M | Backing::Hugetlb1G => overlapping.map(|v| v.hugetlb_kb()).sum(),
        };
        Ok(kb * 1024 / self.unit().max(HUGE_2M as u64))
    }

    /// THP: collapses again every unit that is not mapped as a huge page. A collapse at
    /// placement time fails with EBUSY while any page of the unit is still missing (an urgent
    /// page in flight); once the whole image is present it succeeds. A unit the application
    /// moved in part, or to an address not 2 MiB-aligned, cannot be one huge page and is left
    /// as it is. Returns how many units are huge afterwards.
    pub fn collapse_remaining(&self) -> Result<u64> {
        if self.inner.backing != Backing::Thp {
            return self.huge_pages_mapped();
        }
        let unit = self.unit();
        let mut huge = 0;
        for i in 0..self.units() {
            let Some(start) = self.inner.unit_dst(i).huge(unit) else {
                continue;
            };
            let is_huge = self.inner.pagemap.is_huge(start, unit).unwrap_or(false);
            let collapsed = if is_huge {
                Ok(())
            } else {
                thp::collapse_placed(&self.inner.pagemap, start, unit)
            };
            if let Err(err) = collapsed {
                tracing::debug!(unit = i, %err, "final collapse failed");
            }
            if collapsed.is_ok() {
                huge += 1;
            }
        }
        Ok(huge)
    }

    /// Huge pages mapped in exactly the region's ranges, from `PAGEMAP_SCAN` (a cross-check
    /// of [`Memory::huge_pages_mapped`] that cannot count a neighbouring mapping).
    pub fn huge_pages_mapped_exact(&self) -> Result<u64> {
        if self.inner.backing == Backing::Anon {
            return Ok(0);
        }
        let mut bytes = 0;
        for (start, len) in self.ranges() {
            bytes += self.inner.pagemap.huge_bytes(start, len)?;
        }
        Ok(bytes / self.unit())
    }

    /// The region as bytes.
    ///
    /// # Safety
    /// Every page must be present (or the caller must accept blocking in faults that something
    /// resolves), and nothing may write the region while the slice lives.
    pub unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: forwarded from the caller.
        unsafe { self.inner.region.as_slice() }
    }

    fn continue_way(&self) -> bool {
        self.inner.backing.hugetlb_size().is_some()
            && self.inner.placement == HugetlbPlacement::Continue
    }

    fn check_features(&self, uffd: &Userfaultfd) -> Result<()> {
        let missing = self.uffd_features() & !uffd.features();
        if missing == 0 {
            return Ok(());
        }
        Err(MemoryError::Features {
            backing: self.inner.backing,
            missing: uffd_core::probe::names(missing, &feature::NAMES),
        })
    }
}

/// The UFFD features a backing (and hugetlb placement) needs.
pub fn needed_features(backing: Backing, placement: HugetlbPlacement) -> u64 {
    match (backing, placement) {
        (Backing::Anon, _) => 0,
        (Backing::Thp, _) => feature::MOVE,
        (Backing::Hugetlb2M | Backing::Hugetlb1G, HugetlbPlacement::Copy) => {
            feature::MISSING_HUGETLBFS
        }
        (Backing::Hugetlb2M | Backing::Hugetlb1G, HugetlbPlacement::Continue) => {
            feature::MISSING_HUGETLBFS | feature::MINOR_HUGETLBFS
        }
    }
}

/// A hugetlb mapping that failed for lack of pages becomes the pool error, with its fix.
fn short(err: RegionError, backing: Backing) -> MemoryError {
    if let (RegionError::Map { len, errno, .. }, Some(size)) = (&err, backing.hugetlb_size()) {
        if *errno == nix::errno::Errno::ENOMEM {
            if let Err(pool_err) = pool::check_available(size, *len as u64 / size) {
                return MemoryError::Pool(pool_err);
            }
        }
    }
    MemoryError::Map {
        backing,
        source: err,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_per_backing() {
        assert_eq!(needed_features(Backing::Anon, HugetlbPlacement::Copy), 0);
        assert_eq!(
            needed_features(Backing::Thp, HugetlbPlacement::Continue),
            feature::MOVE
        );
        assert_eq!(
            needed_features(Backing::Hugetlb1G, HugetlbPlacement::Continue),
            feature::MISSING_HUGETLBFS | feature::MINOR_HUGETLBFS
        );
    }

    #[test]
    fn thp_region_is_aligned_and_rounded() {
        let memory = Memory::new(Backing::Thp, 3 << 20, HugetlbPlacement::Copy).expect("map");
        assert_eq!(memory.len(), 4 << 20);
        assert_eq!(memory.addr() % (2 << 20), 0);
        assert_eq!((memory.units(), memory.pages()), (2, 1024));
        assert_eq!(memory.huge_pages_mapped().expect("smaps"), 0);
    }

    #[test]
    fn a_descriptor_without_move_is_refused_for_thp() {
        let uffd = match Userfaultfd::open(0) {
            Ok(uffd) => uffd,
            Err(err) => return uffd_testkit::skip(&err.to_string()),
        };
        let memory = Memory::new(Backing::Thp, 2 << 20, HugetlbPlacement::Copy).expect("map");
        let err = memory.register(&uffd).expect_err("MOVE was not negotiated");
        assert!(err.to_string().contains("MOVE"), "{err}");
    }

    #[test]
    fn memory_is_send() {
        fn send<T: Send>() {}
        send::<Memory>();
    }
}
