//! The binary asks for transparent huge pages the way `hugepages::plan` says it should on
//! this machine, and never overrides an operator's own setting. Read from the running
//! process as the kernel sees it: a mapping advised for huge pages carries `hg` in its
//! `VmFlags` (`/proc/PID/smaps`), which glibc sets on its heap when the tunable is on.

#![cfg(all(target_os = "linux", target_env = "gnu"))]

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use linewatch::hugepages;

/// A small generated city, as JSONL (enough records for the heap to pass 2 MiB).
fn city() -> Vec<u8> {
    let out = Command::new(env!("CARGO_BIN_EXE_linewatch"))
        .args([
            "generate",
            "--subscribers",
            "2000",
            "--days",
            "1",
            "--seed",
            "5",
        ])
        .stderr(Stdio::null())
        .output()
        .expect("generate");
    assert!(out.status.success());
    out.stdout
}

/// `linewatch replay --input -` fed `records` and left waiting on its still-open stdin,
/// with `GLIBC_TUNABLES` as given.
fn waiting_replay(tunables: Option<&str>, records: &[u8]) -> Child {
    waiting_replay_with(tunables, records, None)
}

/// [`waiting_replay`] with `LD_PRELOAD` set as given.
fn waiting_replay_with(tunables: Option<&str>, records: &[u8], preload: Option<&str>) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_linewatch"));
    if let Some(p) = preload {
        cmd.env("LD_PRELOAD", p);
    }
    cmd.args(["replay", "--input", "-", "--output", "/dev/null", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    match tunables {
        Some(t) => cmd.env("GLIBC_TUNABLES", t),
        None => cmd.env_remove("GLIBC_TUNABLES"),
    };
    let mut child = cmd.spawn().expect("spawn linewatch");
    // Returns once the replay has read all but a pipe's buffer of it: past its start.
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(records)
        .expect("feed replay");
    child
}

/// Whether any of the process's mappings is advised for huge pages.
fn advised(pid: u32) -> bool {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    smaps
        .lines()
        .filter_map(|l| l.strip_prefix("VmFlags:"))
        .any(|flags| flags.split_whitespace().any(|f| f == "hg"))
}

/// Whether the process's heap is advised, waiting up to five seconds for `want`.
fn settled(child: &Child, want: bool) -> bool {
    let start = Instant::now();
    loop {
        let now = advised(child.id());
        if now == want || start.elapsed() > Duration::from_secs(5) {
            return now;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn finish(mut child: Child) {
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "replay failed: {err}");
}

#[test]
fn the_binary_asks_for_huge_pages_as_the_plan_says_on_this_machine() {
    let records = city();
    let want = hugepages::plan_here(None).is_some();
    let child = waiting_replay(None, &records);
    // Not asked: the answer cannot change any more once the records are read.
    let got = settled(&child, want);
    finish(child);
    assert_eq!(got, want, "heap advised for huge pages");
    if !want {
        eprintln!("this machine's kernel or glibc needs no asking: checked that none is made");
    }
}

#[test]
fn an_operators_setting_is_never_overridden_and_other_tunables_are_kept() {
    let records = city();
    // Off by the operator: stays off.
    let child = waiting_replay(Some("glibc.malloc.hugetlb=0"), &records);
    std::thread::sleep(Duration::from_millis(300));
    let got = advised(child.id());
    finish(child);
    assert!(!got, "huge pages asked for against glibc.malloc.hugetlb=0");

    // Other tunables: ours is added beside them when the machine needs asking.
    let want = hugepages::plan_here(Some("glibc.malloc.arena_max=2")).is_some();
    let child = waiting_replay(Some("glibc.malloc.arena_max=2"), &records);
    let got = settled(&child, want);
    finish(child);
    assert_eq!(got, want, "heap advised with another tunable set");
}

#[test]
fn under_valgrind_the_process_goes_on_as_it_started() {
    // Valgrind preloads its `vgpreload_*.so`; a name like it is enough for the check (the
    // dynamic loader warns that it cannot find it and goes on).
    let records = city();
    let child = waiting_replay_with(None, &records, Some("/nonexistent/vgpreload_core-test.so"));
    std::thread::sleep(Duration::from_millis(300));
    let got = advised(child.id());
    finish(child);
    assert!(!got, "ran itself again under valgrind");
}
