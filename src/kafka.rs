//! Kafka client setup shared by every part that talks to a broker, and the one place Kafka
//! errors are sorted into retriable and final.
//!
//! Properties come from three layers, later winning: settings linewatch needs for bounded
//! memory and sane timeouts, then the user's `[kafka]` table (TLS, SASL, tuning pass through
//! unchanged), then the few settings correctness depends on (offset handling, idempotence),
//! which the user cannot override. A key in `[kafka]` prefixed `consumer.` or `producer.`
//! goes to that client only.
//!
//! Property values may hold passwords: [`KafkaSettings`] never shows them in `Debug`, and
//! nothing here logs a value.

use std::collections::BTreeMap;
use std::fmt;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::ClientConfig;

/// Which client a configuration is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Consumer,
    Producer,
}

/// Brokers and pass-through librdkafka properties. `Debug` masks every property value.
#[derive(Clone, PartialEq)]
pub struct KafkaSettings {
    /// Bootstrap servers, comma separated.
    pub brokers: String,
    /// librdkafka properties from the `[kafka]` table.
    pub properties: BTreeMap<String, String>,
}

impl KafkaSettings {
    /// `message` with every `[kafka]` property value replaced by `***`: librdkafka quotes a
    /// property it refuses, value and all (`No such configuration property: "sasl.pasword"
    /// sasl.pasword hunter2`), and a misspelt password key would otherwise reach the log.
    pub fn mask(&self, message: &str) -> String {
        let mut m = message.to_string();
        for v in self.properties.values().filter(|v| !v.is_empty()) {
            m = m.replace(v.as_str(), "***");
        }
        m
    }

    /// A client creation error as one masked line ([`KafkaSettings::mask`]).
    pub fn creation_message(&self, e: &KafkaError) -> String {
        match e {
            KafkaError::ClientCreation(m) => self.mask(m),
            other => self.mask(&other.to_string()),
        }
    }
}

impl fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys are safe to show (they say *that* SASL is set up); values are not.
        let masked: BTreeMap<&str, &str> = self
            .properties
            .keys()
            .map(|k| (k.as_str(), "***"))
            .collect();
        f.debug_struct("KafkaSettings")
            .field("brokers", &self.brokers)
            .field("properties", &masked)
            .finish()
    }
}

/// Defaults for the consumer: bounded prefetch so a backlog cannot grow memory without bound,
/// and lag statistics for the metrics. Each may be overridden in `[kafka]`.
const CONSUMER_DEFAULTS: &[(&str, &str)] = &[
    // A new group starts from the oldest record: a fresh deployment sees the whole backlog.
    ("auto.offset.reset", "earliest"),
    // librdkafka prefetches per partition up to these caps: 16 MiB queued in total and 16 MiB
    // per fetch keep memory bounded (the default is 64 MiB per partition queue).
    ("queued.max.messages.kbytes", "16384"),
    ("queued.min.messages", "10000"),
    // librdkafka (2.1+) postpones a partition's next fetch by this much once its queue is
    // over the caps above; at the default of 1000 ms a backlog is read at about
    // queued.min.messages per second (13.6k records/s measured, benches/kafka_e2e.sh).
    // 10 ms keeps the prefetch full without polling the broker in a loop.
    ("fetch.queue.backoff.ms", "10"),
    ("fetch.max.bytes", "16777216"),
    ("max.partition.fetch.bytes", "1048576"),
    // consumer_lag per partition comes from librdkafka's statistics; once a second keeps the
    // lag gauge fresh at a cost of one small JSON parse.
    ("statistics.interval.ms", "1000"),
    // A batch is processed and acknowledged between polls; five minutes leaves room for a
    // slow broker before the group evicts us.
    ("max.poll.interval.ms", "300000"),
    ("session.timeout.ms", "30000"),
];

/// Settings the consumer's at-least-once guarantee depends on: offsets are committed by the
/// service only after the batch's outputs are acknowledged, never automatically.
const CONSUMER_FIXED: &[(&str, &str)] = &[
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
    // A partition EOF tells event-time alignment not to wait for that partition (align.rs).
    ("enable.partition.eof", "true"),
];

/// Defaults for the producer. Each may be overridden in `[kafka]`.
const PRODUCER_DEFAULTS: &[(&str, &str)] = &[
    // Alerts are few; a few ms of batching costs nothing in alert latency.
    ("linger.ms", "5"),
    // librdkafka retries on its own for this long before a delivery is reported failed; two
    // minutes rides out a leader election or a broker restart.
    ("delivery.timeout.ms", "120000"),
    // Bounded producer queue (messages and KiB): a stuck broker pushes back on the consumer.
    ("queue.buffering.max.messages", "100000"),
    ("queue.buffering.max.kbytes", "65536"),
    ("compression.type", "zstd"),
];

/// Settings the output guarantee depends on: no duplicates or reordering from producer
/// retries, and a record counts as delivered only once every in-sync replica has it.
const PRODUCER_FIXED: &[(&str, &str)] = &[("enable.idempotence", "true"), ("acks", "all")];

/// Producer defaults added under `service.processing_guarantee = "exactly_once"`; each may be
/// overridden in `[kafka]`.
const TRANSACTIONAL_DEFAULTS: &[(&str, &str)] = &[
    // How long the broker lets a transaction stay open before aborting it. An instance that
    // comes back aborts its own open transaction at once (init_transactions); this bounds
    // how long another member taking its partitions over waits for offsets a dead
    // instance left in an open transaction. 10 s, as Kafka Streams under exactly-once.
    ("transaction.timeout.ms", "10000"),
];

/// Properties librdkafka reads in a consumer only (`C` in its CONFIGURATION.md, global and
/// topic level). Set without a `consumer.` prefix they would reach the producers too, where
/// librdkafka warns at every start (`CONFWARN`) about each: the README's
/// `"group.instance.id"` for static membership did. Producers are not given them.
pub const CONSUMER_ONLY: &[&str] = &[
    "group.id",
    "group.instance.id",
    "partition.assignment.strategy",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "group.protocol.type",
    "group.protocol",
    "group.remote.assignor",
    "coordinator.query.interval.ms",
    "max.poll.interval.ms",
    "enable.auto.commit",
    "auto.commit.enable",
    "auto.commit.interval.ms",
    "enable.auto.offset.store",
    "queued.min.messages",
    "queued.max.messages.kbytes",
    "fetch.wait.max.ms",
    "fetch.queue.backoff.ms",
    "fetch.message.max.bytes",
    "max.partition.fetch.bytes",
    "fetch.max.bytes",
    "fetch.min.bytes",
    "fetch.error.backoff.ms",
    "offset.store.method",
    "offset.store.path",
    "offset.store.sync.interval.ms",
    "isolation.level",
    "enable.partition.eof",
    "check.crcs",
    "auto.offset.reset",
    "consume.callback.max.messages",
];

/// True for a property librdkafka reads in a consumer only ([`CONSUMER_ONLY`]).
pub fn is_consumer_only(key: &str) -> bool {
    CONSUMER_ONLY.contains(&key)
}

/// Properties librdkafka reads in a producer only (`P` in its CONFIGURATION.md, global and
/// topic level; the callbacks set through its API left out). Set without a `producer.`
/// prefix they would reach the consumers too (the service's, the board's), where librdkafka
/// warns at every start (`CONFWARN`) about each: `linger.ms` or `compression.type` tuned
/// for the alert producer did. Consumers are not given them.
pub const PRODUCER_ONLY: &[&str] = &[
    "transactional.id",
    "transaction.timeout.ms",
    "enable.idempotence",
    "enable.gapless.guarantee",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
    "queue.buffering.max.ms",
    "linger.ms",
    "message.send.max.retries",
    "retries",
    "queue.buffering.backpressure.threshold",
    "compression.codec",
    "compression.type",
    "compression.level",
    "batch.num.messages",
    "batch.size",
    "delivery.report.only.error",
    "sticky.partitioning.linger.ms",
    "request.required.acks",
    "acks",
    "request.timeout.ms",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "queuing.strategy",
    "produce.offset.report",
    "partitioner",
];

/// True for a property librdkafka reads in a producer only ([`PRODUCER_ONLY`]).
pub fn is_producer_only(key: &str) -> bool {
    PRODUCER_ONLY.contains(&key)
}

/// Properties a user may not override, for a warning at start.
pub fn fixed_keys(role: Role) -> &'static [(&'static str, &'static str)] {
    match role {
        Role::Consumer => CONSUMER_FIXED,
        Role::Producer => PRODUCER_FIXED,
    }
}

impl KafkaSettings {
    /// Settings from the brokers and the `[kafka]` table.
    pub fn new(brokers: impl Into<String>, properties: BTreeMap<String, String>) -> Self {
        KafkaSettings {
            brokers: brokers.into(),
            properties,
        }
    }

    /// The user's properties for `role`: unprefixed keys for every client (but a
    /// consumer-only one, [`is_consumer_only`], for consumers only, and a producer-only one,
    /// [`is_producer_only`], for producers only), `consumer.*` and `producer.*` for that one
    /// only.
    pub fn user_properties(&self, role: Role) -> impl Iterator<Item = (&str, &str)> {
        self.properties.iter().filter_map(move |(k, v)| {
            let key = match (k.split_once('.'), role) {
                (Some(("consumer", rest)), Role::Consumer) => rest,
                (Some(("producer", rest)), Role::Producer) => rest,
                (Some(("consumer" | "producer", _)), _) => return None,
                _ if role == Role::Producer && is_consumer_only(k) => return None,
                _ if role == Role::Consumer && is_producer_only(k) => return None,
                _ => k.as_str(),
            };
            Some((key, v.as_str()))
        })
    }

    /// User keys that the service overrides for `role` (they would break a guarantee).
    pub fn overridden_keys(&self, role: Role) -> Vec<&str> {
        let fixed = fixed_keys(role);
        self.user_properties(role)
            .filter(|(k, _)| fixed.iter().any(|(f, _)| f == k))
            .map(|(k, _)| k)
            .collect()
    }

    /// A librdkafka configuration for `role`. Never print it: rdkafka's `Debug` shows values.
    pub fn client_config(&self, role: Role) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        let (defaults, fixed) = match role {
            Role::Consumer => (CONSUMER_DEFAULTS, CONSUMER_FIXED),
            Role::Producer => (PRODUCER_DEFAULTS, PRODUCER_FIXED),
        };
        for (k, v) in defaults {
            c.set(*k, *v);
        }
        for (k, v) in self.user_properties(role) {
            c.set(k, v);
        }
        for (k, v) in fixed {
            c.set(*k, *v);
        }
        // A transactional id makes every send need an open transaction: only the
        // exactly-once producer ([`KafkaSettings::transactional_config`]) gets one.
        c.remove("transactional.id");
        c
    }

    /// The consumer's session timeout in milliseconds, as the consumer will be configured
    /// (`None` when a `[kafka]` value is not a number: librdkafka refuses it at start).
    pub fn session_timeout_ms(&self) -> Option<u64> {
        self.client_config(Role::Consumer)
            .get("session.timeout.ms")
            .and_then(|v| v.trim().parse().ok())
    }

    /// `(idle timeout, session timeout)` in milliseconds when the partition idle timeout is
    /// not above the consumer session timeout. A member lost without leaving keeps its
    /// partitions until the session times out and the group rebalances; an idle timeout
    /// shorter than that passes them over as idle first, so the others run ahead and their
    /// records come late under the new owner (dead-lettered `late` by a single instance,
    /// found late by `[streams]` stages).
    pub fn idle_not_above_session(&self, idle_timeout_s: u64) -> Option<(u64, u64)> {
        let session = self.session_timeout_ms()?;
        let idle = idle_timeout_s.saturating_mul(1000);
        (idle <= session).then_some((idle, session))
    }

    /// The exactly-once producer's configuration: the producer's, with `transactional.id`
    /// set to `id` (see `service::txn::transactional_id`).
    pub fn transactional_config(&self, id: &str) -> ClientConfig {
        let mut c = self.client_config(Role::Producer);
        for (k, v) in TRANSACTIONAL_DEFAULTS {
            if !self.user_properties(Role::Producer).any(|(u, _)| u == *k) {
                c.set(*k, *v);
            }
        }
        // librdkafka refuses a delivery timeout longer than the transaction's: a message
        // still undelivered when its transaction times out belongs to an aborted one.
        let user = |k: &str| self.user_properties(Role::Producer).any(|(u, _)| u == k);
        if !user("delivery.timeout.ms") && !user("message.timeout.ms") {
            if let Some(t) = c.get("transaction.timeout.ms").map(str::to_string) {
                c.set("delivery.timeout.ms", t);
            }
        }
        c.set("transactional.id", id);
        c
    }

    /// The exactly-once consumer's configuration: only committed records of transactional
    /// producers are read (librdkafka's default, made explicit so a `[kafka]` setting
    /// cannot turn it off under exactly-once).
    pub fn read_committed_config(&self) -> ClientConfig {
        let mut c = self.client_config(Role::Consumer);
        c.set("isolation.level", "read_committed");
        c
    }
}

/// What to do about a Kafka error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Transient: wait and try again; nothing is committed meanwhile, so nothing is lost.
    Retriable,
    /// Will not fix itself (authorisation, oversize record, missing topic, fenced producer):
    /// stop with a clear message rather than loop.
    Final,
}

/// Sorts an error into retriable or final. Unknown codes are final: stopping (offsets are
/// uncommitted, so a restart re-reads) is safe, looping forever on a surprise is not.
pub fn classify(e: &KafkaError) -> ErrorClass {
    match e.rdkafka_error_code() {
        Some(code) => classify_code(code),
        // Canceled: the client went away (shutdown). Transport-less variants without a code
        // (e.g. `NoMessageReceived`) are transient.
        None => match e {
            KafkaError::Canceled | KafkaError::NoMessageReceived => ErrorClass::Retriable,
            _ => ErrorClass::Final,
        },
    }
}

/// [`classify`] for a bare error code.
pub fn classify_code(code: RDKafkaErrorCode) -> ErrorClass {
    use RDKafkaErrorCode as C;
    match code {
        C::QueueFull
        | C::MessageTimedOut
        | C::RequestTimedOut
        | C::TimedOutQueue
        | C::OperationTimedOut
        | C::BrokerTransportFailure
        | C::AllBrokersDown
        | C::Resolve
        | C::BrokerNotAvailable
        | C::LeaderNotAvailable
        | C::NotLeaderForPartition
        | C::ReplicaNotAvailable
        | C::NetworkException
        | C::NotEnoughReplicas
        | C::NotEnoughReplicasAfterAppend
        | C::KafkaStorageError
        | C::CoordinatorLoadInProgress
        | C::CoordinatorNotAvailable
        | C::NotCoordinator
        | C::WaitingForCoordinator
        | C::RebalanceInProgress
        | C::IllegalGeneration
        | C::UnknownMemberId
        | C::FencedLeaderEpoch
        | C::UnknownLeaderEpoch
        | C::ThrottlingQuotaExceeded
        | C::PreferredLeaderNotAvailable
        | C::Retry
        | C::InProgress
        | C::PreviousInProgress
        | C::UnstableOffsetCommit
        | C::OffsetNotAvailable => ErrorClass::Retriable,
        _ => ErrorClass::Final,
    }
}

/// A fixed, short label for an error (metrics `kind` label): never the message, which may
/// carry addresses or record content.
pub fn error_kind(e: &KafkaError) -> &'static str {
    use RDKafkaErrorCode as C;
    let Some(code) = e.rdkafka_error_code() else {
        return "other";
    };
    match code {
        C::QueueFull => "queue_full",
        C::MessageTimedOut | C::RequestTimedOut | C::TimedOutQueue | C::OperationTimedOut => {
            "timed_out"
        }
        C::BrokerTransportFailure
        | C::AllBrokersDown
        | C::Resolve
        | C::BrokerNotAvailable
        | C::NetworkException => "broker_unreachable",
        C::LeaderNotAvailable
        | C::NotLeaderForPartition
        | C::ReplicaNotAvailable
        | C::NotEnoughReplicas
        | C::NotEnoughReplicasAfterAppend
        | C::KafkaStorageError
        | C::FencedLeaderEpoch
        | C::UnknownLeaderEpoch
        | C::PreferredLeaderNotAvailable => "leader_unavailable",
        C::Authentication
        | C::SaslAuthenticationFailed
        | C::UnsupportedSASLMechanism
        | C::IllegalSASLState
        | C::SSL => "authentication",
        C::TopicAuthorizationFailed
        | C::GroupAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::TransactionalIdAuthorizationFailed => "authorization",
        C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownPartition => "unknown_topic",
        C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge => "too_large",
        C::Fatal
        | C::OutOfOrderSequenceNumber
        | C::InvalidProducerEpoch
        | C::ProducerFenced
        | C::Fenced => "fatal",
        _ => "other",
    }
}

/// True if the error says the credentials or TLS setup were refused: worth its own message,
/// since retrying cannot help.
pub fn is_auth_failure(e: &KafkaError) -> bool {
    error_kind(e) == "authentication"
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Settings with these `[kafka]` properties (brokers `b:9092`).
    fn settings(properties: &[(&str, &str)]) -> KafkaSettings {
        let p = (properties.iter())
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        KafkaSettings::new("b:9092", p)
    }

    #[test]
    fn debug_masks_property_values() {
        let s = settings(&[("sasl.password", "hunter2")]);
        let shown = format!("{s:?}");
        assert!(shown.contains("sasl.password"));
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn an_idle_timeout_not_above_the_session_timeout_is_told() {
        let with = |session: Option<&str>| {
            let mut props = BTreeMap::new();
            if let Some(v) = session {
                props.insert("consumer.session.timeout.ms".to_string(), v.to_string());
            }
            KafkaSettings::new("b:9092", props)
        };
        // The defaults (60 s against 30 s) are not told.
        assert_eq!(with(None).idle_not_above_session(60), None);
        assert_eq!(
            with(None).idle_not_above_session(30),
            Some((30_000, 30_000))
        );
        assert_eq!(
            with(Some("6000")).idle_not_above_session(5),
            Some((5_000, 6_000))
        );
        assert_eq!(with(Some("6000")).idle_not_above_session(20), None);
        // Not a number: librdkafka's own error at start says so, not this.
        assert_eq!(with(Some("soon")).idle_not_above_session(5), None);
    }

    #[test]
    fn prefixed_keys_go_to_one_client_and_fixed_keys_win() {
        let s = settings(&[
            ("security.protocol", "SASL_SSL"),
            ("consumer.fetch.max.bytes", "1024"),
            ("producer.linger.ms", "50"),
            ("enable.auto.commit", "true"),
        ]);
        let c = s.client_config(Role::Consumer);
        assert_eq!(c.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(c.get("fetch.max.bytes"), Some("1024"));
        assert_eq!(c.get("linger.ms"), None);
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(
            s.overridden_keys(Role::Consumer),
            vec!["enable.auto.commit"]
        );
        let pr = s.client_config(Role::Producer);
        assert_eq!(pr.get("linger.ms"), Some("50"));
        assert_eq!(pr.get("fetch.max.bytes"), None);
        assert_eq!(pr.get("acks"), Some("all"));
    }

    #[test]
    fn consumer_only_properties_reach_no_producer() {
        let s = settings(&[
            ("group.instance.id", "pod-0"),
            ("session.timeout.ms", "10000"),
            ("heartbeat.interval.ms", "3000"),
            ("partition.assignment.strategy", "cooperative-sticky"),
            ("auto.offset.reset", "latest"),
            ("security.protocol", "SASL_SSL"),
            ("client.id", "lw"),
            ("producer.group.id", "asked-for"),
        ]);
        let producer: Vec<&str> = s.user_properties(Role::Producer).map(|(k, _)| k).collect();
        // Properties of every client, and one asked for by the `producer.` prefix, stay.
        assert_eq!(producer, vec!["client.id", "group.id", "security.protocol"]);
        let pr = s.client_config(Role::Producer);
        assert_eq!(pr.get("group.instance.id"), None);
        assert_eq!(pr.get("session.timeout.ms"), None);
        assert_eq!(pr.get("security.protocol"), Some("SASL_SSL"));
        let t = s.transactional_config("x");
        assert_eq!(t.get("group.instance.id"), None);
        assert_eq!(t.get("heartbeat.interval.ms"), None);
        // The consumer keeps every one of them.
        let c = s.client_config(Role::Consumer);
        assert_eq!(c.get("group.instance.id"), Some("pod-0"));
        assert_eq!(c.get("session.timeout.ms"), Some("10000"));
        assert_eq!(c.get("heartbeat.interval.ms"), Some("3000"));
        assert_eq!(
            c.get("partition.assignment.strategy"),
            Some("cooperative-sticky")
        );
        assert_eq!(c.get("auto.offset.reset"), Some("latest"));
        assert_eq!(c.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(c.get("group.id"), None);
        assert!(is_consumer_only("enable.auto.commit") && !is_consumer_only("linger.ms"));
    }

    #[test]
    fn producer_only_properties_reach_no_consumer() {
        let s = settings(&[
            ("linger.ms", "20"),
            ("compression.type", "lz4"),
            ("batch.size", "65536"),
            ("message.timeout.ms", "30000"),
            ("security.protocol", "SASL_SSL"),
            ("client.id", "lw"),
            ("consumer.linger.ms", "asked-for"),
        ]);
        let consumer: Vec<&str> = s.user_properties(Role::Consumer).map(|(k, _)| k).collect();
        // Properties of every client, and one asked for by the `consumer.` prefix, stay.
        assert_eq!(
            consumer,
            vec!["client.id", "linger.ms", "security.protocol"]
        );
        let c = s.client_config(Role::Consumer);
        assert_eq!(c.get("compression.type"), None);
        assert_eq!(c.get("batch.size"), None);
        assert_eq!(c.get("message.timeout.ms"), None);
        assert_eq!(c.get("linger.ms"), Some("asked-for"));
        assert_eq!(c.get("security.protocol"), Some("SASL_SSL"));
        // The producers, the transactional one too, keep every one of them.
        for pr in [s.client_config(Role::Producer), s.transactional_config("x")] {
            assert_eq!(pr.get("linger.ms"), Some("20"));
            assert_eq!(pr.get("compression.type"), Some("lz4"));
            assert_eq!(pr.get("batch.size"), Some("65536"));
            assert_eq!(pr.get("message.timeout.ms"), Some("30000"));
            assert_eq!(pr.get("security.protocol"), Some("SASL_SSL"));
        }
        assert!(is_producer_only("linger.ms") && !is_producer_only("client.id"));
        // No property is in both lists.
        assert!(CONSUMER_ONLY.iter().all(|k| !is_producer_only(k)));
    }

    #[test]
    fn only_the_transactional_producer_has_a_transactional_id() {
        let s = settings(&[
            ("transactional.id", "mine"),
            ("isolation.level", "read_uncommitted"),
        ]);
        assert_eq!(
            s.client_config(Role::Producer).get("transactional.id"),
            None
        );
        let t = s.transactional_config("x");
        assert_eq!(t.get("transactional.id"), Some("x"));
        assert_eq!(t.get("transaction.timeout.ms"), Some("10000"));
        assert_eq!(t.get("delivery.timeout.ms"), Some("10000"));
        assert_eq!(t.get("enable.idempotence"), Some("true"));
        assert_eq!(
            s.read_committed_config().get("isolation.level"),
            Some("read_committed")
        );
    }

    #[test]
    fn errors_sort_into_retriable_and_final() {
        use RDKafkaErrorCode as C;
        let delivery = |c| KafkaError::MessageProduction(c);
        assert_eq!(classify(&delivery(C::QueueFull)), ErrorClass::Retriable);
        assert_eq!(
            classify(&delivery(C::MessageTimedOut)),
            ErrorClass::Retriable
        );
        assert_eq!(
            classify(&delivery(C::NotEnoughReplicas)),
            ErrorClass::Retriable
        );
        assert_eq!(
            classify(&delivery(C::MessageSizeTooLarge)),
            ErrorClass::Final
        );
        assert_eq!(
            classify(&delivery(C::TopicAuthorizationFailed)),
            ErrorClass::Final
        );
        assert_eq!(
            classify(&KafkaError::ClientCreation("bad".into())),
            ErrorClass::Final
        );
        assert_eq!(error_kind(&delivery(C::MessageTimedOut)), "timed_out");
        assert!(is_auth_failure(&KafkaError::MetadataFetch(
            C::SaslAuthenticationFailed
        )));
    }
}
