//! `[streams]` in `run` (issue 11, `docs/sharding.md` "As built (step 4, wiring)"): the
//! ingest task the pipeline runs instead of the engine, and the stage task of each instance.
//!
//! - **Ingest** ([`IngestTask`]): the pipeline's input consumer (group `<group>`) feeds each
//!   record to a [`IngestStage`] (decoded and validated once; dead letters, counters and
//!   metrics as today); every routed message and watermark mark is written to its internal
//!   partition, and the batch's input offsets are committed only once those writes are
//!   acknowledged (at least once).
//! - **Stages** ([`spawn_stages`]): a [`StageConsumer`] (group `<group>-stages`) on a thread
//!   of its own; a [`Stage`] per owned stage partition, created on assignment and dropped on
//!   revocation; alerts go through a [`Sink`] as today, evidence for other partitions to
//!   `<group>-evidence`, and the internal offsets are committed after both are acknowledged.
//!
//! Every message of one ingest task for partition *p* goes to `<group>-by-line` (records in
//! any role, and marks): a stage runs each source's messages in the order sent, and Kafka
//! orders records only within one partition of one topic. Writing the handset-only ones to
//! `<group>-by-handset` would let the stage consumer's fetches reorder them against the
//! source's other messages by up to a fetch batch. `<group>-by-handset` is created, checked
//! and read (it stays empty): the name is reserved for a layout that needs it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::producer::DeliveryFuture;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;

use super::metrics::Metrics;
use super::sink::{InFlight, Outgoing, Sink, SinkContext};
use super::stage_state::{RestoredStage, StageCheckpoints, StageStateMetrics};
use super::{ServiceError, Status};
use crate::cells::CellMap;
use crate::checkpoint::SourceOffset;
use crate::config::{Config, ProcessingGuarantee};
use crate::engine::Verdict;
use crate::event::Millis;
use crate::exchange::Evidence;
use crate::kafka::{self, KafkaSettings};
use crate::replay::wall_ms;
use crate::streams::assign::{Incoming, StageConsumer};
use crate::streams::ingest::IngestStage;
use crate::streams::message::{Mark, Message, Routed};
use crate::streams::producer::InternalProducer;
use crate::streams::stage::{Progress, Stage};
use crate::streams::topics::{InternalTopics, Which};
use crate::streams::wire::{self, Kind, WireError};

mod stage_txn;
use stage_txn::{stage_clients, stage_txn_start_error, StageTxn};

// As in metrics.rs: constant definitions in a fresh registry cannot fail.
const STATIC_OK: &str = "static metric definitions are valid";

/// How long a flush of internal writes may take before the batch counts as failed.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// The stage task publishes and commits at least this often while records flow.
const STAGE_COMMIT_EVERY: Duration = Duration::from_millis(200);

/// ... or after this many internal records, whichever comes first.
const STAGE_BATCH: usize = 5_000;

/// The internal topics' traffic. Labels are the topic's role (`by_line`, `by_handset`,
/// `evidence`), never a key or a topic name.
#[derive(Clone)]
pub struct StreamsMetrics {
    /// Internal records written by this instance, by topic role.
    written: IntCounterVec,
    /// Bytes of internal records written (payloads, not Kafka's overhead), by topic role.
    written_bytes: IntCounterVec,
    /// Internal records read by the stage task, by topic role.
    read: IntCounterVec,
    /// Internal records that could not be read (dead-lettered `bad_internal_record`).
    bad: IntCounter,
    /// Stage partitions held for some internal topics only (not processed).
    partial: IntCounter,
    /// Stage partitions this instance runs now.
    owned: IntGauge,
    /// Evidence pieces waiting for a barrier, over this instance's stages.
    pending: IntGauge,
    /// Stage partition checkpoints and rebuilds.
    state: StageStateMetrics,
}

impl StreamsMetrics {
    pub fn register(r: &Registry) -> Self {
        let vec = |name: &str, help: &str| {
            let m = IntCounterVec::new(Opts::new(name, help), &["topic"]).expect(STATIC_OK);
            r.register(Box::new(m.clone())).expect(STATIC_OK);
            for w in Which::ALL {
                m.with_label_values(&[w.as_str()]);
            }
            m
        };
        let written = vec(
            "linewatch_internal_records_written_total",
            "Internal records ([streams]) written by this instance, by internal topic.",
        );
        let written_bytes = vec(
            "linewatch_internal_bytes_written_total",
            "Payload bytes of internal records ([streams]) written by this instance, by internal topic.",
        );
        let read = vec(
            "linewatch_internal_records_read_total",
            "Internal records ([streams]) read by this instance's stages, by internal topic.",
        );
        let bad = IntCounter::new(
            "linewatch_bad_internal_records_total",
            "Internal records a stage could not read, dead-lettered with reason bad_internal_record.",
        )
        .expect(STATIC_OK);
        r.register(Box::new(bad.clone())).expect(STATIC_OK);
        let partial = IntCounter::new(
            "linewatch_stage_partitions_partial_total",
            "Stage partitions assigned for some internal topics only (not processed; see docs/sharding.md).",
        )
        .expect(STATIC_OK);
        r.register(Box::new(partial.clone())).expect(STATIC_OK);
        let owned = IntGauge::new(
            "linewatch_stage_partitions",
            "Stage partitions ([streams]) this instance runs.",
        )
        .expect(STATIC_OK);
        r.register(Box::new(owned.clone())).expect(STATIC_OK);
        let pending = IntGauge::new(
            "linewatch_stage_pending_evidence",
            "Evidence waiting for a barrier in this instance's stages.",
        )
        .expect(STATIC_OK);
        r.register(Box::new(pending.clone())).expect(STATIC_OK);
        StreamsMetrics {
            written,
            written_bytes,
            read,
            bad,
            partial,
            owned,
            pending,
            state: StageStateMetrics::register(r),
        }
    }

    fn wrote(&self, which: Which, bytes: usize) {
        self.written.with_label_values(&[which.as_str()]).inc();
        self.written_bytes
            .with_label_values(&[which.as_str()])
            .inc_by(bytes as u64);
    }
}

/// A delivery failure of an internal write, as the service reports a failed output.
fn delivery_error(topic: &str, e: &rdkafka::error::KafkaError) -> ServiceError {
    ServiceError::Delivery {
        topic: topic.to_string(),
        kind: kafka::error_kind(e),
        message: e.to_string(),
    }
}

/// Flushes `producer` and checks every write in `futures` was acknowledged.
fn settle_writes<C: rdkafka::ClientContext + 'static>(
    producer: &InternalProducer<C>,
    futures: &mut Vec<(Which, DeliveryFuture)>,
) -> Result<(), ServiceError> {
    if futures.is_empty() {
        return Ok(());
    }
    let topics = producer.topics().clone();
    producer
        .flush(FLUSH_TIMEOUT)
        .map_err(|e| delivery_error(topics.name(Which::ByLine), &e))?;
    for (which, f) in futures.drain(..) {
        match f.now_or_never() {
            Some(Ok(Ok(_))) => {}
            Some(Ok(Err((e, _)))) => return Err(delivery_error(topics.name(which), &e)),
            // Flushed, yet no answer: the producer is closing. Not acknowledged, so the
            // input is not committed; the caller stops and the input is read again.
            _ => {
                return Err(ServiceError::Delivery {
                    topic: topics.name(which).to_string(),
                    kind: "other",
                    message: "internal write not acknowledged after a flush".into(),
                })
            }
        }
    }
    Ok(())
}

/// The offsets read that may be committed: not those of a rebuild still re-reading below
/// the committed offset it rebuilds up to (`rebuild_until`). Committing them would move the
/// group's offset back into what the previous owner had published, and whoever took the
/// partition next would run that part again as new: outputs (and evidence) twice.
fn committable(
    next: BTreeMap<(Which, i32), i64>,
    rebuild_until: &BTreeMap<(Which, i32), i64>,
) -> BTreeMap<(Which, i32), i64> {
    next.into_iter()
        .filter(|(k, n)| rebuild_until.get(k).is_none_or(|upto| n > upto))
        .collect()
}

/// A source (ingest task) id unique among the instances of a group with high probability:
/// the stages tell sources apart by it, and a restarted instance is a new source (its old
/// one idles out). The low byte orders evidence ties, so it varies most.
fn source_id() -> i32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mixed = (u64::from(std::process::id()) << 32 | u64::from(nanos))
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ((mixed >> 33) as i32).abs()
}

/// The pipeline's ingest under `[streams]`.
pub struct IngestTask {
    stage: IngestStage,
    /// At least once: the ingest's own idempotent producer. Exactly once: `None`; the
    /// messages go out as [`Outgoing::internal`] in the pipeline's transaction, with the
    /// batch's dead letters and input offsets.
    producer: Option<InternalProducer>,
    topics: InternalTopics,
    out: Vec<(usize, Message)>,
    writes: Vec<(Which, DeliveryFuture)>,
    metrics: StreamsMetrics,
}

impl IngestTask {
    pub fn new(
        cfg: &Config,
        settings: &KafkaSettings,
        metrics: &Metrics,
        cells: Option<Arc<CellMap>>,
    ) -> Result<IngestTask, ServiceError> {
        let partitions = cfg.streams.internal_partitions;
        let producer = match cfg.service.processing_guarantee {
            ProcessingGuarantee::ExactlyOnce => None,
            ProcessingGuarantee::AtLeastOnce => Some(
                InternalProducer::new(settings, &cfg.service.group_id, partitions)
                    .map_err(|e| ServiceError::Config(format!("Kafka internal producer: {e}")))?,
            ),
        };
        let mut stage = IngestStage::new(cfg.clone(), source_id(), partitions as usize);
        stage.set_cells(cells);
        tracing::info!(
            source = stage.source(),
            internal_partitions = partitions,
            processing_guarantee = cfg.service.processing_guarantee.as_str(),
            "streams: ingest writes to the internal topics"
        );
        Ok(IngestTask {
            stage,
            producer,
            topics: InternalTopics::for_group(&cfg.service.group_id),
            out: Vec::new(),
            writes: Vec::new(),
            metrics: metrics.streams.clone(),
        })
    }

    /// Registers an input partition (as the engine's `assign_partition`).
    pub fn assign_partition(&mut self, partition: i32, wall: Millis) {
        self.stage.assign_partition(partition, wall);
    }

    /// One input record: its verdict; a valid one's messages are queued for [`Self::send`].
    pub fn ingest(&mut self, bytes: &[u8], partition: i32, wall: Millis) -> Verdict {
        self.stage.ingest(bytes, partition, wall, &mut self.out)
    }

    /// The input is quiet: a mark to every partition for each input partition `assigned`
    /// here, so the stages' watermarks move on, and the stages learn of a partition before
    /// its first record (see [`IngestStage::mark`]). As [`Self::send`]: under exactly once
    /// the marks are returned, for a transaction.
    pub fn idle(&mut self, assigned: &[i32], wall: Millis) -> Result<Vec<Outgoing>, ServiceError> {
        for &p in assigned {
            self.stage.assign_partition(p, wall);
        }
        self.stage.mark(wall, &mut self.out);
        self.send()
    }

    /// The queued messages as internal records for the pipeline's transaction (exactly
    /// once), in the order queued: one source's messages for a partition must reach it in
    /// the order sent, which the transactional producer (idempotent) keeps.
    fn outgoing(&mut self) -> Vec<Outgoing> {
        let mut v = Vec::with_capacity(self.out.len());
        for (p, msg) in self.out.drain(..) {
            let (bytes, key) = encode_ingest(p, &msg);
            self.metrics.wrote(Which::ByLine, bytes.len());
            v.push(Outgoing::internal(Which::ByLine, p as i32, key, bytes));
        }
        v
    }

    /// At least once: writes every queued message to its internal partition and waits
    /// until all are acknowledged (only then may the input offsets that made them be
    /// committed); returns nothing. Exactly once: returns them as outputs of the batch, to
    /// be written in its transaction with its input offsets.
    pub fn send(&mut self) -> Result<Vec<Outgoing>, ServiceError> {
        let Some(producer) = &self.producer else {
            return Ok(self.outgoing());
        };
        for (p, msg) in self.out.drain(..) {
            let (bytes, key) = encode_ingest(p, &msg);
            let f = producer
                .send_raw(Which::ByLine, p as i32, key, &bytes)
                .map_err(|e| delivery_error(self.topics.name(Which::ByLine), &e))?;
            self.metrics.wrote(Which::ByLine, bytes.len());
            self.writes.push((Which::ByLine, f));
        }
        settle_writes(producer, &mut self.writes)?;
        Ok(Vec::new())
    }
}

/// An ingest message's envelope and key: a routed record keyed by its event id, a mark by
/// its partition.
fn encode_ingest(p: usize, msg: &Message) -> (Vec<u8>, u64) {
    match msg {
        Message::Routed(r) => (
            wire::encode(Kind::Record, r),
            crate::ids::id(&r.record.event_id),
        ),
        Message::Mark(m) => (wire::encode(Kind::Control, m), p as u64),
    }
}

/// What the stage task needs from `run`.
pub struct StageTask {
    pub cfg: Config,
    pub settings: KafkaSettings,
    pub metrics: Metrics,
    pub status: Arc<Status>,
    pub cells: Option<Arc<CellMap>>,
    pub stop: watch::Receiver<bool>,
    /// Set when the stage task stops on an error, so the whole service stops.
    pub stop_all: Arc<watch::Sender<bool>>,
}

/// Starts the stage task on a thread of its own (its consumer polls block).
pub fn spawn_stages(t: StageTask) -> tokio::task::JoinHandle<Result<(), ServiceError>> {
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let stop_all = t.stop_all.clone();
        let r = StageLoop::new(t, handle).and_then(|mut l| l.run());
        if let Err(e) = &r {
            tracing::error!(error = %e, "stage task stopped on error; stopping the service");
            let _ = stop_all.send(true);
        }
        r
    })
}

struct StageLoop {
    cfg: Config,
    partitions: usize,
    consumer: StageConsumer,
    producer: InternalProducer<SinkContext>,
    topics: InternalTopics,
    sink: Arc<Sink>,
    /// What the dead-letter topic taught a stage sink (its size limit), kept by the sink a
    /// failed transaction's rebuild makes.
    dead_letter_cap: crate::service::sink::DeadLetterCap,
    /// Exactly once: the stage task's transactions (alerts, dead letters, evidence and the
    /// internal offsets in one); `None`: at least once.
    txn: Option<StageTxn>,
    settings: KafkaSettings,
    status: Arc<Status>,
    handle: tokio::runtime::Handle,
    metrics: Metrics,
    cells: Option<Arc<CellMap>>,
    stop: watch::Receiver<bool>,
    stages: BTreeMap<i32, Stage>,
    /// Per stage partition, the wall time its last routed record came (idle flush).
    last_record: BTreeMap<i32, Instant>,
    /// Next offset to commit per (internal topic, partition).
    next: BTreeMap<(Which, i32), i64>,
    alerts: Vec<crate::alert::Alert>,
    out: Vec<Outgoing>,
    writes: Vec<(Which, DeliveryFuture)>,
    idle: Duration,
    partial_seen: u64,
    /// Evidence the producer refused outright: stops the task at the next publish.
    refused: Option<ServiceError>,
    /// Stage partitions just assigned whose internal partitions must first be re-read from
    /// `service.rebuild_state_s` back (a seek librdkafka may refuse until the partition is
    /// fetching: tried again each turn; their records are not run meanwhile).
    to_seek: BTreeSet<i32>,
    /// Per (topic, partition), the committed offset a rebuild re-reads up to: records
    /// before it rebuild the state, their alerts and evidence already published by the
    /// previous owner.
    rebuild_until: BTreeMap<(Which, i32), i64>,
    rebuild_ms: Millis,
    /// Per stage partition, evidence read and not yet delivered: each piece waits until the
    /// stage's watermark reaches its event time, so it is applied at the barrier closing
    /// its epoch, as in one engine, whether the receiving stage is behind the sender (or
    /// re-reading its partitions after an assignment, where the small evidence backlog is
    /// read long before the records it followed) or not.
    held: BTreeMap<i32, Vec<(i64, Evidence)>>,
    /// Per stage partition, what of its inputs may be committed (see [`Progress`]).
    progress: BTreeMap<i32, Progress>,
    /// Stage partition checkpoints (`service.checkpoint_interval_s` > 0 and a store).
    ckpt: Option<StageCheckpoints>,
    /// Per (topic, partition) owned, the next offset whose record the stage has not run:
    /// the offsets a checkpoint taken now reflects (moved on at each publish).
    positions: BTreeMap<(Which, i32), i64>,
    /// Per (topic, partition) owned, the offset after the last record given to its stage
    /// since the last publish. Not `next`: that is what may be committed ([`Progress`]),
    /// which stops short of what is still queued or held, while the state a checkpoint
    /// saves holds those (the stage's queues and pending evidence, and `held`), so the
    /// checkpoint reflects everything read.
    read: BTreeMap<(Which, i32), i64>,
    /// Stage partitions restored from a checkpoint whose internal partitions must still be
    /// sought to its offsets (tried again each turn, as `to_seek`).
    seek_to: BTreeMap<i32, Vec<SourceOffset>>,
    /// Stage partitions re-reading after an assignment, and since when (to log when each
    /// is live again: the recovery time of a partition that moved).
    recovering: BTreeMap<i32, Instant>,
    /// Internal partitions sought since the last poll. The loop polls first and positions
    /// partitions after (ownership is synced after the poll, where rebalances happen), so
    /// a record that poll returned from one of these came from before the seek: it is
    /// read again after it (or its effect is in the checkpoint restored), and is not run.
    sought: BTreeSet<(Which, i32)>,
    /// Records dropped for that, over the task's life (logged at each).
    stale_dropped: u64,
}

/// Seeks internal partition `p` of `which` to `offset` and notes it in `sought` (see
/// [`StageLoop::sought`]): every seek of the stage loop goes through here, so none can
/// miss the note. False (logged) when librdkafka refuses the seek for now (a partition not
/// yet fetching): the caller tries again next turn.
fn seek(
    consumer: &StageConsumer,
    topics: &InternalTopics,
    sought: &mut BTreeSet<(Which, i32)>,
    which: Which,
    p: i32,
    offset: i64,
) -> bool {
    let c = consumer.consumer();
    match c.seek(
        topics.name(which),
        p,
        Offset::Offset(offset),
        Duration::from_secs(10),
    ) {
        Ok(()) => {
            sought.insert((which, p));
            true
        }
        Err(e) => {
            tracing::info!(error = %e, partition = p, "stage partition not yet seekable; retried");
            false
        }
    }
}

impl Drop for StageLoop {
    fn drop(&mut self) {
        // Closing the consumer revokes its partitions; a held revoke would never finish.
        self.consumer.defer_revokes(false);
        super::source::slow_close_hook();
    }
}

impl StageLoop {
    fn new(t: StageTask, handle: tokio::runtime::Handle) -> Result<StageLoop, ServiceError> {
        let group = t.cfg.service.group_id.clone();
        let partitions = t.cfg.streams.internal_partitions;
        let eos = t.cfg.service.processing_guarantee == ProcessingGuarantee::ExactlyOnce;
        // Exactly once: only the ingests' and the stages' committed transactions are read.
        let consumer = StageConsumer::new(&t.settings, &group, eos)
            .map_err(|e| ServiceError::Config(format!("Kafka stage consumer: {e}")))?;
        let dead_letter_cap = crate::service::sink::DeadLetterCap::default();
        let (producer, sink, txn) =
            stage_clients(&t.cfg, &t.settings, &t.metrics, &t.status, &dead_letter_cap)?;
        if let Some(x) = &txn {
            let stop = t.stop.clone();
            x.txn
                .init(&|| *stop.borrow())
                .map_err(|e| stage_txn_start_error(&x.txn.id, e))?;
            tracing::info!(transactional_id = %x.txn.id, "streams: stage transactions initialised (exactly_once)");
        }
        let t_rebuild_s = t.cfg.service.rebuild_state_s;
        let ckpt = StageCheckpoints::open(
            &t.cfg,
            &t.settings,
            t.metrics.checkpoint.clone(),
            t.metrics.streams.state.clone(),
        );
        // With checkpoints, a revoke waits for the revoked partitions' state to be saved.
        consumer.defer_revokes(ckpt.is_some());
        Ok(StageLoop {
            dead_letter_cap,
            idle: Duration::from_secs(t.cfg.service.partition_idle_timeout_s),
            partitions: partitions as usize,
            topics: InternalTopics::for_group(&group),
            cfg: t.cfg,
            consumer,
            producer,
            sink,
            txn,
            settings: t.settings,
            status: t.status,
            handle,
            metrics: t.metrics,
            cells: t.cells,
            stop: t.stop,
            stages: BTreeMap::new(),
            last_record: BTreeMap::new(),
            next: BTreeMap::new(),
            alerts: Vec::new(),
            out: Vec::new(),
            writes: Vec::new(),
            partial_seen: 0,
            refused: None,
            to_seek: BTreeSet::new(),
            rebuild_until: BTreeMap::new(),
            rebuild_ms: crate::ids::span_ms(t_rebuild_s),
            held: BTreeMap::new(),
            ckpt,
            positions: BTreeMap::new(),
            read: BTreeMap::new(),
            seek_to: BTreeMap::new(),
            recovering: BTreeMap::new(),
            progress: BTreeMap::new(),
            sought: BTreeSet::new(),
            stale_dropped: 0,
        })
    }

    fn run(&mut self) -> Result<(), ServiceError> {
        tracing::info!(group = %crate::streams::topics::stage_group(&self.cfg.service.group_id), "streams: stage task started");
        let mut since_commit = Instant::now();
        let mut read = 0usize;
        let mut errors_logged = Instant::now() - Duration::from_secs(60);
        while !*self.stop.borrow() {
            self.sought.clear();
            let polled = self.consumer.poll(Duration::from_millis(100));
            self.abort_if_revoked()?;
            self.sync_ownership()?;
            self.begin_txn()?;
            let wall = wall_ms();
            match polled {
                Some(Ok(inc)) if self.sought.contains(&(inc.which, inc.partition)) => {
                    self.drop_stale(&inc);
                }
                Some(Ok(inc)) => {
                    self.note_evidence_read(&inc);
                    if !self.take_published(&inc) {
                        self.handle_record(inc, wall);
                    }
                    read += 1;
                }
                Some(Err(e)) => {
                    if errors_logged.elapsed() >= Duration::from_secs(10) {
                        errors_logged = Instant::now();
                        tracing::warn!(error = %e, "stage consumer error (retried)");
                    }
                }
                None => self.quiet(wall),
            }
            if read >= STAGE_BATCH || since_commit.elapsed() >= STAGE_COMMIT_EVERY {
                self.publish_commit_and_checkpoint(CommitMode::Async)?;
                since_commit = Instant::now();
                read = 0;
            }
        }
        self.publish_and_commit_tracked(CommitMode::Sync)?;
        // A restart (or another member) then re-reads nothing of what this one ran.
        self.checkpoint_owned(true);
        self.consumer.defer_revokes(false);
        tracing::info!("streams: stage task stopped");
        Ok(())
    }

    /// Creates a stage for each newly owned partition, restored from its checkpoint when
    /// one is usable (else rebuilt by re-reading), and drops the revoked ones. A revoke the
    /// consumer holds (checkpoints on) first publishes, commits and saves every owned
    /// partition, then gives them up: their next owner re-reads nothing.
    fn sync_ownership(&mut self) -> Result<(), ServiceError> {
        if self.consumer.revoke_pending() {
            self.publish_and_commit_tracked(CommitMode::Sync)?;
            let saved = self.checkpoint_owned(true);
            tracing::info!(
                partitions = self.stages.len(),
                saved,
                "streams: stage partitions to be revoked; their state is saved for the next owner"
            );
            self.consumer.finish_revoke();
        }
        let owned: BTreeSet<i32> = self.consumer.owned_stage_partitions();
        let partial = self.consumer.partial_total();
        if partial > self.partial_seen {
            self.metrics
                .streams
                .partial
                .inc_by(partial - self.partial_seen);
            self.partial_seen = partial;
        }
        let had: Vec<i32> = self.stages.keys().copied().collect();
        for p in had.iter().filter(|p| !owned.contains(p)) {
            self.stages.remove(p);
            self.last_record.remove(p);
            self.next.retain(|(_, q), _| q != p);
            self.positions.retain(|(_, q), _| q != p);
            self.read.retain(|(_, q), _| q != p);
            self.rebuild_until.retain(|(_, q), _| q != p);
            self.to_seek.remove(p);
            self.seek_to.remove(p);
            self.recovering.remove(p);
            self.held.remove(p);
            if let Some(c) = self.ckpt.as_mut() {
                c.forget(*p);
            }
            self.progress.remove(p);
            tracing::info!(
                partition = p,
                "streams: stage partition revoked; its state is dropped"
            );
        }
        let new: Vec<i32> = owned
            .iter()
            .copied()
            .filter(|p| !self.stages.contains_key(p))
            .collect();
        // Recovery counts from here: reading the checkpoints is part of it.
        let assigned_at = Instant::now();
        let mut restored: BTreeMap<i32, RestoredStage> = match self.ckpt.as_mut() {
            Some(c) => c.restore(&new, &self.cfg),
            None => BTreeMap::new(),
        };
        for p in new {
            match restored.remove(&p) {
                Some(r) => {
                    let mut s = r.stage;
                    s.set_cells(self.cells.clone());
                    self.stages.insert(p, s);
                    if !r.held.is_empty() {
                        self.held.insert(p, r.held);
                    }
                    self.seek_to.insert(p, r.offsets);
                }
                None => {
                    let mut s = Stage::new(&self.cfg, p as usize, self.partitions);
                    s.set_cells(self.cells.clone());
                    self.stages.insert(p, s);
                }
            }
            self.to_seek.insert(p);
            self.recovering.insert(p, assigned_at);
        }
        let pending: Vec<i32> = self.to_seek.iter().copied().collect();
        for p in pending {
            if !self.note_markers_end(p) {
                continue;
            }
            let sought = match self.seek_to.get(&p).cloned() {
                Some(offsets) => self.seek_restored(p, &offsets),
                None => self.rewind(p),
            };
            if sought {
                self.to_seek.remove(&p);
                self.seek_to.remove(&p);
            }
        }
        self.end_marker_waits();
        self.metrics.streams.owned.set(self.stages.len() as i64);
        Ok(())
    }

    /// The committed offset of each of stage partition `p`'s internal partitions that has
    /// one; `None` when they could not be fetched (logged; the caller tries again).
    fn committed(&self, p: i32) -> Option<BTreeMap<Which, i64>> {
        let mut tpl = TopicPartitionList::new();
        for w in Which::ALL {
            tpl.add_partition(self.topics.name(w), p);
        }
        let committed = match self
            .consumer
            .consumer()
            .committed_offsets(tpl, Duration::from_secs(10))
        {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, partition = p, "stage offsets could not be fetched; retried");
                return None;
            }
        };
        Some(
            Which::ALL
                .into_iter()
                .filter_map(
                    |w| match committed.find_partition(self.topics.name(w), p)?.offset() {
                        Offset::Offset(o) => Some((w, o)),
                        _ => None,
                    },
                )
                .collect(),
        )
    }

    /// A stage partition restored from its checkpoint: its internal partitions are sought
    /// to the checkpoint's offsets, and what lies between them and the committed offsets
    /// (run and published by the previous owner after its checkpoint) is re-read with its
    /// outputs dropped. False when a seek must be tried again.
    fn seek_restored(&mut self, p: i32, offsets: &[SourceOffset]) -> bool {
        let Some(committed) = self.committed(p) else {
            return false;
        };
        let mut rebuilt = 0;
        let mut plan = Vec::new();
        for o in offsets {
            let Some(w) = self.topics.which(&o.topic) else {
                continue;
            };
            if !seek(
                &self.consumer,
                &self.topics,
                &mut self.sought,
                w,
                p,
                o.offset,
            ) {
                return false;
            }
            let upto = committed.get(&w).copied().filter(|&u| u > o.offset);
            rebuilt += upto.map_or(0, |u| u - o.offset);
            plan.push((w, o.offset, upto));
        }
        self.positioned(
            p,
            plan,
            rebuilt,
            "restored from its checkpoint, re-reading only what came after it",
        );
        true
    }

    /// A stage partition assigned without a usable checkpoint starts empty: its state is
    /// rebuilt by re-reading its internal partitions from `service.rebuild_state_s` back up
    /// to the committed offsets (what the previous owner ran), as the input consumer
    /// rebuilds window state. False when the seek must be tried again.
    fn rewind(&mut self, p: i32) -> bool {
        let Some(committed) = self.committed(p) else {
            return false;
        };
        let c = self.consumer.consumer();
        let since = wall_ms().saturating_sub(self.rebuild_ms);
        let mut times = TopicPartitionList::new();
        for w in Which::ALL {
            let _ = times.add_partition_offset(self.topics.name(w), p, Offset::Offset(since));
        }
        let starts = match c.offsets_for_times(times, Duration::from_secs(10)) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, partition = p, "stage offsets by time could not be fetched; retried");
                return false;
            }
        };
        let mut rebuilt = 0;
        // Where each internal partition is read from: what a checkpoint reflects until
        // records of it are run.
        let mut plan = Vec::new();
        for w in Which::ALL {
            let topic = self.topics.name(w);
            let from = starts
                .find_partition(topic, p)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
            // Where to read from, and up to where the re-read runs (outputs dropped).
            let (start, upto) = match (committed.get(&w).copied(), from) {
                (Some(upto), Some(from)) if from < upto => (from, Some(upto)),
                // Nothing to re-read: from the committed offset.
                (Some(upto), _) => (upto, None),
                // Never committed: from the start.
                (None, _) => match c.fetch_watermarks(topic, p, Duration::from_secs(10)) {
                    Ok((low, _)) => (low, None),
                    Err(e) => {
                        tracing::warn!(error = %e, partition = p, "stage partition bounds could not be fetched; retried");
                        return false;
                    }
                },
            };
            // Sought explicitly in every case. After an abort's rebuild the consumer is not
            // assigned again, and its position is past what the aborted transaction read:
            // without the seek those records were never run again (the aborted-transaction
            // broker test's lost alert).
            if !seek(&self.consumer, &self.topics, &mut self.sought, w, p, start) {
                return false;
            }
            rebuilt += upto.map_or(0, |u| u - start);
            plan.push((w, start, upto));
        }
        self.positioned(
            p,
            plan,
            rebuilt,
            "its state is rebuilt from its internal partitions (no usable checkpoint)",
        );
        true
    }

    /// Partition `p` sought: each internal partition's `(topic, read from, re-read up to)`
    /// becomes its position (what a checkpoint reflects until its records run) and its
    /// rebuild point; the `rebuilt` records to re-read are counted and logged with `how`.
    fn positioned(
        &mut self,
        p: i32,
        plan: Vec<(Which, i64, Option<i64>)>,
        rebuilt: i64,
        how: &'static str,
    ) {
        for (w, from, upto) in plan {
            self.positions.insert((w, p), from);
            if let Some(upto) = upto {
                self.rebuild_until.insert((w, p), upto);
            }
        }
        self.metrics
            .streams
            .state
            .rebuild_records
            .inc_by(rebuilt.max(0) as u64);
        tracing::info!(
            partition = p,
            rebuild_records = rebuilt,
            "streams: stage partition assigned; {how}"
        );
    }

    /// [`Self::publish_and_commit`], then the offsets read so far become the positions a
    /// checkpoint reflects (every output of what ran is published; what is still queued or
    /// held is in the state the checkpoint saves).
    fn publish_and_commit_tracked(&mut self, mode: CommitMode) -> Result<(), ServiceError> {
        let moved = std::mem::take(&mut self.read);
        self.publish_and_commit(mode)?;
        self.positions.extend(moved);
        Ok(())
    }

    /// Publishes and commits, then checkpoints every owned stage partition when a round
    /// is due: right after the publish, so no checkpoint reflects an unpublished output.
    fn publish_commit_and_checkpoint(&mut self, mode: CommitMode) -> Result<(), ServiceError> {
        self.publish_and_commit_tracked(mode)?;
        self.note_recovered();
        if self.ckpt.as_ref().is_some_and(StageCheckpoints::due) {
            self.checkpoint_owned(false);
        }
        Ok(())
    }

    /// Logs each stage partition whose re-read after an assignment is over (every internal
    /// partition at or past the committed offset it re-reads to, and under exactly once its
    /// markers wait ended): live again.
    fn note_recovered(&mut self) {
        let done: Vec<i32> = self
            .recovering
            .keys()
            .copied()
            .filter(|p| !self.to_seek.contains(p) && !self.waiting_for_markers(*p))
            .filter(|&p| {
                self.rebuild_until
                    .iter()
                    .filter(|((_, q), _)| *q == p)
                    .all(|(k, &upto)| self.positions.get(k).is_some_and(|&at| at >= upto))
            })
            .collect();
        for p in done {
            let since = self.recovering.remove(&p).map(|t| t.elapsed());
            self.rebuild_until.retain(|(_, q), _| *q != p);
            tracing::info!(
                partition = p,
                recovery_seconds = since.map_or(0.0, |d| d.as_secs_f64()),
                "streams: stage partition live again"
            );
        }
    }

    /// Hands every owned, positioned stage partition's state to the checkpoint writer
    /// (`wait`: and waits until each is stored, at a revoke and at shutdown). Call only
    /// right after [`Self::publish_and_commit_tracked`]. The partitions stored, with `wait`.
    fn checkpoint_owned(&mut self, wait: bool) -> usize {
        let Some(ckpt) = self.ckpt.as_mut() else {
            return 0;
        };
        if wait {
            // A periodic round still being written must not land after this one.
            ckpt.wait_idle();
        }
        let mut saved = 0;
        for (&p, stage) in &self.stages {
            if self.to_seek.contains(&p) {
                continue;
            }
            let offsets: Option<Vec<SourceOffset>> = Which::ALL
                .into_iter()
                .map(|w| {
                    self.positions.get(&(w, p)).map(|&offset| SourceOffset {
                        topic: self.topics.name(w).to_string(),
                        partition: p,
                        offset,
                    })
                })
                .collect();
            let Some(offsets) = offsets else {
                continue;
            };
            let held = self.held.get(&p).map_or(&[][..], Vec::as_slice);
            if ckpt.take(p, stage, held, offsets, &self.cfg, wait) {
                saved += 1;
            }
        }
        saved
    }

    fn handle_record(&mut self, inc: Incoming, wall: Millis) {
        if self.to_seek.contains(&inc.partition) {
            // Read again after the seek.
            return;
        }
        let p = inc.partition;
        // Outputs are dropped while the partition's records are re-read up to the committed
        // position: the previous owner published what they made. (Evidence makes its
        // outputs at barriers, which records bring, so the records decide.)
        let rebuilding = match inc.which {
            Which::ByLine => self
                .rebuild_until
                .get(&(Which::ByLine, p))
                .is_some_and(|&u| inc.offset < u),
            _ => self.line_rebuilding(p),
        };
        if !rebuilding && self.put_back_for_markers(&inc) {
            return;
        }
        let Some(stage) = self.stages.get_mut(&p) else {
            return;
        };
        let alerts_before = self.alerts.len();
        self.read.insert((inc.which, p), inc.offset + 1);
        let progress = self.progress.entry(p).or_default();
        if inc.which == Which::ByHandset {
            // Reserved and empty (see the module documentation): read, never queued.
            self.next.insert((inc.which, p), inc.offset + 1);
        }
        self.metrics
            .streams
            .read
            .with_label_values(&[inc.which.as_str()])
            .inc();
        let r: Result<(), WireError> = (|| {
            let kind = inc.kind()?;
            match (inc.which, kind) {
                (Which::ByLine | Which::ByHandset, Kind::Record) => {
                    let routed: Routed = inc.decode(Kind::Record)?;
                    self.last_record.insert(p, Instant::now());
                    if inc.which == Which::ByLine {
                        progress.read_message(routed.source, inc.offset);
                    }
                    stage.receive(Message::Routed(routed), wall, &mut self.alerts);
                }
                (Which::ByLine | Which::ByHandset, Kind::Control) => {
                    let mark: Mark = inc.decode(Kind::Control)?;
                    if inc.which == Which::ByLine {
                        progress.read_message(mark.source, inc.offset);
                    }
                    stage.receive(Message::Mark(mark), wall, &mut self.alerts);
                }
                (Which::Evidence, Kind::Evidence) => {
                    let e: Evidence = inc.decode(Kind::Evidence)?;
                    progress.read_evidence(inc.offset);
                    self.held.entry(p).or_default().push((inc.offset, e));
                }
                (Which::Evidence, got) => {
                    return Err(WireError::WrongKind {
                        expected: Kind::Evidence.as_str(),
                        got: got.as_str(),
                    })
                }
                (_, got) => {
                    return Err(WireError::WrongKind {
                        expected: Kind::Record.as_str(),
                        got: got.as_str(),
                    })
                }
            }
            Ok(())
        })();
        if r.is_err() {
            // Nothing of it stays inside the stage: done once dead-lettered.
            match inc.which {
                Which::Evidence => progress.read_evidence(inc.offset),
                Which::ByLine => progress.read_message(i32::MIN, inc.offset),
                Which::ByHandset => {}
            }
        }
        self.deliver_due(p, wall, false);
        if rebuilding {
            // Published by the previous owner when it ran these: only the state is wanted.
            self.alerts.truncate(alerts_before);
            if let Some(stage) = self.stages.get_mut(&p) {
                stage.take_outbox();
            }
            self.advance(p);
            if r.is_err() {
                return;
            }
        }
        if let Err(e) = r {
            self.metrics.streams.bad.inc();
            self.out.push(Outgoing::bad_internal_record(
                &inc.payload,
                e.field(),
                self.topics.name(inc.which),
                p,
                inc.offset,
            ));
        }
        self.send_outbox(p);
        self.advance(p);
    }

    /// A record polled before its internal partition was sought, in the same turn of the
    /// loop: from the consumer's position before the seek, which is past what the seek
    /// goes back to (after an abort, everything the aborted transaction read) or short of
    /// it (a checkpoint's offsets). Run, it would reach a fresh stage ahead of the history
    /// re-read before it, or run twice; so it is dropped, and read again after the seek
    /// when the seek goes back past it. Nothing of it is counted as read.
    fn drop_stale(&mut self, inc: &Incoming) {
        self.stale_dropped += 1;
        tracing::info!(
            partition = inc.partition,
            topic = inc.which.as_str(),
            offset = inc.offset,
            dropped = self.stale_dropped,
            "streams: a record polled before its stage partition was sought is not run (read again after the seek)"
        );
    }

    /// Whether stage partition `p` is still re-reading its records up to the position the
    /// previous owner committed.
    fn line_rebuilding(&self, p: i32) -> bool {
        let Some(&upto) = self.rebuild_until.get(&(Which::ByLine, p)) else {
            return false;
        };
        let read = self
            .progress
            .get(&p)
            .and_then(Progress::read_upto)
            .unwrap_or(i64::MIN);
        read < upto
    }

    /// Moves the positions to commit of partition `p` to what its stage has done with
    /// (see [`Progress`]): never past a message or evidence whose effects are still inside
    /// the stage, which a rebuild after a rebalance would re-run with its outputs dropped.
    fn advance(&mut self, p: i32) {
        let (Some(stage), Some(progress)) = (self.stages.get(&p), self.progress.get_mut(&p)) else {
            return;
        };
        let held = self.held.get(&p);
        progress.sync(stage, held.into_iter().flatten().map(|(o, _)| *o));
        let (messages, evidence) = progress.safe();
        if let Some(o) = messages {
            self.next.insert((Which::ByLine, p), o);
        }
        if let Some(o) = evidence {
            self.next.insert((Which::Evidence, p), o);
        }
    }

    /// Nothing came: sources gone quiet release what they held back; a stage whose
    /// records stopped longer than the idle timeout applies its pending evidence (as
    /// `replay` does at the end of its input), or the last epoch's findings would wait for
    /// the next record.
    fn quiet(&mut self, wall: Millis) {
        let ps: Vec<i32> = self.stages.keys().copied().collect();
        for p in ps {
            let idle = self
                .last_record
                .get(&p)
                .is_some_and(|t| t.elapsed() >= self.idle);
            let flush = idle
                && (self.held.get(&p).is_some_and(|h| !h.is_empty())
                    || self
                        .stages
                        .get(&p)
                        .is_some_and(|s| s.pending_evidence() > 0));
            self.deliver_due(p, wall, flush);
            if let Some(stage) = self.stages.get_mut(&p) {
                if flush {
                    stage.flush(wall, &mut self.alerts);
                } else {
                    stage.tick(wall, &mut self.alerts);
                }
            }
            self.send_outbox(p);
            self.advance(p);
        }
        let pending: usize = self.stages.values().map(Stage::pending_evidence).sum();
        self.metrics.streams.pending.set(pending as i64);
    }

    /// Delivers the held evidence the stage's watermark has reached (`all`: every piece).
    /// Evidence past the position the previous owner committed waits while the partition's
    /// records are still being re-read: the previous owner had not applied it, so what it
    /// makes must not fall in the rebuild, whose outputs are dropped.
    fn deliver_due(&mut self, p: i32, wall: Millis, all: bool) {
        let rebuilding = self.line_rebuilding(p);
        let evidence_upto = self
            .rebuild_until
            .get(&(Which::Evidence, p))
            .copied()
            .unwrap_or(i64::MIN);
        let (Some(stage), Some(held)) = (self.stages.get_mut(&p), self.held.get_mut(&p)) else {
            return;
        };
        if held.is_empty() {
            return;
        }
        let wm = stage.watermark(wall);
        let mut keep = Vec::new();
        for (o, e) in held.drain(..) {
            if rebuilding && o >= evidence_upto {
                keep.push((o, e));
            } else if all || e.at <= wm {
                stage.deliver(e);
            } else {
                keep.push((o, e));
            }
        }
        *held = keep;
    }

    fn send_outbox(&mut self, p: i32) {
        let Some(stage) = self.stages.get_mut(&p) else {
            return;
        };
        for (q, e) in stage.take_outbox() {
            let key = match e.dest {
                crate::exchange::Dest::Number(k) | crate::exchange::Dest::Handset(k) => k,
                crate::exchange::Dest::Every => q as u64,
            };
            let bytes = wire::encode(Kind::Evidence, &e);
            match self
                .producer
                .send_raw(Which::Evidence, q as i32, key, &bytes)
            {
                Ok(f) => {
                    self.metrics.streams.wrote(Which::Evidence, bytes.len());
                    self.writes.push((Which::Evidence, f));
                }
                // Refused outright (not a full queue, which send_raw waits out): the
                // partition's offsets must not move past it; the next publish fails and
                // stops the task, and the input is read again from the last commit.
                Err(e) => {
                    if self.refused.is_none() {
                        self.refused = Some(delivery_error(self.topics.name(Which::Evidence), &e));
                    }
                }
            }
        }
    }

    /// Alerts and dead letters published and evidence acknowledged, then the offsets of
    /// the internal records that made them committed (at least once). Exactly once: all of
    /// them and the offsets in one transaction ([`Self::publish_and_commit_txn`]). Either
    /// way, on `Ok` everything before the committed offsets is published and committed.
    fn publish_and_commit(&mut self, mode: CommitMode) -> Result<(), ServiceError> {
        if self.txn.is_some() {
            return self.publish_and_commit_txn();
        }
        let out: Vec<Outgoing> = std::mem::take(&mut self.out)
            .into_iter()
            .chain(self.alerts.drain(..).map(|a| Outgoing::alert(&a)))
            .collect();
        if !out.is_empty() {
            let mut b = InFlight::new(out, BTreeMap::new(), Instant::now());
            let all: Vec<usize> = (0..b.out.len()).collect();
            let sink = &self.sink;
            self.handle.block_on(async {
                sink.send(&mut b, all).await?;
                sink.settle(&mut b).await
            })?;
        }
        settle_writes(&self.producer, &mut self.writes)?;
        if let Some(e) = self.refused.take() {
            return Err(e);
        }
        let next = committable(std::mem::take(&mut self.next), &self.rebuild_until);
        if next.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (&(which, p), &n) in &next {
            // Adding a partition to a fresh list cannot fail for a valid offset.
            let _ = tpl.add_partition_offset(self.topics.name(which), p, Offset::Offset(n));
        }
        if let Err(e) = self.consumer.consumer().commit(&tpl, mode) {
            self.metrics.commit_failed();
            tracing::warn!(error = %e, "stage offsets could not be committed; retried with the next commit");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rebuild_never_commits_an_offset_below_the_one_it_rebuilds_up_to() {
        let until = BTreeMap::from([((Which::ByLine, 0), 100), ((Which::Evidence, 0), 10)]);
        let next = BTreeMap::from([
            // Re-reading history: committing 51 would move the group back from 100.
            ((Which::ByLine, 0), 51),
            // At the rebuild's end: nothing new to commit.
            ((Which::Evidence, 0), 10),
            // Past it, and a partition not being rebuilt: committed.
            ((Which::ByHandset, 0), 7),
            ((Which::ByLine, 1), 3),
        ]);
        let c = committable(next, &until);
        assert_eq!(
            c,
            BTreeMap::from([((Which::ByHandset, 0), 7), ((Which::ByLine, 1), 3)])
        );
        let c = committable(BTreeMap::from([((Which::ByLine, 0), 101)]), &until);
        assert_eq!(c, BTreeMap::from([((Which::ByLine, 0), 101)]));
    }
}
