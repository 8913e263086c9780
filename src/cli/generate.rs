//! `linewatch generate`: labelled synthetic traffic to a JSONL file or stdout.
//!
//! Arguments are resolved and checked (every problem in one line) before anything is
//! written. Records go through one `emit` closure, so another sink (a Kafka topic with
//! `--kafka-brokers/--topic/--rate`) plugs in beside the file one without touching the
//! generator.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use super::{load_config, Failure, Outcome};
use crate::generate::{self, GenOptions, GenReport};

/// Arguments of `linewatch generate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Ordinary subscribers in the synthetic city.
    #[arg(long, default_value_t = generate::DEFAULT_SUBSCRIBERS)]
    pub subscribers: usize,
    /// Days of traffic.
    #[arg(long, default_value_t = generate::DEFAULT_DAYS)]
    pub days: u32,
    /// Seed: the same seed and options give byte-identical output.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Event time of the start, RFC 3339 (default 2026-10-05T00:00:00Z).
    #[arg(long, value_name = "RFC3339")]
    pub start: Option<String>,
    /// Deal networks (default: max(2, subscribers / 2500)).
    #[arg(long)]
    pub networks: Option<usize>,
    /// Where the JSONL events go, in arrival order; `-` (the default) for stdout.
    #[arg(long, value_name = "PATH|-", default_value = "-")]
    pub output: PathBuf,
    /// Labels CSV: `subject,kind,label,group,predecessor,first_seen_ms`.
    #[arg(long, value_name = "PATH")]
    pub labels: Option<PathBuf>,
    /// Manifest JSON: the options and the exact counts of what was written.
    #[arg(long, value_name = "PATH")]
    pub manifest: Option<PathBuf>,
    /// Cell map CSV (`cell,area,class`) of the city, for `replay --cells`.
    #[arg(long, value_name = "PATH")]
    pub cells: Option<PathBuf>,
    /// Extra malformed lines per record.
    #[arg(long, value_name = "R", default_value_t = generate::DEFAULT_MALFORMED_RATE)]
    pub malformed_rate: f64,
    /// Share of records delivered twice.
    #[arg(long, value_name = "R", default_value_t = generate::DEFAULT_DUPLICATE_RATE)]
    pub duplicate_rate: f64,
    /// Share of records delivered more than 30 minutes after their event time.
    #[arg(long, value_name = "R", default_value_t = generate::DEFAULT_LATE_RATE)]
    pub late_rate: f64,
    /// Leave out the look-alikes (businesses, schools, repair shops, festive greetings).
    #[arg(long)]
    pub no_lookalikes: bool,
    /// No summary line on stderr.
    #[arg(long)]
    pub quiet: bool,
}

/// The manifest: the report, plus the options that made it.
#[derive(Serialize)]
struct Manifest<'a> {
    #[serde(flatten)]
    report: &'a GenReport,
    options: &'a GenOptions,
}

fn is_dash(p: &Path) -> bool {
    p.as_os_str() == "-"
}

fn create(path: &Path, what: &str) -> Result<BufWriter<File>, Failure> {
    File::create(path)
        .map(|f| BufWriter::with_capacity(1 << 20, f))
        .map_err(|e| Failure::usage(format!("cannot create {what} {}: {e}", path.display())))
}

/// Stage two of argument handling: checked options, or every problem in one line.
fn resolve(args: &Args) -> Result<GenOptions, Failure> {
    let mut problems = Vec::new();
    let start_ms = match &args.start {
        None => generate::DEFAULT_START_MS,
        Some(s) => match chrono::DateTime::parse_from_rfc3339(s) {
            Ok(t) => t.timestamp_millis(),
            Err(e) => {
                problems.push(format!("--start {s:?} is not RFC 3339 ({e})"));
                generate::DEFAULT_START_MS
            }
        },
    };
    let opts = GenOptions {
        seed: args.seed,
        subscribers: args.subscribers,
        days: args.days,
        start_ms,
        networks: args.networks,
        malformed_rate: args.malformed_rate,
        duplicate_rate: args.duplicate_rate,
        late_rate: args.late_rate,
        lookalikes: !args.no_lookalikes,
    };
    problems.extend(opts.problems());
    for (flag, p) in [
        ("--labels", &args.labels),
        ("--manifest", &args.manifest),
        ("--cells", &args.cells),
    ] {
        if p.as_deref().is_some_and(is_dash) {
            problems.push(format!(
                "{flag} needs a file path (stdout is for the events)"
            ));
        }
    }
    if problems.is_empty() {
        Ok(opts)
    } else {
        Err(Failure::usage(problems.join("; ")))
    }
}

pub fn main(args: Args, config: Option<&Path>) -> Outcome {
    // The generator does not depend on detection settings, but a bad --config is still an
    // error, as for every subcommand.
    load_config(config)?;
    let opts = resolve(&args)?;
    // Open every output before the work starts, so a bad path fails at once.
    let mut out: Box<dyn Write> = if is_dash(&args.output) {
        Box::new(BufWriter::with_capacity(1 << 20, io::stdout().lock()))
    } else {
        Box::new(create(&args.output, "output")?)
    };
    let mut labels: Box<dyn Write> = match &args.labels {
        Some(p) => Box::new(create(p, "labels file")?),
        None => Box::new(io::sink()),
    };
    let manifest = args
        .manifest
        .as_deref()
        .map(|p| create(p, "manifest"))
        .transpose()?;
    if let Some(p) = &args.cells {
        let mut w = create(p, "cell map")?;
        generate::write_cells(&opts, &mut w)
            .map_err(|e| Failure::runtime(format!("writing cell map: {e}")))?;
    }

    let started = Instant::now();
    let mut emit = |line: &[u8]| -> io::Result<()> {
        out.write_all(line)?;
        out.write_all(b"\n")
    };
    let report = generate::generate(&opts, &mut emit, &mut labels)
        .map_err(|e| Failure::runtime(format!("generating events: {e}")))?;
    out.flush()
        .map_err(|e| Failure::runtime(format!("writing events: {e}")))?;
    let elapsed = started.elapsed().as_secs_f64();

    if let Some(mut m) = manifest {
        serde_json::to_writer_pretty(
            &mut m,
            &Manifest {
                report: &report,
                options: &opts,
            },
        )
        .map_err(|e| Failure::runtime(format!("writing manifest: {e}")))?;
        m.write_all(b"\n")
            .and_then(|_| m.flush())
            .map_err(|e| Failure::runtime(format!("writing manifest: {e}")))?;
    }
    if !args.quiet {
        // Counts only: no pseudonym ever goes to a log.
        eprintln!(
            "linewatch generate: {} lines ({} valid, {} malformed, {} duplicate, {} late), \
             {} deal lines in {} networks, {} labels, {:.1} s",
            report.events_written,
            report.valid,
            report.malformed,
            report.duplicates,
            report.late,
            report.deal_lines,
            report.networks,
            report.labels,
            elapsed
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        args: Args,
    }

    fn args(v: &[&str]) -> Args {
        T::try_parse_from(std::iter::once("t").chain(v.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn defaults_resolve_to_the_library_defaults() {
        assert_eq!(resolve(&args(&[])).unwrap(), GenOptions::default());
    }

    #[test]
    fn every_bad_argument_is_named_in_one_line() {
        let e = resolve(&args(&[
            "--start",
            "monday",
            "--days",
            "0",
            "--malformed-rate=-1",
            "--labels",
            "-",
        ]))
        .unwrap_err();
        assert_eq!(e.code, 2);
        for part in ["--start", "days", "malformed rate", "--labels"] {
            assert!(e.message.contains(part), "{}", e.message);
        }
        assert!(!e.message.contains('\n'));
    }

    #[test]
    fn start_takes_any_offset() {
        let o = resolve(&args(&["--start", "2026-10-05T01:00:00+01:00"])).unwrap();
        assert_eq!(o.start_ms, generate::DEFAULT_START_MS);
    }
}
