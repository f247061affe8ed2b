//! Recovery like postcopy recovery: connections dropped, the server restarted; the client
//! reconnects, resumes the session with its received bitmap, and every page is still right.

mod common;

use std::time::{Duration, Instant};

use common::{have_uffd, synthetic, TestServer};
use fault_client::connect::ConnectError;
use fault_client::fatal::Fatal;
use fault_client::{ClientError, RunConfig, Workload};
use uffd_core::proto::ErrorCode;

fn config(server: &TestServer) -> RunConfig {
    let mut c = RunConfig::new(server.endpoint.clone());
    c.verify = true;
    c.quiet = true;
    c.threads = 4;
    c.touch = 0.5;
    c.client.reconnect_timeout = Duration::from_secs(20);
    c
}

#[test]
fn connections_cut_every_few_hundred_frames() {
    if !have_uffd() {
        return;
    }
    let server = TestServer::start_with(synthetic(64 << 20, 21, 0.1), |c| {
        c.fault_injection.drop_every = Some(150);
    });
    for (workload, background) in [
        (Workload::Random, true),
        (Workload::Seq, false),
        (Workload::None, true),
    ] {
        let mut cfg = config(&server);
        cfg.workload = workload;
        cfg.client.background = background;
        let r = fault_client::client::run(&cfg).expect("the run survives the cuts");
        assert_eq!(r.verified, Some(true), "{r:?}");
        assert!(r.reconnects >= 3, "connections were cut: {r:?}");
        eprintln!(
            "{workload} bg={background}: {} reconnects, verified",
            r.reconnects
        );
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

/// A server on a fixed port, so a "restarted" one can take over the address.
fn server_on(port: u16, seed: u64) -> TestServer {
    let image = std::sync::Arc::new(synthetic(96 << 20, seed, 0.0));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let listen = format!("127.0.0.1:{port}").parse().expect("endpoint");
        match TestServer::try_start_with(std::sync::Arc::clone(&image), |c| c.listen = listen) {
            Ok(server) => return server,
            Err(err) => assert!(Instant::now() < deadline, "port {port} stays busy: {err}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

type Run = std::thread::JoinHandle<Result<fault_client::Report, ClientError>>;

/// Starts an on-demand run against a server on a fixed port (image `seed`), then stops that
/// server mid-run. Returns the port, for a "restarted" server, and the running client.
fn run_then_stop_server(seed: u64) -> (u16, Run) {
    let port = free_port();
    let mut first = server_on(port, seed);
    let mut cfg = config(&first);
    cfg.workload = Workload::Seq;
    cfg.client.background = false;
    cfg.touch = 1.0;
    cfg.threads = 2;
    let run = std::thread::spawn(move || fault_client::client::run(&cfg));
    std::thread::sleep(Duration::from_millis(150));
    first.stop();
    (port, run)
}

#[test]
fn server_restart_with_the_same_image_is_survived() {
    if !have_uffd() {
        return;
    }
    let (port, run) = run_then_stop_server(33);
    std::thread::sleep(Duration::from_millis(300));
    let _second = server_on(port, 33);
    let r = run
        .join()
        .expect("client")
        .expect("resumed against the restarted server");
    assert_eq!(r.verified, Some(true), "{r:?}");
    assert!(r.reconnects >= 1, "{r:?}");
}

#[test]
fn server_restart_with_another_image_is_refused_clearly() {
    if !have_uffd() {
        return;
    }
    let (port, run) = run_then_stop_server(44);
    let _other = server_on(port, 45); // same size, different content
    match run.join().expect("client") {
        Err(ClientError::Run(failed)) => {
            let why = failed.to_string();
            assert!(why.contains("recovery impossible"), "{why}");
            assert!(why.contains("image"), "{why}");
            // The same, typed: a caller can tell a refused recovery from a lost link.
            assert!(
                matches!(
                    failed.fatal(),
                    Fatal::RecoveryImpossible(ConnectError::Refused {
                        code: ErrorCode::ImageMismatch,
                        ..
                    })
                ),
                "{failed:?}"
            );
        }
        Ok(r) => panic!("a different image must not be accepted: {r:?}"),
        Err(other) => panic!("unexpected error: {other}"),
    }
}
