//! Units preempted by the demand path: urgent 4 KiB pages placed inside a THP before (or
//! while) the rest arrives, and whole hugetlb pages placed by another connection.

mod common;

use common::{assert_all_huge, deliver, feed, random_chunks, setup, verify};
use hugepage::{Backing, HugetlbPlacement, Pattern, PAGE};
use uffd_core::convert::usize_from;
use uffd_core::place::{self, Outcome};

/// Places image page `page` with a 4 KiB UFFDIO_COPY, as a fault handler would, and sets its
/// bit.
fn urgent(s: &common::Setup, pattern: &Pattern, page: u64) {
    let bytes = pattern.bytes(page * PAGE, PAGE);
    let outcome = place::copy(&s.uffd, s.memory.addr() + page * PAGE, &bytes, true).expect("copy");
    assert_eq!(outcome, Outcome::Placed(PAGE));
    assert!(s.received.set(usize_from(page)));
}

#[test]
fn thp_with_urgent_pages_first_is_still_collapsed() {
    let units = 3;
    let Some(s) = setup(Backing::Thp, HugetlbPlacement::Copy, units) else {
        return;
    };
    let pattern = Pattern::new(11);
    // Five urgent pages per unit, first and last pages included.
    let urgent_pages: Vec<u64> = (0..units)
        .flat_map(|u| [0, 1, 200, 301, 511].map(|p| u * 512 + p))
        .collect();
    for &p in &urgent_pages {
        urgent(&s, &pattern, p);
    }
    let mut assembler = s.assembler();
    let chunks = random_chunks(units, Backing::Thp.unit(), 32, &[], 5);
    let total = feed(&mut assembler, &chunks, &pattern, &s.received);
    let n_urgent = urgent_pages.len() as u64;
    assert_eq!(total.pages.placed, s.memory.pages() as u64 - n_urgent);
    assert_eq!(total.pages.present, n_urgent);
    assert_eq!((total.units_completed, total.units_not_huge), (units, 0));
    assert_eq!(assembler.pending(), 0);
    verify(&s.memory, &s.received, &pattern, &[]);
    assert_all_huge(&s.memory);
}

#[test]
fn thp_urgent_page_arriving_mid_assembly_is_kept() {
    let Some(s) = setup(Backing::Thp, HugetlbPlacement::Copy, 2) else {
        return;
    };
    let pattern = Pattern::new(12);
    let chunks = random_chunks(2, Backing::Thp.unit(), 16, &[], 6);
    let (first, rest) = chunks.split_at(chunks.len() / 2);
    let mut assembler = s.assembler();
    let mut total = feed(&mut assembler, first, &pattern, &s.received);
    assert_eq!(total.units_completed, 0);
    // One urgent page already gathered, one not yet, in each unit.
    let gathered = |p: u64| {
        first
            .iter()
            .any(|d| d.offset <= p * PAGE && p * PAGE < d.offset + d.len)
    };
    let mut n_urgent = 0;
    for u in 0..2 {
        let pages: Vec<u64> = (u * 512..(u + 1) * 512).collect();
        let in_stage = pages
            .iter()
            .copied()
            .find(|&p| gathered(p))
            .expect("some gathered");
        let not_yet = pages
            .iter()
            .copied()
            .find(|&p| !gathered(p))
            .expect("some missing");
        urgent(&s, &pattern, in_stage);
        urgent(&s, &pattern, not_yet);
        n_urgent += 2;
    }
    total.merge(&feed(&mut assembler, rest, &pattern, &s.received));
    assert_eq!(total.pages.placed, s.memory.pages() as u64 - n_urgent);
    assert_eq!(total.pages.present, n_urgent);
    assert_eq!((total.units_completed, total.units_not_huge), (2, 0));
    verify(&s.memory, &s.received, &pattern, &[]);
    assert_all_huge(&s.memory);
}

#[test]
fn hugetlb_unit_placed_by_another_connection_first() {
    for placement in [HugetlbPlacement::Copy, HugetlbPlacement::Continue] {
        let Some(s) = setup(Backing::Hugetlb2M, placement, 2) else {
            return;
        };
        let unit = Backing::Hugetlb2M.unit();
        let pattern = Pattern::new(13);
        let chunks = random_chunks(2, unit, 32, &[], 8);
        let mut background = s.assembler();
        let mut demand = s.assembler();
        let half = chunks.len() / 2;
        let mut total = feed(&mut background, &chunks[..half], &pattern, &s.received);
        // A fault asked for unit 0: it arrives whole on the demand connection.
        let urgent = deliver(
            &mut demand,
            common::Delivery {
                offset: 0,
                len: unit,
                zero: false,
            },
            &pattern,
            &s.received,
        );
        assert_eq!((urgent.pages.placed, urgent.units_completed), (512, 1));
        total.merge(&feed(
            &mut background,
            &chunks[half..],
            &pattern,
            &s.received,
        ));
        assert_eq!(
            total.pages.placed, 512,
            "{placement}: only unit 1 is the background's"
        );
        assert_eq!(
            total.pages.present, 512,
            "{placement}: unit 0 was found present"
        );
        assert_eq!(background.pending(), 0);
        verify(&s.memory, &s.received, &pattern, &[]);
        assert_all_huge(&s.memory);
    }
}
