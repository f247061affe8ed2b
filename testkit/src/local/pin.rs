//! Where the threads of a measurement run: pinning the calling thread, and the two placements
//! of a faulting thread and its handler.

use anyhow::{bail, Result};
use uffd_core::cpu::set_affinity;
pub use uffd_core::cpu::{allowed_cpus, current_cpu, pin_current_thread};

/// Pins the calling thread to one CPU until dropped, then restores its previous mask.
///
/// Must be dropped on the thread that created it (it is `!Send`, like the pin it undoes).
#[derive(Debug)]
pub struct PinGuard {
    previous: Vec<usize>,
    /// Affinity is per thread: restoring it from another thread would pin the wrong one.
    _not_send: std::marker::PhantomData<*const ()>,
}

impl PinGuard {
    /// Pins the calling thread to `cpu`.
    pub fn pin(cpu: usize) -> Result<PinGuard> {
        let previous = allowed_cpus()?;
        pin_current_thread(cpu)?;
        Ok(PinGuard {
            previous,
            _not_send: std::marker::PhantomData,
        })
    }
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        if let Err(err) = set_affinity(&self.previous) {
            eprintln!("warning: could not restore the CPU affinity: {err:#}");
        }
    }
}

/// Where the faulting thread and the handler thread run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pinning {
    /// Both on the first allowed CPU: the handler runs when the faulting thread sleeps, and the
    /// wake-up is a local one (no IPI).
    SameCpu,
    /// Faulting thread on the first allowed CPU, handler on the second: each direction is a
    /// cross-CPU wake-up. The default, because a real pager's handler is not on the faulting
    /// thread's CPU.
    #[default]
    DifferentCpus,
    /// Left to the scheduler.
    Unpinned,
}

impl Pinning {
    /// `(faulting CPU, handler CPU)`, chosen from the calling thread's allowed CPUs.
    pub fn cpus(self) -> Result<(Option<usize>, Option<usize>)> {
        if self == Pinning::Unpinned {
            return Ok((None, None));
        }
        let cpus = allowed_cpus()?;
        match (self, cpus.as_slice()) {
            (Pinning::SameCpu, [first, ..]) => Ok((Some(*first), Some(*first))),
            (Pinning::DifferentCpus, [first, second, ..]) => Ok((Some(*first), Some(*second))),
            _ => bail!("{self:?} needs more CPUs than this thread may use ({cpus:?})"),
        }
    }

    /// A short name for tables: `same_cpu`, `diff_cpu`, `unpinned`.
    pub fn name(self) -> &'static str {
        match self {
            Pinning::SameCpu => "same_cpu",
            Pinning::DifferentCpus => "diff_cpu",
            Pinning::Unpinned => "unpinned",
        }
    }
}

#[cfg(test)]
mod tests {
    use anyhow::Context;

    use super::*;

    #[test]
    fn pin_guard_restores_the_mask() -> Result<()> {
        let before = allowed_cpus()?;
        let first = *before.first().context("no CPU allowed")?;
        {
            let _pin = PinGuard::pin(first)?;
            assert_eq!(allowed_cpus()?, vec![first]);
            assert_eq!(current_cpu(), Some(first));
        }
        assert_eq!(allowed_cpus()?, before);
        Ok(())
    }
}
