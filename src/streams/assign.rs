//! The stage consumer: the consumer group `<group>-stages` over the three internal topics,
//! where a member must own partition *p* of all three together.
//!
//! A stage partition *p* is the key groups of [`super::place::key_groups`]`(p, P)`: their
//! records by line, by handset and their evidence. A member that held *p* of one topic and
//! not of another would see a line's records without the evidence for it. The `range`
//! assignor gives that for free on co-partitioned topics with the same subscription: it
//! sorts the members the same way for every topic and gives member *i* the same range of
//! partition numbers in each (Kafka Streams relies on the same property). So the stage
//! consumer always uses `range`, whatever `[kafka]` says, and checks every assignment
//! anyway: a partition held for some topics only (a member subscribed differently, an
//! assignor changed behind our back) is **partial**: counted, logged once, paused, and its
//! records are not yielded. Only whole partitions are processed ([`owned_stage_partitions`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, TopicPartitionList};
use serde::de::DeserializeOwned;

use super::place;
use super::topics::{stage_group, InternalTopics, Which};
use super::wire::{self, Kind, WireError};
use crate::kafka::{KafkaSettings, Role};

/// The stage partitions one member holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ownership {
    /// Partitions held for all three topics: the ones to process.
    pub whole: BTreeSet<i32>,
    /// Partitions held for some of the topics only, with the ones held: never processed.
    pub partial: BTreeMap<i32, BTreeSet<Which>>,
}

/// Sorts an assignment (topic, partition pairs) into whole and partial stage partitions;
/// topics other than the internal ones are ignored.
pub fn owned_stage_partitions<'a>(
    assigned: impl IntoIterator<Item = (&'a str, i32)>,
    topics: &InternalTopics,
) -> Ownership {
    let mut held: BTreeMap<i32, BTreeSet<Which>> = BTreeMap::new();
    for (topic, p) in assigned {
        if let Some(w) = topics.which(topic) {
            held.entry(p).or_default().insert(w);
        }
    }
    let mut out = Ownership::default();
    for (p, which) in held {
        if which.len() == Which::ALL.len() {
            out.whole.insert(p);
        } else {
            out.partial.insert(p, which);
        }
    }
    out
}

/// The pairs of a partition list.
fn pairs(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

/// What the rebalance callbacks share with the consumer's owner.
#[derive(Debug, Default)]
struct Shared {
    ownership: Ownership,
    /// Partitions already logged as partial: each is logged once.
    logged: BTreeSet<i32>,
    /// Assignments seen (each assign callback), for callers waiting on a rebalance.
    assignments: u64,
    /// An eager revoke arrived while revokes are deferred: the partitions are still
    /// assigned (the group waits for this member) until [`StageConsumer::finish_revoke`].
    revoke_pending: bool,
}

/// The stage consumer's context: checks each assignment as it arrives.
pub struct StageContext {
    topics: InternalTopics,
    shared: Mutex<Shared>,
    partial_total: AtomicU64,
    /// See [`StageConsumer::defer_revokes`].
    defer_revoke: AtomicBool,
}

impl StageContext {
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        // A panic elsewhere while holding the lock leaves plain data: keep using it.
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ClientContext for StageContext {
    /// The service's client settings turn librdkafka statistics on (the input consumer's
    /// lag gauges); the stage consumer has no use for them, and the default handler logs
    /// each one whole at info.
    fn stats(&self, _: rdkafka::Statistics) {}
}

impl ConsumerContext for StageContext {
    /// librdkafka's own strategy (as the trait's default), except that an eager revoke
    /// can be held ([`StageConsumer::defer_revokes`]): the partitions stay assigned, and the
    /// group's rebalance waits for this member, until the stage task has saved their state
    /// and calls [`StageConsumer::finish_revoke`]. So the next owner, assigned only once
    /// every member has rejoined, finds the state saved at the hand-over (Kafka Streams
    /// commits and checkpoints in `onPartitionsRevoked` for the same reason).
    fn rebalance(&self, c: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(c.rebalance_protocol(), RebalanceProtocol::Cooperative);
        let done: KafkaResult<()> = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let r = if cooperative {
                    c.incremental_assign(tpl)
                } else {
                    c.assign(tpl)
                };
                self.post_rebalance(c, &Rebalance::Assign(tpl));
                r
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS
                // Lost (the session expired): another member may own them already, so
                // saving their state now could overwrite its newer checkpoint.
                if !cooperative
                    && self.defer_revoke.load(Ordering::Acquire)
                    && !c.assignment_lost() =>
            {
                self.lock().revoke_pending = true;
                return;
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let r = if cooperative {
                    c.incremental_unassign(tpl)
                } else {
                    c.unassign()
                };
                self.post_rebalance(c, &Rebalance::Revoke(tpl));
                r
            }
            other => {
                let e = KafkaError::Rebalance(other.into());
                let r = if cooperative {
                    c.incremental_unassign(tpl)
                } else {
                    c.unassign()
                };
                self.post_rebalance(c, &Rebalance::Error(e));
                r
            }
        };
        if let Err(e) = done {
            tracing::warn!(error = %e, "stage consumer could not apply a rebalance");
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let assigned = pairs(tpl);
                let own = owned_stage_partitions(
                    assigned.iter().map(|(t, p)| (t.as_str(), *p)),
                    &self.topics,
                );
                // A partition paused as partial under an earlier assignment and whole now
                // must be read again; whether librdkafka keeps an application's pause over
                // an eager rebalance depends on its version, and a resume costs nothing.
                let mut resume = TopicPartitionList::new();
                for (topic, p) in &assigned {
                    if own.whole.contains(p) {
                        resume.add_partition(topic, *p);
                    }
                }
                if resume.count() > 0 {
                    if let Err(e) = consumer.resume(&resume) {
                        tracing::warn!(error = %e, "could not resume whole stage partitions");
                    }
                }
                if !own.partial.is_empty() {
                    self.partial_total
                        .fetch_add(own.partial.len() as u64, Ordering::Relaxed);
                    // Not processing them is not enough: paused, their records do not fill
                    // the prefetch queue either.
                    let mut pause = TopicPartitionList::new();
                    for (topic, p) in &assigned {
                        if own.partial.contains_key(p) {
                            pause.add_partition(topic, *p);
                        }
                    }
                    if let Err(e) = consumer.pause(&pause) {
                        tracing::warn!(error = %e, "could not pause partial stage partitions");
                    }
                }
                let mut shared = self.lock();
                let new: Vec<i32> = own
                    .partial
                    .keys()
                    .copied()
                    .filter(|p| !shared.logged.contains(p))
                    .collect();
                if !new.is_empty() {
                    shared.logged.extend(&new);
                    tracing::warn!(
                        partitions = ?new,
                        "stage partitions assigned for some internal topics only: not processed \
                         (the stage consumer needs the range assignor and the same subscription \
                         on every member)"
                    );
                }
                tracing::info!(whole = ?own.whole, "stage partitions assigned");
                shared.ownership = own;
                shared.assignments += 1;
            }
            Rebalance::Revoke(_) => self.lock().ownership = Ownership::default(),
            Rebalance::Error(e) => tracing::warn!(error = %e, "stage consumer rebalance error"),
        }
    }
}

/// An internal record as read: where from, its key hash, its envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    pub which: Which,
    pub partition: i32,
    pub offset: i64,
    /// The 8-byte key hash; `None` for a record without a key of 8 bytes.
    pub key: Option<u64>,
    pub payload: Vec<u8>,
}

impl Incoming {
    /// The envelope's kind, after checking its header.
    pub fn kind(&self) -> Result<Kind, WireError> {
        wire::kind_of(&self.payload)
    }

    /// The value, which must be an envelope of `kind`.
    pub fn decode<T: DeserializeOwned>(&self, kind: Kind) -> Result<T, WireError> {
        wire::decode(&self.payload, kind)
    }
}

/// The stage consumer of one instance.
pub struct StageConsumer {
    consumer: BaseConsumer<StageContext>,
    context: Arc<StageContext>,
    skipped: AtomicU64,
}

impl StageConsumer {
    /// Joins `<group>-stages` and subscribes to the internal topics of `group`.
    /// `read_committed` under `processing_guarantee = "exactly_once"`.
    pub fn new(
        settings: &KafkaSettings,
        group: &str,
        read_committed: bool,
    ) -> Result<StageConsumer, KafkaError> {
        let topics = InternalTopics::for_group(group);
        let mut cfg = if read_committed {
            settings.read_committed_config()
        } else {
            settings.client_config(Role::Consumer)
        };
        cfg.set("group.id", stage_group(group));
        // Co-partitioned assignment depends on it (module docs): not the user's choice.
        cfg.set("partition.assignment.strategy", "range");
        // The stages read evidence to its end as it comes; an end-of-partition event is
        // not a record.
        cfg.set("enable.partition.eof", "false");
        let context = StageContext {
            topics: topics.clone(),
            shared: Mutex::new(Shared::default()),
            partial_total: AtomicU64::new(0),
            defer_revoke: AtomicBool::new(false),
        };
        let consumer: BaseConsumer<StageContext> = cfg.create_with_context(context)?;
        consumer.subscribe(&topics.all())?;
        let context = consumer.context().clone();
        Ok(StageConsumer {
            consumer,
            context,
            skipped: AtomicU64::new(0),
        })
    }

    /// The stage partitions this member holds whole (all three topics): the ones it
    /// processes. Empty before the first assignment and during a rebalance.
    pub fn owned_stage_partitions(&self) -> BTreeSet<i32> {
        self.context.lock().ownership.whole.clone()
    }

    /// Whole and partial stage partitions of the current assignment.
    pub fn ownership(&self) -> Ownership {
        self.context.lock().ownership.clone()
    }

    /// Assignments received so far.
    pub fn assignments(&self) -> u64 {
        self.context.lock().assignments
    }

    /// Partial stage partitions seen over all assignments (each counted per assignment).
    pub fn partial_total(&self) -> u64 {
        self.context.partial_total.load(Ordering::Relaxed)
    }

    /// Holds eager revokes from now on (`true`) until [`Self::finish_revoke`], so the stage
    /// task can save the revoked partitions' state before the group moves them; `false`
    /// (before closing: a close revokes too, and nothing would finish it) applies them at
    /// once again, including one held now.
    pub fn defer_revokes(&self, on: bool) {
        self.context.defer_revoke.store(on, Ordering::Release);
        if !on && self.revoke_pending() {
            self.finish_revoke();
        }
    }

    /// A revoke is held: the stage task saves what it owns, then calls
    /// [`Self::finish_revoke`].
    pub fn revoke_pending(&self) -> bool {
        self.context.lock().revoke_pending
    }

    /// Gives up the whole assignment a held revoke asked for: the group's rebalance goes on.
    pub fn finish_revoke(&self) {
        let mut shared = self.context.lock();
        if !shared.revoke_pending {
            return;
        }
        shared.revoke_pending = false;
        shared.ownership = Ownership::default();
        drop(shared);
        if let Err(e) = self.consumer.unassign() {
            tracing::warn!(error = %e, "stage consumer could not give up its partitions");
        }
    }

    /// Records read from a partition not held whole, and so not yielded.
    pub fn skipped_total(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// The next internal record of a whole stage partition, waiting at most `timeout`;
    /// `None` when none came. Rebalances run inside this call.
    pub fn poll(&self, timeout: Duration) -> Option<Result<Incoming, KafkaError>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = match self.consumer.poll(left)? {
                Ok(m) => m,
                Err(e) => return Some(Err(e)),
            };
            let which = self.context.topics.which(m.topic());
            let whole = self.context.lock().ownership.whole.contains(&m.partition());
            match which {
                Some(which) if whole => {
                    return Some(Ok(Incoming {
                        which,
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key().and_then(place::key_of),
                        payload: m.payload().unwrap_or_default().to_vec(),
                    }))
                }
                _ => {
                    self.skipped.fetch_add(1, Ordering::Relaxed);
                    if Instant::now() >= deadline {
                        return None;
                    }
                }
            }
        }
    }

    /// The underlying consumer (offsets, positions, group metadata for transactions).
    pub fn consumer(&self) -> &BaseConsumer<StageContext> {
        &self.consumer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_is_owned_whole_only_with_all_three_topics() {
        let t = InternalTopics::for_group("g");
        let assigned = [
            ("g-by-line", 0),
            ("g-by-handset", 0),
            ("g-evidence", 0),
            ("g-by-line", 1),
            ("g-evidence", 1),
            ("g-by-handset", 2),
            ("g-by-line", 3),
            ("g-by-handset", 3),
            ("g-evidence", 3),
            ("cdr-events", 4),
        ];
        let own = owned_stage_partitions(assigned, &t);
        assert_eq!(own.whole, BTreeSet::from([0, 3]));
        assert_eq!(
            own.partial,
            BTreeMap::from([
                (1, BTreeSet::from([Which::ByLine, Which::Evidence])),
                (2, BTreeSet::from([Which::ByHandset])),
            ])
        );
        assert_eq!(owned_stage_partitions([], &t), Ownership::default());
    }
}
