//! Never hang on a silent peer: the page-server and fault-client binaries on two network
//! namespaces joined by a veth pair (as `scripts/netlab.sh` builds them, shaped to 100 Mbit/s
//! so that a 64 MiB run lasts seconds), and mid-run
//! - the link taken down (`ip link set ... down`: no RST, no FIN; every packet lost) for good,
//!   or for 8 s;
//! - the server stopped (SIGSTOP: its kernel still acknowledges every byte, no answer comes)
//!   for good, or for 5 s.
//!
//! For good: the client must exit non-zero with the stall error ("no answer from the page
//! server for 10 s") within `--reconnect-timeout` + 15 s. Briefly: the run must complete,
//! every byte equal to the image (`--dump` compared with the image computed here).
//!
//! Needs root (network namespaces) and `ip`/`tc` (iproute2, installed by scripts/setup.sh),
//! and the binaries (`cargo test --workspace` builds them, or `$PAGE_SERVER_BIN` and
//! `$FAULT_CLIENT_BIN`). Each test builds its own namespaces, so they run in parallel.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const SERVER_IP: &str = "10.77.99.1";
const CLIENT_IP: &str = "10.77.99.2";
const IMAGE: u64 = 64 << 20;
const SEED: u64 = 17;
/// The client's `--reconnect-timeout`, in seconds.
const RECONNECT: u64 = 5;
/// The client's default `--stall-timeout`.
const STALL: Duration = fault_client::client::STALL_TIMEOUT;

fn bin(var: &str, name: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| common::binary(name))
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// True if namespaces can be made here; otherwise says why the test is skipped (a failure
/// under CI).
fn can_build_labs() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        uffd_testkit::skip("network namespaces need root");
        return false;
    }
    for tool in ["ip", "tc"] {
        if Command::new(tool).arg("-V").output().is_err() {
            uffd_testkit::skip(&format!("`{tool}` is missing: run scripts/setup.sh"));
            return false;
        }
    }
    common::have_uffd()
}

/// Two namespaces and a veth pair between them, shaped; removed on drop.
struct Lab {
    server_ns: String,
    client_ns: String,
    server_dev: String,
}

impl Lab {
    fn up(case: &str) -> Lab {
        let id = std::process::id();
        let lab = Lab {
            server_ns: format!("uffdlv-{case}-{id}-s"),
            client_ns: format!("uffdlv-{case}-{id}-c"),
            server_dev: format!("lv{case}{}s", id % 100_000),
        };
        let client_dev = format!("lv{case}{}c", id % 100_000);
        let (s, c) = (lab.server_ns.as_str(), lab.client_ns.as_str());
        let steps: Vec<Vec<String>> = vec![
            vec!["ip", "netns", "add", s],
            vec!["ip", "netns", "add", c],
            vec![
                "ip",
                "link",
                "add",
                &lab.server_dev,
                "netns",
                s,
                "type",
                "veth",
                "peer",
                "name",
                &client_dev,
                "netns",
                c,
            ],
            vec!["ip", "-n", s, "link", "set", "lo", "up"],
            vec!["ip", "-n", c, "link", "set", "lo", "up"],
            vec![
                "ip",
                "-n",
                s,
                "addr",
                "add",
                &format!("{SERVER_IP}/24"),
                "dev",
                &lab.server_dev,
            ],
            vec![
                "ip",
                "-n",
                c,
                "addr",
                "add",
                &format!("{CLIENT_IP}/24"),
                "dev",
                &client_dev,
            ],
            vec!["ip", "-n", s, "link", "set", &lab.server_dev, "up"],
            vec!["ip", "-n", c, "link", "set", &client_dev, "up"],
        ]
        .into_iter()
        .map(|v| v.into_iter().map(String::from).collect())
        .collect();
        for step in &steps {
            let args: Vec<&str> = step.iter().map(String::as_str).collect();
            run(&args).expect("building the lab");
        }
        for (ns, dev) in [(s, lab.server_dev.as_str()), (c, client_dev.as_str())] {
            // tbf, as netlab.sh: a 100 Mbit/s bottleneck, so the run lasts long enough to
            // be cut in the middle.
            run(&[
                "ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root", "tbf",
                "rate", "100mbit", "burst", "64kb", "limit", "4mb",
            ])
            .expect("shaping the lab");
        }
        lab
    }

    /// Takes the server's end of the link down (silently: the peer sees nothing) or up.
    fn link(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        run(&[
            "ip",
            "-n",
            &self.server_ns,
            "link",
            "set",
            &self.server_dev,
            state,
        ])
        .expect("link state");
    }

    fn command(&self, ns: &str, bin: PathBuf) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(bin);
        cmd
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth in it, and with it its peer.
        let _ = run(&["ip", "netns", "del", &self.client_ns]);
        let _ = run(&["ip", "netns", "del", &self.server_ns]);
    }
}

/// A child process, killed on drop (continued first, in case it is stopped).
struct Proc(Child);

impl Proc {
    fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.0.id()).expect("pid"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = kill(self.pid(), Signal::SIGCONT);
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The page-server in the lab's server namespace; returns it once it listens, and a channel
/// that says when the first session opened (its log line).
fn start_server(lab: &Lab, extra: &[&str]) -> (Proc, mpsc::Receiver<()>) {
    let mut child = lab
        .command(&lab.server_ns, bin("PAGE_SERVER_BIN", "page-server"))
        .args(["--listen", &format!("{SERVER_IP}:7070")])
        .args(extra)
        .args([
            "--synthetic",
            &IMAGE.to_string(),
            "--seed",
            &SEED.to_string(),
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("page-server");
    common::listening_on(&mut child);
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("session opened") {
                let _ = tx.send(());
            }
        }
    });
    (Proc(child), rx)
}

/// The fault-client run in the lab's client namespace, dumping the region to `dump`.
fn start_client(lab: &Lab, dump: &std::path::Path) -> Proc {
    let child = lab
        .command(&lab.client_ns, bin("FAULT_CLIENT_BIN", "fault-client"))
        .args(["run", "--server", &format!("{SERVER_IP}:7070")])
        .args(["--workload", "random", "--touch", "0.3", "--threads", "4"])
        .args(["--reconnect-timeout", &RECONNECT.to_string()])
        .arg("--dump")
        .arg(dump)
        .args(["--quiet", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fault-client");
    Proc(child)
}

/// Waits for the client to exit, at most `limit`; returns its success, its stderr and when
/// it exited. A client still running after `limit` is a hang: the test fails.
fn wait_client(client: &mut Proc, limit: Duration) -> (bool, String, Instant) {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = client.0.try_wait().expect("wait") {
            let at = Instant::now();
            let mut stderr = String::new();
            if let Some(mut e) = client.0.stderr.take() {
                let _ = e.read_to_string(&mut stderr);
            }
            // The report (on success) says how often the client reconnected.
            let mut stdout = String::new();
            if let Some(mut o) = client.0.stdout.take() {
                let _ = o.read_to_string(&mut stdout);
            }
            if let Ok(report) = serde_json::from_str::<serde_json::Value>(&stdout) {
                stderr.push_str(&format!("(reconnects: {})", report["reconnects"]));
            }
            return (status.success(), stderr, at);
        }
        assert!(
            Instant::now() < deadline,
            "the client still runs {limit:?} later: it hangs"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts server and client; returns once the session is open and a little of the image has
/// arrived (mid-run).
fn start_run(lab: &Lab, dump: &std::path::Path, server_args: &[&str]) -> (Proc, Proc) {
    let (server, opened) = start_server(lab, server_args);
    let client = start_client(lab, dump);
    opened
        .recv_timeout(Duration::from_secs(30))
        .expect("the client opened a session");
    std::thread::sleep(Duration::from_millis(700));
    (server, client)
}

fn temp_dump(case: &str) -> PathBuf {
    std::env::temp_dir().join(format!("uffd-liveness-{case}-{}.bin", std::process::id()))
}

/// The dump equals the image, byte for byte.
fn assert_byte_exact(dump: &std::path::Path) {
    let image = page_server::Image::synthetic(IMAGE, SEED, 0.1, common::PAGE).expect("image");
    let got = std::fs::read(dump).expect("the dump");
    assert_eq!(got.len() as u64, IMAGE);
    let want = image.bytes(0, IMAGE).expect("the image's bytes");
    if let Some(first) = got.iter().zip(&want).position(|(a, b)| a != b) {
        panic!("the dump differs from the image at byte {first}");
    }
    let _ = std::fs::remove_file(dump);
}

/// A stall for good: the client must fail, naming the stall, within reconnect + 15 s.
fn assert_stall_error(client: &mut Proc, since: Instant) {
    let bound = Duration::from_secs(RECONNECT) + Duration::from_secs(15);
    let (ok, stderr, at) = wait_client(client, bound + Duration::from_secs(10));
    let took = at - since;
    assert!(!ok, "the client exited 0 without its image: {stderr}");
    let stall = format!("no answer from the page server for {} s", STALL.as_secs());
    assert!(stderr.contains(&stall), "not the stall error: {stderr}");
    assert!(
        took <= bound,
        "the error came {took:?} after the stall (bound {bound:?})"
    );
    eprintln!(
        "exit status non-zero {took:?} after the stall: {}",
        stderr.trim()
    );
}

/// Something that happens to the run: `begin` mid-run, and `end` (a brief outage) later.
struct Outage<'a> {
    begin: &'a dyn Fn(&Lab, &Proc),
    end: &'a dyn Fn(&Lab, &Proc),
    /// The server runs on, and must give up on the client it no longer hears.
    server_runs: bool,
}

const LINK: Outage<'static> = Outage {
    begin: &|lab, _| lab.link(false),
    end: &|lab, _| lab.link(true),
    server_runs: true,
};

const STOP: Outage<'static> = Outage {
    begin: &|_, server| kill(server.pid(), Signal::SIGSTOP).expect("SIGSTOP"),
    end: &|_, server| kill(server.pid(), Signal::SIGCONT).expect("SIGCONT"),
    server_runs: false,
};

/// The outage lasts `pause`, then ends: the run must complete, byte-exact.
fn brief(case: &str, outage: &Outage<'_>, pause: Duration) {
    if !can_build_labs() {
        return;
    }
    let lab = Lab::up(case);
    let dump = temp_dump(case);
    let (server, mut client) = start_run(&lab, &dump, &[]);
    let began = Instant::now();
    (outage.begin)(&lab, &server);
    std::thread::sleep(pause);
    (outage.end)(&lab, &server);
    let (ok, stderr, at) = wait_client(&mut client, Duration::from_secs(60));
    assert!(ok, "the run failed: {stderr}");
    assert!(at - began >= pause, "the run ended before the outage did");
    assert_byte_exact(&dump);
    eprintln!(
        "{pause:?} outage: completed {:?} after it began, byte-exact {}",
        at - began,
        stderr.trim()
    );
}

/// The outage never ends: the client must exit non-zero with the stall error in time, and
/// the server must let go of the client within `--peer-timeout` (10 s here).
fn for_good(case: &str, outage: &Outage<'_>) {
    if !can_build_labs() {
        return;
    }
    let lab = Lab::up(case);
    let dump = temp_dump(case);
    let (server, mut client) = start_run(&lab, &dump, &["--peer-timeout", "10s"]);
    let began = Instant::now();
    (outage.begin)(&lab, &server);
    assert_stall_error(&mut client, began);
    let _ = std::fs::remove_file(&dump);
    if outage.server_runs {
        server_lets_go(&server, began);
    }
}

/// The server's connection threads end (only the admission thread is left) once TCP has had
/// no answer for its `--peer-timeout` (10 s).
fn server_lets_go(server: &Proc, since: Instant) {
    let threads = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", server.0.id()));
        status.ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|v| v.trim().parse::<u32>().ok())
        })
    };
    let bound = Duration::from_secs(10 + 15);
    while threads() != Some(1) {
        assert!(
            since.elapsed() < bound,
            "the server still has {:?} threads {bound:?} after the client vanished",
            threads()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "the server let go of the vanished client {:?} after the cut",
        since.elapsed()
    );
}

#[test]
fn link_down_for_good_is_a_stall_error() {
    for_good("d", &LINK);
}

#[test]
fn link_down_for_8_s_completes_byte_exact() {
    brief("b", &LINK, Duration::from_secs(8));
}

#[test]
fn server_stopped_for_good_is_a_stall_error() {
    for_good("f", &STOP);
}

#[test]
fn server_stopped_for_5_s_completes_byte_exact() {
    brief("p", &STOP, Duration::from_secs(5));
}
