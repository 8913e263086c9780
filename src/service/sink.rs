//! The output side: alerts and dead letters to their topics through one idempotent
//! producer (`acks=all`), delivered a batch at a time.
//!
//! A processed batch becomes an [`InFlight`]: [`Sink::send`] hands its messages to the
//! producer, [`Sink::collect`] takes the answers that have come without waiting, and
//! [`Sink::settle`] waits for the rest. Only a batch whose every message is acknowledged
//! ([`InFlight::is_done`]) may have its input offsets committed. Retriable failures are
//! sent again with backoff (the batch's offsets stay uncommitted meanwhile, so a crash loses
//! nothing); a final failure is returned, stays with the batch, and stops the service.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::future::FutureExt;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::ClientContext;

use super::metrics::Metrics;
use super::source::Tp;
use super::ServiceError;
use crate::alert::Alert;
use crate::detect::DETECTORS;
use crate::event::{Malformed, Millis, Reason};
use crate::kafka::{self, ErrorClass};

/// The producer's librdkafka callbacks. Delivery results come back as futures; the client
/// error callback matters for one thing: the producer talks to the brokers from the moment
/// it is created (its own thread serves callbacks), so it is the first to hear that our
/// credentials were refused.
pub struct SinkContext {
    /// Where an authentication failure is noted for the start-up probe and the run loop.
    pub status: std::sync::Arc<super::Status>,
}

impl ClientContext for SinkContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        super::source::log_librdkafka("producer", level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if kafka::is_auth_failure(&error) {
            self.status.auth_failed(reason);
        }
        // Per-message failures are logged by `deliver`; this client-wide view (broker down)
        // stays at debug so an outage is not logged twice.
        tracing::debug!(
            kind = kafka::error_kind(&error),
            reason,
            "Kafka producer error"
        );
    }
}

/// What a message is, for metrics once it is acknowledged.
#[derive(Debug, Clone, Copy)]
pub enum OutKind {
    /// An alert by a detector, made `latency_ms` after its completing record's event time.
    Alert {
        detector: &'static str,
        latency_ms: Millis,
        /// Kafka timestamp of the completing record, for record-to-alert latency.
        record_kafka_ts_ms: Option<Millis>,
    },
    /// A rejected record.
    DeadLetter(Reason),
    /// An internal record (`[streams]`) a stage could not read: dead-lettered with the
    /// fixed reason `bad_internal_record` (counted when it is read, in the streams metrics).
    InternalDeadLetter,
    /// A record for an internal topic (`[streams]` under exactly once): it goes out in the
    /// batch's transaction with the alerts and dead letters, to an explicit partition
    /// (counted when queued, in the streams metrics).
    Internal {
        which: crate::streams::topics::Which,
        partition: i32,
    },
}

/// The most of a dead letter's payload published. 64 KiB is far under Kafka's default
/// 1 MB message limit (producer `message.max.bytes`, topic `max.message.bytes`), leaving room
/// for headers and for brokers set below the default, and equals the default
/// `engine.max_record_bytes`, so by default any record not rejected for its size goes out
/// whole.
pub const DEAD_LETTER_MAX_BYTES: usize = 64 * 1024;

/// Below this many bytes a dead letter refused for its size is sent with no payload at all:
/// halving further would cost an aborted transaction (or a retry) a step for bytes nobody
/// can read a record from.
pub const DEAD_LETTER_MIN_CUT: usize = 256;

/// The most of a dead letter's payload this process publishes now: [`DEAD_LETTER_MAX_BYTES`]
/// until the dead-letter topic refuses one for its size (a topic whose `max.message.bytes`
/// is set below it), then half of what was refused, and so on down to no payload (the
/// headers alone: reason, source, size and hash). Shared by every sink the service builds,
/// so a pipeline that restarts after an aborted transaction sends the smaller letter: under
/// exactly once the refused letter aborts its transaction and the records are read again,
/// and without the lower cap every attempt would be refused the same way, with nothing
/// behind the record ever processed. Never raised again while the process runs (a topic's
/// limit rarely grows back, and one more refusal to learn it would cost an abort).
#[derive(Debug, Clone)]
pub struct DeadLetterCap(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Default for DeadLetterCap {
    fn default() -> Self {
        DeadLetterCap(std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(
            DEAD_LETTER_MAX_BYTES,
        )))
    }
}

impl DeadLetterCap {
    /// The most payload bytes a dead letter goes out with now.
    pub fn get(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The topic refused a dead letter sent with `sent` payload bytes for its size: the cap
    /// drops to half of it (none below [`DEAD_LETTER_MIN_CUT`]). `None` when there was no
    /// payload left to cut (the headers alone were refused: nothing smaller to send).
    pub fn refused(&self, sent: usize) -> Option<usize> {
        if sent == 0 {
            return None;
        }
        let half = sent / 2;
        let new = if half < DEAD_LETTER_MIN_CUT { 0 } else { half };
        self.0.fetch_min(new, std::sync::atomic::Ordering::Relaxed);
        Some(self.get())
    }
}

/// One message to publish, owned so it can be sent again after a retriable failure.
#[derive(Debug)]
pub struct Outgoing {
    pub kind: OutKind,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(&'static str, Vec<u8>)>,
    /// A dead letter's record as it came: its size and xxh3-128, for the headers of a
    /// letter cut shorter when it is sent ([`DeadLetterCap`]).
    original: Option<(usize, u128)>,
}

impl Outgoing {
    /// An alert: key = subject, JSON value, headers `detector`, `alert_id`, `config_version`.
    pub fn alert(a: &Alert) -> Outgoing {
        let detector = DETECTORS
            .iter()
            .find(|d| **d == a.detector)
            .copied()
            .unwrap_or("other");
        Outgoing {
            kind: OutKind::Alert {
                detector,
                latency_ms: a.detected_at - a.event_time,
                record_kafka_ts_ms: None,
            },
            key: Some(a.subject.as_bytes().to_vec()),
            // An Alert is strings, numbers and a JSON map: serialising it cannot fail.
            payload: serde_json::to_vec(a).expect("alert serialises"),
            headers: vec![
                ("detector", a.detector.as_bytes().to_vec()),
                ("alert_id", a.alert_id.as_bytes().to_vec()),
                ("config_version", a.config_version.as_bytes().to_vec()),
            ],
            original: None,
        }
    }

    /// Notes the Kafka timestamp of the record that completed this alert.
    pub fn completed_by(mut self, kafka_ts_ms: Option<Millis>) -> Outgoing {
        if let OutKind::Alert {
            record_kafka_ts_ms, ..
        } = &mut self.kind
        {
            *record_kafka_ts_ms = kafka_ts_ms;
        }
        self
    }

    /// A dead letter: the raw bytes with raw identifiers redacted (header `redacted` names
    /// the fields), cut to [`DEAD_LETTER_MAX_BYTES`] so that it can always be published
    /// (headers `truncated`, `original_bytes`, `original_xxh3_128`), with why and where it
    /// came from in headers.
    pub fn dead_letter(
        raw: &[u8],
        why: Malformed,
        source_topic: &str,
        source_partition: i32,
        source_offset: i64,
    ) -> Outgoing {
        let redacted = crate::redact::redact(raw);
        let hash = xxhash_rust::xxh3::xxh3_128(raw);
        let mut payload = redacted.bytes.into_owned();
        let mut headers = vec![("reason", why.reason.as_str().as_bytes().to_vec())];
        if !redacted.fields.is_empty() {
            headers.push(("redacted", redacted.fields.join(",").into_bytes()));
        }
        if payload.len() > DEAD_LETTER_MAX_BYTES {
            payload.truncate(DEAD_LETTER_MAX_BYTES);
            headers.extend([
                ("truncated", b"true".to_vec()),
                ("original_bytes", raw.len().to_string().into_bytes()),
                ("original_xxh3_128", format!("{hash:032x}").into_bytes()),
            ]);
        }
        if let Some(f) = why.field {
            headers.push(("field", f.as_bytes().to_vec()));
        }
        headers.extend([
            ("source_topic", source_topic.as_bytes().to_vec()),
            (
                "source_partition",
                source_partition.to_string().into_bytes(),
            ),
            ("source_offset", source_offset.to_string().into_bytes()),
        ]);
        Outgoing {
            kind: OutKind::DeadLetter(why.reason),
            key: None,
            payload,
            headers,
            original: Some((raw.len(), hash)),
        }
    }

    /// An internal record a stage could not read ([`crate::streams::wire::WireError`]):
    /// its bytes (an envelope of validated pseudonyms, never raw input), the fixed reason
    /// and the part at fault, and where it was read.
    pub fn bad_internal_record(
        payload: &[u8],
        field: &'static str,
        source_topic: &str,
        source_partition: i32,
        source_offset: i64,
    ) -> Outgoing {
        let original = Some((payload.len(), xxhash_rust::xxh3::xxh3_128(payload)));
        let mut payload = payload.to_vec();
        payload.truncate(DEAD_LETTER_MAX_BYTES);
        Outgoing {
            kind: OutKind::InternalDeadLetter,
            original,
            key: None,
            payload,
            headers: vec![
                ("reason", crate::streams::wire::REASON.as_bytes().to_vec()),
                ("field", field.as_bytes().to_vec()),
                ("source_topic", source_topic.as_bytes().to_vec()),
                (
                    "source_partition",
                    source_partition.to_string().into_bytes(),
                ),
                ("source_offset", source_offset.to_string().into_bytes()),
            ],
        }
    }

    /// An internal record: an envelope for `partition` of `which`, keyed by the 8-byte key
    /// hash (as [`crate::streams::producer::InternalProducer::send_raw`] writes it).
    pub fn internal(
        which: crate::streams::topics::Which,
        partition: i32,
        key: u64,
        payload: Vec<u8>,
    ) -> Outgoing {
        Outgoing {
            kind: OutKind::Internal { which, partition },
            key: Some(crate::streams::place::key_bytes(key).to_vec()),
            payload,
            headers: Vec::new(),
            original: None,
        }
    }

    fn topic<'a>(&self, sink: &'a Sink) -> &'a str {
        match self.kind {
            OutKind::Alert { .. } => &sink.alert_topic,
            OutKind::DeadLetter(_) | OutKind::InternalDeadLetter => &sink.dead_letter_topic,
            // A sink is given the internal topics whenever internal records can be made
            // ([`Sink::with_internal_topics`]); without them the empty name is refused by
            // the producer as an invalid topic, a final delivery error, never a panic.
            OutKind::Internal { which, .. } => sink.internal.as_ref().map_or("", |t| t.name(which)),
        }
    }
}

/// A processed batch whose outputs are on their way to the broker. Its input offsets
/// (`next`) may be committed once every message is acknowledged and every older batch is
/// committed (see [`super::pipeline`]).
pub struct InFlight {
    /// The batch's alerts and dead letters.
    pub out: Vec<Outgoing>,
    /// Sent, answer not yet taken: (index into `out`, the broker's answer to come).
    pub waiting: Vec<(usize, DeliveryFuture)>,
    /// Refused by a retriable error, to send again.
    pub failed: Vec<usize>,
    failure_kind: &'static str,
    /// A final delivery failure met by a caller that could not stop the service (the
    /// rebalance callback): the next look at the batch returns it.
    fatal: Option<(String, &'static str, String)>,
    /// Next offset to commit per input partition once the batch is acknowledged.
    pub next: BTreeMap<Tp, i64>,
    /// When its first record was polled.
    pub started: Instant,
}

impl InFlight {
    pub fn new(out: Vec<Outgoing>, next: BTreeMap<Tp, i64>, started: Instant) -> Self {
        InFlight {
            out,
            waiting: Vec::new(),
            failed: Vec::new(),
            failure_kind: "other",
            fatal: None,
            next,
            started,
        }
    }

    /// Every message acknowledged.
    pub fn is_done(&self) -> bool {
        self.waiting.is_empty() && self.failed.is_empty() && self.fatal.is_none()
    }

    /// Keeps a final failure with the batch and returns it.
    fn fail(&mut self, e: ServiceError) -> ServiceError {
        if let ServiceError::Delivery {
            topic,
            kind,
            message,
        } = &e
        {
            self.fatal = Some((topic.clone(), kind, message.clone()));
        }
        e
    }

    /// The final failure met earlier, if any.
    fn check(&self) -> Result<(), ServiceError> {
        match &self.fatal {
            Some((topic, kind, message)) => Err(ServiceError::Delivery {
                topic: topic.clone(),
                kind,
                message: message.clone(),
            }),
            None => Ok(()),
        }
    }
}

/// Batches in flight, oldest first; shared by the run loop and the rebalance callback.
pub type InFlightQueue = std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<InFlight>>>;

/// The producer and where it writes.
pub struct Sink {
    producer: FutureProducer<SinkContext>,
    alert_topic: String,
    dead_letter_topic: String,
    metrics: Metrics,
    backoff_max: Duration,
    /// `[streams]`: where [`OutKind::Internal`] records go.
    internal: Option<crate::streams::topics::InternalTopics>,
    /// How much of a dead letter's payload goes out (lowered when the topic refuses one).
    cap: DeadLetterCap,
}

impl Sink {
    /// A sink over a created producer.
    pub fn new(
        producer: FutureProducer<SinkContext>,
        alert_topic: String,
        dead_letter_topic: String,
        metrics: Metrics,
        backoff_max: Duration,
    ) -> Self {
        Sink {
            producer,
            alert_topic,
            dead_letter_topic,
            metrics,
            backoff_max,
            internal: None,
            cap: DeadLetterCap::default(),
        }
    }

    /// Shares `cap` with the sinks the service built before this one (a pipeline restart
    /// keeps what the dead-letter topic taught the last).
    pub fn with_dead_letter_cap(mut self, cap: DeadLetterCap) -> Self {
        self.cap = cap;
        self
    }

    /// Lets the sink write internal records ([`Outgoing::internal`]) to `topics`.
    pub fn with_internal_topics(mut self, topics: crate::streams::topics::InternalTopics) -> Self {
        self.internal = Some(topics);
        self
    }

    fn enqueue(&self, m: &Outgoing) -> Result<DeliveryFuture, KafkaError> {
        let (payload, cut) = self.cut(m);
        let mut headers = OwnedHeaders::new_with_capacity(m.headers.len() + cut.len());
        for (k, v) in m
            .headers
            .iter()
            .map(|(k, v)| (*k, v.as_slice()))
            .chain(cut.iter().map(|(k, v)| (*k, v.as_slice())))
        {
            headers = headers.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        let mut rec = FutureRecord::<[u8], [u8]>::to(m.topic(self))
            .payload(payload)
            .headers(headers);
        if let Some(k) = &m.key {
            rec = rec.key(k.as_slice());
        }
        if let OutKind::Internal { partition, .. } = m.kind {
            rec = rec.partition(partition);
        }
        self.producer.send_result(rec).map_err(|(e, _)| e)
    }

    /// A dead letter's payload as it goes out now: cut to the [`DeadLetterCap`], with the
    /// headers a cut letter carries (`truncated`, `original_bytes`, `original_xxh3_128`,
    /// each unless the letter has it already). Anything else goes out as it is.
    fn cut<'a>(&self, m: &'a Outgoing) -> (&'a [u8], Vec<(&'static str, Vec<u8>)>) {
        let cap = self.cap.get();
        let dead = matches!(m.kind, OutKind::DeadLetter(_) | OutKind::InternalDeadLetter);
        if !dead || m.payload.len() <= cap {
            return (&m.payload, Vec::new());
        }
        let (len, hash) = m
            .original
            .unwrap_or_else(|| (m.payload.len(), xxhash_rust::xxh3::xxh3_128(&m.payload)));
        let has = |k: &str| m.headers.iter().any(|(h, _)| *h == k);
        let mut extra = Vec::new();
        if !has("truncated") {
            extra.extend([
                ("truncated", b"true".to_vec()),
                ("original_bytes", len.to_string().into_bytes()),
                ("original_xxh3_128", format!("{hash:032x}").into_bytes()),
            ]);
        }
        (&m.payload[..cap], extra)
    }

    /// A dead letter the topic refused for its size while there was payload left to cut:
    /// the cap is lowered (see [`DeadLetterCap`]) and `true` says to send it again, shorter.
    /// Counted as a producer error of kind `too_large`, and logged with the new cap.
    fn shrunk(&self, m: &Outgoing, e: &KafkaError) -> bool {
        if !matches!(m.kind, OutKind::DeadLetter(_) | OutKind::InternalDeadLetter)
            || e.rdkafka_error_code() != Some(RDKafkaErrorCode::MessageSizeTooLarge)
        {
            return false;
        }
        let sent = m.payload.len().min(self.cap.get());
        let Some(cap) = self.cap.refused(sent) else {
            return false;
        };
        self.metrics.producer_error("too_large");
        self.metrics.dead_letter_cap(cap);
        tracing::warn!(
            refused_bytes = sent,
            now_cut_to = cap,
            "the dead-letter topic refused a dead letter for its size; dead letters are now cut to {cap} payload bytes and this one is sent again (raise the topic's max.message.bytes to keep them whole)"
        );
        true
    }

    /// What an aborted transaction's deliveries say about the dead-letter topic: a letter
    /// refused for its size lowers the cap, so the pipeline's next attempt at the same
    /// records sends it shorter instead of being refused again. Waits up to `wait` for
    /// answers still to come (the producer's thread may hand them over just after the
    /// commit call failed; the rest are purged by the abort). Nothing else is counted: the
    /// other messages went with the transaction. Blocking.
    pub fn learn_from_abort(&self, b: &mut InFlight, wait: Duration) {
        let deadline = Instant::now() + wait;
        loop {
            let mut k = 0;
            while k < b.waiting.len() {
                match (&mut b.waiting[k].1).now_or_never() {
                    None => k += 1,
                    Some(answer) => {
                        let (i, _) = b.waiting.swap_remove(k);
                        if let Ok(Err((e, _))) = answer {
                            self.shrunk(&b.out[i], &e);
                        }
                    }
                }
            }
            if b.waiting.is_empty() || Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Hands `b`'s messages numbered `idx` to the producer, waiting only while librdkafka's
    /// (bounded) queue is full. A message the producer refuses outright is counted and
    /// noted in `b.failed` for [`Sink::settle`] to send again, or stops the service when
    /// the refusal is final.
    pub async fn send(&self, b: &mut InFlight, idx: Vec<usize>) -> Result<(), ServiceError> {
        for i in idx {
            loop {
                match self.enqueue(&b.out[i]) {
                    Ok(f) => {
                        b.waiting.push((i, f));
                        break;
                    }
                    Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => {
                        // librdkafka's queue is bounded: wait for deliveries to make room.
                        self.metrics.producer_error("queue_full");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) if self.shrunk(&b.out[i], &e) => {
                        b.failed.push(i);
                        break;
                    }
                    Err(e) => {
                        if !self.gave_up(&b.out[i], &e) {
                            b.failed.push(i);
                            b.failure_kind = kafka::error_kind(&e);
                            self.failed(&b.out[i], &e).map_err(|f| b.fail(f))?;
                        }
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Takes the broker's answers that have already come, without waiting: acknowledged
    /// messages are counted and forgotten, failed ones move to `b.failed`. A final failure
    /// is the error that stops the service.
    pub fn collect(&self, b: &mut InFlight) -> Result<(), ServiceError> {
        b.check()?;
        let mut k = 0;
        while k < b.waiting.len() {
            let (i, f) = &mut b.waiting[k];
            let i = *i;
            match f.now_or_never() {
                None => {
                    k += 1;
                    continue;
                }
                Some(answer) => {
                    b.waiting.swap_remove(k);
                    self.answer(b, i, answer)?;
                }
            }
        }
        Ok(())
    }

    fn answer<Canceled>(
        &self,
        b: &mut InFlight,
        i: usize,
        answer: Result<OwnedDeliveryResult, Canceled>,
    ) -> Result<(), ServiceError> {
        match answer {
            Ok(Ok(_)) => self.acknowledged(&b.out[i]),
            // Sent again, shorter (the batch's offsets wait for it, as for a retriable
            // failure).
            Ok(Err((e, _))) if self.shrunk(&b.out[i], &e) => b.failed.push(i),
            Ok(Err((e, _))) if self.gave_up(&b.out[i], &e) => {}
            Ok(Err((e, _))) => {
                // Noted as failed before anything else: a batch with a failure is never
                // taken for acknowledged, even by a caller that carries on after the error.
                b.failed.push(i);
                b.failure_kind = kafka::error_kind(&e);
                self.failed(&b.out[i], &e).map_err(|f| b.fail(f))?;
            }
            // The producer dropped the message without an answer (it is closing): unknown
            // outcome, so send again.
            Err(_) => b.failed.push(i),
        }
        Ok(())
    }

    /// Waits until every message of `b` is acknowledged, sending failed ones again with
    /// backoff (the batch's input offsets stay uncommitted meanwhile, so a crash loses
    /// nothing).
    pub async fn settle(&self, b: &mut InFlight) -> Result<(), ServiceError> {
        b.check()?;
        let mut attempt = 0u32;
        loop {
            while let Some((i, f)) = b.waiting.pop() {
                let answer = f.await;
                self.answer(b, i, answer)?;
            }
            if b.failed.is_empty() {
                return Ok(());
            }
            attempt += 1;
            let wait = backoff(attempt, self.backoff_max);
            tracing::warn!(
                messages = b.failed.len(),
                kind = b.failure_kind,
                attempt,
                retry_in_s = wait.as_secs_f64(),
                "deliveries failed; retrying (input offsets stay uncommitted until they succeed)"
            );
            tokio::time::sleep(wait).await;
            let again = std::mem::take(&mut b.failed);
            self.send(b, again).await?;
        }
    }

    fn acknowledged(&self, m: &Outgoing) {
        match m.kind {
            OutKind::Alert {
                detector,
                latency_ms,
                record_kafka_ts_ms,
            } => {
                self.metrics.alert(detector, latency_ms);
                if let Some(ts) = record_kafka_ts_ms {
                    // Acknowledged now: the alert is on the broker, readable downstream.
                    self.metrics
                        .record_to_alert(detector, crate::replay::wall_ms() - ts);
                }
            }
            OutKind::DeadLetter(r) => self.metrics.dead_letter(r),
            OutKind::InternalDeadLetter | OutKind::Internal { .. } => {}
        }
    }

    /// A dead letter the broker refuses for good, for a reason of its own (too large even
    /// truncated, say), is counted and skipped: stopping would only bring the service back
    /// to the same record on every restart, and nothing behind it would be processed. A
    /// final failure of the client itself (refused credentials or authorisation, a fenced
    /// producer) is not the message's doing and still stops the service, as for alerts.
    fn gave_up(&self, m: &Outgoing, e: &KafkaError) -> bool {
        let OutKind::DeadLetter(reason) = m.kind else {
            return false;
        };
        let kind = kafka::error_kind(e);
        if kafka::classify(e) != ErrorClass::Final
            || matches!(kind, "authentication" | "authorization" | "fatal")
        {
            return false;
        }
        self.metrics.producer_error(kind);
        self.metrics.dead_letter_dropped(kind);
        tracing::warn!(
            reason = reason.as_str(),
            kind,
            bytes = m.payload.len(),
            "dead letter refused by the broker for good; skipped (counted in linewatch_dead_letters_dropped_total)"
        );
        true
    }

    /// Counts a failed delivery; a final one becomes the error that stops the service.
    fn failed(&self, m: &Outgoing, e: &KafkaError) -> Result<(), ServiceError> {
        let kind = kafka::error_kind(e);
        self.metrics.producer_error(kind);
        match kafka::classify(e) {
            ErrorClass::Retriable => Ok(()),
            ErrorClass::Final => Err(ServiceError::Delivery {
                topic: m.topic(self).to_string(),
                kind,
                message: e.to_string(),
            }),
        }
    }

    /// Waits for anything still queued in the producer (shutdown).
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(error = %e, "producer flush did not finish");
        }
    }
}

/// 1 s, 2 s, 4 s, ... capped at `max`.
pub fn backoff(attempt: u32, max: Duration) -> Duration {
    let secs = 1u64 << attempt.saturating_sub(1).min(16);
    Duration::from_secs(secs).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_dead_letter_halves_the_cap_down_to_headers_only() {
        let cap = DeadLetterCap::default();
        let shared = cap.clone();
        assert_eq!(cap.get(), DEAD_LETTER_MAX_BYTES);
        assert_eq!(shared.refused(DEAD_LETTER_MAX_BYTES), Some(32 * 1024));
        // Every sink holding the cap sends shorter from now on.
        assert_eq!(cap.get(), 32 * 1024);
        // A letter sent before the cap fell and refused after never raises it.
        assert_eq!(cap.refused(DEAD_LETTER_MAX_BYTES), Some(32 * 1024));
        assert_eq!(cap.refused(1000), Some(500));
        // Below the smallest cut: the headers alone.
        assert_eq!(cap.refused(500), Some(0));
        // Nothing left to cut: the caller gives the letter up.
        assert_eq!(cap.refused(0), None);
        assert_eq!(cap.get(), 0);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let max = Duration::from_secs(30);
        assert_eq!(backoff(1, max), Duration::from_secs(1));
        assert_eq!(backoff(3, max), Duration::from_secs(4));
        assert_eq!(backoff(40, max), max);
    }

    #[test]
    fn dead_letter_headers_name_reason_and_source() {
        let m = Outgoing::dead_letter(
            b"not json",
            Malformed {
                reason: Reason::InvalidJson,
                field: None,
            },
            "cdr",
            3,
            42,
        );
        let names: Vec<_> = m.headers.iter().map(|h| h.0).collect();
        assert_eq!(
            names,
            [
                "reason",
                "source_topic",
                "source_partition",
                "source_offset"
            ]
        );
        assert_eq!(m.headers[3].1, b"42");
        assert_eq!(m.payload, b"not json");
    }

    fn header<'a>(m: &'a Outgoing, name: &str) -> Option<&'a [u8]> {
        m.headers
            .iter()
            .find(|h| h.0 == name)
            .map(|h| h.1.as_slice())
    }

    #[test]
    fn dead_letter_has_its_raw_identifiers_redacted() {
        let raw =
            br#"{"event_id":"e","ts":1791158400000,"kind":"sms","from":"+447700900123","to":"b"}"#;
        let why = Malformed {
            reason: Reason::RawIdentifier,
            field: Some("from"),
        };
        let m = Outgoing::dead_letter(raw, why, "cdr", 0, 7);
        assert!(!crate::redact::has_raw_identifier(&m.payload));
        assert!(!m
            .headers
            .iter()
            .any(|h| crate::redact::has_raw_identifier(&h.1)));
        assert_eq!(header(&m, "redacted"), Some(&b"from"[..]));
        assert_eq!(header(&m, "truncated"), None);
    }

    #[test]
    fn oversized_dead_letter_is_truncated_with_size_and_hash() {
        let mut raw = br#"{"event_id":"big","pad":""#.to_vec();
        raw.resize(1_100_000, b'x');
        raw.extend_from_slice(br#""}"#);
        let why = Malformed {
            reason: Reason::TooLarge,
            field: None,
        };
        let m = Outgoing::dead_letter(&raw, why, "cdr", 0, 7);
        assert_eq!(m.payload.len(), DEAD_LETTER_MAX_BYTES);
        assert_eq!(m.payload[..], raw[..DEAD_LETTER_MAX_BYTES]);
        assert_eq!(header(&m, "truncated"), Some(&b"true"[..]));
        assert_eq!(header(&m, "original_bytes"), Some(&b"1100002"[..]));
        let hash = format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&raw));
        assert_eq!(header(&m, "original_xxh3_128"), Some(hash.as_bytes()));
    }
}
