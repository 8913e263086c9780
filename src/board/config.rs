//! `[board]`: the operations-room board's settings (`linewatch board`).
//!
//! The board reads the alert topic named by `service.alert_topic` from `service.brokers`
//! (flags `--alert-topic`, `--brokers` override both), so one file describes the service and
//! the board that watches it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::Rules;

/// What a user of the board may do. Ordered: each role may do what the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sees the queue, alerts and lines; cannot triage or export.
    Viewer,
    /// Also triages (status, assignee, notes, decisions) and exports evidence and labels.
    Analyst,
    /// Everything an analyst may do; reserved for administration of the board.
    Admin,
}

impl Role {
    /// The role's name as written in `[board.users]`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Analyst => "analyst",
            Role::Admin => "admin",
        }
    }

    /// Whether this role may change triage and export evidence.
    pub fn may_act(self) -> bool {
        self >= Role::Analyst
    }
}

/// `[board]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BoardConfig {
    /// Address the board's web server listens on (pages, `/labels.csv`, `/metrics`,
    /// `/healthz`, `/readyz`). Flag `--http`, variable `LINEWATCH_BOARD_HTTP`.
    pub http_addr: String,
    /// SQLite database file holding alerts, triage, notes and the consumed offsets.
    /// Flag `--db`, variable `LINEWATCH_BOARD_DB`.
    pub db_path: String,
    /// Consumer group the board commits its progress under (for lag monitoring; the
    /// database's own offsets are what a restart resumes from).
    pub group_id: String,
    /// Request header carrying the user name, set by the authenticating reverse proxy.
    pub user_header: String,
    /// Append-only JSONL audit log: every page view of an alert or line, triage change,
    /// export and refused request. The board does not start if it cannot write it.
    pub audit_log: String,
    /// Alerts, notes and triage older than this many days are deleted.
    pub retention_days: u32,
    /// How often the retention sweep runs.
    pub retention_interval_s: u64,
    /// Kafka topic each decision (`deal_line` / `lookalike_triaged`) is published to;
    /// empty: none.
    pub disposition_topic: String,
    /// Most alerts the queue page lists at once (the newest and strongest first).
    pub queue_limit: u32,
    /// User name → role (`viewer`, `analyst`, `admin`). A user not listed is refused (403).
    pub users: BTreeMap<String, Role>,
}

impl Default for BoardConfig {
    fn default() -> Self {
        BoardConfig {
            http_addr: "127.0.0.1:9470".into(),
            db_path: "linewatch-board.db".into(),
            group_id: "linewatch-board".into(),
            user_header: "X-Forwarded-User".into(),
            audit_log: "linewatch-board-audit.jsonl".into(),
            retention_days: 90,
            retention_interval_s: 3_600,
            disposition_topic: String::new(),
            queue_limit: 200,
            users: BTreeMap::new(),
        }
    }
}

impl BoardConfig {
    /// The rules of `[board]`, added to the configuration's.
    pub fn check(&self, r: &mut Rules) {
        r.socket_addr("board.http_addr", &self.http_addr, "127.0.0.1:9470");
        for (key, v) in [
            ("board.db_path", &self.db_path),
            ("board.group_id", &self.group_id),
            ("board.audit_log", &self.audit_log),
        ] {
            r.non_empty(key, v);
        }
        r.check(
            "board.user_header",
            axum::http::HeaderName::from_bytes(self.user_header.as_bytes()).is_ok(),
            format_args!("{:?}", self.user_header),
            "a valid HTTP header name, e.g. \"X-Forwarded-User\"",
        );
        r.count(
            "board.retention_days",
            self.retention_days.into(),
            1,
            36_500,
        );
        r.seconds("board.retention_interval_s", self.retention_interval_s, 1);
        r.count("board.queue_limit", self.queue_limit.into(), 1, 10_000);
        if self
            .users
            .keys()
            .any(|u| u.is_empty() || u.chars().any(char::is_control))
        {
            r.push(
                "board.users",
                "board.users: a user name must be non-empty printable text".into(),
            );
        }
    }
}
