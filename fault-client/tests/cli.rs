//! The fault-client binary's argument handling and probe, as a user runs them.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_fault-client");

#[test]
fn help_lists_the_commands_and_run_flags() {
    let out = Command::new(BIN).arg("--help").output().expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["run", "probe", "demo", "plot", "stages", "bench"] {
        assert!(text.contains(cmd), "--help lacks {cmd}");
    }
    let out = Command::new(BIN)
        .args(["run", "--help"])
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--server",
        "--workload",
        "--threads",
        "--touch",
        "--no-background",
        "--verify",
        "--dump",
        "--json",
        "--reconnect-timeout",
        "--stall-timeout",
    ] {
        assert!(text.contains(flag), "run --help lacks {flag}");
    }
}

#[test]
fn bad_arguments_exit_2() {
    for args in [
        vec!["run"],
        vec!["run", "--server", "nonsense"],
        vec!["run", "--server", "127.0.0.1:1", "--touch", "2"],
        vec!["run", "--server", "127.0.0.1:1", "--workload", "sideways"],
        vec!["run", "--server", "127.0.0.1:1", "--threads", "0"],
        vec!["run", "--server", "127.0.0.1:1", "--stall-timeout", "0"],
    ] {
        let out = Command::new(BIN).args(&args).output().expect("run");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn stages_of_a_missing_or_malformed_trace_is_a_clear_error() {
    let stages = |trace: &std::path::Path| {
        Command::new(BIN)
            .arg("stages")
            .arg(trace)
            .output()
            .expect("run")
    };
    let out = stages("/nonexistent/trace.csv".as_ref());
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/trace.csv"));
    let path = std::env::temp_dir().join(format!("bad-trace-{}.csv", std::process::id()));
    std::fs::write(
        &path,
        "t_us,event,offset,len,latency_us,resolution,channel\n1,fault\n",
    )
    .expect("write");
    let out = stages(&path);
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 2"));
}

#[test]
fn unreachable_server_is_one_line_and_exit_1() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let out = Command::new(BIN)
        .args(["run", "--server", &format!("127.0.0.1:{port}")])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("cannot reach page server"), "{err}");
}

#[test]
fn probe_json_reports_features() {
    let out = Command::new(BIN)
        .args(["probe", "--json"])
        .output()
        .expect("run");
    assert!(out.status.success());
    let probe: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    for key in [
        "kernel",
        "features",
        "feature_names",
        "ioctl_names",
        "huge_pools",
        "thp_enabled",
        "open",
    ] {
        assert!(probe.get(key).is_some(), "probe lacks {key}");
    }
    // `open` is `{"Ok": how}` or `{"Err": why}`, with a string inside.
    let open = probe["open"].as_object().expect("open is an object");
    assert_eq!(open.len(), 1, "{open:?}");
    let (tag, value) = open.iter().next().expect("one entry");
    assert!(tag == "Ok" || tag == "Err", "{open:?}");
    assert!(value.is_string(), "{open:?}");
    let out = Command::new(BIN).arg("probe").output().expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("userfaultfd"), "{text}");
}

#[test]
fn fail_fast_raises_sigbus_instead_of_waiting() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    let server_bin = std::path::Path::new(BIN)
        .parent()
        .expect("target dir")
        .join("page-server");
    assert!(
        server_bin.is_file(),
        "run the workspace's tests: page-server is built with them"
    );
    let mut server = Command::new(&server_bin)
        .args(["--synthetic", "64MiB", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("server");
    let mut line = String::new();
    BufReader::new(server.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("line");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .expect("address")
        .to_string();
    // Touching pages before the stream brought them: SIGBUS, not a wait.
    let touched = Command::new(BIN)
        .args([
            "run",
            "--server",
            &addr,
            "--fail-fast",
            "--no-background",
            "--touch",
            "0.5",
            "--quiet",
        ])
        .output()
        .expect("run");
    // Background only: nothing is touched before it arrives, the run completes and verifies.
    let streamed = Command::new(BIN)
        .args([
            "run",
            "--server",
            &addr,
            "--fail-fast",
            "--workload",
            "none",
            "--verify",
            "--quiet",
        ])
        .output()
        .expect("run");
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(
        touched.status.signal(),
        Some(libc::SIGBUS),
        "{:?}",
        touched.status
    );
    assert!(
        streamed.status.success(),
        "{}",
        String::from_utf8_lossy(&streamed.stderr)
    );
}
