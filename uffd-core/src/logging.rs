//! The log set-up the binaries share: `tracing` events as text lines on stderr, filtered by
//! `RUST_LOG` (e.g. `debug`, or `page_server=debug`) or else by the binary's default level;
//! and the one way they print the error that ends them ([`error_chain`]).

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

/// The message the binaries print for an error that ends the program: the error and each of
/// its causes, joined with `": "`, leaving out a cause whose text is already in the message
/// (most messages end with their cause's text).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(err) = cause {
        let more = err.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = err.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("reading the trace: {0}")]
        Says(#[source] std::io::Error),
        #[error("reading the trace")]
        Hides(#[source] std::io::Error),
    }

    #[test]
    fn each_cause_is_told_once() {
        let io = || std::io::Error::other("disk on fire");
        assert_eq!(
            error_chain(&Outer::Says(io())),
            "reading the trace: disk on fire"
        );
        assert_eq!(
            error_chain(&Outer::Hides(io())),
            "reading the trace: disk on fire"
        );
    }
}
