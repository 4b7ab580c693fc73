//! Integrity benchmarks (they measure, they do not assert timings).
//!
//! ```text
//! cargo bench --bench integrity_bench
//! ```
//!
//! `BENCH_EVENTS` (default 1 000 000) sets the number of rows, `BENCH_VARIANTS` picks variants
//! (`NoSealSchema,SealingOff,SealingOn`), `BENCH_ROUNDS` repeats them interleaved. Each variant uses a fresh
//! database; rows are written the sink's way (`Store::insert`, batches of 5 000, COPY, four
//! statements per batch).

// A measurement harness, not shipped code: a failed setup step may panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use audit_manager::event::{Row, ValidationMode, row_from_record};
use audit_manager::integrity::seal::Signer;
use audit_manager::integrity::sealer::{observe, seal_pass};
use audit_manager::integrity::verify::{VerifyOptions, verify};
use audit_manager::store::Store;
use common::{TestDb, count_rows};
use ed25519_dalek::SigningKey;
use serde_json::json;
use sqlx::Connection as _;

fn events() -> usize {
    std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

/// The same realistic event as `sink_bench`.
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

#[derive(Debug, Clone, Copy, PartialEq)]
enum Variant {
    /// The table as it was before sealing existed: no `seal_seq` default, no index.
    NoSealSchema,
    /// The shipped schema, no sealer running.
    SealingOff,
    /// The shipped schema and a sealer sealing every second while rows are written.
    SealingOn,
}

struct Outcome {
    rows_per_sec: f64,
    max_lag_secs: f64,
    /// Rows the sealer covered before the writes ended (the rest is left to the final pass).
    sealed_while_writing: u64,
}

async fn run(variant: Variant, rows: &[Row]) -> (Outcome, TestDb) {
    let db = TestDb::new().await;
    let store = Store::connect_lazy(&db.url, 6).unwrap();
    store.prepare().await.unwrap();
    let pool = db.pool().await;
    if variant == Variant::NoSealSchema {
        sqlx::query("ALTER TABLE audit_events ALTER COLUMN seal_seq DROP DEFAULT")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("DROP INDEX idx_audit_events_seal_seq")
            .execute(&pool)
            .await
            .unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let sealer = (variant == Variant::SealingOn).then(|| {
        let (url, stop, pool) = (db.url.clone(), stop.clone(), pool.clone());
        tokio::spawn(async move {
            let signer = Signer::new(SigningKey::from_bytes(&[3; 32]));
            let mut max_lag: f64 = 0.0;
            let mut sealed = 0;
            while !stop.load(Ordering::Relaxed) {
                let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
                sealed += seal_pass(&mut conn, &signer, None).await.unwrap().rows;
                let _ = conn.close().await;
                let (lag, _) = observe(&pool).await.unwrap();
                max_lag = max_lag.max(lag);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            (max_lag, sealed)
        })
    });
    let started = Instant::now();
    for chunk in rows.chunks(5000) {
        store.insert(chunk).await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    // The pass running when the writes end still counts: it began while they ran.
    let (max_lag_secs, sealed_while_writing) = match sealer {
        Some(h) => h.await.unwrap(),
        None => (0.0, 0),
    };
    assert_eq!(count_rows(&pool).await, rows.len() as i64);
    store.close().await;
    (
        Outcome {
            rows_per_sec: rows.len() as f64 / secs,
            max_lag_secs,
            sealed_while_writing,
        },
        db,
    )
}

async fn bench_sink_with_and_without_sealing_then_verify() {
    let n = events();
    let now = chrono::Utc::now();
    let rows: Vec<Row> = (0..n)
        .map(|i| row_from_record(&payload(i), now, ValidationMode::default()).unwrap())
        .collect();
    let variants = std::env::var("BENCH_VARIANTS")
        .unwrap_or_else(|_| "NoSealSchema,SealingOff,SealingOn".into());
    // BENCH_ROUNDS > 1 interleaves the variants, so a busy neighbour hurts them alike.
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let all = [
        Variant::NoSealSchema,
        Variant::SealingOff,
        Variant::SealingOn,
    ];
    // Every other round runs the variants in reverse order: the variant after another one
    // inherits its checkpoint and the drop of its database, which would otherwise weigh on the
    // same variant in every round.
    let order = (0..rounds).flat_map(|round| {
        let mut this = all;
        if round % 2 == 1 {
            this.reverse();
        }
        this
    });
    for variant in order {
        if !variants.split(',').any(|v| v == format!("{variant:?}")) {
            continue;
        }
        let (o, db) = run(variant, &rows).await;
        println!(
            "{variant:?}: {n} rows in batches of 5000: {:.0} rows/s",
            o.rows_per_sec
        );
        if variant != Variant::SealingOn {
            continue;
        }
        println!(
            "SealingOn: largest seal lag seen by the sealer: {:.1}s; sealed by the passes begun \
             while writing: {} rows",
            o.max_lag_secs, o.sealed_while_writing
        );
        let pool = db.pool().await;
        let signer = Signer::new(SigningKey::from_bytes(&[3; 32]));
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let started = Instant::now();
        let pass = seal_pass(&mut conn, &signer, None).await.unwrap();
        println!(
            "final seal pass: {} rows in {} seals in {:.2}s",
            pass.rows,
            pass.sealed.len(),
            started.elapsed().as_secs_f64()
        );
        let keys = std::collections::BTreeMap::from([(signer.key_id(), signer.verifying_key())]);
        let started = Instant::now();
        let mut out = Vec::new();
        let report = verify(&pool, &keys, &VerifyOptions::default(), &mut out)
            .await
            .unwrap();
        let secs = started.elapsed().as_secs_f64();
        assert!(report.is_clean(), "{}", String::from_utf8_lossy(&out));
        assert_eq!(report.rows_ok as usize, n);
        println!(
            "verify: {} rows, {} seals in {secs:.1}s: {:.0} rows/s",
            report.rows_ok,
            report.seals,
            report.rows_ok as f64 / secs
        );
    }
}

fn main() {
    support::run(&[("bench_sink_with_and_without_sealing_then_verify", || {
        support::multi_thread(bench_sink_with_and_without_sealing_then_verify())
    })]);
}
