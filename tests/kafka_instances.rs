//! Several `linewatch run` instances in one group with `[streams]` on (issue 11), against a
//! real broker: a generated city written without keys over a 6-partition input, as a
//! mediation feed writes it, three instances (the real binary), one killed with -9 half way
//! and not restarted. When the other two have drained, the group's alerts are compared with
//! `replay` on the same records. The broker comes from `LINEWATCH_TEST_BROKERS`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use linewatch::alert::Alert;
use linewatch::cells::CellMap;
use linewatch::config::Config;
use linewatch::generate::{self, GenOptions};
use linewatch::replay;
use support::{brokers, read_until, Service, Setup, WAIT};

/// Default detectors (those `replay` runs below), quick retries and drain, a short session
/// timeout (a killed instance's partitions move after it) and an idle timeout longer than
/// that and the rebalance after it: the stages wait for a killed instance's input
/// partitions until their new reader continues them (as the defaults, 45 s and 60 s, do),
/// rather than run the others ahead. (At 5 s, below the session timeout, the survivors ran
/// the rest of the input first and the moved partitions' records hours late.)
const CONFIG: &str = r#"
[service]
batch_max_wait_ms = 20
retry_backoff_max_s = 2
drain_timeout_s = 20
partition_idle_timeout_s = 20
[kafka]
"consumer.session.timeout.ms" = "6000"
"consumer.heartbeat.interval.ms" = "500"
[streams]
enabled = true
internal_partitions = 6
"#;

const SUBSCRIBERS: usize = 3_000;
const DAYS: u32 = 3;

fn city(seed: u64) -> (Vec<u8>, Vec<u8>) {
    let opts = GenOptions {
        seed,
        subscribers: SUBSCRIBERS,
        days: DAYS,
        ..GenOptions::default()
    };
    let (events, _, _) = generate::generate_in_memory(&opts).expect("generate");
    let mut csv = Vec::new();
    generate::write_cells(&opts, &mut csv).expect("cells");
    (events, csv)
}

/// Writes `lines` without keys, each to a partition of `topic` drawn at random.
async fn produce_keyless(topic: &str, lines: &[&[u8]], partitions: i32, rng: &mut ChaCha8Rng) {
    let records: Vec<(Option<String>, Vec<u8>)> =
        lines.iter().map(|l| (None, l.to_vec())).collect();
    support::produce_to(topic, &records, |_| Some(rng.gen_range(0..partitions))).await;
}

/// Records an instance's ingest has taken (every result).
async fn records_taken(svc: &Service) -> f64 {
    let mut n = 0.0;
    for r in ["valid", "malformed", "late", "duplicate"] {
        n += svc
            .metric(&format!("linewatch_records_total{{result=\"{r}\"}}"))
            .await;
    }
    n
}

type Pairs = BTreeSet<(String, String)>;

fn pairs(alerts: &[Alert]) -> Pairs {
    alerts
        .iter()
        .map(|a| (a.detector.clone(), a.subject.clone()))
        .collect()
}

fn subjects(alerts: &[Alert], detector: &str) -> BTreeSet<String> {
    alerts
        .iter()
        .filter(|a| a.detector == detector)
        .map(|a| a.subject.clone())
        .collect()
}

/// What the group is held to.
struct Bar {
    /// Share of replay's (detector, subject) pairs found, at least.
    recall: f64,
    /// `deal_line` subjects equal to replay's (else: none that replay does not find).
    deal_line_equal: bool,
    /// `processing_guarantee = "exactly_once"` (each instance its own `group.instance.id`,
    /// so its own transactional ids): no alert id twice. Else at least once: fewer than a
    /// fifth repeated.
    exactly_once: bool,
}

/// The issue's bar: the same `deal_line` subjects, 95 % of the pairs (docs/sharding.md,
/// "As built (step 4, wiring)": 99 % and 8 of 8 deal lines in the runs since the stages'
/// sources are the input partitions; 89 to 92 % and 7 of 8 before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_one_killed_half_way_find_what_replay_finds() {
    three_instances_one_killed_half_way(
        Bar {
            recall: 0.95,
            deal_line_equal: true,
            exactly_once: false,
        },
        HalfWay::Kill,
    )
    .await;
}

/// What this build holds: most pairs found, nothing found that replay does not find, and
/// the kill loses no partition (its state is rebuilt from the internal topics).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_one_killed_half_way_find_most_of_what_replay_finds_and_nothing_else() {
    // 97 to 99 % measured over five runs since the stages' sources are the input
    // partitions (89 and 92 % before, 69 % before the rebuild on assignment, 78 % before
    // evidence waited for the watermark): the floor leaves room for the runs' variance and
    // still fails all of those.
    three_instances_one_killed_half_way(
        Bar {
            recall: 0.93,
            deal_line_equal: false,
            exactly_once: false,
        },
        HalfWay::Kill,
    )
    .await;
}

/// The issue's whole bar in one run: the same kill under exactly once, a `read_committed`
/// reader sees no alert id twice, and the group finds `replay`'s `deal_line` subjects and
/// 95 % of its pairs (held to 93 % and a subset until 2026-12-03; 100 % and 8 of 8 in the
/// runs since `line_handover` waits for every partition's answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_three_instances_one_killed_half_way_repeat_no_alert() {
    three_instances_one_killed_half_way(
        Bar {
            recall: 0.95,
            deal_line_equal: true,
            exactly_once: true,
        },
        HalfWay::Kill,
    )
    .await;
}

/// A fourth instance joins mid-stream: half the input written and taken by three, the
/// fourth started, the rest written. Partitions move to it with their state (a state
/// topic, as deployed: saved at the held revoke, restored by the new owner) and the group
/// still finds what replay finds: every `deal_line` subject, 95 % of the pairs.
///
/// Ignored until 2026-12-03, at 8 of 8 deal lines in 12 of 18 runs and 7 in the others,
/// always the same verdict missed: the earlier line of the handover at 36.5 h, whose new
/// line's `line_handover` was matched with *another* earlier line, three minutes of event
/// time later. The new line kept the first audience answer to reach it, and across
/// partitions the first is whichever partition gets to the query first (the right line's
/// partition had just moved to the joining instance). Every partition now answers every
/// query and the new line decides once all have (`line_handover::Tallies`): 8 of 8 and
/// 100 % of the pairs in 9 of 9 runs since, and in a run of the whole binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_instance_joining_half_way_loses_nothing() {
    three_instances_one_killed_half_way(
        Bar {
            recall: 0.95,
            deal_line_equal: true,
            exactly_once: false,
        },
        HalfWay::Join,
    )
    .await;
}

/// What happens to the group half way.
#[derive(Clone, Copy, PartialEq, Eq)]
enum HalfWay {
    /// One instance killed with -9, not restarted (`LW_NO_KILL` keeps it running).
    Kill,
    /// A fourth instance started.
    Join,
}

/// One group of instances at a time in this binary. Each run starts three or four
/// `linewatch run` processes of a debug build; three runs at once on a 2-core machine
/// starved an input partition's reader past the 20 s idle timeout while the others read
/// on, and the survivors' ingests dead-lettered 16,749 records as `late` (90 % of the
/// pairs: the CI failure of the session before, reproduced with a build running beside
/// it). That is the idle timeout's documented limit, not the behaviour under test.
static ONE_GROUP_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn three_instances_one_killed_half_way(bar: Bar, half_way: HalfWay) {
    let _one = ONE_GROUP_AT_A_TIME.lock().await;
    let (events, cells_csv) = city(5);
    let cells: Arc<CellMap> = CellMap::parse(&cells_csv).expect("cell map").into();
    let cfg_text = CONFIG;
    let cfg = Config::from_toml(cfg_text).expect("config");
    let (want, _) = replay::replay_bytes_sharded(cfg, &events, Some(cells.clone()), 1);
    for d in linewatch::detect::DETECTORS {
        assert!(
            want.iter().any(|a| a.detector == d),
            "no {d} alert on the city: the comparison would not cover it"
        );
    }

    // A member joining moves partitions by a rebalance: with a checkpoint store, as
    // deployed, each moves with its state (saved at the held revoke, restored by its new
    // owner). Without one the new owner rebuilds by re-running the partition's history
    // with its outputs dropped, and a re-run is not the same run: evidence from the other
    // partitions comes at other times, so a finding first made after the committed offset
    // can be made again before it and dropped (docs/sharding.md).
    let setup = match half_way {
        HalfWay::Join => Setup::with_state_topic("instances", 6, cfg_text).await,
        HalfWay::Kill => Setup::new("instances", 6, cfg_text).await,
    };
    let cells_path = setup.dir.path().join("cells.csv");
    std::fs::write(&cells_path, &cells_csv).expect("write cells");
    let mut setup = setup.arg("--cells", &cells_path.to_string_lossy());
    let mut svcs = Vec::new();
    if bar.exactly_once {
        setup = setup.arg("--processing-guarantee", "exactly_once");
        for i in 0..3 {
            let cfg = setup.config_file(&format!("member-{i}"), &static_member(cfg_text, i));
            svcs.push(Service::start_ready(&cfg, &setup.args).await);
        }
    } else {
        for _ in 0..3 {
            svcs.push(setup.start_ready().await);
        }
    }

    let lines: Vec<&[u8]> = events
        .split(|&b| b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .collect();
    let half = lines.len() / 2;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    produce_keyless(&setup.topics.input, &lines[..half], 6, &mut rng).await;
    // Half way: the first half taken by the group's ingests, then one instance dies.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let mut taken = 0.0;
        for s in &svcs {
            taken += records_taken(s).await;
        }
        if taken >= half as f64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the group took {taken} of {half} records in 300 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut killed_taken = 0.0;
    if half_way == HalfWay::Join {
        svcs.push(setup.start_ready().await);
    } else if std::env::var("LW_NO_KILL").is_err() {
        let mut killed = svcs.remove(1);
        killed_taken = records_taken(&killed).await;
        killed.kill_9().await;
    }
    produce_keyless(&setup.topics.input, &lines[half..], 6, &mut rng).await;
    // The survivors drain the input (the killed one's partitions are re-read from its last
    // commit): every record taken, and nothing more taken for 10 s.
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut before = -1.0;
    loop {
        let mut taken = 0.0;
        for s in &svcs {
            taken += records_taken(s).await;
        }
        if taken + killed_taken >= lines.len() as f64 && taken == before {
            break;
        }
        before = taken;
        assert!(
            Instant::now() < deadline,
            "the survivors did not drain: {taken} + {killed_taken} of {}",
            lines.len()
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    if std::env::var("LW_DEBUG_MISSED").is_ok() {
        // What each survivor did with its stage partitions (no identifiers in these lines).
        for (i, s) in svcs.iter().enumerate() {
            for l in s.logs() {
                if l.contains("stage partition") || l.contains("restored") || l.contains("rebuil") {
                    eprintln!("instance {i}: {l}");
                }
            }
        }
        for r in ["valid", "malformed", "late", "duplicate"] {
            let mut n = 0.0;
            for s in &svcs {
                n += s
                    .metric(&format!("linewatch_records_total{{result=\"{r}\"}}"))
                    .await;
            }
            eprintln!("records {r}: {n} (survivors)");
        }
    }
    let got = support::read_committed_alerts(
        &setup.topics.alerts,
        Duration::from_secs(20),
        Duration::from_secs(300),
    )
    .await;

    if std::env::var("LW_DEBUG_LOG").is_ok() {
        for (i, s) in svcs.iter().enumerate() {
            for l in s
                .logs()
                .iter()
                .filter(|l| l.contains("stage") || l.contains("seek"))
            {
                eprintln!("svc {i}: {l}");
            }
        }
    }
    let (a, b) = (pairs(&want), pairs(&got));
    support::debug_missed_pairs(&want, &got, 6);
    let both = a.intersection(&b).count();
    let recall = both as f64 / a.len().max(1) as f64;
    let precision = both as f64 / b.len().max(1) as f64;
    let mut by_detector: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    for x in a.union(&b) {
        let e = by_detector.entry(x.0.clone()).or_default();
        match (a.contains(x), b.contains(x)) {
            (true, true) => e.0 += 1,
            (true, false) => e.1 += 1,
            _ => e.2 += 1,
        }
    }
    let ids: BTreeSet<&str> = got.iter().map(|x| x.alert_id.as_str()).collect();
    let twice = got.len() - ids.len();
    let replay_ids: BTreeSet<&str> = want.iter().map(|x| x.alert_id.as_str()).collect();
    let same_ids = ids.intersection(&replay_ids).count();
    eprintln!(
        "3 instances, {} half way: {} alerts ({} distinct ids, {same_ids} of replay's \
         {} ids) against replay's {}; pairs {:.2} % of replay's found, {:.2} % of the group's \
         confirmed; alert ids twice: {twice}; per detector (both, replay only, \
         group only): {by_detector:?}",
        if half_way == HalfWay::Join {
            "a fourth joining"
        } else {
            "one killed"
        },
        got.len(),
        ids.len(),
        replay_ids.len(),
        want.len(),
        100.0 * recall,
        100.0 * precision,
    );
    let (deal_want, deal_got) = (subjects(&want, "deal_line"), subjects(&got, "deal_line"));
    if bar.deal_line_equal {
        assert_eq!(deal_want, deal_got, "deal_line subjects differ");
    } else {
        assert!(
            deal_got.is_subset(&deal_want) && !deal_got.is_empty(),
            "deal_line subjects replay does not find: {:?}",
            deal_got.difference(&deal_want).collect::<Vec<_>>()
        );
    }
    assert!(recall >= bar.recall, "pairs found: {:.2} %", 100.0 * recall);
    assert!(
        precision >= 0.95,
        "pairs confirmed: {:.2} %",
        100.0 * precision
    );
    if bar.exactly_once {
        let mut seen = BTreeSet::new();
        let mut repeated: BTreeMap<&str, usize> = BTreeMap::new();
        for x in &got {
            if !seen.insert(x.alert_id.as_str()) {
                if std::env::var("LW_DEBUG_MISSED").is_ok() {
                    // Where the repeat was made (test data only; no identifier printed).
                    eprintln!(
                        "TWICE {} partition {} event_time {}",
                        x.detector,
                        linewatch::engine::shard_of(linewatch::ids::id(&x.subject), 6),
                        x.event_time
                    );
                }
                *repeated.entry(x.detector.as_str()).or_default() += 1;
            }
        }
        assert_eq!(
            twice, 0,
            "alert ids repeated under exactly once, by detector: {repeated:?}"
        );
    } else {
        // Every alert is one replay makes for the same (detector, subject) or a repeat of
        // one already published (at least once): what the moved partitions' new owners run
        // again past the committed positions. Since the stage commits only what it is done
        // with, that is more than the killed instance's last records: up to 31 % of the
        // alerts in one run of ten. Republishing everything would make half of them repeats.
        assert!(twice < got.len() / 2, "{twice} repeats of {}", got.len());
    }
}

/// `config` with `group.instance.id` = `m<i>` under `[kafka]`: instances on one host need
/// their own, or their transactional ids (derived from it) are the same and they fence
/// each other.
fn static_member(config: &str, i: usize) -> String {
    config.replacen(
        "[kafka]\n",
        &format!("[kafka]\n\"group.instance.id\" = \"m{i}\"\n"),
        1,
    )
}

/// Under exactly once, a stage transaction holding alerts is aborted (held open by the
/// debug-build hook past the broker's 2 s `transaction.timeout.ms`, so the broker aborts
/// it): the stage task drops its stages and rebuilds them up to the committed offsets, and
/// a `read_committed` reader then sees no alert twice and every alert whose records the
/// aborted transaction held (every `bulk_sms`, a finding of one line's records).
///
/// Before the rebuild sought every internal partition explicitly, a partition with nothing
/// to re-read (never committed, or committed past the rebuild window) went on from the
/// consumer's position, past what the aborted transaction had read: those records were
/// never run again, and a `bulk_sms` alert was lost in 3 of 6 runs over two sessions (seen
/// with the alert traced: made once, in the aborted transaction, never again). With the
/// seek it is made again in every run (3 of 3).
///
/// It still lost one `bulk_sms` id in CI (stop 46) and in 1 of 4 runs here with both cores
/// busy: the record the stage task had just polled when it rebuilt was run before the seek
/// back took effect (the loop polls, then positions), so it reached the fresh stage ahead of
/// the history re-read before it and ran twice, and a `bulk_sms` threshold was crossed a
/// record early, under another id. Such a record is now dropped and read again after the
/// seek (logged once a rebuild, in every run: 8 of 8, and the test passed 8 of 8 with both cores busy).
///
/// Not asserted: findings across stage partitions. Here nothing was committed before the
/// abort, so every partition re-runs its whole history at once, each at its own speed, and
/// evidence from a partition behind comes after the receiver's barrier for its epoch: one
/// `line_handover` and the `deal_line` it credits are missed in every run (3 of 3; the
/// join test's limit, docs/sharding.md). At most two pairs besides `runner_movement`'s may
/// be lost, so a third is a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_an_aborted_stage_transaction_publishes_nothing_twice_and_runs_every_record_again(
) {
    let _one = ONE_GROUP_AT_A_TIME.lock().await;
    let opts = GenOptions {
        seed: 5,
        subscribers: 1_500,
        days: 2,
        ..GenOptions::default()
    };
    let (events, _, _) = generate::generate_in_memory(&opts).expect("generate");
    let mut cells_csv = Vec::new();
    generate::write_cells(&opts, &mut cells_csv).expect("cells");
    let cells: Arc<CellMap> = CellMap::parse(&cells_csv).expect("cell map").into();
    // The broker aborts a transaction open for 2 s.
    let cfg_text = static_member(CONFIG, 0).replacen(
        "[kafka]\n",
        "[kafka]\n\"producer.transaction.timeout.ms\" = \"2000\"\n",
        1,
    );
    let cfg = Config::from_toml(&cfg_text).expect("config");
    let (want, _) = replay::replay_bytes_sharded(cfg, &events, Some(cells.clone()), 1);
    let bulk: BTreeSet<&str> = want
        .iter()
        .filter(|a| a.detector == "bulk_sms")
        .map(|a| a.alert_id.as_str())
        .collect();
    assert!(bulk.len() >= 10, "{} bulk_sms alerts", bulk.len());

    let setup = Setup::new("instances-abort", 1, &cfg_text).await;
    let cells_path = setup.dir.path().join("cells.csv");
    std::fs::write(&cells_path, &cells_csv).expect("write cells");
    let setup = setup
        .arg("--cells", &cells_path.to_string_lossy())
        .arg("--processing-guarantee", "exactly_once");
    let lines: Vec<&[u8]> = events
        .split(|&b| b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    produce_keyless(&setup.topics.input, &lines, 1, &mut rng).await;
    // The first stage transaction with alerts is held 15 s: the broker aborts it (it looks
    // for timed-out transactions every 10 s) and the commit fails.
    // LW_NO_ABORT: the same run without the hook, to measure what the hop alone finds.
    let abort = std::env::var("LW_NO_ABORT").is_err();
    let hold: &[(&str, &str)] = match abort {
        true => &[("LINEWATCH_TEST_HOLD_STAGE_TXN_MS", "15000")],
        false => &[],
    };
    let svc = Service::start_with_env(&setup.cfg, "run", &setup.args, hold);
    if abort {
        svc.wait_log("test hook: holding an open transaction", 1, WAIT)
            .await;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let rebuilt = svc
                .metric(r#"linewatch_stage_rebuilds_total{reason="aborted"}"#)
                .await
                + svc
                    .metric(r#"linewatch_stage_rebuilds_total{reason="fatal"}"#)
                    .await;
            if rebuilt >= 1.0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no stage rebuild after the held transaction\n{}",
                svc.logs().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while records_taken(&svc).await < lines.len() as f64 {
        assert!(Instant::now() < deadline, "not every record taken");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let got = support::read_committed_alerts(
        &setup.topics.alerts,
        Duration::from_secs(20),
        Duration::from_secs(300),
    )
    .await;
    if std::env::var("LW_DEBUG_LOG").is_ok() {
        for l in svc
            .logs()
            .iter()
            .filter(|l| l.contains("stage") || l.contains("hook"))
        {
            eprintln!("svc: {l}");
        }
    }
    let ids: BTreeSet<&str> = got.iter().map(|a| a.alert_id.as_str()).collect();
    if std::env::var("LW_DEBUG_MISSED").is_ok() {
        // Which alerts went missing, on which stage partition and when (test data only).
        for x in want.iter().filter(|x| !ids.contains(x.alert_id.as_str())) {
            eprintln!(
                "MISSED {} {} partition {} event_time {} id {}",
                x.detector,
                x.subject,
                linewatch::engine::shard_of(linewatch::ids::id(&x.subject), 6),
                x.event_time,
                x.alert_id
            );
        }
    }
    let (a, b) = (pairs(&want), pairs(&got));
    let recall = a.intersection(&b).count() as f64 / a.len().max(1) as f64;
    let mut missed: BTreeMap<&str, usize> = BTreeMap::new();
    for x in a.difference(&b) {
        *missed.entry(x.0.as_str()).or_default() += 1;
    }
    eprintln!(
        "stage transaction aborted: {} alerts ({} distinct) against replay's {}; pairs {:.2} % of replay's (missed by detector: {missed:?}); bulk_sms {} of {}",
        got.len(),
        ids.len(),
        want.len(),
        100.0 * recall,
        bulk.intersection(&ids).count(),
        bulk.len()
    );
    assert_eq!(ids.len(), got.len(), "alert ids repeated");
    assert!(
        bulk.is_subset(&ids),
        "bulk_sms alerts lost: {} of {}",
        bulk.intersection(&ids).count(),
        bulk.len()
    );
    // Without the abort the hop finds every pair here but runner_movement's (0 of 4 on
    // this city, with or without the abort: the hop's, not the abort's; docs/sharding.md).
    let lost: Vec<&(String, String)> = a
        .difference(&b)
        .filter(|x| x.0 != "runner_movement")
        .collect();
    assert!(lost.len() <= 2, "pairs lost: {missed:?}");
    assert!(!svc.logs().iter().any(|l| l.contains("panicked")));
}

/// A record on an internal topic that is not an envelope (another program writing there, a
/// future version) is dead-lettered with the fixed reason `bad_internal_record` and counted,
/// and the stage goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_internal_record_is_dead_lettered_and_counted_never_fatal() {
    let setup = Setup::new("instances-bad", 2, CONFIG).await;
    let svc = setup.start_ready().await;
    svc.wait_log("stage partitions assigned", 1, WAIT).await;
    let topics = linewatch::streams::topics::InternalTopics::for_group(&setup.topics.group);
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("producer");
    for part in 0..2 {
        p.send(
            FutureRecord::<(), [u8]>::to(&topics.by_line)
                .payload(&b"not an envelope"[..])
                .partition(part),
            Duration::from_secs(10),
        )
        .await
        .expect("written");
    }
    let dead = read_until(&setup.topics.dead, WAIT, |m| m.len() >= 2).await;
    assert_eq!(dead.len(), 2);
    for d in &dead {
        assert_eq!(d.headers["reason"], "bad_internal_record");
        assert_eq!(d.headers["field"], "version");
        assert_eq!(d.headers["source_topic"], topics.by_line);
        assert_eq!(d.value, b"not an envelope");
    }
    svc.wait_metric("linewatch_bad_internal_records_total", 2.0, WAIT)
        .await;
    assert!(!svc.logs().iter().any(|l| l.contains("stopped on error")));
}
