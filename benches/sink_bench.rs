//! Sink throughput benchmarks (they measure, they do not assert timings).
//!
//! ```text
//! cargo bench --bench sink_bench
//! ```
//!
//! `BENCH_EVENTS` (default 1 000 000) sets the number of events (per variant and round in
//! `bench_sink_with_sealing_off_and_on`). Each benchmark uses a fresh
//! database, so every insert lands in the indexed, partitioned `audit_events`.

// A measurement harness, not shipped code: a failed setup step may panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::time::{Duration, Instant};

use audit_manager::config::Role;
use audit_manager::event::{Row, ValidationMode, row_from_record};
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

/// Produces events `range` (keyed by subject) and waits for every acknowledgement.
async fn produce_events(
    producer: &rdkafka::producer::FutureProducer,
    range: std::ops::Range<usize>,
) {
    let sends = range.map(|i| {
        let value = payload(i);
        let key = format!("beneficiary/{}", i % 1000);
        let p = producer.clone();
        async move {
            let rec = rdkafka::producer::FutureRecord::to(TOPIC)
                .key(&key)
                .payload(&value);
            p.send(rec, Duration::from_secs(60)).await.map(|_| ())
        }
    });
    for r in futures_util::future::join_all(sends).await {
        r.map_err(|(e, _)| e).unwrap();
    }
}

async fn store_only(method: InsertMethod, parallelism: usize, rows: &[Row]) -> f64 {
    let db = TestDb::new().await;
    let store = Store::connect_lazy(&db.url, 6)
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

async fn bench_insert_methods_into_indexed_table() {
    let n = events();
    let now = chrono::Utc::now();
    let rows: Vec<Row> = (0..n)
        .map(|i| row_from_record(&payload(i), now, ValidationMode::default()).unwrap())
        .collect();
    let methods = std::env::var("BENCH_METHODS").unwrap_or_else(|_| "Unnest,Copy,CopyFirst".into());
    for method in [
        InsertMethod::Unnest,
        InsertMethod::Copy,
        InsertMethod::CopyFirst,
    ] {
        if !methods.split(',').any(|m| m == format!("{method:?}")) {
            continue;
        }
        for parallelism in [1, 2, 4] {
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
/// Fed while it consumes: a producer task in the same process keeps the backlog (produced −
/// stored) under `MAX_BACKLOG`, always ahead of the sink (librdkafka's mock broker keeps only
/// ~5 MB per partition, and this topic has 12). The rate is measured from the first stored row
/// to the last; progress is the sink's own counter, the total is checked once at the end.
async fn bench_sink_kafka_to_postgres() {
    const PARTITIONS: i32 = 12;
    const MAX_BACKLOG: i64 = 40_000;
    let n = events();
    let kafka = TestKafka::new(PARTITIONS);
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let baseline = rows_inserted();
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
                let end = (sent + 5_000).min(n);
                produce_events(&producer, sent..end).await;
                sent = end;
            }
        })
    };
    let (first, _) = wait_until_stored(baseline, n, |c| {
        stored.store(c as i64, std::sync::atomic::Ordering::Relaxed);
    })
    .await;
    feeder.await.unwrap();
    let secs = first.elapsed().as_secs_f64();
    assert_eq!(count_rows(&pool).await, n as i64, "every event stored once");
    println!(
        "sink (mock broker -> PostgreSQL, batch 5000, default insert method): {n} \
         events in {secs:.1}s = {:.0} rows/s",
        n as f64 / secs.max(1e-9)
    );
}

/// The sink alone: the whole topic is produced first (the producer is done before the sink
/// starts), then the sink drains it. Measures consume → decode → insert → commit, with only the
/// in-process mock broker serving fetches beside it.
///
/// The mock broker keeps at most 5 MB per partition, so the topic gets enough partitions
/// (`BENCH_PARTITIONS`, default 64) and the producer compresses; the benchmark checks that no
/// record was evicted before the sink started.
async fn bench_sink_drains_a_preloaded_topic() {
    use rdkafka::consumer::Consumer;
    let n = events();
    let partitions = partitions();
    let kafka = TestKafka::new(partitions);
    preload(&kafka, n, partitions).await;

    // The consumer alone (same settings as the sink's, nothing stored): the sink's ceiling.
    {
        use rdkafka::consumer::StreamConsumer;
        let mut kcfg = sink_config(&kafka, "postgres://unused", &[Role::Sink]).kafka;
        kcfg.consumer_group = format!("bench-read-{}", uuid::Uuid::new_v4());
        let c: StreamConsumer =
            audit_manager::sink::client::consumer_config(&kcfg, &kcfg.consumer_group)
                .create()
                .expect("consumer");
        c.subscribe(&[TOPIC]).unwrap();
        let started = Instant::now();
        let mut got = 0usize;
        while got < n {
            c.recv().await.expect("consume");
            got += 1;
        }
        println!(
            "consumer alone (sink's settings): {n} records in {:.1}s = {:.0} records/s",
            started.elapsed().as_secs_f64(),
            n as f64 / started.elapsed().as_secs_f64()
        );
    }

    let db = TestDb::new().await;
    let pool = db.pool().await;
    let baseline = rows_inserted();
    let started = Instant::now();
    let app = TestApp::start_with(
        |c| *c = sink_config(&kafka, &db.url, &[Role::Sink]),
        StartOptions::default(),
    )
    .await;
    // Measured from the first stored batch (so consumer-group start-up is not counted).
    let (t0, c0) = wait_until_stored(baseline, n, |_| {}).await;
    let wall = started.elapsed().as_secs_f64();
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(count_rows(&pool).await, n as i64, "every event stored once");
    if std::env::var_os("BENCH_SHOW_METRICS").is_some() {
        let (_, text) = app.get_text("/metrics").await;
        for l in text.lines().filter(|l| l.starts_with("audit_sink_batch")) {
            println!("{l}");
        }
    }
    println!(
        "sink draining a preloaded topic (mock broker -> PostgreSQL, batch 5000, default insert \
         method, 4 statements per batch): {n} events; {wall:.1}s from sink start; after the \
         first batch {} rows in {secs:.1}s = {:.0} rows/s",
        n as u64 - c0,
        (n as u64 - c0) as f64 / secs
    );
}

/// Produces events `0..n` into the topic (compressed, so the mock broker's ~5 MB per partition
/// holds them) and checks that the broker kept every record.
async fn preload(kafka: &TestKafka, n: usize, partitions: i32) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &kafka.bootstrap)
        .set("enable.idempotence", "true")
        .set("compression.type", "lz4")
        .set("linger.ms", "20")
        .create()
        .expect("producer");
    let started = Instant::now();
    for start in (0..n).step_by(20_000) {
        produce_events(&producer, start..(start + 20_000).min(n)).await;
    }
    println!(
        "preloaded {n} events into {partitions} partitions in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let probe: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &kafka.bootstrap)
        .create()
        .expect("probe consumer");
    let mut held = 0i64;
    for p in 0..partitions {
        let (low, high) = probe
            .fetch_watermarks(TOPIC, p, Duration::from_secs(10))
            .expect("watermarks");
        assert_eq!(
            low, 0,
            "the mock broker evicted records of partition {p}: raise BENCH_PARTITIONS"
        );
        held += high;
    }
    assert_eq!(held, n as i64);
    drop(producer);
}

fn partitions() -> i32 {
    std::env::var("BENCH_PARTITIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

/// The sink with sealing off and on, as deployed: one process with the sink and maintain roles
/// draining a preloaded topic into a fresh database, the maintain role sealing every
/// `BENCH_SEAL_INTERVAL` seconds (default 1; the shipped default is 60) in the "on" variant,
/// nothing else differing. `BENCH_ROUNDS` (default 3) interleaves the two, reversing their
/// order every other round; each drains the whole topic with a consumer group of its own.
///
/// After "on" it waits for the sealer to cover every row and runs `verify` over them.
async fn bench_sink_with_sealing_off_and_on() {
    let n = events();
    let partitions = partitions();
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let interval = Duration::from_secs_f64(
        std::env::var("BENCH_SEAL_INTERVAL")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1.0),
    );
    let kafka = TestKafka::new(partitions);
    kafka
        .cluster
        .create_topic("openg2p.audit.seals", 1, 1)
        .unwrap();
    preload(&kafka, n, partitions).await;
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("seal.key");
    audit_manager::integrity::seal::keygen(&key).unwrap();
    let public = keys.path().join("seal.key.pub");
    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for sealing in order {
            let db = TestDb::new().await;
            let pool = db.pool().await;
            let baseline = rows_inserted();
            let (key, public_file) = (key.clone(), public.clone());
            let app = TestApp::start_with(
                |c| {
                    *c = sink_config(&kafka, &db.url, &[Role::Sink, Role::Maintain]);
                    c.kafka.consumer_group = format!("bench-seal-{}", uuid::Uuid::new_v4());
                    if sealing {
                        c.integrity.signing_key_file = Some(key);
                        c.integrity.public_key_files = vec![public_file];
                        c.integrity.seal_interval = interval;
                    }
                },
                StartOptions::default(),
            )
            .await;
            let mut max_lag: f64 = 0.0;
            let (t0, c0) = wait_until_stored(baseline, n, |_| {
                if sealing {
                    max_lag = max_lag.max(gauge("audit_seal_lag_seconds"));
                }
            })
            .await;
            let secs = t0.elapsed().as_secs_f64();
            let rate = (n as u64 - c0) as f64 / secs;
            assert_eq!(count_rows(&pool).await, n as i64, "every event stored once");
            let label = if sealing { "on" } else { "off" };
            rates[usize::from(sealing)].push(rate);
            let mut line = format!(
                "round {}: sealing {label}: {} rows in {secs:.1}s after the first batch = \
                 {rate:.0} rows/s",
                round + 1,
                n as u64 - c0
            );
            if sealing {
                let finished = Instant::now();
                let sealed: i64 = loop {
                    let sealed: i64 = sqlx::query_scalar(
                        "SELECT COALESCE(sum(leaves), 0)::int8 FROM audit_seals",
                    )
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                    if sealed >= n as i64 || finished.elapsed() > Duration::from_secs(600) {
                        break sealed;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                };
                assert_eq!(sealed, n as i64, "the sealer covered every row");
                let pk = audit_manager::integrity::seal::load_public_key(&public).unwrap();
                let keyring = std::collections::BTreeMap::from([(
                    audit_manager::integrity::seal::key_id(&pk),
                    pk,
                )]);
                let mut out = Vec::new();
                let report = audit_manager::integrity::verify::verify(
                    &pool,
                    &keyring,
                    &Default::default(),
                    &mut out,
                )
                .await
                .unwrap();
                assert!(report.is_clean(), "{}", String::from_utf8_lossy(&out));
                line += &format!(
                    "; largest seal lag {max_lag:.1}s; every row sealed {:.1}s after the last \
                     was stored; verify clean",
                    finished.elapsed().as_secs_f64()
                );
            }
            println!("{line}");
            app.shutdown().await;
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        let m = v.len() / 2;
        if v.len().is_multiple_of(2) {
            (v[m - 1] + v[m]) / 2.0
        } else {
            v[m]
        }
    };
    let (off, on) = (median(&rates[0]), median(&rates[1]));
    let per_round: Vec<f64> = rates[1]
        .iter()
        .zip(&rates[0])
        .map(|(on, off)| (on / off - 1.0) * 100.0)
        .collect();
    println!(
        "medians of {rounds} rounds: sealing off {off:.0} rows/s, on {on:.0} rows/s: {:+.1} %; \
         median of the rounds' own differences {:+.1} %",
        (on / off - 1.0) * 100.0,
        median(&per_round)
    );
}

/// The sink with writer attestation off and on, as deployed: one process with the sink and
/// maintain roles draining a preloaded topic into a fresh database, sealing every
/// `BENCH_SEAL_INTERVAL` seconds (default 1) in both variants; "on" adds
/// `integrity.writer_key_file`, so the sink attests every storing transaction and the sealer
/// (trusting the key's public half) seals only attested rows. `BENCH_ROUNDS` (default 3)
/// interleaves the two, reversing their order every other round.
///
/// After each variant it waits for the sealer to cover every row and runs `verify` (with the
/// writer key after "on": every row attested).
async fn bench_sink_with_attestation_off_and_on() {
    use audit_manager::integrity::attest::{Attestor, WriterKeys};
    let n = events();
    let partitions = partitions();
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let interval = Duration::from_secs_f64(
        std::env::var("BENCH_SEAL_INTERVAL")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1.0),
    );
    let kafka = TestKafka::new(partitions);
    kafka
        .cluster
        .create_topic("openg2p.audit.seals", 1, 1)
        .unwrap();
    preload(&kafka, n, partitions).await;
    let keys = tempfile::tempdir().unwrap();
    let (key, writer) = (keys.path().join("seal.key"), keys.path().join("writer.key"));
    audit_manager::integrity::seal::keygen(&key).unwrap();
    audit_manager::integrity::seal::keygen(&writer).unwrap();
    let pk =
        audit_manager::integrity::seal::load_public_key(&keys.path().join("seal.key.pub")).unwrap();
    let keyring =
        std::collections::BTreeMap::from([(audit_manager::integrity::seal::key_id(&pk), pk)]);
    let writer_keys = WriterKeys::new([Attestor::load(&writer).unwrap().verifying_key()]);
    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for attesting in order {
            let db = TestDb::new().await;
            let pool = db.pool().await;
            let baseline = rows_inserted();
            let (key, writer) = (key.clone(), writer.clone());
            let app = TestApp::start_with(
                |c| {
                    *c = sink_config(&kafka, &db.url, &[Role::Sink, Role::Maintain]);
                    c.kafka.consumer_group = format!("bench-attest-{}", uuid::Uuid::new_v4());
                    c.integrity.signing_key_file = Some(key);
                    c.integrity.seal_interval = interval;
                    if attesting {
                        c.integrity.writer_key_file = Some(writer);
                    }
                },
                StartOptions::default(),
            )
            .await;
            let mut max_lag: f64 = 0.0;
            let (t0, c0) = wait_until_stored(baseline, n, |_| {
                max_lag = max_lag.max(gauge("audit_seal_lag_seconds"));
            })
            .await;
            let secs = t0.elapsed().as_secs_f64();
            let rate = (n as u64 - c0) as f64 / secs;
            assert_eq!(count_rows(&pool).await, n as i64, "every event stored once");
            rates[usize::from(attesting)].push(rate);
            let finished = Instant::now();
            let sealed: i64 = loop {
                let sealed: i64 =
                    sqlx::query_scalar("SELECT COALESCE(sum(leaves), 0)::int8 FROM audit_seals")
                        .fetch_one(&pool)
                        .await
                        .unwrap();
                if sealed >= n as i64 || finished.elapsed() > Duration::from_secs(600) {
                    break sealed;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            let sealed_after = finished.elapsed().as_secs_f64();
            assert_eq!(sealed, n as i64, "the sealer covered every row");
            let opts = audit_manager::integrity::verify::VerifyOptions {
                writer_keys: if attesting {
                    writer_keys.clone()
                } else {
                    WriterKeys::default()
                },
                ..Default::default()
            };
            let mut out = Vec::new();
            let report = audit_manager::integrity::verify::verify(&pool, &keyring, &opts, &mut out)
                .await
                .unwrap();
            assert!(report.is_clean(), "{}", String::from_utf8_lossy(&out));
            if attesting {
                assert_eq!(report.attested_rows, n as u64, "every row attested");
            }
            println!(
                "round {}: attestation {}: {} rows in {secs:.1}s after the first batch = \
                 {rate:.0} rows/s; largest seal lag {max_lag:.1}s; every row sealed \
                 {sealed_after:.1}s after the last was stored; verify clean",
                round + 1,
                if attesting { "on" } else { "off" },
                n as u64 - c0
            );
            app.shutdown().await;
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        let m = v.len() / 2;
        if v.len().is_multiple_of(2) {
            (v[m - 1] + v[m]) / 2.0
        } else {
            v[m]
        }
    };
    let (off, on) = (median(&rates[0]), median(&rates[1]));
    let per_round: Vec<f64> = rates[1]
        .iter()
        .zip(&rates[0])
        .map(|(on, off)| (on / off - 1.0) * 100.0)
        .collect();
    println!(
        "medians of {rounds} rounds: attestation off {off:.0} rows/s, on {on:.0} rows/s: \
         {:+.1} %; median of the rounds' own differences {:+.1} %",
        (on / off - 1.0) * 100.0,
        median(&per_round)
    );
}

/// Polls the sink's own counter every 100 ms (a `count(*)` this often would cost PostgreSQL a
/// large share of a core on a table this size), handing each reading to `progress`, until `n`
/// rows more than `baseline` are stored (the count before the sink started). Returns when, and
/// at what count, the first rows were seen.
async fn wait_until_stored(
    baseline: u64,
    n: usize,
    mut progress: impl FnMut(u64),
) -> (Instant, u64) {
    let mut first: Option<(Instant, u64)> = None;
    let until = Instant::now() + Duration::from_secs(3600);
    loop {
        let c = rows_inserted().saturating_sub(baseline);
        progress(c);
        if c > 0 && first.is_none() {
            first = Some((Instant::now(), c));
        }
        if c >= n as u64 {
            return first.expect("rows were stored");
        }
        assert!(
            Instant::now() < until,
            "sink did not finish: {c} of {n} rows"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A gauge or counter of this process's metrics recorder (0 when absent).
fn gauge(name: &str) -> f64 {
    audit_manager::metrics::install()
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// `audit_sink_rows_inserted_total`. The recorder is global to the process, so the count
/// includes earlier benchmarks of the same run: callers measure from a baseline.
fn rows_inserted() -> u64 {
    gauge("audit_sink_rows_inserted_total") as u64
}

fn main() {
    support::run(&[
        ("bench_insert_methods_into_indexed_table", || {
            support::multi_thread(bench_insert_methods_into_indexed_table())
        }),
        ("bench_sink_kafka_to_postgres", || {
            support::multi_thread(bench_sink_kafka_to_postgres())
        }),
        ("bench_sink_drains_a_preloaded_topic", || {
            support::multi_thread(bench_sink_drains_a_preloaded_topic())
        }),
        ("bench_sink_with_sealing_off_and_on", || {
            support::multi_thread(bench_sink_with_sealing_off_and_on())
        }),
        ("bench_sink_with_attestation_off_and_on", || {
            support::multi_thread(bench_sink_with_attestation_off_and_on())
        }),
    ]);
}
