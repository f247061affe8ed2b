//! Frames over a byte stream: endpoints (`HOST:PORT` or `unix:PATH`), connections, and a
//! blocking reader and writer of [`proto`](mod@crate::proto) frames.
//!
//! The reader keeps one payload buffer sized for the largest frame and reads each payload
//! straight into it, so a data frame costs one copy from the socket and none in the decoder.
//! The writer sends a data frame's header and its page contents with one `writev(2)`, straight
//! from the image.

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use bytes::BytesMut;

use crate::proto::{self, Frame, Header, Limits, ProtoError, HEADER_LEN};

/// Errors of framed I/O.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The socket failed.
    #[error("connection error: {0}")]
    Io(#[from] io::Error),
    /// The peer sent a frame that does not decode.
    #[error("protocol error: {0}")]
    Proto(#[from] ProtoError),
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed in the middle of a frame")]
    TruncatedFrame,
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, WireError>;

/// Where a server listens or a client connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A TCP `host:port`.
    Tcp(String),
    /// A Unix stream socket path.
    Unix(PathBuf),
}

impl std::str::FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a path, e.g. unix:/tmp/pages.sock".into());
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        match s.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Endpoint::Tcp(s.to_string()))
            }
            _ => Err(format!(
                "`{s}` is not HOST:PORT (e.g. 127.0.0.1:7070) or unix:PATH"
            )),
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(addr) => f.write_str(addr),
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// A connected stream, TCP or Unix.
#[derive(Debug)]
pub enum Conn {
    /// TCP (with `TCP_NODELAY`: requests and answers are small and must not wait).
    Tcp(TcpStream),
    /// Unix stream socket.
    Unix(UnixStream),
}

impl Conn {
    /// Connects to `endpoint`, giving up after `timeout` (TCP) per address.
    pub fn connect(endpoint: &Endpoint, timeout: Duration) -> io::Result<Conn> {
        match endpoint {
            Endpoint::Tcp(addr) => {
                let mut last = io::Error::new(io::ErrorKind::NotFound, "no address resolved");
                for sa in addr.to_socket_addrs()? {
                    match TcpStream::connect_timeout(&sa, timeout) {
                        Ok(stream) => {
                            stream.set_nodelay(true)?;
                            return Ok(Conn::Tcp(stream));
                        }
                        Err(err) => last = err,
                    }
                }
                Err(last)
            }
            Endpoint::Unix(path) => UnixStream::connect(path).map(Conn::Unix),
        }
    }

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

/// A bound listener, TCP or Unix.
#[derive(Debug)]
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// Unix; the socket file is removed on drop.
    Unix(UnixListener, PathBuf),
}

impl Listener {
    /// Binds `endpoint`. A stale Unix socket file is replaced. The listen backlog is the
    /// system's maximum (`net.core.somaxconn`) rather than the standard library's 128: when
    /// the backlog is full the kernel drops new SYNs, and a real client arriving in a burst of
    /// connections would wait a second for its retransmission.
    pub fn bind(endpoint: &Endpoint) -> io::Result<Listener> {
        use nix::sys::socket::{listen, Backlog};
        let listener = match endpoint {
            Endpoint::Tcp(addr) => TcpListener::bind(addr.as_str()).map(Listener::Tcp)?,
            Endpoint::Unix(path) => {
                if path.exists() && UnixStream::connect(path).is_err() {
                    std::fs::remove_file(path)?;
                }
                UnixListener::bind(path).map(|l| Listener::Unix(l, path.clone()))?
            }
        };
        // Calling listen(2) again on a listening socket only changes its backlog.
        listen(&listener, Backlog::MAXCONN)?;
        Ok(listener)
    }

    /// The bound address as an endpoint (the real port when bound to port 0).
    pub fn local_endpoint(&self) -> io::Result<Endpoint> {
        match self {
            Listener::Tcp(l) => {
                let addr: SocketAddr = l.local_addr()?;
                Ok(Endpoint::Tcp(addr.to_string()))
            }
            Listener::Unix(_, path) => Ok(Endpoint::Unix(path.clone())),
        }
    }

    /// Accepts one connection.
    pub fn accept(&self) -> io::Result<Conn> {
        match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept()?;
                s.set_nodelay(true)?;
                Ok(Conn::Tcp(s))
            }
            Listener::Unix(l, _) => l.accept().map(|(s, _)| Conn::Unix(s)),
        }
    }

    /// Switches accept to non-blocking (for a loop that also watches a shutdown flag).
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.set_nonblocking(on),
            Listener::Unix(l, _) => l.set_nonblocking(on),
        }
    }
}

impl std::os::fd::AsFd for Listener {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Listener::Tcp(l) => l.as_fd(),
            Listener::Unix(l, _) => l.as_fd(),
        }
    }
}

/// Raises this process's soft limit on open files to its hard limit, and returns the limit
/// now in force. A server holds one descriptor per connection (pending ones included), and
/// the usual soft limit of 1024 would refuse connections long before the server's own
/// limits do.
pub fn raise_open_files_limit() -> io::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard)
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Reads frames from a stream.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    payload: Vec<u8>,
    bytes_read: u64,
}

impl<R: Read> FrameReader<R> {
    /// Wraps a stream. The payload buffer grows to the largest frame read (at most
    /// `MAX_PAYLOAD`): a server's connection that only carries hellos and requests costs a
    /// few KiB, not a 2 MiB buffer that a thread's malloc arena would have to zero.
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            payload: Vec::new(),
            bytes_read: 0,
        }
    }

    /// Total bytes read so far (headers included).
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Unwraps the stream (frames already read are gone; nothing is buffered here).
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Reads the next frame. `Ok(None)` on a clean end of stream between frames; an end of
    /// stream inside a frame is [`WireError::TruncatedFrame`].
    pub fn read_frame(&mut self, limits: &Limits) -> Result<Option<Frame<'_>>> {
        let mut head = [0u8; HEADER_LEN];
        if !read_full(&mut self.inner, &mut head, true)? {
            return Ok(None);
        }
        let header = Header::parse(head, limits.max_payload.min(proto::MAX_PAYLOAD))?;
        let len = header.len as usize;
        if self.payload.len() < len {
            self.payload
                .resize(len.next_power_of_two().min(proto::MAX_PAYLOAD), 0);
        }
        let payload = &mut self.payload[..len];
        read_full(&mut self.inner, payload, false)?;
        self.bytes_read += (HEADER_LEN + payload.len()) as u64;
        Ok(Some(Frame::parse(header, payload, limits)?))
    }
}

/// Fills `buf`. Returns false if the stream ended before the first byte and `eof_ok`.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8], eof_ok: bool) -> Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 && eof_ok => return Ok(false),
            Ok(0) => return Err(WireError::TruncatedFrame),
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(true)
}

/// Frames read in bulk, for a receiver that hands them to another thread: the raw bytes of
/// whole frames in one buffer, and where each frame's payload starts.
#[derive(Debug)]
pub struct FrameBatch {
    buf: Vec<u8>,
    /// Bytes of `buf` holding whole frames.
    len: usize,
    frames: Vec<(Header, usize)>,
}

impl FrameBatch {
    /// An empty batch that reads up to `bytes` at a time (raised to hold one largest frame).
    pub fn new(bytes: usize, limits: &Limits) -> FrameBatch {
        FrameBatch {
            buf: vec![0; bytes.max(HEADER_LEN + limits.max_payload)],
            len: 0,
            frames: Vec::new(),
        }
    }

    /// The frames, in order: each header with its (unparsed) payload, to give to
    /// [`Frame::parse`].
    pub fn frames(&self) -> impl Iterator<Item = (Header, &[u8])> + '_ {
        self.frames
            .iter()
            .map(|&(header, at)| (header, &self.buf[at..at + header.len as usize]))
    }

    /// Number of frames.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// True when the batch holds no frame.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Bytes of the frames, headers included.
    pub fn bytes(&self) -> usize {
        self.len
    }
}

/// Reads frames in bulk into [`FrameBatch`]es: each `read(2)` asks for as much as the batch
/// can hold, straight into the batch's buffer, so a payload is copied once (out of the
/// socket) and never again in user space. A frame cut by the end of a read is carried over
/// to the next batch.
#[derive(Debug)]
pub struct BatchReader<R> {
    inner: R,
    /// The start of a frame read past the last whole frame of the previous batch.
    carry: Vec<u8>,
    bytes_read: u64,
}

impl<R: Read> BatchReader<R> {
    /// Wraps a stream.
    pub fn new(inner: R) -> Self {
        BatchReader {
            inner,
            carry: Vec::new(),
            bytes_read: 0,
        }
    }

    /// Bytes of whole frames delivered so far (headers included).
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// Refills `batch` with at least one whole frame, and with every further whole frame the
    /// stream already has ready: it returns as soon as a read comes back short (the stream has
    /// nothing more buffered), so a slow stream is never held back. `Ok(false)` on a clean end
    /// of stream between frames, with the batch empty. On an error the batch still holds the
    /// whole frames read before it.
    pub fn fill(&mut self, batch: &mut FrameBatch, limits: &Limits) -> Result<bool> {
        batch.frames.clear();
        let mut filled = self.carry.len();
        batch.buf[..filled].copy_from_slice(&self.carry);
        self.carry.clear();
        let mut parsed = 0;
        let result = loop {
            let room = batch.buf.len() - filled;
            let n = match self.inner.read(&mut batch.buf[filled..]) {
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => break Err(err.into()),
            };
            if n == 0 {
                break match (filled == parsed, batch.frames.is_empty()) {
                    (true, true) => Ok(false),
                    (true, false) => Ok(true),
                    (false, _) => Err(WireError::TruncatedFrame),
                };
            }
            filled += n;
            match split_frames(&batch.buf[..filled], parsed, limits, &mut batch.frames) {
                Ok(at) => parsed = at,
                Err(err) => break Err(err.into()),
            }
            // A batch can always hold one whole frame, so a full buffer has at least one.
            if !batch.frames.is_empty() && (n < room || filled == batch.buf.len()) {
                break Ok(true);
            }
        };
        batch.len = parsed;
        self.bytes_read += parsed as u64;
        self.carry.extend_from_slice(&batch.buf[parsed..filled]);
        result
    }
}

/// Lists the whole frames of `buf` from offset `from` in `frames`; returns where the first
/// incomplete frame starts.
fn split_frames(
    buf: &[u8],
    mut from: usize,
    limits: &Limits,
    frames: &mut Vec<(Header, usize)>,
) -> std::result::Result<usize, ProtoError> {
    while let Some(head) = buf.get(from..from + HEADER_LEN) {
        let head: [u8; HEADER_LEN] = head.try_into().expect("a header's length");
        let header = Header::parse(head, limits.max_payload)?;
        let end = from + HEADER_LEN + header.len as usize;
        if end > buf.len() {
            break;
        }
        frames.push((header, from + HEADER_LEN));
        from = end;
    }
    Ok(from)
}

/// Writes frames to a stream, each one completely before returning.
#[derive(Debug)]
pub struct FrameWriter<W> {
    inner: W,
    buf: BytesMut,
    bytes_written: u64,
    frames_written: u64,
}

impl<W: Write> FrameWriter<W> {
    /// Wraps a stream.
    pub fn new(inner: W) -> Self {
        FrameWriter {
            inner,
            buf: BytesMut::with_capacity(4096),
            bytes_written: 0,
            frames_written: 0,
        }
    }

    /// Total bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// Frames written so far.
    pub fn frames_written(&self) -> u64 {
        self.frames_written
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// Sends one frame. Data frames go out with `writev`, without copying their bytes.
    pub fn send(&mut self, frame: &Frame<'_>) -> io::Result<()> {
        self.buf.clear();
        if let Frame::Data { offset, bytes } = *frame {
            proto::encode_data_header(offset, bytes.len(), &mut self.buf);
            let mut slices = [IoSlice::new(&self.buf), IoSlice::new(bytes)];
            write_all_vectored(&mut self.inner, &mut slices)?;
            self.bytes_written += (self.buf.len() + bytes.len()) as u64;
            self.frames_written += 1;
            return Ok(());
        }
        frame.encode(&mut self.buf);
        self.inner.write_all(&self.buf)?;
        self.bytes_written += self.buf.len() as u64;
        self.frames_written += 1;
        Ok(())
    }
}

fn write_all_vectored<W: Write>(w: &mut W, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    while !slices.is_empty() {
        match w.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            "127.0.0.1:7070".parse::<Endpoint>(),
            Ok(Endpoint::Tcp("127.0.0.1:7070".into()))
        );
        assert_eq!(
            "unix:/tmp/x".parse::<Endpoint>(),
            Ok(Endpoint::Unix("/tmp/x".into()))
        );
        assert!("nonsense".parse::<Endpoint>().is_err());
        assert!("host:99999".parse::<Endpoint>().is_err());
        assert!("unix:".parse::<Endpoint>().is_err());
    }

    #[test]
    fn frames_cross_a_socket() {
        let (a, b) = UnixStream::pair().expect("pair");
        let limits = Limits::new(1 << 20, 4096);
        let page = vec![1u8; 4096];
        let mut writer = FrameWriter::new(Conn::Unix(a));
        writer
            .send(&Frame::Data {
                offset: 4096,
                bytes: &page,
            })
            .expect("send");
        writer.send(&Frame::End).expect("send");
        drop(writer);
        let mut reader = FrameReader::new(Conn::Unix(b));
        match reader.read_frame(&limits).expect("read") {
            Some(Frame::Data { offset, bytes }) => {
                assert_eq!(offset, 4096);
                assert_eq!(bytes, &page[..]);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(reader.read_frame(&limits).expect("read"), Some(Frame::End));
        assert_eq!(reader.read_frame(&limits).expect("eof"), None);
    }

    #[test]
    fn eof_mid_frame_is_an_error() {
        let (mut a, b) = UnixStream::pair().expect("pair");
        a.write_all(&[5, 0, 0, 0, 16, 0, 0, 0, 1, 2])
            .expect("write");
        drop(a);
        let mut reader = FrameReader::new(Conn::Unix(b));
        assert!(matches!(
            reader.read_frame(&Limits::new(1 << 20, 4096)),
            Err(WireError::TruncatedFrame)
        ));
    }

    /// A stream that returns at most the next size in `pieces` per read (cycling).
    struct Pieces {
        data: Vec<u8>,
        at: usize,
        pieces: Vec<usize>,
        turn: usize,
    }

    impl Read for Pieces {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let piece = self.pieces[self.turn % self.pieces.len()];
            self.turn += 1;
            let n = piece.min(buf.len()).min(self.data.len() - self.at);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    fn encoded(frames: &[Frame<'_>]) -> Vec<u8> {
        let mut out = BytesMut::new();
        for frame in frames {
            frame.encode(&mut out);
        }
        out.to_vec()
    }

    fn frames_of(reader: &mut BatchReader<Pieces>, batch_bytes: usize) -> Result<Vec<Vec<u8>>> {
        let limits = Limits::new(1 << 20, 4096);
        let mut batch = FrameBatch::new(batch_bytes, &limits);
        let mut out = Vec::new();
        while reader.fill(&mut batch, &limits)? {
            assert!(!batch.is_empty(), "a filled batch holds a frame");
            for (header, payload) in batch.frames() {
                let frame = Frame::parse(header, payload, &limits)?;
                out.push(encoded(&[frame]));
            }
        }
        Ok(out)
    }

    proptest::proptest! {
        /// Whatever sizes the reads come back in, batches deliver every frame once, whole
        /// and in order, and count exactly their bytes.
        #[test]
        fn batches_deliver_every_frame(
            sizes in proptest::collection::vec(0usize..40, 1..60),
            pieces in proptest::collection::vec(1usize..70_000, 1..8),
            batch_bytes in 1usize..300_000,
        ) {
            let pages: Vec<Vec<u8>> =
                sizes.iter().enumerate().map(|(i, &n)| vec![i as u8; n * 4096]).collect();
            let frames: Vec<Frame<'_>> = pages
                .iter()
                .enumerate()
                .map(|(i, bytes)| {
                    if bytes.is_empty() {
                        Frame::Zero { offset: i as u64 * 4096, len: 4096 }
                    } else {
                        Frame::Data { offset: i as u64 * 4096, bytes }
                    }
                })
                .collect();
            let data = encoded(&frames);
            let total = data.len() as u64;
            let mut reader = BatchReader::new(Pieces { data, at: 0, pieces, turn: 0 });
            let got = frames_of(&mut reader, batch_bytes).expect("frames");
            let want: Vec<Vec<u8>> = frames.iter().map(|f| encoded(std::slice::from_ref(f))).collect();
            proptest::prop_assert_eq!(got, want);
            proptest::prop_assert_eq!(reader.bytes_read(), total);
        }
    }

    #[test]
    fn batch_reader_reports_truncation_and_bad_headers() {
        let page = vec![7u8; 4096];
        let mut data = encoded(&[
            Frame::Data {
                offset: 0,
                bytes: &page,
            },
            Frame::End,
        ]);
        data.truncate(data.len() - 1);
        let mut reader = BatchReader::new(Pieces {
            data,
            at: 0,
            pieces: vec![1000],
            turn: 0,
        });
        assert!(matches!(
            frames_of(&mut reader, 1 << 20),
            Err(WireError::TruncatedFrame)
        ));

        let mut data = encoded(&[Frame::Data {
            offset: 0,
            bytes: &page,
        }]);
        data.extend_from_slice(&[0xff; 64]);
        let mut reader = BatchReader::new(Pieces {
            data,
            at: 0,
            pieces: vec![1 << 20],
            turn: 0,
        });
        let limits = Limits::new(1 << 20, 4096);
        let mut batch = FrameBatch::new(1 << 20, &limits);
        assert!(matches!(
            reader.fill(&mut batch, &limits),
            Err(WireError::Proto(_))
        ));
        assert_eq!(
            batch.len(),
            1,
            "the whole frame before the bad header is kept"
        );
    }
}
