//! The detectors: one file each, all behind one [`Detector`] trait.
//!
//! A detector sees each valid, on-time, first-delivery record once ([`Detector::on_event`]),
//! may see the findings other detectors made on that record ([`Detector::on_findings`], used
//! by the combined `deal_line` verdict), and expires its state when the engine's watermark
//! moves on ([`Detector::expire`]). Time is only ever the records' event time, passed in:
//! no detector reads a clock, so tests drive time directly and replays are deterministic.

pub mod bulk_sms;
pub mod customer_fan_in;
pub mod deal_line;
pub mod handset_churn;
pub mod line_handover;
pub mod runner_movement;
#[cfg(test)]
pub(crate) mod shardkit;

use crate::alert::Finding;
use crate::cells::{CellMap, CellPlace};
use crate::checkpoint::codec;
use crate::config::Config;
use crate::event::{Event, Millis};
use crate::exchange::{Evidence, Role, Sent};
use crate::ids;
use crate::state::Contacts;

/// Names of the detectors, in the order their findings are made.
pub const DETECTORS: [&str; 6] = [
    bulk_sms::NAME,
    customer_fan_in::NAME,
    handset_churn::NAME,
    line_handover::NAME,
    runner_movement::NAME,
    deal_line::NAME,
];

/// A detector's index in [`DETECTORS`] (and in what [`build`] makes: its primaries in that
/// order, `deal_line` last), at compile time: evidence is routed by it.
pub const fn index_of(name: &str) -> usize {
    let mut i = 0;
    while i < DETECTORS.len() {
        let (a, b) = (DETECTORS[i].as_bytes(), name.as_bytes());
        if a.len() == b.len() {
            let mut k = 0;
            while k < a.len() && a[k] == b[k] {
                k += 1;
            }
            if k == a.len() {
                return i;
            }
        }
        i += 1;
    }
    panic!("not a detector's name")
}

/// Identity hashes of one record, computed once and shared by every detector.
#[derive(Debug, Clone, Copy)]
pub struct EventIds {
    pub from: u64,
    pub to: u64,
    pub imsi: Option<u64>,
    pub imei: Option<u64>,
}

impl EventIds {
    pub fn of(ev: &Event<'_>) -> Self {
        EventIds {
            from: ids::id(&ev.from),
            to: ids::id(&ev.to),
            imsi: ev.imsi.as_deref().map(ids::id),
            imei: ev.imei.as_deref().map(ids::id),
        }
    }
}

/// What a detector may read and where it writes, for one record in one role (or one piece
/// of evidence at a barrier).
pub struct Ctx<'a> {
    /// Which of the record's keys this call is for: the detector reads and writes only that
    /// key's state (see [`crate::exchange`]). [`Role::Barrier`] in `on_evidence`.
    pub role: Role,
    /// Who each line of this shard has texted (already updated with the current record in
    /// the sender role). Mutable so `customer_fan_in` can note customer contacts on the
    /// entries they concern (in the recipient role: the line is the record's `to`).
    pub contacts: &'a mut Contacts,
    /// Event time of the first record of the stream (for warm-up rules).
    pub stream_start: Millis,
    /// Findings go here. Their subject must be the role's key (or the evidence's
    /// destination): the shard that makes a finding owns its subject.
    pub out: &'a mut Vec<Finding>,
    /// Evidence for other keys goes here, applied at the next barrier by their owner.
    pub outbox: &'a mut Vec<Sent>,
    /// The cell map, when one was loaded (`--cells`).
    pub cells: Option<&'a CellMap>,
    /// The record's cell as the map places it; `None` without a map, without a `cell`, or
    /// for a cell the map does not list (the engine counts the last two).
    pub cell: Option<CellPlace>,
    /// How many shards (or stage partitions) a [`crate::exchange::Dest::Every`] broadcast
    /// reaches: each answers a broadcast question, and the asker counts the answers.
    pub shards: usize,
    /// This shard's (or stage partition's) number, `0..shards`: an answer to a broadcast
    /// names its sender, and the asker counts each sender once.
    pub shard: usize,
}

/// Size of a detector's state, for metrics and the memory budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StateStats {
    /// Keys (lines or handsets) tracked.
    pub keys: usize,
    /// Estimated bytes held.
    pub bytes: usize,
    /// Times a hard cap refused a key or dropped an entry.
    pub cap_hits: u64,
}

/// One detector.
/// A boxed value as [`std::any::Any`], for every type: [`Detector::merge`] takes its part
/// back as its own type (`part_of`) without each detector writing the same cast.
pub trait IntoAny: std::any::Any {
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any>;
}

impl<T: std::any::Any> IntoAny for T {
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any> {
        self
    }
}

pub trait Detector: IntoAny + Send {
    /// The detector's name, as in alerts and config sections.
    fn name(&self) -> &'static str;

    /// Sees one record in one role (`ctx.role`: called once per role, sender, recipient,
    /// then handset, possibly on different shards); pushes findings to `ctx.out` and
    /// evidence for other keys to `ctx.outbox`.
    fn on_event(&mut self, _ev: &Event<'_>, _ids: &EventIds, _ctx: &mut Ctx<'_>) {}

    /// Looks up, and discards, the entry [`Detector::on_event`] will read for the record's
    /// key in `role`. Only for speed, and must not change state: the engine warms every
    /// table a record will probe (the contact store's, each detector's, in every role)
    /// back to back before any role runs, so their cache misses overlap instead of each
    /// stalling in turn.
    fn warm(&self, _ids: &EventIds, _role: Role) {}

    /// Sees what the detectors (and `deal_line`) found in the same call (one role of a
    /// record, or one piece of evidence), judged as of event time `at`.
    fn on_findings(&mut self, _at: Millis, _findings: &[Finding], _ctx: &mut Ctx<'_>) {}

    /// Applies evidence sent to a key this shard owns, at a barrier, in the engine's
    /// deterministic order; findings go to `ctx.out` (subject: the evidence's destination),
    /// further evidence to `ctx.outbox` (applied in the same barrier, after this round).
    fn on_evidence(&mut self, _e: &Evidence, _ctx: &mut Ctx<'_>) {}

    /// Drops state that the watermark has made irrelevant.
    fn expire(&mut self, _watermark: Millis) {}

    /// Size of the state held.
    fn stats(&self) -> StateStats;

    /// Takes new thresholds without losing state: a longer window keeps what it has, a
    /// shorter one trims at the next expiry.
    fn reconfigure(&mut self, cfg: &Config);

    /// A copy of the detector with its state: a checkpoint encodes the copy on another
    /// thread while this one goes on detecting.
    fn box_clone(&self) -> Box<dyn Detector>;

    /// The detector's whole state, encoded for a checkpoint. Required, not defaulted: a
    /// detector that forgot it would silently restart empty after every restore.
    fn save_state(&self) -> Result<Vec<u8>, codec::Error>;

    /// Replaces the state with one [`Detector::save_state`] wrote (under possibly other
    /// thresholds: the engine calls [`Detector::reconfigure`] afterwards, as a live reload).
    fn load_state(&mut self, bytes: &[u8]) -> Result<(), codec::Error>;

    /// Splits the state into `parts` detectors of the same kind, each key's state going to
    /// part `owner(key)` (`< parts`): its shard after a checkpoint is restored into another
    /// shard count (`docs/sharding.md`, "Checkpoints"), or over Kafka the instance now
    /// owning its key group. Each map goes by the key it is kept under (a number's, a
    /// handset's, a SIM's); state every shard holds a copy of (what a
    /// [`crate::exchange::Dest::Every`] broadcast wrote) goes to every part; the counters
    /// (cap hits) to part `counted` alone, so they sum to the same. Leaves `self` empty.
    /// Required, as [`Detector::save_state`]: a map left out would be lost or duplicated.
    fn split(
        &mut self,
        parts: usize,
        owner: &dyn Fn(u64) -> usize,
        counted: usize,
    ) -> Vec<Box<dyn Detector>>;

    /// Adds a part [`Detector::split`] made from another shard's state of the same
    /// detector: its keys are other keys than this one's, its broadcast copies the same.
    fn merge(&mut self, part: Box<dyn Detector>);

    /// Every key held, with the name of the map that holds it; a map every shard holds a
    /// copy of is named `every/...` (the split and merge tests check each key lands on its
    /// owner and nothing is lost or duplicated).
    #[cfg(test)]
    fn keys(&self) -> Vec<(&'static str, u64)>;
}

/// Moves `from`'s entries into `into` (a shard adding another shard's keys): the first
/// map is taken whole rather than rehashed entry by entry.
pub(crate) fn absorb_map<K: Eq + std::hash::Hash, V>(
    into: &mut std::collections::HashMap<K, V, ids::IdBuild>,
    from: std::collections::HashMap<K, V, ids::IdBuild>,
) {
    if into.is_empty() {
        *into = from;
    } else {
        into.extend(from);
    }
}

/// Deals a map's entries out to `parts` maps by `owner(key)` (one pass; `m` is left empty).
pub(crate) fn split_map<V>(
    m: &mut ids::IdMap<V>,
    parts: usize,
    owner: &dyn Fn(u64) -> usize,
) -> Vec<ids::IdMap<V>> {
    split_map_by(m, parts, |&k| owner(k))
}

/// [`split_map`] for a map whose key is not an id itself: `owner` names each key's part.
pub(crate) fn split_map_by<K: Eq + std::hash::Hash, V>(
    m: &mut std::collections::HashMap<K, V, ids::IdBuild>,
    parts: usize,
    owner: impl Fn(&K) -> usize,
) -> Vec<std::collections::HashMap<K, V, ids::IdBuild>> {
    let parts = parts.max(1);
    let mut out: Vec<_> = (0..parts)
        .map(|_| {
            std::collections::HashMap::with_capacity_and_hasher(m.len() / parts, Default::default())
        })
        .collect();
    for (k, v) in std::mem::take(m) {
        out[owner(&k).min(parts - 1)].insert(k, v);
    }
    out
}

/// A part [`Detector::split`] made, as its own type `D`.
pub(crate) fn part_of<D: 'static>(part: Box<dyn Detector>) -> Box<D> {
    // The engine merges a part only into the detector at the same position of a list
    // `build` made from the same configuration, and checks the names: the types agree.
    part.into_any()
        .downcast::<D>()
        .expect("a part of the same detector")
}

/// The keys of a map, named, for [`Detector::keys`].
#[cfg(test)]
pub(crate) fn named_keys<V>(name: &'static str, m: &ids::IdMap<V>) -> Vec<(&'static str, u64)> {
    m.keys().map(|&k| (name, k)).collect()
}

/// For a record older than its key's newest: the earliest window of `window_s` that holds
/// the record's time `at_s`, ends at `at_s` or at a later time in `times`, and holds at
/// least `min` of `times`; `None` if there is none.
///
/// The windows that end at the key's newest time are judged as every record arrives; a
/// record that arrives after later ones can also complete a window that ends earlier (at
/// its own time, or at a time between it and the newest), which in time order would have
/// been judged when it came. Judging those too makes the result independent of arrival
/// order within the allowed lateness. `times` holds the key's entry times (seconds) within
/// `window_s` of `at_s`; it is sorted here (scratch space of the caller).
pub(crate) fn completed_window(
    times: &mut [u32],
    at_s: u32,
    window_s: u32,
    min: usize,
) -> Option<u32> {
    // No window within reach of `at_s` can hold more than all of them.
    if times.len() < min.max(1) {
        return None;
    }
    times.sort_unstable();
    let last = at_s.saturating_add(window_s);
    let later = times.iter().copied().filter(|&t| t > at_s && t <= last);
    std::iter::once(at_s).chain(later).find(|&end| {
        let lo = end.saturating_sub(window_s);
        let n = times.partition_point(|&t| t <= end) - times.partition_point(|&t| t < lo);
        n >= min
    })
}

/// Every detector the configuration enables, primaries first and `deal_line` last.
pub fn build(cfg: &Config) -> (Vec<Box<dyn Detector>>, deal_line::DealLine) {
    let max_keys = cfg.engine.max_keys_per_detector;
    let primaries: Vec<Box<dyn Detector>> = vec![
        Box::new(bulk_sms::BulkSms::new(cfg, max_keys)),
        Box::new(customer_fan_in::CustomerFanIn::new(cfg, max_keys)),
        Box::new(handset_churn::HandsetChurn::new(cfg, max_keys)),
        Box::new(line_handover::LineHandover::new(cfg)),
        Box::new(runner_movement::RunnerMovement::new(cfg, max_keys)),
    ];
    (primaries, deal_line::DealLine::new(cfg, max_keys))
}

/// Shared test helpers: records and a context over a contacts store.
#[cfg(test)]
pub(crate) mod testkit {
    use super::*;
    use crate::event::Kind;
    use std::borrow::Cow;

    pub const MIN: Millis = 60_000;
    pub const HOUR: Millis = 3_600_000;
    pub const DAY: Millis = 86_400_000;

    pub fn sms<'a>(id: &'a str, ts: Millis, from: &'a str, to: &'a str) -> Event<'a> {
        Event {
            event_id: Cow::Borrowed(id),
            ts,
            kind: Kind::Sms,
            from: Cow::Borrowed(from),
            to: Cow::Borrowed(to),
            duration_s: 0,
            imsi: None,
            imei: None,
            cell: None,
        }
    }

    pub fn call<'a>(id: &'a str, ts: Millis, from: &'a str, to: &'a str, dur: u32) -> Event<'a> {
        Event {
            kind: Kind::Call,
            duration_s: dur,
            ..sms(id, ts, from, to)
        }
    }

    /// Drives a detector the way a one-shard engine does: contacts first, then the detector
    /// in each of the record's roles; evidence waits in `inbox` for [`Harness::barrier`].
    pub struct Harness {
        pub contacts: Contacts,
        pub stream_start: Option<Millis>,
        pub cells: Option<CellMap>,
        /// Evidence sent, awaiting the next barrier.
        pub inbox: Vec<Evidence>,
        seq: u64,
    }

    impl Harness {
        pub fn new() -> Self {
            Harness {
                contacts: Contacts::new(1_000_000, 4096, 7 * 86_400),
                stream_start: None,
                cells: None,
                inbox: Vec::new(),
                seq: 0,
            }
        }

        /// The record in every role it has, in the engine's order; the findings made.
        pub fn feed(&mut self, d: &mut dyn Detector, ev: &Event<'_>) -> Vec<Finding> {
            let ids = EventIds::of(ev);
            self.stream_start.get_or_insert(ev.ts);
            self.seq += 1;
            let mut out = Vec::new();
            let cells = self.cells.as_ref();
            let cell = cells.and_then(|m| m.resolve(ev.cell.as_deref()?));
            for role in Role::RECORD {
                if role == Role::Handset && ids.imei.is_none() {
                    continue;
                }
                if role == Role::Sender {
                    self.contacts.touch(ids.from, ev.ts, ids.imei);
                    if ev.kind == Kind::Sms {
                        self.contacts.record_text(ids.from, ids.to, ev.ts);
                    }
                }
                let mut sent = Vec::new();
                let mut ctx = Ctx {
                    role,
                    contacts: &mut self.contacts,
                    stream_start: self.stream_start.unwrap(),
                    out: &mut out,
                    outbox: &mut sent,
                    cells,
                    cell,
                    shards: 1,
                    shard: 0,
                };
                d.on_event(ev, &ids, &mut ctx);
                for (k, s) in sent.into_iter().enumerate() {
                    self.inbox.push(Evidence {
                        dest: s.dest,
                        at: ev.ts,
                        event_id: ev.event_id.as_ref().into(),
                        order: [ev.ts as u64, self.seq, (role as u64) << 32 | k as u64, 0],
                        body: s.body,
                    });
                }
            }
            out
        }

        /// Shows the detector findings as the engine does after a call (`on_findings`).
        #[allow(dead_code)] // for the role-split detectors' tests
        pub fn findings(
            &mut self,
            d: &mut dyn Detector,
            at: Millis,
            fs: &[Finding],
        ) -> Vec<Finding> {
            let mut out = Vec::new();
            let mut sent = Vec::new();
            let mut ctx = Ctx {
                role: Role::Barrier,
                contacts: &mut self.contacts,
                stream_start: self.stream_start.unwrap_or(at),
                out: &mut out,
                outbox: &mut sent,
                cells: self.cells.as_ref(),
                cell: None,
                shards: 1,
                shard: 0,
            };
            d.on_findings(at, fs, &mut ctx);
            out
        }

        /// A barrier: applies the evidence sent so far (and what that sends, round after
        /// round) to the detector, in the engine's order; the findings made.
        #[allow(dead_code)] // for the role-split detectors' tests
        pub fn barrier(&mut self, d: &mut dyn Detector) -> Vec<Finding> {
            let mut out = Vec::new();
            while !self.inbox.is_empty() {
                let mut round = std::mem::take(&mut self.inbox);
                round.sort_by_key(|e| e.order);
                for (rank, e) in round.iter().enumerate() {
                    let mut sent = Vec::new();
                    let mut ctx = Ctx {
                        role: Role::Barrier,
                        contacts: &mut self.contacts,
                        stream_start: self.stream_start.unwrap_or(e.at),
                        out: &mut out,
                        outbox: &mut sent,
                        cells: self.cells.as_ref(),
                        cell: None,
                        shards: 1,
                        shard: 0,
                    };
                    d.on_evidence(e, &mut ctx);
                    for (k, s) in sent.into_iter().enumerate() {
                        self.inbox.push(Evidence {
                            dest: s.dest,
                            at: e.at,
                            event_id: e.event_id.clone(),
                            order: [rank as u64, s.hint[0], s.hint[1], k as u64],
                            body: s.body,
                        });
                    }
                }
            }
            out
        }
    }
}
