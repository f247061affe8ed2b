//! How costs grow with the work: image size and concurrent sessions, each next to its
//! baseline in the same run.
//!
//! **Image size.** For each size, `rounds` pairs, alternating which goes first:
//! - the machine's first touch of that much new memory: a fresh anonymous mapping, one write
//!   per 4 KiB page, timed in this process (the cost the kernel charges to allocate and
//!   zero the memory, which filling a region of the same size cannot avoid either);
//! - a fill: `page-server --synthetic SIZE` started (time until it prints its address) and
//!   `fault-client run --workload none` against it (the background stream alone fills the
//!   region); the client's `elapsed_s` and its CPU time, the server's peak RSS.
//!
//! **Sessions.** One `page-server --synthetic IMAGE`; for each N, `rounds` batches of N
//! `fault-client run --workload none --verify` processes at once: aggregate throughput
//! (N x image / wall time from the first spawn to the last exit, process start-up and exit
//! included), per-session throughput (image / the client's own `elapsed_s`), the server's
//! threads (most seen while the clients ran), its peak RSS so far (VmHWM), and whether every
//! client verified.
//!
//! Binaries are taken from the directory of this bench's executable's parent (build them
//! first: `cargo build --release -p page-server -p fault-client`). `scripts/scale-bench.sh`
//! does both under the benchmark lock.
//!
//! Run: `cargo bench --bench scale -- [--sizes 1,2,4,8] [--rounds 3] [--sessions 1,8,32,64]
//! [--session-image 128MiB]` (sizes in GiB; `--sizes ''` or `--sessions ''` skips a part).

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use uffd_core::Region;

const GIB: u64 = 1 << 30;
const PAGE: usize = 4096;

struct Args {
    sizes: Vec<u64>,
    rounds: usize,
    sessions: Vec<usize>,
    session_image: String,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        sizes: vec![1, 2, 4, 8],
        rounds: 3,
        sessions: vec![1, 8, 32, 64],
        session_image: "128MiB".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().context("a value is missing");
        let list = |s: String| -> Result<Vec<u64>> {
            s.split(',')
                .filter(|p| !p.is_empty())
                .map(|p| p.parse().with_context(|| format!("`{p}` is not a number")))
                .collect()
        };
        match arg.as_str() {
            "--sizes" => args.sizes = list(value()?)?,
            "--rounds" => args.rounds = value()?.parse()?,
            "--sessions" => {
                args.sessions = list(value()?)?
                    .into_iter()
                    .map(usize::try_from)
                    .collect::<Result<_, _>>()?
            }
            "--session-image" => args.session_image = value()?,
            // cargo bench passes --bench; anything else is a mistake.
            "--bench" => {}
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(args)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let bin = fault_client::demo::sibling_binary("page-server")?
        .parent()
        .context("binary directory")?
        .to_path_buf();
    println!("# scale bench: {}", machine());
    if !args.sizes.is_empty() {
        sizes(&bin, &args)?;
    }
    if !args.sessions.is_empty() {
        sessions(&bin, &args)?;
    }
    Ok(())
}

/// Kernel, CPUs and memory, for the record.
fn machine() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = meminfo("MemTotal:").unwrap_or(0) >> 30;
    format!("Linux {}, {cpus} CPUs, {mem} GiB", kernel.trim())
}

/// A field of /proc/meminfo in bytes.
fn meminfo(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    kib_field(&text, field)
}

/// A field of /proc/meminfo or /proc/PID/status: a number, in bytes if given in kB.
fn kib_field(text: &str, field: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(field))?;
    let mut words = line.split_whitespace().skip(1);
    let n: u64 = words.next()?.parse().ok()?;
    Some(if words.next() == Some("kB") {
        n << 10
    } else {
        n
    })
}

/// A field of /proc/PID/status.
fn status(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    kib_field(&text, field)
}

/// A page-server child, killed on drop.
struct ServerProc {
    child: Child,
    addr: String,
    ready: Duration,
}

impl ServerProc {
    fn start(bin: &Path, args: &[&str]) -> Result<ServerProc> {
        let started = Instant::now();
        let mut child = Command::new(bin.join("page-server"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn page-server")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        let ready = started.elapsed();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .with_context(|| format!("page-server printed {line:?}"))?
            .to_string();
        Ok(ServerProc { child, addr, ready })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one fault-client run reported, and its CPU time.
struct ClientRun {
    elapsed_s: f64,
    verified: Option<bool>,
    user_s: f64,
    sys_s: f64,
    wall: Duration,
}

fn spawn_client(bin: &Path, addr: &str, verify: bool) -> Result<Child> {
    let mut cmd = Command::new(bin.join("fault-client"));
    cmd.args([
        "run",
        "--server",
        addr,
        "--workload",
        "none",
        "--quiet",
        "--json",
    ]);
    if verify {
        cmd.arg("--verify");
    }
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("spawn fault-client")
}

/// Reads the client's report and reaps it with its resource usage.
fn finish_client(mut child: Child, started: Instant) -> Result<ClientRun> {
    let mut out = String::new();
    child
        .stdout
        .take()
        .context("stdout")?
        .read_to_string(&mut out)?;
    let pid = i32::try_from(child.id())?;
    let mut wstatus = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our child, not reaped yet (std's Child is never waited on here);
    // both out-pointers are valid for the call.
    let reaped = unsafe { libc::wait4(pid, &mut wstatus, 0, &mut usage) };
    let wall = started.elapsed();
    if reaped != pid || !libc::WIFEXITED(wstatus) || libc::WEXITSTATUS(wstatus) != 0 {
        bail!("fault-client failed (status {wstatus:#x}): {out}");
    }
    let report: serde_json::Value = serde_json::from_str(out.trim())
        .with_context(|| format!("fault-client printed {out:?}"))?;
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(ClientRun {
        elapsed_s: report["elapsed_s"].as_f64().context("elapsed_s")?,
        verified: report["verified"].as_bool(),
        user_s: secs(usage.ru_utime),
        sys_s: secs(usage.ru_stime),
        wall,
    })
}

/// The first touch of `bytes` of new memory: one write per page of a fresh mapping.
fn first_touch(bytes: u64) -> Result<Duration> {
    let region = Region::anonymous(usize::try_from(bytes)?)?;
    let started = Instant::now();
    for i in 0..region.len() / PAGE {
        // SAFETY: in bounds of a private anonymous mapping that nothing else uses.
        unsafe { region.as_ptr().add(i * PAGE).write_volatile(1) };
    }
    let took = started.elapsed();
    drop(region);
    Ok(took)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn sizes(bin: &Path, args: &Args) -> Result<()> {
    println!();
    println!(
        "## time per GiB against image size (medians of {} alternating rounds)",
        args.rounds
    );
    println!();
    println!("| image | first touch s/GiB | fill s/GiB | fill / first touch | client user+sys s | server ready s | server peak RSS MiB |");
    println!("|---|---|---|---|---|---|---|");
    for &gib in &args.sizes {
        let bytes = gib * GIB;
        let (mut touch, mut fill, mut ratio, mut cpu, mut ready, mut rss) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for round in 0..args.rounds {
            let mut pair = [0.0f64; 2];
            for step in 0..2 {
                if (step == 0) == (round % 2 == 0) {
                    pair[0] = first_touch(bytes)?.as_secs_f64();
                } else {
                    let size = format!("{gib}GiB");
                    let server = ServerProc::start(bin, &["--synthetic", &size])?;
                    let started = Instant::now();
                    let run = finish_client(spawn_client(bin, &server.addr, false)?, started)?;
                    rss.push(status(server.pid(), "VmHWM:").unwrap_or(0) as f64);
                    ready.push(server.ready.as_secs_f64());
                    cpu.push(run.user_s + run.sys_s);
                    pair[1] = run.elapsed_s;
                }
            }
            eprintln!(
                "{gib} GiB round {round}: first touch {:.2} s, fill {:.2} s",
                pair[0], pair[1]
            );
            touch.push(pair[0]);
            fill.push(pair[1]);
            ratio.push(pair[1] / pair[0]);
        }
        let g = gib as f64;
        println!(
            "| {gib} GiB | {:.3} | {:.3} | {:.2} | {:.1} | {:.3} | {:.0} |",
            median(touch) / g,
            median(fill) / g,
            median(ratio),
            median(cpu),
            median(ready),
            median(rss) / f64::from(1 << 20),
        );
    }
    Ok(())
}

/// One batch of `n` concurrent clients.
struct Batch {
    /// N x image / wall time from the first spawn to the last exit.
    aggregate: f64,
    /// Median of image / the client's own `elapsed_s`.
    per_session: f64,
    /// Most server threads seen while the clients ran.
    threads: u64,
    verified: bool,
}

fn batch(bin: &Path, server: &ServerProc, n: usize, image_mib: f64) -> Result<Batch> {
    let started = Instant::now();
    let children: Vec<Child> = (0..n)
        .map(|_| spawn_client(bin, &server.addr, true))
        .collect::<Result<_>>()?;
    let pid = server.pid();
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut most = 0;
            while !done.load(Ordering::Acquire) {
                most = most.max(status(pid, "Threads:").unwrap_or(0));
                std::thread::sleep(Duration::from_millis(20));
            }
            most
        })
    };
    let runs: Result<Vec<ClientRun>> = children
        .into_iter()
        .map(|c| finish_client(c, started))
        .collect();
    done.store(true, Ordering::Release);
    let threads = sampler.join().unwrap_or(0);
    let runs = runs?;
    let wall = runs.iter().map(|r| r.wall).max().unwrap_or_default();
    Ok(Batch {
        aggregate: image_mib * n as f64 / wall.as_secs_f64(),
        per_session: median(runs.iter().map(|r| image_mib / r.elapsed_s).collect()),
        threads,
        verified: runs.iter().all(|r| r.verified == Some(true)),
    })
}

fn sessions(bin: &Path, args: &Args) -> Result<()> {
    let image = &args.session_image;
    let server = ServerProc::start(bin, &["--synthetic", image, "--max-sessions", "1024"])?;
    let image_mib = uffd_core::units::parse_bytes(image)? as f64 / f64::from(1 << 20);
    println!();
    println!(
        "## throughput against concurrent sessions ({image} synthetic image each, verified; \
         medians of {} rounds)",
        args.rounds
    );
    println!();
    println!("| sessions | aggregate MiB/s | per session MiB/s | aggregate / one session | server threads (most) | server peak RSS MiB | all verified |");
    println!("|---|---|---|---|---|---|---|");
    let mut one = None;
    for &n in &args.sessions {
        let batches: Vec<Batch> = (0..args.rounds)
            .map(|_| batch(bin, &server, n, image_mib))
            .collect::<Result<_>>()?;
        let aggregate = median(batches.iter().map(|b| b.aggregate).collect());
        eprintln!(
            "{n} sessions: aggregate {:?} MiB/s",
            batches
                .iter()
                .map(|b| b.aggregate.round())
                .collect::<Vec<_>>()
        );
        let one_session = *one.get_or_insert(aggregate);
        println!(
            "| {n} | {aggregate:.0} | {:.0} | {:.2} | {} | {:.0} | {} |",
            median(batches.iter().map(|b| b.per_session).collect()),
            aggregate / one_session,
            batches.iter().map(|b| b.threads).max().unwrap_or(0),
            status(server.pid(), "VmHWM:").unwrap_or(0) as f64 / f64::from(1 << 20),
            if batches.iter().all(|b| b.verified) {
                "yes"
            } else {
                "NO"
            },
        );
    }
    Ok(())
}
