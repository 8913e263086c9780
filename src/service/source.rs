//! The input side: a Kafka consumer group member whose offsets the service commits itself.
//!
//! Offsets are never stored or committed by librdkafka on its own (see
//! [`crate::kafka`]): the run loop commits a batch's offsets only after every alert and dead
//! letter it caused has been acknowledged. Rebalances are handled here, in the
//! [`ConsumerContext`]:
//!
//! - **Revoke**: librdkafka runs the rebalance callback only from inside a poll of the run
//!   loop. Earlier batches may still be in flight (their outputs handed to the producer,
//!   not yet acknowledged): the callback flushes the producer, takes the batches now
//!   acknowledged, in order, and commits their offsets with the revoked partitions'
//!   acknowledged ones, synchronously, so they are on the broker before another member
//!   takes over. A batch still unacknowledged is left to the run loop; what it read of a
//!   revoked partition is re-read by the next owner (repeats with the same alert ids).
//!   Records of the revoked partition not yet processed are dropped (the next owner re-reads
//!   them from our last commit).
//! - **Generations**: each assign callback starts a new [`Generation`], and every record
//!   taken from the consumer carries the generation of its partition's assignment at that
//!   moment. The run loop processes, holds for alignment and commits a record only while
//!   its partition is still assigned under that generation. This is what makes an eager
//!   rebalance safe when the revoke and the assign after it (the same partitions handed
//!   back, maybe with others) both happen inside one poll: records read before the revoke
//!   are dropped, records of the new assignment, already past the consumer's position, are
//!   kept (issue 14: they used to be dropped with the old ones, and later commits skipped
//!   them). A checkpoint taken at an assignment can key on the generation the same way.
//! - **Assign**: window state lives in memory, so a partition that was consumed before (by
//!   us before a restart, or by another member) is started up to `rebuild_state_s` (by Kafka
//!   timestamp) before its committed offset. Records below the committed offset go through
//!   the engine to rebuild state, but their outputs are not published again: they were
//!   acknowledged before that offset was committed. With checkpoints, an assignment
//!   reaching an engine that holds none of the assigned partitions' state first restores
//!   the newest checkpoint of exactly that partition set, and the re-read starts at its
//!   offsets (see `SourceContext::restore_for_assignment` and [`crate::checkpoint::service`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;

use super::metrics::Metrics;
use super::sink::{InFlightQueue, Sink};
use super::{Status, Throttle};
use crate::checkpoint::service::Restorer;
use crate::checkpoint::{InputPartition, Restored};
use crate::kafka::{self, ErrorClass};

/// A partition of one of the input topics: (index into the input topic list, partition).
pub type Tp = (usize, i32);

/// Which assignment of a partition a record was read under: every assign callback starts a
/// new one, so a partition revoked and assigned again (an eager rebalance) is told apart
/// from its earlier assignment. Generations start at 1.
pub type Generation = u64;

/// What `/readyz` says of a member the group gave no partitions.
pub const STANDING_BY: &str = "ready: standing by (in the consumer group, no partitions assigned)";

/// What `/readyz` says of a member holding `n` partitions.
pub fn assigned_status(n: usize) -> String {
    format!("ready: {n} input partitions assigned")
}

/// Timeout of the broker requests made inside the rebalance callback.
const REBALANCE_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One input record of a [`Batch`]; its payload is a range of the batch's buffer.
#[derive(Debug, Clone, Copy)]
pub struct InRecord {
    pub tp: Tp,
    pub offset: i64,
    start: usize,
    end: usize,
    /// The message's Kafka timestamp, epoch ms: when the broker appended it
    /// (`LogAppendTime` topics) or when its producer made it (`CreateTime`).
    pub kafka_ts_ms: Option<i64>,
    /// Below the committed offset at assignment: rebuilds state, publishes nothing.
    pub rebuild: bool,
    /// The assignment it was read under; processed only while that one lasts.
    pub generation: Generation,
}

/// Input records copied out of the consumer so the batch outlives the polls that returned
/// them. Payloads share one buffer, reused batch after batch: no allocation per record.
#[derive(Debug, Default)]
pub struct Batch {
    buf: Vec<u8>,
    pub records: Vec<InRecord>,
}

impl Batch {
    pub fn with_capacity(records: usize) -> Self {
        Batch {
            buf: Vec::with_capacity(records * 256),
            records: Vec::with_capacity(records),
        }
    }

    /// Copies a record in.
    pub fn push(
        &mut self,
        tp: Tp,
        generation: Generation,
        offset: i64,
        payload: &[u8],
        kafka_ts_ms: Option<i64>,
        rebuild: bool,
    ) {
        let start = self.buf.len();
        self.buf.extend_from_slice(payload);
        self.records.push(InRecord {
            tp,
            offset,
            start,
            end: self.buf.len(),
            kafka_ts_ms,
            rebuild,
            generation,
        });
    }

    pub fn payload(&self, r: &InRecord) -> &[u8] {
        &self.buf[r.start..r.end]
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Empties the batch, keeping its buffers for the next one.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.records.clear();
    }
}

/// What the consumer context and the run loop share.
#[derive(Debug, Default)]
pub struct Assignment {
    /// Partitions assigned now, with the generation of their assignment. A record read under
    /// another generation is neither processed nor committed (issue 14: a revoke and the
    /// assign after it can both happen before the run loop looks).
    pub assigned: BTreeMap<Tp, Generation>,
    /// The last generation handed out.
    pub generation: Generation,
    /// Per assigned partition, the consumer position at which librdkafka's statistics saw
    /// it at the end of its log (nothing beyond it on the broker): alignment need not wait
    /// for it while nothing newer has arrived (see [`super::align`]).
    pub caught_up: BTreeMap<Tp, i64>,
    /// First offset whose outputs must be published, per partition being rebuilt.
    pub live_from: BTreeMap<Tp, i64>,
    /// Next offset to commit per partition: everything below it is acknowledged.
    pub acked: BTreeMap<Tp, i64>,
    /// The group's committed offset when the partition was assigned: the lag's base until
    /// this process commits (a member that only re-reads never does, and librdkafka then
    /// knows no lag; under exactly once the lag is counted from transactions).
    pub group_committed: BTreeMap<Tp, i64>,
    /// Partitions revoked since the run loop last looked (it forgets their watermarks and
    /// gauges; held records are told apart by generation, not by this list).
    pub revoked: Vec<Tp>,
    /// Next offset after the last record this process ran through the engine, per
    /// partition ever assigned (kept across revocations: the engine keeps the state too).
    /// Replaced by a restored checkpoint's offsets when its engine replaces ours.
    pub processed: BTreeMap<Tp, i64>,
    /// The partitions whose records the engine's state holds: every one assigned since the
    /// engine was made or restored (a revoke leaves its state in the engine).
    pub held: BTreeSet<Tp>,
    /// Reads checkpoints on assignment (checkpoints on); set by the run loop at start.
    pub restorer: Option<Restorer>,
    /// A checkpoint restored by the assign callback, for the run loop to take as its engine
    /// before it processes or checkpoints anything more.
    pub restored: Option<Box<Restored>>,
    /// The group's last assignment gave this member no partitions: it stands by.
    pub standby: bool,
    /// Since when librdkafka's statistics have seen no connection to any broker of the
    /// cluster up ([`brokers_up`]); `None` while one is. The run loop reports the service
    /// not ready once this has lasted [`BROKERS_DOWN_GRACE`].
    pub brokers_down_since: Option<std::time::Instant>,
}

impl Assignment {
    /// While some assigned partition still has records to re-read below its committed
    /// offset (the state rebuild), the assigned partitions with nothing to re-read (no
    /// committed offset, as for a partition added to the input topic, or none recent
    /// enough) none of whose records this process has run through the engine yet. The run
    /// loop has the engine take them as at rest (not holding the watermark) until their
    /// first record: the re-read must rebuild state as the run that published those outputs
    /// did, and that run's watermark knew nothing of them. Held at its start by such a
    /// partition, the re-read ran no barrier, so the alerts the barriers had made then came
    /// at the first live record after it and were published again, with the same ids.
    /// Alignment releases their records in event-time order with the others', so none of
    /// them is judged late for it.
    pub fn live_only_while_rebuilding(&self) -> Vec<Tp> {
        let rebuilding = self.live_from.iter().any(|(tp, live)| {
            self.assigned.contains_key(tp) && self.processed.get(tp).is_none_or(|p| p < live)
        });
        if !rebuilding {
            return Vec::new();
        }
        self.assigned
            .keys()
            .filter(|tp| !self.live_from.contains_key(tp) && !self.processed.contains_key(tp))
            .copied()
            .collect()
    }
}

/// How long no broker may be reachable before the service says it is not ready: longer
/// than a reconnect after a broker's restart or a leader's move takes, so a blip does not
/// make readiness flap.
pub const BROKERS_DOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether the client is connected to some broker of the cluster, by its statistics: a
/// broker it learned from the cluster's metadata (not a bootstrap address, nor a logical
/// one such as the group coordinator's) in state `UP`. `None` before it has learned any.
pub fn brokers_up(stats: &Statistics) -> Option<bool> {
    let mut learned = stats.brokers.values().filter(|b| b.nodeid >= 0).peekable();
    learned.peek()?;
    Some(learned.any(|b| b.state == "UP"))
}

/// The consumer's librdkafka callbacks.
pub struct SourceContext {
    topics: Vec<String>,
    metrics: Metrics,
    status: Arc<Status>,
    rebuild_state_ms: i64,
    shared: Arc<Mutex<Assignment>>,
    throttle: Throttle,
    /// The producer side and the batches in flight, so a revoke can finish them first.
    deliveries: Option<(Arc<Sink>, InFlightQueue)>,
    /// Exactly once: a revoke commits the open transaction (which carries the offsets)
    /// instead of committing offsets through the consumer.
    transactions: Option<Arc<super::txn::Transactions>>,
}

/// Locks the state the run loop shares with the consumer's callbacks (the assignment, the
/// batches in flight), riding over a poisoned lock: the data is plain maps and queues that a
/// panic elsewhere cannot leave half-updated in a way that matters more than stopping.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SourceContext {
    /// A context for `topics` (the input topic list, whose order gives [`Tp`] indices).
    pub fn new(
        topics: Vec<String>,
        metrics: Metrics,
        status: Arc<Status>,
        rebuild_state_s: u64,
        deliveries: Option<(Arc<Sink>, InFlightQueue)>,
    ) -> Self {
        SourceContext {
            topics,
            metrics,
            status,
            rebuild_state_ms: (rebuild_state_s as i64).saturating_mul(1000),
            shared: Arc::new(Mutex::new(Assignment::default())),
            throttle: Throttle::default(),
            deliveries,
            transactions: None,
        }
    }

    /// Exactly once: offsets go only through `t`'s transactions, never a consumer commit.
    pub fn with_transactions(mut self, t: Arc<super::txn::Transactions>) -> Self {
        self.transactions = Some(t);
        self
    }

    /// Waits (up to the rebalance request timeout) for the batches in flight to be
    /// acknowledged; returns the offsets of those that were, oldest first, and forgets them.
    /// A batch not acknowledged in time stays for the run loop; what it read of a revoked
    /// partition is then re-read by the next owner (duplicates with the same alert ids).
    fn finish_in_flight(&self) -> Vec<BTreeMap<Tp, i64>> {
        let Some((sink, queue)) = &self.deliveries else {
            return Vec::new();
        };
        let mut q = lock(queue);
        if q.is_empty() {
            return Vec::new();
        }
        sink.flush(REBALANCE_REQUEST_TIMEOUT);
        let mut done = Vec::new();
        while let Some(front) = q.front_mut() {
            match sink.collect(front) {
                Ok(()) if front.is_done() => {
                    if let Some(b) = q.pop_front() {
                        self.metrics.batch_done(b.started.elapsed().as_secs_f64());
                        done.push(b.next);
                    }
                }
                // Waiting or failed: the run loop retries it, or stops on a final failure.
                _ => break,
            }
        }
        tracing::info!(
            acknowledged = done.len(),
            still_in_flight = q.len(),
            "batches in flight at a revoke: acknowledged ones are committed before the partitions go"
        );
        done
    }

    /// The state shared with the run loop.
    pub fn shared(&self) -> Arc<Mutex<Assignment>> {
        self.shared.clone()
    }

    fn topic_index(&self, topic: &str) -> Option<usize> {
        self.topics.iter().position(|t| t == topic)
    }

    /// Restores the newest checkpoint of exactly the partitions held after this
    /// assignment, when it reaches an engine holding no partitions: at start, a standby
    /// given the partitions of a member that went, a member that lost all of its own. The
    /// restored engine waits in [`Assignment::restored`] for the run loop, and its offsets
    /// become what [`Self::rebuild_offsets`] re-reads from. Gaining partitions while
    /// holding some keeps the state held (unkeyed input's state cannot be split or joined
    /// by partition), as does an assignment of partitions whose state the engine holds
    /// and is current (an eager rebalance revokes everything and hands back all or some of
    /// it): nobody committed beyond what it processed, so its state is newer than any
    /// checkpoint. A partition the engine saw once but others have gone on with since (a
    /// standby that held it for a moment) is behind: the checkpoint is restored.
    fn restore_for_assignment(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let mut shared = lock(&self.shared);
        if !shared.assigned.is_empty() || shared.restorer.is_none() {
            let new = tpl
                .elements()
                .into_iter()
                .filter_map(|e| Some((self.topic_index(e.topic())?, e.partition())));
            shared.held.extend(new);
            return;
        }
        let set: BTreeSet<Tp> = tpl
            .elements()
            .into_iter()
            .filter_map(|e| Some((self.topic_index(e.topic())?, e.partition())))
            .collect();
        if set.is_empty() {
            return;
        }
        if set.is_subset(&shared.held) {
            // Is any of them behind what the group has committed?
            let processed = shared.processed.clone();
            drop(shared);
            let behind = match consumer.committed_offsets(tpl.clone(), REBALANCE_REQUEST_TIMEOUT) {
                Ok(c) => c.elements().iter().any(|e| {
                    let seen = self
                        .topic_index(e.topic())
                        .and_then(|ti| processed.get(&(ti, e.partition())));
                    matches!(e.offset(), Offset::Offset(c) if seen.is_none_or(|s| *s < c))
                }),
                // The re-read plan cannot look them up either; keep what is held.
                Err(_) => false,
            };
            if !behind {
                return;
            }
            shared = lock(&self.shared);
        }
        let partitions: Vec<InputPartition> = set
            .iter()
            .map(|tp| InputPartition {
                topic: self.topics[tp.0].clone(),
                partition: tp.1,
            })
            .collect();
        // Reading a checkpoint blocks (a state topic read to its end): the lock is not held
        // meanwhile, though only this callback and the run loop, which waits for it, use it.
        let Some(mut restorer) = shared.restorer.take() else {
            return;
        };
        drop(shared);
        self.status
            .set(false, "restoring window state from a checkpoint");
        let mut restored = restorer.restore(&partitions);
        if let Some(r) = &restored {
            // A group moved back since the checkpoint (re-processing a range) must not get
            // a state from ahead of it. Unknown committed offsets (the lookup failed) do
            // not stop the restore: the re-read plan cannot look them up either.
            if let Ok(c) = consumer.committed_offsets(tpl.clone(), REBALANCE_REQUEST_TIMEOUT) {
                let committed: Vec<(String, i32, Option<i64>)> = c
                    .elements()
                    .iter()
                    .map(|e| {
                        let o = match e.offset() {
                            Offset::Offset(o) => Some(o),
                            _ => None,
                        };
                        (e.topic().to_string(), e.partition(), o)
                    })
                    .collect();
                if restorer.rewound(r, &committed) {
                    restored = None;
                }
            }
        }
        let mut shared = lock(&self.shared);
        shared.restorer = Some(restorer);
        match restored {
            Some(r) => {
                let processed = r
                    .manifest
                    .offsets
                    .iter()
                    .filter_map(|o| Some(((self.topic_index(&o.topic)?, o.partition), o.offset)))
                    .filter(|(tp, _)| set.contains(tp))
                    .collect();
                shared.processed = processed;
                shared.held = set;
                shared.restored = Some(Box::new(r));
            }
            // Today's re-read: the engine keeps what it holds (nothing, or the state of
            // partitions now elsewhere) and re-reads the assigned ones.
            None => shared.held.extend(set),
        }
    }

    /// Chooses start offsets for newly assigned partitions (see the module doc).
    fn plan_assignment(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &TopicPartitionList,
    ) -> TopicPartitionList {
        self.restore_for_assignment(consumer, tpl);
        let mut plan = tpl.clone();
        let mut live_from = Vec::new();
        let mut group_committed = Vec::new();
        if self.rebuild_state_ms > 0 {
            match self.rebuild_offsets(consumer, tpl) {
                Ok(starts) => {
                    for (topic, partition, start, committed) in starts {
                        if let Some(ti) = self.topic_index(&topic) {
                            group_committed.push(((ti, partition), committed));
                        }
                        if start < committed {
                            // Only error is an unknown partition, and these come from `tpl`.
                            let _ =
                                plan.set_partition_offset(&topic, partition, Offset::Offset(start));
                            if let Some(ti) = self.topic_index(&topic) {
                                live_from.push(((ti, partition), committed));
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(
                    error = %e,
                    "could not look up offsets to rebuild window state; starting at the committed offsets, so detections spanning the restart may be missed"
                ),
            }
        }
        let mut shared = lock(&self.shared);
        shared.generation += 1;
        let generation = shared.generation;
        for e in tpl.elements() {
            if let Some(ti) = self.topic_index(e.topic()) {
                let tp = (ti, e.partition());
                shared.assigned.insert(tp, generation);
                shared.live_from.remove(&tp);
                shared.caught_up.remove(&tp);
            }
        }
        let rebuilding = live_from.len();
        shared.live_from.extend(live_from);
        shared.group_committed.extend(group_committed);
        tracing::info!(
            partitions = tpl.count(),
            rebuilding,
            generation,
            assigned_total = shared.assigned.len(),
            "partitions assigned"
        );
        shared.standby = shared.assigned.is_empty();
        if shared.standby {
            // More members than partitions: this one holds nothing until a member goes,
            // then the group gives it that member's partitions and it restores their state.
            tracing::info!("no partitions for this member: standing by to take over");
            self.metrics.standing_by();
            self.status.set(true, STANDING_BY);
        } else {
            self.metrics.assignment(shared.assigned.len());
            self.status
                .set(true, assigned_status(shared.assigned.len()));
        }
        plan
    }

    /// (topic, partition, start offset, committed offset) for each partition with a commit.
    fn rebuild_offsets(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &TopicPartitionList,
    ) -> KafkaResult<Vec<(String, i32, i64, i64)>> {
        let committed = consumer.committed_offsets(tpl.clone(), REBALANCE_REQUEST_TIMEOUT)?;
        let since = crate::replay::wall_ms() - self.rebuild_state_ms;
        let mut times = TopicPartitionList::new();
        let mut out = Vec::new();
        for e in committed.elements() {
            if let Offset::Offset(c) = e.offset() {
                times.add_partition_offset(e.topic(), e.partition(), Offset::Offset(since))?;
                out.push((e.topic().to_string(), e.partition(), c, c));
            }
        }
        if out.is_empty() {
            // A new group: nothing was published, so everything is live.
            return Ok(out);
        }
        let found = consumer.offsets_for_times(times, REBALANCE_REQUEST_TIMEOUT)?;
        let shared = lock(&self.shared);
        for e in found.elements() {
            if let Offset::Offset(start) = e.offset() {
                if let Some(o) = out
                    .iter_mut()
                    .find(|o| o.0 == e.topic() && o.1 == e.partition())
                {
                    // What this process already ran through the engine is in its state: an
                    // eager rebalance handing the same partitions back re-reads nothing.
                    let seen = self
                        .topic_index(e.topic())
                        .and_then(|ti| shared.processed.get(&(ti, e.partition())))
                        .copied()
                        .unwrap_or(0);
                    o.2 = start.max(seen).min(o.3);
                }
            }
            // `End`: nothing that recent before the commit point; nothing to rebuild.
        }
        Ok(out)
    }

    /// Commits the acknowledged offsets of `tpl`'s partitions before they are given up.
    fn commit_revoked(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let finished = match &self.transactions {
            // The open transaction holds the offsets of every batch in flight: committed
            // here, before the partitions go (a failure is left for the run loop, which
            // rewinds; the aborted outputs are then re-made by whoever owns the records).
            Some(t) if t.check().is_ok() => {
                if let Err(e) = t.commit_open(consumer.group_metadata().as_ref(), &self.shared) {
                    tracing::warn!(
                        kind = e.kind(),
                        error = e.message(),
                        "committing the open transaction at a revoke failed"
                    );
                    t.fail(e);
                } else if t.has_held() {
                    t.fail(super::txn::TxnError::Aborted(
                        "partitions revoked while processed batches waited for the next transaction".into(),
                    ));
                }
                Vec::new()
            }
            // The pipeline is being restarted or stopped: nothing is committed.
            Some(_) => {
                slow_close_hook();
                Vec::new()
            }
            None => self.finish_in_flight(),
        };
        let mut shared = lock(&self.shared);
        let mut commit = TopicPartitionList::new();
        // Batches acknowledged just now: their offsets are committed with the revoked ones
        // (for every partition they read, revoked or kept).
        let mut kept = BTreeMap::new();
        for next in finished {
            for (tp, n) in next {
                if shared.assigned.contains_key(&tp) {
                    let a = shared.acked.entry(tp).or_insert(n);
                    *a = (*a).max(n);
                    kept.insert(tp, *a);
                }
            }
        }
        for e in tpl.elements() {
            let Some(ti) = self.topic_index(e.topic()) else {
                continue;
            };
            let tp = (ti, e.partition());
            if let Some(next) = shared.acked.remove(&tp) {
                // Adding to a fresh list cannot fail for a non-negative offset.
                let _ = commit.add_partition_offset(e.topic(), e.partition(), Offset::Offset(next));
            }
            shared.assigned.remove(&tp);
            shared.live_from.remove(&tp);
            shared.group_committed.remove(&tp);
            shared.caught_up.remove(&tp);
            shared.revoked.push(tp);
            kept.remove(&tp);
        }
        for (tp, n) in kept {
            let _ = commit.add_partition_offset(&self.topics[tp.0], tp.1, Offset::Offset(n));
        }
        self.metrics.assignment(shared.assigned.len());
        drop(shared);
        if commit.count() > 0 && !consumer.assignment_lost() && self.transactions.is_none() {
            if let Err(e) = consumer.commit(&commit, CommitMode::Sync) {
                // The records are re-read by the next owner and deduplicated downstream by
                // alert_id: a duplicate, never a loss.
                self.metrics.commit_failed();
                tracing::warn!(error = %e, "commit before giving up partitions failed; the next owner re-reads them");
            }
        }
        tracing::info!(partitions = tpl.count(), "partitions revoked");
    }
}

/// A broker-test hook, honoured only in debug builds: `LINEWATCH_TEST_SLOW_CLOSE_MS=MS`
/// makes the revoke after a failed transaction (the consumer's close as the pipeline
/// stops or restarts), and the `[streams]` stage task's close, log "test hook: slowing the
/// consumer's close" and sleep MS, as a close that librdkafka does not finish would. The
/// stop must not wait for it.
pub(crate) fn slow_close_hook() {
    if !cfg!(debug_assertions) {
        return;
    }
    let ms = std::env::var("LINEWATCH_TEST_SLOW_CLOSE_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    if ms > 0 {
        tracing::warn!(sleep_ms = ms, "test hook: slowing the consumer's close");
        std::thread::sleep(Duration::from_millis(ms));
    }
}

impl ClientContext for SourceContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log_librdkafka("consumer", level, fac, message);
    }

    fn stats(&self, stats: Statistics) {
        let mut shared = lock(&self.shared);
        match (brokers_up(&stats), shared.brokers_down_since) {
            (Some(false), None) => {
                shared.brokers_down_since = Some(std::time::Instant::now());
                tracing::warn!(
                    "Kafka brokers unreachable: no connection to any broker is up; retrying"
                );
            }
            (Some(true), Some(since)) => {
                shared.brokers_down_since = None;
                tracing::info!(
                    down_s = since.elapsed().as_secs(),
                    "Kafka brokers reachable again"
                );
            }
            _ => {}
        }
        for (name, topic) in &stats.topics {
            let Some(ti) = self.topic_index(name) else {
                continue;
            };
            for (p, part) in &topic.partitions {
                let tp = (ti, *p);
                // -1 is librdkafka's internal "unassigned" partition; -1 lag is "unknown".
                if *p < 0 || !shared.assigned.contains_key(&tp) {
                    continue;
                }
                // The end of the log as the consumer sees it: the last stable offset under
                // librdkafka's default read_committed isolation, else the high watermark.
                let end = if part.ls_offset >= 0 {
                    part.ls_offset
                } else {
                    part.hi_offset
                };
                // Under exactly once the offsets are committed by the producer's
                // transactions, which the consumer's own figure never sees.
                let base = shared.acked.get(&tp).or(shared.group_committed.get(&tp));
                // librdkafka's own figure is unknown (-1) until this process commits when the
                // partition was started at explicit offsets (a re-read): the group's
                // committed offset stands in for it.
                let lag = match (&self.transactions, base) {
                    (Some(_), Some(acked)) if end >= 0 => (end - acked).max(0),
                    (None, Some(committed)) if part.consumer_lag < 0 && end >= 0 => {
                        (end - committed).max(0)
                    }
                    _ => part.consumer_lag,
                };
                if lag >= 0 {
                    self.metrics.consumer_lag(name, *p, lag);
                }
                if end >= 0 && part.app_offset >= end {
                    shared.caught_up.insert(tp, part.app_offset);
                } else {
                    shared.caught_up.remove(&tp);
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if is_partition_eof(&error) {
            // Not an error: the end of a partition's log, which alignment uses (align.rs).
            return;
        }
        let kind = kafka::error_kind(&error);
        if kafka::is_auth_failure(&error) {
            self.status.auth_failed(reason);
        }
        if self.throttle.allow(kind) {
            tracing::warn!(kind, reason, "Kafka client error");
        }
    }
}

impl ConsumerContext for SourceContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.metrics.rebalance("assign");
                let plan = self.plan_assignment(consumer, tpl);
                if cooperative {
                    consumer.incremental_assign(&plan)
                } else {
                    consumer.assign(&plan)
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.metrics.rebalance("revoke");
                self.commit_revoked(consumer, tpl);
                if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                self.metrics.rebalance("error");
                tracing::warn!(code = ?other, "rebalance error; dropping the assignment");
                let mut shared = lock(&self.shared);
                let all: Vec<Tp> = shared.assigned.keys().copied().collect();
                shared.revoked.extend(all);
                shared.assigned.clear();
                shared.live_from.clear();
                shared.caught_up.clear();
                shared.standby = false;
                self.metrics.assignment(0);
                drop(shared);
                consumer.unassign()
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "applying the rebalance failed");
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            self.metrics.commit_failed();
            if self.throttle.allow("commit") {
                tracing::warn!(error = %e, "offset commit failed; the records will be re-read after a restart or rebalance and deduplicated by alert_id");
            }
        }
    }
}

/// librdkafka's own log lines, through `tracing` under target `librdkafka`.
pub fn log_librdkafka(client: &'static str, level: RDKafkaLogLevel, fac: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            tracing::error!(target: "librdkafka", client, facility = fac, "{message}")
        }
        RDKafkaLogLevel::Warning => {
            tracing::warn!(target: "librdkafka", client, facility = fac, "{message}")
        }
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", client, facility = fac, "{message}")
        }
        RDKafkaLogLevel::Debug => {
            tracing::debug!(target: "librdkafka", client, facility = fac, "{message}")
        }
    }
}

/// The consumer type of the service.
pub type Source = StreamConsumer<SourceContext>;

/// Where a received message belongs.
#[derive(Debug, Clone, Copy)]
pub struct Placed {
    pub tp: Tp,
    /// The partition's assignment now (0, which no assignment has, when not assigned).
    pub generation: Generation,
    /// Below the committed offset at assignment: only rebuilds state.
    pub rebuild: bool,
    /// Several partitions are assigned, so it waits for event-time alignment.
    pub several: bool,
}

/// Where a received message belongs; `None` for a topic we did not ask for.
pub fn place(msg: &impl Message, topics: &[String], shared: &Mutex<Assignment>) -> Option<Placed> {
    let ti = topics.iter().position(|t| t == msg.topic())?;
    let tp = (ti, msg.partition());
    let shared = lock(shared);
    let rebuild = !shared.live_from.is_empty()
        && shared
            .live_from
            .get(&tp)
            .is_some_and(|live| msg.offset() < *live);
    Some(Placed {
        tp,
        generation: shared.assigned.get(&tp).copied().unwrap_or(0),
        rebuild,
        several: shared.assigned.len() > 1,
    })
}

/// A partition EOF, however librdkafka reports it (an event on the consumer queue, or the
/// client error callback).
pub fn is_partition_eof(e: &KafkaError) -> bool {
    matches!(e, KafkaError::PartitionEOF(_))
        || e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
}

/// Classifies a consumer error: the loop carries on after retriable ones.
pub fn consumer_error_class(e: &KafkaError) -> ErrorClass {
    match kafka::error_kind(e) {
        "authentication" | "authorization" => ErrorClass::Final,
        // A missing or deleted input topic, a partition error or a broker outage: the
        // consumer recovers on its own once the cause is gone.
        _ => ErrorClass::Retriable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brokers_are_up_when_a_learned_broker_is_up_and_unknown_before_any_is_learned() {
        use rdkafka::statistics::Broker;
        let broker = |nodeid: i32, state: &str| Broker {
            nodeid,
            state: state.to_string(),
            ..Broker::default()
        };
        let stats = |bs: Vec<(&str, Broker)>| Statistics {
            brokers: bs.into_iter().map(|(n, b)| (n.to_string(), b)).collect(),
            ..Statistics::default()
        };
        // Only the bootstrap address (and the logical coordinator): nothing learned yet.
        let s = stats(vec![
            ("b/bootstrap", broker(-1, "UP")),
            ("GroupCoordinator", broker(-1, "UP")),
        ]);
        assert_eq!(brokers_up(&s), None);
        let s = stats(vec![
            ("b/bootstrap", broker(-1, "UP")),
            ("h:1/1", broker(1, "UP")),
        ]);
        assert_eq!(brokers_up(&s), Some(true));
        // The cluster's brokers down, even with a bootstrap connection counted as up.
        let s = stats(vec![
            ("b/bootstrap", broker(-1, "UP")),
            ("h:1/1", broker(1, "DOWN")),
            ("h:2/2", broker(2, "TRY_CONNECT")),
        ]);
        assert_eq!(brokers_up(&s), Some(false));
        let s = stats(vec![
            ("h:1/1", broker(1, "DOWN")),
            ("h:2/2", broker(2, "UP")),
        ]);
        assert_eq!(brokers_up(&s), Some(true));
    }

    #[test]
    fn a_partition_with_nothing_to_reread_holds_no_watermark_until_it_delivers_while_others_reread()
    {
        let mut a = Assignment::default();
        a.assigned.insert((0, 0), 1);
        a.assigned.insert((0, 1), 1);
        // Partition 0 re-reads up to offset 100; partition 1 (added) has no commit.
        a.live_from.insert((0, 0), 100);
        assert_eq!(a.live_only_while_rebuilding(), vec![(0, 1)]);
        a.processed.insert((0, 0), 40);
        assert_eq!(a.live_only_while_rebuilding(), vec![(0, 1)]);
        // Its first record went through the engine: it holds the watermark as any other.
        a.processed.insert((0, 1), 1);
        assert!(a.live_only_while_rebuilding().is_empty());
        a.processed.remove(&(0, 1));
        // The re-read is done: nothing is taken at rest any more.
        a.processed.insert((0, 0), 100);
        assert!(a.live_only_while_rebuilding().is_empty());
        // No re-read at all (a new group, or no rebuild): as before.
        a.live_from.clear();
        a.processed.clear();
        assert!(a.live_only_while_rebuilding().is_empty());
    }
}
