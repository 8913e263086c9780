//! Identity hashing and compact time.
//!
//! State never stores a pseudonym string it does not need for an alert: keys are 64-bit
//! hashes of pseudonyms, and per-key lists hold 32-bit fingerprints. At a few million keys
//! a 64-bit collision is a one-in-a-million event; a 32-bit collision inside one line's
//! list (hundreds of entries) miscounts by one with odds of about 1 in 10^5, far inside
//! every threshold's margin.

use crate::event::Millis;

/// Hash of a pseudonym, used as the key of per-line and per-handset state.
#[inline]
pub fn id(s: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(s.as_bytes())
}

/// A 32-bit fingerprint of an id, for entries inside one key's state.
#[inline]
pub fn fp(id: u64) -> u32 {
    (id ^ (id >> 32)) as u32
}

/// Event time in whole seconds since the epoch, as stored in state (u32 lasts until 2106).
#[inline]
pub fn secs(ms: Millis) -> u32 {
    (ms / 1000).clamp(0, u32::MAX as i64) as u32
}

/// Back from stored seconds to milliseconds.
#[inline]
pub fn millis(s: u32) -> Millis {
    s as Millis * 1000
}

/// A configured span of seconds as stored seconds. The configuration keeps spans far below
/// `u32::MAX`; should one ever exceed it, it saturates (a span longer than all stored time)
/// rather than wrapping to a short or empty window.
#[inline]
pub fn span_secs(s: u64) -> u32 {
    u32::try_from(s).unwrap_or(u32::MAX)
}

/// A configured span of seconds in milliseconds, saturating rather than overflowing.
#[inline]
pub fn span_ms(s: u64) -> Millis {
    Millis::try_from(s)
        .unwrap_or(Millis::MAX)
        .saturating_mul(1000)
}

/// A hasher for maps whose keys are already well-mixed hashes: hashing them again is waste.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        // Only reached for non-u64 keys; fold them in so the hasher is still correct.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// Builds [`IdHasher`]s.
pub type IdBuild = std::hash::BuildHasherDefault<IdHasher>;

/// A map keyed by identity hashes.
pub type IdMap<V> = std::collections::HashMap<u64, V, IdBuild>;

/// Control bytes `std`'s table keeps past its last bucket (one SIMD group on x86-64), so a
/// probe near the end reads a whole group.
const CONTROL_TAIL: usize = 16;

/// Heap bytes of a map's table: its buckets (a key and value each, and a control byte)
/// and the control bytes' tail. `std`'s table has a power-of-two number of buckets and fills
/// at most 7/8 of them (all but one below 8 buckets); `capacity` is that share, not what is
/// allocated.
pub fn map_bytes<K, V, S>(m: &std::collections::HashMap<K, V, S>) -> usize {
    match m.capacity() {
        0 => 0,
        cap => {
            let buckets = if cap < 8 { cap + 1 } else { cap / 7 * 8 };
            buckets * (std::mem::size_of::<(K, V)>() + 1) + CONTROL_TAIL
        }
    }
}

/// The splitmix64 finaliser: a bijection on u64 that scatters nearby inputs, every output
/// bit depending on every input bit (the generator's pseudonyms and draws, and
/// [`crate::probemap`]'s slots).
#[inline]
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Asks for the cache line holding `*p` without waiting for it: for the last level of a
/// warm-up ([`crate::detect::Detector::warm`]), where a load would hold the core's
/// retirement until the line arrives and a prefetch lets the misses of the other tables
/// proceed behind it. Never reads `*p` (a dangling or null pointer is harmless); a no-op
/// where the instruction is not available.
#[inline(always)]
pub fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetcht0` is a hint: it does not access memory architecturally and
    // cannot fault, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[cfg(test)]
mod map_bytes_tests {
    use super::*;

    /// The buckets `std`'s table allocates: the next power of two that holds `n` at 7/8 full
    /// (at least 4; below 8 buckets, all but one may fill).
    fn buckets_for(n: usize) -> usize {
        match n {
            0 => 0,
            1..=3 => 4,
            4..=7 => 8,
            _ => (n * 8).div_ceil(7).next_power_of_two(),
        }
    }

    #[test]
    fn counts_every_bucket_the_table_holds() {
        let slot = std::mem::size_of::<(u64, u32)>() + 1;
        for n in [1usize, 3, 4, 7, 8, 14, 15, 100, 150_828] {
            let mut m: IdMap<u32> = IdMap::default();
            for k in 0..n as u64 {
                m.insert(k, 0);
            }
            assert_eq!(
                map_bytes(&m),
                buckets_for(n) * slot + CONTROL_TAIL,
                "{n} entries"
            );
        }
        // The contact store's table on the 150,000-subscriber city: 262,144 buckets, of
        // which the capacity (the old count) is 229,376.
        let m: IdMap<u32> = (0..150_828u64).map(|k| (k, 0)).collect();
        assert_eq!(map_bytes(&m), 262_144 * slot + CONTROL_TAIL);
        assert_eq!(map_bytes(&IdMap::<u32>::default()), 0);
    }
}
