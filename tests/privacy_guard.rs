//! The privacy guard end to end through the public API: raw identifiers written as URIs,
//! with prefixes or with JSON escapes are rejected as `raw_identifier`, and their dead
//! letters (file and Kafka share [`redact`]) carry none of them, still as valid JSON.

use linewatch::event::{decode, looks_raw, DecodeOptions, Reason};
use linewatch::redact::{self, has_raw_identifier, redact, MARK};
use linewatch::replay::DeadLetter;

fn record(from: &str) -> String {
    format!(r#"{{"event_id":"e1","ts":1791158400000,"kind":"sms","from":"{from}","to":"Lb"}}"#)
}

/// The dead letter of a line as `replay --dead-letter` writes it, and its `raw` parsed.
fn dead_letter(line: &str) -> (String, serde_json::Value) {
    let why = decode(line.as_bytes(), &DecodeOptions::default()).unwrap_err();
    let letter = DeadLetter::new(1, why, line.as_bytes());
    let json = serde_json::to_string(&letter).unwrap();
    let raw: serde_json::Value = serde_json::from_str(letter.raw.as_deref().unwrap())
        .unwrap_or_else(|e| panic!("raw is not JSON: {json}: {e}"));
    (json, raw)
}

#[test]
fn uri_and_prefix_forms_are_rejected_as_raw_identifier() {
    for raw in [
        "sip:+447700900123@ims.example.org",
        "sips:+447700900123@x.org",
        "tel:+447700900123;phone-context=+44",
        "447700900123@sms",
        "msisdn=447700900123",
        "urn:tel:07700900123",
        "TEL:+44-7700-900123;ext=1",
    ] {
        assert!(looks_raw(raw), "{raw}");
        let line = record(raw);
        let err = decode(line.as_bytes(), &DecodeOptions::default()).unwrap_err();
        assert_eq!(err.reason, Reason::RawIdentifier, "{raw}");
        assert_eq!(err.field, Some("from"), "{raw}");
        let (json, v) = dead_letter(&line);
        assert_eq!(
            v["from"].as_str().map(|s| s.contains(MARK)),
            Some(true),
            "{json}"
        );
        assert!(!json.contains("7700"), "{json}");
    }
    for fine in [
        "sipping",
        "tel",
        "msisdn",
        "user@example",
        "urn:x:abc",
        "H6e8128280909a981",
        "L74928e1116c75c4b",
        "S3933c279208fd89e",
    ] {
        assert!(!looks_raw(fine), "{fine}");
        assert!(decode(record(fine).as_bytes(), &DecodeOptions::default()).is_ok());
    }
}

#[test]
fn escaped_number_is_rejected_and_its_dead_letter_redacted() {
    let from = r"\u002b\u0034\u0034\u0037\u0037\u0030\u0030\u0039\u0030\u0030\u0031\u0032\u0033";
    let line = record(from);
    let err = decode(line.as_bytes(), &DecodeOptions::default()).unwrap_err();
    assert_eq!(
        (err.reason, err.field),
        (Reason::RawIdentifier, Some("from"))
    );
    assert!(has_raw_identifier(line.as_bytes()));
    let r = redact(line.as_bytes());
    let text = String::from_utf8(r.bytes.to_vec()).unwrap();
    assert!(!text.contains(r"\u003"), "{text}");
    assert!(text.contains(MARK), "{text}");
    assert!(!has_raw_identifier(&r.bytes));
    let (json, v) = dead_letter(&line);
    assert_eq!(v["from"], MARK, "{json}");
    assert!(!json.contains(r"u003"), "{json}");
    // Whatever reads the dead letter decodes no number from it.
    let decoded = v.to_string();
    assert!(!decoded.contains("447700900123"), "{decoded}");
}

#[test]
fn redacted_numbers_with_fraction_or_exponent_stay_json() {
    for line in [
        r#"{"event_id":"e1","ts":1791158400000,"kind":"sms","from":"a","to":"b","duration_s":447700900123.5}"#,
        r#"{"n":447700900123.5e3}"#,
        r#"{"n":-447700900123.25E-3,"m":[1.5e3,4477009001234e-2]}"#,
        r#"[0.447700900123,-447700900123.0e+1]"#,
    ] {
        let r = redact::redact(line.as_bytes());
        let v: serde_json::Value = serde_json::from_slice(&r.bytes)
            .unwrap_or_else(|e| panic!("{}: {e}", String::from_utf8_lossy(&r.bytes)));
        // The epoch-ms time is kept by design; no other run of ten digits is left.
        let text = String::from_utf8_lossy(&r.bytes).replace("1791158400000", "");
        let longest = text
            .split(|c: char| !c.is_ascii_digit())
            .map(str::len)
            .max()
            .unwrap_or(0);
        assert!(longest < 10, "{text}");
        assert!(!has_raw_identifier(&r.bytes), "{v}");
    }
}
