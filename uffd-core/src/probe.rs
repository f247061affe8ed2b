//! What this kernel and this process allow: userfaultfd access, features and ioctls, huge page
//! pools and transparent huge page mode.
//!
//! UFFDIO_API can be called only once per descriptor, so features are probed on a throw-away
//! descriptor opened with no features: the kernel answers with every feature it supports.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::{Serialize, Serializer};

use crate::sys;
pub use crate::uffd::available_features;
use crate::uffd::{Origin, UffdError, Userfaultfd};

/// How the probe obtained a userfaultfd ([`Probe::open`]); shown and serialized as
/// `/dev/userfaultfd`, `userfaultfd(2) syscall` or `a descriptor handed over`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened(pub Origin);

impl fmt::Display for Opened {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Origin::Device => "/dev/userfaultfd",
            Origin::Syscall => "userfaultfd(2) syscall",
            Origin::Received => "a descriptor handed over",
        })
    }
}

impl Serialize for Opened {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Why the probe could not open a userfaultfd ([`Probe::open`]); serialized as its message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct OpenError(pub Arc<UffdError>);

impl Serialize for OpenError {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// One huge page pool (`/sys/kernel/mm/hugepages/hugepages-<size>kB`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HugePool {
    /// Huge page size in bytes.
    pub size: u64,
    /// Pages in the pool (`nr_hugepages`).
    pub total: u64,
    /// Pages free.
    pub free: u64,
    /// Pages reserved by mappings but not yet faulted in.
    pub reserved: u64,
}

impl HugePool {
    /// Pages that a new mapping can still use.
    pub fn available(&self) -> u64 {
        self.free.saturating_sub(self.reserved)
    }
}

/// Everything [`probe`] found.
#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    /// `uname -r`.
    pub kernel: String,
    /// Base page size.
    pub page_size: u64,
    /// Effective user id.
    pub euid: u32,
    /// `/dev/userfaultfd` exists.
    pub device_exists: bool,
    /// `vm.unprivileged_userfaultfd` (None if the sysctl is absent).
    pub unprivileged_userfaultfd: Option<u8>,
    /// CAP_SYS_PTRACE is in the effective set (needed by the syscall when unprivileged use is
    /// off, and by EVENT_FORK).
    pub cap_sys_ptrace: bool,
    /// How a userfaultfd was obtained, or why it could not be (in JSON `{"Ok": how}` or
    /// `{"Err": why}`).
    pub open: Result<Opened, OpenError>,
    /// Feature bits the kernel supports (0 if no descriptor could be opened).
    pub features: u64,
    /// Names of the supported features.
    pub feature_names: Vec<&'static str>,
    /// `ioctl_bit` mask from UFFDIO_API.
    pub ioctls: u64,
    /// Names of the ioctls.
    pub ioctl_names: Vec<&'static str>,
    /// Huge page pools, smallest first.
    pub huge_pools: Vec<HugePool>,
    /// THP mode: `always`, `madvise` or `never` (the bracketed word of the sysfs file).
    pub thp_enabled: Option<String>,
    /// THP defrag mode.
    pub thp_defrag: Option<String>,
}

impl Probe {
    /// True if the kernel supports every bit of `features`.
    pub fn has_features(&self, features: u64) -> bool {
        self.features & features == features
    }

    /// The pool of `size`-byte huge pages, if the kernel has one.
    pub fn pool(&self, size: u64) -> Option<&HugePool> {
        self.huge_pools.iter().find(|p| p.size == size)
    }
}

/// Names of the bits set in `bits`, from a `(name, bit)` table.
pub fn names(bits: u64, table: &[(&'static str, u64)]) -> Vec<&'static str> {
    table
        .iter()
        .filter(|(_, bit)| bits & bit != 0)
        .map(|(name, _)| *name)
        .collect()
}

/// Probes the kernel and the process.
pub fn probe() -> Probe {
    let (open, features, ioctls) = match Userfaultfd::open(0) {
        Ok(uffd) => (
            Ok(Opened(uffd.origin())),
            uffd.available_features(),
            uffd.api_ioctls(),
        ),
        Err(err) => (Err(OpenError(Arc::new(err))), 0, 0),
    };
    Probe {
        kernel: procfs::sys::kernel::Version::current()
            .map(|v| format!("{}.{}.{}", v.major, v.minor, v.patch))
            .or_else(|_| read_trimmed("/proc/sys/kernel/osrelease").ok_or(()))
            .unwrap_or_else(|_| "unknown".into()),
        page_size: crate::region::page_size() as u64,
        // SAFETY: geteuid has no preconditions and cannot fail.
        euid: unsafe { libc::geteuid() },
        device_exists: Path::new("/dev/userfaultfd").exists(),
        unprivileged_userfaultfd: read_trimmed("/proc/sys/vm/unprivileged_userfaultfd")
            .and_then(|s| s.parse().ok()),
        cap_sys_ptrace: caps::has_cap(
            None,
            caps::CapSet::Effective,
            caps::Capability::CAP_SYS_PTRACE,
        )
        .unwrap_or(false),
        open,
        features,
        feature_names: names(features, &sys::feature::NAMES),
        ioctls,
        ioctl_names: names(ioctls, &sys::ioctl_bit::NAMES),
        huge_pools: huge_pools(),
        thp_enabled: thp_mode("enabled"),
        thp_defrag: thp_mode("defrag"),
    }
}

/// Reads the huge page pools from sysfs.
pub fn huge_pools() -> Vec<HugePool> {
    let mut pools = Vec::new();
    let Ok(dir) = std::fs::read_dir("/sys/kernel/mm/hugepages") else {
        return pools;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(kb) = name
            .strip_prefix("hugepages-")
            .and_then(|s| s.strip_suffix("kB"))
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        let field = |f: &str| {
            read_trimmed(entry.path().join(f))
                .and_then(|s| s.parse().ok())
                .unwrap_or(0)
        };
        pools.push(HugePool {
            size: kb * 1024,
            total: field("nr_hugepages"),
            free: field("free_hugepages"),
            reserved: field("resv_hugepages"),
        });
    }
    pools.sort_by_key(|p| p.size);
    pools
}

/// The selected word of `/sys/kernel/mm/transparent_hugepage/<file>` (`always [madvise] never`).
pub fn thp_mode(file: &str) -> Option<String> {
    let text = read_trimmed(format!("/sys/kernel/mm/transparent_hugepage/{file}"))?;
    let start = text.find('[')?;
    let end = text[start..].find(']')?;
    Some(text[start + 1..start + end].to_string())
}

fn read_trimmed(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_bits() {
        assert_eq!(
            names(
                sys::feature::MOVE | sys::feature::SIGBUS,
                &sys::feature::NAMES
            ),
            vec!["SIGBUS", "MOVE"]
        );
    }

    #[test]
    fn probe_reports_this_machine() {
        let p = probe();
        assert_eq!(p.page_size, 4096);
        assert!(!p.kernel.is_empty());
        if p.open.is_ok() {
            // Every kernel with a userfaultfd reports API and REGISTER.
            assert!(p.ioctl_names.contains(&"REGISTER"), "{p:?}");
        } else {
            uffd_testkit::skip("no userfaultfd permission");
        }
    }
}
