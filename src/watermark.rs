//! Event-time watermarks, per source partition.
//!
//! Each partition's watermark is the highest event time it has delivered minus the allowed
//! lateness; the engine's is the minimum over partitions that are not idle, so a slow
//! partition holds time back but a silent one does not stall every window. `replay` has one
//! partition. Wall-clock time is passed in, never read here.

use crate::event::Millis;

#[derive(Debug, Clone)]
struct Part {
    partition: i32,
    max_ts: Millis,
    last_wall: Millis,
}

/// Watermark over a set of partitions.
#[derive(Debug, Clone)]
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

    /// Notes a record's event time from a partition at wall time `wall`.
    pub fn observe(&mut self, partition: i32, ts: Millis, wall: Millis) {
        match self.parts.iter_mut().find(|p| p.partition == partition) {
            Some(p) => {
                p.max_ts = p.max_ts.max(ts);
                p.last_wall = p.last_wall.max(wall);
            }
            None => self.parts.push(Part {
                partition,
                max_ts: ts,
                last_wall: wall,
            }),
        }
    }

    /// Forgets a partition (revoked in a rebalance).
    pub fn remove(&mut self, partition: i32) {
        self.parts.retain(|p| p.partition != partition);
    }

    /// The current watermark: records with an earlier event time are late.
    pub fn current(&self, wall: Millis) -> Millis {
        let active = self
            .parts
            .iter()
            .filter(|p| wall.saturating_sub(p.last_wall) <= self.idle_timeout)
            .map(|p| p.max_ts)
            .min();
        // All partitions idle: the freshest one leads, otherwise time would freeze.
        let base = active.or_else(|| self.parts.iter().map(|p| p.max_ts).max());
        base.map_or(Millis::MIN, |t| t - self.lateness)
    }

    /// Highest event time seen on any partition.
    pub fn max_event_time(&self) -> Option<Millis> {
        self.parts.iter().map(|p| p.max_ts).max()
    }

    /// Per-partition (partition, watermark) pairs, for metrics.
    pub fn per_partition(&self) -> Vec<(i32, Millis)> {
        self.parts
            .iter()
            .map(|p| (p.partition, p.max_ts - self.lateness))
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
