//! Step 11: remote paging in one file. A tiny page server and a client talk over two socket
//! pairs with the project's real frames (`uffd_core::proto`) and framing (`uffd_core::wire`):
//! - the **urgent** connection: the client's fault handler sends a `Request` for each faulting
//!   page, the server answers at once with `Data` (or `Zero` for a page of zeros);
//! - the **background** connection: the server streams every page not sent yet, then `End`.
//!
//! Every page is sent once: the server claims it in a bitmap before sending, on either
//! connection. The client places whatever arrives first; EEXIST means the other path won.
//! (The real tools also exchange `Hello`/`Welcome` first: docs/protocol.md.)
//!
//! Run: `cargo run --release --example 11_remote`

mod common;

use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::{exit_on_error, join, read_byte, scope_or_exit, PAGE};
use uffd_core::place::{self, Outcome};
use uffd_core::{
    Event, Frame, FrameReader, FrameWriter, Limits, Modes, PageBitmap, Region, Userfaultfd,
};

const PAGES: usize = 256;
/// The background stream sends a page per millisecond, as over a slow link: the workload
/// outruns it, so both paths are seen.
const PACE: Duration = Duration::from_millis(1);

fn main() -> Result<()> {
    let limits = Limits::new((PAGES * PAGE) as u64, PAGE as u64);
    // The image: page p holds byte p % 251 + 1, and every eighth page is all zero.
    let image: Vec<u8> = (0..PAGES * PAGE).map(|b| content(b / PAGE)).collect();
    let (urgent_client, urgent_server) = UnixStream::pair()?;
    let (background_client, background_server) = UnixStream::pair()?;
    let uffd = Userfaultfd::open(0).context("open a userfaultfd (run 01_probe for the fixes)")?;
    let region = Region::anonymous(PAGES * PAGE)?;
    uffd.register(region.addr(), region.len() as u64, Modes::MISSING)?;

    // Server state: pages claimed for sending. Client state: pages received, pages requested.
    let sent = PageBitmap::new(PAGES);
    let (received, requested) = (PageBitmap::new(PAGES), PageBitmap::new(PAGES));
    let (faults, urgent, background, eexist) = Default::default();
    let counters: [&AtomicUsize; 4] = [&faults, &urgent, &background, &eexist];
    let stop = AtomicBool::new(false);
    let page_frame = |p: usize| -> Frame<'_> {
        let offset = (p * PAGE) as u64;
        match content(p) {
            0 => Frame::Zero {
                offset,
                len: PAGE as u64,
            },
            _ => Frame::Data {
                offset,
                bytes: &image[p * PAGE..(p + 1) * PAGE],
            },
        }
    };

    // Client, receivers: place what arrives. COPY/ZEROPAGE also wake the faulting threads.
    let place_from = |conn: UnixStream, count: &AtomicUsize| -> Result<()> {
        let mut reader = FrameReader::new(conn);
        while let Some(frame) = reader.read_frame(&limits)? {
            let (offset, outcome) = match frame {
                Frame::Data { offset, bytes } => (
                    offset,
                    place::copy(&uffd, region.addr() + offset, bytes, true)?,
                ),
                Frame::Zero { offset, len } => (
                    offset,
                    place::zeropage(&uffd, region.addr() + offset, len, true)?,
                ),
                Frame::End => break,
                other => bail!("unexpected frame {:?}", other.kind()),
            };
            match outcome {
                Outcome::Placed(_) => count.fetch_add(1, Relaxed),
                Outcome::AlreadyPresent => eexist.fetch_add(1, Relaxed),
                other => bail!("placing at offset {offset}: {other:?}"),
            };
            received.set(page_index(offset)?);
        }
        Ok(())
    };

    scope_or_exit("remote paging", |s| {
        // Server, urgent connection: answer each request with the pages not sent yet.
        let (sent, limits) = (&sent, &limits);
        s.spawn(move || {
            exit_on_error("server urgent", || -> Result<()> {
                let mut writer = FrameWriter::new(urgent_server.try_clone()?);
                let mut reader = FrameReader::new(urgent_server);
                while let Some(frame) = reader.read_frame(limits)? {
                    let Frame::Request { offset, len } = frame else {
                        bail!("expected a request")
                    };
                    for p in page_index(offset)?..page_index(offset + len)? {
                        if sent.set(p) {
                            writer.send(&page_frame(p))?;
                        }
                    }
                }
                Ok(())
            })
        });
        // Server, background connection: everything not sent yet, in order, then End.
        s.spawn(move || {
            exit_on_error("server background", || -> Result<()> {
                let mut writer = FrameWriter::new(background_server);
                for p in 0..PAGES {
                    if sent.set(p) {
                        writer.send(&page_frame(p))?;
                        std::thread::sleep(PACE);
                    }
                }
                Ok(writer.send(&Frame::End)?)
            })
        });

        let (place_from, urgent_conn) = (&place_from, urgent_client.try_clone()?);
        let (urgent, background) = (&urgent, &background);
        s.spawn(move || {
            exit_on_error("client urgent receiver", || place_from(urgent_conn, urgent))
        });
        let bg = s.spawn(move || {
            exit_on_error("client background receiver", || {
                place_from(background_client, background)
            })
        });

        // Client, fault handler: one request per missing page, never twice.
        let urgent_writer = urgent_client.try_clone()?;
        s.spawn(|| {
            exit_on_error("client fault handler", || -> Result<()> {
                let mut writer = FrameWriter::new(urgent_writer);
                let (mut buffer, mut events) = (Userfaultfd::event_buffer(16), Vec::new());
                while !stop.load(Relaxed) {
                    if !uffd.wait_readable(Duration::from_millis(10))? {
                        continue;
                    }
                    uffd.read_events(&mut buffer, &mut events)?;
                    for event in events.drain(..) {
                        let Event::Fault { addr, .. } = event else {
                            bail!("unexpected {event:?}")
                        };
                        faults.fetch_add(1, Relaxed);
                        let p = page_index(addr - region.addr())?;
                        if !received.get(p) && requested.set(p) {
                            writer.send(&Frame::Request {
                                offset: (p * PAGE) as u64,
                                len: PAGE as u64,
                            })?;
                        }
                    }
                }
                Ok(())
            })
        });

        // The workload: 32 pages from the far end of the region, each checked.
        let started = Instant::now();
        for i in 0..32 {
            let p = PAGES - 1 - (i * 7) % PAGES;
            let byte = read_byte(region.addr() + (p * PAGE) as u64 + 11);
            ensure!(byte == content(p), "page {p} reads {byte}");
        }
        let workload = started.elapsed();
        join(bg)?;
        stop.store(true, Relaxed);
        urgent_client.shutdown(Shutdown::Both)?; // ends the server's urgent loop, then ours
        println!("workload: 32 pages touched in {workload:?}; then the background stream ended");
        Ok(())
    });

    let [faults, urgent, background, eexist] = counters.map(|c| c.load(Relaxed));
    println!("client: {faults} faults, {urgent} pages urgent, {background} in the background, {eexist} EEXIST");
    ensure!(received.is_full(), "pages missing at the end");
    ensure!(
        urgent + background == PAGES,
        "a page was sent twice or not at all"
    );
    ensure!(
        urgent >= 1 && faults >= urgent,
        "no page came on the urgent connection"
    );
    // SAFETY: every page is present, nothing writes the region any more.
    let bytes = unsafe { region.as_slice() };
    ensure!(
        bytes == image.as_slice(),
        "the region differs from the image"
    );
    println!("ok: every page arrived once, urgent pages first where faults asked for them");
    Ok(())
}

/// The index of the page at byte `offset` of the region (offsets are `u64` on the wire).
fn page_index(offset: u64) -> Result<usize> {
    Ok(usize::try_from(offset)? / PAGE)
}

/// The byte page `page` of the image holds.
fn content(page: usize) -> u8 {
    if page.is_multiple_of(8) {
        0
    } else {
        u8::try_from(page % 251 + 1).expect("at most 251")
    }
}
