//! Where a connection goes: [`Endpoint`] (`HOST:PORT` or `unix:PATH`), connecting to one,
//! and the [`Listener`] bound to one.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use super::Conn;

/// Where a server listens or a client connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A TCP `host:port`.
    Tcp(String),
    /// A Unix stream socket path.
    Unix(PathBuf),
}

/// Why a text is not an [`Endpoint`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointParseError {
    /// `unix:` with nothing after it.
    #[error("unix: needs a path, e.g. unix:/tmp/pages.sock")]
    UnixWithoutPath,
    /// Neither `unix:PATH` nor `HOST:PORT` with a port number.
    #[error("`{0}` is not HOST:PORT (e.g. 127.0.0.1:7070) or unix:PATH")]
    NotHostPort(String),
}

impl std::str::FromStr for Endpoint {
    type Err = EndpointParseError;

    fn from_str(s: &str) -> std::result::Result<Self, EndpointParseError> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(EndpointParseError::UnixWithoutPath);
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        match s.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Endpoint::Tcp(s.to_string()))
            }
            _ => Err(EndpointParseError::NotHostPort(s.to_string())),
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
}
