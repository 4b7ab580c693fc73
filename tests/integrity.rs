//! Tamper evidence (guarantee 8): a database nobody touched verifies clean (across a retention
//! drop and a key rotation); every kind of tampering is found and named; the write lock keeps a
//! late commit from falling between two seals; the documented worked example holds.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use audit_manager::event::Row;
use audit_manager::integrity::SealLine;
use audit_manager::integrity::attest::{Attestor, SealCheck, WriterKeys};
use audit_manager::integrity::encoding::{StoredRow, encode, row_hash};
use audit_manager::integrity::publish::{Publisher, read_topic};
use audit_manager::integrity::seal::{Leaf, RetentionRecord, Seal, Signer, key_id, seal_hash};
use audit_manager::integrity::sealer::{PassReport, seal_pass, seal_pass_checked};
use audit_manager::integrity::verify::{Report, VerifyOptions, verify};
use audit_manager::store::AdvisoryLock;
use audit_manager::store::Store;
use chrono::{DateTime, TimeZone, Utc};
use common::{TestDb, eventually, run_cli};
use ed25519_dalek::{SigningKey, VerifyingKey};
use sqlx::{Connection, PgPool};

fn signer(seed: u8) -> Signer {
    Signer::new(SigningKey::from_bytes(&[seed; 32]))
}

fn keys(signers: &[&Signer]) -> BTreeMap<[u8; 8], VerifyingKey> {
    signers
        .iter()
        .map(|s| (s.key_id(), s.verifying_key()))
        .collect()
}

fn row(id: &str, at: DateTime<Utc>) -> Row {
    Row {
        id: id.into(),
        occurred_at: at,
        source: "/registry".into(),
        r#type: "org.openg2p.registry.update".into(),
        subject: Some(format!("subject-{id}")),
        actor_type: "user".into(),
        actor_id: "u-1".into(),
        resource_type: Some("beneficiary".into()),
        resource_id: Some("b-1".into()),
        action: "update".into(),
        outcome: "success".into(),
        reason: None,
        trace_id: None,
        auth_type: Some("api_key".into()),
        auth_id: Some("registry".into()),
        details: Some(r#"{"changes":[{"field":"phone","new":"2"}],"amount":12.5}"#.into()),
    }
}

fn rows(prefix: &str, n: usize, at: DateTime<Utc>) -> Vec<Row> {
    (0..n)
        .map(|i| {
            row(
                &format!("{prefix}-{i}"),
                at + chrono::Duration::seconds(i as i64),
            )
        })
        .collect()
}

struct Sealed {
    db: TestDb,
    store: Store,
    pool: PgPool,
    signer: Signer,
    /// The sealer's writer attestation check (the store attests with the matching key).
    check: tokio::sync::Mutex<SealCheck>,
}

impl Sealed {
    async fn new() -> Sealed {
        let db = TestDb::new().await;
        let writer = SigningKey::from_bytes(&[9; 32]);
        let check = SealCheck::new(WriterKeys::new([writer.verifying_key()]));
        let store = Store::connect_lazy(&db.url, 8)
            .expect("store")
            .with_attestor(Attestor::new(writer));
        store.prepare().await.expect("schema");
        let pool = db.pool().await;
        Sealed {
            db,
            store,
            pool,
            signer: signer(1),
            check: tokio::sync::Mutex::new(check),
        }
    }

    async fn insert(&self, rows: &[Row]) {
        self.store.insert(rows).await.expect("insert");
    }

    async fn seal_with(&self, s: &Signer, publisher: Option<&Publisher>) -> PassReport {
        let mut conn = sqlx::PgConnection::connect(&self.db.url)
            .await
            .expect("conn");
        let mut check = self.check.lock().await;
        let r = seal_pass_checked(&mut conn, s, publisher, None, Some(&mut check))
            .await
            .expect("seal pass");
        assert!(r.locked);
        r
    }

    async fn seal(&self) -> PassReport {
        self.seal_with(&self.signer, None).await
    }

    async fn verify_with(
        &self,
        k: &BTreeMap<[u8; 8], VerifyingKey>,
        opts: &VerifyOptions,
    ) -> (Report, String) {
        let mut out = Vec::new();
        let r = verify(&self.pool, k, opts, &mut out)
            .await
            .expect("verify runs");
        (r, String::from_utf8(out).expect("utf8"))
    }

    async fn verify(&self) -> (Report, String) {
        self.verify_with(&keys(&[&self.signer]), &VerifyOptions::default())
            .await
    }

    async fn sql(&self, sql: &str) {
        sqlx::query(sql).execute(&self.pool).await.expect(sql);
    }

    /// Two seal passes over 30 rows (so a previous-pass watermark exists), then 5 pending rows.
    async fn standard() -> Sealed {
        let s = Sealed::new().await;
        let t = Utc.with_ymd_and_hms(2026, 3, 1, 10, 0, 0).unwrap();
        s.insert(&rows("a", 20, t)).await;
        assert_eq!(s.seal().await.rows, 20);
        s.insert(&rows("b", 10, t + chrono::Duration::hours(1)))
            .await;
        assert_eq!(s.seal().await.rows, 10);
        let (r, out) = s.verify().await;
        assert!(r.is_clean(), "untouched database must verify clean:\n{out}");
        assert_eq!(r.rows_ok, 30);
        s
    }
}

fn kinds(r: &Report) -> Vec<&'static str> {
    r.findings.iter().map(|f| f.kind).collect()
}

/// The findings of `r` of kind `kind` that name `needle`.
fn named(r: &Report, kind: &str, needle: &str) -> usize {
    r.findings
        .iter()
        .filter(|f| f.kind == kind && f.detail.contains(needle))
        .count()
}

#[tokio::test]
async fn untouched_database_verifies_clean_across_retention_and_key_rotation() {
    let s = Sealed::new().await;
    let old = Utc.with_ymd_and_hms(2019, 1, 15, 0, 0, 0).unwrap();
    let recent = Utc::now() - chrono::Duration::days(1);
    s.insert(&rows("old", 25, old)).await;
    s.insert(&rows("new", 25, recent)).await;
    let key_a = signer(1);
    let key_b = signer(2);
    assert_eq!(s.seal_with(&key_a, None).await.rows, 50);
    // Rotation: the next seals are signed with key B.
    s.insert(&rows("later", 10, recent)).await;
    assert_eq!(s.seal_with(&key_b, None).await.rows, 10);
    // Retention drops the 2019 partition; the drop is recorded and sealed.
    let report = s
        .store
        .maintain(Utc::now(), 1, 12, false, true)
        .await
        .expect("maintain")
        .expect("lock");
    assert_eq!(report.dropped, ["audit_events_2019_01"]);
    let retention_seal = s.seal_with(&key_b, None).await;
    assert_eq!(
        retention_seal.sealed.len(),
        1,
        "the drop gets a seal of its own"
    );

    let both = keys(&[&key_a, &key_b]);
    let (r, out) = s.verify_with(&both, &VerifyOptions::default()).await;
    assert!(r.is_clean(), "{out}");
    assert_eq!(r.rows_ok, 35);
    assert_eq!(r.retained_rows, 25, "{out}");
    assert!(
        out.contains("info: retention dropped partition audit_events_2019_01"),
        "{out}"
    );

    // The drop is judged against the configured retention: fine for 12 months, early for 120.
    let strict = VerifyOptions {
        retention_months: Some(12),
        ..VerifyOptions::default()
    };
    assert!(s.verify_with(&both, &strict).await.0.is_clean());
    let longer = VerifyOptions {
        retention_months: Some(120),
        ..VerifyOptions::default()
    };
    let (r, out) = s.verify_with(&both, &longer).await;
    assert_eq!(kinds(&r), ["retention-early"], "{out}");
    assert!(out.contains("audit_events_2019_01"), "{out}");
    // Only key B configured: the seal signed by A is not trusted.
    let (r, _) = s
        .verify_with(&keys(&[&key_b]), &VerifyOptions::default())
        .await;
    assert_eq!(kinds(&r), ["unknown-key"]);

    // The command line agrees: exit 0, one summary line.
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (dir.path().join("a.pub"), dir.path().join("b.pub"));
    std::fs::write(&pa, hex::encode(key_a.verifying_key().as_bytes())).unwrap();
    std::fs::write(&pb, hex::encode(key_b.verifying_key().as_bytes())).unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(
        &cfg,
        format!(
            "audit_manager:\n  database:\n    url: \"{}\"\n  integrity:\n    public_key_files: [\"{}\", \"{}\"]\n",
            s.db.url,
            pa.display(),
            pb.display()
        ),
    )
    .unwrap();
    let cfg = cfg.to_string_lossy().to_string();
    let (code, stdout, stderr) = run_cli(&["verify", "--config", &cfg], &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    // Reading for long is what verify does: a statement kept waiting past a second (here
    // behind a lock) is no "slow statement" warning on the operator's terminal.
    let mut locker = sqlx::PgConnection::connect(&s.db.url).await.unwrap();
    let mut tx = locker.begin().await.unwrap();
    sqlx::query("LOCK TABLE audit_events IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .unwrap();
    let running = {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || run_cli(&["verify", "--config", &cfg], &[]))
    };
    eventually(
        Duration::from_secs(30),
        "verify waiting for the lock",
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
              WHERE application_name = 'audit-manager' AND wait_event_type = 'Lock'",
            )
            .fetch_one(&s.pool)
            .await
            .ok()?;
            (waiting > 0).then_some(())
        },
    )
    .await;
    // Past the one-second threshold of a slow statement, then let it go.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    tx.commit().await.unwrap();
    let (code, stdout, stderr) = running.await.unwrap();
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(!stderr.contains("slow statement"), "{stderr}");
    // Tampered: exit 1 with the row named on stdout.
    s.sql("UPDATE audit_events SET outcome = 'failure' WHERE id = 'new-3'")
        .await;
    let (code, stdout, _) = run_cli(&["verify", "--config", &cfg], &[]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("row-changed: id=new-3"), "{stdout}");
    // A time window that excludes the row: clean again.
    let (code, stdout, stderr) = run_cli(
        &["verify", "--config", &cfg, "--to", "2020-01-01T00:00:00Z"],
        &[],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    // No trusted key configured: could not run, exit 2.
    let (code, _, stderr) = run_cli(&["verify"], &[("AUDIT_MANAGER__DATABASE__URL", &s.db.url)]);
    assert_eq!(code, 2);
    assert!(stderr.contains("integrity.public_key_files"), "{stderr}");
}

#[tokio::test]
async fn updating_any_column_of_a_sealed_row_is_found_and_named() {
    let s = Sealed::standard().await;
    s.sql("UPDATE audit_events SET actor_id = 'someone-else' WHERE id = 'a-3'")
        .await;
    s.sql("UPDATE audit_events SET reason = 'covered up' WHERE id = 'a-4'")
        .await;
    s.sql(
        "UPDATE audit_events SET details = jsonb_set(details, '{amount}', '13.5') WHERE id = 'b-2'",
    )
    .await;
    s.sql(
        "UPDATE audit_events SET ingested_at = ingested_at + interval '1 second' WHERE id = 'b-5'",
    )
    .await;
    let (r, out) = s.verify().await;
    assert_eq!(kinds(&r), ["row-changed"; 4], "{out}");
    for id in ["a-3", "a-4", "b-2", "b-5"] {
        assert_eq!(named(&r, "row-changed", &format!("id={id} ")), 1, "{out}");
    }
    assert!(
        out.contains("occurred_at=2026-03-01T10:00:03.000000Z"),
        "{out}"
    );
    // A change of the key columns moves the row: the sealed one is missing, the new unsealed.
    s.sql("UPDATE audit_events SET occurred_at = occurred_at + interval '1 millisecond' WHERE id = 'a-7'")
        .await;
    let (r, out) = s.verify().await;
    assert_eq!(named(&r, "row-missing", "id=a-7 "), 1, "{out}");
    assert_eq!(named(&r, "row-unsealed", "id=a-7 "), 1, "{out}");
}

#[tokio::test]
async fn deleting_a_sealed_row_is_found_and_named() {
    let s = Sealed::standard().await;
    s.sql("DELETE FROM audit_events WHERE id = 'b-9'").await;
    let (r, out) = s.verify().await;
    assert_eq!(kinds(&r), ["row-missing"], "{out}");
    assert!(
        out.contains(
            "row-missing: id=b-9 occurred_at=2026-03-01T11:00:09.000000Z: sealed by seal 2"
        ),
        "{out}"
    );
}

#[tokio::test]
async fn back_dated_inserts_into_sealed_ranges_are_found() {
    let s = Sealed::standard().await;
    let (r, _) = s.verify().await;
    assert_eq!(r.pending_rows, 0);
    // With a seal_seq inside a sealed range.
    s.sql(
        "INSERT INTO audit_events (id, occurred_at, source, type, actor_type, actor_id, action,
             outcome, seal_seq)
         SELECT 'forged-1', '2026-03-01T10:00:05Z', '/registry', 't', 'user', 'u', 'a', 'success',
                seal_seq FROM audit_events WHERE id = 'a-5'",
    )
    .await;
    // Without a seal_seq, as if stored before sealing began.
    s.sql(
        "INSERT INTO audit_events (id, occurred_at, source, type, actor_type, actor_id, action,
             outcome, seal_seq)
         VALUES ('forged-2', '2026-03-01T10:00:06Z', '/registry', 't', 'user', 'u', 'a',
                 'success', NULL)",
    )
    .await;
    // With a fresh seal_seq but an ingested_at from before the previous seal pass.
    s.sql(
        "INSERT INTO audit_events (id, occurred_at, ingested_at, source, type, actor_type,
             actor_id, action, outcome)
         VALUES ('forged-3', '2026-03-01T10:00:07Z', now() - interval '1 hour', '/registry', 't',
                 'user', 'u', 'a', 'success')",
    )
    .await;
    let (r, out) = s.verify().await;
    for id in ["forged-1", "forged-2", "forged-3"] {
        assert_eq!(named(&r, "row-unsealed", &format!("id={id} ")), 1, "{out}");
    }
    assert_eq!(r.findings.len(), 3, "{out}");
    // A row the sink stores now is pending, not a finding.
    s.insert(&[row("fresh", Utc::now())]).await;
    let (r2, _) = s.verify().await;
    assert_eq!(r2.findings.len(), 3);
    assert_eq!(r2.pending_rows, 1);
}

#[tokio::test]
async fn changing_or_deleting_seals_is_found() {
    let s = Sealed::standard().await;
    s.insert(&rows(
        "c",
        5,
        Utc.with_ymd_and_hms(2026, 3, 2, 0, 0, 0).unwrap(),
    ))
    .await;
    s.seal().await;
    // Seal 1's bytes changed (one leaf hash byte), hash column left alone.
    s.sql("UPDATE audit_seals SET bytes = overlay(bytes placing '\\x00'::bytea from length(bytes) - 10) WHERE seal_no = 1")
        .await;
    let (r, out) = s.verify().await;
    assert!(named(&r, "seal-changed", "seal 1:") >= 1, "{out}");
    // Hash column updated too: the signature no longer matches.
    s.sql("UPDATE audit_seals SET hash = sha256(bytes) WHERE seal_no = 1")
        .await;
    let (r, out) = s.verify().await;
    assert_eq!(named(&r, "signature-invalid", "seal 1:"), 1, "{out}");
    assert_eq!(named(&r, "chain-broken", "seal 2:"), 1, "{out}");
    // Seal 2 deleted.
    s.sql("DELETE FROM audit_seals WHERE seal_no = 2").await;
    let (r, out) = s.verify().await;
    assert_eq!(named(&r, "seal-missing", "seal 2:"), 1, "{out}");
}

#[tokio::test]
async fn a_seal_re_signed_with_a_key_not_in_the_config_is_found() {
    let s = Sealed::standard().await;
    // The attacker changes a row and rebuilds seal 2 to match, signing with their own key.
    s.sql("UPDATE audit_events SET outcome = 'denied' WHERE id = 'b-1'")
        .await;
    let (bytes,): (Vec<u8>,) = sqlx::query_as("SELECT bytes FROM audit_seals WHERE seal_no = 2")
        .fetch_one(&s.pool)
        .await
        .unwrap();
    let mut seal = Seal::from_bytes(&bytes).unwrap();
    let stored: StoredRow = sqlx::query_as(&format!(
        "SELECT {} FROM audit_events WHERE id = 'b-1'",
        audit_manager::store::columns::select_list()
    ))
    .fetch_one(&s.pool)
    .await
    .unwrap();
    let leaf = seal.leaves.iter_mut().find(|l| l.id == "b-1").unwrap();
    leaf.row_hash = row_hash(&stored).unwrap();
    let mallory = signer(66);
    seal.key_id = mallory.key_id();
    let forged = mallory.sign(&seal);
    sqlx::query("UPDATE audit_seals SET bytes = $1, hash = $2, signature = $3 WHERE seal_no = 2")
        .bind(&forged.bytes)
        .bind(&forged.hash[..])
        .bind(&forged.signature[..])
        .execute(&s.pool)
        .await
        .unwrap();
    let (r, out) = s.verify().await;
    assert_eq!(kinds(&r), ["unknown-key"], "{out}");
    assert!(out.contains(&hex::encode(mallory.key_id())), "{out}");
    // Claiming a trusted key id without its private key: the signature fails.
    seal.key_id = s.signer.key_id();
    let forged = mallory.sign(&seal);
    sqlx::query("UPDATE audit_seals SET bytes = $1, hash = $2, signature = $3 WHERE seal_no = 2")
        .bind(&forged.bytes)
        .bind(&forged.hash[..])
        .bind(&forged.signature[..])
        .execute(&s.pool)
        .await
        .unwrap();
    let (r, out) = s.verify().await;
    assert_eq!(kinds(&r), ["signature-invalid"], "{out}");
}

#[tokio::test]
async fn deleting_the_newest_seals_is_found_against_the_published_copy() {
    let kafka = common::TestKafka::new(1);
    let topic = "openg2p.audit.seals";
    kafka.cluster.create_topic(topic, 1, 1).expect("seal topic");
    let kc = audit_manager::config::KafkaConfig {
        bootstrap_servers: kafka.bootstrap.clone(),
        ..Default::default()
    };
    let publisher = Publisher::new(&kc, topic).expect("publisher");
    let s = Sealed::new().await;
    let t = Utc.with_ymd_and_hms(2026, 4, 1, 0, 0, 0).unwrap();
    for i in 0..4 {
        s.insert(&rows(&format!("p{i}"), 5, t)).await;
        let r = s.seal_with(&s.signer, Some(&publisher)).await;
        assert_eq!(r.published, 1);
    }
    let read = |kc: audit_manager::config::KafkaConfig| async move {
        tokio::task::spawn_blocking(move || read_topic(&kc, topic, Duration::from_secs(20)))
            .await
            .unwrap()
            .expect("read topic")
    };
    let published = read(kc.clone()).await;
    assert_eq!(published.keys().copied().collect::<Vec<_>>(), [1, 2, 3, 4]);
    let opts = VerifyOptions {
        topic: Some(published.clone()),
        ..VerifyOptions::default()
    };
    let (r, out) = s.verify_with(&keys(&[&s.signer]), &opts).await;
    assert!(r.is_clean(), "{out}");
    // The newest two seals and their rows disappear: the chain in the database is consistent.
    s.sql("DELETE FROM audit_events WHERE seal_seq > (SELECT hi_seq FROM audit_seals WHERE seal_no = 2)")
        .await;
    s.sql("DELETE FROM audit_seals WHERE seal_no > 2").await;
    let (r, out) = s.verify().await;
    assert!(r.is_clean(), "the database alone cannot tell: {out}");
    let (r, out) = s.verify_with(&keys(&[&s.signer]), &opts).await;
    assert_eq!(kinds(&r), ["seal-truncated", "seal-truncated"], "{out}");
    assert!(out.contains("seal 3:") && out.contains("seal 4:"), "{out}");
    // A published seal changed in the database.
    s.sql("UPDATE audit_seals SET signature = signature WHERE seal_no = 1")
        .await;
    let mut changed = published.clone();
    changed.get_mut(&1).unwrap()[0] = SealLine::new(1, b"other", &[0; 64], "00");
    let opts = VerifyOptions {
        topic: Some(changed),
        ..VerifyOptions::default()
    };
    let (r, out) = s.verify_with(&keys(&[&s.signer]), &opts).await;
    assert_eq!(named(&r, "seal-changed", "seal 1:"), 1, "{out}");
}

/// A sink transaction that drew its `seal_seq` but has not committed while a seal is made must
/// be covered by that seal (the sealer waits for it), never skipped. Without the write lock the
/// sealer would read the sequence past it, seal only the visible rows, and the late row would
/// sit unsealed inside a sealed range.
#[tokio::test]
async fn a_transaction_committing_late_is_not_skipped_by_a_seal() {
    let s = Sealed::new().await;
    let t = Utc.with_ymd_and_hms(2026, 5, 1, 0, 0, 0).unwrap();
    s.insert(&rows("before", 3, t)).await;
    s.store
        .ensure_months([audit_manager::store::Month::of(t)])
        .await
        .unwrap();
    // A sink-like transaction: shared lock, insert (draws seal_seq), no commit yet.
    let mut slow = sqlx::PgConnection::connect(&s.db.url).await.unwrap();
    let mut tx = slow.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
        .bind(AdvisoryLock::SealWrite.id())
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO audit_events (id, occurred_at, source, type, actor_type, actor_id, action,
             outcome) VALUES ('late', '2026-05-01T00:00:30Z', '/s', 't', 'user', 'u', 'a', 'success')",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    // A later row commits first (its own transaction, through the store).
    let store = s.store.clone();
    let writer = tokio::spawn(async move { store.insert(&[row("after", t)]).await });
    let url = s.db.url.clone();
    let signer = signer(1);
    let sealing = tokio::spawn(async move {
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        seal_pass(&mut conn, &signer, None).await.unwrap()
    });
    // The sealer is waiting for the exclusive lock (an awaited condition, not a sleep).
    eventually(
        Duration::from_secs(10),
        "the sealer waiting for the write lock",
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
            )
            .fetch_one(&s.pool)
            .await
            .unwrap();
            (waiting >= 1).then_some(())
        },
    )
    .await;
    assert!(
        !sealing.is_finished(),
        "the seal must wait for the open transaction"
    );
    tx.commit().await.unwrap();
    writer.await.unwrap().expect("insert after");
    let report = sealing.await.unwrap();
    let (ids,): (Vec<u8>,) =
        sqlx::query_as("SELECT bytes FROM audit_seals ORDER BY seal_no DESC LIMIT 1")
            .fetch_one(&s.pool)
            .await
            .unwrap();
    let sealed: Vec<String> = Seal::from_bytes(&ids)
        .unwrap()
        .leaves
        .into_iter()
        .map(|l| l.id)
        .collect();
    assert!(
        sealed.contains(&"late".to_string()),
        "late row covered: {sealed:?} {report:?}"
    );
    // Whatever the first pass did not take, the next takes; nothing is left unsealed.
    s.seal().await;
    let (r, out) = s.verify().await;
    assert!(r.is_clean(), "{out}");
    assert_eq!(r.rows_ok, 5);
    assert_eq!(r.pending_rows, 0);
}

#[tokio::test]
async fn many_rows_are_split_into_bounded_seals() {
    let s = Sealed::new().await;
    let t = Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap();
    let n = audit_manager::integrity::seal::MAX_LEAVES * 2 + 10;
    s.insert(&rows("bulk", n, t)).await;
    let r = s.seal().await;
    assert_eq!(r.sealed, [1, 2, 3]);
    assert_eq!(r.rows as usize, n);
    // More aborted numbers in a row than a seal's window, then rows again.
    s.sql("SELECT nextval('audit_events_seal_seq') FROM generate_series(1, 10000)")
        .await;
    s.insert(&rows("after-gap", 7, t)).await;
    let r = s.seal().await;
    assert_eq!((r.sealed.len(), r.rows), (1, 7));
    let (rep, out) = s.verify().await;
    assert!(rep.is_clean(), "{out}");
    assert_eq!(rep.rows_ok as usize, n + 7);
}

#[tokio::test]
async fn a_seal_closes_before_its_byte_bound_and_the_next_one_goes_on() {
    use audit_manager::integrity::seal::{MAX_LEAVES, MAX_SEAL_BYTES};
    let s = Sealed::new().await;
    let t = Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap();
    // Long ids: a window of MAX_LEAVES rows would be twice the byte bound, so the sealer stops
    // reading in the middle of the window's rows and the next seal starts where it stopped.
    let n = 4000;
    assert!(n <= MAX_LEAVES && n * 350 > 2 * MAX_SEAL_BYTES);
    s.insert(&rows(&"x".repeat(300), n, t)).await;
    let r = s.seal().await;
    assert_eq!(r.rows as usize, n);
    assert!(r.sealed.len() >= 3, "{r:?}");
    let largest: i32 = sqlx::query_scalar("SELECT max(octet_length(bytes)) FROM audit_seals")
        .fetch_one(&s.pool)
        .await
        .unwrap();
    assert!(largest as usize <= MAX_SEAL_BYTES, "{largest}");
    let (rep, out) = s.verify().await;
    assert!(rep.is_clean(), "{out}");
    assert_eq!(rep.rows_ok as usize, n);
}

#[test]
fn keygen_writes_a_private_key_and_refuses_to_overwrite() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("sealer.key");
    let k = key.to_string_lossy().to_string();
    let (code, stdout, stderr) = run_cli(&["keygen", "--out", &k], &[]);
    assert_eq!(code, 0, "{stderr}");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let public =
        audit_manager::integrity::seal::load_public_key(&dir.path().join("sealer.key.pub"))
            .unwrap();
    let private = audit_manager::integrity::seal::load_signing_key(&key).unwrap();
    assert_eq!(private.verifying_key(), public);
    assert!(stdout.contains(&hex::encode(key_id(&public))), "{stdout}");
    let before = std::fs::read(&key).unwrap();
    let (code, _, stderr) = run_cli(&["keygen", "--out", &k], &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("never overwrites"), "{stderr}");
    assert_eq!(std::fs::read(&key).unwrap(), before);
}

// ---------------------------------------------------------------------------------------------
// The worked example of docs/integrity.md
// ---------------------------------------------------------------------------------------------

/// The text of the fenced block right after the line `<!-- example: NAME -->`.
fn doc_block<'a>(doc: &'a str, name: &str) -> &'a str {
    let marker = format!("<!-- example: {name} -->");
    let start = doc
        .find(&marker)
        .unwrap_or_else(|| panic!("{marker} in docs/integrity.md"));
    let rest = &doc[start + marker.len()..];
    let open = rest.find("```").expect("fence");
    let body = &rest[open + 3..];
    let body = &body[body.find('\n').expect("fence line") + 1..];
    &body[..body.find("```").expect("closing fence")]
}

fn hex_block(doc: &str, name: &str) -> Vec<u8> {
    let text: String = doc_block(doc, name).split_whitespace().collect();
    hex::decode(text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn doc_row(doc: &str) -> StoredRow {
    let v: serde_json::Value = serde_json::from_str(doc_block(doc, "row")).expect("row JSON");
    let s = |k: &str| v[k].as_str().map(str::to_string);
    let t = |k: &str| {
        DateTime::parse_from_rfc3339(v[k].as_str().unwrap())
            .unwrap()
            .with_timezone(&Utc)
    };
    StoredRow {
        id: s("id").unwrap(),
        occurred_at: t("occurred_at"),
        ingested_at: t("ingested_at"),
        source: s("source").unwrap(),
        r#type: s("type").unwrap(),
        subject: s("subject"),
        actor_type: s("actor_type").unwrap(),
        actor_id: s("actor_id").unwrap(),
        resource_type: s("resource_type"),
        resource_id: s("resource_id"),
        action: s("action").unwrap(),
        outcome: s("outcome").unwrap(),
        reason: s("reason"),
        trace_id: s("trace_id"),
        details: (!v["details"].is_null()).then(|| v["details"].to_string()),
        auth_type: s("auth_type"),
        auth_id: s("auth_id"),
        seal_seq: v["seal_seq"].as_i64(),
    }
}

#[test]
fn the_documented_worked_example_holds() {
    let doc = include_str!("../docs/integrity.md");
    let row = doc_row(doc);
    assert_eq!(encode(&row).unwrap(), hex_block(doc, "row-encoding"));
    let hash = row_hash(&row).unwrap();
    assert_eq!(hash.to_vec(), hex_block(doc, "row-hash"));

    let seed: [u8; 32] = hex_block(doc, "signing-key").try_into().unwrap();
    let signer = Signer::new(SigningKey::from_bytes(&seed));
    assert_eq!(
        signer.verifying_key().as_bytes().to_vec(),
        hex_block(doc, "public-key")
    );
    assert_eq!(signer.key_id().to_vec(), hex_block(doc, "key-id"));
    let seal = Seal {
        seal_no: 1,
        key_id: signer.key_id(),
        created_at_us: row.ingested_at.timestamp_micros() + 60_000_000,
        watermark_at_us: row.ingested_at.timestamp_micros() + 59_000_000,
        lo: 0,
        hi: row.seal_seq.unwrap(),
        prev_hash: [0; 32],
        leaves: vec![Leaf {
            seal_seq: row.seal_seq.unwrap(),
            occurred_at_us: row.occurred_at.timestamp_micros(),
            id: row.id.clone(),
            row_hash: hash,
        }],
        retention: vec![RetentionRecord {
            partition: "audit_events_2019_01".into(),
            lower_us: Utc
                .with_ymd_and_hms(2019, 1, 1, 0, 0, 0)
                .unwrap()
                .timestamp_micros(),
            upper_us: Utc
                .with_ymd_and_hms(2019, 2, 1, 0, 0, 0)
                .unwrap()
                .timestamp_micros(),
            dropped_at_us: row.ingested_at.timestamp_micros() + 30_000_000,
            rows: 2,
            sealed_rows: 0,
        }],
        // The example is a format-1 seal (row encoding 1, no legacy boundary).
        row_encoding: audit_manager::integrity::encoding::RowEncoding::V1,
        legacy: None,
    };
    let signed = signer.sign(&seal);
    assert_eq!(signed.bytes, hex_block(doc, "seal-bytes"));
    assert_eq!(Seal::from_bytes(&signed.bytes).unwrap(), seal);
    assert_eq!(
        seal_hash(&signed.bytes).to_vec(),
        hex_block(doc, "seal-hash")
    );
    assert_eq!(signed.signature.to_vec(), hex_block(doc, "signature"));
}

// ---------------------------------------------------------------------------------------------
// The maintain role seals on its own; the seals and keys over HTTP
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_maintain_role_seals_and_serves_seals_and_keys() {
    use audit_manager::config::Role;
    let s = Sealed::new().await;
    let kafka = common::TestKafka::new(1);
    kafka
        .cluster
        .create_topic("openg2p.audit.seals", 1, 1)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    audit_manager::integrity::seal::keygen(&key).unwrap();
    let public = dir.path().join("k.pub");
    let (url, bootstrap) = (s.db.url.clone(), kafka.bootstrap.clone());
    let (k2, p2) = (key.clone(), public.clone());
    let mut app = common::TestApp::start_with(
        move |c| {
            c.roles = vec![Role::Maintain];
            c.database.url = url.into();
            c.kafka.bootstrap_servers = bootstrap;
            c.integrity.signing_key_file = Some(k2);
            c.integrity.public_key_files = vec![p2];
            c.integrity.seal_interval = Duration::from_millis(50);
        },
        Default::default(),
    )
    .await;
    s.insert(&rows("served", 12, Utc::now())).await;
    let lines: Vec<SealLine> = eventually(Duration::from_secs(30), "the rows sealed", || async {
        let text = reqwest::get(app.url("/seals"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let lines: Vec<SealLine> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a seal per line"))
            .collect();
        let sealed: usize = lines
            .iter()
            .map(|l| {
                Seal::from_bytes(&l.decoded().unwrap())
                    .unwrap()
                    .leaves
                    .len()
            })
            .sum();
        (sealed == 12).then_some(lines)
    })
    .await;
    assert_eq!(lines[0].seal_no, 1);
    let public_key = audit_manager::integrity::seal::load_public_key(&public).unwrap();
    let (r, out) = s
        .verify_with(
            &BTreeMap::from([(key_id(&public_key), public_key)]),
            &VerifyOptions::default(),
        )
        .await;
    assert!(r.is_clean(), "{out}");
    // A window that ends before the first seal: nothing.
    let (status, body) = app.get_text("/seals?to=2000-01-01T00:00:00Z").await;
    assert_eq!((status, body.as_str()), (200, ""));
    let (status, body) = app.get("/seals?from=yesterday").await;
    assert_eq!(status, 400);
    assert_eq!(common::code(&body), "AUD-013");
    let (status, body) = app.get("/seals/keys").await;
    assert_eq!(status, 200);
    let keys = body["response"]["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0]["role"], "signing");
    assert_eq!(keys[0]["key_id"], hex::encode(key_id(&public_key)));
    assert_eq!(keys[1]["public_key"], hex::encode(public_key.as_bytes()));
    let maintain = app.role_health("maintain").await;
    assert_eq!(maintain["status"], "UP", "{maintain}");
    assert!(
        maintain["sealing"]["last_seal"].as_u64().is_some(),
        "{maintain}"
    );
    let (_, metrics) = app.get_text("/metrics").await;
    assert!(metrics.contains("audit_seals_written_total"), "{metrics}");
    // The periodic self-check of the newest seal notices a changed row.
    let newest = Seal::from_bytes(&lines.last().unwrap().decoded().unwrap()).unwrap();
    s.sql(&format!(
        "UPDATE audit_events SET action = 'x' WHERE id = '{}'",
        newest.leaves[0].id
    ))
    .await;
    let reason = eventually(Duration::from_secs(30), "maintain DEGRADED", || async {
        let m = app.role_health("maintain").await;
        (m["status"] == "DEGRADED").then(|| m["reason"].as_str().unwrap_or("").to_string())
    })
    .await;
    assert!(reason.contains("self-check"), "{reason}");
    let (_, metrics) = app.get_text("/metrics").await;
    assert!(
        metrics.contains("audit_seal_selfcheck_total{result=\"mismatch\"}"),
        "{metrics}"
    );
    app.stop().await;

    // Without a database (ingest only): 503 that says why.
    let mut ingest = common::TestApp::start().await;
    let (status, body) = ingest.get("/seals").await;
    assert_eq!(status, 503);
    assert_eq!(common::code(&body), "AUD-006");
    ingest.stop().await;
}

#[tokio::test]
async fn a_second_sealer_skips_while_one_is_working() {
    let s = Sealed::new().await;
    s.insert(&rows("one", 3, Utc::now())).await;
    let mut holder = sqlx::PgConnection::connect(&s.db.url).await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(AdvisoryLock::Sealer.id())
        .execute(&mut holder)
        .await
        .unwrap();
    let mut conn = sqlx::PgConnection::connect(&s.db.url).await.unwrap();
    let skipped = seal_pass(&mut conn, &s.signer, None).await.unwrap();
    assert!(!skipped.locked && skipped.sealed.is_empty(), "{skipped:?}");
    let seals: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_seals")
        .fetch_one(&s.pool)
        .await
        .unwrap();
    assert_eq!(seals, 0);
    holder.close().await.unwrap();
    assert_eq!(s.seal().await.rows, 3);
}

#[tokio::test]
async fn prepare_restores_the_seal_seq_default_and_is_idempotent() {
    let s = Sealed::new().await;
    s.store.prepare().await.expect("again");
    s.sql("ALTER TABLE audit_events ALTER COLUMN seal_seq DROP DEFAULT")
        .await;
    s.insert(&[row("unnumbered", Utc::now())]).await;
    s.store.prepare().await.expect("restores");
    s.insert(&[row("numbered", Utc::now())]).await;
    let got: Vec<(String, Option<i64>)> =
        sqlx::query_as("SELECT id, seal_seq FROM audit_events ORDER BY id")
            .fetch_all(&s.pool)
            .await
            .unwrap();
    assert_eq!(got[0].0, "numbered");
    assert!(got[0].1.is_some());
    assert_eq!(got[1], ("unnumbered".to_string(), None));
    // Seal bytes are stored uncompressed (pglz would cost the sealer ~2 µs per sealed row).
    let storage: i8 = sqlx::query_scalar(
        "SELECT attstorage FROM pg_attribute
          WHERE attrelid = 'audit_seals'::regclass AND attname = 'bytes'",
    )
    .fetch_one(&s.pool)
    .await
    .unwrap();
    assert_eq!(storage, b'e' as i8);
}
