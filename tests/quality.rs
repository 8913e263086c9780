//! Detection quality on a generated city, as the detection-core issue requires: 20,000
//! subscribers over 4 days, `deal_line` recall and precision >= 0.95 over deal-line numbers,
//! no `deal_line` alert on any look-alike, and the replay summary's malformed, duplicate and
//! late counts equal to what the generator injected.

use linewatch::config::Config;
use linewatch::eval::{self, Labels};
use linewatch::generate::{self, GenOptions};
use linewatch::replay;

fn city(seed: u64) -> (Vec<u8>, Labels, generate::GenReport) {
    let opts = GenOptions {
        seed,
        subscribers: 20_000,
        days: 4,
        ..GenOptions::default()
    };
    let (events, labels, report) = generate::generate_in_memory(&opts).unwrap();
    (events, Labels::parse(&labels).unwrap(), report)
}

#[test]
fn deal_line_on_a_20k_city_meets_the_targets() {
    let (events, labels, report) = city(1);
    let (alerts, summary) = replay::replay_bytes(Config::default(), &events);

    assert_eq!(summary.events_malformed, report.malformed);
    assert_eq!(summary.events_duplicate, report.duplicates);
    assert_eq!(summary.events_late, report.late);

    let scores = eval::score(&alerts, &labels);
    let deal = scores.iter().find(|s| s.detector == "deal_line").unwrap();
    assert!(
        deal.true_positives >= 15,
        "too few deal lines in the city: {deal:?}"
    );
    assert!(
        deal.recall >= 0.95,
        "recall {:.3}\n{}",
        deal.recall,
        eval::table(&scores)
    );
    assert!(
        deal.precision >= 0.95,
        "precision {:.3}\n{}",
        deal.precision,
        eval::table(&scores)
    );
    assert_eq!(
        deal.lookalike_hits,
        0,
        "deal_line fired on a look-alike\n{}",
        eval::table(&scores)
    );

    // The look-alikes are really there, and the single-purpose detectors do see them:
    // otherwise "no deal_line on a look-alike" would prove nothing.
    let bulk = scores.iter().find(|s| s.detector == "bulk_sms").unwrap();
    assert!(bulk.lookalike_hits >= 10, "{}", eval::table(&scores));
    let churn = scores
        .iter()
        .find(|s| s.detector == "handset_churn")
        .unwrap();
    assert!(
        churn.lookalike_hits >= 1,
        "the repair-shop handsets should churn\n{}",
        eval::table(&scores)
    );
}

/// Issue 14: one record dated three years ahead, early in the demo's city (5,000
/// subscribers, 4 days, about 223,000 records), must not silence the detectors: it is
/// rejected as `future_timestamp` and the alerts are (nearly) those without it.
#[test]
fn one_future_dated_record_does_not_silence_a_city() {
    let opts = GenOptions {
        seed: 3,
        subscribers: 5_000,
        days: 4,
        ..GenOptions::default()
    };
    let (events, _, _) = generate::generate_in_memory(&opts).unwrap();
    let (base, base_summary) = replay::replay_bytes(Config::default(), &events);
    assert!(
        base.len() >= 100,
        "too few alerts to compare: {}",
        base.len()
    );

    // After the first tenth of the records, a copy of a record dated three years ahead.
    let lines: Vec<&[u8]> = events.split(|b| *b == b'\n').collect();
    let (at, mut rec, ts) = (lines.len() / 10..lines.len())
        .find_map(|i| {
            let v: serde_json::Value = serde_json::from_slice(lines[i]).ok()?;
            let ts = v.get("ts")?.as_i64()?;
            Some((i, v, ts))
        })
        .unwrap();
    rec["ts"] = (ts + 3 * 365 * 86_400_000).into();
    rec["event_id"] = "from-the-future".into();
    let mut poisoned = Vec::with_capacity(events.len() + 256);
    for (i, l) in lines.iter().enumerate() {
        if i == at {
            poisoned.extend(serde_json::to_vec(&rec).unwrap());
            poisoned.push(b'\n');
        }
        poisoned.extend_from_slice(l);
        poisoned.push(b'\n');
    }
    let (got, summary) = replay::replay_bytes(Config::default(), &poisoned);
    assert_eq!(
        summary.malformed_by_reason.get("future_timestamp"),
        Some(&1)
    );
    assert_eq!(summary.events_late, base_summary.events_late);
    assert!(
        got.len() * 100 >= base.len() * 95,
        "{} alerts with the future record, {} without",
        got.len(),
        base.len()
    );
}

/// Issue 13 on the project's city with its cell map, on seed `seed`: `runner_movement` flags
/// no commuter (the look-alike, about one subscriber in ten) and nothing but runner
/// handsets, and finds at least `min_runner_recall` of them; `deal_line` keeps precision 1
/// with no look-alike; fan-in finds at least 95 % of the deal lines.
fn runners_and_fan_in_on_seed(seed: u64, min_runner_recall: f64) {
    let opts = GenOptions {
        seed,
        subscribers: 20_000,
        days: 4,
        ..GenOptions::default()
    };
    let (events, labels, _) = generate::generate_in_memory(&opts).unwrap();
    let labels = Labels::parse(&labels).unwrap();
    let commuters = labels
        .by_subject
        .values()
        .filter(|l| l.label == eval::LOOKALIKE_COMMUTER)
        .count();
    assert!(commuters >= 1_000, "{commuters} commuters");
    let mut csv = Vec::new();
    generate::write_cells(&opts, &mut csv).unwrap();
    let cells = linewatch::cells::CellMap::parse(&csv).unwrap();
    let (alerts, summary) =
        replay::replay_bytes_with_cells(Config::default(), &events, Some(cells.into()));
    assert!(summary.records_without_cell.unwrap() > 0);
    let scores = eval::score(&alerts, &labels);
    let get = |d: &str| scores.iter().find(|s| s.detector == d).unwrap();
    let runner = get("runner_movement");
    assert_eq!(runner.lookalike_hits, 0, "{}", eval::table(&scores));
    assert_eq!(runner.false_positives, 0, "{}", eval::table(&scores));
    assert!(
        runner.recall >= min_runner_recall,
        "seed {seed}\n{}",
        eval::table(&scores)
    );
    let deal = get("deal_line");
    assert_eq!(
        (deal.precision, deal.lookalike_hits),
        (1.0, 0),
        "{}",
        eval::table(&scores)
    );
    assert!(
        get("customer_fan_in").recall >= 0.95,
        "seed {seed}\n{}",
        eval::table(&scores)
    );
}

/// Seeds 1-6, as they come, each at the bar for runner recall (0.9). Seeds 2, 4
/// and 5 were below it (0.774, 0.870, 0.871) until whole burns (handset, SIM and number
/// replaced at once) were linked by the trade line the new handset calls where the old one
/// went quiet (README, Detection quality).
#[test]
fn runners_and_fan_in_seed_1() {
    runners_and_fan_in_on_seed(1, 0.9);
}

#[test]
fn runners_and_fan_in_seed_2() {
    runners_and_fan_in_on_seed(2, 0.9);
}

#[test]
fn runners_and_fan_in_seed_3() {
    runners_and_fan_in_on_seed(3, 0.9);
}

#[test]
fn runners_and_fan_in_seed_4() {
    runners_and_fan_in_on_seed(4, 0.9);
}

#[test]
fn runners_and_fan_in_seed_5() {
    runners_and_fan_in_on_seed(5, 0.9);
}

#[test]
fn runners_and_fan_in_seed_6() {
    runners_and_fan_in_on_seed(6, 0.9);
}
