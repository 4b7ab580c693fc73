//! End to end, guarantees 1 and 3 together: HTTP → spool → forward → Kafka (`dev-kafka`, which
//! outlives the agent) → sink → PostgreSQL. The agent runs every role and is SIGKILLed under
//! load, round after round, at a different point each time; at the end every id that got a 202
//! is in `audit_events` exactly once.

use crate::common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::kafka::DevKafka;
use common::{ChildServer, TestDb, eventually};

const ROUNDS: u64 = 10;
const CLIENTS: usize = 3;
/// Each client posts at most one batch of 10 per `PACE`: 1 200 events a second in all.
///
/// `dev-kafka` keeps only the newest 5 MB (lz4-compressed, some 60 000 of these records) or
/// 100 000 records of each partition. The sink runs only part of each round (it waits for the
/// killed member's session to expire) while ingest and forwarding run on, so its backlog grows
/// from round to round; an unpaced flood on a fast machine pushed its committed offset out of
/// the broker's log, and the broker (not audit-manager) dropped those records. At this pace the
/// whole test sends some 70 000 events, about 23 000 records a partition, whatever the machine.
const PACE: Duration = Duration::from_millis(25);

fn agent(spool: &std::path::Path, bootstrap: &str, db_url: &str) -> ChildServer {
    ChildServer::spawn(
        spool,
        &[
            ("AUDIT_MANAGER__ROLES", "ingest,forward,sink,maintain"),
            ("AUDIT_MANAGER__KAFKA__BOOTSTRAP_SERVERS", bootstrap),
            ("AUDIT_MANAGER__KAFKA__TOPIC_PARTITIONS", "3"),
            // A killed member is noticed quickly, so the next round's sink gets the partitions.
            ("AUDIT_MANAGER__KAFKA__CONSUMER__SESSION_TIMEOUT_MS", "3000"),
            (
                "AUDIT_MANAGER__KAFKA__CONSUMER__HEARTBEAT_INTERVAL_MS",
                "300",
            ),
            ("AUDIT_MANAGER__SINK__FLUSH_INTERVAL", "50ms"),
            ("DATABASE_URL", db_url),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_all_roles_under_load_every_acknowledged_event_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let dk = DevKafka::spawn(3, &dir.path().join("bootstrap.txt"));
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();

    for round in 0..ROUNDS {
        let mut server = agent(&spool, &dk.bootstrap, &db.url);
        server.wait_ready(Duration::from_secs(30)).await;
        let url = format!("http://{}{}", server.addr, common::BASE);
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = common::spawn_paced_batch_clients(&url, round, CLIENTS, PACE, &acked, &stop);
        // Kill only once this agent's sink is storing (it has rejoined the group), at a
        // different point every round.
        let before = common::count_rows(&pool).await.max(0);
        eventually(
            Duration::from_secs(60),
            "this round's sink to store rows",
            || async { (common::count_rows(&pool).await > before).then_some(()) },
        )
        .await;
        let delay = Duration::from_millis((round * 173) % 900);
        tokio::time::sleep(delay).await;
        server.kill9();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        let rows = common::count_rows(&pool).await;
        eprintln!(
            "round {round}: killed after {delay:?}; {} acked so far, {rows} rows",
            acked.lock().unwrap().len()
        );
    }
    let acked: Vec<String> = acked.lock().unwrap().clone();
    assert!(acked.len() > 1000, "real load: only {} acks", acked.len());
    // The kills must have cut the pipeline mid-flight: acknowledged events that were still in
    // the spool or in Kafka when the last agent died, which only the restart below can deliver.
    let stored_when_rounds_ended = count_stored(&pool, &acked).await;
    assert!(
        stored_when_rounds_ended < acked.len() as i64,
        "every acknowledged event was stored before the last kill ({stored_when_rounds_ended}): \
         the test did not kill anything mid-pipeline"
    );

    // One last agent, no load: it drains the spool and the topic.
    let mut last = agent(&spool, &dk.bootstrap, &db.url);
    last.wait_ready(Duration::from_secs(30)).await;
    let expected: HashSet<&String> = acked.iter().collect();
    let n = expected.len() as i64;
    eventually(
        Duration::from_secs(180),
        "every acknowledged event in audit_events",
        || async { (count_stored(&pool, &acked).await >= n).then_some(()) },
    )
    .await;
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT id) FROM audit_events")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(rows, distinct, "no event is stored twice");
    assert_eq!(
        count_stored(&pool, &acked).await,
        n,
        "every acknowledged event exactly once"
    );
    last.kill9();
    drop(dk);
}

/// How many of `ids` are in audit_events.
async fn count_stored(pool: &sqlx::PgPool, ids: &[String]) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE id = ANY($1)")
        .bind(ids)
        .fetch_one(pool)
        .await
        .expect("count stored events")
}
