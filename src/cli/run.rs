//! `linewatch run`: the service. Arguments are resolved over the configuration file (flag,
//! then `LINEWATCH_*` variable, then file, then built-in default) and validated before any
//! connection is made; then [`crate::service::run`] runs until SIGINT or SIGTERM.

use std::path::{Path, PathBuf};

use super::{load_config, Failure, Outcome};
use crate::config::Config;
use crate::service::{self, RunOptions};

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Arguments of `linewatch run`. Each overrides the configuration file.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Kafka bootstrap servers, HOST:PORT[,HOST:PORT...] (service.brokers).
    #[arg(long, env = "LINEWATCH_BROKERS", value_name = "HOST:PORT,...")]
    pub brokers: Option<String>,
    /// Consumer group id (service.group_id).
    #[arg(long, env = "LINEWATCH_GROUP", value_name = "ID")]
    pub group: Option<String>,
    /// Input topic; repeat or separate with commas for several (service.input_topics).
    #[arg(
        long,
        env = "LINEWATCH_INPUT_TOPIC",
        value_name = "T",
        value_delimiter = ','
    )]
    pub input_topic: Vec<String>,
    /// Alert topic (service.alert_topic).
    #[arg(long, env = "LINEWATCH_ALERT_TOPIC", value_name = "T")]
    pub alert_topic: Option<String>,
    /// Dead-letter topic (service.dead_letter_topic).
    #[arg(long, env = "LINEWATCH_DEAD_LETTER_TOPIC", value_name = "T")]
    pub dead_letter_topic: Option<String>,
    /// Admin HTTP address for /metrics, /healthz, /readyz (service.http_addr); port 0 picks one.
    #[arg(long, env = "LINEWATCH_HTTP", value_name = "ADDR")]
    pub http: Option<String>,
    /// Seconds between state checkpoints; 0 turns them off (service.checkpoint_interval_s).
    #[arg(long, env = "LINEWATCH_CHECKPOINT_INTERVAL_S", value_name = "S")]
    pub checkpoint_interval_s: Option<u64>,
    /// Compacted topic for checkpoints (service.state_topic).
    #[arg(long, env = "LINEWATCH_STATE_TOPIC", value_name = "T")]
    pub state_topic: Option<String>,
    /// Local directory for checkpoints, read first on restore (service.state_dir).
    #[arg(long, env = "LINEWATCH_STATE_DIR", value_name = "PATH")]
    pub state_dir: Option<String>,
    /// at_least_once or exactly_once (service.processing_guarantee).
    #[arg(long, env = "LINEWATCH_PROCESSING_GUARANTEE", value_name = "G")]
    pub processing_guarantee: Option<crate::config::ProcessingGuarantee>,
    /// Shards of the detectors, each on a thread of its own (service.shards).
    #[arg(long, env = "LINEWATCH_SHARDS", value_name = "N")]
    pub shards: Option<usize>,
    /// Cell map CSV (`cell,area,class`), validated at start.
    #[arg(long, env = "LINEWATCH_CELLS", value_name = "PATH")]
    pub cells: Option<PathBuf>,
    /// Log line format on stderr. The level comes from LINEWATCH_LOG (default `info`).
    #[arg(
        long,
        env = "LINEWATCH_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
}

impl Args {
    /// The file's configuration with these overrides applied.
    fn apply(&self, mut cfg: Config) -> Config {
        let s = &mut cfg.service;
        if let Some(v) = &self.brokers {
            s.brokers = v.clone();
        }
        if let Some(v) = &self.group {
            s.group_id = v.clone();
        }
        if !self.input_topic.is_empty() {
            s.input_topics = self.input_topic.clone();
        }
        if let Some(v) = &self.alert_topic {
            s.alert_topic = v.clone();
        }
        if let Some(v) = &self.dead_letter_topic {
            s.dead_letter_topic = v.clone();
        }
        if let Some(v) = &self.http {
            s.http_addr = v.clone();
        }
        if let Some(v) = self.checkpoint_interval_s {
            s.checkpoint_interval_s = v;
        }
        if let Some(v) = &self.state_topic {
            s.state_topic = v.clone();
        }
        if let Some(v) = &self.state_dir {
            s.state_dir = v.clone();
        }
        if let Some(v) = self.processing_guarantee {
            s.processing_guarantee = v;
        }
        if let Some(v) = self.shards {
            s.shards = v;
        }
        cfg
    }
}

pub(crate) fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("LINEWATCH_LOG").unwrap_or_else(|e| {
        // Unset is the default; set but unreadable was ignored without a word.
        if let Ok(v) = std::env::var("LINEWATCH_LOG") {
            eprintln!(
                "linewatch: warning: LINEWATCH_LOG={v:?} is not a log filter ({e}); logging at \
                 info (e.g. LINEWATCH_LOG=debug or linewatch=debug,rdkafka=warn)"
            );
        }
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    // try_init: a second initialisation (tests in one process) keeps the first.
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
}

/// Completes on the first SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Creates and removes a file of a name of its own in `dir`: a directory that exists but
/// cannot be written (a read-only mount, no permission) passed the start, and every
/// checkpoint interval then logged "checkpoint write failed ... Read-only file system".
fn write_probe(dir: &Path) -> std::io::Result<()> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let probe = dir.join(format!(
        ".linewatch-write-probe-{}-{nanos}",
        std::process::id()
    ));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)?;
    std::fs::remove_file(&probe)
}

pub fn main(args: Args, config: Option<&Path>) -> Outcome {
    let file = load_config(config)?;
    let cfg = args.apply(file.clone());
    cfg.validate()
        .map_err(|e| Failure::usage(format!("invalid configuration: {e}")))?;
    let cells = args.cells.as_deref().map(super::load_cells).transpose()?;
    // Asked for by name, a state directory that cannot be one is the operator's mistake, not
    // a store to do without: the service would run on the state topic alone, with a warning
    // among its logs (as for a disk that fails later).
    let dir = Path::new(&cfg.service.state_dir);
    if !cfg.service.state_dir.is_empty() {
        let why = match std::fs::create_dir_all(dir) {
            Ok(()) => write_probe(dir)
                .err()
                .map(|e| format!("cannot write in it: {e}")),
            Err(_) if dir.exists() && !dir.is_dir() => Some("it is a file".to_string()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(why) = why {
            return Err(Failure::usage(format!(
                "state directory {} (service.state_dir) cannot be used: {why}",
                dir.display()
            )));
        }
    }
    init_logging(args.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("linewatch")
        .build()
        .map_err(|e| Failure::runtime(format!("cannot start the async runtime: {e}")))?;
    let opts = RunOptions {
        config_path: config.map(Path::to_path_buf),
        file_config: Some(file),
        cells,
    };
    let result = runtime.block_on(service::run(cfg, opts, shutdown_signal()));
    // A metadata probe still blocking a worker thread (the broker is unreachable) ends on
    // its own within seconds, but there is nothing left to wait for.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    result.map_err(|e| Failure {
        code: e.exit_code(),
        message: e.to_string(),
    })
}
