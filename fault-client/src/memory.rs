//! The registered memory and how pages are placed into it (base pages, anonymous memory).
//!
//! Interim: the huge-page backings arrive with the `hugepage` crate, whose `Memory` and
//! `Assembler` have this same shape.

use uffd_core::place::{self, Source, Stop};
use uffd_core::{PageBitmap, PlaceError, Region, Userfaultfd};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Mapping failed.
    #[error(transparent)]
    Region(#[from] uffd_core::region::RegionError),
    /// Registration failed.
    #[error(transparent)]
    Uffd(#[from] uffd_core::uffd::UffdError),
    /// Placement failed.
    #[error(transparent)]
    Place(#[from] PlaceError),
}

/// What one placement call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Base pages newly present.
    pub pages_placed: u64,
    /// Base pages that were already present.
    pub pages_present: u64,
    /// Placement units completed.
    pub units_completed: u64,
    /// Why placement stopped early, if it did.
    pub stopped: Option<Stop>,
}

/// Anonymous memory registered for MISSING faults.
#[derive(Debug)]
pub struct Memory {
    region: Region,
}

impl Memory {
    /// Maps `len` bytes.
    pub fn new(len: usize) -> Result<Memory, MemoryError> {
        Ok(Memory {
            region: Region::anonymous(len)?,
        })
    }

    /// Start address.
    pub fn addr(&self) -> u64 {
        self.region.addr()
    }

    /// Length.
    pub fn len(&self) -> usize {
        self.region.len()
    }

    /// Always false.
    pub fn is_empty(&self) -> bool {
        self.region.is_empty()
    }

    /// Placement unit.
    pub fn unit(&self) -> u64 {
        uffd_core::page_size() as u64
    }

    /// What one fault requests.
    pub fn request_unit(&self) -> u64 {
        self.unit()
    }

    /// Feature bits to negotiate.
    pub fn uffd_features(&self) -> u64 {
        0
    }

    /// Registers the region for MISSING faults.
    pub fn register(&self, uffd: &Userfaultfd) -> Result<(), MemoryError> {
        uffd.register(self.addr(), self.len() as u64, uffd_core::Modes::MISSING)?;
        Ok(())
    }

    /// A placer for one connection.
    pub fn assembler<'a>(&'a self, uffd: &'a Userfaultfd) -> Result<Assembler<'a>, MemoryError> {
        Ok(Assembler { memory: self, uffd })
    }
}

/// Places pages for one connection.
#[derive(Debug)]
pub struct Assembler<'a> {
    memory: &'a Memory,
    uffd: &'a Userfaultfd,
}

impl Assembler<'_> {
    /// Places `bytes` at image `offset`.
    pub fn data(
        &mut self,
        offset: u64,
        bytes: &[u8],
        received: &PageBitmap,
    ) -> Result<Progress, MemoryError> {
        self.fill(offset, Source::Bytes(bytes), received)
    }

    /// Places zero pages over `offset..offset+len`.
    pub fn zero(
        &mut self,
        offset: u64,
        len: u64,
        received: &PageBitmap,
    ) -> Result<Progress, MemoryError> {
        self.fill(offset, Source::Zero(len), received)
    }

    fn fill(
        &mut self,
        offset: u64,
        source: Source<'_>,
        received: &PageBitmap,
    ) -> Result<Progress, MemoryError> {
        let page = self.memory.unit();
        let filled = place::fill(self.uffd, self.memory.addr() + offset, source, page)?;
        // Every page of the range up to the stop is present now, placed here or before.
        let done = filled.placed + filled.present;
        let first = offset / page;
        received.set_range(first as usize, (first + done / page) as usize);
        Ok(Progress {
            pages_placed: filled.placed / page,
            pages_present: filled.present / page,
            units_completed: filled.placed / page,
            stopped: filled.stopped,
        })
    }
}
