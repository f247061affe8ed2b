//! Stress: 64 threads faulting random pages of a large image, the background stream on,
//! connections dropped by the server every few thousand frames, and MADV_DONTNEED on random
//! ranges meanwhile. Every page is verified at the end (discarded pages read as zero), and a
//! watchdog turns a deadlock or a lost wake-up into a failure instead of a hang.
//!
//! `stress_bounded` runs in CI (well under two minutes). The soak variant runs longer:
//! `UFFD_LAB_SOAK_SECS=600 cargo test --release --test stress -- --ignored soak`.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{have_uffd, synthetic, TestServer, PAGE};
use fault_client::client::{Client, ClientOptions};
use rand::{Rng, SeedableRng};
use uffd_core::convert::usize_from;

struct Outcome {
    faults: u64,
    reconnects: u64,
    removes: u64,
    discarded: usize,
}

fn stress(image_bytes: u64, threads: usize, run_for: Duration, drop_every: u64) -> Outcome {
    let server = TestServer::start_with(synthetic(image_bytes, 77, 0.05), |c| {
        c.fault_injection.drop_every = Some(drop_every);
    });
    let pages = image_bytes / PAGE;
    // A deadlock or a lost wake-up must fail the test, not hang CI.
    let done = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let done = Arc::clone(&done);
        let limit = run_for + Duration::from_secs(90);
        std::thread::spawn(move || {
            let start = Instant::now();
            while !done.load(Ordering::Acquire) {
                if start.elapsed() > limit {
                    eprintln!("stress: no progress after {limit:?}: deadlock or lost wake-up");
                    std::process::abort();
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let mut options = ClientOptions::new(server.endpoint.clone());
    options.reconnect_timeout = Duration::from_secs(30);
    let client = Arc::new(Client::open(&options).expect("client"));
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + run_for;

    // The discarder: MADV_DONTNEED on random 1..16-page ranges.
    let discarder = {
        let client = Arc::clone(&client);
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut rng = rand::rngs::StdRng::seed_from_u64(5);
            let mut calls = 0u64;
            while !stop.load(Ordering::Acquire) {
                let first = rng.random_range(0..pages - 16);
                let n = rng.random_range(1..=16u64);
                let addr = client.pager().page_addr(first);
                // SAFETY: the range lies inside the registered region, which outlives this
                // thread; discarding pages is exactly what the test exercises.
                let ret = unsafe {
                    libc::madvise(
                        addr as *mut libc::c_void,
                        usize_from(n * PAGE),
                        libc::MADV_DONTNEED,
                    )
                };
                assert_eq!(ret, 0, "madvise");
                calls += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            calls
        })
    };
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let client = Arc::clone(&client);
            std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(t as u64);
                let mut touched = 0u64;
                while Instant::now() < deadline {
                    for _ in 0..64 {
                        std::hint::black_box(client.touch(rng.random_range(0..pages)));
                        touched += 1;
                    }
                }
                touched
            })
        })
        .collect();
    let touched: u64 = workers.into_iter().map(|w| w.join().expect("worker")).sum();
    stop.store(true, Ordering::Release);
    let madvises = discarder.join().expect("discarder");
    client.wait_complete().expect("the whole image arrives");

    // Verify every page: the image's content, or zeros where the application discarded it.
    let pager = client.pager();
    let mut wrong = 0;
    for p in 0..pages {
        let byte = client.touch(p); // faults discarded, untouched pages in as zeros
        let _ = byte;
        let addr = pager.page_addr(p) as *const u8;
        // SAFETY: every page is present now and nothing writes the region.
        let bytes = unsafe { std::slice::from_raw_parts(addr, usize_from(PAGE)) };
        let ok = if pager.page_state.discarded.get(usize_from(p)) {
            bytes.iter().all(|&b| b == 0)
        } else {
            bytes == server.image.bytes(p * PAGE, PAGE).expect("image bytes")
        };
        if !ok {
            wrong += 1;
        }
    }
    let c = &pager.counters;
    let outcome = Outcome {
        faults: c.faults.load(Ordering::Relaxed),
        reconnects: c.reconnects.load(Ordering::Relaxed),
        removes: c.events_remove.load(Ordering::Relaxed),
        discarded: (0..pages)
            .filter(|&p| pager.page_state.discarded.get(usize_from(p)))
            .count(),
    };
    eprintln!(
        "stress: {threads} threads, {touched} touches, {} faults, {} reconnects, {madvises} madvise calls, {} REMOVE events, {} pages discarded, {wrong} pages wrong",
        outcome.faults, outcome.reconnects, outcome.removes, outcome.discarded
    );
    assert_eq!(wrong, 0, "pages with wrong content");
    let client = Arc::try_unwrap(client).unwrap_or_else(|_| panic!("client still shared"));
    client.close().expect("close");
    done.store(true, Ordering::Release);
    let _ = watchdog.join();
    outcome
}

#[test]
fn stress_bounded() {
    if !have_uffd() {
        return;
    }
    let outcome = stress(128 << 20, 64, Duration::from_secs(8), 1000);
    assert!(
        outcome.reconnects > 0,
        "the server dropped connections: the client must have reconnected"
    );
    assert!(
        outcome.removes > 0,
        "MADV_DONTNEED must have produced REMOVE events"
    );
    assert!(outcome.discarded > 0);
    assert!(outcome.faults > 0);
}

#[test]
#[ignore = "soak: long; run with --ignored"]
fn soak() {
    if !have_uffd() {
        return;
    }
    let secs = std::env::var("UFFD_LAB_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    stress(1 << 30, 64, Duration::from_secs(secs), 20_000);
}
