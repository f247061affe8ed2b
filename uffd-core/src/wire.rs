//! Frames over a byte stream: endpoints (`HOST:PORT` or `unix:PATH`), connections, and a
//! blocking reader and writer of [`proto`](crate::proto) frames.
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
    /// Binds `endpoint`. A stale Unix socket file is replaced.
    pub fn bind(endpoint: &Endpoint) -> io::Result<Listener> {
        match endpoint {
            Endpoint::Tcp(addr) => TcpListener::bind(addr.as_str()).map(Listener::Tcp),
            Endpoint::Unix(path) => {
                if path.exists() && UnixStream::connect(path).is_err() {
                    std::fs::remove_file(path)?;
                }
                UnixListener::bind(path).map(|l| Listener::Unix(l, path.clone()))
            }
        }
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
    /// Wraps a stream. The payload buffer is allocated once, at the largest frame size.
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            payload: vec![0; proto::MAX_PAYLOAD],
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
        let header = Header::parse(head, limits.max_payload.min(self.payload.len()))?;
        let payload = &mut self.payload[..header.len as usize];
        read_full(&mut self.inner, payload, false)?;
        self.bytes_read += (HEADER_LEN + payload.len()) as u64;
        Ok(Some(Frame::parse(header, payload, limits)?))
    }

    /// Reads the next frame's header and payload into `payload` (which must be at least
    /// `limits.max_payload` long) without parsing it, so another thread can parse and use it
    /// ([`Frame::parse`] on `&payload[..header.len]`). `Ok(None)` on a clean end of stream.
    pub fn read_raw(&mut self, payload: &mut [u8], limits: &Limits) -> Result<Option<Header>> {
        let mut head = [0u8; HEADER_LEN];
        if !read_full(&mut self.inner, &mut head, true)? {
            return Ok(None);
        }
        let header = Header::parse(head, limits.max_payload.min(payload.len()))?;
        read_full(&mut self.inner, &mut payload[..header.len as usize], false)?;
        self.bytes_read += (HEADER_LEN + header.len as usize) as u64;
        Ok(Some(header))
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
}
