//! `linewatch explain`: an alert in plain language, from stdin or by id from an alerts file.

use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{Failure, Outcome};
use crate::alert::Alert;
use crate::explain::explain;

/// Arguments of `linewatch explain`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The alert to explain (a unique prefix of at least 6 characters will do). Without it,
    /// alert JSON is read from stdin: one object, or several (e.g. `replay` output).
    #[arg(long, value_name = "ALERT_ID", requires = "alerts")]
    pub id: Option<String>,
    /// JSONL alerts file (`replay --output`) to find `--id` in.
    #[arg(long, value_name = "PATH", requires = "id")]
    pub alerts: Option<PathBuf>,
}

/// Shortest `--id` prefix searched for: shorter would match many alerts in a big file.
const MIN_PREFIX: usize = 6;

pub fn main(args: Args, _config: Option<&Path>) -> Outcome {
    let alerts = match (&args.id, &args.alerts) {
        (Some(id), Some(path)) => vec![find(id, path)?],
        _ => from_stdin()?,
    };
    let text = alerts.iter().map(explain).collect::<Vec<_>>().join("\n");
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Turns a JSON value into an alert, with a one-line reason when it is not one.
fn to_alert(v: Value, where_: &str) -> Result<Alert, Failure> {
    serde_json::from_value(v).map_err(|e| Failure::usage(format!("{where_} is not an alert: {e}")))
}

fn from_stdin() -> Result<Vec<Alert>, Failure> {
    let stdin = io::stdin();
    if stdin.is_terminal() {
        return Err(Failure::usage(
            "no alert given: pipe alert JSON in, or use --id ALERT_ID --alerts FILE",
        ));
    }
    let mut text = String::new();
    stdin
        .lock()
        .read_to_string(&mut text)
        .map_err(|e| Failure::usage(format!("cannot read stdin: {e}")))?;
    let mut alerts = Vec::new();
    for (i, v) in serde_json::Deserializer::from_str(&text)
        .into_iter::<Value>()
        .enumerate()
    {
        let v = v.map_err(|e| Failure::usage(format!("stdin is not JSON: {e}")))?;
        alerts.push(to_alert(v, &format!("stdin value {}", i + 1))?);
    }
    if alerts.is_empty() {
        return Err(Failure::usage(
            "no alert on stdin: pipe alert JSON in, or use --id ALERT_ID --alerts FILE",
        ));
    }
    Ok(alerts)
}

/// The alert with `id` (or the one alert whose id starts with it) in a JSONL file. Lines that
/// are not JSON objects are skipped: the file may hold other records too.
fn find(id: &str, path: &Path) -> Result<Alert, Failure> {
    let id = id.trim();
    let f = File::open(path)
        .map_err(|e| Failure::usage(format!("cannot read alerts {}: {e}", path.display())))?;
    let mut prefixed: Vec<(usize, Value)> = Vec::new();
    let mut read = 0usize;
    for (n, line) in BufReader::new(f).lines().enumerate() {
        let line = line
            .map_err(|e| Failure::usage(format!("cannot read alerts {}: {e}", path.display())))?;
        let Ok(v) = serde_json::from_str::<Value>(line.trim()) else {
            continue;
        };
        let Some(this) = v.get("alert_id").and_then(Value::as_str) else {
            continue;
        };
        read += 1;
        let where_ = || format!("{} line {}", path.display(), n + 1);
        if this == id {
            return to_alert(v, &where_());
        }
        if id.len() >= MIN_PREFIX && this.starts_with(id) && prefixed.len() < 2 {
            prefixed.push((n + 1, v));
        }
    }
    match prefixed.len() {
        1 => {
            let (n, v) = prefixed.remove(0);
            to_alert(v, &format!("{} line {n}", path.display()))
        }
        0 => Err(Failure::usage(format!(
            "no alert with id {id} in {} ({read} alerts read)",
            path.display()
        ))),
        _ => Err(Failure::usage(format!(
            "more than one alert id in {} starts with {id}: give more of it",
            path.display()
        ))),
    }
}
