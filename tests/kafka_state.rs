//! Durable state against a real broker: `linewatch run` killed with SIGKILL after a
//! checkpoint restores it on restart, re-reads only what came after it, and publishes
//! every alert `replay` makes; a corrupted checkpoint is passed over with its reason.
//! The broker comes from `LINEWATCH_TEST_BROKERS`, as in `tests/kafka.rs`.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use linewatch::alert::Alert;
use linewatch::config::Config;
use linewatch::replay::replay_bytes;
use support::{
    brokers, city_lines, produce, read_alert_ids, read_until, records, Service, Setup, MIN, T0,
    WAIT,
};

/// The broker tests' thresholds, and a checkpoint every second.
const CONFIG: &str = support::broker_test_config!("checkpoint_interval_s = 1\n");

fn sms(id: &str, ts: i64, from: &str, to: &str) -> String {
    format!(r#"{{"event_id":"{id}","ts":{ts},"kind":"sms","from":"{from}","to":"{to}"}}"#)
}

/// Noise, a line bulk-texting 60 numbers, more noise (part one); 15 of them calling back
/// an hour later (part two), whose fan-in and deal-line alerts need part one's state.
fn traffic(tag: &str) -> (Vec<String>, Vec<String>) {
    let mut one: Vec<String> = (0..5_000)
        .map(|i| {
            sms(
                &format!("{tag}-a{i}"),
                T0 - 10 * MIN + i * 20,
                &format!("z{}", i / 10),
                &format!("zf{i}"),
            )
        })
        .collect();
    for i in 0..60i64 {
        one.push(sms(
            &format!("{tag}-t{i}"),
            T0 + i * 5_000,
            "L",
            &format!("c{i}"),
        ));
    }
    one.extend((0..20_000).map(|i| {
        sms(
            &format!("{tag}-b{i}"),
            T0 + 5 * MIN + i * 20,
            &format!("y{}", i / 10),
            &format!("yf{i}"),
        )
    }));
    let two = (0..15i64)
        .map(|i| {
            format!(
                r#"{{"event_id":"{tag}-k{i}","ts":{},"kind":"call","from":"c{i}","to":"L","duration_s":30}}"#,
                T0 + 60 * MIN + i * 30_000
            )
        })
        .collect();
    (one, two)
}

fn want(lines: &[String]) -> BTreeSet<String> {
    let cfg = Config::from_toml(CONFIG).unwrap();
    replay_bytes(cfg, lines.join("\n").as_bytes())
        .0
        .into_iter()
        .map(|a| a.alert_id)
        .collect()
}

/// Every `chunk` directory under `dir`.
fn chunk_dirs(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == "chunk") {
                out.push(p);
            } else {
                out.extend(chunk_dirs(&p));
            }
        }
    }
    out
}

/// A first instance runs `lines` through, writes checkpoints after them, and is killed -9.
async fn checkpoint_then_kill_9(s: &Setup, lines: &[String]) {
    let mut first = s.start_ready().await;
    produce(&s.topics.input, &records(lines, true)).await;
    first.wait_checkpointed(lines.len()).await;
    first.kill_9().await;
}

/// The service restored one checkpoint, and from the state topic.
fn assert_restored_from_the_topic(svc: &Service) {
    let restored = svc.restores();
    assert_eq!(restored.len(), 1, "{:?}", svc.logs());
    assert_eq!(restored[0]["store"], "kafka");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_after_a_checkpoint_restores_it_and_rereads_nothing_before_it() {
    let s = Setup::with_state_topic("ckpt", 1, CONFIG).await;
    let (one, two) = traffic("k");
    let all: Vec<String> = one.iter().chain(&two).cloned().collect();
    let want = want(&all);
    assert_eq!(want.len(), 3, "bulk_sms, customer_fan_in, deal_line");

    checkpoint_then_kill_9(&s, &one).await;
    produce(&s.topics.input, &records(&two, true)).await;
    let second = s.start();
    assert_eq!(
        read_alert_ids(&s.topics.alerts, &want).await,
        want,
        "every alert of replay, no other id"
    );
    assert_eq!(
        second.metric("linewatch_records_rebuilt_total").await,
        0.0,
        "the checkpoint held everything committed: nothing re-read"
    );
    assert_restored_from_the_topic(&second);
}

/// Re-processing a range: the group moved back to the start of its input while the service
/// was stopped. The checkpoint is ahead of the committed offsets, so it is passed over
/// (`rewound`), and the re-read publishes every alert of `replay` again, with the same ids.
/// Restored, the state from the end of the input made every re-read record late or a
/// duplicate, and no alert came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_rewound_behind_its_checkpoint_reprocesses_instead_of_restoring() {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    let s = Setup::with_state_topic("rewind", 1, CONFIG).await;
    let (one, two) = traffic("w");
    let all: Vec<String> = one.iter().chain(&two).cloned().collect();
    let want = want(&all);
    assert_eq!(want.len(), 3);

    let mut first = s.start_ready().await;
    produce(&s.topics.input, &records(&all, true)).await;
    assert_eq!(read_alert_ids(&s.topics.alerts, &want).await, want);
    first.wait_checkpointed(all.len()).await;
    first.signal("TERM");
    assert!(first.wait_exit(WAIT).await.success());

    // kafka-consumer-groups.sh --reset-offsets --to-earliest, as the runbook's re-process.
    let admin: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", &s.topics.group)
        .create()
        .expect("consumer");
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(&s.topics.input, 0, rdkafka::Offset::Offset(0))
        .unwrap();
    admin.commit(&tpl, CommitMode::Sync).expect("offsets reset");
    drop(admin);

    let second = s.start();
    let twice = read_until(&s.topics.alerts, WAIT, |m| m.len() >= 2 * want.len()).await;
    let ids: Vec<String> = twice
        .iter()
        .map(|m| serde_json::from_slice::<Alert>(&m.value).unwrap().alert_id)
        .collect();
    for id in &want {
        assert_eq!(
            ids.iter().filter(|x| *x == id).count(),
            2,
            "{id} published again by the re-read; service logs:\n{}",
            second.logs().join("\n")
        );
    }
    assert_eq!(
        second
            .metric(r#"linewatch_checkpoint_fallbacks_total{reason="rewound"}"#)
            .await,
        1.0
    );
    assert_eq!(
        second
            .metric(r#"linewatch_records_total{result="late"}"#)
            .await,
        0.0
    );
}

/// Checkpoints restore into another shard count (docs/sharding.md, step 3): a service run
/// with `--shards 2` and killed -9 after a checkpoint, restarted with `--shards 3`, loads
/// that checkpoint (it is not passed over as incompatible), re-reads nothing before it, and
/// publishes every alert of `replay`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_2_shards_then_a_restart_with_3_restores_the_checkpoint() {
    let s = Setup::with_state_topic("ckshards", 1, CONFIG).await;
    let (one, two) = traffic("ks");
    let all: Vec<String> = one.iter().chain(&two).cloned().collect();
    let want = want(&all);
    assert_eq!(want.len(), 3, "bulk_sms, customer_fan_in, deal_line");
    let with = |n: &str| [s.args.clone(), vec!["--shards".into(), n.into()]].concat();

    let mut first = Service::start_ready(&s.cfg, &with("2")).await;
    produce(&s.topics.input, &records(&one, true)).await;
    first.wait_checkpointed(one.len()).await;
    first.kill_9().await;
    produce(&s.topics.input, &records(&two, true)).await;
    let second = Service::start(&s.cfg, &with("3"));
    assert_eq!(
        read_alert_ids(&s.topics.alerts, &want).await,
        want,
        "every alert of replay, no other id"
    );
    assert_eq!(
        second
            .metric(r#"linewatch_engine_exchange{kind="shards"}"#)
            .await,
        3.0
    );
    assert_eq!(
        second.metric("linewatch_records_rebuilt_total").await,
        0.0,
        "the two shards' checkpoint held everything committed: nothing re-read"
    );
    assert_restored_from_the_topic(&second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_checkpoint_is_passed_over_and_the_alerts_are_the_same() {
    let s = Setup::with_state_topic("ckcor", 1, CONFIG)
        .await
        .with_state_dir();
    let (one, two) = traffic("c");
    let all: Vec<String> = one.iter().chain(&two).cloned().collect();
    let want = want(&all);

    checkpoint_then_kill_9(&s, &one).await;

    // Flip a byte in every chunk of the directory's checkpoints (<group>/<partition
    // set>/<slot>/chunk/*): both slots unusable there.
    let mut flipped = 0;
    for chunks in chunk_dirs(&s.state_dir().join(&s.topics.group)) {
        for e in std::fs::read_dir(&chunks).into_iter().flatten().flatten() {
            let mut bytes = std::fs::read(e.path()).unwrap();
            let at = bytes.len() - 1;
            bytes[at] ^= 0x5a;
            std::fs::write(e.path(), bytes).unwrap();
            flipped += 1;
        }
    }
    assert!(flipped >= 2, "checkpoints were written to the directory");

    produce(&s.topics.input, &records(&two, true)).await;
    let second = s.start();
    assert_eq!(read_alert_ids(&s.topics.alerts, &want).await, want);
    assert!(
        second
            .metric(r#"linewatch_checkpoint_fallbacks_total{reason="corrupt"}"#)
            .await
            >= 1.0
    );
    // The topic's copy was whole: it was used.
    assert_restored_from_the_topic(&second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_several_points_under_load_loses_no_alert() {
    let s = Setup::with_state_topic("ckkill", 1, CONFIG)
        .await
        .with_state_dir();
    let (one, two) = traffic("x");
    let all: Vec<String> = one.iter().chain(&two).cloned().collect();
    let want = want(&all);
    assert_eq!(want.len(), 3, "bulk_sms, customer_fan_in, deal_line");
    produce(&s.topics.input, &records(&all, true)).await;

    // Killed while working through the backlog: between checkpoints, while one is being
    // copied or written (one a second), with batches in flight.
    for (i, after_ms) in [700u64, 1_300, 2_100].into_iter().enumerate() {
        let mut svc = s.start_ready().await;
        tokio::time::sleep(Duration::from_millis(after_ms)).await;
        svc.kill_9().await;
        assert!(
            !svc.logs().iter().any(|l| l.contains("panicked")),
            "run {i}: {:?}",
            svc.logs()
        );
    }
    let last = s.start();
    assert_eq!(
        read_alert_ids(&s.topics.alerts, &want).await,
        want,
        "every alert of replay, and no other id"
    );
    drop(last);
}

/// `CONFIG` with `[kafka]` properties (e.g. a static member id, a short session timeout),
/// written to `<name>.toml` in the test's folder.
fn config_with(s: &Setup, name: &str, kafka: &[(&str, &str)]) -> std::path::PathBuf {
    let mut text = CONFIG.to_string();
    text.push_str("[kafka]\n");
    for (k, v) in kafka {
        text.push_str(&format!("\"{k}\" = \"{v}\"\n"));
    }
    s.config_file(name, &text)
}

/// Produces JSONL lines to one partition, in order.
async fn produce_to(topic: &str, partition: i32, lines: &[String]) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let p: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    for l in lines {
        p.send(
            FutureRecord::<str, str>::to(topic)
                .partition(partition)
                .payload(l.as_str()),
            Duration::from_secs(30),
        )
        .await
        .expect("delivered");
    }
}

/// A line texting 40 new numbers within 40 s, dated after `traffic`'s part one.
fn burst(tag: &str, line: &str) -> Vec<String> {
    (0..40i64)
        .map(|i| {
            sms(
                &format!("{tag}-{line}-{i}"),
                T0 + 30 * MIN + i * 1_000,
                line,
                &format!("{line}-r{i}"),
            )
        })
        .collect()
}

/// Waits until a service holds `n` input partitions.
async fn wait_assigned(svc: &Service, n: f64) {
    svc.wait_metric("linewatch_assigned_partitions", n, WAIT)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_active_members_keep_their_own_checkpoints_and_restore_their_own() {
    let s = Setup::with_state_topic("ck2m", 2, CONFIG).await;
    let args = &s.args;
    let cfg_a = config_with(&s, "a", &[("group.instance.id", "member-a")]);
    let cfg_b = config_with(&s, "b", &[("group.instance.id", "member-b")]);
    let (one, _) = traffic("m");

    let a = Service::start_ready(&cfg_a, args).await;
    let b2 = Service::start_ready(&cfg_b, args).await;
    wait_assigned(&a, 1.0).await;
    assert_eq!(a.metric("linewatch_assigned_partitions").await, 1.0);
    // Both partitions get records (keys spread over them), so both members' states differ.
    let placed = produce(&s.topics.input, &records(&one, true)).await;
    let on_0 = placed.iter().filter(|p| p.0 == 0).count();
    assert!(on_0 > 0 && on_0 < one.len(), "records on both partitions");
    let valid = r#"linewatch_records_total{result="valid"}"#;
    let deadline = std::time::Instant::now() + WAIT;
    while a.metric(valid).await + b2.metric(valid).await < one.len() as f64 {
        assert!(std::time::Instant::now() < deadline, "not all records ran");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Both write checkpoints, every second, to the same state topic, for a while.
    for svc in [&a, &b2] {
        let n = svc.metric("linewatch_checkpoint_write_seconds_count").await;
        svc.wait_metric("linewatch_checkpoint_write_seconds_count", n + 3.0, WAIT)
            .await;
    }
    let mut a = a;
    let mut b2 = b2;
    a.signal("KILL");
    b2.signal("KILL");
    a.wait_exit(Duration::from_secs(10)).await;
    b2.wait_exit(Duration::from_secs(10)).await;

    // Restarted with the same member ids, each takes its partition straight back and must
    // find the checkpoint of that partition: nothing to re-read.
    let a = Service::start(&cfg_a, args);
    let b2 = Service::start(&cfg_b, args);
    for (name, svc) in [("a", &a), ("b", &b2)] {
        svc.wait_ready(WAIT).await;
        let restored = svc
            .wait_log("window state restored from a checkpoint", 1, WAIT)
            .await;
        assert_eq!(
            svc.metric("linewatch_records_rebuilt_total").await,
            0.0,
            "member {name} restored its own partition's checkpoint: nothing re-read"
        );
        for reason in ["corrupt", "truncated", "incompatible", "other_partitions"] {
            assert_eq!(
                svc.metric(&format!(
                    r#"linewatch_checkpoint_fallbacks_total{{reason="{reason}"}}"#
                ))
                .await,
                0.0,
                "member {name}: no checkpoint passed over ({reason})"
            );
        }
        assert_eq!(restored[0]["partitions"], 1, "member {name}: {restored:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_after_kill_9_with_the_newest_checkpoint_and_misses_no_alert() {
    // No state directory: the standby has no disk in common with the active member.
    let s = Setup::with_state_topic("ckstb", 1, CONFIG).await;
    // The group notices the kill after the session timeout: the broker's minimum, 6 s.
    let kafka = [
        ("session.timeout.ms", "6000"),
        ("heartbeat.interval.ms", "1000"),
    ];
    let cfg = config_with(&s, "member", &kafka);
    let (one, two) = traffic("s");
    let all: Vec<String> = one.iter().chain(&two).cloned().collect();
    let want = want(&all);
    assert_eq!(want.len(), 3, "bulk_sms, customer_fan_in, deal_line");

    let first = Service::start_ready(&cfg, &s.args).await;
    let second = Service::start_ready(&cfg, &s.args).await;
    // The group gives the one partition to either; the other stands by, ready all the same.
    let deadline = std::time::Instant::now() + WAIT;
    let (mut active, standby) = loop {
        let held = (
            first.metric("linewatch_assigned_partitions").await,
            second.metric("linewatch_assigned_partitions").await,
        );
        match held {
            (1.0, 0.0) if !second.log_events("standing by").is_empty() => break (first, second),
            (0.0, 1.0) if !first.log_events("standing by").is_empty() => break (second, first),
            _ => {}
        }
        assert!(
            std::time::Instant::now() < deadline,
            "one active, one standing by: {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = standby.get("/readyz").await;
        if code == 200 && body.contains("standing by") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{code} {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    produce(&s.topics.input, &records(&one, true)).await;
    active.wait_checkpointed(one.len()).await;
    let before_kill = read_until(&s.topics.alerts, Duration::from_secs(5), |m| !m.is_empty()).await;
    assert!(
        !before_kill.is_empty(),
        "the active member alerted on part one"
    );
    active.kill_9().await;

    // Part two arrives while nobody holds the partition; the standby takes it over once
    // the group has noticed, restores the newest checkpoint from the state topic and
    // alerts on part two with part one's state.
    produce(&s.topics.input, &records(&two, true)).await;
    assert_eq!(
        read_alert_ids(&s.topics.alerts, &want).await,
        want,
        "every alert of replay, no other id"
    );
    assert_eq!(standby.metric("linewatch_assigned_partitions").await, 1.0);
    assert_restored_from_the_topic(&standby);
    assert_eq!(
        standby.metric("linewatch_records_rebuilt_total").await,
        0.0,
        "the checkpoint held everything the active member committed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_member_restarted_within_the_session_timeout_takes_its_partition_back_without_a_rebalance(
) {
    let s = Setup::with_state_topic("ckstat", 2, CONFIG).await;
    let (t, args) = (&s.topics, &s.args);
    // Long enough that the restart below comes well within it.
    let session = ("consumer.session.timeout.ms", "45000");
    let cfg_a = config_with(&s, "a", &[("group.instance.id", "pod-a"), session]);
    let cfg_b = config_with(&s, "b", &[("group.instance.id", "pod-b"), session]);

    let mut a = Service::start_ready(&cfg_a, args).await;
    let other = Service::start_ready(&cfg_b, args).await;
    wait_assigned(&a, 1.0).await;
    assert_eq!(a.metric("linewatch_assigned_partitions").await, 1.0);
    assert_eq!(other.metric("linewatch_assigned_partitions").await, 1.0);
    // Settled: the other member's rebalances so far.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let assigns = r#"linewatch_rebalances_total{kind="assign"}"#;
    let revokes = r#"linewatch_rebalances_total{kind="revoke"}"#;
    let (assigned_before, revoked_before) =
        (other.metric(assigns).await, other.metric(revokes).await);

    // Which partition is a's: a burst there alerts through a.
    produce_to(&t.input, 0, &burst("p0", "LA")).await;
    produce_to(&t.input, 1, &burst("p1", "LB")).await;
    let subjects = |m: &[support::Msg]| -> BTreeSet<String> {
        m.iter()
            .filter_map(|m| serde_json::from_slice::<Alert>(&m.value).ok())
            .map(|a| a.subject)
            .collect()
    };
    let msgs = read_until(&t.alerts, WAIT, |m| subjects(m).len() >= 2).await;
    assert_eq!(subjects(&msgs), ["LA", "LB"].map(String::from).into());
    let a_alerts = a
        .metric(r#"linewatch_alerts_total{detector="bulk_sms"}"#)
        .await;
    let a_partition = if a_alerts >= 1.0 { 0 } else { 1 };

    a.kill_9().await;
    let started = std::time::Instant::now();
    let a = Service::start_ready(&cfg_a, args).await;
    let back_in = started.elapsed();
    assert!(
        back_in < Duration::from_secs(40),
        "took its partition back before the session timeout ran out ({back_in:?})"
    );
    // Alerts continue on the restarted member's partition.
    produce_to(&t.input, a_partition, &burst("again", "LC")).await;
    let msgs = read_until(&t.alerts, WAIT, |m| subjects(m).contains("LC")).await;
    assert!(subjects(&msgs).contains("LC"));
    assert_eq!(
        a.metric(r#"linewatch_alerts_total{detector="bulk_sms"}"#)
            .await,
        1.0,
        "the restarted member alerted"
    );
    // The other member saw no rebalance at all.
    assert_eq!(
        other.metric(assigns).await,
        assigned_before,
        "{:?}",
        other.logs()
    );
    assert_eq!(
        other.metric(revokes).await,
        revoked_before,
        "{:?}",
        other.logs()
    );
}

/// Adds partitions to a topic (kafka-topics.sh --alter --partitions `total`).
async fn add_partitions(topic: &str, total: usize) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("admin client");
    let results = admin
        .create_partitions(&[NewPartitions::new(topic, total)], &AdminOptions::new())
        .await
        .expect("create_partitions request");
    for r in results {
        r.expect("partitions added");
    }
}

/// Waits until the service has counted `n` records (valid, late, duplicate or malformed:
/// every record it read live, none it only re-read).
async fn wait_counted(svc: &Service, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        let (_, text) = svc.get("/metrics").await;
        let counted = support::metric_sum(&text, "linewatch_records_total", "result");
        if counted == Some(n as f64) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "records counted: {counted:?} of {n}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How many alert messages have the same id as another, and how many ids there are.
fn repeated_ids(msgs: &[support::Msg]) -> (usize, usize) {
    let mut counts = std::collections::BTreeMap::new();
    for m in msgs {
        let id = serde_json::from_slice::<Alert>(&m.value).unwrap().alert_id;
        *counts.entry(id).or_insert(0usize) += 1;
    }
    (counts.values().map(|n| n - 1).sum(), counts.len())
}

/// An input partition added while the service is stopped (kafka-topics.sh --alter
/// --partitions), then a clean restart: every alert arrives once, with checkpoints on or
/// off. A city's first 60 % is read on one partition; the rest, keyed, lands on both. No
/// checkpoint covers the new partition set, so the restart re-reads partition 0 to rebuild
/// state, while the new partition has only live records. It held the watermark at its start
/// throughout the re-read (it had delivered nothing yet): no barrier ran, and the alerts
/// those barriers had made in the first run (a `deal_line` and a `line_handover`) came at
/// the first live record, published a second time with the same ids.
async fn adding_an_input_partition_and_restarting_publishes_every_alert_once(checkpoints: bool) {
    use linewatch::generate::GenOptions;

    let config = if checkpoints {
        "[service]\nbatch_max_wait_ms = 20\ndrain_timeout_s = 20\ncheckpoint_interval_s = 1\n"
    } else {
        "[service]\nbatch_max_wait_ms = 20\ndrain_timeout_s = 20\ncheckpoint_interval_s = 0\n"
    };
    let s = Setup::with_state_topic(if checkpoints { "addp-ck" } else { "addp" }, 1, config).await;
    let lines = city_lines(&GenOptions {
        seed: 1,
        subscribers: 3_000,
        days: 2,
        ..GenOptions::default()
    });
    let cut = lines.len() * 6 / 10;

    let mut first = s.start_ready().await;
    produce(&s.topics.input, &records(&lines[..cut], true)).await;
    wait_counted(&first, cut).await;
    first.signal("TERM");
    assert!(first.wait_exit(WAIT).await.success());
    let before = read_until(&s.topics.alerts, Duration::from_secs(5), |_| false).await;
    assert_eq!(
        repeated_ids(&before).0,
        0,
        "the first run published each alert once"
    );

    add_partitions(&s.topics.input, 2).await;
    let placed = produce(&s.topics.input, &records(&lines[cut..], true)).await;
    assert!(
        placed.iter().any(|p| p.0 == 1),
        "records on the new partition"
    );
    let second = s.start();
    wait_counted(&second, lines.len() - cut).await;
    assert!(second.metric("linewatch_records_rebuilt_total").await > 0.0);
    let (_, text) = second.get("/metrics").await;
    let n =
        support::metric_sum(&text, "linewatch_alerts_total", "detector").unwrap_or(0.0) as usize;
    let after = read_until(&s.topics.alerts, WAIT, |m| m.len() >= before.len() + n).await;
    // A repeat would come after the second run's own alerts: read a little longer.
    let after = {
        let more = read_until(&s.topics.alerts, Duration::from_secs(3), |m| {
            m.len() > after.len()
        })
        .await;
        if more.len() > after.len() {
            more
        } else {
            after
        }
    };
    let (repeats, ids) = repeated_ids(&after);
    assert_eq!(
        repeats,
        0,
        "{repeats} alert(s) of {ids} published again after the restart (the first run \
         published {}, the second {n})",
        before.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_an_input_partition_then_a_clean_restart_publishes_every_alert_once() {
    adding_an_input_partition_and_restarting_publishes_every_alert_once(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_an_input_partition_then_a_clean_restart_with_checkpoints_publishes_every_alert_once(
) {
    adding_an_input_partition_and_restarting_publishes_every_alert_once(true).await;
}

/// The state topic store drops a removed key: a store that missed a checkpoint has its
/// older manifests removed this way (see `checkpoint::service`), and the restore must then
/// read past them.
#[test]
fn the_state_topic_store_forgets_a_removed_key() {
    use linewatch::checkpoint::store::{KafkaStore, Store};
    let settings = linewatch::kafka::KafkaSettings::new(brokers(), Default::default());
    let topic = format!("state-remove-{}", support::suffix());
    let mut store = KafkaStore::open(&settings, &topic, Duration::from_secs(30)).unwrap();
    store.put("g/a/manifest", b"one").unwrap();
    store.put("g/b/manifest", b"two").unwrap();
    store.flush().unwrap();
    store.remove("g/a/manifest").unwrap();
    // A key that was never written is no error.
    store.remove("g/c/manifest").unwrap();
    let left = store.load("g/").unwrap();
    assert_eq!(left.keys().collect::<Vec<_>>(), ["g/b/manifest"]);
    assert_eq!(left["g/b/manifest"], b"two");
}

/// The sweep of abandoned partition sets over the state topic: every key of a set nobody
/// has written for `service.rebuild_state_s` gets an empty value (compaction then drops
/// it), and a fresh set keeps its keys.
#[test]
fn the_state_topic_forgets_a_partition_set_nobody_writes_any_more() {
    use linewatch::checkpoint::service::{stale_after_ms, sweep_stale};
    use linewatch::checkpoint::store::{KafkaStore, Store};
    use linewatch::checkpoint::{self, InputPartition, Meta};
    let settings = linewatch::kafka::KafkaSettings::new(brokers(), Default::default());
    let topic = format!("state-sweep-{}", support::suffix());
    let mut store = KafkaStore::open(&settings, &topic, Duration::from_secs(30)).unwrap();
    let cfg = Config::default();
    let body = checkpoint::encode_body(&linewatch::engine::Engine::new(cfg.clone())).unwrap();
    let now = linewatch::replay::wall_ms();
    let max_age = stale_after_ms(&cfg);
    let write = |store: &mut KafkaStore, ns: &str, created_ms: i64| {
        let meta = Meta {
            id: created_ms as u64,
            created_ms,
            partitions: vec![InputPartition {
                topic: "cdr".into(),
                partition: 0,
            }],
            offsets: Vec::new(),
            config: cfg.clone(),
            config_version: cfg.version(),
        };
        let cp = checkpoint::package(&body, meta, 1024).unwrap();
        checkpoint::write(store, ns, 0, &cp).unwrap();
        checkpoint::write(store, ns, 1, &cp).unwrap();
    };
    let (gone, kept) = (format!("g/{:016x}", 2), format!("g/{:016x}", 3));
    write(&mut store, &gone, now - max_age - 1_000);
    write(&mut store, &kept, now);
    let before = store.load("g/").unwrap();
    let count = |m: &std::collections::BTreeMap<String, Vec<u8>>, ns: &str| {
        m.keys()
            .filter(|k| k.starts_with(&format!("{ns}/")))
            .count()
    };
    assert!(count(&before, &gone) >= 4, "{:?}", before.keys());
    let removed = sweep_stale(&mut store, "g", &format!("g/{:016x}", 1), now, max_age).unwrap();
    assert_eq!(removed, 1);
    let after = store.load("g/").unwrap();
    assert_eq!(count(&after, &gone), 0, "{:?}", after.keys());
    assert_eq!(count(&after, &kept), count(&before, &kept));
}
