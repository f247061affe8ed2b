//! The harness of the uffd-lab fuzz targets, shared with the proptest suite
//! `tests/fuzz_session.rs` (which includes these files with `#[path]`, so they depend only on
//! crates the root package has: `uffd-core`, `page-server`, `bytes`, `libc`, `nix`).
//!
//! - [`frames`]: decoder limits chosen by an input's first bytes; valid frames of every kind.
//! - [`oracle`]: the checks of the `decode` and `stream` targets.
//! - [`session`]: client scripts played against a live page-server, and their checks.

pub mod frames;
pub mod oracle;
pub mod session;
