//! Table and JSON output: a run's [`Report`] and the kernel [`Probe`].

use std::fmt::Write;

use uffd_core::Probe;

use crate::report::Report;

impl Report {
    /// The report as one line of JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The report as a readable table.
    pub fn to_table(&self) -> String {
        let l = &self.latency_us;
        let verified = match self.verified {
            Some(true) => "yes, every page matches",
            Some(false) => "NO: pages differ from the server's",
            None => "not checked (--verify)",
        };
        format!(
            "image            {} bytes ({} pages, backing {}, {}/{} huge pages mapped huge)\n\
             workload         {} x {} threads, {} touches ({} found the page present), background {}\n\
             faults           {} ({} requests)\n\
             pages            {} urgent, {} background, {} zero, {} duplicate\n\
             received         {} bytes in {:.3} s ({:.1} MiB/s), {} reconnects\n\
             fault latency    p50 {:.1} us  p90 {:.1} us  p99 {:.1} us  max {:.1} us  ({} samples)\n\
             verified         {}\n",
            self.image_bytes,
            self.pages,
            self.backing,
            self.huge_pages_mapped,
            self.huge_pages_total,
            self.workload,
            self.threads,
            self.touches,
            self.touches_present,
            if self.background { "on" } else { "off" },
            self.faults,
            self.requests,
            self.pages_urgent,
            self.pages_background,
            self.pages_zero,
            self.pages_duplicate,
            self.bytes_received,
            self.elapsed_s,
            self.throughput_mib_s,
            self.reconnects,
            l.p50,
            l.p90,
            l.p99,
            l.max,
            l.samples,
            verified,
        )
    }
}

/// `fault-client probe` as a table.
pub fn probe_table(p: &Probe) -> String {
    let mut out = String::new();
    let yes = |b: bool| if b { "yes" } else { "no" };
    let _ = writeln!(out, "kernel                    {}", p.kernel);
    let _ = writeln!(out, "page size                 {}", p.page_size);
    let _ = writeln!(out, "effective uid             {}", p.euid);
    let _ = writeln!(
        out,
        "/dev/userfaultfd          {}",
        if p.device_exists { "present" } else { "absent" }
    );
    let _ = writeln!(
        out,
        "vm.unprivileged_userfaultfd {}",
        p.unprivileged_userfaultfd
            .map_or("absent".into(), |v| v.to_string())
    );
    let _ = writeln!(out, "CAP_SYS_PTRACE            {}", yes(p.cap_sys_ptrace));
    match &p.open {
        Ok(how) => {
            let _ = writeln!(out, "userfaultfd               available via {how}");
        }
        Err(why) => {
            let _ = writeln!(out, "userfaultfd               NOT available: {why}");
        }
    }
    let _ = writeln!(out, "features ({:#x})", p.features);
    for name in &p.feature_names {
        let _ = writeln!(out, "  {name}");
    }
    let _ = writeln!(
        out,
        "ioctls ({:#x})            {}",
        p.ioctls,
        p.ioctl_names.join(" ")
    );
    for pool in &p.huge_pools {
        let _ = writeln!(
            out,
            "hugepages {:>5} KiB       total {} free {} reserved {}",
            pool.size / 1024,
            pool.total,
            pool.free,
            pool.reserved
        );
    }
    let _ = writeln!(
        out,
        "THP                       enabled [{}] defrag [{}]",
        p.thp_enabled.as_deref().unwrap_or("?"),
        p.thp_defrag.as_deref().unwrap_or("?")
    );
    out
}
