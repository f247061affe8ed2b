//! Repeated events in a log: the first is told at once, the rest are counted and told at most
//! once per period ("12 reconnects in the last 10 s"), so a failure that repeats thousands of
//! times a second costs a line per period, not a line per event.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a summary line is written at most.
pub const PERIOD: Duration = Duration::from_secs(10);

/// Counts one kind of repeated event.
#[derive(Debug)]
pub struct Repeats {
    period: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// When the last line was written.
    told: Option<Instant>,
    /// Events since then, not yet told.
    untold: u64,
}

/// What to write for an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tell {
    /// Nothing: the event is counted for the next summary.
    Nothing,
    /// The event itself (none happened for a period before it).
    This,
    /// A summary: this many events (this one included) since the line written this long ago.
    Summary(u64, Duration),
}

impl Repeats {
    /// A counter that writes at most one line per `period`.
    pub const fn new(period: Duration) -> Repeats {
        Repeats {
            period,
            state: Mutex::new(State {
                told: None,
                untold: 0,
            }),
        }
    }

    /// Counts one event and says what to write for it.
    pub fn event(&self) -> Tell {
        self.event_at(Instant::now())
    }

    /// Counts one event and returns the line to log for it, if any: the event itself (`line`)
    /// if it is the first for a while, else at most one summary per period ("N `what` in the
    /// last 10 s (latest: `line`)"). The caller logs it, at its level and under its own target.
    pub fn line(&self, what: &str, line: impl FnOnce() -> String) -> Option<String> {
        match self.event() {
            Tell::Nothing => None,
            Tell::This => Some(line()),
            Tell::Summary(n, period) => Some(format!(
                "{n} {what} in the last {:.0} s (latest: {})",
                period.as_secs_f64(),
                line()
            )),
        }
    }

    fn event_at(&self, now: Instant) -> Tell {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.untold += 1;
        let tell = match state.told {
            Some(at) if now.duration_since(at) < self.period => return Tell::Nothing,
            Some(at) if state.untold > 1 => Tell::Summary(state.untold, now.duration_since(at)),
            _ => Tell::This,
        };
        state.told = Some(now);
        state.untold = 0;
        tell
    }
}

impl Default for Repeats {
    fn default() -> Repeats {
        Repeats::new(PERIOD)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_event_is_told_then_one_summary_per_period() {
        let r = Repeats::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(r.event_at(at(0)), Tell::This);
        for ms in 1..1000 {
            assert_eq!(r.event_at(at(ms)), Tell::Nothing);
        }
        assert_eq!(
            r.event_at(at(10_000)),
            Tell::Summary(1000, Duration::from_secs(10))
        );
        // A lone event after a quiet period is told as itself.
        assert_eq!(r.event_at(at(30_000)), Tell::This);
    }

    #[test]
    fn the_line_is_the_event_then_nothing_within_the_period() {
        let r = Repeats::new(Duration::from_secs(3600));
        assert_eq!(
            r.line("events", || "first".into()).as_deref(),
            Some("first")
        );
        assert_eq!(r.line("events", || "second".into()), None);
    }
}
