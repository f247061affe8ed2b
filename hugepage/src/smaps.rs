//! `/proc/self/smaps`: how the kernel really maps a range, per VMA.
//!
//! The field that matters for THP is `AnonHugePages` (anonymous memory mapped by PMDs, i.e. as
//! 2 MiB pages); for hugetlbfs it is `Private_Hugetlb` + `Shared_Hugetlb` (a hugetlb page
//! mapped by two mappings, like the region and its alias, counts as shared). `THPeligible`
//! says whether a fault in the VMA may allocate a THP.

use std::path::Path;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum SmapsError {
    /// The file could not be read.
    #[error("reading {path} failed: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, SmapsError>;

/// The fields of one VMA that this crate uses, sizes in KiB.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vma {
    /// Start address.
    pub start: u64,
    /// End address (exclusive).
    pub end: u64,
    /// `Rss`.
    pub rss_kb: u64,
    /// `AnonHugePages`.
    pub anon_huge_kb: u64,
    /// `Shared_Hugetlb`.
    pub shared_hugetlb_kb: u64,
    /// `Private_Hugetlb`.
    pub private_hugetlb_kb: u64,
    /// `KernelPageSize`.
    pub kernel_page_kb: u64,
    /// `THPeligible`, when the kernel prints it.
    pub thp_eligible: Option<bool>,
}

impl Vma {
    /// True when the VMA overlaps `start..end`.
    pub fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start < end && start < self.end
    }

    /// Hugetlb memory mapped, private or shared, in KiB.
    pub fn hugetlb_kb(&self) -> u64 {
        self.shared_hugetlb_kb + self.private_hugetlb_kb
    }
}

/// Parses the text of an smaps file.
pub fn parse(text: &str) -> Vec<Vma> {
    let mut vmas = Vec::new();
    let mut current: Option<Vma> = None;
    for line in text.lines() {
        if let Some((start, end)) = header(line) {
            vmas.extend(current.take());
            current = Some(Vma {
                start,
                end,
                ..Vma::default()
            });
            continue;
        }
        let Some(vma) = current.as_mut() else {
            continue;
        };
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let number = || {
            value
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
        };
        match key {
            "Rss" => vma.rss_kb = number(),
            "AnonHugePages" => vma.anon_huge_kb = number(),
            "Shared_Hugetlb" => vma.shared_hugetlb_kb = number(),
            "Private_Hugetlb" => vma.private_hugetlb_kb = number(),
            "KernelPageSize" => vma.kernel_page_kb = number(),
            "THPeligible" => vma.thp_eligible = Some(number() != 0),
            _ => {}
        }
    }
    vmas.extend(current);
    vmas
}

/// `7f12a0000000-7f12a0200000 rw-p ...` → the two addresses.
fn header(line: &str) -> Option<(u64, u64)> {
    let range = line.split_whitespace().next()?;
    let (start, end) = range.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    Some((start, end))
}

/// The VMAs of this process.
pub fn read_self() -> Result<Vec<Vma>> {
    read(Path::new("/proc/self/smaps"))
}

/// The VMAs of an smaps file.
pub fn read(path: &Path) -> Result<Vec<Vma>> {
    std::fs::read_to_string(path)
        .map(|text| parse(&text))
        .map_err(|source| SmapsError::Read {
            path: path.display().to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
7fc5d2e00000-7fc5d3e00000 rw-p 00000000 00:00 0 
Size:              16384 kB
KernelPageSize:        4 kB
Rss:                6144 kB
AnonHugePages:      6144 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
THPeligible:           0
VmFlags: rd wr mr mw me um nr 
7f0000000000-7f0000400000 rw-s 00000000 00:01 1234                       /memfd:x (deleted)
Size:               4096 kB
KernelPageSize:     2048 kB
Rss:                   0 kB
AnonHugePages:         0 kB
Shared_Hugetlb:     4096 kB
Private_Hugetlb:       0 kB
THPeligible:    1
";

    #[test]
    fn parses_vmas() {
        let vmas = parse(SAMPLE);
        assert_eq!(vmas.len(), 2);
        assert_eq!(vmas[0].start, 0x7fc5d2e00000);
        assert_eq!(vmas[0].anon_huge_kb, 6144);
        assert_eq!(vmas[0].thp_eligible, Some(false));
        assert_eq!(vmas[1].hugetlb_kb(), 4096);
        assert_eq!(vmas[1].kernel_page_kb, 2048);
        assert!(vmas[1].overlaps(0x7f0000200000, 0x7f0000300000));
        assert!(!vmas[1].overlaps(0x7f0000400000, 0x7f0000500000));
    }

    #[test]
    fn reads_this_process() {
        let vmas = read_self().expect("smaps");
        assert!(!vmas.is_empty());
        assert!(vmas.windows(2).all(|w| w[0].end <= w[1].start));
    }
}
