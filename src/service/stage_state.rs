//! Checkpoints of the `[streams]` stage partitions (issue 11): each stage partition's state
//! saved with the internal offsets it reflects, so a partition that moves to another
//! instance (a kill, a member joining, a shutdown) takes its state with it instead of
//! re-reading `service.rebuild_state_s` of its internal partitions.
//!
//! - **What is saved**: [`Stage::save`]'s sections (detectors, stage clock and queues,
//!   dedup) and a `held` section (evidence read and not yet delivered: its offsets are
//!   already behind the saved positions), with the next offset to read of the partition's
//!   three internal topics (`-by-line`, `-by-handset`, `-evidence`). Taken by the stage
//!   task only right after its outputs were published and its offsets committed (or a
//!   transaction committed), so a checkpoint reflects no output that is not published.
//! - **Format**: the single-instance checkpoints' ([`crate::checkpoint`]): chunks, manifest
//!   written last, two slots, checksums, the same stores (`service.state_dir` when set, and
//!   `service.state_topic`). Nothing new in the manifest: its `partitions` are the three
//!   internal partitions (which name the group, the topics and *p*), its `offsets` their
//!   next offsets; *P* is in the key. Keys are `<group>-stages/stage-<p>-of-<P>/<slot>/…`,
//!   beside the stage consumer group's name: never under `<group>/`, where the
//!   single-instance checkpoints of the same group live, so neither reads the other's.
//! - **Restore** ([`StageCheckpoints::restore`]): the newest checkpoint of *p* of *P* that
//!   verifies; one of another *P* is refused (`other_partitions`: its offsets belong to
//!   internal topics laid out for another count), as are one of other topics
//!   (`incompatible`), a corrupt or truncated one (the other slot is tried). The caller
//!   then falls back to re-reading (`service.rebuild_state_s`).
//! - **Writing** happens on a thread of its own (the stage task only encodes), except at a
//!   revoke and at shutdown, where the stage task waits until the state is stored: the
//!   next owner is assigned only after this member gives the partition up.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntGauge, Registry};

use crate::checkpoint::metrics::CheckpointMetrics;
use crate::checkpoint::store::Store;
use crate::checkpoint::{
    self, codec, Encoded, Fallback, InputPartition, Manifest, Meta, Section, SourceOffset,
};
use crate::config::Config;
use crate::event::Millis;
use crate::exchange::Evidence;
use crate::kafka::KafkaSettings;
use crate::service::source::lock;
use crate::streams::stage::Stage;
use crate::streams::topics::{InternalTopics, Which};

const STATIC_OK: &str = "static metric definitions are valid";

/// Evidence the stage task holds for a partition, with the offset of the evidence
/// partition it was read at (what of that partition may be committed depends on it: see
/// [`crate::streams::stage::Progress`]).
pub type Held = (i64, Evidence);

/// The section holding the evidence the stage task held for the partition.
const HELD: &str = "held";

/// The stage partitions' checkpoint and rebuild metrics (no identifier in any label).
#[derive(Clone)]
pub struct StageStateMetrics {
    /// Internal records re-read with outputs dropped after an assignment.
    pub rebuild_records: IntCounter,
    /// Stage partitions restored from a checkpoint on assignment.
    pub restored: IntCounter,
    /// Stage partition checkpoints written (every store that took it counted once).
    pub written: IntCounter,
    /// Encoded bytes of the newest checkpoint of each stage partition this instance owns.
    pub bytes: IntGauge,
}

impl StageStateMetrics {
    pub fn register(r: &Registry) -> Self {
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect(STATIC_OK);
            r.register(Box::new(c.clone())).expect(STATIC_OK);
            c
        };
        let rebuild_records = counter(
            "linewatch_stage_rebuild_records_total",
            "Internal records a stage partition re-reads after an assignment (outputs dropped): from its checkpoint's offsets, or service.rebuild_state_s back without one, up to the committed offsets.",
        );
        let restored = counter(
            "linewatch_stage_restores_total",
            "Stage partitions restored from their checkpoint on assignment (fallbacks: linewatch_checkpoint_fallbacks_total).",
        );
        let written = counter(
            "linewatch_stage_checkpoints_written_total",
            "Stage partition checkpoints written to at least one store.",
        );
        let bytes = IntGauge::new(
            "linewatch_stage_checkpoint_bytes",
            "Encoded state bytes of the newest checkpoint of each stage partition this instance owns, summed.",
        )
        .expect(STATIC_OK);
        r.register(Box::new(bytes.clone())).expect(STATIC_OK);
        StageStateMetrics {
            rebuild_records,
            restored,
            written,
            bytes,
        }
    }
}

/// Where the checkpoints of stage partition `p` of `n` live (see the module docs).
pub fn namespace(group: &str, p: i32, n: usize) -> String {
    format!("{}stage-{p}-of-{n}", prefix(group))
}

/// Every stage partition checkpoint of `group`, whatever its count.
fn prefix(group: &str) -> String {
    format!("{group}-stages/")
}

/// The three internal partitions whose state a stage partition's checkpoint is, sorted.
pub fn covered(topics: &InternalTopics, p: i32) -> Vec<InputPartition> {
    let mut v: Vec<InputPartition> = Which::ALL
        .into_iter()
        .map(|w| InputPartition {
            topic: topics.name(w).to_string(),
            partition: p,
        })
        .collect();
    v.sort();
    v
}

/// A stage partition's checkpoint, ready for a store. `offsets`: the next offset to read of
/// each of its three internal partitions, all of whose earlier records the state reflects.
#[allow(clippy::too_many_arguments)]
pub fn encode(
    stage: &Stage,
    held: &[Held],
    topics: &InternalTopics,
    p: i32,
    offsets: Vec<SourceOffset>,
    cfg: &Config,
    id: u64,
    created_ms: Millis,
) -> Result<Encoded, codec::Error> {
    let mut sections = stage.save()?;
    sections.push(Section::new(HELD, codec::encode(&held.to_vec())?));
    let body = codec::encode(&sections)?;
    let meta = Meta {
        id,
        created_ms,
        partitions: covered(topics, p),
        offsets,
        config: cfg.clone(),
        config_version: cfg.version(),
    };
    checkpoint::package(&body, meta, checkpoint::MAX_CHUNK_BYTES)
}

/// A stage partition as a checkpoint saved it.
pub struct RestoredStage {
    pub stage: Stage,
    pub held: Vec<Held>,
    /// Where each internal partition is read from again.
    pub offsets: Vec<SourceOffset>,
    pub manifest_id: u64,
    pub state_bytes: u64,
    pub created_ms: Millis,
}

/// The manifest is one of partition `p`'s, with an offset for each internal topic.
fn fits(m: &Manifest, topics: &InternalTopics, p: i32) -> bool {
    let want = covered(topics, p);
    let mut have: Vec<InputPartition> = m
        .offsets
        .iter()
        .map(|o| InputPartition {
            topic: o.topic.clone(),
            partition: o.partition,
        })
        .collect();
    have.sort();
    m.partitions == want && have == want
}

/// The stage and held evidence of checked sections, under the configuration in force.
pub fn decode(
    sections: &[Section],
    cfg: &Config,
    p: i32,
    n: usize,
) -> Result<(Stage, Vec<Held>), Fallback> {
    let held = sections
        .iter()
        .find(|s| s.name == HELD)
        .ok_or(Fallback::Corrupt)?;
    let held: Vec<Held> = codec::decode(&held.bytes).map_err(|_| Fallback::Corrupt)?;
    let stage = Stage::restore(cfg, p as usize, n, sections, n).map_err(|_| Fallback::Corrupt)?;
    Ok((stage, held))
}

/// A checkpoint for the writer thread; `done` hears whether some store took it.
struct Job {
    ns: String,
    cp: Encoded,
    done: Option<SyncSender<bool>>,
}

/// The stage task's checkpoints: a writer thread over its stores, and its own connections
/// to them for restores (as the single-instance `Restorer`).
pub struct StageCheckpoints {
    group: String,
    partitions: usize,
    topics: InternalTopics,
    interval: Duration,
    last: Instant,
    last_id: u64,
    tx: Option<SyncSender<Job>>,
    /// Jobs handed to the writer and not yet finished.
    queued: Arc<AtomicUsize>,
    writer: Option<JoinHandle<()>>,
    /// Per namespace, the slot to write next: the one not holding the newest checkpoint.
    next_slot: Arc<Mutex<BTreeMap<String, u8>>>,
    readers: Vec<Box<dyn Store>>,
    metrics: CheckpointMetrics,
    pub stage_metrics: StageStateMetrics,
    /// Per owned stage partition, its newest checkpoint's encoded bytes (the gauge's sum).
    sizes: BTreeMap<i32, u64>,
}

impl StageCheckpoints {
    /// `None` with `service.checkpoint_interval_s = 0` (checkpoints off) or when no store
    /// can be opened (logged): stage partitions are then rebuilt by re-reading.
    pub fn open(
        cfg: &Config,
        settings: &KafkaSettings,
        metrics: CheckpointMetrics,
        stage_metrics: StageStateMetrics,
    ) -> Option<Self> {
        if cfg.service.checkpoint_interval_s == 0 {
            return None;
        }
        let writers = checkpoint::service::open_stores(cfg, settings);
        let readers = checkpoint::service::open_stores(cfg, settings);
        if writers.is_empty() || readers.is_empty() {
            tracing::warn!("no checkpoint store for the stage partitions; a partition that moves is rebuilt from its internal partitions (service.rebuild_state_s)");
            return None;
        }
        Some(Self::with_stores(
            cfg,
            writers,
            readers,
            metrics,
            stage_metrics,
        ))
    }

    /// Over given stores (tests use directories).
    pub fn with_stores(
        cfg: &Config,
        writers: Vec<Box<dyn Store>>,
        readers: Vec<Box<dyn Store>>,
        metrics: CheckpointMetrics,
        stage_metrics: StageStateMetrics,
    ) -> Self {
        // Bounded: when the stores are slower than the interval, the next round of
        // checkpoints is skipped rather than queued (memory stays bounded).
        let partitions = cfg.streams.internal_partitions as usize;
        let (tx, rx) = sync_channel::<Job>(partitions.max(1));
        let queued = Arc::new(AtomicUsize::new(0));
        let next_slot: Arc<Mutex<BTreeMap<String, u8>>> = Arc::default();
        let writer = {
            let (queued, slots, m, sm) = (
                queued.clone(),
                next_slot.clone(),
                metrics.clone(),
                stage_metrics.clone(),
            );
            std::thread::Builder::new()
                .name("stage-checkpoint-writer".into())
                .spawn(move || write_jobs(rx, writers, queued, slots, m, sm))
                .ok()
        };
        if writer.is_none() {
            tracing::warn!(
                "could not start the stage checkpoint writer thread; no stage checkpoints"
            );
        }
        StageCheckpoints {
            group: cfg.service.group_id.clone(),
            partitions,
            topics: InternalTopics::for_group(&cfg.service.group_id),
            interval: Duration::from_secs(cfg.service.checkpoint_interval_s),
            last: Instant::now(),
            last_id: 0,
            tx: writer.is_some().then_some(tx),
            queued,
            writer,
            next_slot,
            readers,
            metrics,
            stage_metrics,
            sizes: BTreeMap::new(),
        }
    }

    /// A round of checkpoints is due and the writer has finished the last one.
    pub fn due(&self) -> bool {
        self.tx.is_some()
            && self.queued.load(Ordering::Acquire) == 0
            && self.last.elapsed() >= self.interval
    }

    /// Encodes stage partition `p` and hands it to the writer; with `wait`, returns once it
    /// is stored (true when some store took it). Call only right after a successful
    /// publish and commit (see the module docs).
    pub fn take(
        &mut self,
        p: i32,
        stage: &Stage,
        held: &[Held],
        offsets: Vec<SourceOffset>,
        cfg: &Config,
        wait: bool,
    ) -> bool {
        let Some(tx) = &self.tx else {
            return false;
        };
        self.last = Instant::now();
        let now = crate::replay::wall_ms();
        let id = (now.max(0) as u64).max(self.last_id + 1);
        let started = Instant::now();
        let cp = match encode(stage, held, &self.topics, p, offsets, cfg, id, now) {
            Ok(cp) => cp,
            Err(e) => {
                self.metrics
                    .snapshot_failed(checkpoint::snapshot::Failure::Encode);
                tracing::warn!(error = %e, partition = p, "stage partition state could not be encoded; the previous checkpoint stands");
                return false;
            }
        };
        self.metrics.paused(started.elapsed().as_secs_f64());
        self.sizes.insert(p, cp.manifest.state_bytes);
        self.stage_metrics
            .bytes
            .set(self.sizes.values().sum::<u64>() as i64);
        let (done_tx, done_rx) = sync_channel(1);
        let job = Job {
            ns: namespace(&self.group, p, self.partitions),
            cp,
            done: wait.then_some(done_tx),
        };
        self.queued.fetch_add(1, Ordering::AcqRel);
        let sent = if wait {
            tx.send(job).is_ok()
        } else {
            match tx.try_send(job) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
            }
        };
        if !sent {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        self.last_id = id;
        wait && done_rx.recv().unwrap_or(false)
    }

    /// Blocks until every checkpoint handed to the writer is stored (or failed).
    pub fn wait_idle(&self) {
        while self.tx.is_some() && self.queued.load(Ordering::Acquire) > 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stage partition `p` is no longer owned: its size leaves the gauge.
    pub fn forget(&mut self, p: i32) {
        self.sizes.remove(&p);
        self.stage_metrics
            .bytes
            .set(self.sizes.values().sum::<u64>() as i64);
    }

    /// The newest usable checkpoint of each of `ps`, reading each store once for all of
    /// them (fastest store first). Each checkpoint passed over is counted and logged with
    /// its reason; a partition with none usable is counted and logged once with why
    /// (`missing`, `other_partitions`, or the reasons already logged), and is absent from
    /// the answer: the caller rebuilds it by re-reading.
    pub fn restore(&mut self, ps: &[i32], cfg: &Config) -> BTreeMap<i32, RestoredStage> {
        let started = Instant::now();
        let mut out = BTreeMap::new();
        if ps.is_empty() {
            return out;
        }
        let n = self.partitions;
        let own: BTreeMap<String, i32> = ps
            .iter()
            .map(|&p| (format!("{}/", namespace(&self.group, p, n)), p))
            .collect();
        // Only the assigned partitions' chunks, and every manifest (to tell "none of this
        // count" from "none at all").
        let keep = |k: &str| k.ends_with("/manifest") || own.keys().any(|o| k.starts_with(o));
        let mut seen_own: BTreeSet<i32> = BTreeSet::new();
        let mut seen_other_count = false;
        let of_count = format!("-of-{n}/");
        let group_prefix = prefix(&self.group);
        // Every store is read and the newest checkpoint kept: a partition that moved away
        // and back finds its older checkpoint in this host's directory, and the newer one
        // its other owner wrote in the topic only.
        let mut best: BTreeMap<i32, (RestoredStage, &'static str, u8)> = BTreeMap::new();
        for store in self.readers.iter_mut() {
            let kind = store.kind();
            let entries = match store.load_where(&group_prefix, &keep) {
                Ok(e) => e,
                Err(e) => {
                    self.metrics.fallback(Fallback::Unreadable);
                    tracing::warn!(store = kind, error = %e, reason = Fallback::Unreadable.code(), "stage checkpoint store unreadable; trying the next");
                    continue;
                }
            };
            seen_other_count |= entries.keys().any(|k| !k.contains(&of_count));
            for &p in ps {
                let ns = namespace(&self.group, p, n);
                let mine = format!("{ns}/");
                if entries.keys().any(|k| k.starts_with(&mine)) {
                    seen_own.insert(p);
                }
                let metrics = &self.metrics;
                let skipped = |f: Fallback| {
                    metrics.fallback(f);
                    tracing::warn!(
                        store = kind,
                        partition = p,
                        reason = f.code(),
                        "stage checkpoint passed over; trying the previous one"
                    );
                };
                let topics = &self.topics;
                let newer_than = best.get(&p).map_or(0, |b| b.0.manifest_id);
                let got = checkpoint::newest_usable(
                    &entries,
                    &ns,
                    |m| fits(m, topics, p) && m.id > newer_than,
                    |_, sections| decode(sections, cfg, p, n),
                    |f| {
                        // An older one than another store's is not a fallback.
                        if newer_than == 0 {
                            skipped(f)
                        }
                    },
                );
                if let Some(((stage, held), m, slot)) = got {
                    let r = RestoredStage {
                        stage,
                        held,
                        offsets: m.offsets.clone(),
                        manifest_id: m.id,
                        state_bytes: m.state_bytes,
                        created_ms: m.created_ms,
                    };
                    best.insert(p, (r, kind, slot));
                }
            }
        }
        for (p, (r, kind, slot)) in best {
            self.metrics
                .loaded(r.created_ms, started.elapsed().as_secs_f64());
            lock(&self.next_slot)
                .insert(namespace(&self.group, p, n), (slot + 1) % checkpoint::SLOTS);
            self.last_id = self.last_id.max(r.manifest_id);
            self.stage_metrics.restored.inc();
            self.sizes.insert(p, r.state_bytes);
            tracing::info!(
                store = kind,
                partition = p,
                checkpoint_id = r.manifest_id,
                state_bytes = r.state_bytes,
                load_seconds = started.elapsed().as_secs_f64(),
                tracked_lines = r.stage.tracked_lines(),
                "streams: stage partition restored from its checkpoint"
            );
            out.insert(p, r);
        }
        self.stage_metrics
            .bytes
            .set(self.sizes.values().sum::<u64>() as i64);
        for &p in ps.iter().filter(|p| !out.contains_key(p)) {
            if seen_own.contains(&p) {
                // Each one passed over was counted and logged with its own reason.
                tracing::warn!(
                    partition = p,
                    "streams: no usable checkpoint of the stage partition; rebuilding it from its internal partitions (service.rebuild_state_s)"
                );
                continue;
            }
            let reason = if seen_other_count {
                Fallback::OtherPartitions
            } else {
                Fallback::Missing
            };
            self.metrics.fallback(reason);
            tracing::info!(
                partition = p,
                reason = reason.code(),
                internal_partitions = n,
                "streams: no checkpoint of the stage partition at this internal_partitions count; rebuilding it from its internal partitions (service.rebuild_state_s)"
            );
        }
        out
    }
}

impl Drop for StageCheckpoints {
    fn drop(&mut self) {
        // The writer ends when its channel closes, after the jobs already queued.
        self.tx = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

fn write_jobs(
    rx: Receiver<Job>,
    mut stores: Vec<Box<dyn Store>>,
    queued: Arc<AtomicUsize>,
    slots: Arc<Mutex<BTreeMap<String, u8>>>,
    m: CheckpointMetrics,
    sm: StageStateMetrics,
) {
    while let Ok(job) = rx.recv() {
        let started = Instant::now();
        let slot = lock(&slots).get(&job.ns).copied().unwrap_or(0);
        let mut ok = 0;
        for store in stores.iter_mut() {
            match checkpoint::write(store.as_mut(), &job.ns, slot, &job.cp) {
                Ok(()) => ok += 1,
                Err(e) => {
                    m.write_failed(store.kind());
                    tracing::warn!(store = store.kind(), error = %e, "stage checkpoint write failed; the previous checkpoint stands");
                }
            }
        }
        if ok > 0 {
            m.written(
                job.cp.manifest.created_ms,
                job.cp.manifest.state_bytes,
                started.elapsed().as_secs_f64(),
            );
            sm.written.inc();
            tracing::debug!(
                checkpoint_id = job.cp.manifest.id,
                slot,
                bytes = job.cp.manifest.state_bytes,
                "stage checkpoint written"
            );
            lock(&slots).insert(job.ns, (slot + 1) % checkpoint::SLOTS);
        }
        if let Some(done) = job.done {
            let _ = done.send(ok > 0);
        }
        queued.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::store::{DirStore, WritesFail};
    use crate::generate::{self, GenOptions};
    use crate::streams::ingest::IngestStage;

    const N: usize = 2;

    fn cfg() -> Config {
        let mut c = Config::default();
        c.service.group_id = "g".into();
        c.streams.internal_partitions = N as u32;
        c
    }

    /// A wall clock after every record (none is "in the future").
    const WALL: Millis = 4_000_000_000_000;

    /// Partition 0 of 2's messages of a small generated city, in the order routed.
    fn messages() -> Vec<crate::streams::message::Message> {
        let opts = GenOptions {
            seed: 3,
            subscribers: 1_000,
            days: 1,
            ..GenOptions::default()
        };
        let (events, _, _) = generate::generate_in_memory(&opts).expect("generate");
        let mut ingest = IngestStage::new(cfg(), 1, N);
        let (mut out, mut mine) = (Vec::new(), Vec::new());
        for line in events.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            ingest.ingest(line, 0, WALL, &mut out);
            mine.extend(out.drain(..).filter(|(p, _)| *p == 0).map(|(_, m)| m));
        }
        mine
    }

    /// Runs `msgs` on `stage`: its alerts, and the evidence it sent to partition 1.
    fn run(
        stage: &mut Stage,
        msgs: &[crate::streams::message::Message],
    ) -> (Vec<crate::alert::Alert>, Vec<Evidence>) {
        let (mut alerts, mut sent) = (Vec::new(), Vec::new());
        for m in msgs {
            stage.receive(m.clone(), WALL, &mut alerts);
            sent.extend(stage.take_outbox().into_iter().map(|(_, e)| e));
        }
        (alerts, sent)
    }

    /// Stage 0 of 2 after a small generated city, and evidence it sent to partition 1
    /// (standing in for evidence the stage task holds).
    fn busy_stage() -> (Stage, Vec<Held>) {
        let mut stage = Stage::new(&cfg(), 0, N);
        let (_, mut sent) = run(&mut stage, &messages());
        assert!(stage.tracked_lines() > 0, "{:?}", stage.stats());
        assert!(!sent.is_empty(), "{:?}", stage.stats());
        sent.truncate(5);
        (stage, at_offsets(sent))
    }

    /// Evidence as the stage task holds it: each piece with the offset it was read at.
    fn at_offsets(sent: Vec<Evidence>) -> Vec<Held> {
        sent.into_iter().zip(40..).map(|(e, o)| (o, e)).collect()
    }

    fn offsets(topics: &InternalTopics, p: i32, base: i64) -> Vec<SourceOffset> {
        Which::ALL
            .into_iter()
            .zip(0..)
            .map(|(w, i)| SourceOffset {
                topic: topics.name(w).to_string(),
                partition: p,
                offset: base + i,
            })
            .collect()
    }

    fn checkpoints(dir: &std::path::Path, c: &Config) -> (StageCheckpoints, CheckpointMetrics) {
        let stores = || -> Vec<Box<dyn Store>> { vec![Box::new(DirStore::new(dir).expect("dir"))] };
        let m = CheckpointMetrics::register(&Registry::new());
        let sm = StageStateMetrics::register(&Registry::new());
        (
            StageCheckpoints::with_stores(c, stores(), stores(), m.clone(), sm),
            m,
        )
    }

    fn fallbacks(m: &CheckpointMetrics, reason: Fallback) -> u64 {
        m.fallback_count(reason)
    }

    /// Unlike the input checkpoints' restore, which tries the stores in order (and so has a
    /// store that missed a checkpoint retire its older one), this one reads every store and
    /// keeps the newest: a store that missed checkpoints is passed over as it is.
    #[test]
    fn a_store_that_missed_a_stage_checkpoint_does_not_restore_its_older_one_first() {
        let dir = tempfile::tempdir().expect("tmp");
        let (first, second) = (dir.path().join("first"), dir.path().join("second"));
        let c = cfg();
        let topics = InternalTopics::for_group("g");
        let msgs = messages();
        let mut stage = Stage::new(&c, 0, N);
        run(&mut stage, &msgs[..msgs.len() / 2]);
        let broken = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers = || -> Vec<Box<dyn Store>> {
            vec![
                Box::new(DirStore::new(&first).expect("dir")),
                Box::new(DirStore::new(&second).expect("dir")),
            ]
        };
        let writers: Vec<Box<dyn Store>> = vec![
            Box::new(WritesFail {
                inner: DirStore::new(&first).expect("dir"),
                broken: broken.clone(),
            }),
            Box::new(DirStore::new(&second).expect("dir")),
        ];
        let metrics = || CheckpointMetrics::register(&Registry::new());
        let stage_metrics = || StageStateMetrics::register(&Registry::new());
        let mut ck =
            StageCheckpoints::with_stores(&c, writers, readers(), metrics(), stage_metrics());
        assert!(ck.take(0, &stage, &[], offsets(&topics, 0, 100), &c, true));
        // The first store's volume fills; the second takes the next two.
        broken.store(true, Ordering::SeqCst);
        for base in [200, 300] {
            assert!(ck.take(0, &stage, &[], offsets(&topics, 0, base), &c, true));
        }
        let mut other =
            StageCheckpoints::with_stores(&c, Vec::new(), readers(), metrics(), stage_metrics());
        let got = other.restore(&[0], &c);
        // Not the first store's checkpoint at 100.
        assert_eq!(got[&0].offsets, offsets(&topics, 0, 300));
    }

    #[test]
    fn a_restored_stage_partition_goes_on_exactly_as_the_one_saved() {
        let dir = tempfile::tempdir().expect("tmp");
        let c = cfg();
        let topics = InternalTopics::for_group("g");
        let msgs = messages();
        let (first, rest) = msgs.split_at(msgs.len() / 2);
        let mut stage = Stage::new(&c, 0, N);
        let (_, mut held) = run(&mut stage, first);
        held.truncate(5);
        let held = at_offsets(held);
        assert!(!held.is_empty() && stage.tracked_lines() > 0);
        let (mut ck, m) = checkpoints(dir.path(), &c);
        assert!(ck.take(0, &stage, &held, offsets(&topics, 0, 100), &c, true));
        // A second one goes to the other slot and is the newer.
        assert!(ck.take(0, &stage, &held, offsets(&topics, 0, 200), &c, true));
        let (mut other, om) = checkpoints(dir.path(), &c);
        let mut got = other.restore(&[0, 1], &c);
        assert_eq!(got.keys().copied().collect::<Vec<_>>(), vec![0]);
        let r = got.remove(&0).expect("partition 0 restored");
        assert_eq!(r.offsets, offsets(&topics, 0, 200));
        assert_eq!(r.held, held);
        let mut restored = r.stage;
        assert_eq!(restored.tracked_lines(), stage.tracked_lines());
        assert_eq!(restored.stats(), stage.stats());
        assert_eq!(restored.pending_evidence(), stage.pending_evidence());
        // The rest of the input on both: the same alerts and the same evidence out.
        let (want, want_sent) = run(&mut stage, rest);
        let (have, have_sent) = run(&mut restored, rest);
        assert!(
            !want.is_empty(),
            "the second half must make alerts to compare"
        );
        assert_eq!(have, want);
        assert_eq!(have_sent, want_sent);
        assert_eq!(fallbacks(&m, Fallback::Missing), 0);
        // Partition 1 had none: counted once as missing by the restoring side.
        assert_eq!(
            fallbacks(&om, Fallback::Missing),
            1,
            "partition 1 had no checkpoint"
        );
    }

    #[test]
    fn a_corrupt_newest_checkpoint_falls_back_to_the_other_slot_then_to_none() {
        let dir = tempfile::tempdir().expect("tmp");
        let c = cfg();
        let topics = InternalTopics::for_group("g");
        let (stage, held) = busy_stage();
        let (mut ck, _) = checkpoints(dir.path(), &c);
        assert!(ck.take(0, &stage, &held, offsets(&topics, 0, 100), &c, true));
        assert!(ck.take(0, &stage, &held, offsets(&topics, 0, 200), &c, true));
        let ns = namespace("g", 0, N);
        // The newest is in slot 1 (slot 0 first): flip a byte of its first chunk.
        let chunk = dir.path().join(checkpoint::chunk_key(&ns, 1, 0));
        let mut bytes = std::fs::read(&chunk).expect("chunk");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&chunk, &bytes).expect("write");
        let (mut r1, m1) = checkpoints(dir.path(), &c);
        let got = r1.restore(&[0], &c);
        assert_eq!(got[&0].offsets, offsets(&topics, 0, 100), "the older slot");
        assert_eq!(fallbacks(&m1, Fallback::Corrupt), 1);
        // Both damaged: none, each counted with its reason, no `missing` on top.
        let chunk = dir.path().join(checkpoint::chunk_key(&ns, 0, 0));
        std::fs::write(&chunk, b"LWCK garbage").expect("write");
        let (mut r2, m2) = checkpoints(dir.path(), &c);
        assert!(r2.restore(&[0], &c).is_empty());
        assert_eq!(fallbacks(&m2, Fallback::Corrupt), 2);
        assert_eq!(fallbacks(&m2, Fallback::Missing), 0);
    }

    #[test]
    fn a_checkpoint_of_another_partition_count_or_other_topics_is_refused_with_its_reason() {
        let dir = tempfile::tempdir().expect("tmp");
        let c = cfg();
        let (stage, held) = busy_stage();
        let (mut ck, _) = checkpoints(dir.path(), &c);
        assert!(ck.take(
            0,
            &stage,
            &held,
            offsets(&InternalTopics::for_group("g"), 0, 1),
            &c,
            true
        ));
        // The same group read with internal_partitions = 3: nothing of 3, some of 2.
        let mut c3 = c.clone();
        c3.streams.internal_partitions = 3;
        let (mut r3, m3) = checkpoints(dir.path(), &c3);
        assert!(r3.restore(&[0], &c3).is_empty());
        assert_eq!(fallbacks(&m3, Fallback::OtherPartitions), 1);
        assert_eq!(fallbacks(&m3, Fallback::Missing), 0);
        // Offsets of another group's topics under this key (a copied store): incompatible.
        let dir2 = tempfile::tempdir().expect("tmp");
        let (mut bad, _) = checkpoints(dir2.path(), &c);
        let other = offsets(&InternalTopics::for_group("h"), 0, 1);
        assert!(bad.take(0, &stage, &held, other, &c, true));
        let (mut r, m) = checkpoints(dir2.path(), &c);
        assert!(r.restore(&[0], &c).is_empty());
        assert_eq!(fallbacks(&m, Fallback::Incompatible), 1);
    }

    #[test]
    fn stage_keys_never_meet_the_single_instance_checkpoints_of_the_group() {
        let set = crate::checkpoint::service::namespace("g", &[]);
        let ns = namespace("g", 0, N);
        assert!(!ns.starts_with("g/") && set.starts_with("g/"));
        assert_eq!(ns, "g-stages/stage-0-of-2");
    }
}
