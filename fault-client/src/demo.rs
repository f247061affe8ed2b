//! The one-command demo: a page-server child on loopback with a synthetic image, the random
//! workload on 4 threads with the background stream, verified.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context};
use uffd_core::Endpoint;

use crate::client::RunConfig;
use crate::report::Report;
use crate::workload::Workload;

/// A page-server child process, killed and reaped on drop.
#[derive(Debug)]
pub struct ServerChild {
    child: Child,
    /// Where it listens.
    pub endpoint: Endpoint,
}

impl ServerChild {
    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts `page-server` with `args` (plus `--listen 127.0.0.1:0`) and waits for its
    /// `listening on ADDR` line.
    pub fn start(args: &[&str]) -> anyhow::Result<ServerChild> {
        let binary = sibling_binary("page-server")?;
        let mut command = Command::new(&binary);
        command
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            );
        // SAFETY: the closure only calls prctl, which is async-signal-safe, between fork and
        // exec.
        unsafe {
            command.pre_exec(|| {
                // If this process dies, the server goes with it: no process is left behind.
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                    .map_err(std::io::Error::from)
            });
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let stdout = child.stdout.take().context("no stdout from page-server")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let Some(addr) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("page-server did not start (it printed {line:?})");
        };
        let endpoint = addr.parse().map_err(anyhow::Error::msg)?;
        Ok(ServerChild { child, endpoint })
    }
}

impl Drop for ServerChild {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(0));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

/// Finds a binary of this workspace next to the running one (`target/<profile>/`), else on PATH.
pub fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let mut dirs: Vec<PathBuf> = me.parent().map(|d| d.to_path_buf()).into_iter().collect();
    // Test binaries live in target/<profile>/deps.
    if let Some(parent) = dirs
        .first()
        .and_then(|d| d.parent())
        .map(|d| d.to_path_buf())
    {
        dirs.push(parent);
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("cannot find the `{name}` binary: build the workspace first (cargo build --release --workspace)"))
}

/// Runs the demo and returns its report.
pub fn demo(size: &str, threads: u64, touch: f64) -> anyhow::Result<Report> {
    let server = ServerChild::start(&[
        "--synthetic",
        size,
        "--seed",
        "42",
        "--zero-fraction",
        "0.1",
    ])?;
    eprintln!(
        "page-server started on {} with a synthetic {size} image",
        server.endpoint
    );
    let mut config = RunConfig::new(server.endpoint.clone());
    config.workload = Workload::Random;
    config.threads = threads;
    config.touch = touch;
    config.background = true;
    config.verify = true;
    let report = crate::progress::run(&config)?;
    drop(server);
    Ok(report)
}
