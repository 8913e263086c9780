//! Record-processing latency while checkpoints are written, with a million tracked lines.
//!
//! Builds an engine over `LINES` lines (default 1,000,000; five records a line), then feeds
//! it the bench mix at `RATE` records/s (default 20,000) for `SECS` seconds (default 60)
//! per mode, taking a checkpoint every `INTERVAL_S` seconds (default 10) into a directory
//! store under `target/tmp/`, exactly as the run loop does (`Checkpointer::take` at a batch
//! boundary). Each record's latency is from the moment it was due (open loop: a record due
//! while the loop is paused waits, as a record on Kafka would) to the end of its processing,
//! so a pause shows in the percentiles instead of hiding in a slower rate.
//!
//! Modes (arguments, default all three): `off` (no checkpoints), `copy` (the run loop
//! copies the engine), `fork` (a copy-on-write child encodes it).
//!
//! `LINES=1000000 cargo bench --bench checkpoint_latency -- off copy fork`

use std::time::{Duration, Instant};

use linewatch::checkpoint::metrics::CheckpointMetrics;
use linewatch::checkpoint::service::{Checkpointer, Cover, SnapshotMode};
use linewatch::checkpoint::store::{DirStore, Store};
use linewatch::checkpoint::{InputPartition, SourceOffset};
use linewatch::config::Config;
use linewatch::engine::Engine;
use prometheus::Registry;

#[path = "common/mod.rs"]
mod common;
use common::Records;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Minor page faults of the calling thread. While a forked child lives, the first write to
/// each page shared with it faults and copies the page, so the run loop's faults during a
/// checkpoint, less its usual rate, count the pages copied (an upper bound: allocation
/// faults count too). Cheap, unlike reading smaps, which walks every page table and, tried
/// every 100 ms, added seconds of latency by itself.
fn thread_minor_faults() -> i64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) };
    u.ru_minflt
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn histogram_sum_count(r: &Registry, name: &str) -> (f64, u64) {
    r.gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .map(|m| {
            let h = m.get_histogram();
            (h.get_sample_sum(), h.get_sample_count())
        })
        .fold((0.0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
}

fn main() {
    // `cargo test --all-targets` runs this without `--bench` (in a debug build): then a
    // few seconds over a small engine check that it works, as criterion's test mode does.
    let measure = std::env::args().any(|a| a == "--bench");
    let (lines, rate, secs, interval) = if measure {
        (1_000_000, 20_000, 60, 10)
    } else {
        (5_000, 2_000, 2, 1)
    };
    let lines = env("LINES", lines);
    let rate = env("RATE", rate);
    let secs = env("SECS", secs);
    let interval = env("INTERVAL_S", interval) as u64;
    let mut modes: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if modes.is_empty() {
        modes = vec!["off".into(), "copy".into(), "fork".into()];
    }
    let live_per_mode = rate * secs;

    let mut cfg = Config::default();
    cfg.engine.max_keys_per_detector = cfg.engine.max_keys_per_detector.max(2 * lines);
    cfg.service.checkpoint_interval_s = interval;
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tmp/checkpoint_latency");
    let _ = std::fs::remove_dir_all(&dir);
    cfg.service.state_dir = dir.to_string_lossy().into_owned();

    let started = Instant::now();
    let mut records = Records::new(lines);
    let mut rec = Vec::with_capacity(512);
    let mut engine = Engine::new(cfg.clone());
    let now = linewatch::replay::wall_ms();
    let mut alerts = Vec::new();
    for _ in 0..5 * lines {
        records.next_into(&mut rec);
        alerts.clear();
        engine.process(&rec, 0, now, &mut alerts);
    }
    let memory: usize = engine.state_stats().iter().map(|(_, s)| s.bytes).sum();
    println!(
        "{} tracked lines, state in memory {:.0} MB, built in {:.0} s; {rate} records/s for {secs} s per mode, a checkpoint every {interval} s",
        engine.tracked_lines(),
        memory as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    println!(
        "| mode | records | p50 ms | p99 ms | p99.9 ms | max ms | checkpoints | pause max / mean ms | write s (mean) | bytes | run-loop write faults per checkpoint, max (MB at 4 KiB; bounds the pages copied) | page faults/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");

    for mode in &modes {
        let registry = Registry::new();
        let metrics = CheckpointMetrics::register(&registry);
        let mut checkpointer = match mode.as_str() {
            "off" => None,
            m => {
                let stores: Vec<Box<dyn Store>> =
                    vec![Box::new(DirStore::new(&dir).expect("state dir"))];
                let mode = if m == "fork" {
                    SnapshotMode::Fork
                } else {
                    SnapshotMode::Copy
                };
                Some(Checkpointer::start(stores, &cfg, metrics.clone()).with_mode(mode))
            }
        };
        // Page faults of this thread during each checkpoint (see thread_minor_faults).
        let mut faults_at_take: Option<i64> = None;
        let mut faults: Vec<i64> = Vec::new();
        let faults_start = thread_minor_faults();
        let mut lat_us: Vec<u32> = Vec::with_capacity(live_per_mode);
        // TRACE=1: the worst latency per 100 ms of due time, and when checkpoints were taken,
        // to see the shape of a stall.
        let trace = std::env::var("TRACE").is_ok_and(|v| v == "1");
        let mut worst: Vec<u32> = vec![0; secs * 10 + 1];
        let mut taken_at: Vec<f64> = Vec::new();
        let mut pauses: Vec<f64> = Vec::new();
        let t0 = Instant::now();
        let mut i = 0;
        while i < live_per_mode {
            let due = ((t0.elapsed().as_secs_f64() * rate as f64) as usize).min(live_per_mode);
            if due <= i {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            for k in i..due {
                records.next_into(&mut rec);
                alerts.clear();
                engine.process(&rec, 0, linewatch::replay::wall_ms(), &mut alerts);
                let due_at = k as f64 / rate as f64;
                let lat = t0.elapsed().as_secs_f64() - due_at;
                let us = (lat.max(0.0) * 1e6) as u32;
                lat_us.push(us);
                let b = &mut worst[((due_at * 10.0) as usize).min(secs * 10)];
                *b = (*b).max(us);
            }
            i = due;
            // A batch boundary: where the run loop takes a checkpoint.
            if let Some(c) = checkpointer.as_mut() {
                if c.idle() {
                    if let Some(f) = faults_at_take.take() {
                        faults.push(thread_minor_faults() - f);
                    }
                }
                if c.due() {
                    faults_at_take = Some(thread_minor_faults());
                    let p = Instant::now();
                    c.take(
                        &engine,
                        Cover {
                            partitions: vec![InputPartition {
                                topic: cfg.service.input_topics[0].clone(),
                                partition: 0,
                            }],
                            offsets: vec![SourceOffset {
                                topic: cfg.service.input_topics[0].clone(),
                                partition: 0,
                                offset: records.made() as i64,
                            }],
                        },
                    );
                    pauses.push(p.elapsed().as_secs_f64() * 1000.0);
                    taken_at.push(p.duration_since(t0).as_secs_f64());
                }
            }
        }
        if let Some(c) = checkpointer.as_ref() {
            while !c.idle() {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if let Some(f) = faults_at_take.take() {
            faults.push(thread_minor_faults() - f);
        }
        let faults_per_s =
            (thread_minor_faults() - faults_start) as f64 / t0.elapsed().as_secs_f64();
        if trace {
            println!("checkpoints taken at (s): {taken_at:.2?}");
            for (b, us) in worst.iter().enumerate() {
                if *us > 50_000 {
                    println!(
                        "  {:.1} s: worst {:.0} ms",
                        b as f64 / 10.0,
                        *us as f64 / 1000.0
                    );
                }
            }
        }
        lat_us.sort_unstable();
        let (wsum, wcount) = histogram_sum_count(&registry, "linewatch_checkpoint_write_seconds");
        let bytes = registry
            .gather()
            .iter()
            .filter(|f| f.name() == "linewatch_checkpoint_bytes")
            .flat_map(|f| f.get_metric().iter())
            .map(|m| m.get_gauge().get_value())
            .sum::<f64>();
        let pause_max = pauses.iter().copied().fold(0.0, f64::max);
        let pause_mean = if pauses.is_empty() {
            0.0
        } else {
            pauses.iter().sum::<f64>() / pauses.len() as f64
        };
        println!(
            "| {mode} | {} | {:.2} | {:.2} | {:.2} | {:.1} | {} written of {} taken | {:.1} / {:.1} | {:.2} | {:.0} | {} | {:.0} |",
            lat_us.len(),
            pct(&lat_us, 0.50),
            pct(&lat_us, 0.99),
            pct(&lat_us, 0.999),
            pct(&lat_us, 1.0),
            wcount,
            pauses.len(),
            pause_max,
            pause_mean,
            wsum / wcount.max(1) as f64,
            bytes,
            faults.iter().max().map_or("-".into(), |f| format!(
                "{:.0}",
                *f as f64 * 4096.0 / 1e6
            )),
            faults_per_s
        );
        drop(checkpointer);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
