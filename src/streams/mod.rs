//! The Kafka side of the partitioned engine (issue 11, `docs/sharding.md` "Over Kafka"):
//! what lets several `linewatch run` instances in one group share every stage.
//!
//! # Layout
//!
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
pub mod place;
pub mod producer;
pub mod topics;
pub mod wire;
