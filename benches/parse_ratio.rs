//! The engine's rate against serde_json's parse-only rate on the same file, in one run.
//!
//!   cargo bench --bench parse_ratio -- FILE [ROUNDS]      (no FILE: a small generated city)
//!   taskset -c 0 cargo bench --bench parse_ratio -- FILE     (one core, as issue 10 asks)
//!
//! The file is read into memory once (I/O is not timed). Then, per round and in turns so
//! machine noise hits each alike:
//! - `parse_only`: every line deserialised with serde_json into a struct of borrowed `&str`
//!   fields (the floor for any JSON decoder that still validates the syntax);
//! - `sonic_rs`, `simd_json`: the same borrowed struct through those two SIMD decoders (the
//!   candidates issue 10 names; `simd_json` parses in place, so each line is first copied
//!   into a reused buffer, as a decoder of borrowed Kafka payloads would have to);
//! - `decode`: linewatch's own decoder (`event::decode`: syntax, types, every field rule);
//! - `engine`: a fresh [`Engine`] over every line in batches of 4,096, as `replay` does on
//!   one core ([`Engine::process_batch`]: decode, dedup, watermark, every detector, alerts
//!   built and dropped); then again a record at a time ([`Engine::process`], `replay`'s path
//!   before 2026-12-04), printed beside it.
//!
//! Prints each rate (the best of the rounds, the least disturbed) and engine / parse_only,
//! the ratio issue 10 sets at ≥ 0.6 for one core.

use std::time::Instant;

use linewatch::config::Config;
use linewatch::engine::Engine;
use linewatch::event::{decode, DecodeOptions};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

#[path = "common/mod.rs"]
mod common;

/// The record's fields as borrowed slices: what a parse-only pass produces.
#[derive(Deserialize)]
#[allow(dead_code)] // read only by serde: the fields are the work being timed
struct Borrowed<'a> {
    #[serde(borrow)]
    event_id: &'a str,
    ts: Ts<'a>,
    kind: &'a str,
    from: &'a str,
    to: &'a str,
    duration_s: Option<i64>,
    imsi: Option<&'a str>,
    imei: Option<&'a str>,
    cell: Option<&'a str>,
}

/// `ts` is epoch ms or an RFC 3339 string (left unparsed here).
#[allow(dead_code)]
enum Ts<'a> {
    Ms(i64),
    Text(&'a str),
}

impl<'de: 'a, 'a> Deserialize<'de> for Ts<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ts<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("epoch ms or a string")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Ts::Ms(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                i64::try_from(v).map(Ts::Ms).map_err(E::custom)
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Ts::Text(v))
            }
        }
        d.deserialize_any(V)
    }
}

fn lines(data: &[u8]) -> Vec<&[u8]> {
    data.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect()
}

/// Seconds for one pass of `f` over every line; `f` returns whether the line was accepted.
/// Records a batch of the `engine` pass holds: `replay`'s step on one core.
const ENGINE_BATCH: usize = 4_096;

fn time(recs: &[&[u8]], mut f: impl FnMut(&[u8]) -> bool) -> (f64, usize) {
    let start = Instant::now();
    let ok = recs.iter().filter(|r| f(r)).count();
    (start.elapsed().as_secs_f64(), ok)
}

fn main() {
    // `cargo bench` passes `--bench`; everything else not starting with `-` is ours.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let rounds: usize = args
        .get(1)
        .and_then(|r| r.parse().ok())
        .unwrap_or(if args.is_empty() { 1 } else { 3 });
    let data = match args.first() {
        Some(path) => match std::fs::read(path) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("parse_ratio: cannot read {path}: {e}");
                std::process::exit(2);
            }
        },
        // No file (as under `cargo test --all-targets`): a small generated city, so the
        // program still runs end to end; its figures are not the issue's.
        None => {
            eprintln!("parse_ratio: no FILE given; a 2,000-subscriber city generated in memory");
            let opts = linewatch::generate::GenOptions {
                subscribers: 2_000,
                days: 2,
                ..Default::default()
            };
            match linewatch::generate::generate_in_memory(&opts) {
                Ok((events, _, _)) => events,
                Err(e) => {
                    eprintln!("parse_ratio: generating a city failed: {e}");
                    std::process::exit(1);
                }
            }
        }
    };
    let recs = lines(&data);
    let n = recs.len() as f64;
    let opts = DecodeOptions::default();
    let (mut parse, mut dec, mut eng, mut eng1) = (f64::MAX, f64::MAX, f64::MAX, f64::MAX);
    let (mut sonic, mut simd) = (f64::MAX, f64::MAX);
    let mut scratch: Vec<u8> = Vec::new();
    let mut alerts_total = 0;
    for round in 0..rounds {
        let (t, ok_parse) = time(&recs, |r| serde_json::from_slice::<Borrowed>(r).is_ok());
        parse = parse.min(t);
        let (t, ok_sonic) = time(&recs, |r| sonic_rs::from_slice::<Borrowed>(r).is_ok());
        sonic = sonic.min(t);
        let (t, ok_simd) = time(&recs, |r| {
            scratch.clear();
            scratch.extend_from_slice(r);
            simd_json::serde::from_slice::<Borrowed>(&mut scratch).is_ok()
        });
        simd = simd.min(t);
        let (t, ok_dec) = time(&recs, |r| decode(r, &opts).is_ok());
        dec = dec.min(t);
        let wall = linewatch::replay::wall_ms();
        let mut engine = Engine::new(Config::default());
        let start = Instant::now();
        common::feed_batched(&mut engine, &recs, wall, ENGINE_BATCH);
        let t = start.elapsed().as_secs_f64();
        eng = eng.min(t);
        alerts_total = engine.counters().alerts_total;
        let mut engine = Engine::new(Config::default());
        let mut alerts = Vec::new();
        let (t1, _) = time(&recs, |r| {
            alerts.clear();
            engine.process(r, 0, wall, &mut alerts);
            true
        });
        eng1 = eng1.min(t1);
        eprintln!(
            "round {round}: parse_only {:.0}/s ({ok_parse} ok), sonic_rs {:.0}/s ({ok_sonic} ok), \
             simd_json {:.0}/s ({ok_simd} ok), decode {:.0}/s ({ok_dec} ok), engine {:.0}/s \
             (a record at a time {:.0}/s)",
            n / parse,
            n / sonic,
            n / simd,
            n / dec,
            n / t,
            n / t1
        );
    }
    println!("records      {}", recs.len());
    println!("alerts       {alerts_total}");
    println!("parse_only   {:>10.0} records/s", n / parse);
    println!("sonic_rs     {:>10.0} records/s", n / sonic);
    println!("simd_json    {:>10.0} records/s", n / simd);
    println!("decode       {:>10.0} records/s", n / dec);
    println!(
        "engine       {:>10.0} records/s (a record at a time: {:.0})",
        n / eng,
        n / eng1
    );
    println!("engine / parse_only = {:.2}", parse / eng);
    println!(
        "decode / parse_only = {:.2}, / sonic_rs = {:.2}, / simd_json = {:.2}",
        parse / dec,
        sonic / dec,
        simd / dec
    );
}
