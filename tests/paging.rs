//! On-demand paging end to end, in process: a real page server on loopback, a real
//! userfaultfd-registered region, every page of the result checked.

mod common;

use common::{have_uffd, synthetic, TestServer, PAGE};
use fault_client::{ClientError, RunConfig, Workload};

fn config(server: &TestServer, workload: Workload, background: bool) -> RunConfig {
    let mut config = RunConfig::new(server.endpoint.clone());
    config.workload = workload;
    config.client.background = background;
    config.verify = true;
    config.threads = 4;
    config.touch = 0.3;
    config
}

#[test]
fn every_workload_with_and_without_background() {
    if !have_uffd() {
        return;
    }
    let server = TestServer::start(synthetic(8 << 20, 3, 0.1));
    for workload in [
        Workload::Seq,
        Workload::Random,
        Workload::Zipf,
        Workload::None,
    ] {
        for background in [true, false] {
            if workload == Workload::None && !background {
                continue; // nothing would ever arrive but the verify pass
            }
            let report = fault_client::client::run(&config(&server, workload, background))
                .unwrap_or_else(|e| panic!("{workload} background={background}: {e}"));
            assert_eq!(report.verified, Some(true), "{workload} bg={background}");
            assert_eq!(
                report.pages_present, report.pages,
                "{workload} bg={background}"
            );
            // Every page arrived exactly once: placed pages add up to the image.
            assert_eq!(
                report.pages_urgent + report.pages_background + report.pages_zero,
                report.pages,
                "{workload} bg={background}: {report:?}"
            );
            if !background {
                assert_eq!(report.pages_background, 0);
                // Without the stream, every page came from exactly one request.
                assert_eq!(report.requests, report.pages, "{report:?}");
            }
            if workload == Workload::None {
                assert_eq!(report.requests, 0, "nothing touched: {report:?}");
                assert_eq!(report.touches, 0);
            } else {
                assert!(report.touches > 0);
            }
        }
    }
}

#[test]
fn many_threads_on_the_same_pages_send_one_request_per_page() {
    if !have_uffd() {
        return;
    }
    // 64 pages, 16 threads, 32 touches each, Zipf: the hot pages are faulted by many threads
    // at once.
    let server = TestServer::start(synthetic(64 * PAGE, 5, 0.0));
    let mut cfg = config(&server, Workload::Zipf, false);
    cfg.threads = 16;
    cfg.touch = 1.0;
    cfg.verify = false;
    let mut total_faults = 0;
    let mut total_requests = 0;
    for seed in 0..5 {
        cfg.seed = seed;
        let report = fault_client::client::run(&cfg).expect("run");
        // One request per page: the pages present are exactly the pages requested.
        assert_eq!(report.requests, report.pages_present, "{report:?}");
        assert_eq!(report.pages_urgent, report.requests, "{report:?}");
        assert!(report.faults >= report.requests, "{report:?}");
        total_faults += report.faults;
        total_requests += report.requests;
    }
    eprintln!("{total_faults} faults became {total_requests} requests");
}

#[test]
fn unaligned_image_dumps_byte_for_byte() {
    if !have_uffd() {
        return;
    }
    let len = (1 << 20) + 1234;
    let server = TestServer::start(synthetic(len, 11, 0.2));
    let dump = std::env::temp_dir().join(format!("uffd-lab-dump-{}", std::process::id()));
    let mut cfg = config(&server, Workload::Random, true);
    cfg.dump = Some(dump.clone());
    let report = fault_client::client::run(&cfg).expect("run");
    assert_eq!(report.image_bytes, len);
    assert_eq!(report.verified, Some(true));
    let bytes = std::fs::read(&dump).expect("dump");
    std::fs::remove_file(&dump).expect("rm dump");
    assert_eq!(bytes.len() as u64, len);
    assert!(
        bytes == server.image.bytes(0, len).expect("image bytes"),
        "dump differs from the image"
    );
}

#[test]
fn file_image_dump_matches_the_file() {
    if !have_uffd() {
        return;
    }
    let dir = std::env::temp_dir();
    let path = dir.join(format!("uffd-lab-image-{}", std::process::id()));
    let mut content = vec![0u8; 300_000];
    for (i, b) in content.iter_mut().enumerate() {
        *b = u8::try_from(i * 7 % 251).expect("a remainder of 251 fits in a byte");
    }
    content[8192..16384].fill(0); // two zero pages
    std::fs::write(&path, &content).expect("write image");
    let image = page_server::Image::from_file(&path, PAGE).expect("image");
    let server = TestServer::start(image);
    let dump = dir.join(format!("uffd-lab-image-dump-{}", std::process::id()));
    let mut cfg = config(&server, Workload::Seq, false);
    cfg.dump = Some(dump.clone());
    let report = fault_client::client::run(&cfg).expect("run");
    let bytes = std::fs::read(&dump).expect("dump");
    std::fs::remove_file(&dump).expect("rm");
    std::fs::remove_file(&path).expect("rm");
    assert_eq!(report.pages_zero, 2, "{report:?}");
    assert!(bytes == content, "dump differs from the file");
}

#[test]
fn zero_pages_are_never_sent_as_data() {
    if !have_uffd() {
        return;
    }
    let server = TestServer::start(synthetic(16 << 20, 2, 0.9));
    let zero = server.image.zero_pages();
    let report = fault_client::client::run(&config(&server, Workload::Random, true)).expect("run");
    assert_eq!(report.verified, Some(true));
    assert_eq!(report.pages_zero, zero, "{report:?}");
    let data_pages = report.pages - zero;
    // Data pages plus small frames: far less than the image.
    assert!(
        report.bytes_received < data_pages * PAGE + data_pages * 64 + (1 << 20),
        "{report:?}"
    );
}

#[test]
fn server_gone_mid_transfer_is_an_error_not_a_hang() {
    if !have_uffd() {
        return;
    }
    let mut server = TestServer::start(synthetic(64 << 20, 4, 0.0));
    let cfg = {
        let mut c = config(&server, Workload::Seq, false);
        c.touch = 1.0;
        c.threads = 2;
        c.verify = false;
        c.client.reconnect_timeout = std::time::Duration::from_millis(500);
        c
    };
    let run = std::thread::spawn(move || fault_client::client::run(&cfg));
    std::thread::sleep(std::time::Duration::from_millis(100));
    let started = std::time::Instant::now();
    server.stop();
    let result = run.join().expect("client thread");
    match result {
        Err(ClientError::Run(failed)) => {
            let why = failed.to_string();
            assert!(why.contains("page server"), "{why}");
        }
        Ok(report) => panic!("the run should fail, it reported {report:?}"),
        Err(other) => panic!("unexpected error {other}"),
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[test]
fn unreachable_server_is_a_clear_error() {
    // A port nobody listens on: bind, note the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let cfg = RunConfig::new(format!("127.0.0.1:{port}").parse().expect("endpoint"));
    let err = fault_client::client::run(&cfg).expect_err("nobody listens");
    let text = err.to_string();
    assert!(
        text.contains("cannot reach page server at 127.0.0.1"),
        "{text}"
    );
}

#[test]
fn max_bandwidth_paces_the_background_stream() {
    if !have_uffd() {
        return;
    }
    // 12 MiB of data at 8 MB/s (64 Mbit/s) cannot take less than 1.5 s; unpaced over
    // loopback it takes milliseconds. (A lower bound only: pacing can never make it faster.)
    let rate: u32 = 8_000_000;
    let server = TestServer::start_with(synthetic(12 << 20, 5, 0.0), |c| {
        c.max_bandwidth = Some(u64::from(rate));
    });
    let report =
        fault_client::client::run(&config(&server, Workload::None, true)).expect("paced run");
    assert_eq!(report.verified, Some(true));
    let floor = f64::from(12u32 << 20) / f64::from(rate) * 0.8;
    assert!(
        report.elapsed_s >= floor,
        "12 MiB paced at {rate} B/s arrived in {:.3} s (< {floor:.2} s): not paced",
        report.elapsed_s
    );
}

#[test]
fn trace_has_every_stage_of_each_urgent_fault() {
    if !have_uffd() {
        return;
    }
    let server = TestServer::start(synthetic(8 << 20, 6, 0.2));
    let dir = std::env::temp_dir().join(format!("uffd-lab-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("trace.csv");
    let mut run = config(&server, Workload::Random, false);
    run.client.trace = Some(path.clone());
    let report = fault_client::client::run(&run).expect("traced run");
    assert_eq!(report.verified, Some(true));

    let text = std::fs::read_to_string(&path).expect("trace");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(fault_client::trace::HEADER));
    // Per requested offset: when the request went out and when its answer was read.
    let mut requests = std::collections::HashMap::new();
    let mut answers = std::collections::HashMap::new();
    let (mut faults, mut resolved, mut touches) = (0u64, 0u64, 0u64);
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(f.len(), 8, "{line}");
        let t: f64 = f[0].parse().expect("t_us");
        let offset: u64 = f[2].parse().expect("offset");
        match f[1] {
            "request" => assert!(
                requests.insert(offset, t).is_none(),
                "requested twice: {line}"
            ),
            "answer" => {
                answers.entry(offset).or_insert(t);
            }
            "fault" => faults += 1,
            "resolved" => resolved += 1,
            "touch" => {
                let took: f64 = f[4].parse().expect("touch latency_us");
                assert!(took >= 0.0, "{line}");
                touches += 1;
            }
            "arrival" | "gathered" => {}
            other => panic!("unknown event {other}: {line}"),
        }
    }
    assert_eq!(requests.len() as u64, report.requests, "{report:?}");
    assert!(faults >= report.requests && resolved >= report.requests);
    // One touch event per latency sample of the workload.
    assert_eq!(touches, report.latency_us.samples, "{report:?}");
    for (offset, sent) in &requests {
        let read = answers
            .get(offset)
            .unwrap_or_else(|| panic!("no answer for {offset}"));
        assert!(
            read >= sent,
            "answer for {offset} read before its request was sent"
        );
    }
    // Every request was answered on the urgent connection (no stream): each is measured.
    let stages = fault_client::stages::stages(&path).expect("stages");
    assert_eq!(stages.requests as u64, report.requests);
    assert_eq!(stages.measured, stages.requests, "{stages:?}");
    assert_eq!(stages.handler.len(), stages.measured, "{stages:?}");
    // The workload's faults are matched with the accesses that raised them (one per
    // request: two threads touching one page make one request; the final verification's
    // faults have no touch).
    assert_eq!(stages.touch.len() as u64, touches);
    assert_eq!(stages.delivery.len(), stages.wakeup.len());
    let matched = stages.delivery.len() as u64;
    assert!(
        matched <= touches && matched * 10 >= touches * 9,
        "{matched} of {touches} touches matched with a request"
    );
    for (stage, values) in [
        ("round trip", &stages.round_trip),
        ("placement", &stages.placement),
        ("delivery", &stages.delivery),
        ("wake-up", &stages.wakeup),
    ] {
        assert!(values.iter().all(|&v| v >= 0.0), "{stage}: {values:?}");
    }
    // The plot reads the new events too.
    let out = dir.join("trace.svg");
    fault_client::plot::plot(&path, &out).expect("plot the trace");
    let _ = std::fs::remove_dir_all(&dir);
}
