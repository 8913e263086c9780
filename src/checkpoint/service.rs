//! Checkpoints in `linewatch run`: the stores opened at start, the newest usable checkpoint
//! of the assigned partitions restored on assignment, and a writer thread that stores each
//! new checkpoint while the run loop goes on detecting. The run loop only forks (see
//! [`super::snapshot`]): a copy-on-write child encodes the state while detection continues.
//!
//! A checkpoint is the state of a partition *set*: the input is not keyed by line, so one
//! engine mixes every assigned partition's records. It is stored under the group and the
//! set ([`namespace`]) and names the set in its manifest. An assignment that reaches an
//! engine holding no partitions (start, a standby taking over, a member that lost all of
//! its partitions) restores the newest checkpoint of exactly the assigned set; when there is
//! none (partitions added, the group split them differently) the input is re-read, with the
//! reason counted (`other_partitions`, `missing`). Gaining partitions while holding some
//! keeps the state held and re-reads the new ones: a set's state cannot be split or joined.
//!
//! The run loop takes a checkpoint only at a batch boundary with nothing in flight: every
//! record the state reflects has had its alerts and dead letters acknowledged, and its
//! offset committed (sent). So a restore never skips an output: the records after the
//! checkpoint's offsets and before the committed ones are re-read without publishing (they
//! were published), the rest live.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::metrics::CheckpointMetrics;
use super::snapshot::{self, Failure};
use super::store::{DirStore, KafkaStore, Store};
use super::{Fallback, InputPartition, Meta, Restored, SourceOffset};
use crate::config::Config;
use crate::engine::Engine;
use crate::event::Millis;
use crate::kafka::KafkaSettings;
use crate::service::source::lock;

/// Timeout of the state topic's broker requests.
const STORE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the checkpoints of one partition set live: under the group's name (groups can
/// share a state topic), then the set's [`super::set_id`], so two active members of a group,
/// each holding its own partitions, never write over each other's checkpoints, and a member
/// given exactly a set (a standby taking over, a restart) finds that set's newest one.
pub fn namespace(group: &str, partitions: &[InputPartition]) -> String {
    format!("{group}/{}", super::set_id(partitions))
}

/// The configured stores, fastest first: the directory when set, then the topic. A store
/// that cannot be opened is logged and left out (checkpoints go to the others).
pub fn open_stores(cfg: &Config, settings: &KafkaSettings) -> Vec<Box<dyn Store>> {
    let mut stores: Vec<Box<dyn Store>> = Vec::new();
    if !cfg.service.state_dir.is_empty() {
        match DirStore::new(&cfg.service.state_dir) {
            Ok(s) => stores.push(Box::new(s)),
            Err(e) => {
                tracing::warn!(error = %e, "state directory unusable; checkpoints go to the state topic only")
            }
        }
    }
    match KafkaStore::open(settings, &cfg.service.state_topic, STORE_TIMEOUT) {
        Ok(s) => stores.push(Box::new(s)),
        Err(e) => {
            tracing::warn!(error = %e, topic = %cfg.service.state_topic, "state topic unusable; checkpoints are not written to it")
        }
    }
    stores
}

/// The newest usable checkpoint of exactly `partitions`, trying each store in order; every
/// checkpoint passed over is logged once with its reason and counted. `None`: no usable
/// one (the reason is logged and counted too): the caller keeps the state it has and
/// re-reads the input (`service.rebuild_state_s`), as without checkpoints.
///
/// `cfg` is the configuration the restored engine is reconfigured to (a checkpoint made
/// under other thresholds keeps its state, as a live reload does).
pub fn restore(
    stores: &mut [Box<dyn Store>],
    cfg: &Config,
    partitions: &[InputPartition],
    metrics: &CheckpointMetrics,
) -> Option<Restored> {
    let started = Instant::now();
    let mut want: Vec<InputPartition> = partitions.to_vec();
    want.sort();
    want.dedup();
    let group = format!("{}/", cfg.service.group_id);
    let ns = namespace(&cfg.service.group_id, &want);
    let own = format!("{ns}/");
    // The set's chunks, and only the manifests of other sets: enough to tell "this set has
    // none" from "the group has none" without holding every set's state in memory.
    let keep = |k: &str| k.starts_with(&own) || k.ends_with("/manifest");
    let accept = |m: &super::Manifest| m.partitions == want;
    let (mut own_seen, mut others_seen) = (false, false);
    for store in stores.iter_mut() {
        let kind = store.kind();
        let mut entries = match store.load_where(&group, &keep) {
            Ok(e) => e,
            Err(e) => {
                metrics.fallback(Fallback::Unreadable);
                tracing::warn!(store = kind, error = %e, reason = Fallback::Unreadable.code(), "checkpoint store unreadable; trying the next");
                continue;
            }
        };
        let before = entries.len();
        entries.retain(|k, _| k.starts_with(&own));
        own_seen |= !entries.is_empty();
        others_seen |= entries.len() < before;
        let skipped = |f: Fallback| {
            metrics.fallback(f);
            tracing::warn!(
                store = kind,
                reason = f.code(),
                "checkpoint passed over; trying the previous one"
            );
        };
        if let Some(r) = super::restore_newest(&entries, &ns, cfg, accept, skipped) {
            let secs = started.elapsed().as_secs_f64();
            metrics.loaded(r.manifest.created_ms, secs);
            tracing::info!(
                store = kind,
                checkpoint_id = r.manifest.id,
                partitions = r.manifest.partitions.len(),
                state_bytes = r.manifest.state_bytes,
                load_seconds = secs,
                tracked_lines = r.engine.tracked_lines(),
                "window state restored from a checkpoint; re-reading only what came after it"
            );
            return Some(r);
        }
    }
    if own_seen {
        // Each one passed over was logged and counted with its own reason.
        tracing::warn!(
            partitions = want.len(),
            "no usable checkpoint of the assigned partitions; rebuilding window state from the input (service.rebuild_state_s)"
        );
    } else {
        let reason = if others_seen {
            Fallback::OtherPartitions
        } else {
            Fallback::Missing
        };
        metrics.fallback(reason);
        tracing::info!(
            reason = reason.code(),
            partitions = want.len(),
            "no checkpoint of the assigned partitions; rebuilding window state from the input (service.rebuild_state_s)"
        );
    }
    None
}

/// Removes a store's manifests of one partition set (both slots), so a restore passes it
/// over for another store's newer checkpoint; a removal that fails is logged, and that
/// store's older checkpoint stands.
fn retire(store: &mut dyn Store, namespace: &str) {
    let mut result = Ok(());
    for slot in 0..super::SLOTS {
        result = result.and_then(|()| store.remove(&super::manifest_key(namespace, slot)));
    }
    match result {
        Ok(()) => tracing::warn!(
            store = store.kind(),
            "this store missed a checkpoint another store took: its older checkpoint of the partition set is retired, so a restart restores the newer one"
        ),
        Err(e) => tracing::warn!(
            store = store.kind(),
            error = %e,
            "this store missed a checkpoint another store took, and its older one could not be retired: a restart may restore it and re-read more input"
        ),
    }
}

/// How often a writer looks for its group's partition sets that no member writes any more.
const SWEEP_EVERY: Duration = Duration::from_secs(6 * 3600);

/// A set not written for this long is abandoned: `service.rebuild_state_s`, at least a day.
/// Restoring a checkpoint older than the rebuild span re-reads more input than rebuilding
/// does, for no state the detectors still read (none looks back further).
pub fn stale_after_ms(cfg: &Config) -> Millis {
    let s = cfg.service.rebuild_state_s.max(86_400);
    i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// The partition set a manifest key belongs to (`<group>/<set id>/<slot>/manifest`, the
/// set id 16 hex digits), or `None` for any other key (another group whose name starts
/// with this one's and a '/', say).
fn set_of<'k>(key: &'k str, group_prefix: &str) -> Option<&'k str> {
    let ns = key.strip_suffix("/manifest")?.rsplit_once('/')?.0;
    let id = ns.strip_prefix(group_prefix)?;
    (id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(ns)
}

/// Removes from `store` the checkpoints of `group`'s partition sets, other than `own`,
/// whose newest manifest was created more than `max_age_ms` before `now_ms`: every
/// assignment a member checkpoints leaves a set behind when the group moves on, and nothing
/// else deletes them. Manifests go first, so a restore never finds one whose chunks are
/// half gone. A set with a manifest this build cannot read (another format version, a
/// damaged file) is left alone: its age is unknown. Returns how many sets were removed.
pub fn sweep_stale(
    store: &mut dyn Store,
    group: &str,
    own: &str,
    now_ms: Millis,
    max_age_ms: Millis,
) -> Result<usize, super::store::StoreError> {
    let prefix = format!("{group}/");
    // Every key under the group, without reading any but the manifests.
    let keys = std::cell::RefCell::new(std::collections::BTreeSet::new());
    let manifests = store.load_where(&prefix, &|k: &str| {
        keys.borrow_mut().insert(k.to_string());
        k.ends_with("/manifest")
    })?;
    let mut newest: BTreeMap<&str, Option<Millis>> = BTreeMap::new();
    for (k, v) in &manifests {
        let Some(ns) = set_of(k, &prefix) else {
            continue;
        };
        let at = newest.entry(ns).or_insert(Some(Millis::MIN));
        *at = match (*at, super::decode_manifest(v)) {
            (Some(t), Ok(m)) => Some(t.max(m.created_ms)),
            _ => None,
        };
    }
    let keys = keys.into_inner();
    let mut removed = 0;
    for (ns, at) in newest {
        let Some(at) = at else { continue };
        if ns == own || now_ms.saturating_sub(at) <= max_age_ms {
            continue;
        }
        let under = format!("{ns}/");
        let (heads, chunks): (Vec<&String>, Vec<&String>) = keys
            .iter()
            .filter(|k| k.starts_with(&under))
            .partition(|k| k.ends_with("/manifest"));
        for k in heads.into_iter().chain(chunks) {
            store.remove(k)?;
        }
        removed += 1;
    }
    Ok(removed)
}

/// Restores on assignment: the stores to read and the configuration to restore under, held
/// by the consumer's rebalance callback (see [`crate::service::source`]).
pub struct Restorer {
    stores: Vec<Box<dyn Store>>,
    cfg: Config,
    metrics: CheckpointMetrics,
}

impl std::fmt::Debug for Restorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kinds: Vec<&str> = self.stores.iter().map(|s| s.kind()).collect();
        f.debug_struct("Restorer").field("stores", &kinds).finish()
    }
}

impl Restorer {
    /// Over its own connections to the stores (the writer thread owns the others).
    pub fn open(cfg: &Config, settings: &KafkaSettings, metrics: CheckpointMetrics) -> Self {
        Restorer {
            stores: open_stores(cfg, settings),
            cfg: cfg.clone(),
            metrics,
        }
    }

    /// See [`restore`]. The engine it returns is configured as at start; the run loop
    /// reconfigures it to the configuration in force when it takes it over.
    pub fn restore(&mut self, partitions: &[InputPartition]) -> Option<Restored> {
        restore(&mut self.stores, &self.cfg, partitions, &self.metrics)
    }

    /// Whether a restored checkpoint is ahead of the group's committed offsets by more than
    /// the service processes between a checkpoint and its commit reaching the broker
    /// ([`rewound`]); if so it is counted and logged, and must not be used.
    pub fn rewound(&self, r: &Restored, committed: &[(String, i32, Option<i64>)]) -> bool {
        let slack = (self.cfg.service.batch_max_records as i64)
            .saturating_mul(self.cfg.service.max_in_flight_batches as i64 + 1);
        match rewound(&r.manifest.offsets, committed, slack) {
            None => false,
            Some((topic, partition, ck, got)) => {
                self.metrics.fallback(Fallback::Rewound);
                tracing::warn!(
                    topic = %topic,
                    partition,
                    checkpoint_offset = ck,
                    committed_offset = got.map_or_else(|| "none".to_string(), |c| c.to_string()),
                    reason = Fallback::Rewound.code(),
                    "the group's committed offset is behind its checkpoint (the group was rewound to re-process, or its offsets deleted or expired): the checkpoint is not used; the partitions are read from the committed offsets with fresh window state"
                );
                true
            }
        }
    }
}

/// The first covered partition whose committed offset is missing, or lower than the
/// checkpoint's next offset by more than `slack` records: (topic, partition, checkpoint
/// offset, committed offset). A checkpoint is taken when a batch is committed, with the
/// batch's offsets, so in normal running the group's committed offset is at most the few
/// batches whose commits had not reached the broker behind it (`slack`); further behind,
/// someone moved the group back.
pub fn rewound(
    checkpoint: &[SourceOffset],
    committed: &[(String, i32, Option<i64>)],
    slack: i64,
) -> Option<(String, i32, i64, Option<i64>)> {
    checkpoint.iter().find_map(|o| {
        let got = committed
            .iter()
            .find(|(t, p, _)| *t == o.topic && *p == o.partition)
            .map(|(_, _, c)| *c)?;
        let behind = match got {
            None => true,
            Some(c) => c.saturating_add(slack) < o.offset,
        };
        behind.then(|| (o.topic.clone(), o.partition, o.offset, got))
    })
}

/// What a checkpoint covers: the member's assigned partitions and, for those whose records
/// the state holds, the next offset to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cover {
    pub partitions: Vec<InputPartition>,
    pub offsets: Vec<SourceOffset>,
}

/// Reading, chunking and storing a checkpoint compete with detection for the cores:
/// detection goes first. On Linux a nice value is per thread; elsewhere this does nothing.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid and setpriority have no preconditions; `who` is this thread's id.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10);
    }
}

/// How the run loop takes the state for a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotMode {
    /// A forked copy-on-write child encodes the state ([`snapshot`]): detection pauses for
    /// the `fork()` only. The default on Linux.
    Fork,
    /// A copy of the engine in memory, encoded by the writer thread: detection pauses for
    /// the copy. Everywhere else, and when a fork fails.
    Copy,
}

impl Default for SnapshotMode {
    fn default() -> Self {
        if snapshot::FORK_SUPPORTED {
            SnapshotMode::Fork
        } else {
            SnapshotMode::Copy
        }
    }
}

/// The state as taken by the run loop.
enum Taken {
    Copy(Box<Engine>),
    Forked(snapshot::Child),
}

/// A checkpoint for the writer to finish and store.
struct Job {
    state: Taken,
    meta: Meta,
}

/// Takes checkpoints in the run loop and hands them to a writer thread.
pub struct Checkpointer {
    interval: Duration,
    last: Instant,
    last_id: u64,
    tx: Option<SyncSender<Job>>,
    busy: Arc<AtomicBool>,
    metrics: CheckpointMetrics,
    writer: Option<JoinHandle<()>>,
    /// The slot to write next, per namespace (partition set): the one not holding the
    /// newest checkpoint, so it stays whole while the next one is written.
    next_slot: Arc<Mutex<BTreeMap<String, u8>>>,
    mode: SnapshotMode,
    /// A failed fork is logged the first time only (it is counted every time).
    fork_warned: bool,
    fault: Option<snapshot::Fault>,
}

impl Checkpointer {
    /// Starts the writer over `stores`; a restored checkpoint is announced with
    /// [`Checkpointer::restored`].
    pub fn start(stores: Vec<Box<dyn Store>>, cfg: &Config, metrics: CheckpointMetrics) -> Self {
        // One checkpoint waits at most: if the stores are slower than the interval, the
        // next one is skipped rather than queued (memory stays bounded).
        let (tx, rx) = sync_channel::<Job>(1);
        let busy = Arc::new(AtomicBool::new(false));
        let group = cfg.service.group_id.clone();
        let next_slot: Arc<Mutex<BTreeMap<String, u8>>> = Arc::default();
        let slots = next_slot.clone();
        let m = metrics.clone();
        let flag = busy.clone();
        let mut stores = stores;
        let stale_ms = stale_after_ms(cfg);
        let writer = std::thread::Builder::new()
            .name("checkpoint-writer".into())
            .spawn(move || {
                lower_priority();
                // The last body's size: the next is about as large.
                let mut hint = 0;
                // The first checkpoint written after start sweeps, then one every
                // `SWEEP_EVERY`.
                let mut swept: Option<Instant> = None;
                while let Ok(job) = rx.recv() {
                    let started = Instant::now();
                    let ns = namespace(&group, &job.meta.partitions);
                    let slot = lock(&slots).get(&ns).copied().unwrap_or(0);
                    let body = match job.state {
                        Taken::Forked(child) => child.collect(hint),
                        Taken::Copy(engine) => {
                            super::encode_body(&engine).map_err(|_| Failure::Encode)
                        }
                    };
                    let body = match body {
                        Ok(b) => b,
                        Err(f) => {
                            m.snapshot_failed(f);
                            tracing::warn!(reason = f.code(), "checkpoint state could not be taken; skipped, the previous checkpoint stands");
                            flag.store(false, Ordering::Release);
                            continue;
                        }
                    };
                    hint = body.len();
                    let cp = match super::package(&body, job.meta, super::MAX_CHUNK_BYTES) {
                        Ok(cp) => cp,
                        Err(e) => {
                            m.snapshot_failed(Failure::Encode);
                            tracing::warn!(error = %e, reason = Failure::Encode.code(), "checkpoint could not be encoded; skipped, the previous checkpoint stands");
                            flag.store(false, Ordering::Release);
                            continue;
                        }
                    };
                    drop(body);
                    let mut ok = 0;
                    let mut failed = Vec::new();
                    for (i, store) in stores.iter_mut().enumerate() {
                        match super::write(store.as_mut(), &ns, slot, &cp) {
                            Ok(()) => ok += 1,
                            Err(e) => {
                                m.write_failed(store.kind());
                                tracing::warn!(store = store.kind(), error = %e, "checkpoint write failed; the previous checkpoint stands");
                                failed.push(i);
                            }
                        }
                    }
                    if ok > 0 {
                        // A store that missed this checkpoint while another took it holds
                        // an older one, which a restore would take first if it is tried
                        // first (the directory is): its manifests are removed, so the
                        // newer one is restored and less input re-read. Its next write
                        // that succeeds is the newest again.
                        for &i in &failed {
                            retire(stores[i].as_mut(), &ns);
                        }
                        m.written(
                            cp.manifest.created_ms,
                            cp.manifest.state_bytes,
                            started.elapsed().as_secs_f64(),
                        );
                        tracing::debug!(checkpoint_id = cp.manifest.id, slot, bytes = cp.manifest.state_bytes, "checkpoint written");
                        if swept.is_none_or(|t| t.elapsed() >= SWEEP_EVERY) {
                            swept = Some(Instant::now());
                            let now = crate::replay::wall_ms();
                            for (i, store) in stores.iter_mut().enumerate() {
                                if failed.contains(&i) {
                                    continue;
                                }
                                match sweep_stale(store.as_mut(), &group, &ns, now, stale_ms) {
                                    Ok(0) => {}
                                    Ok(n) => {
                                        m.sets_removed(store.kind(), n);
                                        tracing::info!(store = store.kind(), sets = n, "removed the checkpoints of partition sets no member has written for service.rebuild_state_s");
                                    }
                                    Err(e) => tracing::warn!(store = store.kind(), error = %e, "could not look for abandoned partition sets' checkpoints; tried again later"),
                                }
                            }
                        }
                        lock(&slots).insert(ns, (slot + 1) % super::SLOTS);
                    }
                    flag.store(false, Ordering::Release);
                }
            })
            .ok();
        if writer.is_none() {
            tracing::warn!("could not start the checkpoint writer thread; no checkpoints");
        }
        Checkpointer {
            interval: Duration::from_secs(cfg.service.checkpoint_interval_s),
            last: Instant::now(),
            last_id: 0,
            tx: writer.is_some().then_some(tx),
            busy,
            metrics,
            writer,
            next_slot,
            mode: SnapshotMode::default(),
            fork_warned: false,
            fault: None,
        }
    }

    /// Takes the state by `mode` from now on (benchmarks compare the two).
    pub fn with_mode(mut self, mode: SnapshotMode) -> Self {
        self.mode = mode;
        self
    }

    /// Damages the next snapshot on purpose (tests of the failure paths only).
    #[doc(hidden)]
    pub fn inject_fault(&mut self, fault: snapshot::Fault) {
        self.fault = Some(fault);
    }

    /// The writer has finished the last checkpoint handed to it.
    pub fn idle(&self) -> bool {
        !self.busy.load(Ordering::Acquire)
    }

    /// A checkpoint was restored: the next one of its partition set goes to the other slot
    /// and gets a higher id, so "newest" stays true across members and restarts.
    pub fn restored(&mut self, group: &str, r: &Restored) {
        let ns = namespace(group, &r.manifest.partitions);
        lock(&self.next_slot).insert(ns, (r.slot + 1) % super::SLOTS);
        self.last_id = self.last_id.max(r.manifest.id);
    }

    /// A checkpoint is due and the writer is free for it.
    pub fn due(&self) -> bool {
        self.tx.is_some()
            && !self.busy.load(Ordering::Acquire)
            && self.last.elapsed() >= self.interval
    }

    /// Takes the engine's state with what it covers and hands it to the writer. Call only
    /// with nothing in flight (see the module doc). Nothing is taken while no partition is
    /// assigned: a standby's empty state must never stand for a set's checkpoint.
    pub fn take(&mut self, engine: &Engine, cover: Cover) {
        if self.tx.is_none() || cover.partitions.is_empty() {
            return;
        }
        self.last = Instant::now();
        let now = crate::replay::wall_ms();
        let id = (now.max(0) as u64).max(self.last_id + 1);
        // Only the snapshot happens here (a fork, or a copy); encoding and writing happen
        // in the child and on the writer thread.
        let started = Instant::now();
        let state = self.snapshot(engine);
        self.metrics.paused(started.elapsed().as_secs_f64());
        self.busy.store(true, Ordering::Release);
        let job = Job {
            state,
            meta: Meta {
                id,
                created_ms: now,
                partitions: cover.partitions,
                offsets: cover.offsets,
                config: engine.config().clone(),
                config_version: engine.config_version().to_string(),
            },
        };
        let Some(tx) = &self.tx else {
            return;
        };
        match tx.try_send(job) {
            Ok(()) => self.last_id = id,
            // The job is dropped: a forked child is killed and reaped with it.
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.busy.store(false, Ordering::Release);
            }
        }
    }

    fn snapshot(&mut self, engine: &Engine) -> Taken {
        let fault = self.fault.take();
        if self.mode == SnapshotMode::Fork {
            match snapshot::fork_encode(engine, fault) {
                Ok(child) => return Taken::Forked(child),
                Err(e) => {
                    self.metrics.snapshot_failed(Failure::Fork);
                    if !self.fork_warned {
                        self.fork_warned = true;
                        tracing::warn!(error = %e, reason = Failure::Fork.code(), "could not fork to snapshot the state; copying it instead, which pauses detection (logged once)");
                    }
                }
            }
        }
        Taken::Copy(Box::new(engine.clone()))
    }

    /// Takes a last checkpoint (the state at a clean shutdown: a restart then re-reads
    /// nothing) and waits for the writer to store it.
    pub fn finish(mut self, engine: &Engine, cover: Cover) {
        if self.tx.is_some() {
            // Wait for a write still under way: the last state is the one that matters.
            while self.busy.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(10));
            }
            self.last = Instant::now() - self.interval;
            self.take(engine, cover);
        }
        self.tx = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{rewound, SourceOffset};

    #[test]
    fn a_checkpoint_ahead_of_the_committed_offsets_by_more_than_the_slack_is_rewound() {
        let ck = vec![SourceOffset {
            topic: "in".into(),
            partition: 0,
            offset: 10_000,
        }];
        let c = |o: Option<i64>| vec![("in".to_string(), 0, o)];
        // Committed at or past it, or a few batches behind (commits not yet on the broker).
        assert_eq!(rewound(&ck, &c(Some(10_000)), 500), None);
        assert_eq!(rewound(&ck, &c(Some(12_000)), 500), None);
        assert_eq!(rewound(&ck, &c(Some(9_500)), 500), None);
        // Moved back further, or the group's offsets gone.
        assert_eq!(
            rewound(&ck, &c(Some(9_499)), 500),
            Some(("in".into(), 0, 10_000, Some(9_499)))
        );
        assert_eq!(rewound(&ck, &c(Some(0)), 500).map(|r| r.3), Some(Some(0)));
        assert_eq!(rewound(&ck, &c(None), 500).map(|r| r.3), Some(None));
        // A partition the lookup did not answer for says nothing.
        assert_eq!(rewound(&ck, &[], 500), None);
    }
}
