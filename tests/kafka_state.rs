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
use support::{brokers, produce, read_until, records, suffix, Service, Topics, MIN, T0, WAIT};

/// The thresholds of `tests/kafka.rs`, and a checkpoint every second.
const CONFIG: &str = r#"
[bulk_sms]
min_recipients = 20
[customer_fan_in]
min_customers = 10
[deal_line]
threshold = 0.5
[service]
batch_max_wait_ms = 20
retry_backoff_max_s = 2
drain_timeout_s = 20
checkpoint_interval_s = 1
"#;

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

fn ids(msgs: &[support::Msg]) -> BTreeSet<String> {
    msgs.iter()
        .map(|m| {
            serde_json::from_slice::<Alert>(&m.value)
                .expect("alert JSON")
                .alert_id
        })
        .collect()
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

/// Waits until the service has run all of `n` records through and written a checkpoint
/// after that.
async fn settled_and_checkpointed(svc: &Service, n: usize) {
    svc.wait_metric(r#"linewatch_records_total{result="valid"}"#, n as f64, WAIT)
        .await;
    let before = svc.metric("linewatch_checkpoint_write_seconds_count").await;
    svc.wait_metric(
        "linewatch_checkpoint_write_seconds_count",
        before + 2.0,
        WAIT,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_after_a_checkpoint_restores_it_and_rereads_nothing_before_it() {
    let b = brokers();
    let t = Topics::named("ckpt");
    t.create(1).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("linewatch.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let mut args = t.args(&b);
    args.extend(["--state-topic".into(), format!("ckpt-state-{}", suffix())]);

    let (one, two) = traffic("k");
    let all: Vec<String> = one.iter().chain(&two).cloned().collect();
    let want = want(&all);
    assert_eq!(want.len(), 3, "bulk_sms, customer_fan_in, deal_line");

    let mut first = Service::start(&cfg, &args);
    first.wait_ready(WAIT).await;
    produce(&t.input, &records(&one, true)).await;
    settled_and_checkpointed(&first, one.len()).await;
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(10)).await;
    drop(first);

    produce(&t.input, &records(&two, true)).await;
    let second = Service::start(&cfg, &args);
    let msgs = read_until(&t.alerts, WAIT, |m| ids(m) == want).await;
    assert_eq!(ids(&msgs), want, "every alert of replay, no other id");
    assert_eq!(
        second.metric("linewatch_records_rebuilt_total").await,
        0.0,
        "the checkpoint held everything committed: nothing re-read"
    );
    let restored = second.log_events("window state restored from a checkpoint");
    assert_eq!(restored.len(), 1, "{:?}", second.logs());
    assert_eq!(restored[0]["store"], "kafka");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_checkpoint_is_passed_over_and_the_alerts_are_the_same() {
    let b = brokers();
    let t = Topics::named("ckcor");
    t.create(1).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("linewatch.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let state = dir.path().join("state");
    let mut args = t.args(&b);
    args.extend([
        "--state-topic".into(),
        format!("ckcor-state-{}", suffix()),
        "--state-dir".into(),
        state.to_string_lossy().into_owned(),
    ]);

    let (one, two) = traffic("c");
    let all: Vec<String> = one.iter().chain(&two).cloned().collect();
    let want = want(&all);

    let mut first = Service::start(&cfg, &args);
    first.wait_ready(WAIT).await;
    produce(&t.input, &records(&one, true)).await;
    settled_and_checkpointed(&first, one.len()).await;
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(10)).await;
    drop(first);

    // Flip a byte in every chunk of the directory's checkpoints (<group>/<partition
    // set>/<slot>/chunk/*): both slots unusable there.
    let mut flipped = 0;
    for chunks in chunk_dirs(&state.join(&t.group)) {
        for e in std::fs::read_dir(&chunks).into_iter().flatten().flatten() {
            let mut bytes = std::fs::read(e.path()).unwrap();
            let at = bytes.len() - 1;
            bytes[at] ^= 0x5a;
            std::fs::write(e.path(), bytes).unwrap();
            flipped += 1;
        }
    }
    assert!(flipped >= 2, "checkpoints were written to the directory");

    produce(&t.input, &records(&two, true)).await;
    let second = Service::start(&cfg, &args);
    let msgs = read_until(&t.alerts, WAIT, |m| ids(m) == want).await;
    assert_eq!(ids(&msgs), want);
    assert!(
        second
            .metric(r#"linewatch_checkpoint_fallbacks_total{reason="corrupt"}"#)
            .await
            >= 1.0
    );
    // The topic's copy was whole: it was used.
    let restored = second.log_events("window state restored from a checkpoint");
    assert_eq!(restored.len(), 1, "{:?}", second.logs());
    assert_eq!(restored[0]["store"], "kafka");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_several_points_under_load_loses_no_alert() {
    let b = brokers();
    let t = Topics::named("ckkill");
    t.create(1).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("linewatch.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let mut args = t.args(&b);
    args.extend([
        "--state-topic".into(),
        format!("ckkill-state-{}", suffix()),
        "--state-dir".into(),
        dir.path().join("state").to_string_lossy().into_owned(),
    ]);
    let (one, two) = traffic("x");
    let all: Vec<String> = one.iter().chain(&two).cloned().collect();
    let want = want(&all);
    assert_eq!(want.len(), 3, "bulk_sms, customer_fan_in, deal_line");
    produce(&t.input, &records(&all, true)).await;

    // Killed while working through the backlog: between checkpoints, while one is being
    // copied or written (one a second), with batches in flight.
    for (i, after_ms) in [700u64, 1_300, 2_100].into_iter().enumerate() {
        let mut svc = Service::start(&cfg, &args);
        svc.wait_ready(WAIT).await;
        tokio::time::sleep(Duration::from_millis(after_ms)).await;
        svc.signal("KILL");
        svc.wait_exit(Duration::from_secs(10)).await;
        assert!(
            !svc.logs().iter().any(|l| l.contains("panicked")),
            "run {i}: {:?}",
            svc.logs()
        );
    }
    let last = Service::start(&cfg, &args);
    let msgs = read_until(&t.alerts, WAIT, |m| ids(m).is_superset(&want)).await;
    assert_eq!(ids(&msgs), want, "every alert of replay, and no other id");
    drop(last);
}
