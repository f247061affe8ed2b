//! A fresh registered region prepared for one kind of fault.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use uffd_core::region::{Memfd, HUGE_2M};
use uffd_core::{Modes, Region, Userfaultfd};

#[cfg(doc)]
use super::Handler;
use super::{FaultPath, FILL, TOUCH, VERIFY_OFFSET};

/// Writes one byte of a mapping this process owns.
///
/// # Safety
/// `offset` < `region.len()`, and no Rust reference points into the region. If the page is in a
/// registered range and missing, something must resolve the fault.
unsafe fn poke(region: &Region, offset: usize, value: u8) {
    // SAFETY: forwarded from the caller: in bounds, writable, not borrowed.
    unsafe { region.as_ptr().add(offset).write_volatile(value) }
}

/// A fresh registered region of `pages` pages of one [`FaultPath`], prepared so that the first
/// access to each page takes exactly that kind of fault: nothing of it has been touched through
/// the registered mapping.
///
/// Fields drop in order: the registered mapping is unmapped first, then the alias, the memfd
/// and the MOVE sources. Never drop a fixture while a thread is blocked on a fault in it.
#[derive(Debug)]
pub struct Fixture {
    /// The registered range, the one the faulting thread touches.
    region: Region,
    /// CONTINUE: the second mapping of the memfd, through which the content was written.
    alias: Option<Region>,
    /// CONTINUE: the file behind both mappings.
    memfd: Option<Memfd>,
    /// MOVE: populated private pages at the same offsets as the destination pages.
    source: Option<Region>,
    path: FaultPath,
    pages: usize,
}

impl Fixture {
    /// Maps, prepares and registers `pages` pages for `path` on `uffd` (which must have
    /// negotiated `path.features()`). hugetlb paths need `pages` free 2M pages in the pool.
    pub fn new(uffd: &Userfaultfd, path: FaultPath, pages: usize) -> Result<Fixture> {
        ensure!(pages > 0, "a fixture needs at least one page");
        let page = path.page_size();
        let len = pages
            .checked_mul(page)
            .context("fixture length overflows usize")?;
        let missing = Modes::MISSING;
        let mut fixture = match path {
            FaultPath::Copy4k | FaultPath::Zeropage4k | FaultPath::Move4k => Fixture {
                region: Region::anonymous(len).context("mapping the anonymous range")?,
                alias: None,
                memfd: None,
                source: None,
                path,
                pages,
            },
            FaultPath::HugetlbCopy2m => Fixture {
                region: Region::hugetlb(len, HUGE_2M)
                    .context("mapping private hugetlb memory (is the 2M pool big enough?)")?,
                alias: None,
                memfd: None,
                source: None,
                path,
                pages,
            },
            FaultPath::WriteProtect4k => {
                let region = Region::anonymous(len).context("mapping the anonymous range")?;
                for i in 0..pages {
                    // SAFETY: in bounds; the range is not registered yet, so this is an
                    // ordinary fault; nothing borrows the region.
                    unsafe { poke(&region, i * page + VERIFY_OFFSET, FILL) };
                }
                Fixture {
                    region,
                    alias: None,
                    memfd: None,
                    source: None,
                    path,
                    pages,
                }
            }
            FaultPath::ContinueShmem4k | FaultPath::ContinueHugetlb2m => {
                let huge = (page == HUGE_2M).then_some(HUGE_2M);
                let memfd = Memfd::new("uffd-lab-continue", len, huge)
                    .context("creating the memfd (hugetlb: is the 2M pool big enough?)")?;
                let region = Region::shared(&memfd, len).context("mapping the memfd")?;
                let alias = Region::shared(&memfd, len).context("mapping the memfd alias")?;
                for i in 0..pages {
                    // SAFETY: in bounds of the alias, which is not registered; nothing
                    // borrows it. This puts the page in the page cache.
                    unsafe { poke(&alias, i * page + VERIFY_OFFSET, FILL) };
                }
                Fixture {
                    region,
                    alias: Some(alias),
                    memfd: Some(memfd),
                    source: None,
                    path,
                    pages,
                }
            }
        };
        let modes = match path {
            FaultPath::WriteProtect4k => Modes {
                write_protect: true,
                ..Modes::default()
            },
            FaultPath::ContinueShmem4k | FaultPath::ContinueHugetlb2m => Modes {
                minor: true,
                ..Modes::default()
            },
            _ => missing,
        };
        let (start, len64) = (fixture.region.addr(), len as u64);
        uffd.register(start, len64, modes)
            .with_context(|| format!("registering {} for {}", len, path.name()))?;
        match path {
            FaultPath::WriteProtect4k => uffd
                .write_protect(start, len64, true)
                .context("write-protecting the range")?,
            FaultPath::Move4k => {
                let source = Region::anonymous(len).context("mapping the MOVE sources")?;
                for i in 0..pages {
                    // SAFETY: in bounds; the source is not registered; nothing borrows it.
                    unsafe { poke(&source, i * page + VERIFY_OFFSET, FILL) };
                }
                fixture.source = Some(source);
            }
            _ => {}
        }
        Ok(fixture)
    }

    /// The fault path it was prepared for.
    pub fn path(&self) -> FaultPath {
        self.path
    }

    /// Number of pages.
    pub fn pages(&self) -> usize {
        self.pages
    }

    /// The registered range.
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// Address of page `i` of the registered range.
    pub fn page_addr(&self, i: usize) -> u64 {
        assert!(i < self.pages, "page {i} of {}", self.pages);
        self.region.addr() + (i * self.path.page_size()) as u64
    }

    /// CONTINUE: the unregistered second mapping of the memfd.
    pub fn alias(&self) -> Option<&Region> {
        self.alias.as_ref()
    }

    /// CONTINUE: the memfd behind both mappings.
    pub fn memfd(&self) -> Option<&Memfd> {
        self.memfd.as_ref()
    }

    /// MOVE: the populated source pages, at the same offsets as the destination pages.
    pub fn source(&self) -> Option<&Region> {
        self.source.as_ref()
    }

    /// MOVE: `source - destination` (wrapping), the same for every page; 0 for other paths.
    pub fn move_delta(&self) -> u64 {
        self.source
            .as_ref()
            .map_or(0, |s| s.addr().wrapping_sub(self.region.addr()))
    }

    /// Accesses page `i` the way its path faults (read for ZEROPAGE, write otherwise) and
    /// returns how long the access took. Blocks until something resolves the fault: call it only
    /// while a [`Handler`] serves this fixture's userfaultfd.
    pub fn touch(&self, i: usize) -> Duration {
        assert!(i < self.pages, "page {i} of {}", self.pages);
        // SAFETY: offset 0 of page `i` is inside the mapping (asserted above), which only ever
        // is accessed through raw pointers.
        let ptr = unsafe { self.region.as_ptr().add(i * self.path.page_size()) };
        let start = Instant::now();
        if self.path.writes() {
            // SAFETY: `ptr` is in the writable mapping; nothing borrows it.
            unsafe { ptr.write_volatile(TOUCH) };
        } else {
            // SAFETY: `ptr` is in the readable mapping.
            std::hint::black_box(unsafe { ptr.read_volatile() });
        }
        start.elapsed()
    }

    /// Checks the content of page `i` at [`VERIFY_OFFSET`] after its fault was resolved (or
    /// after a placement ioctl placed it). Do not call it on a page that is still missing and
    /// that nothing will resolve: the read would block forever.
    pub fn verify(&self, i: usize) -> Result<()> {
        assert!(i < self.pages, "page {i} of {}", self.pages);
        let offset = i * self.path.page_size() + VERIFY_OFFSET;
        // SAFETY: in bounds; the page is present (the caller's promise), so the read returns.
        let got = unsafe { self.region.as_ptr().add(offset).read_volatile() };
        let want = self.path.expected_byte();
        ensure!(
            got == want,
            "{}: page {i} holds {got:#04x} at offset {VERIFY_OFFSET}, expected {want:#04x}",
            self.path.name()
        );
        Ok(())
    }
}
