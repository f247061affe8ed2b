//! The two binaries together, run as a user runs them.

mod common;

use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::binary;

/// These tests count processes: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

use common::ServerProcess as Server;

#[test]
fn run_json_has_the_documented_keys() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !common::have_uffd() {
        return;
    }
    let server = Server::start(&["--synthetic", "8MiB", "--zero-fraction", "0.25"]);
    let out = Command::new(binary("fault-client"))
        .args([
            "run",
            "--server",
            &server.1,
            "--workload",
            "zipf",
            "--threads",
            "3",
        ])
        .args(["--verify", "--json"])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    for key in [
        "faults",
        "pages_urgent",
        "pages_background",
        "pages_zero",
        "bytes_received",
        "elapsed_s",
        "latency_us",
        "verified",
    ] {
        assert!(report.get(key).is_some(), "missing {key}: {report}");
    }
    for key in ["p50", "p90", "p99", "max"] {
        assert!(
            report["latency_us"].get(key).is_some(),
            "missing latency_us.{key}"
        );
    }
    assert_eq!(report["verified"], serde_json::Value::Bool(true));
    let pages = report["pages_urgent"].as_u64().unwrap_or(0)
        + report["pages_background"].as_u64().unwrap_or(0)
        + report["pages_zero"].as_u64().unwrap_or(0);
    assert_eq!(pages, 2048, "{report}");
}

#[test]
fn table_report_is_readable() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !common::have_uffd() {
        return;
    }
    let server = Server::start(&["--synthetic", "4MiB"]);
    let out = Command::new(binary("fault-client"))
        .args([
            "run",
            "--server",
            &server.1,
            "--workload",
            "seq",
            "--no-background",
            "--verify",
        ])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for word in ["faults", "fault latency", "p99", "verified", "yes"] {
        assert!(text.contains(word), "{text}");
    }
}

fn demo_servers_alive() -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| {
            let c = String::from_utf8_lossy(c);
            c.contains("page-server") && c.contains("42")
        })
        .count()
}

#[test]
fn demo_verifies_and_leaves_no_process_behind() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !common::have_uffd() {
        return;
    }
    let before = demo_servers_alive();
    let out = Command::new(binary("fault-client"))
        .args(["demo", "--size", "32MiB", "--json"])
        .output()
        .expect("demo");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["verified"], serde_json::Value::Bool(true));
    assert_eq!(report["threads"], 4);
    assert_eq!(report["workload"], "random");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        demo_servers_alive(),
        before,
        "the demo's page-server is still running"
    );
}

#[test]
fn server_killed_mid_transfer_stops_the_client_with_an_error() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !common::have_uffd() {
        return;
    }
    let mut server = Server::start(&["--synthetic", "256MiB"]);
    let started = Instant::now();
    let client = Command::new(binary("fault-client"))
        .args([
            "run",
            "--server",
            &server.1,
            "--workload",
            "seq",
            "--touch",
            "1",
        ])
        .args([
            "--no-background",
            "--threads",
            "2",
            "--reconnect-timeout",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("client");
    std::thread::sleep(Duration::from_millis(300));
    let _ = server.0.kill();
    let _ = server.0.wait();
    let out = client.wait_with_output().expect("client exits");
    assert_eq!(out.status.code(), Some(1), "non-zero exit");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("page server"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(20), "no hang");
}
