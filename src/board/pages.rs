//! Server-rendered pages. Everything a page shows is escaped here ([`esc`]); links are
//! relative (`root` is `""` on the queue, `"../"` one level down) so the board also works
//! behind a proxy that mounts it under a path.

use std::fmt::Write as _;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::audit::rfc3339;
use super::auth::User;
use super::ingest::Feed;
use super::store::{Cursor, Entry, QueueFilter, Row, Sort, Status, Stored, Towards};
use crate::alert::Alert;
use crate::event::Millis;

/// HTML-escapes text for element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes one path segment or query value (pseudonyms may hold `/`, `?`, `#`, `%`).
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Event time as the pages show it.
pub fn when(ms: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
    )
}

fn num(x: f64) -> String {
    format!("{}", (x * 1000.0).round() / 1000.0)
}

/// A whole page: security headers, no caching (pages name pseudonyms).
pub fn page(title: &str, root: &str, user: &User, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title} · linewatch board</title><link rel=\"stylesheet\" href=\"{root}static/board.css\"></head>\
<body><header class=\"top\"><a class=\"brand\" href=\"{root}\">linewatch board</a>\
<span class=\"who\">{user} · {role}</span></header><main>{body}</main></body></html>",
        title = esc(title),
        user = esc(&user.name),
        role = user.role.as_str(),
    );
    html_response(StatusCode::OK, html)
}

pub fn html_response(code: StatusCode, html: String) -> Response {
    (
        code,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            // URLs name pseudonyms: never send them on to another site.
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        html,
    )
        .into_response()
}

/// A refusal or error: a short page with one sentence.
pub fn failure(code: StatusCode, message: &str) -> Response {
    html_response(
        code,
        format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{c}</title></head>\
<body><h1>{c}</h1><p>{m}</p></body></html>",
            c = code,
            m = esc(message)
        ),
    )
}

fn status_chip(s: Status) -> String {
    format!(
        "<span class=\"chip st-{}\">{}</span>",
        s.as_str(),
        s.label()
    )
}

fn score_bar(score: f64) -> String {
    let level = if score >= 0.7 {
        "hi"
    } else if score >= 0.4 {
        "mid"
    } else {
        "lo"
    };
    format!("<span class=\"score {level}\">{}</span>", num(score))
}

/// The `<tr>`s of the queue table (also sent alone for live updates).
pub fn queue_rows(rows: &[Row], root: &str) -> String {
    let mut s = String::with_capacity(rows.len() * 400);
    if rows.is_empty() {
        s.push_str("<tr><td colspan=\"7\" class=\"empty\">No alerts match.</td></tr>");
    }
    for r in rows {
        let _ = write!(
            s,
            "<tr data-alert=\"{id}\"><td>{score}</td><td><span class=\"det\">{det}</span></td>\
<td><a class=\"subject\" href=\"{root}alert/{idu}\">{subj}</a> <span class=\"kind\">{kind}</span></td>\
<td>{time}</td><td>{status}</td><td>{assignee}</td><td><a href=\"{root}line/{subju}\">all on it</a></td></tr>",
            id = esc(&r.alert_id),
            score = score_bar(r.score),
            det = esc(&r.detector),
            idu = seg(&r.alert_id),
            subj = esc(&r.subject),
            kind = esc(&r.subject_kind),
            time = when(r.event_time),
            status = status_chip(r.status),
            assignee = esc(r.assignee.as_deref().unwrap_or("")),
            subju = seg(&r.subject),
        );
    }
    s
}

/// The queue's filter values as given in the URL.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct QueueParams {
    pub detector: Option<String>,
    pub min_score: Option<String>,
    pub status: Option<String>,
    /// Only the last this many hours (event time).
    pub hours: Option<String>,
    /// `score` (default) or `newest`.
    pub sort: Option<String>,
    /// The page, from 1 (the default): `limit` rows each. The pager's links use `after`
    /// and `before` instead; a link with `page` still works.
    pub page: Option<String>,
    /// The rows after this one ([`Cursor::encode`]): the next page.
    pub after: Option<String>,
    /// The rows before this one, as many as a page holds: the previous page.
    pub before: Option<String>,
}

impl QueueParams {
    /// The store filter; blank or unparsable values mean "any".
    pub fn filter(&self, now: Millis, limit: u32) -> QueueFilter {
        let some = |o: &Option<String>| {
            o.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        QueueFilter {
            detector: some(&self.detector),
            min_score: some(&self.min_score).and_then(|s| s.parse().ok()),
            status: some(&self.status).and_then(|s| Status::parse(&s)),
            since_ms: some(&self.hours)
                .and_then(|s| s.parse::<f64>().ok())
                .filter(|h| *h > 0.0)
                .map(|h| now - (h * 3_600_000.0) as i64),
            sort: if some(&self.sort).as_deref() == Some("newest") {
                Sort::Newest
            } else {
                Sort::Score
            },
            limit,
            offset: (self.page_number() - 1).saturating_mul(u64::from(limit)),
            cursor: self.cursor(),
        }
    }

    /// The page's cursor, if its link has one (an unreadable one is none: the first page).
    pub fn cursor(&self) -> Option<(Towards, Cursor)> {
        let read = |o: &Option<String>| o.as_deref().and_then(|c| Cursor::parse(c.trim()));
        read(&self.after)
            .map(|c| (Towards::After, c))
            .or_else(|| read(&self.before).map(|c| (Towards::Before, c)))
    }

    /// The page asked for, from 1; blank, unparsable or 0 is the first.
    pub fn page_number(&self) -> u64 {
        self.page
            .as_deref()
            .and_then(|p| p.trim().parse::<u64>().ok())
            .unwrap_or(1)
            .clamp(1, MAX_PAGE)
    }

    /// This page's query string with page `n` instead (`?` included): the filters kept.
    fn with_page(&self, n: u64) -> String {
        self.with(&format!("page={n}"))
    }

    /// This page's filters (`?` included) and then `last`, already escaped, if any.
    fn with(&self, last: &str) -> String {
        let mut q = String::from("?");
        let fields = [
            ("detector", &self.detector),
            ("min_score", &self.min_score),
            ("status", &self.status),
            ("hours", &self.hours),
            ("sort", &self.sort),
        ];
        for (k, v) in fields {
            if let Some(v) = v.as_deref().filter(|v| !v.trim().is_empty()) {
                let _ = write!(q, "{k}={}&", seg(v));
            }
        }
        q.push_str(last);
        if q.ends_with('&') {
            q.pop();
        }
        q
    }
}

/// Pages past this are the last one asked for (the offset stays far inside SQLite's range).
const MAX_PAGE: u64 = 1_000_000;

/// The line under the queue: which rows of how many (`first`: how many come before the
/// first shown), and links to the pages either side, the filters kept: the next page the
/// rows after the last shown, the previous the rows before the first (a page by cursor, so
/// rows triaged away or arriving above it do not shift it). Served with the page and with
/// each live update of its rows.
pub fn pager(p: &QueueParams, rows: &[Row], first: u64, total: u64, limit: u32) -> String {
    let shown = rows.len();
    let mut s = String::new();
    if shown == 0 {
        let _ = write!(
            s,
            "{total} alert{} match{}.",
            if total == 1 { "" } else { "s" },
            if total == 1 { "es" } else { "" }
        );
    } else if shown == 1 {
        let _ = write!(s, "Alert {} of {total}, {limit} a page.", first + 1);
    } else {
        let _ = write!(
            s,
            "Alerts {}\u{2013}{} of {total}, {limit} a page.",
            first + 1,
            first + shown as u64
        );
    }
    let back = match rows.first() {
        // The first page there is, without a cursor.
        Some(_) if first <= u64::from(limit) && first > 0 => Some(p.with("")),
        Some(r) if first > 0 => Some(p.with(&format!("before={}", seg(&Cursor::of(r).encode())))),
        Some(_) => None,
        // Past the end (alerts closed or filtered away meanwhile, or typed in): to the last
        // page there is.
        None if total > 0 && (p.page_number() > 1 || p.cursor().is_some()) => {
            Some(p.with_page(total.div_ceil(u64::from(limit)).max(1)))
        }
        None => None,
    };
    if let Some(back) = back {
        let _ = write!(
            s,
            " <a rel=\"prev\" href=\"{}\">\u{2190} previous</a>",
            esc(&back)
        );
    }
    if let Some(last) = rows.last().filter(|_| first + (shown as u64) < total) {
        let next = p.with(&format!("after={}", seg(&Cursor::of(last).encode())));
        let _ = write!(
            s,
            " <a rel=\"next\" href=\"{}\">next \u{2192}</a>",
            esc(&next)
        );
    }
    s
}

/// The queue page.
/// Messages on the alert topic that were not valid alerts: said on the queue page, not only
/// in /metrics and the log, so the operations room knows something upstream is wrong.
fn skipped_note(n: u64) -> String {
    if n == 0 {
        return String::new();
    }
    let (s, were) = if n == 1 { ("", "was") } else { ("s", "were") };
    format!(
        "<p class=\"note warn\" id=\"skipped\">{n} message{s} on the alert topic {were} not \
valid alerts and {were} skipped since the board started (not shown; the board's log gives \
each one's partition, offset and reason).</p>"
    )
}

/// The queue page; `feed` sets the chip it starts with.
#[allow(clippy::too_many_arguments)]
pub fn queue(
    user: &User,
    feed: &Feed,
    p: &QueueParams,
    detectors: &[String],
    rows: &[Row],
    first: u64,
    untriaged: u64,
    total: u64,
    limit: u32,
    skipped: u64,
) -> Response {
    let skipped_note = skipped_note(skipped);
    let sel = |cur: &Option<String>, v: &str| {
        if cur.as_deref() == Some(v) {
            " selected"
        } else {
            ""
        }
    };
    let mut det_opts = String::from("<option value=\"\">any</option>");
    for d in detectors {
        let _ = write!(
            det_opts,
            "<option value=\"{v}\"{s}>{v}</option>",
            v = esc(d),
            s = sel(&p.detector, d)
        );
    }
    let mut st_opts = String::from("<option value=\"\">any</option>");
    for s in Status::ALL {
        let _ = write!(
            st_opts,
            "<option value=\"{}\"{}>{}</option>",
            s.as_str(),
            sel(&p.status, s.as_str()),
            s.label()
        );
    }
    let val = |o: &Option<String>| esc(o.as_deref().unwrap_or(""));
    let body = format!(
        "<section class=\"queue-head\"><h1>Alert queue</h1>\
<div class=\"counter\"><span id=\"untriaged\">{untriaged}</span> untriaged</div>\
{chip}</section>\
{skipped_note}<form class=\"filters\" method=\"get\" action=\"\">\
<label>Detector <select name=\"detector\">{det_opts}</select></label>\
<label>Min score <input name=\"min_score\" size=\"4\" inputmode=\"decimal\" value=\"{ms}\"></label>\
<label>Status <select name=\"status\">{st_opts}</select></label>\
<label>Last hours <input name=\"hours\" size=\"4\" inputmode=\"decimal\" value=\"{hours}\"></label>\
<label>Order <select name=\"sort\"><option value=\"score\">score, then newest</option>\
<option value=\"newest\"{newest}>newest first</option></select></label>\
<button type=\"submit\">Filter</button> <a href=\"./\">clear</a></form>\
<table class=\"queue\"><thead><tr><th>Score</th><th>Detector</th><th>Subject</th><th>Event time (UTC)</th>\
<th>Status</th><th>Assignee</th><th></th></tr></thead><tbody id=\"rows\">{rows}</tbody></table>\
<p class=\"note\" id=\"pager\">{pager}</p>\
<script src=\"static/board.js\"></script>",
        ms = val(&p.min_score),
        hours = val(&p.hours),
        newest = sel(&p.sort, "newest"),
        rows = queue_rows(rows, ""),
        chip = live_chip(feed),
        pager = pager(p, rows, first, total, limit),
    );
    page("Queue", "", user, &body)
}

/// The chip's words when alerts arrive, and its tooltip (board.js uses the same).
pub const LIVE_WORDS: &str = "live";
pub const LIVE_TITLE: &str = "new alerts appear without reloading";
/// The chip's words while the feed is down (the brokers do not answer, storing fails), with
/// the time it went down: a wall screen shows since when without anyone hovering.
pub fn feed_down_words(since: &str) -> String {
    format!("feed down since {since} \u{2014} alerts delayed")
}

/// The chip's words while a board that has just started has not read yet
/// ([`Feed::connecting`]; board.js uses the same).
pub const CONNECTING_WORDS: &str = "connecting to the feed\u{2026}";

/// The connecting chip's tooltip: what the board says of its first connection.
pub fn connecting_title(detail: &str) -> String {
    let detail = if detail.trim().is_empty() {
        "connecting to the alert topic"
    } else {
        detail.trim()
    };
    format!(
        "The board has just started and is not reading alerts yet: {detail}. \
If the brokers do not answer within 10 s this says the feed is down."
    )
}

/// The queue's live chip as the page starts with it: live, connecting (a board just
/// started), or the feed down with why and since when (UTC here; board.js rewrites it in
/// the viewer's local time). board.js reads the state from `data-feed` until the event
/// stream tells it again.
fn live_chip(feed: &Feed) -> String {
    if feed.ok {
        return format!(
            "<div class=\"live\" id=\"live\" data-feed=\"ok\" data-state=\"live\" title=\"{LIVE_TITLE}\">{LIVE_WORDS}</div>"
        );
    }
    if feed.connecting {
        return format!(
            "<div class=\"live connecting\" id=\"live\" data-feed=\"connecting\" data-state=\"connecting\" \
title=\"{title}\">{CONNECTING_WORDS}</div>",
            title = esc(&connecting_title(&feed.detail)),
        );
    }
    format!(
        "<div class=\"live down\" id=\"live\" data-feed=\"down\" data-state=\"feed-down\" data-since=\"{since}\" \
title=\"{title}\">{words}</div>",
        since = feed.since_ms,
        words = esc(&feed_down_words(&format!(
            "{} UTC",
            chrono::DateTime::from_timestamp_millis(feed.since_ms)
                .map_or_else(String::new, |t| t.format("%H:%M").to_string())
        ))),
        title = esc(&feed_down_title(&feed.detail, &format!("{} UTC", when(feed.since_ms)))),
    )
}

/// The alert and line pages' word while the board reads no alerts (the queue's chip says
/// it live; these pages say it as they are served, at the top): what they list of a
/// subject may lack its newest alerts. Nothing while the feed is up or just connecting.
fn feed_note(feed: &Feed) -> String {
    if feed.ok || feed.connecting {
        return String::new();
    }
    let detail = match feed.detail.trim() {
        "" => "not reading the alert topic",
        d => d,
    };
    format!(
        "<p class=\"note warn\" id=\"feed-note\">Feed down: no new alerts have reached the \
board since {since} UTC ({detail}). This page may lack the newest alerts; reload it once the \
queue's chip says live.</p>",
        since = when(feed.since_ms),
        detail = esc(detail),
    )
}

/// The down chip's tooltip: what the board says of its feed, and since when.
pub fn feed_down_title(detail: &str, since: &str) -> String {
    let detail = if detail.trim().is_empty() {
        "not reading the alert topic"
    } else {
        detail.trim()
    };
    format!(
        "No new alerts reach the board since {since}: {detail}. \
Alerts raised meanwhile are not shown yet; the list catches up when the feed is back."
    )
}

/// Evidence keys shown as a figure with its threshold: (figure, threshold, comparison).
fn pairs(ev: &serde_json::Map<String, Value>) -> Vec<(String, String, &'static str)> {
    let mut out = Vec::new();
    // The pairs `explain` knows that are not named after each other first (a figure checked
    // against a threshold of another name by the rule that fired).
    for (fig, thr) in crate::explain::NAMED_PAIRS {
        if fig != "score" && ev.contains_key(fig) && ev.contains_key(thr) {
            out.push((fig.to_string(), thr.to_string(), ">="));
        }
    }
    for k in ev.keys() {
        if k.starts_with("min_") || k.starts_with("max_") || k == "threshold" {
            continue;
        }
        if k == "score" && ev.contains_key("threshold") {
            out.push((k.clone(), "threshold".to_string(), ">="));
        } else if ev.contains_key(&format!("min_{k}")) {
            out.push((k.clone(), format!("min_{k}"), ">="));
        } else if ev.contains_key(&format!("max_{k}")) {
            out.push((k.clone(), format!("max_{k}"), "<="));
        }
    }
    out
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.as_f64().filter(|_| n.is_f64()).map_or(n.to_string(), num),
        other => other.to_string(),
    }
}

/// Keys of evidence that are event times (ms), shown on the timeline.
fn is_time_key(k: &str) -> bool {
    crate::explain::is_time_key(k)
}

/// The "figures against thresholds" table and the other settings, for any detector.
pub fn figures(a: &Alert) -> String {
    let ev = &a.evidence;
    let ps = pairs(ev);
    let mut s = String::from(
        "<table class=\"figures\"><thead><tr><th>Figure</th><th>Value</th><th></th><th>Threshold</th>\
<th>Setting</th><th></th></tr></thead><tbody>",
    );
    for (fig, thr, cmp) in &ps {
        let (fv, tv) = (ev[fig].as_f64(), ev[thr].as_f64());
        let met = match (fv, tv, *cmp) {
            (Some(f), Some(t), ">=") => f + 1e-9 >= t,
            (Some(f), Some(t), _) => f <= t + 1e-9,
            _ => false,
        };
        let _ = write!(
            s,
            "<tr class=\"{cls}\"><td>{fig}</td><td class=\"val\">{fv}</td><td>{cmp}</td>\
<td class=\"val\">{tv}</td><td class=\"key\">{thr}</td><td>{mark}</td></tr>",
            cls = if met { "met" } else { "unmet" },
            fig = esc(&fig.replace('_', " ")),
            fv = esc(&plain(&ev[fig])),
            cmp = if *cmp == ">=" { "&ge;" } else { "&le;" },
            tv = esc(&plain(&ev[thr])),
            thr = esc(thr),
            mark = if met { "crossed" } else { "not reached" },
        );
    }
    s.push_str("</tbody></table>");
    let shown: Vec<&str> = ps
        .iter()
        .flat_map(|(f, t, _)| [f.as_str(), t.as_str()])
        .collect();
    let mut rest = String::new();
    for (k, v) in ev {
        if shown.contains(&k.as_str()) || is_time_key(k) || v.is_array() || v.is_object() {
            continue;
        }
        let _ = write!(
            rest,
            "<tr><td class=\"key\">{}</td><td class=\"val\">{}</td></tr>",
            esc(k),
            esc(&plain(v))
        );
    }
    if !rest.is_empty() {
        let _ = write!(
            s,
            "<h3>Other figures and settings</h3><table class=\"settings\"><tbody>{rest}</tbody></table>"
        );
    }
    if let Some(Value::Array(cs)) = ev.get("contributions") {
        // One cell a contribution, its figures wrapping within the column: a cell a figure
        // made rows as wide as their most detailed contribution, wider than the page.
        s.push_str(
            "<h3>Contributions to the verdict</h3><table class=\"settings contributions\"><tbody>",
        );
        for c in cs {
            let cell = match c {
                Value::Object(m) => m
                    .iter()
                    .map(|(k, v)| {
                        let shown = match v.as_i64() {
                            Some(t) if is_time_key(k) => when(t),
                            _ => plain(v),
                        };
                        format!(
                            "<span class=\"kv\"><span class=\"key\">{}</span> {}</span>",
                            esc(k),
                            esc(&shown)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
                other => esc(&plain(other)),
            };
            let _ = write!(s, "<tr><td>{cell}</td></tr>");
        }
        s.push_str("</tbody></table>");
    }
    s
}

fn ident_link(root: &str, ident: &str) -> String {
    format!(
        "<a class=\"ident\" href=\"{root}line/{}\">{}</a>",
        seg(ident),
        esc(ident)
    )
}

fn history_rows(h: &[Entry]) -> String {
    let mut s = String::new();
    for e in h {
        let what = match e.field.as_str() {
            "status" => format!(
                "status {} &rarr; <b>{}</b>",
                esc(e
                    .old
                    .as_deref()
                    .and_then(Status::parse)
                    .map_or("", |s| s.label())),
                esc(Status::parse(&e.new).map_or(e.new.as_str(), |s| s.label()))
            ),
            "assignee" if e.new.is_empty() => "unassigned".into(),
            "assignee" => format!("assigned to <b>{}</b>", esc(&e.new)),
            _ => format!("note: <q>{}</q>", esc(&e.new)),
        };
        let _ = write!(
            s,
            "<li><time>{}</time> <b>{}</b> {what}</li>",
            when(e.ts),
            esc(&e.user)
        );
    }
    s
}

/// The alert page.
#[allow(clippy::too_many_arguments)]
pub fn alert(
    user: &User,
    feed: &Feed,
    csrf: &str,
    st: &Stored,
    history: &[Entry],
    related: &[Stored],
    explanation: &str,
    notice: Option<&str>,
) -> Response {
    let a = &st.alert;
    let root = "../";
    let mut timeline: Vec<(Millis, String)> = vec![
        (a.window_start, "evidence window opens".into()),
        (
            a.event_time,
            "the record that completed the detection".into(),
        ),
        (a.window_end, "evidence window closes".into()),
        (a.detected_at, "alert made (wall clock)".into()),
    ];
    for (k, v) in &a.evidence {
        if let (true, Some(t)) = (is_time_key(k), v.as_i64()) {
            timeline.push((t, k.replace('_', " ")));
        }
    }
    for e in history {
        timeline.push((e.ts, format!("{} by {}", e.field, e.user)));
    }
    timeline.sort_by_key(|x| x.0);
    let tl: String = timeline
        .iter()
        .map(|(t, what)| format!("<li><time>{}</time> {}</li>", when(*t), esc(what)))
        .collect();
    let rel_idents: String = if a.related.is_empty() {
        "<p>None named by this alert.</p>".into()
    } else {
        format!(
            "<p>{}</p>",
            a.related
                .iter()
                .map(|r| ident_link(root, r))
                .collect::<Vec<_>>()
                .join(" ")
        )
    };
    let rel_alerts: String = related
        .iter()
        .map(|r| {
            format!(
                "<tr><td>{}</td><td><span class=\"det\">{}</span></td><td><a href=\"{root}alert/{}\">{}</a></td><td>{}</td><td>{}</td></tr>",
                score_bar(r.alert.score),
                esc(&r.alert.detector),
                seg(&r.alert.alert_id),
                esc(&r.alert.subject),
                when(r.alert.event_time),
                status_chip(r.status)
            )
        })
        .collect();
    let triage = if user.role.may_act() {
        let idu = seg(&a.alert_id);
        let mut st_opts = String::new();
        for s in Status::ALL
            .into_iter()
            .filter(|s| *s != Status::New || st.status == Status::New)
        {
            let _ = write!(
                st_opts,
                "<option value=\"{}\"{}>{}</option>",
                s.as_str(),
                if s == st.status { " selected" } else { "" },
                s.label()
            );
        }
        format!(
            "<form class=\"decide\" method=\"post\" action=\"{idu}/triage\">\
<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
<button class=\"confirm\" name=\"decision\" value=\"confirmed\">Confirmed deal line</button>\
<button class=\"fp\" name=\"decision\" value=\"false_positive\">False positive</button></form>\
<form class=\"triage\" method=\"post\" action=\"{idu}/triage\">\
<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
<label>Status <select name=\"status\">{st_opts}</select></label>\
<label>Assignee <input name=\"assignee\" value=\"{assignee}\" size=\"14\"></label>\
<label class=\"wide\">Note <textarea name=\"note\" rows=\"2\"></textarea></label>\
<button type=\"submit\">Save</button></form>",
            csrf = esc(csrf),
            assignee = esc(st.assignee.as_deref().unwrap_or("")),
        )
    } else {
        "<p class=\"note\">Your role (viewer) can read alerts but not triage them.</p>".into()
    };
    let notice = notice
        .map(|n| format!("<p class=\"notice\">{}</p>", esc(n)))
        .unwrap_or_default();
    let body = format!(
        "<p><a href=\"{root}\">&larr; queue</a></p>{notice}\
<section class=\"alert-head\"><h1><span class=\"det\">{det}</span> on {kind} {subject}</h1>\
<div class=\"facts\">{score} {status} <span>assignee: <b>{assignee}</b></span>\
<span>config version <code>{cv}</code></span><span>alert <code>{id}</code></span></div></section>\
<section class=\"triage-box\"><h2>Triage</h2>{triage}<ul class=\"history\">{hist}</ul></section>\
<div class=\"cols\"><section><h2>Figures against thresholds</h2>{figs}</section>\
<section><h2>In plain language</h2><pre class=\"explain\">{explain}</pre></section></div>\
<div class=\"cols\"><section><h2>Evidence timeline (UTC)</h2><ul class=\"timeline\">{tl}</ul></section>\
<section><h2>Related lines and handsets</h2>{rel_idents}\
<h3>Other alerts on these identities</h3><table class=\"queue\"><tbody>{rel_alerts}</tbody></table></section></div>",
        det = esc(&a.detector),
        kind = match a.subject_kind {
            crate::alert::SubjectKind::Line => "line",
            crate::alert::SubjectKind::Handset => "handset",
        },
        subject = ident_link(root, &a.subject),
        score = score_bar(a.score),
        status = status_chip(st.status),
        assignee = esc(st.assignee.as_deref().unwrap_or("nobody")),
        cv = esc(&a.config_version),
        id = esc(&a.alert_id),
        hist = history_rows(history),
        figs = figures(a),
        explain = esc(explanation),
    );
    let body = format!("{}{body}", feed_note(feed));
    page(&format!("{} alert", a.detector), root, user, &body)
}

/// What a line's alerts say about the identities around it.
#[derive(Debug, Default)]
pub struct Around {
    pub predecessors: Vec<String>,
    pub successors: Vec<String>,
    pub handsets: Vec<String>,
    pub sims: Vec<String>,
    pub lines: Vec<String>,
}

impl Around {
    /// Reads predecessors and successors off `line_handover` alerts and handsets, SIMs and
    /// lines off `handset_churn` alerts.
    pub fn of(ident: &str, alerts: &[Stored]) -> Around {
        let mut x = Around::default();
        let push = |v: &mut Vec<String>, s: &str| {
            if s != ident && !v.iter().any(|y| y == s) {
                v.push(s.to_string());
            }
        };
        for st in alerts {
            let a = &st.alert;
            match a.detector.as_str() {
                "line_handover" if a.subject == ident => {
                    a.related.iter().for_each(|r| push(&mut x.predecessors, r))
                }
                "line_handover" if a.related.iter().any(|r| r == ident) => {
                    push(&mut x.successors, &a.subject)
                }
                "handset_churn" => {
                    push(&mut x.handsets, &a.subject);
                    a.related.iter().for_each(|r| push(&mut x.sims, r));
                    for l in super::store::mentioned(a).skip(a.related.len()) {
                        push(&mut x.lines, l);
                    }
                }
                _ => {}
            }
        }
        x
    }
}

fn ident_list(root: &str, v: &[String]) -> String {
    if v.is_empty() {
        "<span class=\"none\">none seen in alerts</span>".into()
    } else {
        v.iter()
            .map(|i| ident_link(root, i))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The line (or handset) page.
pub fn line(user: &User, feed: &Feed, csrf: &str, ident: &str, alerts: &[Stored]) -> Response {
    let root = "../";
    let around = Around::of(ident, alerts);
    let rows: String = alerts
        .iter()
        .map(|s| {
            format!(
                "<tr><td>{}</td><td><span class=\"det\">{}</span></td><td><a href=\"{root}alert/{}\">{}</a></td><td>{}</td><td>{}</td></tr>",
                score_bar(s.alert.score),
                esc(&s.alert.detector),
                seg(&s.alert.alert_id),
                if s.alert.subject == ident { "this line".to_string() } else { esc(&s.alert.subject) },
                when(s.alert.event_time),
                status_chip(s.status)
            )
        })
        .collect();
    let export = if user.role.may_act() {
        format!(
            "<form class=\"export\" method=\"post\" action=\"{id}/export\">\
<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
<label class=\"wide\">Reason for the export (recorded) <input name=\"reason\" required minlength=\"3\" size=\"40\"></label>\
<label>Format <select name=\"format\"><option value=\"csv\">CSV</option><option value=\"print\">printable page</option></select></label>\
<button type=\"submit\">Export evidence</button></form>",
            id = seg(ident),
            csrf = esc(csrf)
        )
    } else {
        "<p class=\"note\">Your role (viewer) cannot export evidence.</p>".into()
    };
    let body = format!(
        "<p><a href=\"{root}\">&larr; queue</a></p><h1>Identity <code>{id}</code></h1>\
<div class=\"cols\"><section><h2>Identities seen with it</h2><dl class=\"around\">\
<dt>Predecessor numbers</dt><dd>{pred}</dd><dt>Successor numbers</dt><dd>{succ}</dd>\
<dt>Handsets (IMEI)</dt><dd>{hs}</dd><dt>SIMs (IMSI)</dt><dd>{sims}</dd><dt>Lines (MSISDN) in those handsets</dt><dd>{lines}</dd></dl>\
<p class=\"note\">As pseudonyms, from the alerts on this page: the identifiers a DDTRO lists.</p></section>\
<section><h2>Evidence export</h2>{export}</section></div>\
<h2>Every alert on or naming it ({n})</h2><table class=\"queue\"><tbody>{rows}</tbody></table>",
        id = esc(ident),
        pred = ident_list(root, &around.predecessors),
        succ = ident_list(root, &around.successors),
        hs = ident_list(root, &around.handsets),
        sims = ident_list(root, &around.sims),
        lines = ident_list(root, &around.lines),
        n = alerts.len(),
    );
    let body = format!("{}{body}", feed_note(feed));
    page("Line", root, user, &body)
}

/// A CSV cell: quoted, and defused so a spreadsheet does not run it as a formula, by the
/// rule every CSV linewatch writes follows ([`crate::sheet::protect`]).
fn cell(s: &str) -> String {
    format!("\"{}\"", crate::sheet::protect(s).replace('"', "\"\""))
}

/// The evidence export of an identity as CSV.
pub fn export_csv(alerts: &[Stored]) -> String {
    let mut s = String::from(
        "alert_id,detector,subject,subject_kind,score,event_time,window_start,window_end,related,status,assignee,config_version,evidence\n",
    );
    for st in alerts {
        let a = &st.alert;
        let kind = match a.subject_kind {
            crate::alert::SubjectKind::Line => "line",
            crate::alert::SubjectKind::Handset => "handset",
        };
        let fields = [
            cell(&a.alert_id),
            cell(&a.detector),
            cell(&a.subject),
            cell(kind),
            num(a.score),
            cell(&rfc3339(a.event_time)),
            cell(&rfc3339(a.window_start)),
            cell(&rfc3339(a.window_end)),
            cell(&a.related.join(";")),
            cell(st.status.as_str()),
            cell(st.assignee.as_deref().unwrap_or("")),
            cell(&a.config_version),
            cell(&Value::Object(a.evidence.clone()).to_string()),
        ];
        s.push_str(&fields.join(","));
        s.push('\n');
    }
    s
}

/// The printable evidence page: who exported it, when and why, then each alert explained.
pub fn export_print(
    user: &User,
    ident: &str,
    reason: &str,
    now: Millis,
    alerts: &[Stored],
) -> Response {
    let mut items = String::new();
    for st in alerts {
        let _ = write!(
            items,
            "<article class=\"print-alert\"><h3>{det} · score {score} · {status}</h3>{figs}<pre class=\"explain\">{ex}</pre></article>",
            det = esc(&st.alert.detector),
            score = num(st.alert.score),
            status = st.status.label(),
            figs = figures(&st.alert),
            ex = esc(&crate::explain::explain(&st.alert)),
        );
    }
    let around = Around::of(ident, alerts);
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            esc(&v.join(", "))
        }
    };
    let body = format!(
        "<h1>Evidence: <code>{id}</code></h1><p class=\"export-meta\">Exported by <b>{user}</b> at {at} UTC. \
Reason: <q>{reason}</q>.</p><dl class=\"around\"><dt>Predecessors</dt><dd>{p}</dd><dt>Successors</dt><dd>{s}</dd>\
<dt>Handsets (IMEI)</dt><dd>{h}</dd><dt>SIMs (IMSI)</dt><dd>{sims}</dd></dl>{items}",
        id = esc(ident),
        user = esc(&user.name),
        at = when(now),
        reason = esc(reason),
        p = list(&around.predecessors),
        s = list(&around.successors),
        h = list(&around.handsets),
        sims = list(&around.sims),
    );
    page("Evidence", "../../", user, &body)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_pager_keeps_the_filters_pages_by_cursor_and_finds_its_way_back_from_past_the_end() {
        use super::{Cursor, Row, Status, Towards};
        let p = |page: &str, after: Option<&str>, before: Option<&str>| super::QueueParams {
            detector: Some("bulk_sms".into()),
            min_score: Some("".into()),
            status: None,
            hours: Some("24 & x=1".into()),
            sort: Some("newest".into()),
            page: Some(page.into()),
            after: after.map(Into::into),
            before: before.map(Into::into),
        };
        let row = |id: &str, score: f64, t: i64| Row {
            alert_id: id.into(),
            detector: "bulk_sms".into(),
            subject: "L1".into(),
            subject_kind: "line".into(),
            score,
            event_time: t,
            status: Status::New,
            assignee: None,
        };
        let filters = "?detector=bulk_sms&amp;hours=24%20%26%20x%3D1&amp;sort=newest";
        let first = super::pager(
            &p("1", None, None),
            &[row("a", 0.9, 50), row("b", 0.5, 40)],
            0,
            5,
            2,
        );
        assert_eq!(
            first,
            format!("Alerts 1\u{2013}2 of 5, 2 a page. <a rel=\"next\" href=\"{filters}&amp;after=0.5_40_b\">next \u{2192}</a>")
        );
        // The next page starts after the last row shown; its previous is the first page.
        let second = p("", Some("0.5_40_b"), None);
        assert_eq!(
            second.cursor(),
            Some((
                Towards::After,
                Cursor {
                    score: 0.5,
                    event_time: 40,
                    alert_id: "b".into()
                }
            ))
        );
        let mid = super::pager(&second, &[row("c", 0.4, 30), row("d", 0.3, 20)], 2, 5, 2);
        assert_eq!(
            mid,
            format!("Alerts 3\u{2013}4 of 5, 2 a page. <a rel=\"prev\" href=\"{filters}\">\u{2190} previous</a> <a rel=\"next\" href=\"{filters}&amp;after=0.3_20_d\">next \u{2192}</a>")
        );
        let last = super::pager(
            &p("", Some("0.3_20_d"), None),
            &[row("e", 0.2, 10)],
            4,
            5,
            2,
        );
        assert_eq!(
            last,
            format!("Alert 5 of 5, 2 a page. <a rel=\"prev\" href=\"{filters}&amp;before=0.2_10_e\">\u{2190} previous</a>")
        );
        // Past the end (closed meanwhile, or typed in): back to the last page there is.
        for past in [p("9", None, None), p("", Some("0.1_1_z"), None)] {
            let line = super::pager(&past, &[], 5, 5, 2);
            assert_eq!(
                line,
                format!("5 alerts match. <a rel=\"prev\" href=\"{filters}&amp;page=3\">\u{2190} previous</a>")
            );
        }
        assert_eq!(
            super::pager(&p("1", None, None), &[], 0, 0, 2),
            "0 alerts match."
        );
        // Garbage, 0 and huge pages are pages 1 and the last allowed.
        assert_eq!(p("x", None, None).page_number(), 1);
        assert_eq!(p("0", None, None).page_number(), 1);
        assert_eq!(p("99999999999999999999", None, None).page_number(), 1);
        assert_eq!(p("5000000", None, None).page_number(), super::MAX_PAGE);
        assert_eq!(p("3", None, None).filter(0, 200).offset, 400);
        // A cursor reads back exactly (the id may hold the separator); garbage is none,
        // and `after` wins over `before`.
        let c = Cursor {
            score: 0.1 + 0.2,
            event_time: -5,
            alert_id: "a_b".into(),
        };
        assert_eq!(Cursor::parse(&c.encode()), Some(c));
        for bad in ["x_1_a", "0.5_x_a", "0.5_1_", "0.5_1", "NaN_1_a", "inf_1_a"] {
            assert_eq!(Cursor::parse(bad), None, "{bad}");
        }
        let both = p("", Some("0.5_40_b"), Some("0.9_50_a"));
        assert_eq!(both.cursor().map(|c| c.0), Some(Towards::After));
    }

    #[test]
    fn the_alert_and_line_pages_say_the_feed_is_down_only_when_it_is() {
        use crate::board::ingest::Feed;
        let feed = |ok, connecting| Feed {
            ok,
            detail: "storing alerts failed (<locked>); retrying".into(),
            since_ms: 1_796_600_000_000,
            connecting,
        };
        assert_eq!(super::feed_note(&feed(true, false)), "");
        assert_eq!(super::feed_note(&feed(false, true)), "");
        let down = super::feed_note(&feed(false, false));
        assert_eq!(
            down,
            "<p class=\"note warn\" id=\"feed-note\">Feed down: no new alerts have reached the \
board since 2026-12-06 23:33:20 UTC (storing alerts failed (&lt;locked&gt;); retrying). This \
page may lack the newest alerts; reload it once the queue's chip says live.</p>"
        );
    }

    #[test]
    fn the_queue_chip_starts_as_the_feed_is() {
        use crate::board::ingest::Feed;
        let up = super::live_chip(&Feed {
            ok: true,
            detail: "reading 1 partition(s)".into(),
            since_ms: 0,
            connecting: false,
        });
        assert!(
            up.contains("data-feed=\"ok\"") && up.contains(">live</div>"),
            "{up}"
        );
        let down = super::live_chip(&Feed {
            ok: false,
            detail: "storing alerts failed (<locked> & \"busy\"); retrying".into(),
            since_ms: 1_796_600_000_000,
            connecting: false,
        });
        assert!(down.contains("class=\"live down\""), "{down}");
        assert!(
            down.contains(">feed down since 23:33 UTC \u{2014} alerts delayed</div>"),
            "{down}"
        );
        assert!(down.contains("since 2026-12-06 23:33:20 UTC: storing alerts failed (&lt;locked&gt; &amp; &quot;busy&quot;); retrying."), "{down}");
        assert!(!down.contains("<locked>"), "{down}");
        let starting = super::live_chip(&Feed {
            ok: false,
            detail: "ingest: <refused>; retrying".into(),
            since_ms: 1_796_600_000_000,
            connecting: true,
        });
        assert!(
            starting.contains("class=\"live connecting\"")
                && starting.contains("data-feed=\"connecting\"")
                && starting.contains(">connecting to the feed\u{2026}</div>")
                && !starting.contains("feed down"),
            "{starting}"
        );
        assert!(
            starting.contains("not reading alerts yet: ingest: &lt;refused&gt;; retrying."),
            "{starting}"
        );
    }

    use super::*;
    use crate::board::store::tests::alert;

    #[test]
    fn text_and_segments_are_escaped() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(seg("a/b?c#d%e f"), "a%2Fb%3Fc%23d%25e%20f");
        assert_eq!(seg("LINE_01-a.b~"), "LINE_01-a.b~");
    }

    #[test]
    fn figures_sit_next_to_their_thresholds() {
        let a = alert("a", "bulk_sms", "L", 0.5, 0);
        let html = figures(&a);
        assert!(html.contains("<td>recipients</td><td class=\"val\">41</td><td>&ge;</td><td class=\"val\">30</td><td class=\"key\">min_recipients</td><td>crossed</td>"), "{html}");
        let mut d = alert("d", "deal_line", "L", 0.75, 0);
        d.evidence = crate::evidence! {"score" => 0.75, "threshold" => 0.7, "lookback_s" => 345600,
        "contributions" => serde_json::json!([{"evidence": "bulk_sms", "weight": 0.25}])};
        let html = figures(&d);
        assert!(
            html.contains(
                "<td>score</td><td class=\"val\">0.75</td><td>&ge;</td><td class=\"val\">0.7</td>"
            ),
            "{html}"
        );
        assert!(html.contains("lookback_s"));
        assert!(html.contains("Contributions"));
    }

    #[test]
    fn figures_pair_thresholds_of_another_name_as_explain_does() {
        let row = |fig: &str, v: &str, thr: &str, t: &str| {
            format!("<td>{fig}</td><td class=\"val\">{v}</td><td>&ge;</td><td class=\"val\">{t}</td><td class=\"key\">{thr}</td>")
        };
        // customer_fan_in's "followed a new number" rule: its figure and threshold, and the
        // handover's time shown as a time, not a 13-digit number among the settings.
        let mut f = alert("f", "customer_fan_in", "L", 0.6, 0);
        f.evidence = crate::evidence! {"customers" => 5, "follow_min_customers" => 5,
        "handover_at" => 1_796_379_870_000_i64, "follow_within_s" => 86400};
        let html = figures(&f);
        assert!(
            html.contains(&row("customers", "5", "follow_min_customers", "5")),
            "{html}"
        );
        assert!(!html.contains("1796379870000"), "{html}");
        // The callback rule.
        f.evidence = crate::evidence! {"customers" => 4, "min_customers_with_callbacks" => 3,
        "callbacks" => 2, "min_callbacks" => 2};
        let html = figures(&f);
        assert!(
            html.contains(&row("customers", "4", "min_customers_with_callbacks", "3")),
            "{html}"
        );
        assert!(
            html.contains(&row("callbacks", "2", "min_callbacks", "2")),
            "{html}"
        );
        // line_handover's burst.
        let mut h = alert("h", "line_handover", "L", 0.8, 0);
        h.evidence = crate::evidence! {"new_line_recipients" => 25, "burst_recipients" => 15,
        "min_recipients" => 15};
        let html = figures(&h);
        assert!(
            html.contains(&row("burst recipients", "15", "min_recipients", "15")),
            "{html}"
        );
        // deal_line's contributions: their times as times.
        let mut d = alert("d", "deal_line", "L", 0.75, 0);
        d.evidence = crate::evidence! {"score" => 0.75, "threshold" => 0.7,
        "contributions" => serde_json::json!([{"evidence": "bulk_sms", "weight": 0.25,
        "at": 1_796_398_552_292_i64}])};
        let html = figures(&d);
        assert!(!html.contains("1796398552292"), "{html}");
        assert!(html.contains(&when(1_796_398_552_292)), "{html}");
    }

    #[test]
    fn skipped_messages_are_said_on_the_queue_page() {
        assert_eq!(skipped_note(0), "");
        assert!(skipped_note(1).contains("1 message on the alert topic was not valid"));
        assert!(skipped_note(7).contains("7 messages on the alert topic were not valid"));
    }

    #[test]
    fn csv_cells_cannot_run_in_a_spreadsheet() {
        assert_eq!(cell("=cmd()"), "\"'=cmd()\"");
        assert_eq!(cell("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn predecessors_successors_and_handsets_come_from_the_alerts() {
        let mut h1 = alert("h1", "line_handover", "L2", 0.8, 1);
        h1.related = vec!["L1".into()];
        let mut h2 = alert("h2", "line_handover", "L3", 0.8, 2);
        h2.related = vec!["L2".into()];
        let mut c = alert("c", "handset_churn", "IMEI9", 0.8, 3);
        c.related = vec!["S1".into(), "S2".into()];
        c.evidence = crate::evidence! {"sims" => 2, "min_sims" => 2, "lines" => ["L2", "L7"]};
        let st = |a: Alert| Stored {
            alert: a,
            status: Status::New,
            assignee: None,
            decided_at: None,
        };
        let x = Around::of("L2", &[st(h1), st(h2), st(c)]);
        assert_eq!(x.predecessors, ["L1"]);
        assert_eq!(x.successors, ["L3"]);
        assert_eq!(x.handsets, ["IMEI9"]);
        assert_eq!(x.sims, ["S1", "S2"]);
        assert_eq!(x.lines, ["L7"]);
    }
}
