//! Step 10: failing fast. Two ways for an access to raise SIGBUS instead of waiting:
//! - UFFDIO_POISON marks a page lost (say, the source could not provide it): an access raises
//!   SIGBUS as for memory with a hardware error;
//! - UFFD_FEATURE_SIGBUS: a missing page raises SIGBUS (BUS_ADRERR) at once, without any
//!   message, for programs that prefer an error to a wait (`fault-client run --fail-fast`).
//!
//! Each access is made in a forked child, which this process watches die of SIGBUS. The child
//! sets up its own userfaultfd: a fork does not carry registrations into the child unless the
//! handler asked for FORK events.
//!
//! Run: `cargo run --release --example 10_poison_sigbus`

mod common;

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::{ensure, Context, Result};
use common::{in_child, page_of, read_byte, Ended, PAGE};
use nix::sys::signal::Signal;
use uffd_core::place::{self, Outcome};
use uffd_core::sys::feature;
use uffd_core::{Modes, Region, Userfaultfd};

/// Where the child's SIGBUS handler reports (the write end of a pipe).
static REPORT_FD: AtomicI32 = AtomicI32::new(-1);

fn main() -> Result<()> {
    let (code, addr, expected) = sigbus_in_child(poisoned_access)?;
    println!(
        "poison: child killed by SIGBUS, {}, at {addr:#x}",
        code_name(code)
    );
    // The kernel reports a poisoned page as a memory error (VM_FAULT_HWPOISON): BUS_MCEERR_AR
    // when built with CONFIG_MEMORY_FAILURE, the generic BUS_ADRERR otherwise.
    ensure!(
        code == libc::BUS_MCEERR_AR || code == libc::BUS_ADRERR,
        "unexpected si_code {code}"
    );
    ensure!(
        addr == expected,
        "SIGBUS at {addr:#x}, the access was at {expected:#x}"
    );
    let (code, addr, expected) = sigbus_in_child(missing_access_in_sigbus_mode)?;
    println!(
        "sigbus mode: child killed by SIGBUS, {}, at {addr:#x}",
        code_name(code)
    );
    ensure!(
        code == libc::BUS_ADRERR,
        "expected BUS_ADRERR ({})",
        libc::BUS_ADRERR
    );
    ensure!(
        addr == expected,
        "SIGBUS at {addr:#x}, the access was at {expected:#x}"
    );
    println!("ok: a poisoned page and a missing page in SIGBUS mode both failed fast");
    Ok(())
}

/// The child's part of the poison case: poison page 0, then touch it. Returns the address it
/// touches; only returns at all if no SIGBUS came.
fn poisoned_access() -> Result<u64> {
    let uffd = Userfaultfd::open(feature::POISON).context("open a userfaultfd with POISON")?;
    let region = Region::anonymous(PAGE)?;
    uffd.register(region.addr(), PAGE as u64, Modes::MISSING)?;
    let outcome = place::poison(&uffd, region.addr(), PAGE as u64, true)?;
    ensure!(
        outcome == Outcome::Placed(PAGE as u64),
        "UFFDIO_POISON: {outcome:?}"
    );
    report(region.addr());
    read_byte(region.addr());
    Ok(region.addr())
}

/// The child's part of the SIGBUS-mode case: no handler at all; a placed page reads fine,
/// a missing one raises SIGBUS.
fn missing_access_in_sigbus_mode() -> Result<u64> {
    let uffd = Userfaultfd::open(feature::SIGBUS).context("open a userfaultfd with SIGBUS")?;
    let region = Region::anonymous(2 * PAGE)?;
    uffd.register(region.addr(), region.len() as u64, Modes::MISSING)?;
    place::copy(&uffd, region.addr(), &page_of(b'p'), true)?;
    ensure!(
        read_byte(region.addr()) == b'p',
        "the placed page reads wrong"
    );
    let missing = region.addr() + PAGE as u64;
    report(missing);
    read_byte(missing);
    Ok(missing)
}

/// Runs `access` in a child with a SIGBUS reporter installed and checks the child died of
/// SIGBUS. Returns the signal's si_code and address, and the address the child touched.
fn sigbus_in_child(access: fn() -> Result<u64>) -> Result<(i32, u64, u64)> {
    let (read_end, write_end): (OwnedFd, OwnedFd) = nix::unistd::pipe().context("pipe")?;
    REPORT_FD.store(write_end.as_raw_fd(), Ordering::Relaxed);
    let ended = in_child(|| {
        if let Err(err) = install_reporter().and_then(|()| access()) {
            eprintln!("Error: child: {err:#}");
            return 2;
        }
        3 // the access returned: no SIGBUS
    })?;
    drop(write_end);
    ensure!(
        ended == Ended::Killed(Signal::SIGBUS),
        "the child was not killed by SIGBUS: {ended:?}"
    );
    let mut bytes = [0u8; 20];
    File::from(read_end)
        .read_exact(&mut bytes)
        .context("reading the child's report")?;
    let expected = u64::from_ne_bytes(bytes[..8].try_into()?);
    let code = i32::from_ne_bytes(bytes[8..12].try_into()?);
    let addr = u64::from_ne_bytes(bytes[12..].try_into()?);
    Ok((code, addr, expected))
}

/// Writes to the report pipe (async-signal-safe).
fn report_bytes(bytes: &[u8]) {
    // SAFETY: write(2) is async-signal-safe, and `bytes` lives for the call.
    unsafe {
        libc::write(
            REPORT_FD.load(Ordering::Relaxed),
            bytes.as_ptr().cast(),
            bytes.len(),
        )
    };
}

/// Reports the address the child is about to touch.
fn report(addr: u64) {
    report_bytes(&addr.to_ne_bytes());
}

/// SIGBUS handler: reports si_code and si_addr, then returns. SA_RESETHAND has restored the
/// default action, so the access faults again and the signal kills the child.
extern "C" fn on_sigbus(
    _signal: libc::c_int,
    info: *mut libc::siginfo_t,
    _context: *mut libc::c_void,
) {
    // SAFETY: with SA_SIGINFO the kernel passes a valid siginfo_t for this signal.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as u64) };
    let mut bytes = [0u8; 12];
    bytes[..4].copy_from_slice(&code.to_ne_bytes());
    bytes[4..].copy_from_slice(&addr.to_ne_bytes());
    report_bytes(&bytes);
}

fn install_reporter() -> Result<()> {
    // SAFETY: an all-zero sigaction is a valid "no flags, empty mask" value to fill in.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_sigbus as *const () as libc::sighandler_t;
    action.sa_flags = libc::SA_SIGINFO | libc::SA_RESETHAND;
    // SAFETY: `on_sigbus` only calls async-signal-safe functions; `action` is initialised.
    let ret = unsafe { libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) };
    ensure!(ret == 0, "sigaction: {}", std::io::Error::last_os_error());
    Ok(())
}

fn code_name(code: i32) -> String {
    match code {
        libc::BUS_ADRERR => "BUS_ADRERR".into(),
        libc::BUS_MCEERR_AR => "BUS_MCEERR_AR".into(),
        other => format!("si_code {other}"),
    }
}
