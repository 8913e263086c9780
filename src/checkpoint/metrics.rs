//! The checkpoint metrics, registered on the service's registry by
//! [`crate::service::metrics::Metrics::new`]. Names are fixed: Prometheus rules use
//! `linewatch_checkpoint_age_seconds`.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use prometheus::{Gauge, Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};

use super::snapshot::Failure;
use super::Fallback;
use crate::event::Millis;

const STATIC_OK: &str = "static metric definitions are valid";

/// Store kinds, for the write failure label.
pub const STORE_KINDS: [&str; 2] = ["dir", "kafka"];

#[derive(Clone)]
pub struct CheckpointMetrics {
    age: Gauge,
    bytes: IntGauge,
    pause_seconds: Histogram,
    write_seconds: Histogram,
    load_seconds: Histogram,
    fallbacks: IntCounterVec,
    write_failures: IntCounterVec,
    snapshot_failures: IntCounterVec,
    sets_removed: IntCounterVec,
    /// Wall ms of the newest complete checkpoint (written or restored); 0: none yet.
    newest_ms: Arc<AtomicI64>,
    started_ms: Millis,
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect(STATIC_OK);
    r.register(Box::new(h.clone())).expect(STATIC_OK);
    h
}

impl CheckpointMetrics {
    pub fn register(r: &Registry) -> Self {
        let age = Gauge::new(
            "linewatch_checkpoint_age_seconds",
            "Seconds since the newest complete checkpoint was made (since start when there is none).",
        )
        .expect(STATIC_OK);
        r.register(Box::new(age.clone())).expect(STATIC_OK);
        let bytes = IntGauge::new(
            "linewatch_checkpoint_bytes",
            "Encoded state bytes of the last checkpoint written.",
        )
        .expect(STATIC_OK);
        r.register(Box::new(bytes.clone())).expect(STATIC_OK);
        let secs = vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        ];
        let pause_seconds = histogram(
            r,
            "linewatch_checkpoint_pause_seconds",
            "Time the run loop paused to take the state for a checkpoint (fork, or a copy where fork is unavailable): detection waits for it.",
            secs.clone(),
        );
        let write_seconds = histogram(
            r,
            "linewatch_checkpoint_write_seconds",
            "Time to encode a checkpoint and write it to its stores, in the background.",
            secs.clone(),
        );
        let load_seconds = histogram(
            r,
            "linewatch_checkpoint_load_seconds",
            "Time to read, verify and load a checkpoint at start.",
            secs,
        );
        let fallbacks = IntCounterVec::new(
            Opts::new(
                "linewatch_checkpoint_fallbacks_total",
                "Checkpoints passed over at restore, by reason (then the previous one, then re-reading input).",
            ),
            &["reason"],
        )
        .expect(STATIC_OK);
        r.register(Box::new(fallbacks.clone())).expect(STATIC_OK);
        let write_failures = IntCounterVec::new(
            Opts::new(
                "linewatch_checkpoint_write_failures_total",
                "Checkpoint writes that failed, by store (the previous checkpoint stands).",
            ),
            &["store"],
        )
        .expect(STATIC_OK);
        r.register(Box::new(write_failures.clone()))
            .expect(STATIC_OK);
        let snapshot_failures = IntCounterVec::new(
            Opts::new(
                "linewatch_checkpoint_snapshot_failures_total",
                "Snapshots of the state that failed, by reason (fork: a copy was taken instead; otherwise that checkpoint was skipped and the previous one stands).",
            ),
            &["reason"],
        )
        .expect(STATIC_OK);
        r.register(Box::new(snapshot_failures.clone()))
            .expect(STATIC_OK);
        let sets_removed = IntCounterVec::new(
            Opts::new(
                "linewatch_checkpoint_sets_removed_total",
                "Partition sets of the group whose checkpoints were removed, by store: no member had written them for service.rebuild_state_s (at least a day).",
            ),
            &["store"],
        )
        .expect(STATIC_OK);
        r.register(Box::new(sets_removed.clone())).expect(STATIC_OK);
        for f in Failure::ALL {
            snapshot_failures.with_label_values(&[f.code()]);
        }
        for f in Fallback::ALL {
            fallbacks.with_label_values(&[f.code()]);
        }
        for s in STORE_KINDS {
            write_failures.with_label_values(&[s]);
            sets_removed.with_label_values(&[s]);
        }
        CheckpointMetrics {
            age,
            bytes,
            pause_seconds,
            write_seconds,
            load_seconds,
            fallbacks,
            write_failures,
            snapshot_failures,
            sets_removed,
            newest_ms: Arc::new(AtomicI64::new(0)),
            started_ms: crate::replay::wall_ms(),
        }
    }

    pub fn fallback(&self, f: Fallback) {
        self.fallbacks.with_label_values(&[f.code()]).inc();
    }

    /// Checkpoints passed over for `f` so far (tests and the stage restore's report).
    pub fn fallback_count(&self, f: Fallback) -> u64 {
        self.fallbacks.with_label_values(&[f.code()]).get()
    }

    pub fn write_failed(&self, store: &'static str) {
        self.write_failures.with_label_values(&[store]).inc();
    }

    /// `n` abandoned partition sets removed from `store` ([`super::service::sweep_stale`]).
    pub fn sets_removed(&self, store: &'static str, n: usize) {
        self.sets_removed
            .with_label_values(&[store])
            .inc_by(n as u64);
    }

    /// Sets removed from `store` so far (tests).
    pub fn sets_removed_count(&self, store: &'static str) -> u64 {
        self.sets_removed.with_label_values(&[store]).get()
    }

    pub fn snapshot_failed(&self, f: Failure) {
        self.snapshot_failures.with_label_values(&[f.code()]).inc();
    }

    pub fn paused(&self, seconds: f64) {
        self.pause_seconds.observe(seconds);
    }

    /// A checkpoint made at `created_ms` is complete in every store.
    pub fn written(&self, created_ms: Millis, bytes: u64, seconds: f64) {
        self.write_seconds.observe(seconds);
        self.bytes.set(bytes as i64);
        self.newest_ms.fetch_max(created_ms, Ordering::Relaxed);
    }

    pub fn loaded(&self, created_ms: Millis, seconds: f64) {
        self.load_seconds.observe(seconds);
        self.newest_ms.fetch_max(created_ms, Ordering::Relaxed);
    }

    /// Refreshes the age gauge at wall time `now`.
    pub fn refresh(&self, now: Millis) {
        let newest = self.newest_ms.load(Ordering::Relaxed);
        let since = if newest > 0 { newest } else { self.started_ms };
        self.age.set((now - since).max(0) as f64 / 1000.0);
    }
}
