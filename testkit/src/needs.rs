//! What a test needs from the machine, checked: each answers true, or skips the test with the
//! reason (a failure under CI, see [`skip`]).

use crate::skip;

/// True if this process may use userfaultfd; otherwise prints why the test is skipped (and
/// fails under CI).
pub fn have_uffd() -> bool {
    match uffd_core::Userfaultfd::open(0) {
        Ok(_) => true,
        Err(err) => {
            skip(&err.to_string());
            false
        }
    }
}

/// True if the hugetlb pool of `size`-byte pages has `pages` available; otherwise prints why
/// the test is skipped (and fails under CI). `scripts/hugepages.sh reserve` fills the pools.
pub fn pool_has(size: u64, pages: u64) -> bool {
    let have = uffd_core::probe::huge_pools()
        .iter()
        .find(|p| p.size == size)
        .map_or(0, |p| p.available());
    if have < pages {
        skip(&format!(
            "{pages} huge pages of {size} bytes needed, {have} available: run `scripts/hugepages.sh reserve` as root"
        ));
        return false;
    }
    true
}
