//! Test helper: one detector over several "shards", each role of a record on the shard that
//! owns the role's key and evidence delivered across shards at the barrier, as the
//! partitioned engine does (`docs/sharding.md`). A detector that reads another key's state
//! in place finds it absent here and gives other findings than on one shard: tests compare
//! the findings for 1, 2 and 3 shards. Every detector's multi-shard test drives this one
//! model, so a change in the engine's rules (order, roles, stream start) is made once.

use super::testkit::Harness;
use super::{Ctx, Detector, EventIds};
use crate::alert::Finding;
use crate::cells::CellMap;
use crate::event::{Event, Kind, Millis};
use crate::exchange::{Dest, Evidence, Role, Sent};
use std::collections::BTreeMap;

pub struct Shards<D: Detector + Clone> {
    pub d: Vec<D>,
    /// Each shard's contacts and cell map.
    pub h: Vec<Harness>,
    inbox: Vec<Evidence>,
    seq: u64,
    /// Mixed into the key before it picks a shard: several salts put the same keys
    /// together and apart in different ways.
    salt: u64,
    /// The stream's first event time, one for every shard as in the engine.
    start: Option<Millis>,
    /// Every finding, with the id of the record or evidence that made it (the alert id's).
    pub found: Vec<(Box<str>, Finding)>,
    /// Evidence sent, by exchange (the `Body` variant's name).
    pub sent: BTreeMap<String, u64>,
    /// Encoded bytes sent (postcard, as a checkpoint or a topic would carry them), by
    /// exchange: the total and the largest.
    pub bytes: BTreeMap<String, (u64, usize)>,
}

impl<D: Detector + Clone> Shards<D> {
    pub fn new(d: D, n: usize, cells: Option<&str>) -> Self {
        let h = (0..n)
            .map(|_| {
                let mut h = Harness::new();
                h.cells = cells.map(|m| CellMap::parse(m).expect("test cell map"));
                h
            })
            .collect();
        Shards {
            d: vec![d; n],
            h,
            inbox: Vec::new(),
            seq: 0,
            salt: 0,
            start: None,
            found: Vec::new(),
            sent: Default::default(),
            bytes: Default::default(),
        }
    }

    /// The same shards with keys spread by another salt.
    pub fn with_salt(mut self, salt: u64) -> Self {
        self.salt = salt;
        self
    }

    /// The shard owning a key (a number's or a handset's hash).
    pub fn owner(&self, key: u64) -> usize {
        let mixed = (key ^ self.salt).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        (mixed % self.d.len() as u64) as usize
    }

    /// Whether evidence sent before `epoch`'s current span of event time (`epoch` ms long)
    /// waits: the engine would have had a barrier by a record at `t`.
    pub fn barrier_due(&self, t: Millis, epoch: Millis) -> bool {
        self.inbox.iter().any(|e| e.at / epoch < t / epoch)
    }

    fn stamp(
        &mut self,
        sent: Vec<Sent>,
        at: Millis,
        event_id: &str,
        order: impl Fn(usize, &Sent) -> [u64; 4],
    ) -> Vec<Evidence> {
        for x in &sent {
            let name = format!("{:?}", x.body);
            let name = name.split(['(', ' ', '{']).next().unwrap_or_default();
            *self.sent.entry(name.to_string()).or_default() += 1;
            let len = crate::checkpoint::codec::encode(&x.body)
                .expect("evidence encodes")
                .len();
            let b = self.bytes.entry(name.to_string()).or_default();
            b.0 += len as u64;
            b.1 = b.1.max(len);
        }
        sent.into_iter()
            .enumerate()
            .map(|(k, x)| Evidence {
                dest: x.dest,
                at,
                event_id: event_id.into(),
                order: order(k, &x),
                body: x.body,
            })
            .collect()
    }

    /// Shard `i` after a call that made `found`: the engine shows them to every detector
    /// there (`on_findings`, in the same role).
    fn after(&mut self, i: usize, role: Role, at: Millis, found: &[Finding], sent: &mut Vec<Sent>) {
        if found.is_empty() {
            return;
        }
        let h = &mut self.h[i];
        let mut side = Vec::new();
        let mut ctx = Ctx {
            role,
            contacts: &mut h.contacts,
            stream_start: self.start.unwrap_or(at),
            out: &mut side,
            outbox: sent,
            cells: h.cells.as_ref(),
            cell: None,
            shards: self.d.len(),
            shard: i,
        };
        self.d[i].on_findings(at, found, &mut ctx);
    }

    /// One record: each role on its key's shard, in the engine's order.
    pub fn feed(&mut self, ev: &Event<'_>) -> Vec<Finding> {
        let ids = EventIds::of(ev);
        self.seq += 1;
        let start = *self.start.get_or_insert(ev.ts);
        let mut out = Vec::new();
        for role in Role::RECORD {
            let key = match role {
                Role::Sender => ids.from,
                Role::Recipient => ids.to,
                _ => match ids.imei {
                    Some(k) => k,
                    None => continue,
                },
            };
            let i = self.owner(key);
            let h = &mut self.h[i];
            h.stream_start = Some(start);
            if role == Role::Sender {
                h.contacts.touch(ids.from, ev.ts, ids.imei);
                if ev.kind == Kind::Sms {
                    h.contacts.record_text(ids.from, ids.to, ev.ts);
                }
            }
            let cells = h.cells.as_ref();
            let cell = cells.and_then(|m| m.resolve(ev.cell.as_deref()?));
            let (mut found, mut sent) = (Vec::new(), Vec::new());
            let mut ctx = Ctx {
                role,
                contacts: &mut h.contacts,
                stream_start: start,
                out: &mut found,
                outbox: &mut sent,
                cells,
                cell,
                shards: self.d.len(),
                shard: i,
            };
            self.d[i].on_event(ev, &ids, &mut ctx);
            self.after(i, role, ev.ts, &found, &mut sent);
            let seq = self.seq;
            let order = |k: usize, _: &Sent| [ev.ts as u64, seq, (role as u64) << 32 | k as u64, 0];
            let stamped = self.stamp(sent, ev.ts, &ev.event_id, order);
            self.inbox.extend(stamped);
            let id: Box<str> = ev.event_id.as_ref().into();
            self.found
                .extend(found.iter().map(|f| (id.clone(), f.clone())));
            out.extend(found);
        }
        out
    }

    /// Findings made outside a record (another detector's, shown by the engine) on the
    /// shard owning `key`: what they send waits for the barrier.
    pub fn show(&mut self, key: u64, at: Millis, found: &[Finding]) {
        self.seq += 1;
        let i = self.owner(key);
        let mut sent = Vec::new();
        self.after(i, Role::Barrier, at, found, &mut sent);
        let seq = self.seq;
        let stamped = self.stamp(sent, at, "shown", |k, _| [at as u64, seq, k as u64, 0]);
        self.inbox.extend(stamped);
    }

    /// A barrier: the evidence applied on the shards owning its destination, round after
    /// round; the findings made.
    pub fn barrier(&mut self) -> Vec<Finding> {
        let mut out = Vec::new();
        while !self.inbox.is_empty() {
            let mut round = std::mem::take(&mut self.inbox);
            round.sort_by_key(|e| e.order);
            for (rank, e) in round.iter().enumerate() {
                let shards: Vec<usize> = match e.dest {
                    Dest::Number(k) | Dest::Handset(k) => vec![self.owner(k)],
                    Dest::Every => (0..self.d.len()).collect(),
                };
                for i in shards {
                    let h = &mut self.h[i];
                    let (mut found, mut sent) = (Vec::new(), Vec::new());
                    let mut ctx = Ctx {
                        role: Role::Barrier,
                        contacts: &mut h.contacts,
                        stream_start: self.start.unwrap_or(e.at),
                        out: &mut found,
                        outbox: &mut sent,
                        cells: h.cells.as_ref(),
                        cell: None,
                        shards: self.d.len(),
                        shard: i,
                    };
                    self.d[i].on_evidence(e, &mut ctx);
                    self.after(i, Role::Barrier, e.at, &found, &mut sent);
                    let order = |k: usize, x: &Sent| [rank as u64, x.hint[0], x.hint[1], k as u64];
                    let stamped = self.stamp(sent, e.at, &e.event_id, order);
                    self.inbox.extend(stamped);
                    let id = &e.event_id;
                    self.found
                        .extend(found.iter().map(|f| (Box::from(id.as_str()), f.clone())));
                    out.extend(found);
                }
            }
        }
        out
    }
}

/// A finding as compared between shard counts: time, subject and its whole evidence.
pub fn key(f: &Finding) -> (Millis, String, String) {
    let ev = serde_json::Value::Object(f.evidence.clone()).to_string();
    (f.event_time, f.subject.clone(), ev)
}
