//! Checkpoints: the copy or fork the run loop pauses for, write (encode + chunk) and load (verify + decode + restore) time of the
//! whole engine state, and three serialisation crates compared on the contact store (the
//! bulk of the state: about 60 % of its bytes).
//!
//! `LINES` (default 200,000) sets the tracked lines; `LINES=1000000 cargo bench --bench
//! checkpoint` gives the README's 1 M-line figures. Sizes are printed once at the start.

use std::collections::HashMap;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use linewatch::checkpoint::{self, codec, snapshot, SourceOffset};
use linewatch::config::Config;
use linewatch::engine::Engine;
use linewatch::state::LineRecord;

#[path = "common/mod.rs"]
mod common;

fn lines() -> usize {
    std::env::var("LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000)
}

fn engine() -> Engine {
    let n = lines();
    let mut cfg = Config::default();
    cfg.engine.max_keys_per_detector = cfg.engine.max_keys_per_detector.max(2 * n);
    let mut e = Engine::new(cfg);
    let mut alerts = Vec::new();
    // The wall clock bounds how far ahead event time may be; the bench records are in the
    // past.
    let now = linewatch::replay::wall_ms();
    // Five records per line on average: most lines text a handful of contacts.
    for r in common::records(5 * n, n) {
        alerts.clear();
        e.process(&r, 0, now, &mut alerts);
    }
    e
}

fn bench(c: &mut Criterion) {
    let e = engine();
    let offsets = vec![SourceOffset {
        topic: "cdr".into(),
        partition: 0,
        offset: 1,
    }];
    let enc = checkpoint::encode(&e, offsets.clone(), 1, 0, checkpoint::MAX_CHUNK_BYTES).unwrap();
    let tracked = e.tracked_lines();
    let stats = e.state_stats();
    let memory: usize = stats.iter().map(|(_, s)| s.bytes).sum();
    // Where a copy's time goes: each section's share of the memory it copies.
    for (name, s) in &stats {
        println!(
            "  {name}: {} keys, {:.1} MB in memory ({:.0} %)",
            s.keys,
            s.bytes as f64 / 1e6,
            100.0 * s.bytes as f64 / memory as f64
        );
    }
    println!(
        "tracked lines {tracked}, state in memory {memory} B ({:.0} B/line), checkpoint {} B ({:.0} B/line) in {} chunks",
        memory as f64 / tracked as f64,
        enc.manifest.state_bytes,
        enc.manifest.state_bytes as f64 / tracked as f64,
        enc.chunks.len()
    );

    let mut g = c.benchmark_group("checkpoint");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(enc.manifest.state_bytes));
    // What the run loop pauses for: a copy of the state (the writer thread encodes it)...
    g.bench_function("copy", |b| b.iter(|| e.clone()));
    // ...or a fork, whose child encodes the state (the pause is the fork alone)...
    #[cfg(target_os = "linux")]
    g.bench_function("fork_pause", |b| {
        b.iter_custom(|iters| {
            let mut paused = std::time::Duration::ZERO;
            for _ in 0..iters {
                let t = std::time::Instant::now();
                let child = snapshot::fork_encode(&e, None).unwrap();
                paused += t.elapsed();
                child.collect(enc.manifest.state_bytes as usize).unwrap();
            }
            paused
        })
    });
    // ...and the whole forked write as the writer thread sees it: the child's encode
    // through the pipe, then chunks and checksums.
    #[cfg(target_os = "linux")]
    g.bench_function("fork_write", |b| {
        b.iter(|| {
            let body = snapshot::fork_encode(&e, None)
                .unwrap()
                .collect(enc.manifest.state_bytes as usize)
                .unwrap();
            let meta = checkpoint::Meta {
                id: 1,
                created_ms: 0,
                partitions: vec![checkpoint::InputPartition {
                    topic: "cdr".into(),
                    partition: 0,
                }],
                offsets: offsets.clone(),
                config: e.config().clone(),
                config_version: e.config_version().to_string(),
            };
            checkpoint::package(&body, meta, checkpoint::MAX_CHUNK_BYTES).unwrap()
        })
    });
    g.bench_function("write", |b| {
        b.iter(|| {
            checkpoint::encode(&e, offsets.clone(), 1, 0, checkpoint::MAX_CHUNK_BYTES).unwrap()
        })
    });
    let cfg = e.config().clone();
    g.bench_function("load", |b| {
        b.iter(|| {
            let m = checkpoint::decode_manifest(&enc.manifest_value).unwrap();
            let s = checkpoint::assemble(&m, |i| enc.chunks.get(i as usize).cloned()).unwrap();
            checkpoint::restore_engine(&m, &s, &cfg).unwrap()
        })
    });
    // The same checkpoint into other shard counts: each saved shard is decoded once and
    // dealt out by key (docs/sharding.md, "Checkpoints").
    for n in [2, 8] {
        let mut into = cfg.clone();
        into.service.shards = n;
        g.bench_function(format!("load_into_{n}_shards"), |b| {
            b.iter(|| {
                let m = checkpoint::decode_manifest(&enc.manifest_value).unwrap();
                let s = checkpoint::assemble(&m, |i| enc.chunks.get(i as usize).cloned()).unwrap();
                checkpoint::restore_engine(&m, &s, &into).unwrap()
            })
        });
    }
    g.finish();

    // The same state through each crate: the contact store as saved.
    let sections = e.save_sections().unwrap();
    let contacts = &sections
        .iter()
        .find(|s| s.name == "contacts")
        .unwrap()
        .bytes;
    let state: HashMap<u64, LineRecord> = codec::decode(contacts).unwrap();
    let bincode_cfg = bincode::config::standard();
    let post = postcard::to_stdvec(&state).unwrap();
    let binc = bincode::serde::encode_to_vec(&state, bincode_cfg).unwrap();
    let rmp = rmp_serde::to_vec(&state).unwrap();
    for (name, bytes) in [("postcard", &post), ("bincode", &binc), ("rmp-serde", &rmp)] {
        println!("contacts via {name}: {} B", bytes.len());
    }
    let mut g = c.benchmark_group("codec_contacts");
    g.sample_size(10);
    g.throughput(Throughput::Elements(state.len() as u64));
    g.bench_function("postcard/encode", |b| {
        b.iter(|| postcard::to_stdvec(&state).unwrap())
    });
    g.bench_function("postcard/decode", |b| {
        b.iter(|| postcard::from_bytes::<HashMap<u64, LineRecord>>(&post).unwrap())
    });
    g.bench_function("bincode/encode", |b| {
        b.iter(|| bincode::serde::encode_to_vec(&state, bincode_cfg).unwrap())
    });
    g.bench_function("bincode/decode", |b| {
        b.iter(|| {
            bincode::serde::decode_from_slice::<HashMap<u64, LineRecord>, _>(&binc, bincode_cfg)
                .unwrap()
        })
    });
    g.bench_function("rmp-serde/encode", |b| {
        b.iter(|| rmp_serde::to_vec(&state).unwrap())
    });
    g.bench_function("rmp-serde/decode", |b| {
        b.iter(|| rmp_serde::from_slice::<HashMap<u64, LineRecord>>(&rmp).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
