//! Decoding one call-detail record (contract §1) from raw bytes.
//!
//! The decoder borrows strings from the input buffer wherever the JSON has no escapes, so
//! the hot path allocates nothing for a well-formed record. Every way a record can be bad
//! maps to one [`Reason`] from a small fixed set: the reason is what goes into metrics
//! labels and dead-letter headers, never the serde message (which may quote input).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

/// Event time, epoch milliseconds UTC.
pub type Millis = i64;

/// Why a record was rejected. The string forms are part of the contract (dead-letter
/// reason codes and metric label values), so they never change once published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Not parseable as JSON (or not UTF-8).
    InvalidJson,
    /// Valid JSON, but not an object.
    NotObject,
    /// A required field is absent (or `null`).
    MissingField,
    /// A field has the wrong JSON type, or a string field is out of its length bounds.
    BadType,
    /// `ts` is neither epoch milliseconds nor an RFC 3339 timestamp in range.
    BadTimestamp,
    /// `kind` is not `sms` or `call`.
    UnknownKind,
    /// `duration_s` is below zero.
    NegativeDuration,
    /// A pseudonym (or `event_id`) is the empty string.
    EmptyPseudonym,
    /// A pseudonym is too long or has a space or a non-printable byte.
    BadPseudonym,
    /// A pseudonym looks like a raw MSISDN/IMSI/IMEI (10-15 digits, optional `+`).
    RawIdentifier,
    /// Older than the watermark: arrived after its window could still change.
    Late,
    /// Larger than the configured maximum record size.
    TooLarge,
    /// Event time further ahead of the reference clock than `engine.max_future_skew_s`.
    FutureTimestamp,
}

impl Reason {
    /// Every reason, in a fixed order (metric registration, tests, docs).
    pub const ALL: [Reason; 13] = [
        Reason::InvalidJson,
        Reason::NotObject,
        Reason::MissingField,
        Reason::BadType,
        Reason::BadTimestamp,
        Reason::UnknownKind,
        Reason::NegativeDuration,
        Reason::EmptyPseudonym,
        Reason::BadPseudonym,
        Reason::RawIdentifier,
        Reason::Late,
        Reason::TooLarge,
        Reason::FutureTimestamp,
    ];

    /// The fixed reason code.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidJson => "invalid_json",
            Reason::NotObject => "not_object",
            Reason::MissingField => "missing_field",
            Reason::BadType => "bad_type",
            Reason::BadTimestamp => "bad_timestamp",
            Reason::UnknownKind => "unknown_kind",
            Reason::NegativeDuration => "negative_duration",
            Reason::EmptyPseudonym => "empty_pseudonym",
            Reason::BadPseudonym => "bad_pseudonym",
            Reason::RawIdentifier => "raw_identifier",
            Reason::Late => "late",
            Reason::TooLarge => "too_large",
            Reason::FutureTimestamp => "future_timestamp",
        }
    }

    /// Parses a reason code back (dead-letter readers, tests).
    pub fn from_code(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejected record: the reason and, for humans, which field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed {
    pub reason: Reason,
    /// The field at fault, if one is (never a value: values may be identifiers).
    pub field: Option<&'static str>,
}

impl Malformed {
    fn new(reason: Reason, field: &'static str) -> Self {
        Malformed {
            reason,
            field: Some(field),
        }
    }
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.field {
            Some(field) => write!(f, "{} ({})", self.reason, field),
            None => write!(f, "{}", self.reason),
        }
    }
}

/// `sms` or `call`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Sms,
    Call,
}

/// One valid call-detail record, borrowing from the input where it can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event<'a> {
    pub event_id: Cow<'a, str>,
    pub ts: Millis,
    pub kind: Kind,
    pub from: Cow<'a, str>,
    pub to: Cow<'a, str>,
    /// Seconds; 0 for SMS and unanswered calls.
    pub duration_s: u32,
    pub imsi: Option<Cow<'a, str>>,
    pub imei: Option<Cow<'a, str>>,
    pub cell: Option<Cow<'a, str>>,
}

/// Decoder options that come from configuration.
#[derive(Debug, Clone, Copy)]
pub struct DecodeOptions {
    /// Reject pseudonyms that look like raw MSISDN/IMSI/IMEI values.
    pub raw_identifier_guard: bool,
    /// Records larger than this are rejected as `too_large` without parsing.
    pub max_record_bytes: usize,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            raw_identifier_guard: true,
            max_record_bytes: 64 * 1024,
        }
    }
}

/// Decodes and validates one record.
pub fn decode<'a>(bytes: &'a [u8], opts: &DecodeOptions) -> Result<Event<'a>, Malformed> {
    if bytes.len() > opts.max_record_bytes {
        return Err(Malformed {
            reason: Reason::TooLarge,
            field: None,
        });
    }
    // serde_json skips unknown fields without checking their UTF-8; JSON must be UTF-8 all
    // through. Checked once here (word-at-a-time for ASCII), so the fields need no check.
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Err(Malformed {
            reason: Reason::InvalidJson,
            field: None,
        });
    };
    // Nearly every record is a flat object of plain strings and integers: read those
    // directly; anything else is left to serde_json, which judges it as it always has.
    let raw = match parse_flat(text) {
        Some(raw) => raw,
        None => parse_raw(bytes)?,
    };
    raw.validate(opts)
}

/// Reads a record that is one flat JSON object whose values are strings without escapes,
/// integers within i64, `null`, `true` or `false`: the shape every feed sends. `None` for
/// anything else (escapes, fractions, nested values, a syntax error, trailing bytes), which
/// then goes through [`parse_raw`]: the fast path only ever accepts what serde_json reads
/// to the same values, so a record is judged alike on either path (checked over generated
/// cities and edge cases in the tests).
fn parse_flat(text: &str) -> Option<RawEvent<'_>> {
    let bytes = text.as_bytes();
    let mut c = Flat {
        s: text,
        b: bytes,
        i: 0,
    };
    let mut raw = RawEvent::default();
    c.ws();
    c.eat(b'{')?;
    c.ws();
    if c.peek()? == b'}' {
        c.i += 1;
    } else {
        loop {
            let key = c.string()?;
            c.ws();
            c.eat(b':')?;
            c.ws();
            let value = c.scalar()?;
            // Unknown fields are skipped; a repeated key: the last one wins, as on the serde path.
            if let Some(slot) = raw.slot(key) {
                *slot = Some(value);
            }
            c.ws();
            match c.next()? {
                b',' => c.ws(),
                b'}' => break,
                _ => return None,
            }
        }
    }
    c.ws();
    (c.i == bytes.len()).then_some(raw)
}

/// A cursor over one record for [`parse_flat`].
struct Flat<'a> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
}

impl<'a> Flat<'a> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    #[inline]
    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    #[inline]
    fn eat(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    /// JSON's four blanks.
    #[inline]
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    /// A string without escapes or control characters, borrowed.
    #[inline]
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.i;
        let end = self.b[start..]
            .iter()
            .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
        if self.b[start + end] != b'"' {
            return None;
        }
        self.i += end + 1;
        // Between two ASCII bytes of a `str`: whole characters, so this cannot fail.
        self.s.get(start..start + end)
    }

    fn scalar(&mut self) -> Option<Scalar<'a>> {
        match self.peek()? {
            b'"' => self.string().map(|s| Scalar::Str(Cow::Borrowed(s))),
            b'-' | b'0'..=b'9' => self.integer().map(Scalar::Int),
            b'n' => self.word(b"null").map(|_| Scalar::Null),
            b't' => self.word(b"true").map(|_| Scalar::Other),
            b'f' => self.word(b"false").map(|_| Scalar::Other),
            _ => None,
        }
    }

    fn word(&mut self, w: &[u8]) -> Option<()> {
        let end = self.i + w.len();
        (self.b.get(self.i..end)? == w).then(|| self.i = end)
    }

    /// JSON's integer grammar, within i64; a fraction or exponent is left to serde_json.
    fn integer(&mut self) -> Option<i64> {
        let neg = self.peek() == Some(b'-');
        if neg {
            self.i += 1;
        }
        let start = self.i;
        let mut v: i64 = 0;
        while let Some(d @ b'0'..=b'9') = self.peek() {
            let d = i64::from(d - b'0');
            v = v.checked_mul(10)?;
            v = if neg {
                v.checked_sub(d)?
            } else {
                v.checked_add(d)?
            };
            self.i += 1;
        }
        let digits = self.i - start;
        // No digits, or a leading zero followed by more digits: not JSON.
        if digits == 0 || (digits > 1 && self.b[start] == b'0') {
            return None;
        }
        if matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        // serde_json reads `-0` as the float -0.0 (a `duration_s` of -0 is `bad_type`).
        if neg && v == 0 {
            return None;
        }
        Some(v)
    }
}

fn parse_raw(bytes: &[u8]) -> Result<RawEvent<'_>, Malformed> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = RawEvent::deserialize(&mut de).and_then(|raw| de.end().map(|_| raw));
    parsed.map_err(|e| {
        // Our visitor reports a non-object top level with a marker message; everything
        // else serde_json can say (syntax, EOF, trailing bytes, bad UTF-8) is invalid JSON.
        let reason = if e.is_data() && e.to_string().starts_with(NOT_OBJECT) {
            Reason::NotObject
        } else {
            Reason::InvalidJson
        };
        Malformed {
            reason,
            field: None,
        }
    })
}

const NOT_OBJECT: &str = "linewatch:not_object";

/// A JSON value as far as validation needs to know it.
#[derive(Debug)]
enum Scalar<'a> {
    Str(Cow<'a, str>),
    Int(i64),
    /// Integers beyond i64, and floats.
    OtherNumber(f64),
    Null,
    /// bool, array or object.
    Other,
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(match i64::try_from(v) {
                    Ok(i) => Scalar::Int(i),
                    Err(_) => Scalar::OtherNumber(v as f64),
                })
            }
            fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Scalar::OtherNumber(v))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Scalar::Other)
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Null)
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Null)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Default)]
struct RawEvent<'a> {
    event_id: Option<Scalar<'a>>,
    ts: Option<Scalar<'a>>,
    kind: Option<Scalar<'a>>,
    from: Option<Scalar<'a>>,
    to: Option<Scalar<'a>>,
    duration_s: Option<Scalar<'a>>,
    imsi: Option<Scalar<'a>>,
    imei: Option<Scalar<'a>>,
    cell: Option<Scalar<'a>>,
}

impl<'a> RawEvent<'a> {
    /// The field a key fills, for both decoders (`None`: a field we do not read).
    fn slot(&mut self, key: &str) -> Option<&mut Option<Scalar<'a>>> {
        Some(match key {
            "event_id" => &mut self.event_id,
            "ts" => &mut self.ts,
            "kind" => &mut self.kind,
            "from" => &mut self.from,
            "to" => &mut self.to,
            "duration_s" => &mut self.duration_s,
            "imsi" => &mut self.imsi,
            "imei" => &mut self.imei,
            "cell" => &mut self.cell,
            _ => return None,
        })
    }
}

impl<'de> Deserialize<'de> for RawEvent<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawEvent<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(NOT_OBJECT)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                let mut raw = RawEvent::default();
                while let Some(key) = a.next_key::<Cow<'de, str>>()? {
                    match raw.slot(&key) {
                        // A repeated key: the last one wins, as in most JSON readers.
                        Some(slot) => *slot = Some(a.next_value::<Scalar<'de>>()?),
                        // Feeds grow: unknown fields are skipped without allocating.
                        None => {
                            a.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(raw)
            }
        }
        // Any non-object top level reaches `expecting`, whose text marks it as not_object.
        d.deserialize_map(V).map_err(|e| {
            let msg = e.to_string();
            if msg.contains(NOT_OBJECT) {
                de::Error::custom(NOT_OBJECT)
            } else {
                e
            }
        })
    }
}

const MAX_ID_BYTES: usize = 128;

impl<'a> RawEvent<'a> {
    fn validate(self, opts: &DecodeOptions) -> Result<Event<'a>, Malformed> {
        let event_id = required_str(self.event_id, "event_id")?;
        check_len(&event_id, "event_id")?;
        let ts = match self.ts {
            None | Some(Scalar::Null) => return Err(Malformed::new(Reason::MissingField, "ts")),
            Some(Scalar::Int(ms)) => check_ts(ms)?,
            Some(Scalar::Str(s)) => parse_rfc3339_ms(&s)?,
            Some(Scalar::OtherNumber(_)) => return Err(Malformed::new(Reason::BadTimestamp, "ts")),
            Some(Scalar::Other) => return Err(Malformed::new(Reason::BadType, "ts")),
        };
        let kind = match required_str(self.kind, "kind")?.as_ref() {
            "sms" => Kind::Sms,
            "call" => Kind::Call,
            _ => return Err(Malformed::new(Reason::UnknownKind, "kind")),
        };
        let from = pseudonym(required_str(self.from, "from")?, "from", opts)?;
        let to = pseudonym(required_str(self.to, "to")?, "to", opts)?;
        let duration_s = match self.duration_s {
            None | Some(Scalar::Null) => 0,
            Some(Scalar::Int(d)) if d < 0 => {
                return Err(Malformed::new(Reason::NegativeDuration, "duration_s"))
            }
            Some(Scalar::Int(d)) => {
                u32::try_from(d).map_err(|_| Malformed::new(Reason::BadType, "duration_s"))?
            }
            Some(Scalar::OtherNumber(f)) if f < 0.0 => {
                return Err(Malformed::new(Reason::NegativeDuration, "duration_s"))
            }
            Some(_) => return Err(Malformed::new(Reason::BadType, "duration_s")),
        };
        let imsi = optional_pseudonym(self.imsi, "imsi", opts)?;
        let imei = optional_pseudonym(self.imei, "imei", opts)?;
        let cell = match optional_str(self.cell, "cell")? {
            Some(c) => {
                check_len(&c, "cell")?;
                Some(c)
            }
            None => None,
        };
        Ok(Event {
            event_id,
            ts,
            kind,
            from,
            to,
            duration_s,
            imsi,
            imei,
            cell,
        })
    }
}

fn required_str<'a>(v: Option<Scalar<'a>>, field: &'static str) -> Result<Cow<'a, str>, Malformed> {
    match v {
        None | Some(Scalar::Null) => Err(Malformed::new(Reason::MissingField, field)),
        Some(Scalar::Str(s)) => Ok(s),
        Some(_) => Err(Malformed::new(Reason::BadType, field)),
    }
}

fn optional_str<'a>(
    v: Option<Scalar<'a>>,
    field: &'static str,
) -> Result<Option<Cow<'a, str>>, Malformed> {
    match v {
        None | Some(Scalar::Null) => Ok(None),
        Some(Scalar::Str(s)) => Ok(Some(s)),
        Some(_) => Err(Malformed::new(Reason::BadType, field)),
    }
}

fn optional_pseudonym<'a>(
    v: Option<Scalar<'a>>,
    field: &'static str,
    opts: &DecodeOptions,
) -> Result<Option<Cow<'a, str>>, Malformed> {
    optional_str(v, field)?
        .map(|s| pseudonym(s, field, opts))
        .transpose()
}

fn check_len(s: &str, field: &'static str) -> Result<(), Malformed> {
    if s.is_empty() {
        Err(Malformed::new(Reason::EmptyPseudonym, field))
    } else if s.len() > MAX_ID_BYTES {
        Err(Malformed::new(Reason::BadPseudonym, field))
    } else {
        Ok(())
    }
}

/// Whether `s` is a pseudonym as records must carry one (1 to 128 bytes of printable ASCII,
/// no spaces or control characters), and not a raw identifier in its shape ([`looks_raw`]).
/// For readers of what linewatch wrote (the board): `Err` is the reason code, `bad_pseudonym`
/// or `raw_identifier` (an empty value is a bad pseudonym here).
pub fn check_pseudonym(s: &str) -> Result<(), Reason> {
    if s.is_empty() || s.len() > MAX_ID_BYTES || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Reason::BadPseudonym);
    }
    if looks_raw(s) {
        return Err(Reason::RawIdentifier);
    }
    Ok(())
}

fn pseudonym<'a>(
    s: Cow<'a, str>,
    field: &'static str,
    opts: &DecodeOptions,
) -> Result<Cow<'a, str>, Malformed> {
    check_len(&s, field)?;
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Malformed::new(Reason::BadPseudonym, field));
    }
    if opts.raw_identifier_guard && looks_raw(&s) {
        return Err(Malformed::new(Reason::RawIdentifier, field));
    }
    Ok(s)
}

/// The shape of an MSISDN, IMSI or IMEI: 10-15 digits, optionally after one `+`, as the
/// contract words it; and the same written as people, exports and URIs write numbers,
/// which the guard let through: after schemes and prefixes (`urn:`, `tel:`, `sip:`,
/// `sips:`, `msisdn:`, `imsi:`, `imei:`, `msisdn=`, `imsi=`, `imei=`, any case, one after
/// another as in `urn:tel:`), with separators between the digits (`-`, `.`, `(`, `)`,
/// `/`), and ending at the value's end or at an `@` or `;` (a URI's host or parameters,
/// not inspected), e.g. `tel:07700900123`, `+44-7700-900123`,
/// `sip:+447700900123@ims.example.org`, `tel:+447700900123;phone-context=+44`,
/// `msisdn=447700900123`. A keyed hash's hex carries runs of ten digits and more by
/// chance (the generator's pseudonyms do, `H6e8128280909a981`), so a run inside a value
/// proves nothing: only a number that makes up the whole value, after its prefixes and
/// before an `@`/`;`, is raw; that is no hash's output.
pub fn looks_raw(s: &str) -> bool {
    let mut body = s.as_bytes();
    // Nearly every pseudonym is told at its first byte: a letter that starts no scheme.
    loop {
        match body.first() {
            Some(b'0'..=b'9' | b'+' | b'(') => break,
            Some(b't' | b'T' | b's' | b'S' | b'm' | b'M' | b'i' | b'I' | b'u' | b'U') => {
                match scheme_len(body) {
                    Some(n) => body = &body[n..],
                    None => return false,
                }
            }
            _ => return false,
        }
    }
    let body = body.strip_prefix(b"+").unwrap_or(body);
    let mut digits = 0;
    for (i, &c) in body.iter().enumerate() {
        match c {
            b'@' | b';' => break,
            _ if i >= 30 => return false,
            b'0'..=b'9' => digits += 1,
            b'-' | b'.' | b'(' | b')' | b'/' => {}
            _ => return false,
        }
    }
    (10..=15).contains(&digits)
}

/// The length of a telephony scheme or prefix (`tel:`, `msisdn=` and the like, any case)
/// `b` starts with, its `:` or `=` included: that byte's place first, so a pseudonym that
/// merely starts with one of these letters costs a look at its first seven bytes (this
/// runs for every pseudonym of every record).
fn scheme_len(b: &[u8]) -> Option<usize> {
    let at = b.iter().take(7).position(|&c| c == b':' || c == b'=')?;
    let names: &[&[u8]] = match (at, b[at]) {
        (3, b':') => &[b"tel", b"sip", b"urn"],
        (4, b':') => &[b"imsi", b"imei", b"sips"],
        (4, _) => &[b"imsi", b"imei"],
        (6, _) => &[b"msisdn"],
        _ => return None,
    };
    names
        .iter()
        .any(|p| b[..at].eq_ignore_ascii_case(p))
        .then_some(at + 1)
}

/// Event times outside [2000, 2200) are certainly wrong and would poison the watermark.
/// The lower bound is what catches units: any time in seconds up to the year 2200 is below
/// 7.3 × 10^9, which as milliseconds is January 1970, far below 2000; microseconds are
/// above 2200. No call-detail record a live feed or a kept archive holds predates 2000.
/// (How far ahead of the present a time may be is the engine's check, against a clock.)
pub const TS_MIN: Millis = 946_684_800_000;
/// 2200-01-01T00:00:00Z.
pub const TS_MAX: Millis = 7_258_118_400_000;

fn check_ts(ms: Millis) -> Result<Millis, Malformed> {
    if (TS_MIN..TS_MAX).contains(&ms) {
        Ok(ms)
    } else {
        Err(Malformed::new(Reason::BadTimestamp, "ts"))
    }
}

fn parse_rfc3339_ms(s: &str) -> Result<Millis, Malformed> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map_err(|_| Malformed::new(Reason::BadTimestamp, "ts"))
        .and_then(|t| check_ts(t.timestamp_millis()))
}

/// The event time of a record for ordering only, cheaply: the first top-level-looking
/// `"ts":` followed by an integer, or a full [`decode`] when it is not that simple (an
/// RFC 3339 string, odd spacing). `None` when the record does not decode. The result may
/// be wrong for a record that hides a `"ts":` key inside another field's object; it is only
/// used to order records across partitions, never to judge them.
pub fn quick_ts(bytes: &[u8], opts: &DecodeOptions) -> Option<Millis> {
    const KEY: &[u8] = b"\"ts\":";
    let mut from = 0;
    while let Some(i) = bytes[from..].windows(KEY.len()).position(|w| w == KEY) {
        let at = from + i;
        // A key starts after `{`, `,` or whitespace; `\"ts\":` inside a string value
        // follows a backslash.
        let key = at == 0 || matches!(bytes[at - 1], b'{' | b',' | b' ' | b'\t' | b'\n' | b'\r');
        if key {
            let digits = &bytes[at + KEY.len()..];
            let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
            let ends = matches!(digits.get(n), Some(b',' | b'}' | b' '));
            if (1..=15).contains(&n) && ends {
                let ms = digits[..n]
                    .iter()
                    .fold(0i64, |a, d| a * 10 + i64::from(d - b'0'));
                return check_ts(ms).ok();
            }
            break;
        }
        from = at + 1;
    }
    decode(bytes, opts).ok().map(|e| e.ts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_ts_agrees_with_decode() {
        let o = DecodeOptions::default();
        let cases: [&[u8]; 7] = [
            br#"{"event_id":"e1","ts":1800000000000,"kind":"sms","from":"La","to":"Lb"}"#,
            br#"{"ts":1800000000001,"event_id":"e1","kind":"sms","from":"La","to":"Lb"}"#,
            br#"{"event_id":"e1","ts":"2027-01-15T08:00:00Z","kind":"sms","from":"La","to":"Lb"}"#,
            br#"{"event_id":"x\"ts\":5,","ts":1800000000002,"kind":"sms","from":"La","to":"Lb"}"#,
            br#"{"event_id":"e1", "ts" : 1800000000003,"kind":"sms","from":"La","to":"Lb"}"#,
            br#"{"event_id":"e1","ts":1800000000004}"#,
            br#"{"event_id":"e1","ts":1.5e12,"kind":"sms","from":"La","to":"Lb"}"#,
        ];
        for c in cases {
            let want = decode(c, &o).ok().map(|e| e.ts);
            // The two that do not decode (missing fields, a float) may still carry a
            // plain integer time: ordering by it is fine.
            match want {
                Some(t) => assert_eq!(quick_ts(c, &o), Some(t), "{}", String::from_utf8_lossy(c)),
                None => assert!(
                    quick_ts(c, &o).is_none_or(|t| t == 1_800_000_000_004),
                    "{}",
                    String::from_utf8_lossy(c)
                ),
            }
        }
        assert_eq!(quick_ts(b"not json", &o), None);
    }

    /// Both paths on one record: the serde path always, the fast path when it reads it.
    fn both(
        b: &[u8],
    ) -> (
        Option<Result<Event<'_>, Malformed>>,
        Result<Event<'_>, Malformed>,
    ) {
        let o = DecodeOptions::default();
        let fast = std::str::from_utf8(b)
            .ok()
            .and_then(parse_flat)
            .map(|r| r.validate(&o));
        let slow = parse_raw(b).and_then(|r| r.validate(&o));
        (fast, slow)
    }

    #[test]
    fn fast_path_reads_plain_records_and_agrees_with_serde_on_edge_cases() {
        assert!(
            parse_flat(OK).is_some(),
            "the plain record takes the fast path"
        );
        let cases = [
            OK,
            r#" { "event_id" : "e1" , "ts" : 1759669331250 , "kind":"call","from":"a","to":"b","duration_s":12 }  "#,
            "{\"event_id\":\"e\",\n\"ts\":1759669331250,\t\"kind\":\"sms\",\r\"from\":\"a\",\"to\":\"b\"}",
            r#"{"event_id":"e","ts":1759669331250,"kind":"sms","from":"a","to":"b","duration_s":-0}"#,
            r#"{"event_id":"e","ts":1759669331250,"kind":"sms","from":"a","to":"b","duration_s":-3}"#,
            r#"{"event_id":"e","ts":1759669331250,"kind":"sms","from":"a","to":"b","duration_s":007}"#,
            r#"{"event_id":"e","ts":1759669331250,"kind":"sms","from":"a","to":"b","duration_s":1e2}"#,
            r#"{"event_id":"e","ts":1759669331250,"kind":"sms","from":"a","to":"b","duration_s":9223372036854775808}"#,
            r#"{"event_id":"e","ts":-9223372036854775808,"kind":"sms","from":"a","to":"b"}"#,
            r#"{"event_id":"e","ts":-9223372036854775809,"kind":"sms","from":"a","to":"b"}"#,
            r#"{"event_id":"e","ts":1759669331250,"kind":"sms","from":"a","to":"b","duration_s":true}"#,
            r#"{"event_id":"e","ts":1759669331250,"kind":"sms","from":"a","to":"b","imsi":null}"#,
            r#"{"event_id":"e","ts":1759669331250,"kind":"sms","from":"a","to":"b","x":nul}"#,
            r#"{"event_id":"e","ts":1759669331250,"kind":"sms","from":"a","to":"b","x":{"y":1}}"#,
            r#"{"event_id":"e","ts":1759669331250,"kind":"sms","from":"a","to":"b","x":[1,2]}"#,
            r#"{"event_id":"e","ts":1759669331250,"kind":"sms","from":"a","to":"b","x":1.5}"#,
            r#"{"event_id":"e","ts":1759669331250,"kind":"sms","from":"a","to":"b",}"#,
            r#"{"event_id":"e","ts":1759669331250,"kind":"sms","from":"a","to":"b"} x"#,
            r#"{"event_id":"e","ts":1759669331250,"kind":"sms","from":"a","to":"b"}}"#,
            r#"{"event_id":"e","ts":1759669331250,"kind":"sms","from":"a","to":"b""#,
            r#"{"event_id":"e","ts":1759669331250,"kind":"sms","from":"a" "to":"b"}"#,
            r#"{"event_id":"e","event_id":"f","ts":1759669331250,"kind":"sms","from":"a","to":"b"}"#,
            r#"{"event_id":"e\u0031","ts":1759669331250,"kind":"sms","from":"a","to":"b"}"#,
            r#"{"event\u005fid":"e","ts":1759669331250,"kind":"sms","from":"a","to":"b"}"#,
            "{\"event_id\":\"e\u{1}\",\"ts\":1759669331250,\"kind\":\"sms\",\"from\":\"a\",\"to\":\"b\"}",
            r#"{"event_id":"é","ts":1759669331250,"kind":"sms","from":"a","to":"b"}"#,
            r#"{"event_id":"e","ts":"2026-10-05T13:02:11.250Z","kind":"sms","from":"a","to":"b"}"#,
            r#"{"event_id":"e","ts":1759669331250,"kind":"sms","from":"+447700900123","to":"b"}"#,
            r#"{}"#,
            r#"{ }"#,
            r#"[1]"#,
            r#""x""#,
            r#"-"#,
            r#""#,
            r#"{"#,
        ];
        for c in cases {
            let (fast, slow) = both(c.as_bytes());
            if let Some(fast) = fast {
                assert_eq!(fast, slow, "{c}");
            }
            assert_eq!(dec(c), slow, "{c}");
        }
    }

    #[test]
    fn fast_path_agrees_with_serde_on_every_record_of_a_city() {
        let (events, _, _) = crate::generate::generate_in_memory(&crate::generate::GenOptions {
            seed: 11,
            subscribers: 2_000,
            days: 2,
            ..Default::default()
        })
        .expect("generate");
        let (mut fast_read, mut total) = (0, 0);
        for line in events.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            total += 1;
            let utf8 = std::str::from_utf8(line).is_ok();
            let (fast, slow) = both(line);
            if let Some(fast) = fast {
                assert!(utf8, "only UTF-8 reaches the parsers");
                fast_read += 1;
                assert_eq!(fast, slow, "{}", String::from_utf8_lossy(line));
            }
        }
        // The malformed records the generator injects are the ones left to serde_json.
        assert!(fast_read * 100 >= total * 99, "{fast_read} of {total}");
    }

    fn dec(s: &str) -> Result<Event<'_>, Malformed> {
        decode(s.as_bytes(), &DecodeOptions::default())
    }

    fn reason(s: &str) -> Reason {
        dec(s).expect_err("should be malformed").reason
    }

    const OK: &str =
        r#"{"event_id":"e1","ts":1759669331250,"kind":"sms","from":"p:a1","to":"p:b2"}"#;

    #[test]
    fn decodes_minimal_record_borrowing() {
        let e = dec(OK).unwrap();
        assert_eq!(e.ts, 1_759_669_331_250);
        assert_eq!(e.kind, Kind::Sms);
        assert!(matches!(e.from, Cow::Borrowed("p:a1")));
        assert_eq!(e.duration_s, 0);
        assert!(e.imsi.is_none());
    }

    #[test]
    fn rfc3339_equals_millis() {
        let a = dec(r#"{"event_id":"e","ts":"2026-10-05T13:02:11.250Z","kind":"call","from":"a","to":"b","duration_s":12}"#).unwrap();
        let b = dec(r#"{"event_id":"e","ts":"2026-10-05T14:02:11.250+01:00","kind":"call","from":"a","to":"b","duration_s":12}"#).unwrap();
        assert_eq!(a.ts, 1_791_205_331_250);
        assert_eq!(a.ts, b.ts);
        assert_eq!(a.duration_s, 12);
    }

    #[test]
    fn unknown_fields_ignored_and_escapes_handled() {
        let e = dec(r#"{"x":{"y":[1,2]},"event_id":"e\u0031","ts":1759669331250,"kind":"sms","from":"a","to":"b","imei":"h1","imsi":"s1","cell":"c9","z":null}"#).unwrap();
        assert_eq!(e.event_id, "e1");
        assert_eq!(e.imei.as_deref(), Some("h1"));
        assert_eq!(e.cell.as_deref(), Some("c9"));
    }

    #[test]
    fn reason_invalid_json() {
        assert_eq!(reason("{not json"), Reason::InvalidJson);
        assert_eq!(reason(""), Reason::InvalidJson);
        assert_eq!(reason(&format!("{OK} trailing")), Reason::InvalidJson);
        assert_eq!(
            decode(b"{\"a\":\"\xff\"}", &DecodeOptions::default())
                .unwrap_err()
                .reason,
            Reason::InvalidJson
        );
    }

    #[test]
    fn reason_not_object() {
        assert_eq!(reason("[1,2]"), Reason::NotObject);
        assert_eq!(reason("\"sms\""), Reason::NotObject);
        assert_eq!(reason("42"), Reason::NotObject);
        assert_eq!(reason("null"), Reason::NotObject);
    }

    #[test]
    fn reason_missing_field() {
        let m = dec(r#"{"event_id":"e","ts":1759669331250,"kind":"sms","from":"a"}"#).unwrap_err();
        assert_eq!(m, Malformed::new(Reason::MissingField, "to"));
        assert_eq!(
            reason(r#"{"event_id":"e","kind":"sms","from":"a","to":"b"}"#),
            Reason::MissingField
        );
        assert_eq!(
            reason(r#"{"event_id":null,"ts":1759669331250,"kind":"sms","from":"a","to":"b"}"#),
            Reason::MissingField
        );
    }

    #[test]
    fn reason_bad_type() {
        assert_eq!(
            reason(r#"{"event_id":7,"ts":1759669331250,"kind":"sms","from":"a","to":"b"}"#),
            Reason::BadType
        );
        assert_eq!(
            reason(r#"{"event_id":"e","ts":1759669331250,"kind":"sms","from":["a"],"to":"b"}"#),
            Reason::BadType
        );
        assert_eq!(
            reason(
                r#"{"event_id":"e","ts":1759669331250,"kind":"call","from":"a","to":"b","duration_s":"9"}"#
            ),
            Reason::BadType
        );
        assert_eq!(
            reason(
                r#"{"event_id":"e","ts":1759669331250,"kind":"call","from":"a","to":"b","duration_s":1.5}"#
            ),
            Reason::BadType
        );
        assert_eq!(
            reason(r#"{"event_id":"e","ts":true,"kind":"sms","from":"a","to":"b"}"#),
            Reason::BadType
        );
    }

    #[test]
    fn reason_bad_timestamp() {
        assert_eq!(
            reason(r#"{"event_id":"e","ts":"yesterday","kind":"sms","from":"a","to":"b"}"#),
            Reason::BadTimestamp
        );
        assert_eq!(
            reason(r#"{"event_id":"e","ts":-5,"kind":"sms","from":"a","to":"b"}"#),
            Reason::BadTimestamp
        );
        assert_eq!(
            reason(r#"{"event_id":"e","ts":1.5e3,"kind":"sms","from":"a","to":"b"}"#),
            Reason::BadTimestamp
        );
        assert_eq!(
            reason(r#"{"event_id":"e","ts":99999999999999999,"kind":"sms","from":"a","to":"b"}"#),
            Reason::BadTimestamp
        );
    }

    #[test]
    fn seconds_and_microseconds_are_bad_timestamps() {
        // 2026-10-05T13:02:11Z in seconds read as ms is January 1970: a unit mistake.
        assert_eq!(
            reason(r#"{"event_id":"e","ts":1759669331,"kind":"sms","from":"a","to":"b"}"#),
            Reason::BadTimestamp
        );
        assert_eq!(
            reason(r#"{"event_id":"e","ts":1759669331250000,"kind":"sms","from":"a","to":"b"}"#),
            Reason::BadTimestamp
        );
        assert_eq!(
            reason(
                r#"{"event_id":"e","ts":"1999-12-31T23:59:59Z","kind":"sms","from":"a","to":"b"}"#
            ),
            Reason::BadTimestamp
        );
        assert!(
            dec(r#"{"event_id":"e","ts":946684800000,"kind":"sms","from":"a","to":"b"}"#).is_ok()
        );
        assert!(
            dec(r#"{"event_id":"e","ts":7258118399999,"kind":"sms","from":"a","to":"b"}"#).is_ok()
        );
    }

    #[test]
    fn reason_unknown_kind() {
        assert_eq!(
            reason(r#"{"event_id":"e","ts":1759669331250,"kind":"mms","from":"a","to":"b"}"#),
            Reason::UnknownKind
        );
    }

    #[test]
    fn reason_negative_duration() {
        assert_eq!(
            reason(
                r#"{"event_id":"e","ts":1759669331250,"kind":"call","from":"a","to":"b","duration_s":-3}"#
            ),
            Reason::NegativeDuration
        );
    }

    #[test]
    fn reason_empty_pseudonym() {
        assert_eq!(
            reason(r#"{"event_id":"e","ts":1759669331250,"kind":"sms","from":"","to":"b"}"#),
            Reason::EmptyPseudonym
        );
        assert_eq!(
            reason(r#"{"event_id":"","ts":1759669331250,"kind":"sms","from":"a","to":"b"}"#),
            Reason::EmptyPseudonym
        );
        assert_eq!(
            reason(
                r#"{"event_id":"e","ts":1759669331250,"kind":"sms","from":"a","to":"b","imei":""}"#
            ),
            Reason::EmptyPseudonym
        );
    }

    #[test]
    fn reason_bad_pseudonym() {
        assert_eq!(
            reason(r#"{"event_id":"e","ts":1759669331250,"kind":"sms","from":"a b","to":"b"}"#),
            Reason::BadPseudonym
        );
        let long = "x".repeat(129);
        assert_eq!(
            reason(&format!(
                r#"{{"event_id":"e","ts":1759669331250,"kind":"sms","from":"{long}","to":"b"}}"#
            )),
            Reason::BadPseudonym
        );
    }

    #[test]
    fn reason_raw_identifier_and_guard_off() {
        let s =
            r#"{"event_id":"e","ts":1759669331250,"kind":"sms","from":"+447700900123","to":"b"}"#;
        assert_eq!(reason(s), Reason::RawIdentifier);
        assert_eq!(
            reason(
                r#"{"event_id":"e","ts":1759669331250,"kind":"sms","from":"a","to":"b","imsi":"234150999999999"}"#
            ),
            Reason::RawIdentifier
        );
        let off = DecodeOptions {
            raw_identifier_guard: false,
            ..Default::default()
        };
        assert!(decode(s.as_bytes(), &off).is_ok());
        // Written with a scheme or separators, as numbers are written: still raw.
        for raw in [
            "tel:07700900123",
            "TEL:+447700900123",
            "+44-7700-900123",
            "+44 (0)7700.900123",
            "imei:353456789012345",
            "IMSI:234150999999999",
            "msisdn:447700900123",
            "sip:+447700900123",
            "(07700) 900123",
        ] {
            assert_eq!(looks_raw(raw), !raw.contains(' '), "{raw}");
        }
        // Not the shape: a hash's hex with a long digit run (the generator's), a scheme
        // before letters, too few or too many digits, digits then a letter.
        for fine in [
            "H6e8128280909a981",
            "L9f72143ca512c01c",
            "tel:abc",
            "tel:",
            "sip:alice@example",
            "+44-7700-900",
            "1234-5678-9012-3456",
            "447700900123x",
            "S40785437d87ad6a8",
            "imei",
        ] {
            assert!(!looks_raw(fine), "{fine}");
        }
        // Nine digits or sixteen are not the shape of a raw identifier.
        assert!(dec(
            r#"{"event_id":"e","ts":1759669331250,"kind":"sms","from":"123456789","to":"1234567890123456"}"#
        )
        .is_ok());
    }

    /// Numbers written as URIs and exports write them (a scheme chain, `=` prefixes, a
    /// `@host` or `;param` tail) were taken for pseudonyms.
    #[test]
    fn raw_identifier_in_uri_and_prefix_forms_is_rejected() {
        for raw in [
            "sip:+447700900123@ims.example.org",
            "sips:+447700900123@x.org",
            "tel:+447700900123;phone-context=+44",
            "447700900123@sms",
            "msisdn=447700900123",
            "urn:tel:07700900123",
            "TEL:+44-7700-900123;ext=1",
            "IMSI=234150999999999",
            "imei=353456789012345",
            "Sip:447700900123;user=phone",
            "URN:TEL:+447700900123",
            "msisdn:+447700900123@x",
        ] {
            assert!(looks_raw(raw), "{raw}");
            let rec = format!(
                r#"{{"event_id":"e","ts":1759669331250,"kind":"sms","from":"a","to":"{raw}"}}"#
            );
            let err = dec(&rec).unwrap_err();
            assert_eq!(
                (err.reason, err.field),
                (Reason::RawIdentifier, Some("to")),
                "{raw}"
            );
        }
        // Pseudonym-like values, and the generator's hex forms, still pass.
        for fine in [
            "sipping",
            "tel",
            "msisdn",
            "user@example",
            "urn:x:abc",
            "urn:",
            "urn:tel:",
            "sip:",
            "sips:alice@x.org",
            "msisdn=",
            "msisdn=abc",
            "imsi=12345",
            "tel:+44770090;x",
            "tel:4477009001234567@x",
            "@447700900123",
            ";447700900123",
            "447700900123x@sms",
            "u447700900123",
            "H6e8128280909a981",
            "L74928e1116c75c4b",
            "S3933c279208fd89e",
            "Se8128280909a9812",
            "T1234567890abcdef",
            "M0123456789012345",
            "I0123456789abcdef",
            "U0123456789abcdef",
        ] {
            assert!(!looks_raw(fine), "{fine}");
        }
    }

    #[test]
    fn reason_too_large() {
        let opts = DecodeOptions {
            max_record_bytes: 10,
            ..Default::default()
        };
        assert_eq!(
            decode(OK.as_bytes(), &opts).unwrap_err().reason,
            Reason::TooLarge
        );
    }

    #[test]
    fn reason_codes_round_trip() {
        for r in Reason::ALL {
            assert_eq!(Reason::from_code(r.as_str()), Some(r));
        }
    }
}
