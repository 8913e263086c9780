//! The envelope of every internal record: one version byte, one kind byte, then the value
//! in postcard (the encoding checkpoints already use: compact, documented, stable).
//!
//! ```text
//! byte 0   0xB1: high nibble 0xB marks a linewatch internal record, low nibble the version (1)
//! byte 1   the kind (Kind): what the payload is, so a reader never decodes one type as another
//! 2..      postcard of the value, nothing after it
//! ```
//!
//! A record that is not such an envelope (another version, another kind than expected, a
//! payload that does not decode or has bytes after it) is a [`WireError`], never a panic:
//! the stage counts it and dead-letters it with the fixed reason [`REASON`].

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The first byte of every envelope this version writes.
pub const VERSION_BYTE: u8 = 0xB1;

/// The dead-letter reason of an internal record that cannot be read.
pub const REASON: &str = "bad_internal_record";

/// What an envelope carries. The byte values are part of the wire format: never reuse one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// A valid input record routed to the owner of one of its keys (by line, by handset).
    Record = 1,
    /// Evidence for the owner of its destination key (`exchange::Evidence`).
    Evidence = 2,
    /// A control record (an epoch closed, a producer's watermark).
    Control = 3,
}

impl Kind {
    /// The kind of a kind byte, if it is one.
    pub fn from_byte(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Record),
            2 => Some(Kind::Evidence),
            3 => Some(Kind::Control),
            _ => None,
        }
    }

    /// A fixed label (metrics, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Record => "record",
            Kind::Evidence => "evidence",
            Kind::Control => "control",
        }
    }
}

/// Why an internal record could not be read. Every variant has the one dead-letter reason
/// [`REASON`]; [`WireError::field`] says which part was at fault (the dead letter's `field`
/// header).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("internal record shorter than its 2-byte header ({0} bytes)")]
    Short(usize),
    #[error(
        "internal record of unknown version byte {0:#04x} (this build reads {VERSION_BYTE:#04x})"
    )]
    Version(u8),
    #[error("internal record of unknown kind {0}")]
    UnknownKind(u8),
    #[error("internal record of kind {got} where {expected} was expected")]
    WrongKind {
        expected: &'static str,
        got: &'static str,
    },
    /// The payload's decoder failed; the message is postcard's fixed text, never the bytes.
    #[error("internal record payload does not decode: {0}")]
    Payload(String),
    #[error("internal record payload has {0} bytes after its value")]
    Trailing(usize),
}

impl WireError {
    /// The dead-letter reason: always [`REASON`].
    pub fn reason(&self) -> &'static str {
        REASON
    }

    /// The part at fault, a fixed label: `header`, `version`, `kind` or `payload`.
    pub fn field(&self) -> &'static str {
        match self {
            WireError::Short(_) => "header",
            WireError::Version(_) => "version",
            WireError::UnknownKind(_) | WireError::WrongKind { .. } => "kind",
            WireError::Payload(_) | WireError::Trailing(_) => "payload",
        }
    }
}

/// Encodes `value` as an envelope of `kind`.
pub fn encode<T: Serialize + ?Sized>(kind: Kind, value: &T) -> Vec<u8> {
    // Most evidence and routed records are under 128 bytes: one allocation, no regrowth.
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(&[VERSION_BYTE, kind as u8]);
    // postcard into a Vec fails only on a serde error of the value itself; our types are
    // plain data (no maps with non-string keys, no custom serializers that can fail).
    out = postcard::to_extend(value, out).expect("internal record values always serialise");
    out
}

/// The kind of an envelope, after checking its header.
pub fn kind_of(bytes: &[u8]) -> Result<Kind, WireError> {
    let [version, kind, ..] = *bytes else {
        return Err(WireError::Short(bytes.len()));
    };
    if version != VERSION_BYTE {
        return Err(WireError::Version(version));
    }
    Kind::from_byte(kind).ok_or(WireError::UnknownKind(kind))
}

/// Decodes an envelope that must be of `kind`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], kind: Kind) -> Result<T, WireError> {
    let got = kind_of(bytes)?;
    if got != kind {
        return Err(WireError::WrongKind {
            expected: kind.as_str(),
            got: got.as_str(),
        });
    }
    let (value, rest) = postcard::take_from_bytes::<T>(&bytes[2..])
        .map_err(|e| WireError::Payload(e.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::Trailing(rest.len()));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;
    use crate::detect::deal_line::Credit;
    use crate::detect::runner_movement::{EarlierFinding, HandOff};

    /// The detectors keep these payloads' fields private; their serde form (the checkpoint
    /// codec's) is public, so the test builds them from it, with every field filled.
    fn from_json<T: DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).expect("test payload matches the type")
    }

    fn credit() -> Credit {
        from_json(serde_json::json!({
            "line": "line-c",
            "parts": [
                {"part": "HandsetChurn", "detail": "{\"sims\":4}"},
                {"part": "Predecessor", "detail": "{\"earlier_line\":\"x\",\"earlier_score\":0.7}"}
            ],
            "related": "handset-1",
            "successor": [99, "line-new"]
        }))
    }

    fn hand_off() -> HandOff {
        from_json(serde_json::json!({
            "name": "h-new",
            "moved": null,
            "here": {"hours": 0x00FF_0000u32, "place": 0x8000_0003u32, "first_s": 10, "last_s": 20},
            "chain": [{"handset": 5, "name": "h-old", "last_s": 9, "burn": true}],
            "burn": false
        }))
    }

    fn earlier_finding() -> EarlierFinding {
        from_json(serde_json::json!({
            "name": "h-old",
            "since_s": 1,
            "newest_s": 2,
            "score": 0.875,
            "window_start": 1_780_000_000_000i64,
            "window_end": 1_780_000_600_000i64,
            "related": ["sim-1"],
            "evidence": "{\"taken_over_by\":\"h-new\"}",
            "lines": [[7, "line-7"]]
        }))
    }
    use crate::exchange::{Body, Dest, Evidence};

    /// Stands in for the routed record of the ingest stage (its own type lives with the
    /// engine side): the shapes it has, an enum of roles, strings, options and numbers.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Routed {
        Record {
            seq: u64,
            roles: Vec<crate::exchange::Role>,
            event_id: Box<str>,
            ts: i64,
            from: u64,
            to: u64,
            imei: Option<u64>,
            duration_s: u32,
            place: Option<u32>,
        },
        EpochClosed {
            epoch: u64,
            watermark: i64,
        },
    }

    fn evidence(dest: Dest, body: Body) -> Evidence {
        Evidence {
            dest,
            at: 1_780_000_000_123,
            event_id: "e-42".into(),
            order: [1, 2, 3 << 32 | 1, u64::MAX],
            body,
        }
    }

    /// One evidence value for every `Body` variant. The `match` below fails to compile
    /// when a variant is added, so the list stays whole.
    fn every_body() -> Vec<Body> {
        let bodies = vec![
            Body::CrewEnrol {
                line: 1,
                line_name: "line-a".into(),
            },
            Body::CrewCallback {
                customer: 2,
                line_name: "line-b".into(),
            },
            Body::AudienceQuery {
                line: 3,
                query: 2,
                first_seen_s: 77,
                recipients: 40,
                handset_fp: 9,
                mins: vec![1, 5, u32::MAX].into(),
                fps: vec![3, 4].into(),
            },
            Body::AudienceMatch {
                query: 2,
                recipients: 40,
                first_seen_s: 77,
                earlier: 4,
                earlier_line: "old".into(),
                earlier_first_seen_s: 1,
                earlier_last_text_s: 60,
                earlier_recipients: 55,
                overlap: 0.625,
                jaccard: 0.4,
                exact: true,
                shared_handset: false,
                from: 3,
            },
            Body::AudienceDecide { query: 7 },
            Body::AudienceNone {
                query: 7,
                from: 255,
            },
            Body::DealCredit(credit()),
            Body::TradeLine {
                line: 5,
                name: "trade".into(),
                at_s: 99,
            },
            Body::SimSeen {
                handset: 6,
                at_s: 100,
            },
            Body::HandsetArrived {
                handset: 7,
                name: "h7".into(),
                at_s: 101,
            },
            Body::HandOver {
                to: 8,
                to_name: "h8".into(),
                sim: 9,
                at_s: 102,
                young_name: Some("young".into()),
            },
            Body::HandedOver(hand_off()),
            Body::NameEarlier(Box::new(earlier_finding())),
            Body::RunnerContact {
                handset: 10,
                at_s: 103,
            },
            Body::BurnAsk {
                handset: 11,
                name: "h11".into(),
                first_s: 104,
                place: 3,
            },
            Body::BurnHandOver {
                to: 12,
                to_name: "h12".into(),
                first_s: 105,
                place: 4,
            },
        ];
        for b in &bodies {
            match b {
                Body::CrewEnrol { .. }
                | Body::CrewCallback { .. }
                | Body::AudienceQuery { .. }
                | Body::AudienceMatch { .. }
                | Body::AudienceDecide { .. }
                | Body::AudienceNone { .. }
                | Body::DealCredit(_)
                | Body::TradeLine { .. }
                | Body::SimSeen { .. }
                | Body::HandsetArrived { .. }
                | Body::HandOver { .. }
                | Body::HandedOver(_)
                | Body::NameEarlier(_)
                | Body::RunnerContact { .. }
                | Body::BurnAsk { .. }
                | Body::BurnHandOver { .. } => {}
            }
        }
        bodies
    }

    #[test]
    fn evidence_of_every_body_variant_round_trips() {
        let dests = [Dest::Number(u64::MAX), Dest::Handset(17), Dest::Every];
        for (i, body) in every_body().into_iter().enumerate() {
            let e = evidence(dests[i % 3], body);
            let bytes = encode(Kind::Evidence, &e);
            assert_eq!(bytes[0], VERSION_BYTE);
            assert_eq!(bytes[1], Kind::Evidence as u8);
            assert_eq!(kind_of(&bytes), Ok(Kind::Evidence));
            assert_eq!(decode::<Evidence>(&bytes, Kind::Evidence).unwrap(), e);
        }
    }

    #[test]
    fn a_routed_record_and_a_control_record_round_trip() {
        let r = Routed::Record {
            seq: 1 << 40,
            roles: vec![
                crate::exchange::Role::Sender,
                crate::exchange::Role::Handset,
            ],
            event_id: "ev-1".into(),
            ts: -5,
            from: 1,
            to: u64::MAX,
            imei: None,
            duration_s: 30,
            place: Some(2),
        };
        let bytes = encode(Kind::Record, &r);
        assert_eq!(decode::<Routed>(&bytes, Kind::Record).unwrap(), r);
        let c = Routed::EpochClosed {
            epoch: 3,
            watermark: 1_780_000_000_000,
        };
        let bytes = encode(Kind::Control, &c);
        assert_eq!(decode::<Routed>(&bytes, Kind::Control).unwrap(), c);
    }

    #[test]
    fn unreadable_internal_records_are_errors_with_the_fixed_reason_never_panics() {
        let good = encode(
            Kind::Evidence,
            &evidence(Dest::Every, Body::AudienceDecide { query: 1 }),
        );
        let mut other_version = good.clone();
        other_version[0] = 0xB2;
        let mut unknown_kind = good.clone();
        unknown_kind[1] = 9;
        let mut trailing = good.clone();
        trailing.push(0);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![], "header"),
            (vec![VERSION_BYTE], "header"),
            (other_version, "version"),
            (b"{\"event_id\":\"x\"}".to_vec(), "version"),
            (unknown_kind, "kind"),
            (encode(Kind::Record, &1u8), "kind"),
            (good[..good.len() - 3].to_vec(), "payload"),
            (
                vec![VERSION_BYTE, Kind::Evidence as u8, 0xFF, 0xFF, 0xFF],
                "payload",
            ),
            (trailing, "payload"),
        ];
        for (bytes, field) in cases {
            let e = decode::<Evidence>(&bytes, Kind::Evidence).unwrap_err();
            assert_eq!(e.reason(), "bad_internal_record");
            assert_eq!(e.field(), field, "{e}");
        }
        // Every byte string up to 3 bytes, and random-ish longer ones: an error or a value,
        // never a panic.
        for len in 0..=3usize {
            for n in 0..(1u32 << (8 * len.min(2))) {
                let mut b = vec![VERSION_BYTE, Kind::Evidence as u8];
                b.extend(n.to_le_bytes().iter().take(len));
                let _ = decode::<Evidence>(&b, Kind::Evidence);
            }
        }
        let mut x = 1u64;
        for _ in 0..2_000 {
            let mut b = good.clone();
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            let i = 2 + (x >> 33) as usize % (b.len() - 2);
            b[i] ^= (x >> 13) as u8 | 1;
            let _ = decode::<Evidence>(&b, Kind::Evidence);
        }
    }
}
