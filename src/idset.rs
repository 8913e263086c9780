//! A set of identity hashes whose slot for an id is known before it is probed, so a caller
//! can ask for that cache line ahead of time ([`IdSet::prefetch`]).
//!
//! The dedup set holds every event id of the retention (hundreds of thousands), far larger
//! than the caches, and is probed once per record on the ingest, the one thread every
//! record goes through. `std`'s `HashSet` probes a control byte and then the slot: two
//! misses one after the other, and no way to name the slot before probing. Here the ids,
//! already well mixed (xxh3), index the table directly: linear probing in a power-of-two
//! table kept at most 5/8 full, deletion by backward shift (no tombstones), so an id sits at
//! or just after `id & mask`, and a prefetch of that line issued a few records ahead turns
//! the probe into a hit.

use crate::ids;

/// An empty slot. The id 0 (one in 2^64) is kept aside in `zero`.
const EMPTY: u64 = 0;
const MIN_SLOTS: usize = 16;

#[derive(Clone, Debug)]
pub struct IdSet {
    slots: Box<[u64]>,
    len: usize,
    zero: bool,
}

impl Default for IdSet {
    fn default() -> Self {
        IdSet {
            slots: vec![EMPTY; MIN_SLOTS].into_boxed_slice(),
            len: 0,
            zero: false,
        }
    }
}

impl IdSet {
    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// Asks for the cache line of `id`'s home slot, without waiting for it.
    #[inline]
    pub fn prefetch(&self, id: u64) {
        ids::prefetch(&self.slots[id as usize & self.mask()]);
    }

    /// The slot holding `id`, or the empty slot that ends its probe.
    #[inline]
    fn find(&self, id: u64) -> (usize, bool) {
        let mask = self.mask();
        let mut i = id as usize & mask;
        loop {
            match self.slots[i] {
                x if x == id => return (i, true),
                EMPTY => return (i, false),
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// True if `id` was not in the set (it is now).
    #[inline]
    pub fn insert(&mut self, id: u64) -> bool {
        if id == EMPTY {
            return !std::mem::replace(&mut self.zero, true);
        }
        let (i, found) = self.find(id);
        if found {
            return false;
        }
        self.slots[i] = id;
        self.len += 1;
        if self.len * 8 > self.slots.len() * 5 {
            self.resize(self.slots.len() * 2);
        }
        true
    }

    #[cfg(test)]
    pub fn contains(&self, id: u64) -> bool {
        match id {
            EMPTY => self.zero,
            _ => self.find(id).1,
        }
    }

    /// True if `id` was in the set (it is not now).
    pub fn remove(&mut self, id: u64) -> bool {
        if id == EMPTY {
            return std::mem::replace(&mut self.zero, false);
        }
        let (mut hole, found) = self.find(id);
        if !found {
            return false;
        }
        self.len -= 1;
        // Backward shift: each later id of the run that may move into the hole (its home
        // is not cyclically within (hole, j]) does, and its slot becomes the hole.
        let mask = self.mask();
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let x = self.slots[j];
            if x == EMPTY {
                break;
            }
            let home = x as usize & mask;
            let stays = match hole <= j {
                true => hole < home && home <= j,
                false => hole < home || home <= j,
            };
            if !stays {
                self.slots[hole] = x;
                hole = j;
            }
        }
        self.slots[hole] = EMPTY;
        if self.slots.len() > MIN_SLOTS && self.len * 8 < self.slots.len() {
            self.resize(self.slots.len() / 2);
        }
        true
    }

    fn resize(&mut self, n: usize) {
        let old = std::mem::replace(&mut self.slots, vec![EMPTY; n].into_boxed_slice());
        for x in old.iter().copied().filter(|&x| x != EMPTY) {
            let (i, _) = self.find(x);
            self.slots[i] = x;
        }
    }

    pub fn len(&self) -> usize {
        self.len + usize::from(self.zero)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heap bytes of the table.
    pub fn bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<u64>()
    }
}

impl FromIterator<u64> for IdSet {
    fn from_iter<I: IntoIterator<Item = u64>>(iter: I) -> Self {
        let mut s = IdSet::default();
        for id in iter {
            s.insert(id);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// The same inserts and removes as a `HashSet`, with ids chosen to collide (few home
    /// slots, so runs wrap around the table's end and removals shift across it), and 0.
    #[test]
    fn agrees_with_a_hash_set_through_inserts_removals_growth_and_shrinking() {
        let mut rng = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let (mut mine, mut theirs) = (IdSet::default(), HashSet::new());
        for round in 0..40_000 {
            let r = next();
            // Ids crowded on a few home slots near the end of a 16- to 64-slot table,
            // or spread, or 0.
            let id = match r % 4 {
                0 => 0,
                1 => (r >> 8) | 0x0f,
                _ => (r >> 8) % 96,
            };
            let growing = (round / 5_000) % 2 == 0;
            if r % 3 == 0 || (growing && r % 3 == 1) {
                assert_eq!(mine.insert(id), theirs.insert(id), "insert {id}");
            } else {
                assert_eq!(mine.remove(id), theirs.remove(&id), "remove {id}");
            }
            assert_eq!(mine.len(), theirs.len());
            if round % 997 == 0 {
                for id in 0..100 {
                    assert_eq!(mine.contains(id), theirs.contains(&id), "contains {id}");
                }
                for &id in &theirs {
                    assert!(mine.contains(id));
                }
            }
        }
    }

    #[test]
    fn ids_on_one_home_slot_are_all_found_after_removals_between_them() {
        // Every id has home slot 15 of 16 (until the table grows): a run that wraps.
        let ids: Vec<u64> = (1..=9).map(|k| (k << 32) | 15).collect();
        let mut s: IdSet = ids.iter().copied().collect();
        assert_eq!(s.len(), 9);
        assert!(s.remove(ids[2]) && s.remove(ids[5]));
        assert!(!s.remove(ids[5]));
        for (k, &id) in ids.iter().enumerate() {
            assert_eq!(s.contains(id), k != 2 && k != 5, "{k}");
        }
        assert!(s.insert(0) && !s.insert(0) && s.contains(0));
        assert_eq!(s.len(), 8);
    }

    #[test]
    fn a_removal_at_the_tables_end_keeps_the_ids_whose_home_is_past_it() {
        // Homes 15, 0, 0 of 16 slots: they sit in slots 15, 0 and 1. With the first gone,
        // the two others are at or after their home and stay where they are.
        let (a, b, c) = ((1 << 32) | 15, 2 << 32, 3 << 32);
        let mut s: IdSet = [a, b, c].into_iter().collect();
        assert_eq!(s.slots.len(), 16);
        assert!(s.remove(a));
        assert!(s.contains(b) && s.contains(c) && !s.contains(a));
        assert_eq!((s.slots[0], s.slots[1], s.slots[15]), (b, c, EMPTY));
    }
}
