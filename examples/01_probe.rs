//! Step 1 of the ladder: what this kernel and this process allow.
//!
//! A userfaultfd comes through one of two doors: `/dev/userfaultfd` (Linux 6.1; access by the
//! file's permissions) or the `userfaultfd(2)` syscall (needs CAP_SYS_PTRACE unless
//! `vm.unprivileged_userfaultfd=1`, or the `UFFD_USER_MODE_ONLY` flag, which only handles faults
//! of user-mode accesses). Then UFFDIO_API negotiates features, once per descriptor: the kernel
//! answers with every feature and ioctl it supports.
//!
//! Run: `cargo run --release --example 01_probe`

use anyhow::{bail, ensure, Context, Result};
use nix::errno::Errno;
use uffd_core::probe::names;
use uffd_core::sys::{self, feature, ioctl_bit};
use uffd_core::uffd::{OpenOptions, Origin};
use uffd_core::Userfaultfd;

fn main() -> Result<()> {
    let p = uffd_core::probe();
    println!(
        "kernel {}, page size {}, euid {}",
        p.kernel, p.page_size, p.euid
    );
    println!("/dev/userfaultfd exists: {}", p.device_exists);
    match p.unprivileged_userfaultfd {
        Some(v) => println!("vm.unprivileged_userfaultfd = {v}"),
        None => println!("vm.unprivileged_userfaultfd: no such sysctl"),
    }
    println!("CAP_SYS_PTRACE: {}", p.cap_sys_ptrace);
    let how = match &p.open {
        Ok(how) => *how,
        Err(why) => {
            // The error names every fix: root, access to the device, the capability, the sysctl.
            bail!("no userfaultfd for this process: {why}");
        }
    };
    println!("opened a userfaultfd through: {how}");
    println!(
        "features ({:#x}): {}",
        p.features,
        p.feature_names.join(" ")
    );
    println!("ioctls after UFFDIO_API: {}", p.ioctl_names.join(" "));
    ensure!(
        p.ioctls & (ioctl_bit::API | ioctl_bit::REGISTER | ioctl_bit::UNREGISTER)
            == ioctl_bit::API | ioctl_bit::REGISTER | ioctl_bit::UNREGISTER,
        "UFFDIO_API did not offer API, REGISTER and UNREGISTER"
    );

    // The syscall door alone, with UFFD_USER_MODE_ONLY: the one kind of descriptor an
    // unprivileged process may still create when vm.unprivileged_userfaultfd is 0. It handles
    // only faults of user-mode accesses; a kernel-mode access (say `read(2)` into the range)
    // fails with EFAULT instead.
    let user_mode_only = OpenOptions {
        user_mode_only: true,
        door: Some(Origin::Syscall),
    };
    match Userfaultfd::open_with(0, user_mode_only) {
        Ok(uffd) => {
            println!(
                "userfaultfd(UFFD_USER_MODE_ONLY): ok, same features: {}",
                uffd.available_features() == p.features
            );
            ensure!(
                uffd.available_features() == p.features,
                "the user-mode-only descriptor offers other features"
            );
        }
        // The error names the fixes: CAP_SYS_PTRACE, the sysctl, or /dev/userfaultfd.
        Err(err) => println!("userfaultfd(UFFD_USER_MODE_ONLY): {err}"),
    }

    // UFFDIO_API is accepted once per descriptor: a second handshake is EINVAL. This is why
    // features are probed on a throw-away descriptor (uffd_core::probe::available_features).
    let uffd = Userfaultfd::open(0).context("open a userfaultfd")?;
    let again = sys::api(uffd.raw_fd(), 0);
    println!("second UFFDIO_API on one descriptor: {again:?}");
    ensure!(
        again.err() == Some(Errno::EINVAL),
        "a second UFFDIO_API was not EINVAL: {again:?}"
    );

    // What each later step needs, and whether this kernel has it.
    let needs = [
        (
            "02-06 MISSING faults, events",
            feature::EVENT_FORK | feature::EVENT_REMOVE,
        ),
        (
            "07 hugetlbfs MISSING + MINOR",
            feature::MISSING_HUGETLBFS | feature::MINOR_HUGETLBFS,
        ),
        ("08 UFFDIO_MOVE (Linux 6.8)", feature::MOVE),
        (
            "09 write-protect, async WP",
            feature::PAGEFAULT_FLAG_WP | feature::WP_ASYNC,
        ),
        ("10 POISON, SIGBUS mode", feature::POISON | feature::SIGBUS),
    ];
    for (step, bits) in needs {
        let missing = names(bits & !p.features, &feature::NAMES);
        if missing.is_empty() {
            println!("step {step}: available");
        } else {
            println!("step {step}: this kernel lacks {}", missing.join(" "));
        }
    }
    for pool in &p.huge_pools {
        println!(
            "hugetlb pool {} KiB: {} pages, {} free, {} reserved",
            pool.size / 1024,
            pool.total,
            pool.free,
            pool.reserved
        );
    }
    println!(
        "THP enabled: {}, defrag: {}",
        p.thp_enabled.as_deref().unwrap_or("absent"),
        p.thp_defrag.as_deref().unwrap_or("absent")
    );
    println!("ok: a userfaultfd is available ({how})");
    Ok(())
}
