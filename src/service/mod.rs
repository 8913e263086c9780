//! The service (`linewatch run`): a Kafka consumer group in, alerts and dead letters out, the
//! same [`Engine`] as `replay` in between.
//!
//! # Layout
//!
//! - [`source`]: the consumer, its rebalance handling and state rebuild.
//! - [`pipeline`]: the run loop: poll a bounded batch, run it through the engine, publish,
//!   wait for every acknowledgement, commit, repeat.
//! - [`sink`]: the idempotent producer and the alert and dead-letter message formats.
//! - [`metrics`]: every metric, in one place. [`http`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`reload`]: live threshold changes (SIGHUP and file changes).
//! - [`crate::kafka`]: client configuration and error classification, shared.
//!
//! # Guarantees
//!
//! Exactly once under `service.processing_guarantee = "exactly_once"`: see [`txn`] (outputs
//! and offsets in one Kafka transaction; a failed transaction restarts the pipeline in-process
//! from the newest checkpoint and the committed offsets, see [`run`]). Otherwise:
//!
//! At least once, nothing lost: an input offset is committed only after every alert and
//! dead letter its record caused is acknowledged by the broker (`acks=all`). Memory is
//! bounded end to end: one batch in hand, librdkafka's prefetch capped, no poll while a
//! batch is unacknowledged. Alert ids are deterministic, so a record processed twice (after
//! a crash between acknowledgement and commit) repeats an alert with the same id, which
//! downstream de-duplicates.
//!
//! # Messages (additions to the contract)
//!
//! - **Alert topic**: value = the alert JSON of contract §2 (plus `config_version`), key =
//!   `subject`, headers `detector`, `alert_id`, `config_version`.
//! - **Dead-letter topic**: value = the record's raw bytes with raw identifiers redacted
//!   ([`crate::redact`]) and cut to 64 KiB; no key; headers `reason` (a fixed code of
//!   [`crate::event::Reason`], `late` included), `field` (only when one field is at fault),
//!   `source_topic`, `source_partition`, `source_offset` (decimal), and when it applies
//!   `redacted` (the fields) and `truncated`, `original_bytes`, `original_xxh3_128`. A dead
//!   letter the broker still refuses for good is counted and skipped, never fatal.
//! - Delivery is at least once by default: after a crash between acknowledgement and commit
//!   an alert may be published again, always with the same `alert_id`. Under
//!   `processing_guarantee = "exactly_once"` ([`txn`]) a `read_committed` reader sees each
//!   alert and dead letter once.
//!
//! # Operations
//!
//! - `/readyz` answers 200 once the group has assigned partitions, else 503 with what is
//!   awaited (brokers unreachable, which topic is missing, assignment).
//! - SIGINT/SIGTERM: stop polling, finish and acknowledge the batch in hand, commit, leave
//!   the group, exit 0, all within `service.drain_timeout_s` (else exit 1 saying so).
//! - SIGHUP or a changed config file: new detection thresholds from the next record.
//! - Exit 2: invalid configuration (including an unknown `[kafka]` property); exit 1:
//!   refused credentials, a final delivery error, an unfinished drain.
//!
//! [`Engine`]: crate::engine::Engine

pub mod align;
pub mod http;
pub mod metrics;
pub mod pipeline;
pub mod reload;
pub mod sink;
pub mod source;
pub mod stage_state;
pub mod streams;
pub mod txn;

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};
use tokio::sync::{mpsc, watch};

use crate::config::{Config, ProcessingGuarantee};
use crate::engine::Engine;
use crate::kafka::{self, KafkaSettings, Role};
use metrics::Metrics;
use sink::{Sink, SinkContext};
use source::{Source, SourceContext};

/// Why the service stopped other than by a requested shutdown. Each displays as one line.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A setting librdkafka or the service cannot use.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The brokers refused our credentials or TLS setup.
    #[error("authentication with the Kafka brokers failed: {0} (check [kafka] security.protocol, sasl.* and ssl.* settings)")]
    Auth(String),
    /// The admin HTTP address could not be bound.
    #[error("cannot serve HTTP on {addr}: {message}")]
    Http { addr: String, message: String },
    /// A delivery failed in a way retrying cannot fix.
    #[error("publishing to topic {topic} failed ({kind}): {message}; the batch's input offsets were not committed, so a restart re-reads it")]
    Delivery {
        topic: String,
        kind: &'static str,
        message: String,
    },
    /// The consumer hit an error retrying cannot fix.
    #[error("consuming failed ({kind}): {message}")]
    Consumer { kind: &'static str, message: String },
    /// Exactly once: another instance started with our transactional id and fenced us.
    #[error("another instance started with transactional id {id:?} and took this one's work over (exactly_once); stopping rather than fighting it for the id ({message}). Two instances need different [kafka] \"group.instance.id\" values")]
    Fenced { id: String, message: String },
    /// Exactly once: the transaction was aborted or the producer failed for good; the
    /// pipeline is started again in-process from the newest checkpoint and the committed
    /// offsets ([`run`] handles it; it is never returned from there).
    #[error("transaction {reason}: {message}")]
    Rewind {
        reason: &'static str,
        message: String,
    },
    /// `[streams]`: the internal topics could not be created, or are not co-partitioned.
    #[error("{0}")]
    InternalTopics(String),
    /// Shutdown could not finish in-flight deliveries in time.
    #[error("shutdown: in-flight deliveries not acknowledged within drain_timeout_s = {0}; their input offsets were not committed, so a restart re-reads them")]
    DrainTimeout(u64),
}

impl ServiceError {
    /// The process exit code: 2 for configuration problems, 1 for the rest.
    pub fn exit_code(&self) -> u8 {
        match self {
            ServiceError::Config(_) => 2,
            _ => 1,
        }
    }
}

/// Readiness and what the service is waiting for, shared with `/readyz`.
#[derive(Debug)]
pub struct Status {
    inner: Mutex<(bool, String)>,
    auth_failure: Mutex<Option<String>>,
    /// Exactly once: transactions failing again and again (the pipeline restarted this many
    /// times in a row, each within a minute of the last, and why), with when the pipeline
    /// now running started. Readiness stays false until that pipeline has run a minute.
    failing: Mutex<Option<(String, std::time::Instant)>>,
}

/// Pipeline restarts in a row (each within a minute of its start) from which `/readyz`
/// says the service is failing rather than recovering.
pub const FAILING_AFTER_RESTARTS: u32 = 2;

impl Status {
    fn new(detail: &str) -> Self {
        Status {
            inner: Mutex::new((false, detail.to_string())),
            auth_failure: Mutex::new(None),
            failing: Mutex::new(None),
        }
    }

    /// Sets readiness and the sentence `/readyz` answers with.
    pub fn set(&self, ready: bool, detail: impl Into<String>) {
        *self.inner.lock().unwrap_or_else(|p| p.into_inner()) = (ready, detail.into());
    }

    /// Readiness and its sentence.
    pub fn get(&self) -> (bool, String) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Notes that the brokers refused our credentials.
    pub fn auth_failed(&self, reason: &str) {
        *self.auth_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_string());
    }

    /// Notes transactions failing in a loop (`None`: the loop is over).
    pub fn set_failing(&self, why: Option<String>) {
        let mut f = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        *f = why.map(|w| (w, std::time::Instant::now()));
        if let Some((w, _)) = &*f {
            self.set(false, w.clone());
        }
    }

    /// The failure loop's sentence while it lasts: until the pipeline started after the
    /// last failure has run a minute (it is then forgotten).
    pub fn failing(&self) -> Option<String> {
        let mut f = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        if f.as_ref()
            .is_some_and(|(_, t)| t.elapsed() > Duration::from_secs(60))
        {
            *f = None;
        }
        f.as_ref().map(|(w, _)| w.clone())
    }

    /// The authentication failure, if there was one.
    pub fn auth_failure(&self) -> Option<String> {
        self.auth_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Lets a repeated log line through once per 30 s per kind: librdkafka repeats errors such
/// as "all brokers down" every few seconds, and one line per half minute says it as well.
#[derive(Debug, Default)]
pub struct Throttle {
    last: Mutex<std::collections::BTreeMap<&'static str, std::time::Instant>>,
}

impl Throttle {
    /// True if a line of this kind may be logged now.
    pub fn allow(&self, kind: &'static str) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        match last.get(kind) {
            Some(t) if now.duration_since(*t) < Duration::from_secs(30) => false,
            _ => {
                last.insert(kind, now);
                true
            }
        }
    }
}

/// How the service was started, beyond the configuration itself.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The configuration file, watched for live threshold changes (none: nothing to reload).
    pub config_path: Option<PathBuf>,
    /// The configuration as the file has it, before command-line overrides (to tell which
    /// `[service]` changes a reload saw). Defaults to the running configuration.
    pub file_config: Option<Config>,
    /// The cell map (`--cells`), for `runner_movement`.
    pub cells: Option<Arc<crate::cells::CellMap>>,
}

/// A client that could not be created: a bad `[kafka]` property. librdkafka's message
/// quotes the property's value, which may be a password, so every configured value is
/// masked in it.
fn creation_error(what: &str, e: KafkaError, settings: &KafkaSettings) -> ServiceError {
    ServiceError::Config(format!("Kafka {what}: {}", settings.creation_message(&e)))
}

/// Runs the service with a validated configuration until `shutdown` completes, then
/// drains: the batch in hand is finished, published, acknowledged and committed.
pub async fn run(
    cfg: Config,
    opts: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServiceError> {
    cfg.validate()
        .map_err(|e| ServiceError::Config(e.to_string()))?;
    let metrics = Metrics::new();
    let status = Arc::new(Status::new("starting"));
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);

    let settings = KafkaSettings::new(cfg.service.brokers.clone(), cfg.kafka.clone());
    for role in [Role::Consumer, Role::Producer] {
        for key in settings.overridden_keys(role) {
            tracing::warn!(
                key,
                "[kafka] property ignored: linewatch sets it itself for at-least-once delivery"
            );
        }
    }
    if let Some((idle_ms, session_ms)) =
        settings.idle_not_above_session(cfg.service.partition_idle_timeout_s)
    {
        tracing::warn!(
            idle_ms,
            session_ms,
            "service.partition_idle_timeout_s is not above the consumer session timeout: a \
             member lost without leaving has its partitions passed over as idle before they \
             move, and their records come late; keep it above (the defaults: 60 s and 30 s)"
        );
    }
    // What the dead-letter topic taught one pipeline (its size limit) is kept by the next.
    let dead_letter_cap = sink::DeadLetterCap::default();
    let first = Clients::build(&cfg, &settings, &metrics, &status, &dead_letter_cap)?;
    // Clients first, so a bad property fails before anything listens.
    let listener = http::bind(&cfg.service.http_addr).await?;
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admin HTTP listening");
    }
    let http_task = tokio::spawn(http::serve(
        listener,
        metrics.clone(),
        status.clone(),
        stop_rx.clone(),
    ));

    let (reload_tx, reload_rx) = mpsc::channel(4);
    let reload_task = opts.config_path.clone().map(|path| {
        let file = opts.file_config.clone().unwrap_or_else(|| cfg.clone());
        let r = reload::Reloader::new(path, &file, cfg.clone(), metrics.clone());
        tokio::spawn(r.run(reload_tx, stop_rx.clone()))
    });

    tracing::info!(
        brokers = %cfg.service.brokers,
        group = %cfg.service.group_id,
        input_topics = ?cfg.service.input_topics,
        alert_topic = %cfg.service.alert_topic,
        dead_letter_topic = %cfg.service.dead_letter_topic,
        config_version = %cfg.version(),
        processing_guarantee = cfg.service.processing_guarantee.as_str(),
        heap_huge_pages = crate::hugepages::asked(),
        "starting"
    );
    let drain_s = cfg.service.drain_timeout_s;
    tokio::pin!(shutdown);
    if cfg.streams.enabled {
        let stopped = tokio::select! {
            r = internal_topics(&cfg, &settings, &status) => r.err().map(Err),
            _ = &mut shutdown => Some(Ok(())),
        };
        if let Some(r) = stopped {
            // Nothing consumed yet: stop the tasks started above, as the end of run does.
            let _ = stop_tx.send(true);
            let _ = tokio::time::timeout(Duration::from_secs(2), http_task).await;
            if let Some(t) = reload_task {
                let _ = t.await;
            }
            if let Err(e) = &r {
                tracing::error!(error = %e, "stopped on error");
            }
            return r;
        }
    }
    let stage_task = cfg.streams.enabled.then(|| {
        streams::spawn_stages(streams::StageTask {
            cfg: cfg.clone(),
            settings: settings.clone(),
            metrics: metrics.clone(),
            status: status.clone(),
            cells: opts.cells.clone(),
            stop: stop_rx.clone(),
            stop_all: stop_tx.clone(),
        })
    });
    let mut stopped_at = None;
    let mut clients = Some(first);
    let mut reloads = reload_rx;
    let mut running = cfg;
    let mut restarts = 0u32;
    let result = loop {
        let c = match clients.take() {
            Some(c) => c,
            None => Clients::build(&running, &settings, &metrics, &status, &dead_letter_cap)?,
        };
        let mut pipeline = pipeline::Pipeline {
            engine: {
                let mut e = Engine::with_shards(running.clone(), running.service.shards);
                e.set_cells(opts.cells.clone());
                e
            },
            checkpoints: None,
            settings: settings.clone(),
            cfg: running.clone(),
            consumer: c.consumer,
            producer: c.producer,
            sink: c.sink,
            in_flight: c.in_flight,
            shared: c.shared,
            metrics: metrics.clone(),
            status: status.clone(),
            reloads,
            stop: stop_rx.clone(),
            txn: c.txn,
            committing: Default::default(),
            streams: match running.streams.enabled {
                true => Some(streams::IngestTask::new(
                    &running,
                    &settings,
                    &metrics,
                    opts.cells.clone(),
                )?),
                false => None,
            },
        };
        let started = std::time::Instant::now();
        let r = {
            let main = pipeline.run();
            tokio::pin!(main);
            if stopped_at.is_some() {
                (&mut main).await
            } else {
                tokio::select! {
                    r = &mut main => r,
                    _ = &mut shutdown => {
                        tracing::info!(drain_timeout_s = drain_s, "shutdown requested: finishing the batch in hand, then committing");
                        stopped_at = Some(std::time::Instant::now());
                        let _ = stop_tx.send(true);
                        (&mut main).await
                    }
                }
            }
        };
        // The engine keeps the thresholds of live reloads; its state is dropped below.
        running = pipeline.engine.config().clone();
        // The pipeline goes whole to `close_consumer`; its reload channel serves the next.
        reloads = std::mem::replace(&mut pipeline.reloads, mpsc::channel(1).1);
        if let (Err(e), Some(t)) = (&r, &pipeline.txn) {
            // The consumer's close below revokes its partitions: the revoke must not touch
            // a transaction that failed.
            t.fail(txn::TxnError::Fatal(e.to_string()));
        }
        close_consumer(pipeline, stopped_at, drain_s).await;
        match r {
            Err(ServiceError::Rewind { reason, message }) if stopped_at.is_none() => {
                if started.elapsed() > Duration::from_secs(60) {
                    restarts = 0;
                }
                restarts += 1;
                metrics.txn.restarted(reason);
                // A failure that comes back at once (e.g. a dead letter the broker refuses
                // for its size) stops every output: say so on `/readyz` too, not only in
                // the logs, until a pipeline runs a minute.
                if restarts >= FAILING_AFTER_RESTARTS {
                    status.set_failing(Some(format!(
                        "transactions failing: the pipeline restarted {restarts} times in a row ({reason}); retrying"
                    )));
                }
                let wait = sink::backoff(
                    restarts,
                    Duration::from_secs(running.service.retry_backoff_max_s),
                );
                tracing::warn!(
                    reason,
                    error = %message,
                    restarts,
                    retry_in_s = wait.as_secs(),
                    "transaction failed: starting the pipeline again from the newest checkpoint and the committed offsets (nothing uncommitted is published twice)"
                );
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = &mut shutdown => break Ok(()),
                }
            }
            Err(ServiceError::Rewind { .. }) => break Ok(()),
            other => break other,
        }
    };
    let _ = stop_tx.send(true);
    let result = match stage_task {
        // The stage task drains within the drain time from the stop, then closes its
        // consumer, which rdkafka does without a limit (see `close_consumer`): waited for
        // that long and a few seconds more, then left to the process exit.
        Some(t) => {
            let left = stopped_at.map_or(Duration::from_secs(drain_s), |at| {
                Duration::from_secs(drain_s).saturating_sub(at.elapsed())
            }) + STAGE_CLOSE_GRACE;
            match (result, tokio::time::timeout(left, t).await) {
                (Err(e), _) => Err(e),
                (Ok(()), Ok(Ok(r))) => r,
                (Ok(()), Ok(Err(e))) => Err(ServiceError::Config(format!("stage task: {e}"))),
                (Ok(()), Err(_)) => {
                    tracing::warn!(
                        waited_s = left.as_secs(),
                        "the [streams] stage task did not stop within the drain time; exiting without it (its uncommitted work is redone by the partitions' next owner)"
                    );
                    Ok(())
                }
            }
        }
        None => result,
    };
    // A scraper holding a keep-alive connection must not hold the exit up.
    let _ = tokio::time::timeout(Duration::from_secs(2), http_task).await;
    if let Some(t) = reload_task {
        let _ = t.await;
    }
    match &result {
        Ok(()) => tracing::info!("stopped"),
        Err(e) => tracing::error!(error = %e, "stopped on error"),
    }
    result
}

/// `[streams]`: creates the missing internal topics and checks they are co-partitioned,
/// retrying while the brokers are unreachable (as the consumer does at start); anything
/// else stops the start with one line.
async fn internal_topics(
    cfg: &Config,
    settings: &KafkaSettings,
    status: &Status,
) -> Result<(), ServiceError> {
    let max = Duration::from_secs(cfg.service.retry_backoff_max_s);
    let mut attempt = 0;
    loop {
        status.set(
            false,
            "creating and checking the internal topics ([streams])",
        );
        let (s, group, streams) = (
            settings.clone(),
            cfg.service.group_id.clone(),
            cfg.streams.clone(),
        );
        let r = tokio::task::spawn_blocking(move || {
            crate::streams::topics::ensure(&s, &group, &streams, Duration::from_secs(30))
        })
        .await
        .map_err(|e| ServiceError::InternalTopics(format!("internal topics: {e}")))?;
        match r {
            Ok(topics) => {
                tracing::info!(
                    topics = ?topics.all(),
                    partitions = cfg.streams.internal_partitions,
                    "internal topics co-partitioned; records go through them to the stages"
                );
                return Ok(());
            }
            Err(e) if e.retriable() => {
                attempt += 1;
                let wait = sink::backoff(attempt, max);
                tracing::warn!(error = %e, retry_in_s = wait.as_secs(), "internal topics not ready; retrying");
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(ServiceError::InternalTopics(e.to_string())),
        }
    }
}

/// The Kafka side of one pipeline: made at start, and again after a transaction failure
/// (exactly once), so a fatal producer error is met with a new producer.
struct Clients {
    producer: FutureProducer<SinkContext>,
    sink: Arc<Sink>,
    in_flight: sink::InFlightQueue,
    shared: Arc<Mutex<source::Assignment>>,
    consumer: Arc<Source>,
    txn: Option<Arc<txn::Transactions>>,
}

impl Clients {
    fn build(
        cfg: &Config,
        settings: &KafkaSettings,
        metrics: &Metrics,
        status: &Arc<Status>,
        dead_letter_cap: &sink::DeadLetterCap,
    ) -> Result<Clients, ServiceError> {
        let eos = cfg.service.processing_guarantee == ProcessingGuarantee::ExactlyOnce;
        let txn_id = eos.then(|| txn::transactional_id(settings, &cfg.service.group_id));
        let producer_config = match &txn_id {
            Some(id) => settings.transactional_config(id),
            None => settings.client_config(Role::Producer),
        };
        let producer: FutureProducer<SinkContext> = producer_config
            .create_with_context(SinkContext {
                status: status.clone(),
            })
            .map_err(|e| creation_error("producer", e, settings))?;
        let mut sink = Sink::new(
            producer.clone(),
            cfg.service.alert_topic.clone(),
            cfg.service.dead_letter_topic.clone(),
            metrics.clone(),
            Duration::from_secs(cfg.service.retry_backoff_max_s),
        )
        .with_dead_letter_cap(dead_letter_cap.clone());
        if cfg.streams.enabled {
            // Under exactly once the ingest's routed records are outputs of its batches.
            sink = sink.with_internal_topics(crate::streams::topics::InternalTopics::for_group(
                &cfg.service.group_id,
            ));
        }
        let sink = Arc::new(sink);
        let in_flight = sink::InFlightQueue::default();
        // The broker's default when unset is 60 s; the transactional config sets 10 s.
        let txn_timeout = txn::txn_timeout(&producer_config);
        let txn = txn_id.map(|id| {
            Arc::new(txn::Transactions::new(
                txn::TxnSettings {
                    id,
                    interval: Duration::from_millis(cfg.service.transaction_interval_ms),
                    txn_timeout,
                },
                producer.clone(),
                sink.clone(),
                in_flight.clone(),
                cfg.service.input_topics.clone(),
                metrics.clone(),
            ))
        });
        let mut ctx = SourceContext::new(
            cfg.service.input_topics.clone(),
            metrics.clone(),
            status.clone(),
            cfg.service.rebuild_state_s,
            Some((sink.clone(), in_flight.clone())),
        );
        if let Some(t) = &txn {
            ctx = ctx.with_transactions(t.clone());
        }
        let shared = ctx.shared();
        let consumer_config = if eos {
            settings.read_committed_config()
        } else {
            settings.client_config(Role::Consumer)
        };
        let consumer: Source = consumer_config
            .clone()
            .set("group.id", &cfg.service.group_id)
            .create_with_context(ctx)
            .map_err(|e| creation_error("consumer", e, settings))?;
        Ok(Clients {
            producer,
            sink,
            in_flight,
            shared,
            consumer: Arc::new(consumer),
            txn,
        })
    }
}

/// How long past the drain time the stop waits for the `[streams]` stage task to close.
const STAGE_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Leaves the consumer group and lets go of the pipeline's Kafka clients, off the async
/// threads and bounded by what is left of the drain time. Offsets are committed already; a
/// group left uncleanly only delays the next member's assignment by the session timeout.
///
/// `pipeline` must hold the last references to the consumer and producers:
/// dropping the last one closes the client, and a consumer's close polls until librdkafka
/// says it is closed, without a limit (the likeliest reason a fenced instance in CI did not
/// exit for 90 s). Done on an async thread, that close would hold the stop, and the exit,
/// with it; here it is given up after the bound, and the process exit does not wait for it.
async fn close_consumer(
    pipeline: pipeline::Pipeline,
    stopped_at: Option<std::time::Instant>,
    drain_s: u64,
) {
    let left = stopped_at.map_or(Duration::from_secs(drain_s), |t| {
        Duration::from_secs(drain_s).saturating_sub(t.elapsed())
    });
    let closing = tokio::task::spawn_blocking(move || {
        let consumer = pipeline.consumer.clone();
        consumer.unsubscribe();
        // The producers first, as before the consumer's close (its revoke uses neither).
        drop(pipeline);
        drop(consumer);
    });
    if tokio::time::timeout(left.max(Duration::from_secs(1)), closing)
        .await
        .is_err()
    {
        tracing::warn!("leaving the consumer group did not finish in time");
    }
}

/// Waits until the brokers answer and every topic exists, logging each failed attempt.
/// `Ok(false)`: shutdown was requested meanwhile.
pub(crate) async fn wait_for_cluster(
    producer: &FutureProducer<SinkContext>,
    cfg: &Config,
    status: &Status,
    stop: &mut watch::Receiver<bool>,
) -> Result<bool, ServiceError> {
    let s = &cfg.service;
    let mut topics: Vec<(&str, String)> = s
        .input_topics
        .iter()
        .map(|t| ("input", t.clone()))
        .collect();
    topics.push(("alert", s.alert_topic.clone()));
    topics.push(("dead-letter", s.dead_letter_topic.clone()));
    let max = Duration::from_secs(s.retry_backoff_max_s);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let p = producer.clone();
        let names: Vec<String> = topics.iter().map(|t| t.1.clone()).collect();
        // Metadata requests block: off the async threads, and raced with shutdown so a stop
        // request does not wait for a probe timing out (the probe ends on its own in 5 s).
        let probe = tokio::task::spawn_blocking(move || {
            let mut missing = Vec::new();
            for t in &names {
                let md = p.client().fetch_metadata(Some(t), Duration::from_secs(5))?;
                let found = md.topics().iter().any(|mt| {
                    mt.name() == t && mt.error().is_none() && !mt.partitions().is_empty()
                });
                if !found {
                    missing.push(t.clone());
                }
            }
            Ok::<_, KafkaError>(missing)
        });
        let probe = tokio::select! {
            r = probe => r,
            _ = stop.wait_for(|s| *s) => return Ok(false),
        }
        // The probe task panicking would be a bug in rdkafka; treat it as a failed attempt.
        .unwrap_or(Err(KafkaError::Canceled));
        if let Some(reason) = status.auth_failure() {
            return Err(ServiceError::Auth(reason));
        }
        let wait = sink::backoff(attempt, max);
        match probe {
            Err(e) if kafka::is_auth_failure(&e) => return Err(ServiceError::Auth(e.to_string())),
            Err(e) => {
                status.set(false, format!("Kafka brokers {} unreachable", s.brokers));
                tracing::warn!(
                    brokers = %s.brokers,
                    attempt,
                    retry_in_s = wait.as_secs(),
                    error = %e,
                    "Kafka brokers unreachable; retrying"
                );
            }
            Ok(missing) if missing.is_empty() => return Ok(true),
            Ok(missing) => {
                let named: Vec<String> = topics
                    .iter()
                    .filter(|t| missing.contains(&t.1))
                    .map(|(role, t)| format!("{role} topic {t}"))
                    .collect();
                let named = named.join(", ");
                status.set(false, format!("waiting for {named} to exist"));
                tracing::warn!(
                    attempt,
                    retry_in_s = wait.as_secs(),
                    "{named} does not exist (topics are not created automatically); retrying"
                );
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return Ok(false),
        }
    }
}

/// The input topics as `&str`s, for subscribing.
pub(crate) fn subscribe(consumer: &Source, topics: &[String]) -> Result<(), ServiceError> {
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&names)
        .map_err(|e| ServiceError::Consumer {
            kind: kafka::error_kind(&e),
            message: e.to_string(),
        })
}

#[cfg(test)]
mod status_tests {
    use super::*;

    /// Under exactly once a transaction failing again and again stopped every output while
    /// `/readyz` said "ready".
    #[test]
    fn a_failure_loop_makes_the_service_not_ready_until_it_is_over() {
        let s = Status::new("starting");
        s.set(true, "ready: 1 input partitions assigned");
        s.set_failing(Some("transactions failing: restarted 2 times".into()));
        assert_eq!(
            s.get(),
            (false, "transactions failing: restarted 2 times".to_string())
        );
        assert!(s.failing().is_some());
        s.set_failing(None);
        assert_eq!(s.failing(), None);
    }
}
