//! Scoring alerts against labels: precision, recall and detection delay per detector.
//!
//! Labels are the CSV `generate` writes (`subject,kind,label,group,predecessor,first_seen_ms`)
//! or any CSV whose header has at least `subject,label`. The truth each detector is scored
//! against: the line detectors (`bulk_sms`, `customer_fan_in`, `line_handover`, `deal_line`)
//! against lines labelled `deal_line`; `handset_churn` against handsets labelled
//! `runner_handset` or `deal_handset`. Look-alikes (`lookalike_*`) are counted apart: a
//! single-purpose detector may rightly fire on them, `deal_line` must not.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::Path;

use serde::Serialize;

use crate::alert::Alert;
use crate::detect::DETECTORS;
use crate::event::Millis;

/// One labelled subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub label: String,
    /// Event time of the subject's first activity, if known.
    pub first_seen_ms: Option<Millis>,
}

/// Subject → label.
#[derive(Debug, Clone, Default)]
pub struct Labels {
    pub by_subject: HashMap<String, Label>,
}

/// Labels that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelsError(pub String);

impl fmt::Display for LabelsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LabelsError {}

/// Label of a deal-line number.
pub const DEAL_LINE: &str = "deal_line";
/// Labels of burner handsets.
pub const BURNER_HANDSETS: [&str; 2] = ["runner_handset", "deal_handset"];

impl Labels {
    pub fn load(path: &Path) -> Result<Labels, LabelsError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| LabelsError(format!("cannot read labels {}: {e}", path.display())))?;
        Labels::parse(&text).map_err(|e| LabelsError(format!("{}: {}", path.display(), e.0)))
    }

    pub fn parse(text: &str) -> Result<Labels, LabelsError> {
        let mut lines = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty());
        let Some((_, header)) = lines.next() else {
            return Err(LabelsError("empty labels file".into()));
        };
        let cols: Vec<&str> = header.split(',').map(str::trim).collect();
        let col = |name: &str| cols.iter().position(|c| *c == name);
        let (Some(si), Some(li)) = (col("subject"), col("label")) else {
            return Err(LabelsError(
                "line 1: header must name `subject` and `label` columns".into(),
            ));
        };
        let fi = col("first_seen_ms");
        let mut by_subject = HashMap::new();
        for (i, line) in lines {
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            let (Some(subject), Some(label)) = (f.get(si), f.get(li)) else {
                return Err(LabelsError(format!("line {}: too few fields", i + 1)));
            };
            if subject.is_empty() || label.is_empty() {
                return Err(LabelsError(format!(
                    "line {}: empty subject or label",
                    i + 1
                )));
            }
            let first_seen_ms = match fi.and_then(|fi| f.get(fi)).filter(|v| !v.is_empty()) {
                Some(v) => Some(v.parse().map_err(|_| {
                    LabelsError(format!("line {}: first_seen_ms is not an integer", i + 1))
                })?),
                None => None,
            };
            by_subject.insert(
                subject.to_string(),
                Label {
                    label: label.to_string(),
                    first_seen_ms,
                },
            );
        }
        Ok(Labels { by_subject })
    }

    /// Subjects a detector should flag.
    pub fn truth(&self, detector: &str) -> HashSet<&str> {
        self.by_subject
            .iter()
            .filter(|(_, l)| is_target(detector, &l.label))
            .map(|(s, _)| s.as_str())
            .collect()
    }

    /// Subjects labelled as look-alikes.
    pub fn lookalikes(&self) -> HashSet<&str> {
        self.by_subject
            .iter()
            .filter(|(_, l)| l.label.starts_with("lookalike"))
            .map(|(s, _)| s.as_str())
            .collect()
    }
}

/// Whether a subject with `label` is what `detector` is meant to find.
pub fn is_target(detector: &str, label: &str) -> bool {
    if detector == crate::detect::handset_churn::NAME {
        BURNER_HANDSETS.contains(&label)
    } else {
        label == DEAL_LINE
    }
}

/// How one detector did.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DetectorScore {
    pub detector: String,
    pub alerts: usize,
    /// Distinct subjects alerted on.
    pub flagged: usize,
    pub true_positives: usize,
    pub false_positives: usize,
    pub false_negatives: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Flagged subjects labelled as look-alikes.
    pub lookalike_hits: usize,
    /// Median seconds of event time from a true subject's first activity to its first alert.
    pub median_delay_s: Option<f64>,
}

/// Scores every detector's alerts against the labels.
pub fn score(alerts: &[Alert], labels: &Labels) -> Vec<DetectorScore> {
    let lookalikes = labels.lookalikes();
    DETECTORS
        .iter()
        .map(|&d| {
            let mine: Vec<&Alert> = alerts.iter().filter(|a| a.detector == d).collect();
            let mut first: BTreeMap<&str, Millis> = BTreeMap::new();
            for a in &mine {
                let e = first.entry(a.subject.as_str()).or_insert(a.event_time);
                *e = (*e).min(a.event_time);
            }
            let truth = labels.truth(d);
            let tp = first.keys().filter(|s| truth.contains(*s)).count();
            let fp = first.len() - tp;
            let fn_ = truth.len() - tp;
            let precision = ratio(tp, tp + fp);
            let recall = ratio(tp, truth.len());
            let mut delays: Vec<f64> = first
                .iter()
                .filter(|(s, _)| truth.contains(*s))
                .filter_map(|(s, t)| {
                    labels.by_subject[*s]
                        .first_seen_ms
                        .map(|f0| (t - f0).max(0) as f64 / 1000.0)
                })
                .collect();
            delays.sort_by(f64::total_cmp);
            DetectorScore {
                detector: d.to_string(),
                alerts: mine.len(),
                flagged: first.len(),
                true_positives: tp,
                false_positives: fp,
                false_negatives: fn_,
                precision,
                recall,
                f1: if precision + recall > 0.0 {
                    2.0 * precision * recall / (precision + recall)
                } else {
                    0.0
                },
                lookalike_hits: first.keys().filter(|s| lookalikes.contains(*s)).count(),
                median_delay_s: median(&delays),
            }
        })
        .collect()
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        // Nothing to find and nothing claimed: perfect; something claimed of nothing: 0.
        if a == 0 {
            1.0
        } else {
            0.0
        }
    } else {
        a as f64 / b as f64
    }
}

/// Median of sorted values.
pub fn median(sorted: &[f64]) -> Option<f64> {
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[n / 2]),
        n => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// A plain table of scores for the terminal.
pub fn table(scores: &[DetectorScore]) -> String {
    let mut s = format!(
        "{:<16} {:>7} {:>8} {:>5} {:>5} {:>5} {:>9} {:>7} {:>10} {:>12}\n",
        "detector",
        "alerts",
        "flagged",
        "tp",
        "fp",
        "fn",
        "precision",
        "recall",
        "look-alike",
        "median delay"
    );
    for d in scores {
        let delay = d
            .median_delay_s
            .map_or("-".to_string(), |v| format!("{:.1} h", v / 3600.0));
        s.push_str(&format!(
            "{:<16} {:>7} {:>8} {:>5} {:>5} {:>5} {:>9.3} {:>7.3} {:>10} {:>12}\n",
            d.detector,
            d.alerts,
            d.flagged,
            d.true_positives,
            d.false_positives,
            d.false_negatives,
            d.precision,
            d.recall,
            d.lookalike_hits,
            delay
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::SubjectKind;

    fn alert(detector: &str, subject: &str, t: Millis) -> Alert {
        Alert {
            alert_id: format!("{detector}{subject}{t}"),
            detector: detector.into(),
            subject: subject.into(),
            subject_kind: SubjectKind::Line,
            score: 1.0,
            event_time: t,
            window_start: t,
            window_end: t,
            related: vec![],
            evidence: Default::default(),
            detected_at: 0,
            config_version: String::new(),
        }
    }

    const LABELS: &str = "subject,kind,label,group,predecessor,first_seen_ms\n\
        d1,line,deal_line,1,,0\nd2,line,deal_line,1,d1,3600000\nd3,line,deal_line,2,,0\n\
        s1,line,lookalike_school,,,0\nh1,handset,runner_handset,1,,0\n";

    #[test]
    fn hand_worked_precision_recall_and_delay() {
        let labels = Labels::parse(LABELS).unwrap();
        let alerts = vec![
            alert("deal_line", "d1", 7_200_000),
            alert("deal_line", "d1", 90_000_000), // a repeat: still one subject
            alert("deal_line", "d2", 18_000_000),
            alert("deal_line", "s1", 0),
            alert("deal_line", "x9", 0),
        ];
        let s = score(&alerts, &labels);
        let d = s.iter().find(|d| d.detector == "deal_line").unwrap();
        assert_eq!(
            (
                d.alerts,
                d.flagged,
                d.true_positives,
                d.false_positives,
                d.false_negatives
            ),
            (5, 4, 2, 2, 1)
        );
        assert_eq!(d.precision, 0.5);
        assert!((d.recall - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(d.lookalike_hits, 1);
        // Delays 2 h (d1) and 4 h (d2): median 3 h.
        assert_eq!(d.median_delay_s, Some(10_800.0));
        let h = s.iter().find(|d| d.detector == "handset_churn").unwrap();
        assert_eq!((h.recall, h.precision), (0.0, 1.0));
    }

    #[test]
    fn minimal_csv_and_errors() {
        let l = Labels::parse("subject,label\na,deal_line\n").unwrap();
        assert_eq!(l.truth("deal_line").len(), 1);
        assert!(Labels::parse("who,what\na,b\n").is_err());
        assert!(Labels::parse("subject,label,first_seen_ms\na,b,soon\n").is_err());
    }
}
