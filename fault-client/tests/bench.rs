//! `fault-client bench --quick`, run as a script runs it: the JSON has a row for every case
//! with finite positive numbers and the ratios, and the table names every case.
//!
//! The bench starts `page-server` children: the binary must be next to `fault-client`
//! (target/<profile>/page-server), which `cargo test --workspace` builds.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_fault-client");

/// Every case, in table order.
const CASES: [&str; 13] = [
    "local-roundtrip-4k",
    "local-first-touch-4k",
    "remote-anon",
    "remote-anon-bg",
    "remote-anon-bg-nopreempt",
    "remote-thp",
    "remote-thp-bg",
    "remote-thp-bg-nopreempt",
    "remote-hugetlb-2m",
    "remote-hugetlb-2m-bg",
    "remote-hugetlb-2m-bg-nopreempt",
    "transfer-anon",
    "transfer-thp",
];

/// Each ratio: (key, numerator case, denominator case, the column it divides).
const RATIOS: [(&str, &str, &str, &str); 4] = [
    (
        "remote_anon_p50_over_local_p50",
        "remote-anon",
        "local-roundtrip-4k",
        "p50_us",
    ),
    (
        "thp_over_anon_transfer_time",
        "transfer-thp",
        "transfer-anon",
        "elapsed_s",
    ),
    (
        "hugetlb_2m_p50_over_anon_p50",
        "remote-hugetlb-2m",
        "remote-anon",
        "p50_us",
    ),
    (
        "thp_bg_p99_preempt_over_no_preempt",
        "remote-thp-bg",
        "remote-thp-bg-nopreempt",
        "p99_us",
    ),
];

/// The page-server binary next to fault-client; fails with what to run when it is missing.
fn page_server() -> PathBuf {
    let dir = Path::new(BIN)
        .parent()
        .expect("the fault-client binary has a directory");
    let path = dir.join("page-server");
    assert!(
        path.is_file(),
        "{} is missing: `fault-client bench` starts page-server children. Run the whole \
         workspace's tests (`cargo test --workspace`), which builds it.",
        path.display()
    );
    path
}

/// False (with a skip, which fails under CI) when this machine has no userfaultfd.
fn uffd_available() -> bool {
    match uffd_core::Userfaultfd::open(0) {
        Ok(_) => true,
        Err(err) => {
            uffd_testkit::skip(&format!("no userfaultfd: {err}"));
            false
        }
    }
}

fn bench(args: &[&str]) -> Output {
    page_server();
    let out = Command::new(BIN)
        .arg("bench")
        .args(args)
        .output()
        .expect("run fault-client bench");
    assert!(
        out.status.success(),
        "fault-client bench {args:?} exited with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn number(row: &Value, key: &str) -> f64 {
    let value = row[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{}: `{key}` is not a number: {row}", row["case"]));
    assert!(
        value.is_finite() && value > 0.0,
        "{}: `{key}` is {value}, not finite and positive",
        row["case"]
    );
    value
}

/// A skipped row is only allowed for hugetlb (a short pool), and not under CI.
fn allow_skip(case: &str, row: &Value) -> bool {
    let Some(why) = row["skipped"].as_str() else {
        return false;
    };
    assert!(case.contains("hugetlb"), "{case} was skipped: {why}");
    uffd_testkit::skip(&format!("{case}: {why}"));
    true
}

/// `floor`: the local first-touch p50, under which no userfault can be.
fn check_row(case: &str, row: &Value, floor: f64) {
    if allow_skip(case, row) {
        return;
    }
    assert_eq!(row["hung"], 0, "{case} hung: {row}");
    if row["kind"] == "transfer" {
        number(row, "elapsed_s");
        number(row, "throughput_mib_s");
        return;
    }
    if row["kind"] == "remote" {
        number(row, "elapsed_s");
        number(row, "throughput_mib_s");
        let samples = row["samples"].as_u64().expect("samples");
        let faults = row["faults"].as_u64().expect("faults");
        assert!(
            samples <= faults * row["runs"].as_u64().unwrap_or(1),
            "{case}: more samples than faults: {row}"
        );
        if samples == 0 {
            // With the stream on, every touch may have found its page present: no latency,
            // and no number pretending to be one.
            assert!(row["background"] == true, "{case}: nothing faulted: {row}");
            for key in ["p50_us", "p99_us", "mean_us"] {
                assert!(row[key].is_null(), "{case}: {key} without samples: {row}");
            }
            return;
        }
    }
    let p50 = number(row, "p50_us");
    let p99 = number(row, "p99_us");
    number(row, "mean_us");
    number(row, "samples");
    number(row, "faults");
    assert!(p99 >= p50, "{case}: p99 {p99} < p50 {p50}");
    if row["kind"] == "remote" {
        assert!(
            p50 >= floor,
            "{case}: p50 {p50} us is below the plain first-touch fault's {floor} us: {row}"
        );
    }
}

#[test]
fn quick_json_has_every_case_and_the_ratios() {
    if !uffd_available() {
        return;
    }
    let out = bench(&["--quick", "--json"]);
    let json: Value = serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
    let rows = json["rows"].as_array().expect("`rows` is a list");
    let names: Vec<&str> = rows.iter().filter_map(|r| r["case"].as_str()).collect();
    assert_eq!(names, CASES, "the rows, in table order");
    let floor = number(&rows[1], "p50_us");
    for (case, row) in CASES.iter().zip(rows) {
        check_row(case, row, floor);
    }
    // Every ratio is computed from the two rows' real numbers, or null when a row has none.
    let ratios = &json["ratios"];
    let row = |case: &str| &rows[CASES.iter().position(|&c| c == case).expect("a case")];
    for (key, top, bottom, column) in RATIOS {
        let value = &ratios[key];
        match (row(top)[column].as_f64(), row(bottom)[column].as_f64()) {
            (Some(n), Some(d)) => {
                let v = value
                    .as_f64()
                    .unwrap_or_else(|| panic!("ratio {key} is {value}"));
                assert!(v.is_finite() && v > 0.0, "ratio {key} is {v}");
                assert!(
                    (v - n / d).abs() <= 1e-9 * v,
                    "ratio {key}: {v} is not {n} / {d}"
                );
            }
            _ => assert!(value.is_null(), "ratio {key} is {value} without both rows"),
        }
    }
    let notes = json["notes"].to_string();
    assert!(notes.contains("preempt-bench.sh"), "{notes}");
}

#[test]
fn quick_table_names_every_case() {
    if !uffd_available() {
        return;
    }
    let out = bench(&["--quick"]);
    let table = String::from_utf8_lossy(&out.stdout);
    for case in CASES {
        assert!(
            table
                .lines()
                .any(|l| l.split_whitespace().next() == Some(case)),
            "no row {case} in:\n{table}"
        );
    }
    for text in [
        "p50 us",
        "MiB/s",
        "huge pages",
        "ratios",
        "preempt-bench.sh",
    ] {
        assert!(table.contains(text), "the table lacks {text:?}:\n{table}");
    }
}
