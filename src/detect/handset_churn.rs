//! `handset_churn`: one handset used with many distinct SIMs within a sliding window.
//!
//! Burner handsets take a new SIM every day or so. The SIM pseudonyms are kept (they go in
//! `related`), with the line each SIM was used as, so the combined verdict can credit the
//! churn to those lines; both packed into one allocation per handset (see `Sims`).

use serde::{Deserialize, Serialize};

use super::{Ctx, Detector, EventIds, StateStats};
use crate::alert::{Finding, SubjectKind};
use crate::checkpoint::codec;
use crate::config::{ChurnConfig, Config};
use crate::event::{Event, Millis};
use crate::evidence;
use crate::exchange::Role;
use crate::ids::{self, IdMap};

pub const NAME: &str = "handset_churn";

/// Bytes of one SIM's fixed part in [`Sims`]: SIM fingerprint, line fingerprint, last use
/// (seconds), each a little-endian u32.
const HEAD: usize = 12;

/// The SIMs a handset was used with, in one allocation: per SIM the fixed part, then its
/// SIM and line pseudonyms packed ([`crate::names`]), each delimited by its own header.
/// Nearly every handset has one SIM for its whole life, and a separate list plus a string
/// per SIM cost two more allocations and two more cache misses per record. The names are
/// only read when the handset fires; records are matched on 32-bit fingerprints, as the
/// contact store's lists are (inside one handset's few SIMs a collision is a one-in-10^9
/// event, see [`crate::ids`]): matching on the names themselves saved 8 bytes a SIM but
/// packing the record's two names to compare them cost a fifth more instructions per
/// record (cachegrind).
///
/// In memory a list of one SIM has an even length and a list of more an odd one (a zero
/// byte pads it where the SIMs' own bytes do not), so a sweep tells a one-SIM handset from
/// its table slot alone, without following the pointer ([`HandsetChurn::expire`]). The pad
/// is not part of the list: the iterator stops short of it, and a checkpoint holds the
/// SIMs' bytes alone, as before it (the format is unchanged; a load pads them again).
#[derive(Clone, Default, Deserialize)]
struct Sims(Box<[u8]>);

impl Serialize for Sims {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_newtype_struct("Sims", &self.0[..self.whole_len()])
    }
}

/// One SIM of a [`Sims`], read in place.
#[derive(Clone, Copy)]
struct Sim<'a> {
    sim_fp: u32,
    line_fp: u32,
    last_s: u32,
    /// The packed SIM and line pseudonyms.
    names: &'a [u8],
    /// Offset of its fixed part.
    at: usize,
}

impl Sim<'_> {
    /// The SIM and line pseudonyms.
    fn names(&self) -> (String, String) {
        let unpacked = crate::names::unpack(self.names)
            .and_then(|(sim, rest)| Some((sim, crate::names::unpack(rest)?.0)));
        // `Sims::push` wrote both; a checkpoint from another build is checked on load.
        unpacked.unwrap_or_default()
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// One SIM of a rebuilt [`Sims`].
enum Item<'a> {
    /// The SIM at this index of the old list.
    Keep(usize),
    New {
        sim_fp: u32,
        line_fp: u32,
        last_s: u32,
        sim: &'a str,
        line: &'a str,
    },
}

impl Sims {
    fn iter(&self) -> impl Iterator<Item = Sim<'_>> {
        let b = &self.0;
        let mut at = 0;
        std::iter::from_fn(move || {
            if at + HEAD > b.len() {
                return None;
            }
            let names = &b[at + HEAD..];
            let sim_len = crate::names::packed_size(names)?;
            let len = sim_len + crate::names::packed_size(&names[sim_len..])?;
            let sim = Sim {
                sim_fp: u32_at(b, at),
                line_fp: u32_at(b, at + 4),
                last_s: u32_at(b, at + 8),
                names: &names[..len],
                at,
            };
            at += HEAD + len;
            Some(sim)
        })
    }

    fn len(&self) -> usize {
        self.iter().count()
    }

    /// Bytes of the SIMs themselves (without the parity pad).
    fn whole_len(&self) -> usize {
        self.iter().map(|x| HEAD + x.names.len()).sum()
    }

    /// Exactly one SIM, told from the length alone (see [`Sims`]).
    fn one_sim(&self) -> bool {
        !self.0.is_empty() && self.0.len() % 2 == 0
    }

    /// The parity pad (0 or 1 byte) a list of `count` SIMs in `whole` bytes needs.
    fn pad_len(whole: usize, count: usize) -> usize {
        usize::from(whole > 0 && (count == 1) != (whole % 2 == 0))
    }

    /// `bytes` (whole SIMs, `count` of them) with the parity pad when it needs one.
    fn padded(mut bytes: Vec<u8>, count: usize) -> Sims {
        if Sims::pad_len(bytes.len(), count) == 1 {
            bytes.push(0);
        }
        Sims(bytes.into_boxed_slice())
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn set_last(&mut self, at: usize, last_s: u32) {
        self.0[at + 8..at + HEAD].copy_from_slice(&last_s.to_le_bytes());
    }

    /// Bytes held.
    fn bytes(&self) -> usize {
        self.0.len()
    }

    /// A new list of `items` in order: SIMs of `self` by index, or new ones.
    fn rebuild<'a>(&self, items: impl IntoIterator<Item = Item<'a>>) -> Sims {
        let all: Vec<Sim<'_>> = self.iter().collect();
        let items: Vec<Item<'a>> = items.into_iter().collect();
        // The exact size up front, the parity pad included: `into_boxed_slice` then keeps
        // the allocation as it is.
        let count = items.len();
        let whole: usize = items
            .iter()
            .map(|item| match item {
                Item::Keep(i) => HEAD + all[*i].names.len(),
                Item::New { sim, line, .. } => {
                    HEAD + crate::names::packed_len(sim) + crate::names::packed_len(line)
                }
            })
            .sum();
        let mut out = Vec::with_capacity(whole + Sims::pad_len(whole, count));
        for item in items {
            match item {
                Item::Keep(i) => {
                    let x = all[i];
                    out.extend_from_slice(&self.0[x.at..x.at + HEAD + x.names.len()]);
                }
                Item::New {
                    sim_fp,
                    line_fp,
                    last_s,
                    sim,
                    line,
                } => {
                    out.extend_from_slice(&sim_fp.to_le_bytes());
                    out.extend_from_slice(&line_fp.to_le_bytes());
                    out.extend_from_slice(&last_s.to_le_bytes());
                    crate::names::pack(sim, &mut out);
                    crate::names::pack(line, &mut out);
                }
            }
        }
        Sims::padded(out, count)
    }

    /// Whether every SIM's fixed part and names are whole (a checkpoint is checked on load).
    fn is_whole(&self) -> bool {
        self.whole_len() == self.0.len()
            && self
                .iter()
                .all(|x| x.names().0.len() + x.names().1.len() > 0)
    }
}

/// A handset's slot. Nearly every record of a handset is one more with the SIM, and as the
/// line, of its newest record, so the slot names that pair ([`Handset::head`]) and such a
/// record is taken from the slot alone: only the newest time moves, and the list behind
/// the pointer (a cache miss, and on the engine with `runner_movement` beside it the
/// largest single cost this detector had: `perf`, `runner_cost`) is not read.
#[derive(Clone, Default, Deserialize)]
#[serde(from = "HandsetIn")]
struct Handset {
    sims: Sims,
    newest_s: u32,
    /// [`pair_fp`] of the SIM and line of the handset's newest record, whose entry in
    /// `sims` has the time `newest_s` even where the list says older (the list is brought
    /// up to date, [`Handset::flush`], before anything else reads or changes it);
    /// [`NO_HEAD`] when no entry is known to hold `newest_s`. Between a load and
    /// [`HandsetChurn::load_state`]'s pass over the table it holds the checkpoint's
    /// `fired_s` instead (see [`HandsetIn`]).
    head: u32,
}

/// [`Handset::head`] naming no SIM: [`pair_fp`] never gives it.
const NO_HEAD: u32 = 0;

/// A SIM and line's fingerprints as one 32-bit word, never [`NO_HEAD`]. Two pairs of one
/// handset sharing it is a one-in-10^9 event, as for the SIM fingerprints themselves (see
/// [`Sims`]): a record would then count as one more of the newest SIM's.
fn pair_fp(sim_fp: u32, line_fp: u32) -> u32 {
    let p = (u64::from(sim_fp) << 32 | u64::from(line_fp)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    ((p >> 32) as u32).max(1)
}

impl Handset {
    /// Where the head's entry starts in the list (`None` without a head: the list is up
    /// to date then).
    fn head_at(&self) -> Option<usize> {
        if self.head == NO_HEAD {
            return None;
        }
        (self.sims.iter())
            .find(|x| pair_fp(x.sim_fp, x.line_fp) == self.head)
            .map(|x| x.at)
    }

    /// Writes the newest time into the head's entry, so the list holds every SIM's time.
    fn flush(&mut self) {
        if let Some(at) = self.head_at() {
            self.sims.set_last(at, self.newest_s);
        }
    }

    /// The head for an up-to-date list: the entry with the newest time, `prefer` if it
    /// is one (the record just taken), [`NO_HEAD`] if none has it.
    fn find_head(&self, prefer: u32) -> u32 {
        let mut head = NO_HEAD;
        for x in self.sims.iter().filter(|x| x.last_s == self.newest_s) {
            let p = pair_fp(x.sim_fp, x.line_fp);
            if p == prefer {
                return p;
            }
            if head == NO_HEAD {
                head = p;
            }
        }
        head
    }

    /// Each SIM's time, the head's included (the list may hold an older one for it).
    fn lasts(&self) -> Vec<(u32, u32)> {
        let head = self.head_at();
        (self.sims.iter())
            .map(|x| {
                let last_s = if head == Some(x.at) {
                    self.newest_s
                } else {
                    x.last_s
                };
                (x.sim_fp, last_s)
            })
            .collect()
    }
}

/// A handset as checkpoints hold it (the format from before the head): the list up to
/// date, and the end of the last window reported, which is now in [`HandsetChurn::fired`].
#[derive(Serialize)]
struct HandsetOut<'a> {
    sims: SimsOut<'a>,
    newest_s: u32,
    /// End of the last window reported (seconds; 0 = never: event times are after 2000).
    fired_s: u32,
}

/// [`HandsetOut`], read back.
#[derive(Deserialize)]
struct HandsetIn {
    sims: Sims,
    newest_s: u32,
    fired_s: u32,
}

impl From<HandsetIn> for Handset {
    fn from(h: HandsetIn) -> Handset {
        // `load_state` moves `fired_s` to the `fired` table and sets the head.
        Handset {
            sims: h.sims,
            newest_s: h.newest_s,
            head: h.fired_s,
        }
    }
}

/// A handset's list as a checkpoint holds it: the SIMs' bytes, the head's time written in.
struct SimsOut<'a>(&'a Handset);

impl Serialize for SimsOut<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let h = self.0;
        let Some(at) = h.head_at() else {
            return h.sims.serialize(serializer);
        };
        // The bytes as `Sims` writes them (a sequence of bytes in a newtype), the head's
        // time in place of the list's, without a copy of the list.
        struct Patched<'a>(&'a [u8], usize, [u8; 4]);
        impl Serialize for Patched<'_> {
            fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeSeq;
                let mut seq = ser.serialize_seq(Some(self.0.len()))?;
                for (i, b) in self.0.iter().enumerate() {
                    let b = match i.checked_sub(self.1 + 8) {
                        Some(j) if j < 4 => self.2[j],
                        _ => *b,
                    };
                    seq.serialize_element(&b)?;
                }
                seq.end()
            }
        }
        let whole = &h.sims.0[..h.sims.whole_len()];
        let patched = Patched(whole, at, h.newest_s.to_le_bytes());
        serializer.serialize_newtype_struct("Sims", &patched)
    }
}

/// The handset table as checkpoints hold it: each slot as a [`HandsetOut`].
struct HandsetsOut<'a> {
    handsets: &'a IdMap<Handset>,
    fired: &'a IdMap<u32>,
}

impl Serialize for HandsetsOut<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.handsets.iter().map(|(k, h)| {
            let out = HandsetOut {
                sims: SimsOut(h),
                newest_s: h.newest_s,
                fired_s: self.fired.get(k).copied().unwrap_or(0),
            };
            (k, out)
        }))
    }
}

#[derive(Clone)]
pub struct HandsetChurn {
    cfg: ChurnConfig,
    handsets: IdMap<Handset>,
    /// End of the last window reported (seconds), for the handsets that have fired (few:
    /// it is read only when a window is found, off the path of a record of the head).
    fired: IdMap<u32>,
    max_keys: usize,
    cap_hits: u64,
    heap_bytes: usize,
    /// Scratch for the windows a late record completes (kept to avoid an allocation each).
    times: Vec<u32>,
}

impl HandsetChurn {
    pub fn new(cfg: &Config, max_keys: usize) -> Self {
        HandsetChurn {
            cfg: cfg.handset_churn.clone(),
            handsets: IdMap::default(),
            fired: IdMap::default(),
            max_keys,
            cap_hits: 0,
            heap_bytes: 0,
            times: Vec::new(),
        }
    }
}

impl Detector for HandsetChurn {
    fn name(&self) -> &'static str {
        NAME
    }

    fn warm(&self, ids: &EventIds, role: Role) {
        if role == Role::Handset && self.cfg.enabled {
            if let Some(imei) = ids.imei {
                // The slot is read (its key is compared); the SIMs behind it are only
                // prefetched, so the other tables' misses go on meanwhile.
                // A record of the head's SIM and line will not read them.
                if let Some(h) = self.handsets.get(&imei) {
                    let head = ids.imsi.map(|sim| pair_fp(ids::fp(sim), ids::fp(ids.from)));
                    if head != Some(h.head) {
                        ids::prefetch(h.sims.0.as_ptr());
                    }
                }
            }
        }
    }

    fn on_event(&mut self, ev: &Event<'_>, ids: &EventIds, ctx: &mut Ctx<'_>) {
        // Keyed by handset: every entry it reads or writes is the record's handset's. The
        // lines it names reach `deal_line` as evidence for them.
        if ctx.role != Role::Handset {
            return;
        }
        if !self.cfg.enabled {
            return;
        }
        let (Some(imei), Some(imsi), Some(imei_s)) =
            (ids.imei, ev.imsi.as_deref(), ev.imei.as_deref())
        else {
            return;
        };
        let s = ids::secs(ev.ts);
        if self.handsets.len() >= self.max_keys && !self.handsets.contains_key(&imei) {
            self.cap_hits += 1;
            return;
        }
        let h = self.handsets.entry(imei).or_default();
        let sim_fp = ids::fp(ids.imsi.unwrap_or_else(|| ids::id(imsi)));
        let line_fp = ids::fp(ids.from);
        let pair = pair_fp(sim_fp, line_fp);
        if h.head == pair {
            // One more record of the newest SIM as the same line: its time is the newest
            // time, and a known SIM cannot raise the count. Whatever the record's time,
            // this is what the list would say after it (a late one changes nothing).
            h.newest_s = h.newest_s.max(s);
            return;
        }
        // Anything else reads the list: up to date first, with the newest time before
        // this record's.
        h.flush();
        h.newest_s = h.newest_s.max(s);
        let since_s = h.newest_s.saturating_sub(ids::span_secs(self.cfg.window_s));
        if s < since_s {
            return; // older than every window the list is judged in: no change
        }
        let before = h.sims.bytes();
        let known = h
            .sims
            .iter()
            .enumerate()
            .find(|(_, x)| x.sim_fp == sim_fp)
            .map(|(i, x)| (i, x.at, x.last_s, x.line_fp == line_fp));
        match known {
            Some((i, at, last_s, same_line)) => {
                if s >= last_s {
                    if same_line {
                        h.sims.set_last(at, s);
                    } else {
                        // Used as another line: the SIM keeps its place in the list.
                        let new = Item::New {
                            sim_fp,
                            line_fp,
                            last_s: s,
                            sim: imsi,
                            line: &ev.from,
                        };
                        let mut new = Some(new);
                        let n = h.sims.len();
                        let items: Vec<Item<'_>> = (0..n)
                            .map(|j| match new.take_if(|_| j == i) {
                                Some(item) => item,
                                None => Item::Keep(j),
                            })
                            .collect();
                        h.sims = h.sims.rebuild(items);
                    }
                }
                h.head = h.find_head(pair);
                self.heap_bytes = self.heap_bytes + h.sims.bytes() - before;
                return; // a known SIM cannot raise the count
            }
            None => {
                let n = h.sims.len();
                let mut keep: Vec<usize> = (0..n).collect();
                if n >= self.cfg.max_sims_per_handset as usize {
                    self.cap_hits += 1;
                    // The stalest goes, the last SIM taking its place (as `swap_remove`).
                    if let Some((i, _)) = h.sims.iter().enumerate().min_by_key(|(_, x)| x.last_s) {
                        keep.swap_remove(i);
                    }
                }
                let new = Item::New {
                    sim_fp,
                    line_fp,
                    last_s: s,
                    sim: imsi,
                    line: &ev.from,
                };
                let items = keep.into_iter().map(Item::Keep).chain(std::iter::once(new));
                h.sims = h.sims.rebuild(items);
                h.head = h.find_head(pair);
                self.heap_bytes = self.heap_bytes + h.sims.bytes() - before;
            }
        }
        let min = self.cfg.min_sims as usize;
        let window_s = ids::span_secs(self.cfg.window_s);
        // The window ending at the handset's newest time, as every record arrives.
        let mut found = None;
        if h.sims.iter().filter(|x| x.last_s >= since_s).count() >= min {
            found = Some((since_s, h.newest_s));
        } else if s < h.newest_s {
            // A late record may also complete a window that ends before the newest time.
            let (lo, hi) = (s.saturating_sub(window_s), s.saturating_add(window_s));
            self.times.clear();
            self.times.extend(
                h.sims
                    .iter()
                    .map(|x| x.last_s)
                    .filter(|&t| t >= lo && t <= hi),
            );
            if let Some(end_s) = super::completed_window(&mut self.times, s, window_s, min) {
                found = Some((end_s.saturating_sub(window_s), end_s));
            }
        }
        let Some((since_s, end_s)) = found else {
            return;
        };
        let fired_s = self.fired.get(&imei).copied().unwrap_or(0);
        if fired_s != 0 && fired_s >= since_s {
            return;
        }
        let fired_s = if fired_s == 0 {
            end_s
        } else {
            fired_s.max(end_s)
        };
        self.fired.insert(imei, fired_s);
        let mut ordered: Vec<(u32, String, String)> = h
            .sims
            .iter()
            .filter(|x| x.last_s >= since_s && x.last_s <= end_s)
            .map(|x| {
                let (sim, line) = x.names();
                (x.last_s, sim, line)
            })
            .collect();
        ordered.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        let mut lines: Vec<(u64, String)> = Vec::new();
        for (_, _, line) in &ordered {
            let id = ids::id(line);
            if !lines.iter().any(|(l, _)| *l == id) {
                lines.push((id, line.clone()));
            }
        }
        let sims = ordered.len();
        ctx.out.push(Finding {
            detector: NAME,
            subject: imei_s.to_string(),
            subject_id: imei,
            subject_kind: SubjectKind::Handset,
            score: (sims as f64 / (2.0 * min as f64)).min(1.0),
            event_time: ev.ts,
            window_start: ids::millis(ordered[0].0),
            window_end: ids::millis(end_s).max(ev.ts),
            related: ordered.into_iter().map(|x| x.1).collect(),
            evidence: evidence! {
                "sims" => sims,
                "min_sims" => min,
                "window_s" => self.cfg.window_s,
                "lines" => lines.iter().map(|(_, l)| l.clone()).collect::<Vec<_>>(),
            },
            lines,
        });
    }

    fn expire(&mut self, watermark: Millis) {
        let cutoff = ids::secs(watermark).saturating_sub(ids::span_secs(self.cfg.window_s));
        let mut heap = 0;
        // A handset's newest time is its newest SIM's (every record that raises it sets
        // that SIM's time, and a cap, at least `min_sims` >= 2, evicts the stalest). So from
        // the slot alone: a handset whose newest time is before the cutoff loses every SIM,
        // and one with a single SIM and a newest time at or after it loses none. Only the
        // others' lists are read: a sweep read every list before, a cache miss per handset
        // (3 % of a replay's samples).
        self.handsets.retain(|_, h| {
            if h.newest_s < cutoff {
                debug_assert!(h.sims.iter().all(|x| x.last_s < cutoff));
                return false;
            }
            if h.sims.one_sim() {
                debug_assert!(h.lasts().iter().all(|x| x.1 >= cutoff));
                heap += h.sims.bytes();
                return true;
            }
            // The list is read: up to date first (the head keeps its place and time).
            h.flush();
            if h.sims.iter().any(|x| x.last_s < cutoff) {
                let keep: Vec<usize> = h
                    .sims
                    .iter()
                    .enumerate()
                    .filter(|(_, x)| x.last_s >= cutoff)
                    .map(|(i, _)| i)
                    .collect();
                h.sims = h.sims.rebuild(keep.into_iter().map(Item::Keep));
            }
            heap += h.sims.bytes();
            !h.sims.is_empty()
        });
        if self.handsets.capacity() > 2 * self.handsets.len() + 1024 {
            self.handsets.shrink_to_fit();
        }
        if !self.fired.is_empty() {
            let handsets = &self.handsets;
            self.fired.retain(|k, _| handsets.contains_key(k));
        }
        self.heap_bytes = heap;
    }

    fn stats(&self) -> StateStats {
        StateStats {
            keys: self.handsets.len(),
            bytes: ids::map_bytes(&self.handsets) + ids::map_bytes(&self.fired) + self.heap_bytes,
            cap_hits: self.cap_hits,
        }
    }

    fn reconfigure(&mut self, cfg: &Config) {
        self.cfg = cfg.handset_churn.clone();
        self.max_keys = cfg.engine.max_keys_per_detector;
    }

    fn box_clone(&self) -> Box<dyn Detector> {
        Box::new(self.clone())
    }

    fn save_state(&self) -> Result<Vec<u8>, codec::Error> {
        let handsets = HandsetsOut {
            handsets: &self.handsets,
            fired: &self.fired,
        };
        codec::encode(&(handsets, self.cap_hits))
    }

    fn load_state(&mut self, bytes: &[u8]) -> Result<(), codec::Error> {
        let (handsets, cap_hits): (IdMap<Handset>, u64) = codec::decode(bytes)?;
        if !handsets.values().all(|h| h.sims.is_whole()) {
            return Err(postcard::Error::DeserializeBadEncoding.into());
        }
        let mut handsets = handsets;
        let mut fired = IdMap::default();
        for (k, h) in handsets.iter_mut() {
            let count = h.sims.len();
            h.sims = Sims::padded(std::mem::take(&mut h.sims.0).into_vec(), count);
            // The slot's head holds the checkpoint's `fired_s` until here.
            if h.head != 0 {
                fired.insert(*k, h.head);
            }
            h.head = h.find_head(NO_HEAD);
        }
        (self.handsets, self.fired, self.cap_hits) = (handsets, fired, cap_hits);
        self.heap_bytes = self.handsets.values().map(|h| h.sims.bytes()).sum();
        Ok(())
    }

    fn split(
        &mut self,
        parts: usize,
        owner: &dyn Fn(u64) -> usize,
        counted: usize,
    ) -> Vec<Box<dyn Detector>> {
        let cap_hits = std::mem::take(&mut self.cap_hits);
        self.heap_bytes = 0;
        let fired = super::split_map(&mut self.fired, parts, owner);
        super::split_map(&mut self.handsets, parts, owner)
            .into_iter()
            .zip(fired)
            .enumerate()
            .map(|(p, (handsets, fired))| {
                let heap_bytes = handsets.values().map(|h| h.sims.bytes()).sum();
                Box::new(HandsetChurn {
                    cfg: self.cfg.clone(),
                    handsets,
                    fired,
                    max_keys: self.max_keys,
                    cap_hits: if p == counted { cap_hits } else { 0 },
                    heap_bytes,
                    times: Vec::new(),
                }) as Box<dyn Detector>
            })
            .collect()
    }

    fn merge(&mut self, part: Box<dyn Detector>) {
        let part = super::part_of::<Self>(part);
        super::absorb_map(&mut self.handsets, part.handsets);
        super::absorb_map(&mut self.fired, part.fired);
        self.heap_bytes += part.heap_bytes;
        self.cap_hits += part.cap_hits;
    }

    #[cfg(test)]
    fn keys(&self) -> Vec<(&'static str, u64)> {
        let mut v = super::named_keys("handsets", &self.handsets);
        v.extend(super::named_keys("fired", &self.fired));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testkit::*;
    use std::borrow::Cow;

    fn with_sim<'a>(mut e: Event<'a>, imei: &'a str, imsi: &'a str) -> Event<'a> {
        e.imei = Some(Cow::Borrowed(imei));
        e.imsi = Some(Cow::Borrowed(imsi));
        e
    }

    #[test]
    fn third_sim_in_a_handset_fires_with_sims_related() {
        let mut d = HandsetChurn::new(&Config::default(), 100);
        let mut h = Harness::new();
        assert!(h
            .feed(&mut d, &with_sim(sms("1", 0, "l1", "x"), "h", "s1"))
            .is_empty());
        assert!(h
            .feed(&mut d, &with_sim(sms("2", DAY, "l2", "x"), "h", "s2"))
            .is_empty());
        assert!(h
            .feed(
                &mut d,
                &with_sim(sms("3", DAY + HOUR, "l2", "x"), "h", "s2")
            )
            .is_empty());
        let f = h.feed(&mut d, &with_sim(sms("4", 2 * DAY, "l3", "x"), "h", "s3"));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].subject, "h");
        assert_eq!(f[0].subject_kind, SubjectKind::Handset);
        assert_eq!(f[0].related, vec!["s1", "s2", "s3"]);
        assert_eq!(f[0].lines.len(), 3);
        assert_eq!(f[0].evidence["sims"], 3);
    }

    #[test]
    fn a_sim_used_as_another_line_is_named_with_the_newest_and_cap_evicts_the_stalest() {
        let mut cfg = Config::default();
        cfg.handset_churn.max_sims_per_handset = 3;
        let mut d = HandsetChurn::new(&cfg, 100);
        let mut h = Harness::new();
        let feed = |h: &mut Harness, d: &mut HandsetChurn, id: &str, t, line, sim| {
            h.feed(d, &with_sim(sms(id, t, line, "x"), "h", sim))
        };
        assert!(feed(&mut h, &mut d, "1", 0, "l0", "s0").is_empty());
        assert!(feed(&mut h, &mut d, "2", HOUR, "l1", "s1").is_empty());
        // s1 moves to line l9; then s0 is the stalest and leaves for s3 at the cap.
        assert!(feed(&mut h, &mut d, "3", 2 * HOUR, "l9", "s1").is_empty());
        let f = feed(&mut h, &mut d, "4", 3 * HOUR, "l2", "s2");
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].related, ["s0", "s1", "s2"]);
        assert_eq!(
            f[0].evidence["lines"],
            serde_json::json!(["l0", "l9", "l2"])
        );
        feed(&mut h, &mut d, "5", 4 * HOUR, "l3", "s3");
        assert_eq!(d.stats().cap_hits, 1);
        let h0 = &d.handsets[&ids::id("h")];
        let names: Vec<_> = h0.sims.iter().map(|x| x.names()).collect();
        let want = [("s2", "l2"), ("s1", "l9"), ("s3", "l3")];
        let want: Vec<_> = want
            .iter()
            .map(|(s, l)| (s.to_string(), l.to_string()))
            .collect();
        assert_eq!(
            names, want,
            "s0 leaves, s2 takes its place and s3 comes last, as with swap_remove"
        );
        // Each SIM pays its fixed part and two packed names; the count is the allocation.
        assert_eq!(d.heap_bytes, h0.sims.0.len());
    }

    #[test]
    fn sims_spread_over_more_than_the_window_do_not_fire() {
        let mut d = HandsetChurn::new(&Config::default(), 100);
        let mut h = Harness::new();
        for (i, sim) in ["s1", "s2", "s3", "s4"].iter().enumerate() {
            let id = i.to_string();
            let f = h.feed(
                &mut d,
                &with_sim(sms(&id, i as Millis * 2 * DAY, "l", "x"), "h", sim),
            );
            assert!(f.is_empty());
        }
    }

    /// The SIMs of every handset held, by handset name: (SIM, last time) in list order,
    /// the head's time being the newest.
    fn sims_of(d: &HandsetChurn) -> Vec<(u64, Vec<(u32, u32)>)> {
        let mut v: Vec<_> = (d.handsets.iter()).map(|(k, h)| (*k, h.lasts())).collect();
        v.sort();
        v
    }

    /// Every slot's list brought up to date and its head forgotten: what the detector held
    /// before the head, every record then reading the list.
    fn without_heads(d: &mut HandsetChurn) {
        for h in d.handsets.values_mut() {
            h.flush();
            h.head = NO_HEAD;
        }
    }

    #[test]
    fn records_of_the_head_leave_the_list_alone_and_change_nothing_a_reading_would_see() {
        // Two detectors take the same records: one as built, one with every head forgotten
        // after each record (so every record reads and writes the list, as before the
        // head). Handsets keep their SIM and line for runs of records, as phones do, with
        // new SIMs, a SIM used as another line, late records and sweeps between.
        let mut cfg = Config::default();
        cfg.handset_churn.max_sims_per_handset = 4;
        let (mut d, mut r) = (HandsetChurn::new(&cfg, 100), HandsetChurn::new(&cfg, 100));
        let (mut hd, mut hr) = (Harness::new(), Harness::new());
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let names: Vec<String> = (0..40).map(|i| format!("n{i}")).collect();
        // Per handset: its SIM and line now.
        let mut now = [(0usize, 20usize); 4];
        let (mut t, mut fired, mut fast) = (DAY, 0, 0);
        for i in 0..3_000 {
            let k = next(4) as usize;
            match next(20) {
                0 => now[k].0 = next(20) as usize,      // a new (or earlier) SIM
                1 => now[k].1 = 20 + next(20) as usize, // used as another line
                _ => {}
            }
            t += next(3 * HOUR as u64) as i64;
            let at = if next(10) == 0 {
                t - next(4 * DAY as u64) as i64 // late, some before the window
            } else {
                t
            };
            let (hs, (sim, line)) = (format!("h{k}"), now[k]);
            let id = i.to_string();
            let ev = with_sim(sms(&id, at, &names[line], "x"), &hs, &names[sim]);
            let head = d.handsets.get(&ids::id(&hs)).map(|h| h.head);
            let ids = EventIds::of(&ev);
            let pair = pair_fp(ids::fp(ids.imsi.unwrap()), ids::fp(ids.from));
            fast += usize::from(head == Some(pair));
            let (a, b) = (hd.feed(&mut d, &ev), hr.feed(&mut r, &ev));
            assert_eq!(a, b, "record {i}");
            fired += a.len();
            without_heads(&mut r);
            assert_eq!(sims_of(&d), sims_of(&r), "record {i}");
            if i % 97 == 0 {
                d.expire(t);
                r.expire(t);
                without_heads(&mut r);
                assert_eq!(sims_of(&d), sims_of(&r), "sweep after record {i}");
                assert_eq!(d.stats(), r.stats(), "sweep after record {i}");
                // A checkpoint holds the lists up to date: the same bytes either way, and
                // the format from before the head (the handset as it was derived).
                assert_eq!(d.save_state().unwrap(), r.save_state().unwrap());
                #[derive(Serialize)]
                struct Before {
                    sims: Box<[u8]>,
                    newest_s: u32,
                    fired_s: u32,
                }
                let before: Vec<(u64, Before)> = (r.handsets.iter())
                    .map(|(k, h)| {
                        let b = Before {
                            sims: h.sims.0[..h.sims.whole_len()].into(),
                            newest_s: h.newest_s,
                            fired_s: r.fired.get(k).copied().unwrap_or(0),
                        };
                        (*k, b)
                    })
                    .collect();
                let before = codec::encode(&(before, r.cap_hits)).unwrap();
                assert_eq!(d.save_state().unwrap(), before);
            }
        }
        assert!(fired >= 5, "the records fire: {fired}");
        assert!(fast > 2_000, "most records are the head's: {fast}");
        // A load gives the same lists and heads back.
        let mut back = HandsetChurn::new(&cfg, 100);
        back.load_state(&d.save_state().unwrap()).unwrap();
        assert_eq!(sims_of(&back), sims_of(&d));
        assert_eq!(back.fired, d.fired);
        assert_eq!(back.save_state().unwrap(), d.save_state().unwrap());
    }

    #[test]
    fn a_list_of_one_sim_has_an_even_length_of_more_an_odd_one_and_a_checkpoint_no_pad() {
        let mut d = HandsetChurn::new(&Config::default(), 100);
        let mut h = Harness::new();
        // Pseudonyms of several lengths, so both parities come up without the pad.
        for (i, (hs, sim)) in [("h", "s1"), ("h", "s22"), ("h2", "s333"), ("h3", "s4444")]
            .into_iter()
            .chain((0..6).map(|i| ("h4", ["a", "bb", "ccc", "dddd", "e", "ff"][i])))
            .enumerate()
        {
            let id = i.to_string();
            h.feed(
                &mut d,
                &with_sim(sms(&id, i as i64 * MIN, "l", "x"), hs, sim),
            );
            for x in d.handsets.values() {
                assert_eq!(x.sims.one_sim(), x.sims.len() == 1);
                assert!(x.sims.0.len() - x.sims.whole_len() <= 1);
            }
        }
        // A checkpoint holds the SIMs' bytes alone, as the derived format did.
        for x in d.handsets.values() {
            let whole: Box<[u8]> = x.sims.0[..x.sims.whole_len()].into();
            assert_eq!(
                codec::encode(&x.sims).unwrap(),
                codec::encode(&whole).unwrap()
            );
        }
        assert!(d
            .handsets
            .values()
            .any(|x| x.sims.0.len() != x.sims.whole_len()));
        // And a load pads them again.
        let saved = d.save_state().unwrap();
        let mut back = HandsetChurn::new(&Config::default(), 100);
        back.load_state(&saved).unwrap();
        assert_eq!(sims_of(&back), sims_of(&d));
        for (k, x) in &back.handsets {
            assert_eq!(x.sims.0, d.handsets[k].sims.0);
        }
        assert_eq!(back.stats(), d.stats());
        assert_eq!(back.save_state().unwrap(), saved);
    }

    #[test]
    fn a_sweep_keeps_and_drops_what_reading_every_list_did() {
        let mut d = HandsetChurn::new(&Config::default(), 100);
        let window = d.cfg.window_s as i64 * 1000;
        let mut h = Harness::new();
        let t = 10 * DAY;
        let recs = [
            ("old", "s1", t - window - HOUR), // one SIM, all of it before the cutoff
            ("live", "s2", t - HOUR),         // one SIM, after it
            ("both", "s3", t - window - HOUR),
            ("both", "s4", t - HOUR), // two SIMs, the first before the cutoff
            ("new", "s5", t - 2 * HOUR),
            ("new", "s6", t - HOUR), // two SIMs, both after it
            ("gone", "s7", t - window - 2 * HOUR),
            ("gone", "s8", t - window - HOUR), // two SIMs, both before it
        ];
        let mut sorted = recs;
        sorted.sort_by_key(|r| r.2);
        for (i, (hs, sim, ts)) in sorted.into_iter().enumerate() {
            h.feed(
                &mut d,
                &with_sim(sms(&i.to_string(), ts, "l", "x"), hs, sim),
            );
        }
        d.expire(t);
        let fp = |s: &str| ids::fp(ids::id(s));
        let held = |name: &str| -> Option<Vec<u32>> {
            let x = d.handsets.get(&ids::id(name))?;
            Some(x.sims.iter().map(|x| x.sim_fp).collect())
        };
        assert_eq!(held("old"), None);
        assert_eq!(held("gone"), None);
        assert_eq!(held("live"), Some(vec![fp("s2")]));
        assert_eq!(held("both"), Some(vec![fp("s4")]));
        assert_eq!(held("new"), Some(vec![fp("s5"), fp("s6")]));
        // The trimmed list has one SIM now, and says so by its length.
        assert!(d.handsets[&ids::id("both")].sims.one_sim());
        assert_eq!(
            d.stats().bytes,
            ids::map_bytes(&d.handsets)
                + d.handsets.values().map(|x| x.sims.bytes()).sum::<usize>()
        );
    }

    #[test]
    fn per_handset_cap_is_counted() {
        let mut cfg = Config::default();
        cfg.handset_churn.max_sims_per_handset = 3;
        let mut d = HandsetChurn::new(&cfg, 100);
        let mut h = Harness::new();
        for i in 0..5 {
            let (id, sim) = (i.to_string(), format!("s{i}"));
            h.feed(&mut d, &with_sim(sms(&id, i * MIN, "l", "x"), "h", &sim));
        }
        assert_eq!(d.stats().cap_hits, 2);
        assert_eq!(d.stats().keys, 1);
    }

    /// SIMs s1 and s2 at the start, s4 three days and 10 minutes on, and s3 15 minutes
    /// before s4, in the given order of the last two: s3 makes three within the three days
    /// ending at its own time.
    fn late_completion(late_last: bool) -> Vec<Finding> {
        let mut d = HandsetChurn::new(&Config::default(), 100);
        let mut h = Harness::new();
        let mut all = Vec::new();
        all.extend(h.feed(&mut d, &with_sim(sms("1", DAY, "l1", "x"), "h", "s1")));
        all.extend(h.feed(&mut d, &with_sim(sms("2", DAY + MIN, "l2", "x"), "h", "s2")));
        assert!(all.is_empty());
        let s3 = with_sim(sms("3", 4 * DAY - 5 * MIN, "l3", "x"), "h", "s3");
        let s4 = with_sim(sms("4", 4 * DAY + 10 * MIN, "l4", "x"), "h", "s4");
        let order = if late_last { [s4, s3] } else { [s3, s4] };
        for ev in &order {
            all.extend(h.feed(&mut d, ev));
        }
        all
    }

    #[test]
    fn late_sim_fires_in_its_own_window_whatever_the_order() {
        for late_last in [false, true] {
            let f = late_completion(late_last);
            assert_eq!(f.len(), 1, "late_last = {late_last}");
            assert_eq!(f[0].related, vec!["s1", "s2", "s3"]);
            assert_eq!(f[0].window_end, 4 * DAY - 5 * MIN);
        }
    }

    /// A burner's SIMs, each used as a line of its own: the lines' shards differ from the
    /// handset's, which alone holds its SIMs; the same finding whatever the shard count.
    #[test]
    fn a_burner_fires_the_same_on_one_two_and_three_shards() {
        use crate::detect::shardkit::{key, Shards};
        let run = |n: usize| {
            let mut x = Shards::new(HandsetChurn::new(&Config::default(), 100), n, None);
            let mut out = Vec::new();
            for i in 0..5i64 {
                let (id, line, sim) = (format!("e{i}"), format!("line{i}"), format!("s{i}"));
                let ev = with_sim(sms(&id, i * 6 * HOUR, &line, "x"), "burner", &sim);
                out.extend(x.feed(&ev));
                out.extend(x.barrier());
            }
            out.iter().map(key).collect::<Vec<_>>()
        };
        let one = run(1);
        assert_eq!(one.len(), 1, "{one:?}");
        assert_eq!(one[0].1, "burner");
        assert_eq!(run(2), one);
        assert_eq!(run(3), one);
    }
}
