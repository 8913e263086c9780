//! The engine: one record in, verdict and alerts out. `replay`, `demo`, `tune` and the Kafka
//! service all drive this same type, so they detect identically.
//!
//! For each record: decode → duplicate check → lateness check against the watermark →
//! shared contact state → each detector → the combined verdict → cooldown → alerts. State
//! is swept as the watermark advances.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::alert::{Alert, Finding};
use crate::cells::CellMap;
use crate::checkpoint::{codec, Section};
use crate::config::Config;
use crate::detect::{self, deal_line::DealLine, Ctx, Detector, EventIds, StateStats};
use crate::event::{self, DecodeOptions, Event, Kind, Malformed, Millis, Reason};
use crate::exchange::{Role, Sent};
use crate::ids::{self, IdBuild, IdMap};
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

/// Remembers event ids for the dedup retention.
///
/// Ids are expired by event-time bucket, not in arrival order: with several partitions, or
/// one record far ahead of the rest, arrival order is not time order, and a queue that stops
/// at its first unexpired entry would never shrink behind it.
#[derive(Clone)]
struct Dedup {
    seen: HashSet<u64, IdBuild>,
    /// Event-time minute → the ids first seen with an event time in it.
    buckets: BTreeMap<Millis, Vec<u64>>,
}

impl Dedup {
    fn new() -> Self {
        Dedup {
            seen: HashSet::default(),
            buckets: BTreeMap::new(),
        }
    }

    /// True if the id was new; it is remembered under `ts`.
    fn insert(&mut self, h: u64, ts: Millis) -> bool {
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
    fn forget(&mut self, h: u64, ts: Millis) {
        if self.seen.remove(&h) {
            if let Some(b) = self.buckets.get_mut(&ts.div_euclid(DEDUP_BUCKET_MS)) {
                // Just pushed: it is the last entry of its bucket.
                if b.last() == Some(&h) {
                    b.pop();
                }
            }
        }
    }

    /// Forgets every id whose bucket ends at or before `cutoff`.
    fn expire(&mut self, cutoff: Millis) {
        // Buckets wholly before the cutoff: key + 1 <= cutoff / width.
        let keep = self.buckets.split_off(&cutoff.div_euclid(DEDUP_BUCKET_MS));
        for ids in std::mem::replace(&mut self.buckets, keep).into_values() {
            for h in ids {
                self.seen.remove(&h);
            }
        }
    }

    fn len(&self) -> usize {
        self.seen.len()
    }

    fn bytes(&self) -> usize {
        self.seen.capacity() * 9
            + self
                .buckets
                .values()
                .map(|b| b.capacity() * 8 + 48)
                .sum::<usize>()
    }

    /// The ids by event-time bucket: the set is rebuilt from them on load.
    fn save_state(&self) -> Result<Vec<u8>, codec::Error> {
        codec::encode(&self.buckets)
    }

    fn load_state(&mut self, bytes: &[u8]) -> Result<(), codec::Error> {
        self.buckets = codec::decode(bytes)?;
        self.seen = self.buckets.values().flatten().copied().collect();
        Ok(())
    }
}

/// Engine-wide state that belongs to no detector, saved as one checkpoint section.
#[derive(Serialize, Deserialize)]
struct CoreState {
    watermarks: Watermarks,
    cooldown: IdMap<u32>,
    /// Saved so the handover warm-up is measured from the stream's real start, not from
    /// the first record after a restore.
    stream_start: Option<Millis>,
    last_sweep: Millis,
    since_sweep: u64,
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
}

/// The detection engine.
pub struct Engine {
    cfg: Config,
    version: String,
    decode: DecodeOptions,
    contacts: Contacts,
    primaries: Vec<Box<dyn Detector>>,
    deal: DealLine,
    watermarks: Watermarks,
    dedup: Dedup,
    /// (detector, subject) → event time (s) of the last alert.
    cooldown: IdMap<u32>,
    stream_start: Option<Millis>,
    last_sweep: Millis,
    /// Valid records since the last sweep.
    since_sweep: u64,
    counters: Counters,
    findings: Vec<Finding>,
    deal_findings: Vec<Finding>,
    /// A fixed reference clock for the future-timestamp bound instead of the wall time
    /// passed with each record (`replay --now`, tests).
    reference: Option<Millis>,
    /// The cell map (`--cells`): not state, not configuration; shared by engine copies.
    cells: Option<Arc<CellMap>>,
    /// Scratch for what detectors push from `on_findings` (nothing, today).
    side_findings: Vec<Finding>,
    outbox: Vec<Sent>,
}

/// A copy of the whole state, for a checkpoint encoded off the detecting thread (a copy
/// is a memory copy; encoding it costs several times more).
impl Clone for Engine {
    fn clone(&self) -> Self {
        Engine {
            cfg: self.cfg.clone(),
            version: self.version.clone(),
            decode: self.decode,
            contacts: self.contacts.clone(),
            primaries: self.primaries.iter().map(|d| d.box_clone()).collect(),
            deal: self.deal.clone(),
            watermarks: self.watermarks.clone(),
            dedup: self.dedup.clone(),
            cooldown: self.cooldown.clone(),
            stream_start: self.stream_start,
            last_sweep: self.last_sweep,
            since_sweep: self.since_sweep,
            counters: self.counters.clone(),
            findings: Vec::new(),
            deal_findings: Vec::new(),
            reference: self.reference,
            cells: self.cells.clone(),
            side_findings: Vec::new(),
            outbox: Vec::new(),
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
    /// An engine over a validated configuration.
    pub fn new(cfg: Config) -> Self {
        let (max_lines, max_contacts, retention) = contact_bounds(&cfg);
        let (primaries, deal) = detect::build(&cfg);
        Engine {
            version: cfg.version(),
            decode: cfg.decode_options(),
            contacts: Contacts::new(max_lines, max_contacts, retention),
            primaries,
            deal,
            watermarks: Watermarks::new(
                ids::span_ms(cfg.engine.allowed_lateness_s),
                ids::span_ms(cfg.service.partition_idle_timeout_s),
            ),
            dedup: Dedup::new(),
            cooldown: IdMap::default(),
            stream_start: None,
            last_sweep: Millis::MIN,
            since_sweep: 0,
            counters: Counters::default(),
            findings: Vec::new(),
            deal_findings: Vec::new(),
            reference: None,
            cells: None,
            side_findings: Vec::new(),
            outbox: Vec::new(),
            cfg,
        }
    }

    /// Takes a new configuration for the next records, keeping all window state.
    pub fn reconfigure(&mut self, cfg: Config) {
        let (max_lines, max_contacts, retention) = contact_bounds(&cfg);
        self.contacts
            .reconfigure(max_lines, max_contacts, retention);
        for d in &mut self.primaries {
            d.reconfigure(&cfg);
        }
        self.deal.reconfigure(&cfg);
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

    pub fn counters(&self) -> &Counters {
        &self.counters
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

    /// Forgets a partition's watermark (it was revoked).
    pub fn remove_partition(&mut self, partition: i32) {
        self.watermarks.remove(partition);
    }

    /// Processes one raw record from `partition`, arriving at wall time `wall`; alerts made
    /// are appended to `alerts`.
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
        self.counters.events_total += 1;
        let ev = match decoded {
            Ok(ev) => ev,
            Err(m) => return self.reject(m),
        };
        // Before anything remembers it: a time beyond the clock would move the watermark
        // there and make every on-time record after it late.
        if ev.ts > self.max_event_time(wall) {
            return self.reject(Malformed {
                reason: Reason::FutureTimestamp,
                field: Some("ts"),
            });
        }
        let h = ids::id(&ev.event_id);
        if !self.dedup.insert(h, ev.ts) {
            self.counters.events_duplicate += 1;
            return Verdict::Duplicate;
        }
        let wm = self.watermarks.current(wall);
        if ev.ts < wm {
            // Not used, so not remembered: dedup holds only records the detectors saw.
            self.dedup.forget(h, ev.ts);
            let v = self.reject(Malformed {
                reason: Reason::Late,
                field: Some("ts"),
            });
            self.maybe_sweep(wall);
            return v;
        }
        self.watermarks.observe(partition, ev.ts, wall);
        self.counters.events_valid += 1;
        self.detect(&ev, wall, alerts);
        self.maybe_sweep(wall);
        Verdict::Valid
    }

    /// Sweeps when due. A sweep visits every key, so it waits both for event time to move on
    /// and for as many records as there are lines: the cost per record stays constant however
    /// many lines are tracked, and memory is still trimmed within a small multiple of the
    /// interval. Late records count too, so a stream that is all late still sweeps.
    fn maybe_sweep(&mut self, wall: Millis) {
        self.since_sweep += 1;
        if self.since_sweep as usize >= self.contacts.len() {
            let wm = self.watermarks.current(wall);
            let due = self
                .last_sweep
                .saturating_add(ids::span_ms(self.cfg.engine.expire_every_s));
            if wm >= due {
                self.expire(wm);
            }
        }
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

    fn detect(&mut self, ev: &Event<'_>, wall: Millis, alerts: &mut Vec<Alert>) {
        let ids = EventIds::of(ev);
        let start = *self.stream_start.get_or_insert(ev.ts);
        let to = (ev.kind == Kind::Sms).then_some(ids.to);
        let hit = self.contacts.record_outbound(ids.from, to, ev.ts, ids.imei);
        if hit != Recorded::Ok {
            self.counters.contact_cap_hits += 1;
        }
        self.findings.clear();
        self.deal_findings.clear();
        let cells = self.cells.as_deref();
        let cell = match (cells, ev.cell.as_deref()) {
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
        let mut ctx = Ctx {
            role: Role::Sender,
            outbox: &mut self.outbox,
            contacts: &mut self.contacts,
            stream_start: start,
            out: &mut self.findings,
            cells,
            cell,
        };
        for d in &mut self.primaries {
            d.on_event(ev, &ids, &mut ctx);
        }
        if self.findings.is_empty() {
            return;
        }
        let mut ctx = Ctx {
            role: Role::Sender,
            outbox: &mut self.outbox,
            contacts: &mut self.contacts,
            stream_start: start,
            out: &mut self.deal_findings,
            cells,
            cell,
        };
        self.deal.on_findings(ev.ts, &self.findings, &mut ctx);
        // Detectors that learn from the others' findings (`runner_movement`: which lines
        // carry deal evidence). Only on records with findings, so it costs nothing otherwise.
        let mut ctx = Ctx {
            role: Role::Sender,
            outbox: &mut self.outbox,
            contacts: &mut self.contacts,
            stream_start: start,
            out: &mut self.side_findings,
            cells,
            cell,
        };
        for d in &mut self.primaries {
            d.on_findings(ev.ts, &self.findings, &mut ctx);
            d.on_findings(ev.ts, &self.deal_findings, &mut ctx);
        }
        self.side_findings.clear();
        let cooldown_s = ids::span_secs(self.cfg.alerts.cooldown_s);
        let all = self.findings.drain(..).chain(self.deal_findings.drain(..));
        for f in all {
            let di = detect::DETECTORS
                .iter()
                .position(|d| *d == f.detector)
                .unwrap_or(0);
            let key = f.subject_id ^ (di as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let at = ids::secs(f.event_time);
            if let Some(&last) = self.cooldown.get(&key) {
                if at < last.saturating_add(cooldown_s) && at + cooldown_s > last {
                    self.counters.alerts_suppressed += 1;
                    continue;
                }
            }
            self.cooldown.insert(key, at);
            self.counters.alerts_total += 1;
            self.counters.alerts_by_detector[di] += 1;
            alerts.push(f.into_alert(&ev.event_id, wall, &self.version));
        }
    }

    /// Expires state older than the watermark minus each piece's retention.
    pub fn expire(&mut self, watermark: Millis) {
        self.last_sweep = watermark;
        self.since_sweep = 0;
        self.contacts.expire(watermark);
        for d in &mut self.primaries {
            d.expire(watermark);
        }
        self.deal.expire(watermark);
        self.dedup
            .expire(watermark.saturating_sub(ids::span_ms(self.cfg.engine.dedup_retention_s)));
        let cutoff =
            ids::secs(watermark).saturating_sub(ids::span_secs(self.cfg.alerts.cooldown_s));
        self.cooldown.retain(|_, at| *at >= cutoff);
    }

    /// State size per component: the contact store, each detector, dedup and cooldown.
    pub fn state_stats(&self) -> Vec<(&'static str, StateStats)> {
        let mut v = vec![(
            "contacts",
            StateStats {
                keys: self.contacts.len(),
                bytes: self.contacts.bytes(),
                cap_hits: self.counters.contact_cap_hits,
            },
        )];
        for d in &self.primaries {
            v.push((d.name(), d.stats()));
        }
        v.push((self.deal.name(), self.deal.stats()));
        v.push((
            "dedup",
            StateStats {
                keys: self.dedup.len(),
                bytes: self.dedup.bytes(),
                cap_hits: 0,
            },
        ));
        v.push((
            "cooldown",
            StateStats {
                keys: self.cooldown.len(),
                bytes: ids::map_bytes(&self.cooldown),
                cap_hits: 0,
            },
        ));
        v
    }

    /// Every piece of state, one encoded section per component (engine core, dedup,
    /// contact store, each detector), for a checkpoint.
    pub fn save_sections(&self) -> Result<Vec<Section>, codec::Error> {
        let core = CoreState {
            watermarks: self.watermarks.clone(),
            cooldown: self.cooldown.clone(),
            stream_start: self.stream_start,
            last_sweep: self.last_sweep,
            since_sweep: self.since_sweep,
            counters: self.counters.clone(),
        };
        let mut v = vec![
            Section::new("engine", codec::encode(&core)?),
            Section::new("dedup", self.dedup.save_state()?),
            Section::new("contacts", self.contacts.save_state()?),
        ];
        for d in &self.primaries {
            v.push(Section::new(d.name(), d.save_state()?));
        }
        v.push(Section::new(self.deal.name(), self.deal.save_state()?));
        Ok(v)
    }

    /// Replaces every piece of state with the sections [`Engine::save_sections`] wrote.
    /// Call it on a fresh engine built with the configuration the sections were saved
    /// under, then [`Engine::reconfigure`] to the one in force, exactly as a live reload.
    /// On error the engine is left part-loaded: discard it.
    pub fn load_sections(&mut self, sections: &[Section]) -> Result<(), LoadError> {
        fn find<'a>(sections: &'a [Section], name: &str) -> Result<&'a [u8], LoadError> {
            sections
                .iter()
                .find(|s| s.name == name)
                .map(|s| s.bytes.as_slice())
                .ok_or_else(|| LoadError::MissingSection(name.to_string()))
        }
        let wrap = |name: &str| {
            let name = name.to_string();
            move |source| LoadError::Decode { name, source }
        };
        let core: CoreState = codec::decode(find(sections, "engine")?).map_err(wrap("engine"))?;
        self.watermarks = core.watermarks;
        self.cooldown = core.cooldown;
        self.stream_start = core.stream_start;
        self.last_sweep = core.last_sweep;
        self.since_sweep = core.since_sweep;
        self.counters = core.counters;
        self.dedup
            .load_state(find(sections, "dedup")?)
            .map_err(wrap("dedup"))?;
        self.contacts
            .load_state(find(sections, "contacts")?)
            .map_err(wrap("contacts"))?;
        for d in &mut self.primaries {
            d.load_state(find(sections, d.name())?)
                .map_err(wrap(d.name()))?;
        }
        let name = self.deal.name();
        self.deal
            .load_state(find(sections, name)?)
            .map_err(wrap(name))?;
        Ok(())
    }

    /// Lines with state (those that have originated a record within retention).
    pub fn tracked_lines(&self) -> usize {
        self.contacts.len()
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
