//! The engine: one record in, verdict and alerts out. `replay`, `demo`, `tune` and the Kafka
//! service all drive this same type, so they detect identically.
//!
//! For each record: decode → duplicate check → lateness check against the watermark → the
//! record in each of its roles (sender, recipient, handset) on the shard that owns the role's
//! key: contact state → each detector → the combined verdict → cooldown → alerts. Evidence
//! one key's detectors learn about another key is applied at barriers (the watermark crossing
//! a multiple of `engine.exchange_epoch_s`), where state is also swept. See
//! `docs/sharding.md` and [`crate::exchange`].

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::alert::{Alert, Finding};
use crate::cells::{CellMap, CellPlace};
use crate::checkpoint::{codec, Section};
use crate::config::Config;
use crate::detect::{self, deal_line::DealLine, Ctx, Detector, EventIds, StateStats};
use crate::event::{self, DecodeOptions, Event, Kind, Malformed, Millis, Reason};
use crate::exchange::{Dest, Evidence, Name, Role, Sent};
use crate::ids::{self, IdMap};
use crate::idset::IdSet;
use crate::state::{Contacts, Recorded};
use crate::watermark::Watermarks;

/// What happened to one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Used by the detectors.
    Valid,
    /// Same `event_id` as a record already seen: not used.
    Duplicate,
    /// Malformed or late: to the dead-letter output with this reason.
    Rejected(Malformed),
}

/// Running totals, for `--summary`, metrics and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub events_total: u64,
    pub events_valid: u64,
    /// Rejected for any reason but lateness.
    pub events_malformed: u64,
    pub events_duplicate: u64,
    pub events_late: u64,
    /// Per reason code, in [`Reason::ALL`] order (including `late`).
    pub rejected_by_reason: [u64; Reason::ALL.len()],
    pub alerts_total: u64,
    /// Per detector, in [`detect::DETECTORS`] order.
    pub alerts_by_detector: [u64; detect::DETECTORS.len()],
    /// Findings held back by the cooldown.
    pub alerts_suppressed: u64,
    /// Times the shared contact store hit a cap.
    pub contact_cap_hits: u64,
    /// With a cell map loaded: valid records that carry no `cell`, and records whose cell
    /// the map does not list. Both are skipped by `runner_movement`, never rejected.
    pub cells_missing: u64,
    pub cells_unknown: u64,
}

/// Width of a dedup expiry bucket: ids are forgotten at most this long after their
/// retention, and a bucket per minute of event time keeps the bucket map small (two hours
/// of retention is about 120 buckets).
const DEDUP_BUCKET_MS: Millis = 60_000;

/// How many records ahead of its ingest a record's dedup slot is asked for in a batch.
const DEDUP_AHEAD: usize = 8;

/// The dedup key of a decoded record: its event id's hash (0 for a record that failed to
/// decode, which never reaches the dedup set).
fn id_hash(decoded: &Result<Event<'_>, Malformed>) -> u64 {
    decoded.as_ref().map_or(0, |ev| ids::id(&ev.event_id))
}

/// Remembers event ids for the dedup retention.
///
/// Ids are expired by event-time bucket, not in arrival order: with several partitions, or
/// one record far ahead of the rest, arrival order is not time order, and a queue that stops
/// at its first unexpired entry would never shrink behind it.
#[derive(Clone, Default)]
pub struct Dedup {
    seen: IdSet,
    /// Event-time minute → the ids first seen with an event time in it.
    buckets: BTreeMap<Millis, Vec<u64>>,
}

impl Dedup {
    pub fn new() -> Self {
        Dedup {
            seen: IdSet::default(),
            buckets: BTreeMap::new(),
        }
    }

    /// True if the id was new; it is remembered under `ts`.
    pub fn insert(&mut self, h: u64, ts: Millis) -> bool {
        if self.seen.insert(h) {
            self.buckets
                .entry(ts.div_euclid(DEDUP_BUCKET_MS))
                .or_default()
                .push(h);
            true
        } else {
            false
        }
    }

    /// Forgets an id just inserted (its record turned out late, so it was never used: a
    /// re-delivery of it must be judged afresh, not called a duplicate).
    pub fn forget(&mut self, h: u64, ts: Millis) {
        if self.seen.remove(h) {
            if let Some(b) = self.buckets.get_mut(&ts.div_euclid(DEDUP_BUCKET_MS)) {
                // Just pushed: it is the last entry of its bucket.
                if b.last() == Some(&h) {
                    b.pop();
                }
            }
        }
    }

    /// Forgets every id whose bucket ends at or before `cutoff`.
    pub fn expire(&mut self, cutoff: Millis) {
        // Buckets wholly before the cutoff: key + 1 <= cutoff / width.
        let keep = self.buckets.split_off(&cutoff.div_euclid(DEDUP_BUCKET_MS));
        for ids in std::mem::replace(&mut self.buckets, keep).into_values() {
            for h in ids {
                self.seen.remove(h);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Asks for the cache line `insert(h, _)` will probe, without waiting for it.
    #[inline]
    pub fn prefetch(&self, h: u64) {
        self.seen.prefetch(h);
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Adds another set's ids (a partition stage restored from several saved ones).
    pub fn absorb(&mut self, other: Dedup) {
        for (bucket, ids) in other.buckets {
            let mine = self.buckets.entry(bucket).or_default();
            mine.extend(ids.into_iter().filter(|h| self.seen.insert(*h)));
        }
    }

    pub fn bytes(&self) -> usize {
        self.seen.bytes()
            + self
                .buckets
                .values()
                .map(|b| b.capacity() * 8 + 48)
                .sum::<usize>()
    }

    /// The ids by event-time bucket: the set is rebuilt from them on load.
    pub fn save_state(&self) -> Result<Vec<u8>, codec::Error> {
        codec::encode(&self.buckets)
    }

    pub fn load_state(&mut self, bytes: &[u8]) -> Result<(), codec::Error> {
        self.buckets = codec::decode(bytes)?;
        self.seen = self.buckets.values().flatten().copied().collect();
        Ok(())
    }
}

/// The ingest's state (everything that is not a shard's), saved as one checkpoint section.
#[derive(Serialize, Deserialize)]
struct CoreState {
    watermarks: Watermarks,
    /// Saved so the handover warm-up is measured from the stream's real start, not from
    /// the first record after a restore.
    stream_start: Option<Millis>,
    last_sweep: Millis,
    since_sweep: u64,
    /// The ingest's counters (the shards keep their own alert counters).
    counters: Counters,
    /// Valid records so far: the sequence number of the last one.
    seq: u64,
    /// The epoch of the last barrier (watermark ÷ `exchange_epoch_s`).
    epoch: i64,
    lines_at_barrier: usize,
    /// The shard count the shard sections were written with.
    shards: u32,
    /// Evidence sent and not yet applied: it is applied at the first barrier after the load.
    pending: Vec<Evidence>,
}

/// A shard's own engine-wide state, saved as its `shard` section.
#[derive(Serialize, Deserialize)]
struct ShardCore {
    /// The shard's cooldown ([`Shard::cooldown`]).
    cooldown: IdMap<(u32, u8)>,
    /// Its alert counters and contact cap hits (the other fields stay zero).
    counters: Counters,
}

/// A checkpoint could not be loaded into the engine.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("checkpoint has no section {0:?}")]
    MissingSection(String),
    #[error("checkpoint section {name:?}: {source}")]
    Decode {
        name: String,
        #[source]
        source: codec::Error,
    },
    #[error("checkpoint names no shards")]
    NoShards,
}

/// The key group of a key: `docs/sharding.md` fixes 256 groups, the unit a checkpoint will be
/// split by and a Kafka partition will carry. Mixed first: the id hashes' own top bits are
/// what the hash maps of a shard use, so a shard's keys must not share them.
#[inline]
pub fn key_group(key: u64) -> usize {
    (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as usize
}

/// The number of key groups.
pub const KEY_GROUPS: usize = 256;

/// The shard (of `n`) that owns a key: contiguous ranges of key groups.
#[inline]
pub fn shard_of(key: u64, n: usize) -> usize {
    key_group(key) * n / KEY_GROUPS
}

/// The most rounds one barrier runs (evidence sent while applying evidence is applied in the
/// next round of the same barrier); what is left waits for the next barrier. The exchanges
/// chain at most a few deep (a handset finding, the verdict it completes, the trade fact the
/// verdict makes), so reaching this means evidence that keeps making evidence: counted.
pub const MAX_ROUNDS: usize = 16;

/// What a shard made of a segment: its alerts tagged with (record index, role), and the
/// evidence it sent.
type ShardOutput = (Vec<(usize, Role, Alert)>, Vec<Evidence>);

/// A valid record as the ingest hands it to the shards: the decoded record itself stays
/// where it was decoded (a batch's records, a few hundred bytes each, were moved into the
/// segment, and moving records was 5 % of a two-shard replay's samples, `perf`).
struct Valid<'a> {
    ev: &'a Event<'a>,
    ids: EventIds,
    cell: Option<CellPlace>,
    /// Its sequence number among valid records.
    seq: u64,
    /// Its index in the batch ([`Engine::process_batch`]).
    idx: usize,
}

impl Valid<'_> {
    /// Its roles, in order, with the shard (of `n`) that owns each role's key.
    fn roles(&self, n: usize) -> impl Iterator<Item = (Role, usize)> + '_ {
        let keys = [Some(self.ids.from), Some(self.ids.to), self.ids.imei];
        Role::RECORD
            .into_iter()
            .zip(keys)
            .filter_map(move |(role, key)| Some((role, shard_of(key?, n))))
    }
}

/// One key-partition of the detectors: the contact store, every detector and the cooldown
/// for the numbers and handsets it owns. A shard never reads another's state: what crosses
/// keys is [`Evidence`], applied at barriers.
struct Shard {
    /// Its number among the engine's shards (a stage's partition number): what its answers
    /// to a broadcast name as their sender ([`Ctx::shard`]).
    index: usize,
    contacts: Contacts,
    primaries: Vec<Box<dyn Detector>>,
    deal: DealLine,
    /// [`cooldown_key`] (detector, subject) → event time (s) of the last alert and the
    /// detector's index: with it the subject is known again, and so its owner when a
    /// restore moves key groups (the pair fills the padding a `u32` value leaves).
    cooldown: IdMap<(u32, u8)>,
    counters: Counters,
    findings: Vec<Finding>,
    deal_findings: Vec<Finding>,
    /// Scratch for what detectors push from `on_findings` (nothing, today).
    side_findings: Vec<Finding>,
    sent: Vec<Sent>,
}

impl Clone for Shard {
    fn clone(&self) -> Self {
        Shard {
            index: self.index,
            contacts: self.contacts.clone(),
            primaries: self.primaries.iter().map(|d| d.box_clone()).collect(),
            deal: self.deal.clone(),
            cooldown: self.cooldown.clone(),
            counters: self.counters.clone(),
            findings: Vec::new(),
            deal_findings: Vec::new(),
            side_findings: Vec::new(),
            sent: Vec::new(),
        }
    }
}

/// What every call into a shard shares: the ingest's view of the stream.
struct Stream<'a> {
    start: Millis,
    cells: Option<&'a CellMap>,
    wall: Millis,
    version: &'a str,
    cooldown_s: u32,
    /// Shards (or stage partitions) a broadcast reaches.
    shards: usize,
}

/// The [`Stream`] of an engine, borrowing only the fields it names (so the shards and the
/// pending evidence stay free to borrow mutably beside it).
macro_rules! stream {
    ($e:expr, $wall:expr) => {
        Stream {
            start: $e.stream_start.unwrap_or(0),
            cells: $e.cells.as_deref(),
            wall: $wall,
            version: &$e.version,
            cooldown_s: ids::span_secs($e.cfg.alerts.cooldown_s),
            shards: $e.shards.len(),
        }
    };
}

/// A configuration for one of `n` shards: the key caps are divided between them (a cap is
/// a memory bound per process; results differ between shard counts only once one is hit).
fn shard_config(cfg: &Config, n: usize) -> Config {
    let mut c = cfg.clone();
    let share = |v: usize| v.div_ceil(n).max(1);
    c.engine.max_keys_per_detector = share(c.engine.max_keys_per_detector);
    c.line_handover.max_sketched_lines = share(c.line_handover.max_sketched_lines);
    c
}

/// The cooldown's key for a detector (its index in [`detect::DETECTORS`]) and a subject;
/// the same again gives the subject back from the key.
fn cooldown_key(subject_or_key: u64, detector: usize) -> u64 {
    subject_or_key ^ (detector as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The order of the `k`-th piece sent while applying the evidence ranked `rank` in its round
/// (see [`Evidence::order`]); what a `broadcast` makes is ordered by the hint its detector
/// gave, else by its content, never by which shard sent it. A broadcast is applied on every
/// shard and each numbers what it sends from 0: ordered by index, two shards' pieces tied,
/// the next round's unstable sort put them in an order set by which shard held what, and a
/// line credited by two runners at once named one runner with one shard and the other with
/// two (the 150,000-subscriber city, 2026-12-08).
fn sent_order(rank: usize, broadcast: bool, k: usize, s: &Sent) -> [u64; 4] {
    let hint = match broadcast && s.hint == [0, 0] {
        true => content_hint(s),
        false => s.hint,
    };
    [rank as u64, hint[0], hint[1], k as u64]
}

/// A sort key for evidence from its destination and body alone (see [`Shard::apply`]):
/// equal only for pieces that are the same, whose order then changes nothing.
fn content_hint(s: &Sent) -> [u64; 2] {
    // Evidence is plain data: it always encodes (a failure would leave the index to order).
    let bytes = codec::encode(&(s.dest, &s.body)).unwrap_or_default();
    let h = xxhash_rust::xxh3::xxh3_128(&bytes);
    [(h >> 64) as u64, h as u64]
}

/// The total order of evidence sent on a record: event time (sign-flipped so negative times
/// sort first), then the record, the role and the index within the call.
fn record_order(at: Millis, seq: u64, role: Role, k: usize) -> [u64; 4] {
    [
        (at as u64) ^ (1 << 63),
        seq,
        (role as u64) << 32 | k as u64,
        0,
    ]
}

/// A checkpoint section by name.
fn find_section<'a>(sections: &'a [Section], name: &str) -> Result<&'a [u8], LoadError> {
    sections
        .iter()
        .find(|s| s.name == name)
        .map(|s| s.bytes.as_slice())
        .ok_or_else(|| LoadError::MissingSection(name.to_string()))
}

fn decode_error(name: &str) -> impl FnOnce(codec::Error) -> LoadError {
    let name = name.to_string();
    move |source| LoadError::Decode { name, source }
}

/// For a checkpoint of `saved` shards restored into `running`: the running shard that takes
/// saved shard `i`'s counters, the owner of its first key group (so each saved shard's
/// counters are taken once, and sum to what they did). A saved shard owning no group (more
/// shards than groups) owns no keys either: shard 0 takes its counters.
fn counted_by(i: usize, saved: usize, running: usize) -> usize {
    let first = (i * KEY_GROUPS).div_ceil(saved.max(1));
    if first < KEY_GROUPS && first * saved / KEY_GROUPS == i {
        first * running / KEY_GROUPS
    } else {
        0
    }
}

/// Adds a shard's counters (alerts and contact cap hits: the fields a shard counts) to
/// `into`, as [`Engine::counters`] sums them.
fn add_shard_counters(into: &mut Counters, c: &Counters) {
    into.alerts_total += c.alerts_total;
    into.alerts_suppressed += c.alerts_suppressed;
    into.contact_cap_hits += c.contact_cap_hits;
    for (a, b) in into.alerts_by_detector.iter_mut().zip(c.alerts_by_detector) {
        *a += b;
    }
}

/// Split and merge of each state component (`docs/sharding.md` step 3), on a shard that has
/// seen part of a generated city (until every component holds keys) with small key caps (so
/// cap hits count too).
#[cfg(test)]
mod key_group_tests {
    use super::*;
    use crate::generate::{self, GenOptions};

    /// Every key of every component, `(component, map, key)`; the cooldown by subject.
    fn keys(sh: &Shard) -> Vec<(&'static str, &'static str, u64)> {
        let mut v: Vec<_> = sh
            .contacts
            .keys()
            .into_iter()
            .map(|(m, k)| ("contacts", m, k))
            .collect();
        for d in sh
            .primaries
            .iter()
            .map(|d| &**d)
            .chain([&sh.deal as &dyn Detector])
        {
            v.extend(d.keys().into_iter().map(|(m, k)| (d.name(), m, k)));
        }
        v.extend(
            sh.cooldown
                .iter()
                .map(|(&k, &(_, di))| ("cooldown", "subjects", cooldown_key(k, di as usize))),
        );
        v.sort_unstable();
        v
    }

    fn cap_hits(sh: &Shard) -> Vec<u64> {
        let mut v: Vec<u64> = sh.primaries.iter().map(|d| d.stats().cap_hits).collect();
        v.push(sh.deal.stats().cap_hits);
        v
    }

    /// The shard once every component holds keys (from a third of the city on), and the
    /// configuration it runs under.
    fn half_city() -> (Shard, Config) {
        let opts = GenOptions {
            seed: 4,
            subscribers: 3_000,
            days: 3,
            ..GenOptions::default()
        };
        let (events, _, _) = generate::generate_in_memory(&opts).expect("generate");
        let mut csv = Vec::new();
        generate::write_cells(&opts, &mut csv).expect("cells");
        let mut cfg = Config::default();
        // Caps every detector with much state reaches on this city.
        cfg.engine.max_keys_per_detector = 2_500;
        cfg.line_handover.max_sketched_lines = 200;
        let mut e = Engine::new(cfg.clone());
        e.set_cells(Some(Arc::new(CellMap::parse(&csv).expect("cell map"))));
        let mut alerts = Vec::new();
        let lines: Vec<&[u8]> = events.split(|&b| b == b'\n').collect();
        // From a third of the city on, stop where every component holds keys (a line's
        // bulk finding is forgotten within hours).
        let held = |e: &Engine| {
            let ks = keys(&e.shards[0]);
            ks.iter().any(|x| x.1.starts_with("every/"))
                && ["contacts", "cooldown"]
                    .into_iter()
                    .chain(detect::DETECTORS)
                    .all(|c| ks.iter().any(|x| x.0 == c))
        };
        for (i, l) in lines.iter().enumerate() {
            e.process(l, 0, 1_900_000_000_000, &mut alerts);
            if i > lines.len() / 3 && i % 100 == 0 && held(&e) {
                break;
            }
        }
        assert!(held(&e), "{:?}", e.state_stats());
        (e.shards.remove(0), cfg)
    }

    #[test]
    fn each_component_splits_by_owner_and_merges_back_whole() {
        let (whole, cfg) = half_city();
        let before = keys(&whole);
        type Keys = Vec<(&'static str, &'static str, u64)>;
        let pick = |v: &Keys, broadcast: bool| -> Keys {
            v.iter()
                .filter(|x| x.1.starts_with("every/") == broadcast)
                .copied()
                .collect()
        };
        let owned = |v: &Keys| pick(v, false);
        let every = |v: &Keys| pick(v, true);
        // Every component holds keys here, so each one's split is looked at.
        for c in ["contacts", "cooldown"]
            .into_iter()
            .chain(detect::DETECTORS)
        {
            assert!(before.iter().any(|x| x.0 == c), "no {c} state to split");
        }
        assert!(!every(&before).is_empty(), "no broadcast state to copy");
        assert!(cap_hits(&whole).iter().filter(|&&h| h > 0).count() >= 2);
        assert!(whole.counters.alerts_suppressed > 0 && whole.counters.contact_cap_hits > 0);
        let mut sections = Vec::new();
        whole.save(0, &mut sections).unwrap();
        for n in [2, 3, 8] {
            let mut from = whole.clone();
            let parts = from.split(n, &|k| shard_of(k, n), 1);
            assert_eq!(parts.len(), n);
            assert!(keys(&from).is_empty(), "split leaves the shard empty");
            let mut all = Vec::new();
            for (p, sh) in parts.iter().enumerate() {
                let ks = keys(sh);
                for x in owned(&ks) {
                    assert_eq!(shard_of(x.2, n), p, "{x:?} on shard {p} of {n}");
                }
                assert_eq!(
                    every(&ks),
                    every(&before),
                    "broadcast copy on shard {p} of {n}"
                );
                all.extend(owned(&ks));
            }
            // Nothing lost, nothing on two shards.
            all.sort_unstable();
            assert_eq!(all, owned(&before), "{n} shards");
            // The counters sum to the same.
            let mut c = Counters::default();
            let mut hits = vec![0; cap_hits(&whole).len()];
            for sh in &parts {
                add_shard_counters(&mut c, &sh.counters);
                for (a, b) in hits.iter_mut().zip(cap_hits(sh)) {
                    *a += b;
                }
            }
            assert_eq!(c, whole.counters, "{n} shards");
            assert_eq!(hits, cap_hits(&whole), "{n} shards");
            // Merged back: the same keys, counters and (as saved) the same bytes.
            let mut merged = Shard::new(&cfg, 1, 0);
            for part in parts {
                merged.merge(part);
            }
            assert_eq!(keys(&merged), before, "{n} shards merged");
            assert_eq!(merged.counters, whole.counters);
            assert_eq!(cap_hits(&merged), cap_hits(&whole));
            let mut again = Vec::new();
            merged.save(0, &mut again).unwrap();
            for (a, b) in sections.iter().zip(&again) {
                assert_eq!(a.bytes.len(), b.bytes.len(), "{} after {n} shards", a.name);
            }
        }
    }

    #[test]
    fn a_saved_shards_counters_go_to_the_owner_of_its_first_key_group() {
        for saved in [1, 2, 3, 5, 8, 256, 300] {
            for running in [1, 2, 3, 7, 8, 256, 300] {
                for i in 0..saved {
                    let c = counted_by(i, saved, running);
                    assert!(c < running, "{i} of {saved} -> {running}");
                    match (0..KEY_GROUPS).find(|g| g * saved / KEY_GROUPS == i) {
                        Some(g) => assert_eq!(c, g * running / KEY_GROUPS),
                        None => assert_eq!(c, 0),
                    }
                }
            }
        }
    }
}

impl Shard {
    /// Shard `index` of `n`, empty.
    fn new(cfg: &Config, n: usize, index: usize) -> Self {
        let cfg = shard_config(cfg, n);
        let (max_lines, max_contacts, retention) = contact_bounds(&cfg);
        let (primaries, deal) = detect::build(&cfg);
        Shard {
            index,
            contacts: Contacts::new(max_lines, max_contacts, retention),
            primaries,
            deal,
            cooldown: IdMap::default(),
            counters: Counters::default(),
            findings: Vec::new(),
            deal_findings: Vec::new(),
            side_findings: Vec::new(),
            sent: Vec::new(),
        }
    }

    fn reconfigure(&mut self, cfg: &Config, n: usize) {
        let cfg = shard_config(cfg, n);
        let (max_lines, max_contacts, retention) = contact_bounds(&cfg);
        self.contacts
            .reconfigure(max_lines, max_contacts, retention);
        for d in &mut self.primaries {
            d.reconfigure(&cfg);
        }
        self.deal.reconfigure(&cfg);
    }

    /// Warms what [`Shard::role`] will probe for the record's key in `role` (see
    /// [`Detector::warm`]): called for every role of a record before the first runs.
    fn warm(&self, v: &Valid<'_>, role: Role) {
        match role {
            Role::Sender => self.contacts.warm(v.ids.from),
            Role::Recipient => self.contacts.warm(v.ids.to),
            Role::Handset | Role::Barrier => {}
        }
        for d in &self.primaries {
            d.warm(&v.ids, role);
        }
    }

    /// One record in one role: the key of that role is this shard's.
    fn role(
        &mut self,
        v: &Valid<'_>,
        role: Role,
        st: &Stream<'_>,
        alerts: &mut Vec<Alert>,
        outbox: &mut Vec<Evidence>,
    ) {
        let (ev, ids, seq, cell) = (&v.ev, &v.ids, v.seq, v.cell);
        if role == Role::Sender {
            let to = (ev.kind == Kind::Sms).then_some(ids.to);
            let hit = self.contacts.record_outbound(ids.from, to, ev.ts, ids.imei);
            if hit != Recorded::Ok {
                self.counters.contact_cap_hits += 1;
            }
        }
        self.findings.clear();
        self.sent.clear();
        let mut ctx = Ctx {
            role,
            contacts: &mut self.contacts,
            stream_start: st.start,
            out: &mut self.findings,
            outbox: &mut self.sent,
            cells: st.cells,
            cell,
            shards: st.shards,
            shard: self.index,
        };
        for d in &mut self.primaries {
            d.on_event(ev, ids, &mut ctx);
        }
        self.conclude(ev.ts, role, &ev.event_id, st, alerts);
        if self.sent.is_empty() {
            return;
        }
        let at = ev.ts;
        // A record sends one piece nearly always (a handset's arrival): moved straight from
        // the detector's outbox to the barrier's, without the drain's loop and drop (on the
        // bench mix the loop was a tenth of the instructions and the most instruction-cache
        // misses the arrival added, by cachegrind).
        if self.sent.len() == 1 {
            if let Some(s) = self.sent.pop() {
                outbox.push(Evidence {
                    dest: s.dest,
                    at,
                    event_id: Name::new(&ev.event_id),
                    order: record_order(at, seq, role, 0),
                    body: s.body,
                });
            }
            return;
        }
        // One copy of the id per piece, the last piece taking the one made here.
        let mut event_id = Name::new(&ev.event_id);
        let last = self.sent.len() - 1;
        outbox.extend(self.sent.drain(..).enumerate().map(|(k, s)| Evidence {
            dest: s.dest,
            at,
            event_id: match k == last {
                true => std::mem::take(&mut event_id),
                false => event_id.clone(),
            },
            order: record_order(at, seq, role, k),
            body: s.body,
        }));
    }

    /// One piece of evidence for a key of this shard, ranked `rank` in its round.
    fn apply(
        &mut self,
        e: &Evidence,
        rank: usize,
        st: &Stream<'_>,
        alerts: &mut Vec<Alert>,
        outbox: &mut Vec<Evidence>,
    ) {
        self.findings.clear();
        self.sent.clear();
        let mut ctx = Ctx {
            role: Role::Barrier,
            contacts: &mut self.contacts,
            stream_start: st.start,
            out: &mut self.findings,
            outbox: &mut self.sent,
            cells: st.cells,
            cell: None,
            shards: st.shards,
            shard: self.index,
        };
        // Offered to the one detector that applies it (`deal_line`, past the primaries, is
        // last in `DETECTORS`, as `detect::build` makes them).
        match self.primaries.get_mut(e.body.applied_by()) {
            Some(d) => d.on_evidence(e, &mut ctx),
            None => self.deal.on_evidence(e, &mut ctx),
        }
        self.conclude(e.at, Role::Barrier, &e.event_id, st, alerts);
        // What a broadcast makes is ordered by content, not by the shard (`sent_order`).
        let broadcast = e.dest == Dest::Every;
        outbox.extend(self.sent.drain(..).enumerate().map(|(k, s)| Evidence {
            dest: s.dest,
            at: e.at,
            event_id: e.event_id.clone(),
            order: sent_order(rank, broadcast, k, &s),
            body: s.body,
        }));
    }

    /// After a call: the verdict over what it found, the detectors that learn from findings,
    /// the cooldown, and the alerts (their id from `event_id`).
    fn conclude(
        &mut self,
        at: Millis,
        role: Role,
        event_id: &str,
        st: &Stream<'_>,
        alerts: &mut Vec<Alert>,
    ) {
        if self.findings.is_empty() {
            return;
        }
        self.deal_findings.clear();
        let mut ctx = Ctx {
            role,
            contacts: &mut self.contacts,
            stream_start: st.start,
            out: &mut self.deal_findings,
            outbox: &mut self.sent,
            cells: st.cells,
            cell: None,
            shards: st.shards,
            shard: self.index,
        };
        self.deal.on_findings(at, &self.findings, &mut ctx);
        // Detectors that learn from the others' findings (`runner_movement`: which lines
        // carry deal evidence). Only on calls with findings, so it costs nothing otherwise.
        let mut ctx = Ctx {
            role,
            contacts: &mut self.contacts,
            stream_start: st.start,
            out: &mut self.side_findings,
            outbox: &mut self.sent,
            cells: st.cells,
            cell: None,
            shards: st.shards,
            shard: self.index,
        };
        for d in &mut self.primaries {
            d.on_findings(at, &self.findings, &mut ctx);
            d.on_findings(at, &self.deal_findings, &mut ctx);
        }
        self.side_findings.clear();
        let all = self.findings.drain(..).chain(self.deal_findings.drain(..));
        for f in all {
            let di = detect::DETECTORS
                .iter()
                .position(|d| *d == f.detector)
                .unwrap_or(0);
            let key = cooldown_key(f.subject_id, di);
            let at = ids::secs(f.event_time);
            if let Some(&(last, _)) = self.cooldown.get(&key) {
                if at < last.saturating_add(st.cooldown_s) && at + st.cooldown_s > last {
                    self.counters.alerts_suppressed += 1;
                    continue;
                }
            }
            self.cooldown.insert(key, (at, di as u8));
            self.counters.alerts_total += 1;
            self.counters.alerts_by_detector[di] += 1;
            alerts.push(f.into_alert(event_id, st.wall, st.version));
        }
    }

    fn expire(&mut self, watermark: Millis, cooldown_s: u64) {
        self.contacts.expire(watermark);
        for d in &mut self.primaries {
            d.expire(watermark);
        }
        self.deal.expire(watermark);
        let cutoff = ids::secs(watermark).saturating_sub(ids::span_secs(cooldown_s));
        self.cooldown.retain(|_, (at, _)| *at >= cutoff);
    }

    /// The shard's sections, named as shard `i`'s.
    fn save(&self, i: usize, v: &mut Vec<Section>) -> Result<(), codec::Error> {
        let name = |n: &str| Engine::section_name(i, n);
        let own = ShardCore {
            cooldown: self.cooldown.clone(),
            counters: self.counters.clone(),
        };
        v.push(Section::new(&name("shard"), codec::encode(&own)?));
        v.push(Section::new(&name("contacts"), self.contacts.save_state()?));
        for d in &self.primaries {
            v.push(Section::new(&name(d.name()), d.save_state()?));
        }
        v.push(Section::new(
            &name(self.deal.name()),
            self.deal.save_state()?,
        ));
        Ok(())
    }

    /// Replaces the state with saved shard `i`'s sections.
    fn load(&mut self, sections: &[Section], i: usize) -> Result<(), LoadError> {
        let name = |n: &str| Engine::section_name(i, n);
        let own: ShardCore = codec::decode(find_section(sections, &name("shard"))?)
            .map_err(decode_error(&name("shard")))?;
        self.cooldown = own.cooldown;
        self.counters = own.counters;
        self.contacts
            .load_state(find_section(sections, &name("contacts"))?)
            .map_err(decode_error(&name("contacts")))?;
        for d in &mut self.primaries {
            let n = name(d.name());
            d.load_state(find_section(sections, &n)?)
                .map_err(decode_error(&n))?;
        }
        let n = name(self.deal.name());
        self.deal
            .load_state(find_section(sections, &n)?)
            .map_err(decode_error(&n))
    }

    /// Deals the state out to `parts` shards by `owner(key)` (the cooldown by its subject,
    /// the rest as each component keys it), the counters to part `counted`; `self` is left
    /// empty.
    fn split(&mut self, parts: usize, owner: &dyn Fn(u64) -> usize, counted: usize) -> Vec<Shard> {
        let parts = parts.max(1);
        let mut cooldown: Vec<IdMap<(u32, u8)>> = (0..parts).map(|_| IdMap::default()).collect();
        for (k, v) in std::mem::take(&mut self.cooldown) {
            cooldown[owner(cooldown_key(k, v.1 as usize)).min(parts - 1)].insert(k, v);
        }
        let counters = std::mem::take(&mut self.counters);
        let mut out: Vec<Shard> = self
            .contacts
            .split(parts, owner)
            .into_iter()
            .zip(self.deal.split(parts, owner, counted))
            .zip(cooldown)
            .enumerate()
            .map(|(p, ((contacts, deal), cooldown))| Shard {
                index: p,
                contacts,
                primaries: Vec::new(),
                deal: *detect::part_of::<DealLine>(deal),
                cooldown,
                counters: if p == counted {
                    counters.clone()
                } else {
                    Counters::default()
                },
                findings: Vec::new(),
                deal_findings: Vec::new(),
                side_findings: Vec::new(),
                sent: Vec::new(),
            })
            .collect();
        for d in &mut self.primaries {
            for (sh, part) in out.iter_mut().zip(d.split(parts, owner, counted)) {
                sh.primaries.push(part);
            }
        }
        out
    }

    /// Adds a part [`Shard::split`] made of another shard (built from the same
    /// configuration, so its detectors are this one's, in the same order).
    fn merge(&mut self, part: Shard) {
        self.contacts.merge(part.contacts);
        for (d, p) in self.primaries.iter_mut().zip(part.primaries) {
            debug_assert_eq!(d.name(), p.name());
            d.merge(p);
        }
        self.deal.merge(Box::new(part.deal));
        detect::absorb_map(&mut self.cooldown, part.cooldown);
        add_shard_counters(&mut self.counters, &part.counters);
    }
}

/// The detection engine: an ingest (decode, bounds, dedup, watermark, lateness) and the
/// detectors partitioned by key into shards, exchanging evidence at barriers
/// (`docs/sharding.md`). The alerts are the same whatever the shard count.
pub struct Engine {
    cfg: Config,
    version: String,
    decode: DecodeOptions,
    watermarks: Watermarks,
    dedup: Dedup,
    stream_start: Option<Millis>,
    last_sweep: Millis,
    /// Valid and late records since the last sweep.
    since_sweep: u64,
    counters: Counters,
    /// A fixed reference clock for the future-timestamp bound instead of the wall time
    /// passed with each record (`replay --now`, tests).
    reference: Option<Millis>,
    /// Lateness judged against the record's own partition's watermark, not the minimum
    /// over partitions (the `[streams]` ingest: see [`Engine::judge_lateness_per_partition`]).
    lateness_per_partition: bool,
    /// The cell map (`--cells`): not state, not configuration; shared by engine copies.
    cells: Option<Arc<CellMap>>,
    seq: u64,
    epoch: i64,
    /// Lines tracked at the last barrier (the sweep's record count).
    lines_at_barrier: usize,
    shards: Vec<Shard>,
    /// Evidence sent since the last barrier.
    pending: Vec<Evidence>,
    /// Barriers run and evidence applied (for `--summary` and metrics).
    exchange: ExchangeStats,
    /// Threads for shards 1..N (shard 0 runs on the caller), started at the first segment.
    pool: std::sync::OnceLock<Option<Arc<rayon::ThreadPool>>>,
}

/// A pool of exactly `n - 1` threads for shards 1..N: with rayon's global pool (a thread
/// per core) one thread more than the shards is awake, looking for work against the
/// caller's shard (on two cores, 150,000-subscriber city: the two shards' summed time in
/// segments was 15.9 s with the global pool, 14.3-15.2 s with this one, against 12.9 s for
/// one shard alone). `None` if the threads cannot be started: the shards then run one after
/// the other on the caller.
fn shard_pool(n: usize) -> Option<Arc<rayon::ThreadPool>> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n.saturating_sub(1).max(1))
        .thread_name(|i| format!("linewatch-shard-{}", i + 1))
        .build()
        .ok()
        .map(Arc::new)
}

/// `work` on every shard, shard 0 on this thread and the others on `pool` (threads kept
/// between calls: a segment or a barrier round is too little work to start a thread for);
/// the results in shard order. Without a pool, the shards one after the other: the same
/// results.
fn on_shards<T: Send>(
    pool: Option<&rayon::ThreadPool>,
    shards: &mut [Shard],
    work: impl Fn(usize, &mut Shard) -> T + Sync,
) -> Vec<T> {
    let mut results: Vec<Option<T>> = shards.iter().map(|_| None).collect();
    let mut jobs = shards.iter_mut().zip(results.iter_mut()).enumerate();
    match pool {
        Some(pool) => pool.in_place_scope(|scope| {
            let work = &work;
            let first = jobs.next();
            for (i, (shard, slot)) in jobs {
                scope.spawn(move |_| *slot = Some(work(i, shard)));
            }
            if let Some((i, (shard, slot))) = first {
                *slot = Some(work(i, shard));
            }
        }),
        None => {
            for (i, (shard, slot)) in jobs {
                *slot = Some(work(i, shard));
            }
        }
    }
    // The scope above returns only once every job has filled its slot.
    results.into_iter().flatten().collect()
}

/// Below this many pieces of evidence in a round, handing them to the shards' threads costs
/// more than applying them here (one costs ~4 µs on the 150,000-subscriber city).
const MIN_PARALLEL_EVIDENCE: usize = 16;

/// The shards (of `n`) a piece of evidence is applied on.
fn targets(dest: Dest, n: usize) -> std::ops::Range<usize> {
    match dest {
        Dest::Number(k) | Dest::Handset(k) => {
            let i = shard_of(k, n);
            i..i + 1
        }
        Dest::Every => 0..n,
    }
}

/// One barrier round, the shards one after the other: each piece in the round's order, on
/// the shards it goes to in shard order. Its alerts are appended to `alerts`; the evidence
/// it sends is returned, in the order it was sent.
fn apply_serially(
    shards: &mut [Shard],
    round: &[&Evidence],
    st: &Stream<'_>,
    alerts: &mut Vec<Alert>,
) -> Vec<Evidence> {
    let n = shards.len();
    let mut next = Vec::new();
    for (rank, e) in round.iter().enumerate() {
        let before = alerts.len();
        for i in targets(e.dest, n) {
            shards[i].apply(e, rank, st, alerts, &mut next);
        }
        // A broadcast applied on several shards: its alerts, from every shard together, in
        // one order whatever the shard count and numbering.
        if e.dest == Dest::Every {
            alerts[before..].sort_by(|a, b| a.alert_id.cmp(&b.alert_id));
        }
    }
    next
}

/// What one shard made of its share of a barrier round: its alerts and the evidence it
/// sent, each tagged with the rank (in the round) of the piece that made it; an alert also
/// with whether that piece was a broadcast.
type RoundOutput = (Vec<(usize, bool, Alert)>, Vec<(usize, Evidence)>);

/// Shard `i`'s share of a barrier round (of `n` shards), in the round's order.
fn apply_share(
    shard: &mut Shard,
    i: usize,
    n: usize,
    round: &[&Evidence],
    st: &Stream<'_>,
) -> RoundOutput {
    let (mut alerts, mut next) = (Vec::new(), Vec::new());
    let (mut made, mut sent) = (Vec::new(), Vec::new());
    for (rank, e) in round.iter().enumerate() {
        if !targets(e.dest, n).contains(&i) {
            continue;
        }
        shard.apply(e, rank, st, &mut made, &mut sent);
        let every = e.dest == Dest::Every;
        alerts.extend(made.drain(..).map(|a| (rank, every, a)));
        next.extend(sent.drain(..).map(|x| (rank, x)));
    }
    (alerts, next)
}

/// The shards' shares of a round (in shard order) merged into what [`apply_serially`] gives:
/// by rank, and within a rank by shard (a stable sort of the shards' outputs laid end to
/// end), but a broadcast's alerts from every shard by alert id. The alerts are appended to
/// `alerts`; the next round's evidence is returned.
fn merge_round(per_shard: Vec<RoundOutput>, alerts: &mut Vec<Alert>) -> Vec<Evidence> {
    let mut made = Vec::new();
    let mut next = Vec::new();
    for (a, x) in per_shard {
        made.extend(a);
        next.extend(x);
    }
    // One rank is one piece of evidence, so all its alerts share the broadcast flag.
    made.sort_by(|a, b| {
        let by_id = || match a.1 {
            true => a.2.alert_id.cmp(&b.2.alert_id),
            false => std::cmp::Ordering::Equal,
        };
        a.0.cmp(&b.0).then_with(by_id)
    });
    next.sort_by_key(|t| t.0);
    alerts.extend(made.into_iter().map(|(_, _, a)| a));
    next.into_iter().map(|(_, x)| x).collect()
}

/// What the exchanges between shards carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ExchangeStats {
    pub barriers: u64,
    /// Pieces of evidence applied (a broadcast counts once per shard).
    pub applied: u64,
    /// Barriers that stopped at [`MAX_ROUNDS`] with evidence still making evidence.
    pub rounds_capped: u64,
}

/// A copy of the whole state, for a checkpoint encoded off the detecting thread (a copy
/// is a memory copy; encoding it costs several times more).
impl Clone for Engine {
    fn clone(&self) -> Self {
        Engine {
            cfg: self.cfg.clone(),
            version: self.version.clone(),
            decode: self.decode,
            watermarks: self.watermarks.clone(),
            dedup: self.dedup.clone(),
            stream_start: self.stream_start,
            last_sweep: self.last_sweep,
            since_sweep: self.since_sweep,
            counters: self.counters.clone(),
            reference: self.reference,
            lateness_per_partition: self.lateness_per_partition,
            cells: self.cells.clone(),
            seq: self.seq,
            epoch: self.epoch,
            lines_at_barrier: self.lines_at_barrier,
            shards: self.shards.clone(),
            pending: self.pending.clone(),
            exchange: self.exchange,
            pool: self.pool.clone(),
        }
    }
}

fn contact_bounds(cfg: &Config) -> (usize, usize, u64) {
    let max_contacts = cfg
        .bulk_sms
        .max_recipients_per_line
        .max(cfg.customer_fan_in.max_customers_per_line) as usize;
    let retention = cfg
        .customer_fan_in
        .lookback_s
        .max(cfg.bulk_sms.window_s + cfg.deal_line.repeat_gap_s)
        .max(cfg.line_handover.new_line_max_age_s);
    (cfg.engine.max_keys_per_detector, max_contacts, retention)
}

impl Engine {
    /// An engine over a validated configuration, with one shard.
    pub fn new(cfg: Config) -> Self {
        Engine::with_shards(cfg, 1)
    }

    /// An engine whose detectors are partitioned into `n` shards (at least one), all driven
    /// from the calling thread: the alerts are the same for every `n`.
    pub fn with_shards(cfg: Config, n: usize) -> Self {
        let n = n.max(1);
        Engine {
            version: cfg.version(),
            decode: cfg.decode_options(),
            watermarks: Watermarks::new(
                ids::span_ms(cfg.engine.allowed_lateness_s),
                ids::span_ms(cfg.service.partition_idle_timeout_s),
            ),
            dedup: Dedup::new(),
            stream_start: None,
            last_sweep: Millis::MIN,
            since_sweep: 0,
            counters: Counters::default(),
            reference: None,
            lateness_per_partition: false,
            cells: None,
            seq: 0,
            epoch: i64::MIN,
            lines_at_barrier: 0,
            shards: (0..n).map(|i| Shard::new(&cfg, n, i)).collect(),
            pending: Vec::new(),
            exchange: ExchangeStats::default(),
            pool: std::sync::OnceLock::new(),
            cfg,
        }
    }

    /// The number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Takes a new configuration for the next records, keeping all window state.
    pub fn reconfigure(&mut self, cfg: Config) {
        let n = self.shards.len();
        for s in &mut self.shards {
            s.reconfigure(&cfg, n);
        }
        self.watermarks.set_lateness(
            ids::span_ms(cfg.engine.allowed_lateness_s),
            ids::span_ms(cfg.service.partition_idle_timeout_s),
        );
        self.decode = cfg.decode_options();
        self.version = cfg.version();
        self.cfg = cfg;
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Short hash of the detection configuration in force.
    pub fn config_version(&self) -> &str {
        &self.version
    }

    /// The running totals: the ingest's, with every shard's alert counts added.
    pub fn counters(&self) -> Counters {
        let mut c = self.counters.clone();
        for s in &self.shards {
            c.alerts_total += s.counters.alerts_total;
            c.alerts_suppressed += s.counters.alerts_suppressed;
            c.contact_cap_hits += s.counters.contact_cap_hits;
            for (a, b) in c
                .alerts_by_detector
                .iter_mut()
                .zip(s.counters.alerts_by_detector)
            {
                *a += b;
            }
        }
        c
    }

    /// What the exchanges carried so far.
    pub fn exchange_stats(&self) -> ExchangeStats {
        self.exchange
    }

    /// Places records' cells with this map from the next record on (`runner_movement`);
    /// `None` goes back to no map.
    pub fn set_cells(&mut self, cells: Option<Arc<CellMap>>) {
        self.cells = cells;
    }

    /// The cell map in force.
    pub fn cells(&self) -> Option<Arc<CellMap>> {
        self.cells.clone()
    }

    /// Judges future timestamps against `at` instead of the wall time passed with each
    /// record; `None` goes back to the wall time.
    pub fn set_reference_clock(&mut self, at: Option<Millis>) {
        self.reference = at;
    }

    /// The latest event time accepted when the wall clock reads `wall`.
    pub fn max_event_time(&self, wall: Millis) -> Millis {
        self.reference
            .unwrap_or(wall)
            .saturating_add(ids::span_ms(self.cfg.engine.max_future_skew_s))
    }

    /// The watermark at wall time `wall`.
    pub fn watermark(&self, wall: Millis) -> Millis {
        self.watermarks.current(wall)
    }

    /// Partition watermarks (for metrics).
    pub fn partition_watermarks(&self) -> Vec<(i32, Millis)> {
        self.watermarks.per_partition()
    }

    /// Registers an assigned partition: it holds the watermark until it delivers or idles.
    pub fn assign_partition(&mut self, partition: i32, wall: Millis) {
        self.watermarks.register(partition, wall);
    }

    /// Notes that an assigned partition is at the end of its log with nothing of it left
    /// to process: it holds the watermark no more until its next record
    /// ([`Watermarks::at_rest`]).
    pub fn partition_at_rest(&mut self, partition: i32) {
        self.watermarks.at_rest(partition);
    }

    /// Forgets a partition's watermark (it was revoked).
    pub fn remove_partition(&mut self, partition: i32) {
        self.watermarks.remove(partition);
    }

    /// Processes one raw record from `partition`, arriving at wall time `wall`; alerts made
    /// are appended to `alerts` (with those of a barrier the record closes).
    pub fn process(
        &mut self,
        bytes: &[u8],
        partition: i32,
        wall: Millis,
        alerts: &mut Vec<Alert>,
    ) -> Verdict {
        let decoded = event::decode(bytes, &self.decode);
        self.process_decoded(decoded, partition, wall, alerts)
    }

    /// The decoder options in force, for decoding ahead of [`Engine::process_decoded`]
    /// (decoding is stateless, so it may run on another thread).
    pub fn decode_options(&self) -> DecodeOptions {
        self.decode
    }

    /// [`Engine::process`] for a record already decoded with [`Engine::decode_options`].
    pub fn process_decoded(
        &mut self,
        decoded: Result<Event<'_>, Malformed>,
        partition: i32,
        wall: Millis,
        alerts: &mut Vec<Alert>,
    ) -> Verdict {
        let (verdict, valid) = self.ingest(&decoded, partition, wall);
        if let Some(v) = valid {
            let n = self.shards.len();
            let st = stream!(self, wall);
            for (role, shard) in v.roles(n) {
                self.shards[shard].warm(&v, role);
            }
            for (role, shard) in v.roles(n) {
                self.shards[shard].role(&v, role, &st, alerts, &mut self.pending);
            }
        }
        if self.barrier_due(wall) {
            self.barrier(wall, alerts, false);
        }
        verdict
    }

    /// Processes a batch of records (each with its partition), arriving at wall time `wall`,
    /// with the shards on threads of their own between barriers. The verdicts are appended to
    /// `verdicts` in record order; each alert to `alerts` with the index (in the batch) of
    /// the record after which it comes: the same alerts, in the same order, as
    /// [`Engine::process_decoded`] record by record.
    pub fn process_batch<'a>(
        &mut self,
        decoded: impl IntoIterator<Item = (Result<Event<'a>, Malformed>, i32)>,
        wall: Millis,
        verdicts: &mut Vec<Verdict>,
        alerts: &mut Vec<(usize, Alert)>,
    ) {
        let records: Vec<_> = decoded.into_iter().collect();
        let mut segment: Vec<Valid<'_>> = Vec::new();
        let mut made = Vec::new();
        // The event ids' hashes first, so each record's dedup slot is asked for a few
        // records ahead of its ingest: the set is far larger than the caches, and its
        // probe was the ingest's longest wait (see `IdSet`).
        let hashes: Vec<u64> = records.iter().map(|(d, _)| id_hash(d)).collect();
        for (idx, (d, partition)) in records.iter().enumerate() {
            if let Some(&h) = hashes.get(idx + DEDUP_AHEAD) {
                self.dedup.prefetch(h);
            }
            let (verdict, valid) = self.ingest_hashed(d, hashes[idx], *partition, wall);
            verdicts.push(verdict);
            if let Some(mut v) = valid {
                v.idx = idx;
                segment.push(v);
            }
            if self.barrier_due(wall) {
                self.run_segment(&segment, wall, alerts);
                segment.clear();
                self.barrier(wall, &mut made, true);
                alerts.extend(made.drain(..).map(|a| (idx, a)));
            }
        }
        self.run_segment(&segment, wall, alerts);
    }

    /// The records of a segment (between barriers) in their roles: each shard runs the
    /// roles whose keys it owns, in record order, on a thread of its own; the alerts are
    /// merged back into record and role order.
    fn run_segment(
        &mut self,
        segment: &[Valid<'_>],
        wall: Millis,
        alerts: &mut Vec<(usize, Alert)>,
    ) {
        let n = self.shards.len();
        // Below this, handing work to another thread costs more than the work.
        const MIN_PARALLEL: usize = 16;
        if n == 1 || segment.len() < MIN_PARALLEL {
            let st = stream!(self, wall);
            let mut made = Vec::new();
            for v in segment {
                for (role, shard) in v.roles(n) {
                    self.shards[shard].warm(v, role);
                }
                for (role, shard) in v.roles(n) {
                    self.shards[shard].role(v, role, &st, &mut made, &mut self.pending);
                    alerts.extend(made.drain(..).map(|a| (v.idx, a)));
                }
            }
            return;
        }
        let st = stream!(self, wall);
        let pool = self.pool.get_or_init(|| shard_pool(n)).clone();
        let results: Vec<ShardOutput> = on_shards(pool.as_deref(), &mut self.shards, |i, shard| {
            let mut tagged: Vec<(usize, Role, Alert)> = Vec::new();
            let mut sent = Vec::new();
            let mut made = Vec::new();
            for v in segment {
                for (role, owner) in v.roles(n) {
                    if owner == i {
                        shard.warm(v, role);
                    }
                }
                for (role, owner) in v.roles(n) {
                    if owner == i {
                        shard.role(v, role, &st, &mut made, &mut sent);
                        tagged.extend(made.drain(..).map(|a| (v.idx, role, a)));
                    }
                }
            }
            (tagged, sent)
        });
        let mut tagged = Vec::new();
        for (t, sent) in results {
            tagged.extend(t);
            self.pending.extend(sent);
        }
        // Each shard's alerts are in record and role order already; a stable sort merges.
        tagged.sort_by_key(|t| (t.0, t.1));
        alerts.extend(tagged.into_iter().map(|(idx, _, a)| (idx, a)));
    }

    /// The ingest: decode result, the future-time bound, dedup, lateness, the watermark;
    /// for a valid record its sequence number, id hashes and cell.
    fn ingest<'a>(
        &mut self,
        decoded: &'a Result<Event<'a>, Malformed>,
        partition: i32,
        wall: Millis,
    ) -> (Verdict, Option<Valid<'a>>) {
        self.ingest_hashed(decoded, id_hash(decoded), partition, wall)
    }

    /// [`Engine::ingest`] with the record's dedup key (`id_hash`).
    fn ingest_hashed<'a>(
        &mut self,
        decoded: &'a Result<Event<'a>, Malformed>,
        h: u64,
        partition: i32,
        wall: Millis,
    ) -> (Verdict, Option<Valid<'a>>) {
        self.counters.events_total += 1;
        let ev = match decoded {
            Ok(ev) => ev,
            Err(m) => return (self.reject(*m), None),
        };
        // Before anything remembers it: a time beyond the clock would move the watermark
        // there and make every on-time record after it late.
        if ev.ts > self.max_event_time(wall) {
            let m = Malformed {
                reason: Reason::FutureTimestamp,
                field: Some("ts"),
            };
            return (self.reject(m), None);
        }
        if !self.dedup.insert(h, ev.ts) {
            self.counters.events_duplicate += 1;
            return (Verdict::Duplicate, None);
        }
        self.since_sweep += 1;
        let wm = match self.lateness_per_partition {
            true => self.watermarks.of_partition(partition),
            false => self.watermarks.current(wall),
        };
        if ev.ts < wm {
            // Not used, so not remembered: dedup holds only records the detectors saw.
            self.dedup.forget(h, ev.ts);
            let m = Malformed {
                reason: Reason::Late,
                field: Some("ts"),
            };
            return (self.reject(m), None);
        }
        self.watermarks.observe(partition, ev.ts, wall);
        self.counters.events_valid += 1;
        self.seq += 1;
        let ids = EventIds::of(ev);
        self.stream_start.get_or_insert(ev.ts);
        let cell = match (self.cells.as_deref(), ev.cell.as_deref()) {
            (None, _) => None,
            (Some(_), None) => {
                self.counters.cells_missing += 1;
                None
            }
            (Some(map), Some(c)) => {
                let place = map.resolve(c);
                self.counters.cells_unknown += u64::from(place.is_none());
                place
            }
        };
        let valid = Valid {
            ev,
            ids,
            cell,
            seq: self.seq,
            idx: 0,
        };
        (Verdict::Valid, Some(valid))
    }

    /// Whether a barrier falls after the record just ingested: the watermark has entered a
    /// new exchange epoch, or a sweep is due. Both depend on the ingest alone (the input
    /// order and, live, partitions idling), so the barriers fall on the same records
    /// whatever the shard count.
    fn barrier_due(&mut self, wall: Millis) -> bool {
        let wm = self.watermarks.current(wall);
        let epoch = wm.div_euclid(ids::span_ms(self.cfg.engine.exchange_epoch_s).max(1));
        let new_epoch = epoch > self.epoch;
        self.epoch = self.epoch.max(epoch);
        new_epoch || self.sweep_due(wm)
    }

    /// Applies every piece of evidence sent so far (and what that sends, round after round),
    /// each on the shard owning its destination, in the evidence's order; alerts it makes
    /// are appended in that order. Called at every barrier, and at the end of a replay so
    /// nothing sent is left unapplied.
    pub fn flush(&mut self, wall: Millis, alerts: &mut Vec<Alert>) {
        self.barrier(wall, alerts, false);
    }

    /// A barrier: the evidence round after round, then the sweep if one is due. With
    /// `threads`, each round's evidence is applied on the shards' threads, every shard taking
    /// its share in the round's order (evidence to different shards is independent), and the
    /// alerts and the next round's evidence are merged back into the order the shards one
    /// after the other give.
    fn barrier(&mut self, wall: Millis, alerts: &mut Vec<Alert>, threads: bool) {
        self.exchange.barriers += 1;
        let n = self.shards.len();
        let pool = match threads && n > 1 {
            true => self.pool.get_or_init(|| shard_pool(n)).clone(),
            false => None,
        };
        let st = stream!(self, wall);
        let mut round = std::mem::take(&mut self.pending);
        // The first round's buffer, emptied, becomes the next `pending`: it grew to an
        // epoch's evidence once, and growing it again every epoch moved every piece twice.
        let mut spare = Vec::new();
        let mut rounds = 0;
        while !round.is_empty() {
            if rounds == MAX_ROUNDS {
                self.exchange.rounds_capped += 1;
                break;
            }
            rounds += 1;
            // Sorted by reference: a piece is 152 bytes, and sorting the pieces themselves
            // moved each about once per level of the sort (the largest part of what a
            // handset's arrival cost on the bench mix, by cachegrind).
            let mut sorted: Vec<&Evidence> = round.iter().collect();
            sorted.sort_unstable_by_key(|e| e.order);
            self.exchange.applied += sorted
                .iter()
                .map(|e| targets(e.dest, n).len() as u64)
                .sum::<u64>();
            let next = match pool.as_deref() {
                Some(pool) if sorted.len() >= MIN_PARALLEL_EVIDENCE => {
                    let per_shard = on_shards(Some(pool), &mut self.shards, |i, shard| {
                        apply_share(shard, i, n, &sorted, &st)
                    });
                    merge_round(per_shard, alerts)
                }
                _ => apply_serially(&mut self.shards, &sorted, &st, alerts),
            };
            drop(sorted);
            let mut done = std::mem::replace(&mut round, next);
            if rounds == 1 {
                done.clear();
                spare = done;
            }
        }
        self.pending = match round.is_empty() {
            true => spare,
            false => round,
        };
        let wm = self.watermarks.current(wall);
        if self.sweep_due(wm) {
            self.expire(wm);
        }
        self.lines_at_barrier = self.tracked_lines();
    }

    /// Whether a sweep is due (it runs at a barrier, after the evidence). A sweep visits
    /// every key, so it waits both for event time to move on and for as many records as
    /// there were lines at the last barrier: the cost per record stays constant however many
    /// lines are tracked, and memory is still trimmed within a small multiple of the
    /// interval. Late records count too, so a stream that is all late still sweeps. The
    /// count is the ingest's and the lines are summed over the shards, so every shard count
    /// sweeps at the same record.
    fn sweep_due(&self, wm: Millis) -> bool {
        let due = self
            .last_sweep
            .saturating_add(ids::span_ms(self.cfg.engine.expire_every_s));
        self.since_sweep as usize >= self.lines_at_barrier && wm >= due
    }

    fn reject(&mut self, m: Malformed) -> Verdict {
        let i = Reason::ALL.iter().position(|r| *r == m.reason).unwrap_or(0);
        self.counters.rejected_by_reason[i] += 1;
        if m.reason == Reason::Late {
            self.counters.events_late += 1;
        } else {
            self.counters.events_malformed += 1;
        }
        Verdict::Rejected(m)
    }

    /// Expires state older than the watermark minus each piece's retention, on every shard.
    pub fn expire(&mut self, watermark: Millis) {
        self.last_sweep = watermark;
        self.since_sweep = 0;
        let cooldown_s = self.cfg.alerts.cooldown_s;
        let dedup_cutoff =
            watermark.saturating_sub(ids::span_ms(self.cfg.engine.dedup_retention_s));
        // A sweep visits every key: with several shards, shards 1..N each sweep their own
        // on the pool's N-1 threads while this one sweeps the ingest's dedup set and shard
        // 0 (this thread is not one of the pool's: had every shard gone to the pool, two
        // shards would have swept one after the other on its one thread).
        let pool = match self.shards.len() {
            1 => None,
            n => self.pool.get_or_init(|| shard_pool(n)).clone(),
        };
        match (pool, self.shards.split_first_mut()) {
            (Some(pool), Some((first, rest))) => {
                let dedup = &mut self.dedup;
                pool.in_place_scope(|scope| {
                    for s in rest {
                        scope.spawn(move |_| s.expire(watermark, cooldown_s));
                    }
                    dedup.expire(dedup_cutoff);
                    first.expire(watermark, cooldown_s);
                });
            }
            _ => {
                for s in &mut self.shards {
                    s.expire(watermark, cooldown_s);
                }
                self.dedup.expire(dedup_cutoff);
            }
        }
    }

    /// State size per component, summed over the shards: the contact store, each detector,
    /// dedup and cooldown.
    pub fn state_stats(&self) -> Vec<(&'static str, StateStats)> {
        fn add(into: &mut StateStats, s: StateStats) {
            into.keys += s.keys;
            into.bytes += s.bytes;
            into.cap_hits += s.cap_hits;
        }
        let mut v: Vec<(&'static str, StateStats)> = Vec::new();
        let mut put = |name: &'static str, s: StateStats| match v.iter_mut().find(|e| e.0 == name) {
            Some(e) => add(&mut e.1, s),
            None => v.push((name, s)),
        };
        for sh in &self.shards {
            put(
                "contacts",
                StateStats {
                    keys: sh.contacts.len(),
                    bytes: sh.contacts.bytes(),
                    cap_hits: sh.counters.contact_cap_hits,
                },
            );
            for d in &sh.primaries {
                put(d.name(), d.stats());
            }
            put(sh.deal.name(), sh.deal.stats());
        }
        put(
            "dedup",
            StateStats {
                keys: self.dedup.len(),
                bytes: self.dedup.bytes(),
                cap_hits: 0,
            },
        );
        for sh in &self.shards {
            put(
                "cooldown",
                StateStats {
                    keys: sh.cooldown.len(),
                    bytes: ids::map_bytes(&sh.cooldown),
                    cap_hits: 0,
                },
            );
        }
        v
    }

    /// The section name of shard `i`'s component `name`: shard 0's are the one-shard
    /// engine's names.
    fn section_name(i: usize, name: &str) -> String {
        match i {
            0 => name.to_string(),
            _ => format!("s{i}/{name}"),
        }
    }

    /// Every piece of state, one encoded section per component (the ingest, dedup, and per
    /// shard its contact store, each detector, its cooldown), for a checkpoint.
    pub fn save_sections(&self) -> Result<Vec<Section>, codec::Error> {
        let core = CoreState {
            watermarks: self.watermarks.clone(),
            stream_start: self.stream_start,
            last_sweep: self.last_sweep,
            since_sweep: self.since_sweep,
            counters: self.counters.clone(),
            seq: self.seq,
            epoch: self.epoch,
            lines_at_barrier: self.lines_at_barrier,
            shards: self.shards.len() as u32,
            pending: self.pending.clone(),
        };
        let mut v = vec![
            Section::new("engine", codec::encode(&core)?),
            Section::new("dedup", self.dedup.save_state()?),
        ];
        for (i, sh) in self.shards.iter().enumerate() {
            sh.save(i, &mut v)?;
        }
        Ok(v)
    }

    /// Replaces every piece of state with the sections [`Engine::save_sections`] wrote,
    /// under any shard count: each shard takes its key groups' state from the saved shards
    /// that owned them (`Shard::split`). Call it on a fresh engine built with the
    /// configuration the sections were saved under (and the shard count wanted), then
    /// [`Engine::reconfigure`] to the one in force, exactly as a live reload. On error the
    /// engine is left part-loaded: discard it.
    pub fn load_sections(&mut self, sections: &[Section]) -> Result<(), LoadError> {
        let core: CoreState =
            codec::decode(find_section(sections, "engine")?).map_err(decode_error("engine"))?;
        if core.shards == 0 {
            return Err(LoadError::NoShards);
        }
        let saved = core.shards as usize;
        self.watermarks = core.watermarks;
        self.stream_start = core.stream_start;
        self.last_sweep = core.last_sweep;
        self.since_sweep = core.since_sweep;
        self.counters = core.counters;
        self.seq = core.seq;
        self.epoch = core.epoch;
        self.lines_at_barrier = core.lines_at_barrier;
        // Evidence in flight is engine-wide and names its destination key: the first
        // barrier applies it on whichever shard owns that key now.
        self.pending = core.pending;
        self.dedup
            .load_state(find_section(sections, "dedup")?)
            .map_err(decode_error("dedup"))?;
        let running = self.shards.len();
        if saved == running {
            // The same key groups per shard: each loads its own sections, as written.
            for (i, sh) in self.shards.iter_mut().enumerate() {
                sh.load(sections, i)?;
            }
            return Ok(());
        }
        // Each saved shard is decoded once and dealt out by key to the shards that own
        // its keys now (for issue 11 the same split serves an instance's key groups).
        for i in 0..saved {
            let mut from = Shard::new(&self.cfg, running, i);
            from.load(sections, i)?;
            let parts = from.split(
                running,
                &|key| shard_of(key, running),
                counted_by(i, saved, running),
            );
            for (sh, part) in self.shards.iter_mut().zip(parts) {
                sh.merge(part);
            }
        }
        Ok(())
    }

    /// Pieces of evidence sent and not yet applied (they are applied at the next barrier,
    /// and a checkpoint taken now carries them).
    pub fn pending_evidence(&self) -> usize {
        self.pending.len()
    }

    /// Lines with state (those that have originated a record within retention).
    pub fn tracked_lines(&self) -> usize {
        self.shards.iter().map(|s| s.contacts.len()).sum()
    }

    /// Detector state bytes (everything but the dedup set) per tracked line.
    pub fn detector_bytes_per_line(&self) -> f64 {
        let bytes: usize = self
            .state_stats()
            .iter()
            .filter(|(n, _)| *n != "dedup")
            .map(|(_, s)| s.bytes)
            .sum();
        bytes as f64 / self.tracked_lines().max(1) as f64
    }
}

// ---- Issue 11, engine side: the engine as one partition of many (`src/streams`). ----
//
// Additive: the ingest alone ([`Engine::ingest_only`]) and one partition's detectors
// ([`PartShard`]), driven by `streams::ingest` and `streams::stage`. Nothing above changes.

/// A valid record as the ingest alone leaves it ([`Engine::ingest_only`]): what the ingest
/// stage routes to the partitions owning its keys.
pub struct Ingested<'a> {
    pub event: Event<'a>,
    pub ids: EventIds,
    /// Its cell as the map places it (the ingest has counted missing and unknown cells).
    pub cell: Option<CellPlace>,
    /// Its sequence number among this ingest's valid records.
    pub seq: u64,
    /// The ingest's stream start (the first valid record's event time): warm-up rules are
    /// measured from it.
    pub stream_start: Millis,
    /// Valid and late records so far, this one included: the record count a sweep waits
    /// for (`Engine::sweep_due` counts the same records).
    pub counted: u64,
}

impl Engine {
    /// The ingest alone, for the ingest stage of issue 11: decode result, future bound,
    /// dedup, lateness and watermark, with the counters and dead-letter verdicts of
    /// [`Engine::process_decoded`]; no detector runs. The dedup set is swept when this
    /// engine's sweep falls due (its shards hold nothing, so every `expire_every_s` of its
    /// watermark).
    /// Judges a record late against its own partition's watermark (its highest event time
    /// less `allowed_lateness_s`) instead of the minimum over partitions: for the
    /// `[streams]` ingest, whose partition stages merge the input partitions in event-time
    /// order themselves (each a source). Against the minimum, a verdict depended on how far
    /// this task's other partitions had been read: after a takeover, or with one partition's
    /// reader starved past the idle timeout, a whole input partition's records came late
    /// here (16,749 in a loaded broker test) though each was on time in its partition.
    pub fn judge_lateness_per_partition(&mut self) {
        self.lateness_per_partition = true;
    }

    pub fn ingest_only<'a>(
        &mut self,
        decoded: Result<Event<'a>, Malformed>,
        partition: i32,
        wall: Millis,
    ) -> (Verdict, Option<Ingested<'a>>) {
        let (verdict, valid) = self.ingest(&decoded, partition, wall);
        let valid = valid.map(|v| (v.ids, v.cell, v.seq));
        let wm = self.watermarks.current(wall);
        if self.sweep_due(wm) {
            self.expire(wm);
        }
        let counted = self.counters.events_valid + self.counters.events_late;
        let start = self.stream_start.unwrap_or(0);
        let ingested = valid
            .zip(decoded.ok())
            .map(|((ids, cell, seq), event)| Ingested {
                event,
                ids,
                cell,
                seq,
                stream_start: start,
                counted,
            });
        (verdict, ingested)
    }

    /// Valid and late records so far (see [`Ingested::counted`]).
    pub fn counted(&self) -> u64 {
        self.counters.events_valid + self.counters.events_late
    }
}

/// The checkpoint section name of shard (or partition) `i`'s component `name`, as
/// [`Engine::save_sections`] writes it: partition stages name their sections the same way,
/// so the saves of P partitions read as the shard sections of a P-shard checkpoint.
pub fn shard_section_name(i: usize, name: &str) -> String {
    Engine::section_name(i, name)
}

/// Whether saved shard `i` of `saved` and partition `p` of `n` share a key group.
pub fn overlaps(i: usize, saved: usize, p: usize, n: usize) -> bool {
    (0..KEY_GROUPS).any(|g| g * saved / KEY_GROUPS == i && g * n / KEY_GROUPS == p)
}

/// The detectors of partition `p` of `n` (issue 11, driven by `streams::stage`): one
/// `Shard` owning the keys with `shard_of(key, n) == p`, with the caps of one shard of
/// `n` (as [`Engine::with_shards`] divides them). It runs records in the roles whose keys it
/// owns and applies evidence; the stage around it decides when (barriers) and where the
/// evidence it sends goes.
pub struct PartShard {
    /// Its shard's [`Shard::index`] is `p`.
    shard: Shard,
    n: usize,
    version: String,
    cooldown_s: u64,
    cells: Option<Arc<CellMap>>,
}

impl PartShard {
    /// An empty partition `p` of `n` (`n` at least 1, `p < n`).
    pub fn new(cfg: &Config, p: usize, n: usize) -> Self {
        let n = n.max(1);
        PartShard {
            shard: Shard::new(cfg, n, p.min(n - 1)),
            n,
            version: cfg.version(),
            cooldown_s: cfg.alerts.cooldown_s,
            cells: None,
        }
    }

    /// Partition `p` of `n` with the state of its key groups taken from `sections`, the
    /// shard sections of `saved` shards or partitions (a checkpoint of [`Engine`] with
    /// `saved` shards, or the saves of `saved` partition stages together): what a
    /// rebalance calls when it assigns a partition. Only the saved shards sharing a key
    /// group with `p` are read (and must be there); each is split by owner and the part of
    /// `p` kept (`Shard::split`), its counters taken if `p` owns its first key group. Into
    /// the same layout (`saved == n`) shard `p`'s sections load as written.
    pub fn restore(
        cfg: &Config,
        p: usize,
        n: usize,
        sections: &[Section],
        saved: usize,
    ) -> Result<Self, LoadError> {
        if saved == 0 {
            return Err(LoadError::NoShards);
        }
        let mut part = PartShard::new(cfg, p, n);
        let (p, n) = (part.shard.index, part.n);
        if saved == n {
            part.shard.load(sections, p)?;
            return Ok(part);
        }
        for i in (0..saved).filter(|&i| overlaps(i, saved, p, n)) {
            let mut from = Shard::new(cfg, n, i);
            from.load(sections, i)?;
            // Two parts: this partition's keys (0) and everyone else's (1, dropped).
            let counted = usize::from(counted_by(i, saved, n) != p);
            let mut parts = from.split(2, &|key| usize::from(shard_of(key, n) != p), counted);
            parts.truncate(1);
            if let Some(mine) = parts.pop() {
                part.shard.merge(mine);
            }
        }
        Ok(part)
    }

    /// Places records' cells with this map (`runner_movement`).
    pub fn set_cells(&mut self, cells: Option<Arc<CellMap>>) {
        self.cells = cells;
    }

    pub fn cells(&self) -> Option<&CellMap> {
        self.cells.as_deref()
    }

    /// This partition's number and the partition count.
    pub fn partition(&self) -> (usize, usize) {
        (self.shard.index, self.n)
    }

    /// Whether a key is this partition's.
    pub fn owns(&self, key: u64) -> bool {
        shard_of(key, self.n) == self.shard.index
    }

    /// One record in `roles` (in role order; each role's key is this partition's), with
    /// sequence number `seq` (the order of the evidence it sends): its alerts are appended
    /// to `alerts`, the evidence it sends to `sent`.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &mut self,
        event: Event<'_>,
        ids: EventIds,
        cell: Option<CellPlace>,
        seq: u64,
        roles: &[Role],
        start: Millis,
        wall: Millis,
        alerts: &mut Vec<Alert>,
        sent: &mut Vec<Evidence>,
    ) {
        let v = Valid {
            ev: &event,
            ids,
            cell,
            seq,
            idx: 0,
        };
        let Self {
            shard,
            cells,
            version,
            cooldown_s,
            n,
            ..
        } = self;
        let st = Stream {
            start,
            cells: cells.as_deref(),
            wall,
            version,
            cooldown_s: ids::span_secs(*cooldown_s),
            shards: *n,
        };
        for &role in roles {
            shard.warm(&v, role);
        }
        for &role in roles {
            shard.role(&v, role, &st, alerts, sent);
        }
    }

    /// One piece of evidence for a key of this partition (or a broadcast), ranked `rank`
    /// in its barrier round: alerts to `alerts`, the evidence it sends to `sent` (ordered
    /// for the round after).
    pub fn apply(
        &mut self,
        e: &Evidence,
        rank: usize,
        start: Millis,
        wall: Millis,
        alerts: &mut Vec<Alert>,
        sent: &mut Vec<Evidence>,
    ) {
        let st = Stream {
            start,
            cells: self.cells.as_deref(),
            wall,
            version: &self.version,
            cooldown_s: ids::span_secs(self.cooldown_s),
            shards: self.n,
        };
        self.shard.apply(e, rank, &st, alerts, sent);
    }

    /// Expires state older than the watermark minus each piece's retention.
    pub fn expire(&mut self, watermark: Millis) {
        self.shard.expire(watermark, self.cooldown_s);
    }

    /// Lines with state here (the sweep's record count).
    pub fn tracked_lines(&self) -> usize {
        self.shard.contacts.len()
    }

    /// Alert counters and contact cap hits (the fields a shard counts).
    pub fn counters(&self) -> &Counters {
        &self.shard.counters
    }

    /// The state, as shard `p`'s sections of a checkpoint ([`PartShard::restore`] reads
    /// them back, into this layout or another).
    pub fn save(&self) -> Result<Vec<Section>, codec::Error> {
        let mut v = Vec::new();
        self.shard.save(self.shard.index, &mut v)?;
        Ok(v)
    }

    /// State size per component (the contact store, each detector, the cooldown).
    pub fn state_stats(&self) -> Vec<(&'static str, StateStats)> {
        let sh = &self.shard;
        let mut v = vec![(
            "contacts",
            StateStats {
                keys: sh.contacts.len(),
                bytes: sh.contacts.bytes(),
                cap_hits: sh.counters.contact_cap_hits,
            },
        )];
        v.extend(sh.primaries.iter().map(|d| (d.name(), d.stats())));
        v.push((sh.deal.name(), sh.deal.stats()));
        v.push((
            "cooldown",
            StateStats {
                keys: sh.cooldown.len(),
                bytes: ids::map_bytes(&sh.cooldown),
                cap_hits: 0,
            },
        ));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Evidence is routed by [`crate::exchange::Body::applied_by`], an index into
    /// `DETECTORS`: a shard's primaries must be in that order, `deal_line` last.
    #[test]
    fn a_shards_detectors_are_in_the_order_evidence_is_routed_by() {
        let sh = Shard::new(&Config::default(), 1, 0);
        let mut names: Vec<&str> = sh.primaries.iter().map(|d| d.name()).collect();
        names.push(sh.deal.name());
        assert_eq!(names, detect::DETECTORS);
        for (i, name) in detect::DETECTORS.iter().enumerate() {
            assert_eq!(detect::index_of(name), i);
        }
    }

    /// The wall clock of these tests: after every event time they use.
    const NOW: Millis = 1_900_000_000_000;

    fn rec(id: &str, ts: Millis, from: &str, to: &str) -> String {
        format!(r#"{{"event_id":"{id}","ts":{ts},"kind":"sms","from":"{from}","to":"{to}"}}"#)
    }

    #[test]
    fn duplicate_changes_nothing_and_is_counted() {
        let mut cfg = Config::default();
        cfg.bulk_sms.min_recipients = 3;
        cfg.customer_fan_in.min_customers = 3;
        let mut e = Engine::new(cfg);
        let mut alerts = Vec::new();
        for i in 0..2 {
            let r = rec(
                &format!("e{i}"),
                1_800_000_001_000 + i,
                "line",
                &format!("c{i}"),
            );
            assert_eq!(e.process(r.as_bytes(), 0, NOW, &mut alerts), Verdict::Valid);
            // Re-delivered: the same id twice must not make a third distinct recipient.
            assert_eq!(
                e.process(r.as_bytes(), 0, NOW, &mut alerts),
                Verdict::Duplicate
            );
        }
        assert!(alerts.is_empty());
        assert_eq!(e.counters().events_duplicate, 2);
        let r = rec("e9", 1_800_000_002_000, "line", "c9");
        e.process(r.as_bytes(), 0, NOW, &mut alerts);
        assert_eq!(alerts.len(), 1);
    }

    #[test]
    fn late_record_is_rejected_and_counted() {
        let mut e = Engine::new(Config::default());
        let mut alerts = Vec::new();
        let t = 1_800_000_000_000;
        assert_eq!(
            e.process(rec("a", t, "x", "y").as_bytes(), 0, NOW, &mut alerts),
            Verdict::Valid
        );
        // 14 minutes behind: within the allowed 15.
        assert_eq!(
            e.process(
                rec("b", t - 840_000, "x", "y").as_bytes(),
                0,
                NOW,
                &mut alerts
            ),
            Verdict::Valid
        );
        let v = e.process(
            rec("c", t - 960_000, "x", "y").as_bytes(),
            0,
            NOW,
            &mut alerts,
        );
        assert_eq!(
            v,
            Verdict::Rejected(Malformed {
                reason: Reason::Late,
                field: Some("ts")
            })
        );
        assert_eq!(e.counters().events_late, 1);
        assert_eq!(e.counters().events_malformed, 0);
    }

    #[test]
    fn cooldown_holds_repeats_back() {
        let mut cfg = Config::default();
        cfg.bulk_sms.min_recipients = 2;
        let mut e = Engine::new(cfg);
        let mut alerts = Vec::new();
        let hour = 3_600_000;
        for (i, t) in [0, 1, 2 * hour, 2 * hour + 1, 7 * hour, 7 * hour + 1]
            .into_iter()
            .enumerate()
        {
            let r = rec(
                &format!("e{i}"),
                1_800_000_000_000 + t,
                "line",
                &format!("c{i}"),
            );
            e.process(r.as_bytes(), 0, NOW, &mut alerts);
        }
        // Windows at 0 h, 2 h and 7 h fire; the 2 h one is within the 6 h cooldown.
        let bulk: Vec<_> = alerts.iter().filter(|a| a.detector == "bulk_sms").collect();
        assert_eq!(bulk.len(), 2);
        assert_eq!(e.counters().alerts_suppressed, 1);
    }

    #[test]
    fn state_expires_behind_the_watermark() {
        let mut e = Engine::new(Config::default());
        let mut alerts = Vec::new();
        let t = 1_800_000_000_000;
        e.process(rec("a", t, "x", "y").as_bytes(), 0, NOW, &mut alerts);
        assert_eq!(e.tracked_lines(), 1);
        // Eight days later the first line is past every retention; the sweep runs once as
        // many records as there are lines have arrived.
        for (i, id) in ["b", "c"].into_iter().enumerate() {
            let r = rec(id, t + 8 * 86_400_000 + i as Millis, "z", "y");
            e.process(r.as_bytes(), 0, NOW, &mut alerts);
        }
        assert_eq!(e.tracked_lines(), 1);
        assert_eq!(
            e.state_stats()
                .iter()
                .find(|(n, _)| *n == "dedup")
                .unwrap()
                .1
                .keys,
            2, // "a" is forgotten, "b" and "c" are remembered
        );
    }

    fn dedup_keys(e: &Engine) -> usize {
        e.state_stats()
            .iter()
            .find(|(n, _)| *n == "dedup")
            .map_or(0, |(_, s)| s.keys)
    }

    #[test]
    fn future_dated_record_is_rejected_and_does_not_move_the_watermark() {
        let mut e = Engine::new(Config::default());
        let mut alerts = Vec::new();
        let now = 1_800_000_000_000;
        let years = 3 * 365 * 86_400_000;
        let v = e.process(
            rec("f", now + years, "x", "y").as_bytes(),
            0,
            now,
            &mut alerts,
        );
        assert_eq!(
            v,
            Verdict::Rejected(Malformed {
                reason: Reason::FutureTimestamp,
                field: Some("ts")
            })
        );
        // Within the skew is accepted; the on-time records after it are not late.
        let skew = e.config().engine.max_future_skew_s as Millis * 1000;
        let r = rec("s", now + skew, "x", "y");
        assert_eq!(e.process(r.as_bytes(), 0, now, &mut alerts), Verdict::Valid);
        let r = rec("o", now - 60_000, "x", "y");
        assert_eq!(e.process(r.as_bytes(), 0, now, &mut alerts), Verdict::Valid);
        assert_eq!(e.counters().events_late, 0);
        assert_eq!(e.counters().events_malformed, 1);
        // A fixed reference clock replaces the wall time.
        e.set_reference_clock(Some(now + years));
        let v = e.process(
            rec("f", now + years, "x", "y").as_bytes(),
            0,
            now,
            &mut alerts,
        );
        assert_eq!(v, Verdict::Valid);
    }

    #[test]
    fn late_record_is_not_remembered_as_seen() {
        let mut e = Engine::new(Config::default());
        let mut alerts = Vec::new();
        let t = 1_800_000_000_000;
        e.process(rec("a", t, "x", "y").as_bytes(), 0, NOW, &mut alerts);
        let late = rec("l", t - 3_600_000, "x", "y");
        for _ in 0..2 {
            // Judged late each time it comes, never a "duplicate" of a record never used.
            assert!(matches!(
                e.process(late.as_bytes(), 0, NOW, &mut alerts),
                Verdict::Rejected(Malformed {
                    reason: Reason::Late,
                    ..
                })
            ));
        }
        assert_eq!(e.counters().events_late, 2);
        assert_eq!(e.counters().events_duplicate, 0);
        assert_eq!(dedup_keys(&e), 1);
    }

    #[test]
    fn dedup_expires_by_event_time_not_arrival_order() {
        let mut e = Engine::new(Config::default());
        let mut alerts = Vec::new();
        let t = 1_800_000_000_000;
        let h = 3_600_000;
        e.assign_partition(0, NOW);
        e.assign_partition(1, NOW);
        // Partition 0 is read five hours ahead of partition 1: "a" arrives first but is newest.
        for (p, id, ts) in [(0, "a", t + 5 * h), (1, "b", t), (1, "c", t + 5 * h)] {
            let r = rec(id, ts, "x", "y");
            assert_eq!(e.process(r.as_bytes(), p, NOW, &mut alerts), Verdict::Valid);
        }
        // The watermark is now 5 h - 15 min: "b" (at 0 h) is past the 2 h retention even
        // though "a", ahead of it in arrival order, is not.
        assert_eq!(dedup_keys(&e), 2);
    }

    #[test]
    fn sweeps_run_while_every_record_is_late() {
        let mut e = Engine::new(Config::default());
        let mut alerts = Vec::new();
        let t = 1_800_000_000_000;
        let wall = NOW;
        e.assign_partition(0, wall);
        e.assign_partition(1, wall);
        e.process(rec("a", t, "old", "y").as_bytes(), 1, wall, &mut alerts);
        let ahead = rec("b", t + 8 * 86_400_000, "new", "y");
        e.process(ahead.as_bytes(), 0, wall, &mut alerts);
        assert_eq!(e.tracked_lines(), 2);
        // Both partitions go quiet; the freshest leads, so partition 1's records are late
        // from now on, and it stays idle because late records do not move it.
        let later = wall + 120_000;
        for i in 0..3 {
            let r = rec(&format!("l{i}"), t + 60_000, "old", "y");
            let v = e.process(r.as_bytes(), 1, later, &mut alerts);
            assert!(matches!(v, Verdict::Rejected(_)));
        }
        // The sweep ran: "old" is eight days behind the watermark, past every retention.
        assert_eq!(e.tracked_lines(), 1);
    }

    /// The threaded path (`process_batch`: shards on threads between barriers, alerts merged
    /// back) gives what the record-by-record path gives on the same shards: the same
    /// verdicts, the same alerts in the same order, the same counters.
    #[test]
    fn batches_on_threads_match_record_by_record() {
        let opts = crate::generate::GenOptions {
            seed: 3,
            subscribers: 3000,
            days: 2,
            ..Default::default()
        };
        let (data, _, _) = crate::generate::generate_in_memory(&opts).unwrap();
        let lines: Vec<&[u8]> = data
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        let mut cfg = Config::default();
        // Small enough for this city to fire every line-keyed detector often.
        cfg.bulk_sms.min_recipients = 20;
        // Segments between barriers long enough to go to threads (an hour of this city is
        // thousands of records).
        cfg.engine.exchange_epoch_s = 3600;
        for n in [1, 3] {
            let mut one = Engine::with_shards(cfg.clone(), n);
            let (mut v1, mut a1) = (Vec::new(), Vec::new());
            let mut made = Vec::new();
            for (i, l) in lines.iter().enumerate() {
                made.clear();
                v1.push(one.process(l, 0, NOW, &mut made));
                a1.extend(made.drain(..).map(|a| (i, a.alert_id)));
            }
            one.flush(NOW, &mut made);
            let mut batched = Engine::with_shards(cfg.clone(), n);
            let (mut v2, mut a2) = (Vec::new(), Vec::new());
            let opts = batched.decode_options();
            // Uneven batches, so barriers fall inside and at the edges of batches.
            let mut at = 0;
            for size in [1, 700, 5000, 20_000].into_iter().cycle() {
                if at >= lines.len() {
                    break;
                }
                let end = (at + size).min(lines.len());
                let decoded = lines[at..end].iter().map(|l| (event::decode(l, &opts), 0));
                let mut tagged = Vec::new();
                batched.process_batch(decoded, NOW, &mut v2, &mut tagged);
                a2.extend(tagged.into_iter().map(|(i, a)| (at + i, a.alert_id)));
                at = end;
            }
            assert!(a1.len() > 30, "{n} shards: {} alerts", a1.len());
            assert_eq!(v1, v2, "{n} shards: verdicts");
            assert!(
                a1 == a2,
                "{n} shards: {} alerts one by one, {} batched",
                a1.len(),
                a2.len()
            );
            assert_eq!(one.counters(), batched.counters());
            assert!(batched.exchange_stats().barriers > 40);
        }
    }

    #[test]
    fn what_a_broadcast_makes_is_ordered_by_content_whichever_shard_made_it() {
        let piece = |line: u64| {
            let body = crate::exchange::Body::CrewEnrol {
                line,
                line_name: Box::from(""),
            };
            Sent::new(Dest::Number(line), body)
        };
        let (a, b) = (piece(1), piece(2));
        // Two shards applying the broadcast ranked 3 each send one piece, index 0 on each:
        // distinct orders (before, both were [3, 0, 0, 0] and the sort's whim decided).
        let (oa, ob) = (sent_order(3, true, 0, &a), sent_order(3, true, 0, &b));
        assert_ne!(oa, ob);
        // One shard sending both, in either order, puts them in that same order.
        let a_first = |x: [u64; 4], y: [u64; 4]| x < y;
        assert_eq!(
            a_first(sent_order(3, true, 0, &a), sent_order(3, true, 1, &b)),
            oa < ob
        );
        assert_eq!(
            a_first(sent_order(3, true, 1, &a), sent_order(3, true, 0, &b)),
            oa < ob
        );
        // The same piece from two shards: the same order, and applying either first is alike.
        assert_eq!(
            sent_order(3, true, 0, &a)[..3],
            sent_order(3, true, 0, &piece(1))[..3]
        );
        // Off a broadcast a piece's rank is its own: sent order. A detector's hint is kept.
        assert_eq!(sent_order(3, false, 1, &b), [3, 0, 0, 1]);
        let hinted = Sent::hinted(Dest::Number(2), piece(2).body, [7, 8]);
        assert_eq!(sent_order(3, true, 1, &hinted), [3, 7, 8, 1]);
    }

    /// A barrier round applied on threads is merged back into the serial loop's order: by
    /// the rank of the evidence that made each output, and within a rank by shard, each
    /// shard's outputs in the order it made them.
    #[test]
    fn a_round_on_threads_merges_by_rank_then_shard() {
        let alert = |id: &str| Alert {
            alert_id: id.to_string(),
            detector: "deal_line".to_string(),
            subject: String::new(),
            subject_kind: crate::alert::SubjectKind::Line,
            score: 1.0,
            event_time: 0,
            window_start: 0,
            window_end: 0,
            related: Vec::new(),
            evidence: Default::default(),
            detected_at: 0,
            config_version: String::new(),
        };
        let sent = |line: u64| Evidence {
            dest: Dest::Number(line),
            at: 0,
            event_id: Name::default(),
            order: [0; 4],
            body: crate::exchange::Body::CrewEnrol {
                line,
                line_name: Box::from(""),
            },
        };
        // Shard 0 applied ranks 0 (two alerts, kept in the order made) and 2 (a broadcast,
        // twice), shard 1 ranks 1 and 2, shard 2 rank 2: the broadcast's alerts from every
        // shard by id, as one shard applying it would give them.
        let per_shard: Vec<RoundOutput> = vec![
            (
                vec![
                    (0, false, alert("z")),
                    (0, false, alert("a")),
                    (2, true, alert("e")),
                    (2, true, alert("g")),
                ],
                vec![(0, sent(10)), (2, sent(12)), (2, sent(13))],
            ),
            (
                vec![(1, false, alert("b")), (2, true, alert("d"))],
                vec![(1, sent(11)), (2, sent(14))],
            ),
            (vec![(2, true, alert("f"))], vec![(2, sent(15))]),
        ];
        let mut alerts = vec![alert("before")];
        let next = merge_round(per_shard, &mut alerts);
        let ids: Vec<&str> = alerts.iter().map(|a| a.alert_id.as_str()).collect();
        assert_eq!(ids, ["before", "z", "a", "b", "d", "e", "f", "g"]);
        let lines: Vec<u64> = next
            .iter()
            .map(|e| match e.dest {
                Dest::Number(k) => k,
                _ => u64::MAX,
            })
            .collect();
        assert_eq!(lines, [10, 11, 12, 13, 14, 15]);
    }
}
