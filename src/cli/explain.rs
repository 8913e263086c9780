//! `linewatch explain`: an alert in plain language, from stdin or by id from an alerts file.

use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{load_config, Failure, Outcome};
use crate::explain::explain_json;

/// Arguments of `linewatch explain`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The alert to explain (a prefix will do if only one alert id starts with it). Without
    /// it, alert JSON is read from stdin: one object, several (e.g. `replay` output), or a
    /// JSON array of them.
    #[arg(long, value_name = "ALERT_ID", requires = "alerts")]
    pub id: Option<String>,
    /// JSONL alerts file (`replay --output`) to find `--id` in.
    #[arg(long, value_name = "PATH", requires = "id")]
    pub alerts: Option<PathBuf>,
}

pub fn main(args: Args, config: Option<&Path>) -> Outcome {
    // The explanation comes from the alert's own evidence, not the configuration; a
    // --config that cannot be used is still a mistake worth saying, like every command does.
    load_config(config)?;
    let alerts = match (&args.id, &args.alerts) {
        (Some(id), Some(path)) => vec![find(id, path)?],
        _ => from_stdin()?,
    };
    let text = alerts.join("\n");
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// An alert's explanation, with a one-line reason when the value is not an alert.
fn to_text(v: &Value, where_: &str) -> Result<String, Failure> {
    explain_json(v).map_err(|e| Failure::usage(format!("{where_} is not an alert: {e}")))
}

fn from_stdin() -> Result<Vec<String>, Failure> {
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
    let mut out = Vec::new();
    for (i, v) in serde_json::Deserializer::from_str(&text)
        .into_iter::<Value>()
        .enumerate()
    {
        let v = v.map_err(|e| Failure::usage(format!("stdin is not JSON: {e}")))?;
        match &v {
            Value::Array(items) => {
                for (j, item) in items.iter().enumerate() {
                    out.push(to_text(
                        item,
                        &format!("stdin value {} item {}", i + 1, j + 1),
                    )?);
                }
            }
            _ => out.push(to_text(&v, &format!("stdin value {}", i + 1))?),
        }
    }
    if out.is_empty() {
        return Err(Failure::usage(
            "no alert on stdin: pipe alert JSON in, or use --id ALERT_ID --alerts FILE",
        ));
    }
    Ok(out)
}

/// The alert with `id`, or the one alert whose id starts with it, in a JSONL file (a line
/// may also hold a JSON array of alerts). Lines that are not JSON are skipped: the file may
/// hold other records too.
fn find(id: &str, path: &Path) -> Result<String, Failure> {
    let id = id.trim();
    if id.is_empty() {
        return Err(Failure::usage("--id is empty"));
    }
    let f = File::open(path)
        .map_err(|e| Failure::usage(format!("cannot read alerts {}: {e}", path.display())))?;
    let mut first: Option<(usize, Value)> = None;
    let mut prefixed = 0usize;
    let mut read = 0usize;
    // Lines that are not JSON (or not UTF-8: one such line ended the search with "stream
    // did not contain valid UTF-8") are skipped, and counted for the message.
    let mut skipped = 0usize;
    for (n, line) in BufReader::new(f).split(b'\n').enumerate() {
        let line = line
            .map_err(|e| Failure::usage(format!("cannot read alerts {}: {e}", path.display())))?;
        let Ok(v) = serde_json::from_slice::<Value>(line.trim_ascii()) else {
            skipped += usize::from(!line.trim_ascii().is_empty());
            continue;
        };
        let items = match v {
            Value::Array(items) => items,
            v => vec![v],
        };
        for v in items {
            let Some(this) = v.get("alert_id").and_then(Value::as_str) else {
                continue;
            };
            read += 1;
            if this == id {
                return to_text(&v, &format!("{} line {}", path.display(), n + 1));
            }
            if this.starts_with(id) {
                prefixed += 1;
                if first.is_none() {
                    first = Some((n + 1, v));
                }
            }
        }
    }
    match (prefixed, first) {
        (1, Some((n, v))) => to_text(&v, &format!("{} line {n}", path.display())),
        (0, _) | (_, None) => Err(Failure::usage(format!(
            "no alert with id {id} in {} ({read} alerts read{})",
            path.display(),
            match skipped {
                0 => String::new(),
                n => format!(", {n} lines skipped as not JSON"),
            }
        ))),
        (many, _) => Err(Failure::usage(format!(
            "{many} alert ids in {} start with {id}: give more of it",
            path.display()
        ))),
    }
}
