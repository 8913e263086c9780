//! `linewatch replay`: the detectors over a JSONL file, alerts as JSONL.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};

use super::{load_config, Failure, Outcome};
use crate::engine::Engine;
use crate::replay::{self, JsonlSink, Summary};

/// Arguments of `linewatch replay`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// JSONL events, one per line, in arrival order; `-` for stdin.
    #[arg(long, value_name = "PATH|-")]
    pub input: PathBuf,
    /// Where alerts go as JSONL; `-` (the default) for stdout.
    #[arg(long, value_name = "PATH|-", default_value = "-")]
    pub output: PathBuf,
    /// Writes one JSON object of counts, rates and state sizes here; `-` for stdout (then
    /// `--output` must name a file).
    #[arg(long, value_name = "PATH|-")]
    pub summary: Option<PathBuf>,
    /// Writes rejected records here as JSONL with their reason and line number.
    #[arg(long, value_name = "PATH")]
    pub dead_letter: Option<PathBuf>,
    /// Cell map CSV (`cell,area,class`), validated at start.
    #[arg(long, value_name = "PATH")]
    pub cells: Option<PathBuf>,
    /// Never show a progress bar, nor the count line on stderr at the end (warnings still
    /// show).
    #[arg(long)]
    pub quiet: bool,
    /// The present, RFC 3339, for judging future-dated records (`future_timestamp`: more
    /// than `engine.max_future_skew_s` ahead of it). Default: the wall clock, right for
    /// history; set it for a file from a simulated clock or dated ahead.
    #[arg(long, value_name = "RFC3339")]
    pub now: Option<String>,
    /// Shards the detectors' keys are spread over, each on a thread of its own between
    /// barriers; the alerts are the same for any count. Default: 1 (see the README's
    /// performance table for what more gives on this machine).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub shards: u16,
}

fn create(path: &Path, what: &'static str) -> Result<BufWriter<super::Named<File>>, Failure> {
    super::create_output(path, what, 1 << 16)
}

fn is_dash(p: &Path) -> bool {
    p.as_os_str() == "-"
}

pub fn main(args: Args, config: Option<&Path>) -> Outcome {
    let cfg = load_config(config)?;
    let max_keys = cfg.engine.max_keys_per_detector;
    let mut inputs = vec![("--input", args.input.as_path())];
    inputs.extend(args.cells.as_deref().map(|p| ("--cells", p)));
    inputs.extend(config.map(|p| ("--config", p)));
    let mut outputs = vec![("--output", args.output.as_path())];
    outputs.extend(args.dead_letter.as_deref().map(|p| ("--dead-letter", p)));
    outputs.extend(args.summary.as_deref().map(|p| ("--summary", p)));
    super::distinct_files(&inputs, &outputs)?;
    let now = args
        .now
        .as_deref()
        .map(|s| {
            chrono::DateTime::parse_from_rfc3339(s)
                .map(|t| t.timestamp_millis())
                .map_err(|e| Failure::usage(format!("--now {s:?} is not RFC 3339 ({e})")))
        })
        .transpose()?;
    let cells = args.cells.as_deref().map(super::load_cells).transpose()?;
    let summary_to_stdout = args.summary.as_deref().is_some_and(is_dash);
    if summary_to_stdout && is_dash(&args.output) {
        return Err(Failure::usage(
            "--summary - and alerts both on stdout would mix: give --output FILE too",
        ));
    }
    let (input, total): (Box<dyn BufRead>, Option<u64>) = if is_dash(&args.input) {
        let stdin = io::stdin();
        if stdin.is_terminal() {
            return Err(Failure::usage(
                "--input -: stdin is a terminal; pipe JSONL in (e.g. zcat cdr.jsonl.gz | linewatch replay --input -) or give a file",
            ));
        }
        (
            Box::new(BufReader::with_capacity(1 << 16, stdin.lock())),
            None,
        )
    } else {
        let cannot = |why: String| {
            Failure::usage(format!("cannot read input {}: {why}", args.input.display()))
        };
        let f = File::open(&args.input).map_err(|e| cannot(e.to_string()))?;
        let meta = f.metadata().map_err(|e| cannot(e.to_string()))?;
        if meta.is_dir() {
            return Err(cannot("it is a directory; give a JSONL file".into()));
        }
        (
            Box::new(BufReader::with_capacity(1 << 16, f)),
            Some(meta.len()),
        )
    };
    let alerts: Box<dyn Write> = if is_dash(&args.output) {
        Box::new(BufWriter::new(io::stdout().lock()))
    } else {
        Box::new(create(&args.output, "output")?)
    };
    let dead = args
        .dead_letter
        .as_deref()
        .map(|p| create(p, "dead-letter file"))
        .transpose()?;
    let mut summary_out: Option<Box<dyn Write>> = match args.summary.as_deref() {
        None => None,
        Some(_) if summary_to_stdout => Some(Box::new(io::stdout().lock())),
        Some(p) => Some(Box::new(create(p, "summary")?)),
    };

    let bar = match total {
        Some(n) if !args.quiet && io::stderr().is_terminal() && n > 8 << 20 => {
            let b = indicatif::ProgressBar::new(n);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} replay [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            Some(b)
        }
        _ => None,
    };
    let mut engine = Engine::with_shards(cfg, args.shards.into());
    engine.set_reference_clock(now);
    engine.set_cells(cells);
    let mut sink = JsonlSink { alerts, dead };
    let summary = replay::run(&mut engine, input, &mut sink, |n| {
        if let Some(b) = &bar {
            b.set_position(n);
        }
    })
    .map_err(|e| Failure::runtime(format!("replay failed: {e}")))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    sink.alerts.flush()?;
    if let Some(d) = sink.dead.as_mut() {
        d.flush()?;
    }
    if let Some(out) = summary_out.as_mut() {
        serde_json::to_writer_pretty(&mut *out, &summary)?;
        out.write_all(b"\n")?;
        out.flush()?;
    }
    if !args.quiet {
        eprintln!("{}", count_line(&summary));
    }
    if let Some(w) = mostly_malformed(&summary) {
        eprintln!("{w}");
    }
    if let Some(w) = at_key_cap(&summary, max_keys) {
        eprintln!("{w}");
    }
    Ok(())
}

/// A warning when a key cap refused keys: their records were not tracked, so what the
/// detectors found is incomplete (`engine.max_keys_per_detector = 1` gave no alert at all,
/// and only the summary's `cap_hits` said why).
pub fn at_key_cap(s: &Summary, max_keys: usize) -> Option<String> {
    let hit: Vec<String> = (s.state.iter())
        .filter(|(_, st)| st.cap_hits > 0)
        .map(|(name, st)| format!("{name} {}", st.cap_hits))
        .collect();
    if hit.is_empty() {
        return None;
    }
    Some(format!(
        "linewatch: warning: the key cap (engine.max_keys_per_detector = {max_keys}) refused \
         keys ({}): their records were not tracked, so detection is incomplete",
        hit.join(", ")
    ))
}

/// The one line `replay` ends with on stderr: what was read and what came of it.
pub fn count_line(s: &Summary) -> String {
    let blank = match s.blank_lines {
        0 => String::new(),
        1 => " (and 1 blank line)".to_string(),
        n => format!(" (and {n} blank lines)"),
    };
    format!(
        "replay: {} records{blank}: {} valid, {} malformed, {} duplicate, {} late; {} alerts in {:.1} s",
        s.events_total,
        s.events_valid,
        s.events_malformed,
        s.events_duplicate,
        s.events_late,
        s.alerts_total,
        s.elapsed_s
    )
}

/// A warning when most records were malformed: usually the wrong file (a compressed one, or
/// not CDRs at all) rather than a bad feed.
pub fn mostly_malformed(s: &Summary) -> Option<String> {
    if s.events_total == 0 || s.events_malformed * 2 <= s.events_total {
        return None;
    }
    let top = s
        .malformed_by_reason
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(r, _)| r.as_str())
        .unwrap_or("?");
    let hint = if top == "future_timestamp" {
        "are the times ahead of the clock? Give the file's present with --now RFC3339, or \
         raise engine.max_future_skew_s"
    } else {
        "is this the right file? A compressed file must be decompressed first, e.g. zcat \
         FILE.gz | linewatch replay --input -"
    };
    Some(format!(
        "linewatch: warning: {} of {} records are malformed (mostly {top}): {hint}",
        s.events_malformed, s.events_total
    ))
}
