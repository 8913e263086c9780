//! Shared per-line state: who each line has texted, and when.
//!
//! `bulk_sms` (recipients in the window), `customer_fan_in` (is the caller a customer?) and
//! `line_handover` (the new line's audience) all ask the same question of the same fact, so
//! it is kept once here rather than three times in three detectors.

use serde::{Deserialize, Serialize};

use crate::checkpoint::codec;
use crate::event::Millis;
use crate::ids::{self, IdMap};

/// One number a line has texted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    /// is evicted first). Exactly as long as it needs to be: a list grows by a copy when a
    /// new recipient comes (a few times a day per line), and a growable list's spare room
    /// was a quarter of the whole store.
    pub contacts: Box<[Contact]>,
    /// Latest handset seen with this line (fingerprint; 0 = none).
    pub handset_fp: u32,
    /// Highest event time of a counted customer contact to this line (seconds).
    pub newest_in_s: u32,
}

impl LineRecord {
    /// Recipients texted at or after `since_s`.
    pub fn recipients_since(&self, since_s: u32) -> usize {
        self.contacts.iter().filter(|c| c.last_s >= since_s).count()
    }

    /// The contact entry for a recipient fingerprint (the list is sorted by fingerprint:
    /// "is the caller a customer?" is asked of nearly every record).
    pub fn contact(&self, fp: u32) -> Option<&Contact> {
        self.contacts
            .binary_search_by_key(&fp, |c| c.fp)
            .ok()
            .map(|i| &self.contacts[i])
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
    let at = match rec.contacts.binary_search_by_key(&fp, |c| c.fp) {
        Ok(i) => {
            let c = &mut rec.contacts[i];
            c.first_s = c.first_s.min(s);
            c.last_s = c.last_s.max(s);
            return (Recorded::Ok, 0);
        }
        Err(at) => at,
    };
    let new = Contact {
        fp,
        first_s: s,
        last_s: s,
        last_in_s: 0,
    };
    let old = &rec.contacts;
    if old.len() >= max_contacts {
        // Drop the stalest: it is the one least likely to matter to any window.
        if let Some((gone, _)) = old.iter().enumerate().min_by_key(|(_, c)| c.last_s) {
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
            rec.last_seen_s = s;
            if let Some(h) = handset {
                rec.handset_fp = ids::fp(h).max(1);
            }
        }
        match to {
            Some(to) => {
                let (r, grown) = add_text(rec, ids::fp(to), s, self.max_contacts);
                self.heap_bytes += grown * std::mem::size_of::<Contact>();
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
        let c = &mut rec.contacts[i];
        if c.first_s > s || c.last_s.saturating_add(lookback_s) < s {
            return None;
        }
        c.last_in_s = c.last_in_s.max(s);
        rec.newest_in_s = rec.newest_in_s.max(s);
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
            if rec.contacts.iter().any(|c| c.last_s < cutoff) {
                rec.contacts = rec
                    .contacts
                    .iter()
                    .filter(|c| c.last_s >= cutoff)
                    .copied()
                    .collect();
            }
            heap += rec.contacts.len() * std::mem::size_of::<Contact>();
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
        self.heap_bytes = self
            .lines
            .values()
            .map(|r| r.contacts.len() * std::mem::size_of::<Contact>())
            .sum();
        Ok(())
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
        assert_eq!(c.bytes() - table, 5 * std::mem::size_of::<Contact>());
        c.expire(7_000 + 86_400_000);
        assert_eq!(c.get(1).unwrap().contacts.len(), 2);
        assert_eq!(
            c.bytes() - ids::map_bytes(&c.lines),
            2 * std::mem::size_of::<Contact>()
        );
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
