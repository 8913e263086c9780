//! Retention: alerts, notes and triage older than `[board] retention_days` are deleted, at
//! start and then every `retention_interval_s`, and counted in
//! `linewatch_board_retention_deleted_total`. The audit log is never touched.

use std::path::PathBuf;
use std::time::Duration;

use super::metrics::BoardMetrics;
use super::store::{Store, Swept};
use crate::event::Millis;

/// The oldest time kept at `now`.
pub fn cutoff(now: Millis, retention_days: u32) -> Millis {
    now - i64::from(retention_days) * 86_400_000
}

/// One sweep through its own connection; the figures go to the metrics.
pub fn sweep_once(
    db: &std::path::Path,
    retention_days: u32,
    now: Millis,
    metrics: &BoardMetrics,
) -> Result<Swept, String> {
    let mut store = Store::open(db).map_err(|e| e.to_string())?;
    let swept = store
        .sweep(cutoff(now, retention_days))
        .map_err(|e| e.to_string())?;
    metrics
        .swept
        .with_label_values(&["alert"])
        .inc_by(swept.alerts);
    metrics
        .swept
        .with_label_values(&["note"])
        .inc_by(swept.notes);
    metrics
        .swept
        .with_label_values(&["triage"])
        .inc_by(swept.triage);
    if swept.alerts > 0 {
        metrics.stored.sub(swept.alerts as i64);
    }
    Ok(swept)
}

/// Sweeps now and every `every` until `stop` turns true.
pub async fn run(
    db: PathBuf,
    retention_days: u32,
    every: Duration,
    metrics: BoardMetrics,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let (db2, m) = (db.clone(), metrics.clone());
        let now = crate::board::http::now_ms();
        match tokio::task::spawn_blocking(move || sweep_once(&db2, retention_days, now, &m)).await {
            Ok(Ok(s)) => tracing::info!(
                alerts = s.alerts,
                notes = s.notes,
                triage = s.triage,
                "retention sweep"
            ),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "retention sweep failed; next one at the usual time")
            }
            Err(e) => tracing::warn!(error = %e, "retention sweep panicked"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::board::store::{tests::alert, Consumed};

    #[test]
    fn a_sweep_deletes_what_is_past_retention_and_counts_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("b.db");
        let now = 200 * 86_400_000;
        let mut s = Store::open(&db).unwrap();
        let c = |o, a| Consumed {
            topic: "t".into(),
            partition: 0,
            offset: o,
            alert: Some(a),
        };
        s.ingest(
            &[
                c(
                    0,
                    alert("old", "bulk_sms", "L1", 0.5, now - 91 * 86_400_000),
                ),
                c(
                    1,
                    alert("kept", "bulk_sms", "L2", 0.5, now - 89 * 86_400_000),
                ),
            ],
            now,
        )
        .unwrap();
        let m = BoardMetrics::new();
        let swept = sweep_once(&db, 90, now, &m).unwrap();
        assert_eq!(swept.alerts, 1);
        assert!(m
            .render()
            .contains("linewatch_board_retention_deleted_total{kind=\"alert\"} 1"));
        assert!(s.get("kept").unwrap().is_some());
        assert!(s.get("old").unwrap().is_none());
    }
}
