//! Guarantee 1, durable ack: SIGKILL at any instant loses no event that got 202.
//!
//! Each round starts `audit-manager serve` as a child on the same spool, lets many clients post
//! concurrently, kills the process with SIGKILL at a different point, and checks after the last
//! round that `spool export` holds every id that was answered 202.

use crate::common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{ChildServer, event, exported_ids};
use serde_json::json;

const ROUNDS: u64 = 20;
const CLIENTS: usize = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_request_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut attempted = 0usize;

    for round in 0..ROUNDS {
        let mut server = ChildServer::spawn(&spool, &[]);
        server.wait_ready(Duration::from_secs(30)).await;
        let url = format!("http://{}{}", server.addr, common::BASE);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for c in 0..CLIENTS {
            let (url, acked, stop) = (url.clone(), acked.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                // A request that does not complete in time counts as not acknowledged, like one
                // the kill cut: the test's claim is only about ids that got a 202.
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap();
                let mut sent = 0usize;
                for n in 0.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    // Alternate single events and small batches.
                    let ids: Vec<String> = if n % 3 == 2 {
                        (0..5).map(|k| format!("r{round}-c{c}-n{n}-{k}")).collect()
                    } else {
                        vec![format!("r{round}-c{c}-n{n}")]
                    };
                    sent += ids.len();
                    let req = if ids.len() == 1 {
                        client.post(format!("{url}/events")).json(&event(&ids[0]))
                    } else {
                        let events: Vec<_> = ids.iter().map(|i| event(i)).collect();
                        client
                            .post(format!("{url}/events/batch"))
                            .json(&json!({ "events": events }))
                    };
                    match req.send().await {
                        Ok(resp) if resp.status().as_u16() == 202 => {
                            acked.lock().unwrap().extend(ids);
                        }
                        Ok(resp) => {
                            let s = resp.status();
                            assert!(s.as_u16() == 503, "unexpected status {s}");
                        }
                        // The process died mid-request: unknown outcome, not acknowledged.
                        Err(_) => break,
                    }
                }
                sent
            }));
        }
        // A different kill point every round: from right after start to well into the load.
        let acked_before = acked.lock().unwrap().len();
        let delay = Duration::from_millis(15 + (round * 37) % 400);
        tokio::time::sleep(delay).await;
        server.kill9();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in tasks {
            attempted += t.await.unwrap();
        }
        let acked_now = acked.lock().unwrap().len();
        eprintln!(
            "round {round}: killed after {delay:?}, {} acked",
            acked_now - acked_before
        );
    }

    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 1000,
        "the test must exercise real load, got {} acks",
        acked.len()
    );
    let exported: HashSet<String> = exported_ids(&spool).into_iter().collect();
    let missing: Vec<&String> = acked.iter().filter(|id| !exported.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged events lost after SIGKILL (first: {:?}); {attempted} attempted",
        missing.len(),
        acked.len(),
        missing.first()
    );
}
