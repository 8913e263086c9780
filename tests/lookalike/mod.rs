//! Look-alikes the generator does not make, built by adding records to (and rewriting
//! records of) a generated city, so the project's own cities stay as they are
//! (`tests/new_number.rs`, `tests/club_organiser.rs`).

use linewatch::generate::{self, GenOptions};
use serde_json::Value;

/// The city both look-alikes are built on: 3,000 subscribers × 5 days, seed 1; its records
/// and its labels CSV.
pub fn generated_city() -> (Vec<u8>, String) {
    let opts = GenOptions {
        seed: 1,
        subscribers: 3_000,
        days: 5,
        ..GenOptions::default()
    };
    let (events, labels, _) = generate::generate_in_memory(&opts).unwrap();
    (events, labels)
}

/// A generated city's lines, each with its record when it is a valid one (the generator's
/// malformed lines get `None` and pass through [`merge`] as they are), and the first event
/// time.
pub struct City<'a> {
    pub lines: Vec<&'a [u8]>,
    pub parsed: Vec<Option<Value>>,
    pub start: i64,
}

pub fn parse(events: &[u8]) -> City<'_> {
    let lines: Vec<&[u8]> = events
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let parsed: Vec<Option<Value>> = lines
        .iter()
        .map(|l| {
            serde_json::from_slice::<Value>(l).ok().filter(|v| {
                v["ts"].as_i64().is_some_and(|t| t > 1_500_000_000_000)
                    && v["from"].is_string()
                    && v["to"].is_string()
            })
        })
        .collect();
    let start = parsed
        .iter()
        .flatten()
        .filter_map(|v| v["ts"].as_i64())
        .min()
        .expect("a city has records");
    City {
        lines,
        parsed,
        start,
    }
}

/// The city's lines with `extra` records added, each before the first record of the city
/// that is later, and each valid record replaced by what `rewrite` makes of it (`None`: as
/// it is).
pub fn merge(
    city: &City,
    mut extra: Vec<Value>,
    rewrite: impl Fn(&Value) -> Option<Value>,
) -> Vec<u8> {
    extra.sort_by_key(|v| v["ts"].as_i64());
    let mut out = Vec::with_capacity(
        city.lines.iter().map(|l| l.len() + 1).sum::<usize>() + extra.len() * 200,
    );
    let mut next = extra.iter().peekable();
    for (line, v) in city.lines.iter().zip(&city.parsed) {
        if let Some(v) = v {
            let ts = v["ts"].as_i64().unwrap();
            while let Some(e) = next.next_if(|e| e["ts"].as_i64().unwrap() <= ts) {
                out.extend_from_slice(e.to_string().as_bytes());
                out.push(b'\n');
            }
            if let Some(w) = rewrite(v) {
                out.extend_from_slice(w.to_string().as_bytes());
                out.push(b'\n');
                continue;
            }
        }
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    for e in next {
        out.extend_from_slice(e.to_string().as_bytes());
        out.push(b'\n');
    }
    out
}
