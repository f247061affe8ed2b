//! What memory backs the registered region, and how hugetlb pages are placed.
//!
//! The backing decides two sizes:
//! - the **unit**: what the assembler places at once in the background. A huge page is only
//!   useful if it arrives whole: 2 MiB for THP and hugetlb-2m, 1 GiB for hugetlb-1g; 4 KiB for
//!   plain anonymous memory, where there is nothing to assemble.
//! - the **request unit**: what one fault asks the page server for. hugetlbfs cannot map less
//!   than a huge page, so a fault waits for the whole unit; a THP region can take an urgent
//!   4 KiB page inside a huge page that is still being assembled (it is collapsed later).

use std::fmt;
use std::str::FromStr;

use uffd_core::convert::usize_from;
use uffd_core::region::{HUGE_1G, HUGE_2M};

/// The base page size the whole crate works in (x86_64).
pub const PAGE: u64 = 4096;

/// [`PAGE`] as a `usize`: the length of a base page in memory.
pub const PAGE_BYTES: usize = usize_from(PAGE);

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackingError {
    /// Not one of the backing names.
    #[error("unknown backing `{0}` (expected one of: anon, thp, hugetlb-2m, hugetlb-1g)")]
    UnknownBacking(String),
    /// Not one of the placement names.
    #[error("unknown hugetlb placement `{0}` (expected copy or continue)")]
    UnknownPlacement(String),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, BackingError>;

/// The memory behind the registered region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backing {
    /// Private anonymous memory with 4 KiB pages: chunks are placed as they come.
    Anon,
    /// Private anonymous memory mapped with transparent huge pages (2 MiB PMDs).
    Thp,
    /// hugetlbfs with 2 MiB pages from the pool.
    Hugetlb2M,
    /// hugetlbfs with 1 GiB pages from the pool.
    Hugetlb1G,
}

impl Backing {
    /// Every backing, in the order reports list them.
    pub const ALL: [Backing; 4] = [
        Backing::Anon,
        Backing::Thp,
        Backing::Hugetlb2M,
        Backing::Hugetlb1G,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Backing::Anon => "anon",
            Backing::Thp => "thp",
            Backing::Hugetlb2M => "hugetlb-2m",
            Backing::Hugetlb1G => "hugetlb-1g",
        }
    }

    /// The background placement unit in bytes.
    pub fn unit(self) -> u64 {
        match self {
            Backing::Anon => PAGE,
            Backing::Thp | Backing::Hugetlb2M => HUGE_2M as u64,
            Backing::Hugetlb1G => HUGE_1G as u64,
        }
    }

    /// What one fault requests, in bytes.
    pub fn request_unit(self) -> u64 {
        match self {
            Backing::Anon | Backing::Thp => PAGE,
            Backing::Hugetlb2M | Backing::Hugetlb1G => self.unit(),
        }
    }

    /// The hugetlb page size, for the hugetlb backings.
    pub fn hugetlb_size(self) -> Option<u64> {
        match self {
            Backing::Hugetlb2M | Backing::Hugetlb1G => Some(self.unit()),
            Backing::Anon | Backing::Thp => None,
        }
    }

    /// 4 KiB pages per unit.
    pub fn pages_per_unit(self) -> usize {
        usize_from(self.unit() / PAGE)
    }
}

impl fmt::Display for Backing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Backing {
    type Err = BackingError;

    fn from_str(s: &str) -> Result<Self> {
        let wanted = s.trim().to_ascii_lowercase();
        Backing::ALL
            .into_iter()
            .find(|b| b.name() == wanted)
            .ok_or_else(|| BackingError::UnknownBacking(s.to_string()))
    }
}

/// How a complete hugetlb page reaches the registered region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum HugetlbPlacement {
    /// Gather in an anonymous staging buffer, then one huge-page-sized UFFDIO_COPY (the kernel
    /// refuses smaller copies on hugetlbfs). Costs one extra copy of the huge page.
    #[default]
    Copy,
    /// Zero-copy: the region is a hugetlb memfd mapped twice; chunks are written through the
    /// alias mapping (into the page cache), and UFFDIO_CONTINUE maps the page once complete.
    Continue,
}

impl HugetlbPlacement {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            HugetlbPlacement::Copy => "copy",
            HugetlbPlacement::Continue => "continue",
        }
    }
}

impl fmt::Display for HugetlbPlacement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for HugetlbPlacement {
    type Err = BackingError;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "copy" => Ok(HugetlbPlacement::Copy),
            "continue" => Ok(HugetlbPlacement::Continue),
            _ => Err(BackingError::UnknownPlacement(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for backing in Backing::ALL {
            assert_eq!(backing.to_string().parse::<Backing>(), Ok(backing));
        }
        for placement in [HugetlbPlacement::Copy, HugetlbPlacement::Continue] {
            assert_eq!(placement.to_string().parse(), Ok(placement));
        }
        assert_eq!("HugeTLB-2M".parse(), Ok(Backing::Hugetlb2M));
        assert!(matches!(
            "hugetlb".parse::<Backing>(),
            Err(BackingError::UnknownBacking(_))
        ));
        assert!("move".parse::<HugetlbPlacement>().is_err());
    }

    #[test]
    fn units() {
        assert_eq!(Backing::Anon.unit(), 4096);
        assert_eq!(Backing::Thp.unit(), 2 << 20);
        assert_eq!(Backing::Thp.request_unit(), 4096);
        assert_eq!(Backing::Hugetlb2M.request_unit(), 2 << 20);
        assert_eq!(Backing::Hugetlb1G.unit(), 1 << 30);
        assert_eq!(Backing::Hugetlb1G.pages_per_unit(), 262_144);
        assert_eq!(Backing::Thp.hugetlb_size(), None);
    }
}
