//! The words of the picture: latencies for people, the title and the summary line.

use std::path::Path;

use super::events::{Events, Latency};
use super::MIB;

/// A latency for people: "0.4 µs", "37 µs", "1.2 ms".
pub(super) fn format_latency(us: f64) -> String {
    if us >= 1000.0 {
        format!("{} ms", trim_number(us / 1000.0))
    } else {
        format!("{} µs", trim_number(us))
    }
}

/// Up to three significant digits, no trailing zeros: 0.2, 5, 37.5, 120.
fn trim_number(x: f64) -> String {
    let text = if x < 10.0 {
        format!("{x:.2}")
    } else if x < 100.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.0}")
    };
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// "1 fault", "2 faults".
fn count_of(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// The line `plot` returns.
pub(super) fn summary(out: &Path, events: &Events, latency: Option<&Latency>) -> String {
    let latency = match latency {
        Some(l) => format!(
            "{} resolved (p50 {}, p99 {})",
            l.all.len(),
            format_latency(l.p50),
            format_latency(l.p99)
        ),
        None => "no resolved faults (latency panels left empty)".to_string(),
    };
    format!(
        "wrote {}: {}, {latency}; {} ({:.1} MiB placed) over {:.1} ms",
        out.display(),
        count_of(events.faults.len(), "fault"),
        count_of(events.arrivals.len(), "arrival"),
        events.bytes_placed() as f64 / MIB,
        events.duration_ms()
    )
}

/// The title: the totals of the trace.
pub(super) fn title(events: &Events, latency: Option<&Latency>) -> String {
    let latency = match latency {
        Some(l) => format!(
            "fault latency p50 {}, p99 {}",
            format_latency(l.p50),
            format_latency(l.p99)
        ),
        None => "no resolved faults".to_string(),
    };
    format!(
        "{}, {} ({:.1} MiB) in {:.1} ms; {latency}",
        count_of(events.faults.len(), "fault"),
        count_of(events.arrivals.len(), "arrival"),
        events.bytes_placed() as f64 / MIB,
        events.duration_ms()
    )
}
