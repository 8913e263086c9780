//! `runner_movement`'s cost, paired: the engine with the detector and its cell map against
//! the engine without either, one timed pass of each in turn, many times over.
//!
//! `cargo bench --bench detectors -- warm_city/` times the two sides one after the other,
//! twenty samples each; on a shared VM whose caches other tenants fill and empty over
//! seconds, the two sides then meet different machines, and the gap swings by tens of
//! percent between runs of the same binary. Here the sides alternate pass by pass (about a
//! tenth of a second each), so both meet nearly the same machine, and the figure is the
//! median of the pairs' ratios: what the detector adds, not what the neighbours did.
//!
//! The city and the passes are `warm_city`'s: `generate --subscribers 20000 --days 2 --seed
//! 3`, the first day read untimed into each engine, then the next 100,000 records timed
//! from a fresh copy of it, default thresholds.
//!
//! `cargo bench --bench runner_cost [-- PAIRS]` (default 41 pairs; under `cargo test`, one
//! short pair on a small city). Prints every pair, then the median ratio with the pairs'
//! quartiles (as added time, and as records/s with / without, the bar being
//! 0.9), and each side's fastest pass.
//!
//! Two settings in the environment, for finding where the cost goes:
//! - `RUNNER_COST_BATCH=N` feeds each pass in batches of `N` records
//!   ([`Engine::process_batch`], the path `replay` and `run` take) instead of one record at
//!   a time ([`Engine::process`], as `warm_city` does and every earlier figure of this
//!   bench was taken).
//! - `RUNNER_COST_ONLY=with` (or `without`) times that side alone, `2 × PAIRS` passes and
//!   no ratio: run it under `perf record` once a side, and the two profiles' difference,
//!   symbol by symbol, is what the detector adds.

use std::time::Instant;

use linewatch::config::Config;
use linewatch::engine::Engine;

#[path = "common/mod.rs"]
mod common;

/// One timed pass over `timed` from a copy of `warm` (the copy and its drop untimed), in
/// milliseconds.
fn pass(warm: &Engine, timed: &[Vec<u8>], now: i64, batch: usize) -> f64 {
    let mut e = warm.clone();
    let t = Instant::now();
    timed_feed(&mut e, timed, now, batch);
    let ms = t.elapsed().as_secs_f64() * 1e3;
    drop(std::hint::black_box(e));
    ms
}

/// The timed work of a pass, a function of its own so a profiler can count it alone
/// (`valgrind --tool=callgrind --toggle-collect='*timed_feed*'`: the copy and the drop of
/// the engine, and the warm-up, left out).
#[inline(never)]
fn timed_feed(e: &mut Engine, timed: &[Vec<u8>], now: i64, batch: usize) {
    match batch {
        0 => common::feed(e, timed, now),
        n => common::feed_batched(e, timed, now, n),
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

fn main() {
    // `cargo bench` passes `--bench`; the first plain number is the pair count. Without
    // `--bench` (`cargo test --all-targets` runs every bench target, unoptimised) one short
    // pair checks the bench still runs.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let full = args.iter().any(|a| a == "--bench");
    let pairs: usize = args
        .iter()
        .find_map(|a| a.parse().ok())
        .unwrap_or(if full { 41 } else { 1 })
        .max(1);
    let batch: usize = match std::env::var("RUNNER_COST_BATCH") {
        Ok(b) => b
            .parse()
            .expect("RUNNER_COST_BATCH: a number of records per batch"),
        Err(_) => 0,
    };
    let only = match std::env::var("RUNNER_COST_ONLY").as_deref() {
        Ok("with") => Some(true),
        Ok("without") => Some(false),
        Ok(other) => panic!("RUNNER_COST_ONLY: `with` or `without`, not `{other}`"),
        Err(_) => None,
    };
    let opts = linewatch::generate::GenOptions {
        seed: 3,
        subscribers: if full { 20_000 } else { 2_000 },
        days: 2,
        ..Default::default()
    };
    let (events, cells) = common::city(&opts);
    let lines = common::lines(&events);
    let warm_n = common::second_day(&lines, &opts);
    let timed_n = if full { 100_000 } else { 2_000 };
    let timed: Vec<Vec<u8>> = lines[warm_n..(warm_n + timed_n).min(lines.len())]
        .iter()
        .map(|l| l.to_vec())
        .collect();
    let now = linewatch::replay::wall_ms();
    let mut with = {
        let mut e = Engine::new(Config::default());
        e.set_cells(Some(cells.clone()));
        e
    };
    let mut without = {
        let mut cfg = Config::default();
        cfg.runner_movement.enabled = false;
        Engine::new(cfg)
    };
    common::feed(&mut with, &lines[..warm_n], now);
    common::feed(&mut without, &lines[..warm_n], now);
    // One untimed pass each: the allocator and the code warm up.
    pass(&with, &timed, now, batch);
    pass(&without, &timed, now, batch);
    if let Some(side) = only {
        let e = if side { &with } else { &without };
        let ms: f64 = (0..2 * pairs).map(|_| pass(e, &timed, now, batch)).sum();
        println!(
            "runner_cost: {} only, {} passes, {:.2} ms a pass on average",
            if side { "with" } else { "without" },
            2 * pairs,
            ms / (2 * pairs) as f64
        );
        return;
    }

    println!(
        "runner_cost: {} timed records per pass, {pairs} pairs (with / without, ms)",
        timed.len()
    );
    let (mut ratios, mut a, mut b) = (Vec::new(), Vec::new(), Vec::new());
    for k in 0..pairs {
        // Which side goes first alternates, so neither always follows the other.
        let (x, y) = if k % 2 == 0 {
            let x = pass(&with, &timed, now, batch);
            (x, pass(&without, &timed, now, batch))
        } else {
            let y = pass(&without, &timed, now, batch);
            (pass(&with, &timed, now, batch), y)
        };
        println!(
            "pair {k:>3}: {x:8.2} / {y:8.2}  {:+6.1} %",
            (x / y - 1.0) * 100.0
        );
        ratios.push(x / y);
        a.push(x);
        b.push(y);
    }
    for v in [&mut ratios, &mut a, &mut b] {
        v.sort_by(f64::total_cmp);
    }
    let pct = |r: f64| (r - 1.0) * 100.0;
    println!(
        "runner_cost: the detector adds {:+.1} % (median of {pairs} pairs; quartiles {:+.1} to {:+.1} %)",
        pct(quantile(&ratios, 0.5)),
        pct(quantile(&ratios, 0.25)),
        pct(quantile(&ratios, 0.75)),
    );
    // The bar is in records/s: with the detector at least 0.9 of without, which is
    // at most +11.1 % time. The pairs' ratio, inverted (its median is the inverse of the
    // time ratio's median).
    println!(
        "runner_cost: records/s with / without {:.3} (median of {pairs} pairs; quartiles {:.3} to {:.3}); the bar is 0.900",
        1.0 / quantile(&ratios, 0.5),
        1.0 / quantile(&ratios, 0.75),
        1.0 / quantile(&ratios, 0.25),
    );
    println!(
        "runner_cost: fastest passes {:.2} / {:.2} ms ({:+.1} %); records/s with {:.0}, without {:.0} (medians)",
        a[0],
        b[0],
        pct(a[0] / b[0]),
        timed.len() as f64 / quantile(&a, 0.5) * 1e3,
        timed.len() as f64 / quantile(&b, 0.5) * 1e3,
    );
}
