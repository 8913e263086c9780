//! The board's database: alerts, triage, notes and the consumed offsets, in one SQLite file.
//!
//! Alerts and the offsets they were read at are written in one transaction, so after a
//! crash or restart the board resumes exactly after the last alert it stored: none is lost
//! and none is stored twice. `alert_id` is the primary key as well, so an alert the service
//! published twice (at-least-once delivery) is one row.
//!
//! Decisions live on the alert (`decision`, `decided_at`) and survive closing it, so
//! `/labels.csv` is a query, not a second copy to keep in step.

use std::fmt::Write as _;

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use crate::alert::{Alert, SubjectKind};
use crate::event::Millis;

/// Where an alert is in its triage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    New,
    UnderReview,
    Confirmed,
    FalsePositive,
    Closed,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Status::New,
        Status::UnderReview,
        Status::Confirmed,
        Status::FalsePositive,
        Status::Closed,
    ];

    /// The stored and URL form.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::New => "new",
            Status::UnderReview => "under_review",
            Status::Confirmed => "confirmed",
            Status::FalsePositive => "false_positive",
            Status::Closed => "closed",
        }
    }

    /// The words on the page.
    pub fn label(self) -> &'static str {
        match self {
            Status::New => "New",
            Status::UnderReview => "Under review",
            Status::Confirmed => "Confirmed deal line",
            Status::FalsePositive => "False positive",
            Status::Closed => "Closed",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// The label `/labels.csv` gives a subject decided this way (what `tune --labels` reads).
    pub fn decision_label(self) -> Option<&'static str> {
        match self {
            Status::Confirmed => Some(crate::eval::DEAL_LINE),
            Status::FalsePositive => Some(LOOKALIKE_TRIAGED),
            _ => None,
        }
    }
}

/// Label of a subject an analyst called a false positive: a look-alike to `tune`.
pub const LOOKALIKE_TRIAGED: &str = "lookalike_triaged";

/// A store failure (SQLite's own message; never holds alert contents).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("board database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("no alert with that id")]
    NotFound,
    #[error("an alert cannot go back to new once it has been triaged")]
    BackToNew,
}

/// One consumed message, ready to store: its position and the alert it held, if valid.
#[derive(Debug, Clone)]
pub struct Consumed {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub alert: Option<Alert>,
}

/// What one ingest transaction did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Ingested {
    /// New alerts stored.
    pub inserted: u64,
    /// Alerts already stored (the same `alert_id` published again).
    pub duplicate: u64,
}

/// Queue order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sort {
    /// Strongest first, newest first among equal scores.
    #[default]
    Score,
    /// Newest (event time) first.
    Newest,
}

/// Queue filters; `None` means any.
#[derive(Debug, Clone, Default)]
pub struct QueueFilter {
    pub detector: Option<String>,
    pub min_score: Option<f64>,
    pub status: Option<Status>,
    /// Only alerts whose event time is at or after this.
    pub since_ms: Option<Millis>,
    pub sort: Sort,
    pub limit: u32,
    /// Rows skipped before the first one returned (`?page=n` starts at `(n - 1) × limit`;
    /// links the board made before it paged by cursor).
    pub offset: u64,
    /// The rows just after (or just before) this one in the queue's order, rather than by
    /// `offset`: the queue's `next` and `previous` links. A page by position slips when the
    /// rows above it change (an alert triaged off a `status = new` queue moves every later
    /// one up, and the next page then starts one row late, skipping one); a page by cursor
    /// starts at the row where the last one ended, whatever changed above it.
    pub cursor: Option<(Towards, Cursor)>,
}

/// Which side of a [`Cursor`] a page lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Towards {
    /// The rows after it (the next page).
    After,
    /// The rows before it, the nearest last (the previous page).
    Before,
}

/// A row's place in the queue's order: its score, event time and alert id (the order's
/// keys, the id breaking ties).
#[derive(Debug, Clone, PartialEq)]
pub struct Cursor {
    pub score: f64,
    pub event_time: Millis,
    pub alert_id: String,
}

impl Cursor {
    pub fn of(r: &Row) -> Cursor {
        Cursor {
            score: r.score,
            event_time: r.event_time,
            alert_id: r.alert_id.clone(),
        }
    }

    /// `score_time_id`, the score as Rust writes an `f64` (it reads back to the same value).
    pub fn encode(&self) -> String {
        format!("{}_{}_{}", self.score, self.event_time, self.alert_id)
    }

    /// What [`Cursor::encode`] wrote; `None` for anything else.
    pub fn parse(s: &str) -> Option<Cursor> {
        let mut it = s.splitn(3, '_');
        let score: f64 = it.next()?.parse().ok()?;
        let event_time = it.next()?.parse().ok()?;
        let alert_id = it.next()?.to_string();
        (score.is_finite() && !alert_id.is_empty()).then_some(Cursor {
            score,
            event_time,
            alert_id,
        })
    }
}

/// One queue row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub alert_id: String,
    pub detector: String,
    pub subject: String,
    pub subject_kind: String,
    pub score: f64,
    pub event_time: Millis,
    pub status: Status,
    pub assignee: Option<String>,
}

/// An alert with its triage state.
#[derive(Debug, Clone)]
pub struct Stored {
    pub alert: Alert,
    pub status: Status,
    pub assignee: Option<String>,
    pub decided_at: Option<Millis>,
}

/// One change in an alert's triage history, or one note.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub ts: Millis,
    pub user: String,
    /// `status`, `assignee` or `note`.
    pub field: String,
    pub old: Option<String>,
    pub new: String,
}

/// A triage request: each part that is `Some` is applied.
#[derive(Debug, Clone, Default)]
pub struct Change {
    pub status: Option<Status>,
    /// `Some("")` clears the assignee.
    pub assignee: Option<String>,
    pub note: Option<String>,
}

/// Rows removed by one retention sweep.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub alerts: u64,
    pub notes: u64,
    pub triage: u64,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS alerts (
    alert_id TEXT PRIMARY KEY,
    detector TEXT NOT NULL,
    subject TEXT NOT NULL,
    subject_kind TEXT NOT NULL,
    score REAL NOT NULL,
    event_time INTEGER NOT NULL,
    detected_at INTEGER NOT NULL,
    body TEXT NOT NULL,
    ingested_at INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'new',
    assignee TEXT,
    decision TEXT,
    decided_at INTEGER
);
-- The queue's two orders, alone and under its two equality filters, so that a page reads
-- its 200 rows off an index instead of sorting 100,000 (measured: benches/board_e2e.sh).
CREATE INDEX IF NOT EXISTS alerts_by_score ON alerts (score DESC, event_time DESC);
CREATE INDEX IF NOT EXISTS alerts_by_time ON alerts (event_time DESC, score DESC);
CREATE INDEX IF NOT EXISTS alerts_status_score ON alerts (status, score DESC, event_time DESC);
CREATE INDEX IF NOT EXISTS alerts_status_time ON alerts (status, event_time DESC, score DESC);
CREATE INDEX IF NOT EXISTS alerts_detector_score ON alerts (detector, score DESC, event_time DESC);
CREATE INDEX IF NOT EXISTS alerts_detector_time ON alerts (detector, event_time DESC, score DESC);
CREATE INDEX IF NOT EXISTS alerts_by_subject ON alerts (subject);
CREATE INDEX IF NOT EXISTS alerts_by_detected ON alerts (detected_at);
CREATE INDEX IF NOT EXISTS alerts_decided ON alerts (subject, decided_at) WHERE decision IS NOT NULL;
-- Identities an alert names besides its subject: `related`, and the lines of a churning
-- handset, so a line's page finds the handsets and handovers it appears in.
CREATE TABLE IF NOT EXISTS mentions (
    alert_id TEXT NOT NULL,
    ident TEXT NOT NULL,
    PRIMARY KEY (alert_id, ident)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS mentions_by_ident ON mentions (ident);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY,
    alert_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    user TEXT NOT NULL,
    field TEXT NOT NULL,
    old TEXT,
    new TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_by_alert ON history (alert_id, ts);
CREATE INDEX IF NOT EXISTS history_by_ts ON history (ts);
-- Detector names seen, for the queue's filter: a DISTINCT over the alerts reads every row.
CREATE TABLE IF NOT EXISTS detectors (name TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS offsets (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
);
";

/// An open board database. Each thread that writes opens its own (SQLite serialises them).
pub struct Store {
    conn: Connection,
}

fn kind_str(k: SubjectKind) -> &'static str {
    match k {
        SubjectKind::Line => "line",
        SubjectKind::Handset => "handset",
    }
}

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open(path)?;
        // WAL lets pages read while ingest writes; NORMAL keeps each transaction atomic
        // across a crash of the process (a power cut may drop the last ones, alerts and
        // offsets together, which are then read again: still no loss, no repeat).
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Store { conn })
    }

    /// Where to resume reading `topic`: partition → next offset.
    pub fn offsets(&self, topic: &str) -> Result<Vec<(i32, i64)>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT partition, next_offset FROM offsets WHERE topic = ?1")?;
        let rows = st.query_map([topic], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Stores a batch of consumed messages and moves each partition's offset past them, in
    /// one transaction.
    pub fn ingest(&mut self, batch: &[Consumed], now: Millis) -> Result<Ingested, StoreError> {
        let tx = self.conn.transaction()?;
        let mut out = Ingested::default();
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO alerts (alert_id, detector, subject, subject_kind, score,
                 event_time, detected_at, body, ingested_at) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9)",
            )?;
            let mut detector =
                tx.prepare_cached("INSERT OR IGNORE INTO detectors (name) VALUES (?1)")?;
            let mut mention = tx.prepare_cached(
                "INSERT OR IGNORE INTO mentions (alert_id, ident) VALUES (?1, ?2)",
            )?;
            // The offset past the last message consumed, in the order consumed: not the
            // highest ever, so that after the topic was recreated (its offsets start again
            // at 0, and the consumer is reset to its start) the stored offset follows the
            // new topic; kept at the highest, a restart resumed far into the new topic and
            // every alert before that was never read.
            let mut offset = tx.prepare_cached(
                "INSERT INTO offsets (topic, partition, next_offset) VALUES (?1, ?2, ?3)
                 ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
            )?;
            for c in batch {
                offset.execute(params![c.topic, c.partition, c.offset + 1])?;
                let Some(a) = &c.alert else { continue };
                // Serialising an Alert (plain fields, a JSON map) cannot fail.
                let body = serde_json::to_string(a).expect("alert serialises");
                let n = insert.execute(params![
                    a.alert_id,
                    a.detector,
                    a.subject,
                    kind_str(a.subject_kind),
                    a.score,
                    a.event_time,
                    a.detected_at,
                    body,
                    now
                ])?;
                if n == 0 {
                    out.duplicate += 1;
                    continue;
                }
                out.inserted += 1;
                detector.execute([&a.detector])?;
                for ident in mentioned(a) {
                    if ident != a.subject {
                        mention.execute(params![a.alert_id, ident])?;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// The queue: filtered, ordered, at most `limit` rows from the `offset`th on, or after
    /// (before) the cursor.
    pub fn queue(&self, f: &QueueFilter) -> Result<Vec<Row>, StoreError> {
        let (mut sql, mut args) = Self::queue_where(
            "SELECT alert_id, detector, subject, subject_kind, score, event_time, status, assignee
             FROM alerts WHERE 1=1",
            f,
        );
        let before = matches!(f.cursor, Some((Towards::Before, _)));
        if let Some((towards, c)) = &f.cursor {
            Self::beyond(&mut sql, &mut args, f.sort, *towards, c);
        }
        // The rows before a cursor are read nearest first (the order reversed), then put
        // back in the queue's order.
        sql.push_str(match (f.sort, before) {
            (Sort::Score, false) => " ORDER BY score DESC, event_time DESC, alert_id",
            (Sort::Newest, false) => " ORDER BY event_time DESC, score DESC, alert_id",
            (Sort::Score, true) => " ORDER BY score, event_time, alert_id DESC",
            (Sort::Newest, true) => " ORDER BY event_time, score, alert_id DESC",
        });
        sql.push_str(" LIMIT ? OFFSET ?");
        args.push(i64::from(f.limit).into());
        let offset = if f.cursor.is_some() { 0 } else { f.offset };
        args.push(i64::try_from(offset).unwrap_or(i64::MAX).into());
        let mut st = self.conn.prepare_cached(&sql)?;
        let rows = st.query_map(rusqlite::params_from_iter(args), row)?;
        let mut rows: Vec<Row> = rows.collect::<Result<_, _>>()?;
        if before {
            rows.reverse();
        }
        Ok(rows)
    }

    /// How many rows the queue's filters put before `c` in its order: the position (from
    /// 0) of the row at `c`, for the line under the table.
    pub fn queue_position(&self, f: &QueueFilter, c: &Cursor) -> Result<u64, StoreError> {
        let (mut sql, mut args) = Self::queue_where("SELECT count(*) FROM alerts WHERE 1=1", f);
        Self::beyond(&mut sql, &mut args, f.sort, Towards::Before, c);
        let mut st = self.conn.prepare_cached(&sql)?;
        let n: i64 = st.query_row(rusqlite::params_from_iter(args), |r| r.get(0))?;
        Ok(n.max(0) as u64)
    }

    /// The condition "after `c`" or "before `c`" in the queue's order `sort`.
    fn beyond(
        sql: &mut String,
        args: &mut Vec<rusqlite::types::Value>,
        sort: Sort,
        towards: Towards,
        c: &Cursor,
    ) {
        // After: a lower first key, or the same and a lower second, or both the same and a
        // higher id (the id ascends); before, the other way round.
        let (lt, gt) = match towards {
            Towards::After => ("<", ">"),
            Towards::Before => (">", "<"),
        };
        let (k1, k2) = match sort {
            Sort::Score => ("score", "event_time"),
            Sort::Newest => ("event_time", "score"),
        };
        let _ = write!(
            sql,
            " AND ({k1} {lt} ? OR ({k1} = ? AND ({k2} {lt} ? OR ({k2} = ? AND alert_id {gt} ?))))"
        );
        let (v1, v2): (rusqlite::types::Value, rusqlite::types::Value) = match sort {
            Sort::Score => (c.score.into(), c.event_time.into()),
            Sort::Newest => (c.event_time.into(), c.score.into()),
        };
        args.extend([v1.clone(), v1, v2.clone(), v2, c.alert_id.clone().into()]);
    }

    /// How many alerts the queue's filters match, on every page.
    pub fn queue_count(&self, f: &QueueFilter) -> Result<u64, StoreError> {
        let (sql, args) = Self::queue_where("SELECT count(*) FROM alerts WHERE 1=1", f);
        let mut st = self.conn.prepare_cached(&sql)?;
        let n: i64 = st.query_row(rusqlite::params_from_iter(args), |r| r.get(0))?;
        Ok(n.max(0) as u64)
    }

    /// `head` with the filters' conditions, and their arguments.
    fn queue_where(head: &str, f: &QueueFilter) -> (String, Vec<rusqlite::types::Value>) {
        let mut sql = String::from(head);
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        if let Some(d) = &f.detector {
            sql.push_str(" AND detector = ?");
            args.push(d.clone().into());
        }
        if let Some(s) = f.min_score {
            sql.push_str(" AND score >= ?");
            args.push(s.into());
        }
        if let Some(s) = f.status {
            sql.push_str(" AND status = ?");
            args.push(s.as_str().to_string().into());
        }
        if let Some(t) = f.since_ms {
            sql.push_str(" AND event_time >= ?");
            args.push(t.into());
        }
        (sql, args)
    }

    /// Alerts nobody has looked at yet.
    pub fn untriaged(&self) -> Result<u64, StoreError> {
        let n: i64 = self.conn.query_row(
            "SELECT count(*) FROM alerts WHERE status = 'new'",
            [],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    /// Every alert stored.
    pub fn count(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM alerts", [], |r| r.get(0))?;
        Ok(n as u64)
    }

    /// Detector names present, for the queue's filter.
    pub fn detectors(&self) -> Result<Vec<String>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT name FROM detectors ORDER BY name")?;
        let rows = st.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One alert with its triage state.
    pub fn get(&self, alert_id: &str) -> Result<Option<Stored>, StoreError> {
        let r = self
            .conn
            .query_row(
                "SELECT body, status, assignee, decided_at FROM alerts WHERE alert_id = ?1",
                [alert_id],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<String>>(2)?,
                        r.get::<_, Option<i64>>(3)?,
                    ))
                },
            )
            .optional()?;
        let Some((body, status, assignee, decided_at)) = r else {
            return Ok(None);
        };
        Ok(Some(Stored {
            alert: parse_body(&body)?,
            status: Status::parse(&status).unwrap_or(Status::New),
            assignee,
            decided_at,
        }))
    }

    /// Every alert whose subject is `ident` or that names it, strongest and newest first.
    pub fn about(&self, ident: &str, limit: u32) -> Result<Vec<Stored>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT body, status, assignee, decided_at FROM alerts
             WHERE subject = ?1 OR alert_id IN (SELECT alert_id FROM mentions WHERE ident = ?1)
             ORDER BY event_time DESC, score DESC LIMIT ?2",
        )?;
        let rows = st.query_map(params![ident, limit], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Option<i64>>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for x in rows {
            let (body, status, assignee, decided_at) = x?;
            out.push(Stored {
                alert: parse_body(&body)?,
                status: Status::parse(&status).unwrap_or(Status::New),
                assignee,
                decided_at,
            });
        }
        Ok(out)
    }

    /// Triage history and notes of an alert, oldest first.
    pub fn history(&self, alert_id: &str) -> Result<Vec<Entry>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT ts, user, field, old, new FROM history WHERE alert_id = ?1 ORDER BY ts, id",
        )?;
        let rows = st.query_map([alert_id], |r| {
            Ok(Entry {
                ts: r.get(0)?,
                user: r.get(1)?,
                field: r.get(2)?,
                old: r.get(3)?,
                new: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Applies a triage change by `user` at `now`; returns what changed (nothing when the
    /// request repeats the current state).
    pub fn triage(
        &mut self,
        alert_id: &str,
        user: &str,
        change: &Change,
        now: Millis,
    ) -> Result<Vec<Entry>, StoreError> {
        let tx = self.conn.transaction()?;
        let cur: Option<(String, Option<String>)> = tx
            .query_row(
                "SELECT status, assignee FROM alerts WHERE alert_id = ?1",
                [alert_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((status, assignee)) = cur else {
            return Err(StoreError::NotFound);
        };
        let status = Status::parse(&status).unwrap_or(Status::New);
        let mut done = Vec::new();
        if let Some(new) = change.status.filter(|s| *s != status) {
            if new == Status::New {
                return Err(StoreError::BackToNew);
            }
            match new.decision_label() {
                Some(label) => tx.execute(
                    "UPDATE alerts SET status = ?2, decision = ?3, decided_at = ?4 WHERE alert_id = ?1",
                    params![alert_id, new.as_str(), label, now],
                )?,
                // Reopening withdraws the decision until a new one is made; closing keeps it.
                None if new == Status::UnderReview => tx.execute(
                    "UPDATE alerts SET status = ?2, decision = NULL, decided_at = NULL WHERE alert_id = ?1",
                    params![alert_id, new.as_str()],
                )?,
                None => tx.execute(
                    "UPDATE alerts SET status = ?2 WHERE alert_id = ?1",
                    params![alert_id, new.as_str()],
                )?,
            };
            done.push(Entry {
                ts: now,
                user: user.into(),
                field: "status".into(),
                old: Some(status.as_str().into()),
                new: new.as_str().into(),
            });
        }
        if let Some(a) = &change.assignee {
            let a = a.trim();
            if assignee.as_deref().unwrap_or("") != a {
                let value = (!a.is_empty()).then_some(a);
                tx.execute(
                    "UPDATE alerts SET assignee = ?2 WHERE alert_id = ?1",
                    params![alert_id, value],
                )?;
                done.push(Entry {
                    ts: now,
                    user: user.into(),
                    field: "assignee".into(),
                    old: assignee.clone(),
                    new: a.into(),
                });
            }
        }
        if let Some(n) = change
            .note
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())
        {
            done.push(Entry {
                ts: now,
                user: user.into(),
                field: "note".into(),
                old: None,
                new: n.into(),
            });
        }
        for e in &done {
            tx.execute(
                "INSERT INTO history (alert_id, ts, user, field, old, new) VALUES (?1,?2,?3,?4,?5,?6)",
                params![alert_id, e.ts, e.user, e.field, e.old, e.new],
            )?;
        }
        tx.commit()?;
        Ok(done)
    }

    /// `subject,label` for every decided subject: its latest decision.
    pub fn labels(&self) -> Result<Vec<(String, String)>, StoreError> {
        // SQLite takes the bare columns of an aggregate query from the row holding the max.
        let mut st = self.conn.prepare_cached(
            "SELECT subject, decision, max(decided_at) FROM alerts WHERE decision IS NOT NULL
             GROUP BY subject ORDER BY subject",
        )?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes alerts made before `cutoff` (with their mentions, notes and triage), and notes
    /// and triage entries older than it on the alerts that stay.
    pub fn sweep(&mut self, cutoff: Millis) -> Result<Swept, StoreError> {
        let tx = self.conn.transaction()?;
        let old = "SELECT alert_id FROM alerts WHERE detected_at < ?1";
        let notes = tx.execute(
            &format!(
                "DELETE FROM history WHERE field = 'note' AND (ts < ?1 OR alert_id IN ({old}))"
            ),
            [cutoff],
        )?;
        let triage = tx.execute(
            &format!("DELETE FROM history WHERE ts < ?1 OR alert_id IN ({old})"),
            [cutoff],
        )?;
        tx.execute(
            &format!("DELETE FROM mentions WHERE alert_id IN ({old})"),
            [cutoff],
        )?;
        let alerts = tx.execute("DELETE FROM alerts WHERE detected_at < ?1", [cutoff])?;
        tx.commit()?;
        Ok(Swept {
            alerts: alerts as u64,
            notes: notes as u64,
            triage: triage as u64,
        })
    }
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    let status: String = r.get(6)?;
    Ok(Row {
        alert_id: r.get(0)?,
        detector: r.get(1)?,
        subject: r.get(2)?,
        subject_kind: r.get(3)?,
        score: r.get(4)?,
        event_time: r.get(5)?,
        status: Status::parse(&status).unwrap_or(Status::New),
        assignee: r.get(7)?,
    })
}

fn parse_body(body: &str) -> Result<Alert, StoreError> {
    serde_json::from_str(body).map_err(|e| {
        StoreError::Sql(rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            Box::new(e),
        ))
    })
}

/// Identities an alert names: `related`, and the lines in a churning handset's evidence.
pub fn mentioned(a: &Alert) -> impl Iterator<Item = &str> {
    let lines = a
        .evidence
        .get("lines")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str());
    a.related.iter().map(String::as_str).chain(lines)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn alert(id: &str, detector: &str, subject: &str, score: f64, t: Millis) -> Alert {
        Alert {
            alert_id: id.into(),
            detector: detector.into(),
            subject: subject.into(),
            subject_kind: SubjectKind::Line,
            score,
            event_time: t,
            window_start: t - 3_600_000,
            window_end: t,
            related: vec![],
            evidence: crate::evidence! {"recipients" => 41, "min_recipients" => 30},
            detected_at: t,
            config_version: "abcd1234".into(),
        }
    }

    fn consumed(offset: i64, a: Option<Alert>) -> Consumed {
        Consumed {
            topic: "t".into(),
            partition: 0,
            offset,
            alert: a,
        }
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("b.db")).unwrap();
        (dir, s)
    }

    #[test]
    fn alerts_and_offsets_commit_together_and_duplicates_are_one_row() {
        let (_d, mut s) = store();
        let a = alert("a1", "bulk_sms", "L1", 0.5, 1_000);
        let got = s
            .ingest(
                &[
                    consumed(0, Some(a.clone())),
                    consumed(1, None),
                    consumed(2, Some(a)),
                ],
                5,
            )
            .unwrap();
        assert_eq!(
            got,
            Ingested {
                inserted: 1,
                duplicate: 1
            }
        );
        assert_eq!(s.offsets("t").unwrap(), vec![(0, 3)]);
        assert_eq!(s.count().unwrap(), 1);
        // The offset follows what was consumed last: a partition read from its start again
        // (the topic recreated, the consumer reset) moves it back with the new topic.
        s.ingest(&[consumed(0, None)], 6).unwrap();
        assert_eq!(s.offsets("t").unwrap(), vec![(0, 1)]);
    }

    #[test]
    fn queue_orders_by_score_then_time_and_filters() {
        let (_d, mut s) = store();
        let batch: Vec<_> = [
            alert("a", "bulk_sms", "L1", 0.5, 1_000),
            alert("b", "deal_line", "L2", 0.9, 500),
            alert("c", "bulk_sms", "L3", 0.5, 2_000),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, a)| consumed(i as i64, Some(a)))
        .collect();
        s.ingest(&batch, 0).unwrap();
        let ids = |f: &QueueFilter| -> Vec<String> {
            s.queue(f)
                .unwrap()
                .into_iter()
                .map(|r| r.alert_id)
                .collect()
        };
        let all = QueueFilter {
            limit: 10,
            ..Default::default()
        };
        assert_eq!(ids(&all), ["b", "c", "a"]);
        assert_eq!(s.detectors().unwrap(), ["bulk_sms", "deal_line"]);
        let newest = QueueFilter {
            sort: Sort::Newest,
            ..all.clone()
        };
        assert_eq!(ids(&newest), ["c", "a", "b"]);
        let bulk = QueueFilter {
            detector: Some("bulk_sms".into()),
            since_ms: Some(1_500),
            ..all.clone()
        };
        assert_eq!(ids(&bulk), ["c"]);
        let strong = QueueFilter {
            min_score: Some(0.6),
            ..all.clone()
        };
        assert_eq!(ids(&strong), ["b"]);
        assert_eq!(s.queue_count(&strong).unwrap(), 1);
        assert_eq!(s.queue_count(&bulk).unwrap(), 1);
        // Pages: every row once, in the queue's order, and the count of every page.
        let page = |offset| QueueFilter {
            limit: 2,
            offset,
            ..all.clone()
        };
        assert_eq!(ids(&page(0)), ["b", "c"]);
        assert_eq!(ids(&page(2)), ["a"]);
        assert!(ids(&page(4)).is_empty());
        assert_eq!(s.queue_count(&page(2)).unwrap(), 3);
        // By cursor, in both orders: after a row, before a row (nearest last, in the
        // queue's order), and the position of a row.
        for sort in [Sort::Score, Sort::Newest] {
            let f = QueueFilter {
                limit: 10,
                sort,
                ..Default::default()
            };
            let order = s.queue(&f).unwrap();
            let at = |towards, i: usize, limit| QueueFilter {
                limit,
                cursor: Some((towards, Cursor::of(&order[i]))),
                ..f.clone()
            };
            let want = |r: std::ops::Range<usize>| -> Vec<String> {
                order[r].iter().map(|x| x.alert_id.clone()).collect()
            };
            assert_eq!(ids(&at(Towards::After, 0, 2)), want(1..3));
            assert_eq!(ids(&at(Towards::After, 1, 2)), want(2..3));
            assert!(ids(&at(Towards::After, 2, 2)).is_empty());
            assert_eq!(ids(&at(Towards::Before, 2, 2)), want(0..2));
            assert_eq!(ids(&at(Towards::Before, 2, 1)), want(1..2));
            assert!(ids(&at(Towards::Before, 0, 2)).is_empty());
            for (i, r) in order.iter().enumerate() {
                assert_eq!(s.queue_position(&f, &Cursor::of(r)).unwrap(), i as u64);
            }
        }
        // Rows triaged off a queue of new alerts above the next page do not shift it: by
        // position the next page would start one late (skipping "a"), by cursor it starts
        // after the last row shown.
        let new = QueueFilter {
            limit: 2,
            status: Some(Status::New),
            ..all.clone()
        };
        let first = s.queue(&new).unwrap();
        assert_eq!(ids(&new), ["b", "c"]);
        let review = Change {
            status: Some(Status::UnderReview),
            ..Default::default()
        };
        s.triage("b", "alice", &review, 5).unwrap();
        let by_position = QueueFilter {
            offset: 2,
            ..new.clone()
        };
        assert!(ids_of(&s, &by_position).is_empty(), "a skipped, as before");
        let by_cursor = QueueFilter {
            cursor: Some((Towards::After, Cursor::of(&first[1]))),
            ..new.clone()
        };
        assert_eq!(ids_of(&s, &by_cursor), ["a"]);
        fn ids_of(s: &Store, f: &QueueFilter) -> Vec<String> {
            s.queue(f)
                .unwrap()
                .into_iter()
                .map(|r| r.alert_id)
                .collect()
        }
    }

    #[test]
    fn decisions_become_labels_and_survive_closing() {
        let (_d, mut s) = store();
        s.ingest(
            &[
                consumed(0, Some(alert("a", "deal_line", "L1", 0.9, 1))),
                consumed(1, Some(alert("b", "bulk_sms", "L2", 0.5, 1))),
            ],
            0,
        )
        .unwrap();
        let fp = Change {
            status: Some(Status::FalsePositive),
            ..Default::default()
        };
        let confirm = Change {
            status: Some(Status::Confirmed),
            assignee: Some("alice".into()),
            note: Some("seen before".into()),
        };
        s.triage("b", "alice", &fp, 10).unwrap();
        let done = s.triage("a", "alice", &confirm, 11).unwrap();
        assert_eq!(done.len(), 3);
        let close = Change {
            status: Some(Status::Closed),
            ..Default::default()
        };
        s.triage("a", "bob", &close, 12).unwrap();
        assert_eq!(
            s.labels().unwrap(),
            [
                ("L1".to_string(), "deal_line".to_string()),
                ("L2".to_string(), "lookalike_triaged".to_string())
            ]
        );
        assert_eq!(s.untriaged().unwrap(), 0);
        // Repeating the current state records nothing.
        assert!(s.triage("b", "alice", &fp, 13).unwrap().is_empty());
        assert!(matches!(
            s.triage(
                "b",
                "alice",
                &Change {
                    status: Some(Status::New),
                    ..Default::default()
                },
                14
            ),
            Err(StoreError::BackToNew)
        ));
        let h = s.history("a").unwrap();
        assert_eq!(
            h.iter()
                .map(|e| (e.field.as_str(), e.user.as_str()))
                .collect::<Vec<_>>(),
            [
                ("status", "alice"),
                ("assignee", "alice"),
                ("note", "alice"),
                ("status", "bob")
            ]
        );
    }

    #[test]
    fn sweep_deletes_old_alerts_with_their_triage_and_keeps_the_rest() {
        let (_d, mut s) = store();
        s.ingest(
            &[
                consumed(0, Some(alert("old", "bulk_sms", "L1", 0.5, 100))),
                consumed(1, Some(alert("new", "bulk_sms", "L2", 0.5, 1_000))),
            ],
            0,
        )
        .unwrap();
        let note = Change {
            note: Some("n".into()),
            ..Default::default()
        };
        s.triage("old", "a", &note, 150).unwrap();
        s.triage("new", "a", &note, 200).unwrap();
        s.triage("new", "a", &note, 1_200).unwrap();
        let swept = s.sweep(500).unwrap();
        assert_eq!(
            swept,
            Swept {
                alerts: 1,
                notes: 2,
                triage: 0
            }
        );
        assert!(s.get("old").unwrap().is_none());
        assert_eq!(s.history("new").unwrap().len(), 1);
        assert_eq!(
            s.offsets("t").unwrap(),
            vec![(0, 2)],
            "offsets are never swept"
        );
    }

    #[test]
    fn a_line_page_finds_alerts_that_name_the_line() {
        let (_d, mut s) = store();
        let mut handover = alert("h", "line_handover", "NEW", 0.8, 10);
        handover.related = vec!["OLD".into()];
        let mut churn = alert("c", "handset_churn", "IMEI1", 0.8, 20);
        churn.subject_kind = SubjectKind::Handset;
        churn.related = vec!["SIM1".into(), "SIM2".into()];
        churn.evidence = crate::evidence! {"sims" => 3, "min_sims" => 3, "lines" => ["OLD", "X"]};
        s.ingest(&[consumed(0, Some(handover)), consumed(1, Some(churn))], 0)
            .unwrap();
        let ids: Vec<_> = s
            .about("OLD", 10)
            .unwrap()
            .into_iter()
            .map(|x| x.alert.alert_id)
            .collect();
        assert_eq!(ids, ["c", "h"]);
    }
}
