//! The pager: a registered region filled on demand from the page server.
//!
//! Three kinds of threads share one [`Pager`]:
//! - the **fault handler** polls the userfaultfd; each fault on a page nobody asked for yet
//!   becomes one request on the urgent connection (the `requested` bitmap makes that true
//!   however many threads fault on the page);
//! - the **urgent receiver** and the **background receiver** read frames and place pages with
//!   UFFDIO_COPY / ZEROPAGE, which wakes the threads waiting on them. The kernel refuses to
//!   place a page twice (EEXIST), so a page that arrives on both connections is placed once.
//!
//! If the server goes away, the pager records a fatal error and the run stops. The userfaultfd
//! is never closed while a thread may still be blocked on a fault: closing it would let such a
//! thread run on a zero-filled page. Blocked threads keep the pager (and so the descriptor)
//! alive until the process exits.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::liveness::Heard;
use crate::trace::Resolution;
use crate::workload::Waits;
use hugepage::{Assembler, Backing, Mapped, Memory, Progress};

use uffd_core::place::Stop;
use uffd_core::{
    BatchReader, Conn, Frame, FrameBatch, FrameReader, FrameWriter, Limits, PageBitmap, Userfaultfd,
};

/// Counters of a run (all monotonic).
#[derive(Debug, Default)]
pub struct Counters {
    /// Fault messages read from the userfaultfd.
    pub faults: AtomicU64,
    /// Requests sent on the urgent connection.
    pub requests: AtomicU64,
    /// Data pages placed from the urgent connection.
    pub pages_urgent: AtomicU64,
    /// Data pages placed from the background connection.
    pub pages_background: AtomicU64,
    /// Zero pages placed (either connection).
    pub pages_zero: AtomicU64,
    /// Pages that arrived but were already present.
    pub pages_duplicate: AtomicU64,
    /// Bytes read from both connections.
    pub bytes_received: AtomicU64,
    /// Times the link was re-established after a connection was lost.
    pub reconnects: AtomicU64,
    /// THP units placed but left mapped with base pages (MADV_COLLAPSE failed).
    pub huge_pages_not_collapsed: AtomicU64,
    /// REMOVE events (MADV_DONTNEED) read.
    pub events_remove: AtomicU64,
    /// UNMAP events read.
    pub events_unmap: AtomicU64,
    /// REMAP events read.
    pub events_remap: AtomicU64,
    /// FORK events read.
    pub events_fork: AtomicU64,
    /// Faults on discarded pages, resolved locally with zeros.
    pub pages_discarded_zeroed: AtomicU64,
}

/// Which connection a receiver reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// Answers to requests.
    Urgent,
    /// The stream.
    Background,
}

impl Channel {
    /// `urgent` or `background`.
    pub fn name(self) -> &'static str {
        match self {
            Channel::Urgent => "urgent",
            Channel::Background => "background",
        }
    }
}

/// State shared by the pager's threads.
#[derive(Debug)]
pub struct Pager {
    /// The registered memory.
    pub memory: Memory,
    /// The descriptor it is registered with.
    pub uffd: Arc<Userfaultfd>,
    /// Base page size.
    pub page: u64,
    /// Pages in the image.
    pub pages: u64,
    /// Pages present in the region (which may be longer than the image: huge-page backings
    /// round it up to whole huge pages; the padding is placed as zeros with the last one).
    pub received: PageBitmap,
    /// Pages (first page of each request unit) already requested.
    pub requested: PageBitmap,
    /// Pages the application discarded (MADV_DONTNEED): they read as zero from now on.
    pub discarded: PageBitmap,
    /// Pages the application unmapped: never placed again.
    pub gone: PageBitmap,
    /// Held for writing while the fault handler reads and applies events; for reading by a
    /// receiver from "is this page discarded?" to its placement ioctl (see [`crate::events`]).
    pub events_lock: std::sync::RwLock<()>,
    /// Set when the urgent connection placed pages directly inside huge-page units (THP): the
    /// background assembler re-checks its units, which may be complete now.
    pub recheck: AtomicBool,
    /// Counters.
    pub counters: Counters,
    /// Decoder limits for the server's frames.
    pub limits: Limits,
    image_size: u64,
    /// The `--trace` file, if any.
    pub trace: Option<crate::trace::Trace>,
    /// Fault messages read per thread: which workload accesses waited on a userfault.
    pub waits: Waits,
    /// The current connection generation (see [`crate::link`]).
    pub generation: AtomicU64,
    /// When the server was last heard from and last asked ([`crate::liveness`]).
    pub liveness: crate::liveness::Liveness,
    /// Where requests go; None while the link is being re-established.
    urgent_tx: Mutex<Option<FrameWriter<Conn>>>,
    /// Why the current generation's connections were lost, until the link is back.
    lost: Mutex<Option<String>>,
    link_changed: Condvar,
    stop: AtomicBool,
    background_done: AtomicBool,
    fatal: Mutex<Option<String>>,
    progress: Condvar,
    progress_lock: Mutex<()>,
}

impl Pager {
    /// A pager over `memory`, registered with `uffd`, for an image of `image_size` bytes.
    pub fn new(
        memory: Memory,
        uffd: Arc<Userfaultfd>,
        image_size: u64,
        trace: Option<crate::trace::Trace>,
    ) -> Pager {
        let page = uffd_core::page_size() as u64;
        let pages = image_size.div_ceil(page);
        let slots = memory.pages();
        Pager {
            memory,
            uffd,
            page,
            pages,
            received: PageBitmap::new(slots),
            requested: PageBitmap::new(slots),
            discarded: PageBitmap::new(slots),
            gone: PageBitmap::new(slots),
            events_lock: std::sync::RwLock::new(()),
            recheck: AtomicBool::new(false),
            counters: Counters::default(),
            limits: Limits::new(image_size, page),
            image_size,
            trace,
            waits: Waits::default(),
            generation: AtomicU64::new(0),
            liveness: crate::liveness::Liveness::default(),
            urgent_tx: Mutex::new(None),
            lost: Mutex::new(None),
            link_changed: Condvar::new(),
            stop: AtomicBool::new(false),
            background_done: AtomicBool::new(false),
            fatal: Mutex::new(None),
            progress: Condvar::new(),
            progress_lock: Mutex::new(()),
        }
    }

    /// Records the first fatal error and wakes the main thread.
    pub fn fail(&self, why: String) {
        let mut fatal = self.fatal.lock().unwrap_or_else(|e| e.into_inner());
        if fatal.is_none() && !self.stop.load(Ordering::Acquire) {
            tracing::debug!("fatal: {why}");
            *fatal = Some(why);
        }
        drop(fatal);
        self.notify();
    }

    /// The fatal error, if any.
    pub fn fatal(&self) -> Option<String> {
        self.fatal.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Tells every thread to stop (the run is over).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.notify();
        let _guard = self.lost.lock().unwrap_or_else(|e| e.into_inner());
        self.link_changed.notify_all();
    }

    /// A connection of `generation` failed: the link supervisor reconnects (older
    /// generations' failures are the supervisor's own doing and are ignored).
    pub fn lost(&self, generation: u64, why: String) {
        if self.stopping() || generation != self.generation.load(Ordering::Acquire) {
            return;
        }
        let mut lost = self.lost.lock().unwrap_or_else(|e| e.into_inner());
        if lost.is_none() {
            *lost = Some(why);
        }
        self.link_changed.notify_all();
    }

    /// Blocks until a connection is lost (returns why) or the pager stops (None).
    pub fn wait_lost(&self) -> Option<String> {
        let mut lost = self.lost.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if self.stopping() {
                return None;
            }
            if let Some(why) = lost.clone() {
                return Some(why);
            }
            lost = match self
                .link_changed
                .wait_timeout(lost, Duration::from_millis(100))
            {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// The link is back.
    pub fn clear_lost(&self) {
        *self.lost.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The request path (None while reconnecting).
    pub fn lock_urgent(&self) -> std::sync::MutexGuard<'_, Option<FrameWriter<Conn>>> {
        self.urgent_tx.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True if every page of the request unit starting at `first` is present.
    pub fn unit_present(&self, first: u64, unit_pages: u64) -> bool {
        (first..(first + unit_pages).min(self.pages)).all(|p| self.received.get(p as usize))
    }

    /// The received bitmap as words, for resuming a session.
    pub fn present_words(&self) -> Vec<u64> {
        self.received.to_words()
    }

    /// The image size the session started with.
    pub fn limits_image_size(&self) -> u64 {
        self.image_size
    }

    /// True once [`Pager::stop`] was called.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// A new background connection starts its stream afresh.
    pub fn reset_background(&self) {
        self.background_done.store(false, Ordering::Release);
    }

    /// True once the background stream sent its end frame.
    pub fn background_done(&self) -> bool {
        self.background_done.load(Ordering::Acquire)
    }

    /// Wakes the main thread to re-check its condition.
    pub fn notify(&self) {
        let _guard = self.progress_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.progress.notify_all();
    }

    /// Waits until `done()` or a fatal error, checking at least every 50 ms.
    pub fn wait_until(&self, done: impl Fn() -> bool) -> Result<(), String> {
        let mut guard = self.progress_lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(why) = self.fatal() {
                return Err(why);
            }
            if done() {
                return Ok(());
            }
            guard = match self.progress.wait_timeout(guard, Duration::from_millis(50)) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// Address of page `index` (where it is now, if the application moved it).
    pub fn page_addr(&self, index: u64) -> u64 {
        self.memory.page_addr(index)
    }

    /// The image page at `addr`, following moves; None outside the region (and at the old
    /// place of a moved range).
    pub fn image_page(&self, addr: u64) -> Option<u64> {
        self.memory.region_page(addr)
    }

    /// The image pages of `start..end`.
    pub fn pages_in(&self, start: u64, end: u64) -> Vec<u64> {
        (start / self.page..end.div_ceil(self.page))
            .filter_map(|p| self.image_page(p * self.page))
            .collect()
    }

    /// Pages of `mapped` past the end of the image: the zero padding of the last huge page,
    /// which the counters leave out.
    fn padding_pages(&self, mapped: &Mapped) -> u64 {
        let image_end = self.pages * self.page;
        let end = mapped.offset + mapped.len;
        end.saturating_sub(image_end.max(mapped.offset)) / self.page
    }

    /// True when every page is present, discarded or unmapped: nothing more will come.
    pub fn complete(&self) -> bool {
        let total = self.received.len();
        if self.discarded.count() == 0 && self.gone.count() == 0 {
            return self.received.count() == total;
        }
        let settled = (0..total)
            .filter(|&p| self.received.get(p) || self.discarded.get(p) || self.gone.get(p))
            .count();
        settled == total
    }

    /// Requests the unit holding `page` unless it was requested already. Returns true if a
    /// request went out (or will, when the link is back).
    pub fn request(&self, page: u64) -> bool {
        let unit_pages = (self.memory.request_unit() / self.page).max(1);
        let first = page / unit_pages * unit_pages;
        if first >= self.pages || !self.requested.set(first as usize) {
            return false;
        }
        // The last unit of a huge-page backing may reach past the image: ask for the image's
        // part; the padding is zeroed with it.
        let len = unit_pages.min(self.pages - first) * self.page;
        let request = Frame::Request {
            offset: first * self.page,
            len,
        };
        // While the link is down the request stays marked; the link supervisor re-sends
        // every unanswered request once it has reconnected.
        let generation = self.generation.load(Ordering::Acquire);
        let mut tx = self.lock_urgent();
        if let Some(writer) = tx.as_mut() {
            let at = std::time::Instant::now();
            match writer.send(&request) {
                Ok(()) => {
                    self.liveness.asked();
                    self.counters.requests.fetch_add(1, Ordering::Relaxed);
                    if let Some(trace) = &self.trace {
                        trace.request(at, first * self.page, len);
                    }
                }
                Err(err) => {
                    *tx = None;
                    drop(tx);
                    self.lost(generation, format!("urgent connection lost: {err}"));
                }
            }
        }
        true
    }
}

impl Drop for Pager {
    fn drop(&mut self) {
        // Unregister before the region is unmapped: with EVENT_UNMAP negotiated, munmap of a
        // registered range queues an UNMAP event and sleeps until someone reads it, and the
        // fault handler is gone by now. (Dropping the pager means no thread can still be
        // blocked on a fault of the region: each such thread holds the pager.)
        // Where the region is now: a part the application moved stays registered there.
        for (start, len) in self.memory.ranges() {
            let _ = self.uffd.unregister(start, len);
        }
    }
}

/// Batches in flight between the background reader and its placer.
const PIPELINE_DEPTH: usize = 4;
/// Bytes read into a batch at most (it also holds at least one largest frame).
const BATCH_BYTES: usize = 1 << 20;

/// The background receiver, as a two-stage pipeline: this thread reads frames while a placer
/// thread places the previous ones, so that receiving (a copy out of the socket) and placing
/// (page allocation and UFFDIO_COPY) run on two CPUs at once. Frames travel between the two
/// in batches of up to 1 MiB, read from the socket straight into the batch (a
/// [`uffd_core::BatchReader`]): every hand-over may cost a cross-CPU wake-up, tens of
/// microseconds on a VM, so handing over each 64 KiB frame alone would cost more than the
/// placement. A batch is handed over as soon as the socket has nothing more buffered, so a
/// slow stream is never held back.
pub fn receive_pipelined(pager: &Pager, reader: FrameReader<Conn>, generation: u64) {
    use std::sync::mpsc;
    let (full_tx, full_rx) = mpsc::sync_channel::<FrameBatch>(PIPELINE_DEPTH);
    let (free_tx, free_rx) = mpsc::sync_channel::<FrameBatch>(PIPELINE_DEPTH);
    for _ in 0..PIPELINE_DEPTH {
        let _ = free_tx.send(FrameBatch::new(BATCH_BYTES, &pager.limits));
    }
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut assembler = match Placer::new(pager, Channel::Background) {
                Ok(a) => a,
                Err(err) => return pager.fail(err),
            };
            loop {
                let batch = match full_rx.recv_timeout(Duration::from_millis(20)) {
                    Ok(batch) => batch,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if let Err(why) = complete_ready(pager, &mut assembler) {
                            return pager.fail(why);
                        }
                        continue;
                    }
                    // The stream ended: finish the units that only waited for pages coming
                    // by the urgent connection, while this generation lasts.
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        while assembler.pending() > 0
                            && !pager.stopping()
                            && pager.generation.load(Ordering::Acquire) == generation
                        {
                            if let Err(why) = complete_ready(pager, &mut assembler) {
                                return pager.fail(why);
                            }
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        return;
                    }
                };
                for (header, payload) in batch.frames() {
                    let frame = match uffd_core::Frame::parse(header, payload, &pager.limits) {
                        Ok(frame) => frame,
                        Err(err) => {
                            return pager.fail(format!(
                                "background connection to the page server failed: {err}"
                            ))
                        }
                    };
                    if let Err(why) =
                        handle_frame(pager, &mut assembler, Channel::Background, frame)
                    {
                        return pager.fail(why);
                    }
                    // Outside the events lock: the fault handler never waits for this.
                    if let Err(why) = assembler.prepare_ahead() {
                        return pager.fail(why);
                    }
                }
                if let Err(why) = complete_ready(pager, &mut assembler) {
                    return pager.fail(why);
                }
                // Placing is progress too: the reader may be waiting for this batch.
                pager.liveness.heard();
                if free_tx.send(batch).is_err() {
                    return;
                }
            }
        });
        let mut reader = BatchReader::new(Heard::new(reader.into_inner(), &pager.liveness));
        let mut last_bytes = 0;
        // The end frame may still be in the placer's queue when the server closes.
        let mut saw_end = false;
        for mut batch in free_rx.iter() {
            let result = reader.fill(&mut batch, &pager.limits);
            saw_end |= batch
                .frames()
                .any(|(header, _)| header.kind == uffd_core::proto::Kind::End);
            let bytes = reader.bytes_read();
            pager
                .counters
                .bytes_received
                .fetch_add(bytes - last_bytes, Ordering::Relaxed);
            last_bytes = bytes;
            // Whole frames read before an error are placed all the same.
            let sent = full_tx.send(batch).is_ok();
            match result {
                Ok(true) if sent => {}
                Ok(true) => break,
                Ok(false) if saw_end => break,
                Ok(false) => {
                    let why = "the page server closed the background connection";
                    pager.lost(generation, why.into());
                    break;
                }
                Err(err) => {
                    let why = format!("background connection to the page server failed: {err}");
                    pager.lost(generation, why);
                    break;
                }
            }
        }
        drop(full_tx);
    });
}

/// THP: the urgent connection placed 4 KiB pages inside units this assembler may be holding
/// complete but for those pages: place them now.
fn complete_ready(pager: &Pager, placer: &mut Placer) -> Result<(), String> {
    if !pager.recheck.swap(false, Ordering::AcqRel) {
        return Ok(());
    }
    let Placer::Assemble(assembler) = placer else {
        return Ok(());
    };
    let _guard = pager.events_lock.read().unwrap_or_else(|e| e.into_inner());
    let progress = assembler
        .complete_ready(&pager.received)
        .map_err(|e| e.to_string())?;
    if progress.stopped.is_some() {
        pager.recheck.store(true, Ordering::Release); // try again on the next turn
    }
    account(
        pager,
        placer,
        Resolution::Background,
        Channel::Background,
        &progress,
    );
    if progress.pages_placed > 0 && pager.complete() {
        pager.notify();
    }
    Ok(())
}

fn handle_frame(
    pager: &Pager,
    assembler: &mut Placer,
    channel: Channel,
    frame: Frame<'_>,
) -> Result<(), String> {
    let name = match channel {
        Channel::Urgent => "urgent",
        Channel::Background => "background",
    };
    match frame {
        Frame::Data { offset, bytes } => place(
            pager,
            assembler,
            channel,
            offset,
            Some(bytes),
            bytes.len() as u64,
        ),
        Frame::Zero { offset, len } => place(pager, assembler, channel, offset, None, len),
        Frame::End if channel == Channel::Background => {
            pager.background_done.store(true, Ordering::Release);
            pager.notify();
            Ok(())
        }
        Frame::Error { code, message } => Err(format!("page server error ({code:?}): {message}")),
        other => Err(format!(
            "unexpected {:?} frame on the {name} connection",
            other.kind()
        )),
    }
}

/// A receiver thread: reads frames from one connection and places their pages.
pub fn receive(pager: &Pager, channel: Channel, reader: FrameReader<Conn>, generation: u64) {
    let mut assembler = match Placer::new(pager, channel) {
        Ok(a) => a,
        Err(err) => return pager.fail(err),
    };
    let name = match channel {
        Channel::Urgent => "urgent",
        Channel::Background => "background",
    };
    // The handshake's bytes count as received; from here every read is a sign of life.
    pager
        .counters
        .bytes_received
        .fetch_add(reader.bytes_read(), Ordering::Relaxed);
    let mut reader = FrameReader::new(Heard::new(reader.into_inner(), &pager.liveness));
    let mut last_bytes = 0;
    loop {
        let frame = match reader.read_frame(&pager.limits) {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                if !(channel == Channel::Background && pager.background_done()) {
                    pager.lost(
                        generation,
                        format!("the page server closed the {name} connection"),
                    );
                }
                return;
            }
            Err(err) => {
                pager.lost(
                    generation,
                    format!("{name} connection to the page server failed: {err}"),
                );
                return;
            }
        };
        if let (Some(trace), Channel::Urgent) = (&pager.trace, channel) {
            match &frame {
                Frame::Data { offset, bytes } => trace.answer(*offset, bytes.len() as u64),
                Frame::Zero { offset, len } => trace.answer(*offset, *len),
                _ => {}
            }
        }
        let result = handle_frame(pager, &mut assembler, channel, frame);
        let bytes = reader.bytes_read();
        pager
            .counters
            .bytes_received
            .fetch_add(bytes - last_bytes, Ordering::Relaxed);
        last_bytes = bytes;
        if let Err(why) = result {
            return pager.fail(why);
        }
    }
}

/// How one receiver places pages.
pub enum Placer {
    /// Straight into the region with UFFDIO_COPY / ZEROPAGE: base pages, and the urgent 4 KiB
    /// pages inside THP units (a faulting thread waits for that page alone). Holds what it
    /// made present since the last [`Placer::take_mapped`].
    Direct(Vec<Mapped>),
    /// Through this connection's huge-page assembler: units placed whole, atomically.
    Assemble(Assembler),
}

impl std::fmt::Debug for Placer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Placer::Direct(_) => "Placer::Direct",
            Placer::Assemble(_) => "Placer::Assemble",
        })
    }
}

impl Placer {
    /// Units started but not placed yet (0 for direct placement).
    pub fn pending(&self) -> usize {
        match self {
            Placer::Direct(_) => 0,
            Placer::Assemble(assembler) => assembler.pending(),
        }
    }

    /// What the placements since the last call made present, one entry per placement ioctl
    /// (direct placement: per frame).
    pub fn take_mapped(&mut self) -> Vec<Mapped> {
        match self {
            Placer::Direct(mapped) => std::mem::take(mapped),
            Placer::Assemble(assembler) => assembler.take_mapped(),
        }
    }

    /// The placer for `channel`'s receiver.
    pub fn new(pager: &Pager, channel: Channel) -> Result<Placer, String> {
        let backing = pager.memory.backing();
        if backing == Backing::Anon || (backing == Backing::Thp && channel == Channel::Urgent) {
            return Ok(Placer::Direct(Vec::new()));
        }
        let mut assembler = pager
            .memory
            .assembler(Arc::clone(&pager.uffd))
            .map_err(|e| e.to_string())?;
        // The padding past the image in the last unit is zero: gather it now, so that the
        // unit completes when the image's pages of it arrive.
        let image_end = pager.pages * pager.page;
        let padding = pager.memory.len() as u64 - image_end;
        if padding > 0 {
            assembler
                .zero(image_end, padding, &pager.received)
                .map_err(|e| e.to_string())?;
        }
        Ok(Placer::Assemble(assembler))
    }

    /// Gets the assembler's next staging page ready ([`hugepage::Assembler::prepare_spare`]).
    /// Call it without the events lock.
    pub fn prepare_ahead(&mut self) -> Result<(), String> {
        match self {
            Placer::Assemble(assembler) => assembler.prepare_spare().map_err(|e| e.to_string()),
            Placer::Direct(_) => Ok(()),
        }
    }

    /// Places (or gathers) `bytes`, or `len` zero bytes, at image `offset`, honouring what
    /// the application did meanwhile: discarded pages are placed as zeros, unmapped pages are
    /// dropped (see [`crate::events`]).
    pub fn place(
        &mut self,
        pager: &Pager,
        offset: u64,
        bytes: Option<&[u8]>,
        len: u64,
    ) -> Result<Progress, String> {
        let _guard = pager.events_lock.read().unwrap_or_else(|e| e.into_inner());
        let ps = pager.page;
        let moved = pager.memory.moved();
        let plain = pager.discarded.count() == 0 && pager.gone.count() == 0 && !moved;
        if plain {
            return self.place_run(pager, offset, bytes, len);
        }
        let class = |p: u64| {
            if pager.gone.get(p as usize) {
                2
            } else if pager.discarded.get(p as usize) {
                1
            } else {
                0
            }
        };
        let (first, n) = (offset / ps, len / ps);
        // Direct placement fills a contiguous range; a moved range is not contiguous in
        // memory any more, so it goes page by page. The assembler follows moves itself.
        let direct_moved = moved && matches!(self, Placer::Direct(_));
        let mut total = Progress::default();
        let mut i = 0;
        while i < n {
            let c = class(first + i);
            let mut j = i + 1;
            while j < n && class(first + j) == c && !direct_moved {
                j += 1;
            }
            let (o, l) = ((first + i) * ps, (j - i) * ps);
            let step = match c {
                0 => self.place_run(
                    pager,
                    o,
                    bytes.map(|b| &b[(i * ps) as usize..(j * ps) as usize]),
                    l,
                )?,
                1 => self.place_run(pager, o, None, l)?,
                _ => Progress::default(),
            };
            let stopped = step.stopped.is_some();
            total.merge(&step);
            if stopped && matches!(self, Placer::Direct(_)) {
                break;
            }
            i = j;
        }
        Ok(total)
    }

    fn place_run(
        &mut self,
        pager: &Pager,
        offset: u64,
        bytes: Option<&[u8]>,
        len: u64,
    ) -> Result<Progress, String> {
        match self {
            Placer::Assemble(assembler) => match bytes {
                Some(bytes) => assembler.data(offset, bytes, &pager.received),
                None => assembler.zero(offset, len, &pager.received),
            }
            .map_err(|e| e.to_string()),
            Placer::Direct(_) if bytes.is_none() && pager.memory.backing() == Backing::Thp => {
                // Not UFFDIO_ZEROPAGE inside a THP unit: MADV_COLLAPSE refuses a range that
                // maps the shared zero page, and the unit is collapsed once complete. Copy
                // zeros instead.
                const ZEROS: [u8; 4096] = [0; 4096];
                let mut total = Progress::default();
                let mut at = offset;
                while at < offset + len {
                    // place_run, not place: the events lock is held by our caller already.
                    let step =
                        self.place_run(pager, at, Some(&ZEROS[..pager.page as usize]), pager.page)?;
                    total.merge(&step);
                    if step.stopped.is_some() {
                        break;
                    }
                    at += pager.page;
                }
                Ok(total)
            }
            Placer::Direct(mapped) => {
                let page = pager.page;
                let source = match bytes {
                    Some(bytes) => uffd_core::Source::Bytes(bytes),
                    None => uffd_core::Source::Zero(len),
                };
                // Where the page is now: the application may have moved it with mremap.
                let dst = pager.page_addr(offset / page);
                let began = Instant::now();
                let filled = uffd_core::place::fill(&pager.uffd, dst, source, page)
                    .map_err(|e| e.to_string())?;
                if filled.placed > 0 {
                    mapped.push(Mapped {
                        offset,
                        len: filled.placed + filled.present,
                        began,
                        ended: Instant::now(),
                    });
                }
                // Every page up to the stop is present now, placed here or before.
                let first = offset / page;
                let done = (filled.placed + filled.present) / page;
                pager
                    .received
                    .set_range(first as usize, (first + done) as usize);
                if pager.memory.unit() > page {
                    pager.recheck.store(true, Ordering::Release);
                }
                Ok(Progress {
                    pages_placed: filled.placed / page,
                    pages_present: filled.present / page,
                    pages_gathered: 0,
                    units_completed: done,
                    stopped: filled.stopped,
                    units_not_huge: 0,
                })
            }
        }
    }

    /// Completes what a `Retry` stop left: complete units again, or the rest of a range.
    fn retry(
        &mut self,
        pager: &Pager,
        offset: u64,
        bytes: Option<&[u8]>,
        len: u64,
    ) -> Result<Progress, String> {
        match self {
            Placer::Assemble(assembler) => {
                // Under the events lock like every placement: the stop was an event pending,
                // and once the fault handler has read it (an mremap's REMAP) the ioctls work
                // again before the move is applied; without the lock a unit could be placed
                // at its old address in between (UFFDIO_MOVE failed ENOENT there).
                let _guard = pager.events_lock.read().unwrap_or_else(|e| e.into_inner());
                assembler.retry(&pager.received).map_err(|e| e.to_string())
            }
            // `place` takes the events lock itself. Pages placed before the stop answer EEXIST
            // now and are skipped.
            Placer::Direct(_) => self.place(pager, offset, bytes, len),
        }
    }
}

fn place(
    pager: &Pager,
    placer: &mut Placer,
    channel: Channel,
    offset: u64,
    bytes: Option<&[u8]>,
    len: u64,
) -> Result<(), String> {
    let how = match (bytes.is_some(), channel) {
        (false, _) => Resolution::Zero,
        (true, Channel::Urgent) => Resolution::Urgent,
        (true, Channel::Background) => Resolution::Background,
    };
    let mut progress = placer.place(pager, offset, bytes, len)?;
    if let Some(trace) = &pager.trace {
        if progress.pages_gathered > 0 {
            trace.gathered(offset, len, how, channel.name());
        } else if progress.pages_placed == 0 && progress.pages_present > 0 {
            trace.duplicate(offset, len, channel.name());
        }
    }
    loop {
        account(pager, placer, how, channel, &progress);
        match progress.stopped {
            None => break,
            Some(Stop::Gone) => return Err("the process owning the region exited".into()),
            // An event is pending (the fault handler reads it) or the address space is
            // changing: give it a moment, then complete what is left.
            Some(Stop::Retry) => {
                std::thread::sleep(Duration::from_micros(50));
                progress = placer.retry(pager, offset, bytes, len)?;
            }
        }
    }
    if pager.complete() {
        pager.notify();
    }
    Ok(())
}

/// Counts what one placement call made present (pages of the image only, never the padding
/// of the last huge page) and traces each range as an arrival.
fn account(
    pager: &Pager,
    placer: &mut Placer,
    how: Resolution,
    channel: Channel,
    progress: &Progress,
) {
    let mapped = placer.take_mapped();
    let padding: u64 = mapped.iter().map(|m| pager.padding_pages(m)).sum();
    let counter = match how {
        Resolution::Urgent => &pager.counters.pages_urgent,
        Resolution::Background => &pager.counters.pages_background,
        _ => &pager.counters.pages_zero,
    };
    counter.fetch_add(
        progress.pages_placed.saturating_sub(padding),
        Ordering::Relaxed,
    );
    pager
        .counters
        .huge_pages_not_collapsed
        .fetch_add(progress.units_not_huge, Ordering::Relaxed);
    pager
        .counters
        .pages_duplicate
        .fetch_add(progress.pages_present, Ordering::Relaxed);
    if let Some(trace) = &pager.trace {
        for m in &mapped {
            trace.arrival(m, pager.page, how, channel.name());
        }
    }
}

/// Spawns a named thread running `f` with the pager.
pub fn spawn(
    name: &str,
    pager: &Arc<Pager>,
    f: impl FnOnce(&Pager) + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let pager = Arc::clone(pager);
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || f(&pager))
}
