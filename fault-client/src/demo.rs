//! The one-command demo: a page-server child on loopback with a synthetic image, the random
//! workload on 4 threads with the background stream, verified.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use uffd_core::wire::EndpointParseError;
use uffd_core::Endpoint;

use crate::client::{ClientError, RunConfig};
use crate::report::Report;
use crate::workload::Workload;

/// Why a page-server child could not be started ([`ServerChild::start`]).
#[derive(Debug, thiserror::Error)]
pub enum ServerChildError {
    /// The path of the running program is unknown.
    #[error("cannot tell where this program is: {0}")]
    CurrentExe(std::io::Error),
    /// No `page-server` binary next to this one or on PATH.
    #[error(
        "cannot find the `{name}` binary: build the workspace first (cargo build --release \
         --workspace)"
    )]
    FindBinary {
        /// The binary looked for.
        name: String,
    },
    /// The process could not be started.
    #[error("cannot start {binary}: {source}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Its first line could not be read.
    #[error("reading the first line of page-server: {0}")]
    ReadAddress(std::io::Error),
    /// Its first line is not `listening on ADDR`.
    #[error("page-server did not start (it printed {printed:?})")]
    NotListening {
        /// What it printed instead.
        printed: String,
    },
    /// The address it printed is not an endpoint.
    #[error("page-server printed an address that is not one: {0}")]
    Address(EndpointParseError),
}

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The page-server child could not be started.
    #[error("starting the demo's page-server: {0}")]
    StartServer(ServerChildError),
    /// The run failed.
    #[error(transparent)]
    Run(ClientError),
}

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
    pub fn start(args: &[&str]) -> Result<ServerChild, ServerChildError> {
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
            .map_err(|source| ServerChildError::Spawn { binary, source })?;
        let mut line = String::new();
        if let Some(stdout) = child.stdout.take() {
            if let Err(err) = BufReader::new(stdout).read_line(&mut line) {
                stop(&mut child);
                return Err(ServerChildError::ReadAddress(err));
            }
        }
        let Some(addr) = line.trim().strip_prefix("listening on ") else {
            stop(&mut child);
            return Err(ServerChildError::NotListening { printed: line });
        };
        match addr.parse() {
            Ok(endpoint) => Ok(ServerChild { child, endpoint }),
            Err(err) => {
                stop(&mut child);
                Err(ServerChildError::Address(err))
            }
        }
    }
}

/// Kills and reaps a child that did not start as expected.
fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for ServerChild {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(0));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

/// Finds a binary of this workspace next to the running one (`target/<profile>/`), else on PATH.
pub fn sibling_binary(name: &str) -> Result<PathBuf, ServerChildError> {
    let me = std::env::current_exe().map_err(ServerChildError::CurrentExe)?;
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
        .ok_or_else(|| ServerChildError::FindBinary {
            name: name.to_string(),
        })
}

/// Runs the demo and returns its report.
pub fn demo(size: &str, threads: u64, touch: f64) -> Result<Report, DemoError> {
    let server = ServerChild::start(&[
        "--synthetic",
        size,
        "--seed",
        "42",
        "--zero-fraction",
        "0.1",
    ])
    .map_err(DemoError::StartServer)?;
    eprintln!(
        "page-server started on {} with a synthetic {size} image",
        server.endpoint
    );
    let mut config = RunConfig::new(server.endpoint.clone());
    config.workload = Workload::Random;
    config.threads = threads;
    config.touch = touch;
    config.client.background = true;
    config.verify = true;
    let report = crate::progress::run(&config).map_err(DemoError::Run)?;
    drop(server);
    Ok(report)
}
