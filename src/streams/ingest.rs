//! The ingest stage: each record decoded and validated once (the future bound, dedup and
//! lateness against this stage's own watermark, with the counters and dead-letter verdicts
//! of [`Engine::process`]), and a valid one routed to the partitions owning its keys.
//!
//! The partition stages see one source per *input partition*, not per ingest task: each
//! input partition's messages in its order, with its own watermark and record count. So a
//! stage merges the input partitions earliest first whichever tasks read them (as one
//! engine's watermark is the minimum over input partitions), and when an input partition
//! moves to another task (a rebalance, an instance lost) its new reader continues the same
//! source: the stages wait for it (up to `service.partition_idle_timeout_s`) instead of
//! running the other partitions ahead and its records hours late under the new reader's
//! own source.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::cells::CellMap;
use crate::config::Config;
use crate::engine::{shard_of, Counters, Engine, Verdict};
use crate::event::Reason;
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
    /// The input partitions read, each a source of the partition stages.
    inputs: BTreeMap<i32, Input>,
    lateness_ms: Millis,
    idle_ms: Millis,
}

/// One input partition as a source of the partition stages.
#[derive(Debug, Clone, Copy)]
struct Input {
    /// The latest valid event time read from it.
    max_ts: Option<Millis>,
    /// Its valid and late records read by this task.
    counted: u64,
    /// The wall time it was last known assigned here: marks go only for partitions
    /// assigned within the idle timeout, so a partition that moved is not marked by its
    /// old reader and its new one at once.
    assigned: Millis,
    /// Whether a mark has announced it to the stages before its first record.
    announced: bool,
}

impl IngestStage {
    /// Ingest task `source` (its id among the producers, unique) for `partitions`
    /// partition stages.
    pub fn new(cfg: Config, source: i32, partitions: usize) -> Self {
        let lateness_ms = ids::span_ms(cfg.engine.allowed_lateness_s);
        let idle_ms = ids::span_ms(cfg.service.partition_idle_timeout_s);
        let mut engine = Engine::new(cfg);
        // The stages merge the input partitions (their sources) in event-time order; here a
        // record is late only against its own partition.
        engine.judge_lateness_per_partition();
        IngestStage {
            engine,
            source,
            partitions: partitions.max(1),
            epoch: i64::MIN,
            inputs: BTreeMap::new(),
            lateness_ms,
            idle_ms,
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
        self.input(partition, wall).assigned = wall;
    }

    fn input(&mut self, partition: i32, wall: Millis) -> &mut Input {
        self.inputs.entry(partition).or_insert(Input {
            max_ts: None,
            counted: 0,
            assigned: wall,
            announced: false,
        })
    }

    /// This task's id (for its log lines; the stages' sources are the input partitions).
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
        let lateness = self.lateness_ms;
        let input = self.input(partition, wall);
        match (&verdict, &valid) {
            (_, Some(v)) => {
                input.counted += 1;
                input.max_ts = Some(input.max_ts.map_or(v.event.ts, |t| t.max(v.event.ts)));
            }
            (Verdict::Rejected(m), None) if m.reason == Reason::Late => input.counted += 1,
            _ => {}
        }
        let (counted, watermark) = (
            input.counted,
            input.max_ts.map_or(Millis::MIN, |t| t - lateness),
        );
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
            let routed = |roles: u8, record: Record| Routed {
                source: partition,
                seq: v.seq,
                watermark,
                counted,
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

    /// A [`Mark`] to every partition now, for each input partition assigned here (at the
    /// end of the input, or on a timer).
    ///
    /// One that has given no record yet is announced once, with no watermark: a stage
    /// learns its sources from their messages, and one it has not heard of cannot hold the
    /// others back, so a reader that starts a few seconds after the others (hours of event
    /// time in a backlog) had its partitions' records run after everything the others had
    /// sent. Announced once only: a partition that never gives a record then idles out of
    /// the stages' watermarks as it does out of this task's.
    pub fn mark(&mut self, wall: Millis, out: &mut Vec<(usize, Message)>) {
        for (&source, input) in &mut self.inputs {
            if wall.saturating_sub(input.assigned) > self.idle_ms {
                continue;
            }
            let watermark = match input.max_ts {
                Some(t) => t - self.lateness_ms,
                None if !input.announced => Millis::MIN,
                None => continue,
            };
            input.announced = true;
            let m = Mark {
                source,
                watermark,
                counted: input.counted,
            };
            out.extend((0..self.partitions).map(|p| (p, Message::Mark(m))));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Millis = 1_780_000_000_000;

    fn record(i: u64, ts: Millis) -> Vec<u8> {
        format!(
            r#"{{"event_id":"e{i:016x}","ts":{ts},"kind":"sms","from":"L{:016x}","to":"L{:016x}"}}"#,
            i % 7 + 1,
            i % 5 + 100
        )
        .into_bytes()
    }

    fn sources(out: &[(usize, Message)]) -> Vec<i32> {
        out.iter().map(|(_, m)| m.source()).collect()
    }

    /// A record is late only against its own input partition: one partition read far ahead
    /// while another was silent past the idle timeout (a takeover's re-read, a starved
    /// reader) does not make the other's on-time records late. Against the minimum over
    /// partitions, the idle one was left out, and its next record, 4 h behind the other
    /// partition, was dead-lettered `late`.
    #[test]
    fn a_record_is_late_only_against_its_own_partition() {
        let cfg = Config::default();
        let idle = ids::span_ms(cfg.service.partition_idle_timeout_s);
        let wall = T0 + 86_400_000;
        let mut a = IngestStage::new(cfg, 100, 2);
        a.assign_partition(0, wall);
        a.assign_partition(1, wall);
        let mut out = Vec::new();
        let routed = |out: &[(usize, Message)]| {
            out.iter()
                .filter(|(_, m)| matches!(m, Message::Routed(_)))
                .count()
        };
        a.ingest(&record(1, T0), 1, wall, &mut out);
        for k in 0..5 {
            a.ingest(
                &record(10 + k, T0 + k as i64 * 3_600_000),
                0,
                wall + idle + 1,
                &mut out,
            );
        }
        let before = routed(&out);
        // Partition 1, silent past the idle timeout, goes on one minute after its last.
        let v = a.ingest(&record(2, T0 + 60_000), 1, wall + idle + 2, &mut out);
        assert_eq!(v, Verdict::Valid, "on time in its own partition");
        assert!(routed(&out) > before);
        // A record late in its own partition still is.
        let v = a.ingest(&record(3, T0 - 3_600_000), 1, wall + idle + 3, &mut out);
        assert!(
            matches!(v, Verdict::Rejected(ref m) if m.reason == Reason::Late),
            "{v:?}"
        );
    }

    /// An input partition that moves to another ingest task (its reader lost) is the same
    /// source to the stages under its new reader, with its own watermark: the stages wait
    /// for it and merge it in event-time order with the others. (As the task's own source,
    /// its records joined the new reader's queue behind everything that reader had run
    /// ahead meanwhile, and the broker test lost pairs after a kill.)
    #[test]
    fn a_moved_input_partition_is_the_same_source_under_its_new_reader() {
        let cfg = Config::default();
        let wall = T0 + 86_400_000;
        let (mut a, mut b) = (
            IngestStage::new(cfg.clone(), 100, 2),
            IngestStage::new(cfg, 200, 2),
        );
        a.assign_partition(0, wall);
        b.assign_partition(1, wall);
        let mut out = Vec::new();
        for k in 0..10 {
            a.ingest(&record(k, T0 + k as i64 * 60_000), 0, wall, &mut out);
            b.ingest(
                &record(100 + k, T0 + k as i64 * 60_000 + 1),
                1,
                wall,
                &mut out,
            );
        }
        let routed: Vec<&Routed> = out
            .iter()
            .filter_map(|(_, m)| match m {
                Message::Routed(r) => Some(r),
                Message::Mark(_) => None,
            })
            .collect();
        assert!(routed.iter().any(|r| r.source == 0) && routed.iter().any(|r| r.source == 1));
        assert!(routed.iter().all(|r| r.source == 0 || r.source == 1));
        // Partition 1's watermark is its own, not the reader's minimum over its partitions.
        let last1 = routed.iter().rev().find(|r| r.source == 1).unwrap();
        let lateness = ids::span_ms(Config::default().engine.allowed_lateness_s);
        assert_eq!(last1.watermark, T0 + 9 * 60_000 + 1 - lateness);
        assert_eq!(last1.counted, 10);
        // Reader b is lost; a takes partition 1 and goes on with it.
        out.clear();
        a.assign_partition(1, wall + 8_000);
        a.ingest(
            &record(110, T0 + 10 * 60_000 + 1),
            1,
            wall + 8_000,
            &mut out,
        );
        assert!(!out.is_empty());
        assert!(sources(&out).iter().all(|&s| s == 1), "{:?}", sources(&out));
        // Marks: one per input partition read here, for every stage partition.
        out.clear();
        a.mark(wall + 8_000, &mut out);
        assert_eq!(sources(&out), vec![0, 0, 1, 1]);
        // A partition assigned and not yet read is announced once, with no watermark.
        out.clear();
        a.assign_partition(3, wall + 8_000);
        a.mark(wall + 8_000, &mut out);
        let three: Vec<Millis> = out
            .iter()
            .filter_map(|(_, m)| match m {
                Message::Mark(m) if m.source == 3 => Some(m.watermark),
                _ => None,
            })
            .collect();
        assert_eq!(three, vec![Millis::MIN, Millis::MIN]);
        out.clear();
        a.mark(wall + 9_000, &mut out);
        assert_eq!(sources(&out), vec![0, 0, 1, 1]);
        // A partition no longer assigned within the idle timeout is not marked by its old
        // reader (its new one marks it).
        out.clear();
        b.mark(wall + 8_000 + 61_000, &mut out);
        assert!(out.is_empty(), "{:?}", sources(&out));
    }
}
