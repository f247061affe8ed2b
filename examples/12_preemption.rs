//! Step 12: partial-page preemption, and the split-brain rule.
//!
//! With huge pages the background stream sends a whole huge page (512 base pages) as a series
//! of chunks, and the client places it only when complete. An urgent request must not wait for
//! the rest of that huge page: the background sender steps aside at the next chunk boundary
//! (preemption). But a page of the half-sent huge page is never sent on the urgent connection:
//! the client would then assemble that huge page on two connections at once (split brain).
//! A request for such a page makes the background sender finish the huge page at once,
//! ignoring other urgent work, so that the request cannot starve.
//!
//! This example drives the page server's own coordination (`page_server::session::Session`)
//! step by step, the way its two sender threads call it, and checks every decision.
//!
//! Run: `cargo run --release --example 12_preemption`

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use common::join;
use page_server::session::{Claim, Session};
use page_server::{Image, Policy};

const PAGE: u64 = 4096;
/// A 2 MiB huge page: the background unit.
const UNIT: u64 = 2 << 20;
/// The background sends at most 64 KiB per frame: 32 chunks per huge page.
const CHUNK: u64 = 64 << 10;

fn main() -> Result<()> {
    let image = Arc::new(Image::synthetic(2 * UNIT, 1, 0.0, PAGE).context("image")?);
    let policy = Policy {
        chunk: CHUNK,
        preempt: true,
    };
    let session = Session::new(1, image, UNIT, policy);
    let mut claimed = Vec::new();

    // The background sender claims huge page 0 (pages 0..512) and sends its first chunk.
    let unit0 = session.claim_background(0).context("nothing to send")?;
    println!("background: claims huge page 0 {unit0:?}, sends chunk 1 of 32 (pages 0..16)");
    ensure!(unit0 == [(0, 512)], "expected pages 0..512");
    claimed.extend(unit0);

    // 1. Preemption: a request for page 700 (huge page 1) is answered on the urgent connection
    //    at once, and the background waits at its next chunk boundary until the answer is out.
    let answer = session.claim_urgent(700, 701);
    println!("urgent: request for page 700 -> sent urgently: {answer:?}");
    ensure!(
        answer == [(700, 701)],
        "page 700 was not claimed for the urgent connection"
    );
    claimed.extend(answer);
    // When the answer is written (urgent_done), the waiting background goes on.
    let waits = !yields_within(&session, Duration::from_millis(100), || {
        session.urgent_done()
    })?;
    println!("background: before chunk 2, waits until the urgent answer is out: {waits}");
    ensure!(waits, "the background did not step aside for urgent work");

    // 2. Split brain: a request for page 100 lies inside the half-sent huge page 0. It is not
    //    sent on the urgent connection; the background is told to hurry instead.
    let answer = session.claim_urgent(100, 101);
    println!("urgent: request for page 100 (inside the half-sent huge page) -> sent urgently: {answer:?}");
    ensure!(
        answer.is_empty(),
        "a page of the half-sent huge page went on the urgent connection"
    );
    // Another urgent request arrives meanwhile; the background must still not pause, or the
    // request for page 100 could wait behind any number of others.
    let other = session.claim_urgent(900, 901);
    ensure!(other == [(900, 901)], "page 900 was not claimed urgently");
    claimed.extend(other);
    let release = || (0..2).for_each(|_| session.urgent_done());
    let hurries = yields_within(&session, Duration::from_secs(2), release)?;
    println!(
        "background: with urgent work pending, finishes huge page 0 without pausing: {hurries}"
    );
    ensure!(
        hurries,
        "the background paused inside the unit a request waits for"
    );
    session.unit_done(); // chunks 2..32 written: the client places huge page 0, page 100 with it
    session.urgent_done(); // the answers for pages 100 (nothing) and 900
    session.urgent_done();

    // 3. The rest of the stream skips what went urgently: no page travels twice.
    let unit1 = session
        .claim_background(512)
        .context("huge page 1 missing")?;
    println!("background: claims huge page 1 without the urgent pages: {unit1:?}");
    ensure!(
        unit1 == [(512, 700), (701, 900), (901, 1024)],
        "unexpected claim {unit1:?}"
    );
    claimed.extend(unit1);
    session.unit_done();
    ensure!(
        session.claim_background(0).is_none(),
        "pages left after both huge pages"
    );
    ensure!(
        pages(&claimed) == 1024,
        "every page must be claimed exactly once"
    );
    println!("ok: urgent answers preempt a half-sent huge page; its own pages never go urgently");
    Ok(())
}

/// True if the background's chunk-boundary check (`yield_to_urgent`) returns within `limit`.
/// If it is still waiting then, `release` (the end of the urgent work) lets it go.
fn yields_within(session: &Session, limit: Duration, release: impl FnOnce()) -> Result<bool> {
    std::thread::scope(|s| {
        let waiter = s.spawn(|| session.yield_to_urgent());
        let deadline = Instant::now() + limit;
        while !waiter.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let returned = waiter.is_finished();
        if !returned {
            release();
        }
        let open = join(waiter)?;
        ensure!(open, "the session closed");
        Ok(returned)
    })
}

fn pages(claim: &Claim) -> u64 {
    claim.iter().map(|(a, b)| b - a).sum()
}
