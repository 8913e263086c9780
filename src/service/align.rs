//! Event-time alignment of input partitions.
//!
//! Records of one partition reach the engine in offset order, but librdkafka hands over
//! whole fetched chunks a partition at a time: reading a backlog, one partition's chunk can
//! cover half an hour of event time before the next partition's chunk starts at the
//! beginning of it. Detections that join records from different partitions (a customer's
//! call, keyed by the customer, to a line whose adverts are keyed by the line) then see them
//! in the wrong order and are missed: a 4-partition backlog gave 81 `customer_fan_in`
//! alerts where `replay` of the same records gives 285.
//!
//! So records of several partitions wait here and are released in event-time order across
//! partitions (a k-way merge that keeps each partition's own order): the oldest head goes
//! first, but only while no assigned partition may still deliver something older. A
//! partition with nothing waiting here holds the others back until one of these says it
//! has nothing more for now:
//!
//! - a partition EOF from librdkafka (its position reached the end of its log);
//! - librdkafka's statistics saw its position equal to the broker's end of log (high
//!   watermark, or last stable offset) with nothing received since (a fallback: an EOF can be
//!   swallowed when a partition is paused);
//! - nothing came from it for `service.partition_idle_timeout_s` (a partition whose leader
//!   is unreachable must not stall the others for ever).
//!
//! How long a partition takes to deliver does not matter: a slow fetch under CPU load is
//! waited for, so the result does not depend on scheduling (issue 15; Kafka Streams makes
//! the same choice with `max.task.idle.ms`). When all partitions are caught up each has its
//! EOF, and a record is released as soon as it arrives: live latency is unchanged.
//!
//! Memory is bounded by `service.align_max_records`: at the bound, the partitions that are
//! ahead (records waiting here) are paused in the consumer, so only the partitions being
//! waited for deliver, and resumed once their records have gone on (see
//! [`Align::to_pause`] and [`Align::to_resume`]). Nothing is released out of order to make
//! room. A record released out of event-time order anyway (after an idle timeout, or a
//! partition newly assigned behind the others) is counted
//! (`linewatch_align_out_of_order_total`).
//!
//! Offsets stay safe: a partition's records leave in offset order, so a committed offset
//! still covers only processed records. Every held record carries the assignment generation
//! it was read under (see [`super::source::Assignment`]); records of a partition revoked (or
//! revoked and assigned again) are dropped before anything else is released, and only
//! those of an older generation: the new owner (maybe this process again) reads them again
//! from the last commit, and records read under the new assignment are kept.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::source::{Generation, Tp};
use crate::event::Millis;

/// A record held back for alignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub tp: Tp,
    /// The assignment it was read under: a record of an older one is never released.
    pub generation: Generation,
    pub offset: i64,
    pub payload: Vec<u8>,
    pub kafka_ts_ms: Option<i64>,
    pub rebuild: bool,
    /// Event time, if the record decodes; one that does not is released as soon as it is at
    /// the head of its partition (it only becomes a dead letter).
    pub ts: Option<Millis>,
}

/// One assigned partition: its waiting records and what is known of its position.
#[derive(Debug)]
struct Lane {
    generation: Generation,
    records: VecDeque<Held>,
    /// Records of another generation may be in `records` (pushed before the new assignment
    /// was seen here): filtered at the next release.
    mixed: bool,
    /// Offset after the last record received under this generation.
    next: Option<i64>,
    /// When a record last came (or the assignment was first seen): for the idle timeout.
    heard: Instant,
    /// Newest event time released from it, to count records released out of order.
    newest: Option<Millis>,
}

impl Lane {
    fn new(generation: Generation, now: Instant) -> Self {
        Lane {
            generation,
            records: VecDeque::new(),
            mixed: false,
            next: None,
            heard: now,
            newest: None,
        }
    }
}

/// Records waiting per partition, and which partitions are at the end of their log.
#[derive(Debug, Default)]
pub struct Align {
    lanes: BTreeMap<Tp, Lane>,
    held: usize,
    /// Partition numbers whose last event was an EOF, with the generation of the assignment
    /// it came under (librdkafka reports EOF by partition number only; with several input
    /// topics a number stands for all of them, which at worst releases a little early).
    at_end: BTreeMap<i32, Generation>,
    /// Partitions paused in the consumer because the buffer is full, with the generation
    /// they were paused under.
    paused: BTreeMap<Tp, Generation>,
    /// Records released out of event-time order since [`Align::take_out_of_order`].
    out_of_order: u64,
}

impl Align {
    /// Records held.
    pub fn len(&self) -> usize {
        self.held
    }

    pub fn is_empty(&self) -> bool {
        self.held == 0
    }

    /// True while some partition is paused (it delivers nothing until resumed).
    pub fn pausing(&self) -> bool {
        !self.paused.is_empty()
    }

    /// Holds a record received at `now`; its partition is no longer at its end.
    pub fn push(&mut self, h: Held, now: Instant) {
        self.at_end.remove(&h.tp.1);
        let lane = self
            .lanes
            .entry(h.tp)
            .or_insert_with(|| Lane::new(h.generation, now));
        if lane.generation != h.generation {
            if lane.records.is_empty() && h.generation > lane.generation {
                *lane = Lane::new(h.generation, now);
            } else {
                lane.mixed = true;
            }
        }
        if lane.generation == h.generation {
            lane.next = Some(h.offset + 1);
        }
        lane.heard = now;
        lane.records.push_back(h);
        self.held += 1;
    }

    /// Notes a partition EOF, received under `generation`: nothing more to wait for from
    /// that partition for now.
    pub fn at_end(&mut self, partition: i32, generation: Generation) {
        self.at_end.insert(partition, generation);
    }

    /// True if the partition's last event under its lane's generation was an EOF.
    fn ended(&self, tp: &Tp, lane: &Lane) -> bool {
        self.at_end.get(&tp.1) == Some(&lane.generation)
    }

    /// Brings the lanes in line with the assignment: drops partitions no longer assigned
    /// and records of an older generation (their next owner, maybe this process under the
    /// new generation, reads them again from the last commit), and starts a newly
    /// assigned partition knowing nothing of its position.
    fn sync(&mut self, assigned: &BTreeMap<Tp, Generation>, now: Instant) {
        let mut dropped = 0;
        self.lanes.retain(|tp, lane| match assigned.get(tp) {
            None => {
                dropped += lane.records.len();
                false
            }
            Some(&g) => {
                if lane.generation != g || lane.mixed {
                    let before = lane.records.len();
                    lane.records.retain(|h| h.generation == g);
                    dropped += before - lane.records.len();
                    lane.mixed = false;
                }
                if lane.generation != g {
                    let next = lane.records.back().map(|h| h.offset + 1);
                    let records = std::mem::take(&mut lane.records);
                    *lane = Lane::new(g, now);
                    lane.records = records;
                    lane.next = next;
                }
                true
            }
        });
        self.held -= dropped;
        for (tp, g) in assigned {
            self.lanes.entry(*tp).or_insert_with(|| Lane::new(*g, now));
        }
    }

    /// Releases up to `max` records, oldest event time first, to `emit`, while no assigned
    /// partition may still deliver older ones (see the module doc). `caught_up` has, per
    /// partition, the position at which librdkafka's statistics last saw it at the end of
    /// its log.
    pub fn release(
        &mut self,
        assigned: &BTreeMap<Tp, Generation>,
        caught_up: &BTreeMap<Tp, i64>,
        max: usize,
        now: Instant,
        idle: Duration,
        mut emit: impl FnMut(Held),
    ) -> usize {
        self.sync(assigned, now);
        let mut n = 0;
        while n < max && !self.blocked(caught_up, now, idle) {
            let mut best: Option<(Millis, Tp)> = None;
            for (tp, lane) in &self.lanes {
                if let Some(h) = lane.records.front() {
                    let t = h.ts.unwrap_or(Millis::MIN);
                    if best.is_none_or(|(bt, _)| t < bt) {
                        best = Some((t, *tp));
                    }
                }
            }
            let Some((_, tp)) = best else { break };
            let Some(h) = self.lanes.get_mut(&tp).and_then(|l| l.records.pop_front()) else {
                break;
            };
            self.held -= 1;
            if let (Some(ts), false) = (h.ts, h.rebuild) {
                // Rebuild records only restore state (their outputs were published before);
                // they are read behind the others by design and not counted.
                if self
                    .lanes
                    .iter()
                    .any(|(t, l)| *t != tp && l.newest.is_some_and(|x| x > ts))
                {
                    self.out_of_order += 1;
                }
                if let Some(lane) = self.lanes.get_mut(&tp) {
                    lane.newest = Some(lane.newest.map_or(ts, |x| x.max(ts)));
                }
            }
            emit(h);
            n += 1;
        }
        n
    }

    /// True while some assigned partition may still deliver older records: nothing of it
    /// waits here, and it is neither at its end nor idle.
    fn blocked(&self, caught_up: &BTreeMap<Tp, i64>, now: Instant, idle: Duration) -> bool {
        self.lanes.iter().any(|(tp, lane)| {
            // Statistics saw it at the end of its log, and nothing has come since.
            let caught = caught_up
                .get(tp)
                .is_some_and(|at| lane.next.is_none_or(|n| n == *at));
            lane.records.is_empty()
                && !self.ended(tp, lane)
                && !caught
                && now.saturating_duration_since(lane.heard) < idle
        })
    }

    /// Partitions with nothing more for now: none of their records waits here, and they
    /// are at the end of their log (an EOF, or statistics saw them there with nothing
    /// received since), as [`Align::release`] reads it. Once the records released before
    /// have been processed, such a partition need not hold the engine's watermark
    /// ([`crate::engine::Engine::partition_at_rest`]).
    pub fn at_rest<'a>(
        &'a self,
        caught_up: &'a BTreeMap<Tp, i64>,
    ) -> impl Iterator<Item = Tp> + 'a {
        self.lanes
            .iter()
            .filter(move |(tp, lane)| {
                let caught = caught_up
                    .get(tp)
                    .is_some_and(|at| lane.next.is_none_or(|n| n == *at));
                lane.records.is_empty() && (self.ended(tp, lane) || caught)
            })
            .map(|(tp, _)| *tp)
    }

    /// Partitions to pause: at `max` records held, those still fetching that have records
    /// waiting (they are ahead of a partition being waited for). Noted as paused.
    pub fn to_pause(&mut self, max: usize) -> Vec<Tp> {
        if self.held < max {
            return Vec::new();
        }
        let ahead: Vec<(Tp, Generation)> = self
            .lanes
            .iter()
            .filter(|(tp, l)| {
                !l.records.is_empty() && !self.ended(tp, l) && !self.paused.contains_key(tp)
            })
            .map(|(tp, l)| (*tp, l.generation))
            .collect();
        self.paused.extend(ahead.iter().copied());
        ahead.into_iter().map(|(tp, _)| tp).collect()
    }

    /// Paused partitions to resume: those whose records have all gone on (they may be
    /// the ones waited for next), whose assignment changed, or all of them once the buffer
    /// is down to half of `max`.
    pub fn to_resume(&mut self, max: usize) -> Vec<Tp> {
        let low = self.held <= max / 2;
        let lanes = &self.lanes;
        let mut out = Vec::new();
        self.paused.retain(|tp, g| {
            let keep = !low
                && lanes
                    .get(tp)
                    .is_some_and(|l| l.generation == *g && !l.records.is_empty());
            if !keep {
                out.push(*tp);
            }
            keep
        });
        out
    }

    /// Records released out of event-time order since the last call.
    pub fn take_out_of_order(&mut self) -> u64 {
        std::mem::take(&mut self.out_of_order)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(60);

    fn held_in(p: i32, generation: Generation, offset: i64, ts: Option<Millis>) -> Held {
        Held {
            tp: (0, p),
            generation,
            offset,
            payload: Vec::new(),
            kafka_ts_ms: None,
            rebuild: false,
            ts,
        }
    }

    fn held(p: i32, offset: i64, ts: Option<Millis>) -> Held {
        held_in(p, 1, offset, ts)
    }

    fn assigned(ps: &[i32]) -> BTreeMap<Tp, Generation> {
        ps.iter().map(|p| ((0, *p), 1)).collect()
    }

    fn order_at(a: &mut Align, on: &BTreeMap<Tp, Generation>, now: Instant) -> Vec<(i32, i64)> {
        let mut v = Vec::new();
        a.release(on, &BTreeMap::new(), usize::MAX, now, IDLE, |h| {
            v.push((h.tp.1, h.offset))
        });
        v
    }

    fn order(a: &mut Align, on: &BTreeMap<Tp, Generation>) -> Vec<(i32, i64)> {
        order_at(a, on, Instant::now())
    }

    #[test]
    fn merges_partitions_by_event_time_keeping_each_partitions_order() {
        let mut a = Align::default();
        let now = Instant::now();
        // Partition 0 was fetched first and runs ahead; its own order (offset 1 has an
        // older ts than offset 0: a delayed record) is kept.
        for (o, ts) in [(0, 100), (1, 90), (2, 300), (3, 400)] {
            a.push(held(0, o, Some(ts)), now);
        }
        for (o, ts) in [(0, 50), (1, 200), (2, 350)] {
            a.push(held(1, o, Some(ts)), now);
        }
        a.at_end(0, 1);
        a.at_end(1, 1);
        let got = order(&mut a, &assigned(&[0, 1]));
        assert_eq!(
            got,
            [(1, 0), (0, 0), (0, 1), (1, 1), (0, 2), (1, 2), (0, 3)]
        );
        assert!(a.is_empty());
        assert_eq!(
            a.take_out_of_order(),
            0,
            "a partition's own disorder is not counted"
        );
    }

    #[test]
    fn waits_for_a_partition_that_has_not_delivered_however_long_until_idle() {
        let mut a = Align::default();
        let t0 = Instant::now();
        let on = assigned(&[0, 1]);
        a.push(held(0, 0, Some(100)), t0);
        a.push(held(0, 1, Some(200)), t0);
        // Far past any batch wait, partition 1 (slow under load) is still waited for.
        assert!(order_at(&mut a, &on, t0 + Duration::from_secs(30)).is_empty());
        assert_eq!(a.len(), 2);
        // Partition 1 delivers: the merge goes as far as it can and stops again when
        // partition 1 has nothing waiting.
        a.push(held(1, 0, Some(150)), t0 + Duration::from_secs(31));
        assert_eq!(
            order_at(&mut a, &on, t0 + Duration::from_secs(31)),
            [(0, 0), (1, 0)]
        );
        assert_eq!(a.len(), 1);
        // Silent for the idle timeout: no longer waited for.
        assert!(order_at(&mut a, &on, t0 + Duration::from_secs(90)).is_empty());
        assert_eq!(
            order_at(&mut a, &on, t0 + Duration::from_secs(92)),
            [(0, 1)]
        );
    }

    #[test]
    fn at_rest_are_the_partitions_at_their_end_with_nothing_waiting() {
        let mut a = Align::default();
        let on = assigned(&[0, 1, 2]);
        let now = Instant::now();
        let rest = |a: &Align, caught: &BTreeMap<Tp, i64>| a.at_rest(caught).collect::<Vec<_>>();
        // Partition 1 is empty and at its end; 0 has a record waiting behind 2's silence.
        a.at_end(1, 1);
        a.push(held(0, 0, Some(100)), now);
        assert!(order(&mut a, &on).is_empty(), "partition 2 is waited for");
        assert_eq!(rest(&a, &BTreeMap::new()), [(0, 1)]);
        // Statistics put partition 2 at its end: it is at rest too, and 0 goes on; 0 is
        // then at rest only once it is at its end as well.
        let caught = BTreeMap::from([((0, 2), 0)]);
        assert_eq!(rest(&a, &caught), [(0, 1), (0, 2)]);
        a.at_end(0, 1);
        assert_eq!(
            rest(&a, &caught),
            [(0, 1), (0, 2)],
            "0 still has a record waiting"
        );
        a.release(&on, &caught, usize::MAX, now, IDLE, |_| {});
        assert_eq!(rest(&a, &caught), [(0, 0), (0, 1), (0, 2)]);
        // A record makes its partition busy again.
        a.push(held(1, 0, Some(200)), now);
        assert_eq!(rest(&a, &caught), [(0, 0), (0, 2)]);
    }

    #[test]
    fn a_partition_at_its_end_is_not_waited_for_until_it_delivers_again() {
        let mut a = Align::default();
        let on = assigned(&[0, 1]);
        let now = Instant::now();
        a.at_end(1, 1);
        a.push(held(0, 0, Some(100)), now);
        assert_eq!(order(&mut a, &on), [(0, 0)]);
        a.push(held(1, 0, Some(50)), now);
        a.push(held(0, 1, Some(200)), now);
        assert_eq!(order(&mut a, &on), [(1, 0)], "1 is no longer at its end");
        a.at_end(1, 1);
        assert_eq!(order(&mut a, &on), [(0, 1)]);
        // Partition 1's record at ts 50 came after 0's at ts 100 had gone: out of order.
        assert_eq!(a.take_out_of_order(), 1);
        assert_eq!(a.take_out_of_order(), 0);
    }

    #[test]
    fn statistics_at_the_end_of_the_log_stand_for_a_lost_eof() {
        let mut a = Align::default();
        let on = assigned(&[0, 1]);
        let now = Instant::now();
        a.push(held(1, 6, Some(10)), now);
        a.push(held(0, 0, Some(100)), now);
        let mut caught = BTreeMap::new();
        let mut out = Vec::new();
        let mut go = |a: &mut Align, caught: &BTreeMap<Tp, i64>| {
            out.clear();
            a.release(&on, caught, usize::MAX, now, IDLE, |h| out.push(h.offset));
            out.clone()
        };
        assert_eq!(go(&mut a, &caught), [6]);
        // Statistics from before offset 6 arrived say nothing about now.
        caught.insert((0, 1), 6);
        assert!(go(&mut a, &caught).is_empty());
        caught.insert((0, 1), 7);
        assert_eq!(go(&mut a, &caught), [0]);
    }

    #[test]
    fn undecodable_records_leave_at_once_and_unassigned_partitions_are_dropped() {
        let mut a = Align::default();
        let now = Instant::now();
        a.push(held(0, 0, Some(500)), now);
        a.push(held(1, 0, None), now);
        a.push(held(1, 1, Some(900)), now);
        a.push(held(2, 0, Some(10)), now);
        let on = assigned(&[0, 1]);
        a.at_end(0, 1);
        a.at_end(1, 1);
        assert_eq!(order(&mut a, &on), [(1, 0), (0, 0), (1, 1)]);
        assert!(a.is_empty());
    }

    /// Issue 14, item 1: a revoke followed by an assign of the same partition, both before
    /// the loop looks: records read under the new assignment are kept, the old ones dropped.
    #[test]
    fn a_new_generation_drops_only_the_records_of_the_old_one() {
        let mut a = Align::default();
        let now = Instant::now();
        a.push(held_in(0, 1, 10, Some(100)), now);
        a.push(held_in(0, 1, 11, Some(110)), now);
        a.push(held_in(1, 1, 40, Some(105)), now);
        // Revoked and assigned again (generation 2), re-read from the commit at 5.
        a.push(held_in(0, 2, 5, Some(50)), now);
        a.push(held_in(0, 2, 6, Some(60)), now);
        a.at_end(0, 2);
        a.at_end(1, 1);
        let on: BTreeMap<Tp, Generation> = [((0, 0), 2), ((0, 1), 2)].into();
        // Partition 1's EOF came under generation 1: it says nothing of generation 2.
        assert!(order(&mut a, &on).is_empty());
        assert_eq!(a.len(), 2, "partition 1's generation-1 record is dropped");
        a.at_end(1, 2);
        assert_eq!(order(&mut a, &on), [(0, 5), (0, 6)]);
        assert!(a.is_empty());
    }

    #[test]
    fn at_the_bound_partitions_ahead_are_paused_and_resumed_once_drained() {
        let mut a = Align::default();
        let now = Instant::now();
        let on = assigned(&[0, 1, 2]);
        for o in 0..4 {
            a.push(held(0, o, Some(100 + o)), now);
            a.push(held(1, o, Some(100 + o)), now);
        }
        a.at_end(1, 1);
        assert!(a.to_pause(9).is_empty(), "below the bound");
        // Partition 2 has delivered nothing: everything waits, nothing is forced out.
        assert!(order(&mut a, &on).is_empty());
        assert_eq!(a.to_pause(8), [(0, 0)], "1 is at its end: nothing to stop");
        assert!(a.pausing());
        assert!(a.to_pause(8).is_empty(), "already paused");
        assert!(a.to_resume(8).is_empty());
        a.push(held(2, 0, Some(90)), now);
        a.at_end(2, 1);
        // Ties go to the lower partition: 0 runs dry first and is waited for again.
        assert_eq!(order(&mut a, &on).len(), 8);
        assert_eq!(
            a.to_resume(8),
            [(0, 0)],
            "drained: resumed to be read again"
        );
        assert!(!a.pausing());
    }

    #[test]
    fn release_stops_at_max() {
        let mut a = Align::default();
        let now = Instant::now();
        for o in 0..5 {
            a.push(held(0, o, Some(o * 10)), now);
        }
        a.at_end(0, 1);
        let mut v = Vec::new();
        assert_eq!(
            a.release(&assigned(&[0]), &BTreeMap::new(), 3, now, IDLE, |h| v
                .push(h.offset)),
            3
        );
        assert_eq!(v, [0, 1, 2]);
        assert_eq!(a.len(), 2);
    }
}
