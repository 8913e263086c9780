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
}

impl Row {
    /// The score of one detector. Every row scores every detector, so a known name is found.
    pub fn score(&self, detector: &str) -> Option<&DetectorScore> {
        self.scores.iter().find(|s| s.detector == detector)
    }
}

/// Replays `data` once per combination, on the current rayon pool, and scores each replay.
/// `done` is called after each combination (for a progress bar). Rows come back in
/// combination order whatever order the threads finish in.
pub fn sweep(
    data: &[u8],
    labels: &Labels,
    combos: &[Combination],
    done: &(dyn Fn() + Sync),
) -> Vec<Row> {
    combos
        .par_iter()
        .map(|c| {
            let (alerts, summary) = crate::replay::replay_bytes(c.config.clone(), data);
            let scores = eval::score(&alerts, labels);
            done();
            Row {
                values: c.values.clone(),
                scores,
                events_valid: summary.events_valid,
            }
        })
        .collect()
}

/// What `--target-precision` recommends.
#[derive(Debug, Clone, PartialEq)]
pub enum Recommendation {
    /// Row `index` has the best recall among rows at or above the target precision.
    Pick { index: usize, target: f64 },
    /// No row with any true positive reaches the target; `best` is the row with the highest
    /// precision among those that found something, if any did.
    NoneReaches { target: f64, best: Option<usize> },
}

/// Picks the combination with the best recall for `detector` among those with precision at
/// least `target`.
///
/// A row that flags nothing has precision 1 by convention but finds nothing, so it never
/// "reaches" the target. Ties on recall go to the more conservative setting: higher
/// precision, then fewer alerts, then the higher parameter values (first parameter first),
/// since for the thresholds analysts sweep (`min_*`, `threshold`) higher is stricter.
pub fn recommend(rows: &[Row], detector: &str, target: f64) -> Recommendation {
    let eligible = |r: &&Row| {
        r.score(detector)
            .is_some_and(|s| s.true_positives > 0 && s.precision + 1e-12 >= target)
    };
    let key = |r: &Row| {
        let s = r.score(detector);
        (
            s.map_or(0.0, |s| s.recall),
            s.map_or(0.0, |s| s.precision),
            std::cmp::Reverse(s.map_or(usize::MAX, |s| s.alerts)),
        )
    };
    let better = |a: &Row, b: &Row| -> std::cmp::Ordering {
        let (ka, kb) = (key(a), key(b));
        ka.0.total_cmp(&kb.0)
            .then(ka.1.total_cmp(&kb.1))
            .then(ka.2.cmp(&kb.2))
            .then_with(|| {
                a.values
                    .iter()
                    .zip(&b.values)
                    .map(|(x, y)| x.as_f64().total_cmp(&y.as_f64()))
                    .find(|o| o.is_ne())
                    .unwrap_or(std::cmp::Ordering::Equal)
            })
    };
    let pick = rows
        .iter()
        .enumerate()
        .filter(|(_, r)| eligible(r))
        .max_by(|(_, a), (_, b)| better(a, b));
    match pick {
        Some((index, _)) => Recommendation::Pick { index, target },
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
        Recommendation::Pick { index, target } => {
            let r = &rows[*index];
            format!(
                "recommended for {detector} at precision >= {target}: {} ({})",
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
