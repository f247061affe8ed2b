//! Fault round trips: a faulting thread and a [`Handler`], one sample per isolated fault.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use uffd_core::handler::GATE_TIMEOUT;
use uffd_core::Userfaultfd;

#[cfg(doc)]
use super::reserve_hugepages_2m;
use super::{FaultPath, Fixture, Handler, PinGuard, Pinning};

/// A userfaultfd, a [`Handler`] and a CPU placement, kept across calls to [`RoundTrip::run`].
#[derive(Debug)]
pub struct RoundTrip {
    /// Declared first: stopped and joined before the descriptor can close.
    handler: Handler,
    uffd: Arc<Userfaultfd>,
    path: FaultPath,
    pinning: Pinning,
    faulting_cpu: Option<usize>,
    /// Pages per fixture: larger runs are split, with unmap and re-map between (untimed).
    chunk: usize,
    /// Faults measured so far (= faults the handler must have resolved before the next one).
    touched: u64,
    /// Wait for the handler to be back in its wait before each access.
    gate: bool,
    /// Untimed busy wait after the gate, before each access.
    gap: Duration,
}

impl RoundTrip {
    /// Opens a userfaultfd with `path.features()` and starts a handler, both threads placed
    /// by `pinning`. hugetlb paths need free 2M pages (see [`reserve_hugepages_2m`]): up to
    /// [`RoundTrip::chunk`] of them during a run.
    pub fn new(path: FaultPath, pinning: Pinning) -> Result<RoundTrip> {
        let (faulting_cpu, handler_cpu) = pinning.cpus()?;
        let uffd = Arc::new(
            Userfaultfd::open(path.features())
                .with_context(|| format!("opening a userfaultfd for {}", path.name()))?,
        );
        let handler = Handler::spawn(Arc::clone(&uffd), path, handler_cpu)?;
        Ok(RoundTrip {
            handler,
            uffd,
            path,
            pinning,
            faulting_cpu,
            chunk: if path.needs_hugetlb() { 4 } else { 1024 },
            touched: 0,
            gate: true,
            gap: Duration::ZERO,
        })
    }

    /// Sets how many pages one fixture holds (default 1024 base pages or 4 huge pages).
    pub fn with_chunk(mut self, pages: usize) -> RoundTrip {
        self.chunk = pages.max(1);
        self
    }

    /// Whether each access waits (untimed) until the handler is back in its wait (default
    /// true). Without it, faults follow each other back to back.
    pub fn with_gate(mut self, gate: bool) -> RoundTrip {
        self.gate = gate;
        self
    }

    /// An untimed busy wait before each access, after the gate (default none).
    pub fn with_gap(mut self, gap: Duration) -> RoundTrip {
        self.gap = gap;
        self
    }

    /// Pages per fixture.
    pub fn chunk(&self) -> usize {
        self.chunk
    }

    /// The fault path.
    pub fn path(&self) -> FaultPath {
        self.path
    }

    /// The CPU placement.
    pub fn pinning(&self) -> Pinning {
        self.pinning
    }

    /// Measures `n` fault round trips, one sample per fault, on the calling thread (pinned for
    /// the duration if the [`Pinning`] says so). Every resolved page's content is checked.
    pub fn run(&mut self, n: usize) -> Result<Vec<Duration>> {
        let mut samples = Vec::with_capacity(n);
        self.run_into(n, &mut samples)?;
        Ok(samples)
    }

    /// As [`RoundTrip::run`], appending to `samples`.
    pub fn run_into(&mut self, n: usize, samples: &mut Vec<Duration>) -> Result<()> {
        let _pin = self.faulting_cpu.map(PinGuard::pin).transpose()?;
        let mut left = n;
        while left > 0 {
            let pages = left.min(self.chunk);
            let fixture = Fixture::new(&self.uffd, self.path, pages)?;
            // SAFETY: the fixture's MOVE sources are populated private pages of this process
            // that nothing borrows, and the fixture outlives every fault taken below.
            unsafe { self.handler.set_move_delta(fixture.move_delta()) };
            for i in 0..pages {
                self.handler
                    .wait_until_waiting(self.touched, GATE_TIMEOUT)?;
                let took = fixture.touch(i);
                self.touched += 1;
                self.handler.check()?;
                fixture.verify(i)?;
                samples.push(took);
            }
            left -= pages;
        }
        Ok(())
    }
}

/// Measures `n` round trips of `path` with a fresh userfaultfd and handler.
pub fn fault_round_trips(path: FaultPath, pinning: Pinning, n: usize) -> Result<Vec<Duration>> {
    RoundTrip::new(path, pinning)?.run(n)
}

/// Measures `n` in-process 4K COPY fault round trips with the handler on a different CPU from
/// the faulting thread (the calling thread, pinned meanwhile): one duration per fault, from
/// just before the access to just after it returns.
pub fn copy_fault_round_trips(n: usize) -> Result<Vec<Duration>> {
    fault_round_trips(FaultPath::Copy4k, Pinning::DifferentCpus, n)
}

#[cfg(test)]
mod tests {
    use super::super::reserve_hugepages_2m;
    use super::*;

    #[test]
    fn every_4k_path_round_trips() -> Result<()> {
        if !crate::have_uffd() {
            return Ok(());
        }
        for path in FaultPath::ALL.into_iter().filter(|p| !p.needs_hugetlb()) {
            // Two chunks, to cross a fixture boundary.
            let samples = RoundTrip::new(path, Pinning::Unpinned)?
                .with_chunk(3)
                .run(5)?;
            assert_eq!(samples.len(), 5, "{}", path.name());
        }
        Ok(())
    }

    #[test]
    fn hugetlb_paths_round_trip() -> Result<()> {
        if !crate::have_uffd() {
            return Ok(());
        }
        let _pool = match reserve_hugepages_2m(2) {
            Ok(pool) => pool,
            Err(err) => {
                crate::skip(&format!("{err:#}"));
                return Ok(());
            }
        };
        for path in FaultPath::ALL.into_iter().filter(|p| p.needs_hugetlb()) {
            let samples = RoundTrip::new(path, Pinning::Unpinned)?
                .with_chunk(2)
                .run(3)?;
            assert_eq!(samples.len(), 3, "{}", path.name());
        }
        Ok(())
    }
}
