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
//! first, but only while every assigned partition has a record waiting or has reached the
//! end of its log (a partition EOF with nothing newer). A partition that is merely slow is
//! waited for up to the batch wait; then, or when `max_records` are held, the oldest are
//! released anyway. With one partition assigned nothing waits here at all.
//!
//! Offsets stay safe: a partition's records leave in offset order, so a committed offset
//! still covers only processed records; held records are simply not processed yet (a
//! revoked partition's are dropped and re-read by its next owner).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::source::Tp;
use crate::event::Millis;

/// A record held back for alignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub tp: Tp,
    pub offset: i64,
    pub payload: Vec<u8>,
    pub kafka_ts_ms: Option<i64>,
    pub rebuild: bool,
    /// Event time, if the record decodes; one that does not is released as soon as it is at
    /// the head of its partition (it only becomes a dead letter).
    pub ts: Option<Millis>,
}

/// Records waiting per partition, and which partitions are at the end of their log.
#[derive(Debug, Default)]
pub struct Align {
    lanes: BTreeMap<Tp, VecDeque<Held>>,
    held: usize,
    /// Partition numbers whose last event was an EOF (librdkafka reports EOF by partition
    /// number only; with several input topics a number stands for all of them, which at
    /// worst releases a little early).
    at_end: BTreeSet<i32>,
}

impl Align {
    /// Records held.
    pub fn len(&self) -> usize {
        self.held
    }

    pub fn is_empty(&self) -> bool {
        self.held == 0
    }

    /// Holds a record; its partition is no longer at its end.
    pub fn push(&mut self, h: Held) {
        self.at_end.remove(&h.tp.1);
        self.lanes.entry(h.tp).or_default().push_back(h);
        self.held += 1;
    }

    /// Notes a partition EOF: nothing more to wait for from that partition for now.
    pub fn at_end(&mut self, partition: i32) {
        self.at_end.insert(partition);
    }

    /// Drops a revoked partition's records (its next owner reads them again).
    pub fn forget(&mut self, tp: Tp) {
        if let Some(lane) = self.lanes.remove(&tp) {
            self.held -= lane.len();
        }
    }

    /// Releases up to `max` records, oldest event time first, to `emit`. Stops when an
    /// assigned partition has nothing waiting and is not at its end, unless `force`.
    pub fn release(
        &mut self,
        assigned: &BTreeSet<Tp>,
        max: usize,
        force: bool,
        mut emit: impl FnMut(Held),
    ) -> usize {
        let mut n = 0;
        while n < max {
            if !force && self.blocked(assigned) {
                break;
            }
            let mut best: Option<(Millis, Tp)> = None;
            for (tp, lane) in &self.lanes {
                if let Some(h) = lane.front() {
                    let t = h.ts.unwrap_or(Millis::MIN);
                    if best.is_none_or(|(bt, _)| t < bt) {
                        best = Some((t, *tp));
                    }
                }
            }
            let Some((_, tp)) = best else { break };
            let Some(h) = self.lanes.get_mut(&tp).and_then(VecDeque::pop_front) else {
                break;
            };
            self.held -= 1;
            emit(h);
            n += 1;
        }
        self.lanes.retain(|_, l| !l.is_empty());
        n
    }

    /// True while some assigned partition may still deliver older records.
    fn blocked(&self, assigned: &BTreeSet<Tp>) -> bool {
        assigned.iter().any(|tp| {
            self.lanes.get(tp).is_none_or(VecDeque::is_empty) && !self.at_end.contains(&tp.1)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(p: i32, offset: i64, ts: Option<Millis>) -> Held {
        Held {
            tp: (0, p),
            offset,
            payload: Vec::new(),
            kafka_ts_ms: None,
            rebuild: false,
            ts,
        }
    }

    fn assigned(ps: &[i32]) -> BTreeSet<Tp> {
        ps.iter().map(|p| (0, *p)).collect()
    }

    fn order(a: &mut Align, on: &BTreeSet<Tp>, force: bool) -> Vec<(i32, i64)> {
        let mut v = Vec::new();
        a.release(on, usize::MAX, force, |h| v.push((h.tp.1, h.offset)));
        v
    }

    #[test]
    fn merges_partitions_by_event_time_keeping_each_partitions_order() {
        let mut a = Align::default();
        // Partition 0 was fetched first and runs ahead; its own order (offset 1 has an
        // older ts than offset 0: a delayed record) is kept.
        for (o, ts) in [(0, 100), (1, 90), (2, 300), (3, 400)] {
            a.push(held(0, o, Some(ts)));
        }
        for (o, ts) in [(0, 50), (1, 200), (2, 350)] {
            a.push(held(1, o, Some(ts)));
        }
        a.at_end(0);
        a.at_end(1);
        let got = order(&mut a, &assigned(&[0, 1]), false);
        assert_eq!(
            got,
            [(1, 0), (0, 0), (0, 1), (1, 1), (0, 2), (1, 2), (0, 3)]
        );
        assert!(a.is_empty());
    }

    #[test]
    fn waits_for_an_assigned_partition_that_has_not_delivered_unless_forced() {
        let mut a = Align::default();
        a.push(held(0, 0, Some(100)));
        a.push(held(0, 1, Some(200)));
        let on = assigned(&[0, 1]);
        assert!(
            order(&mut a, &on, false).is_empty(),
            "partition 1 may hold older records"
        );
        assert_eq!(a.len(), 2);
        // Partition 1 delivers: the merge goes as far as it can and stops again when
        // partition 1 has nothing waiting.
        a.push(held(1, 0, Some(150)));
        assert_eq!(order(&mut a, &on, false), [(0, 0), (1, 0)]);
        assert_eq!(a.len(), 1);
        // The batch wait is over: forced out.
        assert_eq!(order(&mut a, &on, true), [(0, 1)]);
    }

    #[test]
    fn a_partition_at_its_end_is_not_waited_for_until_it_delivers_again() {
        let mut a = Align::default();
        let on = assigned(&[0, 1]);
        a.at_end(1);
        a.push(held(0, 0, Some(100)));
        assert_eq!(order(&mut a, &on, false), [(0, 0)]);
        a.push(held(1, 0, Some(50)));
        a.push(held(0, 1, Some(200)));
        assert_eq!(
            order(&mut a, &on, false),
            [(1, 0)],
            "1 is no longer at its end"
        );
        a.at_end(1);
        assert_eq!(order(&mut a, &on, false), [(0, 1)]);
    }

    #[test]
    fn undecodable_records_leave_at_once_and_revoked_partitions_are_dropped() {
        let mut a = Align::default();
        a.push(held(0, 0, Some(500)));
        a.push(held(1, 0, None));
        a.push(held(1, 1, Some(900)));
        a.push(held(2, 0, Some(10)));
        a.forget((0, 2));
        assert_eq!(a.len(), 3);
        let on = assigned(&[0, 1]);
        a.at_end(0);
        a.at_end(1);
        assert_eq!(order(&mut a, &on, false), [(1, 0), (0, 0), (1, 1)]);
    }

    #[test]
    fn release_stops_at_max() {
        let mut a = Align::default();
        for o in 0..5 {
            a.push(held(0, o, Some(o * 10)));
        }
        a.at_end(0);
        let mut v = Vec::new();
        assert_eq!(
            a.release(&assigned(&[0]), 3, false, |h| v.push(h.offset)),
            3
        );
        assert_eq!(v, [0, 1, 2]);
        assert_eq!(a.len(), 2);
    }
}
