//! Socket options of an admitted connection: liveness of the peer (keepalive and
//! `TCP_USER_TIMEOUT`) and, once its role is known, the options that keep urgent answers from
//! queueing behind background bytes (`TCP_NOTSENT_LOWAT`, `IP_TOS`, pacing). All of them tune:
//! a connection works without them, so a failure is only logged.

use std::time::Duration;

use uffd_core::proto::Role;
use uffd_core::Conn;

/// Drops a peer whose TCP stops answering for `peer_timeout` (keepalive and
/// `TCP_USER_TIMEOUT`, [`Conn::set_liveness`]).
pub(crate) fn liveness(conn: &Conn, peer_timeout: Duration) {
    if let Err(err) = conn.set_liveness(peer_timeout) {
        tracing::debug!("keepalive / TCP_USER_TIMEOUT not set: {err}");
    }
}

/// Socket options that keep urgent answers from queueing behind background bytes on a shared
/// link (measured on the tbf lab, see BENCHMARKS.md):
/// - `TCP_NOTSENT_LOWAT` on both connections: the background sender's "pause" at a chunk
///   boundary is real only if megabytes of it are not already sitting unsent in the socket;
///   likewise an urgent answer counts as sent only when it is nearly on the wire.
/// - `IP_TOS` low-delay on the urgent connection, so a priority-aware queue sends it first.
/// - With `--max-bandwidth`, `SO_MAX_PACING_RATE` on the background connection: on a FIFO
///   bottleneck, only a sender slower than the bottleneck keeps no standing queue there for
///   urgent answers to wait behind (no pause at a chunk boundary can take back bytes already
///   queued at the bottleneck).
pub(crate) fn tune(conn: &Conn, role: Role, max_bandwidth: Option<u64>) {
    let (lowat, what) = (libc::TCP_NOTSENT_LOWAT, "TCP_NOTSENT_LOWAT");
    match role {
        Role::Background => {
            set_option(conn, libc::IPPROTO_TCP, lowat, 128 << 10, what);
            if let Some(rate) = max_bandwidth {
                // Asked for explicitly: say so if it did not take.
                if let Err(err) = conn.set_pacing_rate(rate) {
                    tracing::warn!(rate, "SO_MAX_PACING_RATE failed: {err}");
                }
            }
        }
        Role::Urgent => {
            set_option(conn, libc::IPPROTO_TCP, lowat, 64 << 10, what);
            let lowdelay = libc::c_int::from(libc::IPTOS_LOWDELAY);
            set_option(conn, libc::IPPROTO_IP, libc::IP_TOS, lowdelay, "IP_TOS");
        }
    }
}

/// Sets an int socket option; a failure is only logged (at debug).
fn set_option(conn: &Conn, level: libc::c_int, name: libc::c_int, value: libc::c_int, what: &str) {
    if let Err(err) = conn.set_int_option(level, name, value) {
        tracing::debug!(what, "setsockopt failed: {err}");
    }
}
