//! Shared helpers for the integration tests and benchmarks.
//!
//! # Layout
//! - [`local`]: in-process fault paths: a minimal userfaultfd handler thread, CPU pinning,
//!   fresh registered regions ([`local::Fixture`]), fault round trips
//!   ([`local::copy_fault_round_trips`], [`local::RoundTrip`]) and the plain first-touch
//!   baseline ([`local::first_touch`]). Used by `benches/placement.rs`, and by benchmarks that
//!   compare a remote fault with the in-process round trip.

pub mod local;
