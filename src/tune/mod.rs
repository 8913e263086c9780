//! Threshold sweeps over labelled traffic, for analysts (`linewatch tune`).
//!
//! The input is read once into memory; every combination of the swept parameters is replayed
//! over it with its own [`crate::engine::Engine`] (through [`crate::replay::replay_bytes`],
//! the same path as `replay`, so a sweep finds exactly what the service would), in parallel,
//! and scored against the labels with [`crate::eval::score`].
//!
//! # Layout
//!
//! - [`param`]: `--param` parsing and one validated configuration per combination.
//! - [`report`]: the table, CSV and JSON outputs, and the recommendation.
//! - [`plot`]: precision, recall and F1 against the swept parameter, PNG and SVG.

pub mod param;
pub mod plot;
pub mod report;

use std::cmp::Ordering;
use std::fmt;

use rayon::prelude::*;

use crate::eval::{self, DetectorScore, Labels};
use param::{Combination, ParamValue};

/// A sweep that cannot be run, or whose output cannot be written: one line for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TuneError(pub String);

impl fmt::Display for TuneError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TuneError {}

/// The outcome of one combination.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// One value per swept parameter, in `--param` order.
    pub values: Vec<ParamValue>,
    /// Every detector's score, in [`crate::detect::DETECTORS`] order.
    pub scores: Vec<DetectorScore>,
    /// Valid events the replay used (the same for every row; kept to show the input was read).
    pub events_valid: u64,
    /// Lines read and lines malformed, with the commonest reason: a sweep over a file that is
    /// mostly not records must say so, as `replay` does.
    pub events_total: u64,
    pub events_malformed: u64,
    pub malformed_top: Option<String>,
    /// The subjects the swept detector got wrong (for `--format json`).
    pub mistakes: eval::Mistakes,
}

impl Row {
    /// The score of one detector. Every row scores every detector, so a known name is found.
    pub fn score(&self, detector: &str) -> Option<&DetectorScore> {
        self.scores.iter().find(|s| s.detector == detector)
    }
}

/// Replays `data` once per combination, on the current rayon pool, and scores each replay;
/// the subjects `detector` got wrong are kept too. `done` is called after each combination
/// (for a progress bar). Rows come back in combination order whatever order the threads
/// finish in.
pub fn sweep(
    data: &[u8],
    labels: &Labels,
    combos: &[Combination],
    detector: &str,
    done: &(dyn Fn() + Sync),
) -> Vec<Row> {
    sweep_with_cells(data, labels, combos, detector, None, done)
}

/// [`sweep`] with a cell map (`tune --cells`), so `runner_movement` is scored too.
pub fn sweep_with_cells(
    data: &[u8],
    labels: &Labels,
    combos: &[Combination],
    detector: &str,
    cells: Option<std::sync::Arc<crate::cells::CellMap>>,
    done: &(dyn Fn() + Sync),
) -> Vec<Row> {
    combos
        .par_iter()
        .map(|c| {
            let (alerts, summary) =
                crate::replay::replay_bytes_with_cells(c.config.clone(), data, cells.clone());
            let scores = eval::score(&alerts, labels);
            let mistakes = eval::mistakes(&alerts, labels, detector);
            done();
            Row {
                values: c.values.clone(),
                scores,
                events_valid: summary.events_valid,
                events_total: summary.events_total,
                events_malformed: summary.events_malformed,
                malformed_top: (summary.malformed_by_reason.iter())
                    .max_by_key(|(_, n)| **n)
                    .map(|(r, _)| r.clone()),
                mistakes,
            }
        })
        .collect()
}

/// What `--target-precision` recommends.
#[derive(Debug, Clone, PartialEq)]
pub enum Recommendation {
    /// Row `index` has the best recall among rows at or above the target precision; `tie`
    /// says how it was chosen over rows equal to it in recall and precision, if any were.
    Pick {
        index: usize,
        target: f64,
        tie: Option<TieBreak>,
    },
    /// No row with any true positive reaches the target; `best` is the row with the highest
    /// precision among those that found something, if any did.
    NoneReaches { target: f64, best: Option<usize> },
}

/// Why the pick won over `others` rows with the same recall and precision.
#[derive(Debug, Clone, PartialEq)]
pub enum TieBreak {
    /// Its median detection delay is the shortest; `next` is the shortest of the others'.
    ShorterDelay {
        others: usize,
        delay_s: f64,
        next_s: Option<f64>,
    },
    /// `others` rows have the same median delay too (and `slower` a longer one); it is the
    /// loosest of those.
    Looser { others: usize, slower: usize },
}

/// Whether a higher value of `section.key` lets a detector fire more easily. For minimums,
/// thresholds, gaps and cooldowns the lower value is the looser; for maximums, caps,
/// weights, windows, lookbacks and retention the higher; `enabled = true` is looser than
/// `false`.
pub fn looser_when_higher(key: &str) -> bool {
    let name = key.rsplit('.').next().unwrap_or(key);
    name == "enabled"
        || name.starts_with("max_")
        || name.contains("_max_")
        || name.starts_with("weight_")
        || name.ends_with("window_s")
        || name.ends_with("lookback_s")
        || name.ends_with("retention_s")
        || name == "sketch_size"
}

/// Picks the combination with the best recall for `detector` among those with precision at
/// least `target`.
///
/// A row that flags nothing has precision 1 by convention but finds nothing, so it never
/// "reaches" the target. Among rows equal in recall, the higher precision wins; among rows
/// equal in both, the shorter median detection delay (a row without one comes last), then
/// the looser setting (first parameter first, see [`looser_when_higher`]): on this sample
/// they find the same lines, and the looser one keeps more margin for lines that show less.
pub fn recommend(
    rows: &[Row],
    params: &[param::Param],
    detector: &str,
    target: f64,
) -> Recommendation {
    let eligible = |r: &&Row| {
        r.score(detector)
            .is_some_and(|s| s.true_positives > 0 && s.precision + 1e-12 >= target)
    };
    let recall_precision = |r: &Row| {
        r.score(detector)
            .map_or((0.0, 0.0), |s| (s.recall, s.precision))
    };
    let delay = |r: &Row| r.score(detector).and_then(|s| s.median_delay_s);
    // Shorter is better; none at all is worst.
    let by_delay = |a: &Row, b: &Row| match (delay(a), delay(b)) {
        (Some(x), Some(y)) => y.total_cmp(&x),
        (Some(_), None) => Ordering::Greater,
        (None, Some(_)) => Ordering::Less,
        (None, None) => Ordering::Equal,
    };
    let by_looseness = |a: &Row, b: &Row| {
        a.values
            .iter()
            .zip(&b.values)
            .zip(params)
            .map(|((x, y), p)| {
                let o = x.as_f64().total_cmp(&y.as_f64());
                if looser_when_higher(&p.key) {
                    o
                } else {
                    o.reverse()
                }
            })
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    };
    let same_target = |a: &Row, b: &Row| {
        let ((ra, pa), (rb, pb)) = (recall_precision(a), recall_precision(b));
        ra.total_cmp(&rb).then(pa.total_cmp(&pb))
    };
    let better = |a: &Row, b: &Row| {
        same_target(a, b)
            .then_with(|| by_delay(a, b))
            .then_with(|| by_looseness(a, b))
    };
    let pick = rows
        .iter()
        .enumerate()
        .filter(|(_, r)| eligible(r))
        .max_by(|(_, a), (_, b)| better(a, b));
    match pick {
        Some((index, p)) => {
            let tied: Vec<&Row> = rows
                .iter()
                .enumerate()
                .filter(|&(i, r)| i != index && eligible(&r) && same_target(r, p).is_eq())
                .map(|(_, r)| r)
                .collect();
            let (same_delay, slower): (Vec<&Row>, Vec<&Row>) =
                tied.iter().partition(|r| by_delay(p, r).is_eq());
            let tie = match (tied.is_empty(), delay(p)) {
                (true, _) => None,
                (false, Some(delay_s)) if same_delay.is_empty() => Some(TieBreak::ShorterDelay {
                    others: tied.len(),
                    delay_s,
                    next_s: slower
                        .iter()
                        .filter_map(|r| delay(r))
                        .min_by(f64::total_cmp),
                }),
                _ => Some(TieBreak::Looser {
                    others: same_delay.len(),
                    slower: slower.len(),
                }),
            };
            Recommendation::Pick { index, target, tie }
        }
        None => {
            let best = rows
                .iter()
                .enumerate()
                .filter(|(_, r)| r.score(detector).is_some_and(|s| s.true_positives > 0))
                .max_by(|(_, a), (_, b)| {
                    let p = |r: &Row| r.score(detector).map_or(0.0, |s| s.precision);
                    p(a).total_cmp(&p(b)).then_with(|| better(a, b))
                })
                .map(|(i, _)| i);
            Recommendation::NoneReaches { target, best }
        }
    }
}

/// The recommendation as one line for the analyst.
pub fn recommendation_line(
    rec: &Recommendation,
    rows: &[Row],
    params: &[param::Param],
    detector: &str,
) -> String {
    let figures = |r: &Row| {
        r.score(detector).map_or(String::new(), |s| {
            format!(
                "precision {:.3}, recall {:.3}, F1 {:.3}, {} alert{}",
                s.precision,
                s.recall,
                s.f1,
                s.alerts,
                if s.alerts == 1 { "" } else { "s" }
            )
        })
    };
    match rec {
        Recommendation::Pick { index, target, tie } => {
            let r = &rows[*index];
            let why = match tie {
                None => String::new(),
                Some(t) => format!("; {}", tie_reason(t)),
            };
            format!(
                "recommended for {detector} at precision >= {target}: {} ({}){why}",
                param::describe(params, &r.values),
                figures(r)
            )
        }
        Recommendation::NoneReaches { target, best } => match best {
            Some(i) => format!(
                "no setting reaches precision {target} for {detector}; the most precise is {} ({})",
                param::describe(params, &rows[*i].values),
                figures(&rows[*i])
            ),
            None => format!(
                "no setting reaches precision {target} for {detector}: none flagged a single labelled subject"
            ),
        },
    }
}

/// Why a tied pick won, for the recommendation line.
pub fn tie_reason(t: &TieBreak) -> String {
    let settings = |n: usize| {
        if n == 1 {
            "1 other setting ties".to_string()
        } else {
            format!("{n} other settings tie")
        }
    };
    match t {
        TieBreak::ShorterDelay {
            others,
            delay_s,
            next_s,
        } => format!(
            "{} on precision and recall; chosen for the shortest median delay ({}{})",
            settings(*others),
            report::human_delay(Some(*delay_s)),
            next_s.map_or(", the others have none".to_string(), |n| format!(
                " against {}",
                report::human_delay(Some(n))
            ))
        ),
        TieBreak::Looser { others, slower } => format!(
            "{} on precision, recall and median delay{}; chosen as the loosest",
            settings(*others),
            if *slower > 0 {
                format!(" ({slower} more, with a longer delay)")
            } else {
                String::new()
            }
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use param::Param;

    fn param(key: &str, values: &[f64]) -> Param {
        let (section, name) = key.split_once('.').unwrap();
        Param {
            key: key.into(),
            section: section.into(),
            name: name.into(),
            values: values.iter().map(|&v| ParamValue::Float(v)).collect(),
        }
    }

    /// A deal_line row: every line found (precision and recall 1), first alerts `delay_h`
    /// hours after each line's first activity.
    fn row(threshold: f64, delay_h: Option<f64>) -> Row {
        Row {
            values: vec![ParamValue::Float(threshold)],
            scores: vec![DetectorScore {
                detector: "deal_line".into(),
                alerts: 20,
                flagged: 20,
                true_positives: 20,
                false_positives: 0,
                false_negatives: 0,
                precision: 1.0,
                recall: 1.0,
                f1: 1.0,
                lookalike_hits: 0,
                median_delay_s: delay_h.map(|h| h * 3600.0),
            }],
            events_valid: 1,
            events_total: 1,
            events_malformed: 0,
            malformed_top: None,
            mistakes: Default::default(),
        }
    }

    fn pick(rows: &[Row], params: &[Param]) -> (f64, Option<TieBreak>) {
        match recommend(rows, params, "deal_line", 0.9) {
            Recommendation::Pick { index, tie, .. } => (rows[index].values[0].as_f64(), tie),
            other => panic!("{other:?}"),
        }
    }

    /// The case from the issue: 0.65..0.85 find the same lines, the stricter ones hours
    /// later. The old rule took the stricter 0.85.
    #[test]
    fn ties_on_precision_and_recall_go_to_the_shorter_delay() {
        let params = [param("deal_line.threshold", &[0.65, 0.75, 0.85])];
        let rows = [
            row(0.65, Some(5.0)),
            row(0.75, Some(3.0)),
            row(0.85, Some(9.0)),
        ];
        let (value, tie) = pick(&rows, &params);
        assert_eq!(value, 0.75);
        assert_eq!(
            tie,
            Some(TieBreak::ShorterDelay {
                others: 2,
                delay_s: 3.0 * 3600.0,
                next_s: Some(5.0 * 3600.0)
            })
        );
        let rec = recommend(&rows, &params, "deal_line", 0.9);
        assert_eq!(
            recommendation_line(&rec, &rows, &params, "deal_line"),
            "recommended for deal_line at precision >= 0.9: deal_line.threshold=0.75 \
             (precision 1.000, recall 1.000, F1 1.000, 20 alerts); 2 other settings tie on \
             precision and recall; chosen for the shortest median delay (3.0 h against 5.0 h)"
        );
    }

    #[test]
    fn equal_delays_go_to_the_looser_value() {
        let params = [param("deal_line.threshold", &[0.65, 0.75, 0.85])];
        let rows = [
            row(0.65, Some(3.0)),
            row(0.75, Some(3.0)),
            row(0.85, Some(9.0)),
        ];
        let (value, tie) = pick(&rows, &params);
        assert_eq!(value, 0.65);
        assert_eq!(
            tie,
            Some(TieBreak::Looser {
                others: 1,
                slower: 1
            })
        );
        // A window is looser when longer.
        let params = [param("bulk_sms.window_s", &[600.0, 1200.0])];
        let rows = [row(600.0, Some(3.0)), row(1200.0, Some(3.0))];
        assert_eq!(pick(&rows, &params).0, 1200.0);
        // No delays at all (labels without first_seen_ms): the looser value.
        let params = [param("deal_line.threshold", &[0.65, 0.75])];
        let rows = [row(0.65, None), row(0.75, None)];
        assert_eq!(
            pick(&rows, &params),
            (
                0.65,
                Some(TieBreak::Looser {
                    others: 1,
                    slower: 0
                })
            )
        );
        // No tie, no reason.
        assert_eq!(pick(&rows[..1], &params).1, None);
    }

    #[test]
    fn looseness_by_key() {
        for k in [
            "bulk_sms.window_s",
            "deal_line.weight_fan_in",
            "bulk_sms.max_recipients_per_line",
            "deal_line.churn_max_sims",
            "line_handover.new_line_max_age_s",
            "deal_line.lookback_s",
            "bulk_sms.enabled",
        ] {
            assert!(looser_when_higher(k), "{k}");
        }
        for k in [
            "deal_line.threshold",
            "bulk_sms.min_recipients",
            "alerts.cooldown_s",
            "deal_line.repeat_gap_s",
            "line_handover.min_overlap",
        ] {
            assert!(!looser_when_higher(k), "{k}");
        }
    }
}
