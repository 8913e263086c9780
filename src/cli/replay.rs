//! `linewatch replay`: the detectors over a JSONL file, alerts as JSONL.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};

use super::{load_config, Failure, Outcome};
use crate::cells::CellMap;
use crate::engine::Engine;
use crate::replay::{self, JsonlSink};

/// Arguments of `linewatch replay`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// JSONL events, one per line, in arrival order; `-` for stdin.
    #[arg(long, value_name = "PATH|-")]
    pub input: PathBuf,
    /// Where alerts go as JSONL; `-` (the default) for stdout.
    #[arg(long, value_name = "PATH|-", default_value = "-")]
    pub output: PathBuf,
    /// Writes one JSON object of counts, rates and state sizes here.
    #[arg(long, value_name = "PATH")]
    pub summary: Option<PathBuf>,
    /// Writes rejected records here as JSONL with their reason and line number.
    #[arg(long, value_name = "PATH")]
    pub dead_letter: Option<PathBuf>,
    /// Cell map CSV (`cell,area,class`), validated at start.
    #[arg(long, value_name = "PATH")]
    pub cells: Option<PathBuf>,
    /// Never show a progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// The present, RFC 3339, for judging future-dated records (`future_timestamp`: more
    /// than `engine.max_future_skew_s` ahead of it). Default: the wall clock, right for
    /// history; set it for a file from a simulated clock or dated ahead.
    #[arg(long, value_name = "RFC3339")]
    pub now: Option<String>,
}

fn create(path: &Path, what: &str) -> Result<BufWriter<File>, Failure> {
    File::create(path)
        .map(|f| BufWriter::with_capacity(1 << 16, f))
        .map_err(|e| Failure::usage(format!("cannot create {what} {}: {e}", path.display())))
}

fn is_dash(p: &Path) -> bool {
    p.as_os_str() == "-"
}

pub fn main(args: Args, config: Option<&Path>) -> Outcome {
    let cfg = load_config(config)?;
    let now = args
        .now
        .as_deref()
        .map(|s| {
            chrono::DateTime::parse_from_rfc3339(s)
                .map(|t| t.timestamp_millis())
                .map_err(|e| Failure::usage(format!("--now {s:?} is not RFC 3339 ({e})")))
        })
        .transpose()?;
    if let Some(cells) = &args.cells {
        CellMap::load(cells).map_err(|e| Failure::usage(e.to_string()))?;
    }
    let (input, total): (Box<dyn BufRead>, Option<u64>) = if is_dash(&args.input) {
        (
            Box::new(BufReader::with_capacity(1 << 16, io::stdin().lock())),
            None,
        )
    } else {
        let f = File::open(&args.input).map_err(|e| {
            Failure::usage(format!("cannot read input {}: {e}", args.input.display()))
        })?;
        let len = f.metadata().ok().map(|m| m.len());
        (Box::new(BufReader::with_capacity(1 << 16, f)), len)
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
    let mut summary_out = args
        .summary
        .as_deref()
        .map(|p| create(p, "summary"))
        .transpose()?;

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
    let mut engine = Engine::new(cfg);
    engine.set_reference_clock(now);
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
    Ok(())
}
