//! The ingest stage: each record decoded and validated once (the future bound, dedup and
//! lateness against this stage's own watermark, with the counters and dead-letter verdicts
//! of [`Engine::process`]), and a valid one routed to the partitions owning its keys.

use std::sync::Arc;

use crate::cells::CellMap;
use crate::config::Config;
use crate::engine::{shard_of, Counters, Engine, Verdict};
use crate::event::{self, Millis};
use crate::exchange::Role;
use crate::ids;

use super::message::{role_bit, Mark, Message, Record, Routed};

/// One ingest task: reads some input partitions, writes to every partition stage.
pub struct IngestStage {
    /// The ingest alone ([`Engine::ingest_only`]): dedup, watermark, counters.
    engine: Engine,
    source: i32,
    partitions: usize,
    /// The exchange epoch of the last [`Mark`] sent.
    epoch: i64,
}

impl IngestStage {
    /// Ingest task `source` (its id among the producers, unique) for `partitions`
    /// partition stages.
    pub fn new(cfg: Config, source: i32, partitions: usize) -> Self {
        IngestStage {
            engine: Engine::new(cfg),
            source,
            partitions: partitions.max(1),
            epoch: i64::MIN,
        }
    }

    /// Counts records' cells against this map (the partitions place them with theirs).
    pub fn set_cells(&mut self, cells: Option<Arc<CellMap>>) {
        self.engine.set_cells(cells);
    }

    /// Judges future timestamps against `at` instead of the wall time (`replay --now`).
    pub fn set_reference_clock(&mut self, at: Option<Millis>) {
        self.engine.set_reference_clock(at);
    }

    /// Registers an input partition this task reads: it holds the watermark until it
    /// delivers or idles.
    pub fn assign_partition(&mut self, partition: i32, wall: Millis) {
        self.engine.assign_partition(partition, wall);
    }

    pub fn source(&self) -> i32 {
        self.source
    }

    /// The ingest's counters (records, dead letters by reason; no alerts).
    pub fn counters(&self) -> Counters {
        self.engine.counters()
    }

    pub fn watermark(&self, wall: Millis) -> Millis {
        self.engine.watermark(wall)
    }

    /// One raw record from input partition `partition`: its verdict (rejected ones go to
    /// the dead letters as today), and for a valid one a [`Routed`] message per distinct
    /// partition owning one of its keys appended to `out` as (partition, message); then a
    /// [`Mark`] to every partition if the watermark entered a new exchange epoch.
    pub fn ingest(
        &mut self,
        bytes: &[u8],
        partition: i32,
        wall: Millis,
        out: &mut Vec<(usize, Message)>,
    ) -> Verdict {
        let decoded = event::decode(bytes, &self.engine.decode_options());
        let (verdict, valid) = self.engine.ingest_only(decoded, partition, wall);
        if let Some(v) = valid {
            let keys = [Some(v.ids.from), Some(v.ids.to), v.ids.imei];
            // Each distinct partition once, in the order of its first role.
            let mut dests: [(usize, u8); 3] = [(usize::MAX, 0); 3];
            let mut k = 0;
            for (role, key) in Role::RECORD.into_iter().zip(keys) {
                let Some(key) = key else { continue };
                let p = shard_of(key, self.partitions);
                match dests[..k].iter_mut().find(|d| d.0 == p) {
                    Some(d) => d.1 |= role_bit(role),
                    None => {
                        dests[k] = (p, role_bit(role));
                        k += 1;
                    }
                }
            }
            let watermark = self.engine.watermark(wall);
            let routed = |roles: u8, record: Record| Routed {
                source: self.source,
                seq: v.seq,
                watermark,
                counted: v.counted,
                start: v.stream_start,
                roles,
                record,
            };
            // `from` always has a partition, so there is a last one: it takes the record
            // itself, the others a copy.
            if let Some((&(last, roles), rest)) = dests[..k].split_last() {
                let record = Record::of(&v.event);
                for &(p, roles) in rest {
                    out.push((p, Message::Routed(routed(roles, record.clone()))));
                }
                out.push((last, Message::Routed(routed(roles, record))));
            }
        }
        self.mark_if_new_epoch(wall, out);
        verdict
    }

    /// A [`Mark`] to every partition if the watermark has entered a new exchange epoch since
    /// the last one (call it when the input is idle too: the watermark moves with the wall
    /// clock once partitions idle).
    pub fn mark_if_new_epoch(&mut self, wall: Millis, out: &mut Vec<(usize, Message)>) {
        let wm = self.engine.watermark(wall);
        let epoch_ms = ids::span_ms(self.engine.config().engine.exchange_epoch_s).max(1);
        let epoch = wm.div_euclid(epoch_ms);
        if wm != Millis::MIN && epoch > self.epoch {
            self.epoch = epoch;
            self.mark(wall, out);
        }
    }

    /// A [`Mark`] to every partition now (at the end of the input, or on a timer).
    pub fn mark(&mut self, wall: Millis, out: &mut Vec<(usize, Message)>) {
        let m = Mark {
            source: self.source,
            watermark: self.engine.watermark(wall),
            counted: self.engine.counted(),
        };
        out.extend((0..self.partitions).map(|p| (p, Message::Mark(m))));
    }
}
