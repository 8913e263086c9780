//! The engine as partitions spread over instances (issue 11, `docs/sharding.md` step 4).
//!
//! - [`ingest`]: decodes and validates each record once and routes it, as owned
//!   [`message`]s, to the partitions that own its keys.
//! - [`stage`]: one partition of the detectors: runs the records routed to it, sends
//!   evidence for other partitions' keys to an outbox, applies evidence at its barriers.
//!
//! No Kafka here: the stages exchange plain serde values, so the model is tested exactly
//! (`tests/partitions.rs`) with in-memory queues standing in for the internal topics.

pub mod ingest;
pub mod message;
pub mod stage;
