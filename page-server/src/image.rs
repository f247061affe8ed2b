//! The memory image a server serves: its bytes (zero-padded to whole pages), which pages are
//! zero, a checksum per page, and an identity.
//!
//! Two sources, both read page by page when a sender needs them, so the server's memory does
//! not grow with the image:
//! - a file, read with `pread` (not mapped: a file truncated while it is served would raise
//!   SIGBUS on access to a mapping; a read past its new end is an error, [`ImageError::Shrunk`],
//!   which ends the sessions that need those pages and nothing else). Its zero pages and
//!   checksums are found by one pass at start-up (the checksums make its identity);
//! - a synthetic image ([`uffd_core::Synthetic`]): page `i` is generated from `(seed, i)` when
//!   it is sent; nothing is computed up front, so any size starts at once.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use uffd_core::convert::usize_from;
use uffd_core::synthetic::SyntheticError;
use uffd_core::{PageBitmap, Synthetic};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The image file could not be opened or read at start-up.
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
    /// Larger than a session may serve.
    #[error("an image of {0} bytes is larger than the protocol's limit of 64 TiB")]
    TooLarge(u64),
    /// A synthetic image with a bad page size.
    #[error("{0}")]
    Synthetic(SyntheticError),
    /// Reading pages of the file failed while serving.
    #[error("image file {path}: cannot read {len} bytes at offset {offset}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Offset of the read.
        offset: u64,
        /// Its length.
        len: u64,
        /// Why.
        source: std::io::Error,
    },
    /// The file is shorter than when the server started: its pages past the new end are gone.
    #[error(
        "image file {path} shrank while served: it had {was} bytes, now {now} \
         (offset {offset} cannot be read)"
    )]
    Shrunk {
        /// The file.
        path: PathBuf,
        /// Its length at start-up (the length served).
        was: u64,
        /// Its length now.
        now: u64,
        /// The first offset that could not be read.
        offset: u64,
    },
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, ImageError>;

#[derive(Debug)]
enum Source {
    File {
        file: File,
        path: PathBuf,
        zero: PageBitmap,
        checksums: Vec<u64>,
    },
    Synthetic(Synthetic),
}

/// A served image.
#[derive(Debug)]
pub struct Image {
    source: Source,
    len: u64,
    page_size: u64,
    id: u64,
    description: String,
}

/// Bytes read per `pread` by the start-up pass over a file.
const SCAN_BYTES: u64 = 4 << 20;

impl Image {
    /// Opens `path` and reads it once to find its zero pages and checksums. The last partial
    /// page is served zero-padded.
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
        if len > uffd_core::proto::MAX_IMAGE {
            return Err(ImageError::TooLarge(len));
        }
        let pages = usize::try_from(len.div_ceil(page_size)).unwrap_or(usize::MAX);
        let zero = PageBitmap::new(pages);
        let mut checksums = vec![0u64; pages];
        let page = usize::try_from(page_size).unwrap_or(4096);
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per_scan = usize::try_from(SCAN_BYTES / page_size).unwrap_or(1).max(1);
        // Whole scans per thread, so that only the last read of all is short.
        let per_thread = pages.div_ceil(threads).div_ceil(per_scan).max(1) * per_scan;
        std::thread::scope(|s| -> Result<()> {
            let workers: Vec<_> = checksums
                .chunks_mut(per_thread)
                .enumerate()
                .map(|(t, sums)| {
                    let (file, zero) = (&file, &zero);
                    s.spawn(move || -> Result<()> {
                        let mut buf = Vec::new();
                        for (c, part) in sums.chunks_mut(per_scan).enumerate() {
                            let first = t * per_thread + c * per_scan;
                            buf.resize(part.len() * page, 0);
                            read_file(file, path, len, first as u64 * page_size, &mut buf)?;
                            for (i, (sum, p)) in part.iter_mut().zip(buf.chunks(page)).enumerate() {
                                *sum = uffd_core::checksum(p);
                                if is_zero(p) {
                                    zero.set(first + i);
                                }
                            }
                        }
                        Ok(())
                    })
                })
                .collect();
            workers
                .into_iter()
                .try_for_each(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
        })?;
        Ok(Image {
            id: file_id(len, &checksums) ^ page_size.rotate_left(17),
            source: Source::File {
                file,
                path: path.to_path_buf(),
                zero,
                checksums,
            },
            len,
            page_size,
            description: format!("file {}", path.display()),
        })
    }

    /// A deterministic image of `len` bytes ([`uffd_core::Synthetic`]): page `i` is zero with
    /// probability `zero_fraction`, else pseudo-random bytes, decided and generated from
    /// `(seed, i)` when the page is sent.
    pub fn synthetic(len: u64, seed: u64, zero_fraction: f64, page_size: u64) -> Result<Image> {
        if len > uffd_core::proto::MAX_IMAGE {
            return Err(ImageError::TooLarge(len));
        }
        let synthetic =
            Synthetic::new(len, seed, zero_fraction, page_size).map_err(|err| match err {
                SyntheticError::Empty => ImageError::Empty,
                SyntheticError::ZeroFraction(f) => ImageError::ZeroFraction(f),
                other => ImageError::Synthetic(other),
            })?;
        Ok(Image {
            id: synthetic.id(),
            source: Source::Synthetic(synthetic),
            len,
            page_size,
            description: format!("synthetic seed={seed} zero-fraction={zero_fraction}"),
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
        self.len.div_ceil(self.page_size)
    }

    /// Whether page `index` is all zero.
    pub fn is_zero_page(&self, index: u64) -> bool {
        match &self.source {
            Source::File { zero, .. } => zero.get(usize_from(index)),
            Source::Synthetic(s) => s.is_zero(index),
        }
    }

    /// Number of zero pages (for a synthetic image this looks at every page: O(pages)).
    pub fn zero_pages(&self) -> u64 {
        match &self.source {
            Source::File { zero, .. } => zero.count() as u64,
            Source::Synthetic(s) => (0..s.pages()).filter(|&i| s.is_zero(i)).count() as u64,
        }
    }

    /// Reads the whole pages at `offset` (page-aligned, within the padded length) into `buf`
    /// (a multiple of the page size). A file's tail past its length reads as zeros; a file
    /// that is now shorter than that length, or fails to read, is an error.
    pub fn read_into(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        match &self.source {
            Source::Synthetic(s) => {
                s.fill(offset / self.page_size, buf);
                Ok(())
            }
            Source::File { file, path, .. } => read_file(file, path, self.len, offset, buf),
        }
    }

    /// The bytes of `offset..offset+len` (whole pages), read as a sender reads them.
    pub fn bytes(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
        self.read_into(offset, &mut buf)?;
        Ok(buf)
    }

    /// Checksums of pages `first..first + count` (a synthetic image's pages are generated
    /// for it, one at a time).
    pub fn checksums(&self, first: u64, count: u64) -> Result<Vec<u64>> {
        match &self.source {
            Source::File { checksums, .. } => {
                let range = usize::try_from(first).unwrap_or(usize::MAX)
                    ..usize::try_from(first + count).unwrap_or(usize::MAX);
                Ok(checksums[range].to_vec())
            }
            Source::Synthetic(s) => {
                let mut page = vec![0u8; usize::try_from(self.page_size).unwrap_or(4096)];
                Ok((first..first + count)
                    .map(|i| {
                        s.fill(i, &mut page);
                        uffd_core::checksum(&page)
                    })
                    .collect())
            }
        }
    }

    /// The synthetic image's parameters, if it is one (a client can regenerate its pages).
    pub fn synthetic_params(&self) -> Option<&Synthetic> {
        match &self.source {
            Source::Synthetic(s) => Some(s),
            Source::File { .. } => None,
        }
    }

    /// Identity: for a file, a hash of the length and every page checksum; for a synthetic
    /// image, a hash of its parameters.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Where the image came from, for logs.
    pub fn description(&self) -> &str {
        &self.description
    }
}

/// Reads `buf.len()` bytes of a file of `len` bytes at `offset` with `pread`; what lies past
/// `len` reads as zeros. Fewer bytes than `len` promises mean the file shrank.
fn read_file(file: &File, path: &Path, len: u64, offset: u64, buf: &mut [u8]) -> Result<()> {
    let want = usize::try_from(len.saturating_sub(offset))
        .unwrap_or(usize::MAX)
        .min(buf.len());
    let mut done = 0;
    while done < want {
        let at = offset + done as u64;
        match file.read_at(&mut buf[done..want], at) {
            Ok(0) => {
                return Err(ImageError::Shrunk {
                    path: path.to_path_buf(),
                    was: len,
                    now: file.metadata().map_or(0, |m| m.len()),
                    offset: at,
                })
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(ImageError::Read {
                    path: path.to_path_buf(),
                    offset: at,
                    len: (want - done) as u64,
                    source,
                })
            }
        }
    }
    buf[want..].fill(0);
    Ok(())
}

fn file_id(len: u64, checksums: &[u64]) -> u64 {
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
pub use uffd_core::synthetic::synthetic_page;

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
            assert_eq!(a.bytes(i * 4096, 4096).expect("read"), page);
        }
        let c = Image::synthetic(64 * 4096, 8, 0.5, 4096).expect("image");
        assert_ne!(a.id(), c.id());
    }

    #[test]
    fn a_huge_synthetic_image_costs_nothing_up_front() {
        // 1 TiB: nothing is generated or allocated until a page is read.
        let image = Image::synthetic(1 << 40, 3, 0.1, 4096).expect("image");
        assert_eq!(image.pages(), 1 << 28);
        let last = image.pages() - 1;
        let bytes = image.bytes(last * 4096, 4096).expect("read");
        let mut expected = vec![0u8; 4096];
        synthetic_page(3, 0.1, last, &mut expected);
        assert_eq!(bytes, expected);
        assert_eq!(
            image.checksums(last, 1).expect("sum"),
            vec![uffd_core::checksum(&expected)]
        );
    }

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("img-test-{name}-{}", std::process::id()))
    }

    #[test]
    fn unaligned_file_is_zero_padded() {
        let path = temp("tail");
        std::fs::write(&path, vec![0xABu8; 5000]).expect("write");
        let image = Image::from_file(&path, 4096).expect("image");
        assert_eq!(image.len(), 5000);
        assert_eq!(image.pages(), 2);
        let tail = image.bytes(4096, 4096).expect("read");
        assert!(tail[..904].iter().all(|&b| b == 0xAB));
        assert!(tail[904..].iter().all(|&b| b == 0));
        assert_eq!(
            image.checksums(1, 1).expect("sum"),
            vec![uffd_core::checksum(&tail)]
        );
        std::fs::remove_file(&path).expect("rm");
    }

    #[test]
    fn a_file_that_shrinks_is_an_error_not_a_crash() {
        let path = temp("shrink");
        std::fs::write(&path, vec![0x5Au8; 8 * 4096]).expect("write");
        let image = Image::from_file(&path, 4096).expect("image");
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        file.set_len(3 * 4096 + 100).expect("truncate");
        // Below the new end: still served.
        assert_eq!(
            image.bytes(0, 3 * 4096).expect("read"),
            vec![0x5Au8; 3 * 4096]
        );
        // Past it: an error naming the file and both lengths.
        match image.bytes(2 * 4096, 4 * 4096) {
            Err(ImageError::Shrunk {
                was, now, offset, ..
            }) => {
                assert_eq!(
                    (was, now, offset),
                    (8 * 4096, 3 * 4096 + 100, 3 * 4096 + 100)
                );
            }
            other => panic!("expected Shrunk, got {other:?}"),
        }
        std::fs::remove_file(&path).expect("rm");
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
            Image::synthetic((64 << 40) + 1, 1, 0.0, 4096),
            Err(ImageError::TooLarge(_))
        ));
        assert!(Image::synthetic(64 << 40, 1, 0.0, 4096).is_ok());
        assert!(matches!(
            Image::from_file(Path::new("/nonexistent/image"), 4096),
            Err(ImageError::Open { .. })
        ));
    }
}
