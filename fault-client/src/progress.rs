//! The live progress line of a run (`indicatif`): pages present out of the image, throughput,
//! faults per second and the p99 fault latency so far. Drawn on stderr only when it is a
//! terminal, and not with `--quiet`; it costs the pager nothing (a thread reads its counters
//! five times a second).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use uffd_core::Latency;

use crate::client::{self, ClientError, RunConfig};
use crate::pager::Pager;
use crate::report::Report;
use uffd_core::convert::usize_from;

/// A running progress line.
#[derive(Debug)]
pub struct Progress {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Progress {
    /// Starts drawing, unless stderr is not a terminal (then None).
    pub fn start(
        pager: &Arc<Pager>,
        live: &Arc<Mutex<Latency>>,
        start: Instant,
    ) -> Option<Progress> {
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let bar = ProgressBar::new(pager.pages);
        let style = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} pages  {msg}",
        )
        .ok()?;
        bar.set_style(style);
        let stop = Arc::new(AtomicBool::new(false));
        let (pager, live, flag) = (Arc::clone(pager), Arc::clone(live), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name("progress".into())
            .spawn(move || {
                while !flag.load(Ordering::Acquire) {
                    let secs = start.elapsed().as_secs_f64().max(1e-3);
                    let c = &pager.counters;
                    let mib =
                        c.bytes_received.load(Ordering::Relaxed) as f64 / f64::from(1u32 << 20);
                    let faults = c.faults.load(Ordering::Relaxed) as f64;
                    let p99 = live.lock().unwrap_or_else(|e| e.into_inner()).summary().p99;
                    bar.set_position(
                        pager
                            .page_state
                            .received
                            .count()
                            .min(usize_from(pager.pages)) as u64,
                    );
                    bar.set_message(format!(
                        "{:.0} MiB/s  {:.0} faults/s  p99 {:.0} us",
                        mib / secs,
                        faults / secs,
                        p99
                    ));
                    std::thread::sleep(Duration::from_millis(200));
                }
                bar.finish_and_clear();
            })
            .ok()?;
        Some(Progress { stop, thread })
    }

    /// Stops and clears the line.
    pub fn finish(self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.thread.join();
    }
}

/// [`client::run`] with the progress line (unless `config.quiet`, or stderr is no terminal).
pub fn run(config: &RunConfig) -> Result<Report, ClientError> {
    client::run_watched(config, |pager, live, start| {
        Progress::start(pager, live, start).map(|p| Box::new(move || p.finish()) as client::Unwatch)
    })
}
