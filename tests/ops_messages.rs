//! What an operator sees when `run` or `board` is started wrong, or runs normally: a
//! mistake ends at start in one line (exit 2) instead of a log line repeated forever, and a
//! normal run does not flood the log. The broker test takes its broker from
//! `LINEWATCH_TEST_BROKERS` (scripts/test.sh); the others need none.

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{brokers, create_topics, suffix, Service};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_linewatch"));
    // The developer's own settings must not reach the command under test.
    for (k, _) in std::env::vars() {
        if k.starts_with("LINEWATCH_") {
            c.env_remove(k);
        }
    }
    c
}

/// Waits at most `limit` for `child`, then returns its exit code and stderr; a child still
/// running then is killed and the test fails (the old `run` went on and logged the mistake
/// again and again).
fn exit_within(mut child: Child, limit: Duration) -> (Option<i32>, String) {
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code(), err)
}

/// `linewatch run --http 127.0.0.1:0 <args>`, with a broker nobody listens on unless `args`
/// names one: started, then given `limit` to exit.
fn run_cmd(args: &[&str], limit: Duration) -> (Option<i32>, String) {
    let child = bin()
        .args(["run", "--http", "127.0.0.1:0"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    exit_within(child, limit)
}

/// True if a new file cannot be created in `dir` (what `run`'s checkpoints would do).
fn unwritable(dir: &Path) -> bool {
    let probe = dir.join(format!(".ops-messages-test-{}", suffix()));
    match std::fs::File::create(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            false
        }
        Err(_) => true,
    }
}

/// A directory that exists and cannot be written, also as root: a `chmod 555` folder does
/// as a normal user; root writes there anyway, but not in sysfs's `/sys/kernel`.
fn an_unwritable_dir(tmp: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let ro = tmp.join("read-only");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    [ro, PathBuf::from("/sys/kernel")]
        .into_iter()
        .find(|d| d.is_dir() && unwritable(d))
        .expect("no directory that cannot be written: neither a chmod 555 one nor /sys/kernel")
}

/// A state directory that exists but cannot be written (a read-only mount) passed the start,
/// and every checkpoint interval then logged "checkpoint write failed ... Read-only file
/// system". It ends at start, like a state directory that is a file.
#[test]
fn run_refuses_a_state_dir_it_cannot_write_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = an_unwritable_dir(tmp.path());
    let (code, err) = run_cmd(
        &[
            "--brokers",
            "127.0.0.1:1",
            "--state-dir",
            dir.to_str().unwrap(),
        ],
        Duration::from_secs(10),
    );
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.starts_with("linewatch: error: ")
            && err.contains(&format!("state directory {}", dir.display()))
            && err.contains("cannot write in it"),
        "{err}"
    );
    // No probe file is left behind where one could be written (the chmod 555 case as a
    // normal user leaves nothing either; nothing could be created).
    if dir.starts_with(tmp.path()) {
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    }
}

/// A writable state directory still starts, and the probe leaves nothing in it.
#[test]
fn run_starts_with_a_writable_state_dir_and_leaves_no_probe() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let mut child = bin()
        .args(["run", "--http", "127.0.0.1:0", "--brokers", "127.0.0.1:1"])
        .arg("--state-dir")
        .arg(&dir)
        .env("LINEWATCH_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let still_running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert!(
        still_running,
        "run exited at start: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().contains("probe"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// `--brokers http://127.0.0.1:9092` was retried as "brokers unreachable" forever
/// (librdkafka: unsupported protocol). It ends at start with what to give instead.
#[test]
fn run_refuses_a_broker_list_with_a_scheme_at_once() {
    for brokers in [
        "http://127.0.0.1:9092",
        "kafka://127.0.0.1:9092",
        "tcp://127.0.0.1:9092",
    ] {
        let (code, err) = run_cmd(&["--brokers", brokers], Duration::from_secs(10));
        assert_eq!(code, Some(2), "{brokers}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(
            err.starts_with("linewatch: error: ")
                && err.contains("service.brokers")
                && err.contains("is not one"),
            "{err}"
        );
    }
}

/// `linewatch board` logged a ~5 KB "Client stats" line at INFO every second and each normal
/// end of a partition as "ERROR ... Global error: PartitionEOF": the service's consumer
/// defaults (statistics, partition EOF) through rdkafka's default context.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_board_logs_no_statistics_and_no_partition_eof() {
    let b = brokers();
    let topic = format!("ops-board-{}", suffix());
    create_topics(&[(&topic, 2)]).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("board.toml");
    std::fs::write(
        &cfg,
        format!(
            "[board]\ndb_path = {:?}\naudit_log = {:?}\ngroup_id = \"ops-board-{}\"\n\
             [board.users]\nalice = \"analyst\"\n",
            dir.path().join("board.db"),
            dir.path().join("audit.jsonl"),
            suffix()
        ),
    )
    .unwrap();
    let args = ["--brokers", &b, "--alert-topic", &topic].map(String::from);
    let board = Service::start_command(&cfg, "board", &args);
    board
        .wait_log("board reading the alert topic", 1, Duration::from_secs(60))
        .await;
    // Statistics came every second, and both (empty) partitions' ends at once.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let logs = board.logs().join("\n");
    assert!(!logs.contains("Client stats"), "{logs}");
    assert!(!logs.contains("PartitionEOF"), "{logs}");
    assert!(!logs.contains("ERROR"), "{logs}");
}
