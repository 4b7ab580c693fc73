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

async fn store_only(method: InsertMethod, parallelism: usize, rows: &[Row]) -> f64 {
    let db = TestDb::new().await;
    let store = Store::connect_lazy(&db.url, 4)
        .unwrap()
        .with_insert_method(method)
        .with_insert_parallelism(parallelism);
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
        for parallelism in [1, 2] {
            let rate = store_only(method, parallelism, &rows).await;
            println!(
                "store-only {method:?}, {parallelism} statement(s) per batch: {n} rows in \
                 batches of 5000: {rate:.0} rows/s"
            );
        }
    }
}

/// The whole sink: consume from the broker, decode and validate, insert, commit offsets.
///
/// librdkafka's mock broker keeps only ~5 MB per partition, so the events cannot all be
/// produced up front: a producer task runs alongside and keeps the backlog (produced − stored)
/// under `MAX_BACKLOG`, always ahead of the sink. The rate is measured from the first stored
/// row to the last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run explicitly with --ignored --nocapture"]
async fn bench_sink_kafka_to_postgres() {
    const PARTITIONS: i32 = 12;
    const MAX_BACKLOG: i64 = 40_000;
    let n = events();
    let kafka = TestKafka::new(PARTITIONS);
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let _app = TestApp::start_with(
        |c| *c = sink_config(&kafka, &db.url, &[Role::Sink]),
        StartOptions::default(),
    )
    .await;
    let producer = kafka.producer();
    let stored = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    let feeder = {
        let stored = stored.clone();
        tokio::spawn(async move {
            let mut sent = 0usize;
            while sent < n {
                if sent as i64 - stored.load(std::sync::atomic::Ordering::Relaxed) > MAX_BACKLOG {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                let chunk: Vec<_> = (sent..(sent + 5_000).min(n))
                    .map(|i| {
                        let value = payload(i);
                        let key = format!("beneficiary/{}", i % 1000);
                        let p = producer.clone();
                        async move {
                            let rec = rdkafka::producer::FutureRecord::to(TOPIC)
                                .key(&key)
                                .payload(&value);
                            p.send(rec, Duration::from_secs(60)).await.map(|_| ())
                        }
                    })
                    .collect();
                sent += chunk.len();
                for r in futures_util::future::join_all(chunk).await {
                    r.map_err(|(e, _)| e).unwrap();
                }
            }
        })
    };
    let mut first: Option<Instant> = None;
    let until = Instant::now() + Duration::from_secs(3600);
    loop {
        let c = count_rows(&pool).await;
        stored.store(c, std::sync::atomic::Ordering::Relaxed);
        if c > 0 && first.is_none() {
            first = Some(Instant::now());
        }
        if c >= n as i64 {
            break;
        }
        assert!(
            Instant::now() < until,
            "sink did not finish: {c} of {n} rows"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    feeder.await.unwrap();
    let secs = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    println!(
        "sink (mock broker -> PostgreSQL, batch 5000, UNNEST, 2 statements per batch): {n} \
         events in {secs:.1}s = {:.0} rows/s",
        n as f64 / secs.max(1e-9)
    );
}
