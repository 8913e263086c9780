//! `linewatch demo`: a small generated city through every detector, in-process, no broker.
//!
//! It shows in seconds what linewatch does: the alerts each detector raised, one example
//! of each explained by its evidence, and how each detector scored against the generator's
//! labels (including how many look-alikes it touched).

use std::path::Path;
use std::time::Instant;

use super::{load_config, Failure, Outcome};
use crate::eval::{self, Labels};
use crate::generate::{self, GenOptions};
use crate::replay;

/// Arguments of `linewatch demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Subscribers in the generated city.
    #[arg(long, default_value_t = 5_000)]
    pub subscribers: usize,
    /// Days of traffic.
    #[arg(long, default_value_t = 4)]
    pub days: u32,
    /// Random seed (same seed, same city, same alerts).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Add this many club organisers, a look-alike (`generate --organisers`)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub organisers: usize,
}

pub fn main(args: Args, config: Option<&Path>) -> Outcome {
    let cfg = load_config(config)?;
    let opts = GenOptions {
        seed: args.seed,
        subscribers: args.subscribers,
        days: args.days,
        organisers: args.organisers,
        ..GenOptions::default()
    };
    // The generator's own bounds, so demo can never promise what generate refuses.
    let problems = opts.problems();
    if !problems.is_empty() {
        return Err(Failure::usage(format!("demo: --{}", problems.join("; --"))));
    }
    let started = Instant::now();
    let (events, labels_csv, report) = generate::generate_in_memory(&opts)
        .map_err(|e| Failure::runtime(format!("generating traffic failed: {e}")))?;
    let generated_s = started.elapsed().as_secs_f64();
    let labels = Labels::parse(&labels_csv)?;
    // The city's own cell map, as `generate --cells` writes it, so runner_movement works.
    let mut cells_csv = Vec::new();
    generate::write_cells(&opts, &mut cells_csv)
        .map_err(|e| Failure::runtime(format!("writing the cell map failed: {e}")))?;
    let cells = crate::cells::CellMap::parse(&cells_csv)
        .map_err(|e| Failure::runtime(format!("the generated cell map is invalid: {e}")))?;

    let (alerts, summary) =
        replay::replay_bytes_with_cells(cfg, &events, Some(std::sync::Arc::new(cells)));

    println!(
        "linewatch demo: {} subscribers, {} days, seed {} ({} deal networks, {} deal-line numbers)",
        args.subscribers, args.days, args.seed, report.networks, report.deal_lines
    );
    println!(
        "generated {} records in {:.1} s; detected in {:.2} s ({:.0} records/s)",
        summary.events_total, generated_s, summary.elapsed_s, summary.events_per_s
    );
    println!(
        "records: {} valid, {} malformed, {} duplicate, {} late (injected: {} malformed, {} duplicate, {} late)\n",
        summary.events_valid,
        summary.events_malformed,
        summary.events_duplicate,
        summary.events_late,
        report.malformed,
        report.duplicates,
        report.late
    );
    println!("alerts by detector:");
    for (det, n) in &summary.alerts_by_detector {
        println!("  {det:<16} {n:>6}");
    }
    println!("\nan example of each, with all its evidence (subjects are pseudonyms; `linewatch explain` puts any alert in words):");
    for det in crate::detect::DETECTORS {
        if let Some(a) = alerts.iter().find(|a| a.detector == det) {
            println!("  {det:<16} {} score {:.2}", a.subject, a.score);
            print!("{}", evidence_lines(a));
        }
    }
    println!("\nagainst the labels (line detectors vs deal-line numbers, handset_churn vs burner handsets,\nrunner_movement vs runner handsets; commuters' handsets are look-alikes):");
    print!("{}", eval::table(&eval::score(&alerts, &labels)));
    println!(
        "\nbulk_sms and customer_fan_in also fire on look-alikes (schools, businesses, festive\n\
         greetings) by design; deal_line combines the evidence and should touch none."
    );
    Ok(())
}

/// Every evidence entry of `a`: the figures as `key=value` lines of a readable width, then
/// each list or object (a handover's related line, deal_line's contributions) one item a line.
fn evidence_lines(a: &crate::alert::Alert) -> String {
    const INDENT: &str = "      ";
    let mut out = String::new();
    let mut line = String::new();
    for (k, v) in a
        .evidence
        .iter()
        .filter(|(_, v)| !v.is_array() && !v.is_object())
    {
        let item = format!("{k}={v}");
        if !line.is_empty() && line.len() + item.len() > 90 {
            out.push_str(&format!("{INDENT}{line}\n"));
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(&item);
    }
    if !line.is_empty() {
        out.push_str(&format!("{INDENT}{line}\n"));
    }
    if !a.related.is_empty() {
        out.push_str(&format!("{INDENT}related: {}\n", a.related.join(", ")));
    }
    for (k, v) in a
        .evidence
        .iter()
        .filter(|(_, v)| v.is_array() || v.is_object())
    {
        match v.as_array() {
            Some(items) => {
                for item in items {
                    out.push_str(&format!("{INDENT}{k}: {item}\n"));
                }
            }
            None => out.push_str(&format!("{INDENT}{k}: {v}\n")),
        }
    }
    out
}
