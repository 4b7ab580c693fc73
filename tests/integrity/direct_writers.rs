//! Kafka-less mode with several writers: two ingest + forward processes (`forward.target:
//! postgres`, as a DaemonSet runs them) write one database at once while the sealer seals.
//! Every acknowledged event is stored once, every row is sealed exactly once (no row slips
//! between two seals), `verify --seals-from-dir` is clean, and the seal files of
//! `integrity.seal_dir` match `audit_seals`.

use crate::common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use audit_manager::config::{ForwardTarget, Role};
use audit_manager::integrity::publish::SealDir;
use audit_manager::integrity::seal::Seal;
use audit_manager::serve::StartOptions;
use common::{TestApp, TestDb, count_rows, eventually, every_acked_stored_once, run_cli};

const WAIT: Duration = Duration::from_secs(90);

async fn writer(db_url: &str, tweak: impl FnOnce(&mut audit_manager::config::Config)) -> TestApp {
    let db_url = db_url.to_string();
    TestApp::start_with(
        move |c| {
            c.roles = vec![Role::Ingest, Role::Forward];
            c.forward.target = ForwardTarget::Postgres;
            c.database.url = db_url.into();
            tweak(c);
        },
        StartOptions {
            forward: Some(common::kafka::fast_settings()),
            ..StartOptions::default()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_direct_writers_at_once_no_gap_no_duplicate_and_the_seal_dir_matches() {
    let db = TestDb::new().await;
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("sealer");
    audit_manager::integrity::seal::keygen(&key).unwrap();
    let seal_dir = keys.path().join("seals");
    let (k, sd) = (key.clone(), seal_dir.clone());
    // One of them also seals (the maintain role), copying each seal to integrity.seal_dir.
    let mut a = writer(&db.url, move |c| {
        c.roles.push(Role::Maintain);
        c.integrity.public_key_files = vec![k.with_extension("pub")];
        c.integrity.signing_key_file = Some(k);
        c.integrity.seal_interval = Duration::from_millis(300);
        c.integrity.seal_dir = Some(sd);
    })
    .await;
    let mut b = writer(&db.url, |_| {}).await;
    let pool = db.pool().await;

    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = common::spawn_batch_clients(&a.url(""), 0, 3, &acked, &stop);
    clients.extend(common::spawn_batch_clients(&b.url(""), 1, 3, &acked, &stop));
    eventually(WAIT, "rows from both writers", || async {
        let per: Vec<(String, i64)> =
            sqlx::query_as("SELECT split_part(id, '-', 1), count(*) FROM audit_events GROUP BY 1")
                .fetch_all(&pool)
                .await
                .ok()?;
        (per.len() == 2 && per.iter().all(|(_, n)| *n > 1000)).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let acked: HashSet<String> = acked.lock().unwrap().iter().cloned().collect();
    let stored = every_acked_stored_once(&pool, &acked, WAIT).await;
    assert_eq!(stored.len(), acked.len(), "only acknowledged events");

    // Every row sealed, exactly once, and every seal copied to the directory.
    let rows = count_rows(&pool).await;
    let files = eventually(WAIT, "every row sealed and copied", || async {
        let files = SealDir::new(&seal_dir).read_all().ok()?;
        let seals: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_seals")
            .fetch_one(&pool)
            .await
            .ok()?;
        let sealed: usize = files
            .values()
            .map(|c| {
                Seal::from_bytes(&c[0].decoded().unwrap())
                    .unwrap()
                    .leaves
                    .len()
            })
            .sum();
        (sealed as i64 == rows && files.len() as i64 == seals).then_some(files)
    })
    .await;
    let in_db: Vec<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT seal_no, bytes FROM audit_seals ORDER BY seal_no")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(in_db.len(), files.len());
    for (no, bytes) in &in_db {
        let copies = &files[&(*no as u64)];
        assert_eq!(copies.len(), 1);
        assert_eq!(copies[0].decoded().as_ref(), Some(bytes), "seal {no}");
    }
    let unsealed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE seal_seq IS NULL \
         OR seal_seq > (SELECT max(hi_seq) FROM audit_seals)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(unsealed, 0);

    let cfg = keys.path().join("verify.yaml");
    std::fs::write(
        &cfg,
        format!(
            "audit_manager:\n  database:\n    url: \"{}\"\n  integrity:\n    public_key_files: [\"{}\"]\n",
            db.url,
            key.with_extension("pub").display()
        ),
    )
    .unwrap();
    let (cfg, dir) = (
        cfg.to_string_lossy().to_string(),
        seal_dir.to_string_lossy().to_string(),
    );
    let (code, stdout, stderr) =
        run_cli(&["verify", "--config", &cfg, "--seals-from-dir", &dir], &[]);
    assert_eq!(code, 0, "verify: {stdout}{stderr}");
    a.stop().await;
    b.stop().await;
    pool.close().await;
}
