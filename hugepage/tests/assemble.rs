//! Every backing assembles an image from shuffled chunks of random sizes (with a zero unit and
//! a zero run inside a unit) and ends with every byte right and every unit mapped as a huge
//! page.

mod common;

use common::{assert_all_huge, feed, random_chunks, setup, verify};
use hugepage::{AssembleError, Backing, HugetlbPlacement, Pattern, PAGE};
use uffd_core::PageBitmap;

fn assemble(backing: Backing, placement: HugetlbPlacement, units: u64, max_pages: u64) {
    let Some(s) = setup(backing, placement, units) else {
        return;
    };
    let unit = backing.unit();
    let pattern = Pattern::new(units ^ unit);
    // Pages 3..11 arrive as a zero run; with several units, the last one is all zeros.
    let mut zero = vec![(3 * PAGE, 8 * PAGE)];
    if units > 1 {
        zero.push(((units - 1) * unit, unit));
    }
    let deliveries = random_chunks(units, unit, max_pages, &zero, 42);
    let mut assembler = s.assembler();
    let total = feed(&mut assembler, &deliveries, &pattern, &s.received);
    assert_eq!(assembler.pending(), 0);
    assert_eq!(total.pages.placed, s.memory.pages() as u64);
    assert_eq!(total.pages.present, 0);
    let units_completed = if backing == Backing::Anon {
        s.memory.pages() as u64
    } else {
        units
    };
    assert_eq!(total.units_completed, units_completed);
    assert_eq!(total.units_not_huge, 0);
    verify(&s.memory, &s.received, &pattern, &zero);
    if backing == Backing::Anon {
        assert_eq!(s.memory.huge_pages_mapped().expect("smaps"), 0);
    } else {
        assert_all_huge(&s.memory);
    }
}

#[test]
fn anon_from_shuffled_chunks() {
    assemble(Backing::Anon, HugetlbPlacement::Copy, 256, 8);
}

#[test]
fn thp_from_shuffled_chunks() {
    assemble(Backing::Thp, HugetlbPlacement::Copy, 4, 40);
}

#[test]
fn hugetlb_2m_copy_from_shuffled_chunks() {
    assemble(Backing::Hugetlb2M, HugetlbPlacement::Copy, 4, 40);
}

#[test]
fn hugetlb_2m_continue_from_shuffled_chunks() {
    assemble(Backing::Hugetlb2M, HugetlbPlacement::Continue, 4, 40);
}

#[test]
fn hugetlb_1g_copy_from_shuffled_chunks() {
    assemble(Backing::Hugetlb1G, HugetlbPlacement::Copy, 1, 512);
}

#[test]
fn hugetlb_1g_continue_from_shuffled_chunks() {
    assemble(Backing::Hugetlb1G, HugetlbPlacement::Continue, 1, 512);
}

/// Two connections receive every chunk of the same units: each unit is placed exactly once,
/// and the slower connection finds its pages present.
#[test]
fn two_connections_place_each_unit_once() {
    for (backing, placement) in [
        (Backing::Thp, HugetlbPlacement::Copy),
        (Backing::Hugetlb2M, HugetlbPlacement::Copy),
        (Backing::Hugetlb2M, HugetlbPlacement::Continue),
    ] {
        let Some(s) = setup(backing, placement, 2) else {
            return;
        };
        let pattern = Pattern::new(9);
        let a_chunks = random_chunks(2, backing.unit(), 64, &[], 1);
        let b_chunks = random_chunks(2, backing.unit(), 16, &[], 2);
        let (mut a, mut b) = (s.assembler(), s.assembler());
        let mut placed = 0;
        let mut present = 0;
        let longest = a_chunks.len().max(b_chunks.len());
        for i in 0..longest {
            for (asm, chunks) in [(&mut a, &a_chunks), (&mut b, &b_chunks)] {
                if let Some(&d) = chunks.get(i) {
                    let p = common::deliver(asm, d, &pattern, &s.received);
                    placed += p.pages.placed;
                    present += p.pages.present;
                }
            }
        }
        assert_eq!(placed, s.memory.pages() as u64, "{backing} {placement}");
        // Every page was delivered twice: once placed, once found present.
        assert_eq!(
            placed + present,
            2 * s.memory.pages() as u64,
            "{backing} {placement}"
        );
        assert_eq!((a.pending(), b.pending()), (0, 0));
        verify(&s.memory, &s.received, &pattern, &[]);
        assert_all_huge(&s.memory);
    }
}

/// A staging page reused after an earlier unit still holds that unit's bytes: a zero run in
/// the next unit must really be written as zeros. (THP keeps its staging THP after a
/// preempted unit, hugetlb copy always keeps its buffer.)
#[test]
fn zero_runs_in_a_reused_staging_page_are_zeroed() {
    for (backing, placement) in [
        (Backing::Thp, HugetlbPlacement::Copy),
        (Backing::Hugetlb2M, HugetlbPlacement::Copy),
    ] {
        let Some(s) = setup(backing, placement, 2) else {
            return;
        };
        let unit = backing.unit();
        let pattern = Pattern::new(31);
        if backing == Backing::Thp {
            // Unit 0 is preempted by one urgent page, so the THP way copies around it and
            // keeps its staging THP (with unit 0's bytes) for unit 1.
            let urgent = pattern.bytes(5 * PAGE, PAGE);
            uffd_core::place::copy(&s.uffd, s.memory.addr() + 5 * PAGE, &urgent, true)
                .expect("copy");
            s.received.set(5);
        }
        let zero = [(unit + 100 * PAGE, 50 * PAGE)];
        let mut chunks = random_chunks(2, unit, 32, &zero, 9);
        // Unit 0 strictly before unit 1, so that unit 1 reuses unit 0's staging page.
        chunks.sort_by_key(|d| d.offset / unit);
        let mut assembler = s.assembler();
        let total = feed(&mut assembler, &chunks, &pattern, &s.received);
        assert_eq!(total.units_completed, 2, "{backing}");
        verify(&s.memory, &s.received, &pattern, &zero);
        assert_all_huge(&s.memory);
    }
}

/// anon: chunks are copied straight into place, a zero run is a ZEROPAGE, and a page that
/// arrived by another path is counted present and left alone.
#[test]
fn anon_places_chunks_directly_and_sets_bits() {
    let Some(s) = setup(Backing::Anon, HugetlbPlacement::Copy, 16) else {
        return;
    };
    let (memory, received) = (&s.memory, &s.received);
    let mut asm = s.assembler();
    let pattern = Pattern::new(3);
    // Page 5 arrives urgently by another path.
    received.set(5);
    let p = asm
        .data(4 * PAGE, &pattern.bytes(4 * PAGE, 4 * PAGE), received)
        .expect("data");
    assert_eq!(
        (p.pages.placed, p.pages.present, p.units_completed),
        (3, 1, 4)
    );
    assert_eq!(asm.pending(), 0);
    let z = asm.zero(0, 4 * PAGE, received).expect("zero");
    assert_eq!(z.pages.placed, 4);
    assert_eq!(received.count(), 8);
    // SAFETY: pages 0..4 and 4,6,7 are present; nothing writes the region.
    let bytes = unsafe { memory.as_slice() };
    assert!(bytes[..4 * 4096].iter().all(|&b| b == 0));
    pattern
        .check(6 * PAGE, &bytes[6 * 4096..8 * 4096])
        .expect("content");
}

#[test]
fn bad_chunks_are_refused() {
    let Some(s) = setup(Backing::Anon, HugetlbPlacement::Copy, 4) else {
        return;
    };
    let mut asm = s.assembler();
    assert!(matches!(
        asm.data(100, &[0; 4096], &s.received),
        Err(AssembleError::Misaligned { .. })
    ));
    assert!(matches!(
        asm.zero(3 * PAGE, 2 * PAGE, &s.received),
        Err(AssembleError::OutOfRange { .. })
    ));
    assert!(matches!(
        asm.zero(0, PAGE, &PageBitmap::new(1)),
        Err(AssembleError::Bitmap { .. })
    ));
}
