//! Integration tests that need no broker: golden replays, determinism, the CLI's errors.
//!
//! Golden files: each `tests/fixtures/NAME.jsonl` is replayed with the default configuration
//! and compared with `NAME.expected.json` (alerts without `detected_at`, dead letters, and
//! counts). `UPDATE_GOLDEN=1 cargo test --test tests golden` rewrites the expected files;
//! read the diff before committing it.

use std::path::{Path, PathBuf};
use std::process::Command;

use linewatch::config::Config;
use linewatch::engine::Engine;
use linewatch::replay::{self, CollectSink};
use serde_json::{json, Value};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn replay_fixture(name: &str) -> Value {
    let data = std::fs::read(fixtures().join(format!("{name}.jsonl"))).unwrap();
    let mut engine = Engine::new(Config::default());
    // A scenario with a cell map next to it is replayed as `replay --cells` would.
    let cells = fixtures().join(format!("{name}.cells.csv"));
    if cells.exists() {
        let map = linewatch::cells::CellMap::load(&cells).unwrap();
        engine.set_cells(Some(std::sync::Arc::new(map)));
    }
    let mut sink = CollectSink::default();
    let s = replay::run(&mut engine, &data[..], &mut sink, |_| {}).unwrap();
    let alerts: Vec<Value> = sink
        .alerts
        .iter()
        .map(|a| {
            let mut v = serde_json::to_value(a).unwrap();
            v.as_object_mut().unwrap().remove("detected_at");
            v
        })
        .collect();
    let dead: Vec<Value> = sink
        .dead_letters
        .iter()
        .map(|(line, m)| json!({"line": line, "reason": m.reason.as_str(), "field": m.field}))
        .collect();
    json!({
        "counts": {
            "events_total": s.events_total,
            "events_valid": s.events_valid,
            "events_malformed": s.events_malformed,
            "events_duplicate": s.events_duplicate,
            "events_late": s.events_late,
            "alerts_by_detector": s.alerts_by_detector,
            "records_without_cell": s.records_without_cell,
            "cells_unknown_to_map": s.cells_unknown_to_map,
        },
        "dead_letters": dead,
        "alerts": alerts,
    })
}

fn golden(name: &str) {
    let got = replay_fixture(name);
    let path = fixtures().join(format!("{name}.expected.json"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, serde_json::to_string_pretty(&got).unwrap() + "\n").unwrap();
    }
    let want: Value = serde_json::from_str(
        &std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 creates it)", path.display())),
    )
    .unwrap();
    assert_eq!(
        got, want,
        "replay of {name}.jsonl differs from {name}.expected.json"
    );
}

#[test]
fn golden_bulk_sms() {
    golden("bulk_sms");
}

#[test]
fn golden_customer_fan_in() {
    golden("customer_fan_in");
}

#[test]
fn golden_handset_churn() {
    golden("handset_churn");
}

#[test]
fn golden_line_handover() {
    golden("line_handover");
}

#[test]
fn golden_deal_line() {
    golden("deal_line");
}

#[test]
fn golden_lookalike_festive() {
    golden("lookalike_festive");
}

#[test]
fn golden_runner_movement() {
    golden("runner_movement");
}

#[test]
fn golden_malformed() {
    golden("malformed");
}

/// The golden files themselves must say what the scenarios are about, or a regenerated
/// expectation could silently lose the point of a test.
#[test]
fn golden_scenarios_show_their_point() {
    let count = |name: &str, det: &str| {
        replay_fixture(name)["counts"]["alerts_by_detector"][det]
            .as_u64()
            .unwrap()
    };
    assert_eq!(count("bulk_sms", "bulk_sms"), 1);
    assert_eq!(count("customer_fan_in", "customer_fan_in"), 1);
    assert_eq!(count("handset_churn", "handset_churn"), 1);
    assert_eq!(count("line_handover", "line_handover"), 1);
    // Ldeal1 on day 1, again after the cooldown when it hands over, and Ldeal2.
    assert_eq!(count("deal_line", "deal_line"), 3);
    assert_eq!(count("lookalike_festive", "bulk_sms"), 1);
    assert_eq!(count("lookalike_festive", "customer_fan_in"), 1);
    assert_eq!(count("lookalike_festive", "deal_line"), 0);
    // The runner is found, the commuter is not, and the line's verdict names the runner.
    let r = replay_fixture("runner_movement");
    let alerts = r["alerts"].as_array().unwrap();
    let moving: Vec<&str> = alerts
        .iter()
        .filter(|a| a["detector"] == "runner_movement")
        .map(|a| a["subject"].as_str().unwrap())
        .collect();
    // The second runner's burner was replaced mid-trip, its SIM moved: the new handset
    // fires with the old one's movement, and names it.
    assert_eq!(moving, ["Hrun", "Hnew2", "Hold2"]);
    let named = alerts.iter().any(|a| {
        a["detector"] == "deal_line"
            && a["related"].as_array().unwrap().iter().any(|h| h == "Hrun")
            && a["evidence"]["contributions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["evidence"] == "runner_movement")
    });
    assert!(named, "{alerts:#?}");
    // 118 advert, fan-in and callback records carry no cell, and one runner record.
    assert_eq!(r["counts"]["records_without_cell"], 119);
    assert_eq!(r["counts"]["cells_unknown_to_map"], 1);
    let m = replay_fixture("malformed");
    assert_eq!(m["counts"]["events_malformed"], 10);
    assert_eq!(m["counts"]["events_duplicate"], 1);
    assert_eq!(m["counts"]["events_late"], 1);
    let fan = replay_fixture("customer_fan_in");
    assert_eq!(
        fan["alerts"][0]["evidence"]["customers"], 12,
        "2 s calls and strangers must not count"
    );
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_linewatch"))
}

fn run_ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{:?}: {}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn replay_cli_is_deterministic_and_writes_summary_and_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let input = fixtures().join("deal_line.jsonl");
    let mut outs = Vec::new();
    for i in 0..2 {
        let out = dir.path().join(format!("alerts{i}.jsonl"));
        run_ok(
            bin()
                .args(["replay", "--input"])
                .arg(&input)
                .arg("--output")
                .arg(&out),
        );
        let text = std::fs::read_to_string(&out).unwrap();
        let alerts: Vec<Value> = text
            .lines()
            .map(|l| {
                let mut v: Value = serde_json::from_str(l).unwrap();
                v.as_object_mut().unwrap().remove("detected_at");
                v
            })
            .collect();
        outs.push(alerts);
    }
    assert!(!outs[0].is_empty());
    assert_eq!(outs[0], outs[1]);

    let summary = dir.path().join("summary.json");
    let dead = dir.path().join("dead.jsonl");
    run_ok(
        bin()
            .args(["replay", "--output", "-", "--input"])
            .arg(fixtures().join("malformed.jsonl"))
            .arg("--summary")
            .arg(&summary)
            .arg("--dead-letter")
            .arg(&dead),
    );
    let s: Value = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    for key in [
        "events_total",
        "events_valid",
        "events_malformed",
        "events_duplicate",
        "events_late",
        "alerts_total",
        "alerts_by_detector",
        "elapsed_s",
        "events_per_s",
    ] {
        assert!(s.get(key).is_some(), "summary lacks {key}");
    }
    assert_eq!(s["events_malformed"], 10);
    let dl: Vec<Value> = std::fs::read_to_string(&dead)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(dl.len(), 11, "10 malformed and 1 late");
    assert_eq!(dl[0]["reason"], "invalid_json");
    assert_eq!(dl[0]["raw"], "{not json");
    assert_eq!(dl[0]["line"], 2);
    assert!(dl.iter().any(|d| d["reason"] == "late"));
}

#[test]
fn replay_reads_stdin() {
    let input = std::fs::read(fixtures().join("bulk_sms.jsonl")).unwrap();
    let mut child = bin()
        .args(["replay", "--input", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
}

fn fails_with_one_line(cmd: &mut Command, code: i32, needle: &str) {
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{cmd:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.contains(needle), "{err:?} lacks {needle:?}");
}

#[test]
fn user_errors_are_one_line() {
    fails_with_one_line(
        bin().args(["replay", "--input", "/nonexistent.jsonl"]),
        2,
        "cannot read input",
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[bulk_sms]\nwindow_s = 0\nmin_recipients = 0\n").unwrap();
    fails_with_one_line(
        bin()
            .arg("--config")
            .arg(&bad)
            .args(["replay", "--input", "-"]),
        2,
        "bulk_sms.window_s",
    );
    let cells = dir.path().join("cells.csv");
    std::fs::write(&cells, "cell,area,class\nc1,Leeds,town\n").unwrap();
    fails_with_one_line(
        bin()
            .args(["replay", "--input", "-", "--cells"])
            .arg(&cells),
        2,
        "line 2",
    );
}

#[test]
fn check_config_lists_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[bulk_sms]\nwindow_s = 0\n[deal_line]\nthreshold = 2.0\n",
    )
    .unwrap();
    let out = bin().arg("check-config").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("bulk_sms.window_s") && stdout.contains("deal_line.threshold"),
        "{stdout}"
    );
    let ok = run_ok(
        bin()
            .arg("check-config")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/linewatch.toml")),
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("ok"));
}
