//! Tamper evidence against someone who can write the database: each tampering below once went
//! unnoticed (verify exit 0, the page "verified"); now `verify` names it and the page's full
//! check of the row (`GET /events/{id}`) says `failed`.
//!
//! - a forged retention record (with a future `dropped_at`) covering the DELETE of a sealed
//!   row;
//! - `TRUNCATE audit_seals` with an `UPDATE` of a row: found at once, and the sealer refuses
//!   to begin a new chain over the changed rows (its `/health` is DOWN);
//! - a changed integer beyond 2^53 in `details`;
//! - a back-dated row without `seal_seq` inserted after seal 1;
//! - a seal's `lo_seq`/`hi_seq` columns edited.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use audit_manager::config::Role;
use audit_manager::event::Row;
use audit_manager::integrity::encoding::{RowEncoding, StoredRow, row_hash_as};
use audit_manager::integrity::publish::SealDir;
use audit_manager::integrity::seal::{Leaf, Seal, Signer};
use audit_manager::integrity::sealer::{OffDatabase, seal_pass, seal_pass_checked};
use audit_manager::integrity::verify::{Report, VerifyOptions, verify};
use audit_manager::integrity::{IntegrityError, SealLine};
use audit_manager::store::Store;
use chrono::{DateTime, Datelike, TimeZone, Utc};
use common::{TestApp, TestDb, TestKafka, eventually, run_cli};
use ed25519_dalek::{SigningKey, VerifyingKey};
use sqlx::{Connection, PgPool};

fn signer() -> Signer {
    Signer::new(SigningKey::from_bytes(&[1; 32]))
}

fn row(id: &str, at: DateTime<Utc>) -> Row {
    Row {
        id: id.into(),
        occurred_at: at,
        source: "/registry".into(),
        r#type: "org.openg2p.registry.update".into(),
        subject: None,
        actor_type: "user".into(),
        actor_id: "u-1".into(),
        resource_type: Some("beneficiary".into()),
        resource_id: Some("b-1".into()),
        action: "update".into(),
        outcome: "failure".into(),
        reason: None,
        trace_id: None,
        auth_type: Some("api_key".into()),
        auth_id: Some("registry".into()),
        details: Some(r#"{"amount":12.5}"#.into()),
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

/// A database with the query role (and optionally the maintain role) serving it.
struct Tamper {
    db: TestDb,
    store: Store,
    pool: PgPool,
    signer: Signer,
    keys_dir: tempfile::TempDir,
    kafka: TestKafka,
    app: TestApp,
}

impl Tamper {
    async fn new() -> Tamper {
        Tamper::with(|_| {}).await
    }

    async fn with(tweak: impl FnOnce(&mut audit_manager::config::Config)) -> Tamper {
        let db = TestDb::new().await;
        let store = Store::connect_lazy(&db.url, 4).expect("store");
        store.prepare().await.expect("schema");
        let pool = db.pool().await;
        let signer = signer();
        let keys_dir = tempfile::tempdir().unwrap();
        let public = keys_dir.path().join("sealer.key.pub");
        std::fs::write(
            &public,
            format!("{}\n", hex::encode(signer.verifying_key().as_bytes())),
        )
        .unwrap();
        std::fs::write(
            keys_dir.path().join("sealer.key"),
            format!("{}\n", hex::encode([1u8; 32])),
        )
        .unwrap();
        let kafka = TestKafka::new(1);
        let url = db.url.clone();
        let app = TestApp::with_kafka(&kafka.bootstrap.clone(), move |c| {
            c.roles = vec![Role::Query, Role::Forward];
            c.database.url = url.into();
            c.query.allow_anonymous = true;
            c.integrity.public_key_files = vec![public];
            tweak(c);
        })
        .await;
        Tamper {
            db,
            store,
            pool,
            signer,
            keys_dir,
            kafka,
            app,
        }
    }

    fn keys(&self) -> BTreeMap<[u8; 8], VerifyingKey> {
        BTreeMap::from([(self.signer.key_id(), self.signer.verifying_key())])
    }

    /// Partitions for the last few days, for rows inserted by hand.
    async fn ensure_recent_months(&self) {
        use audit_manager::store::Month;
        let now = Utc::now();
        self.store
            .ensure_months([Month::of(now - chrono::Duration::days(4)), Month::of(now)])
            .await
            .expect("partitions");
    }

    async fn insert(&self, rows: &[Row]) {
        self.store.insert(rows).await.expect("insert");
    }

    async fn conn(&self) -> sqlx::PgConnection {
        sqlx::PgConnection::connect(&self.db.url)
            .await
            .expect("conn")
    }

    async fn seal(&self) {
        let r = seal_pass(&mut self.conn().await, &self.signer, None)
            .await
            .expect("seal pass");
        assert!(r.locked);
    }

    async fn verify_with(&self, opts: &VerifyOptions) -> (Report, String) {
        let mut out = Vec::new();
        let r = verify(&self.pool, &self.keys(), opts, &mut out)
            .await
            .expect("verify runs");
        (r, String::from_utf8(out).unwrap())
    }

    /// As the command line runs it: with the default seal interval.
    async fn verify(&self) -> (Report, String) {
        self.verify_with(&VerifyOptions {
            seal_interval: Some(Duration::from_secs(60)),
            ..VerifyOptions::default()
        })
        .await
    }

    async fn sql(&self, sql: &str) {
        sqlx::query(sql).execute(&self.pool).await.expect(sql);
    }

    /// The page's full check of the row `id`: `(status, detail)`.
    async fn page(&self, id: &str) -> (String, String) {
        let (status, body) = self.app.get(&format!("/events/{id}")).await;
        assert_eq!(status, 200, "{body}");
        let i = &body["response"]["events"][0]["integrity"];
        (
            i["status"].as_str().unwrap_or("").to_string(),
            i["detail"].as_str().unwrap_or("").to_string(),
        )
    }

    /// `audit-manager verify` with the page's keys: `(exit code, stdout)`.
    fn cli_verify(&self, extra: &[&str]) -> (i32, String) {
        let cfg = self.keys_dir.path().join("verify.yaml");
        std::fs::write(
            &cfg,
            format!(
                "audit_manager:\n  database:\n    url: \"{}\"\n  integrity:\n    public_key_files: [\"{}\"]\n",
                self.db.url,
                self.keys_dir.path().join("sealer.key.pub").display()
            ),
        )
        .unwrap();
        let cfg = cfg.to_string_lossy().to_string();
        let mut args = vec!["verify", "--config", &cfg];
        args.extend_from_slice(extra);
        let (code, stdout, stderr) = run_cli(&args, &[]);
        (code, format!("{stdout}{stderr}"))
    }
}

fn named(r: &Report, kind: &str, needle: &str) -> usize {
    r.findings
        .iter()
        .filter(|f| f.kind == kind && f.detail.contains(needle))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_retention_record_does_not_explain_a_deleted_row() {
    let t = Tamper::new().await;
    let now = Utc::now();
    t.insert(&rows("r", 10, now - chrono::Duration::minutes(5)))
        .await;
    t.seal().await;
    assert!(t.verify().await.0.is_clean());
    assert_eq!(t.page("r-3").await.0, "verified");
    let (partition,): (String,) =
        sqlx::query_as("SELECT tableoid::regclass::text FROM audit_events WHERE id = 'r-3'")
            .fetch_one(&t.pool)
            .await
            .unwrap();
    // A record claiming this month's partition was dropped (in the future), and a DELETE.
    t.sql(&format!(
        "INSERT INTO audit_retention_log (partition, lower_bound, upper_bound, dropped_at, rows,
             sealed_rows)
         VALUES ('{partition}', date_trunc('month', now()), date_trunc('month', now()) + interval '1 month',
                 '2100-01-01', 10, 10)"
    ))
    .await;
    t.sql("DELETE FROM audit_events WHERE id = 'r-3'").await;
    // Another forged record, dated now: its partition still holds rows sealed before it.
    t.sql(&format!(
        "INSERT INTO audit_retention_log (partition, lower_bound, upper_bound, dropped_at, rows,
             sealed_rows)
         VALUES ('{partition}', date_trunc('month', now()), date_trunc('month', now()) + interval '1 month',
                 now(), 10, 10)"
    ))
    .await;
    // The next seal signs neither.
    t.insert(&[row("after", now)]).await;
    t.seal().await;
    let unsigned: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_retention_log WHERE sealed_in IS NULL")
            .fetch_one(&t.pool)
            .await
            .unwrap();
    assert_eq!(unsigned, 2, "the sealer signed a forged retention record");
    let carried: i64 = sqlx::query_scalar("SELECT sum(retention_records) FROM audit_seals")
        .fetch_one(&t.pool)
        .await
        .unwrap();
    assert_eq!(carried, 0);

    let (r, out) = t.verify().await;
    assert_eq!(named(&r, "row-missing", "id=r-3 "), 1, "{out}");
    assert_eq!(named(&r, "retention-unsigned", &partition), 1, "{out}");
    let (code, out) = t.cli_verify(&[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("row-missing: id=r-3 "), "{out}");
    // The deleted row is gone from the page (404); its neighbours still verify.
    let (status, _) = t.app.get("/events/r-3").await;
    assert_eq!(status, 404);
    assert_eq!(t.page("r-4").await.0, "verified");
}

/// A retention record signed by a seal is still not believed when its partition holds rows
/// it claims were dropped, or when its drop postdates the seal; `retention-early` is judged
/// at the signing seal's time, not the record's own `dropped_at`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_retention_record_is_checked_against_the_rows_and_its_seal() {
    let t = Tamper::new().await;
    let old = Utc.with_ymd_and_hms(2019, 1, 15, 0, 0, 0).unwrap();
    t.insert(&rows("old", 5, old)).await;
    t.insert(&rows("new", 5, Utc::now() - chrono::Duration::minutes(5)))
        .await;
    t.seal().await;
    // A genuine drop, recorded and signed; then the record is back-dated to look expired
    // under a longer retention: its seal's time decides.
    t.store
        .maintain(Utc::now(), 1, 12, false, true)
        .await
        .expect("maintain")
        .expect("lock");
    t.seal().await;
    let (r, out) = t
        .verify_with(&VerifyOptions {
            retention_months: Some(12),
            ..VerifyOptions::default()
        })
        .await;
    assert!(r.is_clean(), "{out}");
    assert_eq!(r.retained_rows, 5);
    let (r, out) = t
        .verify_with(&VerifyOptions {
            retention_months: Some(120),
            ..VerifyOptions::default()
        })
        .await;
    assert_eq!(
        named(&r, "retention-early", "audit_events_2019_01"),
        1,
        "{out}"
    );

    // A record signed with the sealer's own key (stolen, or the sealer fooled) claiming this
    // month was dropped, while its rows are still stored, and one of them deleted.
    let (bytes,): (Vec<u8>,) =
        sqlx::query_as("SELECT bytes FROM audit_seals ORDER BY seal_no DESC LIMIT 1")
            .fetch_one(&t.pool)
            .await
            .unwrap();
    let mut seal = Seal::from_bytes(&bytes).unwrap();
    let month_start = Utc::now()
        .date_naive()
        .with_day(1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    seal.retention[0].lower_us = month_start.timestamp_micros();
    seal.retention[0].upper_us = (month_start + chrono::Duration::days(40)).timestamp_micros();
    seal.retention[0].dropped_at_us = seal.watermark_at_us + 60_000_000;
    let forged = t.signer.sign(&seal);
    sqlx::query("UPDATE audit_seals SET bytes = $1, hash = $2, signature = $3 WHERE seal_no = $4")
        .bind(&forged.bytes)
        .bind(&forged.hash[..])
        .bind(&forged.signature[..])
        .bind(seal.seal_no as i64)
        .execute(&t.pool)
        .await
        .unwrap();
    t.sql("DELETE FROM audit_events WHERE id = 'new-2'").await;
    let (r, out) = t.verify().await;
    assert_eq!(named(&r, "retention-invalid", "postdates"), 1, "{out}");
    assert_eq!(named(&r, "row-missing", "id=new-2 "), 1, "{out}");
    // Dated within its seal: the rows still stored contradict it.
    seal.retention[0].dropped_at_us = seal.watermark_at_us;
    let forged = t.signer.sign(&seal);
    sqlx::query("UPDATE audit_seals SET bytes = $1, hash = $2, signature = $3 WHERE seal_no = $4")
        .bind(&forged.bytes)
        .bind(&forged.hash[..])
        .bind(&forged.signature[..])
        .bind(seal.seal_no as i64)
        .execute(&t.pool)
        .await
        .unwrap();
    let (r, out) = t.verify().await;
    assert_eq!(named(&r, "retention-invalid", "still stored"), 1, "{out}");
    assert_eq!(named(&r, "row-missing", "id=new-2 "), 1, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncating_the_seals_is_found_at_once_and_the_sealer_refuses_a_new_chain() {
    let t = Tamper::new().await;
    let seal_dir = t.keys_dir.path().join("seals");
    t.insert(&rows("t", 12, Utc::now() - chrono::Duration::hours(2)))
        .await;
    // Stored an hour ago (the sink's ingested_at), sealed since.
    t.sql("UPDATE audit_events SET ingested_at = now() - interval '1 hour'")
        .await;
    let mut off = OffDatabase::new(Some(seal_dir.clone()), None);
    seal_pass_checked(&mut t.conn().await, &t.signer, None, Some(&mut off), None)
        .await
        .expect("seal");
    let dir_opts = || VerifyOptions {
        dir: Some(SealDir::new(&seal_dir).read_all().unwrap()),
        seal_interval: Some(Duration::from_secs(60)),
        ..VerifyOptions::default()
    };
    let (r, out) = t.verify_with(&dir_opts()).await;
    assert!(r.is_clean(), "{out}");
    assert_eq!(t.page("t-5").await.0, "verified");

    let mut tx = t.conn().await;
    let mut tx = tx.begin().await.unwrap();
    sqlx::query("TRUNCATE audit_seals")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_events SET outcome = 'success' WHERE id = 't-5'")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    // At once: every row older than 3 seal intervals is unsealed, and the copy is longer.
    let (r, out) = t.verify().await;
    assert_eq!(named(&r, "row-unsealed", "id=t-5 "), 1, "{out}");
    assert_eq!(r.findings.len(), 12, "{out}");
    let (r, out) = t.verify_with(&dir_opts()).await;
    assert_eq!(named(&r, "seal-truncated", "seal 1:"), 1, "{out}");
    let dir_arg = seal_dir.to_string_lossy().to_string();
    let (code, out) = t.cli_verify(&["--seals-from-dir", &dir_arg]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("seal-truncated: seal 1:"), "{out}");
    assert!(out.contains("row-unsealed: id=t-5 "), "{out}");
    let (status, detail) = t.page("t-5").await;
    assert_eq!(status, "failed", "{detail}");

    // The sealer refuses to begin a new chain: the one that sealed (it remembers), and one
    // started afresh (it reads the directory).
    for mut o in [off, OffDatabase::new(Some(seal_dir.clone()), None)] {
        let refused =
            seal_pass_checked(&mut t.conn().await, &t.signer, None, Some(&mut o), None).await;
        match refused {
            Err(IntegrityError::TipMismatch(m)) => {
                assert!(m.contains("audit_seals lacks seal 1"), "{m}")
            }
            other => panic!("sealed over a truncated audit_seals: {other:?}"),
        }
    }
    let seals: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_seals")
        .fetch_one(&t.pool)
        .await
        .unwrap();
    assert_eq!(seals, 0);
}

/// The maintain role, with `integrity.seal_dir` and no seal topic: after `TRUNCATE
/// audit_seals` it stops sealing, is DOWN saying why, and two seal intervals later nothing was
/// sealed again while verify and the page report the changed row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_maintain_role_goes_down_instead_of_sealing_over_truncated_seals() {
    let dirs = tempfile::tempdir().unwrap();
    let seal_dir = dirs.path().join("seals");
    let key = dirs.path().join("k");
    audit_manager::integrity::seal::keygen(&key).unwrap();
    let interval = Duration::from_millis(200);
    let (sd, k2) = (seal_dir.clone(), key.clone());
    assert!(key.with_extension("pub").exists());
    let t = Tamper::with(move |c| {
        c.roles = vec![Role::Query, Role::Forward, Role::Maintain];
        c.integrity.public_key_files = vec![k2.with_extension("pub")];
        c.integrity.signing_key_file = Some(k2);
        c.integrity.seal_interval = interval;
        c.integrity.seal_dir = Some(sd);
        c.integrity.seal_topic = String::new();
    })
    .await;
    let signing = audit_manager::integrity::seal::load_signing_key(&key).unwrap();
    let keys = BTreeMap::from([(
        audit_manager::integrity::seal::key_id(&signing.verifying_key()),
        signing.verifying_key(),
    )]);
    let verify_opts = || VerifyOptions {
        seal_interval: Some(interval),
        ..VerifyOptions::default()
    };
    let run_verify = |opts: VerifyOptions| {
        let (pool, keys) = (t.pool.clone(), keys.clone());
        async move {
            let mut out = Vec::new();
            let r = verify(&pool, &keys, &opts, &mut out).await.expect("verify");
            (r, String::from_utf8(out).unwrap())
        }
    };
    t.insert(&rows("m", 6, Utc::now())).await;
    eventually(
        Duration::from_secs(30),
        "the rows sealed and copied",
        || async {
            let files = SealDir::new(&seal_dir).read_all().ok()?;
            let sealed: usize = files
                .values()
                .map(|c| {
                    Seal::from_bytes(&c[0].decoded().unwrap())
                        .unwrap()
                        .leaves
                        .len()
                })
                .sum();
            (sealed == 6).then_some(())
        },
    )
    .await;
    let (r, out) = run_verify(verify_opts()).await;
    assert!(r.is_clean(), "{out}");
    let maintain = t.app.role_health("maintain").await;
    assert_eq!(maintain["status"], "UP", "{maintain}");

    sqlx::raw_sql(
        "BEGIN; TRUNCATE audit_seals;
         UPDATE audit_events SET outcome = 'success' WHERE id = 'm-2'; COMMIT",
    )
    .execute(&t.pool)
    .await
    .unwrap();
    let reason = eventually(Duration::from_secs(30), "maintain DOWN", || async {
        let m = t.app.role_health("maintain").await;
        (m["status"] == "DOWN").then(|| m["reason"].as_str().unwrap_or("").to_string())
    })
    .await;
    assert!(reason.contains("audit_seals lacks seal"), "{reason}");
    assert!(reason.contains("verify --seals-from-dir"), "{reason}");
    let (_, metrics) = t.app.get_text("/metrics").await;
    assert!(metrics.contains("audit_seal_tip_mismatch 1"), "{metrics}");
    // Two more passes (each counts its self-check): still nothing sealed.
    let passes = || async {
        let (_, m) = t.app.get_text("/metrics").await;
        m.lines()
            .filter(|l| l.starts_with("audit_seal_selfcheck_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let before = passes().await;
    eventually(Duration::from_secs(30), "two more seal passes", || async {
        (passes().await >= before + 2.0).then_some(())
    })
    .await;
    let seals: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_seals")
        .fetch_one(&t.pool)
        .await
        .unwrap();
    assert_eq!(seals, 0, "the sealer began a new chain over changed rows");
    assert_eq!(t.app.role_health("maintain").await["status"], "DOWN");
    // Verify and the page: the rows are overdue now (older than 3 x 200 ms).
    let (r, out) = eventually(Duration::from_secs(30), "rows overdue", || async {
        let (r, out) = run_verify(verify_opts()).await;
        (named(&r, "row-unsealed", "id=m-2 ") == 1).then_some((r, out))
    })
    .await;
    assert!(!r.is_clean(), "{out}");
    let (r, out) = run_verify(VerifyOptions {
        dir: Some(SealDir::new(&seal_dir).read_all().unwrap()),
        ..verify_opts()
    })
    .await;
    assert!(named(&r, "seal-truncated", "seal 1:") == 1, "{out}");
    let (status, detail) = t.page("m-2").await;
    assert_eq!(status, "failed", "{detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_integer_beyond_2_pow_53_is_found() {
    let t = Tamper::new().await;
    let mut big = row("big", Utc::now() - chrono::Duration::minutes(1));
    big.details = Some(r#"{"account": 9007199254740993, "small": 1}"#.into());
    t.insert(&[big]).await;
    t.seal().await;
    assert!(t.verify().await.0.is_clean());
    assert_eq!(t.page("big").await.0, "verified");
    t.sql(r#"UPDATE audit_events SET details = '{"account": 9007199254740992, "small": 1}' WHERE id = 'big'"#)
        .await;
    let (r, out) = t.verify().await;
    assert_eq!(named(&r, "row-changed", "id=big "), 1, "{out}");
    assert_eq!(r.findings.len(), 1, "{out}");
    let (status, detail) = t.page("big").await;
    assert_eq!(status, "failed", "{detail}");
}

/// Seals of format 1 (row encoding 1, made by earlier releases) still verify; the first
/// format-2 seal after them records the legacy boundary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn format_1_seals_still_verify_and_the_next_seal_records_the_legacy_boundary() {
    let t = Tamper::new().await;
    t.ensure_recent_months().await;
    t.sql(
        "INSERT INTO audit_events (id, occurred_at, ingested_at, source, type, actor_type,
             actor_id, action, outcome, seal_seq)
         VALUES ('legacy-1', now() - interval '2 days', now() - interval '2 days', '/s', 't',
                 'user', 'u', 'a', 'success', NULL)",
    )
    .await;
    let mut first = rows("v1", 3, Utc::now() - chrono::Duration::minutes(2));
    first[0].details = Some(r#"{"n": 9007199254740993}"#.into());
    t.insert(&first).await;
    // Seal 1 as an earlier release made it: format 1, row encoding 1.
    let stored: Vec<StoredRow> = sqlx::query_as(&format!(
        "SELECT {} FROM audit_events WHERE seal_seq IS NOT NULL ORDER BY seal_seq",
        audit_manager::store::columns::select_list()
    ))
    .fetch_all(&t.pool)
    .await
    .unwrap();
    let (wm, hi) = audit_manager::integrity::sealer::watermark(&mut t.conn().await)
        .await
        .map(|(s, w)| (w, s))
        .unwrap();
    let seal = Seal {
        seal_no: 1,
        key_id: t.signer.key_id(),
        created_at_us: wm,
        watermark_at_us: wm,
        lo: 0,
        hi,
        prev_hash: [0; 32],
        leaves: stored
            .iter()
            .map(|r| Leaf {
                seal_seq: r.seal_seq.unwrap(),
                occurred_at_us: r.occurred_at.timestamp_micros(),
                id: r.id.clone(),
                row_hash: row_hash_as(RowEncoding::V1, r).unwrap(),
            })
            .collect(),
        retention: Vec::new(),
        row_encoding: RowEncoding::V1,
        legacy: None,
    };
    let signed = t.signer.sign(&seal);
    assert_eq!(signed.bytes[..22], *b"audit-manager/seal/v1\n");
    sqlx::query(
        "INSERT INTO audit_seals (seal_no, bytes, hash, signature, key_id, created_at, lo_seq,
             hi_seq, leaves, retention_records)
         VALUES (1, $1, $2, $3, $4, now(), 0, $5, $6, 0)",
    )
    .bind(&signed.bytes)
    .bind(&signed.hash[..])
    .bind(&signed.signature[..])
    .bind(hex::encode(signed.key_id))
    .bind(hi)
    .bind(seal.leaves.len() as i32)
    .execute(&t.pool)
    .await
    .unwrap();
    t.insert(&rows("v2", 2, Utc::now() - chrono::Duration::minutes(1)))
        .await;
    t.seal().await;
    let (bytes,): (Vec<u8>,) = sqlx::query_as("SELECT bytes FROM audit_seals WHERE seal_no = 2")
        .fetch_one(&t.pool)
        .await
        .unwrap();
    let second = Seal::from_bytes(&bytes).unwrap();
    assert_eq!(second.row_encoding, RowEncoding::V2);
    assert_eq!(second.legacy.map(|l| l.rows), Some(1));
    let (r, out) = t.verify().await;
    assert!(r.is_clean(), "{out}");
    assert_eq!((r.rows_ok, r.legacy_rows), (5, 1));
    assert_eq!(t.page("v1-1").await.0, "verified");
    assert_eq!(t.page("v2-1").await.0, "verified");
    assert_eq!(t.page("legacy-1").await.0, "legacy");
    // Row encoding 1 stays as exact as it was: other columns of a format-1 row are covered.
    t.sql("UPDATE audit_events SET actor_id = 'x' WHERE id = 'v1-1'")
        .await;
    let (r, out) = t.verify().await;
    assert_eq!(named(&r, "row-changed", "id=v1-1 "), 1, "{out}");
    assert_eq!(t.page("v1-1").await.0, "failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_back_dated_legacy_row_inserted_after_seal_1_is_found() {
    let t = Tamper::new().await;
    t.ensure_recent_months().await;
    // Two rows stored before sealing (no seal_seq), a day ago.
    for id in ["legacy-1", "legacy-2"] {
        t.sql(&format!(
            "INSERT INTO audit_events (id, occurred_at, ingested_at, source, type, actor_type,
                 actor_id, action, outcome, seal_seq)
             VALUES ('{id}', now() - interval '1 day', now() - interval '1 day', '/s', 't',
                     'user', 'u', 'a', 'success', NULL)"
        ))
        .await;
    }
    t.insert(&rows("s", 3, Utc::now() - chrono::Duration::minutes(1)))
        .await;
    t.seal().await;
    let (r, out) = t.verify().await;
    assert!(r.is_clean(), "{out}");
    assert_eq!(r.legacy_rows, 2);
    assert_eq!(t.page("legacy-1").await.0, "legacy");
    // A forged row, back-dated to look like it was stored before sealing began.
    t.sql(
        "INSERT INTO audit_events (id, occurred_at, ingested_at, source, type, actor_type,
             actor_id, action, outcome, seal_seq)
         VALUES ('forged', now() - interval '3 days', now() - interval '3 days', '/s', 't',
                 'user', 'u', 'a', 'approved', NULL)",
    )
    .await;
    let (r, out) = t.verify().await;
    assert_eq!(
        named(&r, "legacy-count", "3 rows without seal_seq"),
        1,
        "{out}"
    );
    assert_eq!(r.findings.len(), 1, "{out}");
    let (code, out) = t.cli_verify(&[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("legacy-count:"), "{out}");
    let (status, detail) = t.page("forged").await;
    assert_eq!(status, "failed", "{detail}");
    // Deleting a legacy row is found too (the boundary counted it).
    t.sql("DELETE FROM audit_events WHERE id IN ('forged', 'legacy-2')")
        .await;
    let (r, out) = t.verify().await;
    assert_eq!(named(&r, "legacy-count", "deleted"), 1, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_a_seals_range_columns_cannot_hide_a_changed_row() {
    let t = Tamper::new().await;
    let at = Utc::now() - chrono::Duration::minutes(3);
    t.insert(&rows("a", 5, at)).await;
    t.seal().await;
    t.insert(&rows("b", 5, at)).await;
    t.seal().await;
    assert!(t.verify().await.0.is_clean());
    assert_eq!(t.page("a-2").await.0, "verified");
    assert_eq!(t.page("b-2").await.0, "verified");
    t.sql("UPDATE audit_events SET outcome = 'success' WHERE id = 'a-2'")
        .await;
    assert_eq!(t.page("a-2").await.0, "failed");
    // The columns now claim seal 1 covers nothing near a-2.
    t.sql(
        "UPDATE audit_seals SET lo_seq = hi_seq + 1000, hi_seq = hi_seq + 2000 WHERE seal_no = 1",
    )
    .await;
    let (status, detail) = t.page("a-2").await;
    assert_eq!(status, "failed", "{detail}");
    assert!(
        detail.contains("differs from what seal 1 sealed"),
        "{detail}"
    );
    // An unchanged row of that seal fails too: its seal's row was edited.
    let (status, detail) = t.page("a-3").await;
    assert_eq!(status, "failed", "{detail}");
    assert!(detail.contains("lo_seq/hi_seq"), "{detail}");
    assert_eq!(t.page("b-2").await.0, "verified");
    let (r, out) = t.verify().await;
    assert_eq!(named(&r, "seal-changed", "seal 1: its columns"), 1, "{out}");
    assert_eq!(named(&r, "row-changed", "id=a-2 "), 1, "{out}");
    // The page's list status reads the newest seal's signed range, not its hi_seq column.
    t.sql("UPDATE audit_seals SET hi_seq = 0 WHERE seal_no = 2")
        .await;
    let (_, body) = t.app.get("/events?limit=20").await;
    let events = body["response"]["events"].as_array().unwrap();
    assert_eq!(events.len(), 10);
    assert!(
        events.iter().all(|e| e["integrity"]["status"] == "sealed"),
        "{body}"
    );
}

/// The page finds a row's seal by the seals' signed ranges even with seals deleted between
/// others; a row whose seal was deleted fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_finds_seals_by_their_bytes_across_deleted_seals() {
    let t = Tamper::new().await;
    let at = Utc::now() - chrono::Duration::minutes(1);
    for batch in ["s1", "s2", "s3", "s4", "s5"] {
        t.insert(&rows(batch, 2, at)).await;
        t.seal().await;
    }
    for id in ["s1-0", "s3-1", "s5-1"] {
        assert_eq!(t.page(id).await.0, "verified", "{id}");
    }
    t.sql("DELETE FROM audit_seals WHERE seal_no IN (2, 3)")
        .await;
    let (status, detail) = t.page("s3-1").await;
    assert_eq!(status, "failed", "{detail}");
    assert!(detail.contains("no seal covers it"), "{detail}");
    for id in ["s1-1", "s4-0", "s5-1"] {
        assert_eq!(t.page(id).await.0, "verified", "{id}");
    }
    let (r, out) = t.verify().await;
    assert_eq!(named(&r, "seal-missing", "seals 2..=3"), 1, "{out}");
}

/// The files `integrity.seal_dir` holds are the seals as published elsewhere, so a changed
/// seal is found against them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seal_changed_in_the_database_differs_from_its_file() {
    let t = Tamper::new().await;
    let seal_dir = t.keys_dir.path().join("seals");
    let mut off = OffDatabase::new(Some(seal_dir.clone()), None);
    t.insert(&rows("f", 3, Utc::now())).await;
    seal_pass_checked(&mut t.conn().await, &t.signer, None, Some(&mut off), None)
        .await
        .unwrap();
    let files = SealDir::new(&seal_dir).read_all().unwrap();
    let (bytes, sig): (Vec<u8>, Vec<u8>) =
        sqlx::query_as("SELECT bytes, signature FROM audit_seals WHERE seal_no = 1")
            .fetch_one(&t.pool)
            .await
            .unwrap();
    let key = hex::encode(t.signer.key_id());
    assert_eq!(files[&1], vec![SealLine::new(1, &bytes, &sig, &key)]);
    // Replaced by a seal over changed rows, signed with the same key (a stolen key, or an
    // old seal replayed): the file still holds the original.
    t.sql("UPDATE audit_events SET outcome = 'success' WHERE id = 'f-1'")
        .await;
    t.sql("TRUNCATE audit_seals").await;
    t.seal().await;
    let (r, out) = t
        .verify_with(&VerifyOptions {
            dir: Some(files),
            ..VerifyOptions::default()
        })
        .await;
    assert_eq!(
        named(&r, "seal-changed", "seal 1: differs from its copy"),
        1,
        "{out}"
    );
    // And the sealer that knows the directory refuses to go on from the replaced seal.
    let refused =
        seal_pass_checked(&mut t.conn().await, &t.signer, None, Some(&mut off), None).await;
    assert!(
        matches!(&refused, Err(IntegrityError::TipMismatch(m)) if m.contains("is not the seal 1")),
        "{refused:?}"
    );
}

/// With only the seal topic as the off-database copy: a sealer started afresh over a truncated
/// `audit_seals` learns the newest seal from the end of the topic and refuses; while the topic
/// cannot be read it does not begin a chain over an empty `audit_seals`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sealer_learns_the_newest_seal_from_the_seal_topic() {
    use audit_manager::integrity::publish::Publisher;
    let t = Tamper::new().await;
    let topic = "openg2p.audit.seals";
    t.kafka.cluster.create_topic(topic, 1, 1).unwrap();
    let kc = audit_manager::config::KafkaConfig {
        bootstrap_servers: t.kafka.bootstrap.clone(),
        ..Default::default()
    };
    let publisher = Publisher::new(&kc, topic).unwrap();
    let mut off = OffDatabase::new(None, Some((kc.clone(), topic.to_string())));
    for batch in ["p", "q"] {
        t.insert(&rows(batch, 3, Utc::now())).await;
        let r = seal_pass_checked(
            &mut t.conn().await,
            &t.signer,
            Some(&publisher),
            Some(&mut off),
            None,
        )
        .await
        .expect("seal");
        assert!(r.published >= 1, "{r:?}");
    }
    t.sql("TRUNCATE audit_seals").await;
    t.sql("UPDATE audit_events SET outcome = 'success' WHERE id = 'p-1'")
        .await;
    let mut fresh = OffDatabase::new(None, Some((kc.clone(), topic.to_string())));
    let refused = seal_pass_checked(
        &mut t.conn().await,
        &t.signer,
        Some(&publisher),
        Some(&mut fresh),
        None,
    )
    .await;
    assert!(
        matches!(&refused, Err(IntegrityError::TipMismatch(m))
            if m.contains("audit_seals lacks seal 2") && m.contains("integrity.seal_topic")),
        "{refused:?}"
    );
    // Kafka unreachable at start, nothing in audit_seals: no chain is begun.
    let nowhere = audit_manager::config::KafkaConfig {
        bootstrap_servers: "127.0.0.1:9".to_string(),
        ..Default::default()
    };
    let mut blind = OffDatabase::new(None, Some((nowhere, topic.to_string())));
    let refused =
        seal_pass_checked(&mut t.conn().await, &t.signer, None, Some(&mut blind), None).await;
    assert!(
        matches!(&refused, Err(IntegrityError::Publish(m)) if m.contains("not beginning a chain")),
        "{refused:?}"
    );
    let seals: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_seals")
        .fetch_one(&t.pool)
        .await
        .unwrap();
    assert_eq!(seals, 0);
}

// ---------------------------------------------------------------------------------------------
// The format-2 worked example of docs/integrity.md
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

/// The documented format-2 seal: the format-1 example's seal with row encoding 2 and a legacy
/// boundary (2 rows, the newest stored a day before the example row), and the documented
/// canonical forms of a `details` value in both row encodings.
#[test]
fn the_documented_format_2_example_holds() {
    use audit_manager::integrity::jcs::{canonicalize, canonicalize_exact};
    use audit_manager::integrity::seal::{LegacyBoundary, RetentionRecord};
    let doc = include_str!("../docs/integrity.md");
    let details = doc_block(doc, "details").trim();
    let (v1, v2) = (
        canonicalize(details).unwrap(),
        canonicalize_exact(details).unwrap(),
    );
    let seed: [u8; 32] = hex_block(doc, "signing-key").try_into().unwrap();
    let signer = Signer::new(SigningKey::from_bytes(&seed));
    let ingested = Utc
        .with_ymd_and_hms(2026, 1, 15, 9, 30, 1)
        .unwrap()
        .timestamp_micros()
        + 500_000;
    let seal = Seal {
        seal_no: 1,
        key_id: signer.key_id(),
        created_at_us: ingested + 60_000_000,
        watermark_at_us: ingested + 59_000_000,
        lo: 0,
        hi: 7,
        prev_hash: [0; 32],
        leaves: vec![Leaf {
            seal_seq: 7,
            occurred_at_us: Utc
                .with_ymd_and_hms(2026, 1, 15, 9, 30, 0)
                .unwrap()
                .timestamp_micros()
                + 123_456,
            id: "evt-0001".into(),
            row_hash: hex_block(doc, "row-hash").try_into().unwrap(),
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
            dropped_at_us: ingested + 30_000_000,
            rows: 2,
            sealed_rows: 0,
        }],
        row_encoding: RowEncoding::V2,
        legacy: Some(LegacyBoundary {
            rows: 2,
            newest_ingested_at_us: ingested - 86_400_000_000,
        }),
    };
    let signed = signer.sign(&seal);
    let shown = format!(
        "v1 {v1}\nv2 {v2}\nbytes {}\nhash {}\nsig {}",
        hex::encode(&signed.bytes),
        hex::encode(signed.hash),
        hex::encode(signed.signature)
    );
    assert_eq!(v1, doc_block(doc, "details-v1").trim(), "{shown}");
    assert_eq!(v2, doc_block(doc, "details-v2").trim(), "{shown}");
    assert_eq!(signed.bytes, hex_block(doc, "seal-bytes-v2"), "{shown}");
    assert_eq!(Seal::from_bytes(&signed.bytes).unwrap(), seal);
    assert_eq!(
        signed.hash.to_vec(),
        hex_block(doc, "seal-hash-v2"),
        "{shown}"
    );
    assert_eq!(
        signed.signature.to_vec(),
        hex_block(doc, "signature-v2"),
        "{shown}"
    );
}
