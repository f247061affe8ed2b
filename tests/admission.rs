//! Connection floods cannot lock a real client out: connections that never finish their hello
//! wait in the server's admission event loop (no thread each), and when `--max-pending` of them
//! wait, the oldest is dropped for the new one (`page-server/src/admission.rs`).
//!
//! In CI: 300 idle connections, then a real client; 200 connections sending their hello one
//! byte every 2 s plus 2,000 connect/close, with a real client meanwhile. Each real client must
//! be served and verified within 30 s.
//!
//! `#[ignore]`d measurement (`cargo test --test admission -- --ignored --nocapture`, needs
//! `target/debug/page-server` or `$PAGE_SERVER_BIN`): 10,000 idle connections against the
//! page-server binary, the delay they add to a real client's handshake and run, and the
//! server's threads and memory meanwhile.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventually, synthetic, Observed, PAGE};
use uffd_core::proto::Role;
use uffd_core::Endpoint;

/// What a real client must manage under a flood.
const SERVED_WITHIN: Duration = Duration::from_secs(30);

/// A verified run with the stream and faulting threads; returns how long it took.
fn served(endpoint: &Endpoint) -> Duration {
    let mut cfg = fault_client::RunConfig::new(endpoint.clone());
    cfg.verify = true;
    cfg.threads = 2;
    cfg.quiet = true;
    let started = Instant::now();
    let report = fault_client::client::run(&cfg).expect("a real client is served");
    assert_eq!(report.verified, Some(true));
    started.elapsed()
}

#[test]
fn idle_flood_does_not_lock_out_a_real_client() {
    if !common::have_uffd() {
        return;
    }
    let server = Observed::start(synthetic(16 << 20, 11, 0.1), |_| {});
    let idle: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(server.addr()).expect("connect"))
        .collect();
    eventually("the admission table full", || {
        server.server.pending() == 128
    });
    let took = served(&server.endpoint);
    assert!(took < SERVED_WITHIN, "served after {took:?}");
    assert!(server.server.pending() <= 128);
    drop(idle);
    server.wait_idle();
    eprintln!(
        "300 idle connections (default --max-pending 128): a real client verified in {took:?}"
    );
}

#[test]
fn slow_hellos_and_churn_do_not_lock_out_a_real_client() {
    if !common::have_uffd() {
        return;
    }
    let server = Observed::start(synthetic(16 << 20, 12, 0.1), |_| {});
    let stop = Arc::new(AtomicBool::new(false));
    // 200 connections, each sending a valid hello one byte every 2 s.
    let slow: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(server.addr()).expect("connect"))
        .collect();
    let dribbler = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let hello = common::hello(Role::Urgent, 0);
            let mut slow = slow;
            let mut at = 0;
            while !stop.load(Ordering::Acquire) && at < hello.len() {
                for s in &mut slow {
                    // The server closes them after the hello deadline: errors are expected.
                    let _ = s.write_all(&hello[at..at + 1]);
                }
                at += 1;
                for _ in 0..20 {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        })
    };
    eventually("the slow connections waiting", || {
        server.server.pending() >= 100
    });
    // Connections opened and closed at once, as fast as they go, for as long as the real
    // client runs (4,000 at most: each leaves a port in TIME_WAIT) and 2,000 at least.
    let churned = Arc::new(AtomicUsize::new(0));
    let client_done = Arc::new(AtomicBool::new(false));
    let churn = {
        let (done, churned, addr) = (
            Arc::clone(&client_done),
            Arc::clone(&churned),
            server.addr(),
        );
        std::thread::spawn(move || loop {
            let n = churned.load(Ordering::Relaxed);
            if n >= 4000 || (n >= 2000 && done.load(Ordering::Acquire)) {
                break;
            }
            if TcpStream::connect(&addr).is_ok() {
                churned.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let pending_before = server.server.pending();
    let took = served(&server.endpoint);
    let during = churned.load(Ordering::Relaxed);
    client_done.store(true, Ordering::Release);
    churn.join().expect("churn");
    stop.store(true, Ordering::Release);
    dribbler.join().expect("dribbler");
    assert!(took < SERVED_WITHIN, "served after {took:?}");
    server.wait_idle();
    eprintln!(
        "200 slow hellos ({pending_before} pending as it started) + {} connect/close ({during} \
         by the end of its run): a real client verified in {took:?}",
        churned.load(Ordering::Relaxed)
    );
}

#[test]
fn one_address_is_held_to_its_share() {
    let server = Observed::start(synthetic(1 << 20, 13, 0.1), |c| {
        c.max_pending_per_source = Some(3);
        c.handshake_timeout = Duration::from_secs(60);
    });
    // Five idle connections from 127.0.0.1: its three newest stay, its two oldest are dropped
    // with an error frame naming the limit.
    let idle: Vec<TcpStream> = (0..5)
        .map(|_| TcpStream::connect(server.addr()).expect("connect"))
        .collect();
    eventually("three pending", || server.server.pending() == 3);
    for stream in &idle[..2] {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut reader =
            uffd_core::FrameReader::new(uffd_core::Conn::Tcp(stream.try_clone().expect("clone")));
        let limits = uffd_core::Limits::handshake(PAGE);
        match reader.read_frame(&limits) {
            Ok(Some(uffd_core::Frame::Error { message, .. })) => {
                assert!(message.contains("--max-pending-per-source"), "{message}")
            }
            other => panic!("expected an error frame, got {other:?}"),
        }
    }
    assert_eq!(server.server.pending(), 3);
}

/// The page-server binary.
fn page_server_bin() -> PathBuf {
    std::env::var_os("PAGE_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::binary("page-server"))
}

/// A `Threads:` or `VmRSS:` figure of `/proc/PID/status`.
fn status(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A page-server child process; killed on drop.
struct ServerProcess {
    child: Child,
    endpoint: Endpoint,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_server(args: &[&str]) -> ServerProcess {
    let mut child = Command::new(page_server_bin())
        .args(["--listen", "127.0.0.1:0", "--synthetic", "64MiB"])
        .args(args)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("page-server");
    let addr = common::listening_on(&mut child);
    ServerProcess {
        child,
        endpoint: addr.parse().expect("endpoint"),
    }
}

/// Connect, hello, welcome: how long a real client waits to be admitted.
fn handshake_time(endpoint: &Endpoint) -> Duration {
    let params = fault_client::connect::HelloParams {
        session: 0,
        unit: PAGE,
        image_id: 0,
        token: Vec::new(),
    };
    let started = Instant::now();
    fault_client::connect::connect(endpoint, Role::Urgent, &params, false).expect("admitted");
    started.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
#[ignore = "measurement (about 30 s): run with --ignored --nocapture, needs target/debug/page-server"]
fn ten_thousand_idle_connections() {
    const FLOOD: usize = 10_000;
    let limit = uffd_core::wire::raise_open_files_limit().expect("RLIMIT_NOFILE");
    assert!(
        limit >= 2 * FLOOD as u64,
        "open-files limit {limit} too low"
    );
    // The default table (the flood pushes itself out), and one that holds the whole flood.
    // (table size, whether each connection sends the first byte of a hello and stops there)
    for (max_pending, dribble) in [("128", false), ("20000", false), ("20000", true)] {
        let server = spawn_server(&["--max-pending", max_pending, "--max-sessions", "64"]);
        let pid = server.child.id();
        let baseline = median((0..5).map(|_| handshake_time(&server.endpoint)).collect());
        let (threads0, rss0) = (status(pid, "Threads"), status(pid, "VmRSS"));
        let addr = match &server.endpoint {
            Endpoint::Tcp(a) => a.clone(),
            Endpoint::Unix(_) => unreachable!(),
        };
        let flood_started = Instant::now();
        let first_byte = common::hello(Role::Urgent, 0);
        let idle: Vec<TcpStream> = (0..FLOOD)
            .map(|_| {
                let mut s = TcpStream::connect(&addr).expect("connect");
                if dribble {
                    let _ = s.write_all(&first_byte[..1]);
                }
                s
            })
            .collect();
        let flood_took = flood_started.elapsed();
        std::thread::sleep(Duration::from_millis(500));
        let during = median((0..5).map(|_| handshake_time(&server.endpoint)).collect());
        let run = served(&server.endpoint);
        let (threads, rss) = (status(pid, "Threads"), status(pid, "VmRSS"));
        eprintln!(
            "--max-pending {max_pending}, dribbling {dribble}: {FLOOD} idle connections opened in {flood_took:?}; \
             handshake median {baseline:?} before, {during:?} during; a verified run (64 MiB) \
             {run:?}; server threads {threads0} -> {threads}, VmRSS {rss0} -> {rss} kB"
        );
        assert!(
            during < baseline + Duration::from_secs(1),
            "the flood delayed a real client's handshake by {:?}",
            during.saturating_sub(baseline)
        );
        drop(idle);
    }
}
