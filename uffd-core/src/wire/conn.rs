//! [`Conn`]: a connected stream, TCP or Unix, and its socket options: liveness (keepalive and
//! `TCP_USER_TIMEOUT`), the receive-window clamp and the pacing rate.

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// A connected stream, TCP or Unix.
#[derive(Debug)]
pub enum Conn {
    /// TCP (with `TCP_NODELAY`: requests and answers are small and must not wait).
    Tcp(TcpStream),
    /// Unix stream socket.
    Unix(UnixStream),
}

impl Conn {
    /// A second handle on the same connection (one thread reads, another writes).
    pub fn try_clone(&self) -> io::Result<Conn> {
        match self {
            Conn::Tcp(s) => s.try_clone().map(Conn::Tcp),
            Conn::Unix(s) => s.try_clone().map(Conn::Unix),
        }
    }

    /// Shuts down both directions: wakes any thread blocked reading it.
    pub fn shutdown(&self) {
        let _ = match self {
            Conn::Tcp(s) => s.shutdown(Shutdown::Both),
            Conn::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }

    /// Makes the kernel give up on a peer that stopped answering at the TCP level (a link
    /// gone silent, a host powered off: no RST, no FIN) within about `timeout`, instead of
    /// the ~15 minutes of retransmissions TCP allows by default:
    /// - `TCP_USER_TIMEOUT`: data sent and not acknowledged for `timeout` fails the
    ///   connection (ETIMEDOUT in the next read or write);
    /// - keepalive (`SO_KEEPALIVE`, first probe after a third of `timeout` of silence, then
    ///   every sixth): an idle connection is probed, so a dead peer is found even when nothing
    ///   is being sent (with `TCP_USER_TIMEOUT` set, the kernel drops the connection once the
    ///   peer has been silent for `timeout` and a probe went unanswered).
    ///
    /// A peer whose kernel still answers (a stopped process, a full receive buffer) keeps the
    /// connection: finding that needs an application-level check. Unix sockets: nothing to do.
    pub fn set_liveness(&self, timeout: Duration) -> io::Result<()> {
        let secs =
            |d: Duration| libc::c_int::try_from(d.as_secs().max(1)).unwrap_or(libc::c_int::MAX);
        let millis = libc::c_uint::try_from(timeout.as_millis()).unwrap_or(libc::c_uint::MAX);
        self.set_int_option(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
        self.set_int_option(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, secs(timeout / 3))?;
        self.set_int_option(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, secs(timeout / 6))?;
        // Without TCP_USER_TIMEOUT this count would decide; with it, the timeout does.
        self.set_int_option(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 6)?;
        self.set_option(libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, millis)
    }

    /// The peer's IP address (None for Unix sockets).
    pub fn peer_ip(&self) -> Option<std::net::IpAddr> {
        match self {
            Conn::Tcp(s) => s.peer_addr().ok().map(|a| a.ip()),
            Conn::Unix(_) => None,
        }
    }

    /// Switches the connection to non-blocking (or back).
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.set_nonblocking(on),
            Conn::Unix(s) => s.set_nonblocking(on),
        }
    }

    /// Caps the receive window this end advertises, so the peer has at most about `bytes`
    /// unacknowledged on this connection. On a bottleneck with one FIFO queue this bounds
    /// what a bulk connection keeps queued there in front of other connections' packets;
    /// below the path's bandwidth-delay product it costs throughput. Two options:
    /// `SO_RCVBUF` (which also stops the kernel's receive-buffer autotuning — autotuning
    /// would otherwise raise the clamp again as the connection speeds up) and
    /// `TCP_WINDOW_CLAMP`. Unix sockets have no window: nothing to do.
    pub fn clamp_receive_window(&self, bytes: u32) -> io::Result<()> {
        let value = libc::c_int::try_from(bytes)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "window too large"))?;
        self.set_int_option(libc::SOL_SOCKET, libc::SO_RCVBUF, value)?;
        self.set_int_option(libc::IPPROTO_TCP, libc::TCP_WINDOW_CLAMP, value)
    }

    /// Caps the rate at which the kernel sends on this connection (`SO_MAX_PACING_RATE`,
    /// bytes per second; TCP paces itself when the qdisc does not). On a bottleneck with one
    /// FIFO queue, a bulk connection sent a little below the bottleneck's rate keeps no
    /// standing queue there, so other connections' packets do not wait behind it (the idea
    /// of QEMU's `max-postcopy-bandwidth`). Unix sockets: nothing to do.
    pub fn set_pacing_rate(&self, bytes_per_second: u64) -> io::Result<()> {
        // The kernel reads a 64-bit rate when given 8 bytes (an `int` caps it at 4 GB/s).
        self.set_option(libc::SOL_SOCKET, libc::SO_MAX_PACING_RATE, bytes_per_second)
    }

    /// `setsockopt(2)` of an `int` option (`level`, `name`) on a TCP connection; Unix sockets
    /// are left alone (the options used here are TCP and IP ones).
    pub fn set_int_option(
        &self,
        level: libc::c_int,
        name: libc::c_int,
        value: libc::c_int,
    ) -> io::Result<()> {
        self.set_option(level, name, value)
    }

    /// `setsockopt(2)` of a plain value on a TCP connection (Unix sockets are left alone).
    fn set_option<T: Copy>(
        &self,
        level: libc::c_int,
        name: libc::c_int,
        value: T,
    ) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let Conn::Tcp(stream) = self else {
            return Ok(());
        };
        let len = libc::socklen_t::try_from(std::mem::size_of::<T>())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "option too large"))?;
        // SAFETY: the fd is the live socket `stream` owns; `value` is a plain value of the
        // length passed, which the kernel only reads.
        let rc = unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                level,
                name,
                (&value as *const T).cast(),
                len,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Closes after an error frame without losing it: stops writing, then reads and discards
    /// what the peer still sends (up to `limit`, for at most `timeout`), so that closing with
    /// unread input does not make the kernel answer with a reset that destroys the error frame
    /// before the peer reads it.
    pub fn linger_close(&mut self, limit: usize, timeout: Duration) {
        let _ = match self {
            Conn::Tcp(s) => s.shutdown(Shutdown::Write),
            Conn::Unix(s) => s.shutdown(Shutdown::Write),
        };
        let _ = self.set_read_timeout(Some(timeout));
        let deadline = std::time::Instant::now() + timeout;
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < limit && std::time::Instant::now() < deadline {
            match self.read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
        self.shutdown();
    }

    /// Sets a read timeout (None: block).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.set_read_timeout(timeout),
            Conn::Unix(s) => s.set_read_timeout(timeout),
        }
    }

    /// Sets a write timeout (None: block).
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.set_write_timeout(timeout),
            Conn::Unix(s) => s.set_write_timeout(timeout),
        }
    }

    /// The peer's address, for logs.
    pub fn peer(&self) -> String {
        match self {
            Conn::Tcp(s) => s
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "?".into()),
            Conn::Unix(_) => "unix peer".into(),
        }
    }
}

impl std::os::fd::AsFd for Conn {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Conn::Tcp(s) => s.as_fd(),
            Conn::Unix(s) => s.as_fd(),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Unix(s) => s.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write_vectored(bufs),
            Conn::Unix(s) => s.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
