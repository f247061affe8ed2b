//! The log set-up the binaries share: `tracing` events as text lines on stderr, filtered by
//! `RUST_LOG` (e.g. `debug`, or `page_server=debug`) or else by the binary's default level.

use tracing_subscriber::EnvFilter;

/// Sends log lines to stderr, at the levels `RUST_LOG` asks for, else at `default_level` and
/// above (`"info"`, `"warn"`, …). Call it once, first thing in `main`; later calls (and calls
/// after another subscriber was set) do nothing.
pub fn init(default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .try_init();
}
