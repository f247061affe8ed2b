//! The server's settings, and the limits on what one peer can hold on to.
//!
//! **Limits.** What one peer can hold on to is bounded:
//! - connections that have not sent their hello: at most `max_pending` (a new one beyond that
//!   replaces the oldest), at most `max_pending_per_source` from one address, each for at most
//!   `handshake_timeout` ([`crate::admission`]); handshakes past the hello (a resuming client's
//!   have frames): at most `max_pending` threads;
//! - sessions: at most `max_sessions` (`registry.rs`);
//! - an established connection that makes no progress for `idle_timeout` is closed and its
//!   session ended: a write that cannot proceed (the client stopped reading), or silence on
//!   the urgent connection once the session has nothing left to send (`timeout.rs`);
//! - a client that vanished without a word (its host or link gone: no TCP acknowledgement,
//!   no keepalive answer) is dropped after `peer_timeout` (TCP keepalive and
//!   `TCP_USER_TIMEOUT`, `sockopt.rs`), and its threads and session with it.
//!
//! Frames are written with blocking writes and nothing is queued in memory, so a slow reader
//! costs its socket buffers and its thread, never more.

use std::time::Duration;

use uffd_core::Endpoint;

use crate::inject::FaultInjection;
use crate::session::Policy;

/// Server settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub listen: Endpoint,
    /// Background chunking and preemption.
    pub policy: Policy,
    /// Test hook: connections broken on purpose ([`crate::inject`]; none by default).
    pub fault_injection: FaultInjection,
    /// Sessions served at once; more are refused with an error frame.
    pub max_sessions: usize,
    /// How long a new connection may take to send its hello (all of it, and a resuming
    /// client's have frames), from its accept.
    pub handshake_timeout: Duration,
    /// Connections that have not sent their hello, at most. They cost no thread; when the
    /// table is full, the oldest is dropped (with a `TooManySessions` error frame) to make
    /// room for the new one. Also the most handshake threads (connections past their hello
    /// that have not been welcomed yet); beyond that a hello is refused with
    /// `TooManySessions`.
    pub max_pending: usize,
    /// Connections from one IP address that have not sent their hello, at most (None: no
    /// limit); beyond that the address's oldest is dropped.
    pub max_pending_per_source: Option<usize>,
    /// A client whose TCP stops answering for this long (no acknowledgement of data sent, no
    /// answer to keepalive probes, or a receive window that stays shut) is dropped
    /// ([`uffd_core::Conn::set_liveness`]): a host or link that vanished without a word costs its
    /// threads and session only this long.
    pub peer_timeout: Duration,
    /// An established connection that makes no progress for this long is closed and its
    /// session ended: a write blocked this long (the client stopped reading), or an urgent
    /// connection silent this long while the session has nothing left to send. A silent
    /// urgent connection whose session still has pages to send is never cut: its client may
    /// fault at any moment.
    pub idle_timeout: Duration,
    /// Shared secret clients must present (None: no authentication).
    pub token: Option<Vec<u8>>,
    /// Pace each background connection at this many bytes per second at most
    /// (`SO_MAX_PACING_RATE`; None: as fast as TCP goes). Urgent connections are never paced.
    pub max_bandwidth: Option<u64>,
    /// Run the thread serving each urgent connection `SCHED_FIFO` at this priority
    /// ([`uffd_core::cpu::set_realtime`]; None: the normal scheduler). On a host whose CPUs
    /// are busy with the background streams, a woken urgent thread otherwise waits for
    /// their time slices before it reads the request.
    pub urgent_priority: Option<i32>,
}

impl Config {
    /// Defaults: 64 KiB chunks, preemption on, 64 sessions, 5 s handshake, 128 pending
    /// connections (no per-source limit), 30 s peer timeout, 300 s idle timeout, no token,
    /// background not paced, no fault injection.
    pub fn new(listen: Endpoint) -> Config {
        Config {
            listen,
            policy: Policy {
                chunk: 64 << 10,
                preempt: true,
            },
            fault_injection: FaultInjection::default(),
            max_sessions: 64,
            handshake_timeout: Duration::from_secs(5),
            max_pending: 128,
            max_pending_per_source: None,
            peer_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            token: None,
            max_bandwidth: None,
            urgent_priority: None,
        }
    }
}
