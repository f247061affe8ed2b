//! The `hugepage` binary, run as a user would.

use std::process::Command;

fn hugepage(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hugepage"))
        .args(args)
        .output()
        .expect("run hugepage")
}

fn json(args: &[&str]) -> serde_json::Value {
    let out = hugepage(args);
    assert!(
        out.status.success(),
        "hugepage {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

#[test]
fn status_reports_pools_thp_and_features() {
    let s = json(&["status", "--json"]);
    let sizes: Vec<&str> = s["pools"]
        .as_array()
        .expect("pools")
        .iter()
        .filter_map(|p| p["size"].as_str())
        .collect();
    assert!(sizes.contains(&"2M"), "{s}");
    assert!(s["thp_enabled"].is_string());
    if s["userfaultfd"].is_null() {
        return uffd_testkit::skip("no userfaultfd");
    }
    assert!(s["features"]
        .as_array()
        .expect("features")
        .iter()
        .any(|f| f == "MOVE"));
    let text = hugepage(&["status"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("backings:"));
}

#[test]
fn thp_bench_verifies_and_maps_huge_pages() {
    let r = json(&[
        "bench",
        "--backing",
        "thp",
        "--pages",
        "4",
        "--chunk",
        "128KiB",
        "--order",
        "preempted",
        "--json",
    ]);
    assert_eq!(r["units"], 4);
    assert_eq!(r["verified_bytes"], 4 * (2 << 20));
    assert_eq!(r["huge_pages_mapped"], 4);
    assert_eq!(r["urgent_pages"], 16);
    assert_eq!(r["latency_us"]["count"], 4);
    assert_eq!(r["rounds"], 2);
}

#[test]
fn hugetlb_bench_places_whole_pages() {
    let out = hugepage(&[
        "bench",
        "--backing",
        "hugetlb-2m",
        "--placement",
        "continue",
        "--pages",
        "4",
        "--json",
    ]);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("pool"), "unexpected failure: {err}");
        return uffd_testkit::skip(&err);
    }
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(r["placement"], "continue");
    assert_eq!(r["huge_pages_mapped"], 4);
    assert_eq!(r["huge_pages_expected"], 4);
}

#[test]
fn bad_arguments_are_refused_with_a_reason() {
    let out = hugepage(&["bench", "--chunk", "1000"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("4 KiB"));
    let out = hugepage(&["setup", "--pages", "1", "--size", "4M"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("2M or 1G"));
}
