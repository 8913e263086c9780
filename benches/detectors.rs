//! Per-detector throughput: the whole engine (decode, dedup, watermark, contacts) with one
//! detector enabled at a time, then all of them. The difference to `none` is the detector's
//! own cost.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use linewatch::config::Config;
use linewatch::engine::Engine;

#[path = "common/mod.rs"]
mod common;

fn only(name: &str) -> Config {
    let mut c = Config::default();
    c.bulk_sms.enabled = name == "bulk_sms" || name == "all";
    c.customer_fan_in.enabled = name == "customer_fan_in" || name == "all";
    c.handset_churn.enabled = name == "handset_churn" || name == "all";
    c.line_handover.enabled = name == "line_handover" || name == "all";
    c.runner_movement.enabled = name == "runner_movement" || name == "all";
    c.deal_line.enabled = name == "deal_line" || name == "all";
    // Low thresholds so the detectors do real work on the bench mix.
    c.bulk_sms.min_recipients = 10;
    c.customer_fan_in.min_customers = 3;
    c
}

fn bench(c: &mut Criterion) {
    let recs = common::records(50_000, 20_000);
    // The mix's cells c0..c499: half metro, half county.
    let mut map = String::from("cell,area,class\n");
    for c in 0..500 {
        let (area, class) = if c < 250 {
            ("city", "metro")
        } else {
            ("town", "county")
        };
        map.push_str(&format!("c{c},{area},{class}\n"));
    }
    let cells = std::sync::Arc::new(linewatch::cells::CellMap::parse(&map).unwrap());
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(recs.len() as u64));
    g.sample_size(20);
    for name in [
        "none",
        "bulk_sms",
        "customer_fan_in",
        "handset_churn",
        "line_handover",
        "deal_line",
        "runner_movement",
        "all",
        "all_without_runner_movement",
    ] {
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let mut cfg = only(name);
                    if name == "all_without_runner_movement" {
                        cfg = only("all");
                        cfg.runner_movement.enabled = false;
                    }
                    let mut e = Engine::new(cfg);
                    // runner_movement needs the map; without the detector there is none
                    // to look cells up in, as with `replay` without `--cells`.
                    if name != "all_without_runner_movement" {
                        e.set_cells(Some(cells.clone()));
                    }
                    e
                },
                |mut e| {
                    // The wall clock bounds how far ahead event time may be; the bench
                    // records are in the past.
                    common::feed(&mut e, &recs, linewatch::replay::wall_ms());
                    e
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

/// The engine as a service runs it: warm, on the project's own city. The bench mix above
/// starts every pass from an empty engine, so two records in five are a handset's first
/// (one in 44 over a generated city's four days), and every table grows from nothing
/// while it is timed. Here one engine reads the city's first day untimed, and each pass
/// times the next records from a copy of it: default thresholds, every detector, with
/// `runner_movement` and its cell map against without either (as `replay` without
/// `--cells`).
fn warm_city(c: &mut Criterion) {
    let opts = linewatch::generate::GenOptions {
        seed: 3,
        subscribers: 20_000,
        days: 2,
        ..Default::default()
    };
    let (events, cells) = common::city(&opts);
    let lines = common::lines(&events);
    // The first day warms; the next TIMED records are timed.
    let warm_n = common::second_day(&lines, &opts);
    const TIMED: usize = 100_000;
    let timed = &lines[warm_n..(warm_n + TIMED).min(lines.len())];
    let now = linewatch::replay::wall_ms();
    let mut g = c.benchmark_group("warm_city");
    g.throughput(Throughput::Elements(timed.len() as u64));
    g.sample_size(20);
    for name in ["all", "all_without_runner_movement"] {
        let mut cfg = Config::default();
        cfg.runner_movement.enabled = name == "all";
        let mut warm = Engine::new(cfg);
        if name == "all" {
            warm.set_cells(Some(cells.clone()));
        }
        common::feed(&mut warm, &lines[..warm_n], now);
        g.bench_function(name, |b| {
            b.iter_batched(
                || warm.clone(),
                |mut e| {
                    common::feed(&mut e, timed, now);
                    e
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench, warm_city);
criterion_main!(benches);
