//! Kafka-less mode across crashes: the agent (ingest + forward with `forward.target: postgres`)
//! is SIGKILLed under load, again and again, mid-way through writing the spool into
//! PostgreSQL. Every event answered 202 must end up in `audit_events`, exactly once.

use crate::common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{ChildServer, TestDb, count_rows, eventually, every_acked_stored_once};

const ROUNDS: u64 = 8;
const CLIENTS: usize = 6;

fn agent(spool: &std::path::Path, db_url: &str) -> ChildServer {
    ChildServer::spawn(
        spool,
        &[
            ("AUDIT_MANAGER__ROLES", "ingest,forward"),
            ("AUDIT_MANAGER__FORWARD__TARGET", "postgres"),
            ("AUDIT_MANAGER__DATABASE__URL", db_url),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_rounds_in_direct_mode_store_every_acked_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();

    for round in 0..ROUNDS {
        let mut server = agent(&spool, &db.url);
        server.wait_ready(Duration::from_secs(30)).await;
        let url = format!("http://{}{}", server.addr, common::BASE);
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = common::spawn_batch_clients(&url, round, CLIENTS, &acked, &stop);
        // Kill only once this agent is writing, at a different point every round.
        let seen = count_rows(&pool).await;
        eventually(
            Duration::from_secs(30),
            "this round's agent to write",
            || async { (count_rows(&pool).await > seen).then_some(()) },
        )
        .await;
        tokio::time::sleep(Duration::from_millis((round * 53) % 300)).await;
        server.kill9();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        let rows = count_rows(&pool).await;
        let so_far = acked.lock().unwrap().len();
        eprintln!("round {round}: {so_far} acked so far, {rows} rows");
    }

    // One last agent, left running, writes what the killed ones left in the spool.
    let mut server = agent(&spool, &db.url);
    server.wait_ready(Duration::from_secs(30)).await;
    let acked: HashSet<String> = acked.lock().unwrap().iter().cloned().collect();
    assert!(acked.len() > 1000, "too little load: {} acked", acked.len());
    let stored = every_acked_stored_once(&pool, &acked, Duration::from_secs(60)).await;
    // Only events a client sent (a request cut by the kill may be stored unacknowledged).
    assert!(stored.iter().all(|id| id.starts_with('r')), "a stray row");
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_dead_letters")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(dead, 0);
    eprintln!(
        "{} acked events, {} rows ({} stored without an answer: their request was cut)",
        acked.len(),
        stored.len(),
        stored.len() - acked.len()
    );
    server.kill9();
    pool.close().await;
}
