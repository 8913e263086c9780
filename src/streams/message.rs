//! What the ingest stage sends to a partition stage: owned, serde-serialisable values (the
//! Kafka side writes them to the internal topics; the tests pass them through the checkpoint
//! codec to prove they carry everything).
//!
//! A record travels as its validated fields ([`Record`]), not as the input bytes: the
//! partition then needs no second JSON parse, UTF-8 check or raw-identifier guard per
//! destination (a record goes to up to three partitions), unknown input fields are not
//! carried, and with the checkpoint codec (postcard, no field names) it is smaller than the
//! JSON it came from. Hashes and the cell's place are not carried: the partition computes
//! them again (a few hashes, one map lookup) rather than send 40 bytes more per message.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::event::{Event, Kind, Millis};
use crate::exchange::Role;

/// A validated record, owned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Its `event_id`: findings made on it carry it, so alert ids are `replay`'s.
    pub event_id: Box<str>,
    pub ts: Millis,
    /// `sms` (true) or `call`.
    pub sms: bool,
    pub from: Box<str>,
    pub to: Box<str>,
    pub duration_s: u32,
    pub imsi: Option<Box<str>>,
    pub imei: Option<Box<str>>,
    pub cell: Option<Box<str>>,
}

impl Record {
    pub fn of(ev: &Event<'_>) -> Self {
        let owned = |c: &Cow<'_, str>| Box::<str>::from(c.as_ref());
        Record {
            event_id: owned(&ev.event_id),
            ts: ev.ts,
            sms: ev.kind == Kind::Sms,
            from: owned(&ev.from),
            to: owned(&ev.to),
            duration_s: ev.duration_s,
            imsi: ev.imsi.as_ref().map(owned),
            imei: ev.imei.as_ref().map(owned),
            cell: ev.cell.as_ref().map(owned),
        }
    }

    /// The record as the detectors read it, borrowing from this.
    pub fn event(&self) -> Event<'_> {
        fn b(s: &str) -> Cow<'_, str> {
            Cow::Borrowed(s)
        }
        Event {
            event_id: b(&self.event_id),
            ts: self.ts,
            kind: if self.sms { Kind::Sms } else { Kind::Call },
            from: b(&self.from),
            to: b(&self.to),
            duration_s: self.duration_s,
            imsi: self.imsi.as_deref().map(b),
            imei: self.imei.as_deref().map(b),
            cell: self.cell.as_deref().map(b),
        }
    }
}

/// A role's bit in [`Routed::roles`].
pub fn role_bit(role: Role) -> u8 {
    1 << role as u8
}

/// A valid record for one partition: sent once per distinct partition owning one of its
/// keys (`from`, `to`, `imei`), with the roles it plays there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Routed {
    /// The input partition it was read from (whichever ingest task read it): a partition
    /// stage runs each source's messages in order and its watermark is the minimum over its
    /// sources, as one engine's over its input partitions.
    pub source: i32,
    /// Its sequence number among that source's valid records (with `source`, the order of
    /// the evidence it makes).
    pub seq: u64,
    /// The source's watermark after this record.
    pub watermark: Millis,
    /// The source's valid and late records so far, this one included (what a sweep waits
    /// for).
    pub counted: u64,
    /// The source's stream start (first valid event time): warm-up rules count from it.
    pub start: Millis,
    /// The roles it plays on this partition ([`role_bit`]), run in [`Role::RECORD`] order.
    pub roles: u8,
    pub record: Record,
}

impl Routed {
    /// Its roles, in order.
    pub fn roles(&self) -> impl Iterator<Item = Role> + '_ {
        Role::RECORD
            .into_iter()
            .filter(|&r| self.roles & role_bit(r) != 0)
    }
}

/// A source's (input partition's) watermark and record count with no record: sent to every
/// partition when the ingest's watermark enters a new exchange epoch (or its input is
/// quiet), so a partition that gets none of its records still moves on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub source: i32,
    pub watermark: Millis,
    pub counted: u64,
}

/// What a partition stage reads from the ingest stages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    Routed(Routed),
    Mark(Mark),
}

impl Message {
    /// The source that sent it.
    pub fn source(&self) -> i32 {
        match self {
            Message::Routed(r) => r.source,
            Message::Mark(m) => m.source,
        }
    }
}
