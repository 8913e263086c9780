//! Checkpoints in `linewatch run`: the stores opened at start, the newest usable checkpoint
//! restored before the first poll, and a writer thread that stores each new checkpoint
//! while the run loop goes on detecting. The run loop only forks (see [`super::snapshot`]):
//! a copy-on-write child encodes the state while detection continues.
//!
//! The run loop takes a checkpoint only at a batch boundary with nothing in flight: every
//! record the state reflects has had its alerts and dead letters acknowledged, and its
//! offset committed (sent). So a restore never skips an output: the records after the
//! checkpoint's offsets and before the committed ones are re-read without publishing (they
//! were published), the rest live.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::metrics::CheckpointMetrics;
use super::snapshot::{self, Failure};
use super::store::{DirStore, KafkaStore, Store};
use super::{Fallback, Meta, Restored, SourceOffset};
use crate::config::Config;
use crate::engine::Engine;
use crate::kafka::KafkaSettings;

/// Timeout of the state topic's broker requests.
const STORE_TIMEOUT: Duration = Duration::from_secs(10);

/// The group's checkpoints live under its name, so groups can share a state topic.
pub fn namespace(cfg: &Config) -> String {
    cfg.service.group_id.clone()
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

/// The newest usable checkpoint, trying each store in order; every checkpoint passed over
/// is logged once with its reason and counted. `None`: start empty and re-read the input
/// (`service.rebuild_state_s`), as without checkpoints.
pub fn restore(
    stores: &mut [Box<dyn Store>],
    cfg: &Config,
    metrics: &CheckpointMetrics,
) -> Option<Restored> {
    let started = Instant::now();
    let ns = namespace(cfg);
    let topics = &cfg.service.input_topics;
    // A checkpoint of other input topics describes other records.
    let accept = |m: &super::Manifest| m.offsets.iter().all(|o| topics.contains(&o.topic));
    for store in stores.iter_mut() {
        let kind = store.kind();
        let entries = match store.load(&format!("{ns}/")) {
            Ok(e) => e,
            Err(e) => {
                metrics.fallback(Fallback::Unreadable);
                tracing::warn!(store = kind, error = %e, reason = Fallback::Unreadable.code(), "checkpoint store unreadable; trying the next");
                continue;
            }
        };
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
                state_bytes = r.manifest.state_bytes,
                load_seconds = secs,
                tracked_lines = r.engine.tracked_lines(),
                "window state restored from a checkpoint; re-reading only what came after it"
            );
            return Some(r);
        }
    }
    metrics.fallback(Fallback::Missing);
    tracing::info!(
        reason = Fallback::Missing.code(),
        "no usable checkpoint; rebuilding window state from the input (service.rebuild_state_s)"
    );
    None
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
    mode: SnapshotMode,
    /// A failed fork is logged the first time only (it is counted every time).
    fork_warned: bool,
    fault: Option<snapshot::Fault>,
}

impl Checkpointer {
    /// Starts the writer over `stores`; `restored` (the checkpoint loaded at start, if
    /// any) gives the first slot (the other one) and the id to exceed.
    pub fn start(
        stores: Vec<Box<dyn Store>>,
        cfg: &Config,
        restored: Option<(u8, u64)>,
        metrics: CheckpointMetrics,
    ) -> Self {
        // One checkpoint waits at most: if the stores are slower than the interval, the
        // next one is skipped rather than queued (memory stays bounded).
        let (tx, rx) = sync_channel::<Job>(1);
        let busy = Arc::new(AtomicBool::new(false));
        let ns = namespace(cfg);
        let mut slot = restored.map_or(0, |(s, _)| (s + 1) % super::SLOTS);
        let m = metrics.clone();
        let flag = busy.clone();
        let mut stores = stores;
        let writer = std::thread::Builder::new()
            .name("checkpoint-writer".into())
            .spawn(move || {
                lower_priority();
                // The last body's size: the next is about as large.
                let mut hint = 0;
                while let Ok(job) = rx.recv() {
                    let started = Instant::now();
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
                    for store in stores.iter_mut() {
                        match super::write(store.as_mut(), &ns, slot, &cp) {
                            Ok(()) => ok += 1,
                            Err(e) => {
                                m.write_failed(store.kind());
                                tracing::warn!(store = store.kind(), error = %e, "checkpoint write failed; the previous checkpoint stands");
                            }
                        }
                    }
                    if ok > 0 {
                        m.written(
                            cp.manifest.created_ms,
                            cp.manifest.state_bytes,
                            started.elapsed().as_secs_f64(),
                        );
                        tracing::debug!(checkpoint_id = cp.manifest.id, slot, bytes = cp.manifest.state_bytes, "checkpoint written");
                        slot = (slot + 1) % super::SLOTS;
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
            last_id: restored.map_or(0, |(_, id)| id),
            tx: writer.is_some().then_some(tx),
            busy,
            metrics,
            writer,
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

    /// A checkpoint is due and the writer is free for it.
    pub fn due(&self) -> bool {
        self.tx.is_some()
            && !self.busy.load(Ordering::Acquire)
            && self.last.elapsed() >= self.interval
    }

    /// The writer has finished the last checkpoint handed to it.
    pub fn idle(&self) -> bool {
        !self.busy.load(Ordering::Acquire)
    }

    /// Takes the engine's state with the offsets it reflects and hands it to the writer.
    /// Call only with nothing in flight (see the module doc).
    pub fn take(&mut self, engine: &Engine, offsets: Vec<SourceOffset>) {
        if self.tx.is_none() {
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
                offsets,
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
    pub fn finish(mut self, engine: &Engine, offsets: Vec<SourceOffset>) {
        if self.tx.is_some() {
            // Wait for a write still under way: the last state is the one that matters.
            while self.busy.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(10));
            }
            self.last = Instant::now() - self.interval;
            self.take(engine, offsets);
        }
        self.tx = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}
