//! Which 4 KiB pages of one unit are gathered in its staging page, and when the unit is
//! complete.
//!
//! A unit is complete when each of its pages is either gathered here or already present in
//! the region (its bit in the client's `received` bitmap is set: an urgent 4 KiB page that a
//! fault placed inside a THP, say). Checking all pages after every chunk would cost
//! O(pages²) for a 1 GiB page (262 144 pages); instead a cursor walks forward over pages known
//! to be settled. Both facts only ever become true (pages are gathered, bits are set), so the
//! cursor never has to move back, and the whole check costs O(pages) over the unit's life.

/// The pages of one unit held in its staging page.
#[derive(Debug, Clone)]
pub(crate) struct Gathered {
    words: Vec<u64>,
    pages: usize,
    count: usize,
    /// Every page below the cursor is gathered or present.
    cursor: usize,
}

impl Gathered {
    /// Nothing gathered yet, out of `pages`.
    pub(crate) fn new(pages: usize) -> Self {
        Gathered {
            words: vec![0; pages.div_ceil(64)],
            pages,
            count: 0,
            cursor: 0,
        }
    }

    /// Every page gathered (a chunk placed directly, without staging).
    pub(crate) fn full(pages: usize) -> Self {
        let mut all = Self::new(pages);
        for i in 0..pages {
            all.insert(i);
        }
        all
    }

    /// Number of pages of the unit.
    pub(crate) fn pages(&self) -> usize {
        self.pages
    }

    /// Pages gathered.
    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// Whether page `i` is gathered.
    pub(crate) fn has(&self, i: usize) -> bool {
        self.words[i / 64] & (1 << (i % 64)) != 0
    }

    /// Marks page `i` gathered; true if it was not.
    pub(crate) fn insert(&mut self, i: usize) -> bool {
        let mask = 1 << (i % 64);
        let was = self.words[i / 64] & mask != 0;
        self.words[i / 64] |= mask;
        if !was {
            self.count += 1;
        }
        !was
    }

    /// Forgets page `i` (it has been placed or found present, and is accounted for).
    pub(crate) fn remove(&mut self, i: usize) {
        let mask = 1 << (i % 64);
        if self.words[i / 64] & mask != 0 {
            self.words[i / 64] &= !mask;
            self.count -= 1;
        }
    }

    /// Advances the completion cursor; `present(i)` tells whether page `i` is already in the
    /// region. True when every page is gathered or present.
    pub(crate) fn complete(&mut self, present: impl Fn(usize) -> bool) -> bool {
        while self.cursor < self.pages && (self.has(self.cursor) || present(self.cursor)) {
            self.cursor += 1;
        }
        self.cursor == self.pages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_needs_every_page_gathered_or_present() {
        let mut g = Gathered::new(130);
        let present = |i: usize| i == 3 || i == 129;
        for i in 0..129 {
            if i != 3 {
                assert!(!g.complete(present));
                assert!(g.insert(i));
            }
        }
        assert!(!g.insert(0), "a second insert changes nothing");
        assert_eq!(g.count(), 128);
        assert!(g.complete(present));
    }

    #[test]
    fn full_and_remove() {
        let mut g = Gathered::full(512);
        assert_eq!(g.count(), 512);
        g.remove(7);
        g.remove(7);
        assert_eq!(g.count(), 511);
        assert!(!g.has(7) && g.has(8));
        assert_eq!(g.pages(), 512);
    }
}
