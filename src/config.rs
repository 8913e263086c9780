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
    pub runner_movement: RunnerConfig,
    pub deal_line: DealLineConfig,
    pub service: ServiceConfig,
    /// `linewatch run` as one of several instances sharing the work through Kafka internal
    /// topics (issue 11, `docs/sharding.md`).
    pub streams: StreamsConfig,
    /// `linewatch board`: the operations-room web board.
    pub board: crate::board::config::BoardConfig,
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
    /// Event-time interval between barriers, where evidence one key's detectors learnt
    /// about another key (a handset's churn for the lines it served, a handover's earlier
    /// line, a runner's trade) is applied, in an order that does not depend on the shard
    /// count (`docs/sharding.md`).
    pub exchange_epoch_s: u64,
    /// How far ahead of the reference clock (the wall clock; `replay --now` sets another)
    /// a record's event time may be. Beyond it the record is rejected as `future_timestamp`
    /// rather than moving the watermark into the future and making every later record late.
    pub max_future_skew_s: u64,
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
            exchange_epoch_s: 60,
            max_future_skew_s: 300,
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
    /// A text or call from the line to a customer within this long after the customer's
    /// contact is a callback: the deal confirmed (police practice).
    pub callback_within_s: u64,
    /// Distinct customers called back within the window that, with at least
    /// `min_customers_with_callbacks` customers contacting it, also fire the detector.
    pub min_callbacks: u32,
    /// Customers contacting the line within the window needed with `min_callbacks`.
    pub min_customers_with_callbacks: u32,
    /// A line with at least this many customers that calls a number makes it its crew
    /// (a runner): the crew's callbacks to the line's customers count as the line's.
    pub crew_min_customers: u32,
    /// How long a number stays a line's crew after the line's last call to it.
    pub crew_retention_s: u64,
    /// A line `line_handover` names as a new number (its adverts went to an earlier line's
    /// audience) fires when this many distinct customers contact it within
    /// `follow_within_s` of the handover: the customers followed the number.
    pub follow_min_customers: u32,
    /// How long after the handover the customers following the number are counted.
    pub follow_within_s: u64,
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
            callback_within_s: 600,
            min_callbacks: 4,
            min_customers_with_callbacks: 8,
            crew_min_customers: 30,
            crew_retention_s: 86_400,
            follow_min_customers: 5,
            follow_within_s: 86_400,
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
    /// Lines seen within this time of the start of observation are not called new. A day at
    /// the default: activity follows the clock, and a number first seen after a shorter
    /// warm-up may only have been asleep through it.
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
            warmup_s: 86_400,
            min_recipients: 15,
            burst_window_s: 3_600,
            min_overlap: 0.5,
            retention_s: 604_800,
            sketch_size: 64,
            max_sketched_lines: 200_000,
        }
    }
}

/// `runner_movement`: a handset going back and forth between metro and county cells, unlike
/// a commuter, and tied to the trade. Needs a cell map (`--cells`); without one it is idle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunnerConfig {
    pub enabled: bool,
    /// Length of the sliding window in which the movement, its rhythm and the tie are seen.
    pub window_s: u64,
    /// Changes between metro and county cells within the window (2 = there and back).
    pub min_switches: u32,
    /// A class (metro or county) in which the handset was seen in more than this many
    /// different clock hours of the day within the window is not just a place of work.
    pub max_commute_hours: u32,
    /// First hour (UTC, 0-23) of the night: a record in the away class between this hour and
    /// `night_end_hour` is a night away from home, which commuters do not spend.
    pub night_start_hour: u32,
    /// Hour (UTC, 0-23) the night ends (exclusive).
    pub night_end_hour: u32,
    /// Distinct SIMs in the handset within the window that tie it to the trade (burner churn).
    pub churn_min_sims: u32,
    /// Per-handset cap on remembered stays; past it the oldest goes, counted.
    pub max_stays_per_handset: u32,
    /// For this long after a handset's first record its SIM is remembered, so a handset
    /// that takes the SIM over within hours (a burner that broke, or one whose life the
    /// data's start cut short) takes its records over and names it when it fires. Handsets
    /// seen in both classes are remembered by SIM for the whole window anyway.
    pub young_handset_s: u64,
    /// A handset first seen at most this long after a moving handset went quiet, where that
    /// one was last seen (same area), and calling a trade line it called, continues it: a
    /// runner's whole kit burnt (new handset, SIM and number at once) is replaced within
    /// hours, and the new one rings the same controlling line. 0 turns the link off.
    pub burn_gap_s: u64,
    /// The new handset asks about such a link only at a call to a trade line at least this
    /// long after its own first record: the old handset has had that long to show it is
    /// still in use (a runner asleep is not a burnt one). At most `young_handset_s`.
    pub burn_quiet_s: u64,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            enabled: true,
            window_s: 345_600,
            min_switches: 2,
            max_commute_hours: 12,
            night_start_hour: 22,
            night_end_hour: 6,
            churn_min_sims: 3,
            max_stays_per_handset: 64,
            young_handset_s: 86_400,
            burn_gap_s: 43_200,
            burn_quiet_s: 21_600,
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
    /// Weight of a runner (`runner_movement`) tied to the line by contact.
    pub weight_runner: f64,
    /// A verdict needs one kind of evidence only a line in the trade keeps showing (adverts
    /// again to the same list, a burner handset, a predecessor or successor deal line, a
    /// runner), however the one-off kinds (a bulk send, fan-in, a handover) add up: a person
    /// who once texted every friend and later texts them all "new number" shows all three.
    /// `false` sums every kind alike, as before 2026-12-07.
    pub require_sustained: bool,
    /// Adverts sent again (`weight_repeat_bulk`) count as evidence only a line in the trade
    /// keeps showing once `customer_fan_in` has seen the line call back
    /// `customer_fan_in.min_callbacks` of its customers within the window, each within
    /// `customer_fan_in.callback_within_s` of their contact: deals confirmed, as police
    /// practice counts them. A club organiser texts the same members twice a week and reads
    /// their replies; a deal line serves them. Stands aside while `customer_fan_in` is
    /// disabled. `false` lets adverts sent again count alone, as they did before this setting.
    pub repeat_needs_callbacks: bool,
    /// Weight of confirmed deals (`customer_callbacks`): 0, since they confirm rather than
    /// add (an ordinary person rings friends back too).
    pub weight_callbacks: f64,
    /// Two findings of one kind this far apart are a repeat (a later day), not one episode.
    pub repeat_gap_s: u64,
    /// A handset seen with more SIMs than this is a test or repair handset, not a burner:
    /// its churn is not counted towards a line's verdict.
    pub churn_max_sims: u32,
    /// A handset whose churn finding saw all its SIMs within less than this (from the
    /// oldest SIM's last use to the finding) is being tried with SIMs (a repair shop's test
    /// bench, someone trying SIMs), not carrying a line's numbers one after another: its
    /// churn is not counted towards a line's verdict. 0 counts every spread.
    pub churn_min_spread_s: u64,
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
            weight_runner: 0.2,
            require_sustained: true,
            repeat_needs_callbacks: true,
            weight_callbacks: 0.0,
            repeat_gap_s: 43_200,
            churn_max_sims: 12,
            churn_min_spread_s: 21_600,
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
    /// A partition with no records for this long does not hold the watermark back, nor
    /// (with several partitions) hold back the records of the others waiting for it.
    pub partition_idle_timeout_s: u64,
    /// Most records processed as one batch: the batch's offsets are committed once all its
    /// alerts and dead letters (and every older batch's) are acknowledged.
    pub batch_max_records: usize,
    /// Batches whose alerts and dead letters may be awaiting the broker's acknowledgement
    /// while the next one is processed; at this many, consumption waits for the oldest.
    pub max_in_flight_batches: usize,
    /// With several input partitions assigned, records held back at most to hand them to the
    /// engine in event-time order across partitions (see `src/service/align.rs`); at this
    /// many, the partitions ahead are paused until the ones behind catch up.
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
    /// `"at_least_once"`: outputs are acknowledged before input offsets are committed, so a
    /// crash may repeat alerts (same `alert_id`). `"exactly_once"`: alerts, dead letters and
    /// input offsets are written in one Kafka transaction, so a `read_committed` consumer
    /// sees each exactly once.
    pub processing_guarantee: ProcessingGuarantee,
    /// With `exactly_once`, how often the open transaction is committed: alerts become
    /// visible to `read_committed` readers only then.
    pub transaction_interval_ms: u64,
    /// Shards the detectors' keys are spread over, each on a thread of its own between
    /// barriers (`docs/sharding.md`); the alerts are the same for any count. A checkpoint
    /// restores into the same count only (another re-reads the input).
    pub shards: usize,
}

/// How often an output may be published for one input record (`service.processing_guarantee`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ProcessingGuarantee {
    /// At least once: after a crash, outputs may be repeated (with the same ids).
    #[default]
    AtLeastOnce,
    /// Exactly once for `read_committed` readers: Kafka transactions.
    ExactlyOnce,
}

impl ProcessingGuarantee {
    /// The configuration value (`at_least_once` | `exactly_once`).
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessingGuarantee::AtLeastOnce => "at_least_once",
            ProcessingGuarantee::ExactlyOnce => "exactly_once",
        }
    }
}

impl std::str::FromStr for ProcessingGuarantee {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "at_least_once" => Ok(ProcessingGuarantee::AtLeastOnce),
            "exactly_once" => Ok(ProcessingGuarantee::ExactlyOnce),
            other => Err(format!(
                "{other:?} is not a processing guarantee: \"at_least_once\" or \"exactly_once\""
            )),
        }
    }
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
            processing_guarantee: ProcessingGuarantee::AtLeastOnce,
            transaction_interval_ms: 100,
            shards: 1,
        }
    }
}

/// Several instances of `linewatch run` in one group sharing every stage through Kafka
/// internal topics (`docs/sharding.md`, "Over Kafka"). Not used by `replay`.
///
/// The internal topics are named after `service.group_id`, so they are stable across
/// versions and two groups never share them: `<group>-by-line`, `<group>-by-handset`,
/// `<group>-evidence`; the stages read them as the consumer group `<group>-stages`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamsConfig {
    /// Carry the engine's exchanges between instances through the internal topics. Off: one
    /// instance runs every key in process, as before (the internal topics are not touched).
    pub enabled: bool,
    /// Partitions of each internal topic (the same for all three: they are co-partitioned).
    /// A partition is a fixed range of the engine's 256 key groups, so this is the most
    /// instances that can share the work and the unit of state that moves between them.
    /// From 1 to 256; a divisor of 256 gives every partition the same number of key groups.
    pub internal_partitions: u32,
    /// Replication factor of the internal topics when the service creates them; -1: the
    /// broker's `default.replication.factor`.
    pub replication_factor: i32,
    /// How long the internal topics keep records (`retention.ms`): a stage partition whose
    /// owner is down longer than this loses the records it had not read yet.
    pub retention_s: u64,
}

impl Default for StreamsConfig {
    fn default() -> Self {
        StreamsConfig {
            enabled: false,
            internal_partitions: 16,
            replication_factor: -1,
            retention_s: 604_800,
        }
    }
}

/// A configuration that could not be used: every problem found, one per line, each naming
/// the file and line (when known), the key, and what the key allows.
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

/// Longest time setting, in seconds: a year. Windows, lookbacks and retentions are hours to
/// days; a value past a year is a slip of the keyboard (or a unit mix-up), and keeping every
/// setting far inside `u32` seconds means no detector can ever wrap one.
pub const MAX_SECONDS: u64 = 365 * 86_400;
/// Longest time setting given in milliseconds: an hour (they are short waits).
pub const MAX_MILLIS: u64 = 3_600_000;
/// Largest `engine.max_record_bytes`: `replay` holds a record this big in memory to parse it,
/// and Kafka's own default message limit is 1 MB.
pub const MAX_RECORD_BYTES: u64 = 16 << 20;

/// The validation rules, written once: each call checks one setting and records what it
/// allows. A new key gets one line in [`Config::validate`]; its problems then carry the
/// key, the line in the file and the allowed values without any other change.
pub struct Rules {
    /// `(key, what is wrong and what is allowed)` for every broken rule.
    broken: Vec<(&'static str, String)>,
    /// What each checked key allows, to explain a value of the wrong type.
    allowed: Vec<(&'static str, String)>,
}

/// What a broker list may be, for the messages.
pub const BROKERS_ALLOWED: &str =
    "HOST:PORT[,HOST:PORT...]: host names or addresses, no blanks inside, ports 1-65535";

/// What a broker list with a scheme in it should be, for the messages.
pub const BROKERS_NO_SCHEME: &str = "HOST:PORT[,HOST:PORT...]; a scheme such as http:// or \
     kafka:// is not one (librdkafka takes only PLAINTEXT://, SSL://, SASL_PLAINTEXT:// and \
     SASL_SSL://, as in [kafka] security.protocol)";

/// The protocol prefixes librdkafka's broker list takes (any case).
const BROKER_PROTOCOLS: [&str; 4] = ["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"];

/// A bootstrap list librdkafka can use: entries split by commas, each
/// `[PROTOCOL://]HOST[:PORT]` (an IPv6 address in brackets). `not a broker` passed, and
/// `run` then retried the name resolution until it was killed; so did another scheme
/// (`http://`, `kafka://`: librdkafka's "unsupported protocol"), retried as unreachable
/// brokers for ever.
pub fn brokers_ok(list: &str) -> bool {
    list.split(',').all(|entry| {
        let e = entry.trim();
        let e = match e.split_once("://") {
            Some((proto, rest))
                if BROKER_PROTOCOLS
                    .iter()
                    .any(|p| proto.eq_ignore_ascii_case(p)) =>
            {
                rest
            }
            Some(_) => return false,
            None => e,
        };
        let (host_ok, port) = if let Some(v6) = e.strip_prefix('[') {
            let Some((addr, rest)) = v6.split_once(']') else {
                return false;
            };
            let port = match rest {
                "" => None,
                r => match r.strip_prefix(':') {
                    Some(p) => Some(p),
                    None => return false,
                },
            };
            (addr.parse::<std::net::Ipv6Addr>().is_ok(), port)
        } else {
            let (h, port) = match e.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (e, None),
            };
            let ok = !h.is_empty()
                && (h.bytes())
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
            (ok, port)
        };
        let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
        host_ok && port_ok
    })
}

impl Rules {
    fn new() -> Self {
        Rules {
            broken: Vec::new(),
            allowed: Vec::new(),
        }
    }

    /// A rule on `key`: `ok` or the problem is `got`, and `allowed` says what would do.
    pub fn check(&mut self, key: &'static str, ok: bool, got: impl fmt::Display, allowed: &str) {
        self.allowed.push((key, allowed.to_string()));
        if !ok {
            self.broken
                .push((key, format!("{key} = {got} is not allowed: {allowed}")));
        }
    }

    /// A string setting that must hold more than blanks (a broker list, a topic, a path).
    pub fn non_empty(&mut self, key: &'static str, v: &str) {
        self.check(
            key,
            !v.trim().is_empty(),
            format_args!("{v:?}"),
            "a non-empty string",
        );
    }

    /// A listen address: an IP address and a port (`example` shows the default's shape).
    pub fn socket_addr(&mut self, key: &'static str, v: &str, example: &str) {
        self.check(
            key,
            v.parse::<std::net::SocketAddr>().is_ok(),
            format_args!("{v:?}"),
            &format!("HOST:PORT with an IP address, e.g. \"{example}\""),
        );
    }

    /// A problem found by a section's own check (e.g. one that builds a `Vec<String>`),
    /// placed at `key` (a `section.key`, or the section).
    pub fn push(&mut self, key: &'static str, message: String) {
        self.broken.push((key, message));
    }

    /// A time setting in whole seconds, from `min` to [`MAX_SECONDS`].
    pub fn seconds(&mut self, key: &'static str, v: u64, min: u64) {
        let allowed = format!("whole seconds from {min} to {MAX_SECONDS} (365 days)");
        self.check(key, (min..=MAX_SECONDS).contains(&v), v, &allowed);
    }

    /// A time setting in milliseconds, from `min` to [`MAX_MILLIS`].
    pub fn millis(&mut self, key: &'static str, v: u64, min: u64) {
        let allowed = format!("whole milliseconds from {min} to {MAX_MILLIS} (1 hour)");
        self.check(key, (min..=MAX_MILLIS).contains(&v), v, &allowed);
    }

    /// A count from `min` to `max`.
    pub fn count(&mut self, key: &'static str, v: u64, min: u64, max: u64) {
        let allowed = format!("a whole number from {min} to {max}");
        self.check(key, (min..=max).contains(&v), v, &allowed);
    }

    /// A number in `[lo, hi]`, or `(lo, hi]` when `lo_open`.
    pub fn fraction(&mut self, key: &'static str, v: f64, lo: f64, lo_open: bool, hi: f64) {
        let ok = if lo_open { v > lo } else { v >= lo } && v <= hi;
        let allowed = if lo_open {
            format!("a number above {lo}, at most {hi}")
        } else {
            format!("a number from {lo} to {hi}")
        };
        self.check(key, ok, v, &allowed);
    }
}

/// Where each key of a TOML document is: `section.key` (or `section`) to its byte offset.
#[derive(Default)]
struct KeyOffsets(Vec<(String, usize)>);

impl KeyOffsets {
    fn of(text: &str) -> KeyOffsets {
        let mut out = KeyOffsets::default();
        if let Ok(node) = toml::from_str::<Node>(text) {
            node.collect("", &mut out.0);
        }
        out
    }

    fn offset(&self, path: &str) -> Option<usize> {
        self.0.iter().find(|(k, _)| k == path).map(|(_, o)| *o)
    }
}

/// A TOML table with the position of every key; values other than tables are skipped.
enum Node {
    Table(Vec<(toml::Spanned<String>, Node)>),
    Leaf,
}

impl Node {
    fn collect(&self, prefix: &str, out: &mut Vec<(String, usize)>) {
        if let Node::Table(entries) = self {
            for (k, v) in entries {
                let path = if prefix.is_empty() {
                    k.get_ref().clone()
                } else {
                    format!("{prefix}.{}", k.get_ref())
                };
                out.push((path.clone(), k.span().start));
                v.collect(&path, out);
            }
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a TOML value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Node, A::Error> {
                let mut entries = Vec::new();
                while let Some(k) = m.next_key::<toml::Spanned<String>>()? {
                    entries.push((k, m.next_value::<Node>()?));
                }
                Ok(Node::Table(entries))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut s: A) -> Result<Node, A::Error> {
                while s.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Node::Leaf)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_str<E>(self, _: &str) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
        }
        d.deserialize_any(V)
    }
}

/// The dotted key set on line `line` (1-based) of TOML `text`, read from the text alone
/// (`key = value` under the nearest `[section]` above it): for a syntax error, where no
/// parsed document says which key a bad value (`2^64`, an unclosed string) belonged to.
/// None when the line sets no key.
fn key_on_line(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let here = lines.get(line.checked_sub(1)?)?.trim();
    let (key, _) = here.split_once('=')?;
    let key = key.trim().trim_matches(|c| c == '"' || c == '\'');
    if key.is_empty() || key.starts_with('#') || key.starts_with('[') {
        return None;
    }
    let section = lines[..line - 1].iter().rev().find_map(|l| {
        let l = l.trim();
        let inner = l.strip_prefix('[')?.split(']').next()?.trim();
        (!l.starts_with("[[") && !inner.is_empty()).then_some(inner)
    });
    Some(match section {
        Some(sec) => format!("{sec}.{key}"),
        None => key.to_string(),
    })
}

/// serde's wording of a type (`u64`) in an analyst's words (also for `tune --param`).
pub fn plain_type_error(message: &str) -> String {
    let mut m = message.to_string();
    for (from, to) in [
        ("expected u64", "expected a whole number"),
        ("expected u32", "expected a whole number up to 4294967295"),
        ("expected usize", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected a boolean", "expected true or false"),
        ("expected a string", "expected a quoted string"),
        ("expected a sequence", "expected a list [\"a\", \"b\"]"),
    ] {
        m = m.replace(from, to);
    }
    m.replace('\n', " ")
}

impl Config {
    /// Parses TOML text over the built-in defaults and validates it.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, None)
    }

    /// Parses and validates, reporting every problem at once, each as
    /// `FILE:LINE: key: what is wrong and what is allowed` (`FILE:` when `file` is given,
    /// `LINE:` when the key is in the text).
    fn parse(text: &str, file: Option<&Path>) -> Result<Config, ConfigError> {
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let place = |line: Option<usize>| match (file, line) {
            (Some(f), Some(l)) => format!("{}:{l}: ", f.display()),
            (Some(f), None) => format!("{}: ", f.display()),
            (None, Some(l)) => format!("line {l}: "),
            (None, None) => String::new(),
        };
        let doc: toml::Table = toml::from_str(text).map_err(|e| {
            // A syntax error leaves nothing to check key by key.
            let line = e.span().map(|s| line_of(s.start));
            let key = line.and_then(|l| key_on_line(text, l));
            let key = key.map(|k| format!("{k}: ")).unwrap_or_default();
            ConfigError::one(format!(
                "{}{key}{}",
                place(line),
                e.message().replace('\n', " ")
            ))
        })?;
        let offsets = KeyOffsets::of(text);
        let located = |key: &str| offsets.offset(key).map(line_of);
        let allowed = Config::default().rules().allowed;
        let mut problems: Vec<(Option<usize>, String)> = Vec::new();

        // Each key on its own over the defaults, so one bad key does not hide the next; the
        // good ones are kept to check the rules that span keys.
        let sections = match toml::Value::try_from(Config::default()) {
            Ok(toml::Value::Table(t)) => t,
            _ => toml::Table::new(),
        };
        let mut good = toml::Table::new();
        for (section, body) in doc {
            let Some(known) = sections.get(&section) else {
                let mut names: Vec<&str> = sections.keys().map(String::as_str).collect();
                names.sort_unstable();
                problems.push((
                    located(&section),
                    format!(
                        "[{section}]: unknown section (sections: {})",
                        names.join(", ")
                    ),
                ));
                continue;
            };
            let toml::Value::Table(body) = body else {
                problems.push((
                    located(&section),
                    format!("{section}: must be a section [{section}] of keys"),
                ));
                continue;
            };
            let mut kept = toml::Table::new();
            for (key, value) in body {
                let path = format!("{section}.{key}");
                let mut one = toml::Table::new();
                one.insert(
                    section.clone(),
                    toml::Value::Table(toml::Table::from_iter([(key.clone(), value.clone())])),
                );
                match toml::Value::Table(one).try_into::<Config>() {
                    Ok(_) => {
                        kept.insert(key, value);
                    }
                    Err(e) => {
                        // Asked of serde, not of the defaults: a key whose default is
                        // absent (an Option) is still known.
                        let mut msg = if e.message().starts_with("unknown field") {
                            let mut names: Vec<&str> = known
                                .as_table()
                                .map(|t| t.keys().map(String::as_str).collect())
                                .unwrap_or_default();
                            names.sort_unstable();
                            format!(
                                "{path}: unknown key (section [{section}] has {})",
                                names.join(", ")
                            )
                        } else {
                            format!("{path} = {value}: {}", plain_type_error(e.message()))
                        };
                        if let Some((_, a)) = allowed.iter().find(|(k, _)| *k == path) {
                            msg.push_str(&format!("; allowed: {a}"));
                        }
                        problems.push((located(&path), msg));
                    }
                }
            }
            good.insert(section, toml::Value::Table(kept));
        }
        let cfg: Config = toml::Value::Table(good).try_into().map_err(|e| {
            // Every key was accepted on its own above, so this is not expected; say so plainly.
            ConfigError::one(format!("{}{}", place(None), plain_type_error(e.message())))
        })?;
        for (key, msg) in cfg.rules().broken {
            problems.push((located(key), msg));
        }
        if problems.is_empty() {
            return Ok(cfg);
        }
        problems.sort_by_key(|(line, _)| line.unwrap_or(usize::MAX));
        Err(ConfigError {
            problems: problems
                .into_iter()
                .map(|(line, msg)| format!("{}{msg}", place(line)))
                .collect(),
        })
    }

    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::one(format!("cannot read {}: {e}", path.display())))?;
        Config::parse(&text, Some(path))
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
        let broken = self.rules().broken;
        if broken.is_empty() {
            Ok(())
        } else {
            Err(ConfigError {
                problems: broken.into_iter().map(|(_, m)| m).collect(),
            })
        }
    }

    /// Every rule, applied to this configuration. To add a key's rule, add a line here.
    fn rules(&self) -> Rules {
        let mut r = Rules::new();
        let e = &self.engine;
        r.seconds("engine.allowed_lateness_s", e.allowed_lateness_s, 0);
        r.seconds("engine.dedup_retention_s", e.dedup_retention_s, 1);
        r.seconds("engine.expire_every_s", e.expire_every_s, 1);
        r.seconds("engine.exchange_epoch_s", e.exchange_epoch_s, 1);
        r.seconds("engine.max_future_skew_s", e.max_future_skew_s, 0);
        r.count(
            "engine.max_record_bytes",
            e.max_record_bytes as u64,
            1,
            MAX_RECORD_BYTES,
        );
        r.count(
            "engine.max_keys_per_detector",
            e.max_keys_per_detector as u64,
            1,
            u32::MAX.into(),
        );
        r.seconds("alerts.cooldown_s", self.alerts.cooldown_s, 0);

        let b = &self.bulk_sms;
        r.seconds("bulk_sms.window_s", b.window_s, 1);
        r.count(
            "bulk_sms.min_recipients",
            b.min_recipients.into(),
            1,
            u32::MAX.into(),
        );
        r.check(
            "bulk_sms.max_recipients_per_line",
            b.max_recipients_per_line >= b.min_recipients,
            b.max_recipients_per_line,
            &format!("at least bulk_sms.min_recipients ({})", b.min_recipients),
        );

        let c = &self.customer_fan_in;
        r.seconds("customer_fan_in.window_s", c.window_s, 1);
        r.count(
            "customer_fan_in.min_customers",
            c.min_customers.into(),
            1,
            u32::MAX.into(),
        );
        r.seconds("customer_fan_in.lookback_s", c.lookback_s, 1);
        r.check(
            "customer_fan_in.lookback_s",
            c.lookback_s >= c.window_s,
            c.lookback_s,
            "at least customer_fan_in.window_s",
        );
        r.check(
            "customer_fan_in.min_call_duration_s",
            c.min_call_duration_s <= c.max_call_duration_s,
            c.min_call_duration_s,
            "at most customer_fan_in.max_call_duration_s",
        );
        r.check(
            "customer_fan_in.max_customers_per_line",
            c.max_customers_per_line >= c.min_customers,
            c.max_customers_per_line,
            &format!(
                "at least customer_fan_in.min_customers ({})",
                c.min_customers
            ),
        );
        r.seconds("customer_fan_in.callback_within_s", c.callback_within_s, 1);
        r.count(
            "customer_fan_in.min_callbacks",
            c.min_callbacks.into(),
            1,
            u32::MAX.into(),
        );
        r.count(
            "customer_fan_in.crew_min_customers",
            c.crew_min_customers.into(),
            1,
            u32::MAX.into(),
        );
        r.seconds("customer_fan_in.crew_retention_s", c.crew_retention_s, 1);
        r.count(
            "customer_fan_in.follow_min_customers",
            c.follow_min_customers.into(),
            1,
            u32::MAX.into(),
        );
        r.seconds("customer_fan_in.follow_within_s", c.follow_within_s, 1);
        r.check(
            "customer_fan_in.min_customers_with_callbacks",
            c.min_customers_with_callbacks >= c.min_callbacks,
            c.min_customers_with_callbacks,
            "at least customer_fan_in.min_callbacks",
        );

        let h = &self.handset_churn;
        r.seconds("handset_churn.window_s", h.window_s, 1);
        r.check(
            "handset_churn.min_sims",
            h.min_sims >= 2,
            h.min_sims,
            "at least 2 (one SIM per handset is normal)",
        );
        r.check(
            "handset_churn.max_sims_per_handset",
            h.max_sims_per_handset >= h.min_sims,
            h.max_sims_per_handset,
            &format!("at least handset_churn.min_sims ({})", h.min_sims),
        );

        let l = &self.line_handover;
        r.seconds("line_handover.new_line_max_age_s", l.new_line_max_age_s, 1);
        r.seconds("line_handover.warmup_s", l.warmup_s, 0);
        r.count(
            "line_handover.min_recipients",
            l.min_recipients.into(),
            1,
            u32::MAX.into(),
        );
        r.seconds("line_handover.burst_window_s", l.burst_window_s, 1);
        r.fraction("line_handover.min_overlap", l.min_overlap, 0.0, true, 1.0);
        r.seconds("line_handover.retention_s", l.retention_s, 1);
        r.count("line_handover.sketch_size", l.sketch_size.into(), 16, 1024);
        r.count(
            "line_handover.max_sketched_lines",
            l.max_sketched_lines as u64,
            1,
            u32::MAX.into(),
        );

        let m = &self.runner_movement;
        r.seconds("runner_movement.window_s", m.window_s, 1);
        r.count(
            "runner_movement.min_switches",
            m.min_switches.into(),
            1,
            u32::MAX.into(),
        );
        r.count(
            "runner_movement.max_commute_hours",
            m.max_commute_hours.into(),
            1,
            23,
        );
        r.count(
            "runner_movement.night_start_hour",
            m.night_start_hour.into(),
            0,
            23,
        );
        r.count(
            "runner_movement.night_end_hour",
            m.night_end_hour.into(),
            0,
            23,
        );
        r.check(
            "runner_movement.churn_min_sims",
            m.churn_min_sims >= 2,
            m.churn_min_sims,
            "at least 2 (one SIM per handset is normal)",
        );
        r.check(
            "runner_movement.max_stays_per_handset",
            m.max_stays_per_handset > m.min_switches && m.max_stays_per_handset <= 4096,
            m.max_stays_per_handset,
            &format!(
                "more than runner_movement.min_switches ({}), at most 4096",
                m.min_switches
            ),
        );
        r.seconds("runner_movement.young_handset_s", m.young_handset_s, 1);
        r.seconds("runner_movement.burn_gap_s", m.burn_gap_s, 0);
        r.check(
            "runner_movement.burn_quiet_s",
            m.burn_quiet_s <= m.young_handset_s,
            m.burn_quiet_s,
            "at most runner_movement.young_handset_s",
        );
        // Equal hours made an empty night: the night rule then never holds, and on the demo
        // city runner_movement found nothing, with no word said.
        r.check(
            "runner_movement.night_end_hour",
            m.night_end_hour != m.night_start_hour,
            m.night_end_hour,
            &format!(
                "not runner_movement.night_start_hour ({}): equal hours make an empty night \
                 (22 and 6 are 22:00-06:00)",
                m.night_start_hour
            ),
        );

        let d = &self.deal_line;
        r.fraction("deal_line.threshold", d.threshold, 0.0, true, 1.0);
        r.seconds("deal_line.lookback_s", d.lookback_s, 1);
        r.fraction(
            "deal_line.repeat_audience_min",
            d.repeat_audience_min,
            0.0,
            false,
            1.0,
        );
        let weights = [
            ("deal_line.weight_bulk_sms", d.weight_bulk_sms),
            ("deal_line.weight_repeat_bulk", d.weight_repeat_bulk),
            ("deal_line.weight_fan_in", d.weight_fan_in),
            ("deal_line.weight_repeat_fan_in", d.weight_repeat_fan_in),
            ("deal_line.weight_handover", d.weight_handover),
            ("deal_line.weight_handset_churn", d.weight_handset_churn),
            ("deal_line.weight_predecessor", d.weight_predecessor),
            ("deal_line.weight_runner", d.weight_runner),
            ("deal_line.weight_callbacks", d.weight_callbacks),
        ];
        for (key, w) in weights {
            r.fraction(key, w, 0.0, false, 1.0);
        }
        r.seconds("deal_line.repeat_gap_s", d.repeat_gap_s, 1);
        // A verdict is the sum of the weights of the evidence present: weights that cannot
        // reach the threshold all together switch deal_line off without a word.
        let all: f64 = weights.iter().map(|(_, w)| w).sum();
        r.check(
            "deal_line.threshold",
            d.threshold <= all + 1e-9,
            d.threshold,
            &format!(
                "at most the sum of the deal_line weights ({}): no line could ever reach it",
                (all * 1e6).round() / 1e6
            ),
        );
        // With require_sustained a verdict needs a kind of evidence that repeats; only
        // bulk_sms (adverts again), handset_churn and runner_movement give one (a
        // predecessor or successor needs a verdict first): with the three off, deal_line
        // could never fire, and would say nothing.
        r.check(
            "deal_line.require_sustained",
            !(d.enabled && d.require_sustained)
                || b.enabled
                || h.enabled
                || self.runner_movement.enabled,
            d.require_sustained,
            "false while bulk_sms, handset_churn and runner_movement are all disabled: \
             nothing else gives the evidence that repeats, so no line could be called a deal line",
        );
        r.check(
            "deal_line.churn_max_sims",
            d.churn_max_sims >= h.min_sims,
            d.churn_max_sims,
            &format!(
                "at least handset_churn.min_sims ({}): no churn finding could count",
                h.min_sims
            ),
        );
        // A churn finding's SIMs all lie within handset_churn's window.
        r.seconds("deal_line.churn_min_spread_s", d.churn_min_spread_s, 0);
        r.check(
            "deal_line.churn_min_spread_s",
            d.churn_min_spread_s <= h.window_s,
            d.churn_min_spread_s,
            &format!(
                "at most handset_churn.window_s ({}): no churn finding could count",
                h.window_s
            ),
        );
        // Both count a line's contacts, which the contact store keeps up to its cap.
        let cap = b.max_recipients_per_line.max(c.max_customers_per_line);
        let cap_says = format!(
            "at most the contact store's per-line cap ({cap}, the larger of \
             bulk_sms.max_recipients_per_line and customer_fan_in.max_customers_per_line): \
             no line could reach it"
        );
        r.check(
            "line_handover.min_recipients",
            l.min_recipients <= cap,
            l.min_recipients,
            &cap_says,
        );
        r.check(
            "customer_fan_in.min_customers_with_callbacks",
            c.min_customers_with_callbacks <= cap,
            c.min_customers_with_callbacks,
            &cap_says,
        );
        // The contact store keeps its times to the second for crate::state::MAX_SPAN_S
        // (12.1 days) before a line's newest activity: every span it is asked about, with the
        // lateness and skew a record may have, must fit (see crate::state::EPOCH_S).
        let slack = e.allowed_lateness_s.saturating_add(e.max_future_skew_s);
        let allowed = format!(
            "at most {} s (12.1 days, the contact store's span) minus engine.allowed_lateness_s \
             and engine.max_future_skew_s (deal_line.repeat_gap_s: with bulk_sms.window_s)",
            crate::state::MAX_SPAN_S
        );
        for (key, span) in [
            (
                "customer_fan_in.lookback_s",
                self.customer_fan_in.lookback_s,
            ),
            (
                "deal_line.repeat_gap_s",
                d.repeat_gap_s.saturating_add(self.bulk_sms.window_s),
            ),
            (
                "line_handover.new_line_max_age_s",
                self.line_handover.new_line_max_age_s,
            ),
        ] {
            let ok = span.saturating_add(slack) <= crate::state::MAX_SPAN_S;
            r.check(key, ok, span, &allowed);
        }

        let s = &self.service;
        r.check(
            "service.input_topics",
            !s.input_topics.is_empty() && s.input_topics.iter().all(|t| !t.is_empty()),
            format_args!("{:?}", s.input_topics),
            "a list of at least one topic, none empty",
        );
        for (key, v) in [
            ("service.brokers", &s.brokers),
            ("service.group_id", &s.group_id),
            ("service.alert_topic", &s.alert_topic),
            ("service.dead_letter_topic", &s.dead_letter_topic),
            ("service.state_topic", &s.state_topic),
        ] {
            r.non_empty(key, v);
        }
        if !s.brokers.trim().is_empty() {
            r.check(
                "service.brokers",
                brokers_ok(&s.brokers),
                format_args!("{:?}", s.brokers),
                if s.brokers.contains("://") {
                    BROKERS_NO_SCHEME
                } else {
                    BROKERS_ALLOWED
                },
            );
        }
        r.socket_addr("service.http_addr", &s.http_addr, "127.0.0.1:9464");
        r.seconds("service.drain_timeout_s", s.drain_timeout_s, 1);
        r.seconds(
            "service.partition_idle_timeout_s",
            s.partition_idle_timeout_s,
            1,
        );
        r.count(
            "service.batch_max_records",
            s.batch_max_records as u64,
            1,
            u32::MAX.into(),
        );
        r.count(
            "service.max_in_flight_batches",
            s.max_in_flight_batches as u64,
            1,
            u32::MAX.into(),
        );
        r.count(
            "service.align_max_records",
            s.align_max_records as u64,
            1,
            u32::MAX.into(),
        );
        r.millis("service.batch_max_wait_ms", s.batch_max_wait_ms, 0);
        r.seconds("service.retry_backoff_max_s", s.retry_backoff_max_s, 1);
        r.seconds(
            "service.config_poll_interval_s",
            s.config_poll_interval_s,
            1,
        );
        r.seconds("service.rebuild_state_s", s.rebuild_state_s, 0);
        r.seconds("service.checkpoint_interval_s", s.checkpoint_interval_s, 0);
        r.count("service.shards", s.shards as u64, 1, 256);
        r.check(
            "service.processing_guarantee",
            true,
            s.processing_guarantee.as_str(),
            "\"at_least_once\" or \"exactly_once\"",
        );
        r.millis(
            "service.transaction_interval_ms",
            s.transaction_interval_ms,
            1,
        );
        let st = &self.streams;
        r.count(
            "streams.internal_partitions",
            st.internal_partitions.into(),
            1,
            crate::engine::KEY_GROUPS as u64,
        );
        r.check(
            "streams.replication_factor",
            st.replication_factor == -1 || (1..=32).contains(&st.replication_factor),
            st.replication_factor,
            "-1 (the broker's default) or a whole number from 1 to 32",
        );
        r.seconds("streams.retention_s", st.retention_s, 60);
        // `streams.enabled` goes with either guarantee: under exactly_once the ingest and
        // the stages each write their outputs and offsets in one transaction
        // (`service::streams`). Nothing of `[streams]` depends on the guarantee otherwise.
        self.board.check(&mut r);
        r
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
            &self.runner_movement,
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

    /// A number too large for TOML is a syntax error, found before any key is read: it
    /// named the line but not the key.
    #[test]
    fn a_syntax_error_in_a_value_names_its_key() {
        let text = "# a comment\n[engine]\nmax_keys_per_detector = 10\n\n[bulk_sms]\n  \
                    min_recipients = 18446744073709551616\n";
        let err = Config::from_toml(text).unwrap_err().to_string();
        assert!(
            err.contains("line 6: bulk_sms.min_recipients: number too large"),
            "{err}"
        );
        let err = Config::from_toml("window_s = \"unclosed\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1: window_s: "), "{err}");
        assert_eq!(key_on_line("[a]\n# x = 1\n", 2), None);
        assert_eq!(key_on_line("[a]\n[b]\n", 2), None);
        assert_eq!(
            key_on_line("[a.b]\n\"k\" = 1\n", 2).as_deref(),
            Some("a.b.k")
        );
    }

    #[test]
    fn spans_past_the_contact_stores_span_are_refused_with_lateness_and_skew_counted() {
        let mut c = Config::default();
        let slack = c.engine.allowed_lateness_s + c.engine.max_future_skew_s;
        c.customer_fan_in.lookback_s = crate::state::MAX_SPAN_S - slack;
        c.validate().unwrap();
        c.customer_fan_in.lookback_s += 1;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("customer_fan_in.lookback_s"), "{err}");
        let mut c = Config::default();
        c.deal_line.repeat_gap_s = crate::state::MAX_SPAN_S;
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("deal_line.repeat_gap_s") && err.contains("12.1 days"),
            "{err}"
        );
    }

    /// Each of these was accepted with "ok" and then switched a detector off (or one of
    /// its rules) without a word: on the demo city, deal_line or runner_movement found
    /// nothing, line_handover nothing, the callback rule could never hold.
    #[test]
    fn settings_that_would_silently_switch_a_detector_off_are_refused() {
        let refused = |edit: &dyn Fn(&mut Config), key: &str, why: &str| {
            let mut c = Config::default();
            edit(&mut c);
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(why), "{key}: {err}");
        };
        refused(
            &|c| {
                c.deal_line.weight_bulk_sms = 0.0;
                c.deal_line.weight_fan_in = 0.0;
                c.deal_line.weight_handover = 0.0;
                c.deal_line.weight_repeat_bulk = 0.0;
                c.deal_line.weight_predecessor = 0.0;
            },
            "deal_line.threshold = 0.7",
            "sum of the deal_line weights (0.5)",
        );
        refused(
            &|c| c.runner_movement.night_end_hour = c.runner_movement.night_start_hour,
            "runner_movement.night_end_hour",
            "empty night",
        );
        refused(
            &|c| c.line_handover.min_recipients = 100_000,
            "line_handover.min_recipients = 100000",
            "per-line cap (4096",
        );
        refused(
            &|c| c.customer_fan_in.min_customers_with_callbacks = 5_000,
            "customer_fan_in.min_customers_with_callbacks",
            "per-line cap",
        );
        refused(
            &|c| {
                c.bulk_sms.enabled = false;
                c.handset_churn.enabled = false;
                c.runner_movement.enabled = false;
            },
            "deal_line.require_sustained = true",
            "bulk_sms, handset_churn and runner_movement are all disabled",
        );
        refused(
            &|c| c.deal_line.churn_max_sims = 1,
            "deal_line.churn_max_sims",
            "handset_churn.min_sims",
        );
        // A cross-key message gives the other key's value: the user may have set only it.
        refused(
            &|c| c.bulk_sms.min_recipients = 5_000,
            "bulk_sms.max_recipients_per_line = 4096",
            "at least bulk_sms.min_recipients (5000)",
        );
        // At the edges they still pass: a threshold equal to the weights' sum, a raised cap.
        let mut c = Config::default();
        c.deal_line.threshold = 1.0;
        c.deal_line.weight_bulk_sms = 0.5;
        c.deal_line.weight_fan_in = 0.5;
        for w in [
            &mut c.deal_line.weight_repeat_bulk,
            &mut c.deal_line.weight_repeat_fan_in,
            &mut c.deal_line.weight_handover,
            &mut c.deal_line.weight_handset_churn,
            &mut c.deal_line.weight_predecessor,
            &mut c.deal_line.weight_runner,
        ] {
            *w = 0.0;
        }
        c.line_handover.min_recipients = 8_000;
        c.bulk_sms.max_recipients_per_line = 8_000;
        c.validate().unwrap();
    }

    #[test]
    fn a_broker_list_is_checked_for_its_shape() {
        for ok in [
            "127.0.0.1:9092",
            "kafka-0.kafka:9092, kafka-1.kafka:9092",
            "broker",
            "SSL://b1.example.net:9093",
            "sasl_ssl://b1:9093,PLAINTEXT://b2:9092",
            "[::1]:9092",
            "[fe80::1]",
        ] {
            assert!(brokers_ok(ok), "{ok}");
        }
        for bad in [
            "not a broker",
            "host:port",
            "host:0",
            "host:70000",
            "a:9092,,b:9092",
            "[::1",
            "[nope]:9092",
            ":9092",
        ] {
            assert!(!brokers_ok(bad), "{bad}");
        }
        let mut c = Config::default();
        c.service.brokers = "not a broker".into();
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("service.brokers") && err.contains("HOST:PORT"),
            "{err}"
        );
        assert!(!err.contains("scheme"), "{err}");
    }

    /// `http://127.0.0.1:9092` passed, and `run` retried librdkafka's "unsupported protocol"
    /// as unreachable brokers until it was killed.
    #[test]
    fn a_broker_list_with_a_scheme_is_refused_with_a_hint() {
        for bad in [
            "http://127.0.0.1:9092",
            "kafka://broker:9092",
            "tcp://127.0.0.1:9092",
            "b0:9092,https://b1:9092",
        ] {
            assert!(!brokers_ok(bad), "{bad}");
            let mut c = Config::default();
            c.service.brokers = bad.into();
            let err = c.validate().unwrap_err().to_string();
            assert!(
                err.contains("service.brokers") && err.contains("is not one"),
                "{err}"
            );
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }

    #[test]
    fn streams_settings_are_checked_together_with_the_rest() {
        let e = Config::from_toml(
            "[streams]\nenabled = true\ninternal_partitions = 257\nreplication_factor = 0\nretention_s = 5\n",
        )
        .unwrap_err();
        assert_eq!(e.problems.len(), 3, "{e}");
        assert!(
            e.problems[0].starts_with("line 3: streams.internal_partitions = 257"),
            "{e}"
        );
        assert!(e.problems[0].contains("from 1 to 256"), "{e}");
        assert!(
            e.problems[1].starts_with("line 4: streams.replication_factor = 0"),
            "{e}"
        );
        assert!(
            e.problems[2].starts_with("line 5: streams.retention_s = 5"),
            "{e}"
        );
        let e = Config::from_toml("[streams]\npartitions = 6\n").unwrap_err();
        assert!(
            e.problems[0].contains("streams.partitions: unknown key"),
            "{e}"
        );
        // The hop is transactional under exactly_once: the two go together.
        let c = Config::from_toml(
            "[service]\nprocessing_guarantee = \"exactly_once\"\n[streams]\nenabled = true\n",
        )
        .unwrap();
        assert!(c.streams.enabled);
        assert_eq!(
            c.service.processing_guarantee,
            ProcessingGuarantee::ExactlyOnce
        );
        assert!(Config::from_toml(
            "[service]\nprocessing_guarantee = \"exactly_once\"\n[streams]\nenabled = false\n"
        )
        .is_ok());
        let c = Config::from_toml("[streams]\nenabled = true\ninternal_partitions = 6\n").unwrap();
        assert!(c.streams.enabled);
        assert_eq!(c.streams.internal_partitions, 6);
        assert_eq!(c.streams.replication_factor, -1);
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
    fn wrong_type_is_rejected_with_key_line_and_what_is_allowed() {
        let e = Config::from_toml("[bulk_sms]\nwindow_s = \"1h\"\n").unwrap_err();
        assert_eq!(e.problems.len(), 1, "{e}");
        let p = &e.problems[0];
        assert!(p.starts_with("line 2: bulk_sms.window_s"), "{p}");
        assert!(p.contains("whole seconds from 1 to 31536000"), "{p}");
    }

    #[test]
    fn misspelt_keys_and_bad_values_are_all_reported_with_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(
            &path,
            "[bulk_sms]\nmin_recipent = 3\n\n[engine]\nallowed_latenes_s = 9\n\n[deal_line]\nthreshold = 1.5\n",
        )
        .unwrap();
        let e = Config::load(&path).unwrap_err();
        let f = path.display().to_string();
        assert_eq!(e.problems.len(), 3, "{e}");
        assert!(e.problems[0].starts_with(&format!("{f}:2: bulk_sms.min_recipent: unknown key")));
        assert!(
            e.problems[0].contains("min_recipients"),
            "{}",
            e.problems[0]
        );
        assert!(e.problems[1].starts_with(&format!("{f}:5: engine.allowed_latenes_s: unknown")));
        assert!(e.problems[2].starts_with(&format!("{f}:8: deal_line.threshold = 1.5")));
        assert!(e.problems[2].contains("at most 1"), "{}", e.problems[2]);
    }

    #[test]
    fn a_window_past_u32_seconds_is_refused_not_wrapped() {
        let e = Config::from_toml("[bulk_sms]\nwindow_s = 4294967296\n").unwrap_err();
        assert!(
            e.problems[0].contains("bulk_sms.window_s = 4294967296"),
            "{e}"
        );
    }

    /// Every time setting, present and future, is range-checked: a key whose name ends in
    /// `_s` or `_ms` set past the range must be refused by name.
    #[test]
    fn every_time_setting_is_range_checked() {
        let toml::Value::Table(root) = toml::Value::try_from(Config::default()).unwrap() else {
            panic!("the configuration is a table");
        };
        let mut checked = 0;
        for (section, body) in &root {
            for (key, value) in body.as_table().into_iter().flatten() {
                if !(key.ends_with("_s") || key.ends_with("_ms")) || !value.is_integer() {
                    continue;
                }
                let text = format!("[{section}]\n{key} = 4294967296\n");
                let e = Config::from_toml(&text).expect_err(&text);
                assert!(
                    e.problems
                        .iter()
                        .any(|p| p.contains(&format!("{section}.{key}"))),
                    "{text}: {e}"
                );
                checked += 1;
            }
        }
        assert!(checked >= 20, "{checked}");
    }

    #[test]
    fn processing_guarantee_takes_its_two_values_and_names_them_otherwise() {
        let c = Config::from_toml("[service]\nprocessing_guarantee = \"exactly_once\"\n").unwrap();
        assert_eq!(
            c.service.processing_guarantee,
            ProcessingGuarantee::ExactlyOnce
        );
        let e =
            Config::from_toml("[service]\nprocessing_guarantee = \"exactly-once\"\n").unwrap_err();
        assert_eq!(e.problems.len(), 1, "{e}");
        let p = &e.problems[0];
        assert!(p.starts_with("line 2: service.processing_guarantee"), "{p}");
        assert!(p.contains("\"at_least_once\" or \"exactly_once\""), "{p}");
        assert_eq!(
            "exactly_once".parse::<ProcessingGuarantee>(),
            Ok(ProcessingGuarantee::ExactlyOnce)
        );
        assert!("once".parse::<ProcessingGuarantee>().is_err());
    }

    #[test]
    fn a_syntax_error_gives_its_line() {
        let e = Config::from_toml("[engine]\nexpire_every_s = 600\n[bulk_sms\n").unwrap_err();
        assert!(e.problems[0].starts_with("line 3:"), "{e}");
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
