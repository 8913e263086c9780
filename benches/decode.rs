//! Decoding throughput: valid records (borrowed strings, both time forms) and malformed ones.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use linewatch::event::{decode, DecodeOptions};

#[path = "common/mod.rs"]
mod common;

fn bench(c: &mut Criterion) {
    let recs = common::records(10_000, 5_000);
    let opts = DecodeOptions::default();
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(recs.len() as u64));
    g.bench_function("valid_epoch_ms", |b| {
        b.iter(|| {
            for r in &recs {
                black_box(decode(black_box(r), &opts).is_ok());
            }
        })
    });
    let rfc: Vec<Vec<u8>> = recs
        .iter()
        .map(|r| {
            let s = String::from_utf8_lossy(r)
                .replace(r#""ts":17"#, r#""ts":"2026-10-05T13:02:11.250Z","x":17"#);
            s.into_bytes()
        })
        .collect();
    g.bench_function("valid_rfc3339", |b| {
        b.iter(|| {
            for r in &rfc {
                black_box(decode(black_box(r), &opts).is_ok());
            }
        })
    });
    let bad: Vec<&[u8]> = vec![
        b"{not json",
        b"[1,2,3]",
        br#"{"event_id":"e","ts":1759669331250,"kind":"mms","from":"a","to":"b"}"#,
        br#"{"event_id":"e","ts":1759669331250,"kind":"sms","from":"+447700900123","to":"b"}"#,
    ];
    g.throughput(Throughput::Elements(bad.len() as u64));
    g.bench_function("malformed", |b| {
        b.iter(|| {
            for r in &bad {
                black_box(decode(black_box(r), &opts).is_err());
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
