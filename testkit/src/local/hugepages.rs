//! Huge pages for the measurements: growing the 2 MiB hugetlb pool for as long as a benchmark
//! needs it.

use anyhow::{ensure, Context, Result};

const POOL_2M: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB";

fn read_number(path: &str) -> Result<u64> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    text.trim()
        .parse()
        .with_context(|| format!("{path} holds {text:?}, not a number"))
}

/// A grown 2 MiB hugetlb pool; shrinks it back on drop (only if nobody changed it since).
#[derive(Debug)]
pub struct HugepageReservation {
    /// `nr_hugepages` before.
    pub previous: u64,
    /// What this reservation set it to, if it changed anything.
    pub set_to: Option<u64>,
    /// One line saying what was done, for the benchmark's output.
    pub note: String,
}

/// Makes sure at least `pages` 2 MiB huge pages are free in the pool, growing
/// `nr_hugepages` of the 2 MiB pool (the same pool as `/proc/sys/vm/nr_hugepages` when the
/// default huge page size is 2 MiB) if needed. Needs root to grow it.
pub fn reserve_hugepages_2m(pages: u64) -> Result<HugepageReservation> {
    let nr_path = format!("{POOL_2M}/nr_hugepages");
    let previous = read_number(&nr_path)?;
    let free = read_number(&format!("{POOL_2M}/free_hugepages"))?;
    let reserved = read_number(&format!("{POOL_2M}/resv_hugepages"))?;
    let available = free.saturating_sub(reserved);
    if available >= pages {
        return Ok(HugepageReservation {
            previous,
            set_to: None,
            note: format!("2M hugetlb pool: {available} pages available, none added"),
        });
    }
    let wanted = previous + (pages - available);
    std::fs::write(&nr_path, format!("{wanted}\n"))
        .with_context(|| format!("writing {wanted} to {nr_path} (needs root)"))?;
    let got = read_number(&nr_path)?;
    ensure!(
        got >= wanted,
        "asked for {wanted} 2M huge pages, the kernel gave {got} (memory fragmented?)"
    );
    Ok(HugepageReservation {
        previous,
        set_to: Some(got),
        note: format!("2M hugetlb pool: wrote {wanted} to {nr_path} (was {previous}, now {got})"),
    })
}

impl Drop for HugepageReservation {
    fn drop(&mut self) {
        let Some(set_to) = self.set_to else { return };
        let nr_path = format!("{POOL_2M}/nr_hugepages");
        // Someone else resized the pool meanwhile: their setting wins.
        if read_number(&nr_path).ok() != Some(set_to) {
            return;
        }
        if let Err(err) = std::fs::write(&nr_path, format!("{}\n", self.previous)) {
            eprintln!(
                "warning: could not restore {nr_path} to {}: {err}",
                self.previous
            );
        }
    }
}
