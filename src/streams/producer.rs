//! The producer of internal records: envelopes to an explicit (topic, partition), keyed by
//! the 8-byte key hash ([`super::place`]).
//!
//! Idempotent (`enable.idempotence`, `acks=all`, from [`crate::kafka`]): a retry inside
//! librdkafka never duplicates or reorders a partition's records, so the order a stage reads
//! is the order the ingest wrote. Under `processing_guarantee = "exactly_once"` a stage
//! uses [`InternalProducer::transactional`]: its outputs (evidence for other partitions) and
//! its input offsets (sent with the stage consumer's group metadata, so a member the group
//! has fenced out cannot commit) are committed in one transaction, Kafka Streams'
//! `exactly_once_v2`. The error handling of `src/service/txn.rs` (retriable, abortable,
//! fatal, fenced) applies to these calls unchanged; the caller sorts the errors.

use std::time::{Duration, Instant};

use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientContext, TopicPartitionList};

use super::place;
use super::topics::{InternalTopics, Which};
use super::wire::{self, Kind};
use crate::exchange::Evidence;
use crate::kafka::{KafkaSettings, Role};

/// How long a send waits for room in a full producer queue before giving up.
const QUEUE_WAIT: Duration = Duration::from_secs(30);

/// How long one transactional call may block (as `src/service/txn.rs`).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The transactional id of an instance's stage producer: the service's own
/// (`service::txn::transactional_id`, stable per instance) with `-stages`, so the ingest's
/// producer and the stages' never fence each other.
pub fn stage_transactional_id(settings: &KafkaSettings, group: &str) -> String {
    format!(
        "{}-stages",
        crate::service::txn::transactional_id(settings, group)
    )
}

/// Sends internal records. Generic over the client's context so a stage task under exactly
/// once can write its evidence through the same transactional producer as its alerts.
pub struct InternalProducer<C: ClientContext + 'static = DefaultClientContext> {
    producer: FutureProducer<C>,
    topics: InternalTopics,
    partitions: u32,
}

impl InternalProducer {
    /// A producer to the internal topics of `group`, of `partitions` partitions each.
    pub fn new(
        settings: &KafkaSettings,
        group: &str,
        partitions: u32,
    ) -> Result<InternalProducer, KafkaError> {
        let producer: FutureProducer = settings.client_config(Role::Producer).create()?;
        Ok(InternalProducer {
            producer,
            topics: InternalTopics::for_group(group),
            partitions,
        })
    }

    /// A transactional producer with `id` (see [`stage_transactional_id`]): blocks on
    /// `init_transactions`, which fences an earlier producer with the same id and aborts the
    /// transaction it left open.
    pub fn transactional(
        settings: &KafkaSettings,
        group: &str,
        partitions: u32,
        id: &str,
    ) -> Result<InternalProducer, KafkaError> {
        let producer: FutureProducer = settings.transactional_config(id).create()?;
        producer.init_transactions(CALL_TIMEOUT)?;
        Ok(InternalProducer {
            producer,
            topics: InternalTopics::for_group(group),
            partitions,
        })
    }
}

impl<C: ClientContext + 'static> InternalProducer<C> {
    /// Internal records through an existing producer (shared with the alert sink: under
    /// exactly once both write in its one transaction).
    pub fn from_producer(
        producer: FutureProducer<C>,
        group: &str,
        partitions: u32,
    ) -> InternalProducer<C> {
        InternalProducer {
            producer,
            topics: InternalTopics::for_group(group),
            partitions,
        }
    }

    /// Begins a transaction (transactional producers only).
    pub fn begin(&self) -> Result<(), KafkaError> {
        self.producer.begin_transaction()
    }

    /// Adds the stage consumer's next offsets to the open transaction and commits it: the
    /// records sent in it and the input they came from become visible together.
    pub fn commit_with_offsets(
        &self,
        offsets: &TopicPartitionList,
        group: &ConsumerGroupMetadata,
    ) -> Result<(), KafkaError> {
        if offsets.count() > 0 {
            self.producer
                .send_offsets_to_transaction(offsets, group, CALL_TIMEOUT)?;
        }
        self.producer.commit_transaction(CALL_TIMEOUT)
    }

    /// Aborts the open transaction: nothing sent in it is ever read by a `read_committed`
    /// consumer.
    pub fn abort(&self) -> Result<(), KafkaError> {
        self.producer.abort_transaction(CALL_TIMEOUT)
    }

    /// The topics it writes.
    pub fn topics(&self) -> &InternalTopics {
        &self.topics
    }

    /// Queues `payload` (an envelope) to `partition` of `which`, keyed by `key`; the future
    /// resolves when the broker acknowledges it. Waits (up to 30 s) while the queue is full.
    pub fn send_raw(
        &self,
        which: Which,
        partition: i32,
        key: u64,
        payload: &[u8],
    ) -> Result<DeliveryFuture, KafkaError> {
        let k = place::key_bytes(key);
        let mut record = FutureRecord::to(self.topics.name(which))
            .partition(partition)
            .key(&k[..])
            .payload(payload);
        let deadline = Instant::now() + QUEUE_WAIT;
        loop {
            match self.producer.send_result(record) {
                Ok(f) => return Ok(f),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r))
                    if Instant::now() < deadline =>
                {
                    record = r;
                    // The producer's own thread drains the queue; give it a moment.
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// Queues a value for the owner of key hash `key` in `which`.
    pub fn send_keyed<T: serde::Serialize + ?Sized>(
        &self,
        which: Which,
        kind: Kind,
        key: u64,
        value: &T,
    ) -> Result<DeliveryFuture, KafkaError> {
        let bytes = wire::encode(kind, value);
        self.send_raw(
            which,
            place::partition_of(key, self.partitions),
            key,
            &bytes,
        )
    }

    /// Queues evidence to the owner of its destination, or to every partition for a
    /// broadcast (encoded once).
    pub fn send_evidence(&self, e: &Evidence) -> Result<Vec<DeliveryFuture>, KafkaError> {
        let (target, key) = place::target(e.dest, self.partitions);
        let bytes = wire::encode(Kind::Evidence, e);
        target
            .partitions(self.partitions)
            .map(|p| self.send_raw(Which::Evidence, p, key, &bytes))
            .collect()
    }

    /// Waits until every queued record is acknowledged (or `timeout`).
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }
}
