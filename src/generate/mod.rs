//! Labelled synthetic traffic: a seeded city of ordinary subscribers with deal networks and
//! look-alikes hidden in it, delivered the way mediation delivers records.
//!
//! # What is in the city
//!
//! - Ordinary subscribers in a metro city and several county towns, with heavy-tailed,
//!   mostly local social circles, a daily rhythm, texts and calls, and the odd ordinary
//!   handset or SIM change.
//! - Deal networks: a line run from a handset in a county town bulk-texts adverts to its
//!   customers (ordinary subscribers), who ring or text in; the number is replaced every
//!   1-3 days ("new number" to the old list), usually in the same handset; runners on burner
//!   handsets take a new SIM every day or so (now and then a new handset, mostly with the
//!   SIM moved into it) and make trips from the city to the town of
//!   hours to days, ringing customers to deliver the orders the line takes meanwhile.
//! - Commuters: about one subscriber in ten works in an area of the other class (a county
//!   town or the city) on weekdays; their handsets are labelled `lookalike_commuter`.
//! - Look-alikes that share one trait each with a deal line: appointment reminders, a school
//!   text to every parent, a repair shop's test handset, festive midnight greetings.
//!
//! Every knob is a documented constant in [`params`].
//!
//! # Delivery
//!
//! Records arrive seconds to minutes after their event time (never more than 10 minutes),
//! a few are re-delivered, a few deliberately late, and malformed lines are slipped in as
//! extra lines. The [`GenReport`] counts equal what `linewatch replay` counts.
//!
//! # Layout
//!
//! - [`params`]: the realism constants.
//! - `world`: areas, cells, subscribers, the social graph, networks, look-alikes, labels.
//! - `traffic`: one day of event-time records.
//! - `deliver`: arrival order, duplicates, late and malformed lines, the tallies.
//! - `format`: pseudonyms and the JSON of a record.
//!
//! Same seed and options give byte-identical output: every random choice comes from a
//! ChaCha8 stream seeded from the seed and a fixed tag per purpose (world, each day,
//! delivery), so a change in one part does not reshuffle the others.

pub mod params;

mod deliver;
mod format;
mod traffic;
mod world;

use std::collections::BTreeMap;
use std::io::{self, Write};

use crate::sheet;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use self::deliver::Delivery;
use self::format::{mix, Ident, Spoil};
use self::traffic::Traffic;
use self::world::{Geography, IdKind, World};

pub(crate) const HOUR_MS: i64 = 3_600_000;
pub(crate) const DAY_MS: i64 = 24 * HOUR_MS;

/// 2026-10-05T00:00:00Z, a Monday.
pub const DEFAULT_START_MS: i64 = 1_791_158_400_000;
/// Default population.
pub const DEFAULT_SUBSCRIBERS: usize = 20_000;
/// Default run length.
pub const DEFAULT_DAYS: u32 = 4;
/// Default share of extra malformed lines, per record.
pub const DEFAULT_MALFORMED_RATE: f64 = 0.001;
/// Default share of records delivered twice.
pub const DEFAULT_DUPLICATE_RATE: f64 = 0.002;
/// Default share of records delivered more than 30 minutes after their event time.
pub const DEFAULT_LATE_RATE: f64 = 0.0002;
/// Smallest population: deal networks need a few hundred people to sell to.
pub const MIN_SUBSCRIBERS: usize = 1_000;
/// Largest population (identity indices are `u32`; this keeps far inside them).
pub const MAX_SUBSCRIBERS: usize = 50_000_000;
/// Longest run.
pub const MAX_DAYS: u32 = 366;

/// What to generate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenOptions {
    /// Seed of every random choice.
    pub seed: u64,
    /// Ordinary subscribers.
    pub subscribers: usize,
    /// Days of traffic.
    pub days: u32,
    /// Event time of the start, epoch ms (the run starts here; clock rhythms are UTC).
    pub start_ms: i64,
    /// Deal networks; default `max(2, subscribers / 2500)`.
    pub networks: Option<usize>,
    /// Extra malformed lines per record.
    pub malformed_rate: f64,
    /// Share of records delivered twice (same bytes, same `event_id`).
    pub duplicate_rate: f64,
    /// Share of records delivered more than 30 minutes after their event time.
    pub late_rate: f64,
    /// Businesses, schools, repair shops and festive greetings in the city.
    pub lookalikes: bool,
    /// Club organisers (`lookalike_organiser`): ordinary subscribers who text the same
    /// members two evenings a week, whose members answer. 0 by default, so the project's
    /// cities and every figure measured on them stay as they are; everything else in a city
    /// with organisers is made the same, only the delivery (arrival order, malformed and
    /// duplicate records) is drawn again over the larger stream.
    pub organisers: usize,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            seed: 1,
            subscribers: DEFAULT_SUBSCRIBERS,
            days: DEFAULT_DAYS,
            start_ms: DEFAULT_START_MS,
            networks: None,
            malformed_rate: DEFAULT_MALFORMED_RATE,
            duplicate_rate: DEFAULT_DUPLICATE_RATE,
            late_rate: DEFAULT_LATE_RATE,
            lookalikes: true,
            organisers: 0,
        }
    }
}

impl GenOptions {
    /// Every problem with the options, one line each; empty when they are usable.
    pub fn problems(&self) -> Vec<String> {
        let mut v = Vec::new();
        if !(MIN_SUBSCRIBERS..=MAX_SUBSCRIBERS).contains(&self.subscribers) {
            v.push(format!(
                "subscribers must be {MIN_SUBSCRIBERS}..={MAX_SUBSCRIBERS}, got {}",
                self.subscribers
            ));
        }
        if !(1..=MAX_DAYS).contains(&self.days) {
            v.push(format!("days must be 1..={MAX_DAYS}, got {}", self.days));
        }
        // Event times must stay inside what the decoder accepts (1970..2200).
        // Said of the start only when the start is the problem: with `--days 100000` the
        // days' own message is the one that helps.
        let end = self.start_ms.saturating_add(self.days as i64 * DAY_MS);
        if self.start_ms < 0 {
            v.push("start must be in 1970 or later".to_string());
        } else if (1..=MAX_DAYS).contains(&self.days) && end >= 7_258_118_400_000 {
            v.push(format!(
                "start plus {} days must end before 2200: start earlier or give fewer days",
                self.days
            ));
        }
        if let Some(n) = self.networks {
            let max = self.subscribers / 200;
            if n > max {
                v.push(format!(
                    "networks must be at most subscribers/200 = {max}, got {n}"
                ));
            }
        }
        let max = self.subscribers / 10;
        if self.organisers > max {
            v.push(format!(
                "organisers must be at most subscribers/10 = {max}, got {}",
                self.organisers
            ));
        }
        for (name, r) in [
            ("malformed rate", self.malformed_rate),
            ("duplicate rate", self.duplicate_rate),
            ("late rate", self.late_rate),
        ] {
            if !(0.0..=0.5).contains(&r) {
                v.push(format!("{name} must be within 0..=0.5, got {r}"));
            }
        }
        v
    }

    fn check(&self) -> io::Result<()> {
        let p = self.problems();
        if p.is_empty() {
            Ok(())
        } else {
            Err(io::Error::new(io::ErrorKind::InvalidInput, p.join("; ")))
        }
    }
}

/// What was generated. Every count is exact; `events_written` = `valid` + `malformed` +
/// `duplicates` + `late`, and `linewatch replay` reports the same four figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GenReport {
    /// Lines written.
    pub events_written: u64,
    /// Records the engine accepts (first delivery, on time).
    pub valid: u64,
    /// Extra malformed lines.
    pub malformed: u64,
    /// Re-deliveries (same bytes as a record written earlier).
    pub duplicates: u64,
    /// Records the engine rejects as late.
    pub late: u64,
    /// Malformed lines per reason code.
    pub malformed_by_reason: BTreeMap<String, u64>,
    /// Lines whose `ts` is an RFC 3339 string (the rest are epoch ms).
    pub rfc3339_ts: u64,
    /// Longest arrival delay of an on-time record, ms.
    pub max_delay_ms: i64,
    /// Valid records per subscriber per day.
    pub records_per_subscriber_day: f64,
    pub subscribers: usize,
    pub areas: usize,
    pub cells: usize,
    pub networks: usize,
    /// Deal-line numbers, replacements included.
    pub deal_lines: usize,
    pub deal_handsets: usize,
    pub runner_lines: usize,
    pub runner_handsets: usize,
    /// Customers over all networks.
    pub customers: usize,
    pub lookalike_businesses: usize,
    pub lookalike_schools: usize,
    pub lookalike_repair_handsets: usize,
    pub lookalike_festive: usize,
    pub lookalike_organisers: usize,
    /// Rows in the labels file.
    pub labels: usize,
    /// Most records held waiting for their arrival time at once (the memory figure).
    pub peak_pending: usize,
}

pub(crate) fn rng_for(seed: u64, tag: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(mix(seed) ^ mix(tag.wrapping_add(0x9E37_79B9_7F4A_7C15)))
}

const TAG_DAY: u64 = 0xda7_0000;
const TAG_DELIVERY: u64 = 0xde11;

/// The labels CSV header (src/eval.rs reads it).
pub const LABELS_HEADER: &str = "subject,kind,label,group,predecessor,first_seen_ms";

/// Generates the city and streams its records, in arrival order, to `emit` (one JSONL line
/// each, without the newline), then writes the labels CSV to `labels`.
///
/// `emit` is the sink: a file, stdout, or (later) a Kafka producer. Memory stays at about one
/// day of compact records however long the run.
pub fn generate(
    opts: &GenOptions,
    emit: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    labels: &mut dyn Write,
) -> io::Result<GenReport> {
    opts.check()?;
    let world = World::new(opts);
    let rows = world.labels();
    let mut delivery = Delivery::new(opts, &world, &rows, rng_for(opts.seed, TAG_DELIVERY));
    let mut traffic = Traffic::new(&world);
    let mut peak_pending = 0;
    for d in 0..opts.days {
        let mut rng = rng_for(opts.seed, TAG_DAY + d as u64);
        traffic.day(d, &mut rng, &mut |ev| delivery.push(ev));
        peak_pending = peak_pending.max(delivery.pending());
        // Everything made from now on has an event time at or after the next day's start,
        // so whatever arrives before it can go.
        delivery.flush(world.day_start(d + 1), emit)?;
    }
    delivery.flush(i64::MAX, emit)?;

    let mut out = sheet::writer(&mut *labels);
    out.write_record(LABELS_HEADER.split(','))
        .map_err(sheet::io_error)?;
    let w = delivery.writer();
    for (row, seen) in rows.iter().zip(&delivery.first_seen) {
        let (kind, ident) = match row.kind {
            IdKind::Line => ("line", Ident::Line),
            IdKind::Handset => ("handset", Ident::Handset),
        };
        let pred = row
            .predecessor
            .map(|l| w.pseudonym_string(Ident::Line, l))
            .unwrap_or_default();
        let seen = seen.map(|t| t.to_string()).unwrap_or_default();
        let subject = w.pseudonym_string(ident, row.id);
        out.write_record([
            sheet::protect(&subject).as_ref(),
            kind,
            row.label,
            sheet::protect(&row.group).as_ref(),
            sheet::protect(&pred).as_ref(),
            &seen,
        ])
        .map_err(sheet::io_error)?;
    }
    out.flush()?;
    drop(out);
    labels.flush()?;

    let t = &delivery.tally;
    let count = |label: &str| rows.iter().filter(|r| r.label == label).count();
    Ok(GenReport {
        events_written: t.written,
        valid: t.valid,
        malformed: t.malformed,
        duplicates: t.duplicates,
        late: t.late,
        malformed_by_reason: Spoil::ALL
            .iter()
            .zip(t.by_bad)
            .filter(|(_, n)| *n > 0)
            .map(|(b, n)| (b.reason().as_str().to_string(), n))
            .collect(),
        rfc3339_ts: t.rfc3339,
        max_delay_ms: t.max_delay_ms,
        records_per_subscriber_day: t.valid as f64 / (opts.subscribers as f64 * opts.days as f64),
        subscribers: opts.subscribers,
        areas: world.geo.areas.len(),
        cells: world.geo.cell_names.len(),
        networks: world.networks.len(),
        deal_lines: count("deal_line"),
        deal_handsets: count("deal_handset"),
        runner_lines: count("runner_line"),
        runner_handsets: count("runner_handset"),
        customers: world.networks.iter().map(|n| n.customers.len()).sum(),
        lookalike_businesses: count("lookalike_business"),
        lookalike_schools: count("lookalike_school"),
        lookalike_repair_handsets: count("lookalike_repair_handset"),
        lookalike_festive: count("lookalike_festive"),
        lookalike_organisers: count("lookalike_organiser"),
        labels: rows.len(),
        peak_pending,
    })
}

/// Writes the city's cell map, `cell,area,class` (class `metro` or `county`): the same cells
/// `generate` uses for the same seed and population.
/// A whole city in memory: the JSONL events (newline-terminated), the labels CSV and the
/// report. For the demo, tuning and tests; files and Kafka stream through [`generate`].
pub fn generate_in_memory(opts: &GenOptions) -> io::Result<(Vec<u8>, String, GenReport)> {
    let mut events = Vec::new();
    let mut labels = Vec::new();
    let report = generate(
        opts,
        &mut |line: &[u8]| {
            events.extend_from_slice(line);
            events.push(b'\n');
            Ok(())
        },
        &mut labels,
    )?;
    let labels = String::from_utf8(labels)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.utf8_error()))?;
    Ok((events, labels, report))
}

pub fn write_cells(opts: &GenOptions, out: &mut dyn Write) -> io::Result<()> {
    opts.check()?;
    let geo = Geography::new(opts);
    let mut w = sheet::writer(&mut *out);
    w.write_record(["cell", "area", "class"])
        .map_err(sheet::io_error)?;
    for area in &geo.areas {
        for c in area.cells.clone() {
            w.write_record([
                sheet::protect(&geo.cell_names[c as usize]).as_ref(),
                sheet::protect(&area.name).as_ref(),
                area.class.as_str(),
            ])
            .map_err(sheet::io_error)?;
        }
    }
    w.flush()?;
    drop(w);
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(seed: u64) -> GenOptions {
        GenOptions {
            seed,
            subscribers: 2_000,
            days: 2,
            ..GenOptions::default()
        }
    }

    fn run(opts: &GenOptions) -> (Vec<u8>, String, GenReport) {
        let mut out = Vec::new();
        let mut labels = Vec::new();
        let r = generate(
            opts,
            &mut |l| {
                out.extend_from_slice(l);
                out.push(b'\n');
                Ok(())
            },
            &mut labels,
        )
        .unwrap();
        (out, String::from_utf8(labels).unwrap(), r)
    }

    #[test]
    fn counts_add_up_and_volume_is_plausible() {
        let (out, labels, r) = run(&small(3));
        assert_eq!(
            out.iter().filter(|b| **b == b'\n').count() as u64,
            r.events_written
        );
        assert_eq!(
            r.events_written,
            r.valid + r.malformed + r.duplicates + r.late
        );
        assert!((6.0..18.0).contains(&r.records_per_subscriber_day), "{r:?}");
        assert_eq!(labels.lines().count(), r.labels + 1);
        assert!(r.max_delay_ms <= params::MAX_DELAY_MS);
    }

    #[test]
    fn no_lookalikes_means_no_lookalike_labels() {
        let opts = GenOptions {
            lookalikes: false,
            ..small(4)
        };
        let (_, labels, r) = run(&opts);
        assert!(!labels.contains("lookalike"));
        assert_eq!(r.lookalike_festive + r.lookalike_businesses, 0);
    }

    /// `organisers` adds club organisers and their members' answers, and nothing else: the
    /// labels of the city without them are all there, every record added involves an
    /// organiser, and each organiser texts its whole list within minutes on its evenings.
    #[test]
    fn organisers_are_added_to_the_same_city() {
        use std::collections::{BTreeMap, HashSet};
        let records = |out: &[u8]| -> HashSet<(i64, String, String)> {
            out.split(|&b| b == b'\n')
                .filter_map(|l| serde_json::from_slice::<serde_json::Value>(l).ok())
                .filter_map(|v| {
                    let s = |k: &str| v[k].as_str().map(String::from);
                    // Some records carry their time as RFC 3339 text.
                    let ts = v["ts"].as_i64().or_else(|| {
                        let t = chrono::DateTime::parse_from_rfc3339(v["ts"].as_str()?).ok()?;
                        Some(t.timestamp_millis())
                    })?;
                    Some((ts, s("from")?, s("to")?))
                })
                .collect()
        };
        let (base, base_labels, base_report) = run(&small(5));
        let with = GenOptions {
            organisers: 6,
            ..small(5)
        };
        assert!(with.problems().is_empty());
        let (out, labels, r) = run(&with);
        assert_eq!(r.lookalike_organisers, 6);
        for row in base_labels.lines() {
            assert!(labels.contains(row), "{row} lost");
        }
        let organisers: HashSet<&str> = labels
            .lines()
            .filter(|l| l.contains(",lookalike_organiser,"))
            .map(|l| l.split(',').next().unwrap())
            .collect();
        assert_eq!(organisers.len(), 6);
        let (a, b) = (records(&base), records(&out));
        let added: Vec<_> = b.difference(&a).collect();
        assert!(added.len() > 6 * 30, "{} added", added.len());
        // Records of neither an organiser nor a member's answer: only those the base city
        // delivered malformed (the delivery draws again over the larger stream).
        let stray = added
            .iter()
            .filter(|(_, from, to)| {
                !organisers.contains(from.as_str()) && !organisers.contains(to.as_str())
            })
            .count();
        assert!(
            stray as u64 <= base_report.malformed,
            "{stray} records added between others"
        );
        // The base city's records are there (a few are delivered in another form: the
        // delivery draws malformed lines and string timestamps over the larger stream).
        let kept = a.intersection(&b).count();
        assert!(kept * 100 >= a.len() * 98, "{kept} of {}", a.len());
        // Each organiser's evening: 30 or more distinct members texted within 35 minutes.
        for o in &organisers {
            let mut by_day: BTreeMap<i64, Vec<(i64, &str)>> = BTreeMap::new();
            for (ts, from, to) in &added {
                if from == o {
                    by_day.entry(ts / DAY_MS).or_default().push((*ts, to));
                }
            }
            assert!(!by_day.is_empty(), "{o} texted nobody");
            for texts in by_day.values() {
                let members: HashSet<&str> = texts.iter().map(|t| t.1).collect();
                let (lo, hi) = texts
                    .iter()
                    .fold((i64::MAX, 0), |(lo, hi), t| (lo.min(t.0), hi.max(t.0)));
                assert!(members.len() >= 30, "{o}: {} members", members.len());
                assert!(
                    hi - lo <= 35 * 60_000,
                    "{o}: over {} min",
                    (hi - lo) / 60_000
                );
            }
        }
        // Too many is refused in a line that names the option.
        let too_many = GenOptions {
            organisers: 1_000,
            ..small(5)
        };
        assert!(too_many.problems()[0].starts_with("organisers must be at most"));
    }

    #[test]
    fn bad_options_are_all_reported() {
        let o = GenOptions {
            subscribers: 10,
            days: 0,
            duplicate_rate: 2.0,
            ..GenOptions::default()
        };
        assert_eq!(o.problems().len(), 3, "{:?}", o.problems());
        // Too many days is said of the days alone (it also blamed the start, not given).
        let o = GenOptions {
            days: 100_000,
            ..GenOptions::default()
        };
        assert_eq!(
            o.problems(),
            [format!("days must be 1..={MAX_DAYS}, got 100000")]
        );
        let o = GenOptions {
            days: 30,
            start_ms: 7_258_118_400_000 - 10 * DAY_MS,
            ..GenOptions::default()
        };
        assert_eq!(o.problems().len(), 1, "{:?}", o.problems());
        assert!(o.problems()[0].contains("must end before 2200"));
        let mut sink = |_: &[u8]| Ok(());
        let e = generate(&o, &mut sink, &mut io::sink()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn cells_file_matches_the_cells_used() {
        let opts = small(5);
        let mut cells = Vec::new();
        write_cells(&opts, &mut cells).unwrap();
        let map = crate::cells::CellMap::parse(std::str::from_utf8(&cells).unwrap()).unwrap();
        let (out, _, _) = run(&opts);
        let dopts = crate::event::DecodeOptions::default();
        let mut with_cell = 0;
        for line in out.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            if let Ok(e) = crate::event::decode(line, &dopts) {
                if let Some(c) = e.cell {
                    assert!(map.get(&c).is_some(), "unknown cell");
                    with_cell += 1;
                }
            }
        }
        assert!(with_cell > 1000);
    }
}
