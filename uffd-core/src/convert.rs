//! Conversions between `u64` and `usize`, the two widths addresses and lengths travel in.
//!
//! The kernel, the wire protocol and the bitmaps' page counts speak `u64`; slices, mappings
//! and indices speak `usize`. The workspace targets 64-bit Linux only, where the two have the
//! same width, so converting either way loses nothing: the assertion below makes a build for
//! a narrower target fail instead of truncating silently. Values from the wire or from the
//! user are still checked against their own limits where they are decoded; this module only
//! spares every call site the same justification.

const _: () = assert!(
    usize::BITS == u64::BITS,
    "uffd-lab targets 64-bit Linux: usize must be 64 bits wide"
);

/// `n` as a `usize`, losslessly: `usize` is 64 bits wide (asserted at compile time).
#[allow(clippy::cast_possible_truncation)] // same width on every target this builds for
pub const fn usize_from(n: u64) -> usize {
    n as usize
}

/// `n` as a `u64`, losslessly: `usize` is 64 bits wide (asserted at compile time).
pub const fn u64_from(n: usize) -> u64 {
    n as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ways_keep_the_extremes() {
        assert_eq!(usize_from(u64::MAX), usize::MAX);
        assert_eq!(u64_from(usize::MAX), u64::MAX);
        assert_eq!(usize_from(u64_from(4096)), 4096);
    }
}
