//! `uffd-testkit`: scaffolding for the workspace's tests and benchmarks, kept out of the
//! libraries.
//!
//! - [`skip`]: many tests need a privilege or kernel feature (userfaultfd, huge pages, network
//!   namespaces, `SCHED_FIFO`). On a developer's machine that lacks one, such a test skips with
//!   a printed reason. Under CI (`CI=true`) the machine is set up to provide everything the
//!   suite needs, so a skip there would silently hide a regression: [`skip`] fails the test
//!   instead.
//!
//! With the feature `uffd` (what is built on `uffd-core`):
//! - `have_uffd`, `pool_has`: the two things most tests need, userfaultfd and free huge pages,
//!   each skipping the test without it;
//! - `local`: in-process fault paths, a minimal handler thread, CPU pinning, fresh registered
//!   regions, fault round trips and the first-touch baseline, which the benchmarks measure.

#[cfg(feature = "uffd")]
pub mod local;
#[cfg(feature = "uffd")]
mod needs;

#[cfg(feature = "uffd")]
pub use needs::{have_uffd, pool_has};

/// Skips the calling test with a printed reason, or fails it under CI (`CI=true`), where
/// everything the suite needs is available and a skip would hide a regression.
pub fn skip(reason: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("test needs something this machine lacks (a skip fails under CI): {reason}");
    }
    eprintln!("SKIPPED: {reason}");
}
