//! A deterministic record mix for the benches: ordinary subscribers texting and calling a
//! few contacts, a few bulk senders, handsets with SIMs, in event-time order with small
//! jitter. Independent of `generate` so a generator change does not move the figures.

#![allow(dead_code)] // each bench uses a different part

use std::io::Write;
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `n` records of the mix over `subscribers` subscribers, in memory.
pub fn records(n: usize, subscribers: usize) -> Vec<Vec<u8>> {
    let mut mix = Records::new(subscribers);
    (0..n)
        .map(|_| {
            let mut out = Vec::new();
            mix.next_into(&mut out);
            out
        })
        .collect()
}

/// The same records made one at a time (the same seed and draws, so the same state):
/// holding millions of records in memory would make a process larger than the service's.
pub struct Records {
    rng: ChaCha8Rng,
    i: usize,
    subscribers: usize,
}

impl Records {
    pub fn new(subscribers: usize) -> Self {
        Records {
            rng: ChaCha8Rng::seed_from_u64(7),
            i: 0,
            subscribers,
        }
    }

    /// How many records were made so far (the next one's index).
    pub fn made(&self) -> usize {
        self.i
    }

    /// The next record, written over `out`.
    pub fn next_into(&mut self, out: &mut Vec<u8>) {
        let (i, subscribers, rng) = (self.i, self.subscribers, &mut self.rng);
        self.i += 1;
        let t0: i64 = 1_790_000_000_000;
        let ts = t0 + (i as i64) * 50 + rng.gen_range(0..30_000);
        let from = rng.gen_range(0..subscribers);
        // Most contacts stay within a small circle; 1 in 200 records is a bulk sender's text.
        let (from, to) = if i % 200 == 0 {
            (from % 20, rng.gen_range(0..subscribers))
        } else {
            (from, (from + rng.gen_range(1..12)) % subscribers)
        };
        let kind = if rng.gen_bool(0.6) { "sms" } else { "call" };
        let dur = if kind == "call" {
            rng.gen_range(0..300)
        } else {
            0
        };
        out.clear();
        // Writing to a Vec cannot fail.
        let _ = write!(
            out,
            r#"{{"event_id":"ev-{i:09}","ts":{ts},"kind":"{kind}","from":"p:{from:016x}","to":"p:{to:016x}","duration_s":{dur},"imsi":"s:{from:016x}","imei":"h:{from:016x}","cell":"c{}"}}"#,
            from % 500
        );
    }
}

/// A generated city in memory (`generate` with `opts`): its JSONL and its cell map.
pub fn city(opts: &linewatch::generate::GenOptions) -> (Vec<u8>, Arc<linewatch::cells::CellMap>) {
    let (events, _, _) = linewatch::generate::generate_in_memory(opts).expect("generate");
    let mut csv = Vec::new();
    linewatch::generate::write_cells(opts, &mut csv).expect("cells");
    let cells = linewatch::cells::CellMap::parse(&csv).expect("cell map");
    (events, Arc::new(cells))
}

/// The records of a JSONL buffer, one per non-empty line.
pub fn lines(events: &[u8]) -> Vec<&[u8]> {
    events
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect()
}

/// Runs `records` through the engine in order, on partition 0 at wall time `now`.
pub fn feed<R: AsRef<[u8]>>(e: &mut linewatch::engine::Engine, records: &[R], now: i64) {
    let mut alerts = Vec::new();
    for r in records {
        alerts.clear();
        e.process(r.as_ref(), 0, now, &mut alerts);
    }
}

/// [`feed`] in batches of `batch` records ([`linewatch::engine::Engine::process_batch`],
/// the path `replay` and `run` take).
pub fn feed_batched<R: AsRef<[u8]>>(
    e: &mut linewatch::engine::Engine,
    records: &[R],
    now: i64,
    batch: usize,
) {
    let (mut verdicts, mut alerts) = (Vec::new(), Vec::new());
    let opts = e.decode_options();
    for chunk in records.chunks(batch.max(1)) {
        verdicts.clear();
        alerts.clear();
        let decoded = chunk
            .iter()
            .map(|r| (linewatch::event::decode(r.as_ref(), &opts), 0));
        e.process_batch(decoded, now, &mut verdicts, &mut alerts);
    }
}

/// Index of the first record of the city's second day (`warm_city` and `runner_cost` warm
/// an engine on the first day untimed; the file is in event-time order but for the
/// generator's late and duplicate records).
pub fn second_day(lines: &[&[u8]], opts: &linewatch::generate::GenOptions) -> usize {
    let day_ms = 86_400_000;
    lines
        .iter()
        .position(|l| {
            linewatch::event::decode(l, &Default::default())
                .map(|e| e.ts >= opts.start_ms + day_ms)
                .unwrap_or(false)
        })
        .expect("a second day")
}
