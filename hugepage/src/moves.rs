//! Where the region's pages are now: the application may move parts of it with `mremap`.
//!
//! The map is a list of *segments*: image offsets `offset..offset+len` mapped at
//! `addr..addr+len`. It starts as one segment (the whole region at its own address); each
//! move (a UFFD_EVENT_REMAP) splits the segments it touches and shifts the moved parts. A
//! unit can be placed in one piece only where it lies inside one segment: see
//! [`Moves::range`].
//!
//! The kernel makes the pager learn of a move before any placement can reach the moved
//! range: while the REMAP event (and the UNMAP of the old range that follows it) is unread,
//! every placement ioctl answers EAGAIN, at the old address as at the new one (measured on
//! 6.18, anon and hugetlb). The pager changes the map only with its events lock held for
//! writing, and places only with it held for reading, so a placement's addresses stay right
//! until its ioctl returns.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

use crate::backing::PAGE;

/// A moved range: `len` bytes that were at `from` are now at `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move {
    /// Old start.
    pub from: u64,
    /// New start.
    pub to: u64,
    /// Length.
    pub len: u64,
}

/// Where a range of the region's pages is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Dst {
    /// Contiguous, starting at this address.
    At(u64),
    /// Cut by a move: the address of each 4 KiB page.
    Pages(Vec<u64>),
}

impl Dst {
    /// Address of page `i` of the range.
    pub(crate) fn page(&self, i: usize) -> u64 {
        match self {
            Dst::At(addr) => addr + i as u64 * PAGE,
            Dst::Pages(addrs) => addrs[i],
        }
    }

    /// The start, when the range can take one huge page of `unit` bytes: contiguous and
    /// aligned to `unit`. A range moved in part, or to an address not aligned to the unit,
    /// cannot be mapped by one PMD.
    pub(crate) fn huge(&self, unit: u64) -> Option<u64> {
        match self {
            Dst::At(addr) if addr.is_multiple_of(unit) => Some(*addr),
            _ => None,
        }
    }

    /// Pages `i..i+n` of the range cut where their addresses stop being contiguous:
    /// `(address, first page, pages)` pieces, in order.
    pub(crate) fn pieces(&self, i: usize, n: usize) -> Vec<(u64, usize, usize)> {
        if let Dst::At(addr) = self {
            return vec![(addr + i as u64 * PAGE, i, n)];
        }
        let mut out: Vec<(u64, usize, usize)> = Vec::new();
        for p in i..i + n {
            let at = self.page(p);
            match out.last_mut() {
                Some((start, _, count)) if *start + *count as u64 * PAGE == at => *count += 1,
                _ => out.push((at, p, 1)),
            }
        }
        out
    }
}

/// Image offsets `offset..offset+len`, mapped at `addr..addr+len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    offset: u64,
    addr: u64,
    len: u64,
}

/// The image-offset to address map of one region.
#[derive(Debug)]
pub(crate) struct Moves {
    base: u64,
    segments: RwLock<Vec<Segment>>,
    /// Set by the first move: until then every lookup is `base + offset`, without the lock.
    moved: AtomicBool,
}

impl Moves {
    /// A region of `len` bytes at `base`, not moved.
    pub(crate) fn new(base: u64, len: u64) -> Moves {
        Moves {
            base,
            segments: RwLock::new(vec![Segment {
                offset: 0,
                addr: base,
                len,
            }]),
            moved: AtomicBool::new(false),
        }
    }

    /// True once any part of the region was moved.
    pub(crate) fn moved(&self) -> bool {
        self.moved.load(Ordering::Acquire)
    }

    /// Applies a move. Parts of the region outside `from..from+len` stay; parts inside go to
    /// `to`; parts that were mapped in `to..to+len` and did not move were replaced (the kernel
    /// unmapped them first, an UNMAP event) and are forgotten.
    pub(crate) fn apply(&self, m: Move) {
        let mut segments = self.segments.write().unwrap_or_else(|e| e.into_inner());
        let mut kept = Vec::new();
        let mut moved = Vec::new();
        for s in segments.iter() {
            for piece in split(*s, m.from, m.from + m.len) {
                if piece.addr >= m.from && piece.addr < m.from + m.len {
                    moved.push(Segment {
                        addr: m.to + (piece.addr - m.from),
                        ..piece
                    });
                } else {
                    kept.push(piece);
                }
            }
        }
        // What stayed but lay where the moved range landed was unmapped by the kernel.
        let replaced: Vec<Segment> = kept
            .into_iter()
            .flat_map(|s| split(s, m.to, m.to + m.len))
            .filter(|s| s.addr + s.len <= m.to || s.addr >= m.to + m.len)
            .collect();
        *segments = replaced.into_iter().chain(moved).collect();
        segments.sort_by_key(|s| s.offset);
        self.moved.store(true, Ordering::Release);
    }

    /// Where image `offset` is now. An offset whose memory was replaced by another move
    /// keeps its original address (its pages are gone: nothing is placed there).
    pub(crate) fn addr(&self, offset: u64) -> u64 {
        if !self.moved() {
            return self.base + offset;
        }
        self.range(offset, 1).unwrap_or(self.base + offset)
    }

    /// Where `offset..offset+len` is now, if it is still contiguous (inside one segment).
    pub(crate) fn range(&self, offset: u64, len: u64) -> Option<u64> {
        if !self.moved() {
            return Some(self.base + offset);
        }
        let segments = self.segments.read().unwrap_or_else(|e| e.into_inner());
        segments
            .iter()
            .find(|s| offset >= s.offset && offset + len <= s.offset + s.len)
            .map(|s| s.addr + (offset - s.offset))
    }

    /// Where image bytes `offset..offset+len` (4 KiB-aligned) are now: one address while
    /// they are contiguous, else the address of each page.
    pub(crate) fn dst(&self, offset: u64, len: u64) -> Dst {
        match self.range(offset, len) {
            Some(addr) => Dst::At(addr),
            None => Dst::Pages(
                (0..len / PAGE)
                    .map(|i| self.addr(offset + i * PAGE))
                    .collect(),
            ),
        }
    }

    /// The image offset mapped at `addr`, if any part of the region is there.
    pub(crate) fn offset(&self, addr: u64) -> Option<u64> {
        let segments = self.segments.read().unwrap_or_else(|e| e.into_inner());
        segments
            .iter()
            .find(|s| addr >= s.addr && addr < s.addr + s.len)
            .map(|s| s.offset + (addr - s.addr))
    }

    /// The address ranges `(addr, len)` the region occupies now.
    pub(crate) fn ranges(&self) -> Vec<(u64, u64)> {
        let segments = self.segments.read().unwrap_or_else(|e| e.into_inner());
        segments.iter().map(|s| (s.addr, s.len)).collect()
    }
}

/// `s` cut at the addresses `lo` and `hi`: up to three pieces, in order.
fn split(s: Segment, lo: u64, hi: u64) -> Vec<Segment> {
    let end = s.addr + s.len;
    let mut cuts = vec![s.addr];
    cuts.extend([lo, hi].into_iter().filter(|&c| c > s.addr && c < end));
    cuts.push(end);
    cuts.windows(2)
        .map(|w| Segment {
            offset: s.offset + (w[0] - s.addr),
            addr: w[0],
            len: w[1] - w[0],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: u64 = 4096;

    #[test]
    fn not_moved_is_the_identity() {
        let moves = Moves::new(0x10_0000, 16 * K);
        assert!(!moves.moved());
        assert_eq!(moves.addr(5 * K), 0x10_0000 + 5 * K);
        assert_eq!(moves.range(0, 16 * K), Some(0x10_0000));
        assert_eq!(moves.offset(0x10_0000 + 3 * K), Some(3 * K));
        assert_eq!(moves.offset(0x10_0000 + 16 * K), None);
    }

    #[test]
    fn a_part_moved_splits_the_region() {
        let base = 0x10_0000;
        let moves = Moves::new(base, 16 * K);
        // Pages 4..8 go to 0x80_0000.
        moves.apply(Move {
            from: base + 4 * K,
            to: 0x80_0000,
            len: 4 * K,
        });
        assert_eq!(moves.addr(3 * K), base + 3 * K);
        assert_eq!(moves.addr(4 * K), 0x80_0000);
        assert_eq!(moves.addr(7 * K + 12), 0x80_0000 + 3 * K + 12);
        assert_eq!(moves.addr(8 * K), base + 8 * K);
        assert_eq!(moves.range(4 * K, 4 * K), Some(0x80_0000));
        assert_eq!(moves.range(2 * K, 4 * K), None, "straddles the cut");
        assert_eq!(moves.offset(base + 5 * K), None, "the old place");
        assert_eq!(moves.offset(0x80_0000 + K), Some(5 * K));
        assert_eq!(moves.ranges().len(), 3);
    }

    #[test]
    fn moves_compose_and_replace() {
        let base = 0x10_0000;
        let moves = Moves::new(base, 8 * K);
        // Everything to A, then pages 2..4 of it back over pages 0..2 at A (which the kernel
        // unmapped first).
        let a = 0x40_0000;
        moves.apply(Move {
            from: base,
            to: a,
            len: 8 * K,
        });
        moves.apply(Move {
            from: a + 2 * K,
            to: a,
            len: 2 * K,
        });
        assert_eq!(moves.offset(a), Some(2 * K));
        assert_eq!(moves.offset(a + K), Some(3 * K));
        assert_eq!(moves.offset(a + 2 * K), None);
        assert_eq!(moves.addr(4 * K), a + 4 * K);
        // Pages 0..2 were replaced: they keep their original address.
        assert_eq!(moves.addr(0), base);
        assert_eq!(moves.range(4 * K, 4 * K), Some(a + 4 * K));
        let total: u64 = moves.ranges().iter().map(|r| r.1).sum();
        assert_eq!(total, 6 * K);
    }

    #[test]
    fn a_move_outside_the_region_changes_nothing() {
        let moves = Moves::new(0x10_0000, 4 * K);
        moves.apply(Move {
            from: 0x90_0000,
            to: 0xA0_0000,
            len: 4 * K,
        });
        assert_eq!(moves.range(0, 4 * K), Some(0x10_0000));
    }
}
