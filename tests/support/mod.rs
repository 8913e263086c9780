//! Helpers for tests against a real Kafka broker: the broker address, topics with random
//! names, producing and reading messages, and the `linewatch` binary as a child process
//! whose JSON log lines the test can wait for; for the restart tests, a test's topics,
//! config file and arguments in one [`Setup`], and the start / kill -9 / restart steps.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

/// Event time of the broker tests' traffic (2026-05-28): in the past, since `run` rejects
/// records dated beyond the wall clock plus `engine.max_future_skew_s`.
pub const T0: i64 = 1_780_000_000_000;
pub const MIN: i64 = 60_000;
/// How long a broker test waits for what it expects.
pub const WAIT: Duration = Duration::from_secs(90);

/// The test broker, from `LINEWATCH_TEST_BROKERS`. Fails the test when it is not set:
/// a test that needs a broker must never pass by skipping.
pub fn brokers() -> String {
    match std::env::var("LINEWATCH_TEST_BROKERS") {
        Ok(b) if !b.trim().is_empty() => b,
        _ => panic!(
            "LINEWATCH_TEST_BROKERS is not set: run these tests with scripts/test.sh, which \
             starts a local Kafka broker (or `export LINEWATCH_TEST_BROKERS=$(deploy/local/kafka.sh up | tail -1)`)"
        ),
    }
}

/// The broker tests' config: thresholds low enough for a small, readable traffic, quick
/// retries and drain, then the test binary's own `[service]` settings. A macro so the
/// result stays a `const` (`concat!` takes literals only).
#[allow(unused_macros)] // each test binary uses a different subset
macro_rules! broker_test_config {
    ($service:literal) => {
        concat!(
            r#"
[bulk_sms]
min_recipients = 20
[customer_fan_in]
min_customers = 10
[deal_line]
threshold = 0.5
# The traffic is small and readable: a bulk send and the customers' fan-in, one-off kinds
# of evidence, which by default are no verdict without one that repeats. These tests are
# about delivery, not that rule (tests/new_number.rs and the unit tests cover it).
require_sustained = false
[service]
batch_max_wait_ms = 20
retry_backoff_max_s = 2
drain_timeout_s = 20
"#,
            $service
        )
    };
}
#[allow(unused_imports)]
pub(crate) use broker_test_config;

/// A random suffix for topic and group names, so tests never see each other's data.
pub fn suffix() -> String {
    use rand::Rng;
    let n: u64 = rand::thread_rng().gen();
    format!("{n:016x}")
}

/// Input, alert and dead-letter topic names of one test.
#[derive(Debug, Clone)]
pub struct Topics {
    pub input: String,
    pub alerts: String,
    pub dead: String,
    pub group: String,
}

impl Topics {
    /// Fresh names (not yet created).
    pub fn named(test: &str) -> Topics {
        let s = suffix();
        Topics {
            input: format!("{test}-in-{s}"),
            alerts: format!("{test}-alerts-{s}"),
            dead: format!("{test}-dead-{s}"),
            group: format!("{test}-group-{s}"),
        }
    }

    /// Creates the three topics; the input one with `partitions` partitions.
    pub async fn create(&self, partitions: i32) {
        create_topics(&[
            (&self.input, partitions),
            (&self.alerts, 1),
            (&self.dead, 1),
        ])
        .await;
    }

    /// The `linewatch run` flags naming these topics and the broker.
    pub fn args(&self, brokers: &str) -> Vec<String> {
        vec![
            "--brokers".into(),
            brokers.into(),
            "--group".into(),
            self.group.clone(),
            "--input-topic".into(),
            self.input.clone(),
            "--alert-topic".into(),
            self.alerts.clone(),
            "--dead-letter-topic".into(),
            self.dead.clone(),
        ]
    }
}

/// One broker test's topics (created), its config file in a temporary folder that lives as
/// long as this, and the `linewatch run` arguments naming them.
pub struct Setup {
    pub topics: Topics,
    pub cfg: PathBuf,
    pub args: Vec<String>,
    pub dir: tempfile::TempDir,
}

impl Setup {
    /// Fresh topics named after `test` (the input one with `partitions` partitions) and
    /// `config` written to `linewatch.toml`.
    pub async fn new(test: &str, partitions: i32, config: &str) -> Setup {
        let topics = Topics::named(test);
        topics.create(partitions).await;
        let dir = tempfile::tempdir().expect("temporary folder");
        let cfg = dir.path().join("linewatch.toml");
        std::fs::write(&cfg, config).expect("write the config file");
        let args = topics.args(&brokers());
        Setup {
            topics,
            cfg,
            args,
            dir,
        }
    }

    /// [`Setup::new`] with a fresh state topic (`--state-topic <test>-state-<random>`),
    /// which the service creates: checkpoints go there.
    pub async fn with_state_topic(test: &str, partitions: i32, config: &str) -> Setup {
        Setup::new(test, partitions, config)
            .await
            .arg("--state-topic", &format!("{test}-state-{}", suffix()))
    }

    /// One more `run` flag and its value.
    pub fn arg(mut self, flag: &str, value: &str) -> Setup {
        self.args.extend([flag.to_string(), value.to_string()]);
        self
    }

    /// The local checkpoint folder that [`Setup::with_state_dir`] names.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Checkpoints to a local folder as well (`--state-dir`), besides the state topic.
    pub fn with_state_dir(self) -> Setup {
        let dir = self.state_dir();
        self.arg("--state-dir", &dir.to_string_lossy())
    }

    /// Another config file in the test's folder, e.g. one per group member.
    pub fn config_file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).expect("write the config file");
        path
    }

    /// `linewatch run` with the test's config file and arguments.
    pub fn start(&self) -> Service {
        Service::start(&self.cfg, &self.args)
    }

    /// [`Setup::start`], then waits until it is ready.
    pub async fn start_ready(&self) -> Service {
        Service::start_ready(&self.cfg, &self.args).await
    }
}

/// Creates topics with the admin client (the broker does not create them on its own).
pub async fn create_topics(topics: &[(&str, i32)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("admin client");
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(t, p)| NewTopic::new(t, *p, TopicReplication::Fixed(1)))
        .collect();
    let results = admin
        .create_topics(&new, &AdminOptions::new())
        .await
        .expect("create_topics request");
    for r in results {
        r.expect("topic created");
    }
}

/// Produces `(key, value)` records in order; returns each one's (partition, offset).
pub async fn produce(topic: &str, records: &[(Option<String>, Vec<u8>)]) -> Vec<(i32, i64)> {
    produce_to(topic, records, |_| None).await
}

/// Produces `(key, value)` records in order, record `i` to partition `partition(i)` when that
/// says one (else the producer's partitioner picks); returns each one's (partition, offset).
pub async fn produce_to(
    topic: &str,
    records: &[(Option<String>, Vec<u8>)],
    mut partition: impl FnMut(usize) -> Option<i32>,
) -> Vec<(i32, i64)> {
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let mut futures = Vec::with_capacity(records.len());
    for (i, (k, v)) in records.iter().enumerate() {
        let mut rec = FutureRecord::<str, [u8]>::to(topic).payload(v.as_slice());
        if let Some(k) = k {
            rec = rec.key(k.as_str());
        }
        if let Some(p) = partition(i) {
            rec = rec.partition(p);
        }
        loop {
            match p.send_result(rec) {
                Ok(f) => {
                    futures.push(f);
                    break;
                }
                Err((_, r)) => {
                    rec = r;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
    let mut out = Vec::with_capacity(futures.len());
    for f in futures {
        let d = f.await.expect("delivery future").expect("delivered");
        out.push((d.partition, d.offset));
    }
    out
}

/// A generated city's records as JSONL lines, in file order (its late records, duplicates
/// and malformed lines included).
pub fn city_lines(opts: &linewatch::generate::GenOptions) -> Vec<String> {
    let (events, _, _) = linewatch::generate::generate_in_memory(opts).expect("generate");
    String::from_utf8(events)
        .expect("generated records are UTF-8")
        .lines()
        .map(str::to_string)
        .collect()
}

/// JSONL lines as keyless or `from`-keyed records.
pub fn records(lines: &[String], key_by_from: bool) -> Vec<(Option<String>, Vec<u8>)> {
    lines
        .iter()
        .map(|l| {
            let key = key_by_from.then(|| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["from"].as_str().map(str::to_string))
                    .unwrap_or_default()
            });
            (key, l.as_bytes().to_vec())
        })
        .collect()
}

/// The `alert_id` of every alert message.
pub fn alert_ids(msgs: &[Msg]) -> BTreeSet<String> {
    msgs.iter()
        .map(|m| {
            serde_json::from_slice::<linewatch::alert::Alert>(&m.value)
                .expect("alert JSON")
                .alert_id
        })
        .collect()
}

/// Reads the alert topic from the start until it holds every id of `want` or [`WAIT`]
/// passes; returns the ids read either way (the caller's assertion says what is missing,
/// or what is there that should not be).
pub async fn read_alert_ids(topic: &str, want: &BTreeSet<String>) -> BTreeSet<String> {
    alert_ids(&read_until(topic, WAIT, |m| alert_ids(m).is_superset(want)).await)
}

/// One message read back.
#[derive(Debug, Clone)]
pub struct Msg {
    pub key: Option<String>,
    pub value: Vec<u8>,
    pub headers: BTreeMap<String, String>,
    pub partition: i32,
    pub offset: i64,
}

/// A message's headers as text (a header without a value as the empty string).
pub fn headers(m: &impl Message) -> BTreeMap<String, String> {
    m.headers()
        .map(|h| {
            h.iter()
                .map(|h| {
                    (
                        h.key.to_string(),
                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// With `LW_DEBUG_MISSED` set, prints each (detector, subject) pair `want` has and `got`
/// lacks (MISSED) or the other way round (EXTRA), with the stage partition of its subject
/// among `partitions` and its event time: test data only, to find where a group lost
/// what `replay` finds.
pub fn debug_missed_pairs(
    want: &[linewatch::alert::Alert],
    got: &[linewatch::alert::Alert],
    partitions: usize,
) {
    if std::env::var("LW_DEBUG_MISSED").is_err() {
        return;
    }
    let pairs = |v: &[linewatch::alert::Alert]| -> BTreeSet<(String, String)> {
        v.iter()
            .map(|a| (a.detector.clone(), a.subject.clone()))
            .collect()
    };
    let (a, b) = (pairs(want), pairs(got));
    for x in want.iter().chain(got) {
        let k = (x.detector.clone(), x.subject.clone());
        let side = match (a.contains(&k), b.contains(&k)) {
            (true, false) => "MISSED",
            (false, true) => "EXTRA",
            _ => continue,
        };
        eprintln!(
            "{side} {} {} partition {} event_time {} id {}",
            x.detector,
            x.subject,
            linewatch::engine::shard_of(linewatch::ids::id(&x.subject), partitions),
            x.event_time,
            x.alert_id
        );
    }
}

/// A consumer of `topic` from the start, in a group of its own, that sees only committed
/// transactions (`isolation.level = read_committed`).
pub fn read_committed_reader(topic: &str) -> StreamConsumer {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("reader-{}", suffix()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .expect("reader");
    c.subscribe(&[topic]).expect("subscribe");
    c
}

/// Every alert on `topic`, read `read_committed` from the start, once no new one has come
/// for `quiet` (or `limit` has passed).
pub async fn read_committed_alerts(
    topic: &str,
    quiet: Duration,
    limit: Duration,
) -> Vec<linewatch::alert::Alert> {
    let c = read_committed_reader(topic);
    let start = Instant::now();
    let mut last = Instant::now();
    let mut out = Vec::new();
    while last.elapsed() < quiet && start.elapsed() < limit {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(500), c.recv()).await {
            out.push(serde_json::from_slice(m.payload().unwrap_or_default()).expect("alert JSON"));
            last = Instant::now();
        }
    }
    out
}

/// Reads `topic` from the start until `done` says enough or `timeout` passes; returns what
/// was read either way (the caller's assertion says what was missing).
pub async fn read_until(topic: &str, timeout: Duration, done: impl Fn(&[Msg]) -> bool) -> Vec<Msg> {
    read_until_as(topic, "read_uncommitted", timeout, done).await
}

/// [`read_until`] seeing only committed transactions (`isolation.level = read_committed`).
pub async fn read_until_committed(
    topic: &str,
    timeout: Duration,
    done: impl Fn(&[Msg]) -> bool,
) -> Vec<Msg> {
    read_until_as(topic, "read_committed", timeout, done).await
}

async fn read_until_as(
    topic: &str,
    isolation: &str,
    timeout: Duration,
    done: impl Fn(&[Msg]) -> bool,
) -> Vec<Msg> {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("reader-{}", suffix()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .create()
        .expect("reader");
    c.subscribe(&[topic]).expect("subscribe");
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while !done(&out) && Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left.min(Duration::from_millis(500)), c.recv()).await {
            Ok(Ok(m)) => {
                out.push(Msg {
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    value: m.payload().unwrap_or_default().to_vec(),
                    headers: headers(&m),
                    partition: m.partition(),
                    offset: m.offset(),
                });
            }
            Ok(Err(e)) => panic!("reading {topic}: {e}"),
            Err(_) => {}
        }
    }
    out
}

/// The `linewatch run` binary as a child process; killed when dropped.
pub struct Service {
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Service {
    /// Starts `linewatch --config <config> run <args> --http 127.0.0.1:0 --log-format json`.
    pub fn start(config: &Path, args: &[String]) -> Service {
        Service::start_command(config, "run", args)
    }

    /// Starts `linewatch --config <config> <command> <args> --http 127.0.0.1:0 --log-format
    /// json` (`run`, or another long-running command such as `board`).
    pub fn start_command(config: &Path, command: &str, args: &[String]) -> Service {
        Service::start_with_env(config, command, args, &[])
    }

    /// [`Service::start_command`] with extra environment variables (test hooks).
    pub fn start_with_env(
        config: &Path,
        command: &str,
        args: &[String],
        env: &[(&str, &str)],
    ) -> Service {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_linewatch"));
        cmd.arg("--config")
            .arg(config)
            .arg(command)
            .args(args)
            .args(["--http", "127.0.0.1:0", "--log-format", "json"])
            .env("LINEWATCH_LOG", "info,librdkafka=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // The developer's own settings must not leak into the test's service.
        for (k, _) in std::env::vars() {
            if k.starts_with("LINEWATCH_") && k != "LINEWATCH_LOG" {
                cmd.env_remove(k);
            }
        }
        cmd.envs(env.iter().copied());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start linewatch {command}: {e}"));
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Service { child, logs }
    }

    /// [`Service::start`], then waits until `/readyz` answers 200.
    pub async fn start_ready(config: &Path, args: &[String]) -> Service {
        let svc = Service::start(config, args);
        svc.wait_ready(WAIT).await;
        svc
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every log line so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Log lines whose `message` contains `text`, as JSON.
    pub fn log_events(&self, text: &str) -> Vec<serde_json::Value> {
        self.logs()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"].as_str().is_some_and(|m| m.contains(text)))
            .collect()
    }

    /// Waits until `n` log lines' messages contain `text`; panics with the log if not.
    pub async fn wait_log(
        &self,
        text: &str,
        n: usize,
        timeout: Duration,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self.log_events(text);
            if found.len() >= n {
                return found;
            }
            if Instant::now() >= deadline {
                panic!(
                    "no {n} log lines with {text:?} within {timeout:?}; log:\n{}",
                    self.logs().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The admin HTTP address the service bound (it was asked for port 0).
    pub async fn http_addr(&self) -> String {
        let ev = self
            .wait_log("admin HTTP listening", 1, Duration::from_secs(30))
            .await;
        ev[0]["addr"].as_str().expect("addr field").to_string()
    }

    /// GET `path` on the admin server: (status code, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        let addr = self.http_addr().await;
        http_get(&addr, path)
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let (code, body) = self.get("/readyz").await;
            if code == 200 {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "not ready within {timeout:?} ({code} {body}); log:\n{}",
                    self.logs().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The value of one series in `/metrics` (0 when absent).
    pub async fn metric(&self, series: &str) -> f64 {
        let (_, body) = self.get("/metrics").await;
        metric_value(&body, series)
    }

    /// Waits until a series reaches at least `want`.
    pub async fn wait_metric(&self, series: &str, want: f64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.metric(series).await;
            if v >= want {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{series} = {v}, wanted {want} within {timeout:?}; log:\n{}",
                    self.logs().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Sends a signal by name (`TERM`, `HUP`, `INT`).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// SIGKILL, as a crash: no drain, no commit, no last checkpoint. Waits until it is gone.
    pub async fn kill_9(&mut self) {
        self.signal("KILL");
        self.wait_exit(Duration::from_secs(10)).await;
    }

    /// Waits until the service has run `n` records through and written two checkpoints
    /// after that (the first may have been under way before the last record).
    pub async fn wait_checkpointed(&self, n: usize) {
        self.wait_metric(r#"linewatch_records_total{result="valid"}"#, n as f64, WAIT)
            .await;
        let series = "linewatch_checkpoint_write_seconds_count";
        let before = self.metric(series).await;
        self.wait_metric(series, before + 2.0, WAIT).await;
    }

    /// The log events of restoring window state from a checkpoint.
    pub fn restores(&self) -> Vec<serde_json::Value> {
        self.log_events("window state restored from a checkpoint")
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// True once the process has exited.
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            if Instant::now() >= deadline {
                panic!(
                    "linewatch did not exit within {timeout:?}; log:\n{}",
                    self.logs().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- linewatch log ---\n{}", self.logs().join("\n"));
        }
    }
}

/// A minimal HTTP/1.1 GET (no client library needed for three plain-text endpoints).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to admin HTTP");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read response");
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// The value of `series` (name with labels, exactly as exposed) in Prometheus text.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// The sum of every series of a metric whose labels contain `label` (e.g. `partition="0"`).
pub fn metric_sum(text: &str, name: &str, label: &str) -> Option<f64> {
    let mut found = None;
    for l in text.lines().filter(|l| l.starts_with(name)) {
        let Some((series, value)) = l.rsplit_once(' ') else {
            continue;
        };
        if series.starts_with(&format!("{name}{{")) && series.contains(label) {
            *found.get_or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    found
}
