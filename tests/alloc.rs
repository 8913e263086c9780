//! No allocation per record on the steady path (issue 10).
//!
//! Its own test binary because it replaces the global allocator with one that counts: the
//! engine is warmed up over a small population of lines, handsets and customers, then fed
//! more of the same traffic (new event ids and later times, but no new line, recipient,
//! handset, SIM or cell) while the allocations made on this thread are counted.
//!
//! What may still allocate is amortised growth: the dedup set remembers every new event id,
//! so its table and its per-minute bucket lists double now and then. That is a handful of
//! allocations over thousands of records; an allocation *per record* shows in every block.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use linewatch::alert::Alert;
use linewatch::cells::CellMap;
use linewatch::config::Config;
use linewatch::engine::{Engine, Verdict};

struct Counting;

thread_local! {
    /// Allocations made on this thread while counting is on (`None`: off).
    static COUNT: Cell<Option<u64>> = const { Cell::new(None) };
}

fn note() {
    // `try_with`: the allocator may run while this thread's locals are being torn down.
    let _ = COUNT.try_with(|c| {
        if let Some(n) = c.get() {
            c.set(Some(n + 1));
        }
    });
}

// SAFETY: every call is passed straight to the system allocator; counting touches only a
// const-initialised thread-local `Cell`, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Allocations made on this thread by `f`.
fn allocations(f: impl FnOnce()) -> u64 {
    COUNT.with(|c| c.set(Some(0)));
    f();
    COUNT.with(|c| c.replace(None)).unwrap_or(0)
}

const LINES: usize = 400;
const RECIPIENTS: usize = 6;
const T0: i64 = 1_790_000_000_000; // 2026-09-21

/// Cells `c0`..`c49`, half metro and half county, in five areas.
fn cells() -> Arc<CellMap> {
    let mut csv = String::from("cell,area,class\n");
    for c in 0..50 {
        let class = if c % 2 == 0 { "metro" } else { "county" };
        csv.push_str(&format!("c{c},a{},{class}\n", c % 5));
    }
    Arc::new(CellMap::parse(csv).unwrap())
}

/// One round of the population's traffic, every record at `t` ms plus a few ms each: each
/// line texts each of its recipients, each recipient texts back (a customer contact), and
/// each line calls its first recipient. Every record carries its SIM, handset and cell.
fn round(round: usize, t: i64) -> Vec<String> {
    let mut out = Vec::new();
    let mut n = 0i64;
    let mut rec = |from: &str, to: &str, kind: &str, who: usize| {
        n += 1;
        let dur = if kind == "call" {
            r#","duration_s":45"#
        } else {
            ""
        };
        let (sim, set, cell) = (format!("S{who:08x}"), format!("H{who:08x}"), who % 50);
        out.push(format!(
            r#"{{"event_id":"r{round}-{n}","ts":{},"kind":"{kind}","from":"{from}","to":"{to}"{dur},"imsi":"{sim}","imei":"{set}","cell":"c{cell}"}}"#,
            t + n
        ));
    };
    for l in 0..LINES {
        let line = format!("L{l:08x}");
        for r in 0..RECIPIENTS {
            let c = LINES + l * RECIPIENTS + r;
            let cust = format!("C{c:08x}");
            rec(&line, &cust, "sms", l);
            rec(&cust, &line, "sms", c);
        }
        rec(
            &line,
            &format!("C{:08x}", LINES + l * RECIPIENTS),
            "call",
            l,
        );
    }
    out
}

#[test]
fn records_over_warm_state_allocate_nothing() {
    let mut engine = Engine::new(Config::default());
    engine.set_cells(Some(cells()));
    let wall = linewatch::replay::wall_ms();
    let mut alerts: Vec<Alert> = Vec::with_capacity(64);
    // Warm-up: every key created, then the same traffic again so every list and table that
    // grows with use has grown.
    for r in 0..3 {
        for rec in round(r, T0 + r as i64 * 60_000) {
            engine.process(rec.as_bytes(), 0, wall, &mut alerts);
        }
    }
    assert!(alerts.is_empty(), "the population is below every threshold");
    // Measured: four more rounds a minute apart, counted in blocks of 500 records.
    let records: Vec<String> = (3..7)
        .flat_map(|r| round(r, T0 + r as i64 * 60_000))
        .collect();
    let mut blocks = Vec::new();
    for block in records.chunks(500) {
        let n = allocations(|| {
            for rec in block {
                let v = engine.process(rec.as_bytes(), 0, wall, &mut alerts);
                assert!(matches!(v, Verdict::Valid), "{v:?}");
            }
        });
        blocks.push(n);
    }
    assert!(alerts.is_empty());
    let total: u64 = blocks.iter().sum();
    eprintln!(
        "{} records in blocks of 500: {total} allocations: {blocks:?}",
        records.len()
    );
    // Amortised growth (the dedup set's table and the list of each minute's ids, doubling)
    // is a few allocations per doubling; one allocation per record would be 500 a block.
    assert!(
        blocks.iter().all(|&n| n <= 12),
        "allocations per block of 500 records: {blocks:?}"
    );
    assert!(
        total * 200 < records.len() as u64,
        "{total} allocations over {} records: {blocks:?}",
        records.len()
    );
}
