//! The club organiser look-alike, which the generator does not make: an ordinary person runs
//! a five-a-side team or a club and texts the same members twice a week ("game on tonight?
//! reply IN"); half of the members reply within the hour and a fifth of those ring briefly.
//!
//! Built on a generated city (3,000 subscribers × 5 days, seed 1) by adding records, as
//! `tests/new_number.rs` does, so the project's own cities stay as they are: ten ordinary
//! subscribers each text 40 other ordinary subscribers from 17:00 on the second and the
//! fourth day.
//!
//! Measured 2026-12-07, before `deal_line.repeat_needs_callbacks`: `bulk_sms` and
//! `customer_fan_in` fire on all ten, as they should (each describes what it saw), **and so
//! did `deal_line`, on all ten**: a bulk send 0.25, the same list again on a later day 0.25
//! (a kind of evidence that repeats, so `require_sustained` let the sum stand) and the
//! members' replies as fan-in 0.25: 0.75 against 0.7, and 0.85 once their replies came
//! again on the later day (0.1).
//!
//! With `deal_line.repeat_needs_callbacks` (the default since later that day), adverts sent
//! again count as evidence that repeats only once the line has been seen confirming deals:
//! four customers rung or texted back within ten minutes of their contact, within six hours
//! (police practice counts such a callback as a deal confirmed). An organiser reads the
//! replies; a deal line serves them. **One organiser of the ten is still called a deal
//! line**: on the fifth day it rang four people it had texted back within minutes of their
//! contact, inside six hours, from its ordinary traffic. The rule narrows the look-alike to
//! organisers who also ring their people back like that; it does not remove it (README,
//! Limits).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use linewatch::alert::Alert;
use linewatch::config::Config;
use linewatch::replay;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

mod lookalike;

const ORGANISERS: usize = 10;
const MEMBERS: usize = 40;

/// The city with ten organisers' texts and their members' answers added, and the
/// organisers' lines.
fn club_city() -> (Vec<u8>, Vec<String>) {
    let (events, labels) = lookalike::generated_city();
    let labelled: BTreeSet<&str> = labels
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').next())
        .collect();
    let city = lookalike::parse(&events);
    let start = city.start;
    let mut last: BTreeMap<String, &Value> = BTreeMap::new();
    for v in city.parsed.iter().flatten() {
        last.insert(v["from"].as_str().unwrap().into(), v);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut ordinary: Vec<&String> = last
        .keys()
        .filter(|p| p.starts_with('L') && !labelled.contains(p.as_str()))
        .collect();
    ordinary.shuffle(&mut rng);
    let (organisers, pool) = ordinary.split_at(ORGANISERS);
    let own = |v: &Value, mut r: Value| {
        for key in ["imsi", "imei", "cell"] {
            if v[key].is_string() {
                r[key] = v[key].clone();
            }
        }
        r
    };
    let mut extra: Vec<Value> = Vec::new();
    for o in organisers {
        let members: Vec<&&String> = pool.choose_multiple(&mut rng, MEMBERS).collect();
        for day in [1, 3] {
            let mut t = start + day * 86_400_000 + 17 * 3_600_000 + rng.gen_range(0..1_800_000);
            for m in &members {
                t += rng.gen_range(2_000..8_000);
                let n = extra.len();
                extra.push(own(
                    last[*o],
                    json!({"event_id": format!("club{n:06}"), "ts": t, "kind": "sms", "from": o, "to": m}),
                ));
                if !rng.gen_bool(0.5) {
                    continue;
                }
                let at = t + rng.gen_range(60_000..3_600_000);
                extra.push(own(
                    last[**m],
                    json!({"event_id": format!("club{:06}", n + 1), "ts": at, "kind": "sms", "from": m, "to": o}),
                ));
                if rng.gen_bool(0.2) {
                    extra.push(own(
                        last[**m],
                        json!({"event_id": format!("club{:06}", n + 2),
                            "ts": at + rng.gen_range(60_000..1_800_000), "kind": "call",
                            "from": m, "to": o, "duration_s": rng.gen_range(20..180)}),
                    ));
                }
            }
        }
    }
    let out = lookalike::merge(&city, extra, |_| None);
    (out, organisers.iter().map(|o| (*o).clone()).collect())
}

/// Per detector, how many of the organisers it alerted on.
fn flagged_by_detector(alerts: &[Alert], organisers: &[String]) -> HashMap<String, usize> {
    let mut seen: HashMap<String, BTreeSet<&str>> = HashMap::new();
    for a in alerts.iter().filter(|a| organisers.contains(&a.subject)) {
        seen.entry(a.detector.clone())
            .or_default()
            .insert(a.subject.as_str());
    }
    seen.into_iter().map(|(d, s)| (d, s.len())).collect()
}

#[test]
fn the_single_purpose_detectors_see_every_organiser() {
    let (events, organisers) = club_city();
    assert_eq!(organisers.len(), ORGANISERS);
    let (alerts, _) = replay::replay_bytes(Config::default(), &events);
    let by = flagged_by_detector(&alerts, &organisers);
    // The scenario is real: 40 members texted within minutes is a bulk send, and 20 or so
    // of them answering within the hour is fan-in; otherwise the test below proves nothing.
    assert_eq!(by.get("bulk_sms"), Some(&ORGANISERS), "{by:?}");
    assert_eq!(by.get("customer_fan_in"), Some(&ORGANISERS), "{by:?}");
}

/// The organisers `deal_line` flags with `cfg`, and whether each verdict lists confirmed
/// deals (`customer_callbacks`).
fn deal_lines(cfg: Config, events: &[u8], organisers: &[String]) -> BTreeMap<String, bool> {
    let (alerts, _) = replay::replay_bytes(cfg, events);
    let mut flagged = BTreeMap::new();
    for a in alerts.iter().filter(|a| a.detector == "deal_line") {
        if organisers.contains(&a.subject) {
            let c = a.evidence["contributions"].as_array().unwrap();
            let confirmed = c.iter().any(|x| x["evidence"] == "customer_callbacks");
            *flagged.entry(a.subject.clone()).or_default() |= confirmed;
        }
    }
    flagged
}

/// Texting the same members twice a week and reading their replies is not a deal line; only
/// an organiser also seen ringing its people back within minutes (deals confirmed, as
/// police practice counts them) can be called one, and on this city that is one of ten.
#[test]
fn organisers_are_called_deal_lines_only_with_confirmed_deals() {
    let (events, organisers) = club_city();
    let flagged = deal_lines(Config::default(), &events, &organisers);
    assert!(flagged.values().all(|&confirmed| confirmed), "{flagged:?}");
    assert!(
        flagged.len() <= 1,
        "{} of {ORGANISERS}: {flagged:?}",
        flagged.len()
    );
}

/// The callback rule is what clears them: without it, all ten are flagged, as before it.
#[test]
fn without_the_callback_rule_every_organiser_is_called_a_deal_line() {
    let (events, organisers) = club_city();
    let mut cfg = Config::default();
    cfg.deal_line.repeat_needs_callbacks = false;
    let flagged = deal_lines(cfg, &events, &organisers);
    assert_eq!(flagged.len(), ORGANISERS, "{flagged:?}");
}
