//! Scoring alerts against labels: precision, recall and detection delay per detector.
//!
//! Labels are the CSV `generate` writes (`subject,kind,label,group,predecessor,first_seen_ms`)
//! or any CSV whose header has at least `subject,label` (such as `linewatch board`'s
//! `/labels.csv`), read with [`crate::sheet`] so a spreadsheet's file works as it is. The
//! truth each detector is scored against: the line detectors (`bulk_sms`, `customer_fan_in`,
//! `line_handover`, `deal_line`) against lines labelled `deal_line`; `handset_churn` against
//! handsets labelled `runner_handset` or `deal_handset`; `runner_movement` against handsets
//! labelled `runner_handset` (commuters' handsets, `lookalike_commuter`, are its look-alike). Look-alikes (`lookalike_*`,
//! including the board's `lookalike_triaged`: an alert an analyst dismissed) are counted
//! apart: a single-purpose detector may rightly fire on them, `deal_line` must not. Any other
//! label (`normal`, a typo) is "not a target"; [`Labels::unknown_labels`] lists them so the
//! caller can say so.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::path::Path;

use serde::Serialize;

use crate::alert::Alert;
use crate::detect::DETECTORS;
use crate::event::Millis;
use crate::sheet::Sheet;

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
    /// Values of a `kind` column other than `line` and `handset` (ignoring case), with how
    /// many rows carry each: the label alone decides how a row is scored, so such a row is
    /// read, and [`Labels::unknown_kinds`] lets the caller say so.
    kinds_unknown: BTreeMap<String, usize>,
}

/// The subject kinds a labels file may name (`generate` writes them).
pub const KINDS: [&str; 2] = ["line", "handset"];

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
/// Label of a runner's handset: what `runner_movement` should find.
pub const RUNNER_HANDSET: &str = "runner_handset";
/// Label of a commuter's handset (`generate`): moves between metro and county every working
/// day, the look-alike `runner_movement` must not flag.
pub const LOOKALIKE_COMMUTER: &str = "lookalike_commuter";
/// Label of a runner's line: real trade, but not a deal line, so no detector's target.
pub const RUNNER_LINE: &str = "runner_line";
/// Labels starting so are look-alikes: innocent subjects that resemble the trade.
pub const LOOKALIKE_PREFIX: &str = "lookalike";
/// What `linewatch board` exports for an alert an analyst triaged as a false positive: a
/// look-alike found in real traffic.
pub const LOOKALIKE_TRIAGED: &str = "lookalike_triaged";

/// Whether linewatch knows what a label means.
pub fn is_known(label: &str) -> bool {
    label == DEAL_LINE
        || label == RUNNER_LINE
        || BURNER_HANDSETS.contains(&label)
        || label.starts_with(LOOKALIKE_PREFIX)
}

/// Problems as one line: the first few, and how many more.
fn one_line(problems: &[String]) -> String {
    const SHOWN: usize = 10;
    let mut s = problems[..problems.len().min(SHOWN)].join("; ");
    if problems.len() > SHOWN {
        s.push_str(&format!("; and {} more", problems.len() - SHOWN));
    }
    s
}

impl Labels {
    pub fn load(path: &Path) -> Result<Labels, LabelsError> {
        let bytes = std::fs::read(path)
            .map_err(|e| LabelsError(format!("cannot read labels {}: {e}", path.display())))?;
        Labels::parse(bytes).map_err(|e| LabelsError(format!("{}: {}", path.display(), e.0)))
    }

    /// Reads a labels CSV as [`crate::sheet`] does (a spreadsheet's file works as it is):
    /// the `subject` and `label` columns, and `first_seen_ms` if there is one. Label values
    /// are matched ignoring case. Every bad row is reported, in one line.
    pub fn parse(data: impl AsRef<[u8]>) -> Result<Labels, LabelsError> {
        let sheet = Sheet::parse(data.as_ref(), &["subject", "label"]).map_err(LabelsError)?;
        // Both found by `Sheet::parse`, which checks required columns.
        let (si, li) = (
            sheet.column("subject").unwrap_or(0),
            sheet.column("label").unwrap_or(0),
        );
        let fi = sheet.column("first_seen_ms");
        let ki = sheet.column("kind");
        let mut kinds_unknown: BTreeMap<String, usize> = BTreeMap::new();
        let mut by_subject: HashMap<String, Label> = HashMap::new();
        let mut line_of: HashMap<String, u64> = HashMap::new();
        let mut problems = Vec::new();
        for row in &sheet.rows {
            let (subject, label) = match (sheet.required(row, si), sheet.required(row, li)) {
                (Ok(s), Ok(l)) => (s, l.to_ascii_lowercase()),
                (Err(e), _) | (_, Err(e)) => {
                    problems.push(e);
                    continue;
                }
            };
            let first_seen_ms = match fi.and_then(|fi| sheet.get(row, fi).map(|v| (fi, v))) {
                Some((_, "")) | None => None,
                Some((fi, v)) => match v.parse() {
                    Ok(t) => Some(t),
                    Err(_) => {
                        problems.push(format!(
                            "{}: {v:?} is not a whole number of milliseconds",
                            sheet.at(row, fi)
                        ));
                        continue;
                    }
                },
            };
            if let Some(earlier) = by_subject.get(subject) {
                if earlier.label != label {
                    // Naming the lines, not the subject: pseudonyms stay out of messages.
                    // `line_of` has every subject `by_subject` has.
                    problems.push(format!(
                        "line {}: the subject of line {} again, with another label ({label} after {})",
                        row.line, line_of[subject], earlier.label
                    ));
                    continue;
                }
            }
            if let Some(kind) = ki.and_then(|ki| sheet.get(row, ki)) {
                let kind = kind.to_ascii_lowercase();
                if !kind.is_empty() && !KINDS.contains(&kind.as_str()) {
                    *kinds_unknown.entry(kind).or_insert(0) += 1;
                }
            }
            line_of.insert(subject.to_string(), row.line);
            by_subject.insert(
                subject.to_string(),
                Label {
                    label,
                    first_seen_ms,
                },
            );
        }
        if !problems.is_empty() {
            return Err(LabelsError(one_line(&problems)));
        }
        Ok(Labels {
            by_subject,
            kinds_unknown,
        })
    }

    /// `kind` values other than `line` and `handset`, with how many rows carry each (a
    /// typo, or a column out of place). The label alone decides how such a row is scored.
    pub fn unknown_kinds(&self) -> &BTreeMap<String, usize> {
        &self.kinds_unknown
    }

    /// Label values linewatch does not know, with how many subjects carry each. Such a
    /// subject is scored as "not a target": flagged, it is a false positive.
    pub fn unknown_labels(&self) -> BTreeMap<&str, usize> {
        let mut out = BTreeMap::new();
        for l in self.by_subject.values() {
            if !is_known(&l.label) {
                *out.entry(l.label.as_str()).or_insert(0) += 1;
            }
        }
        out
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
            .filter(|(_, l)| l.label.starts_with(LOOKALIKE_PREFIX))
            .map(|(s, _)| s.as_str())
            .collect()
    }
}

/// Whether a subject with `label` is what `detector` is meant to find.
pub fn is_target(detector: &str, label: &str) -> bool {
    match detector {
        crate::detect::handset_churn::NAME => BURNER_HANDSETS.contains(&label),
        crate::detect::runner_movement::NAME => label == RUNNER_HANDSET,
        _ => label == DEAL_LINE,
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

/// One subject a detector got wrong.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Wrong {
    pub subject: String,
    /// Its label; `None` for a flagged subject the labels do not list.
    pub label: Option<String>,
}

/// The subjects one detector got wrong, for an analyst to look at: the false positives and
/// the misses behind a row of [`score`], each sorted by subject.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Mistakes {
    pub false_positives: Vec<Wrong>,
    pub missed: Vec<Wrong>,
}

/// What `detector` got wrong: subjects it alerted on that are not its target, and targets
/// it never alerted on. Counts agree with [`score`]'s `false_positives` and
/// `false_negatives`.
pub fn mistakes(alerts: &[Alert], labels: &Labels, detector: &str) -> Mistakes {
    let flagged: BTreeSet<&str> = alerts
        .iter()
        .filter(|a| a.detector == detector)
        .map(|a| a.subject.as_str())
        .collect();
    let truth = labels.truth(detector);
    let label_of = |s: &str| labels.by_subject.get(s).map(|l| l.label.clone());
    let mut missed: Vec<Wrong> = truth
        .iter()
        .filter(|s| !flagged.contains(*s))
        .map(|s| Wrong {
            subject: s.to_string(),
            label: label_of(s),
        })
        .collect();
    missed.sort_by(|a, b| a.subject.cmp(&b.subject));
    Mistakes {
        false_positives: flagged
            .iter()
            .filter(|s| !truth.contains(*s))
            .map(|s| Wrong {
                subject: s.to_string(),
                label: label_of(s),
            })
            .collect(),
        missed,
    }
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
    fn kinds_other_than_line_and_handset_are_counted_and_the_rows_still_read() {
        let labels = Labels::parse(LABELS).unwrap();
        assert!(labels.unknown_kinds().is_empty());
        let csv = "subject,kind,label\nd1,Line,deal_line\nh1,HANDSET,runner_handset\n\
            d2,lien,deal_line\nd3,lien,deal_line\nh2,phone,runner_handset\nh3,,normal\n";
        let labels = Labels::parse(csv).unwrap();
        let kinds: Vec<(&str, usize)> = (labels.unknown_kinds().iter())
            .map(|(k, n)| (k.as_str(), *n))
            .collect();
        assert_eq!(kinds, vec![("lien", 2), ("phone", 1)]);
        // Scored by their labels, as before.
        assert_eq!(labels.truth("deal_line").len(), 3);
        // No `kind` column at all (the board's export): nothing to say.
        let labels = Labels::parse("subject,label\nd1,deal_line\n").unwrap();
        assert!(labels.unknown_kinds().is_empty());
    }

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

    /// What a spreadsheet program saves: BOM, every field quoted, CRLF, columns reordered,
    /// an extra column, label case changed, a trailing all-empty row. Before the `csv`
    /// crate this was refused (`line 1: header must name subject and label columns`).
    #[test]
    fn reads_a_spreadsheet_saved_file() {
        let text = "\u{feff}\"first_seen_ms\",\"Label\",\"note\",\"subject\"\r\n\
            \"0\",\"deal_line\",\"seen by \"\"ops\"\", twice\",\"d1\"\r\n\
            \"3600000\",\"Deal_Line\",\"\",\"d,2\"\r\n\
            \"\",\"lookalike_school\",\"\",\"s1\"\r\n\
            \"\",\"\",\"\",\"\"\r\n\r\n";
        let l = Labels::parse(text).unwrap();
        assert_eq!(l.by_subject.len(), 3);
        assert_eq!(
            l.by_subject["d,2"],
            Label {
                label: DEAL_LINE.into(),
                first_seen_ms: Some(3_600_000)
            }
        );
        assert_eq!(l.truth("deal_line").len(), 2);
        assert_eq!(l.by_subject["s1"].first_seen_ms, None);
    }

    /// `linewatch board`'s `/labels.csv`: a dismissed alert is a look-alike, and a label
    /// linewatch does not know is reported, not silently dropped.
    #[test]
    fn board_labels_and_unknown_values() {
        let l = Labels::parse(
            "subject,label\r\nd1,deal_line\r\nf1,lookalike_triaged\r\nn1,normal\r\nn2,normal\r\n",
        )
        .unwrap();
        assert_eq!(l.lookalikes(), HashSet::from(["f1"]));
        // A subject written with the spreadsheet text mark (see `sheet::protect`) reads back
        // as the pseudonym itself, with or without the mark.
        let marked = Labels::parse("subject,label\n'=x1,deal_line\n-x2,deal_line\n").unwrap();
        assert_eq!(marked.truth("deal_line"), HashSet::from(["=x1", "-x2"]));
        assert_eq!(l.unknown_labels(), BTreeMap::from([("normal", 2)]));
        let alerts = [alert("deal_line", "d1", 0), alert("deal_line", "f1", 0)];
        let s = score(&alerts, &l);
        let d = s.iter().find(|d| d.detector == "deal_line").unwrap();
        assert_eq!(
            (d.true_positives, d.false_positives, d.lookalike_hits),
            (1, 1, 1)
        );
    }

    #[test]
    fn every_bad_row_is_named_by_line_and_column() {
        let e = Labels::parse("subject,label,first_seen_ms\na,,\nb,deal_line,soon\nc,x\nc,y\n")
            .unwrap_err();
        assert_eq!(
            e.0,
            "line 2, column 2 (label): empty; \
             line 3, column 3 (first_seen_ms): \"soon\" is not a whole number of milliseconds; \
             line 5: the subject of line 4 again, with another label (y after x)"
        );
    }

    #[test]
    fn mistakes_name_false_positives_and_misses() {
        let labels = Labels::parse(LABELS).unwrap();
        let alerts = vec![
            alert("deal_line", "d1", 7_200_000),
            alert("deal_line", "s1", 0),
            alert("deal_line", "x9", 0),
            alert("deal_line", "x9", 5),
            alert("bulk_sms", "d3", 0),
        ];
        let m = mistakes(&alerts, &labels, "deal_line");
        let w = |s: &str, l: Option<&str>| Wrong {
            subject: s.into(),
            label: l.map(String::from),
        };
        assert_eq!(
            m.false_positives,
            [w("s1", Some("lookalike_school")), w("x9", None)]
        );
        assert_eq!(
            m.missed,
            [w("d2", Some("deal_line")), w("d3", Some("deal_line"))]
        );
        let d = score(&alerts, &labels)
            .into_iter()
            .find(|d| d.detector == "deal_line")
            .unwrap();
        assert_eq!(
            (d.false_positives, d.false_negatives),
            (m.false_positives.len(), m.missed.len())
        );
    }

    #[test]
    fn minimal_csv_and_errors() {
        let l = Labels::parse("subject,label\na,deal_line\n").unwrap();
        assert_eq!(l.truth("deal_line").len(), 1);
        assert!(Labels::parse("who,what\na,b\n").is_err());
        assert!(Labels::parse("subject,label,first_seen_ms\na,b,soon\n").is_err());
    }
}
