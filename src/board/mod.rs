//! `linewatch board`: the operations-room web board.
//!
//! # Layout
//!
//! - [`config`]: `[board]` settings and roles.
//! - [`ingest`]: the alert topic into the database, offsets in the same transaction.
//! - [`store`]: the SQLite database (alerts, triage, notes, offsets, labels).
//! - [`http`] and [`pages`]: the web server and its server-rendered pages; live updates by
//!   server-sent events; `assets/` holds the only CSS and JavaScript (no CDN, no network).
//! - [`auth`]: the user header, roles and CSRF tokens.
//! - [`audit`]: the append-only JSONL trail.
//! - [`retention`]: the scheduled deletion of old alerts, notes and triage.
//! - [`metrics`]: every metric of the board.

pub mod audit;
pub mod auth;
pub mod config;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod pages;
pub mod retention;
pub mod store;

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::alert::Alert;
use crate::config::Config;
use crate::event::Millis;
use crate::kafka::{KafkaSettings, Role};

/// Why the board could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    /// The audit log cannot be written: the board must not serve without it.
    #[error("{0}")]
    Audit(#[from] audit::AuditError),
    #[error("cannot open the board database {path}: {message}")]
    Database { path: String, message: String },
    #[error("cannot listen on {addr}: {message}")]
    Http { addr: String, message: String },
    #[error("cannot create the disposition producer: {0}")]
    Producer(String),
    /// A Kafka client the configuration cannot make (a misspelt `[kafka]` property, say).
    #[error("Kafka {0}")]
    Kafka(String),
    /// The brokers refused the board's credentials or TLS setup (while running).
    #[error("authentication with the Kafka brokers failed: {0} (check [kafka] security.protocol, sasl.* and ssl.* settings)")]
    Auth(String),
}

impl BoardError {
    /// 2 for what the user must fix before starting (paths, address), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            BoardError::Producer(_) | BoardError::Auth(_) => 1,
            _ => 2,
        }
    }
}

/// Publishes decisions to `[board] disposition_topic`.
pub struct Disposition {
    producer: FutureProducer,
    topic: String,
}

impl Disposition {
    /// Sends `{subject, label, alert_id, detector, decided_at, config_version}` keyed by
    /// subject, in the background; the outcome is counted. The user is not in it: who
    /// decided is in the audit log, which stays inside the board.
    pub fn publish(
        &self,
        a: &Alert,
        label: &str,
        decided_at: Millis,
        metrics: metrics::BoardMetrics,
    ) {
        let payload = serde_json::json!({
            "subject": a.subject,
            "label": label,
            "alert_id": a.alert_id,
            "detector": a.detector,
            "decided_at": decided_at,
            "config_version": a.config_version,
        })
        .to_string();
        let (producer, topic, key) = (self.producer.clone(), self.topic.clone(), a.subject.clone());
        tokio::spawn(async move {
            let rec = FutureRecord::to(&topic).key(&key).payload(&payload);
            let result = match producer.send(rec, Duration::from_secs(30)).await {
                Ok(_) => "ok",
                Err((e, _)) => {
                    tracing::warn!(error = %e, "publishing a disposition failed");
                    "error"
                }
            };
            metrics.dispositions.with_label_values(&[result]).inc();
        });
    }
}

/// Runs the board with `cfg` (already validated) until `shutdown` completes.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<(), BoardError> {
    let b = cfg.board.clone();
    let audit = audit::Audit::open(std::path::Path::new(&b.audit_log))?;
    let db_path = PathBuf::from(&b.db_path);
    let db_err = |e: store::StoreError| BoardError::Database {
        path: b.db_path.clone(),
        message: e.to_string(),
    };
    let store = store::Store::open(&db_path).map_err(db_err)?;
    let listener = tokio::net::TcpListener::bind(&b.http_addr)
        .await
        .map_err(|e| BoardError::Http {
            addr: b.http_addr.clone(),
            message: e.to_string(),
        })?;
    let kafka = KafkaSettings::new(cfg.service.brokers.clone(), cfg.kafka.clone());
    // Made once here, as ingest makes it: a property librdkafka refuses stops the start with
    // one line (values masked), rather than ingest retrying it for ever.
    ingest::consumer_config(&kafka, &b.group_id)
        .create::<rdkafka::consumer::BaseConsumer>()
        .map_err(|e| BoardError::Kafka(format!("consumer: {}", kafka.creation_message(&e))))?;
    let disposition = if b.disposition_topic.trim().is_empty() {
        None
    } else {
        let producer: FutureProducer = kafka
            .client_config(Role::Producer)
            .create()
            .map_err(|e| BoardError::Kafka(format!("producer: {}", kafka.creation_message(&e))))?;
        Some(Disposition {
            producer,
            topic: b.disposition_topic.clone(),
        })
    };
    let metrics = metrics::BoardMetrics::new();
    if let (Ok(n), Ok(u)) = (store.count(), store.untriaged()) {
        metrics.stored.set(n as i64);
        metrics.untriaged.set(u as i64);
    }
    let (events, _) = tokio::sync::broadcast::channel(64);
    let ready = Arc::new(ingest::Ready::default());
    ready.connecting("connecting to the alert topic");
    let stop = Arc::new(AtomicBool::new(false));
    let app = Arc::new(http::App {
        cfg: b.clone(),
        store: Mutex::new(store),
        audit,
        metrics: metrics.clone(),
        events: events.clone(),
        csrf: auth::Csrf::default(),
        ready: ready.clone(),
        disposition,
    });

    let ingest = ingest::Ingest {
        kafka,
        topic: cfg.service.alert_topic.clone(),
        group_id: b.group_id.clone(),
        db_path: db_path.clone(),
        metrics: metrics.clone(),
        events,
        ready,
        stop: stop.clone(),
        retry_backoff_max: Duration::from_secs(cfg.service.retry_backoff_max_s),
        raw_guard: cfg.engine.raw_identifier_guard,
    };
    // Refused credentials end the ingest: the board then stops as on a signal, and says why.
    let (refused_tx, refused_rx) = tokio::sync::oneshot::channel();
    let ingest = std::thread::Builder::new()
        .name("board-ingest".into())
        .spawn(move || {
            if let Err(e) = ingest.run() {
                let _ = refused_tx.send(e);
            }
        })
        .map_err(|e| BoardError::Database {
            path: b.db_path.clone(),
            message: format!("cannot start the ingest thread: {e}"),
        })?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sweeper = tokio::spawn(retention::run(
        db_path,
        b.retention_days,
        Duration::from_secs(b.retention_interval_s),
        metrics,
        stop_rx.clone(),
    ));
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "board listening");
    }
    let mut server_stop = stop_rx;
    let server =
        axum::serve(listener, http::router(app.clone())).with_graceful_shutdown(async move {
            let _ = server_stop.wait_for(|s| *s).await;
        });
    let server = tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "board HTTP server failed");
        }
    });
    let refused = tokio::select! {
        _ = shutdown => None,
        Ok(e) = refused_rx => Some(e),
    };
    tracing::info!("board stopping");
    let _ = stop_tx.send(true);
    stop.store(true, Ordering::Relaxed);
    // Open event streams never end on their own; the server is given a moment, not forever.
    let _ = tokio::time::timeout(Duration::from_secs(3), server).await;
    let _ = sweeper.await;
    // The ingest thread stores what it holds and stops within a poll.
    let _ = tokio::task::spawn_blocking(move || ingest.join()).await;
    match refused {
        Some(ingest::AuthFailed(reason)) => Err(BoardError::Auth(reason)),
        None => Ok(()),
    }
}
