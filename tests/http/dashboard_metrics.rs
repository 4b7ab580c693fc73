//! The Grafana dashboard the chart ships queries only metrics the service exports.
//!
//! One process runs every role against the mock Kafka cluster and a fresh database, takes
//! events over HTTP until they are rows, and sends a poison record to the DLQ; then every
//! series name in `helm/audit-manager/dashboards/*.json` must appear in `GET /metrics`. A few
//! counters only come into being on failures this test does not provoke (a broken disk, a
//! broker refusing records, a partition past retention); those must at least be registered by
//! the service's code, and are listed here by name so the list is reviewed when it changes.

use crate::common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use audit_manager::config::Role;
use audit_manager::serve::StartOptions;
use common::{TOPIC, TestApp, TestDb, TestKafka, count_rows, event, eventually};

/// Series that exist only after a failure this test does not cause.
const ONLY_AFTER_FAILURES: &[&str] = &[
    "audit_spool_commit_failures_total",
    "audit_forward_delivery_errors_total",
    "audit_forward_quarantined_total",
    "audit_spool_quarantined_total",
    "audit_sink_batch_failures_total",
    "audit_partitions_dropped_total",
];

/// Every `audit_*` series name the dashboards query.
fn dashboard_series() -> BTreeSet<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("helm/audit-manager/dashboards");
    let mut names = BTreeSet::new();
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).expect("dashboards directory") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        files += 1;
        let text = std::fs::read_to_string(&path).expect("read dashboard");
        let json: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
        let mut exprs = Vec::new();
        collect_exprs(&json, &mut exprs);
        assert!(!exprs.is_empty(), "{} has no queries", path.display());
        for expr in exprs {
            names.extend(series_in(&expr));
        }
    }
    assert!(files > 0, "no dashboard in {}", dir.display());
    names
}

/// Query strings of panels (`expr`) and template variables (`query`, `definition`).
fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "definition" | "query", serde_json::Value::String(s)) => {
                        out.push(s.clone())
                    }
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| collect_exprs(i, out)),
        _ => {}
    }
}

/// `audit_…` identifiers in a PromQL expression.
fn series_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("audit_") {
        let before = rest[..i].chars().next_back();
        let tail = &rest[i..];
        let len = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            out.push(tail[..len].to_string());
        }
        rest = &tail[len..];
    }
    out
}

/// Whether the exposition text has a sample of `name` (with or without labels).
fn exported(metrics: &str, name: &str) -> bool {
    metrics.lines().any(|l| {
        l.strip_prefix(name)
            .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
    })
}

/// Whether the service's source registers `name` through a `metrics` macro.
fn registered_in_source(name: &str) -> bool {
    fn walk(dir: &Path, needle: &str) -> bool {
        std::fs::read_dir(dir).expect("read src").any(|e| {
            let p = e.expect("entry").path();
            if p.is_dir() {
                walk(&p, needle)
            } else {
                p.extension().is_some_and(|e| e == "rs")
                    && std::fs::read_to_string(&p).is_ok_and(|t| t.contains(needle))
            }
        })
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    walk(&src, &format!("\"{name}\""))
}

#[test]
fn series_names_are_parsed_from_promql() {
    let names = series_in(
        "histogram_quantile(0.99, sum by (le) (rate(audit_http_request_duration_seconds_bucket\
         {job=~\"$job\"}[5m]))) / my_audit_x + audit_spool_events",
    );
    assert_eq!(
        names,
        [
            "audit_http_request_duration_seconds_bucket",
            "audit_spool_events"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_metric_is_exported() {
    let wanted = dashboard_series();
    assert!(wanted.len() > 10, "too few series found: {wanted:?}");

    let kafka = TestKafka::new(2);
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let opts = StartOptions {
        forward: Some(common::kafka::fast_settings()),
        ..StartOptions::default()
    };
    let app = TestApp::start_with(
        |c| {
            let base = common::sink_config(
                &kafka,
                &db.url,
                &[Role::Ingest, Role::Forward, Role::Sink, Role::Maintain],
            );
            c.roles = base.roles;
            c.kafka = base.kafka;
            c.sink = base.sink;
            c.database = base.database;
        },
        opts,
    )
    .await;

    for i in 0..20 {
        let (status, body) = app.post_json("/events", &event(&format!("dash-{i}"))).await;
        assert_eq!(status, 202, "{body}");
    }
    let (status, body) = app
        .post_json("/events", &serde_json::json!({"nope": 1}))
        .await;
    assert_eq!(status, 422, "{body}");
    eventually(
        Duration::from_secs(60),
        "20 rows in audit_events",
        || async { (count_rows(&pool).await == 20).then_some(()) },
    )
    .await;
    let p = kafka.producer();
    kafka.produce(&p, TOPIC, "poison", b"{not json").await;

    // Wait (bounded) until the dead letter and every role's series have shown up.
    let until = std::time::Instant::now() + Duration::from_secs(60);
    let metrics = loop {
        let (status, text) = app.get_text("/metrics").await;
        assert_eq!(status, 200);
        let missing: Vec<&String> = wanted
            .iter()
            .filter(|n| !ONLY_AFTER_FAILURES.contains(&n.as_str()) && !exported(&text, n))
            .collect();
        if missing.is_empty() {
            break text;
        }
        assert!(
            std::time::Instant::now() < until,
            "the dashboard queries series GET /metrics does not export: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    for name in &wanted {
        if exported(&metrics, name) {
            continue;
        }
        assert!(
            ONLY_AFTER_FAILURES.contains(&name.as_str()),
            "the dashboard queries {name}, which GET /metrics does not export"
        );
        assert!(
            registered_in_source(name),
            "the dashboard queries {name}, which no code in src/ registers"
        );
    }
    for name in ONLY_AFTER_FAILURES {
        assert!(
            registered_in_source(name),
            "{name} is no longer registered in src/"
        );
    }
}
