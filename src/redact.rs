//! Redaction of raw identifiers in dead letters, before they leave the process.
//!
//! A record rejected as `raw_identifier` carries an un-hashed MSISDN, IMSI or IMEI, and any
//! other malformed record may too. Dead letters live on a topic (or in a file) with its own
//! access and retention, so both the Kafka dead-letter topic and `replay --dead-letter` pass
//! the bytes through [`redact`] first.
//!
//! The rule works on bytes, so it holds for records that are not JSON, not UTF-8 or cut
//! short: every maximal run of 10-15 ASCII digits (with a `+` or `-` right before it, that
//! too) is replaced by `[redacted]`, quoted when it stands outside a JSON string so that a
//! JSON record stays JSON. The one exception is a run of exactly 13 digits that is the
//! value of a `"ts"` key: that is an epoch-millisecond time (2001-2286), which a dead-letter
//! reader needs and which identifies no one. Runs of 16 digits or more are not the shape of
//! an MSISDN/IMSI/IMEI and are kept.

use std::borrow::Cow;

/// What replaces a redacted run.
pub const MARK: &str = "[redacted]";

/// Field name reported when the record is not a JSON object, so no field can be named.
pub const WHOLE_RECORD: &str = "record";

/// A dead letter's bytes after redaction, and which fields had a value redacted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redacted<'a> {
    pub bytes: Cow<'a, [u8]>,
    /// Top-level field names, in order of first redaction (themselves redacted: a key can be
    /// an identifier too); [`WHOLE_RECORD`] when the record is not a JSON object. Empty when
    /// nothing was redacted.
    pub fields: Vec<String>,
}

/// Redacts every 10-15 digit run of `raw` (see the module doc for the rule).
pub fn redact(raw: &[u8]) -> Redacted<'_> {
    let spans = find_runs(raw);
    if spans.is_empty() {
        return Redacted {
            bytes: Cow::Borrowed(raw),
            fields: Vec::new(),
        };
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut at = 0;
    for s in &spans {
        out.extend_from_slice(&raw[at..s.start]);
        if s.in_string {
            out.extend_from_slice(MARK.as_bytes());
        } else {
            out.push(b'"');
            out.extend_from_slice(MARK.as_bytes());
            out.push(b'"');
        }
        at = s.end;
    }
    out.extend_from_slice(&raw[at..]);
    let fields = fields_of(raw, &spans);
    Redacted {
        bytes: Cow::Owned(out),
        fields,
    }
}

/// True if `raw` holds anything [`redact`] would replace.
pub fn has_raw_identifier(raw: &[u8]) -> bool {
    !find_runs(raw).is_empty()
}

#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
    in_string: bool,
    /// Byte offset of the opening quote of the top-level key the run is under.
    key_at: Option<usize>,
}

/// Finds the runs to redact with a small JSON-aware scan: string state (for quoting) and the
/// top-level key in force (for naming the field). On bytes that are not JSON the scan still
/// finds every run; only the field names become meaningless, and those are not used then.
fn find_runs(raw: &[u8]) -> Vec<Span> {
    let mut spans = Vec::new();
    let mut in_string = false;
    let mut escaped = false;
    let mut depth = 0usize;
    // At depth 1 the string after `{` or `,` is a key: it is in force from its opening quote
    // (so a run inside the key itself is named by that key, which is then redacted).
    let mut expect_key = false;
    let mut key_at: Option<usize> = None;
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else {
            match b {
                b'"' => {
                    in_string = true;
                    if depth == 1 && expect_key {
                        key_at = Some(i);
                        expect_key = false;
                    }
                }
                b'{' | b'[' => {
                    depth += 1;
                    expect_key = depth == 1 && b == b'{';
                }
                b'}' | b']' => depth = depth.saturating_sub(1),
                b',' if depth == 1 => expect_key = true,
                _ => {}
            }
        }
        if b.is_ascii_digit() && in_string {
            if let Some((end, digits)) = separated_run(raw, i) {
                if (10..=15).contains(&digits) {
                    let start = if i > 0 && matches!(raw[i - 1], b'+' | b'-' | b'(') {
                        i - 1
                    } else {
                        i
                    };
                    spans.push(Span {
                        start,
                        end,
                        in_string,
                        key_at: if depth >= 1 { key_at } else { None },
                    });
                    i = end;
                    continue;
                }
            }
        }
        if b.is_ascii_digit() {
            let start = i;
            while i < raw.len() && raw[i].is_ascii_digit() {
                i += 1;
            }
            let n = i - start;
            if (10..=15).contains(&n) && !(n == 13 && !in_string && is_ts_value(raw, start)) {
                let start = if start > 0 && matches!(raw[start - 1], b'+' | b'-') {
                    start - 1
                } else {
                    start
                };
                spans.push(Span {
                    start,
                    end: i,
                    in_string,
                    key_at: if depth >= 1 { key_at } else { None },
                });
            }
            continue;
        }
        i += 1;
    }
    spans
}

/// A number written with separators inside a string (`+44-7700-900123`, `07700 900123`,
/// `(0)7700.900123`): from the digit at `start`, groups of digits joined by one or two of
/// `- . ( ) /` and blanks; its end (after its last digit) and its digit count, if it has at
/// least one separator (a plain run is the caller's). Its digits decide as a plain run's do.
fn separated_run(raw: &[u8], start: usize) -> Option<(usize, usize)> {
    let is_sep = |c: u8| matches!(c, b'-' | b'.' | b'(' | b')' | b'/' | b' ');
    let (mut i, mut end, mut digits, mut joined) = (start, start, 0, false);
    while i < raw.len() {
        if raw[i].is_ascii_digit() {
            digits += 1;
            i += 1;
            end = i;
            continue;
        }
        let seps = raw[i..].iter().take(3).take_while(|&&c| is_sep(c)).count();
        if (1..=2).contains(&seps) && raw.get(i + seps).is_some_and(u8::is_ascii_digit) {
            joined = true;
            i += seps;
            continue;
        }
        break;
    }
    joined.then_some((end, digits))
}

/// The digits at `start` are the value of a `"ts"` key (`"ts"`, optional blanks, `:`,
/// optional blanks).
fn is_ts_value(raw: &[u8], start: usize) -> bool {
    let before = raw[..start].trim_ascii_end();
    let Some(before) = before.strip_suffix(b":") else {
        return false;
    };
    before.trim_ascii_end().ends_with(b"\"ts\"")
}

/// Names the top-level fields the spans fall under, or [`WHOLE_RECORD`] when the record is
/// not a JSON object (then the scan's keys mean nothing).
fn fields_of(raw: &[u8], spans: &[Span]) -> Vec<String> {
    let is_object = serde_json::from_slice::<serde::de::IgnoredAny>(raw).is_ok()
        && raw.trim_ascii_start().first() == Some(&b'{');
    if !is_object {
        return vec![WHOLE_RECORD.to_string()];
    }
    let mut fields: Vec<String> = Vec::new();
    for s in spans {
        let name = match s.key_at {
            Some(k) => key_name(raw, k),
            None => WHOLE_RECORD.to_string(),
        };
        if !fields.contains(&name) {
            fields.push(name);
        }
    }
    fields
}

/// The key string starting with the quote at `at`, itself redacted, unescaped where it
/// parses.
fn key_name(raw: &[u8], at: usize) -> String {
    let mut end = at + 1;
    let mut escaped = false;
    while end < raw.len() {
        match raw[end] {
            _ if escaped => escaped = false,
            b'\\' => escaped = true,
            b'"' => break,
            _ => {}
        }
        end += 1;
    }
    let quoted = redact(&raw[at..(end + 1).min(raw.len())]).bytes;
    serde_json::from_slice::<String>(&quoted).unwrap_or_else(|_| {
        let inner = quoted
            .get(1..quoted.len().saturating_sub(1))
            .unwrap_or_default();
        String::from_utf8_lossy(inner).into_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(r: &Redacted<'_>) -> String {
        String::from_utf8(r.bytes.to_vec()).unwrap()
    }

    #[test]
    fn raw_identifier_record_is_redacted_and_stays_json() {
        let raw = br#"{"event_id":"e1","ts":1791158400000,"kind":"sms","from":"+447700900123","to":"b","imsi":234150999999999}"#;
        let r = redact(raw);
        let v: serde_json::Value = serde_json::from_slice(&r.bytes).unwrap();
        assert_eq!(v["from"], MARK);
        assert_eq!(v["imsi"], MARK);
        // An epoch-ms time is kept: 13 digits, the value of `ts`.
        assert_eq!(v["ts"], 1_791_158_400_000i64);
        assert_eq!(r.fields, ["from", "imsi"]);
        assert!(!has_raw_identifier(&r.bytes));
    }

    #[test]
    fn nested_and_embedded_runs_are_found() {
        let raw =
            br#"{"event_id":"e","x":{"y":["tel:447700900123;x"]},"to":"b","n":-4477009001234}"#;
        let r = redact(raw);
        assert_eq!(
            text(&r),
            r#"{"event_id":"e","x":{"y":["tel:[redacted];x"]},"to":"b","n":"[redacted]"}"#
        );
        assert_eq!(r.fields, ["x", "n"]);
    }

    /// A number written with separators (the decoder rejects `+44-7700-900123` as
    /// `raw_identifier`) was dead-lettered in the clear: no one of its digit groups is ten
    /// long.
    #[test]
    fn numbers_written_with_separators_are_redacted_whole() {
        let raw = br#"{"event_id":"e","ts":1791158400000,"kind":"sms","from":"+44-7700-900123","to":"(0)7700.900123","imsi":"07700 900123","imei":"35-345678-901234-5"}"#;
        let r = redact(raw);
        let v: serde_json::Value = serde_json::from_slice(&r.bytes).unwrap();
        for f in ["from", "to", "imsi", "imei"] {
            assert_eq!(v[f], MARK, "{f}: {}", text(&r));
        }
        assert_eq!(v["ts"], 1_791_158_400_000i64);
        assert!(!has_raw_identifier(&r.bytes));
        // Dates and short numbers with separators are not identifiers; two numbers joined
        // are each redacted as before (the second with the `-` before it, as a sign).
        let r = redact(br#"{"d":"2026-10-05","v":"1.2.3","two":"07700900123-07700900124"}"#);
        assert_eq!(
            text(&r),
            r#"{"d":"2026-10-05","v":"1.2.3","two":"[redacted][redacted]"}"#
        );
    }

    #[test]
    fn not_json_and_not_utf8_are_redacted_too() {
        let r = redact(b"msisdn=447700900123 \xff imei 356938035643809");
        assert_eq!(
            r.bytes.as_ref(),
            b"msisdn=\"[redacted]\" \xff imei \"[redacted]\""
        );
        assert_eq!(r.fields, [WHOLE_RECORD]);
        // Cut short, as a truncated dead letter is.
        let r = redact(br#"{"from":"447700900123","to":"4477"#);
        assert_eq!(r.fields, [WHOLE_RECORD]);
        assert!(!has_raw_identifier(&r.bytes));
    }

    #[test]
    fn short_long_and_time_values_are_kept() {
        let raw = br#"{"event_id":"e","ts":1791158400000,"a":"123456789","b":"1234567890123456","duration_s":12}"#;
        let r = redact(raw);
        assert!(matches!(r.bytes, Cow::Borrowed(_)));
        assert!(r.fields.is_empty());
        // A 13-digit string `ts`, or one under another key, is not a time: redacted.
        let r = redact(br#"{"ts":"1791158400000","t":1791158400000}"#);
        assert_eq!(text(&r), r#"{"ts":"[redacted]","t":"[redacted]"}"#);
    }

    #[test]
    fn a_key_that_is_an_identifier_is_not_named() {
        let r = redact(br#"{"447700900123":"x","event_id":"e"}"#);
        assert_eq!(r.fields, [MARK]);
    }
}
