//! Every metric of the board, defined in this one module. Label values come from fixed sets
//! (reason codes, actions, row kinds); no user name or pseudonym is ever a label.

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

use super::audit::Action;

/// Why a message on the alert topic was skipped.
pub const INVALID_REASONS: [&str; 4] = [
    "invalid_json",
    "not_an_alert",
    "bad_pseudonym",
    "raw_identifier",
];
/// What retention deletes.
pub const SWEPT_KINDS: [&str; 3] = ["alert", "note", "triage"];
/// Refusals by HTTP status.
pub const REFUSALS: [&str; 4] = ["no_user", "unknown_user", "role", "csrf"];

/// The board's metrics and their registry.
#[derive(Clone)]
pub struct BoardMetrics {
    registry: Registry,
    pub ingested: IntCounter,
    pub duplicates: IntCounter,
    pub invalid: IntCounterVec,
    pub ingest_errors: IntCounter,
    pub stored: IntGauge,
    pub untriaged: IntGauge,
    pub live_streams: IntGauge,
    pub triage: IntCounterVec,
    pub refused: IntCounterVec,
    pub exports: IntCounter,
    pub swept: IntCounterVec,
    pub dispositions: IntCounterVec,
}

// Registering freshly built metrics in a new registry fails only on a duplicate or malformed
// name, which are constants here; a unit test builds them to prove it.
const STATIC_OK: &str = "static metric definitions are valid";

impl BoardMetrics {
    pub fn new() -> BoardMetrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect(STATIC_OK);
            registry.register(Box::new(c.clone())).expect(STATIC_OK);
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect(STATIC_OK);
            registry.register(Box::new(g.clone())).expect(STATIC_OK);
            g
        };
        let vec = |name: &str, help: &str, label: &str, values: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect(STATIC_OK);
            registry.register(Box::new(c.clone())).expect(STATIC_OK);
            for v in values {
                c.with_label_values(&[v]);
            }
            c
        };
        BoardMetrics {
            ingested: counter(
                "linewatch_board_alerts_ingested_total",
                "Alerts read from the alert topic and stored",
            ),
            duplicates: counter(
                "linewatch_board_alerts_duplicate_total",
                "Alerts read again with an alert_id already stored (not stored twice)",
            ),
            invalid: vec(
                "linewatch_board_invalid_messages_total",
                "Messages on the alert topic that are not valid alerts, skipped",
                "reason",
                &INVALID_REASONS,
            ),
            ingest_errors: counter(
                "linewatch_board_ingest_errors_total",
                "Kafka or database errors while ingesting (retried)",
            ),
            stored: gauge(
                "linewatch_board_alerts_stored",
                "Alerts in the board's database",
            ),
            untriaged: gauge(
                "linewatch_board_alerts_untriaged",
                "Stored alerts with status new",
            ),
            live_streams: gauge(
                "linewatch_board_live_streams",
                "Live-update streams open now: one per queue page shown in a browser tab \
                 (a hidden tab closes its own)",
            ),
            triage: vec(
                "linewatch_board_triage_changes_total",
                "Triage changes by kind",
                "action",
                &["status", "assign", "note"],
            ),
            refused: vec(
                "linewatch_board_requests_refused_total",
                "Requests refused: no user header (401), unknown user, role or CSRF (403)",
                "reason",
                &REFUSALS,
            ),
            exports: counter(
                "linewatch_board_exports_total",
                "Evidence and label exports",
            ),
            swept: vec(
                "linewatch_board_retention_deleted_total",
                "Rows deleted by retention",
                "kind",
                &SWEPT_KINDS,
            ),
            dispositions: vec(
                "linewatch_board_dispositions_published_total",
                "Decisions published to the disposition topic",
                "result",
                &["ok", "error"],
            ),
            registry,
        }
    }

    /// Counts a triage change.
    pub fn triage_action(&self, a: Action) {
        let label = match a {
            Action::Status => "status",
            Action::Assign => "assign",
            _ => "note",
        };
        self.triage.with_label_values(&[label]).inc();
    }

    /// Prometheus text.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding gathered families into a Vec cannot fail.
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("metrics encode");
        String::from_utf8_lossy(&buf).into_owned()
    }
}

impl Default for BoardMetrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn metrics_register_and_render_with_zeros() {
        let m = super::BoardMetrics::new();
        let text = m.render();
        assert!(text.contains("linewatch_board_invalid_messages_total{reason=\"invalid_json\"} 0"));
        assert!(text.contains("linewatch_board_retention_deleted_total{kind=\"alert\"} 0"));
        assert!(text.contains("linewatch_board_live_streams 0"));
    }
}
