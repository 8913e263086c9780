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
//! JSON record stays JSON: there the whole JSON number the run is part of (sign, fraction,
//! exponent) is replaced, as `447700900123.5` would otherwise leave `"[redacted]".5`.
//! Inside a string, digit groups joined by one or two separators count as one run, and a
//! `\uXXXX` (or `\/`) escape standing for a digit, `+` or separator counts as that
//! character, so a number written with escapes (which any JSON reader decodes) is found and
//! replaced whole; other escapes are skipped whole. The one exception is a run of exactly
//! 13 digits that is the value of a `"ts"` key: that is an epoch-millisecond time
//! (2001-2286), which a dead-letter reader needs and which identifies no one. Runs of 16
//! digits or more are not the shape of an MSISDN/IMSI/IMEI and are kept.

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

/// Finds the runs to redact with a small JSON-aware scan: string state (for quoting and
/// escapes) and the top-level key in force (for naming the field). On bytes that are not
/// JSON the scan still finds every run; only the field names become meaningless, and those
/// are not used then.
fn find_runs(raw: &[u8]) -> Vec<Span> {
    let mut spans: Vec<Span> = Vec::new();
    let mut in_string = false;
    let mut depth = 0usize;
    // At depth 1 the string after `{` or `,` is a key: it is in force from its opening quote
    // (so a run inside the key itself is named by that key, which is then redacted).
    let mut expect_key = false;
    let mut key_at: Option<usize> = None;
    // The unit before `i`: where it starts and the character it stands for (a sign or `(`
    // there belongs to a run starting at `i`).
    let mut prev: Option<(usize, u8)> = None;
    // The end of the last run of number bytes looked at outside strings: the runs of digits
    // in one such run share it, so it is found once (the scan stays linear).
    let mut number_end = 0;
    let mut i = 0;
    while i < raw.len() {
        let (c, len) = unit(raw, i, in_string);
        if in_string {
            // An escaped quote is a unit of its own (`c` is not `"` for it).
            if c == b'"' {
                in_string = false;
            }
        } else {
            match c {
                b'"' => {
                    in_string = true;
                    if depth == 1 && expect_key {
                        key_at = Some(i);
                        expect_key = false;
                    }
                }
                b'{' | b'[' => {
                    depth += 1;
                    expect_key = depth == 1 && c == b'{';
                }
                b'}' | b']' => depth = depth.saturating_sub(1),
                b',' if depth == 1 => expect_key = true,
                _ => {}
            }
        }
        if c.is_ascii_digit() {
            let key_at = if depth >= 1 { key_at } else { None };
            let after = spans.last().map_or(0, |s| s.end);
            let (span, end) = if in_string {
                string_run(raw, i, prev)
            } else {
                number_run(raw, i, prev, after, &mut number_end)
            };
            if let Some((start, end)) = span {
                spans.push(Span {
                    start,
                    end,
                    in_string,
                    key_at,
                });
            }
            // The run's units are digits, separators and their escapes: none changes the
            // scan's state. A run ends with a digit, which no run after it takes in.
            prev = None;
            i = end;
            continue;
        }
        prev = Some((i, c));
        i += len;
    }
    spans
}

/// The run inside a string whose first digit (unit) is at `i`, `prev` the unit before it:
/// the span to redact, if any, and where the scan goes on.
fn string_run(raw: &[u8], i: usize, prev: Option<(usize, u8)>) -> (Option<(usize, usize)>, usize) {
    let sign = |signs: &[u8]| match prev {
        Some((at, c)) if signs.contains(&c) => at,
        _ => i,
    };
    if let Some((end, digits)) = separated_run(raw, i) {
        if (10..=15).contains(&digits) {
            return (Some((sign(b"+-("), end)), end);
        }
    }
    let (mut end, mut n) = (i, 0);
    while end < raw.len() {
        let (c, len) = unit(raw, end, true);
        if !c.is_ascii_digit() {
            break;
        }
        n += 1;
        end += len;
    }
    let span = (10..=15).contains(&n).then(|| (sign(b"+-"), end));
    (span, end)
}

/// The run of plain digits outside a string starting at `i`, `prev` the byte before it
/// and `after` the end of the last span: the span to redact, if any, and where the scan
/// goes on. When the run is part of a JSON number (a sign, a fraction, an exponent), the
/// span is the whole number, so that the record stays JSON.
fn number_run(
    raw: &[u8],
    i: usize,
    prev: Option<(usize, u8)>,
    after: usize,
    number_end: &mut usize,
) -> (Option<(usize, usize)>, usize) {
    let end = i + raw[i..].iter().take_while(|c| c.is_ascii_digit()).count();
    let n = end - i;
    if !(10..=15).contains(&n) || (n == 13 && is_ts_value(raw, i)) {
        return (None, end);
    }
    let in_number = |c: &u8| matches!(c, b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-');
    let from = i - raw[after..i]
        .iter()
        .rev()
        .take_while(|c| in_number(c))
        .count();
    if *number_end < end {
        *number_end = end + raw[end..].iter().take_while(|c| in_number(c)).count();
    }
    let to = *number_end;
    if is_json_number(&raw[from..to]) {
        return (Some((from, to)), to);
    }
    let start = match prev {
        Some((at, b'+' | b'-')) => at,
        _ => i,
    };
    (Some((start, end)), end)
}

/// `t` is a JSON number, leading zeros allowed (`-`, digits, optional `.` and digits,
/// optional `e` or `E`, sign and digits).
fn is_json_number(t: &[u8]) -> bool {
    fn digits(t: &[u8]) -> Option<&[u8]> {
        let n = t.iter().take_while(|c| c.is_ascii_digit()).count();
        (n > 0).then(|| &t[n..])
    }
    let t = t.strip_prefix(b"-").unwrap_or(t);
    let Some(mut t) = digits(t) else {
        return false;
    };
    if let Some(f) = t.strip_prefix(b".") {
        match digits(f) {
            Some(rest) => t = rest,
            None => return false,
        }
    }
    if let Some(e) = t.strip_prefix(b"e").or_else(|| t.strip_prefix(b"E")) {
        let e = e
            .strip_prefix(b"+")
            .or_else(|| e.strip_prefix(b"-"))
            .unwrap_or(e);
        match digits(e) {
            Some(rest) => t = rest,
            None => return false,
        }
    }
    t.is_empty()
}

/// The unit of text at `i` and the character it stands for, as the scan sees it: one byte,
/// or inside a string an escape: `\uXXXX` (6 bytes) or `\/` standing for a digit, `+`, or
/// one of the separators is that character, so that a number written with escapes is
/// found (and redacted) whole; any other escape stands for no character the scan looks
/// for (0), so its hex digits are not taken for digits and an escaped quote ends no string.
fn unit(raw: &[u8], i: usize, in_string: bool) -> (u8, usize) {
    let b = raw[i];
    if !in_string || b != b'\\' {
        return (b, 1);
    }
    match raw.get(i + 1) {
        Some(b'u') => match raw.get(i + 2..i + 6) {
            Some(h) if h.iter().all(u8::is_ascii_hexdigit) => {
                let v = h.iter().fold(0u32, |v, &d| {
                    v * 16 + char::from(d).to_digit(16).unwrap_or_default()
                });
                match u8::try_from(v) {
                    Ok(c) if c.is_ascii_digit() || c == b'+' || is_sep(c) => (c, 6),
                    _ => (0, 6),
                }
            }
            _ => (0, 2),
        },
        Some(b'/') => (b'/', 2),
        Some(_) => (0, 2),
        None => (0, 1),
    }
}

/// A separator between the digit groups of a number written inside a string.
fn is_sep(c: u8) -> bool {
    matches!(c, b'-' | b'.' | b'(' | b')' | b'/' | b' ')
}

/// A number written with separators inside a string (`+44-7700-900123`, `07700 900123`,
/// `(0)7700.900123`): from the digit at `start`, groups of digits joined by one or two of
/// `- . ( ) /` and blanks (each a byte or an escape standing for it, see [`unit`]); its
/// end (after its last digit) and its digit count, if it has at least one separator (a
/// plain run is the caller's). Its digits decide as a plain run's do.
fn separated_run(raw: &[u8], start: usize) -> Option<(usize, usize)> {
    let (mut i, mut end, mut digits, mut joined) = (start, start, 0, false);
    while i < raw.len() {
        let (c, len) = unit(raw, i, true);
        if c.is_ascii_digit() {
            digits += 1;
            i += len;
            end = i;
            // Too long to be redacted already: no need to read on (the scan stays linear).
            if digits > 15 {
                break;
            }
            continue;
        }
        let (mut j, mut seps) = (i, 0);
        while seps < 3 && j < raw.len() {
            let (c, len) = unit(raw, j, true);
            if !is_sep(c) {
                break;
            }
            seps += 1;
            j += len;
        }
        if (1..=2).contains(&seps) && j < raw.len() && unit(raw, j, true).0.is_ascii_digit() {
            joined = true;
            i = j;
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

    /// True if `b` holds a run of ten ASCII digits or more.
    fn has_ten_digits(b: &[u8]) -> bool {
        b.split(|c| !c.is_ascii_digit()).any(|r| r.len() >= 10)
    }

    /// A number written with `\u` escapes was dead-lettered verbatim: any JSON reader
    /// decodes `+447700900123` from it.
    #[test]
    fn numbers_written_with_json_escapes_are_redacted_whole() {
        let raw = br#"{"event_id":"e1","ts":1791158400000,"kind":"sms","from":"\u002b\u0034\u0034\u0037\u0037\u0030\u0030\u0039\u0030\u0030\u0031\u0032\u0033","to":"b"}"#;
        assert!(has_raw_identifier(raw));
        let r = redact(raw);
        let t = text(&r);
        assert!(!t.contains("\\u003"), "{t}");
        assert!(t.contains(MARK), "{t}");
        let v: serde_json::Value = serde_json::from_slice(&r.bytes).unwrap();
        assert_eq!(v["from"], MARK, "{t}");
        assert_eq!(v["ts"], 1_791_158_400_000i64);
        assert_eq!(r.fields, ["from"]);
        assert!(!has_raw_identifier(&r.bytes));
        // Mixed plain and escaped digits, escaped separators (`\/` too), upper-case hex.
        let r = redact(
            br#"{"a":"+44\u00377700900123","b":"\u002B44-7700\u002d900123","c":"07700\/900123","d":"x\u0028\u0030)7700.900123"}"#,
        );
        assert_eq!(
            text(&r),
            r#"{"a":"[redacted]","b":"[redacted]","c":"[redacted]","d":"x[redacted]"}"#
        );
        assert_eq!(r.fields, ["a", "b", "c", "d"]);
        // Escapes of other characters are left alone, and a literal backslash before a
        // `u` is no escape.
        let raw = br#"{"a":"\u00e9\u0041","b":"\\u0034x","c":"\"12345\n"}"#;
        assert!(matches!(redact(raw).bytes, Cow::Borrowed(_)));
    }

    /// A number with a fraction or an exponent was cut at the run's end: `{"n":"[redacted]".5}`.
    #[test]
    fn json_numbers_with_fraction_or_exponent_are_redacted_whole() {
        for line in [
            r#"{"n":447700900123.5}"#,
            r#"{"n":447700900123.5e3}"#,
            r#"{"n":447700900123e3}"#,
            r#"{"n":-447700900123.25E-3}"#,
            r#"{"n":-447700900123.5e+3,"m":1.5e3}"#,
            r#"{"n":0.447700900123}"#,
            r#"{"n":1.5e3447700900123}"#,
            r#"{"n":1234567890123456.447700900123}"#,
            r#"{"n": 447700900123.5e3 ,"k":[447700900123.0,-1]}"#,
        ] {
            let r = redact(line.as_bytes());
            let t = text(&r);
            let v: serde_json::Value =
                serde_json::from_slice(&r.bytes).unwrap_or_else(|e| panic!("{line} -> {t}: {e}"));
            assert_eq!(v["n"], MARK, "{line} -> {t}");
            assert!(!has_ten_digits(&r.bytes), "{line} -> {t}");
            assert!(!has_raw_identifier(&r.bytes), "{line} -> {t}");
        }
        // The time is still kept, and a short fraction beside it untouched.
        let r = redact(br#"{"ts":1791158400000,"x":1.5e3,"n":-447700900123.5}"#);
        assert_eq!(
            text(&r),
            r#"{"ts":1791158400000,"x":1.5e3,"n":"[redacted]"}"#
        );
    }

    #[test]
    fn a_key_that_is_an_identifier_is_not_named() {
        let r = redact(br#"{"447700900123":"x","event_id":"e"}"#);
        assert_eq!(r.fields, [MARK]);
    }
}
