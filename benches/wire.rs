//! The internal records' envelope (`src/streams/wire.rs`): encode and decode time and size
//! of evidence, the part of issue 11's repartition hop that is ours to cost (the broker's
//! round trip is measured end to end). Sizes are printed once at the start.
//!
//! `cargo bench --bench wire`

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use linewatch::exchange::{Body, Dest, Evidence};
use linewatch::streams::wire::{decode, encode, Kind};

fn evidence(dest: Dest, body: Body) -> Evidence {
    Evidence {
        dest,
        at: 1_780_000_000_123,
        event_id: "ev-0000000000123456".into(),
        order: [1_780_000_000_123, 812_345, 2 << 32 | 1, 0],
        body,
    }
}

/// The common small exchange, and the largest one: a new line's audience query with the
/// default 64-slot sketch and 40 recipients' fingerprints (a typical advert list).
fn samples() -> Vec<(&'static str, Evidence)> {
    let mut x = 0x9E37_79B9u32;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    let mins: Box<[u32]> = (0..64).map(|_| next()).collect();
    let mut fps: Vec<u32> = (0..40).map(|_| next()).collect();
    fps.sort_unstable();
    vec![
        (
            "sim_seen",
            evidence(
                Dest::Handset(0xDEAD_BEEF_0123_4567),
                Body::SimSeen {
                    handset: 0x0123_4567_89AB_CDEF,
                    at_s: 1_780_000,
                },
            ),
        ),
        (
            "crew_enrol",
            evidence(
                Dest::Number(0xDEAD_BEEF_0123_4567),
                Body::CrewEnrol {
                    line: 0x0123_4567_89AB_CDEF,
                    line_name: "p-3f9a1c0d2b7e4a11".into(),
                },
            ),
        ),
        (
            "audience_query_40",
            evidence(
                Dest::Every,
                Body::AudienceQuery {
                    line: 0x0123_4567_89AB_CDEF,
                    query: 1,
                    first_seen_s: 1_779_000,
                    recipients: 40,
                    handset_fp: next(),
                    mins,
                    fps: fps.into(),
                },
            ),
        ),
    ]
}

fn bench(c: &mut Criterion) {
    for (name, e) in samples() {
        let bytes = encode(Kind::Evidence, &e);
        println!("wire: {name}: {} bytes", bytes.len());
        let mut g = c.benchmark_group(format!("wire/{name}"));
        g.throughput(Throughput::Elements(1));
        g.bench_function("encode", |b| {
            b.iter(|| encode(Kind::Evidence, black_box(&e)))
        });
        g.bench_function("decode", |b| {
            b.iter(|| decode::<Evidence>(black_box(&bytes), Kind::Evidence).expect("decodes"))
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
