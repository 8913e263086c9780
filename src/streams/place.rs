//! Placement: the internal partition of a key hash.
//!
//! A record or evidence for key hash `k` goes to partition `shard_of(k, P)` of an internal
//! topic of `P` partitions, produced to that partition explicitly (never through Kafka's
//! key partitioner, whose murmur2 would scatter a key group over several partitions), with
//! the 8-byte key hash as the message key. So an internal partition holds a fixed, contiguous
//! range of the engine's 256 key groups ([`key_groups`]), the same range a shard of `P`
//! holds in one process, and a checkpoint section splits by partition exactly as it splits
//! by shard.

use std::ops::Range;

use crate::engine::{key_group, shard_of, KEY_GROUPS};
use crate::exchange::Dest;

/// The internal partition (of `partitions`) that owns key hash `key`.
#[inline]
pub fn partition_of(key: u64, partitions: u32) -> i32 {
    // shard_of is below `partitions`, which validation keeps at most 256: fits an i32.
    shard_of(key, partitions as usize) as i32
}

/// The message key of an internal record for key hash `key`: its 8 bytes, big-endian, so a
/// tool reading the topic sees the same hex as the engine's logs of key groups.
#[inline]
pub fn key_bytes(key: u64) -> [u8; 8] {
    key.to_be_bytes()
}

/// The key hash back from a message key; `None` if it is not 8 bytes.
pub fn key_of(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

/// The key groups partition `p` of `partitions` owns: the `g` with
/// `g * partitions / 256 == p`, a contiguous range (empty when `partitions` > 256).
pub fn key_groups(p: u32, partitions: u32) -> Range<usize> {
    let (p, n) = (p as usize, partitions as usize);
    (p * KEY_GROUPS).div_ceil(n)..((p + 1) * KEY_GROUPS).div_ceil(n)
}

/// Where a piece of evidence goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// One partition: the owner of the destination key.
    One(i32),
    /// A broadcast: once to every partition.
    Every,
}

impl Target {
    /// The partitions of a topic of `partitions` this target names.
    pub fn partitions(self, partitions: u32) -> Range<i32> {
        match self {
            Target::One(p) => p..p + 1,
            // Validation keeps `partitions` at most 256.
            Target::Every => 0..partitions as i32,
        }
    }
}

/// The target of evidence for `dest`, and the key hash its messages carry (0 for a
/// broadcast, which has no one key).
pub fn target(dest: Dest, partitions: u32) -> (Target, u64) {
    match dest {
        Dest::Number(k) | Dest::Handset(k) => (Target::One(partition_of(k, partitions)), k),
        Dest::Every => (Target::Every, 0),
    }
}

/// Whether `key` belongs to partition `p` of `partitions`, by its key group: what a stage
/// restoring a checkpoint section keeps.
pub fn owns(p: u32, partitions: u32, key: u64) -> bool {
    key_groups(p, partitions).contains(&key_group(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One key hash in each of the 256 key groups.
    fn key_per_group() -> Vec<u64> {
        let mut keys = vec![None; KEY_GROUPS];
        let mut x = 0x243F_6A88_85A3_08D3u64;
        while keys.iter().any(Option::is_none) {
            // A cheap bijective mix walks the 64-bit space well.
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let g = key_group(x);
            keys[g].get_or_insert(x);
        }
        keys.into_iter().flatten().collect()
    }

    #[test]
    fn placement_is_the_engines_shard_of_for_every_key_group_and_1_to_64_partitions() {
        let keys = key_per_group();
        assert_eq!(keys.len(), KEY_GROUPS);
        for n in 1..=64u32 {
            let mut seen = vec![0usize; n as usize];
            for &k in &keys {
                let p = partition_of(k, n);
                assert_eq!(
                    p as usize,
                    shard_of(k, n as usize),
                    "key group {}",
                    key_group(k)
                );
                // The range of groups a partition owns says the same, from the other side.
                assert!(
                    key_groups(p as u32, n).contains(&key_group(k)),
                    "P={n} p={p}"
                );
                assert!(owns(p as u32, n, k));
                assert_eq!(target(Dest::Number(k), n), (Target::One(p), k));
                assert_eq!(target(Dest::Handset(k), n), (Target::One(p), k));
                seen[p as usize] += 1;
            }
            // Every partition owns at least one group, and a divisor of 256 gives equal
            // shares.
            assert!(seen.iter().all(|&c| c > 0), "P={n}: {seen:?}");
            if KEY_GROUPS % n as usize == 0 {
                assert!(seen.iter().all(|&c| c == KEY_GROUPS / n as usize));
            }
            let total: usize = (0..n).map(|p| key_groups(p, n).len()).sum();
            assert_eq!(total, KEY_GROUPS, "P={n}: the ranges tile the groups");
        }
    }

    #[test]
    fn a_broadcast_goes_to_every_partition_and_keys_round_trip() {
        assert_eq!(target(Dest::Every, 6), (Target::Every, 0));
        assert_eq!(
            Target::Every.partitions(6).collect::<Vec<_>>(),
            (0..6).collect::<Vec<_>>()
        );
        assert_eq!(Target::One(4).partitions(6).collect::<Vec<_>>(), vec![4]);
        for k in [0, 1, u64::MAX, 0x0123_4567_89AB_CDEF] {
            assert_eq!(key_of(&key_bytes(k)), Some(k));
        }
        assert_eq!(key_bytes(0x0102_0304_0506_0708), [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(key_of(b"short"), None);
    }
}
