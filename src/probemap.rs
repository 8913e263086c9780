//! A map from id hashes to small `Copy` values whose slot for a key can be asked for
//! before the key is looked up ([`ProbeMap::prefetch`]).
//!
//! `std`'s table keeps its control bytes apart from its slots, and where a key's slot is
//! cannot be known without reading them: a warm-up ([`crate::detect::Detector::warm`])
//! that wants the slot in cache before the record is handled has to look the key up, and
//! that load holds the core's retirement until the line arrives. Here the slots are one
//! array, in open addressing with linear probing (keys inline, `0` marking a free slot), so
//! a key's first slot is an address computed from the key alone: a warm-up prefetches it
//! and the core goes on with the other tables' misses and the other detectors' work.
//!
//! The slot comes from the key mixed in full ([`crate::ids::mix`]), not from the top bits of one
//! multiplication: those are the key's group ([`crate::engine::key_group`]), which names
//! its shard and its partition, so every key of a shard would share them and crowd into
//! one part of the array.
//!
//! Used for `runner_movement`'s handsets table, probed for nearly every record; its
//! values are 16 bytes, so a slot is 24 (`std`'s is 24 and a control byte). And for the
//! cell map's lookup ([`crate::cells::CellMap::resolve`], every record with a map loaded):
//! there the gain is a probe without `std`'s control bytes. The release build still calls
//! that `get` out of line from `Engine::ingest_hashed` (four call sites); forcing it inline
//! (`#[inline(always)]`) measured no faster (`docs/performance-log.md`, "where the
//! detector's tenth goes").

use std::mem::size_of;

/// At most this share of the slots is taken (3/4): linear probing's probes lengthen
/// quickly beyond it.
fn max_len(slots: usize) -> usize {
    slots / 4 * 3
}

/// The map. Key `0` (the free-slot mark) is held beside the slots, so every `u64` is a
/// key.
#[derive(Clone, Debug)]
pub struct ProbeMap<V> {
    /// A power of two in length (or empty); key 0 = free.
    slots: Vec<(u64, V)>,
    /// Key 0's value.
    zero: Option<V>,
    /// Keys held, key 0 included.
    len: usize,
    /// 64 less log2 of the slot count: a key's first slot is `ids::mix(key) >> shift`.
    shift: u32,
}

impl<V> Default for ProbeMap<V> {
    fn default() -> Self {
        ProbeMap {
            slots: Vec::new(),
            zero: None,
            len: 0,
            shift: 64,
        }
    }
}

impl<V: Copy + Default> ProbeMap<V> {
    /// Room for `n` keys without growing.
    pub fn with_capacity(n: usize) -> Self {
        let mut m = ProbeMap::default();
        m.resize(Self::slots_for(n));
        m
    }

    /// The slot count that holds `n` keys within the load limit (0 for none).
    fn slots_for(n: usize) -> usize {
        match n {
            0 => 0,
            n => (n * 4).div_ceil(3).next_power_of_two().max(8),
        }
    }

    #[inline]
    fn mask(&self) -> usize {
        self.slots.len().wrapping_sub(1)
    }

    #[inline]
    fn home(&self, k: u64) -> usize {
        // `shift` is 64 only while there are no slots, and no caller gets here then.
        (crate::ids::mix(k) >> self.shift) as usize
    }

    /// Where `k`'s probe starts (and, at most loads, where it ends).
    #[inline]
    pub fn prefetch(&self, k: u64) {
        if !self.slots.is_empty() {
            let p = self.slots.as_ptr().wrapping_add(self.home(k));
            crate::ids::prefetch(p);
            // A slot is 24 bytes: it may end in the next line, as may the probe.
            crate::ids::prefetch(p.cast::<u8>().wrapping_add(64));
        }
    }

    /// The index of `k`'s slot (`k` ≠ 0), if held.
    #[inline]
    fn find(&self, k: u64) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.mask();
        let mut i = self.home(k);
        loop {
            match self.slots[i].0 {
                x if x == k => return Some(i),
                0 => return None,
                _ => i = (i + 1) & mask,
            }
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keys it holds without growing.
    pub fn capacity(&self) -> usize {
        max_len(self.slots.len())
    }

    /// Bytes it has allocated.
    pub fn bytes(&self) -> usize {
        self.slots.len() * size_of::<(u64, V)>()
    }

    #[inline]
    pub fn get(&self, k: &u64) -> Option<&V> {
        match *k {
            0 => self.zero.as_ref(),
            k => self.find(k).map(|i| &self.slots[i].1),
        }
    }

    #[inline]
    pub fn get_mut(&mut self, k: &u64) -> Option<&mut V> {
        match *k {
            0 => self.zero.as_mut(),
            k => self.find(k).map(|i| &mut self.slots[i].1),
        }
    }

    pub fn contains_key(&self, k: &u64) -> bool {
        self.get(k).is_some()
    }

    /// Sets `k`'s value; the value it replaced, if any.
    pub fn insert(&mut self, k: u64, v: V) -> Option<V> {
        if k == 0 {
            let old = self.zero.replace(v);
            self.len += usize::from(old.is_none());
            return old;
        }
        if let Some(i) = self.find(k) {
            return Some(std::mem::replace(&mut self.slots[i].1, v));
        }
        // Keys in slots, not counting key 0, within the limit after this one.
        let in_slots = self.len - usize::from(self.zero.is_some());
        if in_slots + 1 > max_len(self.slots.len()) {
            self.resize(Self::slots_for(in_slots + 1).max(2 * self.slots.len()));
        }
        self.place(k, v);
        self.len += 1;
        None
    }

    /// Puts `k` (not held, ≠ 0) in the first free slot of its probe.
    fn place(&mut self, k: u64, v: V) {
        let mask = self.mask();
        let mut i = self.home(k);
        while self.slots[i].0 != 0 {
            i = (i + 1) & mask;
        }
        self.slots[i] = (k, v);
    }

    /// Takes `k` out; its value, if held.
    pub fn remove(&mut self, k: &u64) -> Option<V> {
        if *k == 0 {
            let old = self.zero.take();
            self.len -= usize::from(old.is_some());
            return old;
        }
        let mut i = self.find(*k)?;
        let v = self.slots[i].1;
        self.len -= 1;
        // Backward shift: a later key of the run whose probe passes the hole moves into it,
        // so no probe ever stops early at a free slot.
        let mask = self.mask();
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let kj = self.slots[j].0;
            if kj == 0 {
                break;
            }
            let h = self.home(kj);
            // The hole at `i` is on `kj`'s probe (from `h` to `j`, wrapping) unless `h`
            // lies after `i`, up to `j`.
            if (j.wrapping_sub(h) & mask) >= (j.wrapping_sub(i) & mask) {
                self.slots[i] = self.slots[j];
                i = j;
            }
        }
        self.slots[i] = (0, V::default());
        Some(v)
    }

    /// Keeps the keys for which `f` says so.
    pub fn retain(&mut self, mut f: impl FnMut(&u64, &mut V) -> bool) {
        if let Some(v) = self.zero.as_mut() {
            if !f(&0, v) {
                self.zero = None;
                self.len -= 1;
            }
        }
        let mut dropped = false;
        for (k, v) in &mut self.slots {
            if *k != 0 && !f(k, v) {
                *k = 0;
                self.len -= 1;
                dropped = true;
            }
        }
        if dropped {
            // Holes may cut probes short: the keys left are placed again.
            self.resize(self.slots.len());
        }
    }

    /// As few slots as hold the keys within the load limit.
    pub fn shrink_to_fit(&mut self) {
        let n = Self::slots_for(self.len - usize::from(self.zero.is_some()));
        if n < self.slots.len() {
            self.resize(n);
        }
    }

    /// Places every key in slots of `n` (a power of two holding them, or 0 if none).
    fn resize(&mut self, n: usize) {
        let old = std::mem::take(&mut self.slots);
        self.slots = vec![(0, V::default()); n];
        self.shift = match n {
            0 => 64,
            n => 64 - n.trailing_zeros(),
        };
        for (k, v) in old {
            if k != 0 {
                self.place(k, v);
            }
        }
    }

    /// Every key and its value (slot order, then key 0), its length known (a checkpoint
    /// writes the map with its length first).
    pub fn iter(&self) -> Iter<'_, V> {
        Iter {
            slots: self.slots.iter(),
            zero: self.zero.as_ref(),
            left: self.len,
        }
    }

    pub fn keys(&self) -> impl Iterator<Item = &u64> + '_ {
        self.iter().map(|(k, _)| k)
    }

    /// Deals the keys out to `parts` maps by `owner(key)`; `self` is left empty.
    pub fn split(&mut self, parts: usize, owner: &dyn Fn(u64) -> usize) -> Vec<ProbeMap<V>> {
        let parts = parts.max(1);
        let mut out: Vec<_> = (0..parts)
            .map(|_| ProbeMap::with_capacity(self.len / parts))
            .collect();
        for (&k, &v) in self.iter() {
            out[owner(k).min(parts - 1)].insert(k, v);
        }
        *self = ProbeMap::default();
        out
    }

    /// Takes in every key of `from` (whose keys are not held here).
    pub fn absorb(&mut self, from: ProbeMap<V>) {
        if self.is_empty() {
            *self = from;
        } else {
            for (&k, &v) in from.iter() {
                self.insert(k, v);
            }
        }
    }
}

/// [`ProbeMap::iter`].
pub struct Iter<'a, V> {
    slots: std::slice::Iter<'a, (u64, V)>,
    zero: Option<&'a V>,
    left: usize,
}

impl<'a, V> Iterator for Iter<'a, V> {
    type Item = (&'a u64, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        let next = match self.slots.find(|(k, _)| *k != 0) {
            Some((k, v)) => Some((k, v)),
            None => self.zero.take().map(|v| (&0, v)),
        };
        self.left -= usize::from(next.is_some());
        next
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl<V> ExactSizeIterator for Iter<'_, V> {}

impl<V: Copy + Default> std::ops::Index<&u64> for ProbeMap<V> {
    type Output = V;

    fn index(&self, k: &u64) -> &V {
        self.get(k).expect("a key the map holds")
    }
}

impl<V: Copy + Default> FromIterator<(u64, V)> for ProbeMap<V> {
    fn from_iter<I: IntoIterator<Item = (u64, V)>>(it: I) -> Self {
        let mut m = ProbeMap::default();
        for (k, v) in it {
            m.insert(k, v);
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::collections::HashMap;

    fn same(m: &ProbeMap<u32>, want: &HashMap<u64, u32>) {
        assert_eq!(m.len(), want.len());
        let mut got: Vec<(u64, u32)> = m.iter().map(|(&k, &v)| (k, v)).collect();
        got.sort_unstable();
        let mut w: Vec<(u64, u32)> = want.iter().map(|(&k, &v)| (k, v)).collect();
        w.sort_unstable();
        assert_eq!(got, w);
        for (k, v) in want {
            assert_eq!(m.get(k), Some(v), "key {k}");
        }
    }

    /// Random inserts, removes, retains and shrinks, against `std`'s map. Keys from a small
    /// range with 0 among them and a low-entropy set, so runs collide, wrap the array's end
    /// and have holes shifted back into them.
    #[test]
    fn it_holds_what_a_hash_map_holds_through_any_mix_of_changes() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut m: ProbeMap<u32> = ProbeMap::default();
        let mut want: HashMap<u64, u32> = HashMap::new();
        for step in 0..60_000u32 {
            let k: u64 = match rng.gen_range(0..4) {
                0 => rng.gen_range(0..64),
                1 => rng.gen_range(0..8) << 61,
                _ => rng.gen_range(0..3_000),
            };
            match rng.gen_range(0..100) {
                0..=54 => assert_eq!(m.insert(k, step), want.insert(k, step)),
                55..=89 => assert_eq!(m.remove(&k), want.remove(&k)),
                90..=97 => {
                    assert_eq!(m.get(&k), want.get(&k));
                    if let (Some(a), Some(b)) = (m.get_mut(&k), want.get_mut(&k)) {
                        *a += 1;
                        *b += 1;
                    }
                }
                98 => {
                    let cut = rng.gen_range(0..60_000);
                    m.retain(|_, v| *v >= cut);
                    want.retain(|_, v| *v >= cut);
                }
                _ => m.shrink_to_fit(),
            }
            if step % 997 == 0 {
                same(&m, &want);
            }
        }
        same(&m, &want);
        assert!(m.len() <= m.capacity());
        let mut it = m.iter();
        for left in (0..=m.len()).rev() {
            assert_eq!(it.len(), left);
            assert_eq!(it.next().is_some(), left > 0);
        }
    }

    #[test]
    fn a_key_is_found_from_the_slot_prefetch_asks_for() {
        let m: ProbeMap<u32> = (1..=1_000u64).map(|k| (k * 7919, 1)).collect();
        let mask = m.slots.len() - 1;
        for k in (1..=1_000u64).map(|k| k * 7919) {
            let i = m.find(k).expect("held");
            // The probe from the prefetched slot reaches the key without a free slot.
            let mut j = m.home(k);
            while j != i {
                assert_ne!(m.slots[j].0, 0);
                j = (j + 1) & mask;
            }
        }
    }

    /// Keys of one key group (as one shard or one partition holds) spread over the whole
    /// array: the mean distance from a key's first slot to its slot stays short. Taken
    /// from the top bits of `key × 2^64/φ`, they all started in the first 256th of it.
    #[test]
    fn the_keys_of_one_key_group_spread_over_the_whole_array() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let mut m: ProbeMap<u32> = ProbeMap::default();
        while m.len() < 20_000 {
            let k: u64 = rng.gen();
            if crate::engine::key_group(k) == 3 {
                m.insert(k, 0);
            }
        }
        let mask = m.slots.len() - 1;
        let dist: usize = (m.keys())
            .map(|&k| m.find(k).expect("held").wrapping_sub(m.home(k)) & mask)
            .sum();
        let mean = dist as f64 / m.len() as f64;
        assert!(mean < 2.0, "mean distance {mean} over {} keys", m.len());
    }

    #[test]
    fn split_and_absorb_deal_out_and_gather_every_key() {
        let mut m: ProbeMap<u32> = (0..500u64).map(|k| (k, k as u32)).collect();
        let whole: HashMap<u64, u32> = m.iter().map(|(&k, &v)| (k, v)).collect();
        let parts = m.split(3, &|k| (k % 3) as usize);
        assert!(m.is_empty());
        for (i, p) in parts.iter().enumerate() {
            assert!(p.keys().all(|k| (k % 3) as usize == i));
        }
        let mut back = ProbeMap::default();
        for p in parts {
            back.absorb(p);
        }
        same(&back, &whole);
    }
}
