//! A deterministic image: the content the bench and the tests assemble and then verify.
//!
//! Every 4 KiB page differs from every other (its index is stamped at both ends) and carries
//! pseudo-random bytes in between, so a chunk placed at the wrong offset, a page left zero or
//! a page copied twice is caught. The random bytes come from a few templates computed once,
//! which keeps generating and checking a 1 GiB image cheap even in an unoptimised build.

use uffd_core::convert::{u64_from, usize_from};

use crate::backing::{PAGE, PAGE_BYTES};

/// Number of distinct page templates.
const TEMPLATES: usize = 5;

/// The content of an image, by seed.
#[derive(Debug, Clone)]
pub struct Pattern {
    seed: u64,
    templates: Vec<Vec<u8>>,
}

/// A byte that differs from the pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("byte at image offset {offset:#x} is {found:#04x}, expected {expected:#04x}")]
pub struct Mismatch {
    /// Image offset of the first differing byte.
    pub offset: u64,
    /// What was there.
    pub found: u8,
    /// What the pattern says.
    pub expected: u8,
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Pattern {
    /// The image for `seed`.
    pub fn new(seed: u64) -> Self {
        let mut state = seed;
        let templates = (0..TEMPLATES)
            .map(|_| {
                (0..PAGE_BYTES / 8)
                    .flat_map(|_| splitmix(&mut state).to_le_bytes())
                    .collect()
            })
            .collect();
        Pattern { seed, templates }
    }

    /// Writes image page `page` into `out` (one page long).
    pub fn page(&self, page: u64, out: &mut [u8]) {
        let template = &self.templates[usize_from(page % u64_from(TEMPLATES))];
        out.copy_from_slice(template);
        out[..8].copy_from_slice(&page.to_le_bytes());
        out[8..16].copy_from_slice(&(self.seed ^ page.rotate_left(17)).to_le_bytes());
        out[PAGE_BYTES - 8..].copy_from_slice(&(!page).to_le_bytes());
    }

    /// Fills `out` with the image from `offset` on (both 4 KiB multiples).
    pub fn fill(&self, offset: u64, out: &mut [u8]) {
        for (i, page) in out.chunks_exact_mut(PAGE_BYTES).enumerate() {
            self.page(offset / PAGE + i as u64, page);
        }
    }

    /// The image bytes `offset..offset+len`.
    pub fn bytes(&self, offset: u64, len: u64) -> Vec<u8> {
        let mut out = vec![0; usize::try_from(len).unwrap_or(0)];
        self.fill(offset, &mut out);
        out
    }

    /// Checks that `found` is the image from `offset` on.
    pub fn check(&self, offset: u64, found: &[u8]) -> Result<(), Mismatch> {
        let mut expected = vec![0u8; PAGE_BYTES];
        for (i, page) in found.chunks(PAGE_BYTES).enumerate() {
            let at = offset + u64_from(i * PAGE_BYTES);
            self.page(at / PAGE, &mut expected);
            check_bytes(at, page, &expected[..page.len()])?;
        }
        Ok(())
    }
}

/// Checks that `found` (at image offset `offset`) is all zeros.
pub fn check_zero(offset: u64, found: &[u8]) -> Result<(), Mismatch> {
    match found.iter().position(|&b| b != 0) {
        None => Ok(()),
        Some(i) => Err(Mismatch {
            offset: offset + i as u64,
            found: found[i],
            expected: 0,
        }),
    }
}

fn check_bytes(offset: u64, found: &[u8], expected: &[u8]) -> Result<(), Mismatch> {
    if found == expected {
        return Ok(());
    }
    let i = found
        .iter()
        .zip(expected)
        .position(|(a, b)| a != b)
        .unwrap_or(0);
    Err(Mismatch {
        offset: offset + i as u64,
        found: found[i],
        expected: expected[i],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_differ_and_check_round_trips() {
        let pattern = Pattern::new(7);
        let bytes = pattern.bytes(8192, 4 * PAGE);
        assert_eq!(pattern.check(8192, &bytes), Ok(()));
        assert_ne!(bytes[..PAGE_BYTES], bytes[PAGE_BYTES..2 * PAGE_BYTES]);
        assert_ne!(
            Pattern::new(8).bytes(0, PAGE),
            pattern.bytes(0, PAGE),
            "seeds differ"
        );
    }

    #[test]
    fn a_shifted_page_is_caught() {
        let pattern = Pattern::new(1);
        let bytes = pattern.bytes(PAGE, PAGE);
        let err = pattern.check(0, &bytes).expect_err("page 1 is not page 0");
        assert_eq!(err.offset, 0);
        let mut bytes = pattern.bytes(0, 2 * PAGE);
        bytes[PAGE_BYTES + 100] ^= 1;
        assert_eq!(
            pattern.check(0, &bytes).map_err(|e| e.offset),
            Err(PAGE + 100)
        );
    }

    #[test]
    fn zero_check() {
        assert_eq!(check_zero(0, &[0; 64]), Ok(()));
        assert_eq!(check_zero(16, &[0, 0, 3]).map_err(|e| e.offset), Err(18));
    }
}
