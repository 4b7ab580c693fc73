//! Forward-rate benchmarks against the in-process mock broker (not run by default: they
//! measure, they do not assert speed). Run them optimized:
//!
//! ```text
//! cargo bench --bench forward_bench
//! ```
//!
//! - `bench_spool_to_kafka`: a spool pre-filled with 200k events (~600-byte values), then the
//!   forwarder alone drains it: spool → Kafka events/s.
//! - `bench_ingest_and_forward`: HTTP batch POSTs (16 clients x 100-event batches, every 202
//!   fsynced) with the forwarder running in the same process, until the spool is empty.

// A measurement harness, not shipped code: a failed setup step may panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use audit_manager::config::Config;
use audit_manager::forward::{ForwardSettings, Forwarder};
use audit_manager::spool::{Record, Spool, SpoolOptions};
use common::kafka::{MockKafka, eventually, forwarding};
use common::{TestApp, event};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const EVENTS: u64 = 200_000;

async fn bench_spool_to_kafka() {
    let kafka = MockKafka::new(1, 3);
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&SpoolOptions {
        dir: dir.path().join("spool"),
        max_bytes: u64::MAX,
        max_pending_appends: 64,
    })
    .unwrap();
    let template = event("x");
    for chunk in 0..EVENTS / 1000 {
        let records: Vec<Record> = (0..1000)
            .map(|i| {
                let id = format!("b-{chunk}-{i}");
                let mut e = template.clone();
                e["id"] = json!(id);
                e["subject"] = json!(format!("beneficiary/{}", i % 997));
                Record {
                    accepted_at_ms: audit_manager::spool::now_ms(),
                    id,
                    key: e["subject"].as_str().map(str::to_string),
                    value: serde_json::to_vec(&e).unwrap(),
                }
            })
            .collect();
        spool.append(&records).await.unwrap();
    }
    let bytes = spool.stats().live_bytes;
    let mut config = Config::default();
    forwarding(&mut config, &kafka.bootstrap);
    let f = Forwarder::new(&config, spool.clone(), ForwardSettings::default())
        .unwrap()
        .topics_precreated();
    let token = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(f.run(token.clone()));
    eventually(Duration::from_secs(600), "the spool to drain", || async {
        (spool.stats().live_events == 0).then_some(())
    })
    .await;
    let secs = started.elapsed().as_secs_f64();
    token.cancel();
    task.await.unwrap();
    spool.close().await;
    println!(
        "spool -> Kafka: {EVENTS} events ({:.0} MiB) in {secs:.2}s = {:.0} events/s",
        bytes as f64 / 1048576.0,
        EVENTS as f64 / secs
    );
}

async fn bench_ingest_and_forward() {
    const CLIENTS: u64 = 16;
    const BATCH: u64 = 100;
    let kafka = MockKafka::new(1, 3);
    let app = Arc::new(
        TestApp::start_with(
            |c| forwarding(c, &kafka.bootstrap),
            audit_manager::serve::StartOptions::default(),
        )
        .await,
    );
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (app, next) = (app.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let first = next.fetch_add(BATCH, Ordering::Relaxed);
                if first >= EVENTS {
                    break;
                }
                let events: Vec<_> = (first..first + BATCH)
                    .map(|n| event(&format!("i-{n}")))
                    .collect();
                let (status, body) = app
                    .post_json("/events/batch", &json!({ "events": events }))
                    .await;
                assert_eq!(status, 202, "{body}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let accepted = started.elapsed().as_secs_f64();
    eventually(Duration::from_secs(600), "the spool to drain", || async {
        (app.spool_events().await == 0).then_some(())
    })
    .await;
    let drained = started.elapsed().as_secs_f64();
    println!(
        "ingest + forward: {EVENTS} events accepted in {accepted:.2}s ({:.0} events/s), all in \
         Kafka and out of the spool after {drained:.2}s ({:.0} events/s end to end)",
        EVENTS as f64 / accepted,
        EVENTS as f64 / drained
    );
}

fn main() {
    support::run(&[
        ("bench_spool_to_kafka", || {
            support::multi_thread(bench_spool_to_kafka())
        }),
        ("bench_ingest_and_forward", || {
            support::multi_thread(bench_ingest_and_forward())
        }),
    ]);
}
