//! The partitioned engine spread over instances through Kafka (issue 11,
//! `docs/sharding.md` step 4): what lets several `linewatch run` instances in one group
//! share every stage.
//!
//! # Layout
//!
//! Engine side (no Kafka: the stages exchange plain serde values, so the model is tested
//! exactly in `tests/partitions.rs` with in-memory queues standing in for the topics):
//! - [`ingest`]: decodes and validates each record once and routes it, as owned
//!   [`message`]s, to the partitions that own its keys.
//! - [`stage`]: one partition of the detectors: runs the records routed to it, sends
//!   evidence for other partitions' keys to an outbox, applies evidence at its barriers.
//!
//! Kafka side:
//! - [`topics`]: the internal topics' names (from the consumer group), their creation and
//!   the start check that they are co-partitioned.
//! - [`place`]: which internal partition a key hash goes to: the engine's own
//!   [`crate::engine::shard_of`], so a key group is a partition.
//! - [`wire`]: the versioned binary envelope every internal record travels in.
//! - [`assign`]: the stage consumer (`<group>-stages`), which must own partition *p* of all
//!   three topics together, and the set of whole stage partitions a member owns.
//! - [`producer`]: the producer of internal records, to an explicit partition.
//!
//! Configuration: [`crate::config::StreamsConfig`] (`[streams]`).

pub mod assign;
pub mod ingest;
pub mod message;
pub mod place;
pub mod producer;
pub mod stage;
pub mod topics;
pub mod wire;
