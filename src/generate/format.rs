//! Writing records: pseudonyms, event ids, the contract's JSON, and the malformed variants.
//!
//! Pseudonyms look like the upstream keyed hashes they stand for: a letter for the kind
//! (`L` line, `S` SIM, `H` handset) and 16 hex digits. They are a keyed bijection of the
//! identity index, so two identities never share a pseudonym, and the letter means no
//! pseudonym can ever look like a raw 10-15 digit identifier.

use std::io::Write;

use chrono::{DateTime, FixedOffset};

use super::params as p;
use super::traffic::{Ev, EvKind};
use super::world::NONE;
use crate::event::Reason;

pub(crate) use crate::ids::mix;

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex16(buf: &mut Vec<u8>, v: u64) {
    for shift in (0..16).rev() {
        buf.push(HEX[((v >> (shift * 4)) & 0xf) as usize]);
    }
}

/// The ways an injected line is malformed, one per reason code the decoder has for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Spoil {
    InvalidJson,
    NotObject,
    MissingField,
    BadType,
    UnknownKind,
    NegativeDuration,
    EmptyPseudonym,
    RawIdentifier,
    BadTimestamp,
    BadPseudonym,
}

impl Spoil {
    pub const ALL: [Spoil; 10] = [
        Spoil::InvalidJson,
        Spoil::NotObject,
        Spoil::MissingField,
        Spoil::BadType,
        Spoil::UnknownKind,
        Spoil::NegativeDuration,
        Spoil::EmptyPseudonym,
        Spoil::RawIdentifier,
        Spoil::BadTimestamp,
        Spoil::BadPseudonym,
    ];

    /// The reason code the decoder gives this variant.
    pub fn reason(self) -> Reason {
        match self {
            Spoil::InvalidJson => Reason::InvalidJson,
            Spoil::NotObject => Reason::NotObject,
            Spoil::MissingField => Reason::MissingField,
            Spoil::BadType => Reason::BadType,
            Spoil::UnknownKind => Reason::UnknownKind,
            Spoil::NegativeDuration => Reason::NegativeDuration,
            Spoil::EmptyPseudonym => Reason::EmptyPseudonym,
            Spoil::RawIdentifier => Reason::RawIdentifier,
            Spoil::BadTimestamp => Reason::BadTimestamp,
            Spoil::BadPseudonym => Reason::BadPseudonym,
        }
    }
}

/// Identity kinds with their own pseudonym key and letter.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ident {
    Line = 0,
    Sim = 1,
    Handset = 2,
}

const LETTERS: [u8; 3] = [b'L', b'S', b'H'];

/// Writes records for one seed.
pub(crate) struct Writer {
    keys: [u64; 3],
    event_key: u64,
    ts_key: u64,
    cells: Vec<String>,
}

impl Writer {
    pub fn new(seed: u64, cells: Vec<String>) -> Self {
        let k = |tag: u64| mix(seed ^ mix(tag));
        Writer {
            keys: [k(0x4c), k(0x53), k(0x48)],
            event_key: k(0x45),
            ts_key: k(0x54),
            cells,
        }
    }

    pub fn pseudonym(&self, buf: &mut Vec<u8>, kind: Ident, id: u32) {
        buf.push(LETTERS[kind as usize]);
        hex16(buf, mix(id as u64 ^ self.keys[kind as usize]));
    }

    /// The pseudonym as a string (labels).
    pub fn pseudonym_string(&self, kind: Ident, id: u32) -> String {
        let mut b = Vec::with_capacity(17);
        self.pseudonym(&mut b, kind, id);
        // Only ASCII letters and hex digits were written.
        String::from_utf8(b).expect("pseudonyms are ASCII")
    }

    /// Whether record `eid` carries `ts` as an RFC 3339 string.
    pub fn rfc3339(&self, eid: u64) -> bool {
        mix(eid ^ self.ts_key) % p::RFC3339_ONE_IN == 0
    }

    fn field(buf: &mut Vec<u8>, name: &str) {
        buf.extend_from_slice(b",\"");
        buf.extend_from_slice(name.as_bytes());
        buf.extend_from_slice(b"\":");
    }

    fn quoted_pseudonym(&self, buf: &mut Vec<u8>, kind: Ident, id: u32) {
        buf.push(b'"');
        self.pseudonym(buf, kind, id);
        buf.push(b'"');
    }

    fn ts(&self, buf: &mut Vec<u8>, eid: u64, ts: i64) {
        let Some(t) = DateTime::from_timestamp_millis(ts) else {
            // Event times are within the run, always representable; fall back to ms anyway.
            let _ = write!(buf, "{ts}");
            return;
        };
        // Half in UTC, half in British Summer Time, as two mediation systems would write them.
        if mix(eid) & 1 == 0 {
            let _ = write!(buf, "\"{}\"", t.format("%Y-%m-%dT%H:%M:%S%.3fZ"));
        } else {
            let bst = FixedOffset::east_opt(3600).map(|o| t.with_timezone(&o));
            match bst {
                Some(b) => {
                    let _ = write!(buf, "\"{}\"", b.format("%Y-%m-%dT%H:%M:%S%.3f%:z"));
                }
                None => {
                    let _ = write!(buf, "\"{}\"", t.format("%Y-%m-%dT%H:%M:%S%.3fZ"));
                }
            }
        }
    }

    /// Appends record `eid` (without newline), malformed in way `bad` if given. Returns
    /// whether `ts` was written as an RFC 3339 string. Writes to a Vec cannot fail, so
    /// `write!` results are ignored.
    pub fn record(&self, buf: &mut Vec<u8>, ev: &Ev, eid: u64, bad: Option<Spoil>) -> bool {
        let start = buf.len();
        // Which field a variant spoils, chosen from the id so the mix is even and fixed.
        let pick = mix(eid ^ 0x5eed) % 4;
        if bad == Some(Spoil::NotObject) {
            buf.push(b'[');
        }
        buf.extend_from_slice(b"{\"event_id\":\"e");
        hex16(buf, mix(eid ^ self.event_key));
        buf.push(b'"');
        let mut rfc = false;
        if !(bad == Some(Spoil::MissingField) && pick == 0) {
            Self::field(buf, "ts");
            if bad == Some(Spoil::BadTimestamp) {
                let s: &[u8] = match pick {
                    0 => b"\"2026-13-45T25:61:00Z\"",
                    1 => b"\"yesterday\"",
                    2 => b"1.7912e12",
                    _ => b"-1",
                };
                buf.extend_from_slice(s);
            } else if self.rfc3339(eid) {
                rfc = true;
                self.ts(buf, eid, ev.ts);
            } else {
                let _ = write!(buf, "{}", ev.ts);
            }
        }
        if !(bad == Some(Spoil::MissingField) && pick == 1) {
            Self::field(buf, "kind");
            buf.extend_from_slice(match (bad, ev.kind) {
                (Some(Spoil::UnknownKind), _) => b"\"mms\"",
                (_, EvKind::Sms) => b"\"sms\"",
                (_, EvKind::Call) => b"\"call\"",
            });
        }
        if !(bad == Some(Spoil::MissingField) && pick == 2) {
            Self::field(buf, "from");
            match bad {
                Some(Spoil::EmptyPseudonym) => buf.extend_from_slice(b"\"\""),
                Some(Spoil::RawIdentifier) => {
                    // A raw MSISDN from the Ofcom drama range leaking past the hashing.
                    let _ = write!(buf, "\"+447700900{:03}\"", eid % 1000);
                }
                Some(Spoil::BadType) => {
                    let _ = write!(buf, "{}", eid % 100_000);
                }
                Some(Spoil::BadPseudonym) => {
                    buf.extend_from_slice(b"\"L");
                    hex16(buf, mix(ev.from as u64));
                    buf.extend_from_slice(b" x\"");
                }
                _ => self.quoted_pseudonym(buf, Ident::Line, ev.from),
            }
        }
        if !(bad == Some(Spoil::MissingField) && pick == 3) {
            Self::field(buf, "to");
            self.quoted_pseudonym(buf, Ident::Line, ev.to);
        }
        if bad == Some(Spoil::NegativeDuration) {
            Self::field(buf, "duration_s");
            let _ = write!(buf, "-{}", 1 + eid % 300);
        } else if ev.kind == EvKind::Call {
            Self::field(buf, "duration_s");
            let _ = write!(buf, "{}", ev.dur);
        }
        Self::field(buf, "imsi");
        self.quoted_pseudonym(buf, Ident::Sim, ev.sim);
        Self::field(buf, "imei");
        self.quoted_pseudonym(buf, Ident::Handset, ev.handset);
        if ev.cell != NONE {
            Self::field(buf, "cell");
            buf.push(b'"');
            buf.extend_from_slice(self.cells[ev.cell as usize].as_bytes());
            buf.push(b'"');
        }
        buf.push(b'}');
        if bad == Some(Spoil::NotObject) {
            buf.push(b']');
        }
        if bad == Some(Spoil::InvalidJson) {
            // Cut short, as a broken batch would: an object missing its end is never JSON.
            let len = buf.len() - start;
            let keep = 10 + (mix(eid ^ 0xc0ffee) as usize % (len - 20));
            buf.truncate(start + keep);
        }
        rfc
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{decode, looks_raw, DecodeOptions, Kind};

    fn ev(kind: EvKind) -> Ev {
        Ev {
            ts: super::super::DEFAULT_START_MS + 12_345,
            from: 1,
            to: 2,
            sim: 3,
            handset: 4,
            cell: 0,
            dur: if kind == EvKind::Call { 42 } else { 0 },
            kind,
        }
    }

    fn writer() -> Writer {
        Writer::new(7, vec!["C000000".into()])
    }

    #[test]
    fn valid_records_decode_to_what_was_made() {
        let w = writer();
        let mut rfc_seen = (false, false);
        for eid in 0..2_000u64 {
            for kind in [EvKind::Sms, EvKind::Call] {
                let mut buf = Vec::new();
                let rfc = w.record(&mut buf, &ev(kind), eid, None);
                let e = decode(&buf, &DecodeOptions::default()).expect("valid record");
                assert_eq!(e.ts, ev(kind).ts, "{}", String::from_utf8_lossy(&buf));
                assert_eq!(e.kind == Kind::Call, kind == EvKind::Call);
                assert_eq!(e.duration_s, ev(kind).dur);
                assert_eq!(e.from, w.pseudonym_string(Ident::Line, 1));
                for id in [&e.from, &e.to] {
                    assert!(!looks_raw(id));
                }
                if rfc {
                    rfc_seen.0 = true;
                } else {
                    rfc_seen.1 = true;
                }
            }
        }
        assert!(rfc_seen.0 && rfc_seen.1, "both ts forms");
    }

    #[test]
    fn every_malformed_variant_has_its_reason() {
        let w = writer();
        for bad in Spoil::ALL {
            for eid in 0..200u64 {
                for kind in [EvKind::Sms, EvKind::Call] {
                    let mut buf = Vec::new();
                    w.record(&mut buf, &ev(kind), eid, Some(bad));
                    let m = decode(&buf, &DecodeOptions::default())
                        .expect_err("malformed line decoded");
                    assert_eq!(
                        m.reason,
                        bad.reason(),
                        "{bad:?}: {}",
                        String::from_utf8_lossy(&buf)
                    );
                    assert!(!buf.contains(&b'\n') && buf.iter().any(|b| !b.is_ascii_whitespace()));
                }
            }
        }
    }

    #[test]
    fn pseudonyms_are_distinct_per_kind_and_seed() {
        let (a, b) = (writer(), Writer::new(8, vec![]));
        assert_ne!(
            a.pseudonym_string(Ident::Line, 5),
            a.pseudonym_string(Ident::Line, 6)
        );
        assert_ne!(
            a.pseudonym_string(Ident::Line, 5),
            b.pseudonym_string(Ident::Line, 5)
        );
        assert!(a.pseudonym_string(Ident::Handset, 5).starts_with('H'));
        assert_eq!(a.pseudonym_string(Ident::Sim, 5).len(), 17);
    }
}
