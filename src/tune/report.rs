//! The sweep's outputs: an aligned table for the terminal, CSV and JSON for other tools.
//!
//! Table and CSV show the chosen detector only (one row per combination); JSON carries every
//! detector's score, since one replay scores them all at no extra cost, and per combination
//! the subjects the chosen detector got wrong (`wrong`: false positives with their label,
//! if any, and misses), so an analyst can look at them. That list is output for the analyst,
//! like the alerts themselves; it never goes to logs.

use serde_json::{json, Map, Value};

use super::param::Param;
use super::{recommendation_line, Recommendation, Row};

/// What the sweep was run on, for the JSON output and the plot title.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    pub detector: &'a str,
    pub input: &'a str,
    pub labels: &'a str,
    pub params: &'a [Param],
    pub recommendation: Option<&'a Recommendation>,
    pub elapsed_s: f64,
}

impl Context<'_> {
    fn recommended(&self) -> Option<usize> {
        match self.recommendation {
            Some(Recommendation::Pick { index, .. }) => Some(*index),
            _ => None,
        }
    }
}

/// A delay for people: minutes under an hour, hours under two days, else days.
pub fn human_delay(s: Option<f64>) -> String {
    match s {
        None => "-".into(),
        Some(s) if s < 3_600.0 => format!("{:.1} min", s / 60.0),
        Some(s) if s < 172_800.0 => format!("{:.1} h", s / 3_600.0),
        Some(s) => format!("{:.1} d", s / 86_400.0),
    }
}

/// The aligned table, with the recommended row marked and the recommendation line below.
pub fn table(rows: &[Row], ctx: &Context<'_>) -> String {
    let mut head: Vec<String> = ctx.params.iter().map(|p| p.key.clone()).collect();
    head.extend(
        [
            "alerts",
            "flagged",
            "tp",
            "fp",
            "fn",
            "precision",
            "recall",
            "f1",
            "look-alike",
            "median delay",
        ]
        .map(String::from),
    );
    let mut cells: Vec<Vec<String>> = vec![head];
    for r in rows {
        let Some(s) = r.score(ctx.detector) else {
            continue;
        };
        let mut line: Vec<String> = r.values.iter().map(ToString::to_string).collect();
        line.extend([
            s.alerts.to_string(),
            s.flagged.to_string(),
            s.true_positives.to_string(),
            s.false_positives.to_string(),
            s.false_negatives.to_string(),
            format!("{:.3}", s.precision),
            format!("{:.3}", s.recall),
            format!("{:.3}", s.f1),
            s.lookalike_hits.to_string(),
            human_delay(s.median_delay_s),
        ]);
        cells.push(line);
    }
    let widths: Vec<usize> = (0..cells[0].len())
        .map(|c| cells.iter().map(|l| l[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = format!("detector: {}\n", ctx.detector);
    for (i, line) in cells.iter().enumerate() {
        // Row 0 is the header; data row i is rows[i - 1].
        let mark = if i > 0 && ctx.recommended() == Some(i - 1) {
            "*"
        } else {
            " "
        };
        out.push_str(mark);
        for (c, cell) in line.iter().enumerate() {
            out.push_str("  ");
            // Parameter columns left-aligned like labels, figures right-aligned.
            if c < ctx.params.len() {
                out.push_str(&format!("{cell:<w$}", w = widths[c]));
            } else {
                out.push_str(&format!("{cell:>w$}", w = widths[c]));
            }
        }
        out.push('\n');
    }
    if let Some(rec) = ctx.recommendation {
        out.push_str(&recommendation_line(rec, rows, ctx.params, ctx.detector));
        out.push('\n');
    }
    out
}

/// CSV with a header: the swept parameters, then the chosen detector's figures. Written
/// with the `csv` crate, so it opens cleanly in a spreadsheet (every field here is a name
/// linewatch knows or a number).
pub fn csv(rows: &[Row], ctx: &Context<'_>) -> String {
    let mut w = crate::sheet::writer(Vec::new());
    let mut head: Vec<&str> = ctx.params.iter().map(|p| p.key.as_str()).collect();
    head.extend([
        "detector",
        "alerts",
        "flagged",
        "true_positives",
        "false_positives",
        "false_negatives",
        "precision",
        "recall",
        "f1",
        "lookalike_hits",
        "median_delay_s",
        "recommended",
    ]);
    let mut records = vec![head.iter().map(ToString::to_string).collect::<Vec<_>>()];
    for (i, r) in rows.iter().enumerate() {
        let Some(s) = r.score(ctx.detector) else {
            continue;
        };
        let mut rec: Vec<String> = r.values.iter().map(ToString::to_string).collect();
        rec.extend([
            s.detector.clone(),
            s.alerts.to_string(),
            s.flagged.to_string(),
            s.true_positives.to_string(),
            s.false_positives.to_string(),
            s.false_negatives.to_string(),
            format!("{:.6}", s.precision),
            format!("{:.6}", s.recall),
            format!("{:.6}", s.f1),
            s.lookalike_hits.to_string(),
            s.median_delay_s
                .map_or(String::new(), |d| format!("{d:.1}")),
            (ctx.recommended() == Some(i)).to_string(),
        ]);
        records.push(rec);
    }
    for rec in &records {
        // Writing to memory cannot fail. Nothing to protect from formulas: every field is a
        // config key, a detector name, a number or true/false.
        w.write_record(rec).expect("CSV into memory");
    }
    let bytes = w
        .into_inner()
        .map_err(|e| e.into_error())
        .expect("CSV into memory");
    String::from_utf8(bytes).expect("CSV of UTF-8 fields is UTF-8")
}

/// One JSON document: what was swept, every combination with every detector's score, and
/// the recommendation.
pub fn json(rows: &[Row], ctx: &Context<'_>) -> Value {
    let params_of = |r: &Row| -> Map<String, Value> {
        ctx.params
            .iter()
            .zip(&r.values)
            .map(|(p, v)| (p.key.clone(), v.to_json()))
            .collect()
    };
    let recommendation = ctx.recommendation.map(|rec| {
        let line = recommendation_line(rec, rows, ctx.params, ctx.detector);
        match rec {
            Recommendation::Pick { index, target, .. } => json!({
                "target_precision": target,
                "found": true,
                "params": params_of(&rows[*index]),
                "message": line,
            }),
            Recommendation::NoneReaches { target, .. } => json!({
                "target_precision": target,
                "found": false,
                "params": null,
                "message": line,
            }),
        }
    });
    json!({
        "detector": ctx.detector,
        "input": ctx.input,
        "labels": ctx.labels,
        "params": ctx.params.iter().map(|p| json!({
            "key": p.key,
            "values": p.values.iter().map(|v| v.to_json()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "combinations": rows.len(),
        "elapsed_s": (ctx.elapsed_s * 1000.0).round() / 1000.0,
        "recommendation": recommendation,
        "rows": rows.iter().map(|r| json!({
            "params": params_of(r),
            "events_valid": r.events_valid,
            "scores": r.scores,
            "wrong": {
                "detector": ctx.detector,
                "false_positives": r.mistakes.false_positives,
                "missed": r.mistakes.missed,
            },
        })).collect::<Vec<_>>(),
    })
}
