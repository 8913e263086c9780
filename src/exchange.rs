//! The exchanges of the partitioned engine (`docs/sharding.md`): the one place where a
//! record's work on one key hands evidence to another key.
//!
//! The engine's state is owned by key: a *number* (a line, a customer, a runner: one key
//! space) or a *handset*. A record is processed in up to three **roles**, each by the shard
//! that owns the role's key: as *sender* (its `from`), as *recipient* (its `to`), as *handset*
//! (its `imei`). In a role a detector reads and writes only the state of that role's key.
//! Anything it learns about another key it [`Sent`]s as evidence; the engine delivers
//! evidence at the next **barrier** (the watermark crossing a multiple of
//! `engine.exchange_epoch_s`), to the shard owning the destination, in an order that depends
//! on the input alone. So the alerts are the same whatever the number of shards: one shard
//! obeys the same rule (evidence waits for the barrier even when it is for a key the same
//! shard owns).
//!
//! Rule for findings: a finding's *subject* is a key of the role (or of the evidence) that
//! made it, so its cooldown and its `deal_line` credit are local; every other key a finding
//! names is reached through an exchange.
//!
//! These types are what issue 11 serialises onto Kafka topics between instances, so they are
//! plain data (serde), keyed by the 64-bit id hashes of [`crate::ids::id`].

use serde::{Deserialize, Serialize};

use crate::event::Millis;

/// A short string held inline when it is at most [`Name::INLINE`] bytes, else on the heap:
/// a pseudonym (a short prefix and 16 hex digits) or an event id (the generator's are 17
/// bytes) costs no allocation. Every handset new to `runner_movement` sends its pseudonym
/// and its record's event id to its SIM's shard ([`Body::HandsetArrived`]): on the bench
/// mix (a new handset in two records of five) an allocation and a free per string were a
/// large part of what the detector added. Serialised as the string it holds, so checkpoints
/// and evidence read the same as with a `Box<str>`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Name(Repr);

/// Private, so an inline `Name` is only ever made from a `&str` (see [`Name::as_str`]).
#[derive(Clone, PartialEq, Eq, Hash)]
enum Repr {
    Inline { len: u8, bytes: [u8; Name::INLINE] },
    Heap(Box<str>),
}

impl Name {
    /// 22 bytes and a length inline, beside the variant's tag: 24 bytes in all, as many as
    /// a `Box<str>` and its heap part would take for an 8-byte pseudonym.
    pub const INLINE: usize = 22;

    pub fn new(s: &str) -> Self {
        let b = s.as_bytes();
        if b.len() <= Self::INLINE {
            let mut bytes = [0; Self::INLINE];
            bytes[..b.len()].copy_from_slice(b);
            // At most INLINE (22) bytes: fits a u8.
            return Name(Repr::Inline {
                len: b.len() as u8,
                bytes,
            });
        }
        Name(Repr::Heap(s.into()))
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            // SAFETY: an inline name is made only by `Name::new` (the representation is
            // private), which copies the whole of a `&str` (valid UTF-8, not cut within a
            // character) and its length. Checked, the read cost a UTF-8 validation each
            // time a piece of evidence was applied (2 M instructions a pass of the bench).
            Repr::Inline { len, bytes } => unsafe {
                std::str::from_utf8_unchecked(&bytes[..usize::from(*len)])
            },
            Repr::Heap(s) => s,
        }
    }

    /// Heap bytes held (for the state's size).
    pub fn heap_len(&self) -> usize {
        match &self.0 {
            Repr::Inline { .. } => 0,
            Repr::Heap(s) => s.len(),
        }
    }
}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Self {
        Name::new(s)
    }
}

impl Serialize for Name {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<str>::deserialize(d)?;
        Ok(Name::new(&s))
    }
}

impl Default for Name {
    fn default() -> Self {
        Name::new("")
    }
}

impl std::ops::Deref for Name {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<String> for Name {
    fn from(s: String) -> Self {
        Name::new(&s)
    }
}

impl From<Box<str>> for Name {
    fn from(s: Box<str>) -> Self {
        match s.len() <= Name::INLINE {
            true => Name::new(&s),
            false => Name(Repr::Heap(s)),
        }
    }
}

/// Which of a record's keys a detector is being shown the record for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    /// The record's `from` number: the shard owning it.
    Sender,
    /// The record's `to` number.
    Recipient,
    /// The record's handset (`imei`), when it has one.
    Handset,
    /// Not a record: evidence applied at a barrier (see [`crate::detect::Detector::on_evidence`]).
    Barrier,
}

impl Role {
    /// The roles a record is processed in, in this order (records with no `imei` skip the
    /// last).
    pub const RECORD: [Role; 3] = [Role::Sender, Role::Recipient, Role::Handset];
}

/// The key whose owner applies a piece of evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Dest {
    /// A number (line, customer, runner) by its id hash.
    Number(u64),
    /// A handset by its `imei` hash.
    Handset(u64),
    /// Every shard (rare, replicated facts: lines with deal evidence).
    Every,
}

/// What evidence says. One variant per exchange; each names the detector that sends and
/// the one that applies it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Body {
    // customer_fan_in (crew and crew callbacks): sent by `customer_fan_in`, applied by
    // `customer_fan_in`.
    /// A line with a customer list (`crew_min_customers`) called the destination number,
    /// which is now its crew (a runner) for `crew_retention_s`. Sent in the line's sender
    /// role, applied on the runner's shard. Replaces the crew rule writing `crew[runner]`
    /// from the line's record (the line's list is only on the line's shard).
    CrewEnrol {
        /// The line's id hash.
        line: u64,
        /// The line's pseudonym: the callback finding it may lead to names the line.
        line_name: Box<str>,
    },
    /// A number that is the crew of the destination line called or texted `customer`:
    /// sent in the runner's sender role (which holds its crew entry), applied on the line's
    /// shard, which judges it against the customer's pending contact to the line (by event
    /// times: the contact at or before `Evidence::at`, within `callback_within_s`). Replaces
    /// the callback check reading `crew[sender]` and `pending[customer]` in one place.
    CrewCallback {
        /// The customer's id hash.
        customer: u64,
        /// The line's pseudonym (the finding's subject, which the line's shard does not
        /// store).
        line_name: Box<str>,
    },

    // line_handover: sent by `line_handover` on the new line's shard, applied by
    // `line_handover` on every shard (the query), then on the new line's shard (the answers).
    /// `line_handover` (new line's shard) → `line_handover` on every shard ([`Dest::Every`]):
    /// a new line's audience, to be compared with the earlier lines each shard has sketched
    /// and counted exactly against their contact lists. Replaces `best_predecessor` scanning
    /// every sketch and reading every earlier line's contacts in place. Sent when the new
    /// line's audience reaches its next evaluation point (a few times per new blasting line).
    AudienceQuery {
        /// The new line's id: it is never its own predecessor, and the answers go to it.
        line: u64,
        /// The line's count of queries sent, this one included: the answers name it.
        query: u32,
        /// Its first record (seconds): only lines first seen before it are candidates.
        first_seen_s: u32,
        /// Its distinct recipients at the query (the estimate's denominator, and the
        /// finding's `new_line_recipients`).
        recipients: u32,
        /// Its latest handset (fingerprint; 0 = none), for `shared_handset`.
        handset_fp: u32,
        /// Its MinHash minima: a sketched line sharing one is a candidate.
        mins: Box<[u32]>,
        /// Its recipients' fingerprints, sorted and distinct, for the exact overlap count
        /// (4 bytes a recipient: at most `max_recipients_per_line`).
        fps: Box<[u32]>,
    },
    /// `line_handover` (a shard owning a candidate) → `line_handover` on the new line's shard
    /// ([`Dest::Number`] of the new line): that shard's best earlier line for an
    /// [`Body::AudienceQuery`], sent only when its overlap reaches `min_overlap`, hinted
    /// `[u64::MAX - overlap bits, earlier]` so every shard's answers apply best first (ties:
    /// lower id) and the first one applied is the one the whole scan used to pick.
    AudienceMatch {
        /// The query answered (its `query`).
        query: u32,
        /// The query's `recipients` and `first_seen_s`, echoed: the new line's sketch has
        /// moved on since, and the finding reports the figures it was judged on.
        recipients: u32,
        first_seen_s: u32,
        /// The earlier line: id and pseudonym (the finding names it in `related`/`lines`).
        earlier: u64,
        earlier_line: Box<str>,
        earlier_first_seen_s: u32,
        earlier_last_text_s: u32,
        earlier_recipients: u32,
        /// Share of the new audience that is the earlier line's.
        overlap: f64,
        /// Sketch Jaccard of the two audiences.
        jaccard: f64,
        /// Whether `overlap` was counted from the contact lists (else a MinHash estimate).
        exact: bool,
        /// Whether both lines were last seen in the same handset.
        shared_handset: bool,
        /// The shard (or stage partition) that answered: the new line counts each sender
        /// once, so an answer delivered twice (at least once, a partition rebuilt) does not
        /// stand for another shard's.
        from: u16,
    },
    /// `line_handover` → `line_handover`, both on the new line's shard ([`Dest::Number`] of
    /// the new line), sent while applying an [`Body::AudienceMatch`]: decide in the round
    /// after every answer has been seen. Answers apply in the order of their queries' event
    /// times, and a line's records may arrive out of event-time order, so the first answer
    /// applied may be to a later-sent query than the one the single scan matched on; the
    /// decision waits for all of them and takes the earliest-sent query's best answer (this
    /// message for that query makes the finding, with that query's event time and id).
    AudienceDecide {
        /// The query whose best answer was kept when this was sent.
        query: u32,
    },

    // ---- handset group: `handset_churn`, `runner_movement`, `deal_line` ----
    /// `deal_line` (on a finding made on another key: a handset's churn or movement, a
    /// handover's other line) → `deal_line` on the line's shard (`Dest::Number(line)`).
    /// Replaces `deal_line` crediting every line a finding names in place.
    DealCredit(crate::detect::deal_line::Credit),
    /// `runner_movement` (on a `deal_line` verdict or a `line_handover` finding) →
    /// `runner_movement` on every shard (`Dest::Every`): a line with deal evidence, so every
    /// shard's list of trade lines is the same at every barrier. Replaces the trade list
    /// being filled from findings made on any key.
    TradeLine {
        line: u64,
        name: Box<str>,
        /// Event time of the evidence (seconds).
        at_s: u32,
    },
    /// `runner_movement` (Handset role of a moving handset, on a SIM new to it or seen
    /// again in a later period) → `runner_movement` on the SIM's shard
    /// (`Dest::Handset(imsi hash)`): the SIM is in this handset. Replaces the SIM index
    /// written by every handset's records and rebuilt at sweeps.
    SimSeen { handset: u64, at_s: u32 },
    /// `runner_movement` (Handset role, a handset new to it, with its SIM) →
    /// `runner_movement` on the SIM's shard: where did this SIM come from? Replaces the
    /// arrival reading the SIM index and the young-handset list in place.
    HandsetArrived {
        handset: u64,
        /// Inline (no allocation): one is sent for every handset new to the detector.
        name: Name,
        at_s: u32,
    },
    /// `runner_movement` (the SIM's shard, answering [`Body::HandsetArrived`]) →
    /// `runner_movement` on the earlier handset's shard: hand your history to `to`.
    /// Replaces the arrival copying another handset's history in place.
    HandOver {
        /// The new handset and its pseudonym.
        to: u64,
        to_name: Box<str>,
        sim: u64,
        /// When the new handset arrived (seconds).
        at_s: u32,
        /// The earlier handset's pseudonym when it was found young (replaced within hours,
        /// never moving: its shard keeps no name for it); `None` for a moving one.
        young_name: Option<Box<str>>,
    },
    /// `runner_movement` (the earlier handset's shard) → `runner_movement` on the new
    /// handset's shard: the earlier handset's history (a copy) and chain of handsets.
    HandedOver(crate::detect::runner_movement::HandOff),
    /// `runner_movement` (the firing handset's shard) → `runner_movement` on an earlier
    /// handset's shard: it was the runner's too; the finding is made there (subject: that
    /// handset). Replaces writing the earlier handset's `fired_s` and naming it in place.
    /// Boxed: rare, and 128 bytes inline made every piece of evidence 200 bytes (152 now),
    /// moved several times from a record's outbox to its barrier's sort.
    NameEarlier(Box<crate::detect::runner_movement::EarlierFinding>),
    // runner_movement, whole burns (a runner's handset, SIM and number replaced at once):
    // sent by `runner_movement` in the handset role or while applying these, applied by
    // `runner_movement` on the trade line's shard, then on the old handset's.
    /// A moving handset called the trade line `Dest::Number(line)` at `at_s`: the line's
    /// shard remembers which moving handsets call it, for [`Body::BurnAsk`].
    RunnerContact { handset: u64, at_s: u32 },
    /// A handset first seen at `first_s` in `place` (class and area, as a stay holds it)
    /// called the trade line `Dest::Number(line)`, `burn_quiet_s` or more later: did a
    /// moving handset that called the line go quiet just before, there? The line's shard
    /// asks each such handset ([`Body::BurnHandOver`]).
    BurnAsk {
        handset: u64,
        name: Box<str>,
        first_s: u32,
        place: u32,
    },
    /// The trade line's shard → the old handset's (`Dest::Handset`): if you went quiet at
    /// most `burn_gap_s` before `first_s`, where `to` first showed, hand your history to it
    /// ([`Body::HandedOver`]).
    BurnHandOver {
        to: u64,
        to_name: Box<str>,
        first_s: u32,
        place: u32,
    },
    /// `line_handover` (a shard with no candidate at `min_overlap`) → `line_handover` on the
    /// new line's shard: "nothing here" for an [`Body::AudienceQuery`]. Every shard answers
    /// every query, so the new line decides a query only once all have answered: across
    /// partitions the answers arrive when each partition gets to them, and deciding on the
    /// first to arrive matched a new line with whichever earlier line's partition was
    /// quickest (appended last: the variants' numbers are the wire format).
    AudienceNone {
        /// The query answered.
        query: u32,
        /// The shard (or stage partition) that answered (see [`Body::AudienceMatch`]).
        from: u16,
    },
}

impl Body {
    /// The one detector that applies this evidence, as its index in
    /// [`crate::detect::DETECTORS`]: the engine offers a piece to that detector alone (a
    /// handset's arrival, one in every two or three records of the bench mix, was offered to
    /// all six, each matching it only to ignore it).
    pub fn applied_by(&self) -> usize {
        use crate::detect::{customer_fan_in, deal_line, index_of, line_handover, runner_movement};
        const FAN_IN: usize = index_of(customer_fan_in::NAME);
        const HANDOVER: usize = index_of(line_handover::NAME);
        const RUNNER: usize = index_of(runner_movement::NAME);
        const DEAL: usize = index_of(deal_line::NAME);
        // No wildcard: a new exchange has to say who applies it.
        match self {
            Body::CrewEnrol { .. } | Body::CrewCallback { .. } => FAN_IN,
            Body::AudienceQuery { .. }
            | Body::AudienceMatch { .. }
            | Body::AudienceDecide { .. }
            | Body::AudienceNone { .. } => HANDOVER,
            Body::DealCredit(_) => DEAL,
            Body::TradeLine { .. }
            | Body::SimSeen { .. }
            | Body::HandsetArrived { .. }
            | Body::HandOver { .. }
            | Body::HandedOver(_)
            | Body::NameEarlier(_)
            | Body::RunnerContact { .. }
            | Body::BurnAsk { .. }
            | Body::BurnHandOver { .. } => RUNNER,
        }
    }
}

/// Evidence as a detector sends it: the engine adds the time, the producing record and the
/// order (see [`Evidence`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    pub dest: Dest,
    pub body: Body,
    /// Where it sorts among the evidence sent while applying the same piece of evidence
    /// (see [`Evidence::order`]): a detector answering a broadcast sets it, so that the
    /// answers of every shard arrive best first (e.g. highest overlap, then lowest id) and
    /// are distinct. Zero otherwise.
    pub hint: [u64; 2],
}

impl Sent {
    pub fn new(dest: Dest, body: Body) -> Self {
        Sent {
            dest,
            body,
            hint: [0, 0],
        }
    }

    /// With a sort hint (see [`Sent::hint`]).
    pub fn hinted(dest: Dest, body: Body, hint: [u64; 2]) -> Self {
        Sent { dest, body, hint }
    }
}

/// Evidence in flight between shards, applied at the next barrier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub dest: Dest,
    /// Event time it is judged as of: its producing record's (or, for evidence sent while
    /// applying evidence, that evidence's).
    pub at: Millis,
    /// The producing record's `event_id`: a finding made from this evidence carries it, so
    /// its alert id is the one the record would have given. Inline ([`Name`]): nearly every
    /// record that sends evidence is a handset's first, and its id was an allocation and a
    /// free.
    pub event_id: Name,
    /// The order evidence is applied in at a barrier: unique, and a function of the input
    /// alone (never of which shard sent it). Set by the engine: for evidence sent on a
    /// record, `[event time, record sequence number, role << 32 | index, 0]`; for evidence
    /// sent while applying evidence (the barrier's next round), `[rank of that evidence in
    /// its round, hint[0], hint[1], index]`, where a broadcast's pieces without a hint take
    /// a hash of their destination and body as one (each shard's index starts at 0).
    pub order: [u64; 4],
    pub body: Body,
}
