//! Delivery: turns event-time records into the arrival-ordered stream mediation would send.
//!
//! Each record gets an arrival time (event time plus a bounded delay); some are re-delivered
//! later, a few are held back past the engine's lateness, and malformed lines are slipped in
//! beside real ones. Records wait, compact and unformatted, until nothing still to be made
//! can arrive earlier; then they are sorted by arrival and written. Memory holds about a day
//! of compact records, not the run's formatted lines. (A sort per day, not a heap: a heap
//! of a million records spends its time on cache misses.)
//!
//! The counts in the report are exactly what `linewatch replay` will count, because delivery
//! mirrors the engine's one rule that depends on order: a record is late when its event time
//! is below the newest accepted event time minus the allowed lateness. Ordinary records are
//! never late (their delay is under 10 minutes, the lateness 15); a deliberately late record
//! is only released once the stream is more than 30 minutes past it.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::io;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::format::{Spoil, Writer};
use super::params as p;
use super::traffic::Ev;
use super::world::{IdKind, LabelRow, World, NONE};
use super::GenOptions;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// First delivery, on time.
    Normal,
    /// The same bytes again, after the original.
    Duplicate,
    /// Held back to be late.
    Late,
    /// An extra line that is not a valid record.
    Malformed(Spoil),
}

#[derive(Debug, Clone, Copy)]
struct Rec {
    arrival: i64,
    eid: u64,
    /// Distinguishes a duplicate from its original, which share `eid`.
    copy: u8,
    class: Class,
    ev: Ev,
}

impl Rec {
    /// Arrival order; ties by id, so the output is fully determined.
    fn key(&self) -> (i64, u64, u8) {
        (self.arrival, self.eid, self.copy)
    }
}

// Heap order (for the retry heap): reversed, so the earliest arrival is on top.
impl PartialEq for Rec {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Rec {}
impl PartialOrd for Rec {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Rec {
    fn cmp(&self, o: &Self) -> Ordering {
        o.key().cmp(&self.key())
    }
}

/// What was written.
#[derive(Debug, Default, Clone)]
pub(crate) struct Tally {
    pub written: u64,
    pub valid: u64,
    pub malformed: u64,
    pub duplicates: u64,
    pub late: u64,
    pub rfc3339: u64,
    pub by_bad: [u64; Spoil::ALL.len()],
    pub max_delay_ms: i64,
}

pub(crate) struct Delivery {
    rng: ChaCha8Rng,
    writer: Writer,
    duplicate_rate: f64,
    late_rate: f64,
    malformed_rate: f64,
    start: i64,
    end: i64,
    /// Records not yet written, in no order until a flush sorts them.
    pending: Vec<Rec>,
    /// Late records waiting for the stream to move further past them (a handful).
    retry: BinaryHeap<Rec>,
    next_eid: u64,
    /// Normal records still in the heap: while any remain, time will still move on.
    normal_pending: u64,
    /// Newest event time the engine will have accepted so far (its watermark's base).
    max_ts: i64,
    buf: Vec<u8>,
    line_label: Vec<u32>,
    handset_label: Vec<u32>,
    pub first_seen: Vec<Option<i64>>,
    pub tally: Tally,
}

impl Delivery {
    pub fn new(opts: &GenOptions, world: &World, labels: &[LabelRow], rng: ChaCha8Rng) -> Self {
        let mut line_label = vec![NONE; world.n_lines as usize];
        let mut handset_label = vec![NONE; world.n_handsets as usize];
        for (k, row) in labels.iter().enumerate() {
            match row.kind {
                IdKind::Line => line_label[row.id as usize] = k as u32,
                IdKind::Handset => handset_label[row.id as usize] = k as u32,
            }
        }
        Delivery {
            rng,
            writer: Writer::new(opts.seed, world.geo.cell_names.clone()),
            duplicate_rate: opts.duplicate_rate,
            late_rate: opts.late_rate,
            malformed_rate: opts.malformed_rate,
            start: world.start,
            end: world.end,
            pending: Vec::new(),
            retry: BinaryHeap::new(),
            next_eid: 0,
            normal_pending: 0,
            max_ts: i64::MIN,
            buf: Vec::with_capacity(512),
            line_label,
            handset_label,
            first_seen: vec![None; labels.len()],
            tally: Tally::default(),
        }
    }

    pub fn writer(&self) -> &Writer {
        &self.writer
    }

    fn eid(&mut self) -> u64 {
        self.next_eid += 1;
        self.next_eid
    }

    fn delay(&mut self) -> i64 {
        let u: f64 = self.rng.gen();
        let range = if u < p::DELAY_FAST_SHARE {
            p::DELAY_FAST_MS
        } else if u < p::DELAY_FAST_SHARE + p::DELAY_MEDIUM_SHARE {
            p::DELAY_MEDIUM_MS
        } else {
            p::DELAY_SLOW_MS
        };
        self.rng.gen_range(range)
    }

    /// Schedules one event-time record (and whatever copies and extras it brings).
    pub fn push(&mut self, ev: Ev) {
        if ev.ts < self.start || ev.ts >= self.end {
            return; // spilled past the run (a reply after the last midnight)
        }
        let eid = self.eid();
        let mk = |arrival, eid, copy, class| Rec {
            arrival,
            eid,
            copy,
            class,
            ev,
        };
        if ev.ts < self.end - p::LATE_HEADROOM_MS && self.rng.gen_bool(self.late_rate) {
            let arrival = ev.ts + self.rng.gen_range(p::LATE_DELAY_MS);
            self.pending.push(mk(arrival, eid, 0, Class::Late));
            return; // a late record is neither duplicated nor copied into a malformed line
        }
        let arrival = ev.ts + self.delay();
        self.pending.push(mk(arrival, eid, 0, Class::Normal));
        self.normal_pending += 1;
        if self.rng.gen_bool(self.duplicate_rate) {
            let again = arrival + self.rng.gen_range(p::DUPLICATE_DELAY_MS);
            self.pending.push(mk(again, eid, 1, Class::Duplicate));
        }
        if self.rng.gen_bool(self.malformed_rate) {
            let bad = Spoil::ALL[self.rng.gen_range(0..Spoil::ALL.len())];
            let at = arrival + self.rng.gen_range(p::MALFORMED_DELAY_MS);
            let eid = self.eid();
            self.pending.push(mk(at, eid, 0, Class::Malformed(bad)));
        }
    }

    /// Notes a record the engine will accept: the watermark moves, labelled subjects are seen.
    fn accepted(&mut self, ev: &Ev) {
        self.max_ts = self.max_ts.max(ev.ts);
        self.tally.valid += 1;
        let rows = [
            self.line_label[ev.from as usize],
            self.line_label[ev.to as usize],
            self.handset_label[ev.handset as usize],
        ];
        for row in rows {
            if row != NONE {
                let seen = &mut self.first_seen[row as usize];
                *seen = Some(seen.map_or(ev.ts, |s| s.min(ev.ts)));
            }
        }
    }

    /// Writes, in arrival order, every record arriving before `cutoff`.
    pub fn flush(
        &mut self,
        cutoff: i64,
        emit: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        self.pending.sort_unstable_by_key(Rec::key);
        let mut i = 0;
        loop {
            // Merge the sorted batch with the few late records waiting for another try.
            let here = self
                .pending
                .get(i)
                .filter(|r| r.arrival < cutoff)
                .map(Rec::key);
            let again = self
                .retry
                .peek()
                .filter(|r| r.arrival < cutoff)
                .map(Rec::key);
            let next = match (here, again) {
                (Some(h), Some(a)) if a < h => self.retry.pop(),
                (Some(_), _) => {
                    i += 1;
                    Some(self.pending[i - 1])
                }
                (None, Some(_)) => self.retry.pop(),
                (None, None) => None,
            };
            let Some(mut r) = next else { break };
            match r.class {
                Class::Normal => {
                    self.normal_pending -= 1;
                    self.tally.max_delay_ms = self.tally.max_delay_ms.max(r.arrival - r.ev.ts);
                    self.accepted(&r.ev);
                }
                Class::Duplicate => self.tally.duplicates += 1,
                Class::Malformed(bad) => {
                    self.tally.malformed += 1;
                    let k = Spoil::ALL.iter().position(|b| *b == bad).unwrap_or(0);
                    self.tally.by_bad[k] += 1;
                }
                Class::Late => {
                    if r.ev.ts < self.max_ts.saturating_sub(p::LATE_MARGIN_MS) {
                        self.tally.late += 1;
                    } else if self.normal_pending > 0 {
                        // The stream has not moved far enough past it yet: hold it longer.
                        r.arrival += p::LATE_RETRY_MS;
                        self.retry.push(r);
                        continue;
                    } else if r.ev.ts < self.max_ts.saturating_sub(p::ASSUMED_LATENESS_MS) {
                        // Nothing newer is left: judged with the engine's default lateness.
                        self.tally.late += 1;
                    } else {
                        self.accepted(&r.ev);
                    }
                }
            }
            self.buf.clear();
            let bad = match r.class {
                Class::Malformed(b) => Some(b),
                _ => None,
            };
            let rfc = self.writer.record(&mut self.buf, &r.ev, r.eid, bad);
            if rfc && bad.is_none() {
                self.tally.rfc3339 += 1;
            }
            self.tally.written += 1;
            emit(&self.buf)?;
        }
        self.pending.drain(..i);
        Ok(())
    }

    /// Records still waiting (for the memory figure).
    pub fn pending(&self) -> usize {
        self.pending.len() + self.retry.len()
    }
}
