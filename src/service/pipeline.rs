//! The run loop: poll a bounded batch, run it through the engine, hand its alerts and dead
//! letters to the producer, and go on with the next batch while the broker acknowledges
//! them. A batch's offsets are committed once every message it caused is acknowledged and
//! every older batch is committed: offsets are committed in order, and only for records
//! whose outputs are durable.
//!
//! That order is the whole of the at-least-once argument. It is also the backpressure: at
//! `max_in_flight_batches` unacknowledged batches the loop waits for the oldest (a slow or
//! absent broker stalls it there, retrying), so nothing more is polled; librdkafka's own
//! prefetch is capped (see [`crate::kafka`]), so memory stays bounded under a backlog. When
//! no record is waiting, everything in flight is settled before the loop idles, so a quiet
//! stream's offsets are committed at once.
//!
//! A rebalance callback runs only inside a poll of this loop; a revoke first gives the
//! batches in flight the chance to be acknowledged and commits them (see
//! [`super::source`]).
//!
//! # Alignment, batches in flight and rebalances
//!
//! With several partitions, records wait in [`super::align`] before joining a batch. What
//! holds together:
//!
//! - A batch is cut from what alignment releases, so a batch's `next` offsets (what its
//!   commit reflects) cover only records that went through the engine; held records are
//!   not in any batch and not committed. A held record is never released because the batch
//!   wait ran out, only when no partition can still deliver an older one (or at the idle
//!   timeout); at `align_max_records` the partitions ahead are paused instead.
//! - Batches in flight are committed in order, as without alignment; a revoke commits those
//!   acknowledged (and only for partitions still ours).
//! - Every record carries its assignment [`Generation`]: records of an ended assignment are
//!   dropped from the alignment buffer before anything is released, and skipped by
//!   `Pipeline::process` if already in a batch. Records of the new assignment (read from
//!   the last commit, or rebuilding state from before it) are kept wherever they are.
//! - On shutdown, held records are neither processed nor committed: the next run reads them
//!   again.
//!
//! A checkpoint (durable state) belongs where a batch is committed: its `next` offsets are
//! exactly what the engine state reflects, per partition and generation.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::FutureExt;
use futures_util::stream::StreamExt;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::FutureProducer;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};

use super::align::{Align, Held};
use super::metrics::{Metrics, Tally};
use super::sink::{InFlight, InFlightQueue, Outgoing, Sink, SinkContext};
use super::source::{self, lock, Assignment, Batch, Generation, InRecord, Source, Tp};
use super::txn::{Transactions, TxnError};
use super::{ServiceError, Status, Throttle};
use crate::alert::Alert;
use crate::checkpoint::service::{Checkpointer, Cover};
use crate::checkpoint::{self, InputPartition, SourceOffset};
use crate::config::Config;
use crate::engine::{Engine, Verdict};
use crate::event::{self, DecodeOptions, Event, Malformed, Millis};
use crate::kafka::{self, ErrorClass, KafkaSettings};
use crate::replay::wall_ms;

/// Input partitions are told apart in the engine's watermark by one number: the topic's
/// index times this, plus the partition (Kafka partitions stay far below a million).
const TOPIC_STRIDE: i32 = 1 << 20;

fn engine_partition(tp: Tp) -> i32 {
    tp.0 as i32 * TOPIC_STRIDE + tp.1
}

fn from_engine_partition(p: i32) -> Tp {
    ((p / TOPIC_STRIDE) as usize, p % TOPIC_STRIDE)
}

/// Exactly once: at most this many batches join one transaction before it is committed,
/// whatever `transaction_interval_ms` says (their outputs wait in memory until then).
const MAX_BATCHES_PER_TRANSACTION: usize = 64;

/// Records decoded per step ahead of the engine (see [`Pipeline::process`]).
const DECODE_CHUNK: usize = 256;

type Decoded<'a> = Result<Event<'a>, Malformed>;

/// Records taken from the consumer and not yet processed: the batch being filled, and
/// records of several partitions held for event-time alignment (see [`super::align`]).
struct Intake {
    batch: Batch,
    align: Align,
    /// The engine's decoder options: a held record is decoded for its event time.
    opts: DecodeOptions,
}

impl Intake {
    fn is_empty(&self) -> bool {
        self.batch.is_empty() && self.align.is_empty()
    }

    /// Takes one item from the consumer: a record goes to the batch, or to alignment while
    /// several partitions are assigned; a partition EOF is noted; an error is handled.
    fn take(
        &mut self,
        item: KafkaResult<BorrowedMessage<'_>>,
        topics: &[String],
        shared: &Mutex<Assignment>,
        errors: &Throttle,
    ) -> Result<(), ServiceError> {
        match item {
            Ok(m) => {
                let Some(at) = source::place(&m, topics, shared) else {
                    return Ok(());
                };
                let payload = m.payload().unwrap_or_default();
                let kafka_ts_ms = m.timestamp().to_millis();
                if at.several || !self.align.is_empty() {
                    let ts = event::quick_ts(payload, &self.opts);
                    self.align.push(
                        Held {
                            tp: at.tp,
                            generation: at.generation,
                            offset: m.offset(),
                            payload: payload.to_vec(),
                            kafka_ts_ms,
                            rebuild: at.rebuild,
                            ts,
                        },
                        Instant::now(),
                    );
                } else {
                    self.batch.push(
                        at.tp,
                        at.generation,
                        m.offset(),
                        payload,
                        kafka_ts_ms,
                        at.rebuild,
                    );
                }
                Ok(())
            }
            Err(KafkaError::PartitionEOF(p)) => {
                tracing::trace!(partition = p, "partition at its end");
                let generation = lock(shared)
                    .assigned
                    .iter()
                    .filter(|(tp, _)| tp.1 == p)
                    .map(|(_, g)| *g)
                    .max()
                    .unwrap_or(0);
                self.align.at_end(p, generation);
                Ok(())
            }
            // Without a partition number nothing can be noted; it is not an error either.
            Err(e) if source::is_partition_eof(&e) => Ok(()),
            Err(e) => consumer_error(&e, errors),
        }
    }

    /// Moves held records into the batch, up to `max` in it, in event-time order; returns
    /// how many were released out of event-time order (see [`Align::release`]).
    fn release(&mut self, shared: &Mutex<Assignment>, max: usize, idle: Duration) -> u64 {
        if self.align.is_empty() || self.batch.len() >= max {
            return 0;
        }
        // Held while releasing (a memory copy per record): only this loop's polls could
        // want it, and none happens meanwhile.
        let shared = lock(shared);
        let batch = &mut self.batch;
        self.align.release(
            &shared.assigned,
            &shared.caught_up,
            max - batch.len(),
            Instant::now(),
            idle,
            |h| {
                batch.push(
                    h.tp,
                    h.generation,
                    h.offset,
                    &h.payload,
                    h.kafka_ts_ms,
                    h.rebuild,
                )
            },
        );
        self.align.take_out_of_order()
    }
}

/// What woke the idle loop.
enum Wake {
    Stop,
    Reload(Box<Config>),
    Tick,
    Record,
}

/// Everything the run loop owns.
pub struct Pipeline {
    pub cfg: Config,
    pub engine: Engine,
    pub consumer: Arc<Source>,
    pub producer: FutureProducer<SinkContext>,
    pub sink: Arc<Sink>,
    /// Batches in flight, shared with the consumer's rebalance callback.
    pub in_flight: InFlightQueue,
    pub shared: Arc<Mutex<Assignment>>,
    pub metrics: Metrics,
    pub status: Arc<Status>,
    pub reloads: mpsc::Receiver<Config>,
    pub stop: watch::Receiver<bool>,
    /// State checkpoints (`service.checkpoint_interval_s` > 0); started by the loop.
    pub checkpoints: Option<Checkpointer>,
    /// For the state topic.
    pub settings: KafkaSettings,
    /// Exactly once (`service.processing_guarantee`): outputs and offsets go in Kafka
    /// transactions (see [`super::txn`]); `None`: at least once.
    pub txn: Option<Arc<Transactions>>,
    /// Exactly once: the commit under way on a blocking thread.
    pub committing: Mutex<Option<tokio::task::JoinHandle<Result<(), TxnError>>>>,
    /// `[streams]`: records go through the ingest stage to the internal topics instead of
    /// the engine (`super::streams`); `None`: the one-instance path.
    pub streams: Option<super::streams::IngestTask>,
}

impl Pipeline {
    /// Runs until the stop flag is set (then drains and commits) or a final error. Under
    /// exactly once, [`ServiceError::Rewind`] asks the caller to start a new pipeline.
    pub async fn run(&mut self) -> Result<(), ServiceError> {
        if !super::wait_for_cluster(&self.producer, &self.cfg, &self.status, &mut self.stop).await?
        {
            return Ok(());
        }
        // Before anything reads committed offsets: a transaction our previous incarnation
        // left open is aborted here, instead of holding the offset fetch until it times out.
        if let Some(t) = self.txn.clone() {
            self.status.set(false, "initialising transactions");
            let stop = self.stop.clone();
            let init = tokio::task::spawn_blocking(move || t.init(&|| *stop.borrow())).await;
            match init {
                Ok(Ok(())) => {
                    tracing::info!(transactional_id = %self.txn.as_ref().map_or("", |t| t.id.as_str()), "transactions initialised (exactly_once)")
                }
                Ok(Err(e)) => return Err(self.txn_error(e)),
                Err(e) => return Err(self.txn_error(TxnError::Fatal(e.to_string()))),
            }
            if *self.stop.borrow() {
                return Ok(());
            }
        }
        // Before subscribing: the first assignment restores the state of its partitions.
        self.restore_state().await;
        super::subscribe(&self.consumer, &self.cfg.service.input_topics)?;
        self.status
            .set(false, "waiting for the consumer group to assign partitions");
        tracing::info!(
            group = %self.cfg.service.group_id,
            "subscribed; waiting for partition assignment (after a stop without leaving the \
             group, such as a kill -9, its old member holds the partitions until \
             session.timeout.ms passes; [kafka] group.instance.id lets a restart take them \
             back at once)"
        );

        let topics = self.cfg.service.input_topics.clone();
        let max = self.cfg.service.batch_max_records;
        let linger = Duration::from_millis(self.cfg.service.batch_max_wait_ms);
        let drain = Duration::from_secs(self.cfg.service.drain_timeout_s);
        let consumer = self.consumer.clone();
        // One stream for the whole run: taking a message that is already there is a poll
        // of librdkafka's queue, without registering a waker each time.
        let mut stream = consumer.stream();
        let align_max = self.cfg.service.align_max_records.max(1);
        let idle = Duration::from_secs(self.cfg.service.partition_idle_timeout_s);
        let mut intake = Intake {
            batch: Batch::with_capacity(max),
            align: Align::default(),
            opts: self.engine.decode_options(),
        };
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let errors = Throttle::default();
        let mut stopping_since: Option<Instant> = None;
        let mut gauges_at = Instant::now();

        let result: Result<(), ServiceError> = async {
            loop {
                self.forget_revoked();
                if let Some(t) = &self.txn {
                    // A transaction the rebalance callback could not commit.
                    t.check().map_err(|e| self.txn_error(e))?;
                }
                if *self.stop.borrow() {
                    break;
                }
                // A record already waiting starts the next batch at once; otherwise settle
                // what is in flight (commit it) before idling. Records held for alignment
                // go on to the batch (which waits for their partners or forces them out).
                let ready = match stream.next().now_or_never() {
                    Some(Some(item)) => {
                        intake.take(item, &topics, &self.shared, &errors)?;
                        true
                    }
                    _ => false,
                };
                if !ready && intake.is_empty() {
                    self.settle_all(&topics, &mut stopping_since, drain).await?;
                    // Wait for a first record, serving reloads, gauges and shutdown meanwhile.
                    let woke = tokio::select! {
                        biased;
                        _ = self.stop.wait_for(|s| *s) => Wake::Stop,
                        Some(cfg) = self.reloads.recv() => Wake::Reload(Box::new(cfg)),
                        _ = tick.tick() => Wake::Tick,
                        m = stream.next() => match m {
                            Some(item) => {
                                intake.take(item, &topics, &self.shared, &errors)?;
                                Wake::Record
                            }
                            None => Wake::Tick,
                        },
                    };
                    match woke {
                        Wake::Stop => break,
                        Wake::Reload(cfg) => {
                            self.engine.reconfigure(*cfg);
                            intake.opts = self.engine.decode_options();
                            continue;
                        }
                        Wake::Tick => {
                            self.ingest_idle(stopping_since, drain).await?;
                            self.refresh_gauges(&topics)?;
                            // Idle: everything is settled, a checkpoint costs no wait.
                            self.checkpoint_if_due(&topics);
                            continue;
                        }
                        Wake::Record => {}
                    }
                } else if gauges_at.elapsed() >= Duration::from_secs(1) {
                    // Busy: gauges are still refreshed about once a second.
                    gauges_at = Instant::now();
                    self.refresh_gauges(&topics)?;
                }
                if intake.is_empty() {
                    continue;
                }
                let started = Instant::now();
                // Fill the batch: first whatever is already queued, then wait for more for
                // at most `batch_max_wait_ms`; records held for alignment are released as
                // far as their partitions allow, whatever the wait (see `super::align`): at
                // `align_max_records` held, the partitions ahead are paused instead. A
                // rebalance can only happen inside these polls; records read under an
                // assignment that has ended are dropped here and in `process`.
                let deadline = tokio::time::Instant::now() + linger;
                loop {
                    while intake.batch.len() < max
                        && (intake.align.len() < align_max || intake.align.pausing())
                    {
                        match stream.next().now_or_never() {
                            Some(Some(item)) => {
                                intake.take(item, &topics, &self.shared, &errors)?
                            }
                            _ => break,
                        }
                    }
                    self.release(&mut intake, max, idle, align_max, &topics);
                    if intake.batch.len() >= max {
                        break;
                    }
                    // About to wait for records: take the acknowledgements that have come
                    // meanwhile (commits, and the record-to-alert figure, stay current); under
                    // exactly once, commit the transaction if it is due.
                    if self.txn.is_some() {
                        self.poll_txn(stopping_since, drain).await?;
                    } else {
                        self.commit_ready(&topics)?;
                    }
                    let waited = tokio::select! {
                        biased;
                        _ = self.stop.wait_for(|s| *s) => true,
                        _ = tokio::time::sleep_until(deadline) => true,
                        m = stream.next() => match m {
                            Some(item) => {
                                intake.take(item, &topics, &self.shared, &errors)?;
                                false
                            }
                            None => true,
                        },
                    };
                    if waited {
                        self.release(&mut intake, max, idle, align_max, &topics);
                        break;
                    }
                }
                if intake.batch.is_empty() {
                    continue;
                }

                let (out, next) = if self.streams.is_some() {
                    self.process_ingest(&intake.batch, &topics)?
                } else {
                    // Partitions with nothing more for now, before this batch (whose
                    // records of them, if any, make them count again as they come).
                    // And, while a partition re-reads what was published before, those
                    // with nothing to re-read that have delivered nothing yet (see
                    // `Assignment::live_only_while_rebuilding`).
                    let at_rest: Vec<Tp> = {
                        let shared = lock(&self.shared);
                        let mut at_rest: Vec<Tp> =
                            intake.align.at_rest(&shared.caught_up).collect();
                        for tp in shared.live_only_while_rebuilding() {
                            if !at_rest.contains(&tp) {
                                at_rest.push(tp);
                            }
                        }
                        at_rest
                    };
                    self.process(&intake.batch, &topics, &at_rest)
                };
                intake.batch.clear();
                if stopping_since.is_none() && *self.stop.borrow() {
                    stopping_since = Some(Instant::now());
                }
                let mut b = InFlight::new(out, next, started);
                if let Some(txn) = self.txn.clone() {
                    self.send_in_transaction(&txn, b, stopping_since, drain)
                        .await?;
                } else {
                    let all: Vec<usize> = (0..b.out.len()).collect();
                    within_drain(
                        self.sink.send(&mut b, all),
                        &self.stop,
                        stopping_since,
                        drain,
                    )
                    .await?;
                    lock(&self.in_flight).push_back(b);
                    self.commit_ready(&topics)?;
                    // Backpressure: at most `max_in_flight_batches` waiting for the broker.
                    while lock(&self.in_flight).len() > self.cfg.service.max_in_flight_batches {
                        self.settle_oldest(&topics, &mut stopping_since, drain)
                            .await?;
                    }
                }
                if self.checkpoints.as_ref().is_some_and(Checkpointer::due) {
                    // A checkpoint reflects only records whose outputs are acknowledged:
                    // settle what is in flight first (a pause of one acknowledgement).
                    self.settle_all(&topics, &mut stopping_since, drain).await?;
                    self.checkpoint_if_due(&topics);
                }
            }
            // Stopped: everything taken is delivered and committed before the process goes.
            self.settle_all(&topics, &mut stopping_since, drain).await
        }
        .await;
        drop(stream);
        result?;

        // Every batch taken is acknowledged and its commit sent; make the commits
        // synchronous so they are on the broker before the process goes, within what is left
        // of the drain time (at least a second, so a commit is always tried).
        self.status.set(false, "shutting down");
        let since = stopping_since.unwrap_or_else(Instant::now);
        let left = drain
            .saturating_sub(since.elapsed())
            .max(Duration::from_secs(1));
        if self.txn.is_none() {
            // Under exactly once the last transaction's commit carried the offsets.
            self.commit_sync(&topics, left).await;
        }
        if let Some(c) = self.checkpoints.take() {
            // The state at a clean stop: the restart re-reads nothing.
            self.adopt_restored();
            let cover = self.checkpoint_cover(&topics);
            c.finish(&self.engine, cover);
        }
        // Every delivery was awaited; this only returns what librdkafka holds for itself
        // (nothing, normally).
        self.sink.flush(Duration::from_secs(1));
        Ok(())
    }

    /// Releases what alignment allows into the batch, counts what left out of event-time
    /// order, and pauses or resumes partitions to keep the buffer within `align_max`.
    fn release(
        &self,
        intake: &mut Intake,
        max: usize,
        idle: Duration,
        align_max: usize,
        topics: &[String],
    ) {
        let disorder = intake.release(&self.shared, max, idle);
        if disorder > 0 {
            self.metrics.out_of_order(disorder);
        }
        let pause = intake.align.to_pause(align_max);
        if !pause.is_empty() {
            self.metrics.align_paused(pause.len());
        }
        let resume = intake.align.to_resume(align_max);
        for (tps, pausing) in [(pause, true), (resume, false)] {
            if tps.is_empty() {
                continue;
            }
            let mut tpl = TopicPartitionList::with_capacity(tps.len());
            for tp in &tps {
                tpl.add_partition(&topics[tp.0], tp.1);
            }
            let done = if pausing {
                self.consumer.pause(&tpl)
            } else {
                self.consumer.resume(&tpl)
            };
            tracing::debug!(
                partitions = tps.len(),
                held = intake.align.len(),
                pausing,
                "alignment buffer at its bound: pausing the partitions ahead, or resuming them"
            );
            if let Err(e) = done {
                // A partition revoked meanwhile: the next assignment starts unpaused.
                tracing::debug!(error = %e, pausing, "pause/resume of input partitions failed");
            }
        }
    }

    /// Commits, in order, the batches at the front of the queue that are acknowledged
    /// already, without waiting.
    fn commit_ready(&self, topics: &[String]) -> Result<(), ServiceError> {
        loop {
            let b = {
                let mut q = lock(&self.in_flight);
                let Some(front) = q.front_mut() else {
                    return Ok(());
                };
                self.sink.collect(front)?;
                if !front.is_done() {
                    return Ok(());
                }
                q.pop_front()
            };
            if let Some(b) = b {
                self.committed(b, topics);
            }
        }
    }

    /// Waits for the oldest batch in flight to be acknowledged (retrying failures) and
    /// commits it. Within the drain time once shutdown is requested.
    async fn settle_oldest(
        &self,
        topics: &[String],
        stopping_since: &mut Option<Instant>,
        drain: Duration,
    ) -> Result<(), ServiceError> {
        // Taken out of the queue while awaited (the lock is not held across an await). No
        // rebalance callback can look meanwhile: those run only inside this loop's polls.
        let Some(mut b) = lock(&self.in_flight).pop_front() else {
            return Ok(());
        };
        if stopping_since.is_none() && *self.stop.borrow() {
            *stopping_since = Some(Instant::now());
        }
        let settled =
            within_drain(self.sink.settle(&mut b), &self.stop, *stopping_since, drain).await;
        if let Err(e) = settled {
            // Back at the front, uncommitted, for whoever looks next (nobody, normally:
            // the error stops the service).
            lock(&self.in_flight).push_front(b);
            return Err(e);
        }
        self.committed(b, topics);
        Ok(())
    }

    /// Settles and commits every batch in flight, oldest first (under exactly once: commits
    /// the open transaction).
    async fn settle_all(
        &self,
        topics: &[String],
        stopping_since: &mut Option<Instant>,
        drain: Duration,
    ) -> Result<(), ServiceError> {
        if self.txn.is_some() {
            if stopping_since.is_none() && *self.stop.borrow() {
                *stopping_since = Some(Instant::now());
            }
            return self.commit_txn(*stopping_since, drain).await;
        }
        while !lock(&self.in_flight).is_empty() {
            self.settle_oldest(topics, stopping_since, drain).await?;
        }
        Ok(())
    }

    /// An acknowledged batch: its offsets are committed.
    fn committed(&self, b: InFlight, topics: &[String]) {
        self.commit(b.next, topics);
        self.metrics.batch_done(b.started.elapsed().as_secs_f64());
    }

    /// `[streams]`: runs the batch through the ingest stage and writes what it routes to
    /// the internal topics, waiting for their acknowledgement; returns its dead letters and
    /// the next offset to commit per partition (committed once those are acknowledged, as
    /// for [`Self::process`]). Exactly once: the routed records are returned with the dead
    /// letters, for the batch's transaction. An aborted transaction leaves the ingest's
    /// dedup and watermarks ahead of the committed offsets: the rewind ([`super::run`])
    /// makes a new ingest (a new source for the stages) with the new pipeline.
    fn process_ingest(
        &mut self,
        batch: &Batch,
        topics: &[String],
    ) -> Result<(Vec<Outgoing>, BTreeMap<Tp, i64>), ServiceError> {
        let Some(ingest) = self.streams.as_mut() else {
            return Ok((Vec::new(), BTreeMap::new()));
        };
        let wall: Millis = wall_ms();
        let mut next = BTreeMap::new();
        let mut out = Vec::new();
        let mut tally = Tally::default();
        let mut rebuilt = 0;
        let mut shared = lock(&self.shared);
        for tp in shared.assigned.keys() {
            ingest.assign_partition(engine_partition(*tp), wall);
        }
        for rec in &batch.records {
            // As in `process`: a partition revoked while the batch filled is re-read by its
            // new owner from our last commit.
            if shared.assigned.get(&rec.tp) != Some(&rec.generation) {
                continue;
            }
            let seen = shared.processed.entry(rec.tp).or_insert(0);
            *seen = (*seen).max(rec.offset + 1);
            if rec.rebuild {
                // Before the last commit: its messages were written and acknowledged then;
                // the stages, not the ingest, hold window state.
                rebuilt += 1;
                continue;
            }
            let verdict = ingest.ingest(batch.payload(rec), engine_partition(rec.tp), wall);
            tally.add(&verdict);
            if let Verdict::Rejected(why) = verdict {
                out.push(Outgoing::dead_letter(
                    batch.payload(rec),
                    why,
                    &topics[rec.tp.0],
                    rec.tp.1,
                    rec.offset,
                ));
            }
            let n = next.entry(rec.tp).or_insert(0);
            *n = (*n).max(rec.offset + 1);
        }
        drop(shared);
        // At least once: blocking until the broker acknowledges, since the batch's offsets
        // may not be committed before its messages are on the internal topics. Exactly once:
        // they are outputs of the batch, written in its transaction with its offsets, so
        // the stages (reading `read_committed`) see them once the offsets are committed.
        out.extend(ingest.send()?);
        self.metrics.records(&tally);
        if rebuilt > 0 {
            self.metrics.rebuilt(rebuilt);
        }
        Ok((out, next))
    }

    /// Runs the batch through the engine; returns its alerts and dead letters, and the next
    /// offset to commit per partition.
    fn process(
        &mut self,
        batch: &Batch,
        topics: &[String],
        at_rest: &[Tp],
    ) -> (Vec<Outgoing>, BTreeMap<Tp, i64>) {
        self.adopt_restored();
        let wall: Millis = wall_ms();
        let mut next = BTreeMap::new();
        let mut out = Vec::new();
        let mut alerts = Vec::new();
        let mut tally = Tally::default();
        let mut shared = lock(&self.shared);
        let mut rebuilt = 0;
        // Every assigned partition counts for the watermark from the start, delivered or
        // not (see Watermarks::register); known ones are left as they are.
        for tp in shared.assigned.keys() {
            self.engine.assign_partition(engine_partition(*tp), wall);
        }
        // At their end with nothing of them waiting: they hold the watermark no more than
        // an idle partition does, so an empty partition of a backlog does not hold it at
        // its start for `partition_idle_timeout_s` (every record read meanwhile judged
        // against no watermark: none late, no barrier, results that depend on how fast
        // the backlog is read).
        for tp in at_rest.iter().filter(|tp| shared.assigned.contains_key(tp)) {
            self.engine.partition_at_rest(engine_partition(*tp));
        }
        let mut last: Option<(Tp, Generation, bool)> = None;
        let opts = self.engine.decode_options();
        let decode = |recs: &[InRecord]| -> Vec<Decoded<'_>> {
            recs.iter()
                .map(|r| event::decode(batch.payload(r), &opts))
                .collect()
        };
        std::thread::scope(|scope| {
            // Decoding is stateless: a large batch is decoded a chunk ahead on a second
            // thread while this one runs the engine (which must see records in order).
            let (first, rest) = batch
                .records
                .split_at(batch.records.len().min(DECODE_CHUNK));
            let (tx, rx) = std::sync::mpsc::channel();
            if !rest.is_empty() {
                scope.spawn(move || {
                    for c in rest.chunks(DECODE_CHUNK) {
                        if tx.send(decode(c)).is_err() {
                            break;
                        }
                    }
                });
            } else {
                drop(tx);
            }
            let chunks = std::iter::once(decode(first)).chain(rx);
            let mut kept: Vec<&InRecord> = Vec::new();
            let mut verdicts = Vec::new();
            let mut tagged: Vec<(usize, Alert)> = Vec::new();
            for (recs, decoded) in batch.records.chunks(DECODE_CHUNK).zip(chunks) {
                kept.clear();
                let mut input = Vec::with_capacity(recs.len());
                for (rec, ev) in recs.iter().zip(decoded) {
                    // A partition revoked while this batch was filling belongs to another
                    // member now (or to this one under a new generation, which reads it
                    // again from the last commit); it re-reads these records from our last
                    // commit, so they are left to it (processing them here would only
                    // publish duplicates, and commit offsets of the old assignment).
                    let assigned = match last {
                        Some((tp, g, a)) if tp == rec.tp && g == rec.generation => a,
                        _ => {
                            let a = shared.assigned.get(&rec.tp) == Some(&rec.generation);
                            last = Some((rec.tp, rec.generation, a));
                            a
                        }
                    };
                    if assigned {
                        kept.push(rec);
                        input.push((ev, engine_partition(rec.tp)));
                    }
                }
                verdicts.clear();
                tagged.clear();
                // One batch (the shards, if several, on their threads between barriers):
                // the same verdicts and alerts, in the same order, as record by record, and
                // faster on one shard too (each record's dedup slot is asked for ahead).
                self.engine
                    .process_batch(input, wall, &mut verdicts, &mut tagged);
                let mut made = tagged.drain(..).peekable();
                for (i, (rec, verdict)) in kept.iter().zip(verdicts.drain(..)).enumerate() {
                    alerts.clear();
                    while let Some((_, a)) = made.next_if(|t| t.0 == i) {
                        alerts.push(a);
                    }
                    let seen = shared.processed.entry(rec.tp).or_insert(0);
                    *seen = (*seen).max(rec.offset + 1);
                    if rec.rebuild {
                        // Its outputs were acknowledged before the offset was committed.
                        rebuilt += 1;
                        continue;
                    }
                    tally.add(&verdict);
                    if let Verdict::Rejected(why) = verdict {
                        out.push(Outgoing::dead_letter(
                            batch.payload(rec),
                            why,
                            &topics[rec.tp.0],
                            rec.tp.1,
                            rec.offset,
                        ));
                    }
                    out.extend(
                        alerts
                            .iter()
                            .map(|a| Outgoing::alert(a).completed_by(rec.kafka_ts_ms)),
                    );
                    let n = next.entry(rec.tp).or_insert(0);
                    *n = (*n).max(rec.offset + 1);
                }
            }
        });
        drop(shared);
        self.metrics.records(&tally);
        if rebuilt > 0 {
            self.metrics.rebuilt(rebuilt);
        }
        (out, next)
    }

    /// Commits acknowledged offsets asynchronously (the result comes to the context's commit
    /// callback; a failure means a re-read and duplicates, never a loss).
    fn commit(&self, next: BTreeMap<Tp, i64>, topics: &[String]) {
        if next.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::with_capacity(next.len());
        {
            let mut shared = lock(&self.shared);
            for (tp, n) in next {
                if !shared.assigned.contains_key(&tp) {
                    continue;
                }
                shared.acked.insert(tp, n);
                // Adding a non-negative offset to a fresh list cannot fail.
                let _ = tpl.add_partition_offset(&topics[tp.0], tp.1, Offset::Offset(n));
            }
        }
        if tpl.count() == 0 {
            return;
        }
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            self.metrics.commit_failed();
            tracing::warn!(error = %e, "offset commit could not be sent; it is retried with the next batch or at shutdown");
        }
    }

    /// Commits every acknowledged offset and waits for the broker's answer.
    async fn commit_sync(&self, topics: &[String], limit: Duration) {
        let mut tpl = TopicPartitionList::new();
        for (tp, n) in &lock(&self.shared).acked {
            let _ = tpl.add_partition_offset(&topics[tp.0], tp.1, Offset::Offset(*n));
        }
        if tpl.count() == 0 {
            return;
        }
        let consumer = self.consumer.clone();
        let task = tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync));
        match tokio::time::timeout(limit, task).await {
            Ok(Ok(Ok(()))) => tracing::info!("final offsets committed"),
            Ok(Ok(Err(e))) => {
                self.metrics.commit_failed();
                tracing::warn!(error = %e, "final commit failed; the last batch will be re-read and its alerts repeated with the same ids");
            }
            _ => tracing::warn!("final commit did not finish in time; the last batch will be re-read and its alerts repeated with the same ids"),
        }
    }

    /// `[streams]`, the input quiet (once a second): the ingest's marks, so the stages'
    /// watermarks move on. Under exactly once they go in a transaction of their own (a
    /// transactional producer writes nothing outside one), committed when the loop next
    /// settles.
    async fn ingest_idle(
        &mut self,
        stopping_since: Option<Instant>,
        drain: Duration,
    ) -> Result<(), ServiceError> {
        let Some(s) = &mut self.streams else {
            return Ok(());
        };
        let assigned: Vec<i32> = lock(&self.shared)
            .assigned
            .keys()
            .map(|tp| engine_partition(*tp))
            .collect();
        let marks = s.idle(&assigned, wall_ms())?;
        if let Some(txn) = self.txn.clone() {
            let b = InFlight::new(marks, BTreeMap::new(), Instant::now());
            self.send_in_transaction(&txn, b, stopping_since, drain)
                .await?;
        }
        Ok(())
    }

    /// Forgets the watermarks and gauges of partitions revoked in a rebalance (their held
    /// records are dropped by generation, in [`Intake::release`] and [`Pipeline::process`]).
    fn forget_revoked(&mut self) {
        let revoked = std::mem::take(&mut lock(&self.shared).revoked);
        for tp in revoked {
            self.engine.remove_partition(engine_partition(tp));
            if let Some(t) = self.cfg.service.input_topics.get(tp.0) {
                self.metrics.forget_partition(t, tp.1);
            }
        }
    }

    /// Opens the checkpoint stores and starts the checkpoint writer (checkpoints on), and
    /// hands the consumer's assign callback what it restores with (see
    /// [`source::SourceContext`]): the newest checkpoint of the assigned partitions is
    /// loaded on assignment, before their records are read.
    async fn restore_state(&mut self) {
        if self.cfg.service.checkpoint_interval_s == 0 {
            return;
        }
        // Opening blocks (a topic created or looked up): off the async threads.
        let (c, s, m) = (
            self.cfg.clone(),
            self.settings.clone(),
            self.metrics.checkpoint.clone(),
        );
        let opened = tokio::task::spawn_blocking(move || {
            let stores = checkpoint::service::open_stores(&c, &s);
            let restorer = checkpoint::service::Restorer::open(&c, &s, m);
            (stores, Some(restorer))
        })
        .await;
        let (stores, restorer) = opened.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "checkpoint stores could not be opened; rebuilding from the input");
            (Vec::new(), None)
        });
        lock(&self.shared).restorer = restorer;
        self.checkpoints = Some(Checkpointer::start(
            stores,
            &self.cfg,
            self.metrics.checkpoint.clone(),
        ));
    }

    /// Takes over an engine the assign callback restored from a checkpoint, under the
    /// configuration in force now (a live reload may have changed it since start). Called
    /// before anything is processed or checkpointed.
    fn adopt_restored(&mut self) {
        let Some(r) = lock(&self.shared).restored.take() else {
            return;
        };
        let mut r = *r;
        r.engine.reconfigure(self.engine.config().clone());
        // The cell map is not state: the restored engine takes the one in force.
        r.engine.set_cells(self.engine.cells());
        if let Some(c) = self.checkpoints.as_mut() {
            c.restored(&self.cfg.service.group_id, &r);
        }
        self.engine = r.engine;
    }

    /// What the engine's state covers: the assigned partitions, with the next offset after
    /// the last record run through the engine for those it has read.
    fn checkpoint_cover(&self, topics: &[String]) -> Cover {
        let shared = lock(&self.shared);
        let name = |tp: &Tp| topics.get(tp.0).cloned();
        Cover {
            partitions: shared
                .assigned
                .keys()
                .filter_map(|tp| {
                    Some(InputPartition {
                        topic: name(tp)?,
                        partition: tp.1,
                    })
                })
                .collect(),
            offsets: shared
                .assigned
                .keys()
                .filter_map(|tp| {
                    Some(SourceOffset {
                        topic: name(tp)?,
                        partition: tp.1,
                        offset: *shared.processed.get(tp)?,
                    })
                })
                .collect(),
        }
    }

    /// Takes a checkpoint if one is due; call only with nothing in flight (under exactly
    /// once: right after a commit, so the state reflects committed offsets only).
    fn checkpoint_if_due(&mut self, topics: &[String]) {
        if !self.checkpoints.as_ref().is_some_and(Checkpointer::due)
            || !lock(&self.in_flight).is_empty()
            || self
                .txn
                .as_ref()
                .is_some_and(|t| t.is_open() || t.has_held())
            || lock(&self.committing).is_some()
        {
            return;
        }
        self.adopt_restored();
        let cover = self.checkpoint_cover(topics);
        if let Some(c) = self.checkpoints.as_mut() {
            c.take(&self.engine, cover);
        }
    }

    /// Exactly once: a processed batch joins the open transaction (begun for it if none is
    /// open). A batch with nothing to publish and no offsets to move (records re-read to
    /// rebuild state) opens no transaction. Once the transaction has lasted
    /// `transaction_interval_ms` or holds [`MAX_BATCHES_PER_TRANSACTION`] batches, its commit
    /// starts on a blocking thread and the loop goes on: batches processed meanwhile are held
    /// back (librdkafka sends nothing while a transaction commits) and sent in the next
    /// transaction once the commit is over, so detection does not wait for the broker's
    /// round trips.
    async fn send_in_transaction(
        &self,
        txn: &Transactions,
        b: InFlight,
        stopping_since: Option<Instant>,
        drain: Duration,
    ) -> Result<(), ServiceError> {
        if b.out.is_empty() && b.next.is_empty() {
            return Ok(());
        }
        self.finish_commit(false, stopping_since, drain).await?;
        if lock(&self.committing).is_some() {
            if txn.hold_back(b) >= MAX_BATCHES_PER_TRANSACTION {
                self.finish_commit(true, stopping_since, drain).await?;
            }
            return Ok(());
        }
        self.send_now(txn, b, stopping_since, drain).await?;
        if txn.due() || lock(&self.in_flight).len() >= MAX_BATCHES_PER_TRANSACTION {
            self.start_commit();
        }
        Ok(())
    }

    /// Hands a batch's outputs to the producer in the open transaction (begun if need be).
    async fn send_now(
        &self,
        txn: &Transactions,
        mut b: InFlight,
        stopping_since: Option<Instant>,
        drain: Duration,
    ) -> Result<(), ServiceError> {
        txn.begin(!b.out.is_empty())
            .map_err(|e| self.txn_error(e))?;
        let all: Vec<usize> = (0..b.out.len()).collect();
        match within_drain(
            self.sink.send(&mut b, all),
            &self.stop,
            stopping_since,
            drain,
        )
        .await
        {
            Err(e @ ServiceError::DrainTimeout(_)) => return Err(e),
            // A message that never reached the producer is not in the transaction:
            // committing would lose it. The commit aborts instead, and the pipeline rewinds.
            Err(e) => txn.doom(e.to_string()),
            Ok(()) if !b.failed.is_empty() => txn.doom(format!(
                "{} outputs could not be handed to the producer",
                b.failed.len()
            )),
            Ok(()) => {}
        }
        lock(&self.in_flight).push_back(b);
        Ok(())
    }

    /// Starts committing the open transaction on a blocking thread, unless a commit is
    /// under way already or no transaction is open.
    fn start_commit(&self) {
        let Some(txn) = self.txn.clone() else {
            return;
        };
        let mut committing = lock(&self.committing);
        if committing.is_some() || !txn.is_open() {
            return;
        }
        let consumer = self.consumer.clone();
        let shared = self.shared.clone();
        *committing = Some(tokio::task::spawn_blocking(move || {
            txn.commit_open(consumer.group_metadata().as_ref(), &shared)
                .map(|_| ())
        }));
    }

    /// Takes the result of the commit under way once it is over (waiting for it when
    /// `wait`), then sends the batches held back meanwhile in a new transaction.
    async fn finish_commit(
        &self,
        wait: bool,
        stopping_since: Option<Instant>,
        drain: Duration,
    ) -> Result<(), ServiceError> {
        let Some(txn) = self.txn.clone() else {
            return Ok(());
        };
        let handle = {
            let mut c = lock(&self.committing);
            match c.as_ref() {
                Some(h) if wait || h.is_finished() => c.take(),
                Some(_) => return Ok(()),
                None => None,
            }
        };
        if let Some(h) = handle {
            let done = async {
                match h.await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(self.txn_error(e)),
                    Err(e) => Err(self.txn_error(TxnError::Fatal(e.to_string()))),
                }
            };
            within_drain(done, &self.stop, stopping_since, drain).await?;
        }
        for b in txn.take_held() {
            self.send_now(&txn, b, stopping_since, drain).await?;
        }
        Ok(())
    }

    /// Exactly once, between batches: takes a finished commit and starts the next one if
    /// the open transaction is due.
    async fn poll_txn(
        &self,
        stopping_since: Option<Instant>,
        drain: Duration,
    ) -> Result<(), ServiceError> {
        self.finish_commit(false, stopping_since, drain).await?;
        if self.txn.as_ref().is_some_and(|t| t.due()) {
            self.start_commit();
        }
        Ok(())
    }

    /// Exactly once: commits everything processed (the commit under way, the batches held
    /// back, the open transaction) and waits for it; within the drain time once shutdown
    /// is requested.
    async fn commit_txn(
        &self,
        stopping_since: Option<Instant>,
        drain: Duration,
    ) -> Result<(), ServiceError> {
        let Some(txn) = self.txn.clone() else {
            return Ok(());
        };
        self.finish_commit(true, stopping_since, drain).await?;
        self.start_commit();
        self.finish_commit(true, stopping_since, drain).await?;
        txn.check().map_err(|e| self.txn_error(e))
    }

    /// The service error for a transaction failure: fencing stops the service, the rest
    /// rewind the pipeline.
    fn txn_error(&self, e: TxnError) -> ServiceError {
        if let Some(t) = &self.txn {
            // Nothing else may use this producer's transaction now (the revoke callback at
            // the consumer's close included).
            t.fail(e.clone());
        }
        match e {
            TxnError::Fenced(message) => ServiceError::Fenced {
                id: self.txn.as_ref().map(|t| t.id.clone()).unwrap_or_default(),
                message,
            },
            TxnError::Aborted(message) => ServiceError::Rewind {
                reason: "aborted",
                message,
            },
            TxnError::Fatal(message) => ServiceError::Rewind {
                reason: "fatal",
                message,
            },
        }
    }

    /// Gauges that are read, not counted: state size, watermark lag, readiness.
    fn refresh_gauges(&mut self, topics: &[String]) -> Result<(), ServiceError> {
        if let Some(reason) = self.status.auth_failure() {
            return Err(ServiceError::Auth(reason));
        }
        for (name, s) in self.engine.state_stats() {
            self.metrics.state(name, s.keys, s.bytes);
        }
        self.metrics
            .exchange(self.engine.shard_count(), self.engine.exchange_stats());
        if self.engine.cells().is_some() {
            let c = self.engine.counters();
            self.metrics.cells_skipped(c.cells_missing, c.cells_unknown);
        }
        let now = wall_ms();
        self.metrics.checkpoint.refresh(now);
        for (p, wm) in self.engine.partition_watermarks() {
            let (ti, partition) = from_engine_partition(p);
            if let Some(t) = topics.get(ti) {
                self.metrics
                    .watermark_lag(t, partition, now.saturating_sub(wm) / 1000);
            }
        }
        let (n, standby, down) = {
            let shared = lock(&self.shared);
            let down = shared.brokers_down_since.map(|t| t.elapsed());
            (shared.assigned.len(), shared.standby, down)
        };
        if let Some(why) = self.status.failing() {
            // Transactions failing in a loop (see `Status::failing`).
            self.status.set(false, why);
        } else if let Some(down) = down.filter(|d| *d >= source::BROKERS_DOWN_GRACE) {
            // Nothing is read or published while no broker can be reached: an orchestrator
            // or an operator asking `/readyz` should see it (the partitions stay assigned).
            self.status.set(
                false,
                format!(
                    "Kafka brokers unreachable for {} s; retrying",
                    down.as_secs()
                ),
            );
        } else if n > 0 {
            self.status.set(true, source::assigned_status(n));
        } else if standby {
            self.status.set(true, source::STANDING_BY);
        } else {
            self.status
                .set(false, "waiting for the consumer group to assign partitions");
        }
        Ok(())
    }
}

/// Runs `fut`; once shutdown is requested it has what is left of the drain time.
async fn within_drain<T>(
    fut: impl std::future::Future<Output = Result<T, ServiceError>>,
    stop: &watch::Receiver<bool>,
    stopping_since: Option<Instant>,
    drain: Duration,
) -> Result<T, ServiceError> {
    match stopping_since {
        Some(t) => {
            let left = drain.saturating_sub(t.elapsed());
            tokio::time::timeout(left, fut)
                .await
                .unwrap_or(Err(ServiceError::DrainTimeout(drain.as_secs())))
        }
        None => {
            let mut stop = stop.clone();
            let drain_deadline = async move {
                let _ = stop.wait_for(|s| *s).await;
                tokio::time::sleep(drain).await;
            };
            tokio::select! {
                r = fut => r,
                _ = drain_deadline => Err(ServiceError::DrainTimeout(drain.as_secs())),
            }
        }
    }
}

/// Consumer errors: final ones stop the service, retriable ones are logged (throttled) and
/// the loop carries on, since the consumer recovers by itself.
fn consumer_error(e: &rdkafka::error::KafkaError, throttle: &Throttle) -> Result<(), ServiceError> {
    let kind = kafka::error_kind(e);
    if source::consumer_error_class(e) == ErrorClass::Final {
        return Err(if kind == "authentication" {
            ServiceError::Auth(e.to_string())
        } else {
            ServiceError::Consumer {
                kind,
                message: e.to_string(),
            }
        });
    }
    if throttle.allow(kind) {
        tracing::warn!(kind, error = %e, "consumer error; carrying on (the consumer recovers by itself)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_partition_round_trips() {
        for tp in [(0usize, 0i32), (0, 17), (3, 999)] {
            assert_eq!(from_engine_partition(engine_partition(tp)), tp);
        }
    }
}
