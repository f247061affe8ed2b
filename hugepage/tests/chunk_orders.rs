//! Property: whatever the chunk sizes, their order, zero runs among them and chunks sent
//! twice, every unit completes exactly once, every page is placed exactly once, and the
//! content is right.

mod common;

use common::{deliver, random_chunks, setup, verify, Delivery};
use hugepage::{Backing, HugetlbPlacement, Pattern, PAGE};
use proptest::prelude::*;
use uffd_core::convert::usize_from;

fn check(
    backing: Backing,
    placement: HugetlbPlacement,
    units: u64,
    max_pages: u64,
    zero: Vec<(u64, u64)>,
    resend: Vec<usize>,
    seed: u64,
) -> Result<(), TestCaseError> {
    let Some(s) = setup(backing, placement, units) else {
        return Ok(());
    };
    let unit = backing.unit();
    let zero: Vec<(u64, u64)> = zero
        .into_iter()
        .map(|(start, len)| (start % (units * unit / PAGE) * PAGE, len * PAGE))
        .collect();
    let mut deliveries: Vec<Delivery> = random_chunks(units, unit, max_pages, &zero, seed);
    // Some chunks are sent twice, at random later positions.
    for i in resend {
        let d = deliveries[i % deliveries.len()];
        let at = (i * 7919) % (deliveries.len() + 1);
        deliveries.insert(at.max(i % deliveries.len() + 1).min(deliveries.len()), d);
    }
    let pattern = Pattern::new(seed);
    let mut assembler = s.assembler();
    let mut completions = vec![0u64; usize_from(units)];
    let mut placed = 0;
    for d in deliveries {
        let p = deliver(&mut assembler, d, &pattern, &s.received);
        placed += p.pages.placed;
        completions[usize_from(d.offset / unit)] += p.units_completed;
        prop_assert_eq!(p.units_not_huge, 0);
    }
    prop_assert!(
        completions.iter().all(|&n| n == 1),
        "completions {:?}",
        completions
    );
    prop_assert_eq!(placed, s.memory.pages() as u64);
    prop_assert_eq!(assembler.pending(), 0);
    verify(&s.memory, &s.received, &pattern, &zero);
    prop_assert_eq!(s.memory.huge_pages_mapped_exact().expect("pagemap"), units);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn thp_units_complete_exactly_once(
        units in 1u64..=3,
        max_pages in 1u64..=160,
        zero in prop::collection::vec((0u64..1536, 1u64..700), 0..3),
        resend in prop::collection::vec(0usize..1000, 0..4),
        seed: u64,
    ) {
        check(Backing::Thp, HugetlbPlacement::Copy, units, max_pages, zero, resend, seed)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn hugetlb_units_complete_exactly_once(
        units in 1u64..=2,
        max_pages in 1u64..=160,
        zero in prop::collection::vec((0u64..1024, 1u64..700), 0..3),
        resend in prop::collection::vec(0usize..1000, 0..4),
        seed: u64,
        continue_way: bool,
    ) {
        let placement = if continue_way { HugetlbPlacement::Continue } else { HugetlbPlacement::Copy };
        check(Backing::Hugetlb2M, placement, units, max_pages, zero, resend, seed)?;
    }
}
