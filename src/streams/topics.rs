//! The internal topics: names, creation, and the start check that they are co-partitioned.
//!
//! Names come from the consumer group, so they are stable across versions and two groups
//! never share them (Kafka Streams names its internal topics after the application id the
//! same way): `<group>-by-line`, `<group>-by-handset`, `<group>-evidence`. At start the
//! service creates the missing ones with `streams.internal_partitions` partitions, then
//! checks that all three have exactly that many: a partition is a range of key groups
//! ([`super::place`]), so topics of different counts would send one key's records and its
//! evidence to different owners. Anything else is one line saying which topics have which
//! counts and what to do, and `run` stops (exit 1).

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::config::StreamsConfig;
use crate::kafka::{self, ErrorClass, KafkaSettings, Role};

/// The three internal topics of one consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternalTopics {
    /// Valid records re-keyed by line: once for `from`, once for `to`.
    pub by_line: String,
    /// Valid records with a handset, keyed by it.
    pub by_handset: String,
    /// Evidence, keyed by the receiving key (line or handset); broadcasts to every partition.
    pub evidence: String,
}

/// Which internal topic a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Which {
    ByLine,
    ByHandset,
    Evidence,
}

impl Which {
    /// The three, in the order [`InternalTopics::all`] gives them.
    pub const ALL: [Which; 3] = [Which::ByLine, Which::ByHandset, Which::Evidence];

    /// A fixed label (metrics, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            Which::ByLine => "by_line",
            Which::ByHandset => "by_handset",
            Which::Evidence => "evidence",
        }
    }
}

impl InternalTopics {
    /// The internal topics of consumer group `group`.
    pub fn for_group(group: &str) -> Self {
        InternalTopics {
            by_line: format!("{group}-by-line"),
            by_handset: format!("{group}-by-handset"),
            evidence: format!("{group}-evidence"),
        }
    }

    /// The three names, in [`Which::ALL`] order.
    pub fn all(&self) -> [&str; 3] {
        [&self.by_line, &self.by_handset, &self.evidence]
    }

    /// The name of one of them.
    pub fn name(&self, which: Which) -> &str {
        match which {
            Which::ByLine => &self.by_line,
            Which::ByHandset => &self.by_handset,
            Which::Evidence => &self.evidence,
        }
    }

    /// Which of them `topic` is, if any.
    pub fn which(&self, topic: &str) -> Option<Which> {
        Which::ALL.into_iter().find(|w| self.name(*w) == topic)
    }
}

/// The consumer group the stages read the internal topics as: its own, so the input's group
/// (the ingest) and the stages are assigned independently.
pub fn stage_group(group: &str) -> String {
    format!("{group}-stages")
}

/// The topic-level configuration the service creates internal topics with.
pub fn topic_config(cfg: &StreamsConfig) -> Vec<(&'static str, String)> {
    vec![
        // Internal records are read within seconds and never compacted: each is a record,
        // not the latest value of a key.
        ("cleanup.policy", "delete".to_string()),
        ("retention.ms", (cfg.retention_s * 1000).to_string()),
        // Event time travels in the envelope; the broker's timestamp is the producer's, so
        // retention counts from when a record was written.
        ("message.timestamp.type", "CreateTime".to_string()),
    ]
}

/// Why the internal topics could not be made ready. Each displays as one line.
#[derive(Debug, thiserror::Error)]
pub enum TopicsError {
    /// The three topics do not all have `streams.internal_partitions` partitions.
    #[error("{0}")]
    NotCoPartitioned(String),
    /// The broker refused to create a topic for good (rights, replication factor, policy).
    #[error("cannot create internal topic {topic} ({code:?}): {advice}")]
    Create {
        topic: String,
        code: RDKafkaErrorCode,
        advice: String,
    },
    /// A broker request failed; `retriable` says whether trying again may help.
    #[error("internal topics: {what} failed ({kind}): {message}")]
    Kafka {
        what: &'static str,
        kind: &'static str,
        message: String,
        retriable: bool,
    },
    /// A created topic did not show in the metadata in time.
    #[error("internal topics: {0} not in the brokers' metadata after {1:?}")]
    NotVisible(String, Duration),
}

impl TopicsError {
    /// Whether trying again later may help (the broker unreachable or busy).
    pub fn retriable(&self) -> bool {
        match self {
            TopicsError::Kafka { retriable, .. } => *retriable,
            TopicsError::NotVisible(..) => true,
            _ => false,
        }
    }

    fn kafka(what: &'static str, e: KafkaError) -> Self {
        TopicsError::Kafka {
            what,
            kind: kafka::error_kind(&e),
            retriable: kafka::classify(&e) == ErrorClass::Retriable,
            message: e.to_string(),
        }
    }
}

/// The partition counts found, one per internal topic, in [`Which::ALL`] order.
pub type Counts = [(String, usize); 3];

/// Creates the missing internal topics of `group` and checks the three are co-partitioned
/// at `cfg.internal_partitions`. Blocking (admin requests and metadata, each bounded by
/// `timeout`): call it from a blocking thread. Idempotent: a second call creates nothing.
pub fn ensure(
    settings: &KafkaSettings,
    group: &str,
    cfg: &StreamsConfig,
    timeout: Duration,
) -> Result<InternalTopics, TopicsError> {
    let topics = InternalTopics::for_group(group);
    let admin: AdminClient<DefaultClientContext> = settings
        .client_config(Role::Producer)
        .create()
        .map_err(|e| TopicsError::kafka("creating the admin client", e))?;
    let partitions = cfg.internal_partitions as i32;
    let config = topic_config(cfg);
    let news: Vec<NewTopic> = topics
        .all()
        .into_iter()
        .map(|name| {
            config.iter().fold(
                NewTopic::new(
                    name,
                    partitions,
                    TopicReplication::Fixed(cfg.replication_factor),
                ),
                |t, (k, v)| t.set(k, v),
            )
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(timeout));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| TopicsError::Kafka {
            what: "starting the admin runtime",
            kind: "other",
            message: e.to_string(),
            retriable: false,
        })?;
    let results = rt
        .block_on(admin.create_topics(news.iter(), &opts))
        .map_err(|e| TopicsError::kafka("creating topics", e))?;
    for r in results {
        match r {
            Ok(name) => tracing::info!(
                topic = %name,
                partitions,
                replication_factor = cfg.replication_factor,
                "created internal topic"
            ),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(create_error(topic, code, cfg)),
        }
    }
    let counts = partition_counts(&admin, &topics, timeout)?;
    check_co_partitioned(&counts, cfg.internal_partitions)?;
    Ok(topics)
}

fn create_error(topic: String, code: RDKafkaErrorCode, cfg: &StreamsConfig) -> TopicsError {
    use RDKafkaErrorCode as C;
    let advice = match code {
        C::InvalidReplicationFactor => format!(
            "streams.replication_factor = {} is more than the brokers can hold; set it to at most \
             the number of brokers, or -1 for the brokers' default",
            cfg.replication_factor
        ),
        C::TopicAuthorizationFailed | C::ClusterAuthorizationFailed => format!(
            "the service may not create topics; create it with {} partitions, or grant CREATE on it",
            cfg.internal_partitions
        ),
        C::PolicyViolation | C::InvalidConfig => format!(
            "the brokers' topic policy refused it; create it with {} partitions and retention.ms = {}",
            cfg.internal_partitions,
            cfg.retention_s * 1000
        ),
        _ => "see the brokers' log".to_string(),
    };
    TopicsError::Create {
        topic,
        code,
        advice,
    }
}

/// The partition counts of the three topics, waiting (up to `timeout`) for topics just
/// created to show in the metadata with their partitions.
fn partition_counts(
    admin: &AdminClient<DefaultClientContext>,
    topics: &InternalTopics,
    timeout: Duration,
) -> Result<Counts, TopicsError> {
    let deadline = Instant::now() + timeout;
    let mut counts: Vec<(String, usize)> = Vec::with_capacity(3);
    for name in topics.all() {
        loop {
            let md = admin
                .inner()
                .fetch_metadata(Some(name), timeout)
                .map_err(|e| TopicsError::kafka("reading topic metadata", e))?;
            let t = md.topics().iter().find(|t| t.name() == name);
            let code = t.and_then(|t| t.error()).map(RDKafkaErrorCode::from);
            match (t, code) {
                (Some(t), None) if !t.partitions().is_empty() => {
                    counts.push((name.to_string(), t.partitions().len()));
                    break;
                }
                // Waiting cannot fix a refusal (no right to describe the topic); a topic
                // just created may still be unknown to the broker answering.
                (_, Some(code))
                    if code != RDKafkaErrorCode::UnknownTopicOrPartition
                        && kafka::classify_code(code) == ErrorClass::Final =>
                {
                    let e = KafkaError::MetadataFetch(code);
                    return Err(TopicsError::kafka("reading topic metadata", e));
                }
                _ if Instant::now() >= deadline => {
                    return Err(TopicsError::NotVisible(name.to_string(), timeout))
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
    // Three names were pushed, one per loop above.
    Ok(counts.try_into().expect("three internal topics"))
}

/// Ok if every topic has `want` partitions; else the one-line error naming each topic's
/// count and what to do.
pub fn check_co_partitioned(counts: &Counts, want: u32) -> Result<(), TopicsError> {
    let want = want as usize;
    if counts.iter().all(|(_, n)| *n == want) {
        return Ok(());
    }
    let found = counts
        .iter()
        .map(|(t, n)| format!("{t} has {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let first = counts[0].1;
    let advice = if counts.iter().all(|(_, n)| *n == first) {
        format!(
            "set streams.internal_partitions = {first} to use them as they are, or stop every \
             instance, let the stages drain, delete the three topics and start again to have \
             them created with {want}"
        )
    } else {
        let odd: Vec<&str> = counts
            .iter()
            .filter(|(_, n)| *n != want)
            .map(|(t, _)| t.as_str())
            .collect();
        format!(
            "stop every instance, let the stages drain, delete {} and start again to have it \
             created with {want} (the partition count of a topic cannot be lowered, and raising \
             it moves keys between partitions)",
            odd.join(" and ")
        )
    };
    Err(TopicsError::NotCoPartitioned(format!(
        "internal topics are not co-partitioned: streams.internal_partitions = {want}, but \
         {found} partitions; {advice}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(a: usize, b: usize, c: usize) -> Counts {
        let t = InternalTopics::for_group("g");
        [(t.by_line, a), (t.by_handset, b), (t.evidence, c)]
    }

    #[test]
    fn names_come_from_the_group() {
        let t = InternalTopics::for_group("lw");
        assert_eq!(t.all(), ["lw-by-line", "lw-by-handset", "lw-evidence"]);
        assert_eq!(stage_group("lw"), "lw-stages");
        for w in Which::ALL {
            assert_eq!(t.which(t.name(w)), Some(w));
        }
        assert_eq!(t.which("lw-input"), None);
    }

    #[test]
    fn the_co_partition_check_names_every_count_in_one_line() {
        check_co_partitioned(&counts(16, 16, 16), 16).unwrap();
        let e = check_co_partitioned(&counts(6, 16, 16), 16)
            .unwrap_err()
            .to_string();
        assert!(!e.contains('\n'), "{e}");
        assert!(
            e.starts_with(
                "internal topics are not co-partitioned: streams.internal_partitions = 16, but \
                 g-by-line has 6, g-by-handset has 16, g-evidence has 16 partitions; stop every \
                 instance, let the stages drain, delete g-by-line and start again"
            ),
            "{e}"
        );
        let e = check_co_partitioned(&counts(8, 8, 8), 16)
            .unwrap_err()
            .to_string();
        assert!(e.contains("set streams.internal_partitions = 8"), "{e}");
    }

    #[test]
    fn topics_are_created_with_the_configured_retention_and_delete_policy() {
        let cfg = StreamsConfig::default();
        let c = topic_config(&cfg);
        assert!(c.contains(&("cleanup.policy", "delete".into())));
        assert!(c.contains(&("retention.ms", "604800000".into())));
    }
}
