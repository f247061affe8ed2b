//! Huge-page backings end to end: the whole image verified for every backing, and the pages
//! really mapped huge (hugetlbfs pages in use, AnonHugePages for THP).
//!
//! The hugetlbfs pools are reserved by `scripts/hugepages.sh` (`scripts/test.sh` and CI run it first); a test whose pool
//! is short skips with the reason (a failure under CI=true).

mod common;

use common::{have_uffd, pool_has, synthetic, TestServer};
use fault_client::{RunConfig, Workload};
use hugepage::{Backing, HugetlbPlacement};

fn run(
    server: &TestServer,
    backing: Backing,
    placement: HugetlbPlacement,
    workload: Workload,
    background: bool,
) -> fault_client::Report {
    let mut config = RunConfig::new(server.endpoint.clone());
    config.client.backing = backing;
    config.client.hugetlb = placement;
    config.workload = workload;
    config.client.background = background;
    config.verify = true;
    config.threads = 3;
    config.touch = 0.2;
    config.quiet = true;
    fault_client::client::run(&config)
        .unwrap_or_else(|e| panic!("{backing} {placement:?} {workload} bg={background}: {e}"))
}

#[test]
fn hugetlb_2m_copy_and_continue_verified_and_mapped_huge() {
    if !have_uffd() || !pool_has(2 << 20, 24) {
        return;
    }
    // 20 MiB + a bit: the last huge page is partly padding.
    let server = TestServer::start(synthetic((20 << 20) + 12288, 8, 0.1));
    for placement in [HugetlbPlacement::Copy, HugetlbPlacement::Continue] {
        for (workload, background) in [
            (Workload::Random, true),
            (Workload::Random, false),
            (Workload::None, true),
        ] {
            let r = run(&server, Backing::Hugetlb2M, placement, workload, background);
            assert_eq!(r.verified, Some(true), "{placement:?} {r:?}");
            assert_eq!(r.huge_pages_total, 11, "{r:?}");
            assert_eq!(
                r.huge_pages_mapped, 11,
                "every huge page mapped as one: {r:?}"
            );
            if !background {
                // Every fault asked for a whole huge page.
                assert!(r.requests <= 11, "{r:?}");
            }
        }
    }
}

#[test]
fn thp_ends_with_anon_huge_pages() {
    if !have_uffd() {
        return;
    }
    let server = TestServer::start(synthetic(32 << 20, 9, 0.05));
    // Background only: every 2 MiB unit is moved into place whole, as a THP.
    let r = run(
        &server,
        Backing::Thp,
        HugetlbPlacement::Copy,
        Workload::None,
        true,
    );
    assert_eq!(r.verified, Some(true));
    assert_eq!(r.huge_pages_total, 16);
    assert_eq!(
        r.huge_pages_mapped, 16,
        "AnonHugePages must cover the image: {r:?}"
    );
    // With urgent 4K pages inside the units: placed around them and collapsed. A unit whose
    // collapse the kernel refuses stays 4K-mapped (counted in huge_pages_not_collapsed).
    let r = run(
        &server,
        Backing::Thp,
        HugetlbPlacement::Copy,
        Workload::Random,
        true,
    );
    assert_eq!(r.verified, Some(true));
    assert!(r.pages_urgent > 0, "{r:?}");
    assert!(
        r.huge_pages_mapped * 4 >= r.huge_pages_total * 3,
        "most units must end huge: {r:?}"
    );
    // On demand only: urgent 4K pages, never whole units, so nothing is huge.
    let r = run(
        &server,
        Backing::Thp,
        HugetlbPlacement::Copy,
        Workload::Seq,
        false,
    );
    assert_eq!(r.verified, Some(true));
    assert_eq!(r.requests, r.pages, "one 4K request per page: {r:?}");
}

#[test]
fn hugetlb_1g_verified() {
    if !have_uffd() || !pool_has(1 << 30, 1) {
        return;
    }
    let server = TestServer::start(synthetic(1 << 30, 10, 0.0));
    let r = run(
        &server,
        Backing::Hugetlb1G,
        HugetlbPlacement::Continue,
        Workload::Random,
        true,
    );
    assert_eq!(r.verified, Some(true));
    assert_eq!((r.huge_pages_mapped, r.huge_pages_total), (1, 1), "{r:?}");
}
