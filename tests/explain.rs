//! `linewatch explain`: golden text for one real alert of each detector, the fallbacks for
//! odd alerts, and the command's one-line errors.
//!
//! The alerts are not written by hand: `tests/fixtures/explain/events.jsonl` is a small
//! scenario (an advert, customers calling back, the number handed over to a new line in the
//! same handset, a third SIM) replayed with `config.toml`, so the goldens break if a
//! detector's evidence changes shape. `UPDATE_GOLDEN=1 cargo test --test explain` rewrites
//! them; read the diff before committing.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use linewatch::alert::Alert;
use linewatch::config::Config;
use linewatch::explain::explain;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/explain")
}

fn scenario_alerts() -> Vec<Alert> {
    let cfg = Config::load(&fixtures().join("config.toml")).unwrap();
    let data = std::fs::read(fixtures().join("events.jsonl")).unwrap();
    linewatch::replay::replay_bytes(cfg, &data).0
}

/// The first alert of `detector` in the scenario.
fn first(detector: &str) -> Alert {
    scenario_alerts()
        .into_iter()
        .find(|a| a.detector == detector)
        .unwrap_or_else(|| panic!("the scenario makes no {detector} alert"))
}

fn golden(name: &str, actual: &str) {
    let path = fixtures().join("golden").join(format!("{name}.txt"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(
        actual,
        expected,
        "explanation differs from {}",
        path.display()
    );
}

#[test]
fn bulk_sms_golden() {
    golden("bulk_sms", &explain(&first("bulk_sms")));
}

#[test]
fn customer_fan_in_golden() {
    golden("customer_fan_in", &explain(&first("customer_fan_in")));
}

#[test]
fn handset_churn_golden() {
    golden("handset_churn", &explain(&first("handset_churn")));
}

#[test]
fn line_handover_golden() {
    golden("line_handover", &explain(&first("line_handover")));
}

#[test]
fn deal_line_golden() {
    golden("deal_line", &explain(&first("deal_line")));
}

#[test]
fn deal_line_contributions_sum_to_the_score() {
    // Whatever the golden says, the listed weights must add up to the alert's score for
    // every deal_line alert of the scenario.
    for a in scenario_alerts()
        .iter()
        .filter(|a| a.detector == "deal_line")
    {
        let text = explain(a);
        let sum: f64 = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix('+'))
            .map(|l| l.split_whitespace().next().unwrap().parse::<f64>().unwrap())
            .sum();
        // An alert's score is capped at 1; the sum line shows the sum.
        assert!(
            (sum.min(1.0) - a.score).abs() < 1e-9,
            "{sum} vs {}\n{text}",
            a.score
        );
        assert!(
            text.contains(&format!("={sum:.2}  >= threshold 0.7")),
            "{text}"
        );
        assert_eq!(sum > 1.0, text.contains("capped at 1"), "{text}");
        assert!(!text.contains("The listed weights sum to"), "{text}");
    }
}

/// The sustained-evidence sentence follows the alert's own `require_sustained`: the rule and
/// what this alert has with it on, that every kind counts alike with it off, nothing for an
/// alert from before the setting.
#[test]
fn deal_line_says_whether_one_off_evidence_could_make_it() {
    let a = first("deal_line");
    let text = explain(&a);
    assert!(text.contains("are never a verdict"), "{text}");
    assert!(text.contains("This one has handset_churn."), "{text}");
    let mut off = a.clone();
    off.evidence
        .insert("require_sustained".into(), false.into());
    let text = explain(&off);
    assert!(text.contains("Every kind counts alike"), "{text}");
    assert!(!text.contains("never a verdict"), "{text}");
    let mut older = a.clone();
    older.evidence.remove("require_sustained");
    let text = explain(&older);
    assert!(
        !text.contains("never a verdict") && !text.contains("counts alike"),
        "{text}"
    );
}

/// With `repeat_needs_callbacks`, adverts sent again count as sustained only beside
/// confirmed deals: the sentence names them together, reads the callbacks in words, and
/// does not claim a repeat without them (an alert read with a changed config, or edited).
#[test]
fn deal_line_reads_confirmed_deals_and_claims_a_repeat_only_with_them() {
    let contributions = serde_json::json!([
        {"evidence": "bulk_sms", "weight": 0.25, "at": 1_759_708_800_000i64, "recipients": 40},
        {"evidence": "repeat_bulk_sms", "weight": 0.25, "at": 1_759_708_800_000i64, "repeat_audience": 1.0},
        {"evidence": "customer_fan_in", "weight": 0.25, "at": 1_759_708_800_000i64, "customers": 22},
        {"evidence": "customer_callbacks", "weight": 0.0, "at": 1_759_708_000_000i64,
         "callbacks": 4, "min_callbacks": 4, "callback_within_s": 600, "window_s": 21600}
    ]);
    let alert = |contributions: serde_json::Value| {
        odd(
            "deal_line",
            serde_json::json!({"score": 0.75, "threshold": 0.7, "lookback_s": 345600,
                "require_sustained": true, "repeat_needs_callbacks": true,
                "contributions": contributions}),
        )
    };
    let text = explain(&alert(contributions.clone()));
    assert!(
        text.contains(
            "deals confirmed: the line (or a number it calls for it) rang or texted back 4 \
             customers, each within 10 min of their contact, within 6 h: callbacks 4 >= \
             min_callbacks 4"
        ),
        "{text}"
    );
    assert!(
        text.contains("deal_line.repeat_needs_callbacks = true"),
        "{text}"
    );
    assert!(
        text.contains("This one has repeat_bulk_sms with customer_callbacks."),
        "{text}"
    );
    let mut without = contributions.as_array().unwrap().clone();
    without.pop();
    let text = explain(&alert(without.into()));
    assert!(text.contains("This alert lists none of those."), "{text}");
}

fn odd(detector: &str, evidence: serde_json::Value) -> Alert {
    serde_json::from_value(serde_json::json!({
        "alert_id": "0123456789abcdef0123456789abcdef",
        "detector": detector,
        "subject": "L-77",
        "subject_kind": "line",
        "score": 0.4,
        "event_time": 1_759_708_800_000i64,
        "window_start": 1_759_705_200_000i64,
        "window_end": 1_759_708_800_000i64,
        "related": [],
        "evidence": evidence,
        "detected_at": 0
    }))
    .unwrap()
}

#[test]
fn unknown_detector_is_listed_key_by_key() {
    let a = odd(
        "night_owl",
        serde_json::json!({"calls_after_midnight": 31, "min_calls": 20, "note": "trial"}),
    );
    golden("unknown_detector", &explain(&a));
}

#[test]
fn missing_figure_falls_back_to_the_listing() {
    let a = odd("bulk_sms", serde_json::json!({"recipients": 41}));
    let text = explain(&a);
    assert!(text.contains("no usable `min_recipients`"), "{text}");
    assert!(text.contains("  recipients  41"), "{text}");
}

#[test]
fn figure_below_its_threshold_is_called_out() {
    let a = odd(
        "bulk_sms",
        serde_json::json!({"recipients": 12, "min_recipients": 40, "window_s": 3600}),
    );
    let text = explain(&a);
    assert!(
        text.contains("recipients 12 <  (below the threshold"),
        "{text}"
    );
}

fn run(args: &[&str], stdin: &[u8]) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_linewatch"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A command that refuses its arguments exits without reading stdin: the pipe is then
    // closed under the write, which is no failure of the test (its exit code and message are).
    match child.stdin.take().unwrap().write_all(stdin) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        r => r.unwrap(),
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn deal_line_sum_past_one_is_explained_not_flagged_as_a_mismatch() {
    let mut a = odd(
        "deal_line",
        serde_json::json!({"score": 1.1, "threshold": 0.7, "lookback_s": 345600, "contributions": [
            {"evidence": "bulk_sms", "weight": 0.25, "at": 1_759_708_800_000i64, "recipients": 40},
            {"evidence": "repeat_bulk_sms", "weight": 0.25, "at": 1_759_708_800_000i64, "repeat_audience": 1.0},
            {"evidence": "customer_fan_in", "weight": 0.25, "at": 1_759_708_800_000i64, "customers": 22},
            {"evidence": "line_handover", "weight": 0.35, "at": 1_759_708_800_000i64,
             "role": "earlier_line", "new_line": "L-2", "overlap": 0.636}
        ]}),
    );
    a.score = 1.0;
    let text = explain(&a);
    assert!(text.contains("  =1.10  >= threshold 0.7"), "{text}");
    assert!(text.contains("capped at 1"), "{text}");
    assert!(!text.contains("differs"), "{text}");
    assert!(
        text.contains("handed its customers over to new line L-2 (overlap 0.636)"),
        "{text}"
    );
}

#[test]
fn successor_contribution_and_older_handover_evidence_read_plainly() {
    let a = odd(
        "deal_line",
        serde_json::json!({"score": 0.85, "threshold": 0.7, "lookback_s": 345600, "contributions": [
            {"evidence": "bulk_sms", "weight": 0.25, "at": 1_759_708_800_000i64, "recipients": 31},
            {"evidence": "line_handover", "weight": 0.35, "at": 1_759_708_800_000i64,
             "role": "new_line", "earlier_line": "L-1", "overlap": 0.9},
            {"evidence": "predecessor_deal_line", "weight": 0.25, "at": 1_759_708_800_000i64,
             "earlier_line": "L-1", "earlier_score": 0.85}
        ]}),
    );
    let text = explain(&a);
    assert!(
        text.contains("took over from deal line L-1, whose own evidence scored 0.85"),
        "{text}"
    );
    // An alert from before the overlap was counted exactly still explains.
    let old = odd(
        "line_handover",
        serde_json::json!({"overlap": 0.6, "min_overlap": 0.5, "jaccard": 0.031,
            "new_line_recipients": 15, "min_recipients": 15}),
    );
    let text = explain(&old);
    assert!(text.contains("estimated from MinHash sketches"), "{text}");
    assert!(text.contains("overlap 0.6 >= min_overlap 0.5"), "{text}");
}

#[test]
fn cli_explains_stdin_and_finds_by_id_prefix() {
    let alerts = scenario_alerts();
    let jsonl: String = alerts
        .iter()
        .map(|a| serde_json::to_string(a).unwrap() + "\n")
        .collect();
    // A whole replay output on stdin: one explanation per alert.
    let (code, out, _) = run(&["explain"], jsonl.as_bytes());
    assert_eq!(code, 0);
    assert_eq!(out.matches(" alert ").count(), alerts.len(), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("alerts.jsonl");
    // Other records in the file are skipped, not fatal: a line that is not JSON, or not
    // even UTF-8 (that one ended the search with "stream did not contain valid UTF-8").
    let mut bytes = b"not json\n\xff\xfe not utf-8\n".to_vec();
    bytes.extend_from_slice(jsonl.as_bytes());
    std::fs::write(&file, bytes).unwrap();
    let deal = alerts.iter().find(|a| a.detector == "deal_line").unwrap();
    let (code, out, err) = run(
        &[
            "explain",
            "--id",
            &deal.alert_id[..10],
            "--alerts",
            file.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, explain(deal));
    // An id not there: the skipped lines are counted in the message.
    let (code, _, err) = run(
        &[
            "explain",
            "--id",
            "zzzz",
            "--alerts",
            file.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("2 lines skipped as not JSON"), "{err}");
}

#[test]
fn cli_odd_input_is_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("alerts.jsonl");
    std::fs::write(&file, "{\"alert_id\":\"abc\"}\n").unwrap();
    let cases: [(&[&str], &[u8], &str); 5] = [
        (&["explain"], b"not json at all", "stdin is not JSON"),
        (&["explain"], b"{\"alert_id\": 3}", "is not an alert"),
        (&["explain"], b"", "no alert on stdin"),
        (
            &[
                "explain",
                "--id",
                "zzzzzz",
                "--alerts",
                file.to_str().unwrap(),
            ],
            b"",
            "no alert with id zzzzzz",
        ),
        (
            &["explain", "--id", "abc", "--alerts", file.to_str().unwrap()],
            b"",
            "is not an alert",
        ),
    ];
    for (args, stdin, want) in cases {
        let (code, out, err) = run(args, stdin);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: {out}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn cli_accepts_alerts_as_people_hand_them_over() {
    let alerts = scenario_alerts();
    let deal = alerts.iter().find(|a| a.detector == "deal_line").unwrap();
    let mut v = serde_json::to_value(deal).unwrap();
    // detected_at is the one field that differs between runs, so people strip it.
    v.as_object_mut().unwrap().remove("detected_at");
    let t = v["event_time"].as_i64().unwrap();
    v["event_time"] = serde_json::json!(t as f64);
    let array = serde_json::to_string(&vec![v.clone(), v.clone()]).unwrap();
    let (code, out, err) = run(&["explain"], array.as_bytes());
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("{}\n{}", explain(deal), explain(deal)));

    v["subject_kind"] = "sim".into();
    let (code, out, err) = run(&["explain"], v.to_string().as_bytes());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("on sim {}", deal.subject)), "{out}");
}

#[test]
fn cli_id_prefix_of_any_length_matches_one_alert_or_says_it_is_ambiguous() {
    let alerts = scenario_alerts();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("alerts.jsonl");
    let jsonl: String = alerts
        .iter()
        .map(|a| serde_json::to_string(a).unwrap() + "\n")
        .collect();
    std::fs::write(&file, jsonl).unwrap();
    // The shortest prefix that names the deal_line alert alone.
    let deal = alerts.iter().find(|a| a.detector == "deal_line").unwrap();
    let unique = (1..=deal.alert_id.len())
        .map(|n| &deal.alert_id[..n])
        .find(|p| alerts.iter().filter(|a| a.alert_id.starts_with(p)).count() == 1)
        .unwrap();
    assert!(
        unique.len() < 6,
        "the scenario's ids should differ early: {unique}"
    );
    let path = file.to_str().unwrap();
    let (code, out, err) = run(&["explain", "--id", unique, "--alerts", path], b"");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, explain(deal));

    let mut twins = alerts[0].clone();
    twins.alert_id = "abc111".into();
    let mut other = alerts[0].clone();
    other.alert_id = "abc222".into();
    let both = format!(
        "{}\n{}\n",
        serde_json::to_string(&twins).unwrap(),
        serde_json::to_string(&other).unwrap()
    );
    std::fs::write(&file, both).unwrap();
    let (code, _, err) = run(&["explain", "--id", "abc", "--alerts", path], b"");
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("2 alert ids") && err.contains("start with abc"),
        "{err}"
    );
}

#[test]
fn cli_refuses_a_config_it_cannot_read() {
    let alert = serde_json::to_string(&first("bulk_sms")).unwrap();
    let (code, out, err) = run(
        &["--config", "/nonexistent/linewatch.toml", "explain"],
        alert.as_bytes(),
    );
    assert_eq!(code, 2, "{out}{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("/nonexistent/linewatch.toml"), "{err}");
}

/// The runner scenario of the golden replays (`tests/fixtures/runner_movement.jsonl` with its
/// cell map): a runner_movement alert, and the deal_line verdict naming the runner.
fn runner_alerts() -> Vec<Alert> {
    let dir = fixtures().join("..");
    let data = std::fs::read(dir.join("runner_movement.jsonl")).unwrap();
    let cells = linewatch::cells::CellMap::load(&dir.join("runner_movement.cells.csv")).unwrap();
    let cells = Some(std::sync::Arc::new(cells));
    linewatch::replay::replay_bytes_with_cells(Config::default(), &data, cells).0
}

#[test]
fn runner_movement_golden() {
    let alerts = runner_alerts();
    let a = alerts
        .iter()
        .find(|a| a.detector == "runner_movement")
        .unwrap();
    let text = explain(a);
    assert!(text.contains("not like a commuter"), "{text}");
    golden("runner_movement", &text);
    let verdict = alerts.iter().rfind(|a| a.detector == "deal_line").unwrap();
    let text = explain(verdict);
    assert!(text.contains("runner handset Hrun"), "{text}");
    golden("deal_line_with_runner", &text);
}
