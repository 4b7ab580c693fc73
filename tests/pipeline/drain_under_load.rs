//! Draining under load: SIGTERM (what an orchestrator sends before it deletes a pod) while many
//! clients are mid-request. Over many rounds, each cut at a different point:
//!
//! - every event answered 202 is in the spool (`spool export`), and with the forward role it
//!   reaches Kafka;
//! - every other answer is 503 AUD-005, or the connection was refused or closed (the client
//!   then knows nothing was acknowledged and retries elsewhere);
//! - the process exits 0.

use crate::common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::kafka::{DevKafka, TOPIC, TopicTail};
use common::{ChildServer, event};
use serde_json::{Value, json};

const ROUNDS: u64 = 20;
const CLIENTS: usize = 32;
const EXIT_DEADLINE: Duration = Duration::from_secs(60);

/// What the clients of all rounds saw.
#[derive(Default)]
struct Seen {
    acked: Mutex<Vec<String>>,
    refused_aud005: AtomicUsize,
    connection_errors: AtomicUsize,
}

/// `CLIENTS` clients posting single events and 5-event batches until `stop` is set or their
/// connection fails. Any answer other than 202 or 503 AUD-005 fails the test.
fn spawn_clients(
    url: &str,
    round: u64,
    seen: &Arc<Seen>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..CLIENTS)
        .map(|c| {
            let (url, seen, stop) = (url.to_owned(), seen.clone(), stop.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                for n in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let ids: Vec<String> = if n % 3 == 2 {
                        (0..5).map(|k| format!("r{round}-c{c}-n{n}-{k}")).collect()
                    } else {
                        vec![format!("r{round}-c{c}-n{n}")]
                    };
                    let req = if ids.len() == 1 {
                        client.post(format!("{url}/events")).json(&event(&ids[0]))
                    } else {
                        let events: Vec<Value> = ids.iter().map(|i| event(i)).collect();
                        client
                            .post(format!("{url}/events/batch"))
                            .json(&json!({ "events": events }))
                    };
                    let resp = match req.send().await {
                        Ok(resp) => resp,
                        // Refused, reset or closed mid-request: nothing acknowledged.
                        Err(_) => {
                            seen.connection_errors.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    };
                    let status = resp.status().as_u16();
                    let body: Value = match resp.json().await {
                        Ok(b) => b,
                        Err(_) => {
                            // The status line arrived, the body did not: not a 202 we can
                            // count, and only possible while the connection is torn down.
                            seen.connection_errors.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    };
                    match status {
                        202 => seen.acked.lock().unwrap().extend(ids),
                        503 if common::code(&body) == "AUD-005" => {
                            seen.refused_aud005.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => panic!(
                            "round {round}: unexpected answer while draining: {status} {body}"
                        ),
                    }
                }
            })
        })
        .collect()
}

/// One round: start `serve`, load it, SIGTERM it at a cut point, check it exited 0.
async fn round(server: &mut ChildServer, round: u64, seen: &Arc<Seen>) {
    server.wait_ready(Duration::from_secs(30)).await;
    let url = format!("http://{}{}", server.addr, common::BASE);
    let stop = Arc::new(AtomicBool::new(false));
    let acked_before = seen.acked.lock().unwrap().len();
    let clients = spawn_clients(&url, round, seen, &stop);
    // Wait for load, then cut at a different point every round.
    common::eventually(
        Duration::from_secs(30),
        "this round's first 202",
        || async { (seen.acked.lock().unwrap().len() > acked_before).then_some(()) },
    )
    .await;
    let delay = Duration::from_millis((round * 37) % 400);
    tokio::time::sleep(delay).await;
    server.terminate();
    let code = server.wait_exit(EXIT_DEADLINE).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await
            .expect("client saw only 202, 503 AUD-005 or a closed connection");
    }
    assert_eq!(
        code,
        Some(0),
        "round {round}: SIGTERM must drain and exit 0:\n{}",
        server.log().join("\n")
    );
    eprintln!(
        "round {round}: SIGTERM after {delay:?}; {} acked this round",
        seen.acked.lock().unwrap().len() - acked_before
    );
}

fn assert_seen_load(seen: &Seen) -> Vec<String> {
    let acked = seen.acked.lock().unwrap().clone();
    eprintln!(
        "{} acked, {} answered 503 AUD-005, {} connections refused or closed",
        acked.len(),
        seen.refused_aud005.load(Ordering::Relaxed),
        seen.connection_errors.load(Ordering::Relaxed)
    );
    assert!(acked.len() > 1000, "too little load: {} acked", acked.len());
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_keeps_every_acknowledged_event_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let seen = Arc::new(Seen::default());
    for r in 0..ROUNDS {
        let mut server = ChildServer::spawn(&spool, &[]);
        round(&mut server, r, &seen).await;
    }
    let acked = assert_seen_load(&seen);
    let exported: HashSet<String> = common::exported_ids(&spool).into_iter().collect();
    let missing: Vec<&String> = acked.iter().filter(|id| !exported.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged events missing from the spool after SIGTERM (first: {:?})",
        missing.len(),
        acked.len(),
        missing.first()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_with_forwarding_delivers_every_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let dk = DevKafka::spawn(3, &dir.path().join("bootstrap.txt"));
    let tail = TopicTail::start(&dk.bootstrap, TOPIC);
    let env = [
        ("AUDIT_MANAGER__ROLES", "ingest,forward"),
        (
            "AUDIT_MANAGER__KAFKA__BOOTSTRAP_SERVERS",
            dk.bootstrap.as_str(),
        ),
        ("AUDIT_MANAGER__KAFKA__TOPIC_PARTITIONS", "3"),
    ];
    let seen = Arc::new(Seen::default());
    for r in 0..ROUNDS {
        let mut server = ChildServer::spawn(&spool, &env);
        round(&mut server, r, &seen).await;
    }
    let acked = assert_seen_load(&seen);
    // What the last drain left in the spool is forwarded by the next process on it.
    let mut last = ChildServer::spawn(&spool, &env);
    last.wait_ready(Duration::from_secs(30)).await;
    let want: HashSet<&str> = acked.iter().map(String::as_str).collect();
    let msgs = tail
        .wait_for(
            Duration::from_secs(120),
            "every acknowledged event in Kafka",
            |m| {
                let have: HashSet<&str> = m.iter().map(|c| c.id()).collect();
                want.is_subset(&have)
            },
        )
        .await;
    eprintln!(
        "{} acknowledged events, {} records in the topic",
        want.len(),
        msgs.len()
    );
    last.terminate();
    assert_eq!(last.wait_exit(EXIT_DEADLINE).await, Some(0));
    let exported = common::exported_ids(&spool);
    assert!(
        exported.is_empty(),
        "after a drain with Kafka up, the spool is empty: {} left",
        exported.len()
    );
}
