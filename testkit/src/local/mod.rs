//! In-process fault paths: a minimal userfaultfd handler thread, CPU pinning, fresh registered
//! regions, and the measurements built from them (fault round trips, plain first-touch faults).
//! The benchmarks (`benches/placement.rs`, `benches/remote.rs`) measure with it.
//!
//! # What a fault round trip is
//! The time one thread spends on one access to a page that is not there yet, from just before
//! the access to just after it returns. In between, the kernel queues a fault message and puts
//! the thread to sleep; the [`Handler`] thread returns from `poll(2)`, reads the message and
//! resolves the fault with one ioctl (COPY, ZEROPAGE, CONTINUE, MOVE or WRITEPROTECT), which also
//! wakes the faulting thread. Mapping, registration and preparing the content are done before
//! the clock starts, in a fresh [`Fixture`] per batch of faults.
//!
//! Before each access the faulting thread waits, untimed, until the handler has resolved every
//! earlier fault and gone back to its wait: each sample is one isolated fault, not a pipeline in
//! which the next message is already queued when the handler looks for it
//! ([`RoundTrip::with_gate`] turns this off, [`RoundTrip::with_gap`] adds an idle gap).
//!
//! Where the two threads run matters more than which ioctl resolves the fault: on a VM, waking a
//! thread that sleeps on another vCPU is an inter-processor interrupt, and if that vCPU has
//! halted (nothing else to run), the host must also wake it; so [`Pinning`] puts the threads
//! on the same CPU or on two different CPUs. For the same reason other processes change the
//! results several-fold on a small VM: [`CpuLoad`] tells how busy the machine was meanwhile.
//!
//! # Entry points
//! - [`copy_fault_round_trips`]: N in-process 4K COPY round trips, handler on another CPU; the
//!   in-process term of "remote fault vs (local round trip + TCP request/response)".
//! - [`RoundTrip`]: a handler kept across calls, for repeated measurement (criterion's
//!   `iter_custom`); [`fault_round_trips`] is its one-shot form for any [`FaultPath`].
//! - [`first_touch`]: plain kernel faults on unregistered anonymous pages, the baseline.
//! - [`median`], [`summary`]: percentiles of the returned samples; [`CpuLoad`]: background load.
//! - [`Fixture`], [`Handler`], [`PinGuard`], [`reserve_hugepages_2m`]: the
//!   pieces, for benchmarks that time the placement ioctls alone.
//!
//! # Modules
//! Each a piece of the above, used one way: `pin` (where threads run), `hugepages` (the 2M
//! pool), `fault_path` (the kinds of fault), `fixture` (a prepared registered
//! region), `handler` (the handler thread), `round_trip` (the measurement), `first_touch` (the
//! baseline), `load` (how busy the machine was), `samples` (percentiles).

mod fault_path;
mod first_touch;
mod fixture;
mod handler;
mod hugepages;
mod load;
mod pin;
mod round_trip;
mod samples;

pub use fault_path::FaultPath;
pub use first_touch::first_touch;
pub use fixture::Fixture;
pub use handler::Handler;
pub use hugepages::{reserve_hugepages_2m, HugepageReservation};
pub use load::{CpuLoad, LoadShare};
pub use pin::{allowed_cpus, current_cpu, pin_current_thread, PinGuard, Pinning};
pub use round_trip::{copy_fault_round_trips, fault_round_trips, RoundTrip};
pub use samples::{median, summary};

/// The byte every prepared page holds at [`VERIFY_OFFSET`] (COPY sources, CONTINUE page cache,
/// MOVE sources, write-protected pages): the minimal handler's fill byte. Non-zero, so a
/// kernel zero-fill is told apart.
pub use uffd_core::handler::FILL;

/// Where content is checked after a fault; the access itself is at offset 0.
pub const VERIFY_OFFSET: usize = uffd_core::handler::CHECK_OFFSET;

/// The byte a write access stores at offset 0.
const TOUCH: u8 = 0x5A;
