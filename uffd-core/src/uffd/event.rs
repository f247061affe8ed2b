//! Reading a userfaultfd: waiting with `poll(2)`, reading several messages per `read(2)`,
//! and the messages themselves (faults, and the non-cooperative events: fork, remap, remove,
//! unmap).

use std::os::fd::AsFd;
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use userfaultfd::{EventBuffer, Uffd};

use super::{Origin, Result, UffdError, Userfaultfd};
use crate::sys;

/// What kind of fault a message reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// The page is not mapped.
    Missing,
    /// A write to a write-protected page.
    WriteProtect,
    /// The page is in the page cache but not mapped here.
    Minor,
}

/// One message read from the userfaultfd.
#[derive(Debug)]
pub enum Event {
    /// A thread faulted at `addr` and sleeps until the page is resolved and woken.
    Fault {
        /// Faulting address (page-masked unless EXACT_ADDRESS was negotiated).
        addr: u64,
        /// The access was a write.
        write: bool,
        /// Missing, write-protect or minor.
        kind: FaultKind,
        /// The faulting thread's id (`gettid(2)`), when UFFD_FEATURE_THREAD_ID was negotiated:
        /// it tells which thread waits on this fault, so a measurement can count only the
        /// accesses that really waited.
        tid: Option<u32>,
    },
    /// The process forked: the child's registered ranges report to `child`.
    Fork {
        /// The child's userfaultfd.
        child: Userfaultfd,
    },
    /// `mremap(2)` moved a range.
    Remap {
        /// Old start.
        from: u64,
        /// New start.
        to: u64,
        /// Length.
        len: u64,
    },
    /// `madvise(MADV_DONTNEED/REMOVE)` dropped `start..end`: those pages are missing again.
    Remove {
        /// Start.
        start: u64,
        /// End (exclusive).
        end: u64,
    },
    /// `munmap(2)` (or an mmap over it) removed `start..end`.
    Unmap {
        /// Start.
        start: u64,
        /// End (exclusive).
        end: u64,
    },
}

impl Userfaultfd {
    /// Wraps the child descriptor delivered by a FORK event (already API-negotiated).
    fn from_fork(uffd: Uffd, features: u64) -> Self {
        Userfaultfd {
            uffd,
            origin: Origin::Syscall,
            features,
            available: features,
            ioctls: 0,
        }
    }

    /// Waits until a message can be read, at most `timeout`. Returns false on timeout.
    pub fn wait_readable(&self, timeout: Duration) -> Result<bool> {
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        let mut fds = [PollFd::new(self.uffd.as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
        match nix::poll::poll(&mut fds, timeout) {
            Ok(n) => Ok(n > 0),
            Err(Errno::EINTR) => Ok(false),
            Err(errno) => Err(UffdError::Poll(errno)),
        }
    }

    /// Reads every message available now (one `read(2)` may return several); empty when none.
    pub fn read_events(&self, buf: &mut EventBuffer, out: &mut Vec<Event>) -> Result<()> {
        let events = self.uffd.read_events(buf).map_err(UffdError::Read)?;
        for event in events {
            out.push(self.convert(event.map_err(UffdError::Read)?));
        }
        Ok(())
    }

    fn convert(&self, event: userfaultfd::Event) -> Event {
        use userfaultfd::Event as E;
        match event {
            E::Pagefault {
                kind,
                rw,
                addr,
                thread_id,
            } => Event::Fault {
                addr: addr as u64,
                tid: (self.features & sys::feature::THREAD_ID != 0)
                    .then(|| u32::try_from(thread_id.as_raw()).unwrap_or(0)),
                write: rw == userfaultfd::ReadWrite::Write,
                kind: match kind {
                    userfaultfd::FaultKind::Missing => FaultKind::Missing,
                    userfaultfd::FaultKind::WriteProtected => FaultKind::WriteProtect,
                    userfaultfd::FaultKind::Minor => FaultKind::Minor,
                },
            },
            E::Fork { uffd } => Event::Fork {
                child: Userfaultfd::from_fork(uffd, self.features),
            },
            E::Remap { from, to, len } => Event::Remap {
                from: from as u64,
                to: to as u64,
                len: len as u64,
            },
            E::Remove { start, end } => Event::Remove {
                start: start as u64,
                end: end as u64,
            },
            E::Unmap { start, end } => Event::Unmap {
                start: start as u64,
                end: end as u64,
            },
        }
    }

    /// A fresh message buffer for [`Userfaultfd::read_events`].
    pub fn event_buffer(messages: usize) -> EventBuffer {
        EventBuffer::new(messages)
    }
}
