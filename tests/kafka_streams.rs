//! The Kafka side of several instances sharing the work (issue 11), against a real broker:
//! the internal topics created co-partitioned and checked at start, the stage consumer
//! owning stage partitions whole as members join and leave, and internal records travelling
//! to the owner of their key in the versioned envelope. The broker comes from
//! `LINEWATCH_TEST_BROKERS`, as in `tests/kafka.rs`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use linewatch::config::StreamsConfig;
use linewatch::exchange::{Body, Dest, Evidence};
use linewatch::kafka::KafkaSettings;
use linewatch::streams::assign::StageConsumer;
use linewatch::streams::place::partition_of;
use linewatch::streams::producer::InternalProducer;
use linewatch::streams::topics::{ensure, InternalTopics, TopicsError, Which};
use linewatch::streams::wire::{self, Kind};
use support::{
    brokers, create_topics, produce, read_until, records, suffix, Service, Setup, Topics, MIN, T0,
    WAIT,
};

fn settings() -> KafkaSettings {
    KafkaSettings::new(brokers(), BTreeMap::new())
}

fn streams(partitions: u32) -> StreamsConfig {
    StreamsConfig {
        enabled: true,
        internal_partitions: partitions,
        replication_factor: -1,
        retention_s: 3_600,
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Partition count of each topic, by metadata.
fn partition_counts(topics: &[&str]) -> Vec<usize> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("metadata client");
    topics
        .iter()
        .map(|t| {
            let md = c
                .fetch_metadata(Some(t), Duration::from_secs(10))
                .expect("metadata");
            md.topics()[0].partitions().len()
        })
        .collect()
}

/// A topic-level setting as the broker reports it.
fn topic_setting(topic: &str, key: &str) -> Option<String> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("admin client");
    let r = rt()
        .block_on(admin.describe_configs(&[ResourceSpecifier::Topic(topic)], &AdminOptions::new()))
        .expect("describe_configs");
    let res = r.into_iter().next()?.ok()?;
    res.get(key).and_then(|e| e.value.clone())
}

#[test]
fn internal_topics_are_created_co_partitioned_with_their_retention_and_a_second_start_creates_nothing(
) {
    let group = format!("streams-create-{}", suffix());
    let t = ensure(&settings(), &group, &streams(6), WAIT).expect("first start");
    assert_eq!(t, InternalTopics::for_group(&group));
    assert_eq!(
        t.all(),
        [
            format!("{group}-by-line").as_str(),
            &format!("{group}-by-handset"),
            &format!("{group}-evidence")
        ]
    );
    assert_eq!(partition_counts(&t.all()), vec![6, 6, 6]);
    for name in t.all() {
        assert_eq!(
            topic_setting(name, "retention.ms").as_deref(),
            Some("3600000")
        );
        assert_eq!(
            topic_setting(name, "cleanup.policy").as_deref(),
            Some("delete")
        );
    }
    // A second start (another instance, a restart) finds them and changes nothing.
    let again = ensure(&settings(), &group, &streams(6), WAIT).expect("second start");
    assert_eq!(again, t);
    assert_eq!(partition_counts(&t.all()), vec![6, 6, 6]);
}

#[test]
fn an_internal_topic_with_another_partition_count_stops_the_start_with_one_line() {
    let group = format!("streams-mismatch-{}", suffix());
    let t = InternalTopics::for_group(&group);
    rt().block_on(create_topics(&[(&t.by_handset, 4)]));
    let e = ensure(&settings(), &group, &streams(6), WAIT).unwrap_err();
    assert!(matches!(e, TopicsError::NotCoPartitioned(_)), "{e:?}");
    let msg = e.to_string();
    assert_eq!(
        msg,
        format!(
            "internal topics are not co-partitioned: streams.internal_partitions = 6, but \
             {group}-by-line has 6, {group}-by-handset has 4, {group}-evidence has 6 partitions; \
             stop every instance, let the stages drain, delete {group}-by-handset and start \
             again to have it created with 6 (the partition count of a topic cannot be lowered, \
             and raising it moves keys between partitions)"
        )
    );
    // The missing two were created, the odd one left alone.
    assert_eq!(partition_counts(&t.all()), vec![6, 4, 6]);
    // A wrong configured count with agreeing topics says which count they have.
    let msg = ensure(
        &settings(),
        &group.replace("mismatch", "x"),
        &streams(6),
        WAIT,
    )
    .map(|_| ())
    .and_then(|_| {
        ensure(
            &settings(),
            &group.replace("mismatch", "x"),
            &streams(8),
            WAIT,
        )
        .map(|_| ())
    })
    .unwrap_err()
    .to_string();
    assert!(msg.contains("set streams.internal_partitions = 6"), "{msg}");

    // `linewatch run` with [streams] on stops at start with that line and exit 1.
    let dir = tempfile::tempdir().expect("temporary folder");
    let cfg = dir.path().join("linewatch.toml");
    std::fs::write(
        &cfg,
        "[service]\nretry_backoff_max_s = 2\n[streams]\nenabled = true\ninternal_partitions = 6\n",
    )
    .expect("config");
    let mut topics = Topics::named("streams-run");
    topics.group = group.clone();
    let mut child = Command::new(env!("CARGO_BIN_EXE_linewatch"))
        .arg("--config")
        .arg(&cfg)
        .arg("run")
        .args(topics.args(&brokers()))
        .args(["--http", "127.0.0.1:0"])
        .env("LINEWATCH_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start linewatch run");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("linewatch run did not stop on non-co-partitioned internal topics");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    assert_eq!(status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains(&format!(
            "internal topics are not co-partitioned: streams.internal_partitions = 6, but {group}-by-line has 6, {group}-by-handset has 4"
        )),
        "{stderr}"
    );
}

/// Polls every member until `done` holds for their whole ownerships, or panics with them.
fn settle(members: &[&StageConsumer], what: &str, done: impl Fn(&[BTreeSet<i32>]) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        for m in members {
            let _ = m.poll(Duration::from_millis(50));
        }
        let owned: Vec<BTreeSet<i32>> =
            members.iter().map(|m| m.owned_stage_partitions()).collect();
        if done(&owned) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: never settled: {owned:?}"
        );
    }
}

/// Every stage partition of `partitions` owned by exactly one member, whole, and every
/// member holding some.
fn shared_out(owned: &[BTreeSet<i32>], partitions: i32) -> bool {
    let mut all: Vec<i32> = owned.iter().flatten().copied().collect();
    all.sort_unstable();
    all == (0..partitions).collect::<Vec<_>>() && owned.iter().all(|o| !o.is_empty())
}

/// What a member's consumer is assigned, as (topic, partition) pairs: for the check that a
/// whole partition really is held for all three topics.
fn assigned(m: &StageConsumer) -> BTreeSet<(String, i32)> {
    m.consumer()
        .assignment()
        .expect("assignment")
        .elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

#[test]
fn stage_partitions_are_owned_whole_by_exactly_one_member_as_members_join_and_leave() {
    let group = format!("streams-assign-{}", suffix());
    let t = ensure(&settings(), &group, &streams(6), WAIT).expect("topics");
    let s = settings();
    let a = StageConsumer::new(&s, &group, false).expect("member a");
    let b = StageConsumer::new(&s, &group, false).expect("member b");
    settle(&[&a, &b], "two members", |o| shared_out(o, 6));
    let check_whole = |ms: &[&StageConsumer]| {
        for m in ms {
            assert!(m.ownership().partial.is_empty(), "{:?}", m.ownership());
            let want: BTreeSet<(String, i32)> = m
                .owned_stage_partitions()
                .into_iter()
                .flat_map(|p| t.all().map(|n| (n.to_string(), p)))
                .collect();
            assert_eq!(assigned(m), want);
        }
    };
    check_whole(&[&a, &b]);
    assert_eq!(a.owned_stage_partitions().len(), 3);

    let c = StageConsumer::new(&s, &group, false).expect("member c");
    settle(&[&a, &b, &c], "three members", |o| {
        shared_out(o, 6) && o.iter().all(|p| p.len() == 2)
    });
    check_whole(&[&a, &b, &c]);

    // A member leaving hands its partitions to the others.
    let gone = b.owned_stage_partitions();
    drop(b);
    settle(&[&a, &c], "after a member left", |o| shared_out(o, 6));
    check_whole(&[&a, &c]);
    let now: BTreeSet<i32> = a
        .owned_stage_partitions()
        .union(&c.owned_stage_partitions())
        .copied()
        .collect();
    assert!(gone.is_subset(&now));
    for m in [&a, &c] {
        assert_eq!(m.partial_total(), 0);
    }
}

fn evidence(dest: Dest, i: u64) -> Evidence {
    Evidence {
        dest,
        at: 1_780_000_000_000 + i as i64,
        event_id: format!("e{i}").into(),
        order: [i, i, 0, 0],
        body: Body::SimSeen {
            handset: i,
            at_s: i as u32,
        },
    }
}

#[test]
fn evidence_goes_to_the_partition_of_its_key_in_the_envelope_and_broadcasts_to_every_one() {
    let group = format!("streams-trip-{}", suffix());
    let p = 6u32;
    let t = ensure(&settings(), &group, &streams(p), WAIT).expect("topics");
    let producer = InternalProducer::new(&settings(), &group, p).expect("producer");
    let mut sent = Vec::new();
    let mut futures = Vec::new();
    for i in 0..60u64 {
        let key = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5555;
        let dest = if i % 2 == 0 {
            Dest::Number(key)
        } else {
            Dest::Handset(key)
        };
        let e = evidence(dest, i);
        futures.extend(producer.send_evidence(&e).expect("send"));
        sent.push((key, e));
    }
    let broadcast = evidence(Dest::Every, 1_000);
    futures.extend(producer.send_evidence(&broadcast).expect("send broadcast"));
    // A routed record by line, and one record that is not an envelope at all.
    futures.push(
        producer
            .send_keyed(Which::ByLine, Kind::Record, 42, &(7u64, "routed"))
            .expect("send record"),
    );
    futures.push(
        producer
            .send_raw(Which::ByHandset, 0, 9, b"{\"not\":\"an envelope\"}")
            .expect("send garbage"),
    );
    rt().block_on(async {
        for f in futures {
            f.await.expect("delivery").expect("acknowledged");
        }
    });

    let stage = StageConsumer::new(&settings(), &group, false).expect("stage consumer");
    let want = sent.len() + p as usize + 2;
    let mut got = Vec::new();
    let deadline = Instant::now() + WAIT;
    while got.len() < want {
        assert!(Instant::now() < deadline, "read {} of {want}", got.len());
        if let Some(r) = stage.poll(Duration::from_millis(200)) {
            got.push(r.expect("read"));
        }
    }
    assert_eq!(stage.owned_stage_partitions(), (0..6).collect());

    let mut broadcast_partitions = BTreeSet::new();
    let mut bad = Vec::new();
    for m in &got {
        match m.which {
            Which::Evidence => {
                let e: Evidence = m.decode(Kind::Evidence).expect("evidence decodes");
                if e.dest == Dest::Every {
                    assert_eq!(e, broadcast);
                    broadcast_partitions.insert(m.partition);
                    continue;
                }
                let (key, orig) = sent
                    .iter()
                    .find(|(_, s)| s.event_id == e.event_id)
                    .expect("a sent evidence");
                assert_eq!(&e, orig);
                assert_eq!(m.key, Some(*key), "the 8-byte key hash is the message key");
                assert_eq!(m.partition, partition_of(*key, p));
                assert_eq!(m.partition as usize, linewatch::engine::shard_of(*key, 6));
            }
            Which::ByLine => {
                let v: (u64, String) = m.decode(Kind::Record).expect("record decodes");
                assert_eq!(v, (7, "routed".to_string()));
                assert_eq!(m.partition, partition_of(42, p));
                assert_eq!(m.key, Some(42));
                // Read as the wrong kind, it is refused, not misread.
                assert_eq!(
                    m.decode::<Evidence>(Kind::Evidence).unwrap_err().reason(),
                    wire::REASON
                );
            }
            Which::ByHandset => bad.push(m.decode::<Evidence>(Kind::Evidence).unwrap_err()),
        }
    }
    assert_eq!(broadcast_partitions, (0..6).collect());
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0].reason(), "bad_internal_record");
    assert_eq!(bad[0].field(), "version");
    // Offsets are the topic's own: every (topic, partition, offset) read once.
    let distinct: BTreeSet<(Which, i32, i64)> = got
        .iter()
        .map(|m| (m.which, m.partition, m.offset))
        .collect();
    assert_eq!(distinct.len(), got.len());
    let _ = t;
}

#[test]
fn a_stage_transaction_makes_its_evidence_and_its_input_offsets_visible_together() {
    use linewatch::streams::producer::stage_transactional_id;
    use rdkafka::{Offset, TopicPartitionList};

    let group = format!("streams-txn-{}", suffix());
    let p = 2u32;
    let t = ensure(&settings(), &group, &streams(p), WAIT).expect("topics");
    let s = settings();
    let id = stage_transactional_id(&s, &group);
    assert!(id.starts_with(&format!("linewatch-{group}-")) && id.ends_with("-stages"));
    let producer = InternalProducer::transactional(&s, &group, p, &id).expect("producer");
    let stage = StageConsumer::new(&s, &group, true).expect("read_committed stage consumer");
    let deliver = |e: &Evidence| {
        rt().block_on(async {
            for f in producer.send_evidence(e).expect("send") {
                f.await.expect("delivery").expect("acknowledged");
            }
        })
    };
    let key = 0x0123_4567_89AB_CDEFu64;
    let aborted = evidence(Dest::Number(key), 1);
    let committed = evidence(Dest::Number(key), 2);

    producer.begin().expect("begin");
    deliver(&aborted);
    producer.abort().expect("abort");
    producer.begin().expect("begin");
    deliver(&committed);
    producer
        .commit_with_offsets(
            &TopicPartitionList::new(),
            &stage.consumer().group_metadata().expect("group metadata"),
        )
        .expect("commit");

    // The read_committed stage sees the committed evidence, never the aborted one.
    let read_until = |want: &str| {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            assert!(Instant::now() < deadline, "never read {want}: {seen:?}");
            if let Some(m) = stage.poll(Duration::from_millis(200)) {
                let m = m.expect("read");
                let e: Evidence = m.decode(Kind::Evidence).expect("decodes");
                seen.push(e.event_id.to_string());
                if &*e.event_id == want {
                    return (m, seen);
                }
            }
        }
    };
    let (m, seen) = read_until("e2");
    assert_eq!(
        seen,
        vec!["e2"],
        "the aborted transaction's evidence was read"
    );
    assert_eq!(m.partition, partition_of(key, p));

    // The stage applies it and sends what it learnt, with its input offset, in one
    // transaction: the group's committed offset moves with the output.
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(&t.evidence, m.partition, Offset::Offset(m.offset + 1))
        .expect("offset");
    let answer = evidence(Dest::Handset(key ^ 1), 3);
    producer.begin().expect("begin");
    deliver(&answer);
    producer
        .commit_with_offsets(
            &offsets,
            &stage.consumer().group_metadata().expect("group metadata"),
        )
        .expect("commit with offsets");
    let committed_offsets = stage
        .consumer()
        .committed_offsets(offsets.clone(), Duration::from_secs(10))
        .expect("committed offsets");
    assert_eq!(
        committed_offsets
            .find_partition(&t.evidence, m.partition)
            .expect("partition")
            .offset(),
        Offset::Offset(m.offset + 1)
    );
    let (m3, _) = read_until("e3");
    assert_eq!(m3.partition, partition_of(key ^ 1, p));
}

/// The broker tests' thresholds, with the internal topics on at 4 partitions.
const STREAMS_ON: &str = support::broker_test_config!(
    r#"
[streams]
enabled = true
internal_partitions = 4
"#
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_streams_enabled_creates_the_internal_topics_then_detects_as_one_instance() {
    let setup = Setup::new("streams-on", 2, STREAMS_ON).await;
    // The stage task's consumer takes 10 minutes to close (as one librdkafka does not
    // finish would): the stop below is bounded all the same.
    let mut svc = Service::start_with_env(
        &setup.cfg,
        "run",
        &setup.args,
        &[("LINEWATCH_TEST_SLOW_CLOSE_MS", "600000")],
    );
    svc.wait_ready(WAIT).await;
    svc.wait_log("internal topics co-partitioned", 1, WAIT)
        .await;
    let t = InternalTopics::for_group(&setup.topics.group);
    assert_eq!(partition_counts(&t.all()), vec![4, 4, 4]);
    // The single-instance path still detects: a line texting 25 numbers is bulk_sms.
    let lines: Vec<String> = (0..25)
        .map(|i| {
            format!(
                r#"{{"event_id":"on-{i}","ts":{},"kind":"sms","from":"bulkline","to":"r{i}"}}"#,
                T0 + i * MIN / 10
            )
        })
        .collect();
    produce(&setup.topics.input, &records(&lines, true)).await;
    let alerts = read_until(&setup.topics.alerts, WAIT, |m| !m.is_empty()).await;
    assert_eq!(alerts.len(), 1);
    let a: serde_json::Value = serde_json::from_slice(&alerts[0].value).expect("alert JSON");
    assert_eq!(a["detector"], "bulk_sms");
    assert_eq!(a["subject"], "bulkline");
    // SIGTERM: within the drain time (20 s) and the stage task's grace (5 s), not 10 min.
    svc.signal("TERM");
    let status = svc.wait_exit(Duration::from_secs(40)).await;
    assert_eq!(status.code(), Some(0), "{}", svc.logs().join("\n"));
    assert_eq!(
        svc.log_events("test hook: slowing the consumer's close")
            .len(),
        1,
        "the stage task's close was slowed"
    );
    assert_eq!(
        svc.log_events("the [streams] stage task did not stop within the drain time")
            .len(),
        1
    );
}
