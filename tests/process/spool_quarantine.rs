//! The quarantine is bounded: quarantined records count toward `spool.max_bytes`, so a forwarder
//! that rejects every record ends in 503 AUD-004 at ingest instead of filling the disk.

use crate::common;

use audit_manager::serve::StartOptions;
use audit_manager::spool::{Spool, Stored};
use common::{TestApp, code, event};

const MAX_BYTES: u64 = 64 * 1024;

fn spool_of(app: &TestApp) -> Spool {
    app.running
        .as_ref()
        .and_then(|r| r.spool.clone())
        .expect("ingest runs a spool")
}

/// Quarantines every live record, as a forwarder does whose every record the broker rejects as
/// too large.
async fn quarantine_all(spool: &Spool) -> u64 {
    let mut n = 0;
    for s in spool.read_from(0, usize::MAX, usize::MAX).unwrap() {
        let Stored::Live { seq, .. } = s else {
            panic!("unexpected damaged record")
        };
        spool
            .quarantine(seq, "broker: message too large (injected)".into())
            .await
            .unwrap();
        n += 1;
    }
    n
}

#[tokio::test]
async fn quarantine_flood_ends_in_503_aud004_not_a_full_disk() {
    let app = TestApp::start_with(|c| c.spool.max_bytes = MAX_BYTES, StartOptions::default()).await;
    let spool = spool_of(&app);
    let file = app.spool_dir().join("spool.redb");

    // Every event is accepted and then rejected by the "broker": nothing is ever deleted.
    let mut accepted = 0u64;
    let refused = loop {
        let resp = app
            .client
            .post(app.url("/events"))
            .json(&event(&format!("q{accepted}")))
            .send()
            .await
            .unwrap();
        if resp.status() != 202 {
            break resp;
        }
        accepted += 1;
        assert_eq!(quarantine_all(&spool).await, 1);
        assert!(
            accepted < 10_000,
            "a {MAX_BYTES}-byte bound must stop a quarantine flood long before this"
        );
    };
    assert!(accepted > 10, "only {accepted} events fit");
    assert!(refused.headers().contains_key("retry-after"));
    let (status, body) = common::read(refused).await;
    assert_eq!((status, code(&body)), (503, "AUD-004"), "{body}");
    let message = body.to_string();
    assert!(
        message.contains("quarantine"),
        "names the quarantine: {message}"
    );

    let stats = spool.stats();
    assert_eq!(stats.live_events, 0);
    assert_eq!(stats.quarantined, accepted);
    assert!(
        stats.quarantined_bytes > 0 && stats.used_bytes() <= MAX_BYTES,
        "{stats:?}"
    );

    // The file stops growing: further events are refused without writing anything.
    let size = std::fs::metadata(&file).unwrap().len();
    for i in 0..50 {
        let (status, body) = app.post_json("/events", &event(&format!("late{i}"))).await;
        assert_eq!((status, code(&body)), (503, "AUD-004"), "{body}");
    }
    assert_eq!(std::fs::metadata(&file).unwrap().len(), size);
    assert_eq!(spool.stats().quarantined, accepted);

    // Once an operator requeues them and they are delivered, ingest accepts again.
    assert_eq!(spool.requeue().await.unwrap(), accepted);
    let seqs: Vec<u64> = spool
        .read_from(0, usize::MAX, usize::MAX)
        .unwrap()
        .iter()
        .map(Stored::seq)
        .collect();
    assert_eq!(seqs.len() as u64, accepted);
    spool.ack(seqs).await.unwrap();
    let (status, body) = app.post_json("/events", &event("after")).await;
    assert_eq!(status, 202, "{body}");
    app.shutdown().await;
}

#[tokio::test]
async fn quarantined_bytes_survive_a_restart() {
    let app = TestApp::start_with(|c| c.spool.max_bytes = MAX_BYTES, StartOptions::default()).await;
    let spool = spool_of(&app);
    for i in 0..3 {
        let (status, _) = app.post_json("/events", &event(&format!("r{i}"))).await;
        assert_eq!(status, 202);
    }
    quarantine_all(&spool).await;
    let before = spool.stats();
    drop(spool);
    let dir = app.shutdown().await;
    let app = TestApp::start_in(
        dir,
        |c| c.spool.max_bytes = MAX_BYTES,
        StartOptions::default(),
    )
    .await;
    let after = spool_of(&app).stats();
    assert_eq!(
        (after.quarantined, after.quarantined_bytes),
        (before.quarantined, before.quarantined_bytes)
    );
    assert_eq!(after.quarantined, 3);
    app.shutdown().await;
}
