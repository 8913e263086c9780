//! Transparent huge pages for the engine's heap.
//!
//! The engine lives on memory misses: nearly every record probes a few tables far larger
//! than the caches (the contact store, the handset tables, the dedup set), at random
//! places. With 4 KiB pages each such probe also misses the TLB (the second-level TLB of
//! this machine's cores covers 8 MB; the state of a 150,000-subscriber city is over
//! 100 MB) and walks the page table; with 2 MiB pages the same TLB covers 4 GB.
//!
//! Most distributions ship the kernel's transparent huge pages in `madvise` mode: only
//! memory a program asks for gets them. glibc (2.35 and later) asks for its whole heap when
//! the tunable `glibc.malloc.hugetlb=1` is set, and reads tunables only when a process
//! starts. So `replay`, `tune` and `demo`, in that mode and with a glibc that knows the
//! tunable, run themselves again at once (`exec`: the same process id, arguments and
//! descriptors) with the tunable added to `GLIBC_TUNABLES`. An operator who sets
//! `glibc.malloc.hugetlb` in `GLIBC_TUNABLES` (`=0` turns huge pages off) is never
//! overridden; kernels in `always` or `never` mode need nothing asked, and the binary runs
//! as it started.
//!
//! Not `run`: its checkpoints `fork()` a copy-on-write child, and while the child lives
//! the run loop's writes fault on pages it shares. Three alternating pairs of
//! `checkpoint_latency` (a million lines, fork mode) gave a record latency p99 of
//! 1.5-2.6 ms with huge pages against 0.5-0.9 ms with 4 KiB pages, worse in every pair,
//! for the same CPU: the service keeps 4 KiB pages unless its operator sets the tunable.
//!
//! Measured on the 150,000-subscriber city (`replay --shards 1` on one core, four
//! alternating pairs): 3-7 % less CPU in every pair, the same alerts, peak RSS within 1 %
//! (README, "Huge pages").

/// The glibc tunable that makes malloc ask for transparent huge pages.
pub const TUNABLE: &str = "glibc.malloc.hugetlb";

/// Where the kernel says which transparent-huge-page mode is in force.
const THP_MODE: &str = "/sys/kernel/mm/transparent_hugepage/enabled";

/// What the process should do about huge pages at start, given its `GLIBC_TUNABLES`, the
/// kernel's mode file (`always [madvise] never`) and glibc's version: `Some(value)` to
/// run again with `GLIBC_TUNABLES=value`, `None` to go on as it is.
pub fn plan(tunables: Option<&str>, thp_mode: Option<&str>, glibc: Option<&str>) -> Option<String> {
    // Only the `madvise` mode needs asking; `always` gives them anyway, `never` refuses.
    if !thp_mode.is_some_and(|m| m.contains("[madvise]")) {
        return None;
    }
    // glibc before 2.35 ignores the tunable: running again would change nothing.
    let (major, minor) = glibc?.trim().split_once('.')?;
    let version = (major.parse::<u32>().ok()?, minor.parse::<u32>().ok()?);
    if version < (2, 35) {
        return None;
    }
    match tunables {
        // Set by the operator (or by the run that set it): never overridden.
        Some(t) if setting(t).is_some() => None,
        Some(t) if !t.is_empty() => Some(format!("{t}:{TUNABLE}=1")),
        _ => Some(format!("{TUNABLE}=1")),
    }
}

/// The value `GLIBC_TUNABLES` (`name=value:name=value`) gives [`TUNABLE`], if any.
fn setting(tunables: &str) -> Option<&str> {
    tunables.split(':').find_map(|kv| {
        let (name, value) = kv.split_once('=').unwrap_or((kv, ""));
        (name == TUNABLE).then_some(value)
    })
}

/// Whether this process's heap asks for huge pages: its `GLIBC_TUNABLES` sets the tunable
/// to 1 (for the start-up log).
pub fn asked() -> bool {
    std::env::var("GLIBC_TUNABLES").is_ok_and(|t| setting(&t) == Some("1"))
}

/// [`plan`] for this process on this machine, given `GLIBC_TUNABLES` (the process's own,
/// or another a child would start with).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn plan_here(tunables: Option<&str>) -> Option<String> {
    let mode = std::fs::read_to_string(THP_MODE).ok();
    // SAFETY: `gnu_get_libc_version` returns a pointer to a static NUL-terminated string
    // owned by glibc.
    let glibc = unsafe { std::ffi::CStr::from_ptr(libc::gnu_get_libc_version()) };
    plan(tunables, mode.as_deref(), glibc.to_str().ok())
}

/// Runs the binary again with huge pages asked for, when [`plan`] says so; returns only if
/// it does not (or the `exec` failed, and the process goes on with 4 KiB pages). Call it
/// first thing, before any thread starts.
pub fn reexec_if_useful() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;

        // Under valgrind (`cachegrind`, `callgrind`: the README's instruction counts) an
        // exec of `/proc/self/exe` would leave the tool, which refuses it; there the
        // process goes on as it started.
        if std::env::var("LD_PRELOAD").is_ok_and(|p| p.contains("vgpreload")) {
            return;
        }
        let tunables = std::env::var("GLIBC_TUNABLES").ok();
        let Some(value) = plan_here(tunables.as_deref()) else {
            return;
        };
        let mut args = std::env::args_os();
        let argv0 = args.next().unwrap_or_default();
        // `/proc/self/exe`: this very binary, even if its file was replaced since. `exec`
        // returns only if it failed: then the process goes on as started.
        let _ = std::process::Command::new("/proc/self/exe")
            .arg0(argv0)
            .args(args)
            .env("GLIBC_TUNABLES", value)
            .exec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MADVISE: Option<&str> = Some("always [madvise] never\n");

    #[test]
    fn in_madvise_mode_with_a_recent_glibc_the_tunable_is_added() {
        assert_eq!(
            plan(None, MADVISE, Some("2.36")).as_deref(),
            Some("glibc.malloc.hugetlb=1")
        );
        assert_eq!(
            plan(Some(""), MADVISE, Some("2.35")).as_deref(),
            Some("glibc.malloc.hugetlb=1")
        );
        assert_eq!(
            plan(Some("glibc.malloc.arena_max=2"), MADVISE, Some("2.41")).as_deref(),
            Some("glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")
        );
    }

    #[test]
    fn an_operators_setting_is_never_overridden() {
        for t in [
            "glibc.malloc.hugetlb=0",
            "glibc.malloc.hugetlb=1",
            "glibc.malloc.hugetlb=2",
            "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=0",
        ] {
            assert_eq!(plan(Some(t), MADVISE, Some("2.36")), None, "{t}");
        }
        // A tunable whose name merely contains ours is another tunable.
        assert!(plan(Some("glibc.malloc.hugetlbx=0"), MADVISE, Some("2.36")).is_some());
    }

    #[test]
    fn other_modes_and_old_or_unknown_glibcs_leave_the_process_as_it_is() {
        for mode in [
            Some("[always] madvise never\n"),
            Some("always madvise [never]\n"),
            None,
        ] {
            assert_eq!(plan(None, mode, Some("2.36")), None, "{mode:?}");
        }
        for glibc in [Some("2.34"), Some("1.99"), Some("2"), Some("x.y"), None] {
            assert_eq!(plan(None, MADVISE, glibc), None, "{glibc:?}");
        }
        assert!(plan(None, MADVISE, Some("3.0")).is_some());
    }
}
