//! `[streams]` stage partitions take their state with them when they move (issue 11): each
//! is checkpointed with the internal offsets it reflects and restored on assignment, against
//! a real broker (`LINEWATCH_TEST_BROKERS`) with the real binary.
//!
//! - a kill -9: the survivor restores the dead member's partitions from their checkpoints
//!   and re-reads only what came after them; the group still finds what `replay` finds;
//! - a member joining: the held revoke saves every partition before it moves, so nobody
//!   re-reads anything;
//! - corrupt checkpoints: passed over with their reason, counted, and the partition rebuilt
//!   by re-reading as without checkpoints.
//!
//! `measure_recovery_with_and_without_checkpoints` (ignored) prints the figures of
//! docs/scaling.md.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use linewatch::alert::Alert;
use linewatch::config::Config;
use linewatch::generate::{self, GenOptions};
use linewatch::replay;
use linewatch::streams::topics::InternalTopics;
use support::{brokers, suffix, Service, Setup, WAIT};

/// Two instances' worth of `[streams]` with quick checkpoints; `{interval}` is
/// `service.checkpoint_interval_s` (0: off, the rebuild by re-reading only). The idle
/// timeout stays above the session timeout and the rebalance after it, as the defaults'
/// (60 s and 45 s) do: at 5 s, below the 6 s session timeout, a killed member's input
/// partitions were passed over as idle before they moved, and with the load of the other
/// tests the survivor's re-read of them was too (one partition's fetch slower than 5 s),
/// so 3,696 records of the input's second half were dead-lettered as late and the group
/// found 62-80 % of `replay`'s pairs in 1 run of 4.
fn config(interval: u64) -> String {
    format!(
        r#"
[service]
batch_max_wait_ms = 20
retry_backoff_max_s = 2
drain_timeout_s = 20
partition_idle_timeout_s = 20
checkpoint_interval_s = {interval}
[kafka]
"consumer.session.timeout.ms" = "6000"
"consumer.heartbeat.interval.ms" = "500"
[streams]
enabled = true
internal_partitions = 6
"#
    )
}

fn city(subscribers: usize, days: u32, seed: u64) -> Vec<u8> {
    let opts = GenOptions {
        seed,
        subscribers,
        days,
        ..GenOptions::default()
    };
    generate::generate_in_memory(&opts).expect("generate").0
}

fn lines(events: &[u8]) -> Vec<&[u8]> {
    events
        .split(|&b| b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .collect()
}

/// Writes `lines` without keys, each to a partition drawn at random (a mediation feed).
async fn produce_keyless(topic: &str, lines: &[&[u8]], rng: &mut ChaCha8Rng) {
    let records: Vec<(Option<String>, Vec<u8>)> =
        lines.iter().map(|l| (None, l.to_vec())).collect();
    support::produce_to(topic, &records, |_| Some(rng.gen_range(0..6))).await;
}

async fn records_taken(svc: &Service) -> f64 {
    let mut n = 0.0;
    for r in ["valid", "malformed", "late", "duplicate"] {
        n += svc
            .metric(&format!("linewatch_records_total{{result=\"{r}\"}}"))
            .await;
    }
    n
}

/// Waits until `svcs` took `n` input records between them and their stages read as many
/// internal records as they had written by then (idle marks keep coming, so "nothing more
/// read" never happens), then one more round of stage checkpoints on each.
async fn drained_and_checkpointed(svcs: &[&Service], n: usize, checkpoints: bool) {
    let sum = |series: &'static str| async move {
        let mut v = 0.0;
        for s in svcs {
            v += s.metric(series).await;
        }
        v
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let mut taken = 0.0;
        for s in svcs {
            taken += records_taken(s).await;
        }
        if taken >= n as f64 {
            break;
        }
        assert!(Instant::now() < deadline, "took {taken} of {n} in 600 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let written = sum(r#"linewatch_internal_records_written_total{topic="by_line"}"#).await;
    loop {
        let read = sum(r#"linewatch_internal_records_read_total{topic="by_line"}"#).await;
        if read >= written {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "read {read} of {written} internal records"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for s in svcs.iter().filter(|_| checkpoints) {
        let series = "linewatch_stage_checkpoints_written_total";
        let now = s.metric(series).await;
        let owned = s.metric("linewatch_stage_partitions").await;
        s.wait_metric(series, now + owned.max(1.0), WAIT).await;
    }
}

/// Internal records in stage partition `p`'s three internal partitions (high watermarks).
fn internal_records(group: &str, p: i32) -> i64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("consumer");
    let topics = InternalTopics::for_group(group);
    topics
        .all()
        .iter()
        .map(|t| {
            let (lo, hi) = c
                .fetch_watermarks(t, p, Duration::from_secs(10))
                .expect("watermarks");
            hi - lo
        })
        .sum()
}

/// Log events whose message contains `text`, from index `from` of the log on.
fn events_after(svc: &Service, from: usize, text: &str) -> Vec<serde_json::Value> {
    svc.logs()[from.min(svc.logs().len())..]
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"].as_str().is_some_and(|m| m.contains(text)))
        .collect()
}

const RESTORED: &str = "restored from its checkpoint, re-reading only what came after it";
const REBUILT: &str = "rebuilt from its internal partitions (no usable checkpoint)";
const LIVE: &str = "stage partition live again";

/// What the kill scenario saw on the survivor.
struct KillReport {
    /// Stage partitions the killed member owned, as the survivor took them over.
    moved: BTreeSet<i32>,
    /// Per moved partition: (restored from a checkpoint, records re-read, records in it).
    reread: BTreeMap<i32, (bool, i64, i64)>,
    /// Kill → the survivor's assignment of the moved partitions, seconds.
    to_assignment_s: f64,
    /// Per moved partition, assignment → live again, seconds.
    recovery_s: BTreeMap<i32, f64>,
    /// Encoded stage checkpoint bytes and tracked lines per partition, as restored.
    state: Vec<(i64, i64)>,
    want: Vec<Alert>,
    got: Vec<Alert>,
}

/// Two instances share a keyless 6-partition input; half of it is taken and checkpointed,
/// one is killed with -9 and not restarted; the survivor takes the rest.
async fn kill_scenario(subscribers: usize, days: u32, interval: u64) -> KillReport {
    let events = city(subscribers, days, 5);
    let cfg_text = config(interval);
    let (want, _) = replay::replay_bytes_sharded(
        Config::from_toml(&cfg_text).expect("config"),
        &events,
        None,
        1,
    );
    let setup = Setup::with_state_topic("stagestate-kill", 6, &cfg_text).await;
    let survivor = setup.start_ready().await;
    let mut victim = setup.start_ready().await;
    let lines = lines(&events);
    let half = lines.len() / 2;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    produce_keyless(&setup.topics.input, &lines[..half], &mut rng).await;
    drained_and_checkpointed(&[&survivor, &victim], half, interval > 0).await;
    let owned_by_victim: BTreeSet<i32> = victim
        .log_events("stage partitions assigned")
        .last()
        .and_then(|e| e["whole"].as_str().map(str::to_string))
        .map(|w| {
            w.trim_matches(|c| c == '{' || c == '}' || c == '[' || c == ']')
                .split(',')
                .filter_map(|x| x.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !owned_by_victim.is_empty(),
        "the victim owned no stage partition"
    );
    if let Ok(dir) = std::env::var("LW_DEBUG_LOG") {
        for (name, svc) in [("survivor", &survivor), ("victim", &victim)] {
            let (_, m) = svc.get("/metrics").await;
            let path = std::path::Path::new(&dir).join(format!("{name}-half.metrics"));
            std::fs::write(path, m).expect("debug metrics written");
        }
    }
    let mark = survivor.logs().len();
    let victim_taken = records_taken(&victim).await;
    victim.kill_9().await;
    let killed_at = Instant::now();
    // The survivor owns all six again (the victim's through a restore or a rebuild).
    let deadline = Instant::now() + WAIT * 4;
    let mut to_assignment_s = 0.0;
    loop {
        let got: BTreeSet<i32> = events_after(&survivor, mark, RESTORED)
            .iter()
            .chain(events_after(&survivor, mark, REBUILT).iter())
            .filter_map(|e| e["partition"].as_i64().map(|p| p as i32))
            .collect();
        if owned_by_victim.is_subset(&got) {
            break;
        }
        to_assignment_s = killed_at.elapsed().as_secs_f64();
        assert!(
            Instant::now() < deadline,
            "the victim's partitions never moved"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut reread = BTreeMap::new();
    for p in &owned_by_victim {
        let of = |text: &str| {
            events_after(&survivor, mark, text)
                .into_iter()
                .rfind(|e| e["partition"].as_i64() == Some(*p as i64))
        };
        let (restored, e) = match (of(RESTORED), of(REBUILT)) {
            (Some(e), _) => (true, e),
            (None, Some(e)) => (false, e),
            (None, None) => unreachable!("waited for it above"),
        };
        let n = e["rebuild_records"].as_i64().unwrap_or(-1);
        reread.insert(*p, (restored, n, internal_records(&setup.topics.group, *p)));
    }
    // Live again: each moved partition's re-read over.
    let deadline = Instant::now() + Duration::from_secs(1200);
    let recovery_s = loop {
        let live: BTreeMap<i32, f64> = events_after(&survivor, mark, LIVE)
            .iter()
            .filter_map(|e| {
                let p = e["partition"].as_i64()? as i32;
                Some((p, e["recovery_seconds"].as_f64()?))
            })
            .filter(|(p, _)| owned_by_victim.contains(p))
            .collect();
        if live.len() == owned_by_victim.len() {
            break live;
        }
        assert!(Instant::now() < deadline, "not live again: {live:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let state = events_after(
        &survivor,
        mark,
        "stage partition restored from its checkpoint",
    )
    .iter()
    .filter(|e| {
        e["partition"]
            .as_i64()
            .is_some_and(|p| owned_by_victim.contains(&(p as i32)))
    })
    .map(|e| {
        (
            e["state_bytes"].as_i64().unwrap_or(0),
            e["tracked_lines"].as_i64().unwrap_or(0),
        )
    })
    .collect();
    produce_keyless(&setup.topics.input, &lines[half..], &mut rng).await;
    drained_and_checkpointed(
        &[&survivor],
        lines.len() - victim_taken as usize,
        interval > 0,
    )
    .await;
    let got = support::read_committed_alerts(
        &setup.topics.alerts,
        Duration::from_secs(15),
        Duration::from_secs(300),
    )
    .await;
    assert!(
        !survivor
            .logs()
            .iter()
            .any(|l| l.contains("stopped on error")),
        "{:?}",
        survivor.logs()
    );
    if let Ok(dir) = std::env::var("LW_DEBUG_LOG") {
        // Both members' logs, for a failing run (test data only).
        for (name, svc) in [("survivor", &survivor), ("victim", &victim)] {
            let path = std::path::Path::new(&dir).join(format!("{name}.log"));
            std::fs::write(path, svc.logs().join("\n")).expect("debug log written");
        }
        let (_, m) = survivor.get("/metrics").await;
        std::fs::write(std::path::Path::new(&dir).join("survivor-end.metrics"), m)
            .expect("debug metrics written");
    }
    KillReport {
        moved: owned_by_victim,
        reread,
        to_assignment_s,
        recovery_s,
        state,
        want,
        got,
    }
}

fn pairs(alerts: &[Alert]) -> BTreeSet<(String, String)> {
    alerts
        .iter()
        .map(|a| (a.detector.clone(), a.subject.clone()))
        .collect()
}

/// Share of replay's (detector, subject) pairs found, and of the group's that replay has.
fn recall_precision(want: &[Alert], got: &[Alert]) -> (f64, f64) {
    let (a, b) = (pairs(want), pairs(got));
    let both = a.intersection(&b).count() as f64;
    (both / a.len().max(1) as f64, both / b.len().max(1) as f64)
}

/// A kill -9: the survivor restores the victim's stage partitions from their checkpoints,
/// re-reads only what came after them, and the group finds what `replay` finds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_moved_by_a_kill_restores_its_checkpoint_and_rereads_only_what_came_after() {
    let r = kill_scenario(2_000, 2, 1).await;
    let (recall, precision) = recall_precision(&r.want, &r.got);
    support::debug_missed_pairs(&r.want, &r.got, 6);
    eprintln!(
        "moved {:?}; re-read (restored, records, of) {:?}; kill → assignment {:.1} s; \
         recovery {:?} s; state (bytes, lines) {:?}; pairs {:.1} % of replay's found, {:.1} % \
         confirmed; {} alerts, {} replay's",
        r.moved,
        r.reread,
        r.to_assignment_s,
        r.recovery_s,
        r.state,
        100.0 * recall,
        100.0 * precision,
        r.got.len(),
        r.want.len()
    );
    for (p, (restored, n, of)) in &r.reread {
        assert!(restored, "partition {p} was rebuilt, not restored");
        // Only the marks and records since its last checkpoint (a round a second), not
        // the partition's history.
        assert!(
            *n >= 0 && (*n as f64) < 0.05 * *of as f64,
            "partition {p} re-read {n} of its {of} records"
        );
    }
    // The existing kill test's comparison (tests/kafka_instances.rs) and its floor.
    let deal = |a: &[Alert]| -> BTreeSet<String> {
        a.iter()
            .filter(|x| x.detector == "deal_line")
            .map(|x| x.subject.clone())
            .collect()
    };
    assert!(
        !deal(&r.want).is_empty(),
        "no deal_line in replay's findings"
    );
    assert!(
        deal(&r.got).is_subset(&deal(&r.want)) && !deal(&r.got).is_empty(),
        "deal_line subjects: {:?} against replay's {:?}",
        deal(&r.got),
        deal(&r.want)
    );
    assert!(recall >= 0.80, "pairs found: {:.2} %", 100.0 * recall);
    assert!(
        precision >= 0.95,
        "pairs confirmed: {:.2} %",
        100.0 * precision
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joining_takes_its_partitions_with_their_state_and_nobody_rereads() {
    let events = city(1_000, 1, 9);
    let setup = Setup::with_state_topic("stagestate-join", 6, &config(1)).await;
    let first = setup.start_ready().await;
    let lines = lines(&events);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    produce_keyless(&setup.topics.input, &lines, &mut rng).await;
    drained_and_checkpointed(&[&first], lines.len(), true).await;
    let mark = first.logs().len();
    let second = setup.start_ready().await;
    // Both own stage partitions: the hand-over happened.
    second
        .wait_metric("linewatch_stage_partitions", 1.0, WAIT)
        .await;
    first.wait_log("saved for the next owner", 1, WAIT).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let owned = first.metric("linewatch_stage_partitions").await
            + second.metric("linewatch_stage_partitions").await;
        if owned == 6.0 {
            break;
        }
        assert!(Instant::now() < deadline, "{owned} stage partitions owned");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let restored: Vec<serde_json::Value> = events_after(&first, mark, RESTORED)
        .into_iter()
        .chain(events_after(&second, 0, RESTORED))
        .collect();
    let rebuilt: Vec<serde_json::Value> = events_after(&first, mark, REBUILT)
        .into_iter()
        .chain(events_after(&second, 0, REBUILT))
        .collect();
    assert!(rebuilt.is_empty(), "rebuilt after the join: {rebuilt:?}");
    let ps: BTreeSet<i64> = restored
        .iter()
        .filter_map(|e| e["partition"].as_i64())
        .collect();
    assert_eq!(
        ps,
        (0..6).collect(),
        "every partition restored: {restored:?}"
    );
    for e in &restored {
        assert_eq!(e["rebuild_records"].as_i64(), Some(0), "{e}");
    }
    assert_eq!(
        second.metric("linewatch_stage_rebuild_records_total").await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_stage_checkpoints_are_passed_over_counted_and_the_partition_rebuilt() {
    let events = city(1_000, 1, 11);
    let mut cfg = config(1);
    cfg = cfg.replace("internal_partitions = 6", "internal_partitions = 2");
    let state_topic = format!("stagestate-corrupt-state-{}", suffix());
    let setup = Setup::new("stagestate-corrupt", 6, &cfg)
        .await
        .arg("--state-topic", &state_topic);
    let mut svc = setup.start_ready().await;
    let all = lines(&events);
    let lines = &all[..all.len() / 4];
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    produce_keyless(&setup.topics.input, lines, &mut rng).await;
    drained_and_checkpointed(&[&svc], lines.len(), true).await;
    svc.signal("TERM");
    svc.wait_exit(WAIT).await;
    // Every manifest of both partitions' slots overwritten with bytes that fail their check.
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("producer");
    let mut garbage = b"LWCK".to_vec();
    garbage.extend_from_slice(&linewatch::checkpoint::FORMAT_VERSION.to_le_bytes());
    garbage.extend_from_slice(&[7u8; 32]);
    for part in 0..2 {
        for slot in 0..2 {
            let ns = linewatch::service::stage_state::namespace(&setup.topics.group, part, 2);
            let key = linewatch::checkpoint::manifest_key(&ns, slot);
            p.send(
                FutureRecord::to(&state_topic).key(&key).payload(&garbage),
                Duration::from_secs(10),
            )
            .await
            .expect("written");
        }
    }
    let svc = setup.start_ready().await;
    svc.wait_log(REBUILT, 2, WAIT).await;
    let passed = svc.log_events("stage checkpoint passed over");
    assert_eq!(passed.len(), 4, "{passed:?}");
    assert!(
        passed.iter().all(|e| e["reason"] == "corrupt"),
        "{passed:?}"
    );
    assert_eq!(
        svc.metric(r#"linewatch_checkpoint_fallbacks_total{reason="corrupt"}"#)
            .await,
        4.0
    );
    assert!(svc.log_events(RESTORED).is_empty());
    assert!(svc.metric("linewatch_stage_rebuild_records_total").await > 0.0);
    // And it goes on: new records are taken and run.
    let more = &all[all.len() / 4..all.len() / 4 + 50];
    produce_keyless(&setup.topics.input, more, &mut rng).await;
    let deadline = Instant::now() + WAIT;
    while records_taken(&svc).await < 50.0 {
        assert!(
            Instant::now() < deadline,
            "the restarted instance took nothing new"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!svc.logs().iter().any(|l| l.contains("stopped on error")));
}

/// The figures of docs/scaling.md: the kill scenario on a larger city, with stage
/// checkpoints (every 60 s, the default) and without (`checkpoint_interval_s = 0`: the
/// rebuild by re-reading). `LW_SUBSCRIBERS` / `LW_DAYS` size the city (default 10,000 × 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement (minutes): cargo test --release --test kafka_stage_state measure -- --ignored --nocapture"]
async fn measure_recovery_with_and_without_checkpoints() {
    let subs = std::env::var("LW_SUBSCRIBERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let days = std::env::var("LW_DAYS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    // `LW_INTERVALS=60` runs only the run with checkpoints.
    let intervals: Vec<u64> = std::env::var("LW_INTERVALS")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![60, 0]);
    for interval in intervals {
        let r = kill_scenario(subs, days, interval).await;
        let (recall, _) = recall_precision(&r.want, &r.got);
        let reread: i64 = r.reread.values().map(|x| x.1).sum();
        let of: i64 = r.reread.values().map(|x| x.2).sum();
        let bytes: i64 = r.state.iter().map(|x| x.0).sum();
        let tracked: i64 = r.state.iter().map(|x| x.1).sum();
        let worst = r.recovery_s.values().copied().fold(0.0, f64::max);
        eprintln!(
            "FIGURES subscribers={subs} days={days} checkpoint_interval_s={interval}: moved \
             partitions {:?}; re-read {reread} of their {of} internal records; kill → \
             assignment {:.1} s, assignment → live (slowest) {worst:.1} s; stage checkpoints \
             {} partitions, {bytes} bytes, {tracked} tracked lines ({:.0} bytes per line); \
             pairs found {:.1} %",
            r.moved,
            r.to_assignment_s,
            r.state.len(),
            bytes as f64 / tracked.max(1) as f64,
            100.0 * recall
        );
    }
}
