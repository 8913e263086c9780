//! Live threshold changes: on SIGHUP, and when the configuration file changes, the file is
//! loaded and validated; a valid one is handed to the run loop, which reconfigures the engine
//! between batches (window state is kept). An invalid one changes nothing: the error is
//! logged in one line and counted.
//!
//! Only detection settings change live. `[service]` and `[kafka]` shape the clients and the
//! HTTP server, which are built once: a change there is logged as needing a restart and the
//! running values are kept.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};

use super::metrics::Metrics;
use crate::config::{Config, ServiceConfig};

/// Identity of the file's content as last seen: cheap metadata first, then a hash, so a
/// touch without a change does not count as a reload.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    modified: Option<SystemTime>,
    len: u64,
    hash: u64,
}

fn look(path: &std::path::Path) -> Option<(Option<SystemTime>, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok(), m.len()))
}

fn fingerprint(path: &std::path::Path) -> Option<Seen> {
    let (modified, len) = look(path)?;
    let bytes = std::fs::read(path).ok()?;
    Some(Seen {
        modified,
        len,
        hash: xxhash_rust::xxh3::xxh3_64(&bytes),
    })
}

/// Watches the configuration file and SIGHUP; sends valid new configurations to `tx`.
pub struct Reloader {
    path: PathBuf,
    /// The running configuration (with command-line overrides in `[service]`).
    running: Config,
    /// `[service]` and `[kafka]` as the file had them at start, to spot changes to them.
    file_service: ServiceConfig,
    file_kafka: BTreeMap<String, String>,
    seen: Option<Seen>,
    metrics: Metrics,
}

impl Reloader {
    /// `file` is the configuration as loaded from `path` (before command-line overrides).
    pub fn new(path: PathBuf, file: &Config, running: Config, metrics: Metrics) -> Self {
        Reloader {
            seen: fingerprint(&path),
            path,
            file_service: file.service.clone(),
            file_kafka: file.kafka.clone(),
            running,
            metrics,
        }
    }

    /// Runs until `stop` turns true or the receiver is gone.
    pub async fn run(mut self, tx: mpsc::Sender<Config>, mut stop: watch::Receiver<bool>) {
        let every = Duration::from_secs(self.running.service.config_poll_interval_s.max(1));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut hup = hangup();
        loop {
            let forced = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tick.tick() => false,
                Some(()) = recv_hup(&mut hup) => true,
            };
            if !forced && !self.changed() {
                continue;
            }
            if let Some(cfg) = self.reload(forced) {
                if tx.send(cfg).await.is_err() {
                    return;
                }
            }
        }
    }

    /// True if the file's content differs from what was last loaded.
    fn changed(&mut self) -> bool {
        let Some((modified, len)) = look(&self.path) else {
            // Missing for a moment while an editor replaces it; the next tick sees it.
            return false;
        };
        if let Some(s) = &self.seen {
            if s.modified == modified && s.len == len {
                return false;
            }
        }
        let now = fingerprint(&self.path);
        let changed = match (&self.seen, &now) {
            (Some(a), Some(b)) => a.hash != b.hash,
            _ => now.is_some(),
        };
        if !changed {
            self.seen = now; // touched, not changed
        }
        changed
    }

    /// Loads the file; `Some` with the configuration to apply if it is valid and new.
    fn reload(&mut self, forced: bool) -> Option<Config> {
        self.seen = fingerprint(&self.path);
        let trigger = if forced { "SIGHUP" } else { "file change" };
        let file = match Config::load(&self.path) {
            Ok(c) => c,
            Err(e) => {
                self.metrics.reload("invalid");
                tracing::error!(
                    trigger,
                    error = %e,
                    "configuration reload rejected; the running thresholds stay in force"
                );
                return None;
            }
        };
        if file.service != self.file_service || file.kafka != self.file_kafka {
            tracing::warn!(
                trigger,
                "[service] or [kafka] settings changed; they require a restart and were ignored"
            );
            self.file_service = file.service.clone();
            self.file_kafka = file.kafka.clone();
        }
        let next = Config {
            service: self.running.service.clone(),
            // The internal topics are created and checked at start only.
            streams: self.running.streams.clone(),
            kafka: self.running.kafka.clone(),
            ..file
        };
        if next.version() == self.running.version() {
            self.metrics.reload("unchanged");
            tracing::info!(trigger, config_version = %next.version(), "configuration reloaded: detection settings unchanged");
            return None;
        }
        self.metrics.reload("applied");
        tracing::info!(
            trigger,
            from = %self.running.version(),
            config_version = %next.version(),
            "configuration reloaded: new detection settings apply from the next record"
        );
        self.running = next.clone();
        Some(next)
    }
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = Option<()>;

#[cfg(unix)]
fn hangup() -> Hangup {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; the file is still watched");
            None
        }
    }
}

#[cfg(not(unix))]
fn hangup() -> Hangup {
    None
}

#[cfg(unix)]
async fn recv_hup(h: &mut Hangup) -> Option<()> {
    match h {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn recv_hup(_: &mut Hangup) -> Option<()> {
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &std::path::Path, text: &str) {
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn valid_change_applies_invalid_is_refused_and_service_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        write(&path, "[bulk_sms]\nmin_recipients = 30\n");
        let file = Config::load(&path).unwrap();
        let mut running = file.clone();
        running.service.brokers = "from-flag:9092".into();
        let metrics = Metrics::new();
        let mut r = Reloader::new(path.clone(), &file, running, metrics.clone());

        write(
            &path,
            "[bulk_sms]\nmin_recipients = 20\n[service]\ngroup_id = \"x\"\n",
        );
        let next = r.reload(false).expect("applied");
        assert_eq!(next.bulk_sms.min_recipients, 20);
        // The flag's broker and the start-time group stay: [service] needs a restart.
        assert_eq!(next.service.brokers, "from-flag:9092");
        assert_eq!(next.service.group_id, "linewatch");

        write(&path, "[bulk_sms]\nmin_recipients = 0\n");
        assert!(r.reload(false).is_none());
        assert!(r.reload(true).is_none());
        let text = metrics.render();
        assert!(text.contains("linewatch_config_reloads_total{result=\"invalid\"} 2"));
        assert!(text.contains("linewatch_config_reloads_total{result=\"applied\"} 1"));
    }

    #[test]
    fn touch_without_change_is_not_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        write(&path, "");
        let file = Config::load(&path).unwrap();
        let mut r = Reloader::new(path.clone(), &file, file.clone(), Metrics::new());
        assert!(!r.changed());
        std::thread::sleep(Duration::from_millis(20));
        write(&path, "");
        assert!(!r.changed());
        write(&path, "[alerts]\ncooldown_s = 60\n");
        assert!(r.changed());
    }
}
