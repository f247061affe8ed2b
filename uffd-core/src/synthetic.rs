//! Synthetic images: page `i` is a pure function of `(seed, i)`, so a server can generate any
//! page when it is asked for, without holding the image in memory, and a client can
//! regenerate any page to verify what it received without a checksum table.
//!
//! A page is zero with probability `zero_fraction`, decided by the first draw of a
//! xoshiro256++ generator seeded by a mix of `(seed, i)`; otherwise the generator's next
//! bytes fill it. Bytes past the image's true length (the tail of its last page) are zero.

use rand_xoshiro::rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

/// Why a synthetic image cannot be described.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SyntheticError {
    /// A zero-length image.
    #[error("the image is empty")]
    Empty,
    /// A zero fraction outside 0..=1.
    #[error("zero fraction {0} is not between 0 and 1")]
    ZeroFraction(f64),
    /// A page size that is not a power of two.
    #[error("page size {0} is not a power of two")]
    PageSize(u64),
}

/// A synthetic image: its parameters are all there is to it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Synthetic {
    len: u64,
    seed: u64,
    zero_fraction: f64,
    page_size: u64,
}

impl Synthetic {
    /// An image of `len` bytes in pages of `page_size`.
    pub fn new(
        len: u64,
        seed: u64,
        zero_fraction: f64,
        page_size: u64,
    ) -> Result<Synthetic, SyntheticError> {
        if len == 0 {
            return Err(SyntheticError::Empty);
        }
        if !(0.0..=1.0).contains(&zero_fraction) {
            return Err(SyntheticError::ZeroFraction(zero_fraction));
        }
        if !page_size.is_power_of_two() {
            return Err(SyntheticError::PageSize(page_size));
        }
        Ok(Synthetic {
            len,
            seed,
            zero_fraction,
            page_size,
        })
    }

    /// True length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Always false: empty images are refused.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The fraction of zero pages (a probability per page).
    pub fn zero_fraction(&self) -> f64 {
        self.zero_fraction
    }

    /// Page size.
    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// Number of pages (the last one may be partial).
    pub fn pages(&self) -> u64 {
        self.len.div_ceil(self.page_size)
    }

    /// Identity: a hash of the parameters (the content follows from them).
    pub fn id(&self) -> u64 {
        let mut bytes = Vec::with_capacity(48);
        bytes.extend_from_slice(b"synthetic/xoshiro256++/1");
        for v in [
            self.len,
            self.seed,
            self.zero_fraction.to_bits(),
            self.page_size,
        ] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        crate::checksum(&bytes)
    }

    /// Whether page `index` is all zero (one draw: no page is generated).
    pub fn is_zero(&self, index: u64) -> bool {
        zero_draw(&mut generator(self.seed, index)) < self.zero_fraction
    }

    /// Fills `buf` with the bytes of the image from page `first` on (inside the image; a
    /// last piece shorter than a page gets the start of its page).
    pub fn fill(&self, first: u64, buf: &mut [u8]) {
        let page = usize::try_from(self.page_size).unwrap_or(usize::MAX);
        for (i, p) in buf.chunks_mut(page).enumerate() {
            let index = first + i as u64;
            if p.len() < page {
                // The generator's last bytes depend on how many are asked for: make the
                // whole page and keep its start.
                let mut whole = vec![0u8; page];
                self.fill(index, &mut whole);
                p.copy_from_slice(&whole[..p.len()]);
                continue;
            }
            synthetic_page(self.seed, self.zero_fraction, index, p);
            // The tail past the true length is zero, on the wire and in checksums.
            let start = index * self.page_size;
            if start + p.len() as u64 > self.len {
                let keep = usize::try_from(self.len.saturating_sub(start)).unwrap_or(0);
                p[keep..].fill(0);
            }
        }
    }
}

fn generator(seed: u64, index: u64) -> Xoshiro256PlusPlus {
    Xoshiro256PlusPlus::seed_from_u64(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// The top 53 bits of the next draw as a uniform number in [0, 1).
fn zero_draw(rng: &mut Xoshiro256PlusPlus) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// Fills `page` with page `index` of the synthetic image `seed` (ignoring the image's length:
/// see [`Synthetic::fill`]); returns true if it is a zero page.
pub fn synthetic_page(seed: u64, zero_fraction: f64, index: u64, page: &mut [u8]) -> bool {
    let mut rng = generator(seed, index);
    if zero_draw(&mut rng) < zero_fraction {
        page.fill(0);
        true
    } else {
        rng.fill_bytes(page);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::usize_from;

    #[test]
    fn pages_are_deterministic_and_zero_pages_are_told_without_generating() {
        let image = Synthetic::new(64 * 4096, 7, 0.5, 4096).expect("image");
        let mut all = vec![0u8; 64 * 4096];
        image.fill(0, &mut all);
        let mut zero = 0;
        for i in 0..64u64 {
            let mut one = vec![1u8; 4096];
            image.fill(i, &mut one);
            let at = usize_from(i * 4096);
            assert_eq!(&all[at..at + 4096], &one[..], "page {i}");
            let is_zero = one.iter().all(|&b| b == 0);
            assert_eq!(image.is_zero(i), is_zero, "page {i}");
            zero += u64::from(is_zero);
        }
        assert!(zero > 10 && zero < 54, "{zero}");
        // A piece shorter than a page is the start of that page.
        let mut piece = vec![0u8; 1234];
        image.fill(5, &mut piece);
        assert_eq!(&piece[..], &all[5 * 4096..5 * 4096 + 1234]);
        let other = Synthetic::new(64 * 4096, 8, 0.5, 4096).expect("image");
        assert_ne!(image.id(), other.id());
        assert_eq!(
            image.id(),
            Synthetic::new(64 * 4096, 7, 0.5, 4096).expect("image").id()
        );
    }

    #[test]
    fn the_tail_of_the_last_page_is_zero() {
        let image = Synthetic::new(5000, 3, 0.0, 4096).expect("image");
        assert_eq!(image.pages(), 2);
        let mut last = vec![0u8; 4096];
        image.fill(1, &mut last);
        assert!(last[..904].iter().any(|&b| b != 0));
        assert!(last[904..].iter().all(|&b| b == 0));
    }

    #[test]
    fn bad_parameters_are_refused() {
        assert_eq!(Synthetic::new(0, 1, 0.0, 4096), Err(SyntheticError::Empty));
        assert!(matches!(
            Synthetic::new(4096, 1, 1.5, 4096),
            Err(SyntheticError::ZeroFraction(_))
        ));
        assert!(matches!(
            Synthetic::new(4096, 1, f64::NAN, 4096),
            Err(SyntheticError::ZeroFraction(_))
        ));
        assert_eq!(
            Synthetic::new(4096, 1, 0.0, 3000),
            Err(SyntheticError::PageSize(3000))
        );
    }
}
