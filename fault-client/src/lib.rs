//! `fault-client`: maps a region, registers it with userfaultfd, and fills it on demand from
//! a page-server, the way postcopy live migration fills a guest's memory.
//!
//! A fault becomes one request on the urgent connection; pages from the background stream are
//! placed as they arrive; the kernel's EEXIST makes sure no page is placed twice. See
//! `DESIGN.md` for the whole path of a fault.
//!
//! # Layout
//! - [`connect`]: the handshake of the urgent and background connections.
//! - [`pager`]: the fault handler thread and the receiver threads, placing pages directly or
//!   through the `hugepage` crate's assembler (huge pages placed whole).
//! - [`events`]: what the application does to the region (discard, unmap, move, fork).
//! - [`link`]: the connections, their receivers, and recovery (reconnect and resume).
//! - [`liveness`]: stall detection (a server that stops answering while the client waits).
//! - [`workload`]: the application threads (seq, random, zipf) and their fault latency.
//! - [`client`]: one run from connect to report. [`report`]: table and JSON.
//! - [`progress`]: the live progress line of long runs.
//! - [`trace`]: `--trace`, a CSV line per fault, per urgent request and answer, and per arriving
//!   page; [`plot`] draws it, [`stages`] splits each urgent fault into its stages.
//! - [`demo`]: the one-command demo (a page-server child process).
//! - [`bench`](mod@bench): `fault-client bench`, the standard comparison set as one table.
//! - [`cli`]: the command line; [`cli::run`] is what the binary calls.

pub mod bench;
pub mod cli;
pub mod client;
pub mod connect;
pub mod demo;
pub mod events;
pub mod link;
pub mod liveness;
pub mod pager;
pub mod plot;
pub mod progress;
pub mod report;
pub mod stages;
pub mod trace;
pub mod workload;

pub use cli::{run, Cli};
pub use client::{ClientError, RunConfig};
pub use report::Report;
pub use workload::Workload;

/// `fault-client probe` as a table.
pub fn probe_table(p: &uffd_core::Probe) -> String {
    use std::fmt::Write;
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
