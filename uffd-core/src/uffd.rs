//! The userfaultfd descriptor: creation (device or syscall), the UFFDIO_API handshake,
//! registration, and reading fault and event messages.
//!
//! A userfaultfd is created in two steps: obtain a descriptor (from `/dev/userfaultfd` with the
//! `USERFAULTFD_IOC_NEW` ioctl, or from the `userfaultfd(2)` syscall), then negotiate features
//! with UFFDIO_API, which the kernel accepts exactly once per descriptor. The descriptor is
//! always opened `O_NONBLOCK`: `poll(2)` on a blocking userfaultfd reports POLLERR forever.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use userfaultfd::{EventBuffer, RegisterMode, Uffd};

use crate::convert::usize_from;
use crate::sys;

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

/// Where a descriptor came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `/dev/userfaultfd` and `USERFAULTFD_IOC_NEW` (Linux 6.1): access by file permissions.
    Device,
    /// The `userfaultfd(2)` syscall: needs CAP_SYS_PTRACE or `vm.unprivileged_userfaultfd=1`
    /// (or [`OpenOptions::user_mode_only`]).
    Syscall,
    /// Created by another process and handed over ([`Userfaultfd::from_owned_fd`]).
    Received,
}

/// How [`Userfaultfd::open_with`] creates a descriptor. The default is what
/// [`Userfaultfd::open`] does: either door, all faults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenOptions {
    /// `UFFD_USER_MODE_ONLY` (Linux 5.11): handle only faults of user-mode accesses; a
    /// kernel-mode access to a missing page (say `read(2)` into the range) fails with EFAULT
    /// instead of waiting. With it the syscall needs no privilege, whatever
    /// `vm.unprivileged_userfaultfd` says.
    pub user_mode_only: bool,
    /// Try only this door (`None`: `/dev/userfaultfd`, then the syscall).
    pub door: Option<Origin>,
}

/// Registration modes (`UFFDIO_REGISTER_MODE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Modes {
    /// Faults on missing pages (resolved by COPY, ZEROPAGE, MOVE).
    pub missing: bool,
    /// Writes to write-protected pages (resolved by WRITEPROTECT).
    pub write_protect: bool,
    /// Faults on pages present in the page cache but not mapped (resolved by CONTINUE).
    pub minor: bool,
}

impl Modes {
    /// MISSING only: the classic on-demand paging registration.
    pub const MISSING: Modes = Modes {
        missing: true,
        write_protect: false,
        minor: false,
    };

    fn to_crate(self) -> RegisterMode {
        let mut mode = RegisterMode::empty();
        if self.missing {
            mode |= RegisterMode::MISSING;
        }
        if self.write_protect {
            mode |= RegisterMode::WRITE_PROTECT;
        }
        if self.minor {
            mode |= RegisterMode::MINOR;
        }
        mode
    }
}

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

/// The features this kernel supports, from a throw-away descriptor opened with none: the
/// kernel answers UFFDIO_API once per descriptor, so one that negotiated cannot be asked again.
pub fn available_features() -> Option<u64> {
    Userfaultfd::open(0).ok().map(|u| u.available_features())
}

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
    /// Creates a non-blocking, close-on-exec userfaultfd and negotiates `features`
    /// (`sys::feature::*` bits). Tries `/dev/userfaultfd`, then the syscall.
    pub fn open(features: u64) -> Result<Self> {
        Self::open_with(features, OpenOptions::default())
    }

    /// [`Userfaultfd::open`] with `options`: user-mode-only faults, or one door only.
    pub fn open_with(features: u64, options: OpenOptions) -> Result<Self> {
        let (fd, origin) = open_raw(options)?;
        // SAFETY: `fd` is a freshly created userfaultfd that nothing else owns; `Uffd` takes
        // ownership and closes it on drop.
        let uffd = unsafe { Uffd::from_raw_fd(fd) };
        let api = sys::api(uffd.as_raw_fd(), features).map_err(|errno| UffdError::Api {
            requested: features,
            supported: available_features().unwrap_or(0),
            errno,
        })?;
        Ok(Userfaultfd {
            uffd,
            origin,
            features,
            available: api.features,
            ioctls: api.ioctls,
        })
    }

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

    /// Takes over a userfaultfd that another process created, negotiated and passed over a
    /// Unix socket (SCM_RIGHTS). `features` must be the bits the sender negotiated with
    /// UFFDIO_API: the kernel answers that handshake once per descriptor (a second one is
    /// EINVAL), so the receiver cannot ask it and the sender has to say, say in the same
    /// message. [`Userfaultfd::available_features`] reports `features` and
    /// [`Userfaultfd::api_ioctls`] 0 (the sender's UFFDIO_API answer is not known here).
    ///
    /// The descriptor is refused unless it is a userfaultfd. It is made `O_NONBLOCK` if the
    /// sender created it blocking (the flag belongs to the open file, so the sender's copy
    /// changes too): `poll(2)` on a blocking userfaultfd reports POLLERR forever.
    pub fn from_owned_fd(fd: OwnedFd, features: u64) -> Result<Self> {
        let raw = fd.as_raw_fd();
        let adopt = |detail: String| UffdError::Adopt { fd: raw, detail };
        // A userfaultfd is an anonymous inode; /proc names its kind.
        let kind = std::fs::read_link(format!("/proc/self/fd/{raw}"))
            .map_err(|err| adopt(format!("reading /proc/self/fd/{raw}: {err}")))?;
        if kind.as_os_str() != "anon_inode:[userfaultfd]" {
            return Err(adopt(format!("it is {}", kind.display())));
        }
        let flags = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL)
            .map_err(|errno| adopt(format!("F_GETFL: {errno}")))?;
        let mut flags = nix::fcntl::OFlag::from_bits_retain(flags);
        if !flags.contains(nix::fcntl::OFlag::O_NONBLOCK) {
            flags.insert(nix::fcntl::OFlag::O_NONBLOCK);
            nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(flags))
                .map_err(|errno| adopt(format!("F_SETFL O_NONBLOCK: {errno}")))?;
        }
        // SAFETY: `fd` is an open userfaultfd (checked above) that we own; `Uffd` takes that
        // ownership and closes it on drop.
        let uffd = unsafe { Uffd::from_raw_fd(fd.into_raw_fd()) };
        Ok(Userfaultfd {
            uffd,
            origin: Origin::Received,
            features,
            available: features,
            ioctls: 0,
        })
    }

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

    /// Registers `start..start+len` and returns the `ioctl_bit` mask the kernel allows there.
    pub fn register(&self, start: u64, len: u64, modes: Modes) -> Result<u64> {
        self.uffd
            .register_with_mode(
                start as *mut libc::c_void,
                usize_from(len),
                modes.to_crate(),
            )
            .map(|ioctls| ioctls.bits())
            .map_err(|source| UffdError::Register { start, len, source })
    }

    /// Unregisters a range; faults there become ordinary faults again.
    pub fn unregister(&self, start: u64, len: u64) -> Result<()> {
        self.uffd
            .unregister(start as *mut libc::c_void, usize_from(len))
            .map_err(UffdError::Unregister)
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

    /// Wakes the threads waiting on faults in `start..start+len`.
    pub fn wake(&self, start: u64, len: u64) -> Result<()> {
        sys::wake(self.raw_fd(), start, len).map_err(UffdError::Wake)
    }

    /// Write-protects (`protect`) or un-protects a range registered with WP.
    pub fn write_protect(&self, start: u64, len: u64, protect: bool) -> Result<()> {
        let ptr = start as *mut libc::c_void;
        let result = if protect {
            self.uffd.write_protect(ptr, usize_from(len))
        } else {
            self.uffd
                .remove_write_protection(ptr, usize_from(len), true)
        };
        result.map_err(UffdError::Read)
    }

    /// True once the process whose memory this descriptor serves has exited (its address
    /// space is gone). A userfaultfd has no end-of-file for this: reads just find nothing.
    /// The probe is an UFFDIO_WRITEPROTECT that clears protection on one page at `addr`
    /// (a no-op, or ENOENT where the range is not registered for WP) — every such ioctl
    /// first takes a reference on the address space and answers ESRCH when there is none.
    pub fn owner_exited(&self, addr: u64) -> bool {
        let page = crate::region::page_size() as u64;
        sys::writeprotect(self.raw_fd(), addr / page * page, page, 0)
            == Err(nix::errno::Errno::ESRCH)
    }

    /// The raw descriptor, for the ioctls in [`crate::sys`].
    pub fn raw_fd(&self) -> RawFd {
        self.uffd.as_raw_fd()
    }

    /// A fresh message buffer for [`Userfaultfd::read_events`].
    pub fn event_buffer(messages: usize) -> EventBuffer {
        EventBuffer::new(messages)
    }
}

impl AsFd for Userfaultfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.uffd.as_fd()
    }
}

const OPEN_FLAGS: i32 = libc::O_CLOEXEC | libc::O_NONBLOCK;

/// Obtains a raw descriptor: `/dev/userfaultfd` first, then the syscall (or the one door
/// `options` names).
fn open_raw(options: OpenOptions) -> Result<(RawFd, Origin)> {
    let flags = OPEN_FLAGS
        | if options.user_mode_only {
            sys::USER_MODE_ONLY
        } else {
            0
        };
    let mut tried = Vec::new();
    if matches!(options.door, None | Some(Origin::Device)) {
        match File::options()
            .read(true)
            .write(true)
            .open("/dev/userfaultfd")
        {
            Ok(dev) => match sys::ioc_new(dev.as_raw_fd(), flags) {
                Ok(fd) => return Ok((fd, Origin::Device)),
                Err(errno) => tried.push(format!("/dev/userfaultfd: {errno}")),
            },
            Err(err) => tried.push(format!("/dev/userfaultfd: {err}")),
        }
    }
    if matches!(options.door, None | Some(Origin::Syscall)) {
        // SAFETY: the userfaultfd syscall takes one integer flags argument and returns a new
        // descriptor or -1 with errno set.
        let ret = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
        match Errno::result(ret) {
            Ok(fd) => {
                // syscall(2) returns the kernel's int descriptor widened to a long.
                #[allow(clippy::cast_possible_truncation)]
                let fd = fd as RawFd;
                return Ok((fd, Origin::Syscall));
            }
            Err(errno) => tried.push(format!("userfaultfd(2): {errno}")),
        }
    }
    if tried.is_empty() {
        tried.push(
            "no door to open (a received descriptor is taken over with from_owned_fd)".into(),
        );
    }
    Err(UffdError::Create {
        detail: tried.join("; "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::u64_from;

    #[test]
    fn open_reports_origin_and_features() {
        let uffd = match Userfaultfd::open(0) {
            Ok(uffd) => uffd,
            Err(err) => return uffd_testkit::skip(&err.to_string()),
        };
        assert_eq!(uffd.features(), 0);
        assert!(uffd.raw_fd() >= 0);
    }

    #[test]
    fn user_mode_only_reaches_the_kernel() {
        let options = OpenOptions {
            user_mode_only: true,
            door: Some(Origin::Syscall),
        };
        let uffd = match Userfaultfd::open_with(0, options) {
            Ok(uffd) => uffd,
            Err(err) => return uffd_testkit::skip(&err.to_string()),
        };
        assert_eq!(uffd.origin(), Origin::Syscall);
        let page = crate::region::page_size();
        let region = crate::Region::anonymous(page).expect("mmap");
        let page = u64_from(page);
        uffd.register(region.addr(), page, Modes::MISSING)
            .expect("register");
        let (_read_end, write_end) = nix::unistd::pipe().expect("pipe");
        std::thread::scope(|s| {
            // write(2) reads the missing page in kernel mode: EFAULT at once with the flag.
            // Without it the writer would sleep on a fault; that fault is resolved here, so
            // the test fails instead of hanging.
            let writer = s.spawn(|| {
                // SAFETY: the page is ours and nothing writes it; only the kernel reads it.
                let byte = unsafe { std::slice::from_raw_parts(region.as_ptr(), 1) };
                nix::unistd::write(&write_end, byte)
            });
            while !writer.is_finished() {
                if uffd.wait_readable(Duration::from_millis(10)).expect("poll") {
                    crate::place::zeropage(&uffd, region.addr(), page, true).expect("zeropage");
                }
            }
            assert_eq!(writer.join().expect("writer"), Err(Errno::EFAULT));
        });
    }

    #[test]
    fn a_handed_over_descriptor_is_taken_over() {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        let sender = match Userfaultfd::open(0) {
            Ok(uffd) => uffd,
            Err(err) => return uffd_testkit::skip(&err.to_string()),
        };
        let page = crate::region::page_size();
        let region = crate::Region::anonymous(page).expect("mmap");
        sender
            .register(region.addr(), page as u64, Modes::MISSING)
            .expect("register");
        // What SCM_RIGHTS delivers: another descriptor of the same open file, here from a
        // sender that made it blocking.
        let fd = sender.as_fd().try_clone_to_owned().expect("dup");
        fcntl(&fd, FcntlArg::F_SETFL(OFlag::O_CLOEXEC)).expect("F_SETFL");
        drop(sender);
        let uffd = Userfaultfd::from_owned_fd(fd, 0).expect("take over");
        assert_eq!(uffd.origin(), Origin::Received);
        let flags = fcntl(&uffd, FcntlArg::F_GETFL).expect("F_GETFL");
        assert!(OFlag::from_bits_retain(flags).contains(OFlag::O_NONBLOCK));
        std::thread::scope(|s| {
            // SAFETY: the page is ours; the read sleeps until the fault is resolved below.
            let reader = s.spawn(|| unsafe { std::ptr::read_volatile(region.as_ptr()) });
            assert!(uffd.wait_readable(Duration::from_secs(5)).expect("poll"));
            let (mut buf, mut events) = (Userfaultfd::event_buffer(1), Vec::new());
            uffd.read_events(&mut buf, &mut events).expect("read");
            assert!(matches!(events[..], [Event::Fault { addr, .. }] if addr == region.addr()));
            crate::place::copy(&uffd, region.addr(), &vec![9; page], true).expect("copy");
            assert_eq!(reader.join().expect("reader"), 9);
        });
    }

    #[test]
    fn a_descriptor_that_is_no_userfaultfd_is_refused() {
        let (read_end, _write_end) = nix::unistd::pipe().expect("pipe");
        match Userfaultfd::from_owned_fd(read_end, 0) {
            Err(UffdError::Adopt { detail, .. }) => assert!(detail.contains("pipe"), "{detail}"),
            other => panic!("a pipe was taken for a userfaultfd: {other:?}"),
        }
    }

    #[test]
    fn unknown_feature_is_refused() {
        // Bit 63 is not a feature on any kernel: UFFDIO_API must say EINVAL.
        match Userfaultfd::open(1 << 63) {
            Err(UffdError::Api { errno, .. }) => assert_eq!(errno, Errno::EINVAL),
            Err(err @ UffdError::Create { .. }) => uffd_testkit::skip(&err.to_string()),
            other => panic!("expected EINVAL, got {other:?}"),
        }
    }
}
