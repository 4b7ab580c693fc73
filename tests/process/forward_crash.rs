//! At-least-once across crashes: the agent (ingest + forward) is SIGKILLed mid-forwarding,
//! again and again, against a `dev-kafka` broker that lives on. Every event answered 202 must
//! reach the topic.

use crate::common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::ChildServer;
use common::kafka::{DevKafka, TOPIC, TopicTail};

const ROUNDS: u64 = 10;
const CLIENTS: usize = 8;

fn agent(spool: &std::path::Path, bootstrap: &str) -> ChildServer {
    ChildServer::spawn(
        spool,
        &[
            ("AUDIT_MANAGER__ROLES", "ingest,forward"),
            ("AUDIT_MANAGER__KAFKA__BOOTSTRAP_SERVERS", bootstrap),
            ("AUDIT_MANAGER__KAFKA__TOPIC_PARTITIONS", "3"),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_forwarding_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let file = dir.path().join("bootstrap.txt");
    let dk = DevKafka::spawn(3, &file);
    assert_eq!(
        std::fs::read_to_string(&file).unwrap().trim(),
        dk.bootstrap,
        "--bootstrap-file holds the printed address"
    );
    let tail = TopicTail::start(&dk.bootstrap, TOPIC);
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();

    for round in 0..ROUNDS {
        let mut server = agent(&spool, &dk.bootstrap);
        server.wait_ready(Duration::from_secs(30)).await;
        let url = format!("http://{}{}", server.addr, common::BASE);
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = common::spawn_batch_clients(&url, round, CLIENTS, &acked, &stop);
        // Kill only once this agent is forwarding, at a different point every round.
        let seen = tail.snapshot().len();
        tail.wait_for(
            Duration::from_secs(30),
            "this round's agent to forward",
            |m| m.len() > seen,
        )
        .await;
        tokio::time::sleep(Duration::from_millis((round * 53) % 300)).await;
        server.kill9();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        eprintln!(
            "round {round}: {} acked so far, {} records in the topic",
            acked.lock().unwrap().len(),
            tail.snapshot().len()
        );
    }

    // One last agent, left running, drains what the killed ones left in the spool.
    let mut server = agent(&spool, &dk.bootstrap);
    server.wait_ready(Duration::from_secs(30)).await;
    let acked: HashSet<String> = acked.lock().unwrap().iter().cloned().collect();
    assert!(acked.len() > 1000, "too little load: {} acked", acked.len());
    let msgs = tail
        .wait_for(Duration::from_secs(60), "every acknowledged event", |m| {
            let have: HashSet<&str> = m.iter().map(|c| c.id()).collect();
            acked.iter().all(|id| have.contains(id.as_str()))
        })
        .await;
    eprintln!(
        "{} acked events, {} records in the topic ({} duplicates from replays)",
        acked.len(),
        msgs.len(),
        msgs.len() - acked.len()
    );
    server.kill9();

    // dev-kafka stops cleanly on SIGTERM, said it is not durable, and removed its file.
    let (code, stderr) = dk.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("NOT DURABLE"), "{stderr}");
    assert!(!file.exists());
}
