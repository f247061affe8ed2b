//! The link to the page server: the two connections, their receiver threads, and recovery.
//!
//! Connections fail: a cable is pulled, the server restarts. Like postcopy recovery, the
//! client does not give up. Faulting threads simply stay blocked (the kernel keeps them
//! waiting on the userfaultfd); the supervisor thread reconnects with bounded back-off,
//! resumes the session by sending its `received` bitmap (so the server sends only what is
//! missing, including pages that were on the wire when the connection died), re-sends every
//! request still unanswered, and starts new receivers. A different image on the other side,
//! a refused token or the `--reconnect-timeout` running out end the run with a clear error;
//! a faulting thread is never released onto a page that did not come from the server.
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
use uffd_core::{Conn, Frame, WireError};

use crate::connect::{self, ConnectError, Connected, HelloParams};
use crate::pager::{self, Channel, Pager};

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
                        crate::liveness::watch(&p, config.stall_timeout, config.background)
                    });
                if let Err(err) = watchdog {
                    p.fail(format!("cannot start the stall watchdog: {err}"));
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
    pager.generation.store(generation, Ordering::Release);
    // A new generation has asked for everything again: its answers may take a moment.
    pager.liveness.asked();
    pager.reset_background();
    let reader = urgent.reader;
    let priority = config.urgent_priority;
    receivers.push(
        pager::spawn("urgent-rx", pager, move |p| {
            uffd_core::cpu::set_realtime_or_warn(priority);
            pager::receive(p, Channel::Urgent, reader, generation)
        })
        .map_err(WireError::Io)?,
    );
    if let Some(reader) = background {
        receivers.push(
            pager::spawn("background-rx", pager, move |p| {
                pager::receive_pipelined(p, reader, generation)
            })
            .map_err(WireError::Io)?,
        );
    }
    // Install the request path and re-send what is unanswered under one lock: a fault
    // handled meanwhile either is seen by the scan or sends on the new connection.
    let mut tx = pager.lock_urgent();
    *tx = Some(urgent.writer);
    if let Some(writer) = tx.as_mut() {
        let unit_pages = (pager.memory.request_unit() / pager.page).max(1);
        let mut page = 0;
        while page < pager.pages {
            if pager.requested.get(page as usize) && !pager.unit_present(page, unit_pages) {
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
    // None: the pager is stopping.
    while let Some(why) = pager.wait_lost() {
        // Shut the connections down first: the fault handler may be blocked writing a request
        // to a server that no longer reads, holding the request path's lock.
        current.close();
        *pager.lock_urgent() = None;
        // Forget this loss now, before the next generation starts: a loss that generation
        // reports (its server may drop it at once) must stay reported, not be cleared after.
        pager.clear_lost();
        if config.reconnect_timeout.is_zero() {
            return pager.fail(why);
        }
        tracing::info!("{why}; reconnecting");
        let started = Instant::now();
        let mut delay = Duration::from_millis(20);
        generation += 1;
        let next = loop {
            if pager.stopping() {
                return;
            }
            // Trying to reconnect is not a stall of its own.
            pager.liveness.asked();
            let left = config.reconnect_timeout.saturating_sub(started.elapsed());
            match reconnect(pager, config, generation, left) {
                Ok(next) => break next,
                Err(err) if permanent(&err) => {
                    return pager.fail(format!("recovery impossible: {err}"));
                }
                Err(err) if started.elapsed() >= config.reconnect_timeout => {
                    return pager.fail(format!(
                        "lost the page server ({why}) and could not reconnect within {:?}: {err}",
                        config.reconnect_timeout
                    ));
                }
                Err(err) => {
                    tracing::debug!("reconnect failed: {err}");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
            }
        };
        pager.counters.reconnects.fetch_add(1, Ordering::Relaxed);
        tracing::info!("reconnected after {:?}", started.elapsed());
        current = next;
    }
    current.close();
    *pager.lock_urgent() = None;
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
            code: ErrorCode::ImageMismatch | ErrorCode::Unauthorized,
            ..
        } | ConnectError::PageSize { .. }
    )
}
