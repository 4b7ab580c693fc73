//! Every consumer of memory is bounded by bytes, and a flood that hits a bound gets
//! back-pressure (503 AUD-004 at ingest, pausing elsewhere), never unbounded growth, an error or
//! a crash. One test per bound; each measures the bounded structure while the flood runs.

use crate::common;

use std::time::Duration;

use audit_manager::config::Role;
use audit_manager::serve::StartOptions;
use common::kafka::fast_settings;
use common::{
    BASE, TOPIC, TestApp, TestDb, TestKafka, code, count_rows, event, eventually, exported_ids,
    sink_config,
};
use sqlx::Connection as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `http.max_in_flight_bytes`: connections that announce bodies and deliver them slowly hold
/// their announced bytes; once the bound is used up, further requests are refused with 503
/// AUD-004 and `Retry-After` before their bodies are read, and the bytes in flight never exceed
/// the bound. When the slow bodies complete, they are spooled and room comes back.
#[tokio::test]
async fn request_bodies_in_flight_are_bounded_by_bytes() {
    const BODY: usize = 16 * 1024;
    const BOUND: u64 = 4 * BODY as u64;
    let mut app = TestApp::start_with(
        |c| {
            c.http.max_body_bytes = BODY as u64;
            c.http.max_in_flight_bytes = BOUND;
        },
        Default::default(),
    )
    .await;

    // One valid event padded to exactly BODY bytes.
    let body = |id: &str| {
        let mut e = event(id);
        e["data"]["pad"] = "".into();
        let pad = BODY - e.to_string().len();
        e["data"]["pad"] = "x".repeat(pad).into();
        let s = e.to_string();
        assert_eq!(s.len(), BODY);
        s
    };
    let head = |len: usize| {
        format!(
            "POST {BASE}/events HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
             Content-Length: {len}\r\nConnection: close\r\n\r\n"
        )
    };

    // Four slow clients: headers and half of the body, then nothing for now.
    let mut slow = Vec::new();
    for i in 0..4 {
        let b = body(&format!("slow-{i}"));
        let mut s = TcpStream::connect(app.addr).await.unwrap();
        s.write_all(head(b.len()).as_bytes()).await.unwrap();
        s.write_all(&b.as_bytes()[..b.len() / 2]).await.unwrap();
        slow.push((s, b));
    }
    // Their announced bytes are held (awaited: the server reads the headers concurrently).
    common::eventually(Duration::from_secs(10), "four bodies held", || async {
        let held = metric(&app, "audit_http_body_bytes_in_flight").await;
        (held > 3.0 * BODY as f64).then_some(())
    })
    .await;

    // A flood of further requests: every one is refused at once, nothing is buffered.
    let flood = (0..50).map(|i| {
        let client = reqwest::Client::new();
        let url = app.url("/events");
        let b = body(&format!("flood-{i}"));
        async move {
            let r = client
                .post(url)
                .header("content-type", "application/json")
                .body(b)
                .send()
                .await
                .unwrap();
            let retry_after = r.headers().get("retry-after").is_some();
            let (status, v) = common::read(r).await;
            (status, code(&v).to_string(), retry_after)
        }
    });
    for (status, code, retry_after) in futures_util::future::join_all(flood).await {
        assert_eq!((status, code.as_str()), (503, "AUD-004"));
        assert!(retry_after, "a 503 tells the client when to retry");
    }
    let held = metric(&app, "audit_http_body_bytes_in_flight").await;
    assert!(held <= BOUND as f64, "{held} bytes held, bound {BOUND}");

    // The slow clients finish: their events are spooled, and the budget is free again.
    for (s, b) in &mut slow {
        s.write_all(&b.as_bytes()[b.len() / 2..]).await.unwrap();
    }
    for (mut s, _) in slow {
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
            .await
            .expect("answered")
            .unwrap();
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 202 "), "{out}");
    }
    let (status, _) = app.post_json("/events", &event("after")).await;
    assert_eq!(status, 202);
    assert_eq!(metric(&app, "audit_http_body_bytes_in_flight").await, 0.0);
    app.stop().await;
    let mut ids = exported_ids(&app.spool_dir());
    ids.sort();
    assert_eq!(ids, ["after", "slow-0", "slow-1", "slow-2", "slow-3"]);
}

/// An event padded to about `size` bytes of JSON.
fn padded(id: &str, size: usize) -> serde_json::Value {
    let mut e = event(id);
    e["data"]["pad"] = "x"
        .repeat(size.saturating_sub(e.to_string().len() + 10))
        .into();
    e
}

/// `sink.batch_max_bytes`: with the database blocked and 4 MB of events arriving in Kafka, the
/// sink holds one batch of at most the bound (being written) plus at most the bound consumed
/// ahead; it does not swallow the topic (all 1 000 records would fit the count bound). Once the
/// database answers again, every event is stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_holds_at_most_its_byte_bound_while_the_database_is_blocked() {
    const EVENT: usize = 4096;
    // 4 MB in all: librdkafka's mock broker keeps only the newest 5 MB of a partition.
    const EVENTS: usize = 1000;
    const BOUND: u64 = 256 * 1024;
    let kafka = TestKafka::new(1);
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let mut config = sink_config(&kafka, &db.url, &[Role::Sink]);
    config.sink.batch_max_bytes = BOUND;
    let mut app = TestApp::start_with(move |c| *c = config, StartOptions::default()).await;
    let producer = kafka.producer();
    // One event through first: the sink has its partition and the table is ready.
    let warm = padded("warm-up", EVENT).to_string();
    kafka
        .produce(&producer, TOPIC, "warm-up", warm.as_bytes())
        .await;
    eventually(Duration::from_secs(60), "the sink stores", || async {
        (count_rows(&pool).await == 1).then_some(())
    })
    .await;
    // Every insert waits behind this lock until it is released.
    let mut blocker = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query("LOCK TABLE audit_events IN ACCESS EXCLUSIVE MODE")
        .execute(&mut blocker)
        .await
        .unwrap();
    // All at once, so the sink could take every one of them if nothing bounded it.
    let events: Vec<(String, String)> = (0..EVENTS)
        .map(|i| {
            let id = format!("big-{i}");
            let value = padded(&id, EVENT).to_string();
            (id, value)
        })
        .collect();
    futures_util::future::join_all(
        events
            .iter()
            .map(|(id, value)| kafka.produce(&producer, TOPIC, id, value.as_bytes())),
    )
    .await;
    // The batch being written is stuck; what is consumed ahead fills up to the bound.
    let limit = (BOUND as usize + EVENT) as f64;
    eventually(
        Duration::from_secs(60),
        "the sink consumed ahead",
        || async {
            let carried = metric(&app, "audit_sink_carried_bytes").await;
            (carried >= BOUND as f64).then_some(())
        },
    )
    .await;
    let batch = metric(&app, "audit_sink_batch_bytes").await;
    let carried = metric(&app, "audit_sink_carried_bytes").await;
    assert!(
        batch > 0.0 && batch <= limit,
        "batch being written: {batch} bytes"
    );
    assert!(carried <= limit, "consumed ahead: {carried} bytes");

    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    let all = EVENTS as i64 + 1;
    eventually(Duration::from_secs(120), "every event stored", || async {
        (count_rows(&pool).await >= all).then_some(())
    })
    .await;
    let distinct: i64 = sqlx::query_scalar("SELECT count(DISTINCT id) FROM audit_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!((count_rows(&pool).await, distinct), (all, all));
    app.stop().await;
}

/// `forward.max_in_flight_bytes`: with the broker down, the forwarder hands the producer at
/// most the bound and leaves the rest in the spool (on disk); when the broker returns, every
/// event is delivered and the spool drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forwarder_hands_kafka_at_most_its_byte_bound() {
    const EVENT: usize = 4096;
    const BOUND: u64 = 128 * 1024;
    let kafka = common::kafka::MockKafka::new(1, 1);
    kafka.all_down();
    let opts = StartOptions {
        forward: Some(fast_settings()),
        ..StartOptions::default()
    };
    let bootstrap = kafka.bootstrap.clone();
    let mut app = TestApp::start_with(
        move |c| {
            common::kafka::forwarding(c, &bootstrap);
            c.forward.max_in_flight_bytes = BOUND;
        },
        opts,
    )
    .await;
    let batch: Vec<_> = (0..100).map(|i| padded(&format!("f-{i}"), EVENT)).collect();
    for round in 0..4 {
        let events: Vec<_> = batch
            .iter()
            .map(|e| {
                let mut e = e.clone();
                e["id"] = format!("{}-{round}", e["id"].as_str().unwrap()).into();
                e
            })
            .collect();
        let (status, body) = app
            .post_json("/events/batch", &serde_json::json!({ "events": events }))
            .await;
        assert_eq!(status, 202, "{body}");
    }
    eventually(Duration::from_secs(30), "the window filled", || async {
        let held = metric(&app, "audit_forward_in_flight_bytes").await;
        (held >= (BOUND as usize - EVENT) as f64).then_some(())
    })
    .await;
    let held = metric(&app, "audit_forward_in_flight_bytes").await;
    assert!(
        held <= BOUND as f64,
        "{held} bytes in flight, bound {BOUND}"
    );
    assert_eq!(app.spool_events().await, 400, "the rest waits in the spool");

    kafka.all_up();
    eventually(Duration::from_secs(60), "spool drained", || async {
        (app.spool_events().await == 0).then_some(())
    })
    .await;
    app.stop().await;
}

/// `spool.cache_bytes`: writing and reading back 24 MB of events keeps redb's page cache within
/// the bound the service opens the file with (redb's own default is 1 GiB); the same work with
/// the default bound fills more than the small one allows, so the bound is what holds it.
#[test]
fn the_spool_page_cache_stays_within_its_bound() {
    use audit_manager::spool::{Record, store};
    use redb::ReadableDatabase as _;

    fn fill_and_read(cache: usize) -> usize {
        let dir = tempfile::tempdir().unwrap();
        let db = (store::file_opener_with_cache(dir.path(), cache).unwrap())().unwrap();
        store::recover(&db, &store::file_path(dir.path()), store::OnDamage::Report).unwrap();
        let value = padded("cache", 4096).to_string().into_bytes();
        let mut peak = 0;
        for batch in 0..60u64 {
            let txn = store::begin_write(&db).unwrap();
            {
                let mut events = txn.open_table(store::EVENTS).unwrap();
                for i in 0..100u64 {
                    let r = Record {
                        accepted_at_ms: 1,
                        id: format!("c-{batch}-{i}"),
                        key: None,
                        value: value.clone(),
                    };
                    events
                        .insert(batch * 100 + i, r.encode().as_slice())
                        .unwrap();
                }
            }
            txn.commit().unwrap();
            peak = peak.max(db.cache_stats().used_bytes());
        }
        let read = store::read_from(&db, 0, usize::MAX, usize::MAX).unwrap();
        assert_eq!(read.len(), 6000);
        peak.max(db.cache_stats().used_bytes())
    }

    const SMALL: usize = 2 << 20;
    let small = fill_and_read(SMALL);
    assert!(
        small <= SMALL,
        "{small} bytes cached with a {SMALL}-byte bound"
    );
    let default = fill_and_read(store::CACHE_BYTES);
    assert!(
        default > SMALL,
        "the default bound lets {default} bytes be cached"
    );
}

/// The value of an unlabelled gauge or counter from `/metrics` (0 when not yet exported).
async fn metric(app: &TestApp, name: &str) -> f64 {
    let (_, text) = app.get_text("/metrics").await;
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(name)?;
            rest.strip_prefix(' ')?.trim().parse().ok()
        })
        .unwrap_or(0.0)
}

/// `kafka.consumer.queued.max.messages.kbytes` (librdkafka's own bound, passed through by the
/// sink's consumer configuration): while nothing takes records, the consumer fetches ahead at
/// most that many bytes plus one fetch response, and the rest stays in Kafka; once records are
/// taken, the rest is fetched and every record arrives. Measured from librdkafka's statistics
/// of the partition: the bytes in its fetch queue and the next offset it would fetch.
#[test]
fn the_sinks_consumer_prefetches_at_most_its_byte_bound() {
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
    use rdkafka::{ClientContext, Offset, Statistics, TopicPartitionList};

    /// The newest (bytes in the fetch queue, next offset to fetch) of partition 0.
    #[derive(Default)]
    struct Fetching(Mutex<Option<(u64, i64)>>);
    impl ClientContext for Fetching {
        fn stats(&self, s: Statistics) {
            if let Some(p) = s.topics.get(TOPIC).and_then(|t| t.partitions.get(&0)) {
                *self.0.lock().unwrap() = Some((p.fetchq_size, p.next_offset));
            }
        }
    }
    impl ConsumerContext for Fetching {}

    const RECORDS: usize = 1000;
    const RECORD: usize = 2048;
    const BOUND_KIB: usize = 256;
    const FETCH: usize = 64 * 1024;
    let kafka = TestKafka::new(1);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        // A fetch brings whole record batches: batches of at most one fetch's size keep the
        // overshoot to one fetch.
        let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &kafka.bootstrap)
            .set("batch.size", FETCH.to_string())
            .create()
            .unwrap();
        let value = vec![b'x'; RECORD];
        let sends = (0..RECORDS).map(|_| kafka.produce(&producer, TOPIC, "k", &value));
        futures_util::future::join_all(sends).await;
    });

    let mut kcfg = sink_config(&kafka, "postgres://unused", &[Role::Sink]).kafka;
    kcfg.consumer
        .insert("queued.max.messages.kbytes".into(), BOUND_KIB.to_string());
    kcfg.consumer
        .insert("max.partition.fetch.bytes".into(), FETCH.to_string());
    let mut cc = audit_manager::sink::client::consumer_config(&kcfg, "prefetch-bound");
    cc.set("statistics.interval.ms", "50");
    let consumer: Arc<BaseConsumer<Fetching>> =
        Arc::new(cc.create_with_context(Fetching::default()).unwrap());
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(TOPIC, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    // The records go to a queue of their own, which nobody reads yet; polling the consumer
    // serves the statistics only.
    let records = consumer.split_partition_queue(TOPIC, 0).unwrap();

    // Fetching has stopped when the next offset to fetch has not moved for 20 statistics
    // intervals (1 s).
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut largest_queue, mut next, mut unchanged) = (0u64, -1i64, 0);
    while unchanged < 20 || next <= 0 {
        assert!(Instant::now() < deadline, "fetching never settled");
        assert!(consumer.poll(Duration::from_millis(50)).is_none());
        let Some((queued, at)) = consumer.context().0.lock().unwrap().take() else {
            continue;
        };
        largest_queue = largest_queue.max(queued);
        if at == next {
            unchanged += 1;
        } else {
            (next, unchanged) = (at, 0);
        }
    }
    let bound = BOUND_KIB * 1024 + FETCH;
    assert!(
        largest_queue as usize <= bound,
        "{largest_queue} bytes queued ahead, bound {bound}"
    );
    let fetched = usize::try_from(next).unwrap();
    assert!(
        fetched * RECORD <= bound,
        "{fetched} records of {RECORD} bytes fetched ahead, bound {bound} bytes"
    );

    // Taking the records lets the rest be fetched: every record arrives.
    let mut taken = 0;
    while taken < RECORDS {
        assert!(
            Instant::now() < deadline,
            "only {taken} of {RECORDS} records arrived"
        );
        let _ = consumer.poll(Duration::ZERO);
        if let Some(r) = records.poll(Duration::from_millis(100)) {
            r.unwrap();
            taken += 1;
        }
    }
}
