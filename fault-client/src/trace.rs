//! `--trace FILE`: one CSV line per fault and per arriving page, written by a background
//! thread so the pager's threads only push a small record into a channel.
//!
//! The format (documented in the README, read by `fault-client plot`):
//!
//! ```text
//! t_us,event,offset,len,latency_us,resolution,channel
//! 1532.1,fault,1052672,4096,,,
//! 1571.9,resolved,1052672,4096,39.8,urgent,urgent
//! 1580.2,arrival,1048576,65536,,background,background
//! ```
//!
//! - `t_us`: microseconds since the run started.
//! - `event`: `fault` (the handler read a fault message for the page at `offset`),
//!   `resolved` (that fault's page became present: `latency_us` is from the fault message to
//!   the placement that woke the thread), `arrival` (a frame's pages were placed), `request`
//!   (a request for `offset..offset+len` is being written to the urgent connection), `answer`
//!   (the urgent receiver has read a whole data or zero frame and is about to place it), or
//!   `touch` (a workload thread's access to a missing page: `t_us` is when the access began,
//!   `latency_us` how long it took, the workload's own latency sample).
//!   Together they split a fault's latency into stages: touch → fault (the kernel delivering
//!   the fault and the handler waking), fault → request (the handler), request → answer (the
//!   network both ways and the server), answer → arrival (placement), arrival → end of the
//!   touch (the woken thread getting a CPU).
//! - `offset`, `len`: the range in the image, in bytes.
//! - `resolution`: how the page got there: `urgent`, `background`, `zero`, or
//!   `already_present` (the fault raced with a placement and was only woken); for arrivals,
//!   `urgent`, `background`, `zero` or `duplicate` (every page was already present).
//! - `channel`: the connection that carried the page (`urgent`, `background`, or `local` for
//!   pages resolved without the network).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::mpsc::{self, Sender};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Instant;

/// How a fault or a frame was resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Placed from an answer on the urgent connection.
    Urgent,
    /// Placed from the background stream.
    Background,
    /// Placed as a zero page.
    Zero,
    /// Already present when the fault was read (woken only).
    AlreadyPresent,
    /// A frame whose pages were all present already.
    Duplicate,
}

impl Resolution {
    fn name(self) -> &'static str {
        match self {
            Resolution::Urgent => "urgent",
            Resolution::Background => "background",
            Resolution::Zero => "zero",
            Resolution::AlreadyPresent => "already_present",
            Resolution::Duplicate => "duplicate",
        }
    }
}

/// One line of the trace.
#[derive(Debug, Clone, Copy)]
enum Record {
    Fault {
        at: Instant,
        offset: u64,
        len: u64,
    },
    Resolved {
        at: Instant,
        offset: u64,
        len: u64,
        latency_us: f64,
        how: Resolution,
        channel: &'static str,
    },
    Arrival {
        at: Instant,
        offset: u64,
        len: u64,
        how: Resolution,
        channel: &'static str,
    },
    /// A workload thread's access to a missing page, from its start, and how long it took.
    Touch {
        at: Instant,
        offset: u64,
        len: u64,
        latency_us: f64,
    },
    /// `request` or `answer`, on the urgent connection.
    Urgent {
        at: Instant,
        event: &'static str,
        offset: u64,
        len: u64,
    },
}

/// A trace being written.
#[derive(Debug)]
pub struct Trace {
    start: Instant,
    tx: Mutex<Option<Sender<Record>>>,
    writer: Mutex<Option<JoinHandle<std::io::Result<()>>>>,
    /// Faults waiting for their page: page offset → times the faults were read.
    pending: Mutex<HashMap<u64, Vec<Instant>>>,
}

impl Trace {
    /// Creates `path` and starts the writer thread.
    pub fn create(path: &Path, start: Instant) -> std::io::Result<Trace> {
        let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
        writeln!(out, "t_us,event,offset,len,latency_us,resolution,channel")?;
        let (tx, rx) = mpsc::channel::<Record>();
        let writer = std::thread::Builder::new()
            .name("trace-writer".into())
            .spawn(move || {
                let us = |at: Instant| at.saturating_duration_since(start).as_secs_f64() * 1e6;
                for record in rx {
                    match record {
                        Record::Fault { at, offset, len } => {
                            writeln!(out, "{:.1},fault,{offset},{len},,,", us(at))?
                        }
                        Record::Resolved {
                            at,
                            offset,
                            len,
                            latency_us,
                            how,
                            channel,
                        } => writeln!(
                            out,
                            "{:.1},resolved,{offset},{len},{latency_us:.1},{},{channel}",
                            us(at),
                            how.name()
                        )?,
                        Record::Arrival {
                            at,
                            offset,
                            len,
                            how,
                            channel,
                        } => writeln!(
                            out,
                            "{:.1},arrival,{offset},{len},,{},{channel}",
                            us(at),
                            how.name()
                        )?,
                        Record::Urgent {
                            at,
                            event,
                            offset,
                            len,
                        } => writeln!(out, "{:.1},{event},{offset},{len},,,urgent", us(at))?,
                        Record::Touch {
                            at,
                            offset,
                            len,
                            latency_us,
                        } => writeln!(out, "{:.1},touch,{offset},{len},{latency_us:.1},,", us(at))?,
                    }
                }
                out.flush()
            })?;
        Ok(Trace {
            start,
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            pending: Mutex::new(HashMap::new()),
        })
    }

    fn send(&self, record: Record) {
        if let Some(tx) = self.tx.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = tx.send(record);
        }
    }

    /// The handler read a fault on the page at `offset`.
    pub fn fault(&self, offset: u64, len: u64) {
        let at = Instant::now();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(offset)
            .or_default()
            .push(at);
        self.send(Record::Fault { at, offset, len });
    }

    /// A request for `offset..offset+len` was written to the urgent connection, starting at
    /// `at` (taken before the write: the answer can be read before the write returns).
    pub fn request(&self, at: Instant, offset: u64, len: u64) {
        self.send(Record::Urgent {
            at,
            event: "request",
            offset,
            len,
        });
    }

    /// A workload thread's access to the missing page at `offset` began at `at` and took
    /// `took` (its latency sample).
    pub fn touch(&self, at: Instant, took: std::time::Duration, offset: u64, len: u64) {
        self.send(Record::Touch {
            at,
            offset,
            len,
            latency_us: took.as_secs_f64() * 1e6,
        });
    }

    /// The urgent receiver read a frame for `offset..offset+len` and will place it now.
    pub fn answer(&self, offset: u64, len: u64) {
        self.send(Record::Urgent {
            at: Instant::now(),
            event: "answer",
            offset,
            len,
        });
    }

    /// The fault on `offset` found its page already present.
    pub fn already_present(&self, offset: u64, len: u64) {
        let at = Instant::now();
        let faults = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&offset)
            .unwrap_or_default();
        for fault in faults {
            self.send(Record::Resolved {
                at,
                offset,
                len,
                latency_us: at.duration_since(fault).as_secs_f64() * 1e6,
                how: Resolution::AlreadyPresent,
                channel: "local",
            });
        }
    }

    /// Pages `offset..offset+len` were placed (`placed` pages of `page` bytes, the others
    /// were present already), carried by `channel`.
    pub fn arrival(
        &self,
        offset: u64,
        len: u64,
        page: u64,
        placed: u64,
        how: Resolution,
        channel: &'static str,
    ) {
        let at = Instant::now();
        let how = if placed == 0 {
            Resolution::Duplicate
        } else {
            how
        };
        self.send(Record::Arrival {
            at,
            offset,
            len,
            how,
            channel,
        });
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.is_empty() {
            return;
        }
        let mut p = offset;
        while p < offset + len {
            if let Some(faults) = pending.remove(&p) {
                for fault in faults {
                    self.send(Record::Resolved {
                        at,
                        offset: p,
                        len: page,
                        latency_us: at.duration_since(fault).as_secs_f64() * 1e6,
                        how,
                        channel,
                    });
                }
            }
            p += page;
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
