//! `linewatch tune`: sweep arithmetic on a hand-made labelled fixture, the recommendation,
//! `--param` parsing, and the table/CSV/JSON/plot outputs.
//!
//! # The fixture, worked by hand
//!
//! `tests/fixtures/tune/events.jsonl`, t0 = 2025-10-06T00:00Z, texts one minute apart:
//!
//! | line    | label            | what it does                                        |
//! |---------|------------------|-----------------------------------------------------|
//! | dealA   | deal_line        | t0: texts cA0..cA9 (10); t0+1h: cA0..cA3 text back  |
//! | dealC   | deal_line        | t0+2h: texts cC0..cC3 (4)                           |
//! | shopB   | lookalike_shop   | t0+3h: texts cB0..cB5 (6); t0+4h: cB0..cB2 text back|
//! | schoolD | lookalike_school | t0+5h: texts cD0..cD7 (8)                           |
//! | dealE   | deal_line        | t0+6h: texts cE0, cE1 (2): never found              |
//!
//! `base.toml` lowers `customer_fan_in.min_customers` to 3. The labels' `first_seen_ms` is
//! each line's first text.
//!
//! **bulk_sms** with `min_recipients = m` fires on a line with n >= m recipients, once, at
//! its m-th text, (m-1) minutes after its first. Truth = {A, C, E}.
//!
//! | m | flagged    | TP | FP | FN | precision | recall | median delay      |
//! |---|------------|----|----|----|-----------|--------|-------------------|
//! | 3 | A, B, C, D | 2  | 2  | 1  | 1/2       | 2/3    | A 2 min, C 2 min: 120 s |
//! | 5 | A, B, D    | 1  | 2  | 2  | 1/3       | 1/3    | A 4 min: 240 s    |
//! | 7 | A, D       | 1  | 1  | 2  | 1/2       | 1/3    | 360 s             |
//! | 9 | A          | 1  | 0  | 2  | 1         | 1/3    | 480 s             |
//!
//! **customer_fan_in** (min 3) fires on A at t0+1h+2min and on B at t0+4h+2min, whatever m.
//!
//! **deal_line** adds weight 0.25 for a bulk send and 0.25 for fan-in (nothing repeats
//! within the 12 h repeat gap; no handover, no handsets), so a line scores 0.25 or 0.5 and
//! fires when the score reaches the threshold (cooldown keeps one alert per line). The
//! fixture's `base.toml` sets `deal_line.require_sustained = false` for this: by default
//! those one-off kinds alone are never a verdict.
//!
//!
//! - threshold 0.25: any line with a bulk send or fan-in: A (bulk, at (m-1) min), B always
//!   (fan-in), C if m <= 4, D if m <= 8.
//! - threshold 0.5: needs both: A (at its fan-in, t0+1h+2min: delay 3720 s), B if m <= 6.
//! - threshold 0.75: nothing; precision is then 1 by eval's convention and recall 0.
//!
//! | thr  | m | flagged    | TP | FP | precision | recall | delay  |
//! |------|---|------------|----|----|-----------|--------|--------|
//! | 0.25 | 3 | A, B, C, D | 2  | 2  | 1/2       | 2/3    | 120 s  |
//! | 0.25 | 5 | A, B, D    | 1  | 2  | 1/3       | 1/3    | 240 s  |
//! | 0.25 | 7 | A, B, D    | 1  | 2  | 1/3       | 1/3    | 360 s  |
//! | 0.25 | 9 | A, B       | 1  | 1  | 1/2       | 1/3    | 480 s  |
//! | 0.5  | 3 | A, B       | 1  | 1  | 1/2       | 1/3    | 3720 s |
//! | 0.5  | 5 | A, B       | 1  | 1  | 1/2       | 1/3    | 3720 s |
//! | 0.5  | 7 | A          | 1  | 0  | 1         | 1/3    | 3720 s |
//! | 0.5  | 9 | A          | 1  | 0  | 1         | 1/3    | 3720 s |
//! | 0.75 | * | -          | 0  | 0  | 1         | 0      | -      |
//!
//! Recommendation at precision >= 0.9: rows (0.5, 7) and (0.5, 9) qualify (the 0.75 rows find
//! nothing, so they do not), equal in recall, precision and median delay: the tie goes to the
//! looser m = 7. At >= 0.5 the best recall is (0.25, 3) with 2/3.

use std::path::{Path, PathBuf};
use std::process::Command;

use linewatch::config::Config;
use linewatch::eval::Labels;
use linewatch::tune::param::{self, Param, ParamValue};
use linewatch::tune::{self, Recommendation, Row};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tune")
        .join(name)
}

fn base() -> Config {
    Config::load(&fixture("base.toml")).unwrap()
}

fn sweep_with(specs: &[&str], labels: &str) -> (Vec<Param>, Vec<Row>) {
    let base = base();
    let params: Vec<Param> = specs
        .iter()
        .map(|s| Param::parse(s, &base).unwrap())
        .collect();
    let combos = param::grid(&base, &params).unwrap();
    let labels = Labels::load(&fixture(labels)).unwrap();
    let data = std::fs::read(fixture("events.jsonl")).unwrap();
    let rows = tune::sweep(&data, &labels, &combos, "deal_line", &|| {});
    (params, rows)
}

/// (alerts, tp, fp, fn, precision, recall, median delay s) of `detector` in a row.
type Figures = (usize, usize, usize, usize, f64, f64, Option<f64>);

fn figures(r: &Row, detector: &str) -> Figures {
    let s = r.score(detector).unwrap();
    (
        s.alerts,
        s.true_positives,
        s.false_positives,
        s.false_negatives,
        s.precision,
        s.recall,
        s.median_delay_s,
    )
}

fn close(a: &Figures, b: &Figures) -> bool {
    a.0 == b.0
        && a.1 == b.1
        && a.2 == b.2
        && a.3 == b.3
        && (a.4 - b.4).abs() < 1e-12
        && (a.5 - b.5).abs() < 1e-12
        && a.6 == b.6
}

const THIRD: f64 = 1.0 / 3.0;

#[test]
fn bulk_sms_sweep_matches_the_hand_worked_table() {
    let (_, rows) = sweep_with(&["bulk_sms.min_recipients=3..9:2"], "labels.csv");
    let want: [(i64, Figures); 4] = [
        (3, (4, 2, 2, 1, 0.5, 2.0 / 3.0, Some(120.0))),
        (5, (3, 1, 2, 2, THIRD, THIRD, Some(240.0))),
        (7, (2, 1, 1, 2, 0.5, THIRD, Some(360.0))),
        (9, (1, 1, 0, 2, 1.0, THIRD, Some(480.0))),
    ];
    assert_eq!(rows.len(), want.len());
    for (row, (m, w)) in rows.iter().zip(&want) {
        assert_eq!(row.values, vec![ParamValue::Int(*m)]);
        let got = figures(row, "bulk_sms");
        assert!(close(&got, w), "m={m}: got {got:?}, want {w:?}");
        assert_eq!(row.events_valid, 37);
    }
}

#[test]
fn deal_line_grid_matches_the_hand_worked_table() {
    let (_, rows) = sweep_with(
        &[
            "deal_line.threshold=0.25,0.5,0.75",
            "bulk_sms.min_recipients=3..9:2",
        ],
        "labels.csv",
    );
    let nothing: Figures = (0, 0, 0, 3, 1.0, 0.0, None);
    let want: [(f64, i64, Figures); 12] = [
        (0.25, 3, (4, 2, 2, 1, 0.5, 2.0 / 3.0, Some(120.0))),
        (0.25, 5, (3, 1, 2, 2, THIRD, THIRD, Some(240.0))),
        (0.25, 7, (3, 1, 2, 2, THIRD, THIRD, Some(360.0))),
        (0.25, 9, (2, 1, 1, 2, 0.5, THIRD, Some(480.0))),
        (0.5, 3, (2, 1, 1, 2, 0.5, THIRD, Some(3720.0))),
        (0.5, 5, (2, 1, 1, 2, 0.5, THIRD, Some(3720.0))),
        (0.5, 7, (1, 1, 0, 2, 1.0, THIRD, Some(3720.0))),
        (0.5, 9, (1, 1, 0, 2, 1.0, THIRD, Some(3720.0))),
        (0.75, 3, nothing),
        (0.75, 5, nothing),
        (0.75, 7, nothing),
        (0.75, 9, nothing),
    ];
    assert_eq!(rows.len(), want.len());
    for (row, (t, m, w)) in rows.iter().zip(&want) {
        assert_eq!(row.values, vec![ParamValue::Float(*t), ParamValue::Int(*m)]);
        let got = figures(row, "deal_line");
        assert!(close(&got, w), "t={t} m={m}: got {got:?}, want {w:?}");
    }
}

/// `deal_line.require_sustained` is swept like any other key: on this fixture, whose lines
/// show only one-off kinds of evidence, it is the difference between the table's rows and
/// no verdict at all.
#[test]
fn require_sustained_sweeps_and_keeps_one_off_evidence_under_the_threshold() {
    let (_, rows) = sweep_with(
        &[
            "deal_line.threshold=0.5",
            "bulk_sms.min_recipients=3",
            "deal_line.require_sustained=false,true",
        ],
        "labels.csv",
    );
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].values[2], ParamValue::Bool(false));
    // The table's row (0.5, 3): A and B.
    assert_eq!(figures(&rows[0], "deal_line").0, 2);
    assert_eq!(rows[1].values[2], ParamValue::Bool(true));
    assert_eq!(figures(&rows[1], "deal_line").0, 0);
}

#[test]
fn subject_label_csv_scores_the_same_without_delays() {
    let (_, full) = sweep_with(&["bulk_sms.min_recipients=3..9:2"], "labels.csv");
    let (_, simple) = sweep_with(&["bulk_sms.min_recipients=3..9:2"], "labels-simple.csv");
    for (a, b) in full.iter().zip(&simple) {
        let (fa, fb) = (figures(a, "bulk_sms"), figures(b, "bulk_sms"));
        assert_eq!((fa.0, fa.1, fa.2, fa.3), (fb.0, fb.1, fb.2, fb.3));
        assert!(fa.6.is_some());
        assert_eq!(fb.6, None, "no first_seen_ms, so no delay");
    }
}

#[test]
fn recommendation_takes_best_recall_then_the_looser_value() {
    let (params, rows) = sweep_with(
        &[
            "deal_line.threshold=0.25,0.5,0.75",
            "bulk_sms.min_recipients=3..9:2",
        ],
        "labels.csv",
    );
    let at = |t: f64| match tune::recommend(&rows, &params, "deal_line", t) {
        Recommendation::Pick { index, .. } => rows[index].values.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(at(0.9), [ParamValue::Float(0.5), ParamValue::Int(7)]);
    assert_eq!(at(0.5), [ParamValue::Float(0.25), ParamValue::Int(3)]);
    // Precision exactly 1/3 must count as reaching 1/3 despite floating point.
    assert_eq!(at(1.0 / 3.0), [ParamValue::Float(0.25), ParamValue::Int(3)]);
    let rec = tune::recommend(&rows, &params, "deal_line", 0.9);
    let line = tune::recommendation_line(&rec, &rows, &params, "deal_line");
    assert_eq!(
        line,
        "recommended for deal_line at precision >= 0.9: deal_line.threshold=0.5 \
         bulk_sms.min_recipients=7 (precision 1.000, recall 0.333, F1 0.500, 1 alert); \
         1 other setting ties on precision, recall and median delay; chosen as the loosest"
    );
}

#[test]
fn recommendation_says_so_when_no_setting_reaches_the_target() {
    let (params, rows) = sweep_with(&["bulk_sms.min_recipients=3..7:2"], "labels.csv");
    let rec = tune::recommend(&rows, &params, "bulk_sms", 0.95);
    // Best precision is 1/2 at m = 3 and m = 7; m = 3 has the better recall.
    assert_eq!(
        rec,
        Recommendation::NoneReaches {
            target: 0.95,
            best: Some(0)
        }
    );
    let line = tune::recommendation_line(&rec, &rows, &params, "bulk_sms");
    assert!(
        line.starts_with("no setting reaches precision 0.95 for bulk_sms; the most precise is bulk_sms.min_recipients=3"),
        "{line}"
    );
    // A row that flags nothing has precision 1 by convention but is never recommended.
    let (params, rows) = sweep_with(&["deal_line.threshold=0.75,0.8"], "labels.csv");
    let rec = tune::recommend(&rows, &params, "deal_line", 0.5);
    assert_eq!(
        rec,
        Recommendation::NoneReaches {
            target: 0.5,
            best: None
        }
    );
    assert!(tune::recommendation_line(&rec, &rows, &params, "deal_line")
        .contains("none flagged a single labelled subject"));
}

fn parse(spec: &str) -> Result<Vec<ParamValue>, String> {
    Param::parse(spec, &Config::default())
        .map(|p| p.values)
        .map_err(|e| e.0)
}

#[test]
fn param_ranges_and_lists() {
    let v = parse("bulk_sms.min_recipients=20..80:5").unwrap();
    assert_eq!(v.len(), 13);
    assert_eq!(v[0], ParamValue::Int(20));
    assert_eq!(v[12], ParamValue::Int(80));
    // The end is included only when the step lands on it.
    assert_eq!(parse("bulk_sms.min_recipients=20..30:4").unwrap().len(), 3);
    assert_eq!(
        parse("deal_line.threshold=0.5..0.7:0.1").unwrap(),
        [0.5, 0.6, 0.7].map(ParamValue::Float)
    );
    assert_eq!(
        parse("deal_line.threshold=0.5, 0.6,0.7").unwrap(),
        [0.5, 0.6, 0.7].map(ParamValue::Float)
    );
    // A float key takes whole numbers as floats.
    assert_eq!(
        parse("deal_line.threshold=1").unwrap(),
        [ParamValue::Float(1.0)]
    );
    assert_eq!(
        parse("line_handover.enabled=true,false").unwrap(),
        [ParamValue::Bool(true), ParamValue::Bool(false)]
    );
    assert_eq!(
        parse("bulk_sms.min_recipients=7").unwrap(),
        [ParamValue::Int(7)]
    );
}

#[test]
fn param_errors_are_one_line_and_name_the_key() {
    let cases = [
        (
            "bulk_sms.min_recipient=3",
            "bulk_sms.min_recipient: unknown parameter",
        ),
        (
            "bulk_sm.min_recipients=3",
            "bulk_sm.min_recipients: unknown parameter",
        ),
        ("bulk_sms.min_recipients", "expected section.key=VALUES"),
        ("min_recipients=3", "name the key as section.key"),
        ("bulk_sms.min_recipients=20..80", "needs a step"),
        ("bulk_sms.min_recipients=20..80:0", "step must be positive"),
        ("bulk_sms.min_recipients=80..20:5", "below its start"),
        ("bulk_sms.min_recipients=abc", "is not a whole number"),
        ("bulk_sms.min_recipients=20.5", "is not a whole number"),
        ("deal_line.threshold=high", "is not a number"),
        ("bulk_sms.min_recipients=", "no values given"),
        ("bulk_sms.min_recipients=5,5", "given twice"),
        ("bulk_sms.min_recipients=1..100000:1", "more than 1000"),
        ("service.brokers=1", "does not affect detection"),
        ("line_handover.enabled=0..1:1", "not a range"),
    ];
    for (spec, want) in cases {
        let e = parse(spec).expect_err(spec);
        assert!(e.contains(want), "{spec}: {e}");
        assert!(!e.contains('\n'), "{spec}: {e}");
        let key = spec.split('=').next().unwrap();
        assert!(e.contains(key), "{spec}: error does not name the key: {e}");
    }
}

#[test]
fn every_combination_is_validated_by_the_config() {
    let base = Config::default();
    let p = |s: &str| Param::parse(s, &base).unwrap();
    // The grid's error for these parameters.
    let refused = |specs: &[&str]| {
        let params: Vec<Param> = specs.iter().map(|s| p(s)).collect();
        param::grid(&base, &params).unwrap_err()
    };
    let e = refused(&["bulk_sms.min_recipients=0,10"]);
    assert!(
        e.0.contains("bulk_sms.min_recipients=0 makes an invalid configuration")
            && e.0.contains("bulk_sms.min_recipients = 0 is not allowed"),
        "{e}"
    );
    let e = refused(&["deal_line.threshold=0.5..1.5:0.5"]);
    assert!(e.0.contains("deal_line.threshold=1.5"), "{e}");
    // Cross-key rules see the whole combination.
    let e = refused(&[
        "handset_churn.min_sims=3,8",
        "handset_churn.max_sims_per_handset=5",
    ]);
    assert!(e.0.contains("handset_churn.min_sims=8"), "{e}");
    let e = refused(&["bulk_sms.min_recipients=3", "bulk_sms.min_recipients=4"]);
    assert!(e.0.contains("given twice"), "{e}");
    let ok = param::grid(
        &base,
        &[
            p("deal_line.threshold=0.5,0.6"),
            p("bulk_sms.min_recipients=20,30,40"),
        ],
    )
    .unwrap();
    assert_eq!(ok.len(), 6);
    // First parameter slowest; each config carries its values and the base's others.
    assert_eq!(ok[1].config.deal_line.threshold, 0.5);
    assert_eq!(ok[1].config.bulk_sms.min_recipients, 30);
    assert_eq!(ok[5].config.deal_line.threshold, 0.6);
    assert_eq!(ok[5].config.bulk_sms.min_recipients, 40);
    assert_eq!(ok[5].config.bulk_sms.window_s, base.bulk_sms.window_s);
}

fn linewatch(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_linewatch"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tune_args<'a>(extra: &[&'a str], cfg: &'a str, input: &'a str, labels: &'a str) -> Vec<&'a str> {
    let mut v = vec![
        "--config", cfg, "tune", "--quiet", "--input", input, "--labels", labels,
    ];
    v.extend_from_slice(extra);
    v
}

struct Files {
    cfg: String,
    input: String,
    labels: String,
}

fn files() -> Files {
    let s = |n: &str| fixture(n).to_str().unwrap().to_string();
    Files {
        cfg: s("base.toml"),
        input: s("events.jsonl"),
        labels: s("labels.csv"),
    }
}

/// `bulk_sms.min_recipients` swept over the fixture with `labels`, as CSV: stdout and
/// stderr of a run that succeeded.
fn csv_sweep(f: &Files, labels: &str) -> (String, String) {
    let (code, out, err) = linewatch(&tune_args(
        &[
            "--param",
            "bulk_sms.min_recipients=3..9:2",
            "--detector",
            "bulk_sms",
            "--format",
            "csv",
        ],
        &f.cfg,
        &f.input,
        labels,
    ));
    assert_eq!(code, 0, "{err}");
    (out, err)
}

#[test]
fn cli_table_marks_the_recommendation() {
    let f = files();
    let (code, out, err) = linewatch(&tune_args(
        &[
            "--param",
            "bulk_sms.min_recipients=3..9:2",
            "--detector",
            "bulk_sms",
            "--target-precision",
            "0.9",
        ],
        &f.cfg,
        &f.input,
        &f.labels,
    ));
    assert_eq!(code, 0, "{err}");
    let marked: Vec<&str> = out.lines().filter(|l| l.starts_with('*')).collect();
    assert_eq!(marked.len(), 1, "{out}");
    assert!(marked[0].split_whitespace().nth(1) == Some("9"), "{out}");
    assert!(out.contains("recommended for bulk_sms at precision >= 0.9: bulk_sms.min_recipients=9"));
    // Columns line up: every table line is as long as the header.
    let table: Vec<&str> = out.lines().skip(1).take(5).collect();
    assert!(table.iter().all(|l| l.len() == table[0].len()), "{out}");
    assert!(err.contains("swept 4 combinations over 37 events"), "{err}");
}

#[test]
fn cli_csv_and_json_carry_the_figures() {
    let f = files();
    let (code, csv, err) = linewatch(&tune_args(
        &[
            "--param",
            "deal_line.threshold=0.25,0.5,0.75",
            "--param",
            "bulk_sms.min_recipients=3..9:2",
            "--format",
            "csv",
            "--target-precision",
            "0.9",
        ],
        &f.cfg,
        &f.input,
        &f.labels,
    ));
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 13);
    assert!(lines[0].starts_with("deal_line.threshold,bulk_sms.min_recipients,detector,alerts"));
    assert_eq!(
        lines[7],
        "0.5,7,deal_line,1,1,1,0,2,1.000000,0.333333,0.500000,0,3720.0,true"
    );
    assert_eq!(lines.iter().filter(|l| l.ends_with(",true")).count(), 1);
    // CSV stays clean; the recommendation goes to stderr.
    assert!(err.contains("recommended for deal_line"), "{err}");

    let (code, json, err) = linewatch(&tune_args(
        &[
            "--param",
            "deal_line.threshold=0.25,0.5,0.75",
            "--param",
            "bulk_sms.min_recipients=3..9:2",
            "--format",
            "json",
            "--target-precision",
            "0.9",
            "--jobs",
            "1",
        ],
        &f.cfg,
        &f.input,
        &f.labels,
    ));
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["combinations"], 12);
    assert_eq!(v["recommendation"]["found"], true);
    assert_eq!(v["recommendation"]["params"]["bulk_sms.min_recipients"], 7);
    let row = &v["rows"][0];
    assert_eq!(row["params"]["deal_line.threshold"], 0.25);
    // Every detector is scored in JSON: customer_fan_in found A and B whatever the sweep.
    let names: Vec<&str> = row["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["detector"].as_str().unwrap())
        .collect();
    assert_eq!(names, linewatch::detect::DETECTORS);
    let fan_in = &row["scores"][1];
    assert_eq!(fan_in["flagged"], 2);
    assert_eq!(fan_in["true_positives"], 1);
    // What deal_line got wrong, per the hand-worked table: (0.25, 3) flags B and D and
    // misses E; (0.75, *) flags nothing and misses all three.
    assert_eq!(
        row["wrong"],
        serde_json::json!({
            "detector": "deal_line",
            "false_positives": [
                {"subject": "schoolD", "label": "lookalike_school"},
                {"subject": "shopB", "label": "lookalike_shop"},
            ],
            "missed": [{"subject": "dealE", "label": "deal_line"}],
        })
    );
    let last = &v["rows"][11]["wrong"];
    assert_eq!(last["false_positives"], serde_json::json!([]));
    let missed: Vec<&str> = last["missed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["subject"].as_str().unwrap())
        .collect();
    assert_eq!(missed, ["dealA", "dealC", "dealE"]);

    // One thread or two: the same rows in the same order.
    let (_, json2, _) = linewatch(&tune_args(
        &[
            "--param",
            "deal_line.threshold=0.25,0.5,0.75",
            "--param",
            "bulk_sms.min_recipients=3..9:2",
            "--format",
            "json",
            "--jobs",
            "2",
        ],
        &f.cfg,
        &f.input,
        &f.labels,
    ));
    let v2: serde_json::Value = serde_json::from_str(&json2).unwrap();
    assert_eq!(v["rows"], v2["rows"]);
}

/// `tune --format csv` read back by the `csv` crate: every field of every row matches the
/// sweep's own figures.
#[test]
fn cli_csv_round_trips_through_a_csv_reader() {
    let f = files();
    let specs = [
        "deal_line.threshold=0.25,0.5,0.75",
        "bulk_sms.min_recipients=3..9:2",
    ];
    let (code, out, err) = linewatch(&tune_args(
        &[
            "--param",
            specs[0],
            "--param",
            specs[1],
            "--format",
            "csv",
            "--target-precision",
            "0.9",
        ],
        &f.cfg,
        &f.input,
        &f.labels,
    ));
    assert_eq!(code, 0, "{err}");
    let (params, rows) = sweep_with(&specs, "labels.csv");
    let rec = tune::recommend(&rows, &params, "deal_line", 0.9);
    let mut reader = csv::Reader::from_reader(out.as_bytes());
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(header[..2], [params[0].key.clone(), params[1].key.clone()]);
    let col = |n: &str| header.iter().position(|h| h == n).unwrap();
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), rows.len());
    for (i, (r, row)) in records.iter().zip(&rows).enumerate() {
        let s = row.score("deal_line").unwrap();
        let num = |n: &str| r[col(n)].parse::<f64>().unwrap();
        assert_eq!(r[0].parse::<f64>().unwrap(), row.values[0].as_f64());
        assert_eq!(r[1].parse::<f64>().unwrap(), row.values[1].as_f64());
        assert_eq!(&r[col("detector")], "deal_line");
        assert_eq!(num("alerts") as usize, s.alerts);
        assert_eq!(num("flagged") as usize, s.flagged);
        assert_eq!(num("true_positives") as usize, s.true_positives);
        assert_eq!(num("false_positives") as usize, s.false_positives);
        assert_eq!(num("false_negatives") as usize, s.false_negatives);
        assert!((num("precision") - s.precision).abs() < 1e-6);
        assert!((num("recall") - s.recall).abs() < 1e-6);
        assert!((num("f1") - s.f1).abs() < 1e-6);
        assert_eq!(num("lookalike_hits") as usize, s.lookalike_hits);
        let delay = &r[col("median_delay_s")];
        assert_eq!(delay.parse::<f64>().ok(), s.median_delay_s, "row {i}");
        let picked = matches!(rec, Recommendation::Pick { index, .. } if index == i);
        assert_eq!(
            &r[col("recommended")],
            if picked { "true" } else { "false" }
        );
    }
}

/// A labels file as a spreadsheet saves it (BOM, quoted fields, CRLF, columns reordered,
/// an extra column, a trailing empty row) scores exactly as the plain file does.
#[test]
fn cli_reads_spreadsheet_saved_labels() {
    let f = files();
    let dir = tempfile::tempdir().unwrap();
    let plain = std::fs::read_to_string(fixture("labels.csv")).unwrap();
    let mut sheet =
        String::from("\u{feff}\"Label\",\"analyst note\",\"first_seen_ms\",\"Subject\"\r\n");
    for line in plain.lines().skip(1) {
        let c: Vec<&str> = line.split(',').collect();
        sheet.push_str(&format!(
            "\"{}\",\"checked, \"\"twice\"\"\",\"{}\",\"{}\"\r\n",
            c[2], c[5], c[0]
        ));
    }
    sheet.push_str("\"\",\"\",\"\",\"\"\r\n\r\n");
    let path = dir.path().join("labels-sheet.csv");
    std::fs::write(&path, sheet).unwrap();
    let run = |labels: &str| csv_sweep(&f, labels).0;
    assert_eq!(run(path.to_str().unwrap()), run(&f.labels));
}

#[test]
fn cli_warns_of_kinds_and_labels_it_does_not_know_and_scores_the_same() {
    let f = files();
    let dir = tempfile::tempdir().unwrap();
    let plain = std::fs::read_to_string(fixture("labels.csv")).unwrap();
    // Every row's kind misspelt the same way, one row's as a raw number (a column out of
    // place), and one more subject with a label linewatch does not know.
    let mut odd = String::new();
    for (i, line) in plain.lines().enumerate() {
        let mut c: Vec<String> = line.split(',').map(str::to_string).collect();
        if i > 0 {
            c[1] = if i == 1 {
                "447700900123".into()
            } else {
                "lien".into()
            };
        }
        odd.push_str(&c.join(","));
        odd.push('\n');
    }
    odd.push_str("Lzz-not-in-the-traffic,line,normal,,,\n");
    let path = dir.path().join("labels-odd.csv");
    std::fs::write(&path, odd).unwrap();
    let (odd_out, odd_err) = csv_sweep(&f, path.to_str().unwrap());
    let (out, err) = csv_sweep(&f, &f.labels);
    assert_eq!(odd_out, out, "a row's kind changes nothing in the scores");
    assert!(!err.contains("warning"), "{err}");
    let rows = plain.lines().count() - 2;
    let kinds: Vec<&str> = odd_err
        .lines()
        .filter(|l| l.contains("whose kind"))
        .collect();
    assert_eq!(kinds.len(), 1, "{odd_err}");
    assert!(
        kinds[0].ends_with(&format!("(it reads line and handset; the label alone decides how a row is scored): [redacted] (1), \"lien\" ({rows})")),
        "{odd_err}"
    );
    assert!(!odd_err.contains("447700900123"), "{odd_err}");
    assert!(
        odd_err.contains("labels linewatch does not know, scored as not a target: \"normal\" (1)"),
        "{odd_err}"
    );
}

#[test]
fn cli_plot_writes_valid_png_and_svg() {
    let f = files();
    let dir = tempfile::tempdir().unwrap();
    for (params, prefix, size) in [
        (
            vec![
                "--param",
                "bulk_sms.min_recipients=3..9:2",
                "--detector",
                "bulk_sms",
            ],
            "one",
            (1150, 620),
        ),
        (
            vec![
                "--param",
                "deal_line.threshold=0.25,0.5,0.75",
                "--param",
                "bulk_sms.min_recipients=3..9:2",
            ],
            "two.png",
            (1650, 580),
        ),
    ] {
        let prefix_path = dir.path().join(prefix);
        let mut extra = params.clone();
        extra.extend([
            "--target-precision",
            "0.9",
            "--plot",
            prefix_path.to_str().unwrap(),
        ]);
        let (code, _, err) = linewatch(&tune_args(&extra, &f.cfg, &f.input, &f.labels));
        assert_eq!(code, 0, "{err}");
        let stem = prefix.trim_end_matches(".png");
        let png = dir.path().join(format!("{stem}.png"));
        let svg = dir.path().join(format!("{stem}.svg"));
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let img = image::load_from_memory(&bytes).unwrap();
        assert_eq!((img.width(), img.height()), size);
        // Not blank: a plot has many colours, lines and text.
        let rgb = img.to_rgb8();
        let non_white = rgb.pixels().filter(|p| p.0 != [255, 255, 255]).count();
        assert!(non_white > 10_000, "{non_white} drawn pixels");

        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(
            text.starts_with("<svg") || text.starts_with("<?xml"),
            "{}",
            &text[..40]
        );
        assert!(text.trim_end().ends_with("</svg>"));
        for want in [
            "precision and recall against",
            "events.jsonl",
            "recommended",
            "precision",
            "recall",
            "F1",
        ] {
            assert!(text.contains(want), "{stem}.svg lacks {want:?}");
        }
        if stem == "two" {
            // One legend entry per value of the second parameter.
            assert!(text.contains("bulk_sms.min_recipients:"));
            assert!(text.contains("deal_line.threshold=0.5 bulk_sms.min_recipients=7"));
        }
    }
}

/// The x tick labels of a plot's SVG, row by row: the centred numeric texts, grouped by
/// their baseline (every panel's axis shares one).
fn x_tick_rows(svg: &str) -> Vec<Vec<String>> {
    let mut rows: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for t in svg.split("<text ").skip(1) {
        let (attrs, rest) = t.split_once('>').unwrap();
        let content = rest.split("</text>").next().unwrap().trim().to_string();
        let y = attrs.split("y=\"").nth(1).and_then(|r| r.split('"').next());
        if attrs.contains("text-anchor=\"middle\"") && content.parse::<f64>().is_ok() {
            rows.entry(y.unwrap().to_string())
                .or_default()
                .push(content);
        }
    }
    rows.into_values().filter(|r| r.len() > 2).collect()
}

/// A 0.4..0.9 sweep showed `0.7 0.8 0.8 0.9` on one panel: ticks between swept values,
/// rounded to one decimal. Now every label on a panel is different, and each is a swept value.
#[test]
fn plot_tick_labels_are_distinct_swept_values() {
    let f = files();
    let dir = tempfile::tempdir().unwrap();
    for (params, panels) in [
        (
            vec![
                "--param",
                "deal_line.threshold=0.4..0.9:0.1",
                "--param",
                "bulk_sms.min_recipients=3,5",
            ],
            3,
        ),
        (vec!["--param", "deal_line.threshold=0.4..0.9:0.05"], 1),
    ] {
        let prefix = dir.path().join(format!("p{panels}"));
        let mut extra = params.clone();
        extra.extend(["--plot", prefix.to_str().unwrap()]);
        let (code, _, err) = linewatch(&tune_args(&extra, &f.cfg, &f.input, &f.labels));
        assert_eq!(code, 0, "{err}");
        let svg = std::fs::read_to_string(prefix.with_extension("svg")).unwrap();
        let rows = x_tick_rows(&svg);
        assert_eq!(rows.len(), 1, "{rows:?}");
        let labels = &rows[0];
        let mut distinct = labels.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(labels.len(), distinct.len() * panels, "{labels:?}");
        for l in &distinct {
            let v: f64 = l.parse().unwrap();
            let k = (v - 0.4) / if panels == 1 { 0.05 } else { 0.1 };
            assert!((k - k.round()).abs() < 1e-9, "{l} is not a swept value");
        }
        assert!(distinct.len() >= 6, "{labels:?}");
    }
}

#[test]
fn cli_user_mistakes_are_one_line_exit_2() {
    let f = files();
    let missing = fixture("nope.jsonl");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--param", "bulk_sms.min_recipient=3"],
            "bulk_sms.min_recipient: unknown parameter",
        ),
        (
            vec!["--param", "bulk_sms.min_recipients=0,5"],
            "bulk_sms.min_recipients=0 makes an invalid configuration",
        ),
        (
            vec!["--param", "deal_line.threshold=0.5", "--detector", "nosuch"],
            "unknown detector",
        ),
        (
            vec![
                "--param",
                "deal_line.threshold=0.5",
                "--target-precision",
                "1.5",
            ],
            "between 0 and 1",
        ),
        (
            vec![
                "--param",
                "deal_line.threshold=0.5",
                "--plot",
                "/nonexistent/dir/x",
            ],
            "does not exist",
        ),
    ];
    for (extra, want) in cases {
        let (code, _, err) = linewatch(&tune_args(&extra, &f.cfg, &f.input, &f.labels));
        // A missing plot directory is a bad argument found before the sweep (issue 17).
        assert_eq!(code, 2, "{extra:?}: {err}");
        assert!(err.contains(want), "{extra:?}: {err}");
        assert_eq!(
            err.lines().filter(|l| l.contains("error")).count(),
            1,
            "{err}"
        );
    }
    let (code, _, err) = linewatch(&tune_args(
        &["--param", "deal_line.threshold=0.5"],
        &f.cfg,
        missing.to_str().unwrap(),
        &f.labels,
    ));
    assert_eq!(code, 2);
    assert!(err.contains("cannot read input"), "{err}");
}
