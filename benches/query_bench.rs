//! Query-role benchmarks on a large table (they measure, they do not assert timings).
//!
//! ```text
//! cargo bench --bench query_bench
//! ```
//!
//! The table is built once in the database `audit_bench_query` (`BENCH_QUERY_ROWS`, default
//! 10 000 000 rows over twelve months, 100 000 actors, 1 000 000 resources) and reused by later
//! runs while it holds that many rows; `BENCH_QUERY_REBUILD=1` builds it again. Every figure is
//! measured through HTTP against the running query role, so it includes the read's own audit
//! event (spooled and fsynced before the answer).

// A measurement harness, not shipped code: a failed setup step may panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::time::{Duration, Instant};

use audit_manager::config::Role;
use audit_manager::store::{Month, Store};
use chrono::{TimeZone, Utc};
use common::{TestApp, TestKafka, pg_admin_url};
use rand::{Rng, SeedableRng};
use sqlx::{Connection, Executor};

const DB: &str = "audit_bench_query";
const ACTORS: i64 = 100_000;
const RESOURCES: i64 = 1_000_000;

fn rows_wanted() -> i64 {
    std::env::var("BENCH_QUERY_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000)
}

fn start() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 12, 1, 0, 0, 0).unwrap()
}

const YEAR_MS: i64 = 365 * 86_400 * 1000;

async fn build_table(url: &str, n: i64) {
    let store = Store::connect_lazy(url, 2).expect("store");
    store.prepare().await.expect("schema");
    let months: Vec<Month> = (0..13)
        .map(|i| Month::of(start() + chrono::Duration::days(31 * i)))
        .collect();
    store.ensure_months(months).await.expect("partitions");
    let have: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events")
        .fetch_one(store.pool())
        .await
        .unwrap();
    let rebuild = std::env::var("BENCH_QUERY_REBUILD").is_ok_and(|v| v == "1");
    if have == n && !rebuild {
        println!("reusing {have} rows in {DB}");
        store.close().await;
        return;
    }
    store.pool().execute("TRUNCATE audit_events").await.unwrap();
    let step_ms = YEAR_MS / n;
    let chunk = 500_000i64;
    let began = Instant::now();
    let mut lo = 0i64;
    while lo < n {
        let hi = (lo + chunk).min(n) - 1;
        sqlx::query(
            "INSERT INTO audit_events (id, occurred_at, source, type, subject, actor_type, \
             actor_id, resource_type, resource_id, action, outcome, trace_id, details) \
             SELECT 'q-' || g, $1 + (g * $2) * interval '1 millisecond', '/registry', \
             'org.openg2p.type.' || (g % 20), 'beneficiary/' || (g % 1000000), 'user', \
             'user-' || ((g * 7919) % $3), 'beneficiary', 'res-' || ((g * 104729) % $4), \
             'beneficiary.update', (ARRAY['success','failure','denied'])[1 + g % 3], \
             CASE WHEN g % 3 = 0 THEN md5((g / 3)::text) END, \
             jsonb_build_object('changes', jsonb_build_array(jsonb_build_object('field', \
             'phone', 'before', 'x', 'after', g::text))) \
             FROM generate_series($5::bigint, $6::bigint) g",
        )
        .bind(start())
        .bind(step_ms as f64)
        .bind(ACTORS)
        .bind(RESOURCES)
        .bind(lo)
        .bind(hi)
        .execute(store.pool())
        .await
        .expect("generate rows");
        lo = hi + 1;
        println!(
            "  {lo} / {n} rows ({:.0} rows/s)",
            lo as f64 / began.elapsed().as_secs_f64()
        );
    }
    store
        .pool()
        .execute("VACUUM ANALYZE audit_events")
        .await
        .unwrap();
    println!("built {n} rows in {:.0} s", began.elapsed().as_secs_f64());
    store.close().await;
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

async fn latencies(app: &TestApp, label: &str, n: usize, mut path: impl FnMut(usize) -> String) {
    // Warm-up: the first statements of each connection are planned from scratch.
    for i in 0..20 {
        let (status, _) = app.get(&path(i)).await;
        assert_eq!(status, 200);
    }
    let mut times = Vec::with_capacity(n);
    let mut rows = 0usize;
    for i in 0..n {
        let t = Instant::now();
        let (status, body) = app.get(&path(1000 + i)).await;
        times.push(t.elapsed());
        assert_eq!(status, 200, "{body}");
        rows += body["response"]["events"].as_array().map_or(0, Vec::len);
    }
    times.sort();
    println!(
        "{label}: {n} requests, {:.1} rows/answer, p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        rows as f64 / n as f64,
        percentile(&times, 0.50),
        percentile(&times, 0.90),
        percentile(&times, 0.99),
        percentile(&times, 1.0),
    );
}

async fn bench_query_latency_and_export_on_a_large_table() {
    {
        let mut admin = sqlx::PgConnection::connect(&format!("{}/postgres", pg_admin_url()))
            .await
            .unwrap();
        let _ = admin
            .execute(format!("CREATE DATABASE {DB}").as_str())
            .await;
    }
    let url = format!("{}/{DB}", pg_admin_url());
    let n = rows_wanted();
    build_table(&url, n).await;

    let kafka = TestKafka::new(1);
    let db_url = url.clone();
    let mut app = TestApp::with_kafka(&kafka.bootstrap.clone(), move |c| {
        c.roles = vec![Role::Query, Role::Forward];
        c.database.url = db_url.into();
        c.query.allow_anonymous = true;
    })
    .await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut windows: Vec<(i64, i64)> = (0..2000)
        .map(|_| {
            let from = rng.random_range(0..YEAR_MS - 30 * 86_400_000);
            (rng.random_range(0..ACTORS), from)
        })
        .collect();
    let fmt = |ms: i64| {
        (start() + chrono::Duration::milliseconds(ms))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    latencies(
        &app,
        "actor timeline, 30-day window, first page (limit 100)",
        1000,
        |i| {
            let (actor, from) = windows[i % windows.len()];
            format!(
                "/events?actor_id=user-{actor}&from={}&to={}&limit=100",
                fmt(from),
                fmt(from + 30 * 86_400_000)
            )
        },
    )
    .await;
    windows.reverse();
    latencies(&app, "resource history, all time (limit 100)", 1000, |i| {
        let r = (windows[i % windows.len()].0 * 7 + i as i64) % RESOURCES;
        format!("/events?resource_type=beneficiary&resource_id=res-{r}&limit=100")
    })
    .await;

    // Export: every event of one type over the year, streamed as NDJSON.
    let began = Instant::now();
    let mut resp = app
        .client
        .get(app.url("/events?type=org.openg2p.type.7"))
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (mut lines, mut bytes) = (0usize, 0usize);
    while let Some(chunk) = resp.chunk().await.unwrap() {
        bytes += chunk.len();
        lines += chunk.iter().filter(|b| **b == b'\n').count();
    }
    let secs = began.elapsed().as_secs_f64();
    println!(
        "export NDJSON (type filter): {lines} rows, {:.1} MiB in {secs:.1} s = {:.0} rows/s",
        bytes as f64 / 1048576.0,
        lines as f64 / secs
    );
    app.stop().await;
}

fn main() {
    support::run(&[("bench_query_latency_and_export_on_a_large_table", || {
        support::multi_thread(bench_query_latency_and_export_on_a_large_table())
    })]);
}
