//! Kafka-less mode (`forward.target: postgres`): the forward role writes the spool straight into
//! PostgreSQL with the sink's guarantees — outages absorbed by the spool, systemic failures
//! stalling loudly instead of dead-lettering, records the database refuses in
//! `audit_dead_letters` and replayed from there, and a switch from Kafka mode under load that
//! loses and doubles nothing.

use crate::common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use audit_manager::config::{Config, ForwardTarget, Role};
use audit_manager::serve::StartOptions;
use common::{
    ChaosProxy, TOPIC, TestApp, TestDb, TestKafka, TestRole, code, count_rows, event_at,
    eventually, sink_config,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
/// Longer than two of the database health pings (every 2 s), which must not hide the problem.
const STAYS: Duration = Duration::from_secs(5);

/// Ingest + forward straight into `db_url`, with short retry timings, on a fresh spool (or the
/// spool under `dir`).
async fn direct_app(
    dir: Option<tempfile::TempDir>,
    db_url: &str,
    tweak: impl FnOnce(&mut Config),
) -> TestApp {
    let db_url = db_url.to_string();
    let opts = StartOptions {
        forward: Some(common::kafka::fast_settings()),
        ..StartOptions::default()
    };
    let dir = dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
    TestApp::start_in(
        dir,
        move |c| {
            c.roles = vec![Role::Ingest, Role::Forward];
            c.forward.target = ForwardTarget::Postgres;
            c.database.url = db_url.into();
            tweak(c);
        },
        opts,
    )
    .await
}

async fn ids(pool: &sqlx::PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT id FROM audit_events")
        .fetch_all(pool)
        .await
        .unwrap_or_default()
}

async fn dead_letters(pool: &sqlx::PgPool) -> Vec<(Vec<u8>, String, String)> {
    sqlx::query_as("SELECT payload, reason, detail FROM audit_dead_letters ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Waits until every id of `acked` is stored; checks each is stored once.
async fn all_stored(pool: &sqlx::PgPool, acked: &HashSet<String>, what: &str) -> Vec<String> {
    let stored = eventually(WAIT, what, || async {
        let ids = ids(pool).await;
        let have: HashSet<&str> = ids.iter().map(String::as_str).collect();
        acked
            .iter()
            .all(|id| have.contains(id.as_str()))
            .then_some(ids)
    })
    .await;
    let distinct: HashSet<&String> = stored.iter().collect();
    assert_eq!(distinct.len(), stored.len(), "an event stored twice");
    stored
}

#[test]
fn a_sink_role_with_target_postgres_is_a_configuration_error_that_says_why() {
    let mut c = Config::default();
    c.forward.target = ForwardTarget::Postgres;
    let e = c
        .validate()
        .expect_err("sink with target postgres")
        .to_string();
    assert!(e.contains("Remove `sink` from roles"), "{e}");
    c.roles = vec![Role::Ingest, Role::Forward, Role::Maintain];
    c.validate().expect("no sink: valid");
    // Without `roles`, Kafka-less mode runs the default pipeline less the sink.
    let (code, _, stderr) = common::run_cli(
        &["partitions", "list"],
        &[
            ("AUDIT_MANAGER__FORWARD__TARGET", "postgres"),
            ("AUDIT_MANAGER__ROLES", "ingest,forward,sink"),
            ("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none"),
        ],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("forward.target is postgres"), "{stderr}");
}

/// PostgreSQL cut off (a chaos proxy refusing connections) under load: ingest answers 202 while
/// the spool has room and `/ready` stays 200, then 503 AUD-004 with `Retry-After`; `/health`
/// names the cause; once PostgreSQL is back everything drains, each event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_fills_the_spool_then_503s_and_everything_drains_after() {
    let db = TestDb::new().await;
    let pg: std::net::SocketAddr = "127.0.0.1:5432".parse().unwrap();
    let proxy = ChaosProxy::start(pg).await;
    let mut app = direct_app(None, &db.url_via(proxy.addr), |c| {
        c.spool.max_bytes = 256 * 1024;
    })
    .await;
    let pool = db.pool().await;
    let mut acked = HashSet::new();
    let (status, body) = app
        .post_json("/events", &event_at("before", "2026-11-05T00:00:00Z"))
        .await;
    assert_eq!(status, 202, "{body}");
    acked.insert("before".to_string());
    eventually(WAIT, "the first event stored", || async {
        (count_rows(&pool).await == 1).then_some(())
    })
    .await;

    proxy.cut();
    let mut n = 0;
    let mut saw_ready_while_room = false;
    let full = loop {
        let events: Vec<Value> = (0..10)
            .map(|k| event_at(&format!("cut-{n}-{k}"), "2026-11-05T00:00:00Z"))
            .collect();
        let (status, body) = app
            .post_json("/events/batch", &json!({ "events": events }))
            .await;
        match status {
            202 => {
                acked.extend((0..10).map(|k| format!("cut-{n}-{k}")));
                if n == 5 {
                    let (s, b) = app.get("/ready").await;
                    assert_eq!(s, 200, "/ready while the spool has room: {b}");
                    saw_ready_while_room = true;
                }
            }
            503 => break body,
            other => panic!("unexpected {other}: {body}"),
        }
        n += 1;
        assert!(n < 10_000, "256 KiB of spool never filled");
    };
    assert!(saw_ready_while_room);
    assert!(acked.len() > 60, "too few accepted: {}", acked.len());
    assert_eq!(code(&full), "AUD-004", "{full}");
    let resp = app
        .client
        .get(app.url("/ready"))
        .send()
        .await
        .expect("ready");
    assert_eq!(resp.status().as_u16(), 503);
    assert!(resp.headers().get("retry-after").is_some(), "Retry-After");
    let forward = eventually(WAIT, "forward DEGRADED naming the database", || async {
        let f = app.role_health("forward").await;
        (f["status"] == "DEGRADED" && f["code"] == "AUD-006").then_some(f)
    })
    .await;
    let reason = forward["reason"].as_str().unwrap();
    assert!(reason.contains("PostgreSQL"), "{reason}");
    assert!(reason.contains("nothing is skipped"), "{reason}");
    assert_eq!(count_rows(&pool).await, 1, "nothing stored while cut off");

    proxy.restore();
    let stored = all_stored(&pool, &acked, "every accepted event after the restore").await;
    assert_eq!(stored.len(), acked.len(), "only accepted events stored");
    eventually(WAIT, "the spool drained", || async {
        (app.spool_events().await == 0).then_some(())
    })
    .await;
    eventually(WAIT, "forward UP again", || async {
        (app.role_health("forward").await["status"] == "UP").then_some(())
    })
    .await;
    assert!(dead_letters(&pool).await.is_empty());
    app.stop().await;
    pool.close().await;
}

/// Guarantee 7 in Kafka-less mode: the writer's role loses INSERT on audit_events mid-run. No
/// dead letter, `/health` names the privilege and the GRANT for as long as it lasts, and every
/// event is stored once after the GRANT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_insert_dead_letters_nothing_and_everything_is_stored_after_the_grant() {
    let db = TestDb::new().await;
    let role = TestRole::new(&db).await;
    let mut app = direct_app(None, &role.url, |_| {}).await;
    let pool = db.pool().await;
    let at = "2026-11-04T00:00:00Z";
    let (status, _) = app.post_json("/events", &event_at("before", at)).await;
    assert_eq!(status, 202);
    eventually(WAIT, "the first event stored", || async {
        (count_rows(&pool).await == 1).then_some(())
    })
    .await;

    role.admin(&format!("REVOKE INSERT ON audit_events FROM {}", role.name))
        .await;
    const N: usize = 40;
    for i in 0..N {
        let (status, _) = app
            .post_json("/events", &event_at(&format!("e-{i}"), at))
            .await;
        assert_eq!(status, 202);
    }
    let grant = format!("GRANT SELECT, INSERT ON audit_events TO {}", role.name);
    let named = |f: &Value| {
        let reason = f["reason"].as_str().unwrap_or_default();
        (f["status"] == "DEGRADED" && reason.contains("42501") && reason.contains(&grant))
            .then(|| reason.to_string())
    };
    let reason = eventually(
        WAIT,
        "/health naming the privilege and the GRANT",
        || async {
            assert!(dead_letters(&pool).await.is_empty(), "dead-lettered");
            named(&app.role_health("forward").await)
        },
    )
    .await;
    let until = Instant::now() + STAYS;
    while Instant::now() < until {
        let f = app.role_health("forward").await;
        assert!(named(&f).is_some(), "health stopped naming it: {f}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        dead_letters(&pool).await.is_empty(),
        "a dead letter while the role lacks INSERT; health said: {reason}"
    );
    assert_eq!(count_rows(&pool).await, 1);
    assert_eq!(
        app.spool_events().await,
        N as u64,
        "the events wait in the spool"
    );

    role.admin(&format!("GRANT INSERT ON audit_events TO {}", role.name))
        .await;
    let acked: HashSet<String> = (0..N)
        .map(|i| format!("e-{i}"))
        .chain(["before".to_string()])
        .collect();
    all_stored(&pool, &acked, "every event after the GRANT").await;
    assert_eq!(count_rows(&pool).await, N as i64 + 1);
    eventually(WAIT, "forward UP again", || async {
        (app.role_health("forward").await["status"] == "UP").then_some(())
    })
    .await;
    assert!(
        dead_letters(&pool).await.is_empty(),
        "nothing dead-lettered"
    );
    app.stop().await;
    pool.close().await;
}

/// A row PostgreSQL refuses for its own data (a CHECK constraint an operator added) lands in
/// `audit_dead_letters` with its original bytes and the reason, is counted and shown on
/// `/health`, while the rows around it are stored; `dlq replay` stores it once the constraint
/// is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_row_is_dead_lettered_in_the_table_and_replay_stores_it_after_the_fix() {
    let db = TestDb::new().await;
    let mut app = direct_app(None, &db.url, |_| {}).await;
    let pool = db.pool().await;
    let at = "2026-11-06T00:00:00Z";
    let (status, _) = app.post_json("/events", &event_at("first", at)).await;
    assert_eq!(status, 202);
    eventually(WAIT, "the schema and the first row", || async {
        (count_rows(&pool).await == 1).then_some(())
    })
    .await;
    sqlx::query(
        "ALTER TABLE audit_events ADD CONSTRAINT no_refused_actor \
         CHECK (actor_id <> 'refused-actor')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mut refused = event_at("refused", at);
    refused["data"]["actor"]["id"] = json!("refused-actor");
    let mut events: Vec<Value> = (0..4).map(|i| event_at(&format!("good-{i}"), at)).collect();
    events.insert(2, refused);
    let (status, body) = app
        .post_json("/events/batch", &json!({ "events": events }))
        .await;
    assert_eq!(status, 202, "{body}");
    let letters = eventually(WAIT, "the refused row dead-lettered", || async {
        let d = dead_letters(&pool).await;
        (!d.is_empty()).then_some(d)
    })
    .await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let (payload, reason, detail) = &letters[0];
    let stored: Value = serde_json::from_slice(payload).expect("the spooled event");
    assert_eq!(stored["id"], "refused");
    assert_eq!(reason, "unstorable");
    assert!(detail.contains("no_refused_actor"), "{detail}");
    assert!(detail.contains("23514"), "{detail}");
    eventually(WAIT, "the good rows stored", || async {
        (count_rows(&pool).await == 5).then_some(())
    })
    .await;
    let forward = eventually(WAIT, "/health showing the dead letter", || async {
        let f = app.role_health("forward").await;
        (f["dead_letters"]["count"] == 1).then_some(f)
    })
    .await;
    assert_eq!(forward["status"], "UP", "{forward}");
    assert!(
        forward["dead_letters"]["what_to_do"]
            .as_str()
            .unwrap()
            .contains("dlq replay"),
        "{forward}"
    );
    let (_, metrics) = app.get_text("/metrics").await;
    assert!(
        metrics.contains("audit_dead_letters_total{reason=\"unstorable\"}"),
        "{metrics}"
    );
    eventually(WAIT, "the spool drained", || async {
        (app.spool_events().await == 0).then_some(())
    })
    .await;

    // Replay before the fix: refused again, kept.
    let env = [
        ("AUDIT_MANAGER__FORWARD__TARGET", "postgres"),
        ("AUDIT_MANAGER__ROLES", "ingest,forward"),
        ("DATABASE_URL", db.url.as_str()),
    ];
    let (code, _, stderr) = common::run_cli(&["dlq", "replay"], &env);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("0 stored, 1 refused again"), "{stderr}");
    assert_eq!(dead_letters(&pool).await.len(), 1);

    sqlx::query("ALTER TABLE audit_events DROP CONSTRAINT no_refused_actor")
        .execute(&pool)
        .await
        .unwrap();
    let (code, _, stderr) = common::run_cli(&["dlq", "replay"], &env);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("1 stored, 0 refused again"), "{stderr}");
    assert!(
        dead_letters(&pool).await.is_empty(),
        "replayed letters leave"
    );
    let actor: String =
        sqlx::query_scalar("SELECT actor_id FROM audit_events WHERE id = 'refused'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(actor, "refused-actor");
    app.stop().await;
    pool.close().await;
}

/// The consumer group's lag on `kafka.topic`: records not yet committed by the sinks.
fn consumer_lag(kafka: &TestKafka, group: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &kafka.bootstrap)
        .set("group.id", group)
        .create()
        .unwrap();
    let timeout = Duration::from_secs(5);
    let md = c.fetch_metadata(Some(TOPIC), timeout).unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    let mut highs = Vec::new();
    for p in md.topics()[0].partitions() {
        let (_, high) = c.fetch_watermarks(TOPIC, p.id(), timeout).unwrap();
        highs.push((p.id(), high));
        tpl.add_partition(TOPIC, p.id());
    }
    let committed = c.committed_offsets(tpl, timeout).unwrap();
    highs
        .iter()
        .map(|(p, high)| {
            let at = committed
                .find_partition(TOPIC, *p)
                .and_then(|e| e.offset().to_raw())
                .filter(|o| *o >= 0)
                .unwrap_or(0);
            high - at
        })
        .sum()
}

/// The documented switch from Kafka mode to Kafka-less mode, under load: the agent restarts
/// with `forward.target: postgres` on the same spool, the sink runs until the consumer lag is
/// 0 and is then stopped. Every event answered 202, before and after, is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_from_kafka_to_postgres_under_load_loses_and_doubles_nothing() {
    let kafka = TestKafka::new(3);
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let config = sink_config(&kafka, &db.url, &[Role::Sink]);
    let group = config.kafka.consumer_group.clone();
    let mut sink = TestApp::start_with(move |c| *c = config, StartOptions::default()).await;
    let bootstrap = kafka.bootstrap.clone();
    let agent = TestApp::with_kafka(&bootstrap, |_| {}).await;
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();

    // Kafka mode under load.
    let url = agent.url("");
    let stop = Arc::new(AtomicBool::new(false));
    let clients = common::spawn_batch_clients(&url, 0, 4, &acked, &stop);
    eventually(WAIT, "rows through Kafka", || async {
        (count_rows(&pool).await > 300).then_some(())
    })
    .await;
    // Switch: the agent drains its requests and stops; clients see their connection go (or a
    // 503 while it drains); it restarts on the same spool with forward.target: postgres.
    let dir = agent.shutdown().await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let mut agent = direct_app(Some(dir), &db.url, |_| {}).await;
    let url = agent.url("");
    let stop = Arc::new(AtomicBool::new(false));
    let clients = common::spawn_batch_clients(&url, 1, 4, &acked, &stop);
    // The sink stays until everything produced to Kafka is stored: consumer lag 0.
    eventually(WAIT, "consumer lag 0", || async {
        (consumer_lag(&kafka, &group) == 0).then_some(())
    })
    .await;
    sink.stop().await;
    let before = count_rows(&pool).await;
    eventually(WAIT, "direct-mode rows under load", || async {
        (count_rows(&pool).await > before + 300).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let acked: HashSet<String> = acked.lock().unwrap().iter().cloned().collect();
    let rounds: HashSet<&str> = acked.iter().filter_map(|id| id.split('-').next()).collect();
    assert_eq!(rounds.len(), 2, "load in both modes: {rounds:?}");
    let stored = all_stored(&pool, &acked, "every event of both modes").await;
    assert!(
        stored
            .iter()
            .all(|id| id.starts_with("r0-") || id.starts_with("r1-")),
        "only sent events are stored"
    );
    eventually(WAIT, "the spool drained", || async {
        (agent.spool_events().await == 0).then_some(())
    })
    .await;
    assert!(dead_letters(&pool).await.is_empty());
    assert_eq!(kafka.dlq_len(), 0);
    agent.stop().await;
    pool.close().await;
}
