//! The memory image a server serves: its bytes (zero-padded to whole pages), which pages are
//! zero, a checksum per page, and an identity.
//!
//! Two sources: a file, mapped read-only, or a deterministic synthetic image whose page `i`
//! depends only on `(seed, i)`, so tests can recompute any page without the server.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, MmapOptions};
use rand::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use uffd_core::PageBitmap;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The image file could not be opened or mapped.
    #[error("cannot read image {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A zero-length image.
    #[error("the image is empty")]
    Empty,
    /// A zero fraction outside 0..=1.
    #[error("zero fraction {0} is not between 0 and 1")]
    ZeroFraction(f64),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, ImageError>;

enum Bytes {
    Memory(Vec<u8>),
    File(Mmap),
}

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bytes::Memory(v) => write!(f, "Memory({} bytes)", v.len()),
            Bytes::File(m) => write!(f, "File({} bytes)", m.len()),
        }
    }
}

/// A served image.
#[derive(Debug)]
pub struct Image {
    bytes: Bytes,
    len: u64,
    page_size: u64,
    zero: PageBitmap,
    checksums: Vec<u64>,
    id: u64,
    description: String,
}

impl Image {
    /// Maps `path` read-only. The last partial page reads as zeros past the end of the file
    /// (the kernel zero-fills the tail of a file's last page), which is how it is served.
    pub fn from_file(path: &Path, page_size: u64) -> Result<Image> {
        let open_err = |source| ImageError::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(open_err)?;
        let len = file.metadata().map_err(open_err)?.len();
        if len == 0 {
            return Err(ImageError::Empty);
        }
        let padded = len.div_ceil(page_size) * page_size;
        // SAFETY: the mapping is read-only and private to this process. If another process
        // truncates the file while it is served, reads past the new end raise SIGBUS: serving
        // a changing file is not supported (documented in the README).
        let map = unsafe {
            MmapOptions::new()
                .len(usize::try_from(padded).unwrap_or(usize::MAX))
                .map(&file)
        }
        .map_err(open_err)?;
        Ok(Self::finish(
            Bytes::File(map),
            len,
            page_size,
            None,
            format!("file {}", path.display()),
        ))
    }

    /// A deterministic image of `len` bytes: page `i` is zero with probability
    /// `zero_fraction` (decided by a hash of `(seed, i)`), else pseudo-random bytes seeded by
    /// `(seed, i)`.
    pub fn synthetic(len: u64, seed: u64, zero_fraction: f64, page_size: u64) -> Result<Image> {
        if len == 0 {
            return Err(ImageError::Empty);
        }
        if !(0.0..=1.0).contains(&zero_fraction) {
            return Err(ImageError::ZeroFraction(zero_fraction));
        }
        let padded = len.div_ceil(page_size) * page_size;
        let mut bytes = vec![0u8; usize::try_from(padded).unwrap_or(usize::MAX)];
        let page = usize::try_from(page_size).unwrap_or(4096);
        let pages = bytes.len() / page;
        let zero = PageBitmap::new(pages);
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per_thread = pages.div_ceil(threads).max(1) * page;
        std::thread::scope(|s| {
            for (t, chunk) in bytes.chunks_mut(per_thread).enumerate() {
                let zero = &zero;
                s.spawn(move || {
                    for (i, p) in chunk.chunks_mut(page).enumerate() {
                        let index = (t * per_thread / page + i) as u64;
                        if synthetic_page(seed, zero_fraction, index, p) {
                            zero.set(index as usize);
                        }
                    }
                });
            }
        });
        // The tail past `len` of the last page is zero on the wire and in checksums.
        bytes[usize::try_from(len).unwrap_or(usize::MAX)..].fill(0);
        Ok(Self::finish(
            Bytes::Memory(bytes),
            len,
            page_size,
            Some(zero),
            format!("synthetic seed={seed} zero-fraction={zero_fraction}"),
        ))
    }

    fn finish(
        bytes: Bytes,
        len: u64,
        page_size: u64,
        zero: Option<PageBitmap>,
        description: String,
    ) -> Image {
        let data: &[u8] = match &bytes {
            Bytes::Memory(v) => v,
            Bytes::File(m) => m,
        };
        let page = usize::try_from(page_size).unwrap_or(4096);
        let pages = data.len() / page;
        let mut checksums = vec![0u64; pages];
        let scan_zero = zero.is_none();
        let zero = zero.unwrap_or_else(|| PageBitmap::new(pages));
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per_thread = pages.div_ceil(threads).max(1);
        std::thread::scope(|s| {
            for (t, sums) in checksums.chunks_mut(per_thread).enumerate() {
                let zero = &zero;
                s.spawn(move || {
                    for (i, sum) in sums.iter_mut().enumerate() {
                        let index = t * per_thread + i;
                        let p = &data[index * page..(index + 1) * page];
                        *sum = uffd_core::checksum(p);
                        if scan_zero && is_zero(p) {
                            zero.set(index);
                        }
                    }
                });
            }
        });
        let mut hasher = xxhash_id(len, &checksums);
        hasher ^= page_size.rotate_left(17);
        Image {
            bytes,
            len,
            page_size,
            zero,
            checksums,
            id: hasher,
            description,
        }
    }

    /// True length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Always false: empty images are refused.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Length rounded up to whole pages.
    pub fn padded_len(&self) -> u64 {
        self.pages() * self.page_size
    }

    /// Page size.
    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// Number of pages.
    pub fn pages(&self) -> u64 {
        self.checksums.len() as u64
    }

    /// Whether page `index` is all zero.
    pub fn is_zero_page(&self, index: u64) -> bool {
        self.zero.get(index as usize)
    }

    /// Number of zero pages.
    pub fn zero_pages(&self) -> u64 {
        self.zero.count() as u64
    }

    /// The bytes of `offset..offset+len` (within the padded length).
    pub fn slice(&self, offset: u64, len: u64) -> &[u8] {
        let data: &[u8] = match &self.bytes {
            Bytes::Memory(v) => v,
            Bytes::File(m) => m,
        };
        &data[offset as usize..(offset + len) as usize]
    }

    /// Per-page checksums.
    pub fn checksums(&self) -> &[u64] {
        &self.checksums
    }

    /// Identity: a hash of the length and every page checksum.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Where the image came from, for logs.
    pub fn description(&self) -> &str {
        &self.description
    }
}

fn xxhash_id(len: u64, checksums: &[u64]) -> u64 {
    let mut bytes = Vec::with_capacity(8 + checksums.len() * 8);
    bytes.extend_from_slice(&len.to_le_bytes());
    for c in checksums {
        bytes.extend_from_slice(&c.to_le_bytes());
    }
    uffd_core::checksum(&bytes)
}

fn is_zero(page: &[u8]) -> bool {
    let (head, words, tail) = {
        // SAFETY: u64 has no invalid bit patterns, so viewing aligned bytes as u64s is sound.
        unsafe { page.align_to::<u64>() }
    };
    head.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

/// Fills `page` with synthetic page `index` of image `seed`; returns true if it is a zero page.
/// Public so tests can recompute any page of a synthetic image.
pub fn synthetic_page(seed: u64, zero_fraction: f64, index: u64, page: &mut [u8]) -> bool {
    let mix = seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(mix);
    // Top 53 bits as a uniform number in [0, 1).
    let draw = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    if draw < zero_fraction {
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

    #[test]
    fn synthetic_is_deterministic_with_zero_pages() {
        let a = Image::synthetic(64 * 4096, 7, 0.5, 4096).expect("image");
        let b = Image::synthetic(64 * 4096, 7, 0.5, 4096).expect("image");
        assert_eq!(a.id(), b.id());
        assert!(
            a.zero_pages() > 10 && a.zero_pages() < 54,
            "{}",
            a.zero_pages()
        );
        let mut page = vec![0u8; 4096];
        for i in 0..64 {
            let z = synthetic_page(7, 0.5, i, &mut page);
            assert_eq!(z, a.is_zero_page(i));
            assert_eq!(a.slice(i * 4096, 4096), &page[..]);
        }
        let c = Image::synthetic(64 * 4096, 8, 0.5, 4096).expect("image");
        assert_ne!(a.id(), c.id());
    }

    #[test]
    fn unaligned_file_is_zero_padded() {
        let dir = std::env::temp_dir().join(format!("img-test-{}", std::process::id()));
        std::fs::write(&dir, vec![0xABu8; 5000]).expect("write");
        let image = Image::from_file(&dir, 4096).expect("image");
        assert_eq!(image.len(), 5000);
        assert_eq!(image.pages(), 2);
        let tail = image.slice(4096, 4096);
        assert!(tail[..904].iter().all(|&b| b == 0xAB));
        assert!(tail[904..].iter().all(|&b| b == 0));
        std::fs::remove_file(&dir).expect("rm");
    }

    #[test]
    fn bad_inputs_are_refused() {
        assert!(matches!(
            Image::synthetic(0, 1, 0.0, 4096),
            Err(ImageError::Empty)
        ));
        assert!(matches!(
            Image::synthetic(4096, 1, 1.5, 4096),
            Err(ImageError::ZeroFraction(_))
        ));
        assert!(matches!(
            Image::from_file(Path::new("/nonexistent/image"), 4096),
            Err(ImageError::Open { .. })
        ));
    }
}
