//! A partition stage: the detectors of partition `p` of `P` ([`PartShard`]), fed the records
//! the ingest stages route to it, exchanging evidence with the other partitions.
//!
//! It runs a routed record in the roles it owns, in role order. Evidence for its own keys
//! waits for its next barrier; evidence for another partition's goes to the outbox
//! ([`Stage::take_outbox`]), a broadcast ([`Dest::Every`]) to every other partition as well
//! as applied here. Evidence from other partitions ([`Stage::deliver`]) joins the pending
//! evidence and is applied at the next barrier in the evidence's `order`. Its watermark is
//! the minimum over the sources (input partitions, whichever ingest stage read them: see
//! [`super::ingest`]) it has heard from, idle ones excepted
//! ([`Watermarks`]); barriers fall where it enters a new `exchange_epoch_s`, or a sweep is
//! due, as in [`crate::engine::Engine`].
//!
//! One partition with one source and evidence delivered at once is the one-process engine
//! with one shard: the same barriers on the same records, the same alerts. With several,
//! when remote evidence arrives depends on timing (it is applied at the receiver's first
//! barrier after it arrives), so results differ a little; `tests/partitions.rs` measures how
//! little.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::alert::Alert;
use crate::cells::CellMap;
use crate::checkpoint::{codec, Section};
use crate::config::Config;
use crate::detect::EventIds;
use crate::engine::{
    overlaps, shard_of, shard_section_name, Counters, Dedup, LoadError, PartShard, KEY_GROUPS,
    MAX_ROUNDS,
};
use crate::event::Millis;
use crate::exchange::{Dest, Evidence, Role};
use crate::ids;
use crate::watermark::Watermarks;

use super::message::{role_bit, Message, Routed};

/// What a stage did, for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageStats {
    /// Routed records run.
    pub records: u64,
    /// Watermark marks read.
    pub marks: u64,
    pub barriers: u64,
    /// Pieces of evidence applied here.
    pub applied: u64,
    /// Barriers that stopped at [`MAX_ROUNDS`] with evidence still making evidence.
    pub rounds_capped: u64,
    /// Pieces of evidence put in the outbox (a broadcast once per other partition).
    pub sent: u64,
    /// Pieces of evidence delivered from other partitions.
    pub received: u64,
    /// Routed records already run here (a re-delivery another ingest task read: the
    /// ingests' dedup sets see only their own inputs), counted on the partition of the
    /// record's sender only, so once per record.
    pub duplicates: u64,
    /// Roles of routed records, and evidence delivered, whose key this partition does not
    /// own (a routing fault: roles are skipped, evidence forwarded to its owner).
    pub misrouted: u64,
}

/// The stage's own state (everything but the detectors'), saved as its `stage` section.
#[derive(Clone, Serialize, Deserialize)]
struct StageState {
    partition: u32,
    partitions: u32,
    watermarks: Watermarks,
    /// Per source, its valid and late records so far (the latest heard).
    counted: BTreeMap<i32, u64>,
    /// Their sum at the last sweep.
    counted_at_sweep: u64,
    stream_start: Option<Millis>,
    epoch: i64,
    last_sweep: Millis,
    lines_at_barrier: usize,
    /// Evidence for this partition not yet applied (its own and delivered).
    pending: Vec<Evidence>,
    /// Per source, messages read and not yet run (see [`Stage::receive`]).
    queues: BTreeMap<i32, VecDeque<Message>>,
    /// Per source, the wall time it was last heard from (a silent one idles).
    heard: BTreeMap<i32, Millis>,
    stats: StageStats,
}

/// One partition of the detectors (see the module documentation).
pub struct Stage {
    part: PartShard,
    st: StageState,
    /// Event ids run here, for `engine.dedup_retention_s` (saved as the `dedup` section).
    dedup: Dedup,
    dedup_retention_ms: Millis,
    epoch_ms: Millis,
    expire_every_ms: Millis,
    idle_ms: Millis,
    /// The wall time the last message from any source came (`None`: none since this stage
    /// was made or restored). See [`STALL_MS`].
    last_any: Option<Millis>,
    outbox: Vec<(usize, Evidence)>,
    /// Scratch: evidence sent by one call.
    made: Vec<Evidence>,
}

/// A stage that heard from no source at all for this long was stalled, not its sources:
/// every live reader sends a mark at least once a second, so silence everywhere means the
/// stage's own input stopped (a `read_committed` reader held at a killed member's open
/// transaction until the broker aborts it, 10-20 s; a rebalance; the process starved of
/// CPU). That time does not count towards any source's idle timeout: otherwise the first
/// source read after the stall would run alone, the others (silent as long, their records
/// just behind in the consumer) passed over as idle, and their records would come late.
const STALL_MS: Millis = 3_000;

/// The order of a record among every source's: its source's sequence number, then the
/// source (sources beyond 256 share low bits: ties in evidence order, not errors).
fn global_seq(r: &Routed) -> u64 {
    (r.seq << 8) | u64::from(r.source as u8)
}

impl Stage {
    /// Partition `p` of `n`, with no state.
    pub fn new(cfg: &Config, p: usize, n: usize) -> Self {
        let part = PartShard::new(cfg, p, n);
        let (p, n) = part.partition();
        let st = StageState {
            partition: p as u32,
            partitions: n as u32,
            watermarks: Watermarks::new(0, ids::span_ms(cfg.service.partition_idle_timeout_s)),
            counted: BTreeMap::new(),
            counted_at_sweep: 0,
            stream_start: None,
            epoch: i64::MIN,
            last_sweep: Millis::MIN,
            lines_at_barrier: 0,
            pending: Vec::new(),
            queues: BTreeMap::new(),
            heard: BTreeMap::new(),
            stats: StageStats::default(),
        };
        Stage::with(cfg, part, st)
    }

    fn with(cfg: &Config, part: PartShard, st: StageState) -> Self {
        Stage {
            part,
            st,
            dedup: Dedup::new(),
            dedup_retention_ms: ids::span_ms(cfg.engine.dedup_retention_s),
            epoch_ms: ids::span_ms(cfg.engine.exchange_epoch_s).max(1),
            expire_every_ms: ids::span_ms(cfg.engine.expire_every_s),
            idle_ms: ids::span_ms(cfg.service.partition_idle_timeout_s),
            last_any: None,
            outbox: Vec::new(),
            made: Vec::new(),
        }
    }

    /// Places records' cells with this map (`runner_movement`).
    pub fn set_cells(&mut self, cells: Option<Arc<CellMap>>) {
        self.part.set_cells(cells);
    }

    /// This partition's number and the partition count.
    pub fn partition(&self) -> (usize, usize) {
        self.part.partition()
    }

    /// Registers a source (input partition) this partition reads: until it is heard from (or
    /// idles) it holds the watermark back, so a source read ahead of another cannot make
    /// windows close early.
    pub fn expect_source(&mut self, source: i32, wall: Millis) {
        self.st.watermarks.register(source, wall);
        self.st.queues.entry(source).or_default();
        self.st.heard.entry(source).or_insert(wall);
    }

    /// The watermark: the minimum over the sources, idle ones excepted.
    pub fn watermark(&self, wall: Millis) -> Millis {
        self.st.watermarks.current(wall)
    }

    pub fn stats(&self) -> StageStats {
        self.st.stats
    }

    /// Alert counters and contact cap hits.
    pub fn counters(&self) -> &Counters {
        self.part.counters()
    }

    /// Evidence waiting for this partition's next barrier.
    pub fn pending_evidence(&self) -> usize {
        self.st.pending.len()
    }

    /// Lines this partition tracks (the contact store's).
    pub fn tracked_lines(&self) -> usize {
        self.part.tracked_lines()
    }

    /// The detectors' state sizes.
    pub fn state_stats(&self) -> Vec<(&'static str, crate::detect::StateStats)> {
        self.part.state_stats()
    }

    /// One message from a source, read at wall time `wall`: alerts the records it releases
    /// (and the barriers they close) make are appended to `alerts`.
    ///
    /// Records are run in event-time order across sources, as Kafka Streams picks the next
    /// record of a task: each source's messages in the order sent, and of the sources' next
    /// ones, the earliest; a source with nothing queued holds the others back until it is
    /// heard from or idles (`service.partition_idle_timeout_s` of wall time). Without it a
    /// line's advert and its customer's reply, routed by two ingest stages, would often be
    /// run reply first, and the reply not counted (the customer is not one yet).
    pub fn receive(&mut self, msg: Message, wall: Millis, alerts: &mut Vec<Alert>) {
        self.resume_idle_clocks(wall);
        let source = msg.source();
        if !self.st.queues.contains_key(&source) {
            self.expect_source(source, wall);
        }
        self.st.heard.insert(source, wall);
        self.st.queues.entry(source).or_default().push_back(msg);
        self.release(wall, false, alerts);
    }

    /// Runs no new message, but what the wall clock releases (a source gone idle): call it
    /// when the input is quiet. While the whole stage is stalled (`STALL_MS`) nobody goes
    /// idle: the silence is the stage's.
    pub fn tick(&mut self, wall: Millis, alerts: &mut Vec<Alert>) {
        if self
            .last_any
            .is_some_and(|t| wall.saturating_sub(t) <= STALL_MS)
        {
            self.release(wall, false, alerts);
        }
    }

    /// A message came at `wall`: time the whole stage heard nothing for longer than
    /// [`STALL_MS`], and the time since a restore (the sources' last-heard times are the
    /// previous owner's), stop counting towards the sources' idle timeouts.
    fn resume_idle_clocks(&mut self, wall: Millis) {
        let gap = match self.last_any {
            Some(t) => wall.saturating_sub(t),
            None => Millis::MAX,
        };
        if gap > STALL_MS {
            for heard in self.st.heard.values_mut() {
                *heard = (*heard).saturating_add(gap).min(wall);
            }
            self.st.watermarks.pause_idle_clocks(gap, wall);
        }
        self.last_any = Some(self.last_any.map_or(wall, |t| t.max(wall)));
    }

    /// Runs queued messages, earliest first, while every source has one queued (or idles);
    /// with `all`, every queued message.
    fn release(&mut self, wall: Millis, all: bool, alerts: &mut Vec<Alert>) {
        loop {
            let mut next: Option<(Millis, i32)> = None;
            for (&s, q) in &self.st.queues {
                let at = match q.front() {
                    Some(Message::Routed(r)) => r.record.ts,
                    // A mark's watermark is at or before every later record of its source.
                    Some(Message::Mark(m)) => m.watermark,
                    None => {
                        let heard = self.st.heard.get(&s).copied().unwrap_or(Millis::MIN);
                        if all || wall.saturating_sub(heard) > self.idle_ms {
                            continue;
                        }
                        return;
                    }
                };
                if next.is_none_or(|n| (at, s) < n) {
                    next = Some((at, s));
                }
            }
            let Some((_, s)) = next else { return };
            let msg = self.st.queues.get_mut(&s).and_then(VecDeque::pop_front);
            if let Some(msg) = msg {
                self.process(&msg, wall, alerts);
            }
        }
    }

    /// Messages read and not yet run.
    pub fn queued(&self) -> usize {
        self.st.queues.values().map(VecDeque::len).sum()
    }

    /// Messages of `source` read and not yet run.
    pub fn queued_of(&self, source: i32) -> usize {
        self.st.queues.get(&source).map_or(0, VecDeque::len)
    }

    fn process(&mut self, msg: &Message, wall: Millis, alerts: &mut Vec<Alert>) {
        match msg {
            Message::Routed(r) => {
                // The source's late records since its previous message counted towards a
                // sweep that one engine would run before this record: run it first.
                self.note_count(r.source, r.counted.saturating_sub(1));
                if self.sweep_due(self.watermark(wall)) {
                    self.barrier(wall, alerts);
                }
                if self.dedup.insert(ids::id(&r.record.event_id), r.record.ts) {
                    self.run(r, wall, alerts);
                } else if r.roles & role_bit(Role::Sender) != 0 {
                    self.st.stats.duplicates += 1;
                }
                self.note_count(r.source, r.counted);
                self.st.watermarks.observe(r.source, r.watermark, wall);
            }
            Message::Mark(m) => {
                self.st.stats.marks += 1;
                self.note_count(m.source, m.counted);
                self.st.watermarks.observe(m.source, m.watermark, wall);
            }
        }
        if self.barrier_due(wall) {
            self.barrier(wall, alerts);
        }
    }

    /// Evidence another partition sent here: applied at the next barrier. Evidence for a key
    /// another partition owns goes on to it (counted as misrouted).
    pub fn deliver(&mut self, e: Evidence) {
        match e.dest {
            Dest::Number(k) | Dest::Handset(k) if !self.part.owns(k) => {
                self.st.stats.misrouted += 1;
                let (_, n) = self.part.partition();
                self.outbox.push((shard_of(k, n), e));
            }
            _ => {
                self.st.stats.received += 1;
                self.st.pending.push(e);
            }
        }
    }

    /// The evidence for other partitions sent since the last call, with its destination.
    pub fn take_outbox(&mut self) -> Vec<(usize, Evidence)> {
        std::mem::take(&mut self.outbox)
    }

    /// The end of the input: every queued message run, whatever the other sources, then a
    /// barrier, whatever the watermark (every piece of evidence pending applied).
    pub fn flush(&mut self, wall: Millis, alerts: &mut Vec<Alert>) {
        self.release(wall, true, alerts);
        self.barrier(wall, alerts);
    }

    fn note_count(&mut self, source: i32, counted: u64) {
        let c = self.st.counted.entry(source).or_insert(0);
        *c = (*c).max(counted);
    }

    fn run(&mut self, r: &Routed, wall: Millis, alerts: &mut Vec<Alert>) {
        self.st.stats.records += 1;
        let start = *self.st.stream_start.get_or_insert(r.start);
        let start = start.min(r.start);
        self.st.stream_start = Some(start);
        let ev = r.record.event();
        let ids = EventIds::of(&ev);
        let cell = match (self.part.cells(), ev.cell.as_deref()) {
            (Some(map), Some(c)) => map.resolve(c),
            _ => None,
        };
        let keys = [Some(ids.from), Some(ids.to), ids.imei];
        let mut roles = [Role::Barrier; 3];
        let mut k = 0;
        for (role, key) in Role::RECORD.into_iter().zip(keys) {
            if r.roles & role_bit(role) == 0 {
                continue;
            }
            match key {
                Some(key) if self.part.owns(key) => {
                    roles[k] = role;
                    k += 1;
                }
                _ => self.st.stats.misrouted += 1,
            }
        }
        let mut made = std::mem::take(&mut self.made);
        let seq = global_seq(r);
        self.part.run(
            ev,
            ids,
            cell,
            seq,
            &roles[..k],
            start,
            wall,
            alerts,
            &mut made,
        );
        let mut pending = std::mem::take(&mut self.st.pending);
        self.route(made.drain(..), &mut pending);
        self.st.pending = pending;
        self.made = made;
    }

    /// Evidence just sent: for this partition's keys into `local`, for another's to the
    /// outbox; a broadcast both.
    fn route(&mut self, sent: impl Iterator<Item = Evidence>, local: &mut Vec<Evidence>) {
        let (p, n) = self.part.partition();
        for e in sent {
            match e.dest {
                Dest::Number(k) | Dest::Handset(k) => match shard_of(k, n) {
                    q if q == p => local.push(e),
                    q => {
                        self.st.stats.sent += 1;
                        self.outbox.push((q, e));
                    }
                },
                Dest::Every => {
                    for q in (0..n).filter(|&q| q != p) {
                        self.st.stats.sent += 1;
                        self.outbox.push((q, e.clone()));
                    }
                    local.push(e);
                }
            }
        }
    }

    /// As [`crate::engine::Engine`]'s: the watermark entered a new exchange epoch, or a
    /// sweep is due.
    fn barrier_due(&mut self, wall: Millis) -> bool {
        let wm = self.watermark(wall);
        let epoch = wm.div_euclid(self.epoch_ms);
        let new_epoch = epoch > self.st.epoch;
        self.st.epoch = self.st.epoch.max(epoch);
        new_epoch || self.sweep_due(wm)
    }

    /// As the engine's rule: `expire_every_s` of event time since the last sweep, and as
    /// many records (counted by the sources: every record, not only this partition's) as
    /// the whole stream tracks lines, estimated as this partition's lines at its last
    /// barrier times the partition count (keys are spread evenly over key groups). So
    /// partitions sweep about as often as one engine: a sweep forgets what is older than
    /// the previous sweep's watermark minus each retention, so how often it runs moves what
    /// is kept at the edges of the retentions.
    fn sweep_due(&self, wm: Millis) -> bool {
        let counted: u64 = self.st.counted.values().sum();
        let since = counted.saturating_sub(self.st.counted_at_sweep);
        let due = self.st.last_sweep.saturating_add(self.expire_every_ms);
        let (_, n) = self.part.partition();
        since as usize >= self.st.lines_at_barrier.saturating_mul(n) && wm >= due
    }

    /// The pending evidence round after round (what applying it sends to this partition's
    /// keys is the next round; to others', the outbox), then the sweep if one is due.
    fn barrier(&mut self, wall: Millis, alerts: &mut Vec<Alert>) {
        self.st.stats.barriers += 1;
        let start = self.st.stream_start.unwrap_or(0);
        let mut round = std::mem::take(&mut self.st.pending);
        let mut rounds = 0;
        let mut made = Vec::new();
        while !round.is_empty() {
            if rounds == MAX_ROUNDS {
                self.st.stats.rounds_capped += 1;
                break;
            }
            rounds += 1;
            round.sort_unstable_by_key(|e| e.order);
            self.st.stats.applied += round.len() as u64;
            for (rank, e) in round.iter().enumerate() {
                let before = alerts.len();
                self.part.apply(e, rank, start, wall, alerts, &mut made);
                // As the engine orders a broadcast's alerts.
                if e.dest == Dest::Every {
                    alerts[before..].sort_by(|a, b| a.alert_id.cmp(&b.alert_id));
                }
            }
            let mut next = Vec::new();
            self.route(made.drain(..), &mut next);
            round = next;
        }
        self.st.pending = round;
        let wm = self.watermark(wall);
        if self.sweep_due(wm) {
            self.part.expire(wm);
            self.dedup
                .expire(wm.saturating_sub(self.dedup_retention_ms));
            self.st.last_sweep = wm;
            self.st.counted_at_sweep = self.st.counted.values().sum();
        }
        self.st.lines_at_barrier = self.part.tracked_lines();
    }

    /// The state: the detectors' sections (named as shard `p`'s of a `P`-shard checkpoint)
    /// and the stage's own (`stage`, the same naming). The outbox is not state: the caller
    /// sends it before saving, or the evidence is lost.
    pub fn save(&self) -> Result<Vec<Section>, codec::Error> {
        let (p, _) = self.part.partition();
        let mut v = self.part.save()?;
        v.push(Section::new(
            &shard_section_name(p, "stage"),
            codec::encode(&self.st)?,
        ));
        v.push(Section::new(
            &shard_section_name(p, "dedup"),
            self.dedup.save_state()?,
        ));
        Ok(v)
    }

    /// Partition `p` of `n` restored from the saves of `saved` partition stages (their
    /// sections together, or only those sharing key groups with `p`): the detectors' state
    /// of `p`'s key groups ([`PartShard::restore`]), the evidence pending for them, and the
    /// watermark, sweep clock and counts of the saved stage that owned `p`'s first key group.
    /// The caller then re-reads each input from the positions saved with these sections.
    pub fn restore(
        cfg: &Config,
        p: usize,
        n: usize,
        sections: &[Section],
        saved: usize,
    ) -> Result<Self, LoadError> {
        let part = PartShard::restore(cfg, p, n, sections, saved)?;
        let (p, n) = part.partition();
        let stage_of = |i: usize| -> Result<StageState, LoadError> {
            let name = shard_section_name(i, "stage");
            let bytes = sections
                .iter()
                .find(|s| s.name == name)
                .ok_or_else(|| LoadError::MissingSection(name.clone()))?;
            codec::decode(&bytes.bytes).map_err(|source| LoadError::Decode { name, source })
        };
        let first = (p * KEY_GROUPS).div_ceil(n) * saved / KEY_GROUPS;
        let mut st = stage_of(first.min(saved - 1))?;
        st.partition = p as u32;
        st.partitions = n as u32;
        if saved != n {
            // Each saved stage's evidence for keys `p` owns; broadcasts were copied to every
            // saved stage, so only the first's are kept.
            let owns = |d: Dest| match d {
                Dest::Number(k) | Dest::Handset(k) => shard_of(k, n) == p,
                Dest::Every => false,
            };
            let mut pending: Vec<Evidence> = std::mem::take(&mut st.pending)
                .into_iter()
                .filter(|e| e.dest == Dest::Every || owns(e.dest))
                .collect();
            for i in (0..saved).filter(|&i| i != first && overlaps(i, saved, p, n)) {
                let other = stage_of(i)?;
                pending.extend(other.pending.into_iter().filter(|e| owns(e.dest)));
            }
            st.pending = pending;
            // Messages the saved stage had read and not run were routed for its layout:
            // the caller re-reads them from the positions of the messages run.
            st.queues.values_mut().for_each(VecDeque::clear);
            // Its tracked lines changed with its keys: recounted at the next barrier.
            st.lines_at_barrier = part.tracked_lines();
        }
        let mut stage = Stage::with(cfg, part, st);
        // The ids every saved stage sharing key groups with `p` ran: a record of `p`'s keys
        // was run on one of them.
        for i in (0..saved).filter(|&i| overlaps(i, saved, p, n)) {
            let name = shard_section_name(i, "dedup");
            let bytes = sections
                .iter()
                .find(|s| s.name == name)
                .ok_or_else(|| LoadError::MissingSection(name.clone()))?;
            let mut d = Dedup::new();
            d.load_state(&bytes.bytes)
                .map_err(|source| LoadError::Decode { name, source })?;
            stage.dedup.absorb(d);
        }
        Ok(stage)
    }
}

/// Which positions of a stage partition's inputs a stage task may commit: those before
/// which everything read has had all its effects published.
///
/// A message read is not done when it is read: it may wait in its source's queue (another
/// source is behind), and what it sends to its own keys waits for the next barrier; a piece
/// of evidence read waits to be delivered, then for a barrier. A stage partition that moves
/// is rebuilt by re-reading its inputs up to the committed positions with the outputs
/// dropped (the previous owner published them), so a position committed past a message
/// whose effects were still inside the old owner loses them: neither owner publishes them.
/// Before this, the stage task committed every message read, and each rebalance (every
/// stage partition, with the eager assignor) lost what was queued, held and pending.
///
/// Positions move only at a quiet point (no evidence pending in the stage): then every
/// message run has published all it makes, and the first message not done is the earliest
/// still queued (or the next to read), the first evidence not done the earliest held or
/// and not yet delivered (what was delivered was applied at the barrier that emptied the
/// pending evidence).
#[derive(Debug, Default, Clone)]
pub struct Progress {
    /// Per source, the positions of its messages read and not yet run, in order.
    queued: BTreeMap<i32, VecDeque<i64>>,
    /// The position after the last message read.
    messages_next: Option<i64>,
    /// The position after the last evidence read.
    evidence_next: Option<i64>,
    /// The positions last found safe to commit: (messages, evidence).
    safe: (Option<i64>, Option<i64>),
}

impl Progress {
    /// A message of `source` at `offset` is about to be given to the stage.
    pub fn read_message(&mut self, source: i32, offset: i64) {
        self.queued.entry(source).or_default().push_back(offset);
        self.messages_next = Some(offset + 1);
    }

    /// Evidence at `offset` was read (it is held until delivered).
    pub fn read_evidence(&mut self, offset: i64) {
        self.evidence_next = Some(offset + 1);
    }

    /// After the stage ran: forgets the messages it has run (each source's queue runs in
    /// order, so the last ones are those still queued) and, at a quiet point, moves the safe
    /// positions on. `held` is the positions of evidence read and not yet delivered.
    pub fn sync(&mut self, stage: &Stage, held: impl Iterator<Item = i64>) {
        for (&source, q) in &mut self.queued {
            let left = stage.queued_of(source);
            while q.len() > left {
                q.pop_front();
            }
        }
        self.queued.retain(|_, q| !q.is_empty());
        if stage.pending_evidence() > 0 {
            return;
        }
        let first_queued = self
            .queued
            .values()
            .filter_map(|q| q.front())
            .min()
            .copied();
        self.safe.0 = first_queued.or(self.messages_next);
        self.safe.1 = held.min().or(self.evidence_next);
    }

    /// The position after the last message read.
    pub fn read_upto(&self) -> Option<i64> {
        self.messages_next
    }

    /// The positions to commit: (messages, evidence); `None` when nothing was read yet.
    pub fn safe(&self) -> (Option<i64>, Option<i64>) {
        self.safe
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streams::message::Mark;

    fn mark(source: i32, watermark: Millis) -> Message {
        Message::Mark(Mark {
            source,
            watermark,
            counted: 0,
        })
    }

    fn idle_20s() -> Config {
        let mut cfg = Config::default();
        cfg.service.partition_idle_timeout_s = 20;
        cfg
    }

    /// A read_committed reader held 30 s at a killed member's open transaction reads
    /// nothing from any source; then one source's message comes first. The other source
    /// was as silent, but the stage was stalled, not it: it is waited for, not passed over
    /// as idle (before, the first source ran alone and the other's records came late).
    #[test]
    fn a_stall_of_the_whole_stage_makes_no_source_idle() {
        let mut s = Stage::new(&idle_20s(), 0, 1);
        let mut alerts = Vec::new();
        s.receive(mark(1, 60_000), 1_000, &mut alerts);
        s.receive(mark(2, 60_000), 1_000, &mut alerts);
        assert_eq!(
            s.queued(),
            1,
            "each source's latest waits for the other's next"
        );
        // 30 s of silence everywhere, then source 1.
        s.receive(mark(1, 120_000), 31_000, &mut alerts);
        s.tick(31_500, &mut alerts);
        assert_eq!(s.queued_of(1), 1, "source 2 is waited for");
        s.receive(mark(2, 120_000), 32_000, &mut alerts);
        assert_eq!((s.queued_of(1), s.queued_of(2)), (0, 1));
        // Still no source idles while the stage is silent again (ticks only).
        s.tick(60_000, &mut alerts);
        assert_eq!(s.queued(), 1);
    }

    /// The idle timeout still does its work: a source silent while another delivers (a
    /// mark a second) is passed over once silent for longer than the timeout.
    #[test]
    fn a_source_silent_while_another_delivers_goes_idle() {
        let mut s = Stage::new(&idle_20s(), 0, 1);
        let mut alerts = Vec::new();
        s.receive(mark(2, 60_000), 0, &mut alerts);
        for i in 1..=19 {
            s.receive(mark(1, 60_000 + i * 1_000), i * 1_000, &mut alerts);
        }
        assert_eq!(s.queued(), 19, "source 2 silent 19 s: waited for");
        s.receive(mark(1, 90_000), 21_000, &mut alerts);
        assert_eq!(s.queued(), 0, "source 2 silent 21 s: idle");
    }

    /// A stage made (or restored from a checkpoint) knows its sources' last-heard times
    /// from before: the time until its first message is not theirs to be idle in.
    #[test]
    fn a_stage_made_with_old_sources_waits_for_them_from_its_first_message() {
        let mut s = Stage::new(&idle_20s(), 0, 1);
        let mut alerts = Vec::new();
        s.expect_source(1, 0);
        s.expect_source(2, 0);
        s.receive(mark(1, 60_000), 30_000, &mut alerts);
        assert_eq!(s.queued(), 1, "source 2 is waited for");
        s.receive(mark(2, 60_000), 30_500, &mut alerts);
        assert_eq!(s.queued(), 1);
    }

    /// The stage task's commit positions (`service::streams`, which before committed every
    /// message read): a message waiting in its source's queue for another source, and
    /// evidence held or pending, are not done, so a rebuild must run them again with their
    /// outputs published.
    #[test]
    fn progress_commits_no_message_or_evidence_still_inside_the_stage() {
        let cfg = Config::default();
        let mut s = Stage::new(&cfg, 0, 1);
        let mut g = Progress::default();
        let mut alerts = Vec::new();
        s.expect_source(1, 0);
        s.expect_source(2, 0);
        let mut give = |s: &mut Stage, g: &mut Progress, m: Message, offset: i64| {
            g.read_message(m.source(), offset);
            s.receive(m, 0, &mut alerts);
        };
        // Source 1's mark waits for source 2 (heard at wall 0, not idle).
        give(&mut s, &mut g, mark(1, 60_000), 0);
        g.sync(&s, std::iter::empty());
        assert_eq!(s.queued(), 1);
        assert_eq!(g.safe(), (Some(0), None), "a queued message is not done");
        // Source 2's later mark releases source 1's and waits in turn.
        give(&mut s, &mut g, mark(2, 120_000), 1);
        g.sync(&s, std::iter::empty());
        assert_eq!(g.safe().0, Some(1));
        give(&mut s, &mut g, mark(1, 180_000), 2);
        g.sync(&s, std::iter::empty());
        assert_eq!(g.safe().0, Some(2));
        // Evidence read at 7 and still held: the evidence position stops before it.
        g.read_evidence(7);
        g.sync(&s, [7].into_iter());
        assert_eq!(g.safe().1, Some(7));
        // Delivered, it is pending until a barrier: no position moves meanwhile.
        s.deliver(Evidence {
            dest: Dest::Every,
            at: 100_000,
            event_id: "e1".into(),
            order: [0; 4],
            body: crate::exchange::Body::CrewEnrol {
                line: 1,
                line_name: "L1".into(),
            },
        });
        g.read_evidence(8);
        // Source 2's mark runs, but source 1's stays at 60 s: the same epoch, no barrier.
        give(&mut s, &mut g, mark(2, 130_000), 3);
        g.sync(&s, std::iter::empty());
        assert!(s.pending_evidence() > 0);
        assert_eq!(g.safe(), (Some(2), Some(7)));
        // Applied at the barrier the next epoch brings: both move on.
        give(&mut s, &mut g, mark(1, 300_000), 4);
        give(&mut s, &mut g, mark(2, 300_000), 5);
        g.sync(&s, std::iter::empty());
        assert_eq!(s.pending_evidence(), 0);
        assert_eq!(g.safe(), (Some(5), Some(9)));
    }
}
