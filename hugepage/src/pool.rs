//! The hugetlb page pools: how many huge pages are free, and how to get more.
//!
//! hugetlbfs memory comes only from a pool set aside in advance, per page size, in
//! `/sys/kernel/mm/hugepages/hugepages-<size>kB/nr_hugepages` (`/proc/sys/vm/nr_hugepages` is
//! the same knob for the default 2 MiB size). A mapping reserves its pages when it is created
//! (`resv_hugepages`), so what a new mapping can use is `free - reserved`. Growing the pool
//! needs root and physically contiguous free memory: 1 GiB pages may not be found once memory
//! is fragmented, in which case only a boot parameter (`hugepagesz=1G hugepages=N`) helps.

use std::path::PathBuf;

use uffd_core::probe::{huge_pools, HugePool};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The kernel has no pool of this size.
    #[error("this kernel has no pool of {} huge pages ({} missing)", size_name(*.size), .path.display())]
    NoPool {
        /// Page size in bytes.
        size: u64,
        /// The sysfs directory that should exist.
        path: PathBuf,
    },
    /// Not enough free pages, and the caller may not or did not grow the pool.
    #[error(
        "the {} huge page pool is short: {needed} pages needed, {available} available \
         ({free} free, {reserved} reserved); fix: {}",
        size_name(*.size), fix_hint(*.size, *.total + (*.needed - *.available))
    )]
    Short {
        /// Page size in bytes.
        size: u64,
        /// Pages needed.
        needed: u64,
        /// `free - reserved`.
        available: u64,
        /// Pages free.
        free: u64,
        /// Pages reserved.
        reserved: u64,
        /// Pages in the pool now.
        total: u64,
    },
    /// Writing the pool size failed (not root, or no such file).
    #[error("writing {} to {} failed: {source}; this needs root (try: sudo hugepage setup --pages {pages} --size {})", .pages, .path.display(), size_name(*.size))]
    Write {
        /// Page size.
        size: u64,
        /// Requested total.
        pages: u64,
        /// The sysctl file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The kernel accepted the write but found fewer pages.
    #[error(
        "asked for {wanted} {} huge pages, the kernel found only {got}: not enough contiguous \
         free memory{}", size_name(*.size), fragmentation_hint(*.size)
    )]
    Fell {
        /// Page size.
        size: u64,
        /// Requested total.
        wanted: u64,
        /// Pool size after the write.
        got: u64,
    },
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, PoolError>;

/// `2M`, `1G`, or the size in KiB.
pub fn size_name(size: u64) -> String {
    match size {
        s if s >= 1 << 30 && s % (1 << 30) == 0 => format!("{}G", s >> 30),
        s if s >= 1 << 20 && s % (1 << 20) == 0 => format!("{}M", s >> 20),
        s => format!("{}K", s >> 10),
    }
}

/// The sysfs directory of the pool of `size`-byte pages.
pub fn pool_dir(size: u64) -> PathBuf {
    PathBuf::from(format!(
        "/sys/kernel/mm/hugepages/hugepages-{}kB",
        size / 1024
    ))
}

/// The file that sets the pool size.
pub fn nr_hugepages_path(size: u64) -> PathBuf {
    pool_dir(size).join("nr_hugepages")
}

/// The command that sets the pool of `size` to `total` pages.
pub fn fix_hint(size: u64, total: u64) -> String {
    let file = if size == 2 << 20 {
        "/proc/sys/vm/nr_hugepages".to_string()
    } else {
        nr_hugepages_path(size).display().to_string()
    };
    format!(
        "`echo {total} > {file}` as root, or `sudo hugepage setup --pages {total} --size {}`",
        size_name(size)
    )
}

fn fragmentation_hint(size: u64) -> &'static str {
    if size >= 1 << 30 {
        " even after compaction; 1G pages are best reserved at boot (kernel parameters \
         `hugepagesz=1G hugepages=N`); dropping the page cache \
         (`echo 3 > /proc/sys/vm/drop_caches`) may free some"
    } else {
        " even after compaction; try `echo 3 > /proc/sys/vm/drop_caches` first"
    }
}

/// The pool of `size`-byte pages now.
pub fn pool(size: u64) -> Result<HugePool> {
    huge_pools()
        .into_iter()
        .find(|p| p.size == size)
        .ok_or_else(|| PoolError::NoPool {
            size,
            path: pool_dir(size),
        })
}

/// Succeeds if a new mapping can get `pages` pages of `size`.
pub fn check_available(size: u64, pages: u64) -> Result<HugePool> {
    let pool = pool(size)?;
    if pool.available() >= pages {
        return Ok(pool);
    }
    Err(short(&pool, pages))
}

fn short(pool: &HugePool, pages: u64) -> PoolError {
    PoolError::Short {
        size: pool.size,
        needed: pages,
        available: pool.available(),
        free: pool.free,
        reserved: pool.reserved,
        total: pool.total,
    }
}

/// Sets the pool of `size` to `total` pages and checks that the kernel found them. When it
/// finds too few, free memory is compacted once and the pool asked again.
pub fn set_total(size: u64, total: u64) -> Result<HugePool> {
    let path = nr_hugepages_path(size);
    let write = || {
        std::fs::write(&path, format!("{total}\n")).map_err(|source| PoolError::Write {
            size,
            pages: total,
            path: path.clone(),
            source,
        })
    };
    write()?;
    let mut now = pool(size)?;
    if now.total < total {
        compact_memory();
        write()?;
        now = pool(size)?;
    }
    if now.total < total {
        return Err(PoolError::Fell {
            size,
            wanted: total,
            got: now.total,
        });
    }
    Ok(now)
}

/// A pool this process grew, to be shrunk back by [`Raised::restore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raised {
    /// Page size.
    pub size: u64,
    /// Pool size before.
    pub from: u64,
    /// Pool size after.
    pub to: u64,
}

impl Raised {
    /// Gives back the pages this process added (never shrinking below what others added
    /// since).
    pub fn restore(&self) -> Result<HugePool> {
        let now = pool(self.size)?;
        let added = now.total.min(self.to).saturating_sub(self.from);
        let target = now.total.saturating_sub(added).max(self.from);
        let path = nr_hugepages_path(self.size);
        std::fs::write(&path, format!("{target}\n")).map_err(|source| PoolError::Write {
            size: self.size,
            pages: target,
            path,
            source,
        })?;
        pool(self.size)
    }
}

/// Makes sure `pages` pages of `size` are available, growing the pool when `may_grow` (which
/// needs root). Returns what was grown, if anything.
pub fn ensure_available(size: u64, pages: u64, may_grow: bool) -> Result<Option<Raised>> {
    let before = pool(size)?;
    if before.available() >= pages {
        return Ok(None);
    }
    if !may_grow {
        return Err(short(&before, pages));
    }
    let total = before.total + (pages - before.available());
    let raised = Raised {
        size,
        from: before.total,
        to: total,
    };
    let after = match set_total(size, total) {
        Ok(after) if after.available() >= pages => after,
        Ok(after) => {
            let _ = raised.restore();
            return Err(short(&after, pages));
        }
        Err(err) => {
            // The kernel may have found some of the pages: give them back.
            let _ = raised.restore();
            return Err(err);
        }
    };
    Ok(Some(Raised {
        size,
        from: before.total,
        to: after.total,
    }))
}

/// Asks the kernel to compact free memory (`/proc/sys/vm/compact_memory`, root only), which
/// makes room for huge pages when free memory is fragmented. Best effort.
pub fn compact_memory() {
    if let Err(err) = std::fs::write("/proc/sys/vm/compact_memory", "1\n") {
        tracing::debug!(%err, "compact_memory failed");
    }
}

/// True when this process runs as root (and so may write the pool sysctls).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths() {
        assert_eq!(size_name(2 << 20), "2M");
        assert_eq!(size_name(1 << 30), "1G");
        assert_eq!(size_name(64 << 10), "64K");
        assert_eq!(
            nr_hugepages_path(1 << 30),
            PathBuf::from("/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages")
        );
        assert!(fix_hint(2 << 20, 8).contains("/proc/sys/vm/nr_hugepages"));
        assert!(fix_hint(1 << 30, 2).contains("hugepages-1048576kB"));
    }

    #[test]
    fn short_message_names_the_sysctl() {
        let err = short(
            &HugePool {
                size: 2 << 20,
                total: 4,
                free: 3,
                reserved: 1,
            },
            10,
        );
        let text = err.to_string();
        assert!(text.contains("10 pages needed, 2 available"), "{text}");
        assert!(
            text.contains("echo 12 > /proc/sys/vm/nr_hugepages"),
            "{text}"
        );
    }

    #[test]
    fn pools_exist_here() {
        assert!(pool(2 << 20).is_ok());
        assert!(matches!(pool(3 << 20), Err(PoolError::NoPool { .. })));
    }
}
