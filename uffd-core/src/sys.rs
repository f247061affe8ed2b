//! The raw userfaultfd ioctls: the only place in the workspace that talks to the kernel's
//! `ioctl(2)` interface directly.
//!
//! The `userfaultfd` crate registers ranges and decodes messages. The
//! placement ioctls live here instead because the crate lacks `UFFDIO_MOVE` and `UFFDIO_POISON`
//! and reports a kernel `EAGAIN` from `UFFDIO_COPY` as `PartiallyCopied(huge number)` (the
//! kernel writes `-EAGAIN` into the `copy` field). Each wrapper returns the raw kernel answer:
//! the `errno` and the progress field, so that [`crate::place`] can turn them into outcomes.
//!
//! Layouts follow `include/uapi/linux/userfaultfd.h` (Linux 6.8 for MOVE, 6.6 for POISON).
//!
//! Two ioctls on other files live here too, so that this stays the only place:
//! USERFAULTFD_IOC_NEW on `/dev/userfaultfd`, which creates a descriptor (with flags the crate
//! does not offer, such as `UFFD_USER_MODE_ONLY`), and `PAGEMAP_SCAN` on `/proc/<pid>/pagemap`
//! (`include/uapi/linux/fs.h`, Linux 6.7), which reads what the kernel recorded for a range of
//! pages (present, huge, written since write-protected...) and, for async write-protect, arms
//! the protection again; [`crate::pagemap`] wraps it.

use std::os::fd::RawFd;

use nix::errno::Errno;
use userfaultfd_sys as uapi;

/// The ioctl "type" byte of every userfaultfd ioctl.
const UFFDIO: u8 = 0xAA;

pub use uapi::{
    uffdio_api, uffdio_continue, uffdio_copy, uffdio_range, uffdio_writeprotect, uffdio_zeropage,
};

/// `struct uffdio_move` (Linux 6.8). Not in the bindings generated from older headers.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct uffdio_move {
    /// Destination address (in the registered range).
    pub dst: u64,
    /// Source address (private anonymous memory of the same mm).
    pub src: u64,
    /// Length in bytes, a multiple of the page size.
    pub len: u64,
    /// `UFFDIO_MOVE_MODE_*` bits.
    pub mode: u64,
    /// Out: bytes moved, or a negative errno.
    pub move_: i64,
}

/// `struct uffdio_poison` (Linux 6.6).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct uffdio_poison {
    /// The range to mark poisoned.
    pub range: uffdio_range,
    /// `UFFDIO_POISON_MODE_*` bits.
    pub mode: u64,
    /// Out: bytes poisoned, or a negative errno.
    pub updated: i64,
}

/// `struct page_region` (include/uapi/linux/fs.h, Linux 6.7): a run of pages that share the
/// categories PAGEMAP_SCAN reports.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct page_region {
    /// Start of the run.
    pub start: u64,
    /// End of the run (exclusive).
    pub end: u64,
    /// `PAGE_IS_*` bits of the run (only those asked for in `return_mask`).
    pub categories: u64,
}

/// `struct pm_scan_arg` (include/uapi/linux/fs.h, Linux 6.7).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct pm_scan_arg {
    /// `size_of::<pm_scan_arg>()`: the version of the structure.
    pub size: u64,
    /// `PM_SCAN_*` bits.
    pub flags: u64,
    /// Start of the range to walk.
    pub start: u64,
    /// End of the range (exclusive).
    pub end: u64,
    /// Out: where the walk stopped (`end` when it covered the whole range).
    pub walk_end: u64,
    /// Address of the `page_region` array the kernel fills.
    pub vec: u64,
    /// Entries in that array.
    pub vec_len: u64,
    /// Stop after reporting this many pages (0: no limit).
    pub max_pages: u64,
    /// Categories that match when clear rather than set.
    pub category_inverted: u64,
    /// A page is reported only if it matches all of these...
    pub category_mask: u64,
    /// ...and at least one of these (0: no such condition).
    pub category_anyof_mask: u64,
    /// Categories written into each reported run.
    pub return_mask: u64,
}

const _: () = assert!(std::mem::size_of::<uffdio_move>() == 40);
const _: () = assert!(std::mem::size_of::<uffdio_poison>() == 32);
const _: () = assert!(std::mem::size_of::<page_region>() == 24);
const _: () = assert!(std::mem::size_of::<pm_scan_arg>() == 96);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_codes_match_the_uapi_header() {
        // The values KERNEL-NOTES lists, from include/uapi/linux/userfaultfd.h.
        assert_eq!(nix::request_code_readwrite!(UFFDIO, 0x3F, 24), 0xC018_AA3F);
        assert_eq!(nix::request_code_readwrite!(UFFDIO, 0x03, 40), 0xC028_AA03);
        assert_eq!(nix::request_code_readwrite!(UFFDIO, 0x04, 32), 0xC020_AA04);
        assert_eq!(nix::request_code_readwrite!(UFFDIO, 0x05, 40), 0xC028_AA05);
        assert_eq!(nix::request_code_readwrite!(UFFDIO, 0x07, 32), 0xC020_AA07);
        assert_eq!(nix::request_code_readwrite!(UFFDIO, 0x08, 32), 0xC020_AA08);
        assert_eq!(nix::request_code_read!(UFFDIO, 0x02, 16), 0x8010_AA02);
        // USERFAULTFD_IOC_NEW on /dev/userfaultfd: _IO(0xAA, 0x00).
        assert_eq!(nix::request_code_none!(UFFDIO, 0x00), 0xAA00);
        // PAGEMAP_SCAN: _IOWR('f', 16, struct pm_scan_arg) in include/uapi/linux/fs.h.
        assert_eq!(nix::request_code_readwrite!(b'f', 16, 96), 0xC060_6610);
    }

    #[test]
    fn wake_is_accepted() {
        let uffd = match crate::Userfaultfd::open(0) {
            Ok(u) => u,
            Err(err) => return uffd_testkit::skip(&err.to_string()),
        };
        let region = crate::Region::anonymous(4096).expect("mmap");
        uffd.register(region.addr(), 4096, crate::Modes::MISSING)
            .expect("register");
        // Nobody waits: a wake is a no-op, but the kernel must accept the request.
        wake(uffd.raw_fd(), region.addr(), 4096).expect("UFFDIO_WAKE");
    }
}

/// `UFFD_USER_MODE_ONLY`, a creation flag (of the syscall and of USERFAULTFD_IOC_NEW): handle
/// only faults of user-mode accesses.
pub const USER_MODE_ONLY: i32 = 1;

/// Do not wake the threads waiting on the range (COPY, ZEROPAGE, CONTINUE, MOVE, POISON).
pub const MODE_DONTWAKE: u64 = 1;
/// `UFFDIO_COPY_MODE_WP`: map the copied page write-protected.
pub const COPY_MODE_WP: u64 = 1 << 1;
/// `UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES`: skip holes in the source instead of failing with ENOENT.
pub const MOVE_MODE_ALLOW_SRC_HOLES: u64 = 1 << 1;

/// `UFFD_FEATURE_*` bits newer than the bindings.
pub mod feature {
    /// Report write-protect faults (`UFFD_FEATURE_PAGEFAULT_FLAG_WP`).
    pub const PAGEFAULT_FLAG_WP: u64 = 1 << 0;
    /// `UFFD_EVENT_FORK`.
    pub const EVENT_FORK: u64 = 1 << 1;
    /// `UFFD_EVENT_REMAP`.
    pub const EVENT_REMAP: u64 = 1 << 2;
    /// `UFFD_EVENT_REMOVE`.
    pub const EVENT_REMOVE: u64 = 1 << 3;
    /// MISSING faults on hugetlbfs.
    pub const MISSING_HUGETLBFS: u64 = 1 << 4;
    /// MISSING faults on shmem.
    pub const MISSING_SHMEM: u64 = 1 << 5;
    /// `UFFD_EVENT_UNMAP`.
    pub const EVENT_UNMAP: u64 = 1 << 6;
    /// Faults raise SIGBUS instead of waiting.
    pub const SIGBUS: u64 = 1 << 7;
    /// Fault messages carry the faulting thread id.
    pub const THREAD_ID: u64 = 1 << 8;
    /// MINOR faults on hugetlbfs.
    pub const MINOR_HUGETLBFS: u64 = 1 << 9;
    /// MINOR faults on shmem.
    pub const MINOR_SHMEM: u64 = 1 << 10;
    /// Fault addresses are not page-masked.
    pub const EXACT_ADDRESS: u64 = 1 << 11;
    /// WP on hugetlbfs and shmem.
    pub const WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
    /// WP markers on unpopulated ptes.
    pub const WP_UNPOPULATED: u64 = 1 << 13;
    /// `UFFDIO_POISON`.
    pub const POISON: u64 = 1 << 14;
    /// Asynchronous write-protect tracking.
    pub const WP_ASYNC: u64 = 1 << 15;
    /// `UFFDIO_MOVE`.
    pub const MOVE: u64 = 1 << 16;

    /// Every feature name with its bit, in bit order.
    pub const NAMES: [(&str, u64); 17] = [
        ("PAGEFAULT_FLAG_WP", PAGEFAULT_FLAG_WP),
        ("EVENT_FORK", EVENT_FORK),
        ("EVENT_REMAP", EVENT_REMAP),
        ("EVENT_REMOVE", EVENT_REMOVE),
        ("MISSING_HUGETLBFS", MISSING_HUGETLBFS),
        ("MISSING_SHMEM", MISSING_SHMEM),
        ("EVENT_UNMAP", EVENT_UNMAP),
        ("SIGBUS", SIGBUS),
        ("THREAD_ID", THREAD_ID),
        ("MINOR_HUGETLBFS", MINOR_HUGETLBFS),
        ("MINOR_SHMEM", MINOR_SHMEM),
        ("EXACT_ADDRESS", EXACT_ADDRESS),
        ("WP_HUGETLBFS_SHMEM", WP_HUGETLBFS_SHMEM),
        ("WP_UNPOPULATED", WP_UNPOPULATED),
        ("POISON", POISON),
        ("WP_ASYNC", WP_ASYNC),
        ("MOVE", MOVE),
    ];
}

/// Bits of the `ioctls` mask returned by UFFDIO_API and UFFDIO_REGISTER (`1 << _UFFDIO_*`).
pub mod ioctl_bit {
    /// `_UFFDIO_REGISTER`.
    pub const REGISTER: u64 = 1 << 0x00;
    /// `_UFFDIO_UNREGISTER`.
    pub const UNREGISTER: u64 = 1 << 0x01;
    /// `_UFFDIO_WAKE`.
    pub const WAKE: u64 = 1 << 0x02;
    /// `_UFFDIO_COPY`.
    pub const COPY: u64 = 1 << 0x03;
    /// `_UFFDIO_ZEROPAGE`.
    pub const ZEROPAGE: u64 = 1 << 0x04;
    /// `_UFFDIO_MOVE`.
    pub const MOVE: u64 = 1 << 0x05;
    /// `_UFFDIO_WRITEPROTECT`.
    pub const WRITEPROTECT: u64 = 1 << 0x06;
    /// `_UFFDIO_CONTINUE`.
    pub const CONTINUE: u64 = 1 << 0x07;
    /// `_UFFDIO_POISON`.
    pub const POISON: u64 = 1 << 0x08;
    /// `_UFFDIO_API`.
    pub const API: u64 = 1 << 0x3F;

    /// Every ioctl name with its bit.
    pub const NAMES: [(&str, u64); 10] = [
        ("REGISTER", REGISTER),
        ("UNREGISTER", UNREGISTER),
        ("WAKE", WAKE),
        ("COPY", COPY),
        ("ZEROPAGE", ZEROPAGE),
        ("MOVE", MOVE),
        ("WRITEPROTECT", WRITEPROTECT),
        ("CONTINUE", CONTINUE),
        ("POISON", POISON),
        ("API", API),
    ];
}

mod ioctls {
    use super::*;
    nix::ioctl_readwrite!(api, UFFDIO, 0x3F, uffdio_api);
    nix::ioctl_readwrite!(copy, UFFDIO, 0x03, uffdio_copy);
    nix::ioctl_readwrite!(zeropage, UFFDIO, 0x04, uffdio_zeropage);
    nix::ioctl_readwrite!(move_, UFFDIO, 0x05, uffdio_move);
    nix::ioctl_readwrite!(continue_, UFFDIO, 0x07, uffdio_continue);
    nix::ioctl_readwrite!(poison, UFFDIO, 0x08, uffdio_poison);
    nix::ioctl_readwrite!(writeprotect, UFFDIO, 0x06, uffdio_writeprotect);
    // UFFDIO_WAKE is declared _IOR in the uapi header (0x8010AA02), although the kernel
    // only reads the range: the direction bits must match or the ioctl is EINVAL.
    nix::ioctl_read!(wake, UFFDIO, 0x02, uffdio_range);
    nix::ioctl_readwrite!(pagemap_scan, b'f', 16, pm_scan_arg);
    // USERFAULTFD_IOC_NEW is `_IO(0xAA, 0x00)`: no argument structure, the open flags are
    // passed as the integer argument itself.
    nix::ioctl_write_int_bad!(ioc_new, nix::request_code_none!(UFFDIO, 0x00));
}

/// The answer of a range ioctl: the kernel's errno (if any) and its progress field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeAnswer {
    /// `Err(errno)` when the ioctl itself failed.
    pub result: Result<(), Errno>,
    /// The progress field: bytes done, or a negative errno written by the kernel.
    pub progress: i64,
}

/// USERFAULTFD_IOC_NEW (Linux 6.1) on `dev`, an open `/dev/userfaultfd`: a new userfaultfd
/// created with `flags` (`O_CLOEXEC`, `O_NONBLOCK`, [`USER_MODE_ONLY`]), which the caller owns.
pub fn ioc_new(dev: RawFd, flags: i32) -> Result<RawFd, Errno> {
    // SAFETY: the request takes the flags as a plain integer argument (no memory is passed)
    // and returns a new descriptor or an error.
    unsafe { ioctls::ioc_new(dev, flags) }
}

/// UFFDIO_API: handshake on a new descriptor, asking for `features`. Returns the structure
/// the kernel filled in (features and ioctls it supports).
pub fn api(fd: RawFd, features: u64) -> Result<uffdio_api, Errno> {
    let mut arg = uffdio_api {
        api: uapi::UFFD_API,
        features,
        ioctls: 0,
    };
    // SAFETY: `arg` is a valid, exclusively borrowed `uffdio_api` that lives for the call; the
    // kernel reads and writes only that structure.
    unsafe { ioctls::api(fd, &mut arg) }?;
    Ok(arg)
}

/// UFFDIO_COPY: copy `len` bytes from `src` into the registered range at `dst`.
///
/// # Safety
/// `src..src+len` must be readable memory of this process. `dst` is only checked by the
/// kernel (it must lie in a range registered on `fd`), so it needs no promise from the caller.
pub unsafe fn copy(fd: RawFd, dst: u64, src: *const u8, len: u64, mode: u64) -> RangeAnswer {
    let mut arg = uffdio_copy {
        dst,
        src: src as u64,
        len,
        mode,
        copy: 0,
    };
    // SAFETY: `arg` is a valid `uffdio_copy`; the caller promised `src` is readable for `len`.
    let result = unsafe { ioctls::copy(fd, &mut arg) }.map(drop);
    RangeAnswer {
        result,
        progress: arg.copy,
    }
}

/// UFFDIO_ZEROPAGE: map the zero page (read-only until written) over a registered range.
pub fn zeropage(fd: RawFd, start: u64, len: u64, mode: u64) -> RangeAnswer {
    let mut arg = uffdio_zeropage {
        range: uffdio_range { start, len },
        mode,
        zeropage: 0,
    };
    // SAFETY: `arg` is a valid `uffdio_zeropage`; the kernel validates the range itself.
    let result = unsafe { ioctls::zeropage(fd, &mut arg) }.map(drop);
    RangeAnswer {
        result,
        progress: arg.zeropage,
    }
}

/// UFFDIO_CONTINUE: map pages already in the page cache (shmem, hugetlbfs) into a range
/// registered for MINOR faults.
pub fn continue_(fd: RawFd, start: u64, len: u64, mode: u64) -> RangeAnswer {
    let mut arg = uffdio_continue {
        range: uffdio_range { start, len },
        mode,
        mapped: 0,
    };
    // SAFETY: `arg` is a valid `uffdio_continue`; the kernel validates the range itself.
    let result = unsafe { ioctls::continue_(fd, &mut arg) }.map(drop);
    RangeAnswer {
        result,
        progress: arg.mapped,
    }
}

/// UFFDIO_MOVE: move the pages at `src` (private anonymous memory of this process) to `dst`
/// in the registered range, without copying. A 2M-aligned move of a PMD-mapped THP into an
/// empty PMD moves the whole huge page.
///
/// # Safety
/// The pages at `src..src+len` disappear from the source mapping: no live Rust reference may
/// point into that range.
pub unsafe fn move_(fd: RawFd, dst: u64, src: u64, len: u64, mode: u64) -> RangeAnswer {
    let mut arg = uffdio_move {
        dst,
        src,
        len,
        mode,
        move_: 0,
    };
    // SAFETY: `arg` is a valid `uffdio_move`; the caller promised nothing borrows the source.
    let result = unsafe { ioctls::move_(fd, &mut arg) }.map(drop);
    RangeAnswer {
        result,
        progress: arg.move_,
    }
}

/// UFFDIO_POISON: mark a range so that accesses raise SIGBUS, as if the memory were lost.
pub fn poison(fd: RawFd, start: u64, len: u64, mode: u64) -> RangeAnswer {
    let mut arg = uffdio_poison {
        range: uffdio_range { start, len },
        mode,
        updated: 0,
    };
    // SAFETY: `arg` is a valid `uffdio_poison`; the kernel validates the range itself.
    let result = unsafe { ioctls::poison(fd, &mut arg) }.map(drop);
    RangeAnswer {
        result,
        progress: arg.updated,
    }
}

/// UFFDIO_WRITEPROTECT: set (`mode` `UFFDIO_WRITEPROTECT_MODE_WP`) or clear (mode 0) write
/// protection on a range registered for WP faults.
pub fn writeprotect(fd: RawFd, start: u64, len: u64, mode: u64) -> Result<(), Errno> {
    let mut arg = uffdio_writeprotect {
        range: uffdio_range { start, len },
        mode,
    };
    // SAFETY: `arg` is a valid `uffdio_writeprotect`; the kernel validates the range itself.
    unsafe { ioctls::writeprotect(fd, &mut arg) }.map(drop)
}

/// UFFDIO_WAKE: wake the threads waiting on faults in a range.
pub fn wake(fd: RawFd, start: u64, len: u64) -> Result<(), Errno> {
    let mut arg = uffdio_range { start, len };
    // SAFETY: `arg` is a valid `uffdio_range` that the kernel only reads.
    unsafe { ioctls::wake(fd, &mut arg) }.map(drop)
}

/// PAGEMAP_SCAN on `fd`, an open `/proc/<pid>/pagemap`: walks `arg.start..arg.end` as `arg`
/// asks, writes the runs found into `out` and returns how many it wrote. The walk stops early
/// when `out` is full (or `max_pages` is reached): `arg.walk_end` says where. `size`, `vec` and
/// `vec_len` are set here from `out`.
pub fn pagemap_scan(
    fd: RawFd,
    arg: &mut pm_scan_arg,
    out: &mut [page_region],
) -> Result<usize, Errno> {
    arg.size = std::mem::size_of::<pm_scan_arg>() as u64;
    arg.vec = out.as_mut_ptr() as u64;
    arg.vec_len = out.len() as u64;
    // SAFETY: `arg` is a valid `pm_scan_arg` whose `vec` points to `out`, exclusively borrowed
    // and writable for `vec_len` entries for the whole call; the kernel writes only `arg` and
    // those entries (it walks page tables, it never changes page content).
    let filled = unsafe { ioctls::pagemap_scan(fd, arg) }?;
    Ok(usize::try_from(filled).unwrap_or(0).min(out.len()))
}
