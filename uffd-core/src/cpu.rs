//! CPU affinity, for measurements: the CPUs the calling thread may run on, and pinning it.
//! A fault round trip costs a local wake-up or a cross-CPU one depending on where the faulting
//! thread and the handler run, so the benchmarks pin both.

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
}
