//! Sink throughput benchmarks (ignored: they measure, they do not assert timings).
//!
//! ```text
//! cargo test --release --test sink_bench -- --ignored --nocapture --test-threads 1
//! ```
//!
//! `BENCH_EVENTS` (default 1 000 000) sets the number of events. Each benchmark uses a fresh
//! database, so every insert lands in the indexed, partitioned `audit_events`.

mod common;

use std::time::{Duration, Instant};

use audit_manager::config::Role;
use audit_manager::event::{Row, row_from_record};
use audit_manager::serve::StartOptions;
use audit_manager::store::{InsertMethod, Store};
use common::{TOPIC, TestApp, TestDb, TestKafka, count_rows, sink_config};
use serde_json::json;

fn events() -> usize {
    std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

/// A realistic event like the load generator's: actor extras, a resource, `changes`.
fn payload(i: usize) -> Vec<u8> {
    json!({
        "specversion": "1.0", "id": format!("bench-{i}"), "source": "urn:openg2p:registry",
        "type": "org.openg2p.beneficiary.updated", "subject": format!("beneficiary/{}", i % 1000),
        "time": format!("2026-11-{:02}T{:02}:{:02}:00.000Z", 1 + i % 20, i % 24, i % 60),
        "datacontenttype": "application/json",
        "data": {
            "actor": {"type": "user", "id": format!("user-{}", i % 997), "name": "Load User",
                      "roles": ["officer"], "ip": "10.0.0.1"},
            "action": "beneficiary.update", "outcome": "success",
            "resource": {"type": "beneficiary", "id": format!("{}", i % 1000)},
            "changes": [{"field": "phone", "old": "x", "new": format!("{i}")}]
        }
    })
    .to_string()
    .into_bytes()
}

async fn store_only(method: InsertMethod, rows: &[Row]) -> f64 {
    let db = TestDb::new().await;
    let store = Store::connect_lazy(&db.url, 2)
        .unwrap()
        .with_insert_method(method);
    store.prepare().await.unwrap();
    let started = Instant::now();
    for chunk in rows.chunks(5000) {
        store.insert(chunk).await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(count_rows(&db.pool().await).await, rows.len() as i64);
    rows.len() as f64 / secs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run explicitly with --ignored --nocapture"]
async fn bench_insert_methods_into_indexed_table() {
    let n = events();
    let now = chrono::Utc::now();
    let rows: Vec<Row> = (0..n)
        .map(|i| row_from_record(&payload(i), now).unwrap())
        .collect();
    for method in [InsertMethod::Unnest, InsertMethod::Copy] {
        let rate = store_only(method, &rows).await;
        println!("store-only {method:?}: {n} rows in batches of 5000: {rate:.0} rows/s");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run explicitly with --ignored --nocapture"]
async fn bench_sink_kafka_to_postgres() {
    let n = events();
    let kafka = TestKafka::new(4);
    let db = TestDb::new().await;
    let producer = kafka.producer();
    let started = Instant::now();
    let mut pending = Vec::with_capacity(10_000);
    for i in 0..n {
        let value = payload(i);
        let key = format!("beneficiary/{}", i % 1000);
        let p = producer.clone();
        pending.push(async move {
            let rec = rdkafka::producer::FutureRecord::to(TOPIC)
                .key(&key)
                .payload(&value);
            p.send(rec, Duration::from_secs(60)).await.map(|_| ())
        });
        if pending.len() == 10_000 {
            for r in futures_util::future::join_all(pending.drain(..)).await {
                r.map_err(|(e, _)| e).unwrap();
            }
        }
    }
    for r in futures_util::future::join_all(pending.drain(..)).await {
        r.map_err(|(e, _)| e).unwrap();
    }
    println!(
        "produced {n} events to the mock broker in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let pool = db.pool().await;
    let started = Instant::now();
    let _app = TestApp::start_with(
        |c| *c = sink_config(&kafka, &db.url, &[Role::Sink]),
        StartOptions::default(),
    )
    .await;
    common::eventually(Duration::from_secs(1800), "all rows", || async {
        (count_rows(&pool).await >= n as i64).then_some(())
    })
    .await;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "sink (Kafka mock -> PostgreSQL, batch 5000, default insert method): {n} events in \
         {secs:.1}s = {:.0} rows/s (includes consumer group join)",
        n as f64 / secs
    );
}
