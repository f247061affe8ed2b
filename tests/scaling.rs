//! Costs that grow with the work, not faster, and sources that change under the server:
//! a served file truncated mid-run ends the run with the reason (no reconnect loop, the server
//! keeps serving); a huge synthetic image starts at once and serves right pages from a small
//! server; many sessions at once all verify.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{have_uffd, ServerProcess, TestServer, PAGE};
use fault_client::client::{Client, ClientOptions};
use fault_client::fatal::Fatal;
use fault_client::{ClientError, RunConfig, Workload};
use uffd_core::convert::usize_from;
use uffd_core::Synthetic;

/// Waits for the run of `client` to fail, at most `limit` after `since`; returns the error
/// and the reconnections made.
fn failure_within(client: Client, since: Instant, limit: Duration) -> (ClientError, u64) {
    let pager = Arc::clone(client.pager());
    let reconnects = || pager.counters.reconnects.load(Ordering::Relaxed);
    let waiter = std::thread::spawn(move || client.wait_complete());
    while !waiter.is_finished() {
        assert!(
            since.elapsed() < limit,
            "the client did not stop within {limit:?} ({} reconnects so far)",
            reconnects()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let err = waiter
        .join()
        .expect("waiter")
        .expect_err("the run must fail");
    (err, reconnects())
}

fn page_of(client: &Client, p: u64) -> Vec<u8> {
    client.touch(p);
    let addr = client.pager().page_addr(p) as *const u8;
    // SAFETY: page `p` is present (just touched) in the client's region, which lives as long
    // as the client; nothing writes it.
    unsafe { std::slice::from_raw_parts(addr, usize_from(PAGE)) }.to_vec()
}

#[test]
fn truncated_image_file_ends_the_session_with_the_reason_and_the_server_serves_on() {
    if !have_uffd() {
        return;
    }
    let path = std::env::temp_dir().join(format!("uffd-lab-truncated-{}", std::process::id()));
    let content: Vec<u8> = (0..16u64 << 20).map(|i| (i * 31 % 251) as u8 + 1).collect();
    std::fs::write(&path, &content).expect("write image");
    let image = page_server::Image::from_file(&path, PAGE).expect("image");
    // Paced, so the stream is still running when the file shrinks.
    let server = TestServer::start_with(image, |c| c.max_bandwidth = Some(8 << 20));
    let mut options = ClientOptions::new(server.endpoint.clone());
    options.reconnect_timeout = Duration::from_secs(30);
    let client = Client::open(&options).expect("client");
    std::thread::sleep(Duration::from_millis(300));
    let new_len = 4 << 20;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_len(new_len))
        .expect("truncate");
    let (err, reconnects) = failure_within(client, Instant::now(), Duration::from_secs(15));
    let message = err.to_string();
    assert!(
        message.contains("SourceFailed") && message.contains("shrank"),
        "the error must say the image file shrank: {message}"
    );
    assert!(reconnects <= 3, "a reconnect loop: {reconnects} reconnects");
    // The server still serves: another session gets pages below the new end, right.
    let mut options = ClientOptions::new(server.endpoint.clone());
    options.background = false;
    let other = Client::open(&options).expect("another session");
    for p in (0..new_len / PAGE).step_by(97) {
        let at = usize_from(p * PAGE);
        assert_eq!(
            page_of(&other, p),
            &content[at..at + usize_from(PAGE)],
            "page {p}"
        );
    }
    other.close().expect("close");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_huge_synthetic_image_serves_right_pages_from_a_small_server() {
    if !have_uffd() {
        return;
    }
    const SIZE: u64 = 1 << 40;
    let server = ServerProcess::start(&["--synthetic", "1TiB", "--seed", "5"]);
    let mut options = ClientOptions::new(server.1.parse().expect("endpoint"));
    options.background = false;
    options.want_checksums = true;
    let client = Client::open(&options).expect("client");
    assert_eq!(client.image_size(), SIZE);
    let image = Synthetic::new(SIZE, 5, 0.1, PAGE).expect("the same image");
    let pages = SIZE / PAGE;
    let mut expected = vec![0u8; usize_from(PAGE)];
    // Pages all over the terabyte, the last one included.
    for k in 0..512u64 {
        let p = k.wrapping_mul(0x9E37_79B9_7F4A_7C15) % pages;
        let p = if k == 511 { pages - 1 } else { p };
        image.fill(p, &mut expected);
        assert!(page_of(&client, p) == expected, "page {p} differs");
    }
    let rss = server.rss();
    assert!(
        rss < 64 << 20,
        "the server holds {} MiB for a 1 TiB image",
        rss >> 20
    );
    client.close().expect("close");
}

#[test]
fn many_concurrent_sessions_all_verify_from_a_server_smaller_than_one_image() {
    if !have_uffd() {
        return;
    }
    const IMAGE: u64 = 32 << 20;
    const SESSIONS: usize = 48;
    let server = ServerProcess::start(&["--synthetic", "32MiB", "--seed", "9"]);
    let endpoint: uffd_core::Endpoint = server.1.parse().expect("endpoint");
    let runs: Vec<_> = (0..SESSIONS)
        .map(|i| {
            let mut cfg = RunConfig::new(endpoint.clone());
            cfg.workload = if i % 2 == 0 {
                Workload::None
            } else {
                Workload::Random
            };
            cfg.threads = 1;
            cfg.touch = 0.05;
            cfg.verify = true;
            cfg.quiet = true;
            std::thread::spawn(move || fault_client::client::run(&cfg))
        })
        .collect();
    let mut most_rss = 0;
    while runs.iter().any(|r| !r.is_finished()) {
        most_rss = most_rss.max(server.rss());
        std::thread::sleep(Duration::from_millis(10));
    }
    for (i, run) in runs.into_iter().enumerate() {
        let report = run.join().expect("client thread").expect("run");
        assert_eq!(report.verified, Some(true), "session {i}: {report:?}");
        assert_eq!(report.image_bytes, IMAGE);
    }
    // The image is generated as it is sent: the server never holds one image's worth.
    assert!(
        most_rss < IMAGE / 2,
        "the server held {} MiB serving {SESSIONS} sessions of a {} MiB image",
        most_rss >> 20,
        IMAGE >> 20
    );
}

/// A server that completes every handshake and then closes the connection at once, without
/// sending a page: every reconnection "works" and brings nothing.
fn welcome_then_close(listener: std::net::TcpListener) {
    use std::io::{Read, Write};
    use uffd_core::proto::{self, Welcome};
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { return };
        // The hello (and a resuming client's have frames): whatever arrives within 50 ms.
        let _ = conn.set_read_timeout(Some(Duration::from_millis(50)));
        let mut sink = [0u8; 4096];
        while matches!(conn.read(&mut sink), Ok(n) if n > 0) {}
        let mut frame = bytes::BytesMut::new();
        uffd_core::Frame::Welcome(Welcome {
            version: proto::VERSION,
            flags: 0,
            session: 7,
            image_size: 1 << 20,
            page_size: u32::try_from(PAGE).expect("a page size fits in u32"),
            image_id: 42,
        })
        .encode(&mut frame);
        let _ = conn.write_all(&frame);
    }
}

#[test]
fn a_link_that_brings_no_page_backs_off_and_gives_up_after_the_reconnect_timeout() {
    if !have_uffd() {
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || welcome_then_close(listener));
    let mut options = ClientOptions::new(endpoint.parse().expect("endpoint"));
    options.reconnect_timeout = Duration::from_secs(2);
    let started = Instant::now();
    let client = Client::open(&options).expect("client");
    let (err, reconnects) = failure_within(client, started, Duration::from_secs(15));
    let message = err.to_string();
    assert!(
        message.contains("no new page for 2s"),
        "the error must say no page came: {message}"
    );
    // The same, typed: the link given up after losses without a new page.
    assert!(
        matches!(
            err.fatal(),
            Some(Fatal::NoProgress { timeout, losses, .. })
                if *timeout == Duration::from_secs(2) && *losses > 1
        ),
        "{err:?}"
    );
    // Back-off: 20 ms doubling to 1 s, so a handful of reconnections in 2 s, not thousands.
    assert!(
        (2..=15).contains(&reconnects),
        "{reconnects} reconnects in {:?}",
        started.elapsed()
    );
}
