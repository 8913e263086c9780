//! Ingest: the alert topic into the board's database.
//!
//! A blocking thread polls a consumer that reads only committed messages
//! (`isolation.level = read_committed`), gathers a short batch and stores it with the offsets
//! reached in one SQLite transaction ([`Store::ingest`]). On start it resumes from the offsets
//! in the database, not the group's: those are the ones that match what is stored, so a
//! restart, even after a crash, neither loses nor repeats an alert.
//!
//! The board assigns itself every partition of the topic instead of joining a group
//! rebalance: each board keeps a whole copy in its own database, so two boards in one group
//! must not split the partitions. The group id is still used to commit the same offsets to
//! Kafka, so the usual lag tools show how far behind the board is.
//!
//! A message that is not a valid alert is counted by reason, logged with its partition and
//! offset (never its content) and skipped; its offset is stored like any other.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::metrics::BoardMetrics;
use super::store::{Consumed, Store};
use crate::alert::Alert;
use crate::kafka::{KafkaSettings, Role};

/// Most messages stored in one transaction.
const BATCH_MAX: usize = 1_000;
/// Longest a consumed message waits to be stored: a new alert is on the queue well within 2 s.
const BATCH_WAIT: Duration = Duration::from_millis(100);
/// How often the topic's partition count is checked again (a topic may grow).
const METADATA_EVERY: Duration = Duration::from_secs(30);
/// After a failed connection, how often the brokers are asked whether they answer again.
const PROBE_EVERY: Duration = Duration::from_secs(2);
/// How long the brokers may fail to answer before `/readyz` says so: as `run`'s, long enough
/// for a broker's rolling restart with its leaders moving.
const BROKERS_DOWN_GRACE: Duration = Duration::from_secs(10);

/// Readiness of the board and the sentence `/readyz` answers with; also what the queue page's
/// chip shows of the feed ([`Feed`]).
#[derive(Debug)]
pub struct Ready(Mutex<Feed>);

/// The ingest's state as the pages show it: whether alerts are being read and stored, the
/// `/readyz` sentence (no identifier and no `[kafka]` value is ever in it: it is made of
/// fixed words, counts, error kinds and the database's error), and since when (wall-clock
/// ms) `ok` has had its value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Feed {
    pub ok: bool,
    pub detail: String,
    pub since_ms: i64,
    /// Not reading yet, a board still starting ([`Ready::connecting`]): its first
    /// connection has neither read nor been given up on for 10 s (`BROKERS_DOWN_GRACE`). The
    /// page says "connecting", not that the feed is down: a board restarted in front of
    /// the operations room raised a red chip for the second its first read takes.
    pub connecting: bool,
}

impl Default for Ready {
    fn default() -> Ready {
        Ready(Mutex::new(Feed {
            ok: false,
            detail: String::new(),
            since_ms: now_ms(),
            connecting: false,
        }))
    }
}

impl Ready {
    fn lock(&self) -> std::sync::MutexGuard<'_, Feed> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set(&self, ready: bool, detail: impl Into<String>) {
        let mut g = self.lock();
        if g.ok != ready {
            g.since_ms = now_ms();
        }
        g.ok = ready;
        g.detail = detail.into();
        // A failed first attempt leaves the board connecting until the grace is out (the
        // brokers may only be slow to answer a board started with them); reading ends it.
        g.connecting &= !ready;
    }

    /// Not ready, as a board starting: connecting since now (see [`Feed::connecting`]).
    pub fn connecting(&self, detail: impl Into<String>) {
        *self.lock() = Feed {
            ok: false,
            detail: detail.into(),
            since_ms: now_ms(),
            connecting: true,
        };
    }

    pub fn get(&self) -> (bool, String) {
        let g = self.lock();
        (g.ok, g.detail.clone())
    }

    /// The whole state, for the pages: connecting no more once the first connection has
    /// failed to read for 10 s (`BROKERS_DOWN_GRACE`) (then the feed is down, since the start).
    pub fn feed(&self) -> Feed {
        self.feed_at(now_ms())
    }

    fn feed_at(&self, now_ms: i64) -> Feed {
        let mut f = self.lock().clone();
        let grace_ms = BROKERS_DOWN_GRACE.as_millis() as i64;
        f.connecting &= now_ms.saturating_sub(f.since_ms) < grace_ms;
        f
    }

    /// Ready, reading `partitions`; returns whether it was not ready before. Called for every
    /// message: when ready already, it changes (and formats) nothing.
    pub fn mark_reading(&self, partitions: usize) -> bool {
        let mut g = self.lock();
        if g.ok {
            return false;
        }
        *g = Feed {
            ok: true,
            detail: format!("reading {partitions} partition(s)"),
            since_ms: now_ms(),
            connecting: false,
        };
        true
    }
}

/// What ingest needs.
pub struct Ingest {
    pub kafka: KafkaSettings,
    pub topic: String,
    pub group_id: String,
    pub db_path: PathBuf,
    pub metrics: BoardMetrics,
    /// Told the number of new alerts after each commit (the pages' live updates).
    pub events: tokio::sync::broadcast::Sender<u64>,
    pub ready: Arc<Ready>,
    pub stop: Arc<AtomicBool>,
    pub retry_backoff_max: Duration,
    /// `engine.raw_identifier_guard`: whether alerts are checked for raw identifiers.
    pub raw_guard: bool,
}

/// Most `related` identities an alert may name: linewatch's own name a line's predecessors,
/// handsets and SIMs, a few dozen at most. The alert page looks each one up; thousands
/// would hold every page of the board for seconds.
pub const MAX_RELATED: usize = 1_000;

/// Decodes one message value; `Err` is the fixed reason code it is skipped with:
///
/// - `invalid_json`: not JSON;
/// - `not_an_alert`: not the contract's alert (a field missing or ill-typed, an empty id,
///   subject or detector, a score outside [0, 1], an event or detection time outside the
///   years 2000-2200 that records are held to, more than [`MAX_RELATED`] related);
/// - `bad_pseudonym`: a subject or related identity that is not a pseudonym's shape
///   (control or bidirectional characters, spaces, over 128 bytes);
/// - `raw_identifier`: a subject, related identity, or evidence string, key or number in
///   the shape of a phone number, IMSI or IMEI (a number: one of 10 to 15 digits that
///   cannot be a time). The board never stores, shows or exports a raw identifier,
///   whoever wrote the message.
pub fn decode(payload: Option<&[u8]>) -> Result<Alert, &'static str> {
    decode_with(payload, true)
}

/// [`decode`], with the raw-identifier checks only when `raw_guard` (the input side's
/// `engine.raw_identifier_guard`: off where pseudonyms are numeric by design, so the board
/// reading the same file takes the same pseudonyms).
pub fn decode_with(payload: Option<&[u8]>, raw_guard: bool) -> Result<Alert, &'static str> {
    use crate::event::{check_pseudonym, Reason, TS_MAX, TS_MIN};
    let bytes = payload.ok_or("invalid_json")?;
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|_| "invalid_json")?;
    let a: Alert = serde_json::from_value(value).map_err(|_| "not_an_alert")?;
    let ok = !a.alert_id.is_empty()
        && a.alert_id.len() <= 128
        && !a.subject.is_empty()
        && !a.detector.is_empty()
        && a.score.is_finite()
        && (0.0..=1.0).contains(&a.score)
        && (TS_MIN..TS_MAX).contains(&a.event_time)
        && (TS_MIN..TS_MAX).contains(&a.detected_at)
        && a.related.len() <= MAX_RELATED;
    if !ok {
        return Err("not_an_alert");
    }
    for s in std::iter::once(&a.subject).chain(&a.related) {
        match check_pseudonym(s) {
            Ok(()) => {}
            Err(Reason::RawIdentifier) if !raw_guard => {}
            Err(r) => return Err(r.as_str()),
        }
    }
    if raw_guard && a.evidence.iter().any(|(k, v)| holds_raw(k, v)) {
        return Err("raw_identifier");
    }
    Ok(a)
}

/// Whether an evidence entry's key, or any string, key or number inside its value, is in
/// the shape of a raw identifier: the whole string, the string with its spaces taken out
/// (`07700 900123`, as people write numbers), or any word of it; a number as
/// [`raw_number`] reads it.
fn holds_raw(key: &str, v: &serde_json::Value) -> bool {
    use serde_json::Value;
    let looks = crate::event::looks_raw;
    let raw = |s: &str| {
        looks(s.trim())
            || looks(&s.split_whitespace().collect::<String>())
            || s.split(|c: char| c.is_whitespace() || c == ',').any(looks)
    };
    raw(key)
        || match v {
            Value::String(s) => raw(s),
            Value::Array(xs) => xs.iter().any(|x| holds_raw("", x)),
            Value::Object(m) => m.iter().any(|(k, x)| holds_raw(k, x)),
            Value::Number(n) => raw_number(n),
            _ => false,
        }
}

/// Whether a JSON number in evidence is a raw identifier written as a number: a whole
/// number of 10 to 15 digits (as [`crate::event::looks_raw`] counts them) that is not a
/// time the records could hold, in seconds or in milliseconds (2000 to 2200). Figures
/// (counts, scores, spans) have fewer digits, and times are told apart by their range: no
/// UK number written whole (`447700900123`: 1984 read as milliseconds), a national mobile
/// number without its zero (`7700900123`: 2214 read as seconds), an IMSI or an IMEI (15
/// digits, past 2200 in milliseconds) falls in either. A number another country's plan
/// gives, that reads as a time of this century, is not caught.
fn raw_number(n: &serde_json::Number) -> bool {
    use crate::event::{TS_MAX, TS_MIN};
    let v = match (n.as_u64(), n.as_f64()) {
        (Some(u), _) => u,
        (None, Some(f)) if f.fract() == 0.0 && (0.0..1e15).contains(&f) => f as u64,
        _ => return false,
    };
    let digits = 1_000_000_000..1_000_000_000_000_000;
    let secs = TS_MIN as u64 / 1000..TS_MAX as u64 / 1000;
    let ms = TS_MIN as u64..TS_MAX as u64;
    digits.contains(&v) && !secs.contains(&v) && !ms.contains(&v)
}

fn now_ms() -> i64 {
    crate::board::http::now_ms()
}

/// Turns off what the service's consumer defaults ask for and the board has no use for:
/// librdkafka's statistics (the service's lag gauges) and partition-EOF events (the service's
/// event-time alignment). Through rdkafka's default context the board logged a ~5 KB
/// "Client stats" line at INFO every second and each normal end of a partition as an ERROR
/// ("Global error: PartitionEOF"). Set after `[kafka]`: the board reads neither.
fn board_consumer_quiet(cfg: &mut rdkafka::ClientConfig) {
    cfg.set("statistics.interval.ms", "0");
    cfg.set("enable.partition.eof", "false");
}

/// The consumer's context: notes an authentication failure (the brokers refused our
/// credentials or TLS: retrying cannot mend it, so the board stops, as `run` does), and
/// lets librdkafka's errors and log lines through once per 30 s per kind. Through rdkafka's
/// default context an unreachable broker logged a line every retry.
#[derive(Default)]
pub struct BoardContext {
    auth_failure: Mutex<Option<String>>,
    throttle: crate::service::Throttle,
}

impl BoardContext {
    /// Why the brokers refused us, once they have.
    pub fn auth_failure(&self) -> Option<String> {
        self.auth_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl ClientContext for BoardContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        let kind = match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => "log_error",
            RDKafkaLogLevel::Warning => "log_warning",
            _ => return,
        };
        if self.throttle.allow(kind) {
            tracing::warn!(facility = fac, message = log_message, "Kafka client log");
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let kind = crate::kafka::error_kind(&error);
        if crate::kafka::is_auth_failure(&error) {
            let mut a = self.auth_failure.lock().unwrap_or_else(|p| p.into_inner());
            a.get_or_insert_with(|| reason.to_string());
        }
        if self.throttle.allow(kind) {
            tracing::warn!(kind, reason, "Kafka client error");
        }
    }
}

impl ConsumerContext for BoardContext {}

/// What ended the ingest other than a stop: the brokers refused the board's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFailed(pub String);

/// The alert topic's consumer as the board configures it.
pub fn consumer_config(kafka: &KafkaSettings, group_id: &str) -> rdkafka::ClientConfig {
    let mut cfg = kafka.client_config(Role::Consumer);
    cfg.set("group.id", group_id);
    // Alerts of an aborted transaction are never shown.
    cfg.set("isolation.level", "read_committed");
    board_consumer_quiet(&mut cfg);
    cfg
}

impl Ingest {
    /// Runs until `stop`; errors are logged, counted and retried, but for refused
    /// credentials, which end it (the board then stops, saying so).
    pub fn run(self) -> Result<(), AuthFailed> {
        let mut backoff = Duration::from_secs(1);
        while !self.stop.load(Ordering::Relaxed) {
            let mut context = None;
            let result = self.session(&mut context);
            if let Some(reason) = context.and_then(|c| c.auth_failure()) {
                self.ready
                    .set(false, "the brokers refused the board's credentials");
                return Err(AuthFailed(reason));
            }
            match result {
                Ok(()) => return Ok(()),
                Err(e) => {
                    self.metrics.ingest_errors.inc();
                    self.ready.set(false, format!("ingest: {e}; retrying"));
                    tracing::warn!(error = %e, "board ingest failed; retrying");
                    self.sleep(backoff);
                    backoff = (backoff * 2).min(self.retry_backoff_max);
                }
            }
        }
        Ok(())
    }

    fn sleep(&self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end && !self.stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One consumer from start to stop (or to the first error that needs a fresh one).
    /// `context` is given the consumer's context, for what it noted once this returns.
    fn session(&self, context: &mut Option<Arc<BoardContext>>) -> Result<(), String> {
        let mut store = Store::open(&self.db_path).map_err(|e| e.to_string())?;
        let consumer: BaseConsumer<BoardContext> = consumer_config(&self.kafka, &self.group_id)
            .create_with_context(BoardContext::default())
            .map_err(|e| self.kafka.creation_message(&e))?;
        *context = Some(consumer.context().clone());
        let mut partitions = self.assign(&consumer, &store, 0)?;
        self.ready
            .set(true, format!("reading {} partition(s)", partitions));
        let mut last_meta = Instant::now();
        // Since when a connection to the brokers failed with no answer since.
        let mut down_since: Option<Instant> = None;
        let mut last_probe = Instant::now();
        let mut batch: Vec<Consumed> = Vec::new();
        let mut first_at: Option<Instant> = None;
        loop {
            let stopping = self.stop.load(Ordering::Relaxed);
            let due = first_at.is_some_and(|t| t.elapsed() >= BATCH_WAIT);
            if !batch.is_empty() && (stopping || due || batch.len() >= BATCH_MAX) {
                self.store(&mut store, &consumer, &batch)?;
                batch.clear();
                first_at = None;
            }
            if stopping {
                return Ok(());
            }
            if consumer.context().auth_failure().is_some() {
                return Err("the brokers refused the board's credentials".into());
            }
            if let Some(since) = down_since {
                if last_probe.elapsed() >= PROBE_EVERY {
                    last_probe = Instant::now();
                    match consumer.fetch_metadata(Some(&self.topic), PROBE_EVERY) {
                        Ok(_) => {
                            down_since = None;
                            if self.ready.mark_reading(partitions) {
                                tracing::info!("board reading the alert topic again");
                            }
                        }
                        Err(e) if since.elapsed() >= BROKERS_DOWN_GRACE => {
                            self.ready.set(
                                false,
                                format!(
                                    "the brokers have not answered for {} s ({}); retrying",
                                    since.elapsed().as_secs(),
                                    crate::kafka::error_kind(&e)
                                ),
                            );
                        }
                        Err(_) => {}
                    }
                }
            }
            if last_meta.elapsed() >= METADATA_EVERY && batch.is_empty() {
                last_meta = Instant::now();
                partitions = self.assign(&consumer, &store, partitions)?;
                // The topic's metadata came back: the brokers answer again (and the
                // partition count may have grown).
                self.ready
                    .set(true, format!("reading {partitions} partition(s)"));
            }
            match consumer.poll(Duration::from_millis(20)) {
                None => {}
                Some(Ok(m)) => {
                    if self.ready.mark_reading(partitions) {
                        tracing::info!("board reading the alert topic again");
                    }
                    let alert = match decode_with(m.payload(), self.raw_guard) {
                        Ok(a) => Some(a),
                        Err(reason) => {
                            self.metrics.invalid.with_label_values(&[reason]).inc();
                            tracing::warn!(
                                partition = m.partition(),
                                offset = m.offset(),
                                reason,
                                "skipped a message on the alert topic that is not a valid alert"
                            );
                            None
                        }
                    };
                    batch.push(Consumed {
                        topic: m.topic().to_string(),
                        partition: m.partition(),
                        offset: m.offset(),
                        alert,
                    });
                    first_at.get_or_insert_with(Instant::now);
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => {
                    self.metrics.ingest_errors.inc();
                    // A connection failed: from now the brokers are asked (below) until
                    // they answer; an outage shows on /readyz once it has lasted the grace.
                    if matches!(
                        e.rdkafka_error_code(),
                        Some(
                            rdkafka::types::RDKafkaErrorCode::AllBrokersDown
                                | rdkafka::types::RDKafkaErrorCode::BrokerTransportFailure
                        )
                    ) {
                        down_since.get_or_insert_with(Instant::now);
                    }
                    tracing::warn!(error = %self.kafka.mask(&e.to_string()), "alert topic consumer error");
                }
            }
        }
    }

    /// Assigns every partition of the topic at the database's offsets when there are more
    /// than `known`; returns the partition count.
    fn assign(
        &self,
        consumer: &BaseConsumer<BoardContext>,
        store: &Store,
        known: usize,
    ) -> Result<usize, String> {
        let md = consumer
            .fetch_metadata(Some(&self.topic), Duration::from_secs(10))
            .map_err(|e| format!("metadata of the alert topic: {e}"))?;
        let n = md
            .topics()
            .iter()
            .find(|t| t.name() == self.topic)
            .filter(|t| t.error().is_none())
            .map_or(0, |t| t.partitions().len());
        if n == 0 {
            return Err(format!("alert topic {:?} not found", self.topic));
        }
        if n <= known {
            return Ok(known);
        }
        let stored = store.offsets(&self.topic).map_err(|e| e.to_string())?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..n as i32 {
            let mut offset = stored
                .iter()
                .find(|(q, _)| *q == p)
                .map_or(Offset::Beginning, |(_, o)| Offset::Offset(*o));
            // Past the partition's end: the topic was recreated (or its data lost) since
            // the offset was stored. Read it from the start; alerts already stored are not
            // stored twice (by alert_id).
            if let Offset::Offset(o) = offset {
                let (_, end) = consumer
                    .fetch_watermarks(&self.topic, p, Duration::from_secs(10))
                    .map_err(|e| format!("end offsets of the alert topic: {e}"))?;
                if o > end {
                    tracing::warn!(
                        partition = p,
                        stored_offset = o,
                        end_offset = end,
                        "the board's stored offset is past the end of the alert topic's partition: the topic was recreated or lost data; reading the partition from its start (alerts already stored are not stored twice)"
                    );
                    offset = Offset::Beginning;
                }
            }
            tpl.add_partition_offset(&self.topic, p, offset)
                .map_err(|e| e.to_string())?;
        }
        consumer.assign(&tpl).map_err(|e| e.to_string())?;
        tracing::info!(partitions = n, "board reading the alert topic");
        Ok(n)
    }

    /// Stores a batch, retrying a failed transaction (nothing of it was kept) until it is in.
    fn store(
        &self,
        store: &mut Store,
        consumer: &BaseConsumer<BoardContext>,
        batch: &[Consumed],
    ) -> Result<(), String> {
        let mut backoff = Duration::from_millis(200);
        let mut failed = false;
        let got = loop {
            match store.ingest(batch, now_ms()) {
                Ok(got) => {
                    if failed {
                        self.ready.set(true, "reading the alert topic");
                    }
                    break got;
                }
                Err(e) => {
                    self.metrics.ingest_errors.inc();
                    failed = true;
                    self.ready
                        .set(false, format!("storing alerts failed ({e}); retrying"));
                    tracing::warn!(error = %e, "storing alerts failed; retrying");
                    if self.stop.load(Ordering::Relaxed) && backoff > Duration::from_secs(5) {
                        // Not stored and not acknowledged: the next start reads it again.
                        return Err(e.to_string());
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        };
        self.metrics.ingested.inc_by(got.inserted);
        self.metrics.duplicates.inc_by(got.duplicate);
        if let (Ok(total), Ok(new)) = (store.count(), store.untriaged()) {
            self.metrics.stored.set(total as i64);
            self.metrics.untriaged.set(new as i64);
        }
        if got.inserted > 0 {
            // No page listening is not an error.
            let _ = self.events.send(got.inserted);
        }
        // The group's offsets only show lag to Kafka's tools; the database's are the truth.
        let mut tpl = TopicPartitionList::new();
        for c in batch {
            let _ = tpl.add_partition_offset(&c.topic, c.partition, Offset::Offset(c.offset + 1));
        }
        if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
            tracing::debug!(error = %e, "group offset commit failed (lag display only)");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{decode, Ready, BROKERS_DOWN_GRACE};
    use std::collections::BTreeSet;

    #[test]
    fn the_board_consumer_asks_for_no_statistics_and_no_partition_eof() {
        use crate::kafka::{KafkaSettings, Role};
        let mut props = std::collections::BTreeMap::new();
        props.insert("statistics.interval.ms".to_string(), "5000".to_string());
        let settings = KafkaSettings::new("b:9092", props);
        let mut cfg = settings.client_config(Role::Consumer);
        super::board_consumer_quiet(&mut cfg);
        assert_eq!(cfg.get("statistics.interval.ms"), Some("0"));
        assert_eq!(cfg.get("enable.partition.eof"), Some("false"));
        // The service's consumer keeps both.
        let run = KafkaSettings::new("b:9092", Default::default()).client_config(Role::Consumer);
        assert_eq!(run.get("statistics.interval.ms"), Some("1000"));
        assert_eq!(run.get("enable.partition.eof"), Some("true"));
    }

    /// The guard reads every number in evidence, so it must pass every alert linewatch
    /// itself makes: each detector's, with its times in milliseconds and seconds, its
    /// figures and its contributions. A city with a cell map (runners too), replayed.
    #[test]
    fn every_alert_linewatch_makes_passes_the_raw_identifier_guard() {
        use crate::generate::{self, GenOptions};
        let opts = GenOptions {
            seed: 2,
            subscribers: 3_000,
            days: 4,
            ..GenOptions::default()
        };
        let (events, _, _) = generate::generate_in_memory(&opts).expect("generate");
        let mut csv = Vec::new();
        generate::write_cells(&opts, &mut csv).expect("cells");
        let mut e = crate::engine::Engine::new(crate::config::Config::default());
        let map = crate::cells::CellMap::parse(&csv).expect("cell map");
        e.set_cells(Some(std::sync::Arc::new(map)));
        let mut alerts = Vec::new();
        for l in events.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            e.process(l, 0, 1_900_000_000_000, &mut alerts);
        }
        e.flush(1_900_000_000_000, &mut alerts);
        let (mut detectors, mut long_numbers) = (BTreeSet::new(), 0);
        for a in &alerts {
            let payload = serde_json::to_vec(a).unwrap();
            let got = decode(Some(&payload));
            assert!(
                got.is_ok(),
                "{got:?}: {}",
                String::from_utf8_lossy(&payload)
            );
            detectors.insert(a.detector.clone());
            let text = serde_json::to_string(&a.evidence).unwrap();
            long_numbers += text
                .split(|c: char| !c.is_ascii_digit())
                .filter(|d| d.len() >= 10)
                .count();
        }
        // Every detector fired, and their evidence holds numbers of ten digits and more
        // (times) for the guard to pass.
        assert_eq!(
            detectors.len(),
            crate::detect::DETECTORS.len(),
            "{detectors:?}"
        );
        assert!(
            long_numbers > 0,
            "no long number in {} alerts",
            alerts.len()
        );
    }

    #[test]
    fn raw_identifiers_and_odd_pseudonyms_are_never_stored() {
        let a = crate::board::store::tests::alert("a1", "bulk_sms", "L", 0.5, 1_780_000_000_000);
        let v = serde_json::to_value(&a).unwrap();
        let with = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut w = v.clone();
            f(&mut w);
            decode(Some(w.to_string().as_bytes()))
        };
        assert!(with(&|_| {}).is_ok());
        let reason = |f: &dyn Fn(&mut serde_json::Value)| with(f).unwrap_err();
        assert_eq!(
            reason(&|w| w["subject"] = "07700900123".into()),
            "raw_identifier"
        );
        assert_eq!(
            reason(&|w| w["subject"] = "234150999999999".into()),
            "raw_identifier"
        );
        assert_eq!(
            reason(&|w| w["subject"] = "+44 7700 900123".into()),
            "bad_pseudonym"
        );
        assert_eq!(
            reason(&|w| w["subject"] = "L\u{202e}evil".into()),
            "bad_pseudonym"
        );
        assert_eq!(
            reason(&|w| w["subject"] = "x".repeat(5000).into()),
            "bad_pseudonym"
        );
        assert_eq!(
            reason(&|w| w["related"] = serde_json::json!(["Lok", "tel:+447700900123"])),
            "raw_identifier"
        );
        for raw in [
            "07700 900123",
            "new number 07700900123",
            "sip:+447700900123@ims.example",
        ] {
            assert_eq!(
                reason(&|w| w["evidence"]["number"] = raw.into()),
                "raw_identifier",
                "{raw}"
            );
        }
        assert_eq!(
            reason(&|w| w["evidence"]["deep"] = serde_json::json!([{"07700900123": 1}])),
            "raw_identifier"
        );
        // A pseudonym's hex holds ten-digit runs by chance; figures and times are numbers.
        assert!(with(&|w| {
            w["evidence"]["line"] = "H6e8128280909a981".into();
            w["evidence"]["handover_at"] = serde_json::json!(1_796_379_870_000_i64);
            w["evidence"]["since_s"] = serde_json::json!(1_796_379_870_i64);
            w["evidence"]["window_s"] = serde_json::json!(345_600);
            w["evidence"]["score"] = serde_json::json!(0.85);
            w["evidence"]["deep"] = serde_json::json!([{"at": 1_796_379_870_000_i64}]);
        })
        .is_ok());
        // A raw identifier written as a JSON number, whole or as a float, at any depth: a
        // UK number whole, a national mobile without its zero, an IMSI, an IMEI.
        for raw in [
            serde_json::json!(447_700_900_123_i64),
            serde_json::json!(7_700_900_123_i64),
            serde_json::json!(234_150_999_999_999_i64),
            serde_json::json!(356_938_035_643_809_i64),
            serde_json::json!(447_700_900_123.0),
            serde_json::json!([1, {"caller": 447_700_900_123_i64}]),
        ] {
            assert_eq!(
                reason(&|w| w["evidence"]["number"] = raw.clone()),
                "raw_identifier",
                "{raw}"
            );
        }
        // Times the records themselves could not have.
        assert_eq!(
            reason(&|w| w["event_time"] = serde_json::json!(99_999_999_999_999_999_i64)),
            "not_an_alert"
        );
        assert_eq!(
            reason(&|w| w["detected_at"] = serde_json::json!(5)),
            "not_an_alert"
        );
        // With the guard off (numeric pseudonyms by design), a numeric subject is taken; a
        // space or control character still is not.
        let mut n = v.clone();
        n["subject"] = "447700900123".into();
        assert!(super::decode_with(Some(n.to_string().as_bytes()), false).is_ok());
        n["subject"] = "4477 00900123".into();
        assert_eq!(
            super::decode_with(Some(n.to_string().as_bytes()), false).unwrap_err(),
            "bad_pseudonym"
        );
        let many: Vec<String> = (0..=super::MAX_RELATED).map(|i| format!("L{i}")).collect();
        assert_eq!(
            reason(&|w| w["related"] = serde_json::json!(many)),
            "not_an_alert"
        );
    }

    #[test]
    fn invalid_messages_get_fixed_reasons() {
        assert_eq!(decode(None).unwrap_err(), "invalid_json");
        assert_eq!(decode(Some(b"{not json")).unwrap_err(), "invalid_json");
        assert_eq!(decode(Some(b"[1,2]")).unwrap_err(), "not_an_alert");
        assert_eq!(
            decode(Some(b"{\"alert_id\":\"x\"}")).unwrap_err(),
            "not_an_alert"
        );
        let a = crate::board::store::tests::alert("a1", "bulk_sms", "L", 0.5, 1_780_000_000_000);
        let mut v = serde_json::to_value(&a).unwrap();
        assert_eq!(decode(Some(v.to_string().as_bytes())).unwrap(), a);
        v["score"] = serde_json::json!(7.0);
        assert_eq!(
            decode(Some(v.to_string().as_bytes())).unwrap_err(),
            "not_an_alert"
        );
    }

    #[test]
    fn a_starting_board_is_connecting_until_it_reads_or_the_grace_is_out() {
        let r = Ready::default();
        r.connecting("connecting to the alert topic");
        let start = r.feed().since_ms;
        let grace = BROKERS_DOWN_GRACE.as_millis() as i64;
        assert!(r.feed_at(start).connecting && !r.feed_at(start).ok);
        // A failed first attempt says why, and is still connecting within the grace.
        r.set(false, "ingest: refused; retrying");
        let f = r.feed_at(start + grace - 1);
        assert!(
            f.connecting && f.detail == "ingest: refused; retrying",
            "{f:?}"
        );
        assert_eq!(f.since_ms, start);
        // Past it, the feed is down since the board started.
        let f = r.feed_at(start + grace);
        assert!(!f.connecting && !f.ok && f.since_ms == start, "{f:?}");
        // Reading ends connecting for good: a later loss is a feed down at once.
        assert!(r.mark_reading(1));
        r.set(false, "storing alerts failed; retrying");
        let f = r.feed();
        assert!(!f.connecting && !f.ok, "{f:?}");
        let r = Ready::default();
        r.connecting("connecting to the alert topic");
        r.set(true, "reading 1 partition(s)");
        r.set(false, "the brokers have not answered for 10 s; retrying");
        assert!(!r.feed_at(r.feed().since_ms).connecting);
    }
}
