//! Exactly once (`service.processing_guarantee = "exactly_once"`): a batch's alerts, dead
//! letters and input offsets are written in one Kafka transaction, so a `read_committed`
//! reader sees each output once, whatever crashes in between.
//!
//! # How
//!
//! - One transactional producer per instance, its `transactional.id` stable across restarts
//!   ([`transactional_id`]), so `init_transactions` at start fences the previous
//!   incarnation (a zombie) and aborts a transaction it left open.
//! - A transaction is begun only when a batch has something to publish or offsets to move
//!   (no empty transactions); later batches join it until `service.transaction_interval_ms`
//!   has passed since it began (Kafka Streams' commit interval under exactly-once), then the
//!   offsets of every batch in it go in with `send_offsets_to_transaction` (with the
//!   consumer's group metadata, so a member fenced out of the group cannot commit) and it is
//!   committed. The consumer never commits offsets itself.
//! - A checkpoint is taken only right after a commit, with the committed offsets: it never
//!   reflects an output that might still be aborted.
//!
//! # librdkafka's pitfalls, each handled
//!
//! - **Retriable** (a commit or offset send that timed out): the same call is made again;
//!   the transaction is not aborted blindly (counted in
//!   `linewatch_transaction_retries_total`).
//! - **Abortable** (a failed delivery, a transaction the coordinator timed out): the
//!   transaction is aborted. The engine state has then run ahead of the committed offsets,
//!   so the pipeline is started again in-process ([`super::run`]): the newest checkpoint
//!   (never ahead of a commit) is restored and the records between its offsets and the
//!   committed ones re-read without publishing, exactly as at start.
//! - **Fatal** (the producer is unusable): the same restart with a new producer, whose
//!   `init_transactions` aborts whatever was open.
//! - **Fenced** (`ProducerFenced`: another instance started with our transactional id):
//!   that instance owns the work now; the service exits with one line instead of fighting
//!   it for the id.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::metrics::Metrics;
use super::sink::{InFlight, InFlightQueue, Sink, SinkContext};
use super::source::{lock, Assignment, Tp};
use crate::kafka::{self, KafkaSettings, Role};

/// How long one transactional call may block before it is retried (a timeout is retriable).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// What a transactional error asks of us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnError {
    /// The transaction was aborted (or must be): rewind to the committed offsets.
    Aborted(String),
    /// The producer is unusable: rewind with a new one.
    Fatal(String),
    /// Another instance took our transactional id over.
    Fenced(String),
}

impl TxnError {
    /// A fixed label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            TxnError::Aborted(_) => "aborted",
            TxnError::Fatal(_) => "fatal",
            TxnError::Fenced(_) => "fenced",
        }
    }

    pub fn message(&self) -> &str {
        match self {
            TxnError::Aborted(m) | TxnError::Fatal(m) | TxnError::Fenced(m) => m,
        }
    }
}

/// What to do about one error of a transactional call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Make the same call again.
    Retry,
    /// Abort the transaction, then rewind.
    Abort,
    /// New producer, then rewind.
    Fatal,
    /// Stop: another instance owns the transactional id.
    Fenced,
}

fn is_fenced_code(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced
    )
}

/// Sorts a transactional call's error (librdkafka's own flags first, as its documentation
/// asks: fatal, then abortable, then retriable).
pub fn action(e: &KafkaError) -> Action {
    match e {
        KafkaError::Transaction(t) if t.is_fatal() => {
            if is_fenced_code(t.code()) {
                Action::Fenced
            } else {
                Action::Fatal
            }
        }
        KafkaError::Transaction(t) if t.txn_requires_abort() => Action::Abort,
        KafkaError::Transaction(t) if t.is_retriable() => Action::Retry,
        // `commit_transaction` first flushes the queue; a flush that timed out is a commit
        // that has not finished yet.
        KafkaError::Flush(code) if kafka::classify_code(*code) == kafka::ErrorClass::Retriable => {
            Action::Retry
        }
        other => match other.rdkafka_error_code() {
            Some(c) if is_fenced_code(c) => Action::Fenced,
            Some(c) if kafka::classify_code(c) == kafka::ErrorClass::Retriable => Action::Retry,
            // A call in the wrong state or an unknown error: a new producer is the safe way on
            // (its init_transactions aborts whatever was open).
            _ => Action::Fatal,
        },
    }
}

/// The transactional id of this instance: `[kafka] "transactional.id"` (or
/// `"producer.transactional.id"`) when set; else `linewatch-<group>-<group.instance.id>`
/// when static membership is on (a StatefulSet pod's name: stable across restarts); else
/// `linewatch-<group>-<hostname>`, stable for one instance per host. Two instances of one
/// group on one host without `group.instance.id` share that id and fence each other: give
/// each its own `group.instance.id`.
pub fn transactional_id(settings: &KafkaSettings, group: &str) -> String {
    if let Some((_, v)) = settings
        .user_properties(Role::Producer)
        .find(|(k, _)| *k == "transactional.id")
    {
        return v.to_string();
    }
    if let Some((_, v)) = settings
        .user_properties(Role::Consumer)
        .find(|(k, _)| *k == "group.instance.id")
    {
        return format!("linewatch-{group}-{v}");
    }
    format!("linewatch-{group}-{}", hostname())
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that much.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc == 0 {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        if let Ok(s) = std::str::from_utf8(&buf[..end]) {
            if !s.is_empty() {
                return s.to_string();
            }
        }
    }
    "localhost".to_string()
}

/// The `transaction.timeout.ms` a producer made with `config` runs under: the broker's
/// default (60 s) when unset; [`KafkaSettings::transactional_config`] sets 10 s.
pub fn txn_timeout(config: &rdkafka::ClientConfig) -> Duration {
    config
        .get("transaction.timeout.ms")
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(60), Duration::from_millis)
}

/// The transaction metrics.
#[derive(Clone)]
pub struct TxnMetrics {
    transactions: IntCounterVec,
    retries: IntCounter,
    restarts: IntCounterVec,
    stage_rebuilds: IntCounterVec,
    stage_repeats: IntCounter,
    commit_seconds: Histogram,
}

// As in metrics.rs: constant definitions in a fresh registry cannot fail.
const STATIC_OK: &str = "static metric definitions are valid";

/// Labels of `linewatch_transactions_total`.
pub const TXN_RESULTS: [&str; 2] = ["committed", "aborted"];
/// Labels of `linewatch_pipeline_restarts_total`.
pub const RESTART_REASONS: [&str; 2] = ["aborted", "fatal"];
/// Labels of `linewatch_stage_rebuilds_total`: a stage transaction aborted, its producer
/// failed for good, or a stage partition was revoked with a transaction under way.
pub const STAGE_REBUILD_REASONS: [&str; 3] = ["aborted", "fatal", "revoked"];

impl TxnMetrics {
    pub fn register(r: &Registry) -> Self {
        let transactions = IntCounterVec::new(
            Opts::new(
                "linewatch_transactions_total",
                "Kafka transactions (exactly_once) by result.",
            ),
            &["result"],
        )
        .expect(STATIC_OK);
        r.register(Box::new(transactions.clone())).expect(STATIC_OK);
        let retries = IntCounter::new(
            "linewatch_transaction_retries_total",
            "Transactional calls (offset send, commit) made again after a retriable error such as a timeout.",
        )
        .expect(STATIC_OK);
        r.register(Box::new(retries.clone())).expect(STATIC_OK);
        let restarts = IntCounterVec::new(
            Opts::new(
                "linewatch_pipeline_restarts_total",
                "In-process restarts of the pipeline from the newest checkpoint and the committed offsets after an aborted transaction or a fatal producer error.",
            ),
            &["reason"],
        )
        .expect(STATIC_OK);
        r.register(Box::new(restarts.clone())).expect(STATIC_OK);
        let stage_rebuilds = IntCounterVec::new(
            Opts::new(
                "linewatch_stage_rebuilds_total",
                "[streams] under exactly_once: times this instance dropped every stage partition's state and rebuilt it from the internal topics up to the committed offsets, because the stage transaction was aborted, its producer failed, or a partition was revoked with a transaction under way.",
            ),
            &["reason"],
        )
        .expect(STATIC_OK);
        r.register(Box::new(stage_rebuilds.clone()))
            .expect(STATIC_OK);
        let stage_repeats = IntCounter::new(
            "linewatch_stage_repeats_suppressed_total",
            "[streams] under exactly_once: alerts a stage made again after a rebuild whose ids the partition's previous owner had published (its committed markers say so); not published twice.",
        )
        .expect(STATIC_OK);
        r.register(Box::new(stage_repeats.clone()))
            .expect(STATIC_OK);
        let commit_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "linewatch_transaction_commit_seconds",
                "Time to send a transaction's offsets and commit it.",
            )
            .buckets(vec![0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0]),
        )
        .expect(STATIC_OK);
        r.register(Box::new(commit_seconds.clone()))
            .expect(STATIC_OK);
        for l in TXN_RESULTS {
            transactions.with_label_values(&[l]);
        }
        for l in RESTART_REASONS {
            restarts.with_label_values(&[l]);
        }
        for l in STAGE_REBUILD_REASONS {
            stage_rebuilds.with_label_values(&[l]);
        }
        TxnMetrics {
            transactions,
            retries,
            restarts,
            stage_rebuilds,
            stage_repeats,
            commit_seconds,
        }
    }

    /// Alerts not published again (`[streams]`, exactly once).
    pub fn stage_repeats_suppressed(&self, n: u64) {
        self.stage_repeats.inc_by(n);
    }

    /// A rebuild of the stages' state (`[streams]`, exactly once), by reason (one of
    /// [`STAGE_REBUILD_REASONS`]).
    pub fn stage_rebuilt(&self, reason: &'static str) {
        self.stage_rebuilds.with_label_values(&[reason]).inc();
    }

    /// A pipeline restart, by reason (`aborted` or `fatal`).
    pub fn restarted(&self, reason: &'static str) {
        self.restarts.with_label_values(&[reason]).inc();
    }
}

#[derive(Debug, Default)]
struct State {
    /// When the open transaction began.
    open_since: Option<Instant>,
    /// An output could not be handed to the producer: the transaction must not commit.
    doomed: Option<String>,
    /// A failure met where it could not be returned (the rebalance callback).
    failed: Option<TxnError>,
    /// The open transaction has outputs (for the test hook).
    has_output: bool,
}

/// What a [`Transactions`] is set up with.
#[derive(Debug, Clone)]
pub struct TxnSettings {
    /// The transactional id ([`transactional_id`]).
    pub id: String,
    /// `service.transaction_interval_ms`.
    pub interval: Duration,
    /// The producer's `transaction.timeout.ms`.
    pub txn_timeout: Duration,
}

/// The transactional producer's state and calls, shared by the run loop and the consumer's
/// rebalance callback (a revoke commits the open transaction before the partitions go).
pub struct Transactions {
    /// The transactional id (see [`transactional_id`]).
    pub id: String,
    producer: FutureProducer<SinkContext>,
    sink: Arc<Sink>,
    queue: InFlightQueue,
    topics: Vec<String>,
    interval: Duration,
    state: Mutex<State>,
    metrics: Metrics,
    /// Batches processed while a commit was under way, waiting for the next transaction.
    held: Mutex<Vec<InFlight>>,
    /// Taken for the whole of a commit.
    commit_lock: Mutex<()>,
    hold: test_hook::Hold,
    /// How long one offset send or commit call may block before it is made again.
    call_timeout: Duration,
    /// The producer's `transaction.timeout.ms`: past it the broker aborts the transaction
    /// and bumps the producer epoch, which librdkafka reports as fencing too.
    txn_timeout: Duration,
}

impl Transactions {
    pub fn new(
        settings: TxnSettings,
        producer: FutureProducer<SinkContext>,
        sink: Arc<Sink>,
        queue: InFlightQueue,
        topics: Vec<String>,
        metrics: Metrics,
    ) -> Self {
        let TxnSettings {
            id,
            interval,
            txn_timeout,
        } = settings;
        Transactions {
            id,
            producer,
            sink,
            queue,
            topics,
            interval,
            state: Mutex::new(State::default()),
            metrics,
            held: Mutex::new(Vec::new()),
            commit_lock: Mutex::new(()),
            hold: test_hook::Hold::from_env(),
            call_timeout: test_hook::call_timeout().unwrap_or(CALL_TIMEOUT),
            txn_timeout,
        }
    }

    /// Takes the test hold from `var` instead (debug builds; see `test_hook`): the stage
    /// task's transactions are held by `LINEWATCH_TEST_HOLD_STAGE_TXN_MS`, apart from the
    /// pipeline's.
    pub fn with_hold_env(mut self, var: &str) -> Self {
        self.hold = test_hook::Hold::from_var(var, &test_hook::HELD_STAGE);
        self
    }

    /// `init_transactions`: registers the id with the coordinator, fences an older producer
    /// with the same id and aborts what it left open. Blocking; retried while retriable,
    /// until `stop` says the service is stopping.
    pub fn init(&self, stop: &dyn Fn() -> bool) -> Result<(), TxnError> {
        let mut attempt = 0;
        loop {
            match self.producer.init_transactions(CALL_TIMEOUT) {
                Ok(()) => return Ok(()),
                Err(e) => match action(&e) {
                    Action::Retry | Action::Abort if !stop() => {
                        attempt += 1;
                        tracing::warn!(attempt, error = %e, "initialising transactions: retrying");
                        std::thread::sleep(super::sink::backoff(attempt, Duration::from_secs(5)));
                    }
                    Action::Fenced => return Err(TxnError::Fenced(e.to_string())),
                    _ => return Err(TxnError::Fatal(e.to_string())),
                },
            }
        }
    }

    /// A failure recorded by the rebalance callback, if any.
    pub fn check(&self) -> Result<(), TxnError> {
        match &lock(&self.state).failed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Begins a transaction unless one is open (call before handing outputs to the
    /// producer, and only for a batch with outputs or offsets: no empty transactions).
    pub fn begin(&self, has_output: bool) -> Result<(), TxnError> {
        self.check()?;
        let mut st = lock(&self.state);
        if st.open_since.is_none() {
            if let Err(e) = self.producer.begin_transaction() {
                return Err(match action(&e) {
                    Action::Fenced => self.fenced(e.to_string()),
                    _ => TxnError::Fatal(e.to_string()),
                });
            }
            st.open_since = Some(Instant::now());
            st.has_output = false;
        }
        st.has_output |= has_output;
        Ok(())
    }

    /// Notes that an output of the open transaction never reached the producer: committing
    /// would lose it, so the transaction will be aborted.
    pub fn doom(&self, why: String) {
        lock(&self.state).doomed.get_or_insert(why);
    }

    /// A transaction is open.
    pub fn is_open(&self) -> bool {
        lock(&self.state).open_since.is_some()
    }

    /// The open transaction has lasted the commit interval.
    pub fn due(&self) -> bool {
        lock(&self.state)
            .open_since
            .is_some_and(|t| t.elapsed() >= self.interval)
    }

    /// Commits the open transaction with the offsets of every batch in it, then counts the
    /// batches' outputs as published and forgets them; returns their offsets, which are now
    /// committed. Blocking (broker round trips): call from a blocking thread or the
    /// rebalance callback. On an abortable error the transaction is aborted before
    /// returning.
    pub fn commit_open(
        &self,
        group: Option<&ConsumerGroupMetadata>,
        shared: &Mutex<Assignment>,
    ) -> Result<Option<BTreeMap<Tp, i64>>, TxnError> {
        // One commit at a time: the rebalance callback waits here for a commit the run loop
        // has under way on a blocking thread.
        let _one = lock(&self.commit_lock);
        self.check()?;
        let (open, doomed, has_output) = {
            let st = lock(&self.state);
            (st.open_since.is_some(), st.doomed.clone(), st.has_output)
        };
        if !open {
            return Ok(None);
        }
        if let Some(why) = doomed {
            self.abort();
            return Err(TxnError::Aborted(why));
        }
        if has_output {
            self.hold.maybe_hold();
        }
        let started = Instant::now();
        // The transaction's batches: taken out, so the run loop may look at the queue while
        // the commit is under way (nothing joins this transaction meanwhile: the run loop
        // holds later batches back until it is over).
        let mut batches: Vec<InFlight> = lock(&self.queue).drain(..).collect();
        let mut offsets: BTreeMap<Tp, i64> = BTreeMap::new();
        {
            let shared = lock(shared);
            for b in &batches {
                for (tp, n) in &b.next {
                    if shared.assigned.contains_key(tp) {
                        let o = offsets.entry(*tp).or_insert(*n);
                        *o = (*o).max(*n);
                    }
                }
            }
        }
        let mut tpl = TopicPartitionList::with_capacity(offsets.len());
        for (tp, n) in &offsets {
            // Adding a non-negative offset to a fresh list cannot fail.
            let _ = tpl.add_partition_offset(&self.topics[tp.0], tp.1, Offset::Offset(*n));
        }
        if tpl.count() > 0 {
            let Some(group) = group else {
                self.abort();
                return Err(TxnError::Aborted(
                    "the consumer has no group metadata (not in the group)".into(),
                ));
            };
            let sent = self.call(|| {
                self.producer
                    .send_offsets_to_transaction(&tpl, group, self.call_timeout)
            });
            self.learn_if_failed(&sent, &mut batches);
            sent?;
        }
        let committed = self.call(|| self.producer.commit_transaction(self.call_timeout));
        self.learn_if_failed(&committed, &mut batches);
        committed?;
        self.metrics
            .txn
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .txn
            .transactions
            .with_label_values(&["committed"])
            .inc();
        *lock(&self.state) = State::default();
        // Every message is on the broker and visible to read_committed readers now.
        for mut b in batches {
            let _ = self.sink.collect(&mut b);
            self.metrics.batch_done(b.started.elapsed().as_secs_f64());
        }
        let mut shared = lock(shared);
        for (tp, n) in &offsets {
            shared.acked.insert(*tp, *n);
        }
        Ok(Some(offsets))
    }

    /// A transaction that did not commit: what its deliveries say about the dead-letter
    /// topic is kept for the next attempt ([`Sink::learn_from_abort`]).
    fn learn_if_failed(&self, r: &Result<(), TxnError>, batches: &mut [InFlight]) {
        if r.is_err() {
            for b in batches {
                self.sink.learn_from_abort(b, Duration::from_secs(1));
            }
        }
    }

    /// One transactional call, made again while its error is retriable; an abortable error
    /// aborts the transaction.
    fn call(&self, f: impl Fn() -> rdkafka::error::KafkaResult<()>) -> Result<(), TxnError> {
        let mut attempt = 0u32;
        loop {
            let Err(e) = f() else {
                return Ok(());
            };
            match action(&e) {
                Action::Retry => {
                    attempt += 1;
                    self.metrics.txn.retries.inc();
                    tracing::warn!(attempt, error = %e, "transactional call did not finish (retriable); calling again, not aborting");
                    std::thread::sleep(Duration::from_millis(50 * u64::from(attempt.min(20))));
                }
                Action::Abort => {
                    self.abort();
                    return Err(TxnError::Aborted(e.to_string()));
                }
                Action::Fatal => return Err(TxnError::Fatal(e.to_string())),
                Action::Fenced => return Err(self.fenced(e.to_string())),
            }
        }
    }

    /// librdkafka says `_FENCED` both when another producer took our id and when the
    /// broker aborted our transaction for lasting past `transaction.timeout.ms` (it bumps
    /// the epoch). Only the first is a reason to stop: a transaction open that long was
    /// timed out, and the pipeline rewinds with a new producer. (Were both true, the new
    /// producer would fence the other instance once, and that one, its transaction young,
    /// would stop: no fight.)
    fn fenced(&self, message: String) -> TxnError {
        let age = lock(&self.state).open_since.map(|t| t.elapsed());
        match age {
            Some(age) if age >= self.txn_timeout => TxnError::Aborted(format!(
                "the transaction was open {:.1} s, past transaction.timeout.ms, so the broker aborted it ({message})",
                age.as_secs_f64()
            )),
            _ => TxnError::Fenced(message),
        }
    }

    /// Aborts the open transaction (its outputs are never visible to read_committed
    /// readers). A failure here leaves the producer to be replaced, which aborts it anyway.
    pub fn abort(&self) {
        let was_open = std::mem::take(&mut *lock(&self.state)).open_since.is_some();
        if !was_open {
            return;
        }
        self.metrics
            .txn
            .transactions
            .with_label_values(&["aborted"])
            .inc();
        if let Err(e) = self.producer.abort_transaction(CALL_TIMEOUT) {
            tracing::warn!(error = %e, "aborting the transaction failed; the new producer's init_transactions aborts it");
        }
    }

    /// Keeps a processed batch until the commit under way is over (librdkafka allows no
    /// send while a transaction commits); returns how many are kept.
    pub fn hold_back(&self, b: InFlight) -> usize {
        let mut h = lock(&self.held);
        h.push(b);
        h.len()
    }

    /// The batches held back, oldest first.
    pub fn take_held(&self) -> Vec<InFlight> {
        std::mem::take(&mut *lock(&self.held))
    }

    /// Batches are held back for the next transaction. At a revoke they cannot be sent
    /// from the rebalance callback, and their records were run through the engine: the
    /// pipeline must rewind rather than let them go unpublished.
    pub fn has_held(&self) -> bool {
        !lock(&self.held).is_empty()
    }

    /// Records a failure met where it cannot be returned (the rebalance callback); the run
    /// loop finds it at its next look.
    pub fn fail(&self, e: TxnError) {
        lock(&self.state).failed.get_or_insert(e);
    }
}

/// Hooks for the broker tests, honoured only in debug builds:
/// - `LINEWATCH_TEST_HOLD_TXN_MS=MS[:COUNT]`: the service logs "test hook: holding an open
///   transaction" and sleeps MS before committing each of its first COUNT (default 1)
///   transactions that hold outputs, so a test can kill it with a transaction open, or let
///   the transaction time out on the broker.
/// - `LINEWATCH_TEST_HOLD_STAGE_TXN_MS=MS[:COUNT]`: the same for the `[streams]` stage
///   task's transactions.
/// - `LINEWATCH_TEST_TXN_CALL_TIMEOUT_MS=MS`: the offset send and commit calls time out
///   after MS, so a test sees librdkafka's retriable timeouts and their retries.
mod test_hook {
    pub fn call_timeout() -> Option<std::time::Duration> {
        if !cfg!(debug_assertions) {
            return None;
        }
        let ms = std::env::var("LINEWATCH_TEST_TXN_CALL_TIMEOUT_MS").ok()?;
        ms.parse().ok().map(std::time::Duration::from_millis)
    }

    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    #[derive(Debug)]
    pub struct Hold {
        ms: u64,
        left: AtomicU32,
        held: &'static AtomicU32,
    }

    impl Default for Hold {
        fn default() -> Hold {
            Hold {
                ms: 0,
                left: AtomicU32::new(0),
                held: &HELD,
            }
        }
    }

    /// Transactions held so far in this process (restarts of the pipeline included).
    static HELD: AtomicU32 = AtomicU32::new(0);
    /// The same for the stage task's transactions (rebuilds of the stages included).
    pub static HELD_STAGE: AtomicU32 = AtomicU32::new(0);

    impl Hold {
        pub fn from_env() -> Hold {
            Hold::from_var("LINEWATCH_TEST_HOLD_TXN_MS", &HELD)
        }

        pub fn from_var(var: &str, held: &'static AtomicU32) -> Hold {
            if !cfg!(debug_assertions) {
                return Hold::default();
            }
            let Ok(v) = std::env::var(var) else {
                return Hold::default();
            };
            let (ms, count) = v.split_once(':').unwrap_or((v.as_str(), "1"));
            Hold {
                ms: ms.parse().unwrap_or(0),
                left: AtomicU32::new(count.parse().unwrap_or(1)),
                held,
            }
        }

        pub fn maybe_hold(&self) {
            if self.ms == 0 {
                return;
            }
            let total = self.left.load(Ordering::Relaxed);
            if self.held.fetch_add(1, Ordering::Relaxed) >= total {
                return;
            }
            tracing::warn!(hold_ms = self.ms, "test hook: holding an open transaction");
            std::thread::sleep(Duration::from_millis(self.ms));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn transactional_id_comes_from_the_static_member_id_then_the_host() {
        let mut p = BTreeMap::new();
        let s = KafkaSettings::new("b:9092", p.clone());
        let host = transactional_id(&s, "g");
        assert!(host.starts_with("linewatch-g-") && host.len() > "linewatch-g-".len());
        assert_eq!(
            transactional_id(&s, "g"),
            host,
            "stable across calls (restarts)"
        );
        p.insert("group.instance.id".to_string(), "linewatch-0".to_string());
        let s = KafkaSettings::new("b:9092", p.clone());
        assert_eq!(transactional_id(&s, "g"), "linewatch-g-linewatch-0");
        p.insert("producer.transactional.id".to_string(), "mine".to_string());
        let s = KafkaSettings::new("b:9092", p);
        assert_eq!(transactional_id(&s, "g"), "mine");
    }

    #[test]
    fn fencing_stops_timeouts_retry_and_wrong_states_take_a_new_producer() {
        use RDKafkaErrorCode as C;
        assert_eq!(
            action(&KafkaError::Flush(C::OperationTimedOut)),
            Action::Retry
        );
        assert_eq!(
            action(&KafkaError::MessageProduction(C::ProducerFenced)),
            Action::Fenced
        );
        assert_eq!(action(&KafkaError::Flush(C::Fatal)), Action::Fatal);
        assert_eq!(
            action(&KafkaError::MessageProduction(C::State)),
            Action::Fatal
        );
    }
}
