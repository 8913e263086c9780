//! The analyst commands used as an analyst would (issue 17): closed pipes, huge lines,
//! stdin on a terminal, summaries, demo's bounds and evidence, tune's checks before a sweep.
//! Each test is named after what it guards and fails on the code before its fix.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_linewatch"))
}

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

fn run(cmd: &mut Command) -> (Option<i32>, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits at most `limit` for `child`; a child still running then is killed and the test fails
/// (the old `replay --input -` on a terminal waited forever).
fn wait_within(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// [`wait_within`], then what the child wrote on its piped stderr (a one-line message never
/// fills the pipe before the child exits).
fn wait_with_stderr(child: &mut Child, limit: Duration) -> (std::process::ExitStatus, String) {
    let status = wait_within(child, limit);
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status, err)
}

#[test]
fn closed_output_pipe_ends_each_analyst_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let alert = {
        let (_, out, err) = run(bin()
            .args(["replay", "--quiet", "--input"])
            .arg(fixture("deal_line.jsonl")));
        assert!(!out.is_empty(), "{err}");
        out
    };
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/linewatch.toml");
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            ["demo", "--subscribers", "1000", "--days", "1"]
                .map(String::from)
                .to_vec(),
            String::new(),
        ),
        (
            vec![
                "replay".into(),
                "--input".into(),
                fixture("deal_line.jsonl").display().to_string(),
            ],
            String::new(),
        ),
        (
            vec!["check-config".into(), config.display().to_string()],
            String::new(),
        ),
        (vec!["explain".into()], alert),
    ];
    for (args, stdin) in cases {
        let mut child = bin()
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader goes away before the command writes anything.
        drop(child.stdout.take());
        let mut input = child.stdin.take().unwrap();
        let _ = input.write_all(stdin.as_bytes());
        drop(input);
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let status = wait_within(&mut child, Duration::from_secs(60));
        assert!(
            status.success() || status.signal() == Some(libc::SIGPIPE),
            "{args:?}: {status:?} {err}"
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(!err.contains("Broken pipe"), "{args:?}: {err}");
    }
}

/// Peak resident memory of a finished child, in KiB.
fn wait_peak_rss_kib(child: Child) -> (i32, i64) {
    let mut status = 0;
    // SAFETY: rusage is plain data that wait4 fills in; the pid is our own child's.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid);
    (status, usage.ru_maxrss)
}

#[test]
fn replay_of_a_200mb_line_stays_under_100mb_and_dead_letters_it_as_too_large() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("big.jsonl");
    let huge = 200usize << 20;
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
        f.write_all(
            b"{\"event_id\":\"a\",\"ts\":1780000000000,\"kind\":\"sms\",\"from\":\"x1\",\"to\":\"y1\"}\n",
        )
        .unwrap();
        f.write_all(b"{\"event_id\":\"b\",\"pad\":\"").unwrap();
        let block = vec![b'x'; 1 << 20];
        for _ in 0..200 {
            f.write_all(&block).unwrap();
        }
        f.write_all(b"\"}\n").unwrap();
        f.write_all(
            b"{\"event_id\":\"c\",\"ts\":1780000001000,\"kind\":\"sms\",\"from\":\"x1\",\"to\":\"y2\"}\n",
        )
        .unwrap();
    }
    let dead = dir.path().join("dead.jsonl");
    let summary = dir.path().join("summary.json");
    let child = bin()
        .args(["replay", "--quiet", "--input"])
        .arg(&input)
        .arg("--dead-letter")
        .arg(&dead)
        .arg("--summary")
        .arg(&summary)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let (status, peak_kib) = wait_peak_rss_kib(child);
    assert_eq!(status, 0);
    assert!(peak_kib < 100 * 1024, "peak RSS {peak_kib} KiB");
    let letters: Vec<Value> = std::fs::read_to_string(&dead)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["reason"], "too_large");
    assert_eq!(letters[0]["line"], 2);
    assert_eq!(letters[0]["size_bytes"], (huge + 25) as u64);
    let raw = letters[0]["raw"].as_str().unwrap();
    assert!(
        raw.starts_with("{\"event_id\":\"b\"") && raw.len() <= 1024,
        "{}",
        raw.len()
    );
    let s: Value = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    assert_eq!(s["events_total"], 3);
    assert_eq!(s["events_valid"], 2);
    assert_eq!(s["malformed_by_reason"]["too_large"], 1);
}

#[test]
fn replay_malformed_by_reason_sums_to_events_malformed() {
    let dir = tempfile::tempdir().unwrap();
    let summary = dir.path().join("summary.json");
    let (code, _, err) = run(bin()
        .args(["replay", "--quiet", "--input"])
        .arg(fixture("malformed.jsonl"))
        .arg("--summary")
        .arg(&summary));
    assert_eq!(code, Some(0), "{err}");
    let s: Value = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    assert!(
        s["events_late"].as_u64().unwrap() > 0,
        "the fixture has a late record"
    );
    let sum: u64 = s["malformed_by_reason"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(sum, s["events_malformed"].as_u64().unwrap(), "{s}");
}

#[test]
fn replay_summary_dash_goes_to_stdout_not_a_file_named_dash() {
    let dir = tempfile::tempdir().unwrap();
    let alerts = dir.path().join("alerts.jsonl");
    let (code, out, err) = run(bin()
        .current_dir(dir.path())
        .args(["replay", "--quiet", "--summary", "-", "--input"])
        .arg(fixture("deal_line.jsonl"))
        .arg("--output")
        .arg(&alerts));
    assert_eq!(code, Some(0), "{err}");
    let s: Value = serde_json::from_str(&out).unwrap();
    assert!(s["events_total"].as_u64().unwrap() > 0);
    assert!(!dir.path().join("-").exists());
    // With alerts on stdout too the two would mix: refused.
    let (code, _, err) = run(bin()
        .current_dir(dir.path())
        .args(["replay", "--summary", "-", "--input"])
        .arg(fixture("deal_line.jsonl")));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--output FILE"), "{err}");
}

#[test]
fn replay_input_directory_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run(bin().args(["replay", "--input"]).arg(dir.path()));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("is a directory"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

#[test]
fn replay_refuses_a_terminal_on_stdin_instead_of_waiting() {
    // SAFETY: plain calls on a pseudo-terminal this test opens and owns.
    let master = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY) };
    assert!(master >= 0, "no pseudo-terminal");
    let name = unsafe {
        assert_eq!(libc::grantpt(master), 0);
        assert_eq!(libc::unlockpt(master), 0);
        std::ffi::CStr::from_ptr(libc::ptsname(master))
            .to_string_lossy()
            .into_owned()
    };
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&name)
        .unwrap();
    let mut child = bin()
        .args(["replay", "--input", "-"])
        .stdin(Stdio::from(tty))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (status, err) = wait_with_stderr(&mut child, Duration::from_secs(20));
    unsafe { libc::close(master) };
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("stdin is a terminal"), "{err}");
}

#[test]
fn replay_ends_with_a_count_line_and_warns_when_most_lines_are_malformed() {
    let (code, _, err) = run(bin()
        .args(["replay", "--input"])
        .arg(fixture("deal_line.jsonl")));
    assert_eq!(code, Some(0), "{err}");
    let line = err.trim_end();
    assert_eq!(line.lines().count(), 1, "{err}");
    assert!(
        line.starts_with("replay: 211 records: 211 valid, 0 malformed, 0 duplicate, 0 late; "),
        "{line}"
    );
    assert!(!err.contains("warning"), "{err}");

    // Blank lines are no records, and the count line says how many there were.
    let dir = tempfile::tempdir().unwrap();
    let spaced = dir.path().join("spaced.jsonl");
    let mut text = std::fs::read_to_string(fixture("deal_line.jsonl")).unwrap();
    text.insert_str(0, "\n  \n");
    text.push_str("\r\n");
    std::fs::write(&spaced, text).unwrap();
    let (code, _, err) = run(bin().args(["replay", "--input"]).arg(&spaced));
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.starts_with("replay: 211 records (and 3 blank lines): 211 valid, 0 malformed, "),
        "{err}"
    );

    // A gzip file passed by mistake: binary lines, all malformed.
    let dir = tempfile::tempdir().unwrap();
    let gz = dir.path().join("cdr.jsonl.gz");
    let mut bytes = vec![0x1f, 0x8b, 0x08, 0x00];
    bytes.extend((0..4000u32).map(|i| (i * 7919 % 251) as u8));
    std::fs::write(&gz, bytes).unwrap();
    let (code, _, err) = run(bin().args(["replay", "--input"]).arg(&gz));
    assert_eq!(code, Some(0), "malformed lines never fail replay: {err}");
    assert!(
        err.contains("warning") && err.contains("malformed"),
        "{err}"
    );
    assert!(err.contains("compressed"), "{err}");
}

#[test]
fn demo_subscriber_bound_is_the_generators_and_exits_2() {
    let (code, _, err) = run(bin().args(["demo", "--subscribers", "600"]));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--subscribers must be 1000"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

#[test]
fn demo_examples_show_every_evidence_entry() {
    let (code, out, err) = run(bin().args(["demo", "--subscribers", "1000", "--days", "2"]));
    assert_eq!(code, Some(0), "{err}");
    let examples = out
        .split("an example of each")
        .nth(1)
        .and_then(|s| s.split("against the labels").next())
        .unwrap();
    let handover = examples.split("line_handover").nth(1).unwrap();
    assert!(handover.contains("overlap="), "{examples}");
    let deal = examples.split("deal_line").nth(1).unwrap();
    assert!(deal.contains("contributions: {"), "{examples}");
    assert!(deal.contains("\"weight\":"), "{examples}");
}

fn tune(extra: &[&str]) -> Command {
    let mut c = bin();
    c.arg("--config")
        .arg(fixture("tune/base.toml"))
        .args(["tune", "--quiet", "--input"])
        .arg(fixture("tune/events.jsonl"))
        .arg("--labels")
        .arg(fixture("tune/labels.csv"))
        .args([
            "--param",
            "bulk_sms.min_recipients=3..9:2",
            "--detector",
            "bulk_sms",
        ])
        .args(extra);
    c
}

#[test]
fn tune_checks_every_output_path_before_the_first_replay() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir");
    let output = missing.join("sweep.csv");
    let (code, out, err) = run(&mut tune(&["--output", output.to_str().unwrap()]));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("does not exist"), "{err}");
    assert!(!err.contains("swept"), "{err}");
    assert!(out.is_empty(), "{out}");

    // The plot was checked only after the sweep printed its table.
    let plot = missing.join("tune");
    let (code, out, err) = run(&mut tune(&["--plot", plot.to_str().unwrap()]));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--plot") && err.contains("does not exist"),
        "{err}"
    );
    assert!(out.is_empty(), "the sweep ran before the check: {out}");
    assert!(!dir.path().join("sweep.csv").exists());
}

#[test]
fn tune_jobs_and_tiny_range_steps_are_refused_with_exit_2() {
    let (code, _, err) = run(&mut tune(&["--jobs", "100000"]));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--jobs 100000: must be 1 to 256"), "{err}");
    let (code, _, err) = run(bin()
        .args(["tune", "--quiet", "--input"])
        .arg(fixture("tune/events.jsonl"))
        .arg("--labels")
        .arg(fixture("tune/labels.csv"))
        .args(["--param", "deal_line.threshold=0.5..0.9:1e-300"]));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("more than 1000"), "{err}");
}

/// An output on an input's path truncated the input before it was read: `replay --input
/// e.jsonl --dead-letter e.jsonl` ended with exit 0, "0 records", and the events gone; two
/// outputs on one path interleaved. Each is refused in one line, before anything is
/// written, and the input is left as it was.
#[test]
fn an_output_on_an_input_or_another_outputs_path_is_refused_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("e.jsonl");
    std::fs::copy(fixture("deal_line.jsonl"), &events).unwrap();
    let before = std::fs::read(&events).unwrap();
    let alerts = dir.path().join("a.jsonl");
    let replay = |extra: &[&str]| {
        let mut c = bin();
        c.current_dir(dir.path())
            .args(["replay", "--quiet", "--input", "e.jsonl"])
            .args(extra);
        c
    };
    for (extra, flag, other) in [
        (
            vec!["--output", "a.jsonl", "--dead-letter", "e.jsonl"],
            "--dead-letter",
            "--input",
        ),
        (vec!["--output", "./e.jsonl"], "--output", "--input"),
        (
            vec!["--output", "a.jsonl", "--summary", "e.jsonl"],
            "--summary",
            "--input",
        ),
        (
            vec!["--output", "a.jsonl", "--dead-letter", "a.jsonl"],
            "--dead-letter",
            "--output",
        ),
    ] {
        let (code, _, err) = run(&mut replay(&extra));
        assert_eq!(code, Some(2), "{extra:?}: {err}");
        assert!(
            err.contains(&format!("{flag} ")) && err.contains(&format!("the same file as {other}")),
            "{extra:?}: {err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert_eq!(std::fs::read(&events).unwrap(), before, "{extra:?}");
    }
    // The same path through a hard link is the same file.
    let link = dir.path().join("link.jsonl");
    std::fs::hard_link(&events, &link).unwrap();
    let (code, _, err) = run(&mut replay(&["--output", "link.jsonl"]));
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(std::fs::read(&events).unwrap(), before);
    // Discarding two outputs is not a clash, and distinct files run as before.
    let (code, _, err) = run(&mut replay(&[
        "--output",
        "/dev/null",
        "--dead-letter",
        "/dev/null",
    ]));
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = run(&mut replay(&["--output", "a.jsonl"]));
    assert_eq!(code, Some(0), "{err}");
    assert!(std::fs::metadata(&alerts).unwrap().len() > 0);

    // tune: the table over its input; generate: two of its outputs on one path.
    let sweep_in = dir.path().join("t.jsonl");
    std::fs::copy(fixture("tune/events.jsonl"), &sweep_in).unwrap();
    let sweep_before = std::fs::read(&sweep_in).unwrap();
    let (code, _, err) = run(bin()
        .args(["tune", "--quiet", "--input"])
        .arg(&sweep_in)
        .arg("--labels")
        .arg(fixture("tune/labels.csv"))
        .args(["--param", "bulk_sms.min_recipients=3..9:2", "--output"])
        .arg(&sweep_in));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("the same file as --input"), "{err}");
    assert_eq!(std::fs::read(&sweep_in).unwrap(), sweep_before);
    let (code, _, err) = run(bin().current_dir(dir.path()).args([
        "generate",
        "--subscribers",
        "1000",
        "--days",
        "1",
        "--output",
        "g.jsonl",
        "--labels",
        "g.jsonl",
    ]));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--labels g.jsonl is the same file as --output"),
        "{err}"
    );
    assert!(!dir.path().join("g.jsonl").exists());
}

/// clap's errors were three to six lines (the usage and a "For more information" line
/// after the message) without the `linewatch: error:` every other failure has, and a
/// negative number was read as an unknown flag (`--shards -1`: "unexpected argument '-1'
/// found", the flag unnamed). Each is one line now, naming the flag and the value.
#[test]
fn argument_errors_are_one_line_and_name_the_flag_even_for_a_negative_number() {
    for (args, wants) in [
        (
            vec!["replay", "--input", "x", "--shards", "0"],
            vec!["--shards", "'0'"],
        ),
        (
            vec!["replay", "--input", "x", "--shards", "-1"],
            vec!["--shards", "'-1'"],
        ),
        (vec!["replay"], vec!["--input"]),
        (vec!["replay", "--input", "x", "--bogus"], vec!["'--bogus'"]),
        (vec!["generate", "--days", "-2"], vec!["--days", "'-2'"]),
        (vec!["frob"], vec!["'frob'"]),
    ] {
        let (code, _, err) = run(bin().args(&args));
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("linewatch: error: "), "{args:?}: {err}");
        for w in wants {
            assert!(err.contains(w), "{args:?}: {w} not in {err}");
        }
    }
    // Help and version are answers, not errors.
    let (code, out, _) = run(bin().args(["replay", "--help"]));
    assert_eq!(code, Some(0));
    assert!(out.contains("Usage: linewatch replay"), "{out}");
}

/// `engine.max_keys_per_detector = 1` gave no alert at all, and only the summary's
/// `cap_hits` said why; a file of future-dated records was asked whether it was compressed.
/// Both now say what happened, on stderr, in one line each.
#[test]
fn a_key_cap_reached_and_a_file_ahead_of_the_clock_are_said_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cap.toml");
    std::fs::write(&cfg, "[engine]\nmax_keys_per_detector = 1\n").unwrap();
    let (code, _, err) = run(bin()
        .arg("--config")
        .arg(&cfg)
        .args(["replay", "--output", "/dev/null", "--input"])
        .arg(fixture("deal_line.jsonl")));
    assert_eq!(code, Some(0), "{err}");
    let warning = err
        .lines()
        .find(|l| l.contains("key cap"))
        .unwrap_or_default();
    assert!(
        warning.starts_with("linewatch: warning: ")
            && warning.contains("max_keys_per_detector = 1")
            && warning.contains("contacts "),
        "{err}"
    );
    // The default cap is far above the fixture's keys: no warning.
    let (_, _, err) = run(bin()
        .args(["replay", "--output", "/dev/null", "--input"])
        .arg(fixture("deal_line.jsonl")));
    assert!(!err.contains("key cap"), "{err}");

    let (_, _, err) = run(bin()
        .args([
            "replay",
            "--output",
            "/dev/null",
            "--now",
            "2001-01-01T00:00:00Z",
            "--input",
        ])
        .arg(fixture("deal_line.jsonl")));
    assert!(
        err.contains("mostly future_timestamp") && err.contains("--now"),
        "{err}"
    );
    assert!(!err.contains("compressed"), "{err}");
}

/// `tune` over a file of garbage swept "over 0 events" and said nothing of the lines it
/// dropped; `replay` warns on the same file.
#[test]
fn tune_says_how_many_lines_were_malformed_and_warns_when_most_were() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.jsonl");
    std::fs::write(&garbage, "not json\n{\"also\": \"not a record\"}\n[1,2]\n").unwrap();
    let (code, _, err) = run(bin()
        .args(["tune", "--quiet", "--input"])
        .arg(&garbage)
        .arg("--labels")
        .arg(fixture("tune/labels.csv"))
        .args(["--param", "bulk_sms.min_recipients=3"]));
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("linewatch: warning: 3 of 3 lines of") && err.contains("right file"),
        "{err}"
    );
}

/// A full disk said "No space left on device" and nothing else: which of replay's three
/// outputs, or generate's four, had failed was not said (generate blamed the events for the
/// labels file's failure).
#[test]
fn a_write_error_names_the_file_and_its_flag() {
    // Each input has something for the output that fails: alerts, dead letters.
    for (flag, what, input) in [
        ("--output", "output", "deal_line.jsonl"),
        ("--dead-letter", "dead-letter file", "malformed.jsonl"),
        ("--summary", "summary", "deal_line.jsonl"),
    ] {
        let mut c = bin();
        c.args(["replay", "--quiet", "--input"])
            .arg(fixture(input))
            .args([flag, "/dev/full"]);
        if flag != "--output" {
            c.args(["--output", "/dev/null"]);
        }
        let (code, _, err) = run(&mut c);
        assert_eq!(code, Some(1), "{flag}: {err}");
        assert!(
            err.contains(&format!("cannot write {what} /dev/full")),
            "{flag}: {err}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run(bin().current_dir(dir.path()).args([
        "generate",
        "--subscribers",
        "1000",
        "--days",
        "1",
        "--output",
        "g.jsonl",
        "--labels",
        "/dev/full",
    ]));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot write labels file /dev/full"), "{err}");
}

/// `run` took a broker list of no possible shape and a state directory that is a file,
/// and then retried the name resolution (or ran without the directory) until it was
/// killed. Both end at start, in one line, before any connection is tried.
#[test]
fn run_refuses_a_shapeless_broker_list_and_a_state_dir_that_is_a_file_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    for (extra, wants) in [
        (vec!["--brokers", "not a broker"], "service.brokers"),
        (
            vec![
                "--brokers",
                "127.0.0.1:1",
                "--state-dir",
                file.to_str().unwrap(),
            ],
            "it is a file",
        ),
    ] {
        let mut child = bin()
            .args(["run", "--http", "127.0.0.1:0"])
            .args(&extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (status, err) = wait_with_stderr(&mut child, Duration::from_secs(10));
        assert_eq!(status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(wants), "{extra:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
}

/// Three more messages that did not say what was wrong: a plot prefix that is a directory
/// ("ImageError(Unsupported(...))"), a swept value of the wrong sign ("expected u32"), and
/// an unreadable LINEWATCH_LOG (ignored without a word).
#[test]
fn a_plot_directory_a_negative_sweep_value_and_a_bad_log_filter_are_said_plainly() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("{}/", dir.path().display());
    let (code, out, err) = run(&mut tune(&["--plot", &prefix]));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("a directory; give a file prefix"), "{err}");
    assert!(out.is_empty(), "{out}");

    let mut c = tune(&[]);
    c.args(["--param", "bulk_sms.window_s=-5"]);
    let (code, _, err) = run(&mut c);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("expected a whole number"), "{err}");
    assert!(!err.contains("u64") && !err.contains("u32"), "{err}");

    let mut child = bin()
        .env("LINEWATCH_LOG", "[[[")
        .args(["run", "--http", "127.0.0.1:0", "--brokers", "127.0.0.1:1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let first = err.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("linewatch: warning: LINEWATCH_LOG=")
            && first.contains("not a log filter"),
        "{err}"
    );
}
