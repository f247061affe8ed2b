//! The teaching ladder (`examples/`, `docs/tutorial.md`) as a reader meets it: every example
//! runs to its `ok:` line, and every repository path the tutorial names exists.
//!
//! `cargo test` builds the examples next to this test binary (`target/<profile>/examples/`).
//! Running only this test (`cargo test --test examples`) builds none: then the examples are
//! skipped with a note, and under CI (`CI=true`) that is a failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// The slowest example runs in well under a second; this only guards against a hang.
const TIMEOUT: Duration = Duration::from_secs(60);

/// The example names, from the files in `examples/`.
fn examples() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(Path::new(ROOT).join("examples"))
        .expect("examples/ exists")
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            (path.extension()? == "rs").then(|| path.file_stem()?.to_str().map(String::from))?
        })
        .collect();
    names.sort();
    names
}

/// `target/<profile>/examples/`, from this test binary's place (`target/<profile>/deps/`).
fn examples_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    profile_dir.join("examples")
}

fn tutorial() -> String {
    std::fs::read_to_string(Path::new(ROOT).join("docs/tutorial.md")).expect("docs/tutorial.md")
}

/// Runs one example binary; returns its stdout, or why it failed.
fn run(binary: &Path) -> Result<String, String> {
    let mut child = Command::new(binary)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("RUST_BACKTRACE", "0")
        .spawn()
        .map_err(|e| format!("cannot start: {e}"))?;
    let started = Instant::now();
    while child.try_wait().map_err(|e| e.to_string())?.is_none() {
        if started.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("still running after {TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "{}\nstdout:\n{stdout}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(stdout)
}

#[test]
fn every_example_runs_and_checks_what_it_shows() {
    let names = examples();
    assert!(names.len() >= 12, "the ladder has twelve steps: {names:?}");
    let dir = examples_dir();
    let missing: Vec<&String> = names.iter().filter(|n| !dir.join(n).exists()).collect();
    if !missing.is_empty() {
        return uffd_testkit::skip(&format!(
            "example binaries {missing:?} not built in {} (`cargo test` builds them; \
             `cargo test --test examples` alone does not)",
            dir.display()
        ));
    }
    let mut failures = Vec::new();
    for name in &names {
        let started = Instant::now();
        match run(&dir.join(name)) {
            // Each example ends with one `ok:` line once it has checked its own result.
            Ok(stdout) if stdout.lines().any(|l| l.starts_with("ok: ")) => {
                eprintln!("{name}: ok in {:?}", started.elapsed());
            }
            Ok(stdout) => failures.push(format!("{name}: exit 0 but no `ok:` line:\n{stdout}")),
            Err(why) => failures.push(format!("{name}: {why}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_tutorial_names_every_example_with_its_command() {
    let text = tutorial();
    for name in examples() {
        let command = format!("cargo run --release --example {name}");
        assert!(
            text.contains(&command),
            "docs/tutorial.md lacks `{command}`"
        );
    }
}

/// Every `path` and `path::item` in backticks whose first segment is a directory or file of
/// the repository: the path must exist, and the item must be defined in that file.
#[test]
fn every_repository_path_the_tutorial_names_exists() {
    let text = tutorial();
    let root = Path::new(ROOT);
    let tops: Vec<String> = std::fs::read_dir(root)
        .expect("repository root")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| !name.starts_with('.') && name != "target")
        .collect();
    let mut checked = 0;
    let mut stale = Vec::new();
    for quoted in text.split('`').skip(1).step_by(2) {
        let (path, item) = match quoted.split_once("::") {
            Some((path, item)) => (path, Some(item)),
            None => (quoted, None),
        };
        let first = path.split('/').next().unwrap_or_default();
        let looks_like_path = path.contains('/') || path.ends_with(".md");
        if !looks_like_path || !tops.iter().any(|t| t == first) || path.contains(' ') {
            continue;
        }
        checked += 1;
        let file = root.join(path);
        if !file.exists() {
            stale.push(format!("`{quoted}`: no such path"));
            continue;
        }
        if let Some(item) = item {
            let name = item.rsplit("::").next().unwrap_or(item);
            let source = std::fs::read_to_string(&file).unwrap_or_default();
            let defined = ["fn", "struct", "enum", "mod", "const", "type", "trait"]
                .iter()
                .flat_map(|kw| {
                    ["(", "<", " ", "{", ";", ":"].map(|end| format!("{kw} {name}{end}"))
                })
                .any(|definition| source.contains(&definition));
            if !defined {
                stale.push(format!("`{quoted}`: {path} defines no `{name}`"));
            }
        }
    }
    assert!(
        checked >= 30,
        "only {checked} repository paths found in docs/tutorial.md"
    );
    assert!(
        stale.is_empty(),
        "docs/tutorial.md is stale:\n{}",
        stale.join("\n")
    );
}

/// Pictures and links of the tutorial point into the repository, never outside it.
#[test]
fn the_tutorial_links_only_inside_the_repository() {
    let text = tutorial();
    assert!(
        !text.contains("http://") && !text.contains("https://"),
        "a link leaves the repository"
    );
    let docs = Path::new(ROOT).join("docs");
    let targets: Vec<&str> = text
        .split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .collect();
    assert!(targets.len() >= 2, "the fault timelines are missing");
    for target in targets {
        assert!(
            docs.join(target).exists(),
            "docs/tutorial.md links to missing {target}"
        );
    }
}
