//! The local cases: the in-process userfaultfd round trip and the kernel's first-touch fault,
//! on pinned CPUs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use uffd_core::cpu::{allowed_cpus, pin_current_thread, CpuError};
use uffd_core::handler::{Handler, CHECK_OFFSET, FILL, GATE_TIMEOUT};
use uffd_core::{page_size, Latency, Modes, Region, Userfaultfd};

use super::args::Plan;
use super::cases::Case;
use super::error::{BenchError, LocalError};
use super::results::{Measured, Row};

pub(super) fn run_local(
    case: Case,
    plan: &Plan,
    cpus: Option<(usize, usize)>,
) -> Result<Row, BenchError> {
    eprintln!("bench: {}", case.id());
    let n = plan.local_samples;
    let measured = match case {
        Case::LocalRoundTrip => local_round_trips(n, cpus),
        _ => first_touches(n, cpus.map(|(faulting, _)| faulting)),
    }
    .map_err(|source| BenchError::Local {
        case: case.id(),
        source,
    })?;
    Ok(Row::local(case, &measured))
}

/// `(faulting CPU, handler CPU)`: the first two allowed CPUs, or None with only one.
pub(super) fn local_cpus() -> Result<Option<(usize, usize)>, CpuError> {
    Ok(match allowed_cpus()?.as_slice() {
        [first, second, ..] => Some((*first, *second)),
        _ => None,
    })
}

/// `n` plain first-touch faults: timed writes to unregistered anonymous pages, on a thread
/// pinned to `cpu` if given.
pub(super) fn first_touches(n: usize, cpu: Option<usize>) -> Result<Measured, LocalError> {
    let page = page_size();
    let region = Region::anonymous(n * page).map_err(|source| LocalError::Map {
        what: "first-touch",
        source,
    })?;
    let region = &region;
    std::thread::scope(|s| {
        s.spawn(move || {
            cpu.map_or(Ok(()), pin_current_thread)?;
            let mut latency = Latency::new();
            let start = Instant::now();
            for i in 0..n {
                latency.record(write_page(region, i * page));
            }
            Ok(Measured {
                latency,
                elapsed: start.elapsed(),
            })
        })
        .join()
        .map_err(|_| LocalError::Panicked("first-touch"))?
    })
}

/// Writes one byte at `offset` of `region` and returns how long the write took.
pub(super) fn write_page(region: &Region, offset: usize) -> Duration {
    assert!(offset < region.len(), "offset {offset} outside the region");
    // SAFETY: in bounds (asserted); the mapping is writable and only accessed through raw
    // pointers. In a registered range the write blocks until the handler resolves the fault.
    let ptr = unsafe { region.as_ptr().add(offset) };
    let start = Instant::now();
    // SAFETY: as above.
    unsafe { ptr.write_volatile(0x5A) };
    start.elapsed()
}

/// `n` in-process 4 KiB COPY round trips: a registered region, the minimal handler
/// ([`uffd_core::handler`]) on `cpus.1` and the faulting thread on `cpus.0` (unpinned when
/// None).
pub(super) fn local_round_trips(
    n: usize,
    cpus: Option<(usize, usize)>,
) -> Result<Measured, LocalError> {
    let page = page_size();
    let uffd = Arc::new(Userfaultfd::open(0).map_err(LocalError::Open)?);
    // Declared before the handler: it is stopped (dropped) before the region is unmapped, and
    // no thread is blocked on it when the descriptor closes.
    let region = Region::anonymous(n * page).map_err(|source| LocalError::Map {
        what: "round-trip",
        source,
    })?;
    uffd.register(region.addr(), region.len() as u64, Modes::MISSING)
        .map_err(LocalError::Register)?;
    let handler = Handler::spawn(
        Arc::clone(&uffd),
        page as u64,
        cpus.map(|(_, h)| h),
        Handler::copy_fill(page as u64),
    )?;
    let (handler, region) = (&handler, &region);
    std::thread::scope(|s| {
        s.spawn(move || -> Result<Measured, LocalError> {
            cpus.map_or(Ok(()), |(faulting, _)| pin_current_thread(faulting))?;
            fault_gated(region, handler, n)
        })
        .join()
        .map_err(|_| LocalError::Panicked("faulting"))?
    })
}

/// The faulting side: touches the `n` pages in order, each once the handler is back in its
/// wait (untimed), and checks that each page holds the COPY source afterwards.
pub(super) fn fault_gated(
    region: &Region,
    handler: &Handler,
    n: usize,
) -> Result<Measured, LocalError> {
    let page = page_size();
    let mut latency = Latency::new();
    let start = Instant::now();
    for i in 0..n {
        handler.wait_until_waiting(i as u64, GATE_TIMEOUT)?;
        let took = write_page(region, i * page);
        handler.check()?;
        let offset = i * page + CHECK_OFFSET;
        // SAFETY: in bounds (n pages were mapped); the page is present now (the write above
        // returned), so the read does not fault.
        let got = unsafe { region.as_ptr().add(offset).read_volatile() };
        if got != FILL {
            return Err(LocalError::WrongContent { page: i, got });
        }
        latency.record(took);
    }
    Ok(Measured {
        latency,
        elapsed: start.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_paths_measure() -> Result<(), LocalError> {
        if let Err(err) = Userfaultfd::open(0) {
            uffd_testkit::skip(&err.to_string());
            return Ok(());
        }
        let cpus = local_cpus()?;
        assert_eq!(local_round_trips(20, cpus)?.latency.count(), 20);
        assert_eq!(first_touches(20, None)?.latency.count(), 20);
        Ok(())
    }
}
