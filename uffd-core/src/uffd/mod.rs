//! The userfaultfd descriptor: creation (device or syscall) and the UFFDIO_API handshake
//! (`open`), registration of ranges (`register`), and reading fault and event messages
//! (`event`).
//!
//! A userfaultfd is created in two steps: obtain a descriptor (from `/dev/userfaultfd` with the
//! `USERFAULTFD_IOC_NEW` ioctl, or from the `userfaultfd(2)` syscall), then negotiate features
//! with UFFDIO_API, which the kernel accepts exactly once per descriptor. The descriptor is
//! always opened `O_NONBLOCK`: `poll(2)` on a blocking userfaultfd reports POLLERR forever.
//!
//! This file holds the descriptor and its errors; each step has a module of its own, which
//! adds its methods to [`Userfaultfd`]: `open` (the doors, the handshake, a descriptor handed
//! over), `register` (modes, register, write-protect), `event` (poll, read, the messages).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use nix::errno::Errno;
use userfaultfd::Uffd;

use crate::sys;

mod event;
mod open;
mod register;

pub use event::{Event, FaultKind};
pub use open::{available_features, OpenOptions, Origin};
pub use register::Modes;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum UffdError {
    /// No userfaultfd could be created.
    #[error(
        "cannot create a userfaultfd ({detail}); fix one of: run as root; give this user read/write \
         access to /dev/userfaultfd; grant CAP_SYS_PTRACE; or allow unprivileged use with \
         `sysctl vm.unprivileged_userfaultfd=1`"
    )]
    Create {
        /// What was tried and what the kernel said.
        detail: String,
    },
    /// UFFDIO_API refused the requested features.
    #[error(
        "UFFDIO_API refused features {requested:#x} (kernel supports {supported:#x}): {errno}"
    )]
    Api {
        /// Requested feature bits.
        requested: u64,
        /// Feature bits this kernel supports (from a probe), or 0 if unknown.
        supported: u64,
        /// The kernel's answer.
        errno: Errno,
    },
    /// UFFDIO_REGISTER failed.
    #[error("UFFDIO_REGISTER of {len} bytes at {start:#x} failed: {source}")]
    Register {
        /// Start of the range.
        start: u64,
        /// Length of the range.
        len: u64,
        /// The crate's error.
        source: userfaultfd::Error,
    },
    /// UFFDIO_UNREGISTER failed.
    #[error("UFFDIO_UNREGISTER failed: {0}")]
    Unregister(userfaultfd::Error),
    /// Reading messages failed.
    #[error("reading the userfaultfd failed: {0}")]
    Read(userfaultfd::Error),
    /// poll(2) failed.
    #[error("poll on the userfaultfd failed: {0}")]
    Poll(Errno),
    /// UFFDIO_WAKE failed.
    #[error("UFFDIO_WAKE failed: {0}")]
    Wake(Errno),
    /// A descriptor handed over could not be taken over.
    #[error("cannot take over descriptor {fd} as a userfaultfd: {detail}")]
    Adopt {
        /// The descriptor.
        fd: RawFd,
        /// What is wrong with it.
        detail: String,
    },
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, UffdError>;

/// An open, API-negotiated userfaultfd.
#[derive(Debug)]
pub struct Userfaultfd {
    uffd: Uffd,
    origin: Origin,
    /// Features negotiated for this descriptor.
    features: u64,
    /// Features the kernel reported as available (UFFDIO_API's answer).
    available: u64,
    /// `ioctl_bit` mask UFFDIO_API reported.
    ioctls: u64,
}

impl Userfaultfd {
    /// Where the descriptor came from.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// The negotiated feature bits.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The feature bits the kernel reported as available when this descriptor was opened.
    pub fn available_features(&self) -> u64 {
        self.available
    }

    /// The `ioctl_bit` mask UFFDIO_API reported.
    pub fn api_ioctls(&self) -> u64 {
        self.ioctls
    }

    /// Wakes the threads waiting on faults in `start..start+len`.
    pub fn wake(&self, start: u64, len: u64) -> Result<()> {
        sys::wake(self.raw_fd(), start, len).map_err(UffdError::Wake)
    }

    /// True once the process whose memory this descriptor serves has exited (its address
    /// space is gone). A userfaultfd has no end-of-file for this: reads just find nothing.
    /// The probe is an UFFDIO_WRITEPROTECT that clears protection on one page at `addr`
    /// (a no-op, or ENOENT where the range is not registered for WP) — every such ioctl
    /// first takes a reference on the address space and answers ESRCH when there is none.
    pub fn owner_exited(&self, addr: u64) -> bool {
        let page = crate::convert::u64_from(crate::region::page_size());
        sys::writeprotect(self.raw_fd(), addr / page * page, page, 0) == Err(Errno::ESRCH)
    }

    /// The raw descriptor, for the ioctls in [`crate::sys`].
    pub fn raw_fd(&self) -> RawFd {
        self.uffd.as_raw_fd()
    }
}

impl AsFd for Userfaultfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.uffd.as_fd()
    }
}
