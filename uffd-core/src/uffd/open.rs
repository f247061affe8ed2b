//! Opening a userfaultfd: the two doors (`/dev/userfaultfd`, the syscall), the UFFDIO_API
//! handshake, and taking over a descriptor another process handed over.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use userfaultfd::Uffd;

use super::{Result, UffdError, Userfaultfd};
use crate::sys;

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

/// The features this kernel supports, from a throw-away descriptor opened with none: the
/// kernel answers UFFDIO_API once per descriptor, so one that negotiated cannot be asked again.
pub fn available_features() -> Option<u64> {
    Userfaultfd::open(0).ok().map(|u| u.available_features())
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
    use std::os::fd::AsFd;
    use std::time::Duration;

    use super::*;
    use crate::convert::u64_from;
    use crate::uffd::{Event, Modes};

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
