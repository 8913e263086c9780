//! Shared per-line state: who each line has texted, and when.
//!
//! `bulk_sms` (recipients in the window), `customer_fan_in` (is the caller a customer?) and
//! `line_handover` (the new line's audience) all ask the same question of the same fact, so
//! it is kept once here rather than three times in three detectors.

use serde::{Deserialize, Serialize};

use crate::checkpoint::codec;
use crate::event::Millis;
use crate::ids::{self, IdMap};

/// How far back, in seconds, before a line's newest activity its contacts' times are kept to
/// the second: 2^20 s (12.1 days). Each time is stored as an offset from a base that moves in
/// steps of this span, so it fits in 21 or 22 bits and a contact in 12 bytes instead of 16.
/// Configuration keeps every span the store is asked about (its retention plus the lateness
/// and skew a record may have) within it: see [`MAX_SPAN_S`].
pub const EPOCH_S: u32 = 1 << 20;

/// The longest retention plus lateness plus future skew the configuration may ask of the
/// contact store (checked with the configuration): every time any detector compares is then
/// at or after the line's base, so every comparison is exact.
pub const MAX_SPAN_S: u64 = EPOCH_S as u64;

/// The base of a line's contact times, from its clock (its newest activity,
/// [`LineRecord::clock`]): the start of the epoch before the clock's, so the clock is always
/// less than 2 × [`EPOCH_S`] after it and every time from the clock back at least
/// [`EPOCH_S`] is at or after it.
#[inline]
fn base_of(clock: u32) -> u32 {
    (clock / EPOCH_S).saturating_sub(1) * EPOCH_S
}

const OFF_BITS: u32 = 21;
const OFF_MASK: u64 = (1 << OFF_BITS) - 1;
/// `last_in` takes the top 22 bits: 0 = none, else the offset plus one (up to 2^21).
const IN_SHIFT: u32 = 2 * OFF_BITS;

/// One number a line has texted, as stored: the recipient's fingerprint and three times as
/// offsets from the line's base (`base_of`) packed into one 64-bit word, kept as two u32
/// so the entry is 12 bytes with 4-byte alignment (a list is 3/4 of what it was; the
/// contacts are most of the store). Read through [`LineRecord::iter_contacts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedContact {
    /// Fingerprint of the recipient's id.
    pub fp: u32,
    lo: u32,
    hi: u32,
}

impl PackedContact {
    #[inline]
    fn word(&self) -> u64 {
        (self.hi as u64) << 32 | self.lo as u64
    }

    #[inline]
    fn set_word(&mut self, w: u64) {
        self.lo = w as u32;
        self.hi = (w >> 32) as u32;
    }

    /// Offsets of the first text, the latest text and the latest inbound contact (0 = none,
    /// else offset + 1).
    #[inline]
    fn parts(&self) -> (u32, u32, u32) {
        let w = self.word();
        (
            (w & OFF_MASK) as u32,
            ((w >> OFF_BITS) & OFF_MASK) as u32,
            (w >> IN_SHIFT) as u32,
        )
    }

    #[inline]
    fn set_parts(&mut self, first: u32, last: u32, inb: u32) {
        debug_assert!(first as u64 <= OFF_MASK && last as u64 <= OFF_MASK);
        debug_assert!(inb as u64 <= OFF_MASK + 1);
        self.set_word(first as u64 | (last as u64) << OFF_BITS | (inb as u64) << IN_SHIFT);
    }

    fn new(fp: u32, base: u32, s: u32) -> Self {
        let mut c = PackedContact { fp, lo: 0, hi: 0 };
        let off = off(base, s);
        c.set_parts(off, off, 0);
        c
    }

    /// The times, read against the line's base.
    #[inline]
    pub fn unpack(&self, base: u32) -> Contact {
        let (first, last, inb) = self.parts();
        Contact {
            fp: self.fp,
            first_s: base + first,
            last_s: base + last,
            last_in_s: if inb == 0 { 0 } else { base + inb - 1 },
        }
    }

    /// Moves the base up by `d`: times before the new base read as the base (only reached
    /// by comparisons that reach further back than configuration allows, see [`EPOCH_S`]).
    fn rebase(&mut self, d: u32) {
        let (first, last, inb) = self.parts();
        let inb = if inb == 0 {
            0
        } else {
            inb.saturating_sub(d).max(1)
        };
        self.set_parts(first.saturating_sub(d), last.saturating_sub(d), inb);
    }
}

/// A time as an offset from `base`: times before it read as the base (see
/// [`PackedContact::rebase`]); the clock is never 2^21 s after it (see [`base_of`]).
#[inline]
fn off(base: u32, s: u32) -> u32 {
    s.saturating_sub(base).min(OFF_MASK as u32)
}

/// One number a line has texted, its times in seconds (what [`PackedContact`] holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Contact {
    /// Fingerprint of the recipient's id.
    pub fp: u32,
    /// First text to it (seconds), within retention.
    pub first_s: u32,
    /// Latest text to it (seconds).
    pub last_s: u32,
    /// Latest counted contact *from* it to the line, as a customer (seconds; 0 = none).
    /// Kept here rather than in a second per-line map: the customer list is this list.
    pub last_in_s: u32,
}

/// What is known of one sending line.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LineRecord {
    /// First record from this line (seconds).
    pub first_seen_s: u32,
    /// Highest event time of a record from this line (seconds).
    pub last_seen_s: u32,
    /// Recipients of its texts, sorted by fingerprint, at most `max_contacts` (the stalest
    /// is evicted first); their times are relative to the line's base (read them with
    /// [`LineRecord::iter_contacts`]). Exactly as long as it needs to be: a list grows by a
    /// copy when a new recipient comes (a few times a day per line), and a growable list's
    /// spare room was a quarter of the whole store.
    pub contacts: Box<[PackedContact]>,
    /// Latest handset seen with this line (fingerprint; 0 = none).
    pub handset_fp: u32,
    /// Highest event time of a counted customer contact to this line (seconds).
    pub newest_in_s: u32,
}

impl LineRecord {
    /// The line's newest activity, outbound or inbound: every stored time is at or before
    /// it, and it never goes back.
    #[inline]
    pub fn clock(&self) -> u32 {
        self.last_seen_s.max(self.newest_in_s)
    }

    /// The base its contacts' times are stored against.
    #[inline]
    fn base(&self) -> u32 {
        base_of(self.clock())
    }

    /// Its contacts with their times in seconds, in fingerprint order.
    #[inline]
    pub fn iter_contacts(&self) -> impl Iterator<Item = Contact> + Clone + '_ {
        let base = self.base();
        self.contacts.iter().map(move |c| c.unpack(base))
    }

    /// Recipients texted at or after `since_s`.
    pub fn recipients_since(&self, since_s: u32) -> usize {
        self.iter_contacts().filter(|c| c.last_s >= since_s).count()
    }

    /// The contact entry for a recipient fingerprint (the list is sorted by fingerprint:
    /// "is the caller a customer?" is asked of nearly every record).
    pub fn contact(&self, fp: u32) -> Option<Contact> {
        self.contacts
            .binary_search_by_key(&fp, |c| c.fp)
            .ok()
            .map(|i| self.contacts[i].unpack(self.base()))
    }

    /// Sets the clock's parts by `update`, moving the stored offsets if the base moved (once
    /// per [`EPOCH_S`] of a line's activity).
    #[inline]
    fn advance(&mut self, update: impl FnOnce(&mut Self)) {
        let old = self.base();
        update(self);
        let new = self.base();
        if new != old {
            for c in self.contacts.iter_mut() {
                c.rebase(new - old);
            }
        }
    }
}

/// Result of recording one outbound record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Ok,
    /// The line's list was full; its stalest contact was dropped.
    EvictedOldest,
    /// The store was full; the line was not recorded.
    KeyCapHit,
}

/// Adds a text to `fp` at `s` to a line's list; returns what happened and by how many
/// entries the list grew (0 or 1: an eviction makes room for the new one).
fn add_text(rec: &mut LineRecord, fp: u32, s: u32, max_contacts: usize) -> (Recorded, usize) {
    let base = rec.base();
    let at = match rec.contacts.binary_search_by_key(&fp, |c| c.fp) {
        Ok(i) => {
            let c = &mut rec.contacts[i];
            let (first, last, inb) = c.parts();
            let o = off(base, s);
            c.set_parts(first.min(o), last.max(o), inb);
            return (Recorded::Ok, 0);
        }
        Err(at) => at,
    };
    let new = PackedContact::new(fp, base, s);
    let old = &rec.contacts;
    if old.len() >= max_contacts {
        // Drop the stalest: it is the one least likely to matter to any window. (Offsets
        // share one base: their order is the times' order.)
        if let Some((gone, _)) = old.iter().enumerate().min_by_key(|(_, c)| c.parts().1) {
            let mut v = Vec::with_capacity(old.len());
            v.extend(
                old.iter()
                    .enumerate()
                    .filter(|(i, _)| *i != gone)
                    .map(|(_, c)| *c),
            );
            // `gone` was before the insertion point: the point moves down by one.
            let at = if gone < at { at - 1 } else { at };
            v.insert(at, new);
            rec.contacts = v.into_boxed_slice();
            return (Recorded::EvictedOldest, 0);
        }
    }
    let result = if old.len() >= max_contacts {
        Recorded::EvictedOldest
    } else {
        Recorded::Ok
    };
    // One allocation of the exact new size, the new entry copied into its place.
    let mut v = Vec::with_capacity(old.len() + 1);
    v.extend_from_slice(&old[..at]);
    v.push(new);
    v.extend_from_slice(&old[at..]);
    rec.contacts = v.into_boxed_slice();
    (result, 1)
}

/// Outbound texts per line, with first/last activity.
#[derive(Debug, Clone)]
pub struct Contacts {
    lines: IdMap<LineRecord>,
    max_lines: usize,
    max_contacts: usize,
    retention_s: u32,
    heap_bytes: usize,
}

impl Contacts {
    pub fn new(max_lines: usize, max_contacts: usize, retention_s: u64) -> Self {
        Contacts {
            lines: IdMap::default(),
            max_lines,
            max_contacts,
            retention_s: retention_s.min(u32::MAX as u64) as u32,
            heap_bytes: 0,
        }
    }

    /// Changes the bounds; existing state is kept (a shorter retention trims at the next sweep).
    pub fn reconfigure(&mut self, max_lines: usize, max_contacts: usize, retention_s: u64) {
        self.max_lines = max_lines;
        self.max_contacts = max_contacts;
        self.retention_s = retention_s.min(u32::MAX as u64) as u32;
    }

    pub fn get(&self, line: u64) -> Option<&LineRecord> {
        self.lines.get(&line)
    }

    /// Looks `line` up and prefetches the middle of its contact list, where a binary
    /// search starts: [`crate::detect::Detector::warm`] for the contact store. Changes
    /// nothing; the list is not read (a load would hold the core until it came).
    pub fn warm(&self, line: u64) {
        if let Some(r) = self.get(line) {
            ids::prefetch(r.contacts.as_ptr().wrapping_add(r.contacts.len() / 2));
        }
    }

    /// Notes activity of a line (any record it originates).
    pub fn touch(&mut self, line: u64, ts: Millis, handset: Option<u64>) -> Recorded {
        self.record_outbound(line, None, ts, handset)
    }

    /// Notes a record `line` originated at `ts` and, for a text, its recipient `to`: one
    /// lookup of the line for both (this runs for every record).
    pub fn record_outbound(
        &mut self,
        line: u64,
        to: Option<u64>,
        ts: Millis,
        handset: Option<u64>,
    ) -> Recorded {
        let s = ids::secs(ts);
        let at_cap = self.lines.len() >= self.max_lines;
        let rec = match self.lines.entry(line) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(_) if at_cap => return Recorded::KeyCapHit,
            std::collections::hash_map::Entry::Vacant(e) => e.insert(LineRecord {
                first_seen_s: s,
                last_seen_s: s,
                ..LineRecord::default()
            }),
        };
        rec.first_seen_s = rec.first_seen_s.min(s);
        if s >= rec.last_seen_s {
            rec.advance(|rec| rec.last_seen_s = s);
            if let Some(h) = handset {
                rec.handset_fp = ids::fp(h).max(1);
            }
        }
        match to {
            Some(to) => {
                let (r, grown) = add_text(rec, ids::fp(to), s, self.max_contacts);
                self.heap_bytes += grown * std::mem::size_of::<PackedContact>();
                r
            }
            None => Recorded::Ok,
        }
    }

    /// Notes that `from` contacted `line` at `ts`, if `from` is the line's customer: texted
    /// by the line at or before `ts` and within `lookback_s` of it. Returns the line's record
    /// when it was a customer contact.
    pub fn record_inbound(
        &mut self,
        line: u64,
        from: u64,
        ts: Millis,
        lookback_s: u32,
    ) -> Option<&LineRecord> {
        let s = ids::secs(ts);
        let rec = self.lines.get_mut(&line)?;
        let i = rec
            .contacts
            .binary_search_by_key(&ids::fp(from), |c| c.fp)
            .ok()?;
        let c = rec.contacts[i].unpack(rec.base());
        if c.first_s > s || c.last_s.saturating_add(lookback_s) < s {
            return None;
        }
        if s > rec.newest_in_s {
            rec.advance(|rec| rec.newest_in_s = s);
        }
        // After any move of the base: the offset is against the base in force.
        let base = rec.base();
        let c = &mut rec.contacts[i];
        let (first, last, inb) = c.parts();
        c.set_parts(first, last, inb.max(off(base, s) + 1));
        Some(rec)
    }

    /// Records a text from `line` to `to` (call [`Contacts::touch`] first).
    pub fn record_text(&mut self, line: u64, to: u64, ts: Millis) -> Recorded {
        if !self.lines.contains_key(&line) {
            return Recorded::KeyCapHit;
        }
        self.record_outbound(line, Some(to), ts, None)
    }

    /// Drops contacts and lines older than `watermark - retention`.
    pub fn expire(&mut self, watermark: Millis) {
        let cutoff = ids::secs(watermark).saturating_sub(self.retention_s);
        let mut heap = 0;
        self.lines.retain(|_, rec| {
            if rec.last_seen_s < cutoff {
                return false;
            }
            let base = rec.base();
            let stale = |c: &PackedContact| c.unpack(base).last_s < cutoff;
            if rec.contacts.iter().any(stale) {
                rec.contacts = rec.contacts.iter().filter(|c| !stale(c)).copied().collect();
            }
            heap += rec.contacts.len() * std::mem::size_of::<PackedContact>();
            true
        });
        if self.lines.capacity() > 2 * self.lines.len() + 1024 {
            self.lines.shrink_to_fit();
        }
        self.heap_bytes = heap;
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// Every line's record, encoded for a checkpoint (the bounds are configuration).
    pub fn save_state(&self) -> Result<Vec<u8>, codec::Error> {
        codec::encode(&self.lines)
    }

    /// Replaces the records with those [`Contacts::save_state`] wrote.
    pub fn load_state(&mut self, bytes: &[u8]) -> Result<(), codec::Error> {
        self.lines = codec::decode(bytes)?;
        self.heap_bytes = self.contact_heap_bytes();
        Ok(())
    }

    /// Deals the lines out to `parts` stores by `owner(line)` (a restore into another shard
    /// count: each part goes to the line's shard); `self` is left empty.
    pub fn split(&mut self, parts: usize, owner: &dyn Fn(u64) -> usize) -> Vec<Contacts> {
        self.heap_bytes = 0;
        crate::detect::split_map(&mut self.lines, parts, owner)
            .into_iter()
            .map(|lines| {
                let mut c = Contacts {
                    lines,
                    max_lines: self.max_lines,
                    max_contacts: self.max_contacts,
                    retention_s: self.retention_s,
                    heap_bytes: 0,
                };
                c.heap_bytes = c.contact_heap_bytes();
                c
            })
            .collect()
    }

    /// Adds a part [`Contacts::split`] made of another shard's store: other lines than
    /// this one's, as each line is kept by one shard.
    pub fn merge(&mut self, part: Contacts) {
        crate::detect::absorb_map(&mut self.lines, part.lines);
        self.heap_bytes += part.heap_bytes;
    }

    fn contact_heap_bytes(&self) -> usize {
        self.lines
            .values()
            .map(|r| r.contacts.len() * std::mem::size_of::<PackedContact>())
            .sum()
    }

    /// Every line held, for the split and merge tests.
    #[cfg(test)]
    pub fn keys(&self) -> Vec<(&'static str, u64)> {
        crate::detect::named_keys("lines", &self.lines)
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Estimated bytes held (table plus contact lists).
    pub fn bytes(&self) -> usize {
        ids::map_bytes(&self.lines) + self.heap_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contacts_track_first_and_last() {
        let mut c = Contacts::new(10, 10, 86_400);
        c.touch(1, 10_000, None);
        c.record_text(1, 7, 10_000);
        c.touch(1, 5_000, None);
        c.record_text(1, 7, 5_000);
        let rec = c.get(1).unwrap();
        let k = rec.contact(ids::fp(7)).unwrap();
        assert_eq!((k.first_s, k.last_s), (5, 10));
        assert_eq!(rec.first_seen_s, 5);
        assert_eq!(rec.last_seen_s, 10);
    }

    #[test]
    fn per_line_cap_evicts_stalest_and_key_cap_refuses() {
        let mut c = Contacts::new(1, 2, 86_400);
        c.touch(1, 1_000, None);
        assert_eq!(c.record_text(1, 10, 1_000), Recorded::Ok);
        assert_eq!(c.record_text(1, 11, 3_000), Recorded::Ok);
        assert_eq!(c.record_text(1, 12, 2_000), Recorded::EvictedOldest);
        let rec = c.get(1).unwrap();
        assert!(rec.contact(ids::fp(10)).is_none());
        assert!(rec.contact(ids::fp(11)).is_some());
        assert_eq!(c.touch(2, 1_000, None), Recorded::KeyCapHit);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn lists_stay_sorted_and_the_byte_count_is_what_they_hold() {
        let mut c = Contacts::new(10, 5, 86_400);
        c.touch(1, 1_000, None);
        for (i, to) in [50u64, 7, 99, 3, 7, 61, 12, 5].into_iter().enumerate() {
            c.record_outbound(1, Some(to), 1_000 + i as Millis * 1_000, None);
        }
        let rec = c.get(1).unwrap();
        let fps: Vec<u32> = rec.contacts.iter().map(|k| k.fp).collect();
        let mut sorted = fps.clone();
        sorted.sort_unstable();
        assert_eq!(fps, sorted);
        assert_eq!(rec.contacts.len(), 5);
        // The two stalest of the seven distinct recipients went: 50 (at 1 s) and 99 (3 s).
        assert!(rec.contact(ids::fp(50)).is_none() && rec.contact(ids::fp(99)).is_none());
        assert!(rec.contact(ids::fp(7)).is_some_and(|k| k.last_s == 5));
        let table = ids::map_bytes(&c.lines);
        assert_eq!(c.bytes() - table, 5 * std::mem::size_of::<PackedContact>());
        c.expire(7_000 + 86_400_000);
        assert_eq!(c.get(1).unwrap().contacts.len(), 2);
        assert_eq!(
            c.bytes() - ids::map_bytes(&c.lines),
            2 * std::mem::size_of::<PackedContact>()
        );
    }

    #[test]
    fn a_contact_is_twelve_bytes() {
        assert_eq!(std::mem::size_of::<PackedContact>(), 12);
    }

    #[test]
    fn times_are_exact_across_base_moves_and_read_as_the_base_past_the_span() {
        let ms = |s: u32| ids::millis(s);
        let mut c = Contacts::new(10, 10, 30 * 86_400);
        // An epoch boundary: the line's base moves there once its clock is an epoch past it.
        let t0 = 1_700 * EPOCH_S;
        c.touch(1, ms(t0 - 100), None);
        c.record_text(1, 7, ms(t0 - 100));
        assert!(c.record_inbound(1, 7, ms(t0 - 90), 604_800).is_some());
        // Texts every day for a little over an epoch: the base moves up (to t0) on the way.
        let mut t = t0 + 5;
        while t <= t0 + EPOCH_S + 5 {
            c.touch(1, ms(t), None);
            c.record_text(1, 8, ms(t));
            t += 86_400;
        }
        let last8 = t - 86_400;
        c.touch(1, ms(t0 + EPOCH_S + 5), None);
        c.record_text(1, 9, ms(t0 + EPOCH_S + 5));
        assert!(c
            .record_inbound(1, 9, ms(t0 + EPOCH_S + 5), 604_800)
            .is_some());
        let rec = c.get(1).unwrap();
        assert_eq!(rec.clock(), t0 + EPOCH_S + 5);
        assert_eq!(rec.base(), t0);
        // Exactly EPOCH_S before the clock, the oldest time the store promises: exact.
        let k8 = rec.contact(ids::fp(8)).unwrap();
        assert_eq!((k8.first_s, k8.last_s, k8.last_in_s), (t0 + 5, last8, 0));
        let k9 = rec.contact(ids::fp(9)).unwrap();
        let now = t0 + EPOCH_S + 5;
        assert_eq!((k9.first_s, k9.last_s, k9.last_in_s), (now, now, now));
        // Past it (more than EPOCH_S before the clock): every time reads as the base, an
        // inbound contact stays one. Configuration keeps every comparison inside the span.
        let k7 = rec.contact(ids::fp(7)).unwrap();
        assert_eq!((k7.first_s, k7.last_s, k7.last_in_s), (t0, t0, t0));
    }

    #[test]
    fn a_late_record_within_the_span_is_stored_exactly() {
        let ms = |s: u32| ids::millis(s);
        let mut c = Contacts::new(10, 10, 7 * 86_400);
        let t0 = 1_700 * EPOCH_S + 10;
        c.touch(1, ms(t0), None);
        c.record_text(1, 5, ms(t0));
        // Earlier than the base's epoch (the clock's epoch began 10 s before t0).
        c.touch(1, ms(t0 - 3_600), None);
        c.record_text(1, 5, ms(t0 - 3_600));
        c.record_text(1, 6, ms(t0 - 7_200));
        let rec = c.get(1).unwrap();
        let k5 = rec.contact(ids::fp(5)).unwrap();
        assert_eq!((k5.first_s, k5.last_s), (t0 - 3_600, t0));
        assert_eq!(rec.contact(ids::fp(6)).unwrap().last_s, t0 - 7_200);
        assert_eq!(rec.first_seen_s, t0 - 7_200);
    }

    #[test]
    fn expiry_drops_old_contacts_and_lines() {
        let mut c = Contacts::new(10, 10, 100);
        c.touch(1, 0, None);
        c.record_text(1, 5, 0);
        c.touch(2, 150_000, None);
        c.record_text(2, 5, 150_000);
        c.expire(200_000);
        assert!(c.get(1).is_none());
        assert_eq!(c.get(2).unwrap().contacts.len(), 1);
    }
}
