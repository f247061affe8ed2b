//! One run: connect, map and register, run the workload, wait for the image, verify, report.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use uffd_core::proto::Role;
use uffd_core::{sys, Endpoint, Latency, Userfaultfd};

use hugepage::{Backing, HugetlbPlacement, Memory};

use crate::connect::{connect, HelloParams, Reference};
use crate::link::LinkConfig;
use crate::pager::{self, Pager};
use crate::report::{LatencyUs, Report};
use crate::verify::{dump, verify};
use crate::workload::{self, Workload};
use uffd_core::convert::usize_from;

pub use crate::error::ClientError;

/// Default `stall_timeout`: long enough for a server busy with many clients, short enough
/// that a dead link is noticed within seconds.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// What to run: how the client opens its session, and the workload run against it.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The session: server, connections, backing, recovery (`want_checksums` is also set by
    /// `verify`).
    pub client: ClientOptions,
    /// Access pattern.
    pub workload: Workload,
    /// Workload threads.
    pub threads: u64,
    /// Touches, as a fraction of the image's pages.
    pub touch: f64,
    /// Check every page against the server's checksums at the end.
    pub verify: bool,
    /// Write the final region here.
    pub dump: Option<PathBuf>,
    /// Workload seed.
    pub seed: u64,
    /// No progress line (it is shown only when stderr is a terminal anyway).
    pub quiet: bool,
}

impl RunConfig {
    /// Defaults: [`ClientOptions::new`], random workload, 4 threads, 25% of the pages
    /// touched.
    pub fn new(server: Endpoint) -> RunConfig {
        RunConfig {
            client: ClientOptions::new(server),
            workload: Workload::Random,
            threads: 4,
            touch: 0.25,
            verify: false,
            dump: None,
            seed: 1,
            quiet: false,
        }
    }
}

/// How to open a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The page server.
    pub server: Endpoint,
    /// Open the background connection.
    pub background: bool,
    /// Fetch the per-page checksums.
    pub want_checksums: bool,
    /// Token (empty: none).
    pub token: Vec<u8>,
    /// Write a trace of every fault and arrival here.
    pub trace: Option<PathBuf>,
    /// How the region is backed (base pages, THP, hugetlbfs).
    pub backing: Backing,
    /// How hugetlbfs units are placed (COPY, or CONTINUE through an alias mapping).
    pub hugetlb: HugetlbPlacement,
    /// Fail fast: negotiate UFFD_FEATURE_SIGBUS, so a touch of a page that has not arrived
    /// raises SIGBUS in the touching thread at once instead of waiting for the network. Only
    /// the background stream fills the region.
    pub fail_fast: bool,
    /// Keep reconnecting this long after a connection is lost (zero: fail at once).
    pub reconnect_timeout: Duration,
    /// The server counts as lost after this long without a sign of life while the client
    /// waits for it (a request unanswered, the stream unfinished): a silent link, a stopped
    /// server ([`crate::liveness`]). Also the connections' `TCP_USER_TIMEOUT` and keepalive.
    pub stall_timeout: Duration,
    /// Cap the background connection's TCP receive window at this many bytes
    /// (`TCP_WINDOW_CLAMP`): at most that much background data is in flight, so on a link
    /// whose bottleneck is one FIFO queue an urgent answer waits behind at most that much.
    /// None: the kernel's autotuning.
    pub background_window: Option<u32>,
    /// Run the urgent path's threads (the fault handler and the urgent receiver) `SCHED_FIFO`
    /// at this priority ([`uffd_core::cpu::set_realtime`]): on a machine whose few CPUs are
    /// busy placing the stream, a woken handler otherwise waits for their time slices. None:
    /// the normal scheduler. [`Client::open`] fails if the priority cannot be had.
    pub urgent_priority: Option<i32>,
}

impl ClientOptions {
    /// Urgent and background connections, no checksums, no token, no trace.
    pub fn new(server: Endpoint) -> ClientOptions {
        ClientOptions {
            server,
            background: true,
            want_checksums: false,
            token: Vec::new(),
            trace: None,
            backing: Backing::Anon,
            hugetlb: HugetlbPlacement::Copy,
            fail_fast: false,
            reconnect_timeout: Duration::from_secs(30),
            stall_timeout: STALL_TIMEOUT,
            background_window: None,
            urgent_priority: None,
        }
    }
}

/// A live session: the region registered, the fault handler and the receivers running.
/// Touching the region's pages fetches them. [`Client::close`] ends it cleanly.
#[derive(Debug)]
pub struct Client {
    pager: Arc<Pager>,
    helpers: Vec<std::thread::JoinHandle<()>>,
    reference: Option<Reference>,
    image_size: u64,
}

impl Client {
    /// Connects (urgent, then background if asked), maps and registers the region, and
    /// starts the fault handler and the receivers.
    pub fn open(options: &ClientOptions) -> Result<Client, ClientError> {
        if let Some(priority) = options.urgent_priority {
            uffd_core::cpu::check_realtime(priority)?;
        }
        let server = &options.server;
        let background = options.background;
        let want_checksums = options.want_checksums;
        let token = &options.token;
        let mut params = HelloParams {
            session: 0,
            // The server sends background pages in whole units of this size, in chunks.
            unit: options.backing.unit(),
            image_id: 0,
            token: token.to_vec(),
        };
        let urgent = connect(server, Role::Urgent, &params, want_checksums)?;
        let image_size = urgent.welcome.image_size;
        params.session = urgent.welcome.session;
        params.image_id = urgent.welcome.image_id;

        let memory = Memory::new(
            options.backing,
            usize::try_from(image_size).unwrap_or(usize::MAX),
            options.hugetlb,
        )?;
        // Non-cooperative events: the application may discard, unmap or move parts of the
        // region, or fork (FORK needs CAP_SYS_PTRACE; without it the kernel refuses the
        // feature, so it is asked for only when the process has the capability).
        // THREAD_ID: each fault message names the faulting thread, so the workload counts only
        // the accesses that really waited (see crate::workload).
        let mut events = sys::feature::EVENT_REMOVE
            | sys::feature::EVENT_UNMAP
            | sys::feature::EVENT_REMAP
            | sys::feature::THREAD_ID;
        if caps::has_cap(
            None,
            caps::CapSet::Effective,
            caps::Capability::CAP_SYS_PTRACE,
        )
        .unwrap_or(false)
        {
            events |= sys::feature::EVENT_FORK;
        }
        if options.fail_fast {
            events |= sys::feature::SIGBUS;
        }
        let uffd = Arc::new(Userfaultfd::open(memory.uffd_features() | events)?);
        memory.register(&uffd)?;
        let trace = match &options.trace {
            Some(path) => Some(crate::trace::Trace::create(path, Instant::now()).map_err(
                |source| ClientError::Dump {
                    path: path.clone(),
                    source,
                },
            )?),
            None => None,
        };
        let pager = Arc::new(Pager::new(memory, uffd, image_size, trace));
        let reference = urgent.reference.clone();
        let link = crate::link::start(
            &pager,
            LinkConfig {
                server: server.clone(),
                params,
                background,
                reconnect_timeout: options.reconnect_timeout,
                stall_timeout: options.stall_timeout,
                background_window: options.background_window,
                urgent_priority: options.urgent_priority,
            },
            urgent,
        )?;
        let mut client = Client {
            pager: Arc::clone(&pager),
            helpers: vec![link],
            reference,
            image_size,
        };
        let p = Arc::clone(&pager);
        let priority = options.urgent_priority;
        client.spawn("fault-handler", move |_| {
            // Checked above (check_realtime).
            uffd_core::cpu::set_realtime_or_warn(priority);
            crate::fault::handle_faults(&p)
        })?;
        Ok(client)
    }

    fn spawn(
        &mut self,
        name: &str,
        f: impl FnOnce(&Pager) + Send + 'static,
    ) -> Result<(), ClientError> {
        let handle = pager::spawn(name, &self.pager, f).map_err(ClientError::Spawn)?;
        self.helpers.push(handle);
        Ok(())
    }

    /// The shared pager state.
    pub fn pager(&self) -> &Arc<Pager> {
        &self.pager
    }

    /// True image size.
    pub fn image_size(&self) -> u64 {
        self.image_size
    }

    /// Reads one byte of page `index`, fetching the page if it is missing.
    pub fn touch(&self, index: u64) -> u8 {
        assert!(index < self.pager.pages, "page {index} outside the image");
        // SAFETY: the address is inside the registered region, which lives as long as the
        // pager; a missing page blocks this thread until it is placed.
        unsafe { std::ptr::read_volatile(self.pager.page_addr(index) as *const u8) }
    }

    /// Waits until every page is present, or the transfer fails.
    pub fn wait_complete(&self) -> Result<(), ClientError> {
        self.pager
            .run
            .wait_until(|| self.pager.complete())
            .map_err(ClientError::from)
    }

    /// Stops the threads and closes the connections. Call it only when no thread can be
    /// blocked on a fault of the region.
    pub fn close(self) -> Result<(), ClientError> {
        // The link supervisor sees the stop, closes the connections and joins the receivers.
        self.pager.stop();
        for helper in self.helpers {
            let _ = helper.join();
        }
        Ok(self.pager.run.check()?)
    }
}

/// Runs the workload against the server and returns the report.
pub fn run(config: &RunConfig) -> Result<Report, ClientError> {
    run_watched(config, |_, _, _| None)
}

/// Ends a watch of a run (see [`run_watched`]).
pub type Unwatch = Box<dyn FnOnce()>;

/// [`run`], with `watch` started once the workload begins (unless `config.quiet`): it is given
/// the pager, the workload's latency so far and the start, and returns what ends it once the
/// image is complete. The lab's progress line is such a watch.
pub fn run_watched(
    config: &RunConfig,
    watch: impl FnOnce(&Arc<Pager>, &Arc<std::sync::Mutex<Latency>>, Instant) -> Option<Unwatch>,
) -> Result<Report, ClientError> {
    let start = Instant::now();
    let client = Client::open(&ClientOptions {
        want_checksums: config.client.want_checksums || config.verify,
        ..config.client.clone()
    })?;
    let pager = Arc::clone(client.pager());
    let image_size = client.image_size();

    // The workload.
    // A whole number between 0 and the page count: the rounding is the intended conversion.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let touches = (config.touch.clamp(0.0, 1.0) * pager.pages as f64).round() as u64;
    let threads = config.threads.max(1);
    let mut workers = Vec::new();
    let live = Arc::new(std::sync::Mutex::new(Latency::new()));
    let unwatch = (!config.quiet)
        .then(|| watch(&pager, &live, start))
        .flatten();
    for t in 0..threads {
        let plan = workload::plan(
            config.workload,
            pager.pages,
            touches,
            t,
            threads,
            config.seed,
        );
        let p = Arc::clone(&pager);
        let live = Arc::clone(&live);
        let handle = std::thread::Builder::new()
            .name(format!("workload-{t}"))
            .spawn(move || {
                let trace = p.trace.as_ref();
                let touched = workload::touch(
                    p.memory.addr(),
                    p.page,
                    &plan,
                    &p.page_state.received,
                    &p.waits,
                    &live,
                    trace,
                );
                (touched, plan.len() as u64)
            })
            .map_err(ClientError::Spawn)?;
        workers.push(handle);
    }
    // Threads blocked on a fault cannot be joined if the server dies: wait for them or for
    // a fatal error, whichever comes first.
    let finished = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let watcher = {
        let finished = Arc::clone(&finished);
        let p = Arc::clone(&pager);
        std::thread::spawn(move || {
            let mut latency = Latency::new();
            let (mut touched, mut present) = (0, 0);
            for worker in workers {
                if let Ok((t, n)) = worker.join() {
                    latency.merge(&t.latency);
                    present += t.present;
                    touched += n;
                }
                finished.fetch_add(1, Ordering::AcqRel);
                p.run.notify();
            }
            (latency, touched, present)
        })
    };
    let all_done = || finished.load(Ordering::Acquire) as u64 == threads;
    pager.run.wait_until(all_done)?;
    let (latency, touched, touches_present) =
        watcher.join().map_err(|_| ClientError::WorkloadPanicked)?;
    if config.client.background {
        client.wait_complete()?;
    }
    let elapsed = start.elapsed();
    if let Some(unwatch) = unwatch {
        unwatch();
    }
    if config.client.backing == Backing::Thp && pager.complete() {
        // Units whose collapse failed while an urgent page was in flight: all present now.
        let _ = pager.memory.collapse_remaining();
    }

    let verified = match &client.reference {
        Some(reference) => Some(verify(&pager, reference)?),
        None => None,
    };
    if let Some(path) = &config.dump {
        dump(&pager, image_size, path)?;
    }
    // Everything is present and no thread waits on a fault: safe to stop and unmap.
    let closed = client.close();
    // After the receivers stopped: the placement that completed the image may still be
    // writing its arrival when the main thread sees the last page present.
    if let Some(trace) = &pager.trace {
        trace.finish().map_err(|source| ClientError::Dump {
            path: config.client.trace.clone().unwrap_or_default(),
            source,
        })?;
    }
    closed?;
    let mut report = report(
        config, &pager, image_size, touched, elapsed, &latency, verified,
    );
    report.touches_present = touches_present;
    Ok(report)
}

/// Collects the report of a finished run from the pager's counters.
fn report(
    config: &RunConfig,
    pager: &Pager,
    image_bytes: u64,
    touches: u64,
    elapsed: Duration,
    latency: &Latency,
    verified: Option<bool>,
) -> Report {
    let c = &pager.counters;
    let s = latency.summary();
    let bytes_received = c.bytes_received.load(Ordering::Relaxed);
    let elapsed_s = elapsed.as_secs_f64();
    Report {
        faults: c.faults.load(Ordering::Relaxed),
        requests: c.requests.load(Ordering::Relaxed),
        pages_urgent: c.pages_urgent.load(Ordering::Relaxed),
        pages_background: c.pages_background.load(Ordering::Relaxed),
        pages_zero: c.pages_zero.load(Ordering::Relaxed),
        pages_duplicate: c.pages_duplicate.load(Ordering::Relaxed),
        bytes_received,
        elapsed_s,
        latency_us: LatencyUs {
            p50: s.p50,
            p90: s.p90,
            p99: s.p99,
            max: s.max,
            mean: s.mean,
            samples: s.count,
        },
        verified,
        throughput_mib_s: if elapsed_s > 0.0 {
            bytes_received as f64 / elapsed_s / f64::from(1u32 << 20)
        } else {
            0.0
        },
        image_bytes,
        pages: pager.pages,
        pages_present: (0..pager.pages)
            .filter(|&p| pager.page_state.received.get(usize_from(p)))
            .count() as u64,
        workload: config.workload.to_string(),
        threads: config.threads,
        touches,
        touches_present: 0,
        background: config.client.background,
        backing: pager.memory.backing().to_string(),
        reconnects: c.reconnects.load(Ordering::Relaxed),
        huge_pages_mapped: if pager.memory.unit() > pager.page {
            pager.memory.huge_pages_mapped().unwrap_or(0)
        } else {
            0
        },
        huge_pages_not_collapsed: c.huge_pages_not_collapsed.load(Ordering::Relaxed),
        huge_pages_total: if pager.memory.unit() > pager.page {
            pager.memory.units()
        } else {
            0
        },
    }
}
