//! `hugepage status` and `hugepage setup`: what this machine offers for huge pages and
//! userfaultfd, and how to fix what is missing.

use std::fmt;

use serde::Serialize;
use uffd_core::probe::{self, HugePool};

use crate::backing::{Backing, HugetlbPlacement};
use crate::memory::needed_features;
use crate::pool::{self, PoolError};

/// One hugetlb pool.
#[derive(Debug, Clone, Serialize)]
pub struct PoolStatus {
    /// `2M` or `1G`.
    pub size: String,
    /// Page size in bytes.
    pub bytes: u64,
    /// Pages in the pool.
    pub total: u64,
    /// Pages free.
    pub free: u64,
    /// Pages reserved by mappings.
    pub reserved: u64,
    /// Pages a new mapping can get.
    pub available: u64,
    /// The file that sets the pool size.
    pub sysctl: String,
}

impl From<&HugePool> for PoolStatus {
    fn from(p: &HugePool) -> Self {
        PoolStatus {
            size: pool::size_name(p.size),
            bytes: p.size,
            total: p.total,
            free: p.free,
            reserved: p.reserved,
            available: p.available(),
            sysctl: pool::nr_hugepages_path(p.size).display().to_string(),
        }
    }
}

/// Whether a backing can run here.
#[derive(Debug, Clone, Serialize)]
pub struct BackingStatus {
    /// Backing name (with the hugetlb way).
    pub name: String,
    /// Everything it needs is there.
    pub ready: bool,
    /// What is missing, if anything.
    pub missing: Vec<String>,
}

/// Everything `hugepage status` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Kernel release.
    pub kernel: String,
    /// Effective user id.
    pub euid: u32,
    /// The hugetlb pools.
    pub pools: Vec<PoolStatus>,
    /// THP mode (`always`, `madvise`, `never`).
    pub thp_enabled: Option<String>,
    /// THP defrag mode.
    pub thp_defrag: Option<String>,
    /// How this process got a userfaultfd (`/dev/userfaultfd` or the syscall).
    pub userfaultfd: Option<String>,
    /// Why it could not, if it could not.
    pub userfaultfd_error: Option<String>,
    /// UFFD features the kernel offers.
    pub features: Vec<&'static str>,
    /// Readiness of each backing.
    pub backings: Vec<BackingStatus>,
    /// What to run to set things up.
    pub advice: Vec<String>,
}

/// Probes the machine.
pub fn status() -> Status {
    let p = probe::probe();
    let pools: Vec<PoolStatus> = p
        .huge_pools
        .iter()
        .filter(|pool| pool.size == 2 << 20 || pool.size == 1 << 30)
        .map(PoolStatus::from)
        .collect();
    let mut advice = Vec::new();
    let mut backings = Vec::new();
    let ways = [
        (Backing::Anon, None),
        (Backing::Thp, None),
        (Backing::Hugetlb2M, Some(HugetlbPlacement::Copy)),
        (Backing::Hugetlb2M, Some(HugetlbPlacement::Continue)),
        (Backing::Hugetlb1G, Some(HugetlbPlacement::Copy)),
        (Backing::Hugetlb1G, Some(HugetlbPlacement::Continue)),
    ];
    for (backing, way) in ways {
        let mut missing = Vec::new();
        if p.open.is_err() {
            missing.push("a userfaultfd".to_string());
        }
        let needed = needed_features(backing, way.unwrap_or_default());
        let lacking = probe::names(needed & !p.features, &uffd_core::sys::feature::NAMES);
        if p.open.is_ok() && !lacking.is_empty() {
            missing.push(format!("UFFD features {lacking:?}"));
        }
        if backing == Backing::Thp && p.thp_enabled.as_deref() == Some("never") {
            missing.push("THP (enabled = never)".to_string());
        }
        if let Some(size) = backing.hugetlb_size() {
            match p.pool(size) {
                None => missing.push(format!("a {} pool", pool::size_name(size))),
                Some(pool) if pool.available() == 0 => {
                    missing.push(format!("free {} huge pages", pool::size_name(size)))
                }
                Some(_) => {}
            }
        }
        let name = match way {
            Some(way) => format!("{backing} ({way})"),
            None => backing.to_string(),
        };
        backings.push(BackingStatus {
            name,
            ready: missing.is_empty(),
            missing,
        });
    }
    for pool in &pools {
        if pool.available == 0 {
            let pages = if pool.bytes >= 1 << 30 { 2 } else { 64 };
            advice.push(format!(
                "{} pool has no available pages: {}",
                pool.size,
                pool::fix_hint(pool.bytes, pool.total + pages)
            ));
        }
    }
    match p.thp_enabled.as_deref() {
        Some("never") => advice.push(
            "THP is off: `echo madvise > /sys/kernel/mm/transparent_hugepage/enabled`".into(),
        ),
        Some("always") => advice.push(
            "THP is `always`: write faults in the registered THP region will allocate and \
             zero a 2M folio before the userfault (`madvise` avoids it)"
                .into(),
        ),
        _ => {}
    }
    if let Err(err) = &p.open {
        advice.push(err.to_string());
    }
    Status {
        kernel: p.kernel.clone(),
        euid: p.euid,
        pools,
        thp_enabled: p.thp_enabled.clone(),
        thp_defrag: p.thp_defrag.clone(),
        userfaultfd: p.open.as_ref().ok().map(ToString::to_string),
        userfaultfd_error: p.open.as_ref().err().map(ToString::to_string),
        features: p.feature_names.clone(),
        backings,
        advice,
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "kernel {} (euid {})", self.kernel, self.euid)?;
        writeln!(f, "hugetlb pools:")?;
        for p in &self.pools {
            writeln!(
                f,
                "  {:>3}: total {:>5}  free {:>5}  reserved {:>5}  available {:>5}   ({})",
                p.size, p.total, p.free, p.reserved, p.available, p.sysctl
            )?;
        }
        writeln!(
            f,
            "THP: enabled {}, defrag {}",
            self.thp_enabled.as_deref().unwrap_or("?"),
            self.thp_defrag.as_deref().unwrap_or("?")
        )?;
        match (&self.userfaultfd, &self.userfaultfd_error) {
            (Some(how), _) => writeln!(f, "userfaultfd: yes, via {how}")?,
            (None, Some(err)) => writeln!(f, "userfaultfd: no: {err}")?,
            (None, None) => writeln!(f, "userfaultfd: unknown")?,
        }
        writeln!(f, "features: {}", self.features.join(" "))?;
        writeln!(f, "backings:")?;
        for b in &self.backings {
            if b.ready {
                writeln!(f, "  {:<24} ready", b.name)?;
            } else {
                writeln!(f, "  {:<24} needs {}", b.name, b.missing.join(", "))?;
            }
        }
        if !self.advice.is_empty() {
            writeln!(f, "to do:")?;
            for a in &self.advice {
                writeln!(f, "  - {a}")?;
            }
        }
        Ok(())
    }
}

/// Sets the pool of `size`-byte pages to `pages` and checks the kernel found them.
pub fn setup(size: u64, pages: u64) -> Result<PoolStatus, PoolError> {
    pool::set_total(size, pages).map(|p| PoolStatus::from(&p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lists_pools_and_backings() {
        let s = status();
        assert_eq!(s.backings.len(), 6);
        assert!(s.pools.iter().any(|p| p.size == "2M"));
        let text = s.to_string();
        assert!(text.contains("hugetlb pools"), "{text}");
        let json = serde_json::to_value(&s).expect("json");
        assert!(json["pools"].is_array());
    }
}
