//! The operators' files under `deploy/` against the service itself: every metric the Grafana
//! dashboard and the Prometheus alert rules query must be one that `/metrics` exports, so a
//! renamed metric breaks this test instead of silently emptying a panel or muting an alert.
//! The exported names come from the service's own registry, built in-process.

use std::collections::BTreeSet;
use std::path::Path;

use linewatch::service::metrics::Metrics;

const DASHBOARD: &str = "deploy/grafana/dashboards/linewatch.json";
const RULES: &str = "deploy/prometheus/rules/linewatch.rules.yml";

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Metric families `/metrics` exports, with their types. Families whose series only appear
/// once the service has seen something (per-partition lag, state sizes) are given a value
/// first, as a running service does.
fn exported() -> Vec<(String, String)> {
    let m = Metrics::new();
    m.consumer_lag("cdr-events", 0, 1);
    m.watermark_lag("cdr-events", 0, 1);
    m.state("contacts", 1, 1);
    m.render()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let mut it = l.split_whitespace();
            let name = it.next().unwrap_or_default().to_string();
            let kind = it.next().unwrap_or_default().to_string();
            (name, kind)
        })
        .collect()
}

/// Whether a name used in a query is served: a family itself, or a histogram's
/// `_bucket`/`_sum`/`_count` series.
fn is_exported(name: &str, families: &[(String, String)]) -> bool {
    families.iter().any(|(f, kind)| {
        name == f
            || (kind == "histogram"
                && ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(f.as_str())))
    })
}

/// The `linewatch_*` metric names a PromQL expression uses. Quoted strings (label values)
/// are skipped, so `instance=~"linewatch_x"` does not count.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut chars = expr.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '"' || c == '\'' || c == '`' {
            let mut escaped = false;
            for (_, d) in chars.by_ref() {
                if escaped {
                    escaped = false;
                } else if d == '\\' {
                    escaped = true;
                } else if d == c {
                    break;
                }
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let mut end = i + c.len_utf8();
            while let Some(&(j, d)) = chars.peek() {
                if d.is_ascii_alphanumeric() || d == '_' || d == ':' {
                    end = j + d.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            let word = &expr[i..end];
            if word.starts_with("linewatch_") {
                names.push(word.to_string());
            }
        }
    }
    names
}

/// Every PromQL query of the dashboard: panel targets and template variable queries.
fn dashboard_queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => dashboard_queries(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| dashboard_queries(v, out)),
        _ => {}
    }
}

/// The `expr:` of every rule, single-line or a `|` block.
fn rule_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut exprs = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some((indent, rest)) = line.split_once("expr:") else {
            continue;
        };
        if !indent.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let rest = rest.trim();
        if rest == "|" || rest == "|-" || rest == ">" {
            let block: Vec<&str> = lines[i + 1..]
                .iter()
                .take_while(|l| {
                    l.trim().is_empty() || l.len() - l.trim_start().len() > indent.len()
                })
                .map(|l| l.trim())
                .collect();
            exprs.push(block.join(" "));
        } else {
            exprs.push(rest.to_string());
        }
    }
    exprs
}

fn unexported(queries: &[String], families: &[(String, String)]) -> BTreeSet<String> {
    queries
        .iter()
        .flat_map(|q| metric_names(q))
        .filter(|n| !is_exported(n, families))
        .collect()
}

#[test]
fn every_metric_the_dashboard_queries_is_exported() {
    let families = exported();
    let dashboard: serde_json::Value =
        serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is valid JSON");
    let mut queries = Vec::new();
    dashboard_queries(&dashboard, &mut queries);
    assert!(queries.len() >= 20, "only {} queries found", queries.len());
    for q in &queries {
        assert!(
            !metric_names(q).is_empty(),
            "query uses no linewatch metric: {q}"
        );
    }
    let missing = unexported(&queries, &families);
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics /metrics does not export: {missing:?}"
    );
}

#[test]
fn the_dashboard_shows_what_operators_asked_for() {
    let text = read(DASHBOARD);
    // Throughput by result, alerts by detector, record-to-alert quantiles, lag per partition,
    // state size, rebalances, reloads (issue 12).
    for name in [
        "linewatch_records_total",
        "linewatch_alerts_total",
        "linewatch_record_to_alert_seconds_bucket",
        "linewatch_consumer_lag_records",
        "linewatch_watermark_lag_seconds",
        "linewatch_state_bytes",
        "linewatch_rebalances_total",
        "linewatch_config_reloads_total",
    ] {
        assert!(text.contains(name), "the dashboard has no panel on {name}");
    }
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let panels = dashboard["panels"].as_array().expect("a panel list");
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let targets = p["targets"].as_array().map_or(0, Vec::len);
        assert!(targets > 0, "panel {} has no query", p["title"]);
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "panel {} does not use the data source variable",
            p["title"]
        );
    }
}

#[test]
fn every_metric_the_alert_rules_query_is_exported() {
    let families = exported();
    let exprs = rule_exprs(&read(RULES));
    assert!(
        exprs.len() >= 7,
        "only {} rule expressions found",
        exprs.len()
    );
    let missing = unexported(&exprs, &families);
    assert!(
        missing.is_empty(),
        "the alert rules query metrics /metrics does not export: {missing:?}"
    );
}

#[test]
fn the_name_check_accepts_histogram_series_and_catches_unknown_names() {
    let families = exported();
    assert!(is_exported(
        "linewatch_record_to_alert_seconds_bucket",
        &families
    ));
    assert!(is_exported("linewatch_batch_seconds_count", &families));
    // A counter has no _bucket series; a misspelt name is not exported.
    assert!(!is_exported("linewatch_records_total_bucket", &families));
    assert!(!is_exported("linewatch_record_total", &families));
    assert_eq!(
        metric_names(
            r#"sum by (le) (rate(linewatch_a_bucket{instance=~"linewatch_b"}[5m])) / linewatch_c"#
        ),
        ["linewatch_a_bucket", "linewatch_c"]
    );
}
