//! The page-server binary as a user runs it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_page-server");

#[test]
fn help_names_the_options() {
    let out = Command::new(BIN).arg("--help").output().expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--image",
        "--synthetic",
        "--seed",
        "--zero-fraction",
        "--chunk",
        "--no-preempt",
        "--max-pending",
        "--max-pending-per-source",
        "--hello-timeout",
        "--peer-timeout",
        "--idle-timeout",
        "--max-bandwidth",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn drop_every_is_listed_as_fault_injection() {
    let out = Command::new(BIN).arg("--help").output().expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    let heading = text
        .find("Fault injection (tests and demos):")
        .expect("--help has a fault injection heading");
    assert!(
        text[heading..].contains("--drop-every <N>"),
        "--drop-every is not under the fault injection heading:\n{text}"
    );
}

#[test]
fn bad_arguments_exit_2_with_a_message() {
    for args in [
        vec![],
        vec!["--synthetic", "12XB"],
        vec!["--synthetic", "1MiB", "--listen", "nonsense"],
        vec!["--synthetic", "1MiB", "--zero-fraction", "abc"],
        vec!["--synthetic", "1MiB", "--chunk", "1000"],
        vec!["--synthetic", "1MiB", "--image", "/tmp/x"],
        vec!["--synthetic", "1MiB", "--idle-timeout", "5x"],
        vec!["--synthetic", "1MiB", "--idle-timeout", "0"],
        vec!["--synthetic", "1MiB", "--max-pending", "0"],
        vec!["--synthetic", "1MiB", "--max-pending-per-source", "0"],
        vec!["--synthetic", "1MiB", "--hello-timeout", "0"],
        vec!["--synthetic", "1MiB", "--peer-timeout", "soon"],
        vec!["--synthetic", "1MiB", "--max-bandwidth", "900"],
        vec!["--synthetic", "1MiB", "--max-bandwidth", "0mbit"],
    ] {
        let out = Command::new(BIN).args(&args).output().expect("run");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
}

#[test]
fn missing_image_file_is_a_clear_error() {
    let out = Command::new(BIN)
        .args([
            "--image",
            "/nonexistent/image.bin",
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read image /nonexistent/image.bin"),
        "{err}"
    );
}

#[test]
fn prints_the_bound_address_first_and_stops_on_sigterm() {
    let mut child = Command::new(BIN)
        .args(["--synthetic", "1MiB", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("line");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .expect("first line");
    let port: u16 = addr
        .rsplit_once(':')
        .expect("port")
        .1
        .parse()
        .expect("number");
    assert_ne!(port, 0, "the real port, not 0");
    std::net::TcpStream::connect(addr).expect("it listens there");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("kill");
    let started = Instant::now();
    let status = child.wait().expect("wait");
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn unix_socket_listener() {
    let path = std::env::temp_dir().join(format!("ps-cli-{}.sock", std::process::id()));
    let mut child = Command::new(BIN)
        .args(["--synthetic", "1MiB", "--listen"])
        .arg(format!("unix:{}", path.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("line");
    assert_eq!(line.trim(), format!("listening on unix:{}", path.display()));
    std::os::unix::net::UnixStream::connect(&path).expect("connect");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("kill");
    assert!(child.wait().expect("wait").success());
    assert!(!path.exists(), "socket file removed on exit");
}
