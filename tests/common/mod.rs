//! Helpers shared by the integration tests: in-process servers and the workspace binaries.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use page_server::{Config, Image, Server};
use uffd_core::Endpoint;

pub const PAGE: u64 = 4096;

/// A page server running on a thread of the test process, shut down on drop.
pub struct TestServer {
    pub endpoint: Endpoint,
    pub image: Arc<Image>,
    shutdown: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    pub fn start(image: Image) -> TestServer {
        Self::start_with(image, |_| {})
    }

    pub fn start_with(image: Image, tweak: impl FnOnce(&mut Config)) -> TestServer {
        Self::try_start_with(Arc::new(image), tweak).expect("bind")
    }

    /// Like `start_with`, but a failure to bind is returned (e.g. the port is still taken).
    pub fn try_start_with(
        image: Arc<Image>,
        tweak: impl FnOnce(&mut Config),
    ) -> Result<TestServer, page_server::ServeError> {
        let mut config = Config::new("127.0.0.1:0".parse().expect("endpoint"));
        tweak(&mut config);
        let server = Server::bind(config, Arc::clone(&image))?;
        let endpoint = server.local_endpoint().expect("endpoint");
        let shutdown = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&shutdown);
        let thread = std::thread::spawn(move || server.serve(&flag).expect("serve"));
        Ok(TestServer {
            endpoint,
            image,
            shutdown,
            thread: Some(thread),
        })
    }

    /// Stops the server: every session's connections are shut down.
    pub fn stop(&mut self) {
        self.shutdown.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A synthetic image.
pub fn synthetic(len: u64, seed: u64, zero_fraction: f64) -> Image {
    Image::synthetic(len, seed, zero_fraction, PAGE).expect("synthetic image")
}

/// Userfaultfd, and free huge pages: a test skips without them (fails under CI).
#[allow(unused_imports)] // like the rest of this module, each test uses a different subset
pub use uffd_testkit::{have_uffd, pool_has};

/// A binary of this workspace (built by `cargo test --workspace`), from target/<profile>/.
pub fn binary(name: &str) -> PathBuf {
    let me = std::env::current_exe().expect("current exe");
    let dir = me
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run the suite with `cargo test --workspace`, which builds it",
        path.display()
    );
    path
}

/// A `page-server` process listening on a free loopback port (`.1`), killed on drop.
pub struct ServerProcess(pub Child, pub String);

impl ServerProcess {
    /// Starts `page-server --listen 127.0.0.1:0 ARGS` and waits for its address.
    pub fn start(args: &[&str]) -> ServerProcess {
        let mut child = Command::new(binary("page-server"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn page-server");
        let addr = listening_on(&mut child);
        ServerProcess(child, addr)
    }

    /// Its resident memory now, in bytes.
    pub fn rss(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).expect("status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS");
        kib << 10
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A page server on a thread of the test, whose counters the test reads
/// (`Server::sessions`, `connections`, `pending`); stopped on drop.
pub struct Observed {
    pub server: Arc<Server>,
    pub endpoint: Endpoint,
    shutdown: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Observed {
    pub fn start(image: Image, tweak: impl FnOnce(&mut Config)) -> Observed {
        let mut config = Config::new("127.0.0.1:0".parse().expect("endpoint"));
        tweak(&mut config);
        let server = Arc::new(Server::bind(config, Arc::new(image)).expect("bind"));
        let endpoint = server.local_endpoint().expect("endpoint");
        let shutdown = Arc::new(AtomicBool::new(false));
        let thread = {
            let (server, shutdown) = (Arc::clone(&server), Arc::clone(&shutdown));
            std::thread::spawn(move || server.serve(&shutdown).expect("serve"))
        };
        Observed {
            server,
            endpoint,
            shutdown,
            thread: Some(thread),
        }
    }

    /// The TCP `host:port` (the tests' servers listen on TCP).
    pub fn addr(&self) -> String {
        match &self.endpoint {
            Endpoint::Tcp(a) => a.clone(),
            Endpoint::Unix(_) => unreachable!("tests use TCP"),
        }
    }

    /// Waits up to 10 s until the server has no session and no connection thread left.
    pub fn wait_idle(&self) {
        eventually("no session and no connection left", || {
            self.server.sessions() == 0 && self.server.connections() == 0
        });
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Waits up to 10 s for `done`, failing the test with `what` otherwise.
pub fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Reads a spawned page-server's first stdout line, `listening on ADDR`, and returns ADDR.
pub fn listening_on(child: &mut std::process::Child) -> String {
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("the server's stdout is piped"))
        .read_line(&mut line)
        .expect("the listening line");
    line.trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("not a listening line: {line:?}"))
        .to_string()
}

/// A hello for a new session (`session` 0) or joining one, base pages, no token.
pub fn hello(role: uffd_core::proto::Role, session: u64) -> bytes::BytesMut {
    use uffd_core::proto::{self, Frame, Hello};
    let mut buf = bytes::BytesMut::new();
    Frame::Hello(Hello {
        version: proto::VERSION,
        role,
        flags: 0,
        session,
        unit: PAGE,
        image_id: 0,
        token: b"",
    })
    .encode(&mut buf);
    buf
}
