//! An alert in plain language (`linewatch explain`): each figure next to its threshold, so an
//! analyst can judge an alert without reading JSON or re-running anything.
//!
//! Everything comes from the alert itself (its `evidence` carries the thresholds in force
//! when it fired), not from the current configuration, which may have changed since. An
//! alert from a detector this version does not know, or whose evidence lacks a figure, is
//! listed key by key rather than refused: an explanation with less prose beats none.

use std::fmt::Write as _;

use serde_json::{Map, Value};

use crate::alert::{Alert, SubjectKind};
use crate::detect::{
    bulk_sms, customer_fan_in, deal_line, handset_churn, line_handover, runner_movement,
};
use crate::event::Millis;

/// The plain-language account of why `alert` fired, several lines ending in a newline.
/// Figures whose threshold is not named after them (`min_X` / `max_X` are found by name):
/// (figure, threshold), each compared figure >= threshold, as `explain` words them. For
/// other readers of the evidence (the board's figures table), so the two never disagree.
pub const NAMED_PAIRS: [(&str, &str); 5] = [
    ("score", "threshold"),
    ("customers", "min_customers_with_callbacks"),
    ("customers", "follow_min_customers"),
    ("burst_recipients", "min_recipients"),
    ("repeat_audience", "repeat_audience_min"),
];

/// Evidence keys that hold an event time in milliseconds (beside the `*_first_seen` and
/// `*_last_text` ones): shown as times, not numbers.
pub fn is_time_key(k: &str) -> bool {
    k.ends_with("_first_seen") || k.ends_with("_last_text") || k.ends_with("_at") || k == "at"
}

pub fn explain(alert: &Alert) -> String {
    render(alert, None)
}

/// [`explain`] for alert JSON as analysts hand it over, not only as linewatch wrote it:
/// `detected_at` (the one field that differs between runs) may be stripped, `related` left
/// out, times written as `30.0`, and `subject_kind` a kind this version does not know (it is
/// shown as given). Anything else missing is a one-line reason.
pub fn explain_json(v: &Value) -> Result<String, String> {
    let Some(obj) = v.as_object() else {
        return Err("not a JSON object".into());
    };
    let mut obj = obj.clone();
    obj.entry("detected_at").or_insert(Value::from(0));
    obj.entry("related").or_insert(Value::Array(Vec::new()));
    for key in ["event_time", "window_start", "window_end", "detected_at"] {
        if let Some(ms) = obj.get(key).and_then(whole_i64) {
            obj.insert(key.into(), Value::from(ms));
        }
    }
    let kind = match obj.get("subject_kind") {
        Some(Value::String(k)) if k == "line" || k == "handset" => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) | None => Some("subject".to_string()),
    };
    if kind.is_some() {
        // Parsed as a line only to fill the typed field; the header shows `kind`.
        obj.insert("subject_kind".into(), Value::from("line"));
    }
    let alert: Alert = serde_json::from_value(Value::Object(obj)).map_err(|e| e.to_string())?;
    Ok(render(&alert, kind.as_deref()))
}

/// An integer, also when written with a zero fraction (`30.0`) by a tool that knows only
/// floating point.
fn whole_i64(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| {
        v.as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
            .map(|f| f as i64)
    })
}

fn render(alert: &Alert, kind: Option<&str>) -> String {
    let mut out = header(alert, kind);
    let ev = &alert.evidence;
    let body = match alert.detector.as_str() {
        bulk_sms::NAME => bulk(ev),
        customer_fan_in::NAME => fan_in(ev),
        handset_churn::NAME => churn(ev, &alert.related),
        line_handover::NAME => handover(ev, &alert.related),
        runner_movement::NAME => runner(ev, &alert.related),
        deal_line::NAME => deal(ev, alert.score),
        other => {
            out.push_str(&format!(
                "\nThe detector {other:?} is not one this version of linewatch knows; its evidence as given:\n"
            ));
            out.push_str(&listing(ev));
            return out;
        }
    };
    match body {
        Ok(text) => {
            out.push('\n');
            out.push_str(&text);
        }
        Err(Missing(key)) => {
            out.push_str(&format!(
                "\nThe evidence has no usable `{key}`, so it is listed as given:\n"
            ));
            out.push_str(&listing(ev));
        }
    }
    out
}

/// A figure the explanation needs is absent or of the wrong type.
#[derive(Debug)]
struct Missing(&'static str);

type Part = Result<String, Missing>;

fn header(a: &Alert, kind: Option<&str>) -> String {
    let kind = kind.unwrap_or(match a.subject_kind {
        SubjectKind::Line => "line",
        SubjectKind::Handset => "handset",
    });
    let mut s = format!(
        "{} alert {} on {kind} {} (score {})\n",
        a.detector,
        a.alert_id,
        a.subject,
        num(a.score)
    );
    let _ = writeln!(
        s,
        "Fired at {} (event time); the evidence spans {} to {}.",
        time(a.event_time),
        time(a.window_start),
        time(a.window_end)
    );
    if !a.related.is_empty() {
        let _ = writeln!(s, "Related: {}.", a.related.join(", "));
    }
    if !a.config_version.is_empty() {
        let _ = writeln!(s, "Configuration version: {}.", a.config_version);
    }
    s
}

/// `>=` when the figure reached its threshold; otherwise says plainly that it did not.
fn versus(figure: f64, threshold: f64) -> &'static str {
    if figure + 1e-9 >= threshold {
        ">="
    } else {
        "<  (below the threshold: this alert does not match its own evidence)"
    }
}

fn f(ev: &Map<String, Value>, key: &'static str) -> Result<f64, Missing> {
    ev.get(key).and_then(Value::as_f64).ok_or(Missing(key))
}

fn u(ev: &Map<String, Value>, key: &'static str) -> Result<u64, Missing> {
    ev.get(key)
        .and_then(whole_i64)
        .and_then(|i| u64::try_from(i).ok())
        .ok_or(Missing(key))
}

fn bulk(ev: &Map<String, Value>) -> Part {
    let (r, min, w) = (
        u(ev, "recipients")?,
        u(ev, "min_recipients")?,
        u(ev, "window_s")?,
    );
    let mut s = format!(
        "Why: the line texted {r} distinct recipients within {} (bulk_sms.window_s = {w}).\n",
        dur(w)
    );
    let _ = writeln!(
        s,
        "  recipients {r} {} min_recipients {min}",
        versus(r as f64, min as f64)
    );
    if let (Ok(rep), Ok(gap)) = (f(ev, "repeat_audience"), u(ev, "repeat_gap_s")) {
        let share = if rep > 0.0 {
            format!("{} of them", pct(rep))
        } else {
            "None of them".into()
        };
        let _ = writeln!(
            s,
            "  {share} had already been texted at least {} earlier (repeat_audience {}); \
             deal_line counts a repeat audience as extra evidence.",
            dur(gap),
            num(rep)
        );
    }
    Ok(s)
}

fn fan_in(ev: &Map<String, Value>) -> Part {
    if ev.contains_key("callbacks") {
        return fan_in_callbacks(ev);
    }
    if ev.contains_key("follow_min_customers") {
        return fan_in_followers(ev);
    }
    let (c, min, w, look) = (
        u(ev, "customers")?,
        u(ev, "min_customers")?,
        u(ev, "window_s")?,
        u(ev, "customer_lookback_s")?,
    );
    let mut s = format!(
        "Why: {c} distinct customers (numbers the line had texted within the {} before) \
         contacted the line within {} (customer_fan_in.window_s = {w}).\n",
        dur(look),
        dur(w)
    );
    let _ = writeln!(
        s,
        "  customers {c} {} min_customers {min}",
        versus(c as f64, min as f64)
    );
    if let (Ok(lo), Ok(hi)) = (u(ev, "min_call_duration_s"), u(ev, "max_call_duration_s")) {
        let _ = writeln!(
            s,
            "  Texts count; calls count only if {lo} to {hi} s long (shorter is a missed call, \
             longer a conversation)."
        );
    }
    Ok(s)
}

/// `customer_fan_in` by its followers rule: customers ringing a new number.
fn fan_in_followers(ev: &Map<String, Value>) -> Part {
    let (c, min, within, look) = (
        u(ev, "customers")?,
        u(ev, "follow_min_customers")?,
        u(ev, "follow_within_s")?,
        u(ev, "customer_lookback_s")?,
    );
    let earlier = ev
        .get("earlier_line")
        .map(plain)
        .ok_or(Missing("earlier_line"))?;
    let at = ev
        .get("handover_at")
        .and_then(Value::as_i64)
        .ok_or(Missing("handover_at"))?;
    let mut s = format!(
        "Why: this number took over the audience of {earlier} (line_handover, at {}), and {c} \
         distinct customers (numbers it had texted within the {} before) contacted it within \
         {} of that (customer_fan_in.follow_within_s = {within}): the customers followed the \
         new number.\n",
        time(at),
        dur(look),
        dur(within)
    );
    let _ = writeln!(
        s,
        "  customers {c} {} follow_min_customers {min}",
        versus(c as f64, min as f64)
    );
    Ok(s)
}

/// `customer_fan_in` by its callback rule.
fn fan_in_callbacks(ev: &Map<String, Value>) -> Part {
    let (c, min, w, look) = (
        u(ev, "customers")?,
        u(ev, "min_customers_with_callbacks")?,
        u(ev, "window_s")?,
        u(ev, "customer_lookback_s")?,
    );
    let (cb, min_cb, within) = (
        u(ev, "callbacks")?,
        u(ev, "min_callbacks")?,
        u(ev, "callback_within_s")?,
    );
    let mut s = format!(
        "Why: {c} distinct customers (numbers the line had texted within the {} before) \
         contacted the line within {} (customer_fan_in.window_s = {w}), and the line or its \
         crew (a number the line calls, such as a runner) called or texted {cb} of them back \
         within {} of their contact: the callback pattern police practice counts as a deal \
         confirmed.\n",
        dur(look),
        dur(w),
        dur(within)
    );
    let _ = writeln!(
        s,
        "  customers {c} {} min_customers_with_callbacks {min}",
        versus(c as f64, min as f64)
    );
    let _ = writeln!(
        s,
        "  callbacks {cb} {} min_callbacks {min_cb}",
        versus(cb as f64, min_cb as f64)
    );
    Ok(s)
}

/// `runner_movement`: where the handset went, why that is not commuting, what ties it to
/// the trade.
fn runner(ev: &Map<String, Value>, related: &[String]) -> Part {
    let (sw, min, w) = (
        u(ev, "switches")?,
        u(ev, "min_switches")?,
        u(ev, "window_s")?,
    );
    let list = |k: &'static str| -> Result<String, Missing> {
        let v = ev.get(k).and_then(Value::as_array).ok_or(Missing(k))?;
        Ok(v.iter().map(plain).collect::<Vec<_>>().join(", "))
    };
    let b = |k: &'static str| ev.get(k).and_then(Value::as_bool).ok_or(Missing(k));
    let (metro, county) = (list("metro_areas")?, list("county_areas")?);
    let mut s = format!(
        "Why: the handset moved between city cells ({metro}) and county-town cells ({county}) \
         {sw} times within {} (runner_movement.window_s = {w}), not like a commuter, and is \
         tied to the trade.\n",
        dur(w)
    );
    let _ = writeln!(
        s,
        "  switches {sw} {} min_switches {min} (there and back is 2)",
        versus(sw as f64, min as f64)
    );
    let hours = u(ev, "max_commute_hours")?;
    let night = ev.get("night_hours").map(plain).unwrap_or_default();
    for (class, key_n, key_h) in [
        ("city", "metro_night", "metro_hours"),
        ("county town", "county_night", "county_hours"),
    ] {
        let (at_night, h) = (b(key_n)?, u(ev, key_h)?);
        let why = if at_night {
            format!("seen there at night ({night} UTC)")
        } else if h > hours {
            format!(
                "seen there in {h} different hours of the day, more than a working day's {hours}"
            )
        } else {
            format!("seen there only in {h} daytime hours, like a place of work")
        };
        let _ = writeln!(s, "  In the {class}: {why}.");
    }
    let _ = writeln!(
        s,
        "  A commuter is seen in one of the two only in working hours; this handset lives in both."
    );
    let ties: Vec<String> = ev
        .get("ties")
        .and_then(Value::as_array)
        .ok_or(Missing("ties"))?
        .iter()
        .map(plain)
        .collect();
    for t in &ties {
        match t.as_str() {
            "deal_contact" => {
                let _ = writeln!(
                    s,
                    "  Tied to the trade: it called or texted {} (a line with a deal_line \
                     verdict or a handover).",
                    list("trade_lines")?
                );
            }
            "sim_churn" => {
                let _ = writeln!(
                    s,
                    "  Tied to the trade: {} SIMs in it within the window, at least \
                     churn_min_sims {} (burner churn).",
                    u(ev, "sims")?,
                    u(ev, "churn_min_sims")?
                );
            }
            other => {
                let _ = writeln!(s, "  Tied to the trade: {other}.");
            }
        }
    }
    let burnt: Vec<String> = ev
        .get("burnt_handsets")
        .and_then(Value::as_array)
        .map(|v| v.iter().map(plain).collect())
        .unwrap_or_default();
    if let (Some(later), Some("burn")) = (
        ev.get("taken_over_by"),
        ev.get("taken_over_as").and_then(Value::as_str),
    ) {
        let _ = writeln!(
            s,
            "  This handset went quiet and {} showed up within hours where it was last seen, \
             calling the trade line it called (a whole burn: handset, SIM and number replaced \
             at once): {} took its movement over, the figures above are the runner's over \
             both handsets, and this one was the runner's before.",
            plain(later),
            plain(later)
        );
    } else if let Some(later) = ev.get("taken_over_by") {
        let _ = writeln!(
            s,
            "  This handset's SIM moved into {} (a new handset, within the window), which took \
             its movement over: the figures above are the runner's over both handsets, and \
             this one was the runner's before.",
            plain(later)
        );
    } else if let Some(earlier) = ev.get("earlier_handsets").and_then(Value::as_array) {
        let names: Vec<String> = earlier.iter().map(plain).collect();
        let _ = writeln!(
            s,
            "  The runner's SIM came into this handset from {}: the movement counted includes \
             theirs (the person moved, the handset was replaced).",
            names.join(", ")
        );
        if !burnt.is_empty() {
            let _ = writeln!(
                s,
                "  Of those, {} came with no SIM in common: a whole burn (handset, SIM and \
                 number replaced at once), linked because it went quiet within hours before \
                 this handset showed up where it was last seen, and this one called the \
                 trade line it called.",
                burnt.join(", ")
            );
        }
    }
    if !related.is_empty() {
        let _ = writeln!(s, "  Lines it carried: {}", related.join(", "));
    }
    Ok(s)
}

fn churn(ev: &Map<String, Value>, related: &[String]) -> Part {
    let (n, min, w) = (u(ev, "sims")?, u(ev, "min_sims")?, u(ev, "window_s")?);
    let mut s = format!(
        "Why: the handset was used with {n} distinct SIMs within {} (handset_churn.window_s = {w}).\n",
        dur(w)
    );
    let _ = writeln!(
        s,
        "  sims {n} {} min_sims {min}",
        versus(n as f64, min as f64)
    );
    if !related.is_empty() {
        let _ = writeln!(s, "  SIMs, oldest first: {}", related.join(", "));
    }
    if let Some(lines) = ev.get("lines").and_then(Value::as_array) {
        let names: Vec<String> = lines.iter().map(plain).collect();
        let _ = writeln!(s, "  Lines used in it: {}", names.join(", "));
    }
    Ok(s)
}

fn handover(ev: &Map<String, Value>, related: &[String]) -> Part {
    let (o, min_o) = (f(ev, "overlap")?, f(ev, "min_overlap")?);
    let (n, min_r) = (u(ev, "new_line_recipients")?, u(ev, "min_recipients")?);
    let earlier = related.first().map_or("(not named)", String::as_str);
    let mut s = format!(
        "Why: this line is new and texted {n} recipients, {} of whom were already texted by \
         the earlier line {earlier}: a number handed over to a new line.\n",
        pct(o)
    );
    let _ = writeln!(
        s,
        "  overlap {} {} min_overlap {}",
        num(o),
        versus(o, min_o),
        num(min_o)
    );
    // min_recipients was checked against the recipients within the burst window when the
    // line qualified, not against the total, which may be spread over days.
    let window = u(ev, "burst_window_s")
        .map(|b| format!("burst_window_s {b}: {}", dur(b)))
        .unwrap_or_else(|_| "burst_window_s".into());
    match u(ev, "burst_recipients") {
        Ok(b) => {
            let _ = writeln!(
                s,
                "  burst_recipients {b} {} min_recipients {min_r} (distinct recipients within \
                 {window}, counted when the line qualified; {n} in all by this alert)",
                versus(b as f64, min_r as f64)
            );
        }
        Err(_) => {
            let _ = writeln!(
                s,
                "  new_line_recipients {n} in all; min_recipients {min_r} applies to those \
                 within {window}, a count this alert does not carry (made by an older version)"
            );
        }
    }
    if let (Ok(first), Ok(age)) = (u(ev, "new_line_first_seen"), u(ev, "new_line_max_age_s")) {
        let _ = writeln!(
            s,
            "  The line was first seen {}; lines count as new for {} (new_line_max_age_s {age}).",
            time(first as Millis),
            dur(age)
        );
    }
    if let (Ok(first), Ok(last)) = (
        u(ev, "earlier_line_first_seen"),
        u(ev, "earlier_line_last_text"),
    ) {
        let size = u(ev, "earlier_line_recipients")
            .map(|r| format!(" with {r} recipients"))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "  Earlier line {earlier}{size}: first seen {}, last texted {}.",
            time(first as Millis),
            time(last as Millis)
        );
    }
    // Alerts made before the overlap was counted exactly carry only `jaccard`.
    let counted = ev.get("overlap_counted").and_then(Value::as_str);
    let jaccard = f(ev, "sketch_jaccard").or_else(|_| f(ev, "jaccard"));
    match (counted, jaccard) {
        (Some("exact"), _) => {
            s.push_str("  (Overlap counted exactly from both lines' recipient lists.)\n");
        }
        (_, Ok(j)) => {
            let _ = writeln!(
                s,
                "  (Overlap estimated from MinHash sketches, so approximate; Jaccard {}.)",
                num(j)
            );
        }
        _ => {}
    }
    if ev.get("shared_handset").and_then(Value::as_bool) == Some(true) {
        s.push_str("  Both lines were last used in the same handset.\n");
    }
    Ok(s)
}

fn deal(ev: &Map<String, Value>, alert_score: f64) -> Part {
    let (score, threshold) = (f(ev, "score")?, f(ev, "threshold")?);
    let items = ev
        .get("contributions")
        .and_then(Value::as_array)
        .ok_or(Missing("contributions"))?;
    let mut s = format!(
        "Why: the evidence on this line adds up to {}, {} the deal_line threshold {}:\n",
        num(score),
        if score + 1e-9 >= threshold {
            "at or above"
        } else {
            "BELOW"
        },
        num(threshold)
    );
    let mut sum = 0.0;
    let width = items
        .iter()
        .filter_map(|c| c.get("evidence").and_then(Value::as_str))
        .map(str::len)
        .max()
        .unwrap_or(0);
    for c in items {
        let Some(c) = c.as_object() else {
            return Err(Missing("contributions"));
        };
        let kind = c
            .get("evidence")
            .and_then(Value::as_str)
            .ok_or(Missing("contributions[].evidence"))?;
        let w = f(c, "weight")?;
        sum += w;
        let at = u(c, "at")
            .map(|t| time(t as Millis))
            .unwrap_or_else(|_| "time unknown".into());
        let _ = writeln!(
            s,
            "  +{w:.2}  {kind:<width$}  {at}  {}",
            contribution(kind, c)
        );
    }
    let _ = writeln!(
        s,
        "  ={sum:.2}  {} threshold {}",
        versus(sum, threshold),
        num(threshold)
    );
    if score > 1.0 {
        s.push_str("  (An alert's score is capped at 1; the sum shows how far past the threshold it is.)\n");
    }
    if (sum - score).abs() > 1e-6 {
        let _ = writeln!(
            s,
            "  (The listed weights sum to {sum:.3} but the alert's evidence says {}.)",
            num(score)
        );
    }
    if let Ok(look) = u(ev, "lookback_s") {
        let _ = writeln!(
            s,
            "Each kind of evidence counts once, while younger than {} (deal_line.lookback_s = {look}).",
            dur(look)
        );
    }
    // With `require_sustained` (in the evidence since 2026-12-07; an older alert says
    // nothing of it, and neither does this) a verdict needs one kind only a line in the
    // trade keeps showing ([`deal_line::is_sustained`]): say which this one has.
    match ev.get("require_sustained").and_then(Value::as_bool) {
        Some(true) => {
            let kinds: Vec<&str> = items
                .iter()
                .filter_map(|c| c.get("evidence").and_then(Value::as_str))
                .collect();
            // Since 2026-12-07 adverts sent again count only with confirmed deals beside
            // them (`repeat_needs_callbacks`, in the evidence since then).
            let needs_callbacks = ev.get("repeat_needs_callbacks").and_then(Value::as_bool);
            let confirmed = kinds.contains(&deal_line::CALLBACKS);
            let sustained: Vec<String> = kinds
                .iter()
                .filter(|k| deal_line::is_sustained(k))
                .filter_map(|k| match (*k, needs_callbacks) {
                    ("repeat_bulk_sms", Some(true)) if confirmed => {
                        Some(format!("{k} with {}", deal_line::CALLBACKS))
                    }
                    ("repeat_bulk_sms", Some(true)) => None,
                    _ => Some(k.to_string()),
                })
                .collect();
            let adverts = if needs_callbacks == Some(true) {
                "adverts sent again with deals confirmed beside them (customers rung back within \
                 minutes: deal_line.repeat_needs_callbacks = true)"
            } else {
                "adverts sent again"
            };
            let _ = writeln!(
                s,
                "One-off behaviours alone (one bulk send, its replies, a number handed over) are \
                 never a verdict, however they add up: it also needs {adverts}, a burner \
                 handset, a deal line across a handover or a runner \
                 (deal_line.require_sustained = true). {}",
                match sustained.as_slice() {
                    [] => "This alert lists none of those.".to_string(),
                    ks => format!("This one has {}.", ks.join(", ")),
                }
            );
        }
        Some(false) => s.push_str(
            "Every kind counts alike (deal_line.require_sustained = false): one-off behaviours \
             alone can make a verdict.\n",
        ),
        None => {}
    }
    if (alert_score - score.min(1.0)).abs() > 1e-3 {
        let _ = writeln!(
            s,
            "(The alert's score {} differs from its evidence's score {}.)",
            num(alert_score),
            num(score)
        );
    }
    Ok(s)
}

/// What one deal_line contribution was, in words, with each figure and the threshold it
/// met where the contribution carries it (alerts from before they did read as they did).
fn contribution(kind: &str, c: &Map<String, Value>) -> String {
    let n = |k: &str| c.get(k).map(plain).unwrap_or_else(|| "?".into());
    // `figure x >= threshold t` for each pair the contribution has, `; `-joined.
    let vs = |pairs: &[(&str, &str)]| -> Vec<String> {
        pairs
            .iter()
            .filter_map(|&(fig, thr)| {
                let x = c.get(fig).and_then(Value::as_f64)?;
                let t = c.get(thr).and_then(Value::as_f64)?;
                Some(format!(
                    "{fig} {} {} {thr} {}",
                    n(fig),
                    versus(x, t),
                    n(thr)
                ))
            })
            .collect()
    };
    // A repeat's earlier finding and the gap it had to be at least.
    let earlier = || -> Vec<String> {
        match (u(c, "earlier_at"), u(c, "repeat_gap_s")) {
            (Ok(e), Ok(g)) => vec![format!(
                "the earlier one at {}, at least {} before (repeat_gap_s {g})",
                time(e as Millis),
                dur(g)
            )],
            _ => Vec::new(),
        }
    };
    let fan_in = [
        ("customers", "min_customers"),
        ("customers", "min_customers_with_callbacks"),
        ("callbacks", "min_callbacks"),
        ("customers", "follow_min_customers"),
    ];
    let (what, why) = match kind {
        "bulk_sms" => (
            format!("a bulk send to {} recipients", n("recipients")),
            vs(&[("recipients", "min_recipients")]),
        ),
        "repeat_bulk_sms" => {
            let mut why = vs(&[
                ("repeat_audience", "repeat_audience_min"),
                ("recipients", "min_recipients"),
            ]);
            why.extend(earlier());
            if c.contains_key("repeat_audience_min") {
                (
                    "a bulk send to largely the same audience as before".into(),
                    why,
                )
            } else {
                let what = format!(
                    "a bulk send to largely the same audience as before (repeat_audience {})",
                    n("repeat_audience")
                );
                (what, why)
            }
        }
        "customer_fan_in" => (
            format!("{} customers contacted the line", n("customers")),
            vs(&fan_in),
        ),
        "repeat_customer_fan_in" => {
            let mut why = vs(&fan_in);
            why.extend(earlier());
            let what = if why.is_empty() {
                format!(
                    "customer fan-in again on a later day ({} customers)",
                    n("customers")
                )
            } else {
                format!(
                    "customer fan-in again on a later day, {} customers",
                    n("customers")
                )
            };
            (what, why)
        }
        "line_handover" => {
            let what = match c.get("role").and_then(Value::as_str) {
                Some("new_line") => format!(
                    "took over the customers of earlier line {} (overlap {})",
                    n("earlier_line"),
                    n("overlap")
                ),
                Some("earlier_line") => format!(
                    "handed its customers over to new line {} (overlap {})",
                    n("new_line"),
                    n("overlap")
                ),
                _ => format!("a handover (overlap {})", n("overlap")),
            };
            (what, vs(&[("overlap", "min_overlap")]))
        }
        "predecessor_deal_line" => (
            format!(
                "took over from deal line {}, whose own evidence scored {}",
                n("earlier_line"),
                n("earlier_score")
            ),
            vs(&[("earlier_score", "threshold")]),
        ),
        "successor_deal_line" => (
            format!(
                "its customers were taken over by {}, since called a deal line (its evidence scored {})",
                n("new_line"),
                n("new_score")
            ),
            vs(&[("new_score", "threshold")]),
        ),
        "handset_churn" => {
            let mut why = vs(&[("sims", "min_sims"), ("sims_spread_s", "churn_min_spread_s")]);
            if let (Some(x), Some(most)) = (
                c.get("sims").and_then(Value::as_f64),
                c.get("churn_max_sims").and_then(Value::as_f64),
            ) {
                why.push(if x <= most {
                    format!(
                        "sims {} <= churn_max_sims {}",
                        n("sims"),
                        n("churn_max_sims")
                    )
                } else {
                    format!(
                        "sims {} >  churn_max_sims {} (a repair or test handset: this alert \
                         does not match its own evidence)",
                        n("sims"),
                        n("churn_max_sims")
                    )
                });
            }
            let what = format!(
                "used handset {}, seen with {} SIMs",
                n("handset"),
                n("sims")
            );
            (what, why)
        }
        "customer_callbacks" => {
            let mut what = format!(
                "deals confirmed: the line (or a number it calls for it) rang or texted back {} \
                 customers, each within {} of their contact",
                n("callbacks"),
                c.get("callback_within_s")
                    .and_then(Value::as_u64)
                    .map_or_else(|| "minutes".to_string(), dur)
            );
            if let Some(w) = c.get("window_s").and_then(Value::as_u64) {
                let _ = write!(what, ", within {}", dur(w));
            }
            (what, vs(&[("callbacks", "min_callbacks")]))
        }
        "runner_movement" => (
            format!(
                "runner handset {} calls it while moving between city and county ({} switches)",
                n("handset"),
                n("switches")
            ),
            vs(&[("switches", "min_switches")]),
        ),
        _ => {
            let all = c
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "evidence" | "weight" | "at"))
                .map(|(k, v)| format!("{k} {}", plain(v)))
                .collect::<Vec<_>>()
                .join(", ");
            (all, Vec::new())
        }
    };
    if why.is_empty() {
        what
    } else {
        format!("{what}: {}", why.join("; "))
    }
}

/// Every evidence entry as `key: value`, in key order.
fn listing(ev: &Map<String, Value>) -> String {
    if ev.is_empty() {
        return "  (no evidence)\n".into();
    }
    let mut keys: Vec<&String> = ev.keys().collect();
    keys.sort();
    let width = keys.iter().map(|k| k.len()).max().unwrap_or(0);
    keys.iter()
        .map(|k| format!("  {k:<width$}  {}\n", plain(&ev[*k])))
        .collect()
}

/// A JSON value without the quotes round strings.
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.as_f64().filter(|_| n.is_f64()).map_or(n.to_string(), num),
        other => other.to_string(),
    }
}

/// A number as short as it can be without losing what matters (3 decimals at most).
fn num(x: f64) -> String {
    let r = (x * 1000.0).round() / 1000.0;
    format!("{r}")
}

fn pct(x: f64) -> String {
    format!("{:.0}%", x * 100.0)
}

/// A span of seconds in the largest whole unit: `6 h`, `7 d`, `90 s`.
fn dur(s: u64) -> String {
    match s {
        0 => "0 s".into(),
        s if s % 86_400 == 0 => format!("{} d", s / 86_400),
        s if s % 3_600 == 0 => format!("{} h", s / 3_600),
        s if s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

/// Event time in UTC, to the second.
fn time(ms: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || format!("{ms} ms"),
        |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_use_the_largest_whole_unit() {
        assert_eq!(dur(3_600), "1 h");
        assert_eq!(dur(604_800), "7 d");
        assert_eq!(dur(90), "90 s");
        assert_eq!(dur(120), "2 min");
    }

    fn handover(evidence: Value) -> String {
        explain_json(&serde_json::json!({
            "alert_id": "0123456789abcdef0123456789abcdef", "detector": "line_handover",
            "subject": "L-2", "subject_kind": "line", "score": 1.0, "event_time": 0,
            "window_start": 0, "window_end": 0, "related": ["L-1"], "evidence": evidence
        }))
        .unwrap()
    }

    #[test]
    fn handover_states_the_burst_count_not_the_total_against_min_recipients() {
        let text = handover(serde_json::json!({"overlap": 1.0, "min_overlap": 0.5,
            "new_line_recipients": 25, "burst_recipients": 15, "min_recipients": 15,
            "burst_window_s": 3600}));
        assert!(
            text.contains("burst_recipients 15 >= min_recipients 15 (distinct recipients within burst_window_s 3600: 1 h"),
            "{text}"
        );
        assert!(text.contains("25 in all"), "{text}");
        assert!(!text.contains("new_line_recipients 25 >="), "{text}");
        // An older alert without the burst count does not pass the total off as one.
        let text = handover(serde_json::json!({"overlap": 1.0, "min_overlap": 0.5,
            "new_line_recipients": 25, "min_recipients": 15, "burst_window_s": 3600}));
        assert!(!text.contains("25 >="), "{text}");
        assert!(text.contains("does not carry"), "{text}");
    }

    /// Issue 13: the followers rule and a runner's hand-off read in plain words.
    #[test]
    fn followers_and_hand_offs_are_explained() {
        let map = |v: Value| v.as_object().unwrap().clone();
        let text = fan_in(&map(
            serde_json::json!({"customers": 5, "rule": "followed_new_number",
            "earlier_line": "Lold", "handover_at": 1_791_367_270_000i64,
            "follow_min_customers": 5, "follow_within_s": 86400,
            "customer_lookback_s": 604800}),
        ))
        .unwrap();
        assert!(text.contains("took over the audience of Lold"), "{text}");
        assert!(
            text.contains("customers 5 >= follow_min_customers 5"),
            "{text}"
        );
        let runner_ev = |extra: Value| {
            let mut ev = map(serde_json::json!({"switches": 2, "min_switches": 2,
                "window_s": 345600, "metro_areas": ["city"], "county_areas": ["town"],
                "metro_night": true, "county_night": true, "night_hours": "22-06",
                "metro_hours": 4, "county_hours": 5, "max_commute_hours": 12,
                "ties": ["deal_contact"], "trade_lines": ["Ldeal"], "sims": 1,
                "churn_min_sims": 3}));
            ev.extend(map(extra));
            ev
        };
        let text = runner(
            &runner_ev(serde_json::json!({"taken_over_by": "Hnew"})),
            &[],
        )
        .unwrap();
        assert!(text.contains("SIM moved into Hnew"), "{text}");
        let text = runner(
            &runner_ev(serde_json::json!({"earlier_handsets": ["Ha", "Hb"]})),
            &[],
        )
        .unwrap();
        assert!(
            text.contains("came into this handset from Ha, Hb"),
            "{text}"
        );
        let text = runner(
            &runner_ev(serde_json::json!({"earlier_handsets": ["Ha", "Hb"],
                "burnt_handsets": ["Hb"]})),
            &[],
        )
        .unwrap();
        assert!(
            text.contains("Of those, Hb came with no SIM in common"),
            "{text}"
        );
        let text = runner(
            &runner_ev(serde_json::json!({"taken_over_by": "Hnew", "taken_over_as": "burn"})),
            &[],
        )
        .unwrap();
        assert!(text.contains("a whole burn"), "{text}");
        assert!(!text.contains("SIM moved"), "{text}");
    }

    #[test]
    fn alerts_as_people_hand_them_over_are_explained() {
        let text = explain_json(&serde_json::json!({
            "alert_id": "0123456789abcdef0123456789abcdef", "detector": "bulk_sms",
            "subject": "L-9", "subject_kind": "sim", "score": 0.5, "event_time": 1.7e12,
            "window_start": 1.7e12, "window_end": 1.7e12,
            "evidence": {"recipients": 30.0, "min_recipients": 30, "window_s": 3600.0}
        }))
        .unwrap();
        assert!(text.contains("on sim L-9"), "{text}");
        assert!(
            text.contains("recipients 30 >= min_recipients 30"),
            "{text}"
        );
        assert!(explain_json(&serde_json::json!({"alert_id": "x"})).is_err());
    }

    #[test]
    fn a_figure_below_its_threshold_is_called_out() {
        assert_eq!(versus(40.0, 40.0), ">=");
        assert!(versus(39.0, 40.0).contains("below"));
    }
}
