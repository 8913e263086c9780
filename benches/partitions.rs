//! The repartition hop's cost on one instance (issue 11, engine side): the same records
//! through one engine with one shard (what `run` does today, and what one instance owning
//! every partition keeps doing), and through an ingest stage and partition stages with every
//! message and piece of evidence encoded and decoded (what the internal topics would carry,
//! without the broker). Prints CPU-seconds per million records (this thread's, from
//! `getrusage`, so other load on the machine does not count), the hop's share, and the
//! bytes each input record puts on the internal topics.
//!
//! `cargo bench --bench partitions` (`-- SUBSCRIBERS DAYS`, default 20000 4).

use std::sync::Arc;

use linewatch::cells::CellMap;
use linewatch::checkpoint::codec;
use linewatch::config::Config;
use linewatch::engine::Engine;
use linewatch::exchange::Evidence;
use linewatch::generate::GenOptions;
use linewatch::streams::ingest::IngestStage;
use linewatch::streams::message::Message;
use linewatch::streams::stage::Stage;

#[path = "common/mod.rs"]
mod common;

/// This thread's user + system CPU time, in seconds.
fn cpu_s() -> f64 {
    // SAFETY: getrusage writes into the struct it is given and reads nothing else.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

fn one_engine(lines: &[&[u8]], cells: &Arc<CellMap>, wall: i64) -> (f64, usize) {
    let mut e = Engine::new(Config::default());
    e.set_cells(Some(cells.clone()));
    let mut alerts = Vec::new();
    let t = cpu_s();
    for l in lines {
        e.process(l, 0, wall, &mut alerts);
    }
    e.flush(wall, &mut alerts);
    (cpu_s() - t, alerts.len())
}

/// Returns CPU seconds, alerts, bytes of routed records and marks, bytes of evidence.
fn staged(lines: &[&[u8]], cells: &Arc<CellMap>, wall: i64, p: usize) -> (f64, usize, u64, u64) {
    let cfg = Config::default();
    let mut ingest = IngestStage::new(cfg.clone(), 0, p);
    ingest.set_cells(Some(cells.clone()));
    let mut stages: Vec<Stage> = (0..p)
        .map(|i| {
            let mut s = Stage::new(&cfg, i, p);
            s.set_cells(Some(cells.clone()));
            s.expect_source(0, wall);
            s
        })
        .collect();
    let (mut alerts, mut out) = (Vec::new(), Vec::new());
    let (mut routed_bytes, mut evidence_bytes) = (0u64, 0u64);
    let t = cpu_s();
    let deliver = |stages: &mut Vec<Stage>, evidence_bytes: &mut u64| {
        for i in 0..stages.len() {
            for (q, e) in stages[i].take_outbox() {
                let bytes = codec::encode(&e).expect("encode");
                *evidence_bytes += bytes.len() as u64;
                let e: Evidence = codec::decode(&bytes).expect("decode");
                stages[q].deliver(e);
            }
        }
    };
    for l in lines {
        ingest.ingest(l, 0, wall, &mut out);
        for (q, m) in out.drain(..) {
            let bytes = codec::encode(&m).expect("encode");
            routed_bytes += bytes.len() as u64;
            let m: Message = codec::decode(&bytes).expect("decode");
            stages[q].receive(m, wall, &mut alerts);
        }
        if p > 1 {
            deliver(&mut stages, &mut evidence_bytes);
        }
    }
    for _ in 0..20 {
        for s in stages.iter_mut() {
            s.flush(wall, &mut alerts);
        }
        deliver(&mut stages, &mut evidence_bytes);
    }
    (cpu_s() - t, alerts.len(), routed_bytes, evidence_bytes)
}

fn main() {
    // `cargo test --all-targets` runs this without `--bench` (a debug build): then one run
    // over a small city checks that it works.
    let measure = std::env::args().any(|a| a == "--bench");
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (subscribers, days, runs) = match measure {
        true => (20_000, 4, 3),
        false => (1_000, 1, 1),
    };
    let subscribers = args.first().copied().unwrap_or(subscribers);
    let days = args.get(1).copied().unwrap_or(days) as u32;
    let opts = GenOptions {
        seed: 1,
        subscribers,
        days,
        ..GenOptions::default()
    };
    let (events, cells) = common::city(&opts);
    let lines = common::lines(&events);
    let wall = linewatch::replay::wall_ms();
    let m = lines.len() as f64 / 1e6;
    println!(
        "{} records ({subscribers} subscribers, {days} days), best of {runs} run(s) each",
        lines.len()
    );
    let best = |f: &dyn Fn() -> (f64, usize, u64, u64)| {
        (0..runs)
            .map(|_| f())
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .expect("at least one run")
    };
    let (base, alerts, _, _) = best(&|| {
        let (t, a) = one_engine(&lines, &cells, wall);
        (t, a, 0, 0)
    });
    println!(
        "one engine, 1 shard:         {:6.2} CPU-s per M records ({alerts} alerts)",
        base / m
    );
    for p in [1, 6] {
        let (t, alerts, rb, eb) = best(&|| staged(&lines, &cells, wall, p));
        println!(
            "ingest + {p} partition stage(s): {:6.2} CPU-s per M records ({alerts} alerts), \
             {:+.0} % against one engine; internal topics: {:.1} bytes of records and marks \
             + {:.2} bytes of evidence per input record",
            t / m,
            100.0 * (t - base) / base,
            rb as f64 / lines.len() as f64,
            eb as f64 / lines.len() as f64
        );
    }
}
