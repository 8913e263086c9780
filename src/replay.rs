//! Replay: the engine over JSONL records in file order (file order is arrival order).
//!
//! Used by `linewatch replay`, `demo` and `tune`; the Kafka service feeds the same
//! [`Engine`] record by record.

use std::collections::BTreeMap;
use std::io::{self, BufRead, Write};
use std::time::Instant;

use base64::Engine as _;
use serde::Serialize;

use crate::alert::Alert;
use crate::detect::{StateStats, DETECTORS};
use crate::engine::{Engine, Verdict};
use crate::event::{decode, DecodeOptions, Malformed, Millis, Reason};

/// Where replay output goes.
pub trait Sink {
    fn alert(&mut self, alert: &Alert) -> io::Result<()>;
    /// A rejected record: its 1-based line number, why, and its bytes.
    fn dead_letter(&mut self, line: u64, why: Malformed, raw: &[u8]) -> io::Result<()>;
    /// A record too large to keep whole (`too_large`): its first bytes and its full size.
    fn dead_letter_cut(
        &mut self,
        line: u64,
        why: Malformed,
        first: &[u8],
        size: u64,
    ) -> io::Result<()> {
        let _ = size;
        self.dead_letter(line, why, first)
    }
}

/// Discards everything (benchmarks).
pub struct NullSink;

impl Sink for NullSink {
    fn alert(&mut self, _: &Alert) -> io::Result<()> {
        Ok(())
    }
    fn dead_letter(&mut self, _: u64, _: Malformed, _: &[u8]) -> io::Result<()> {
        Ok(())
    }
}

/// Keeps alerts in memory (demo, tune, tests).
#[derive(Default)]
pub struct CollectSink {
    pub alerts: Vec<Alert>,
    pub dead_letters: Vec<(u64, Malformed)>,
}

impl Sink for CollectSink {
    fn alert(&mut self, a: &Alert) -> io::Result<()> {
        self.alerts.push(a.clone());
        Ok(())
    }
    fn dead_letter(&mut self, line: u64, why: Malformed, _: &[u8]) -> io::Result<()> {
        self.dead_letters.push((line, why));
        Ok(())
    }
}

/// One dead-letter line of `replay --dead-letter`.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct DeadLetter {
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// 1-based line number in the input.
    pub line: u64,
    /// The record, if it is UTF-8 text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
    /// The record in base64, if it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_base64: Option<String>,
    /// The record's full size in bytes when `raw`/`raw_base64` hold only its first bytes
    /// (a `too_large` line is never read whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// Fields whose raw identifiers were redacted from `raw` (see [`crate::redact`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redacted: Vec<String>,
}

impl DeadLetter {
    /// The dead letter of a record, its raw identifiers redacted.
    pub fn new(line: u64, why: Malformed, raw: &[u8]) -> Self {
        let redacted = crate::redact::redact(raw);
        let (raw, raw_base64) = match std::str::from_utf8(&redacted.bytes) {
            Ok(s) => (Some(s.to_string()), None),
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(&redacted.bytes)),
            ),
        };
        DeadLetter {
            reason: why.reason.as_str().to_string(),
            field: why.field.map(str::to_string),
            line,
            raw,
            raw_base64,
            size_bytes: None,
            redacted: redacted.fields,
        }
    }
}

/// Alerts and dead letters as JSONL to two writers.
pub struct JsonlSink<A: Write, D: Write> {
    pub alerts: A,
    pub dead: Option<D>,
}

impl<A: Write, D: Write> Sink for JsonlSink<A, D> {
    fn alert(&mut self, a: &Alert) -> io::Result<()> {
        serde_json::to_writer(&mut self.alerts, a)?;
        self.alerts.write_all(b"\n")
    }
    fn dead_letter(&mut self, line: u64, why: Malformed, raw: &[u8]) -> io::Result<()> {
        if let Some(d) = self.dead.as_mut() {
            serde_json::to_writer(&mut *d, &DeadLetter::new(line, why, raw))?;
            d.write_all(b"\n")?;
        }
        Ok(())
    }
    fn dead_letter_cut(
        &mut self,
        line: u64,
        why: Malformed,
        first: &[u8],
        size: u64,
    ) -> io::Result<()> {
        if let Some(d) = self.dead.as_mut() {
            let mut letter = DeadLetter::new(line, why, utf8_prefix(first));
            letter.size_bytes = Some(size);
            serde_json::to_writer(&mut *d, &letter)?;
            d.write_all(b"\n")?;
        }
        Ok(())
    }
}

/// `bytes` without a UTF-8 character cut in two at its end, so a cut text record stays text.
fn utf8_prefix(bytes: &[u8]) -> &[u8] {
    match std::str::from_utf8(bytes) {
        Err(e) if e.error_len().is_none() => &bytes[..e.valid_up_to()],
        _ => bytes,
    }
}

/// The `--summary` object (contract §3, plus figures analysts and benchmarks use).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    pub events_total: u64,
    pub events_valid: u64,
    pub events_malformed: u64,
    pub events_duplicate: u64,
    pub events_late: u64,
    /// Lines of the input that hold nothing but blanks: no record, so not in
    /// `events_total`, but counted, so every line of the input is accounted for.
    pub blank_lines: u64,
    pub alerts_total: u64,
    pub alerts_by_detector: BTreeMap<String, u64>,
    /// Malformed records by reason; sums to `events_malformed` (late records are counted in
    /// `events_late` only).
    pub malformed_by_reason: BTreeMap<String, u64>,
    pub alerts_suppressed_by_cooldown: u64,
    pub elapsed_s: f64,
    pub events_per_s: f64,
    pub config_version: String,
    pub tracked_lines: usize,
    pub detector_state_bytes_per_line: f64,
    pub state: BTreeMap<String, StateStats>,
    /// With `--cells`: valid records without a `cell`, and records whose cell the map does
    /// not list (both skipped by `runner_movement`, never rejected). Absent without a map.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub records_without_cell: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cells_unknown_to_map: Option<u64>,
    /// Shards the detectors ran on (`--shards`).
    pub shards: usize,
    /// What crossed keys: barriers run, evidence applied (a broadcast once per shard), and
    /// barriers cut short with evidence still making evidence (should stay 0).
    pub exchange: crate::engine::ExchangeStats,
}

impl Summary {
    pub fn of(engine: &Engine, elapsed_s: f64) -> Summary {
        let c = engine.counters();
        Summary {
            events_total: c.events_total,
            events_valid: c.events_valid,
            events_malformed: c.events_malformed,
            events_duplicate: c.events_duplicate,
            events_late: c.events_late,
            // Not the engine's: the reader's (set by [`run`] after this).
            blank_lines: 0,
            alerts_total: c.alerts_total,
            alerts_by_detector: DETECTORS
                .iter()
                .zip(c.alerts_by_detector)
                .map(|(d, n)| (d.to_string(), n))
                .collect(),
            malformed_by_reason: Reason::ALL
                .iter()
                .zip(c.rejected_by_reason)
                .filter(|(r, n)| *n > 0 && **r != Reason::Late)
                .map(|(r, n)| (r.as_str().to_string(), n))
                .collect(),
            alerts_suppressed_by_cooldown: c.alerts_suppressed,
            elapsed_s,
            events_per_s: if elapsed_s > 0.0 {
                c.events_total as f64 / elapsed_s
            } else {
                0.0
            },
            config_version: engine.config_version().to_string(),
            tracked_lines: engine.tracked_lines(),
            detector_state_bytes_per_line: engine.detector_bytes_per_line(),
            state: engine
                .state_stats()
                .into_iter()
                .map(|(n, s)| (n.to_string(), s))
                .collect(),
            records_without_cell: engine.cells().map(|_| c.cells_missing),
            cells_unknown_to_map: engine.cells().map(|_| c.cells_unknown),
            shards: engine.shard_count(),
            exchange: engine.exchange_stats(),
        }
    }
}

/// Wall-clock milliseconds now (for `detected_at` and partition idleness).
pub fn wall_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// Bytes of surrounding blanks (indentation, `\r\n`) a line may carry beyond
/// `max_record_bytes` and still be read whole.
const LINE_SLACK: usize = 64;
/// How much of a `too_large` record goes to the dead letter: enough to recognise it.
pub const TOO_LARGE_KEPT: usize = 1024;

/// Reads one line (through its `\n`) from `input`, keeping at most `limit` bytes of it in
/// `buf`: a line with no end in sight never takes more memory than that. Returns the line's
/// full length without its `\n`, and whether one ended it (`(0, false)` at the end of the
/// input).
pub fn read_line_bounded<R: BufRead>(
    input: &mut R,
    buf: &mut Vec<u8>,
    limit: usize,
) -> io::Result<(u64, bool)> {
    buf.clear();
    let mut total = 0u64;
    loop {
        let chunk = match input.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok((total, false));
        }
        let (take, done) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        let room = limit.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..take.min(room)]);
        total += take as u64;
        input.consume(take);
        if done {
            return Ok((total - 1, true));
        }
    }
}

/// Lines read per step of [`run`]: the next step's lines are read while a second thread
/// decodes this step's. About 800 KB of records: the step stays in the second-level cache
/// between its copy, its decoding and the engine, and a thread per step costs 1 % at most.
const STEP_LINES: usize = 4_096;

/// Lines decoded at a time ahead of the engine (as the service's `DECODE_CHUNK`).
const DECODE_CHUNK: usize = 256;

/// One input line: `T` is its bytes (a slice of the line in hand, or a range of
/// [`Step::data`]).
enum Line<T> {
    /// Nothing but blanks: no record.
    Blank,
    /// A record (without its line ending and surrounding blanks).
    Record(T),
    /// Longer than the limit: its first bytes and its full size.
    TooLarge(T, u64),
}

impl<'a> Line<&'a [u8]> {
    /// What [`read_line_bounded`] put in `buf` (`n` bytes read, `newline` if one ended it).
    fn of(buf: &'a [u8], n: u64, newline: bool) -> Self {
        let kept = buf.len() as u64 - u64::from(newline && buf.ends_with(b"\n"));
        if n > kept {
            return Line::TooLarge(trim_line(&buf[..buf.len().min(TOO_LARGE_KEPT)]), n);
        }
        match trim_line(buf) {
            [] => Line::Blank,
            rec => Line::Record(rec),
        }
    }
}

/// Lines read from the input, decoded by another thread while the next step is read.
#[derive(Default)]
struct Step {
    data: Vec<u8>,
    lines: Vec<Line<std::ops::Range<usize>>>,
    /// Bytes of the input read by the end of this step.
    read: u64,
    /// The input ended.
    end: bool,
}

impl Step {
    /// Reads up to [`STEP_LINES`] lines, keeping at most `limit` bytes of any.
    fn fill<R: BufRead>(
        &mut self,
        input: &mut R,
        buf: &mut Vec<u8>,
        limit: usize,
        read: u64,
    ) -> io::Result<()> {
        self.fill_n(input, buf, limit, read, STEP_LINES)
    }

    /// Reads up to `max` lines, keeping at most `limit` bytes of any.
    fn fill_n<R: BufRead>(
        &mut self,
        input: &mut R,
        buf: &mut Vec<u8>,
        limit: usize,
        mut read: u64,
        max: usize,
    ) -> io::Result<()> {
        self.data.clear();
        self.lines.clear();
        while self.lines.len() < max {
            let (n, newline) = read_line_bounded(input, buf, limit)?;
            if n == 0 && !newline {
                self.end = true;
                break;
            }
            read += n + u64::from(newline);
            let mut keep = |b: &[u8]| {
                let at = self.data.len();
                self.data.extend_from_slice(b);
                at..self.data.len()
            };
            let line = match Line::of(buf, n, newline) {
                Line::Blank => Line::Blank,
                Line::Record(rec) => Line::Record(keep(rec)),
                Line::TooLarge(first, n) => Line::TooLarge(keep(first), n),
            };
            self.lines.push(line);
        }
        self.read = read;
        Ok(())
    }

    /// Decodes lines `lines` (records only; `None` for the others).
    fn decode(
        &self,
        lines: &[Line<std::ops::Range<usize>>],
        opts: &DecodeOptions,
    ) -> Vec<Option<Decoded<'_>>> {
        lines
            .iter()
            .map(|l| match l {
                Line::Record(r) => Some(decode(&self.data[r.clone()], opts)),
                _ => None,
            })
            .collect()
    }
}

type Decoded<'a> = Result<crate::event::Event<'a>, Malformed>;

/// Runs every line of `input` through `engine`; `progress` is told the bytes read so far.
/// A line longer than `engine.max_record_bytes` (plus a little blank space) is not read
/// whole: it is counted and dead-lettered as `too_large` with its first bytes and its size.
///
/// With more than one core, records are decoded ahead on a second thread while this one
/// runs the engine (decoding is stateless; the engine sees every record in file order, so
/// the output is the same as [`run_with`] without it).
pub fn run<R: BufRead, S: Sink>(
    engine: &mut Engine,
    input: R,
    sink: &mut S,
    progress: impl FnMut(u64),
) -> io::Result<Summary> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    run_with(engine, input, sink, progress, cores > 1)
}

/// [`run`], decoding ahead on a second thread or not.
pub fn run_with<R: BufRead, S: Sink>(
    engine: &mut Engine,
    mut input: R,
    sink: &mut S,
    mut progress: impl FnMut(u64),
    decode_ahead: bool,
) -> io::Result<Summary> {
    skip_bom(&mut input)?;
    if engine.shard_count() > 1 {
        return run_sharded(engine, input, sink, progress);
    }
    if !decode_ahead {
        return run_serial(engine, input, sink, progress);
    }
    let started = Instant::now();
    let opts = engine.decode_options();
    let limit = opts.max_record_bytes.saturating_add(LINE_SLACK);
    let mut buf = Vec::with_capacity(1024);
    let (mut this, mut next) = (Step::default(), Step::default());
    this.fill(&mut input, &mut buf, limit, 0)?;
    let mut out = Out::new(&mut *engine, &mut *sink);
    loop {
        if this.lines.len() > DECODE_CHUNK {
            std::thread::scope(|scope| -> io::Result<()> {
                let (tx, rx) = std::sync::mpsc::sync_channel(8);
                let step = &this;
                scope.spawn(move || {
                    for c in step.lines.chunks(DECODE_CHUNK) {
                        if tx.send(step.decode(c, &opts)).is_err() {
                            break; // the engine's side stopped (an output error)
                        }
                    }
                });
                // While it decodes this step: read the next one.
                if !this.end {
                    next.fill(&mut input, &mut buf, limit, this.read)?;
                }
                for (lines, decoded) in this.lines.chunks(DECODE_CHUNK).zip(rx) {
                    out.batch(&this, lines, decoded)?;
                }
                Ok(())
            })?;
        } else {
            for lines in this.lines.chunks(DECODE_CHUNK) {
                out.batch(&this, lines, this.decode(lines, &opts))?;
            }
            if !this.end {
                next.fill(&mut input, &mut buf, limit, this.read)?;
            }
        }
        progress(this.read);
        if this.end {
            break;
        }
        std::mem::swap(&mut this, &mut next);
    }
    let blank_lines = out.end()?;
    Ok(Summary {
        blank_lines,
        ..Summary::of(engine, started.elapsed().as_secs_f64())
    })
}

/// Lines a step holds when the engine has several shards: each step is one batch for the
/// engine, so fewer, larger steps mean fewer hand-overs between its threads.
const SHARDED_STEP_LINES: usize = 16_384;

/// [`run`] with the engine's shards on threads: a step is decoded on a thread of its own
/// (decoding is stateless) while this thread reads the next step and runs this one through
/// the engine as one batch ([`Engine::process_batch`]). The output is the same as [`run_serial`]'s.
fn run_sharded<R: BufRead, S: Sink>(
    engine: &mut Engine,
    mut input: R,
    sink: &mut S,
    mut progress: impl FnMut(u64),
) -> io::Result<Summary> {
    let started = Instant::now();
    let opts = engine.decode_options();
    let limit = opts.max_record_bytes.saturating_add(LINE_SLACK);
    let mut buf = Vec::with_capacity(1024);
    let (mut this, mut next) = (Step::default(), Step::default());
    this.fill_n(&mut input, &mut buf, limit, 0, SHARDED_STEP_LINES)?;
    let mut out = Out::new(&mut *engine, &mut *sink);
    loop {
        // A thread decodes this step a chunk at a time while this one reads the next step
        // and then runs the engine over this one as its chunks arrive: the decoding is off
        // the engine's path, and fills the core the shards leave idle while this thread
        // ingests and runs barriers (decoding on every core, then running the engine,
        // left one core idle for the whole engine run of a step).
        std::thread::scope(|scope| -> io::Result<()> {
            let (tx, rx) = std::sync::mpsc::channel();
            let step = &this;
            let decoder = move || {
                for c in step.lines.chunks(DECODE_CHUNK) {
                    if tx.send(step.decode(c, &opts)).is_err() {
                        break; // the engine's side stopped (an output error)
                    }
                }
            };
            // Named, so a profile or `top -H` tells its time from the engine's. Without a
            // thread (none to be had), nothing arrives and the lines are decoded below.
            let _ = std::thread::Builder::new()
                .name("linewatch-decode".into())
                .spawn_scoped(scope, decoder);
            if !step.end {
                next.fill_n(&mut input, &mut buf, limit, step.read, SHARDED_STEP_LINES)?;
            }
            // Every chunk arrives unless the decoder panicked (the scope then re-raises
            // it); were one missing, its lines would go as undecoded, and `Out::batch`
            // decodes those itself.
            let mut rx = rx.into_iter();
            let decoded = step.lines.chunks(DECODE_CHUNK).flat_map(move |c| {
                rx.next()
                    .unwrap_or_else(|| c.iter().map(|_| None).collect())
            });
            out.batch(step, &step.lines, decoded)
        })?;
        progress(this.read);
        if this.end {
            break;
        }
        std::mem::swap(&mut this, &mut next);
    }
    let blank_lines = out.end()?;
    Ok(Summary {
        blank_lines,
        ..Summary::of(engine, started.elapsed().as_secs_f64())
    })
}

/// [`run`] on this thread alone: steps of [`STEP_LINES`] lines, each run through the engine
/// as one batch ([`Engine::process_batch`], whose ingest asks for each record's dedup slot a
/// few records ahead). In `parse_ratio`'s rounds on the 150,000-subscriber city (one core,
/// the records in memory) the engine ran 8-17 % faster in batches than a record at a time; a
/// replay also copies each step, and gained less (a median +7 % in ten alternating pairs on
/// a 1.36 M-record city, nothing beyond the noise in seven on the big one).
fn run_serial<R: BufRead, S: Sink>(
    engine: &mut Engine,
    mut input: R,
    sink: &mut S,
    mut progress: impl FnMut(u64),
) -> io::Result<Summary> {
    let started = Instant::now();
    let limit = engine
        .decode_options()
        .max_record_bytes
        .saturating_add(LINE_SLACK);
    let mut buf = Vec::with_capacity(1024);
    let mut step = Step::default();
    let mut out = Out::new(&mut *engine, sink);
    loop {
        step.fill(&mut input, &mut buf, limit, step.read)?;
        // Decoded in the batch, record by record, as the engine takes them.
        out.batch(&step, &step.lines, std::iter::repeat_with(|| None))?;
        progress(step.read);
        if step.end {
            break;
        }
    }
    let blank_lines = out.end()?;
    Ok(Summary {
        blank_lines,
        ..Summary::of(engine, started.elapsed().as_secs_f64())
    })
}

/// Where [`run_with`] sends each line's outcome.
struct Out<'e, S> {
    engine: &'e mut Engine,
    sink: &'e mut S,
    /// Lines handed out so far (the dead letters' line numbers).
    line_no: u64,
    /// Of those, lines of nothing but blanks ([`Summary::blank_lines`]).
    blank_lines: u64,
    /// The wall clock, read every 4096 lines.
    wall: Millis,
}

impl<'e, S: Sink> Out<'e, S> {
    fn new(engine: &'e mut Engine, sink: &'e mut S) -> Self {
        Out {
            engine,
            sink,
            line_no: 0,
            blank_lines: 0,
            wall: wall_ms(),
        }
    }

    /// Runs `lines` of `step` through the engine as one batch ([`Engine::process_batch`]:
    /// the shards on their threads, if it has several), each record decoded as `decoded`
    /// gives it or else here: the same outputs, in the same order, as record by record.
    fn batch<'a>(
        &mut self,
        step: &'a Step,
        lines: &[Line<std::ops::Range<usize>>],
        decoded: impl IntoIterator<Item = Option<Decoded<'a>>>,
    ) -> io::Result<()> {
        let too_large = Malformed {
            reason: Reason::TooLarge,
            field: None,
        };
        // Blank lines carry no record; the others go to the engine in order.
        let opts = self.engine.decode_options();
        let records = lines
            .iter()
            .zip(decoded)
            .filter_map(|(line, ev)| match line {
                Line::Blank => None,
                Line::TooLarge(..) => Some(Err(too_large)),
                Line::Record(r) => {
                    Some(ev.unwrap_or_else(|| crate::event::decode(&step.data[r.clone()], &opts)))
                }
            })
            // One partition: a file is one stream.
            .map(|d| (d, 0));
        let mut verdicts = Vec::with_capacity(lines.len());
        let mut alerts = Vec::new();
        self.engine
            .process_batch(records, self.wall, &mut verdicts, &mut alerts);
        let mut alerts = alerts.into_iter().peekable();
        let mut verdicts = verdicts.into_iter();
        let mut idx = 0;
        for line in lines {
            self.line_no += 1;
            let line_no = self.line_no;
            if line_no % 4096 == 0 {
                self.wall = wall_ms();
            }
            if matches!(line, Line::Blank) {
                self.blank_lines += 1;
                continue;
            }
            // One verdict per record passed, in order: they cannot run out first.
            let Some(verdict) = verdicts.next() else {
                break;
            };
            match (line, verdict) {
                (Line::TooLarge(r, n), _) => {
                    self.sink
                        .dead_letter_cut(line_no, too_large, &step.data[r.clone()], *n)?
                }
                (Line::Record(r), Verdict::Rejected(why)) => {
                    self.sink.dead_letter(line_no, why, &step.data[r.clone()])?
                }
                _ => {}
            }
            while let Some((_, a)) = alerts.next_if(|(i, _)| *i == idx) {
                self.sink.alert(&a)?;
            }
            idx += 1;
        }
        Ok(())
    }

    /// The end of the input: evidence still in flight between shards is applied (a final
    /// barrier), so a replay reports what the last records completed. Returns the blank
    /// lines counted.
    fn end(&mut self) -> io::Result<u64> {
        let mut alerts = Vec::new();
        self.engine.flush(self.wall, &mut alerts);
        for a in &alerts {
            self.sink.alert(a)?;
        }
        Ok(self.blank_lines)
    }
}

/// The UTF-8 byte-order mark some tools (spreadsheets, Windows editors) write at the start
/// of a text file: skipped, as the CSV and TOML readers skip it. It sent the first record
/// to the dead letters as `invalid_json`.
const BOM: &[u8] = b"\xEF\xBB\xBF";

fn skip_bom<R: BufRead>(input: &mut R) -> io::Result<()> {
    if input.fill_buf()?.starts_with(BOM) {
        input.consume(BOM.len());
    }
    Ok(())
}

/// A record without its line ending and surrounding blanks.
pub fn trim_line(buf: &[u8]) -> &[u8] {
    let start = buf
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(buf.len());
    let end = buf
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &buf[start..end]
}

/// Replays in-memory JSONL with `cfg` and returns the alerts and summary.
pub fn replay_bytes(cfg: crate::config::Config, data: &[u8]) -> (Vec<Alert>, Summary) {
    replay_bytes_with_cells(cfg, data, None)
}

/// [`replay_bytes`] with a cell map, as `replay --cells` (for `runner_movement`).
pub fn replay_bytes_with_cells(
    cfg: crate::config::Config,
    data: &[u8],
    cells: Option<std::sync::Arc<crate::cells::CellMap>>,
) -> (Vec<Alert>, Summary) {
    replay_bytes_sharded(cfg, data, cells, 1)
}

/// [`replay_bytes_with_cells`] over `shards` shards (the alerts are the same for any count).
pub fn replay_bytes_sharded(
    cfg: crate::config::Config,
    data: &[u8],
    cells: Option<std::sync::Arc<crate::cells::CellMap>>,
    shards: usize,
) -> (Vec<Alert>, Summary) {
    let data = data.strip_prefix(BOM).unwrap_or(data);
    let mut engine = Engine::with_shards(cfg, shards);
    engine.set_cells(cells);
    let mut sink = CollectSink::default();
    // Reading from memory and collecting into memory cannot fail.
    let summary = run(&mut engine, data, &mut sink, |_| {}).expect("in-memory replay");
    (sink.alerts, summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn a_byte_order_mark_before_the_first_record_is_skipped() {
        let rec = br#"{"event_id":"e1","ts":1791158400000,"kind":"sms","from":"La","to":"Lb"}"#;
        let mut with_bom = BOM.to_vec();
        with_bom.extend_from_slice(rec);
        with_bom.push(b'\n');
        let (_, s) = replay_bytes_sharded(crate::config::Config::default(), &with_bom, None, 1);
        assert_eq!((s.events_valid, s.events_malformed), (1, 0));
        let mut e = Engine::new(crate::config::Config::default());
        let mut sink = CollectSink::default();
        let s = run_with(&mut e, &with_bom[..], &mut sink, |_| {}, false).unwrap();
        assert_eq!((s.events_valid, s.events_malformed), (1, 0));
        // Only at the start: a mark inside the file is a malformed line.
        let mut two = rec.to_vec();
        two.push(b'\n');
        two.extend_from_slice(&with_bom);
        let (_, s) = replay_bytes_sharded(crate::config::Config::default(), &two, None, 1);
        assert_eq!((s.events_valid, s.events_malformed), (1, 1));
    }

    #[test]
    fn trim_line_strips_crlf_and_blanks() {
        assert_eq!(trim_line(b"  {}\r\n"), b"{}");
        assert_eq!(trim_line(b"\n"), b"");
    }

    #[test]
    fn malformed_lines_go_to_dead_letters_with_line_numbers() {
        let data = b"{\"event_id\":\"a\",\"ts\":1759669331250,\"kind\":\"sms\",\"from\":\"x\",\"to\":\"y\"}\nnot json\n\n[1]\n";
        let mut engine = Engine::new(Config::default());
        let mut sink = CollectSink::default();
        let s = run(&mut engine, &data[..], &mut sink, |_| {}).unwrap();
        assert_eq!(s.events_total, 3);
        // The blank line is no record, but it is counted, on every path.
        assert_eq!(s.blank_lines, 1);
        for shards in [1, 2] {
            let (_, s) = replay_bytes_sharded(Config::default(), &data[..], None, shards);
            assert_eq!((s.events_total, s.blank_lines), (3, 1), "{shards} shards");
        }
        assert_eq!(s.events_valid, 1);
        assert_eq!(s.events_malformed, 2);
        assert_eq!(sink.dead_letters[0].0, 2);
        assert_eq!(sink.dead_letters[0].1.reason, Reason::InvalidJson);
        assert_eq!(sink.dead_letters[1].0, 4);
        assert_eq!(sink.dead_letters[1].1.reason, Reason::NotObject);
        assert_eq!(s.malformed_by_reason["invalid_json"], 1);
    }

    #[test]
    fn decoding_ahead_changes_nothing_in_the_output() {
        let opts = crate::generate::GenOptions {
            subscribers: 2_000,
            days: 2,
            ..Default::default()
        };
        let (mut data, _, _) = crate::generate::generate_in_memory(&opts).unwrap();
        // Every kind of line a step may hold, at step and chunk edges too.
        let big = format!("{{\"event_id\":\"{}\"}}\n", "x".repeat(70_000));
        for (i, extra) in ["\n", "  \r\n", "not json\n", big.as_str(), "[1]\n"]
            .iter()
            .enumerate()
        {
            let at = (i + 1) * (STEP_LINES * 200 + DECODE_CHUNK * 37 + i) % data.len();
            let at = data[..at]
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |p| p + 1);
            data.splice(at..at, extra.bytes());
        }
        let replay = |ahead: bool, shards: usize| {
            let mut engine = Engine::with_shards(Config::default(), shards);
            let mut sink = JsonlSink {
                alerts: Vec::new(),
                dead: Some(Vec::new()),
            };
            let mut reads = Vec::new();
            let s = run_with(&mut engine, &data[..], &mut sink, |n| reads.push(n), ahead).unwrap();
            let alerts: Vec<serde_json::Value> = String::from_utf8(sink.alerts)
                .unwrap()
                .lines()
                .map(|l| {
                    let mut a: serde_json::Value = serde_json::from_str(l).unwrap();
                    a.as_object_mut().unwrap().remove("detected_at");
                    a
                })
                .collect();
            (alerts, sink.dead.unwrap(), s, reads)
        };
        let (a1, d1, s1, r1) = replay(false, 1);
        let (a2, d2, s2, r2) = replay(true, 1);
        assert!(a1.len() > 10 && s1.events_malformed > 5, "{s1:?}");
        assert!(String::from_utf8_lossy(&d1).contains("too_large"));
        assert_eq!(a1, a2);
        assert_eq!(d1, d2);
        assert_eq!(r1, r2);
        assert_eq!(*r1.last().unwrap(), data.len() as u64);
        let same = |s: &Summary| Summary {
            elapsed_s: 0.0,
            events_per_s: 0.0,
            ..s.clone()
        };
        assert_eq!(same(&s1), same(&s2));
        // And with the shards on threads (steps of another size, decoded on every core).
        let (a3, d3, s3, r3) = replay(true, 3);
        assert_eq!(a1, a3);
        assert_eq!(d1, d3);
        assert_eq!(r3.last(), r1.last());
        // The same keys in every component; the bytes differ (N smaller tables grow at
        // other points than one large one).
        let keys = |s: &Summary| {
            s.state
                .iter()
                .map(|(n, st)| (n.clone(), st.keys))
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(&s1), keys(&s3));
        let unsharded = |s: &Summary| Summary {
            shards: 1,
            exchange: s1.exchange,
            detector_state_bytes_per_line: 0.0,
            state: Default::default(),
            ..same(s)
        };
        assert_eq!(unsharded(&s1), unsharded(&s3));
        assert_eq!(s3.exchange.barriers, s1.exchange.barriers);
    }

    #[test]
    fn dead_letter_keeps_non_utf8_bytes() {
        let d = DeadLetter::new(
            3,
            Malformed {
                reason: Reason::InvalidJson,
                field: None,
            },
            b"\xff\x00",
        );
        assert_eq!(d.raw, None);
        assert_eq!(d.raw_base64.as_deref(), Some("/wA="));
    }

    #[test]
    fn dead_letter_file_holds_no_raw_identifier() {
        let data = b"{\"event_id\":\"a\",\"ts\":1791158400000,\"kind\":\"sms\",\"from\":\"+447700900123\",\"to\":\"y\"}\nmsisdn 447700900124\n";
        let mut engine = Engine::new(Config::default());
        let mut sink = JsonlSink {
            alerts: Vec::new(),
            dead: Some(Vec::new()),
        };
        run(&mut engine, &data[..], &mut sink, |_| {}).unwrap();
        let out = String::from_utf8(sink.dead.unwrap()).unwrap();
        let letters: Vec<DeadLetter> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(letters.len(), 2);
        for l in &letters {
            let raw = l.raw.as_deref().unwrap_or_default();
            assert!(!crate::redact::has_raw_identifier(raw.as_bytes()), "{raw}");
        }
        assert_eq!(letters[0].reason, "raw_identifier");
        assert_eq!(letters[0].redacted, ["from"]);
        assert_eq!(letters[1].redacted, [crate::redact::WHOLE_RECORD]);
    }
}
