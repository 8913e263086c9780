//! The state for a checkpoint, taken without stopping detection.
//!
//! A copy of the engine ([`Engine::clone`]) pauses the run loop for as long as copying every
//! map takes: 353 ms at 200,000 tracked lines and over a second at a million, far beyond the
//! 250 ms latency bound. Instead the run loop `fork()`s, as Redis' `BGSAVE` does: the child
//! is a copy-on-write image of the process at that instant, so it sees the state exactly as
//! it was, encodes it ([`super::encode_body`]) into a pipe and exits; the checkpoint writer
//! thread reads the pipe and stores the bytes as chunks. The run loop pauses only for
//! `fork()` itself (copying page tables, not pages); afterwards each page the run loop
//! writes while the child lives is copied once by the kernel, so memory grows by at most
//! the state's size, and in practice by the pages touched during one encode.
//!
//! The child of a multi-threaded process may only do what cannot wait on another thread:
//! it runs the encoder (pure computation and the allocator, whose locks glibc resets in the
//! child) and writes to its pipe. No logging, no locks of ours, no Kafka, no return into
//! the async runtime: it ends with `_exit`, running no destructor. It dies with the
//! parent (`PR_SET_PDEATHSIG`), so a `kill -9` of the service leaves no child holding its
//! sockets, and after [`CHILD_LIMIT_S`] (`alarm`), so a child stuck for any reason cannot
//! hold checkpoints back forever.
//!
//! What the child writes: the body, then its length and xxh3 (8 bytes each, little
//! endian). The parent accepts the body only if the child exited with status 0 and the
//! trailer matches; anything else is a [`Failure`] with a fixed reason code, and the
//! previous checkpoint stands.

use std::fs::File;
use std::io::{self, Read};

use crate::engine::Engine;

/// A child still encoding after this long is killed (by its own `alarm`): a checkpoint of
/// 25 GB of state (the national scale of the design notes) encodes in a few minutes; an
/// hour-old checkpoint is already flagged by the stale-checkpoint alert rule.
pub const CHILD_LIMIT_S: u32 = 20 * 60;

/// Exit codes of the child (0: the body and trailer are written).
const EXIT_ENCODE: i32 = 70;
const EXIT_WRITE: i32 = 71;
const EXIT_ORPHAN: i32 = 72;
const EXIT_PANIC: i32 = 73;

/// Why a snapshot gave no state. Fixed codes: metric labels and log fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Failure {
    /// `fork()` failed (memory or process limits): a copy was taken instead.
    Fork,
    /// The child was killed by a signal (the OOM killer, an operator).
    Died,
    /// The child ran past [`CHILD_LIMIT_S`].
    Timeout,
    /// The state could not be encoded (or the encoder panicked).
    Encode,
    /// The pipe broke: the child could not write, or the writer could not read.
    Pipe,
    /// The child exited 0 but its bytes are short or do not match their checksum.
    Truncated,
}

impl Failure {
    pub const ALL: [Failure; 6] = [
        Failure::Fork,
        Failure::Died,
        Failure::Timeout,
        Failure::Encode,
        Failure::Pipe,
        Failure::Truncated,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Failure::Fork => "fork",
            Failure::Died => "died",
            Failure::Timeout => "timeout",
            Failure::Encode => "encode",
            Failure::Pipe => "pipe",
            Failure::Truncated => "truncated",
        }
    }
}

/// Damage to a snapshot on purpose, to test that each kind of failure leaves the previous
/// checkpoint standing. Never set in production code.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The child writes half its bytes, then is killed (`SIGKILL`).
    ChildKilled,
    /// The child reports an encoding error and writes nothing.
    EncodeError,
    /// The child writes half its bytes and exits 0.
    Truncated,
    /// The reader closes the pipe before reading: the child's writes fail.
    PipeBroken,
}

/// A child encoding the state; [`Child::collect`] gives its bytes. Dropping it without
/// collecting kills and reaps the child.
pub struct Child {
    pid: libc::pid_t,
    read: Option<File>,
    fault: Option<Fault>,
    reaped: bool,
}

/// Whether this build snapshots by fork (Linux) or only by copy.
pub const FORK_SUPPORTED: bool = cfg!(target_os = "linux");

/// Forks a child that encodes `engine`'s state into a pipe. Returns once the child exists:
/// the caller's pause is the `fork()` alone. `fault` is for tests only.
#[cfg(target_os = "linux")]
pub fn fork_encode(engine: &Engine, fault: Option<Fault>) -> io::Result<Child> {
    use std::os::fd::FromRawFd;

    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let (r, w) = (fds[0], fds[1]);
    // A larger pipe means fewer switches between the child and the reader (the default is
    // 64 KiB); refused above the system's pipe-max-size, and then the default serves.
    // SAFETY: `w` is the pipe just opened.
    unsafe { libc::fcntl(w, libc::F_SETPIPE_SZ, 1 << 20) };
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the child runs only `child_main` (see the module doc for what it may do)
    // and leaves by `_exit`; the parent continues as after any system call.
    match unsafe { libc::fork() } {
        -1 => {
            let e = io::Error::last_os_error();
            // SAFETY: both descriptors were just opened here and are not used elsewhere.
            unsafe {
                libc::close(r);
                libc::close(w);
            }
            Err(e)
        }
        0 => {
            // SAFETY: in the child; never returns.
            unsafe { child_main(engine, r, w, parent, fault) }
        }
        pid => {
            // SAFETY: the parent's copy of the write end is its own and closed once, so
            // the reader sees end-of-file when the child exits; `r` is owned by the File.
            unsafe { libc::close(w) };
            let read = unsafe { File::from_raw_fd(r) };
            Ok(Child {
                pid,
                read: Some(read),
                fault,
                reaped: false,
            })
        }
    }
}

/// Not Linux: no fork; the caller copies the state instead.
#[cfg(not(target_os = "linux"))]
pub fn fork_encode(_engine: &Engine, _fault: Option<Fault>) -> io::Result<Child> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "copy-on-write snapshots need Linux",
    ))
}

/// The child's whole life.
///
/// # Safety
/// Call only in a freshly forked child, with `w` the pipe's write end.
#[cfg(target_os = "linux")]
unsafe fn child_main(
    engine: &Engine,
    r: libc::c_int,
    w: libc::c_int,
    parent: libc::pid_t,
    fault: Option<Fault>,
) -> ! {
    libc::close(r);
    // Die with the parent: a child outliving a killed service would hold its sockets.
    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    // The parent may have died before the line above took effect.
    if libc::getppid() != parent {
        libc::_exit(EXIT_ORPHAN);
    }
    // Writes to a closed pipe fail with EPIPE (an exit code) rather than a signal, whatever
    // the parent set; the alarm kills a child stuck for any reason.
    libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    libc::signal(libc::SIGALRM, libc::SIG_DFL);
    // The runtime's handlers would wake the parent's signal driver through a shared pipe; a
    // stop signal sent to the whole group (systemd, Ctrl-C) ends the child instead, and the
    // parent's last checkpoint at shutdown forks a new one.
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        libc::signal(sig, libc::SIG_DFL);
    }
    let mut set: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut set);
    libc::sigaddset(&mut set, libc::SIGALRM);
    libc::sigaddset(&mut set, libc::SIGTERM);
    libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    libc::alarm(CHILD_LIMIT_S);
    // Encoding competes with detection for the cores: detection goes first.
    libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        write_state(engine, w, fault)
    }))
    .unwrap_or(EXIT_PANIC);
    libc::_exit(code)
}

/// Encodes the state into the pipe with its trailer; the exit code.
#[cfg(target_os = "linux")]
fn write_state(engine: &Engine, w: libc::c_int, fault: Option<Fault>) -> i32 {
    use std::io::Write;
    use std::os::fd::FromRawFd;

    // SAFETY: `w` is the child's write end, owned here alone; the process ends by `_exit`,
    // so whether the File is closed or not does not matter.
    let file = unsafe { File::from_raw_fd(w) };
    // Buffered before hashing: postcard writes a byte at a time.
    let mut out = io::BufWriter::with_capacity(
        1 << 20,
        Hashing {
            inner: file,
            hash: xxhash_rust::xxh3::Xxh3::new(),
            len: 0,
        },
    );
    let sections = match (fault, engine.save_sections()) {
        (Some(Fault::EncodeError), _) | (_, Err(_)) => return EXIT_ENCODE,
        (_, Ok(s)) => s,
    };
    if let Some(f @ (Fault::ChildKilled | Fault::Truncated)) = fault {
        let Ok(body) = super::codec::encode(&sections) else {
            return EXIT_ENCODE;
        };
        if out.write_all(&body[..body.len() / 2]).is_err() || out.flush().is_err() {
            return EXIT_WRITE;
        }
        if f == Fault::ChildKilled {
            // SAFETY: raise has no preconditions; SIGKILL ends the process here.
            unsafe { libc::raise(libc::SIGKILL) };
        }
        return 0;
    }
    // The body goes straight into the pipe: the child never holds a second copy of it.
    if let Err(e) = postcard::to_io(&sections, &mut out) {
        return match e {
            // What postcard's writer reports for any I/O error.
            postcard::Error::SerializeBufferFull => EXIT_WRITE,
            _ => EXIT_ENCODE,
        };
    }
    let Ok(mut h) = out.into_inner() else {
        return EXIT_WRITE;
    };
    let mut trailer = [0u8; 16];
    trailer[..8].copy_from_slice(&h.len.to_le_bytes());
    trailer[8..].copy_from_slice(&h.hash.digest().to_le_bytes());
    if h.inner.write_all(&trailer).is_err() {
        return EXIT_WRITE;
    }
    0
}

/// Counts and hashes what passes through.
struct Hashing<W> {
    inner: W,
    hash: xxhash_rust::xxh3::Xxh3,
    len: u64,
}

impl<W: io::Write> io::Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl Child {
    /// The child's process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Reads everything the child writes, waits for it to exit and checks its bytes: the
    /// state body ([`super::encode_body`]'s bytes). `size_hint`: the last body's size.
    pub fn collect(mut self, size_hint: usize) -> Result<Vec<u8>, Failure> {
        let mut buf = Vec::with_capacity(size_hint + size_hint / 8 + 16);
        let read = match self.read.take() {
            Some(_) if self.fault == Some(Fault::PipeBroken) => Err(Failure::Pipe),
            Some(mut f) => f.read_to_end(&mut buf).map_err(|_| Failure::Pipe),
            None => Err(Failure::Pipe),
        };
        // The read end is closed now: a child still writing gets EPIPE and exits, so the
        // wait below cannot hang on a full pipe.
        let status = self.wait();
        classify(status)?;
        read?;
        if buf.len() < 16 {
            return Err(Failure::Truncated);
        }
        let (body, trailer) = buf.split_at(buf.len() - 16);
        let len = u64::from_le_bytes(trailer[..8].try_into().map_err(|_| Failure::Truncated)?);
        let sum = u64::from_le_bytes(trailer[8..].try_into().map_err(|_| Failure::Truncated)?);
        if len != body.len() as u64 || xxhash_rust::xxh3::xxh3_64(body) != sum {
            return Err(Failure::Truncated);
        }
        buf.truncate(buf.len() - 16);
        Ok(buf)
    }

    fn kill(&self) {
        if !self.reaped {
            // SAFETY: `pid` is our child and not yet reaped, so it cannot be another process.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
    }

    /// Waits for the child; its raw wait status (`None`: could not wait).
    fn wait(&mut self) -> Option<libc::c_int> {
        if self.reaped {
            return None;
        }
        let mut status = 0;
        loop {
            // SAFETY: waits for our own child only.
            let r = unsafe { libc::waitpid(self.pid, &mut status, 0) };
            if r == self.pid {
                self.reaped = true;
                return Some(status);
            }
            if r == -1 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // ECHILD: someone else reaped it (a SIGCHLD set to ignore): nothing to wait for.
            self.reaped = true;
            return None;
        }
    }
}

/// The child's exit, as a failure or fine.
fn classify(status: Option<libc::c_int>) -> Result<(), Failure> {
    let Some(s) = status else {
        // The status is lost; the trailer check still decides.
        return Ok(());
    };
    if libc::WIFSIGNALED(s) {
        return Err(if libc::WTERMSIG(s) == libc::SIGALRM {
            Failure::Timeout
        } else {
            Failure::Died
        });
    }
    match libc::WEXITSTATUS(s) {
        0 => Ok(()),
        EXIT_WRITE | EXIT_ORPHAN => Err(Failure::Pipe),
        _ => Err(Failure::Encode),
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if !self.reaped {
            self.read = None;
            self.kill();
            self.wait();
        }
    }
}
