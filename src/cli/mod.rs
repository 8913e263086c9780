//! The command line: one binary, one subcommand per job (contract §3).
//!
//! Arguments are parsed by clap, then each subcommand resolves and checks them (files exist,
//! configuration valid) before any work starts. Every failure a user can cause ends in one
//! line on stderr and a non-zero exit: 2 for bad arguments or configuration, 1 for a failure
//! while working.

pub mod board;
pub mod check_config;
pub mod demo;
pub mod explain;
pub mod generate;
pub mod replay;
pub mod run;
pub mod tune;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;

#[derive(Debug, Parser)]
#[command(
    name = "linewatch",
    version,
    about = "Flags deal-line behaviour in a live stream of pseudonymised call-detail records"
)]
pub struct Cli {
    /// Configuration file (TOML). Default: the built-in defaults, equal to config/linewatch.toml.
    #[arg(long, global = true, env = "LINEWATCH_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The service: Kafka consumer group in, alerts and dead letters out, metrics on HTTP.
    #[command(allow_negative_numbers = true)]
    Run(run::Args),
    /// The detectors over a JSONL file in file order; alerts as JSONL.
    #[command(allow_negative_numbers = true)]
    Replay(replay::Args),
    /// Labelled synthetic traffic, to a file or a Kafka topic.
    #[command(allow_negative_numbers = true)]
    Generate(generate::Args),
    /// Threshold sweeps over labelled traffic: precision, recall, delay, plots.
    #[command(allow_negative_numbers = true)]
    Tune(tune::Args),
    /// Validates a configuration file and prints every problem found.
    #[command(allow_negative_numbers = true)]
    CheckConfig(check_config::Args),
    /// Generates a small city and runs every detector in-process: alerts and precision/recall.
    #[command(allow_negative_numbers = true)]
    Demo(demo::Args),
    /// Explains an alert in plain language: each figure next to its threshold.
    #[command(allow_negative_numbers = true)]
    Explain(explain::Args),
    /// The operations-room web board: live alert queue, triage, evidence export, audit trail.
    #[command(allow_negative_numbers = true)]
    Board(board::Args),
}

/// A failure to report: one line, and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub code: u8,
}

impl Failure {
    /// Bad arguments, unreadable input files, invalid configuration: exit 2.
    pub fn usage(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            code: 2,
        }
    }

    /// A failure while working: exit 1.
    pub fn runtime(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            code: 1,
        }
    }
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::runtime(e.to_string())
    }
}

pub type Outcome = Result<(), Failure>;

/// Loads the configuration named by `--config`, or the defaults.
pub fn load_config(path: Option<&Path>) -> Result<Config, Failure> {
    Config::load_or_default(path).map_err(|e| Failure::usage(format!("invalid configuration: {e}")))
}

/// Loads and validates a cell map (`--cells`): a bad row is a usage error (exit 2); a map
/// that lacks the metro or the county class is usable and gets a one-line warning.
pub fn load_cells(path: &Path) -> Result<std::sync::Arc<crate::cells::CellMap>, Failure> {
    let map = crate::cells::CellMap::load(path).map_err(|e| Failure::usage(e.to_string()))?;
    if let Some(w) = map.missing_class_warning() {
        eprintln!("{w}");
    }
    Ok(std::sync::Arc::new(map))
}

/// Refuses a command whose output would overwrite one of its inputs, or whose two outputs
/// are one file: creating an output truncates it, so `replay --input e.jsonl --dead-letter
/// e.jsonl` would read nothing and end with exit 0, the events gone, and two outputs on
/// one path interleave. Each path is given with its flag, for the message; `-` (stdin or
/// stdout) and paths that are neither a regular file nor absent (`/dev/null`, a pipe) are
/// not compared. Call it before any output is created.
pub fn distinct_files(inputs: &[(&str, &Path)], outputs: &[(&str, &Path)]) -> Result<(), Failure> {
    let mut seen: Vec<(&str, FileId, bool)> = Vec::new();
    let all = (inputs.iter().map(|x| (x, false))).chain(outputs.iter().map(|x| (x, true)));
    for (&(flag, path), is_output) in all {
        let Some(id) = FileId::of(path) else {
            continue;
        };
        // Only an output can clash: inputs come first, and two inputs may be one file.
        let clash = seen.iter().find(|(_, s, _)| *s == id).filter(|_| is_output);
        if let Some((other, _, other_is_output)) = clash {
            let harm = if *other_is_output {
                "both would write to it"
            } else {
                "it would be overwritten before it is read"
            };
            return Err(Failure::usage(format!(
                "{flag} {} is the same file as {other}: {harm}; give another path",
                path.display()
            )));
        }
        seen.push((flag, id, is_output));
    }
    Ok(())
}

/// What makes two paths one file: the device and inode of one that exists, the absolute
/// path (its folder resolved) of one that does not yet.
#[derive(Debug, PartialEq)]
enum FileId {
    Inode(u64, u64),
    Path(PathBuf),
}

impl FileId {
    fn of(path: &Path) -> Option<FileId> {
        if path.as_os_str() == "-" {
            return None;
        }
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => {
                use std::os::unix::fs::MetadataExt;
                Some(FileId::Inode(m.dev(), m.ino()))
            }
            Ok(_) => None,
            Err(_) => {
                let name = path.file_name()?;
                let dir = match path.parent() {
                    Some(d) if !d.as_os_str().is_empty() => d,
                    _ => Path::new("."),
                };
                let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
                Some(FileId::Path(dir.join(name)))
            }
        }
    }
}

/// A file being written whose errors name it: "No space left on device" alone did not say
/// which of `replay`'s three outputs, or `generate`'s four, had failed (the labels file's
/// was reported as the events').
pub struct Named<W> {
    inner: W,
    what: &'static str,
    path: PathBuf,
}

impl<W> Named<W> {
    pub fn new(inner: W, what: &'static str, path: &Path) -> Self {
        Named {
            inner,
            what,
            path: path.to_path_buf(),
        }
    }

    fn name(&self, e: std::io::Error) -> std::io::Error {
        let message = format!("cannot write {} {}: {e}", self.what, self.path.display());
        std::io::Error::new(e.kind(), message)
    }
}

impl<W: std::io::Write> std::io::Write for Named<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write(buf).map_err(|e| self.name(e))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush().map_err(|e| self.name(e))
    }
}

/// Creates an output file, buffered by `capacity` bytes, its write errors naming it
/// ([`Named`]); a file that cannot be created is a usage error naming it.
pub fn create_output(
    path: &Path,
    what: &'static str,
    capacity: usize,
) -> Result<std::io::BufWriter<Named<std::fs::File>>, Failure> {
    std::fs::File::create(path)
        .map(|f| std::io::BufWriter::with_capacity(capacity, Named::new(f, what, path)))
        .map_err(|e| Failure::usage(format!("cannot create {what} {}: {e}", path.display())))
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // clap's own help and version output are not errors.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        // No subcommand at all: the help, on stderr, is the answer.
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("linewatch: error: {}", clap_one_line(&e.to_string()));
            return ExitCode::from(2);
        }
    };
    // Before any thread starts: the batch commands that run the engine flat out may run
    // again with huge pages asked for. Not `run`: its checkpoints `fork()`, and how the
    // copy-on-write of huge pages weighs on its latency is not measured enough yet
    // (src/hugepages.rs).
    if matches!(
        cli.command,
        Command::Replay(_) | Command::Tune(_) | Command::Demo(_)
    ) {
        crate::hugepages::reexec_if_useful();
    }
    if !matches!(cli.command, Command::Run(_)) {
        end_quietly_on_closed_pipe();
    }
    let config = cli.config.as_deref();
    let result = match cli.command {
        Command::Run(a) => run::main(a, config),
        Command::Replay(a) => replay::main(a, config),
        Command::Generate(a) => generate::main(a, config),
        Command::Tune(a) => tune::main(a, config),
        Command::CheckConfig(a) => check_config::main(a, config),
        Command::Demo(a) => demo::main(a, config),
        Command::Explain(a) => explain::main(a, config),
        Command::Board(a) => board::main(a, config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("linewatch: error: {}", f.message.replace('\n', " "));
            ExitCode::from(f.code)
        }
    }
}

/// A clap error as one line, as every other failure is: its first paragraph (what is
/// wrong, with the flag and the value), without the usage and the "For more information"
/// lines that follow; the names of missing arguments are on the lines after the first, so
/// the paragraph's lines are joined.
fn clap_one_line(rendered: &str) -> String {
    let text = rendered.trim_start().trim_start_matches("error:").trim();
    let first = text.split("\n\n").next().unwrap_or(text);
    let mut line = first
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    line.push_str(" (see --help)");
    line
}

/// Makes a write to a closed pipe end the process as it ends `cat` or `grep`: quietly, by
/// SIGPIPE (the shell shows 141), instead of a panic from `println!` or a "Broken pipe"
/// error. Rust ignores SIGPIPE by default; restoring it once here covers every output of
/// every analyst command (`demo | head -1`, `replay | head`). The service (`run`) keeps
/// ignoring it: a peer closing a socket must never kill it.
fn end_quietly_on_closed_pipe() {
    // SAFETY: `signal` with SIG_DFL installs no handler code; it is called before any
    // thread is started.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
