//! The link to the page server: the two connections, their receiver threads, and recovery.
//!
//! Connections fail: a cable is pulled, the server restarts. Like postcopy recovery, the
//! client does not give up. Faulting threads simply stay blocked (the kernel keeps them
//! waiting on the userfaultfd); the supervisor thread reconnects with bounded back-off,
//! resumes the session by sending its `received` bitmap (so the server sends only what is
//! missing, including pages that were on the wire when the connection died), re-sends every
//! request still unanswered, and starts new receivers. A link lost again and again without a
//! new page is no progress: the supervisor backs off, and gives up once that has lasted the
//! `--reconnect-timeout`. A different image on the other side, a refused token, a server
//! that cannot read its image, or the timeout end the run with a clear error; a faulting
//! thread is never released onto a page that did not come from the server.
//!
//! A server that stops answering is a lost connection too: TCP keepalive and
//! `TCP_USER_TIMEOUT` (`--stall-timeout`) end a connection whose peer's kernel no longer
//! answers, and the stall watchdog ([`crate::liveness`]) reports `--stall-timeout` of silence
//! while a request is unanswered or the stream unfinished (a silent link, a stopped server).
//! Every reconnection attempt is bounded by what is left of `--reconnect-timeout`.
//!
//! Each set of connections is a *generation*; a receiver of an old generation that fails
//! while the supervisor replaces it does not trigger another reconnection.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use uffd_core::proto::{ErrorCode, Role};
use uffd_core::repeat::{Repeats, Tell};
use uffd_core::{Conn, Frame, WireError};

use crate::connect::{self, ConnectError, Connected, HelloParams};
use crate::fatal::Fatal;
use crate::pager::{self, Channel, Pager};
use uffd_core::convert::usize_from;

/// How to reach the server and how hard to try.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// The server.
    pub server: uffd_core::Endpoint,
    /// Session, unit, image id and token for every hello.
    pub params: HelloParams,
    /// Open the background connection.
    pub background: bool,
    /// Give up reconnecting after this long (zero: fail at the first loss).
    pub reconnect_timeout: Duration,
    /// Cap on the background connection's receive window (`TCP_WINDOW_CLAMP`).
    pub background_window: Option<u32>,
    /// `SCHED_FIFO` priority of the urgent receiver (None: the normal scheduler).
    pub urgent_priority: Option<i32>,
    /// Silence while waiting for the server that counts as a lost connection
    /// ([`crate::liveness`]); also the connections' `TCP_USER_TIMEOUT`.
    pub stall_timeout: Duration,
}

/// One generation of connections.
struct Generation {
    conns: Vec<Conn>,
    receivers: Vec<JoinHandle<()>>,
}

impl Generation {
    fn close(self) {
        for conn in &self.conns {
            conn.shutdown();
        }
        for receiver in self.receivers {
            let _ = receiver.join();
        }
    }
}

/// The handshake of the first generation's background connection may take this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts the receivers of the first generation (from the urgent connection `urgent`, already
/// open) and the supervisor thread. Returns the supervisor's handle.
pub fn start(
    pager: &Arc<Pager>,
    config: LinkConfig,
    urgent: Connected,
) -> Result<JoinHandle<()>, ConnectError> {
    let first = install(pager, &config, urgent, 0, HANDSHAKE_TIMEOUT)?;
    let p = Arc::clone(pager);
    std::thread::Builder::new()
        .name("link".into())
        .spawn(move || {
            std::thread::scope(|s| {
                let watchdog = std::thread::Builder::new()
                    .name("stall-watch".into())
                    .spawn_scoped(s, || {
                        crate::watchdog::watch(&p, config.stall_timeout, config.background)
                    });
                if let Err(err) = watchdog {
                    p.run.fail(Fatal::StartWatchdog(err));
                }
                supervise(&p, &config, first);
            })
        })
        .map_err(|e| ConnectError::Wire(WireError::Io(e)))
}

/// Opens the background connection (if configured, giving up after `within`), starts both
/// receivers and makes `urgent` the connection requests go to.
fn install(
    pager: &Arc<Pager>,
    config: &LinkConfig,
    urgent: Connected,
    generation: u64,
    within: Duration,
) -> Result<Generation, ConnectError> {
    let mut conns = vec![urgent.writer.get_ref().try_clone().map_err(WireError::Io)?];
    let mut receivers = Vec::new();
    let background = if config.background {
        let bg = connect::connect_within(&config.server, Role::Background, &config.params, within)?;
        if let Some(bytes) = config.background_window {
            bg.reader
                .get_ref()
                .clamp_receive_window(bytes)
                .map_err(WireError::Io)?;
        }
        conns.push(bg.writer.get_ref().try_clone().map_err(WireError::Io)?);
        Some(bg.reader)
    } else {
        None
    };
    for conn in &conns {
        // Best effort, like the other socket options: the watchdog covers what it misses.
        if let Err(err) = conn.set_liveness(crate::liveness::tcp_timeout(config.stall_timeout)) {
            tracing::debug!("keepalive / TCP_USER_TIMEOUT not set: {err}");
        }
    }
    pager.link.generation.store(generation, Ordering::Release);
    // A new generation has asked for everything again: its answers may take a moment.
    pager.liveness.asked();
    pager.link.reset_background();
    let reader = urgent.reader;
    let priority = config.urgent_priority;
    receivers.push(
        pager::spawn("urgent-rx", pager, move |p| {
            uffd_core::cpu::set_realtime_or_warn(priority);
            crate::receive::receive(p, Channel::Urgent, reader, generation)
        })
        .map_err(WireError::Io)?,
    );
    if let Some(reader) = background {
        receivers.push(
            pager::spawn("background-rx", pager, move |p| {
                crate::receive::receive_pipelined(p, reader, generation)
            })
            .map_err(WireError::Io)?,
        );
    }
    // Install the request path and re-send what is unanswered under one lock: a fault
    // handled meanwhile either is seen by the scan or sends on the new connection.
    let mut tx = pager.link.lock_urgent();
    *tx = Some(urgent.writer);
    if let Some(writer) = tx.as_mut() {
        let unit_pages = (pager.memory.request_unit() / pager.page).max(1);
        let mut page = 0;
        while page < pager.pages {
            if pager.page_state.requested.get(usize_from(page))
                && !pager.unit_present(page, unit_pages)
            {
                let len = unit_pages.min(pager.pages - page) * pager.page;
                let request = Frame::Request {
                    offset: page * pager.page,
                    len,
                };
                if writer.send(&request).is_err() {
                    break; // the new connection failed already: the next generation re-sends
                }
                pager.counters.requests.fetch_add(1, Ordering::Relaxed);
            }
            page += unit_pages;
        }
    }
    drop(tx);
    Ok(Generation { conns, receivers })
}

fn supervise(pager: &Arc<Pager>, config: &LinkConfig, mut current: Generation) {
    let mut generation = 0;
    let mut streak = Streak::new(pager);
    let reconnects = Repeats::default();
    // None: the pager is stopping.
    while let Some(why) = pager.link.wait_lost(&pager.run) {
        // Shut the connections down first: the fault handler may be blocked writing a request
        // to a server that no longer reads, holding the request path's lock.
        current.close();
        *pager.link.lock_urgent() = None;
        // Forget this loss now, before the next generation starts: a loss that generation
        // reports (its server may drop it at once) must stay reported, not be cleared after.
        pager.link.clear_lost();
        if config.reconnect_timeout.is_zero() {
            return pager.run.fail(Fatal::Lost(why));
        }
        // A link that is lost again and again without a new page is not progress: back off,
        // and give up once that has lasted the reconnect timeout.
        let pause = streak.lost(pager, config.reconnect_timeout);
        if streak.hopeless(config.reconnect_timeout) {
            return pager.run.fail(Fatal::NoProgress {
                timeout: config.reconnect_timeout,
                losses: streak.losses,
                last: why,
                reconnect: None,
            });
        }
        match reconnects.event() {
            Tell::Nothing => {}
            Tell::This => tracing::info!("{why}; reconnecting"),
            Tell::Summary(n, period) => tracing::info!(
                "{n} reconnects in the last {:.0} s (latest: {why})",
                period.as_secs_f64()
            ),
        }
        let mut delay = pause;
        generation += 1;
        let next = loop {
            if !delay.is_zero() {
                std::thread::sleep(delay);
            }
            // A receiver may have found the server's reason (an error frame) meanwhile.
            if pager.run.stopping() || pager.run.fatal().is_some() {
                return;
            }
            // Trying to reconnect is not a stall of its own.
            pager.liveness.asked();
            // Bounded by what is left of the streak's reconnect timeout.
            let left = config.reconnect_timeout.saturating_sub(streak.since());
            match reconnect(pager, config, generation, left) {
                Ok(next) => break next,
                Err(err) if permanent(&err) => {
                    return pager.run.fail(Fatal::RecoveryImpossible(err));
                }
                Err(err) if streak.hopeless(config.reconnect_timeout) => {
                    // After reconnections that brought nothing, that is the news; else the
                    // loss and the failed reconnection are.
                    let timeout = config.reconnect_timeout;
                    return pager.run.fail(if streak.losses > 1 {
                        Fatal::NoProgress {
                            timeout,
                            losses: streak.losses,
                            last: why,
                            reconnect: Some(err),
                        }
                    } else {
                        Fatal::Reconnect {
                            last: why,
                            timeout,
                            source: err,
                        }
                    });
                }
                Err(err) => {
                    tracing::debug!("reconnect failed: {err}");
                    delay = (delay * 2).clamp(FIRST_DELAY, MAX_DELAY);
                }
            }
        };
        pager.counters.reconnects.fetch_add(1, Ordering::Relaxed);
        streak.reconnected();
        tracing::debug!("reconnected; no new page for {:?}", streak.since());
        current = next;
    }
    current.close();
    *pager.link.lock_urgent() = None;
}

/// First pause between reconnection attempts.
const FIRST_DELAY: Duration = Duration::from_millis(20);
/// Longest pause between reconnection attempts.
const MAX_DELAY: Duration = Duration::from_secs(1);

/// Losses of the link since the last one that followed progress.
#[derive(Debug)]
struct Streak {
    /// Pages present at the last loss.
    pages: u64,
    /// When the link was (re)established last.
    connected: Instant,
    /// When the clock of "no new page" started: at the last loss that followed progress
    /// (None before the first loss).
    since: Option<Instant>,
    /// Losses in this streak.
    losses: u64,
    /// Pause before the next reconnection.
    delay: Duration,
}

impl Streak {
    fn new(pager: &Pager) -> Streak {
        Streak {
            pages: pages_present(pager),
            connected: Instant::now(),
            since: None,
            losses: 0,
            delay: Duration::ZERO,
        }
    }

    /// Records a loss; returns how long to wait before reconnecting. A generation that
    /// brought new pages, or stayed up for `timeout`, was progress: reconnect at once.
    fn lost(&mut self, pager: &Pager, timeout: Duration) -> Duration {
        let now = Instant::now();
        let pages = pages_present(pager);
        let progress = pages > self.pages || now.duration_since(self.connected) >= timeout;
        self.pages = pages;
        if progress {
            self.since = Some(now);
            self.losses = 1;
            self.delay = Duration::ZERO;
        } else {
            self.since.get_or_insert(now);
            self.losses += 1;
            self.delay = (self.delay * 2).clamp(FIRST_DELAY, MAX_DELAY);
        }
        self.delay
    }

    /// The link is back.
    fn reconnected(&mut self) {
        self.connected = Instant::now();
    }

    /// True once the streak has lasted `timeout` without a new page.
    fn hopeless(&self, timeout: Duration) -> bool {
        self.since.is_some_and(|at| at.elapsed() >= timeout)
    }

    fn since(&self) -> Duration {
        self.since.map_or(Duration::ZERO, |at| at.elapsed())
    }
}

/// Pages placed so far (data and zero pages, from either connection).
fn pages_present(pager: &Pager) -> u64 {
    let c = &pager.counters;
    [&c.pages_urgent, &c.pages_background, &c.pages_zero]
        .iter()
        .map(|n| n.load(Ordering::Relaxed))
        .sum()
}

fn reconnect(
    pager: &Arc<Pager>,
    config: &LinkConfig,
    generation: u64,
    within: Duration,
) -> Result<Generation, ConnectError> {
    let have = pager.present_words();
    let urgent = connect::resume(&config.server, &config.params, &have, within)?;
    if urgent.welcome.image_size != pager.limits_image_size() {
        return Err(ConnectError::Refused {
            code: ErrorCode::ImageMismatch,
            message: format!(
                "the server now serves {} bytes, the session had {}",
                urgent.welcome.image_size,
                pager.limits_image_size()
            ),
        });
    }
    install(pager, config, urgent, generation, within)
}

/// Errors that retrying cannot fix.
fn permanent(err: &ConnectError) -> bool {
    matches!(
        err,
        ConnectError::Refused {
            code: ErrorCode::ImageMismatch | ErrorCode::Unauthorized | ErrorCode::SourceFailed,
            ..
        } | ConnectError::PageSize { .. }
    )
}
