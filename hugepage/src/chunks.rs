//! Chunk arithmetic: how a byte range of the image maps onto placement units, and the chunk
//! orders the bench and the tests feed the assembler with.
//!
//! A chunk is any 4 KiB-aligned range of the image. It may cover part of one unit, or spill
//! over several: [`pieces`] cuts it at unit boundaries so the assembler only ever deals with
//! one unit at a time.

use std::fmt;
use std::str::FromStr;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::backing::PAGE;

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// Not one of the order names.
    #[error("unknown chunk order `{0}` (expected seq, shuffled or preempted)")]
    UnknownOrder(String),
    /// A chunk size that is zero or not a multiple of 4 KiB.
    #[error("chunk size {0} is not a non-zero multiple of 4 KiB")]
    ChunkSize(u64),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, ChunkError>;

/// The part of a chunk that falls into one unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// Index of the unit (image offset / unit size).
    pub unit: u64,
    /// Offset of the piece inside its unit.
    pub offset_in_unit: u64,
    /// Offset of the piece inside the chunk.
    pub offset_in_chunk: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Cuts `offset..offset+len` at multiples of `unit` (a power of two).
pub fn pieces(offset: u64, len: u64, unit: u64) -> impl Iterator<Item = Piece> {
    let end = offset + len;
    let mut at = offset;
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let unit_index = at / unit;
        let unit_end = (unit_index + 1) * unit;
        let piece_end = end.min(unit_end);
        let piece = Piece {
            unit: unit_index,
            offset_in_unit: at - unit_index * unit,
            offset_in_chunk: at - offset,
            len: piece_end - at,
        };
        at = piece_end;
        Some(piece)
    })
}

/// One chunk of the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// Image offset.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// The order in which the chunks of the image arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// Unit by unit, each unit's chunks in address order.
    Seq,
    /// Chunks of a window of units interleaved in random order.
    #[default]
    Shuffled,
    /// As `Shuffled`, and some pages of each unit are placed "urgently" (as a fault would)
    /// before the rest of the unit arrives.
    Preempted,
}

impl Order {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Order::Seq => "seq",
            Order::Shuffled => "shuffled",
            Order::Preempted => "preempted",
        }
    }
}

impl fmt::Display for Order {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Order {
    type Err = ChunkError;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "seq" | "sequential" => Ok(Order::Seq),
            "shuffled" => Ok(Order::Shuffled),
            "preempted" => Ok(Order::Preempted),
            _ => Err(ChunkError::UnknownOrder(s.to_string())),
        }
    }
}

/// The chunks of one unit, in address order; the last one is shorter when `chunk` does not
/// divide `unit`.
pub fn unit_chunks(unit_index: u64, unit: u64, chunk: u64) -> Result<Vec<Chunk>> {
    if chunk == 0 || !chunk.is_multiple_of(PAGE) {
        return Err(ChunkError::ChunkSize(chunk));
    }
    let base = unit_index * unit;
    Ok((0..unit.div_ceil(chunk))
        .map(|i| {
            let offset = i * chunk;
            Chunk {
                offset: base + offset,
                len: chunk.min(unit - offset),
            }
        })
        .collect())
}

/// The arrival order of every chunk of `units` units: `Seq` keeps address order, the others
/// shuffle the chunks of each group of `window` consecutive units together (a page server
/// sending a few huge pages at once). Deterministic for a given `seed`.
pub fn plan(
    units: u64,
    unit: u64,
    chunk: u64,
    order: Order,
    window: usize,
    seed: u64,
) -> Result<Vec<Chunk>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let window = window.max(1) as u64;
    let mut all = Vec::new();
    let mut first = 0;
    while first < units {
        let last = (first + window).min(units);
        let mut group = Vec::new();
        for u in first..last {
            group.extend(unit_chunks(u, unit, chunk)?);
        }
        if order != Order::Seq {
            group.shuffle(&mut rng);
        }
        all.extend(group);
        first = last;
    }
    Ok(all)
}

/// Chooses `per_unit` distinct 4 KiB pages (image page indices) in each of `units` units: the
/// pages a preempted run places urgently. Deterministic for a given `seed`.
pub fn urgent_pages(units: u64, unit: u64, per_unit: usize, seed: u64) -> Vec<Vec<u64>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x005e_ed0f_u64);
    let pages_per_unit = unit / PAGE;
    (0..units)
        .map(|u| {
            let mut chosen: Vec<u64> = Vec::with_capacity(per_unit);
            let want = per_unit.min(usize::try_from(pages_per_unit).unwrap_or(usize::MAX));
            while chosen.len() < want {
                let page = u * pages_per_unit + rng.random_range(0..pages_per_unit);
                if !chosen.contains(&page) {
                    chosen.push(page);
                }
            }
            chosen.sort_unstable();
            chosen
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use uffd_core::convert::usize_from;

    const UNIT: u64 = 2 << 20;

    #[test]
    fn a_chunk_inside_one_unit_is_one_piece() {
        let p: Vec<_> = pieces(UNIT + 8192, 4096, UNIT).collect();
        assert_eq!(
            p,
            vec![Piece {
                unit: 1,
                offset_in_unit: 8192,
                offset_in_chunk: 0,
                len: 4096
            }]
        );
    }

    #[test]
    fn a_chunk_across_units_is_cut() {
        let p: Vec<_> = pieces(UNIT - 4096, 2 * UNIT + 8192, UNIT).collect();
        assert_eq!(p.len(), 4);
        assert_eq!((p[0].unit, p[0].len), (0, 4096));
        assert_eq!((p[1].unit, p[1].offset_in_unit, p[1].len), (1, 0, UNIT));
        assert_eq!(
            (p[3].unit, p[3].len, p[3].offset_in_chunk),
            (3, 4096, 2 * UNIT + 4096)
        );
    }

    #[test]
    fn orders_parse() {
        for order in [Order::Seq, Order::Shuffled, Order::Preempted] {
            assert_eq!(order.to_string().parse(), Ok(order));
        }
        assert!("random".parse::<Order>().is_err());
    }

    #[test]
    fn bad_chunk_sizes() {
        assert_eq!(unit_chunks(0, UNIT, 0), Err(ChunkError::ChunkSize(0)));
        assert_eq!(unit_chunks(0, UNIT, 1000), Err(ChunkError::ChunkSize(1000)));
    }

    #[test]
    fn urgent_pages_are_distinct_and_inside_their_unit() {
        let urgent = urgent_pages(3, UNIT, 8, 1);
        for (u, pages) in urgent.iter().enumerate() {
            assert_eq!(pages.len(), 8);
            assert!(pages.windows(2).all(|w| w[0] < w[1]));
            assert!(pages.iter().all(|&p| p / 512 == u as u64));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn pieces_tile_the_chunk(offset_pages in 0u64..4096, len_pages in 1u64..2048, unit_shift in 12u32..24) {
            let unit = 1u64 << unit_shift;
            let (offset, len) = (offset_pages * PAGE, len_pages * PAGE);
            let mut next_in_chunk = 0;
            for piece in pieces(offset, len, unit) {
                prop_assert_eq!(piece.offset_in_chunk, next_in_chunk);
                prop_assert_eq!(piece.unit * unit + piece.offset_in_unit, offset + piece.offset_in_chunk);
                prop_assert!(piece.len > 0 && piece.offset_in_unit + piece.len <= unit);
                next_in_chunk += piece.len;
            }
            prop_assert_eq!(next_in_chunk, len);
        }

        #[test]
        fn plans_cover_every_byte_once(units in 1u64..6, chunk_pages in 1u64..200, window in 1usize..4, seed: u64, order_i in 0usize..3) {
            let order = [Order::Seq, Order::Shuffled, Order::Preempted][order_i];
            let chunks = plan(units, UNIT, chunk_pages * PAGE, order, window, seed).expect("valid");
            let mut covered = vec![0u8; usize_from(units * UNIT / PAGE)];
            for c in &chunks {
                for p in c.offset / PAGE..(c.offset + c.len) / PAGE {
                    covered[usize_from(p)] += 1;
                }
            }
            prop_assert!(covered.iter().all(|&n| n == 1));
            if order == Order::Seq {
                prop_assert!(chunks.windows(2).all(|w| w[0].offset < w[1].offset));
            }
        }
    }
}
