//! Killing the sealing process at any point while rows are being stored leaves every stored
//! row covered by exactly one seal once sealing resumes, the chain intact, and every seal
//! published: `serve --roles maintain` runs as a child process and is aborted at each named
//! point of the sealer (`AUDIT_MANAGER_TEST_SEALER_ABORT`, an abort is as abrupt as SIGKILL)
//! and SIGKILLed at random moments, while this test stores rows through the sink's insert path.

use crate::common;

use std::collections::{BTreeMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use audit_manager::event::Row;
use audit_manager::fault::FAULT_ENV;
use audit_manager::integrity::attest::{Attestor, WriterKeys};
use audit_manager::integrity::publish::read_topic;
use audit_manager::integrity::seal::{Seal, key_id, load_public_key};
use audit_manager::integrity::verify::{VerifyOptions, verify};
use audit_manager::store::Store;
use chrono::Utc;
use common::{TestDb, TestKafka, eventually};
use rand::Rng as _;

const SEAL_TOPIC: &str = "openg2p.audit.seals";

/// Every point of the sealer where a crash leaves a different state behind.
const POINTS: [&str; 10] = [
    "pass_start",
    "watermark_locked",
    "after_watermark",
    "rows_read",
    "seal_signed",
    "seal_inserted",
    "seal_committed",
    "before_publish",
    "published",
    "marked_published",
];

struct Sealer {
    child: Child,
}

impl Sealer {
    fn spawn(db: &TestDb, kafka: &TestKafka, dir: &std::path::Path, fault: Option<&str>) -> Sealer {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_audit-manager"));
        cmd.arg("serve")
            .env("AUDIT_MANAGER__ROLES", "maintain")
            .env("AUDIT_MANAGER__HTTP__LISTEN", "127.0.0.1:0")
            .env("AUDIT_MANAGER__DATABASE__URL", &db.url)
            .env("AUDIT_MANAGER__KAFKA__BOOTSTRAP_SERVERS", &kafka.bootstrap)
            .env(
                "AUDIT_MANAGER__INTEGRITY__SIGNING_KEY_FILE",
                dir.join("sealer.key"),
            )
            // Attestation checked with the writer key's public half.
            .env(
                "AUDIT_MANAGER__INTEGRITY__WRITER_KEY_FILE",
                dir.join("writer.key"),
            )
            .env("AUDIT_MANAGER__INTEGRITY__SEAL_INTERVAL", "30ms")
            .env("RUST_LOG", "error")
            .env_remove("CONFIG_PATH")
            .env_remove(FAULT_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(f) = fault {
            cmd.env(FAULT_ENV, f);
        }
        Sealer {
            child: cmd.spawn().expect("spawn audit-manager serve"),
        }
    }

    /// Waits for the process to end by itself; `None` when it was killed by a signal.
    async fn wait_exit(&mut self, deadline: Duration) -> Option<i32> {
        let until = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(
                Instant::now() < until,
                "the sealer did not reach its fault point"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Sealer {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn row(i: u64) -> Row {
    Row {
        id: format!("evt-{i}"),
        occurred_at: Utc::now() - chrono::Duration::milliseconds((i % 5000) as i64),
        source: "/kill-test".into(),
        r#type: "t".into(),
        subject: None,
        actor_type: "user".into(),
        actor_id: format!("u-{}", i % 7),
        resource_type: None,
        resource_id: None,
        action: "a".into(),
        outcome: "success".into(),
        reason: None,
        trace_id: None,
        auth_type: None,
        auth_id: None,
        details: Some(format!(r#"{{"n":{i}}}"#)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_sealer_anywhere_loses_no_coverage() {
    let db = TestDb::new().await;
    let kafka = TestKafka::new(1);
    kafka
        .cluster
        .create_topic(SEAL_TOPIC, 1, 1)
        .expect("seal topic");
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("sealer.key");
    audit_manager::integrity::seal::keygen(&key).expect("keygen");
    let public = load_public_key(&dir.path().join("sealer.key.pub")).unwrap();
    audit_manager::integrity::seal::keygen(&dir.path().join("writer.key")).expect("keygen");
    let writer = Attestor::load(&dir.path().join("writer.key")).unwrap();
    let writer_keys = WriterKeys::new([writer.verifying_key()]);

    let store = Store::connect_lazy(&db.url, 6)
        .unwrap()
        .with_attestor(writer);
    store.prepare().await.expect("schema");
    // Rows keep flowing through the sink's insert path for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let stored = Arc::new(AtomicU64::new(0));
    let writer = {
        let (store, stop, stored) = (store.clone(), stop.clone(), stored.clone());
        tokio::spawn(async move {
            // Each published seal carries its leaves, and the mock broker keeps only the newest
            // 5 MB of a partition: at 4 000 rows/s the seal topic outgrew that while the
            // sealer's restarts took longer, and its oldest seals were gone before the topic
            // was read. 200 rows/s, at most 15 000 rows, keep the whole topic.
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && i < 15_000 {
                let batch: Vec<Row> = (i..i + 20).map(row).collect();
                store.insert(&batch).await.expect("insert");
                i += 20;
                stored.store(i, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let mut kills = 0;
    for point in POINTS {
        // The 2nd time, so that earlier passes have left seals behind.
        let mut s = Sealer::spawn(&db, &kafka, dir.path(), Some(&format!("{point}@2")));
        let code = s.wait_exit(Duration::from_secs(60)).await;
        assert_eq!(code, None, "aborted at {point} (killed by SIGABRT)");
        kills += 1;
    }
    let mut rng = rand::rng();
    for _ in 0..4 {
        let mut s = Sealer::spawn(&db, &kafka, dir.path(), None);
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..600))).await;
        s.kill9();
        kills += 1;
    }
    assert!(kills >= 10);
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let total = stored.load(Ordering::Relaxed);
    assert!(total > 0);

    // One more sealer, left alone until everything is sealed and published.
    let pool = db.pool().await;
    let mut s = Sealer::spawn(&db, &kafka, dir.path(), None);
    eventually(
        Duration::from_secs(60),
        "every row sealed and published",
        || async {
            let (unsealed, unpublished): (i64, i64) = sqlx::query_as(
                "SELECT (SELECT count(*) FROM audit_events
                      WHERE seal_seq > COALESCE((SELECT max(hi_seq) FROM audit_seals), 0)
                         OR seal_seq IS NULL),
                    (SELECT count(*) FROM audit_seals WHERE published_at IS NULL)",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            (unsealed == 0 && unpublished == 0).then_some(())
        },
    )
    .await;
    s.kill9();

    // Every stored row is in exactly one seal.
    let seals: Vec<(Vec<u8>,)> = sqlx::query_as("SELECT bytes FROM audit_seals ORDER BY seal_no")
        .fetch_all(&pool)
        .await
        .unwrap();
    let mut leaves = HashSet::new();
    for (bytes,) in &seals {
        for l in Seal::from_bytes(bytes).unwrap().leaves {
            assert!(
                leaves.insert((l.id.clone(), l.occurred_at_us)),
                "{} sealed twice",
                l.id
            );
        }
    }
    let stored_rows: Vec<(String, chrono::DateTime<Utc>)> =
        sqlx::query_as("SELECT id, occurred_at FROM audit_events")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(stored_rows.len() as u64, total);
    assert_eq!(leaves.len(), stored_rows.len());
    for (id, at) in &stored_rows {
        assert!(
            leaves.contains(&(id.clone(), at.timestamp_micros())),
            "{id} not sealed"
        );
    }

    // verify agrees, including against the published copies.
    let kc = audit_manager::config::KafkaConfig {
        bootstrap_servers: kafka.bootstrap.clone(),
        ..Default::default()
    };
    let topic =
        tokio::task::spawn_blocking(move || read_topic(&kc, SEAL_TOPIC, Duration::from_secs(30)))
            .await
            .unwrap()
            .expect("read seal topic");
    assert_eq!(topic.len(), seals.len(), "every seal published");
    let keys = BTreeMap::from([(key_id(&public), public)]);
    let opts = VerifyOptions {
        topic: Some(topic),
        writer_keys,
        ..VerifyOptions::default()
    };
    let mut out = Vec::new();
    let report = verify(&pool, &keys, &opts, &mut out).await.expect("verify");
    let out = String::from_utf8_lossy(&out);
    assert!(report.is_clean(), "{out}");
    assert_eq!(report.rows_ok, total);
    assert_eq!(report.attested_rows, total);
}
