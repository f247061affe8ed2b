//! Small helpers shared by the examples: touching registered memory and running a piece of
//! code in a forked child. Not an example of its own (cargo builds only `examples/*.rs`).
#![allow(dead_code)] // each example uses a different subset

use anyhow::{bail, Context, Result};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};

/// The base page size (4 KiB on x86_64).
pub const PAGE: usize = 4096;

/// Reads one byte of registered memory. If the page is missing, the calling thread sleeps in
/// the kernel until a handler resolves the fault, exactly like any other access.
pub fn read_byte(addr: u64) -> u8 {
    // SAFETY: every caller passes an address inside a mapping it owns; a volatile read keeps
    // the access (and so the fault) where the program puts it.
    unsafe { std::ptr::read_volatile(addr as *const u8) }
}

/// Writes one byte of registered memory (a write fault if the page is missing).
pub fn write_byte(addr: u64, value: u8) {
    // SAFETY: as in `read_byte`; nothing else holds a reference into the mapping.
    unsafe { std::ptr::write_volatile(addr as *mut u8, value) }
}

/// A page whose every byte is `byte`.
pub fn page_of(byte: u8) -> Vec<u8> {
    vec![byte; PAGE]
}

/// How a forked child ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// It called `_exit(code)`.
    Exited(i32),
    /// A signal killed it.
    Killed(nix::sys::signal::Signal),
}

/// Runs `child` in a forked child process, which exits with the code it returns, and waits
/// for it. Call it while this process has one thread only (or make `child` use nothing but
/// async-signal-safe calls: memory accesses and `_exit`).
pub fn in_child(child: impl FnOnce() -> i32) -> Result<Ended> {
    // SAFETY: the child runs `child` and leaves with `_exit`, never returning into code that
    // could hold locks of threads the fork did not copy.
    match unsafe { fork() }.context("fork")? {
        ForkResult::Child => {
            let code = child();
            // SAFETY: `_exit` ends the child at once, without running the parent's atexit
            // handlers or destructors a second time.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => match waitpid(child, None).context("waitpid")? {
            WaitStatus::Exited(_, code) => Ok(Ended::Exited(code)),
            WaitStatus::Signaled(_, signal, _) => Ok(Ended::Killed(signal)),
            other => bail!("unexpected wait status {other:?}"),
        },
    }
}

/// Runs a handler thread's body. A handler that fails can never wake the threads sleeping on
/// its faults, so waiting for them would hang: the failure is printed and the process exits.
pub fn exit_on_error<T>(what: &str, body: impl FnOnce() -> Result<T>) -> T {
    match body() {
        Ok(value) => value,
        Err(err) => {
            eprintln!("Error: {what}: {err:#}");
            std::process::exit(1);
        }
    }
}

/// `std::thread::scope` for code that resolves the faults of the threads it spawns: if it
/// fails, those threads sleep forever and the scope would never end, so the failure is printed
/// and the process exits instead.
pub fn scope_or_exit<'env, T>(
    what: &str,
    body: impl for<'scope> FnOnce(&'scope std::thread::Scope<'scope, 'env>) -> Result<T>,
) -> T {
    std::thread::scope(|s| exit_on_error(what, || body(s)))
}

/// Waits up to 5 s for the next message on `uffd` and reads it (one message per read here;
/// `03_zero_wake_batch` shows reading many at once).
pub fn next_event(uffd: &uffd_core::Userfaultfd) -> Result<uffd_core::Event> {
    let waited = uffd.wait_readable(std::time::Duration::from_secs(5))?;
    anyhow::ensure!(waited, "no message on the userfaultfd within 5 s");
    let (mut buffer, mut events) = (uffd_core::Userfaultfd::event_buffer(1), Vec::new());
    uffd.read_events(&mut buffer, &mut events)?;
    events
        .pop()
        .context("poll said readable, but read(2) found no message")
}

/// Joins a scoped thread; a panic in it becomes an error.
pub fn join<T>(thread: std::thread::ScopedJoinHandle<'_, T>) -> Result<T> {
    thread
        .join()
        .map_err(|_| anyhow::anyhow!("a thread of the example panicked"))
}
