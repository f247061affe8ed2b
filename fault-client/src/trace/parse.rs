//! Reading a trace back (for `fault-client plot` and `fault-client stages`): lines of 7 or 8
//! columns (traces written before the `tid` column have 7 and no `gathered` events).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::{EventKind, Resolution, HEADER};

/// The header of traces written before the `tid` column.
const HEADER_7: &str = "t_us,event,offset,len,latency_us,resolution,channel";

impl Resolution {
    fn parse(s: &str) -> Option<Resolution> {
        Resolution::ALL.into_iter().find(|r| r.name() == s)
    }
}

impl EventKind {
    const ALL: [EventKind; 7] = [
        EventKind::Fault,
        EventKind::Request,
        EventKind::Answer,
        EventKind::Gathered,
        EventKind::Arrival,
        EventKind::Resolved,
        EventKind::Touch,
    ];
}

/// One line of a trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// Microseconds since the run started.
    pub t_us: f64,
    /// The event.
    pub event: EventKind,
    /// Image offset in bytes.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// `latency_us`, where the event has one.
    pub latency_us: Option<f64>,
    /// `resolution`, where the event has one.
    pub resolution: Option<Resolution>,
    /// `channel`, where the event has one.
    pub channel: Option<String>,
    /// `tid`, where the event has one.
    pub tid: Option<u32>,
}

impl Line {
    /// `t_us + latency_us`: when a `touch` ended.
    pub fn end_us(&self) -> f64 {
        self.t_us + self.latency_us.unwrap_or(0.0)
    }
}

/// Errors of [`read`].
#[derive(Debug, thiserror::Error)]
pub enum ReadTraceError {
    /// The file cannot be opened or read.
    #[error("reading {path}: {source}")]
    Io {
        /// The trace.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not a trace line.
    #[error("{path} line {line}: {what}: {text:?}")]
    Line {
        /// The trace.
        path: PathBuf,
        /// Line number, from 1.
        line: usize,
        /// What is wrong.
        what: ParseLineError,
        /// The line.
        text: String,
    },
}

/// Reads the trace at `path`; an error names the line and the column that is wrong.
pub fn read(path: &Path) -> Result<Vec<Line>, ReadTraceError> {
    let io = |source| ReadTraceError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let mut lines = Vec::new();
    for (index, text) in BufReader::new(file).lines().enumerate() {
        let number = index + 1;
        let text = text.map_err(io)?;
        let text = text.trim_end_matches('\r');
        if text.is_empty() || (number == 1 && (text == HEADER || text == HEADER_7)) {
            continue;
        }
        let line = parse_line(text).map_err(|what| ReadTraceError::Line {
            path: path.to_path_buf(),
            line: number,
            what,
            text: text.to_string(),
        })?;
        lines.push(line);
    }
    Ok(lines)
}

/// Why a line is not a trace line ([`parse_line`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseLineError {
    /// Not 7 or 8 columns.
    #[error("expected 8 comma-separated fields ({HEADER}), found {0}")]
    Fields(usize),
    /// The `event` column names no event.
    #[error(
        "unknown event {0:?} (expected fault, request, answer, gathered, arrival, resolved or \
         touch)"
    )]
    Event(String),
    /// A time column is not a finite, non-negative number.
    #[error("{column} {text:?} is not a number of microseconds")]
    Micros {
        /// `t_us` or `latency_us`.
        column: &'static str,
        /// The column's text.
        text: String,
    },
    /// An `offset` or `len` column is not a whole number.
    #[error("{column} {text:?} is not a number of bytes")]
    Bytes {
        /// `offset` or `len`.
        column: &'static str,
        /// The column's text.
        text: String,
    },
    /// The `resolution` column names no resolution.
    #[error("unknown resolution {0:?}")]
    Resolution(String),
    /// The `tid` column is not a thread id.
    #[error("tid {0:?} is not a thread id")]
    Tid(String),
}

/// Parses one line of 7 or 8 columns.
pub fn parse_line(text: &str) -> Result<Line, ParseLineError> {
    let fields: Vec<&str> = text.split(',').collect();
    let (columns, tid) = match fields[..] {
        [t_us, event, offset, len, latency_us, resolution, channel] => (
            [t_us, event, offset, len, latency_us, resolution, channel],
            "",
        ),
        [t_us, event, offset, len, latency_us, resolution, channel, tid] => (
            [t_us, event, offset, len, latency_us, resolution, channel],
            tid,
        ),
        _ => return Err(ParseLineError::Fields(fields.len())),
    };
    let [t_us, event, offset, len, latency_us, resolution, channel] = columns;
    let event = EventKind::ALL
        .into_iter()
        .find(|e| e.name() == event)
        .ok_or_else(|| ParseLineError::Event(event.to_string()))?;
    let micros = |column: &'static str, text: &str| match text.parse::<f64>() {
        Ok(us) if us.is_finite() && us >= 0.0 => Ok(us),
        _ => Err(ParseLineError::Micros {
            column,
            text: text.to_string(),
        }),
    };
    let bytes = |column: &'static str, text: &str| {
        text.parse::<u64>().map_err(|_| ParseLineError::Bytes {
            column,
            text: text.to_string(),
        })
    };
    fn optional(text: &str) -> Option<&str> {
        (!text.is_empty()).then_some(text)
    }
    Ok(Line {
        t_us: micros("t_us", t_us)?,
        event,
        offset: bytes("offset", offset)?,
        len: bytes("len", len)?,
        latency_us: optional(latency_us)
            .map(|l| micros("latency_us", l))
            .transpose()?,
        resolution: optional(resolution)
            .map(|r| Resolution::parse(r).ok_or_else(|| ParseLineError::Resolution(r.to_string())))
            .transpose()?,
        channel: optional(channel).map(str::to_string),
        tid: optional(tid)
            .map(|t| t.parse().map_err(|_| ParseLineError::Tid(t.to_string())))
            .transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use hugepage::Mapped;

    use super::*;
    use crate::trace::Trace;

    #[test]
    fn lines_of_seven_and_eight_columns_parse() {
        let old = parse_line("1.0,arrival,0,4096,,zero,local").expect("7 columns");
        assert_eq!(old.resolution, Some(Resolution::Zero));
        assert_eq!(old.tid, None);
        let new = parse_line("2.5,touch,8192,4096,3.5,,,77").expect("8 columns");
        assert_eq!(
            (new.event, new.tid, new.end_us()),
            (EventKind::Touch, Some(77), 6.0)
        );
        for bad in [
            "1.0,fault,x,4096,,,,",
            "1.0,resolved,0,4096,3.5,sideways,urgent,",
            "1.0,fault,0,4096",
            "inf,fault,0,4096,,,,",
            "1.0,resolved,0,4096,-2,urgent,urgent,",
            "1.0,touch,0,4096,1,,,me",
        ] {
            assert!(parse_line(bad).is_err(), "{bad}");
        }
        assert!(parse_line("1.0,fault,x,4096,,,,")
            .expect_err("bad offset")
            .to_string()
            .contains("offset"));
    }

    #[test]
    fn each_fault_is_resolved_once() {
        let dir = std::env::temp_dir().join(format!("trace-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("t.csv");
        let trace = Trace::create(&path, Instant::now()).expect("create");
        trace.fault(Instant::now(), 8192, 4096, Some(5));
        trace.fault(Instant::now(), 8192, 4096, Some(6));
        trace.gathered(0, 65536, Resolution::Background, "background");
        let began = Instant::now();
        let mapped = Mapped {
            offset: 0,
            len: 2 << 20,
            began,
            ended: Instant::now(),
        };
        trace.arrival(&mapped, 4096, Resolution::Background, "background");
        // A second arrival over the same page resolves nothing more.
        trace.arrival(&mapped, 4096, Resolution::Urgent, "urgent");
        trace.fault(Instant::now(), 4 << 20, 4096, Some(5));
        trace.already_present(4 << 20, 4096);
        trace.duplicate(0, 4096, "urgent");
        trace.finish().expect("finish");
        let lines = read(&path).expect("read");
        let _ = std::fs::remove_dir_all(&dir);
        let resolved: Vec<&Line> = lines
            .iter()
            .filter(|l| l.event == EventKind::Resolved)
            .collect();
        assert_eq!(resolved.len(), 3);
        assert!(resolved[..2]
            .iter()
            .all(|l| l.resolution == Some(Resolution::Background) && l.offset == 8192));
        assert_eq!(resolved[2].resolution, Some(Resolution::AlreadyPresent));
        let kinds: Vec<EventKind> = lines.iter().map(|l| l.event).collect();
        assert_eq!(
            kinds.iter().filter(|&&k| k == EventKind::Gathered).count(),
            1
        );
        assert_eq!(
            kinds.iter().filter(|&&k| k == EventKind::Arrival).count(),
            3
        );
        assert_eq!(lines[0].tid, Some(5));
    }
}
