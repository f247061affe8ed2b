//! Page bitmaps shared between threads: which pages were received, requested or sent.
//!
//! One bit per page in `AtomicU64` words. [`PageBitmap::set`] is a `fetch_or` that tells the
//! caller whether it was the one that set the bit, which is how "one request per page, however
//! many threads fault on it" and "a page is claimed by exactly one sender" are decided without
//! a lock.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// A fixed-size, thread-safe bitmap with a running count of set bits.
#[derive(Debug)]
pub struct PageBitmap {
    words: Box<[AtomicU64]>,
    len: usize,
    ones: AtomicUsize,
}

impl PageBitmap {
    /// A bitmap of `len` clear bits.
    pub fn new(len: usize) -> Self {
        let words = (0..len.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
        PageBitmap {
            words,
            len,
            ones: AtomicUsize::new(0),
        }
    }

    /// Number of bits.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the bitmap has no bits at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn locate(&self, index: usize) -> (&AtomicU64, u64) {
        assert!(index < self.len, "bit {index} out of {}", self.len);
        (&self.words[index / 64], 1u64 << (index % 64))
    }

    /// Whether bit `index` is set.
    pub fn get(&self, index: usize) -> bool {
        let (word, mask) = self.locate(index);
        word.load(Ordering::Acquire) & mask != 0
    }

    /// Sets bit `index`; returns true if this call changed it (it was clear).
    pub fn set(&self, index: usize) -> bool {
        let (word, mask) = self.locate(index);
        let changed = word.fetch_or(mask, Ordering::AcqRel) & mask == 0;
        if changed {
            self.ones.fetch_add(1, Ordering::AcqRel);
        }
        changed
    }

    /// Clears bit `index`; returns true if this call changed it (it was set).
    pub fn clear(&self, index: usize) -> bool {
        let (word, mask) = self.locate(index);
        let changed = word.fetch_and(!mask, Ordering::AcqRel) & mask != 0;
        if changed {
            self.ones.fetch_sub(1, Ordering::AcqRel);
        }
        changed
    }

    /// Sets `start..end`; returns how many bits this call changed.
    pub fn set_range(&self, start: usize, end: usize) -> usize {
        (start..end).filter(|&i| self.set(i)).count()
    }

    /// Clears `start..end`; returns how many bits this call changed.
    pub fn clear_range(&self, start: usize, end: usize) -> usize {
        (start..end).filter(|&i| self.clear(i)).count()
    }

    /// Number of set bits.
    pub fn count(&self) -> usize {
        self.ones.load(Ordering::Acquire)
    }

    /// True when every bit is set.
    pub fn is_full(&self) -> bool {
        self.count() == self.len
    }

    /// The first clear bit at or after `from`, if any.
    pub fn next_clear(&self, from: usize) -> Option<usize> {
        let mut index = from;
        while index < self.len {
            let word = self.words[index / 64].load(Ordering::Acquire);
            let clear = !word >> (index % 64);
            if clear == 0 {
                index = (index / 64 + 1) * 64;
                continue;
            }
            let found = index + clear.trailing_zeros() as usize;
            return (found < self.len).then_some(found);
        }
        None
    }

    /// A snapshot of the words (bit `i` is bit `i % 64` of word `i / 64`), for the wire.
    pub fn to_words(&self) -> Vec<u64> {
        self.words
            .iter()
            .map(|w| w.load(Ordering::Acquire))
            .collect()
    }

    /// Sets every bit that is set in `words` (same layout as [`PageBitmap::to_words`]).
    pub fn merge_words(&self, first_word: usize, words: &[u64]) {
        for (i, &bits) in words.iter().enumerate() {
            let base = (first_word + i) * 64;
            for b in 0..64 {
                if bits & (1 << b) != 0 && base + b < self.len {
                    self.set(base + b);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn set_reports_first_setter() {
        let bitmap = PageBitmap::new(130);
        assert!(bitmap.set(129));
        assert!(!bitmap.set(129));
        assert!(bitmap.get(129));
        assert_eq!(bitmap.count(), 1);
        assert!(bitmap.clear(129));
        assert!(!bitmap.clear(129));
        assert_eq!(bitmap.count(), 0);
    }

    #[test]
    fn next_clear_skips_full_words() {
        let bitmap = PageBitmap::new(200);
        bitmap.set_range(0, 150);
        assert_eq!(bitmap.next_clear(0), Some(150));
        bitmap.set_range(150, 200);
        assert_eq!(bitmap.next_clear(0), None);
        assert!(bitmap.is_full());
    }

    #[test]
    fn concurrent_setters_count_once() {
        let bitmap = std::sync::Arc::new(PageBitmap::new(4096));
        let winners: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..4096).filter(|&i| bitmap.set(i)).count()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
        });
        assert_eq!(winners, 4096);
        assert_eq!(bitmap.count(), 4096);
    }

    proptest! {
        #[test]
        fn matches_a_vec_of_bools(len in 1usize..500, ops in prop::collection::vec((any::<bool>(), 0usize..500), 0..200)) {
            let bitmap = PageBitmap::new(len);
            let mut model = vec![false; len];
            for (set, i) in ops {
                let i = i % len;
                if set {
                    prop_assert_eq!(bitmap.set(i), !model[i]);
                    model[i] = true;
                } else {
                    prop_assert_eq!(bitmap.clear(i), model[i]);
                    model[i] = false;
                }
            }
            prop_assert_eq!(bitmap.count(), model.iter().filter(|&&b| b).count());
            for from in 0..len {
                prop_assert_eq!(bitmap.next_clear(from), (from..len).find(|&i| !model[i]));
            }
            let copy = PageBitmap::new(len);
            copy.merge_words(0, &bitmap.to_words());
            for (i, &bit) in model.iter().enumerate() {
                prop_assert_eq!(copy.get(i), bit);
            }
        }
    }
}
