//! Event-time watermarks, per source partition.
//!
//! Each partition's watermark is the highest event time it has delivered minus the allowed
//! lateness; the engine's is the minimum over partitions that are neither idle nor at rest,
//! so a slow partition holds time back but a silent one does not stall every window, and
//! one at the end of its log (even one that never delivered anything) does not hold it at
//! all. `replay` has one partition. Wall-clock time is passed in, never read here.

use serde::{Deserialize, Serialize};

use crate::event::Millis;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Part {
    partition: i32,
    /// None: assigned, nothing delivered yet.
    max_ts: Option<Millis>,
    last_wall: Millis,
    /// At the end of its log with nothing of it waiting to be processed ([`Watermarks::at_rest`]),
    /// until its next record. Not saved: the service says so again at its next batch.
    #[serde(skip)]
    at_rest: bool,
}

/// Watermark over a set of partitions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Watermarks {
    parts: Vec<Part>,
    lateness: Millis,
    idle_timeout: Millis,
}

impl Watermarks {
    /// `lateness` and `idle_timeout` in milliseconds.
    pub fn new(lateness: Millis, idle_timeout: Millis) -> Self {
        Watermarks {
            parts: Vec::new(),
            lateness,
            idle_timeout,
        }
    }

    pub fn set_lateness(&mut self, lateness: Millis, idle_timeout: Millis) {
        self.lateness = lateness;
        self.idle_timeout = idle_timeout;
    }

    /// Registers an assigned partition before it delivers anything. Until it delivers (or
    /// goes idle), it holds the watermark back: otherwise, reading a backlog, the first
    /// partition fetched would move time hours ahead and every other partition's records
    /// would be called late. A partition already known is left as it is.
    pub fn register(&mut self, partition: i32, wall: Millis) {
        if !self.parts.iter().any(|p| p.partition == partition) {
            self.parts.push(Part {
                partition,
                max_ts: None,
                last_wall: wall,
                at_rest: false,
            });
        }
    }

    /// Notes that a partition has nothing more for now: it is at the end of its log and
    /// every record it delivered has been processed. Until its next record it holds the
    /// watermark no more than an idle one does: a partition that never delivers anything
    /// (an empty partition of a backlog) would otherwise hold time at its start for
    /// `idle_timeout` of wall time, and every record read meanwhile would be judged against
    /// no watermark at all (none late, no barrier). Unknown partitions are ignored.
    pub fn at_rest(&mut self, partition: i32) {
        if let Some(p) = self.parts.iter_mut().find(|p| p.partition == partition) {
            p.at_rest = true;
        }
    }

    /// Notes a record's event time from a partition at wall time `wall`.
    pub fn observe(&mut self, partition: i32, ts: Millis, wall: Millis) {
        match self.parts.iter_mut().find(|p| p.partition == partition) {
            Some(p) => {
                p.max_ts = Some(p.max_ts.map_or(ts, |m| m.max(ts)));
                p.last_wall = p.last_wall.max(wall);
                p.at_rest = false;
            }
            None => self.parts.push(Part {
                partition,
                max_ts: Some(ts),
                last_wall: wall,
                at_rest: false,
            }),
        }
    }

    /// `gap` of wall time up to `wall` in which nothing at all was read does not count
    /// towards any partition's idle timeout (the reader was stalled, not the partitions).
    pub fn pause_idle_clocks(&mut self, gap: Millis, wall: Millis) {
        for p in &mut self.parts {
            p.last_wall = p.last_wall.saturating_add(gap).min(wall);
        }
    }

    /// Forgets a partition (revoked in a rebalance).
    pub fn remove(&mut self, partition: i32) {
        self.parts.retain(|p| p.partition != partition);
    }

    /// The current watermark: records with an earlier event time are late.
    pub fn current(&self, wall: Millis) -> Millis {
        // Minimum over active partitions; one that has delivered nothing yet holds time at
        // its start. No allocation: this runs several times per record.
        let mut any_active = false;
        let mut min: Option<Millis> = None;
        for p in self
            .parts
            .iter()
            .filter(|p| !p.at_rest && wall.saturating_sub(p.last_wall) <= self.idle_timeout)
        {
            any_active = true;
            match p.max_ts {
                None => return Millis::MIN,
                Some(t) => min = Some(min.map_or(t, |m| m.min(t))),
            }
        }
        let base = if any_active {
            min
        } else {
            // All partitions idle or at rest: the freshest one leads, otherwise time would
            // freeze.
            self.parts.iter().filter_map(|p| p.max_ts).max()
        };
        base.map_or(Millis::MIN, |t| t - self.lateness)
    }

    /// One partition's watermark: its highest event time less the lateness (`MIN` before it
    /// delivers anything, or if unknown).
    pub fn of_partition(&self, partition: i32) -> Millis {
        self.parts
            .iter()
            .find(|p| p.partition == partition)
            .and_then(|p| p.max_ts)
            .map_or(Millis::MIN, |t| t - self.lateness)
    }

    /// Per-partition (partition, watermark) pairs, for metrics.
    pub fn per_partition(&self) -> Vec<(i32, Millis)> {
        self.parts
            .iter()
            .filter_map(|p| p.max_ts.map(|t| (p.partition, t - self.lateness)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimum_over_partitions() {
        let mut w = Watermarks::new(100, 1_000);
        assert_eq!(w.current(0), Millis::MIN);
        w.observe(0, 5_000, 0);
        w.observe(1, 3_000, 0);
        assert_eq!(w.current(0), 2_900);
        w.observe(1, 9_000, 0);
        assert_eq!(w.current(0), 4_900);
    }

    #[test]
    fn assigned_partition_holds_time_until_it_delivers_or_idles() {
        let mut w = Watermarks::new(100, 1_000);
        w.register(0, 0);
        w.register(1, 0);
        // A backlog: partition 0 is fetched first and runs hours ahead.
        w.observe(0, 9_000_000, 10);
        assert_eq!(
            w.current(10),
            Millis::MIN,
            "partition 1 has not delivered yet"
        );
        w.observe(1, 5_000, 20);
        assert_eq!(w.current(20), 4_900);
        // Registering again changes nothing.
        w.register(1, 30);
        assert_eq!(w.current(30), 4_900);
        // An assigned partition that never delivers stops holding time once idle.
        let mut w = Watermarks::new(100, 1_000);
        w.register(0, 0);
        w.register(1, 0);
        w.observe(0, 9_000, 2_000);
        assert_eq!(w.current(2_000), 8_900);
    }

    #[test]
    fn a_partition_at_rest_does_not_hold_time_until_it_delivers_again() {
        let mut w = Watermarks::new(100, 60_000);
        w.register(0, 0);
        w.register(1, 0);
        w.observe(0, 9_000, 10);
        // Partition 1 is empty: held at its start, for a minute of wall time.
        assert_eq!(w.current(10), Millis::MIN);
        w.at_rest(1);
        assert_eq!(w.current(10), 8_900);
        // Its next record makes it count again, at its own time.
        w.observe(1, 5_000, 20);
        assert_eq!(w.current(20), 4_900);
        w.observe(0, 12_000, 30);
        assert_eq!(w.current(30), 4_900);
        w.at_rest(1);
        assert_eq!(w.current(30), 11_900);
        // Every partition at rest: the freshest leads, as when all are idle.
        w.at_rest(0);
        assert_eq!(w.current(30), 11_900);
        // An unknown partition is ignored.
        w.at_rest(7);
        assert_eq!(w.current(30), 11_900);
    }

    #[test]
    fn idle_partition_does_not_hold_back() {
        let mut w = Watermarks::new(100, 1_000);
        w.observe(0, 5_000, 0);
        w.observe(1, 3_000, 0);
        w.observe(0, 8_000, 5_000);
        // Partition 1 has been silent for 5 s of wall time: it no longer counts.
        assert_eq!(w.current(5_000), 7_900);
        w.remove(0);
        assert_eq!(w.current(5_000), 2_900);
    }
}
