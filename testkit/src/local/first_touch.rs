//! The baseline: plain kernel first-touch faults, no userfaultfd.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use uffd_core::{page_size, Region};

use super::{PinGuard, TOUCH};

/// Measures `n` plain first-touch faults (writes to unregistered private anonymous 4K pages:
/// the kernel allocates and zeroes a page), pinned to `cpu` if given. The baseline the
/// userfaultfd round trips are compared with.
pub fn first_touch(n: usize, cpu: Option<usize>) -> Result<Vec<Duration>> {
    const CHUNK: usize = 4096;
    let _pin = cpu.map(PinGuard::pin).transpose()?;
    let page = page_size();
    let mut samples = Vec::with_capacity(n);
    let mut left = n;
    while left > 0 {
        let pages = left.min(CHUNK);
        let region = Region::anonymous(pages * page).context("mapping the anonymous range")?;
        for i in 0..pages {
            // SAFETY: in bounds; an unregistered private mapping that nothing borrows.
            let ptr = unsafe { region.as_ptr().add(i * page) };
            let start = Instant::now();
            // SAFETY: as above.
            unsafe { ptr.write_volatile(TOUCH) };
            samples.push(start.elapsed());
        }
        left -= pages;
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_touch_counts() -> Result<()> {
        assert_eq!(first_touch(10, None)?.len(), 10);
        Ok(())
    }
}
