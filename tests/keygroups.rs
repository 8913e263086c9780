//! Checkpoints by key group (`docs/sharding.md` step 3): the state an engine of N shards
//! saved restores into M shards, for any N and M, and the alerts afterwards are those of an
//! uninterrupted run (and so, by the engine's identity, of one shard). A generated city with
//! a cell map, so every detector fires and every exchange carries evidence.

use std::sync::{Arc, OnceLock};

use linewatch::alert::Alert;
use linewatch::cells::CellMap;
use linewatch::checkpoint::{self, Section, SourceOffset};
use linewatch::config::Config;
use linewatch::engine::{Counters, Engine};
use linewatch::generate::{self, GenOptions};

/// The wall clock of these runs: after every event time of the city.
const NOW: i64 = 1_900_000_000_000;

fn opts() -> GenOptions {
    GenOptions {
        seed: 4,
        subscribers: 4_000,
        days: 4,
        ..GenOptions::default()
    }
}

/// The city's records (one per line) and its cell map, made once for every test.
fn city() -> &'static (Vec<u8>, Arc<CellMap>) {
    static CITY: OnceLock<(Vec<u8>, Arc<CellMap>)> = OnceLock::new();
    CITY.get_or_init(|| {
        let (events, _, _) = generate::generate_in_memory(&opts()).expect("generate");
        let mut csv = Vec::new();
        generate::write_cells(&opts(), &mut csv).expect("cells");
        (events, Arc::new(CellMap::parse(&csv).expect("cell map")))
    })
}

fn lines() -> Vec<&'static [u8]> {
    city().0.split(|&b| b == b'\n').collect()
}

fn engine(shards: usize) -> Engine {
    let mut e = Engine::with_shards(Config::default(), shards);
    e.set_cells(Some(city().1.clone()));
    e
}

/// Alerts without the wall-clock field.
fn comparable(mut v: Vec<Alert>) -> Vec<Alert> {
    for a in &mut v {
        a.detected_at = 0;
    }
    v
}

fn feed(e: &mut Engine, lines: &[&[u8]], alerts: &mut Vec<Alert>) {
    for l in lines {
        e.process(l, 0, NOW, alerts);
    }
}

/// The whole city through one engine of `shards` shards: its alerts, in order, and the
/// engine at the end.
fn uninterrupted(shards: usize) -> (Vec<Alert>, Engine) {
    let mut e = engine(shards);
    let mut alerts = Vec::new();
    feed(&mut e, &lines(), &mut alerts);
    e.flush(NOW, &mut alerts);
    (comparable(alerts), e)
}

fn one_shard() -> &'static (Vec<Alert>, Counters) {
    static ONE: OnceLock<(Vec<Alert>, Counters)> = OnceLock::new();
    ONE.get_or_init(|| {
        let (alerts, e) = uninterrupted(1);
        (alerts, e.counters())
    })
}

/// With `saved` shards up to line `cut` (the first at or after it where evidence is in
/// flight, if `pending`): the sections and the alerts so far.
fn saved_at(saved: usize, cut: usize, pending: bool) -> (Vec<Section>, Vec<Alert>, usize) {
    let lines = lines();
    let mut e = engine(saved);
    let mut alerts = Vec::new();
    feed(&mut e, &lines[..cut], &mut alerts);
    let mut at = cut;
    while pending && e.pending_evidence() == 0 {
        feed(&mut e, &lines[at..at + 1], &mut alerts);
        at += 1;
    }
    assert!(!pending || e.pending_evidence() > 0);
    (e.save_sections().expect("save"), alerts, at)
}

/// The sections restored into `running` shards, the rest of the city after them.
fn finish(sections: &[Section], mut alerts: Vec<Alert>, at: usize, running: usize) -> Engine {
    let mut e = engine(running);
    e.load_sections(sections).expect("restore");
    feed(&mut e, &lines()[at..], &mut alerts);
    e.flush(NOW, &mut alerts);
    let (whole, counters) = one_shard();
    let got = comparable(alerts);
    assert_eq!(got.len(), whole.len(), "into {running} shards");
    assert!(
        got == *whole,
        "into {running} shards: the alerts differ from an uninterrupted run's"
    );
    assert_eq!(&e.counters(), counters, "into {running} shards");
    e
}

#[test]
fn two_shards_saved_half_way_restore_into_3_1_and_8_with_the_alerts_of_one_run() {
    let (whole, _) = one_shard();
    for d in linewatch::detect::DETECTORS {
        assert!(
            whole.iter().any(|a| a.detector == d),
            "no {d} alert on the city: the comparison would not cover it"
        );
    }
    let (sections, alerts, at) = saved_at(2, lines().len() / 2, false);
    assert!(
        sections.iter().any(|s| s.name.starts_with("s1/")),
        "two shards' sections"
    );
    for running in [3, 1, 8, 2] {
        let e = finish(&sections, alerts.clone(), at, running);
        // Every state size as an uninterrupted run of that shard count ends with.
        let (_, same) = uninterrupted(running);
        let sizes = |e: &Engine| {
            e.state_stats()
                .into_iter()
                .map(|(n, s)| (n, s.keys, s.cap_hits))
                .collect::<Vec<_>>()
        };
        assert_eq!(sizes(&e), sizes(&same), "into {running} shards");
    }
}

#[test]
fn a_checkpoint_with_evidence_in_flight_restores_into_another_shard_count() {
    for (saved, running) in [(3, 2), (1, 3), (8, 3)] {
        let (sections, alerts, at) = saved_at(saved, lines().len() * 3 / 5, true);
        finish(&sections, alerts, at, running);
    }
}

/// The service's path: a checkpoint encoded and chunked from two shards is restored by
/// `checkpoint::restore_engine` into the shard count configured now, not passed over as
/// incompatible (which would make the service re-read its input).
#[test]
fn the_service_restores_a_checkpoint_of_another_shard_count() {
    let lines = lines();
    let cut = lines.len() / 2;
    let mut cfg = Config::default();
    cfg.service.shards = 2;
    let mut e = Engine::with_shards(cfg.clone(), 2);
    e.set_cells(Some(city().1.clone()));
    let mut alerts = Vec::new();
    feed(&mut e, &lines[..cut], &mut alerts);
    let offsets = vec![SourceOffset {
        topic: "cdr".into(),
        partition: 0,
        offset: cut as i64,
    }];
    let enc = checkpoint::encode(&e, offsets, 1, 0, 64 * 1024).expect("encode");
    let m = checkpoint::decode_manifest(&enc.manifest_value).expect("manifest");
    let sections =
        checkpoint::assemble(&m, |i| enc.chunks.get(i as usize).cloned()).expect("chunks");
    let mut now = cfg.clone();
    now.service.shards = 3;
    let mut restored = checkpoint::restore_engine(&m, &sections, &now).expect("restored");
    assert_eq!(restored.shard_count(), 3);
    restored.set_cells(Some(city().1.clone()));
    feed(&mut restored, &lines[cut..], &mut alerts);
    restored.flush(NOW, &mut alerts);
    assert!(comparable(alerts) == one_shard().0);
}
