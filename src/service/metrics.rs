//! Every metric of the service, defined in this one module.
//!
//! Label sets are fixed and bounded: result and reason codes come from small enums, detector
//! and state component names from the engine, topic names from the configuration and
//! partition numbers from the broker. No subscriber identity ever becomes a label. All label
//! values that can be known up front are registered at start so dashboards see zeros rather
//! than missing series.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::detect::DETECTORS;
use crate::engine::Verdict;
use crate::event::{Millis, Reason};

/// Outcome labels of `linewatch_records_total`.
pub const RECORD_RESULTS: [&str; 4] = ["valid", "malformed", "late", "duplicate"];
/// Outcome labels of `linewatch_config_reloads_total`.
pub const RELOAD_RESULTS: [&str; 3] = ["applied", "unchanged", "invalid"];
/// Producer error kinds (from [`crate::kafka::error_kind`]).
pub const PRODUCER_ERROR_KINDS: [&str; 10] = [
    "queue_full",
    "timed_out",
    "broker_unreachable",
    "leader_unavailable",
    "authentication",
    "authorization",
    "unknown_topic",
    "too_large",
    "fatal",
    "other",
];
/// Rebalance event labels.
pub const REBALANCE_KINDS: [&str; 3] = ["assign", "revoke", "error"];

/// Verdicts counted in a batch, in [`RECORD_RESULTS`] order.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally(pub [u64; 4]);

impl Tally {
    pub fn add(&mut self, v: &Verdict) {
        let i = match v {
            Verdict::Valid => 0,
            Verdict::Duplicate => 3,
            Verdict::Rejected(m) if m.reason == Reason::Late => 2,
            Verdict::Rejected(_) => 1,
        };
        self.0[i] += 1;
    }
}

/// The service's metrics and the registry they live in.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    records: IntCounterVec,
    rebuilt: IntCounter,
    dead_letters: IntCounterVec,
    dead_letters_dropped: IntCounterVec,
    alerts: IntCounterVec,
    latency: HistogramVec,
    record_latency: HistogramVec,
    consumer_lag: IntGaugeVec,
    watermark_lag: IntGaugeVec,
    state_keys: IntGaugeVec,
    state_bytes: IntGaugeVec,
    cells_skipped: IntGaugeVec,
    exchange: IntGaugeVec,
    rebalances: IntCounterVec,
    producer_errors: IntCounterVec,
    reloads: IntCounterVec,
    commits_failed: IntCounter,
    out_of_order: IntCounter,
    align_pauses: IntCounter,
    batch_seconds: Histogram,
    ready: IntGauge,
    assigned: IntGauge,
    dead_letter_cap: IntGauge,
    /// Checkpoint age, size, timings and fallbacks (defined with the checkpoints).
    pub checkpoint: crate::checkpoint::metrics::CheckpointMetrics,
    /// Transactions and pipeline restarts (exactly_once; defined with the transactions).
    pub txn: super::txn::TxnMetrics,
    /// The internal topics' traffic (`[streams]`; defined with the stage task).
    pub streams: super::streams::StreamsMetrics,
}

// Registering a freshly built metric in a new registry fails only on a duplicate name or a
// malformed name/label, which are constants here; a test builds `Metrics` to prove it.
const STATIC_OK: &str = "static metric definitions are valid";

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let m = IntCounterVec::new(Opts::new(name, help), labels).expect(STATIC_OK);
    r.register(Box::new(m.clone())).expect(STATIC_OK);
    m
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let m = IntGaugeVec::new(Opts::new(name, help), labels).expect(STATIC_OK);
    r.register(Box::new(m.clone())).expect(STATIC_OK);
    m
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// All metrics, registered, with every known label value at zero.
    pub fn new() -> Self {
        let r = Registry::new();
        let records = counter_vec(
            &r,
            "linewatch_records_total",
            "Input records by result (malformed and late ones go to the dead-letter topic).",
            &["result"],
        );
        let rebuilt = IntCounter::new(
            "linewatch_records_rebuilt_total",
            "Records re-read after an assignment to rebuild window state; their outputs were published before.",
        )
        .expect(STATIC_OK);
        r.register(Box::new(rebuilt.clone())).expect(STATIC_OK);
        let dead_letters = counter_vec(
            &r,
            "linewatch_dead_letters_total",
            "Records published to the dead-letter topic, by reason code.",
            &["reason"],
        );
        let dead_letters_dropped = counter_vec(
            &r,
            "linewatch_dead_letters_dropped_total",
            "Dead letters the broker refused for good (e.g. too large even truncated), skipped so the records behind them are processed; by producer error kind.",
            &["reason"],
        );
        let alerts = counter_vec(
            &r,
            "linewatch_alerts_total",
            "Alerts published, by detector.",
            &["detector"],
        );
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "linewatch_event_to_alert_seconds",
                "Wall time an alert was made minus the event time of the record that completed it.",
            )
            // Records are minutes late by design; the tail shows a backlog being worked off.
            .buckets(vec![
                0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 21_600.0, 86_400.0,
            ]),
            &["detector"],
        )
        .expect(STATIC_OK);
        r.register(Box::new(latency.clone())).expect(STATIC_OK);
        let record_latency = HistogramVec::new(
            HistogramOpts::new(
                "linewatch_record_to_alert_seconds",
                "Wall time an alert was acknowledged by the broker minus the Kafka timestamp of the record that completed it (its append time on LogAppendTime topics, else its producer's create time).",
            )
            // The service's own delay: batching, detection, publishing. Sub-second when
            // it keeps up; the tail shows queueing behind a backlog.
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
            ]),
            &["detector"],
        )
        .expect(STATIC_OK);
        r.register(Box::new(record_latency.clone()))
            .expect(STATIC_OK);
        let consumer_lag = gauge_vec(
            &r,
            "linewatch_consumer_lag_records",
            "Records in an assigned partition after the committed offset (from librdkafka statistics).",
            &["topic", "partition"],
        );
        let watermark_lag = gauge_vec(
            &r,
            "linewatch_watermark_lag_seconds",
            "Wall time minus the event-time watermark of an assigned partition.",
            &["topic", "partition"],
        );
        let state_keys = gauge_vec(
            &r,
            "linewatch_state_keys",
            "Keys held per state component (contact store, each detector, dedup, cooldown).",
            &["component"],
        );
        let exchange = gauge_vec(
            &r,
            "linewatch_engine_exchange",
            "What crossed keys between the engine's shards since it started: barriers run, evidence applied, barriers cut short (docs/sharding.md); and the shard count.",
            &["kind"],
        );
        let cells_skipped = gauge_vec(
            &r,
            "linewatch_cells_skipped_records",
            "With a cell map (--cells): valid records runner_movement could not place, by reason (no_cell: the record has none; unknown_cell: the map lacks it), since the state began.",
            &["reason"],
        );
        let state_bytes = gauge_vec(
            &r,
            "linewatch_state_bytes",
            "Estimated bytes held per state component.",
            &["component"],
        );
        let rebalances = counter_vec(
            &r,
            "linewatch_rebalances_total",
            "Consumer group rebalance events.",
            &["kind"],
        );
        let producer_errors = counter_vec(
            &r,
            "linewatch_producer_errors_total",
            "Failed deliveries to the alert or dead-letter topic, by kind (retriable ones are retried).",
            &["kind"],
        );
        let reloads = counter_vec(
            &r,
            "linewatch_config_reloads_total",
            "Configuration reload attempts, by result.",
            &["result"],
        );
        let commits_failed = IntCounter::new(
            "linewatch_commit_failures_total",
            "Offset commits the broker refused (the records are re-read and deduplicated).",
        )
        .expect(STATIC_OK);
        r.register(Box::new(commits_failed.clone()))
            .expect(STATIC_OK);
        let out_of_order = IntCounter::new(
            "linewatch_align_out_of_order_total",
            "Records of several partitions handed to the engine after a newer record of another partition (a partition idle past partition_idle_timeout_s, or newly assigned behind the others); 0 when alignment held.",
        )
        .expect(STATIC_OK);
        r.register(Box::new(out_of_order.clone())).expect(STATIC_OK);
        let align_pauses = IntCounter::new(
            "linewatch_align_pauses_total",
            "Input partitions paused because align_max_records were held waiting for a partition behind them.",
        )
        .expect(STATIC_OK);
        r.register(Box::new(align_pauses.clone())).expect(STATIC_OK);
        let batch_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "linewatch_batch_seconds",
                "Time from the first record of a batch to its offsets being committed.",
            )
            .buckets(vec![0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0]),
        )
        .expect(STATIC_OK);
        r.register(Box::new(batch_seconds.clone()))
            .expect(STATIC_OK);
        let dead_letter_cap = IntGauge::new(
            "linewatch_dead_letter_max_bytes",
            "The most payload bytes a dead letter is published with: 65536 until the dead-letter topic refuses one for its size, then lower (0: headers only).",
        )
        .expect(STATIC_OK);
        dead_letter_cap.set(crate::service::sink::DEAD_LETTER_MAX_BYTES as i64);
        r.register(Box::new(dead_letter_cap.clone()))
            .expect(STATIC_OK);
        let ready = IntGauge::new(
            "linewatch_ready",
            "1 once the consumer group has assigned partitions to this instance, or assigned it none while it stands by.",
        )
        .expect(STATIC_OK);
        r.register(Box::new(ready.clone())).expect(STATIC_OK);
        let assigned = IntGauge::new(
            "linewatch_assigned_partitions",
            "Input partitions assigned to this instance.",
        )
        .expect(STATIC_OK);
        r.register(Box::new(assigned.clone())).expect(STATIC_OK);

        for l in RECORD_RESULTS {
            records.with_label_values(&[l]);
        }
        for reason in Reason::ALL {
            dead_letters.with_label_values(&[reason.as_str()]);
        }
        for d in DETECTORS {
            alerts.with_label_values(&[d]);
            latency.with_label_values(&[d]);
            record_latency.with_label_values(&[d]);
        }
        for k in REBALANCE_KINDS {
            rebalances.with_label_values(&[k]);
        }
        for k in PRODUCER_ERROR_KINDS {
            producer_errors.with_label_values(&[k]);
            dead_letters_dropped.with_label_values(&[k]);
        }
        for k in RELOAD_RESULTS {
            reloads.with_label_values(&[k]);
        }
        let checkpoint = crate::checkpoint::metrics::CheckpointMetrics::register(&r);
        let txn = super::txn::TxnMetrics::register(&r);
        let streams = super::streams::StreamsMetrics::register(&r);
        Metrics {
            checkpoint,
            txn,
            streams,
            registry: r,
            records,
            rebuilt,
            dead_letters,
            dead_letters_dropped,
            dead_letter_cap,
            alerts,
            latency,
            record_latency,
            consumer_lag,
            watermark_lag,
            state_keys,
            cells_skipped,
            exchange,
            state_bytes,
            rebalances,
            producer_errors,
            reloads,
            commits_failed,
            out_of_order,
            align_pauses,
            batch_seconds,
            ready,
            assigned,
        }
    }

    /// Counts a batch's verdicts (tallied with [`Tally::add`]: one counter update per result
    /// and batch, not per record).
    pub fn records(&self, t: &Tally) {
        for (label, n) in RECORD_RESULTS.iter().zip(t.0) {
            if n > 0 {
                self.records.with_label_values(&[label]).inc_by(n);
            }
        }
    }

    /// Counts `n` records re-read to rebuild state.
    pub fn rebuilt(&self, n: u64) {
        self.rebuilt.inc_by(n);
    }

    /// Counts a dead letter acknowledged by the broker.
    pub fn dead_letter(&self, reason: Reason) {
        self.dead_letters
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// The dead-letter payload cap, lowered ([`crate::service::sink::DeadLetterCap`]).
    pub fn dead_letter_cap(&self, bytes: usize) {
        self.dead_letter_cap
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Counts a dead letter given up after a final delivery failure of `kind` (a
    /// [`PRODUCER_ERROR_KINDS`] value).
    pub fn dead_letter_dropped(&self, kind: &'static str) {
        self.dead_letters_dropped.with_label_values(&[kind]).inc();
    }

    /// Counts an alert acknowledged by the broker; `latency_ms` is made-at minus event time.
    pub fn alert(&self, detector: &str, latency_ms: Millis) {
        // The detector name comes from the engine's fixed list; anything else is a bug that
        // should show, not a new label value.
        let d = DETECTORS
            .iter()
            .find(|n| **n == detector)
            .unwrap_or(&"other");
        self.alerts.with_label_values(&[d]).inc();
        self.latency
            .with_label_values(&[d])
            .observe(latency_ms.max(0) as f64 / 1000.0);
    }

    /// Observes record-to-alert latency: acknowledged-at minus the completing record's Kafka
    /// timestamp, in ms. `detector` is as for [`Metrics::alert`].
    pub fn record_to_alert(&self, detector: &str, latency_ms: Millis) {
        let d = DETECTORS
            .iter()
            .find(|n| **n == detector)
            .unwrap_or(&"other");
        self.record_latency
            .with_label_values(&[d])
            .observe(latency_ms.max(0) as f64 / 1000.0);
    }

    /// Sets the lag of an assigned partition in records.
    pub fn consumer_lag(&self, topic: &str, partition: i32, lag: i64) {
        self.consumer_lag
            .with_label_values(&[topic, &partition.to_string()])
            .set(lag);
    }

    /// Sets how far a partition's watermark is behind the wall clock.
    pub fn watermark_lag(&self, topic: &str, partition: i32, lag_s: i64) {
        self.watermark_lag
            .with_label_values(&[topic, &partition.to_string()])
            .set(lag_s);
    }

    /// Drops the per-partition series of a partition no longer assigned.
    pub fn forget_partition(&self, topic: &str, partition: i32) {
        let p = partition.to_string();
        // Absent series are fine: the partition may never have had a figure.
        let _ = self.consumer_lag.remove_label_values(&[topic, &p]);
        let _ = self.watermark_lag.remove_label_values(&[topic, &p]);
    }

    /// Sets the state size of one component.
    pub fn state(&self, component: &str, keys: usize, bytes: usize) {
        self.state_keys
            .with_label_values(&[component])
            .set(keys as i64);
        self.state_bytes
            .with_label_values(&[component])
            .set(bytes as i64);
    }

    /// Counts a rebalance event (`assign`, `revoke` or `error`).
    pub fn rebalance(&self, kind: &'static str) {
        self.rebalances.with_label_values(&[kind]).inc();
    }

    /// Counts a failed delivery by kind (a [`PRODUCER_ERROR_KINDS`] value).
    pub fn producer_error(&self, kind: &'static str) {
        self.producer_errors.with_label_values(&[kind]).inc();
    }

    /// Counts a configuration reload by result (a [`RELOAD_RESULTS`] value).
    pub fn reload(&self, result: &'static str) {
        self.reloads.with_label_values(&[result]).inc();
    }

    /// Counts a refused commit.
    /// Records whose cell could not be placed, by reason (totals from the engine).
    pub fn cells_skipped(&self, no_cell: u64, unknown_cell: u64) {
        for (reason, n) in [("no_cell", no_cell), ("unknown_cell", unknown_cell)] {
            self.cells_skipped
                .with_label_values(&[reason])
                .set(n.min(i64::MAX as u64) as i64);
        }
    }

    /// The engine's exchange figures ([`crate::engine::ExchangeStats`]) and shard count.
    pub fn exchange(&self, shards: usize, x: crate::engine::ExchangeStats) {
        let c = |n: u64| n.min(i64::MAX as u64) as i64;
        for (kind, n) in [
            ("shards", shards as u64),
            ("barriers", x.barriers),
            ("evidence_applied", x.applied),
            ("rounds_capped", x.rounds_capped),
        ] {
            self.exchange.with_label_values(&[kind]).set(c(n));
        }
    }

    pub fn commit_failed(&self) {
        self.commits_failed.inc();
    }

    /// Counts records released out of event-time order across partitions.
    pub fn out_of_order(&self, n: u64) {
        self.out_of_order.inc_by(n);
    }

    /// Counts partitions paused at the alignment bound.
    pub fn align_paused(&self, partitions: usize) {
        self.align_pauses.inc_by(partitions as u64);
    }

    /// Times one batch.
    pub fn batch_done(&self, seconds: f64) {
        self.batch_seconds.observe(seconds);
    }

    /// Sets readiness and the number of assigned partitions.
    pub fn assignment(&self, partitions: usize) {
        self.assigned.set(partitions as i64);
        self.ready.set(i64::from(partitions > 0));
    }

    /// In the group with no partitions (more members than input partitions): a standby,
    /// healthy and ready to take over, so ready (a rolling update must not wait for it).
    pub fn standing_by(&self) {
        self.assigned.set(0);
        self.ready.set(1);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail on I/O; a failure would be a malformed family,
        // which the fixed definitions above rule out. Serve what was written either way.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Malformed;

    #[test]
    fn every_known_series_is_exposed_at_zero() {
        let m = Metrics::new();
        let mut t = Tally::default();
        for v in [
            Verdict::Rejected(Malformed {
                reason: Reason::Late,
                field: Some("ts"),
            }),
            Verdict::Duplicate,
            Verdict::Duplicate,
            Verdict::Rejected(Malformed {
                reason: Reason::InvalidJson,
                field: None,
            }),
        ] {
            t.add(&v);
        }
        m.records(&t);
        let text = m.render();
        assert!(text.contains("linewatch_records_total{result=\"late\"} 1"));
        assert!(text.contains("linewatch_records_total{result=\"duplicate\"} 2"));
        assert!(text.contains("linewatch_records_total{result=\"malformed\"} 1"));
        assert!(text.contains("linewatch_records_total{result=\"valid\"} 0"));
        assert!(text.contains("linewatch_dead_letters_total{reason=\"too_large\"} 0"));
        assert!(text.contains("linewatch_alerts_total{detector=\"deal_line\"} 0"));
        assert!(text.contains("linewatch_config_reloads_total{result=\"invalid\"} 0"));
    }

    #[test]
    fn records_runner_movement_could_not_place_are_shown_by_reason() {
        let m = Metrics::new();
        m.cells_skipped(3, 1);
        m.exchange(
            3,
            crate::engine::ExchangeStats {
                barriers: 7,
                applied: 2,
                rounds_capped: 0,
            },
        );
        assert!(m
            .render()
            .contains("linewatch_engine_exchange{kind=\"shards\"} 3"));
        assert!(m
            .render()
            .contains("linewatch_engine_exchange{kind=\"barriers\"} 7"));
        let text = m.render();
        assert!(text.contains("linewatch_cells_skipped_records{reason=\"no_cell\"} 3"));
        assert!(text.contains("linewatch_cells_skipped_records{reason=\"unknown_cell\"} 1"));
    }

    #[test]
    fn record_to_alert_is_observed_per_detector_in_seconds() {
        let m = Metrics::new();
        m.record_to_alert("bulk_sms", 40);
        let text = m.render();
        assert!(text.contains(
            "linewatch_record_to_alert_seconds_bucket{detector=\"bulk_sms\",le=\"0.05\"} 1"
        ));
        assert!(text.contains(
            "linewatch_record_to_alert_seconds_bucket{detector=\"bulk_sms\",le=\"0.025\"} 0"
        ));
    }

    #[test]
    fn producer_error_kinds_cover_the_classifier() {
        use rdkafka::error::{KafkaError, RDKafkaErrorCode as C};
        for c in [C::QueueFull, C::MessageTimedOut, C::SSL, C::Fatal, C::Fail] {
            let k = crate::kafka::error_kind(&KafkaError::MessageProduction(c));
            assert!(PRODUCER_ERROR_KINDS.contains(&k), "{k}");
        }
    }
}
