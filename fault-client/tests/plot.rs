//! `fault-client plot` as a user runs it: on a synthetic trace with every kind of event, to
//! SVG and PNG, and on the inputs it must refuse.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_fault-client");
const PAGE: u64 = 4096;
const HUGE: u64 = 2 << 20;

/// A fresh directory for one test's files.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fault-client-plot-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the scratch directory");
    dir
}

/// A trace like `run --trace` writes for a 64 MiB image: a background sweep in 64 KiB
/// frames, faults answered urgently, by the stream, as zero pages or already present, some
/// duplicate frames and a few 2 MiB huge pages.
fn synthetic_trace() -> String {
    let mut csv = String::from("t_us,event,offset,len,latency_us,resolution,channel\n");
    let mut line = |s: String| {
        csv.push_str(&s);
        csv.push('\n');
    };
    for i in 0..200u64 {
        let t = i as f64 * 50.0;
        let sweep = i * (64 << 10);
        line(format!(
            "{t:.1},arrival,{sweep},65536,,background,background"
        ));
        let page = (i * 7919 % 16384) * PAGE;
        let (latency, how, channel) = match i % 10 {
            0 => (2.0 + i as f64 / 100.0, "already_present", "local"),
            1 => (8.0 + i as f64 / 10.0, "zero", "local"),
            2 => (150.0 + i as f64, "background", "background"),
            _ => (40.0 + (i % 37) as f64, "urgent", "urgent"),
        };
        let done = t + 1.0 + latency;
        line(format!("{:.1},fault,{page},{PAGE},,,", t + 1.0));
        if how == "urgent" || how == "zero" {
            line(format!("{done:.1},arrival,{page},{PAGE},,{how},{channel}"));
        }
        line(format!(
            "{done:.1},resolved,{page},{PAGE},{latency:.1},{how},{channel}"
        ));
        if i % 25 == 0 {
            let huge = (i / 25 % 32) * HUGE;
            line(format!(
                "{:.1},arrival,{huge},{HUGE},,urgent,urgent",
                t + 2.0
            ));
            line(format!(
                "{:.1},arrival,{huge},{HUGE},,duplicate,background",
                t + 3.0
            ));
        }
    }
    csv
}

fn plot(trace: &Path, out: &Path) -> Output {
    Command::new(BIN)
        .arg("plot")
        .arg(trace)
        .arg("--out")
        .arg(out)
        .output()
        .expect("run fault-client plot")
}

fn write_trace(dir: &Path, csv: &str) -> PathBuf {
    let path = dir.join("trace.csv");
    std::fs::write(&path, csv).expect("write the trace");
    path
}

#[test]
fn svg_has_the_panels_labels_and_percentiles() {
    let dir = scratch("svg");
    let trace = write_trace(&dir, &synthetic_trace());
    let out_path = dir.join("trace.svg");
    let out = plot(&trace, &out_path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("200 faults"), "{summary}");
    assert!(summary.contains("p99"), "{summary}");
    let svg = std::fs::read_to_string(&out_path).expect("read the SVG");
    assert!(svg.starts_with("<svg"), "not an SVG");
    for label in [
        "p50 = ",
        "p99 = ",
        "urgent",
        "background",
        "zero",
        "already_present",
        "duplicate",
        "faults (200)",
        "histogram",
        "CDF",
        "Timeline",
        "image offset (MiB)",
    ] {
        assert!(svg.contains(label), "the SVG lacks {label:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn png_is_a_png_of_plausible_size() {
    let dir = scratch("png");
    let trace = write_trace(&dir, &synthetic_trace());
    let out_path = dir.join("trace.PNG");
    let out = plot(&trace, &out_path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&out_path).expect("read the PNG");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "no PNG signature");
    // 1200x1400 with text and marks: far from empty, far from raw pixels (5 MB).
    assert!(
        (20_000..3_000_000).contains(&png.len()),
        "{} bytes",
        png.len()
    );
    // The IHDR chunk holds the width and height.
    assert_eq!(&png[16..24], &[0, 0, 4, 176, 0, 0, 5, 120]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_trace_without_resolved_faults_still_draws_the_timeline() {
    let dir = scratch("no-faults");
    let mut csv = String::from("t_us,event,offset,len,latency_us,resolution,channel\n");
    for i in 0..50u64 {
        let _ = writeln!(
            csv,
            "{}.0,arrival,{},65536,,background,background",
            i * 10,
            i << 16
        );
    }
    let trace = write_trace(&dir, &csv);
    for name in ["t.svg", "t.png"] {
        let out = plot(&trace, &dir.join(name));
        assert!(out.status.success(), "{name}");
        let summary = String::from_utf8_lossy(&out.stdout);
        assert!(summary.contains("no resolved faults"), "{summary}");
        assert!(summary.contains("50 arrivals"), "{summary}");
    }
    let svg = std::fs::read_to_string(dir.join("t.svg")).expect("read the SVG");
    assert!(svg.contains("no resolved faults in this trace"));
    assert!(svg.contains("background arrivals (50)"));

    let empty = write_trace(
        &dir,
        "t_us,event,offset,len,latency_us,resolution,channel\n",
    );
    let out = plot(&empty, &dir.join("empty.png"));
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("no resolved faults"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_malformed_line_exits_1_naming_the_line() {
    let dir = scratch("malformed");
    let mut csv = synthetic_trace();
    let bad_line = csv.lines().count() + 1;
    csv.push_str("12.5,fault,not-a-number,4096,,,\n");
    let trace = write_trace(&dir, &csv);
    let out = plot(&trace, &dir.join("t.svg"));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("line {bad_line}")), "{err}");
    assert!(err.contains("offset"), "{err}");

    let trace = write_trace(
        &dir,
        "t_us,event,offset,len,latency_us,resolution,channel\n1,2,3\n",
    );
    let out = plot(&trace, &dir.join("t.svg"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 2"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_extension_or_missing_trace_exits_1() {
    let dir = scratch("extension");
    let trace = write_trace(&dir, &synthetic_trace());
    for name in ["t.jpg", "t"] {
        let out = plot(&trace, &dir.join(name));
        assert_eq!(out.status.code(), Some(1), "{name}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(".svg or .png"), "{err}");
        assert!(!dir.join(name).exists());
    }
    let out = plot(&dir.join("missing.csv"), &dir.join("t.svg"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.csv"));
    let _ = std::fs::remove_dir_all(&dir);
}
