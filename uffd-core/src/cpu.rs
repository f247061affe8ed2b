//! CPU affinity and scheduling policy: the CPUs the calling thread may run on, pinning it,
//! and giving it a real-time policy.
//!
//! A fault round trip costs a local wake-up or a cross-CPU one depending on where the faulting
//! thread and the handler run, so the benchmarks pin both. And on a machine with few CPUs, a
//! woken fault handler may wait for a busy thread's time slice (milliseconds under the fair
//! scheduler) before it runs: [`set_realtime`] makes the urgent path's threads preempt
//! everything that is not real-time the moment they wake.

use std::io;

/// Errors of the affinity calls.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    /// A CPU number the kernel's `cpu_set_t` cannot hold.
    #[error("CPU {cpu} is beyond CPU_SETSIZE ({max})")]
    OutOfRange {
        /// The CPU asked for.
        cpu: usize,
        /// `CPU_SETSIZE`.
        max: usize,
    },
    /// `sched_getaffinity` failed.
    #[error("sched_getaffinity: {0}")]
    Get(#[source] io::Error),
    /// `sched_setaffinity` failed.
    #[error("sched_setaffinity to CPUs {cpus:?}: {source}")]
    Set {
        /// The mask asked for.
        cpus: Vec<usize>,
        /// Why.
        source: io::Error,
    },
    /// A real-time priority outside what the kernel allows for `SCHED_FIFO`.
    #[error("real-time priority {priority} is outside {min}..={max} (SCHED_FIFO)")]
    BadPriority {
        /// The priority asked for.
        priority: i32,
        /// `sched_get_priority_min(SCHED_FIFO)`.
        min: i32,
        /// `sched_get_priority_max(SCHED_FIFO)`.
        max: i32,
    },
    /// `sched_setscheduler` failed (EPERM without CAP_SYS_NICE or an RLIMIT_RTPRIO).
    #[error("sched_setscheduler(SCHED_FIFO, {priority}): {source}")]
    Scheduler {
        /// The priority asked for.
        priority: i32,
        /// Why.
        source: io::Error,
    },
}

fn set_size() -> usize {
    usize::try_from(libc::CPU_SETSIZE).unwrap_or(1024)
}

/// The CPUs the calling thread may run on (its affinity mask), in increasing order.
pub fn allowed_cpus() -> Result<Vec<usize>, CpuError> {
    // SAFETY: an all-zero cpu_set_t is a valid, empty bit array.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is the calling thread; `set` is a writable cpu_set_t of the size passed.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(CpuError::Get(io::Error::last_os_error()));
    }
    // SAFETY: CPU_ISSET only reads the bit array; `cpu` < CPU_SETSIZE keeps it in bounds.
    Ok((0..set_size())
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// Sets the calling thread's affinity mask to `cpus` (threads it spawns later inherit it).
pub fn set_affinity(cpus: &[usize]) -> Result<(), CpuError> {
    // SAFETY: an all-zero cpu_set_t is a valid, empty bit array.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let max = set_size();
    for &cpu in cpus {
        if cpu >= max {
            return Err(CpuError::OutOfRange { cpu, max });
        }
        // SAFETY: CPU_SET writes one bit of `set`; `cpu` < CPU_SETSIZE keeps it in bounds.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(CpuError::Set {
            cpus: cpus.to_vec(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Pins the calling thread to `cpu` for good.
pub fn pin_current_thread(cpu: usize) -> Result<(), CpuError> {
    set_affinity(&[cpu])
}

/// The CPU the calling thread is running on now (it may move right after).
pub fn current_cpu() -> Option<usize> {
    // SAFETY: no arguments, no memory involved.
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).ok()
}

/// Keeps the calling thread on the CPU it is running on until dropped, then gives it back its
/// affinity mask. For a few system calls that must run on one CPU, e.g. freeing a page and
/// allocating one again from the same per-CPU free list. Best effort: if the mask cannot be
/// read or set, nothing is pinned (and nothing is restored).
#[derive(Debug)]
pub struct StayOnCpu {
    restore: Option<Vec<usize>>,
}

impl StayOnCpu {
    /// Pins the calling thread to its current CPU.
    pub fn here() -> StayOnCpu {
        let restore = (|| {
            let mask = allowed_cpus().ok()?;
            let cpu = current_cpu()?;
            if mask.len() > 1 && mask.contains(&cpu) {
                pin_current_thread(cpu).ok()?;
                Some(mask)
            } else {
                None
            }
        })();
        StayOnCpu { restore }
    }

    /// The CPU the thread is pinned to, if it was pinned.
    pub fn pinned(&self) -> Option<usize> {
        self.restore.as_ref().and_then(|_| current_cpu())
    }
}

impl Drop for StayOnCpu {
    fn drop(&mut self) {
        if let Some(mask) = self.restore.take() {
            let _ = set_affinity(&mask);
        }
    }
}

/// Moves the calling thread to `SCHED_FIFO` at `priority` (1..=99 on Linux): it then runs
/// as soon as it is runnable, ahead of every `SCHED_OTHER` thread, and keeps the CPU until it
/// blocks or a higher real-time priority wants it. Meant for threads that sleep almost always
/// and must answer fast when woken (a fault handler, an urgent receiver); a real-time thread
/// that spins starves the rest (the kernel's `sched_rt_runtime_us` caps it at 95 %).
pub fn set_realtime(priority: i32) -> Result<(), CpuError> {
    // SAFETY: plain queries of constants, no memory involved.
    let (min, max) = unsafe {
        (
            libc::sched_get_priority_min(libc::SCHED_FIFO),
            libc::sched_get_priority_max(libc::SCHED_FIFO),
        )
    };
    if priority < min || priority > max {
        return Err(CpuError::BadPriority { priority, min, max });
    }
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param that outlives the call.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if rc != 0 {
        return Err(CpuError::Scheduler {
            priority,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// For a thread that should be real-time when asked (`priority` Some) and go on either way:
/// [`set_realtime`], with a warning if it fails (callers check [`check_realtime`] at start-up,
/// so a failure here is unexpected).
pub fn set_realtime_or_warn(priority: Option<i32>) {
    if let Some(priority) = priority {
        if let Err(err) = set_realtime(priority) {
            tracing::warn!("thread stays SCHED_OTHER: {err}");
        }
    }
}

/// Checks that threads of this process may be made real-time at `priority`, by trying it
/// on a short-lived thread (the caller's policy is left alone): a clear error at start-up
/// instead of one per thread later.
pub fn check_realtime(priority: i32) -> Result<(), CpuError> {
    std::thread::scope(|s| {
        s.spawn(|| set_realtime(priority))
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// The calling thread's scheduling policy and priority: `(libc::SCHED_OTHER, 0)` for a
/// normal thread, `(libc::SCHED_FIFO, p)` after [`set_realtime`]`(p)`.
pub fn scheduler() -> io::Result<(i32, i32)> {
    // SAFETY: pid 0 is the calling thread; no memory involved.
    let policy = unsafe { libc::sched_getscheduler(0) };
    if policy < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a writable sched_param.
    if unsafe { libc::sched_getparam(0, &mut param) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((policy, param.sched_priority))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_and_restore() {
        let before = allowed_cpus().expect("affinity");
        assert!(!before.is_empty());
        pin_current_thread(before[0]).expect("pin");
        assert_eq!(allowed_cpus().expect("affinity"), vec![before[0]]);
        set_affinity(&before).expect("restore");
        assert_eq!(allowed_cpus().expect("affinity"), before);
        assert!(matches!(
            pin_current_thread(1 << 20),
            Err(CpuError::OutOfRange { .. })
        ));
    }

    #[test]
    fn stay_on_cpu_pins_until_dropped() {
        std::thread::spawn(|| {
            let before = allowed_cpus().expect("affinity");
            {
                let stay = StayOnCpu::here();
                if before.len() > 1 {
                    let cpu = stay.pinned().expect("pinned");
                    assert_eq!(allowed_cpus().expect("affinity"), vec![cpu]);
                    assert_eq!(current_cpu(), Some(cpu));
                } else {
                    assert_eq!(stay.pinned(), None);
                }
            }
            assert_eq!(allowed_cpus().expect("affinity"), before);
        })
        .join()
        .expect("thread");
    }

    #[test]
    fn realtime_priority_is_checked_and_applies_to_this_thread_only() {
        assert!(matches!(
            set_realtime(0),
            Err(CpuError::BadPriority { min: 1, .. })
        ));
        assert!(matches!(
            set_realtime(100),
            Err(CpuError::BadPriority { max: 99, .. })
        ));
        // In a thread of its own, so the test harness's threads keep their policy.
        std::thread::spawn(|| {
            assert_eq!(scheduler().expect("policy").0, libc::SCHED_OTHER);
            match set_realtime(5) {
                Ok(()) => assert_eq!(scheduler().expect("policy"), (libc::SCHED_FIFO, 5)),
                Err(CpuError::Scheduler { source, .. })
                    if source.raw_os_error() == Some(libc::EPERM) =>
                {
                    uffd_testkit::skip("SCHED_FIFO needs CAP_SYS_NICE");
                }
                Err(err) => panic!("{err}"),
            }
        })
        .join()
        .expect("thread");
        assert_eq!(scheduler().expect("policy").0, libc::SCHED_OTHER);
    }
}
