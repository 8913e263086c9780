//! `linewatch board`: the operations-room web board. Flags, then `LINEWATCH_BOARD_*`
//! variables, then the file's `[board]` (and `[service]` for brokers and the alert topic),
//! then the defaults; everything is checked before anything is opened.

use std::path::Path;

use super::run::{init_logging, shutdown_signal, LogFormat};
use super::{load_config, Failure, Outcome};
use crate::config::Config;

/// Arguments of `linewatch board`. Each overrides the configuration file.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Kafka bootstrap servers, HOST:PORT[,HOST:PORT...] (service.brokers).
    #[arg(long, env = "LINEWATCH_BOARD_BROKERS", value_name = "HOST:PORT,...")]
    pub brokers: Option<String>,
    /// Alert topic to read (service.alert_topic).
    #[arg(long, env = "LINEWATCH_BOARD_ALERT_TOPIC", value_name = "T")]
    pub alert_topic: Option<String>,
    /// Address of the board's web server (board.http_addr); port 0 picks one.
    #[arg(long, env = "LINEWATCH_BOARD_HTTP", value_name = "ADDR")]
    pub http: Option<String>,
    /// SQLite database file (board.db_path).
    #[arg(long, env = "LINEWATCH_BOARD_DB", value_name = "PATH")]
    pub db: Option<String>,
    /// Audit log, JSONL (board.audit_log).
    #[arg(long, env = "LINEWATCH_BOARD_AUDIT_LOG", value_name = "PATH")]
    pub audit_log: Option<String>,
    /// Consumer group the board commits its progress under (board.group_id).
    #[arg(long, env = "LINEWATCH_BOARD_GROUP", value_name = "ID")]
    pub group: Option<String>,
    /// Log line format on stderr. The level comes from LINEWATCH_LOG (default `info`).
    #[arg(long, env = "LINEWATCH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Args {
    fn apply(&self, mut cfg: Config) -> Config {
        let set = |dst: &mut String, v: &Option<String>| {
            if let Some(v) = v {
                *dst = v.clone();
            }
        };
        set(&mut cfg.service.brokers, &self.brokers);
        set(&mut cfg.service.alert_topic, &self.alert_topic);
        set(&mut cfg.board.http_addr, &self.http);
        set(&mut cfg.board.db_path, &self.db);
        set(&mut cfg.board.audit_log, &self.audit_log);
        set(&mut cfg.board.group_id, &self.group);
        cfg
    }
}

pub fn main(args: Args, config: Option<&Path>) -> Outcome {
    let cfg = args.apply(load_config(config)?);
    cfg.validate()
        .map_err(|e| Failure::usage(format!("invalid configuration: {e}")))?;
    if cfg.board.users.is_empty() {
        eprintln!("linewatch: warning: [board.users] is empty, so every user is refused (403)");
    }
    init_logging(args.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("linewatch-board")
        .build()
        .map_err(|e| Failure::runtime(format!("cannot start the async runtime: {e}")))?;
    let result = runtime.block_on(crate::board::run(cfg, shutdown_signal()));
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    result.map_err(|e| Failure {
        code: e.exit_code(),
        message: e.to_string(),
    })
}
