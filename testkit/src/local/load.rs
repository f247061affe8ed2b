//! How busy the machine was with other work while something was measured.

use anyhow::{Context, Result};

/// A snapshot of CPU time, to tell afterwards how busy the machine was with *other* work while
/// something was measured (other processes on a 2-vCPU VM change fault costs several-fold).
#[derive(Debug, Clone, Copy)]
pub struct CpuLoad {
    /// Busy ticks of all CPUs (`user + nice + system + irq + softirq`, from `/proc/stat`).
    busy: u64,
    /// All ticks of all CPUs, idle and steal included.
    total: u64,
    /// Steal ticks: time the hypervisor ran something else.
    steal: u64,
    /// This process's `utime + stime` (`/proc/self/stat`).
    own: u64,
}

/// How busy the machine was between two [`CpuLoad`] snapshots, as fractions of all CPUs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadShare {
    /// CPU time of other processes (and the kernel on their behalf), 0.0..=1.0 of all CPUs.
    pub others: f64,
    /// CPU time the hypervisor stole.
    pub steal: f64,
}

impl CpuLoad {
    /// Takes a snapshot.
    pub fn now() -> Result<CpuLoad> {
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let line = stat
            .lines()
            .find(|l| l.starts_with("cpu "))
            .context("/proc/stat has no `cpu` line")?;
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        let at = |i: usize| f.get(i).copied().unwrap_or(0);
        // user nice system idle iowait irq softirq steal (guest time is inside user already)
        let busy = at(0) + at(1) + at(2) + at(5) + at(6);
        let total = (0..8).map(at).sum();
        let own_stat =
            std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let after = own_stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .context("malformed /proc/self/stat")?;
        let own_fields: Vec<&str> = after.split_whitespace().collect();
        let tick = |i: usize| {
            own_fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok(CpuLoad {
            busy,
            total,
            steal: at(7),
            own: tick(11) + tick(12),
        })
    }

    /// What other processes and the hypervisor used since `self`.
    pub fn since(&self) -> Result<LoadShare> {
        let now = CpuLoad::now()?;
        let total = now.total.saturating_sub(self.total).max(1) as f64;
        let others = now
            .busy
            .saturating_sub(self.busy)
            .saturating_sub(now.own.saturating_sub(self.own));
        Ok(LoadShare {
            others: others as f64 / total,
            steal: now.steal.saturating_sub(self.steal) as f64 / total,
        })
    }
}
