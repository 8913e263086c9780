//! A deterministic record mix for the criterion benches: ordinary subscribers texting and
//! calling a few contacts, a few bulk senders, handsets with SIMs, in event-time order with
//! small jitter. Independent of `generate` so a generator change does not move the figures.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub fn records(n: usize, subscribers: usize) -> Vec<Vec<u8>> {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let t0: i64 = 1_790_000_000_000;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let ts = t0 + (i as i64) * 50 + rng.gen_range(0..30_000);
        let from = rng.gen_range(0..subscribers);
        // Most contacts stay within a small circle; 1 in 200 records is a bulk sender's text.
        let (from, to) = if i % 200 == 0 {
            (from % 20, rng.gen_range(0..subscribers))
        } else {
            (from, (from + rng.gen_range(1..12)) % subscribers)
        };
        let kind = if rng.gen_bool(0.6) { "sms" } else { "call" };
        let dur = if kind == "call" {
            rng.gen_range(0..300)
        } else {
            0
        };
        out.push(
            format!(
                r#"{{"event_id":"ev-{i:09}","ts":{ts},"kind":"{kind}","from":"p:{from:016x}","to":"p:{to:016x}","duration_s":{dur},"imsi":"s:{from:016x}","imei":"h:{from:016x}","cell":"c{}"}}"#,
                from % 500
            )
            .into_bytes(),
        );
    }
    out
}
