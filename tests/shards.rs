//! The partitioned engine (issue 10, `docs/sharding.md`): the alerts do not depend on how
//! many shards the keys are spread over. A generated city with runners and a cell map (so
//! every detector and every exchange is exercised) is replayed with 1, 2, 3 and 8 shards; the
//! sorted alert ids must be byte-identical, and so must the order the alerts come out in.

use std::collections::BTreeMap;

use linewatch::alert::Alert;
use linewatch::cells::CellMap;
use linewatch::config::Config;
use linewatch::generate::{self, GenOptions};
use linewatch::replay;

fn city(seed: u64) -> (Vec<u8>, std::sync::Arc<CellMap>) {
    let opts = GenOptions {
        seed,
        subscribers: 20_000,
        days: 4,
        ..GenOptions::default()
    };
    let (events, _, _) = generate::generate_in_memory(&opts).unwrap();
    let mut csv = Vec::new();
    generate::write_cells(&opts, &mut csv).unwrap();
    (events, CellMap::parse(&csv).unwrap().into())
}

/// Per detector: alert ids only in `a`, only in `b`.
fn differences(a: &[Alert], b: &[Alert]) -> String {
    let mut by: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let ids = |v: &[Alert]| {
        v.iter()
            .map(|x| (x.alert_id.clone(), x.detector.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    let (ia, ib) = (ids(a), ids(b));
    for (id, d) in &ia {
        if !ib.contains_key(id) {
            by.entry(d).or_default().0 += 1;
        }
    }
    for (id, d) in &ib {
        if !ia.contains_key(id) {
            by.entry(d).or_default().1 += 1;
        }
    }
    by.iter()
        .map(|(d, (x, y))| format!("{d}: {x} only with one shard, {y} only with more"))
        .collect::<Vec<_>>()
        .join("; ")
}

#[test]
fn alerts_are_identical_for_1_2_3_and_8_shards() {
    let (events, cells) = city(2);
    let (one, summary) =
        replay::replay_bytes_sharded(Config::default(), &events, Some(cells.clone()), 1);
    // Every detector fired, so every detector's exchanges were exercised.
    for d in linewatch::detect::DETECTORS {
        assert!(
            one.iter().any(|a| a.detector == d),
            "no {d} alert on the city: the comparison would not cover it"
        );
    }
    assert!(summary.alerts_total > 500, "{summary:?}");
    let order = |v: &[Alert]| v.iter().map(|a| a.alert_id.clone()).collect::<Vec<_>>();
    for n in [2, 3, 8] {
        let (many, _) =
            replay::replay_bytes_sharded(Config::default(), &events, Some(cells.clone()), n);
        assert!(
            order(&one) == order(&many),
            "{n} shards: {} alerts against {} with one shard ({})",
            many.len(),
            one.len(),
            differences(&one, &many)
        );
    }
}

/// One detector group alone (the others disabled), so a group's split can be checked before
/// the others are merged: `customer_fan_in` (with its crew and callback exchanges) and
/// `bulk_sms`, on seeds 1-3.
#[test]
fn fan_in_and_bulk_alone_are_identical_for_1_2_3_and_8_shards() {
    let mut cfg = Config::default();
    cfg.handset_churn.enabled = false;
    cfg.line_handover.enabled = false;
    cfg.runner_movement.enabled = false;
    cfg.deal_line.enabled = false;
    let order = |v: &[Alert]| v.iter().map(|a| a.alert_id.clone()).collect::<Vec<_>>();
    for seed in 1..=3 {
        let (events, _) = city(seed);
        let (one, _) = replay::replay_bytes_sharded(cfg.clone(), &events, None, 1);
        for d in ["bulk_sms", "customer_fan_in"] {
            assert!(one.iter().any(|a| a.detector == d), "seed {seed}: no {d}");
        }
        for n in [2, 3, 8] {
            let (many, _) = replay::replay_bytes_sharded(cfg.clone(), &events, None, n);
            assert!(
                order(&one) == order(&many),
                "seed {seed}, {n} shards: {} alerts against {} with one shard ({})",
                many.len(),
                one.len(),
                differences(&one, &many)
            );
        }
    }
}

/// Whole alerts, not only their ids, and past the runner window (four days): a smaller city
/// over eleven days, so that handsets leave `runner_movement` and come back, its tables are
/// purged, and `deal_line` lists runners credited from other shards. `detected_at` is the
/// wall clock and left out; everything else must match byte for byte.
#[test]
fn whole_alerts_are_identical_past_the_runner_window() {
    let opts = GenOptions {
        seed: 4,
        subscribers: 6_000,
        days: 11,
        ..GenOptions::default()
    };
    let (events, _, _) = generate::generate_in_memory(&opts).unwrap();
    let mut csv = Vec::new();
    generate::write_cells(&opts, &mut csv).unwrap();
    let cells: std::sync::Arc<CellMap> = CellMap::parse(&csv).unwrap().into();
    let whole = |v: Vec<Alert>| {
        v.into_iter()
            .map(|mut a| {
                a.detected_at = 0;
                serde_json::to_string(&a).unwrap()
            })
            .collect::<Vec<_>>()
    };
    let (one, _) = replay::replay_bytes_sharded(Config::default(), &events, Some(cells.clone()), 1);
    let one = whole(one);
    let credited = one
        .iter()
        .filter(|a| {
            a.contains(r#""detector":"deal_line""#) && a.contains(r#""evidence":"runner_movement""#)
        })
        .count();
    assert!(
        credited > 0,
        "no deal line credited with a runner: nothing to compare"
    );
    for n in [2, 3] {
        let (many, _) =
            replay::replay_bytes_sharded(Config::default(), &events, Some(cells.clone()), n);
        let many = whole(many);
        let first = one.iter().zip(&many).position(|(a, b)| a != b);
        assert!(
            one.len() == many.len() && first.is_none(),
            "{n} shards: {} alerts against {}; first difference at {first:?}",
            many.len(),
            one.len()
        );
    }
}
