//! Upgrade from spool format 1 (one record frame per event) to format 2 (one batch frame per
//! append request): a file written by a version-1 release is read and drained by this build,
//! with both frame versions side by side, and the offline commands work on the mix
//! ("Version changes" in `spool-format.md`).

use crate::common;

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use audit_manager::serve::StartOptions;
use audit_manager::spool::record::BatchIndex;
use audit_manager::spool::store::{self, EVENTS, META, QUARANTINE, REMOVED};
use audit_manager::spool::{QuarantineEntry, Record, Spool, SpoolOptions, Stored};
use common::kafka::{MockKafka, TOPIC, TopicTail, eventually};
use common::{TestApp, exported_ids, run_cli};
use redb::{ReadableDatabase, ReadableTableMetadata};
use serde_json::{Value, json};

/// Sequence number of the quarantined record in the version-1 file.
const QUARANTINED_SEQ: u64 = 3;

/// A normalized CloudEvent as the ingest spools it.
fn record(id: &str) -> Record {
    let mut e = common::event(id);
    e["time"] = json!("2026-11-23T10:00:00Z");
    e["datacontenttype"] = json!("application/json");
    Record {
        accepted_at_ms: 1_763_892_000_000,
        id: id.to_string(),
        key: Some(format!("beneficiary/{id}")),
        value: serde_json::to_vec(&e).unwrap(),
    }
}

/// Writes the file a version-1 release leaves behind: every event its own record frame under
/// its sequence number (`first..first + n`, the ones before already delivered), one record in
/// quarantine, `meta` at format version 1. Returns the ids in sequence order.
fn write_v1(spool_dir: &Path, first: u64, n: u64) -> Vec<String> {
    std::fs::create_dir_all(spool_dir).unwrap();
    let db = redb::Database::create(store::file_path(spool_dir)).unwrap();
    let txn = db.begin_write().unwrap();
    let mut ids = Vec::new();
    {
        let mut events = txn.open_table(EVENTS).unwrap();
        for seq in first..first + n {
            let id = format!("v1-{seq}");
            events.insert(seq, record(&id).encode().as_slice()).unwrap();
            ids.push(id);
        }
        let entry = QuarantineEntry {
            quarantined_at_ms: 1_763_892_000_000,
            reason: "Kafka refused the event: message too large".into(),
            raw: record("v1-quarantined").encode(),
        };
        txn.open_table(QUARANTINE)
            .unwrap()
            .insert(QUARANTINED_SEQ, entry.encode().as_slice())
            .unwrap();
        let mut meta = txn.open_table(META).unwrap();
        meta.insert("format_version", 1).unwrap();
        meta.insert("next_seq", first + n).unwrap();
    }
    txn.commit().unwrap();
    ids
}

fn format_version(spool_dir: &Path) -> u64 {
    let db = redb::Database::open(store::file_path(spool_dir)).unwrap();
    let txn = db.begin_read().unwrap();
    let meta = txn.open_table(META).unwrap();
    meta.get("format_version").unwrap().unwrap().value()
}

fn options(spool_dir: &Path) -> SpoolOptions {
    SpoolOptions {
        dir: spool_dir.to_path_buf(),
        max_bytes: u64::MAX,
        max_pending_appends: 16,
    }
}

fn live(spool: &Spool) -> Vec<(u64, String, usize)> {
    spool
        .read_from(0, usize::MAX, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|s| match s {
            Stored::Live { seq, record, size } => (seq, record.id, size),
            Stored::Damaged { seq, error, .. } => panic!("seq {seq} damaged: {error}"),
        })
        .collect()
}

fn cli(spool_dir: &Path, args: &[&str]) -> (i32, String, String) {
    let dir = spool_dir.to_string_lossy();
    run_cli(args, &[("AUDIT_MANAGER__SPOOL__PATH", dir.as_ref())])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_spool_drains_to_kafka_and_new_appends_are_version_2() {
    let tmp = tempfile::tempdir().unwrap();
    let spool_dir = tmp.path().join("spool");
    let old_ids = write_v1(&spool_dir, 7, 300);

    let kafka = MockKafka::new(1, 3);
    let tail = TopicTail::start(&kafka.bootstrap, TOPIC);
    let app = TestApp::start_in(
        tmp,
        |c| common::kafka::forwarding(c, &kafka.bootstrap),
        StartOptions {
            forward: Some(common::kafka::fast_settings()),
            ..StartOptions::default()
        },
    )
    .await;
    let batch: Vec<Value> = (0..40)
        .map(|i| common::event(&format!("v2-b{i}")))
        .collect();
    let (status, body) = app
        .post_json("/events/batch", &json!({ "events": batch }))
        .await;
    assert_eq!(status, 202, "{body}");
    for i in 0..5 {
        let (status, body) = app
            .post_json("/events", &common::event(&format!("v2-s{i}")))
            .await;
        assert_eq!(status, 202, "{body}");
    }

    let mut want: HashSet<String> = old_ids.into_iter().collect();
    want.extend((0..40).map(|i| format!("v2-b{i}")));
    want.extend((0..5).map(|i| format!("v2-s{i}")));
    let msgs = tail
        .wait_for(Duration::from_secs(30), "every old and new event", |m| {
            let got: HashSet<&str> = m.iter().map(|m| m.id()).collect();
            want.iter().all(|id| got.contains(id.as_str()))
        })
        .await;
    assert!(
        msgs.iter().all(|m| m.id() != "v1-quarantined"),
        "a quarantined record stays out of circulation"
    );
    eventually(Duration::from_secs(20), "spool to drain", || async {
        (app.spool_events().await == 0).then_some(())
    })
    .await;
    let tmp = app.shutdown().await;
    let spool_dir = tmp.path().join("spool");

    assert_eq!(
        format_version(&spool_dir),
        2,
        "the new appends were batch frames"
    );
    let db = redb::Database::open(store::file_path(&spool_dir)).unwrap();
    let txn = db.begin_read().unwrap();
    assert!(txn.open_table(EVENTS).unwrap().is_empty().unwrap());
    assert!(txn.open_table(REMOVED).unwrap().is_empty().unwrap());
    let quarantine = txn.open_table(QUARANTINE).unwrap();
    assert_eq!(quarantine.len().unwrap(), 1);
    assert!(quarantine.get(QUARANTINED_SEQ).unwrap().is_some());
    let next = txn.open_table(META).unwrap().get("next_seq").unwrap();
    assert_eq!(next.unwrap().value(), 7 + 300 + 45);
}

#[tokio::test]
async fn version_1_and_2_frames_are_read_side_by_side() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let old_ids = write_v1(dir, 7, 20);
    let v1_bytes: usize = old_ids.iter().map(|id| record(id).encode().len()).sum();

    // Draining only: the file stays readable by a version-1 release.
    let spool = Spool::open(&options(dir)).unwrap();
    let stats = spool.stats();
    assert_eq!((stats.live_events, stats.quarantined), (20, 1));
    assert_eq!(stats.live_bytes, v1_bytes as u64);
    let seqs: Vec<u64> = live(&spool).iter().map(|(s, _, _)| *s).collect();
    assert_eq!(seqs, (7..27).collect::<Vec<_>>());
    spool.ack((7..12).collect()).await.unwrap();
    spool.close().await;
    assert_eq!(format_version(dir), 1);

    // Appends are batch frames, numbered on from the version-1 records.
    let spool = Spool::open(&options(dir)).unwrap();
    let batch: Vec<Record> = (0..10).map(|i| record(&format!("v2-b{i}"))).collect();
    assert_eq!(
        spool.append(&batch).await.unwrap(),
        (27..37).collect::<Vec<_>>()
    );
    assert_eq!(spool.append(&[record("v2-s")]).await.unwrap(), vec![37]);
    // One event inside the batch is quarantined, two are delivered; the siblings stay.
    spool
        .quarantine(30, "Kafka refused it".into())
        .await
        .unwrap();
    spool.ack(vec![27, 28]).await.unwrap();
    let mut expected: Vec<String> = old_ids[5..].to_vec();
    expected.extend([29, 31, 32, 33, 34, 35, 36].map(|i| format!("v2-b{}", i - 27)));
    expected.push("v2-s".into());
    let now = live(&spool);
    assert_eq!(
        now.iter().map(|(_, id, _)| id.clone()).collect::<Vec<_>>(),
        expected
    );
    let stats = spool.stats();
    assert_eq!(stats.live_events, expected.len() as u64);
    assert_eq!(stats.quarantined, 2);
    assert_eq!(
        stats.live_bytes,
        now.iter().map(|(_, _, size)| *size as u64).sum::<u64>()
    );
    spool.close().await;

    {
        let db = redb::Database::open(store::file_path(dir)).unwrap();
        let txn = db.begin_read().unwrap();
        let events = txn.open_table(EVENTS).unwrap();
        assert_eq!(
            events.get(12).unwrap().unwrap().value()[0],
            1,
            "version-1 frame"
        );
        let batch = events.get(27).unwrap().unwrap();
        assert_eq!(
            batch.value()[0],
            2,
            "one batch frame for the append request"
        );
        assert_eq!(BatchIndex::read(batch.value()).unwrap().len(), 10);
        assert!(events.get(28).unwrap().is_none(), "no value per event");
        assert_eq!(events.get(37).unwrap().unwrap().value()[0], 2);
        assert_eq!(events.len().unwrap(), 15 + 2);
        let meta = txn.open_table(META).unwrap();
        assert_eq!(meta.get("format_version").unwrap().unwrap().value(), 2);
    }

    // The offline commands read both versions.
    let (code, out, err) = cli(dir, &["spool", "stats"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("events:            {}", expected.len())),
        "{out}"
    );
    assert!(out.contains("quarantined:       2"), "{out}");
    let (code, out, err) = cli(dir, &["spool", "verify"]);
    assert_eq!(code, 1, "quarantined records are reported: {out}{err}");
    assert!(
        out.contains(&format!("records ok:        {}", expected.len())),
        "{out}"
    );
    assert!(out.contains("records damaged:   0"), "{out}");
    assert_eq!(exported_ids(dir), expected);
    let (code, out, err) = cli(dir, &["spool", "export", "--quarantine"]);
    assert_eq!(code, 0, "{err}");
    let ids: Vec<(u64, String)> = out
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["seq"].as_u64().unwrap(),
                v["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        ids,
        vec![(3, "v1-quarantined".into()), (30, "v2-b3".into())]
    );

    // Requeue puts the batch's record back in its place (inside its batch), and the version-1
    // record under its own number.
    let (code, _, err) = cli(dir, &["spool", "requeue"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("requeued 2"), "{err}");
    let mut after = vec!["v1-quarantined".to_string()];
    after.extend(old_ids[5..].iter().cloned());
    after.extend([29, 30, 31, 32, 33, 34, 35, 36].map(|i| format!("v2-b{}", i - 27)));
    after.push("v2-s".into());
    assert_eq!(exported_ids(dir), after);

    let spool = Spool::open(&options(dir)).unwrap();
    let stats = spool.stats();
    assert_eq!(
        (stats.live_events, stats.quarantined),
        (after.len() as u64, 0)
    );
    let now = live(&spool);
    assert_eq!(
        stats.live_bytes,
        now.iter().map(|(_, _, size)| *size as u64).sum::<u64>()
    );
    // Delivering everything empties the file, batch bookkeeping included.
    spool
        .ack(now.iter().map(|(seq, _, _)| *seq).collect())
        .await
        .unwrap();
    assert_eq!(spool.stats().live_events, 0);
    assert_eq!(spool.stats().live_bytes, 0);
    spool.close().await;
    let db = redb::Database::open(store::file_path(dir)).unwrap();
    let txn = db.begin_read().unwrap();
    assert!(txn.open_table(EVENTS).unwrap().is_empty().unwrap());
    assert!(txn.open_table(REMOVED).unwrap().is_empty().unwrap());
}
