//! Sets of stream sequences as sparse bitmaps: one bit per sequence, in blocks of 4096
//! consecutive sequences, so the millions of sequences pending or recently archived cost about a
//! bit each where a `HashSet<u64>` costs 16 bytes or more.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

const BLOCK_BITS: u64 = 4096;
const WORDS: usize = (BLOCK_BITS / 64) as usize;

type Block = Box<[u64; WORDS]>;

/// A set of stream sequences.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SeqSet {
    blocks: BTreeMap<u64, Block>,
    len: u64,
}

fn locate(seq: u64) -> (u64, usize, u64) {
    let offset = seq % BLOCK_BITS;
    (seq / BLOCK_BITS, (offset / 64) as usize, 1 << (offset % 64))
}

impl SeqSet {
    /// Adds `seq`; false when it was already there.
    pub fn insert(&mut self, seq: u64) -> bool {
        let (block, word, bit) = locate(seq);
        let words = self
            .blocks
            .entry(block)
            .or_insert_with(|| Box::new([0; WORDS]));
        let added = words[word] & bit == 0;
        words[word] |= bit;
        self.len += u64::from(added);
        added
    }

    pub fn contains(&self, seq: u64) -> bool {
        let (block, word, bit) = locate(seq);
        self.blocks.get(&block).is_some_and(|w| w[word] & bit != 0)
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds every sequence of `other`.
    pub fn union_with(&mut self, other: &SeqSet) {
        for (block, theirs) in &other.blocks {
            let ours = self
                .blocks
                .entry(*block)
                .or_insert_with(|| Box::new([0; WORDS]));
            for (mine, their) in ours.iter_mut().zip(theirs.iter()) {
                self.len += u64::from((their & !*mine).count_ones());
                *mine |= their;
            }
        }
    }

    /// Removes every sequence of `other`.
    pub fn subtract(&mut self, other: &SeqSet) {
        for (block, theirs) in &other.blocks {
            let Some(ours) = self.blocks.get_mut(block) else {
                continue;
            };
            for (mine, their) in ours.iter_mut().zip(theirs.iter()) {
                self.len -= u64::from((*mine & their).count_ones());
                *mine &= !their;
            }
            if ours.iter().all(|w| *w == 0) {
                self.blocks.remove(block);
            }
        }
    }

    /// The sequences in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.blocks.iter().flat_map(|(block, words)| {
            words.iter().enumerate().flat_map(move |(index, word)| {
                let base = block * BLOCK_BITS + index as u64 * 64;
                let mut bits = *word;
                std::iter::from_fn(move || {
                    (bits != 0).then(|| {
                        let at = bits.trailing_zeros();
                        bits &= bits - 1;
                        base + u64::from(at)
                    })
                })
            })
        })
    }

    pub fn first(&self) -> Option<u64> {
        self.iter().next()
    }

    pub fn last(&self) -> Option<u64> {
        let (block, words) = self.blocks.iter().next_back()?;
        let (index, word) = words.iter().enumerate().rev().find(|(_, w)| **w != 0)?;
        Some(block * BLOCK_BITS + index as u64 * 64 + 63 - u64::from(word.leading_zeros()))
    }

    /// 16 hex digits naming exactly this set of sequences (a SHA-256 prefix): two objects with
    /// the same first and last sequence but different events get different keys.
    pub fn digest(&self) -> String {
        let mut hasher = Sha256::new();
        for seq in self.iter() {
            hasher.update(seq.to_be_bytes());
        }
        hex::encode(&hasher.finalize()[..8])
    }
}

impl FromIterator<u64> for SeqSet {
    fn from_iter<I: IntoIterator<Item = u64>>(iter: I) -> Self {
        let mut set = Self::default();
        for seq in iter {
            set.insert(seq);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_contains_and_order() {
        let mut set: SeqSet = [9000, 3, 4095, 4096, 1 << 40].into_iter().collect();
        assert!(!set.insert(3));
        assert_eq!(set.len(), 5);
        assert!(set.contains(4096) && !set.contains(4097));
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            [3, 4095, 4096, 9000, 1 << 40]
        );
        assert_eq!((set.first(), set.last()), (Some(3), Some(1 << 40)));
    }

    #[test]
    fn union_and_subtract_keep_the_count() {
        let mut a: SeqSet = (1..=100).collect();
        let b: SeqSet = (50..=5000).collect();
        a.union_with(&b);
        assert_eq!(a.len(), 5000);
        a.subtract(&b);
        assert_eq!(a.len(), 49);
        assert_eq!(a.last(), Some(49));
        a.subtract(&(1..=49).collect());
        assert!(
            a.is_empty() && a.blocks.is_empty(),
            "empty blocks are dropped"
        );
    }

    #[test]
    fn same_ends_different_events_different_digest() {
        let full: SeqSet = (1..=10).collect();
        let ends: SeqSet = [1, 10].into_iter().collect();
        assert_eq!((full.first(), full.last()), (ends.first(), ends.last()));
        assert_ne!(full.digest(), ends.digest());
        assert_eq!(full.digest(), (1..=10).rev().collect::<SeqSet>().digest());
    }
}
