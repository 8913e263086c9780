//! `linewatch tune`: threshold sweeps over labelled traffic, for analysts.
//!
//! Arguments are resolved and checked in full (every parameter parsed, every combination
//! validated, labels read, input read) before the first replay starts, so a typo costs
//! seconds, not a sweep.

use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::{load_config, Failure, Outcome};
use crate::detect::DETECTORS;
use crate::eval::Labels;
use crate::tune::{self, param, plot, report};

/// Output formats of `linewatch tune`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// One row per combination for spreadsheets.
    Csv,
    /// Every detector's figures per combination, for other tools.
    Json,
}

/// Arguments of `linewatch tune`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Labelled JSONL events (e.g. from `linewatch generate`), read once into memory.
    #[arg(long, value_name = "PATH")]
    pub input: PathBuf,
    /// Labels CSV: `generate`'s `subject,kind,label,group,predecessor,first_seen_ms`, or any
    /// CSV with `subject,label` columns (no delays then).
    #[arg(long, value_name = "PATH")]
    pub labels: PathBuf,
    /// A parameter to sweep: `section.key=a,b,c` or `section.key=start..end:step` (end
    /// included). Repeat for a grid of every combination; the first is the plot's x axis.
    #[arg(long = "param", value_name = "SECTION.KEY=VALUES", required = true)]
    pub params: Vec<String>,
    /// Cell map CSV (`cell,area,class`, e.g. from `generate --cells`): without it
    /// `runner_movement` has nothing to work on and finds nothing.
    #[arg(long, value_name = "PATH")]
    pub cells: Option<PathBuf>,
    /// Detector to score, tabulate, plot and recommend for.
    #[arg(long, default_value = "deal_line", value_name = "NAME")]
    pub detector: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Write the table, CSV or JSON here instead of stdout.
    #[arg(long, value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Write a plot to PREFIX.png and PREFIX.svg.
    #[arg(long, value_name = "PREFIX")]
    pub plot: Option<PathBuf>,
    /// Recommend the combination with the best recall at this precision or better (0..1).
    #[arg(long, value_name = "P")]
    pub target_precision: Option<f64>,
    /// Replays to run at once (default: one per core).
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
    /// Never show a progress bar.
    #[arg(long)]
    pub quiet: bool,
}

pub fn main(args: Args, config: Option<&Path>) -> Outcome {
    // Stage 1: resolve and check everything.
    let base = load_config(config)?;
    if !DETECTORS.contains(&args.detector.as_str()) {
        return Err(Failure::usage(format!(
            "--detector {:?}: unknown detector (one of {})",
            args.detector,
            DETECTORS.join(", ")
        )));
    }
    if let Some(p) = args.target_precision {
        if !(0.0..=1.0).contains(&p) {
            return Err(Failure::usage(format!(
                "--target-precision {p}: must be between 0 and 1"
            )));
        }
    }
    if let Some(j) = args.jobs.filter(|j| !(1..=MAX_JOBS).contains(j)) {
        return Err(Failure::usage(format!(
            "--jobs {j}: must be 1 to {MAX_JOBS} (each job is a thread replaying the input)"
        )));
    }
    // Every output is checked before the sweep: a missing directory must not throw away
    // every replay's result at the end, nor an output path overwrite an input.
    if let Some(prefix) = args.plot.as_deref() {
        let s = prefix.as_os_str().to_string_lossy();
        if s.ends_with('/') || prefix.is_dir() {
            return Err(Failure::usage(format!(
                "--plot {}: a directory; give a file prefix, e.g. {}",
                prefix.display(),
                prefix.join("sweep").display()
            )));
        }
    }
    let plot_paths = args.plot.as_deref().map(plot::paths);
    let mut inputs = vec![
        ("--input", args.input.as_path()),
        ("--labels", &args.labels),
    ];
    inputs.extend(args.cells.as_deref().map(|p| ("--cells", p)));
    inputs.extend(config.map(|p| ("--config", p)));
    let mut outputs: Vec<(&str, &Path)> = Vec::new();
    outputs.extend(args.output.as_deref().map(|p| ("--output", p)));
    if let Some((png, svg)) = &plot_paths {
        outputs.push(("--plot", png));
        outputs.push(("--plot", svg));
    }
    super::distinct_files(&inputs, &outputs)?;
    if let Some(p) = &args.output {
        check_writable(p, "--output")?;
    }
    if let Some(prefix) = &args.plot {
        let (png, svg) = plot::paths(prefix);
        check_writable(&png, "--plot")?;
        check_writable(&svg, "--plot")?;
    }
    let params = args
        .params
        .iter()
        .map(|s| param::Param::parse(s, &base))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Failure::usage(e.to_string()))?;
    let combos = param::grid(&base, &params).map_err(|e| Failure::usage(e.to_string()))?;
    let labels = Labels::load(&args.labels).map_err(|e| Failure::usage(e.to_string()))?;
    let unknown = labels.unknown_labels();
    if !unknown.is_empty() {
        eprintln!(
            "linewatch: warning: labels linewatch does not know, scored as not a target: {}",
            counted_values(unknown.iter().map(|(l, n)| (*l, *n)))
        );
    }
    let kinds = labels.unknown_kinds();
    if !kinds.is_empty() {
        eprintln!(
            "linewatch: warning: labels rows whose kind linewatch does not know (it reads {}; \
             the label alone decides how a row is scored): {}",
            crate::eval::KINDS.join(" and "),
            counted_values(kinds.iter().map(|(k, n)| (k.as_str(), *n)))
        );
    }
    if labels.truth(&args.detector).is_empty() {
        eprintln!(
            "linewatch: warning: the labels mark nothing {} should find, so recall means nothing",
            args.detector
        );
    }
    let cells = args.cells.as_deref().map(super::load_cells).transpose()?;
    let data = std::fs::read(&args.input)
        .map_err(|e| Failure::usage(format!("cannot read input {}: {e}", args.input.display())))?;
    // More threads than combinations would only wait.
    let jobs = args
        .jobs
        .unwrap_or_else(rayon::current_num_threads)
        .min(combos.len())
        .max(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs)
        .build()
        .map_err(|e| Failure::runtime(format!("cannot start {jobs} worker threads: {e}")))?;

    // Stage 2: the sweep.
    let bar = (!args.quiet && io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new(combos.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} tune [{bar:40}] {pos}/{len} combinations, {elapsed} elapsed, eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let started = Instant::now();
    let rows = pool.install(|| {
        tune::sweep_with_cells(&data, &labels, &combos, &args.detector, cells, &|| {
            if let Some(b) = &bar {
                b.inc(1);
            }
        })
    });
    let elapsed_s = started.elapsed().as_secs_f64();
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    drop(data);

    // Stage 3: outputs.
    let rec = args
        .target_precision
        .map(|p| tune::recommend(&rows, &params, &args.detector, p));
    let input_name = file_name(&args.input);
    let labels_name = file_name(&args.labels);
    let ctx = report::Context {
        detector: &args.detector,
        input: &input_name,
        labels: &labels_name,
        params: &params,
        recommendation: rec.as_ref(),
        elapsed_s,
    };
    let text = match args.format {
        Format::Table => report::table(&rows, &ctx),
        Format::Csv => report::csv(&rows, &ctx),
        Format::Json => {
            let mut s = serde_json::to_string_pretty(&report::json(&rows, &ctx))?;
            s.push('\n');
            s
        }
    };
    let table_on_stdout = args.format == Format::Table && args.output.is_none();
    match &args.output {
        Some(p) => std::fs::write(p, &text)
            .map_err(|e| Failure::usage(format!("cannot write {}: {e}", p.display())))?,
        None => {
            let mut out = io::stdout().lock();
            out.write_all(text.as_bytes())?;
            out.flush()?;
        }
    }
    if let (Some(r), false) = (&rec, table_on_stdout) {
        // The table carries this line; CSV and JSON stay machine-readable on stdout.
        eprintln!(
            "{}",
            tune::recommendation_line(r, &rows, &params, &args.detector)
        );
    }
    if let Some(prefix) = &args.plot {
        let date = today();
        let spec = plot::Spec {
            detector: &args.detector,
            input: &input_name,
            labels: &labels_name,
            date: &date,
            params: &params,
            recommendation: rec.as_ref(),
        };
        let (png, svg) =
            plot::write(prefix, &rows, &spec).map_err(|e| Failure::runtime(e.to_string()))?;
        eprintln!("plot: {} and {}", png.display(), svg.display());
    }
    let events = rows.first().map_or(0, |r| r.events_valid);
    eprintln!(
        "swept {} combinations over {events} events in {elapsed_s:.1} s with {jobs} job{}",
        rows.len(),
        if jobs == 1 { "" } else { "s" }
    );
    // The lines that were not records were dropped from every replay without a word.
    if let Some(r) = rows.first().filter(|r| r.events_malformed > 0) {
        let top = r.malformed_top.as_deref().unwrap_or("?");
        let share = r.events_malformed as f64 / r.events_total.max(1) as f64;
        let what = format!(
            "{} of {} lines of {} are malformed (mostly {top}) and were left out of every \
             replay",
            r.events_malformed,
            r.events_total,
            args.input.display()
        );
        // A few, as a real feed (and the generator) has, are counted like replay's; most
        // is the wrong file.
        if share > 0.5 {
            eprintln!(
                "linewatch: warning: {what}: is this the right file? (`linewatch replay \
                 --dead-letter FILE` lists them)"
            );
        } else if !args.quiet {
            eprintln!("tune: {what}");
        }
    }
    Ok(())
}

/// Most `--jobs`: far past any core count, short of what a typo (`100000`) would make the
/// system try to start.
pub const MAX_JOBS: usize = 256;

/// Fails with one line unless `path` can be created or overwritten. A file made only to
/// check is removed again.
fn check_writable(path: &Path, flag: &str) -> Result<(), Failure> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            return Err(Failure::usage(format!(
                "{flag} {}: directory {} does not exist",
                path.display(),
                dir.display()
            )));
        }
    }
    if path.is_dir() {
        return Err(Failure::usage(format!(
            "{flag} {}: is a directory, not a file",
            path.display()
        )));
    }
    let existed = path.exists();
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| Failure::usage(format!("{flag} {}: cannot write: {e}", path.display())))?;
    if !existed {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Today's date (UTC), for the plot's title.
fn today() -> String {
    let secs = crate::replay::wall_ms() / 1000;
    chrono::DateTime::from_timestamp(secs, 0)
        .map_or_else(String::new, |t| t.format("%Y-%m-%d").to_string())
}

/// Values from a labels file with their counts, for a warning: `"typo" (3), ...`. A value is
/// the analyst's own word, but a misplaced column can put a number there: one that looks
/// like a raw identifier is printed as the dead letters' redaction marks it.
fn counted_values<'a>(values: impl Iterator<Item = (&'a str, usize)>) -> String {
    values
        .map(|(v, n)| {
            if crate::redact::has_raw_identifier(v.as_bytes()) {
                format!("{} ({n})", crate::redact::MARK)
            } else {
                format!("{v:?} ({n})")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}
