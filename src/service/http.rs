//! The HTTP admin server: `/metrics` (Prometheus text), `/healthz` (the process serves) and
//! `/readyz` (the group has assigned partitions to us; the body says what is awaited if not).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::metrics::Metrics;
use super::{ServiceError, Status};

#[derive(Clone)]
struct Admin {
    metrics: Metrics,
    status: Arc<Status>,
}

/// Binds `addr`; the returned listener's local address is the real one (port 0 picks one).
pub async fn bind(addr: &str) -> Result<TcpListener, ServiceError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| ServiceError::Http {
            addr: addr.to_string(),
            message: e.to_string(),
        })
}

/// Serves until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    status: Arc<Status>,
    mut stop: watch::Receiver<bool>,
) {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(Admin { metrics, status });
    let shutdown = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, addr = ?addr, "admin HTTP server failed");
    }
}

async fn metrics_text(State(a): State<Admin>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        a.metrics.render(),
    )
}

async fn readyz(State(a): State<Admin>) -> impl IntoResponse {
    let (ready, detail) = a.status.get();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, format!("{detail}\n"))
}
