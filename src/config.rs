//! Typed configuration: compiled-in defaults, then the user's TOML file.
//!
//! Every section is a serde type with `deny_unknown_fields` so a typo is an error, not a
//! silently ignored key. The `///` comments on fields are the user documentation, and
//! `config/linewatch.toml` is the same defaults written out with the reasons for them (a test
//! checks the two are equal). [`Config::validate`] reports every problem at once.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub engine: EngineConfig,
    pub alerts: AlertConfig,
    pub bulk_sms: BulkSmsConfig,
    pub customer_fan_in: FanInConfig,
    pub handset_churn: ChurnConfig,
    pub line_handover: HandoverConfig,
    pub deal_line: DealLineConfig,
    pub service: ServiceConfig,
    /// librdkafka properties passed through unchanged (e.g. `"security.protocol" = "SASL_SSL"`).
    /// Values are never printed: they may hold passwords.
    pub kafka: std::collections::BTreeMap<String, String>,
}

/// Event time, lateness, duplicates and state bounds: shared by every detector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// How far behind the highest event time seen a record may be and still be used.
    pub allowed_lateness_s: u64,
    /// How long an `event_id` is remembered to recognise a re-delivered record.
    pub dedup_retention_s: u64,
    /// Reject pseudonyms shaped like raw MSISDN/IMSI/IMEI values (10-15 digits).
    pub raw_identifier_guard: bool,
    /// Records larger than this are dead-lettered as `too_large` without being parsed.
    pub max_record_bytes: usize,
    /// Hard cap on keys (lines or handsets) each detector tracks; new keys are refused past it.
    pub max_keys_per_detector: usize,
    /// Event-time interval between sweeps that expire old state.
    pub expire_every_s: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            allowed_lateness_s: 900,
            dedup_retention_s: 7200,
            raw_identifier_guard: true,
            max_record_bytes: 65_536,
            max_keys_per_detector: 5_000_000,
            expire_every_s: 600,
        }
    }
}

/// Alert output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertConfig {
    /// An alert is not repeated for the same subject and detector within this time.
    pub cooldown_s: u64,
}

impl Default for AlertConfig {
    fn default() -> Self {
        AlertConfig { cooldown_s: 21_600 }
    }
}

/// `bulk_sms`: a line texting many distinct recipients within a sliding window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BulkSmsConfig {
    pub enabled: bool,
    /// Length of the sliding window.
    pub window_s: u64,
    /// Distinct recipients within the window that make a bulk send.
    pub min_recipients: u32,
    /// Per-line cap on recipients remembered within the window.
    pub max_recipients_per_line: u32,
}

impl Default for BulkSmsConfig {
    fn default() -> Self {
        BulkSmsConfig {
            enabled: true,
            window_s: 3_600,
            min_recipients: 30,
            max_recipients_per_line: 4_096,
        }
    }
}

/// `customer_fan_in`: many of a line's customers contacting it within a sliding window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FanInConfig {
    pub enabled: bool,
    /// Length of the sliding window in which inbound contacts are counted.
    pub window_s: u64,
    /// Distinct customers contacting the line within the window that fire the detector.
    pub min_customers: u32,
    /// A number is a customer of a line if the line texted it within this lookback.
    pub lookback_s: u64,
    /// Calls shorter than this do not count (missed, or dropped at once).
    pub min_call_duration_s: u32,
    /// Calls longer than this are conversations, not a deal contact.
    pub max_call_duration_s: u32,
    /// Per-line cap on remembered customers.
    pub max_customers_per_line: u32,
}

impl Default for FanInConfig {
    fn default() -> Self {
        FanInConfig {
            enabled: true,
            window_s: 21_600,
            min_customers: 12,
            lookback_s: 604_800,
            min_call_duration_s: 5,
            max_call_duration_s: 120,
            max_customers_per_line: 4_096,
        }
    }
}

/// `handset_churn`: one handset used with many distinct SIMs within a sliding window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChurnConfig {
    pub enabled: bool,
    /// Length of the sliding window.
    pub window_s: u64,
    /// Distinct SIMs in one handset within the window that fire the detector.
    pub min_sims: u32,
    /// Per-handset cap on remembered SIMs.
    pub max_sims_per_handset: u32,
}

impl Default for ChurnConfig {
    fn default() -> Self {
        ChurnConfig {
            enabled: true,
            window_s: 259_200,
            min_sims: 3,
            max_sims_per_handset: 256,
        }
    }
}

/// `line_handover`: a new line reaching an earlier line's customer base.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HandoverConfig {
    pub enabled: bool,
    /// A line counts as new for this long after it is first seen.
    pub new_line_max_age_s: u64,
    /// Lines seen within this time of the start of observation are not called new.
    pub warmup_s: u64,
    /// Distinct recipients a line must text within `burst_window_s` to get an audience
    /// sketch (the "new number" text and adverts are bursts; everyday texting is not).
    pub min_recipients: u32,
    /// The burst window for `min_recipients`.
    pub burst_window_s: u64,
    /// Fraction of the new line's recipients that must be the earlier line's.
    pub min_overlap: f64,
    /// Earlier lines are remembered this long after their last text.
    pub retention_s: u64,
    /// MinHash sketch size (slots of 4 bytes) per sketched line.
    pub sketch_size: u32,
    /// Cap on lines with a sketch (only lines that text many recipients get one).
    pub max_sketched_lines: usize,
}

impl Default for HandoverConfig {
    fn default() -> Self {
        HandoverConfig {
            enabled: true,
            new_line_max_age_s: 172_800,
            warmup_s: 21_600,
            min_recipients: 15,
            burst_window_s: 3_600,
            min_overlap: 0.5,
            retention_s: 604_800,
            sketch_size: 64,
            max_sketched_lines: 200_000,
        }
    }
}

/// `deal_line`: the combined verdict from the other detectors' evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DealLineConfig {
    pub enabled: bool,
    /// Score at or above which a line is called a deal line.
    pub threshold: f64,
    /// Evidence older than this no longer counts.
    pub lookback_s: u64,
    /// Weight of a bulk send.
    pub weight_bulk_sms: f64,
    /// Extra weight of a bulk send on a later day to largely the same audience.
    pub weight_repeat_bulk: f64,
    /// Fraction of a bulk audience seen in an earlier bulk that makes it a repeat.
    pub repeat_audience_min: f64,
    /// Weight of customer fan-in.
    pub weight_fan_in: f64,
    /// Extra weight of customer fan-in on a later day.
    pub weight_repeat_fan_in: f64,
    /// Weight of a handover (as the new line or as the line handed over from).
    pub weight_handover: f64,
    /// Weight of churn on a handset the line used.
    pub weight_handset_churn: f64,
    /// Weight carried over to a new line from the deal line it took over.
    pub weight_predecessor: f64,
    /// Two findings of one kind this far apart are a repeat (a later day), not one episode.
    pub repeat_gap_s: u64,
    /// A handset seen with more SIMs than this is a test or repair handset, not a burner:
    /// its churn is not counted towards a line's verdict.
    pub churn_max_sims: u32,
}

impl Default for DealLineConfig {
    fn default() -> Self {
        DealLineConfig {
            enabled: true,
            threshold: 0.7,
            lookback_s: 345_600,
            weight_bulk_sms: 0.25,
            weight_repeat_bulk: 0.25,
            repeat_audience_min: 0.5,
            weight_fan_in: 0.25,
            weight_repeat_fan_in: 0.1,
            weight_handover: 0.35,
            weight_handset_churn: 0.2,
            weight_predecessor: 0.25,
            repeat_gap_s: 43_200,
            churn_max_sims: 12,
        }
    }
}

/// `linewatch run`: where the service reads and writes. Not used by `replay`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// Kafka bootstrap servers, comma separated.
    pub brokers: String,
    /// Consumer group id.
    pub group_id: String,
    /// Topics of CDR events.
    pub input_topics: Vec<String>,
    /// Topic alerts are published to (key = subject).
    pub alert_topic: String,
    /// Topic malformed and late records are published to, with their reason.
    pub dead_letter_topic: String,
    /// Address of the HTTP admin server (`/metrics`, `/healthz`, `/readyz`).
    pub http_addr: String,
    /// Time allowed to finish in-flight work, flush and commit on shutdown.
    pub drain_timeout_s: u64,
    /// A partition with no records for this long does not hold the watermark back.
    pub partition_idle_timeout_s: u64,
    /// Most records processed as one batch: the batch's offsets are committed once all its
    /// alerts and dead letters (and every older batch's) are acknowledged.
    pub batch_max_records: usize,
    /// Batches whose alerts and dead letters may be awaiting the broker's acknowledgement
    /// while the next one is processed; at this many, consumption waits for the oldest.
    pub max_in_flight_batches: usize,
    /// With several input partitions assigned, records held back at most to hand them to the
    /// engine in event-time order across partitions (see `src/service/align.rs`).
    pub align_max_records: usize,
    /// Longest wait for a batch to fill once its first record has arrived.
    pub batch_max_wait_ms: u64,
    /// Longest pause between retries (broker unreachable, topic missing, failed delivery);
    /// waits start at 1 s and double up to this.
    pub retry_backoff_max_s: u64,
    /// How often the configuration file is checked for changes (SIGHUP reloads at once).
    pub config_poll_interval_s: u64,
    /// On assignment, records up to this far back (by Kafka timestamp) before the committed
    /// offset are re-read to rebuild window state without publishing again; 0 turns it off.
    pub rebuild_state_s: u64,
    /// Window state is checkpointed with the input offsets it reflects this often, so a
    /// restart loads it and re-reads only what came after instead of `rebuild_state_s`;
    /// 0 turns checkpoints off.
    pub checkpoint_interval_s: u64,
    /// Compacted topic that holds the checkpoints (created when missing), so any member of
    /// the group on any host can restore them without shared disk.
    pub state_topic: String,
    /// A local directory for checkpoints as well, read first on restore (faster than the
    /// topic when a pod keeps its volume); empty: the topic only.
    pub state_dir: String,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            brokers: "127.0.0.1:9092".into(),
            group_id: "linewatch".into(),
            input_topics: vec!["cdr-events".into()],
            alert_topic: "linewatch-alerts".into(),
            dead_letter_topic: "linewatch-dead-letters".into(),
            http_addr: "127.0.0.1:9464".into(),
            drain_timeout_s: 30,
            partition_idle_timeout_s: 60,
            batch_max_records: 2_000,
            max_in_flight_batches: 4,
            align_max_records: 50_000,
            batch_max_wait_ms: 50,
            retry_backoff_max_s: 30,
            config_poll_interval_s: 2,
            rebuild_state_s: 604_800,
            checkpoint_interval_s: 60,
            state_topic: "linewatch-state".into(),
            state_dir: String::new(),
        }
    }
}

/// A configuration that could not be used: every problem found, one per line.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.problems.join("; "))
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    fn one(p: impl Into<String>) -> Self {
        ConfigError {
            problems: vec![p.into()],
        }
    }
}

impl Config {
    /// Parses TOML text over the built-in defaults and validates it.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            // toml's message spans several lines with a caret; keep it to one.
            ConfigError::one(e.message().replace('\n', " "))
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::one(format!("cannot read {}: {e}", path.display())))?;
        Config::from_toml(&text).map_err(|mut e| {
            for p in &mut e.problems {
                *p = format!("{}: {p}", path.display());
            }
            e
        })
    }

    /// Loads `path` if given, else the built-in defaults.
    pub fn load_or_default(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            Some(p) => Config::load(p),
            None => Ok(Config::default()),
        }
    }

    /// Checks every rule and reports all the problems found, not just the first.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut p = Vec::new();
        let mut positive = |name: &str, v: u64| {
            if v == 0 {
                p.push(format!("{name} must be greater than 0"));
            }
        };
        positive("engine.dedup_retention_s", self.engine.dedup_retention_s);
        positive("engine.expire_every_s", self.engine.expire_every_s);
        positive(
            "engine.max_record_bytes",
            self.engine.max_record_bytes as u64,
        );
        positive(
            "engine.max_keys_per_detector",
            self.engine.max_keys_per_detector as u64,
        );
        positive("bulk_sms.window_s", self.bulk_sms.window_s);
        positive(
            "bulk_sms.min_recipients",
            self.bulk_sms.min_recipients.into(),
        );
        positive("customer_fan_in.window_s", self.customer_fan_in.window_s);
        positive(
            "customer_fan_in.min_customers",
            self.customer_fan_in.min_customers.into(),
        );
        positive(
            "customer_fan_in.lookback_s",
            self.customer_fan_in.lookback_s,
        );
        positive("handset_churn.window_s", self.handset_churn.window_s);
        positive(
            "line_handover.min_recipients",
            self.line_handover.min_recipients.into(),
        );
        positive(
            "line_handover.new_line_max_age_s",
            self.line_handover.new_line_max_age_s,
        );
        positive("line_handover.retention_s", self.line_handover.retention_s);
        positive(
            "line_handover.max_sketched_lines",
            self.line_handover.max_sketched_lines as u64,
        );
        positive("deal_line.lookback_s", self.deal_line.lookback_s);
        positive("deal_line.repeat_gap_s", self.deal_line.repeat_gap_s);
        positive("service.drain_timeout_s", self.service.drain_timeout_s);
        positive(
            "service.partition_idle_timeout_s",
            self.service.partition_idle_timeout_s,
        );
        positive(
            "service.batch_max_records",
            self.service.batch_max_records as u64,
        );
        positive(
            "service.max_in_flight_batches",
            self.service.max_in_flight_batches as u64,
        );
        positive(
            "service.align_max_records",
            self.service.align_max_records as u64,
        );
        positive(
            "service.retry_backoff_max_s",
            self.service.retry_backoff_max_s,
        );
        positive(
            "service.config_poll_interval_s",
            self.service.config_poll_interval_s,
        );

        if self.bulk_sms.max_recipients_per_line < self.bulk_sms.min_recipients {
            p.push(
                "bulk_sms.max_recipients_per_line must be at least bulk_sms.min_recipients".into(),
            );
        }
        if self.customer_fan_in.max_customers_per_line < self.customer_fan_in.min_customers {
            p.push("customer_fan_in.max_customers_per_line must be at least customer_fan_in.min_customers".into());
        }
        if self.customer_fan_in.min_call_duration_s > self.customer_fan_in.max_call_duration_s {
            p.push(
                "customer_fan_in.min_call_duration_s must not exceed max_call_duration_s".into(),
            );
        }
        if self.customer_fan_in.lookback_s < self.customer_fan_in.window_s {
            p.push("customer_fan_in.lookback_s must be at least customer_fan_in.window_s".into());
        }
        if self.handset_churn.min_sims < 2 {
            p.push(
                "handset_churn.min_sims must be at least 2 (one SIM per handset is normal)".into(),
            );
        }
        if self.handset_churn.max_sims_per_handset < self.handset_churn.min_sims {
            p.push(
                "handset_churn.max_sims_per_handset must be at least handset_churn.min_sims".into(),
            );
        }
        if !(0.0..=1.0).contains(&self.line_handover.min_overlap)
            || self.line_handover.min_overlap == 0.0
        {
            p.push("line_handover.min_overlap must be in (0, 1]".into());
        }
        if !(16..=1024).contains(&self.line_handover.sketch_size) {
            p.push("line_handover.sketch_size must be between 16 and 1024".into());
        }
        let d = &self.deal_line;
        if !(d.threshold > 0.0 && d.threshold <= 1.0) {
            p.push("deal_line.threshold must be in (0, 1]".into());
        }
        if !(0.0..=1.0).contains(&d.repeat_audience_min) {
            p.push("deal_line.repeat_audience_min must be in [0, 1]".into());
        }
        for (name, w) in [
            ("weight_bulk_sms", d.weight_bulk_sms),
            ("weight_repeat_bulk", d.weight_repeat_bulk),
            ("weight_fan_in", d.weight_fan_in),
            ("weight_repeat_fan_in", d.weight_repeat_fan_in),
            ("weight_handover", d.weight_handover),
            ("weight_handset_churn", d.weight_handset_churn),
            ("weight_predecessor", d.weight_predecessor),
        ] {
            if !(0.0..=1.0).contains(&w) {
                p.push(format!("deal_line.{name} must be in [0, 1]"));
            }
        }
        if self.service.input_topics.is_empty()
            || self.service.input_topics.iter().any(|t| t.is_empty())
        {
            p.push("service.input_topics must name at least one topic, none empty".into());
        }
        for (name, v) in [
            ("service.brokers", &self.service.brokers),
            ("service.group_id", &self.service.group_id),
            ("service.alert_topic", &self.service.alert_topic),
            ("service.dead_letter_topic", &self.service.dead_letter_topic),
            ("service.state_topic", &self.service.state_topic),
        ] {
            if v.trim().is_empty() {
                p.push(format!("{name} must not be empty"));
            }
        }
        if self
            .service
            .http_addr
            .parse::<std::net::SocketAddr>()
            .is_err()
        {
            p.push(format!(
                "service.http_addr must be HOST:PORT with an IP address, got {:?}",
                self.service.http_addr
            ));
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems: p })
        }
    }

    /// A short hash naming this configuration's detection settings, carried by every alert so
    /// analysts know which thresholds made it. Service plumbing and secrets are left out.
    pub fn version(&self) -> String {
        let detection = (
            &self.engine,
            &self.alerts,
            &self.bulk_sms,
            &self.customer_fan_in,
            &self.handset_churn,
            &self.line_handover,
            &self.deal_line,
        );
        // Serialising plain structs of numbers and bools to JSON cannot fail.
        let text = serde_json::to_string(&detection).expect("config serialises");
        format!("{:08x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes()) as u32)
    }

    /// The decoder options this configuration asks for.
    pub fn decode_options(&self) -> crate::event::DecodeOptions {
        crate::event::DecodeOptions {
            raw_identifier_guard: self.engine.raw_identifier_guard,
            max_record_bytes: self.engine.max_record_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_file_equals_built_in_defaults() {
        let text = include_str!("../config/linewatch.toml");
        assert_eq!(Config::from_toml(text).unwrap(), Config::default());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = Config::from_toml(
            "[bulk_sms]\nwindow_s = 0\n[deal_line]\nthreshold = 1.5\n[handset_churn]\nmin_sims = 1\n",
        )
        .unwrap_err();
        assert_eq!(err.problems.len(), 3, "{:?}", err.problems);
        assert!(err.problems.iter().any(|p| p.contains("bulk_sms.window_s")));
        assert!(err
            .problems
            .iter()
            .any(|p| p.contains("deal_line.threshold")));
        assert!(err
            .problems
            .iter()
            .any(|p| p.contains("handset_churn.min_sims")));
    }

    #[test]
    fn unknown_key_is_rejected_with_its_name() {
        let err = Config::from_toml("[bulk_sms]\nmin_recipient = 3\n").unwrap_err();
        assert!(err.problems[0].contains("min_recipient"), "{err}");
        assert!(!err.to_string().contains('\n'));
    }

    #[test]
    fn wrong_type_is_rejected() {
        assert!(Config::from_toml("[bulk_sms]\nwindow_s = \"1h\"\n").is_err());
    }

    #[test]
    fn partial_file_keeps_other_defaults() {
        let c = Config::from_toml("[bulk_sms]\nmin_recipients = 10\n").unwrap();
        assert_eq!(c.bulk_sms.min_recipients, 10);
        assert_eq!(c.bulk_sms.window_s, BulkSmsConfig::default().window_s);
    }

    #[test]
    fn version_changes_with_thresholds_only() {
        let a = Config::default();
        let mut b = a.clone();
        b.service.brokers = "elsewhere:9092".into();
        assert_eq!(a.version(), b.version());
        b.bulk_sms.min_recipients += 1;
        assert_ne!(a.version(), b.version());
        assert_eq!(a.version().len(), 8);
    }

    #[test]
    fn unreadable_file_is_one_line() {
        let e = Config::load(Path::new("/nonexistent/linewatch.toml")).unwrap_err();
        assert_eq!(e.problems.len(), 1);
        assert!(e.problems[0].contains("cannot read"));
    }
}
