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
    Run(run::Args),
    /// The detectors over a JSONL file in file order; alerts as JSONL.
    Replay(replay::Args),
    /// Labelled synthetic traffic, to a file or a Kafka topic.
    Generate(generate::Args),
    /// Threshold sweeps over labelled traffic: precision, recall, delay, plots.
    Tune(tune::Args),
    /// Validates a configuration file and prints every problem found.
    CheckConfig(check_config::Args),
    /// Generates a small city and runs every detector in-process: alerts and precision/recall.
    Demo(demo::Args),
    /// Explains an alert in plain language: each figure next to its threshold.
    Explain(explain::Args),
    /// The operations-room web board: live alert queue, triage, evidence export, audit trail.
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

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap's own help and version output are not errors.
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
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
