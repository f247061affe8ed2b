//! Step 6: handing a userfaultfd to another process over a Unix socket (SCM_RIGHTS).
//!
//! A userfaultfd belongs to the address space that created it, not to the process that holds
//! it: the faulting process (a VM, say) creates it, registers its memory, and passes the
//! descriptor to a separate handler process, which resolves the faults from outside. This is
//! how Firecracker and QEMU's external page-fault handlers are given their work.
//!
//! Here the handler is a child forked at the start, while the process has one thread. The
//! parent (the "application") sends it the descriptor, touches its pages, and asks how many
//! faults the child served.
//!
//! Run: `cargo run --release --example 06_handoff`

mod common;

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use anyhow::{bail, ensure, Context, Result};
use common::{page_of, read_byte, PAGE};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};
use uffd_core::place::{self, Outcome};
use uffd_core::{Event, Modes, Region, Userfaultfd};

const PAGES: usize = 4;

fn main() -> Result<()> {
    let (parent_end, child_end) = UnixStream::pair().context("socketpair")?;
    // SAFETY: no thread has been started yet, so the child is a complete copy of this process.
    let child = match unsafe { fork() }.context("fork")? {
        ForkResult::Child => {
            drop(parent_end);
            let code = match handler(child_end) {
                Ok(()) => 0,
                Err(err) => {
                    eprintln!("Error: handler process: {err:#}");
                    1
                }
            };
            std::process::exit(code);
        }
        ForkResult::Parent { child } => child,
    };
    drop(child_end);
    let mut sock = parent_end;

    // The application: create the descriptor and register the memory it is for...
    let uffd = Userfaultfd::open(0).context("open a userfaultfd (run 01_probe for the fixes)")?;
    let region = Region::anonymous(PAGES * PAGE).context("mmap")?;
    uffd.register(region.addr(), region.len() as u64, Modes::MISSING)
        .context("UFFDIO_REGISTER")?;
    // ...then pass it on in an SCM_RIGHTS message. The receiver cannot ask the kernel which
    // features were negotiated (UFFDIO_API answers once per descriptor), so the message's
    // data says: they decide what the fault messages carry.
    let fds = [uffd.raw_fd()];
    let features = uffd.features().to_le_bytes();
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(&features)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .context("sendmsg(SCM_RIGHTS)")?;
    println!(
        "application: sent userfaultfd {} to handler process {child}",
        uffd.raw_fd()
    );
    // The application keeps no copy. Should the handler die, the last reference closes, the
    // range falls back to ordinary zero-filled pages, and the content checks below fail
    // instead of this process hanging on a fault nobody will answer.
    drop(uffd);

    // Page 0 holds 'a', page 1 'b', ...
    for (page, letter) in (0..PAGES).zip(b'a'..) {
        let byte = read_byte(region.addr() + (page * PAGE) as u64);
        println!("application: page {page} reads '{}'", char::from(byte));
        ensure!(byte == letter, "page {page} has the wrong content");
    }
    // Done: the handler answers the end of the stream with its fault count.
    sock.shutdown(Shutdown::Write).context("shutdown")?;
    let mut count = [0u8; 4];
    sock.read_exact(&mut count)
        .context("reading the handler's count")?;
    let served = u32::from_le_bytes(count) as usize;
    let status = waitpid(child, None).context("waitpid")?;
    ensure!(
        status == WaitStatus::Exited(child, 0),
        "handler process: {status:?}"
    );
    ensure!(
        served == PAGES,
        "the handler served {served} faults, expected {PAGES}"
    );
    println!("ok: another process resolved all {served} faults through the passed descriptor");
    Ok(())
}

/// The handler process: receives the descriptor, then serves faults until the socket closes.
fn handler(mut sock: UnixStream) -> Result<()> {
    let (fd, features) = receive_fd(&sock)?;
    let uffd = Userfaultfd::from_owned_fd(fd, features).context("taking over the descriptor")?;
    println!("handler: received descriptor {}", uffd.raw_fd());
    let (mut buffer, mut events) = (Userfaultfd::event_buffer(PAGES), Vec::new());
    let mut served = 0u32;
    loop {
        let mut fds = [
            PollFd::new(uffd.as_fd(), PollFlags::POLLIN),
            PollFd::new(sock.as_fd(), PollFlags::POLLIN),
        ];
        poll(&mut fds, PollTimeout::from(5000u16)).context("poll")?;
        let uffd_ready = fds[0].any().unwrap_or(false);
        if fds[1].any().unwrap_or(false) {
            break; // end of stream: the application is done
        }
        if !uffd_ready {
            bail!("nothing happened for 5 s");
        }
        // From here on the descriptor is served exactly as in the process that created it.
        uffd.read_events(&mut buffer, &mut events)?;
        for event in events.drain(..) {
            let Event::Fault { addr, .. } = event else {
                bail!("unexpected event {event:?}");
            };
            // The n-th fault gets the n-th letter: the application touches the pages in order.
            let content = page_of(b'a' + u8::try_from(served)?);
            let outcome = place::copy(&uffd, addr, &content, true)?;
            ensure!(outcome == Outcome::Placed(PAGE as u64), "COPY: {outcome:?}");
            served += 1;
            println!(
                "handler: fault at {addr:#x} -> UFFDIO_COPY '{}'",
                char::from(content[0])
            );
        }
    }
    sock.write_all(&served.to_le_bytes())
        .context("sending the count")?;
    Ok(())
}

/// Receives one descriptor sent with SCM_RIGHTS, and the feature bits sent with it.
fn receive_fd(sock: &UnixStream) -> Result<(OwnedFd, u64)> {
    let mut features = [0u8; 8];
    let mut iov = [IoSliceMut::new(&mut features)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .context("recvmsg")?;
    let (bytes, mut received) = (msg.bytes, None);
    for cmsg in msg.cmsgs().context("control messages")? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            received = fds.first().copied();
        }
    }
    let fd = received.context("no descriptor in the message")?;
    // SAFETY: the kernel installed this descriptor for us; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    ensure!(bytes == features.len(), "short message: {bytes} bytes");
    Ok((fd, u64::from_le_bytes(features)))
}
