//! Partial-page preemption at the protocol level: the background stream sends 2 MiB units in
//! 64 KiB chunks and steps aside for urgent answers, yet
//! - no page is ever sent on both connections (no "split brain"), and
//! - a request for a page inside the unit the background is in the middle of is answered in
//!   bounded time even while a flood of other requests keeps the urgent connection busy (the
//!   half-sent unit is finished first, with urgent priority, instead of starving).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{synthetic, TestServer, PAGE};
use uffd_core::convert::usize_from;
use uffd_core::proto::{self, Hello, Role};
use uffd_core::{Conn, Frame, FrameReader, FrameWriter, Limits};

const UNIT: u64 = 2 << 20;
const UNIT_PAGES: u64 = UNIT / PAGE;

fn hello(
    server: &TestServer,
    role: Role,
    session: u64,
) -> (FrameReader<Conn>, FrameWriter<Conn>, u64) {
    let conn = Conn::connect(&server.endpoint, Duration::from_secs(5)).expect("connect");
    let mut writer = FrameWriter::new(conn.try_clone().expect("clone"));
    writer
        .send(&Frame::Hello(Hello {
            version: proto::VERSION,
            role,
            flags: 0,
            session,
            unit: UNIT,
            image_id: 0,
            token: b"",
        }))
        .expect("hello");
    let mut reader = FrameReader::new(conn);
    match reader
        .read_frame(&Limits::handshake(PAGE))
        .expect("welcome")
    {
        Some(Frame::Welcome(w)) => (reader, writer, w.session),
        other => panic!("expected a welcome, got {other:?}"),
    }
}

/// Records which connection delivered each page: 1 urgent, 2 background (3 would be both).
fn receive(
    mut reader: FrameReader<Conn>,
    limits: Limits,
    arrived: Arc<Vec<AtomicU8>>,
    mark: u8,
    done: Arc<AtomicBool>,
) {
    loop {
        match reader.read_frame(&limits) {
            Ok(Some(Frame::Data { offset, bytes })) => {
                for p in offset / PAGE..(offset + bytes.len() as u64) / PAGE {
                    arrived[usize_from(p)].fetch_or(mark, Ordering::AcqRel);
                }
            }
            Ok(Some(Frame::Zero { offset, len })) => {
                for p in offset / PAGE..(offset + len) / PAGE {
                    arrived[usize_from(p)].fetch_or(mark, Ordering::AcqRel);
                }
            }
            Ok(Some(Frame::End)) => done.store(true, Ordering::Release),
            Ok(Some(other)) => panic!("unexpected {other:?}"),
            Ok(None) | Err(_) => return,
        }
    }
}

#[test]
fn half_sent_units_finish_first_and_no_page_travels_twice() {
    let image_len = 256 << 20;
    let server = TestServer::start_with(synthetic(image_len, 12, 0.0), |c| {
        c.policy.chunk = 64 << 10;
        c.policy.preempt = true;
    });
    let pages = image_len / PAGE;
    let limits = Limits::new(image_len, PAGE);
    let arrived: Arc<Vec<AtomicU8>> = Arc::new((0..pages).map(|_| AtomicU8::new(0)).collect());
    let (urgent_rx, mut urgent_tx, session) = hello(&server, Role::Urgent, 0);
    let (background_rx, _background_tx, _) = hello(&server, Role::Background, session);
    let ended = Arc::new(AtomicBool::new(false));
    let receivers = [
        {
            let (a, e) = (Arc::clone(&arrived), Arc::clone(&ended));
            std::thread::spawn(move || receive(urgent_rx, limits, a, 1, e))
        },
        {
            let (a, e) = (Arc::clone(&arrived), Arc::clone(&ended));
            std::thread::spawn(move || receive(background_rx, limits, a, 2, e))
        },
    ];

    // The flood: every 4 KiB page of the upper half, one request each, plus, interleaved,
    // probes: the last page of each of the first 16 units. Whichever of them the background is
    // in the middle of must still arrive promptly.
    let mut probes = Vec::new();
    let flood: Vec<u64> = (pages / 2..pages).collect();
    for (i, &page) in flood.iter().enumerate() {
        urgent_tx
            .send(&Frame::Request {
                offset: page * PAGE,
                len: PAGE,
            })
            .expect("request");
        if i % 1024 == 0 && probes.len() < 16 {
            let unit = probes.len() as u64;
            let probe = unit * UNIT_PAGES + UNIT_PAGES - 1;
            urgent_tx
                .send(&Frame::Request {
                    offset: probe * PAGE,
                    len: PAGE,
                })
                .expect("probe");
            probes.push((probe, Instant::now()));
        }
    }
    let mut worst = Duration::ZERO;
    for &(probe, sent) in &probes {
        while arrived[usize_from(probe)].load(Ordering::Acquire) == 0 {
            assert!(
                sent.elapsed() < Duration::from_secs(5),
                "probe page {probe} starved"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        worst = worst.max(sent.elapsed());
    }
    eprintln!(
        "slowest probe answered after {worst:?} while {} requests flooded",
        flood.len()
    );

    let started = Instant::now();
    while !ended.load(Ordering::Acquire) || arrived.iter().any(|a| a.load(Ordering::Acquire) == 0) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the image never completed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let both = arrived
        .iter()
        .filter(|a| a.load(Ordering::Acquire) == 3)
        .count();
    assert_eq!(both, 0, "pages sent on both connections");
    drop(urgent_tx);
    drop(server);
    for r in receivers {
        let _ = r.join();
    }
}
