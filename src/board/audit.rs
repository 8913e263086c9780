//! The audit trail: an append-only JSONL file, one object per consultation or change, with
//! `ts`, `user`, `action`, `target` and `reason` when one was given (DPA 2018 s.62 logging).
//!
//! The file is opened for appending only and never rewritten; retention does not touch it.
//! A consultation that cannot be logged is not served: [`Audit::record`] fails and the page
//! answers 500, so there is never a view without its line.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

use crate::event::Millis;

/// What was done. The names are the `action` values in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Opened an alert's page.
    ViewAlert,
    /// Opened a line's (or handset's) page.
    ViewLine,
    /// Changed an alert's status.
    Status,
    /// Changed an alert's assignee.
    Assign,
    /// Added a note.
    Note,
    /// Exported a line's evidence (CSV or the printable page).
    Export,
    /// Downloaded `/labels.csv`.
    ExportLabels,
    /// A request without the user header (401).
    RefusedNoUser,
    /// A user not in `[board.users]` (403).
    RefusedUnknownUser,
    /// A user whose role does not allow the change or export asked for (403).
    RefusedRole,
    /// A change without a valid CSRF token, or from another site (403).
    RefusedCsrf,
}

/// One line of the audit log.
#[derive(Debug, Clone, Serialize)]
pub struct Record<'a> {
    /// RFC 3339 UTC, milliseconds.
    pub ts: String,
    /// As the proxy sent it; `null` when there was none.
    pub user: Option<&'a str>,
    pub action: Action,
    /// What was looked at or changed: `alert:<id>`, `line:<pseudonym>`, a path.
    pub target: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    /// The change made, for triage (`new -> confirmed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<&'a str>,
}

/// The audit log could not be opened or written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the audit log {path}: {message}")]
pub struct AuditError {
    pub path: PathBuf,
    pub message: String,
}

/// The open audit log.
pub struct Audit {
    path: PathBuf,
    file: Mutex<File>,
}

/// Milliseconds as RFC 3339 UTC.
pub fn rfc3339(ms: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
    )
}

impl Audit {
    /// Opens `path` for appending, creating it; fails if it cannot be written, so the board
    /// refuses to start rather than serve without a trail.
    pub fn open(path: &Path) -> Result<Audit, AuditError> {
        let err = |e: std::io::Error| AuditError {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(err)?;
        // The file must be on storage that takes writes now, not only at the first view.
        file.flush().map_err(err)?;
        file.sync_all().map_err(err)?;
        Ok(Audit {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    /// Appends one record. The line is written whole with one call, so concurrent writers
    /// of the same file (O_APPEND) never interleave within a line.
    pub fn record(&self, rec: &Record<'_>) -> Result<(), AuditError> {
        // A struct of strings and an enum serialises without fail.
        let mut line = serde_json::to_vec(rec).expect("audit record serialises");
        line.push(b'\n');
        // A poisoned lock only means another writer panicked mid-call; the file is fine.
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        f.write_all(&line)
            .and_then(|_| f.flush())
            .map_err(|e| AuditError {
                path: self.path.clone(),
                message: e.to_string(),
            })
    }

    /// Shorthand for the common case.
    pub fn log(
        &self,
        now: Millis,
        user: Option<&str>,
        action: Action,
        target: &str,
        reason: Option<&str>,
        detail: Option<&str>,
    ) -> Result<(), AuditError> {
        self.record(&Record {
            ts: rfc3339(now),
            user,
            action,
            target,
            reason,
            detail,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_appended_one_json_object_per_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.jsonl");
        std::fs::write(&p, "{\"earlier\":true}\n").unwrap();
        let a = Audit::open(&p).unwrap();
        a.log(0, Some("alice"), Action::ViewAlert, "alert:x", None, None)
            .unwrap();
        a.log(1, None, Action::RefusedNoUser, "/", None, None)
            .unwrap();
        a.log(
            2,
            Some("al"),
            Action::Export,
            "line:L",
            Some("case 7"),
            None,
        )
        .unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 4, "the earlier line is kept");
        assert_eq!(lines[1]["user"], "alice");
        assert_eq!(lines[1]["action"], "view_alert");
        assert_eq!(lines[1]["ts"], "1970-01-01T00:00:00.000Z");
        assert!(lines[2]["user"].is_null());
        assert_eq!(lines[3]["reason"], "case 7");
    }

    #[test]
    fn an_unwritable_log_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let e = Audit::open(&dir.path().join("missing-dir/audit.jsonl"))
            .err()
            .unwrap();
        assert!(e.to_string().contains("cannot write the audit log"));
        // A directory in its place (root may write anywhere, so permissions prove nothing).
        assert!(Audit::open(dir.path()).is_err());
    }
}
