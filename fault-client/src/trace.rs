//! `--trace FILE`: one CSV line per fault, per urgent request and answer, per chunk gathered
//! into a staging huge page, per placement that made pages present, per fault resolution and
//! per workload access that waited. A background thread writes the file, so the pager's threads
//! only push a small record into a channel. With the `lab` feature, `parse` reads it back (for
//! `fault-client plot` and `fault-client stages`).
//!
//! # The format
//!
//! ```text
//! t_us,event,offset,len,latency_us,resolution,channel,tid
//! 1480.3,touch,1052672,4096,93.6,,,41873
//! 1532.1,fault,1052672,4096,,,,41873
//! 1533.0,request,1052672,4096,,,urgent,
//! 1569.8,answer,1052672,4096,,,urgent,
//! 1571.9,arrival,1052672,4096,2.0,urgent,urgent,
//! 1571.9,resolved,1052672,4096,39.8,urgent,urgent,
//! 1580.2,gathered,2097152,65536,,background,background,
//! 1702.4,arrival,2097152,2097152,1.1,background,background,
//! ```
//!
//! Columns: `t_us`, microseconds since the run started; `event`; `offset` and `len`, the range
//! in the image in bytes; `latency_us`, `resolution`, `channel` and `tid` where the event has
//! them (empty otherwise). Each event is defined by what the kernel did:
//!
//! | event | when (`t_us`) | `latency_us` | `resolution` |
//! |-------|---------------|--------------|--------------|
//! | `fault` | the fault handler read a fault message for the 4 KiB page at `offset` (hugetlbfs reports the start of the huge page; `tid`: the faulting thread) | | |
//! | `request` | a request for the range is written to the urgent connection (stamped before the write) | | |
//! | `answer` | the urgent receiver has read a whole data or zero frame and is about to place it | | |
//! | `gathered` | a chunk was written into a staging huge page: **not** present yet, its pages become present with their unit's `arrival` | | what the chunk carried: `urgent`, `background` or `zero` |
//! | `arrival` | pages became present: the placement ioctl that mapped them returned (UFFDIO_COPY or ZEROPAGE of a frame; for a THP or hugetlb unit the MOVE, COPY or CONTINUE of the whole unit, or of each run of its pages around pages already present) | how long that ioctl took; the threads waiting on these pages were woken inside it | `urgent`, `background` or `zero` (how the frame that completed them came); `duplicate`: a frame every page of which was present already (nothing placed, no latency) |
//! | `resolved` | exactly once per `fault`: when the ioctl that mapped the fault's page returned (the `t_us` of that `arrival`) | from the fault to then | the arrival's, or `already_present`: the page was mapped before the handler read the fault (`t_us` is the fault's, latency 0). Never `duplicate` |
//! | `touch` | a workload access that waited on a userfault (the handler read a fault message from its thread while it ran): when it began (`tid`: the thread) | how long the access took: one sample of the report's `latency_us` | |
//!
//! `channel` is the connection that carried the pages (`urgent`, `background`, or `local` for
//! pages filled without the network: discarded pages read as zeros, and `already_present`).
//!
//! A fault's stages follow from these events: touch → fault (the kernel delivering the fault
//! and the handler waking), fault → request (the handler), request → answer (the network both
//! ways and the server), answer → arrival (placement), arrival → end of the touch (the woken
//! thread getting a CPU). The woken thread may return before the placing thread reads its
//! clock after the ioctl, so a touch can end before its fault's `resolved` by at most that
//! ioctl's `latency_us`: what always holds is that the ioctl began before the touch ended.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::mpsc::{self, Sender};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hugepage::Mapped;

#[cfg(feature = "lab")]
pub mod parse;
#[cfg(feature = "lab")]
pub use parse::{parse_line, read, Line, ParseLineError, ReadTraceError};

/// The header line of a trace.
pub const HEADER: &str = "t_us,event,offset,len,latency_us,resolution,channel,tid";

/// How pages came, or how a fault was resolved (the `resolution` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resolution {
    /// Placed from an answer on the urgent connection.
    Urgent,
    /// Placed from the background stream.
    Background,
    /// Placed as zeros.
    Zero,
    /// A fault whose page was mapped before the handler read it (woken only).
    AlreadyPresent,
    /// A frame whose pages were all present already.
    Duplicate,
}

impl Resolution {
    /// Every resolution, in the order plots stack them.
    pub const ALL: [Resolution; 5] = [
        Resolution::Urgent,
        Resolution::Background,
        Resolution::Zero,
        Resolution::AlreadyPresent,
        Resolution::Duplicate,
    ];

    /// The name in the trace.
    pub fn name(self) -> &'static str {
        match self {
            Resolution::Urgent => "urgent",
            Resolution::Background => "background",
            Resolution::Zero => "zero",
            Resolution::AlreadyPresent => "already_present",
            Resolution::Duplicate => "duplicate",
        }
    }
}

/// The kinds of lines (the `event` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// `fault`.
    Fault,
    /// `request`.
    Request,
    /// `answer`.
    Answer,
    /// `gathered`.
    Gathered,
    /// `arrival`.
    Arrival,
    /// `resolved`.
    Resolved,
    /// `touch`.
    Touch,
}

impl EventKind {
    /// The name in the trace.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Fault => "fault",
            EventKind::Request => "request",
            EventKind::Answer => "answer",
            EventKind::Gathered => "gathered",
            EventKind::Arrival => "arrival",
            EventKind::Resolved => "resolved",
            EventKind::Touch => "touch",
        }
    }
}

/// One line to write.
#[derive(Debug, Clone, Copy)]
struct Record {
    at: Instant,
    event: EventKind,
    offset: u64,
    len: u64,
    latency: Option<Duration>,
    how: Option<Resolution>,
    channel: Option<&'static str>,
    tid: Option<u32>,
}

impl Record {
    fn new(at: Instant, event: EventKind, offset: u64, len: u64) -> Record {
        Record {
            at,
            event,
            offset,
            len,
            latency: None,
            how: None,
            channel: None,
            tid: None,
        }
    }

    fn write(&self, out: &mut impl Write, start: Instant) -> std::io::Result<()> {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        write!(
            out,
            "{:.1},{},{},{},",
            us(self.at.saturating_duration_since(start)),
            self.event.name(),
            self.offset,
            self.len
        )?;
        if let Some(latency) = self.latency {
            write!(out, "{:.1}", us(latency))?;
        }
        write!(
            out,
            ",{},{},",
            self.how.map_or("", Resolution::name),
            self.channel.unwrap_or("")
        )?;
        if let Some(tid) = self.tid {
            write!(out, "{tid}")?;
        }
        writeln!(out)
    }
}

/// A trace being written.
#[derive(Debug)]
pub struct Trace {
    start: Instant,
    tx: Mutex<Option<Sender<Record>>>,
    writer: Mutex<Option<JoinHandle<std::io::Result<()>>>>,
    /// Faults waiting for their page: page offset → when each was read.
    pending: Mutex<BTreeMap<u64, Vec<Instant>>>,
}

impl Trace {
    /// Creates `path` and starts the writer thread.
    pub fn create(path: &Path, start: Instant) -> std::io::Result<Trace> {
        let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
        writeln!(out, "{HEADER}")?;
        let (tx, rx) = mpsc::channel::<Record>();
        let writer = std::thread::Builder::new()
            .name("trace-writer".into())
            .spawn(move || {
                for record in rx {
                    record.write(&mut out, start)?;
                }
                out.flush()
            })?;
        Ok(Trace {
            start,
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            pending: Mutex::new(BTreeMap::new()),
        })
    }

    fn send(&self, record: Record) {
        if let Some(tx) = self.tx.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = tx.send(record);
        }
    }

    /// The handler read (at `at`, when its `read(2)` returned) a fault of thread `tid` on the
    /// page at `offset`. Call it before looking at whether the page is present: a fault is
    /// then resolved exactly once, by [`Trace::already_present`] or by the
    /// [`Trace::arrival`] of its page.
    pub fn fault(&self, at: Instant, offset: u64, len: u64, tid: Option<u32>) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(offset)
            .or_default()
            .push(at);
        self.send(Record {
            tid,
            ..Record::new(at, EventKind::Fault, offset, len)
        });
    }

    /// A request for `offset..offset+len` was written to the urgent connection, starting at
    /// `at` (taken before the write: the answer can be read before the write returns).
    pub fn request(&self, at: Instant, offset: u64, len: u64) {
        self.send(Record {
            channel: Some("urgent"),
            ..Record::new(at, EventKind::Request, offset, len)
        });
    }

    /// The urgent receiver read a frame for `offset..offset+len` and will place it now.
    pub fn answer(&self, offset: u64, len: u64) {
        self.send(Record {
            channel: Some("urgent"),
            ..Record::new(Instant::now(), EventKind::Answer, offset, len)
        });
    }

    /// An access of thread `tid` to the page at `offset` began at `at`, waited on a userfault
    /// and took `took` (its latency sample).
    pub fn touch(&self, at: Instant, took: Duration, offset: u64, len: u64, tid: u32) {
        self.send(Record {
            latency: Some(took),
            tid: Some(tid),
            ..Record::new(at, EventKind::Touch, offset, len)
        });
    }

    /// A chunk for `offset..offset+len` went into a staging huge page (not present yet).
    pub fn gathered(&self, offset: u64, len: u64, how: Resolution, channel: &'static str) {
        self.send(Record {
            how: Some(how),
            channel: Some(channel),
            ..Record::new(Instant::now(), EventKind::Gathered, offset, len)
        });
    }

    /// A frame for `offset..offset+len` brought nothing: every page was present.
    pub fn duplicate(&self, offset: u64, len: u64, channel: &'static str) {
        self.send(Record {
            how: Some(Resolution::Duplicate),
            channel: Some(channel),
            ..Record::new(Instant::now(), EventKind::Arrival, offset, len)
        });
    }

    /// The fault(s) on the page at `offset` found it present when the handler read them.
    pub fn already_present(&self, offset: u64, len: u64) {
        let at = Instant::now();
        let faults = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&offset)
            .unwrap_or_default();
        for fault in faults {
            self.send(Record {
                latency: Some(at.saturating_duration_since(fault)),
                how: Some(Resolution::AlreadyPresent),
                channel: Some("local"),
                ..Record::new(at, EventKind::Resolved, offset, len)
            });
        }
    }

    /// The pages of `mapped` became present (placed with `how`, carried by `channel`): one
    /// `arrival`, and a `resolved` for every fault waiting in the range. `page` is the size of
    /// a fault's page.
    pub fn arrival(&self, mapped: &Mapped, page: u64, how: Resolution, channel: &'static str) {
        let (offset, len) = (mapped.offset, mapped.len);
        self.send(Record {
            latency: Some(mapped.ended.saturating_duration_since(mapped.began)),
            how: Some(how),
            channel: Some(channel),
            ..Record::new(mapped.ended, EventKind::Arrival, offset, len)
        });
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let pages: Vec<u64> = pending
            .range(offset..offset.saturating_add(len))
            .map(|(&p, _)| p)
            .collect();
        for p in pages {
            for fault in pending.remove(&p).unwrap_or_default() {
                // Read after the ioctl had returned (before the placer marked the page): the
                // page was present when the handler read the fault.
                let record = if fault > mapped.ended {
                    Record {
                        latency: Some(Duration::ZERO),
                        how: Some(Resolution::AlreadyPresent),
                        channel: Some("local"),
                        ..Record::new(fault, EventKind::Resolved, p, page)
                    }
                } else {
                    Record {
                        latency: Some(mapped.ended.saturating_duration_since(fault)),
                        how: Some(how),
                        channel: Some(channel),
                        ..Record::new(mapped.ended, EventKind::Resolved, p, page)
                    }
                };
                self.send(record);
            }
        }
    }

    /// When the run started.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Flushes and closes the file.
    pub fn finish(&self) -> std::io::Result<()> {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        match writer.map(|w| w.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(std::io::Error::other("the trace writer panicked")),
            None => Ok(()),
        }
    }
}
