//! Writer attestation: a row inserted or changed by someone with database access (who does not
//! hold the sink's writer key) is reported by `verify` as `row-unattested` before and after
//! sealing, and the sealer does not seal it; rows stored before attestation began are legacy;
//! every insert path attests what it stores; a sealing process without a writer key warns.

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use audit_manager::event::Row;
use audit_manager::integrity::attest::{Attestor, SealCheck, WriterKeys};
use audit_manager::integrity::seal::{Seal, Signer};
use audit_manager::integrity::sealer::{PassReport, seal_pass, seal_pass_checked};
use audit_manager::integrity::verify::{Report, VerifyOptions, verify};
use audit_manager::store::{InsertMethod, Store};
use chrono::{DateTime, TimeZone, Utc};
use common::{TestDb, eventually, run_cli};
use ed25519_dalek::SigningKey;
use sqlx::{Connection, PgPool};

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
        reason: Some("denied".into()),
        trace_id: None,
        auth_type: Some("api_key".into()),
        auth_id: Some("registry".into()),
        details: Some(r#"{"amount": 12.50, "changes": [{"field": "phone"}]}"#.into()),
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

fn writer_key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

/// A database with a store attesting with the writer key, a sealer key, and files for the
/// command line.
struct Attested {
    db: TestDb,
    /// Stores the way the sink does, with the writer key.
    store: Store,
    /// Stores without a writer key (a sink from before attestation).
    plain: Store,
    pool: PgPool,
    signer: Signer,
    dir: tempfile::TempDir,
}

impl Attested {
    async fn new() -> Attested {
        let db = TestDb::new().await;
        let plain = Store::connect_lazy(&db.url, 8).expect("store");
        plain.prepare().await.expect("schema");
        let store = plain.clone().with_attestor(Attestor::new(writer_key()));
        let pool = db.pool().await;
        Attested {
            db,
            store,
            plain,
            pool,
            signer: Signer::new(SigningKey::from_bytes(&[1; 32])),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn writer_keys() -> WriterKeys {
        WriterKeys::new([writer_key().verifying_key()])
    }

    /// A seal pass that checks attestation.
    async fn seal(&self, check: &mut SealCheck) -> PassReport {
        let mut conn = sqlx::PgConnection::connect(&self.db.url).await.unwrap();
        seal_pass_checked(&mut conn, &self.signer, None, None, Some(check))
            .await
            .expect("seal pass")
    }

    async fn verify(&self) -> (Report, String) {
        let keys = BTreeMap::from([(self.signer.key_id(), self.signer.verifying_key())]);
        let opts = VerifyOptions {
            writer_keys: Attested::writer_keys(),
            ..VerifyOptions::default()
        };
        let mut out = Vec::new();
        let r = verify(&self.pool, &keys, &opts, &mut out)
            .await
            .expect("verify runs");
        (r, String::from_utf8(out).unwrap())
    }

    /// `audit-manager verify` with a configuration listing both public keys.
    fn verify_cli(&self) -> (i32, String, String) {
        let (sealer_pub, writer_pub) = (
            self.dir.path().join("sealer.pub"),
            self.dir.path().join("writer.pub"),
        );
        std::fs::write(
            &sealer_pub,
            hex::encode(self.signer.verifying_key().as_bytes()),
        )
        .unwrap();
        std::fs::write(
            &writer_pub,
            hex::encode(writer_key().verifying_key().as_bytes()),
        )
        .unwrap();
        let cfg = self.dir.path().join("c.yaml");
        std::fs::write(
            &cfg,
            format!(
                "audit_manager:\n  database:\n    url: \"{}\"\n  integrity:\n    \
                 public_key_files: [\"{}\"]\n    writer_public_key_files: [\"{}\"]\n",
                self.db.url,
                sealer_pub.display(),
                writer_pub.display()
            ),
        )
        .unwrap();
        run_cli(&["verify", "--config", &cfg.to_string_lossy()], &[])
    }

    async fn sql(&self, sql: &str) {
        sqlx::query(sql).execute(&self.pool).await.expect(sql);
    }

    /// The ids every seal names.
    async fn sealed_ids(&self) -> Vec<String> {
        let seals: Vec<(Vec<u8>,)> = sqlx::query_as("SELECT bytes FROM audit_seals")
            .fetch_all(&self.pool)
            .await
            .unwrap();
        seals
            .iter()
            .flat_map(|(b,)| Seal::from_bytes(b).unwrap().leaves)
            .map(|l| l.id)
            .collect()
    }
}

fn named(r: &Report, kind: &str, needle: &str) -> usize {
    r.findings
        .iter()
        .filter(|f| f.kind == kind && f.detail.contains(needle))
        .count()
}

const FORGED: &str = "INSERT INTO audit_events (id, occurred_at, source, type, actor_type, \
     actor_id, action, outcome) VALUES ('forged', '2026-03-01T10:00:30Z', '/registry', \
     'org.openg2p.registry.update', 'user', 'u-1', 'update', 'success')";

#[tokio::test]
async fn a_forged_insert_is_unattested_before_and_after_sealing_and_never_sealed() {
    let s = Attested::new().await;
    let t = Utc.with_ymd_and_hms(2026, 3, 1, 10, 0, 0).unwrap();
    let mut check = SealCheck::new(Attested::writer_keys());
    s.store.insert(&rows("a", 20, t)).await.unwrap();
    assert_eq!(s.seal(&mut check).await.rows, 20);
    let (r, out) = s.verify().await;
    assert!(r.is_clean(), "{out}");
    assert_eq!((r.attested_rows, r.unattested_legacy_rows), (20, 0));

    // Someone with database access inserts a row with the default seal_seq.
    s.sql(FORGED).await;
    let (code, stdout, stderr) = s.verify_cli();
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stdout.contains("row-unattested: id=forged "), "{stdout}");
    assert_eq!(stdout.matches("row-unattested").count(), 1, "{stdout}");
    assert!(stderr.contains("20 row(s) attested"), "{stderr}");

    // The next pass does not seal it, also once rows stored after it are sealed.
    s.store.insert(&rows("b", 5, t)).await.unwrap();
    let report = s.seal(&mut check).await;
    assert_eq!(report.rows, 5, "{report:?}");
    assert_eq!(check.refused(), 1);
    assert!(!s.sealed_ids().await.contains(&"forged".to_string()));
    let (r, out) = s.verify().await;
    assert_eq!(named(&r, "row-unattested", "id=forged "), 1, "{out}");
    assert_eq!(named(&r, "row-unsealed", "id=forged "), 1, "{out}");
    assert_eq!(r.findings.len(), 2, "{out}");
    let (code, stdout, _) = s.verify_cli();
    assert_eq!(code, 1);
    assert!(stdout.contains("row-unattested: id=forged "), "{stdout}");
    // Passes after that neither seal it nor report it again.
    s.store.insert(&rows("c", 3, t)).await.unwrap();
    assert_eq!(s.seal(&mut check).await.rows, 3);
    assert_eq!(check.refused(), 1);

    // Without the check (the sealer before attestation) the same row would have been sealed.
    let s2 = Attested::new().await;
    s2.store.insert(&rows("a", 2, t)).await.unwrap();
    s2.sql(FORGED).await;
    let mut conn = sqlx::PgConnection::connect(&s2.db.url).await.unwrap();
    assert_eq!(
        seal_pass(&mut conn, &s2.signer, None).await.unwrap().rows,
        3
    );
    let (r, out) = s2.verify().await;
    assert_eq!(named(&r, "row-unattested", "id=forged "), 1, "{out}");
}

#[tokio::test]
async fn an_attested_row_changed_before_sealing_is_unattested_and_not_sealed() {
    let s = Attested::new().await;
    let t = Utc.with_ymd_and_hms(2026, 3, 1, 10, 0, 0).unwrap();
    let mut check = SealCheck::new(Attested::writer_keys());
    s.store.insert(&rows("a", 10, t)).await.unwrap();
    // Changed between storing and the seal pass: content, details, ingested_at.
    s.sql("UPDATE audit_events SET outcome = 'success', reason = NULL WHERE id = 'a-3'")
        .await;
    s.sql("UPDATE audit_events SET details = jsonb_set(details, '{amount}', '1') WHERE id = 'a-4'")
        .await;
    s.sql("UPDATE audit_events SET ingested_at = ingested_at - interval '1 day' WHERE id = 'a-5'")
        .await;
    let (r, out) = s.verify().await;
    for id in ["a-3", "a-4", "a-5"] {
        assert_eq!(
            named(&r, "row-unattested", &format!("id={id} ")),
            1,
            "{out}"
        );
    }
    assert_eq!(r.findings.len(), 3, "{out}");
    assert_eq!(r.attested_rows, 7);
    let report = s.seal(&mut check).await;
    assert_eq!(report.rows, 7);
    let sealed = s.sealed_ids().await;
    for id in ["a-3", "a-4", "a-5"] {
        assert!(!sealed.contains(&id.to_string()), "{id} sealed");
    }
    // After the seal: still unattested, and unsealed inside the seal's range.
    let (r, out) = s.verify().await;
    for id in ["a-3", "a-4", "a-5"] {
        assert_eq!(
            named(&r, "row-unattested", &format!("id={id} ")),
            1,
            "{out}"
        );
        assert_eq!(named(&r, "row-unsealed", &format!("id={id} ")), 1, "{out}");
    }
    assert_eq!(r.findings.len(), 6, "{out}");
}

#[tokio::test]
async fn rows_stored_before_attestation_began_are_legacy() {
    let s = Attested::new().await;
    let t = Utc.with_ymd_and_hms(2026, 3, 1, 10, 0, 0).unwrap();
    // Before the upgrade: stored and sealed without attestation, and some stored only.
    s.plain.insert(&rows("old", 6, t)).await.unwrap();
    let mut conn = sqlx::PgConnection::connect(&s.db.url).await.unwrap();
    assert_eq!(seal_pass(&mut conn, &s.signer, None).await.unwrap().rows, 6);
    s.plain.insert(&rows("waiting", 4, t)).await.unwrap();
    // A sealer checking attestation waits until a first attested write exists.
    let mut check = SealCheck::new(Attested::writer_keys());
    let waiting = s.seal(&mut check).await;
    assert!(waiting.sealed.is_empty(), "{waiting:?}");
    assert!(check.waiting());
    // With no attestation at all, verify requires one of every row.
    let (r, out) = s.verify().await;
    assert_eq!(r.findings.len(), 10, "{out}");
    assert!(out.contains("info: no attestation signed"), "{out}");

    // The sink now attests: the rows before its first attestation are legacy.
    s.store.insert(&rows("new", 5, t)).await.unwrap();
    let report = s.seal(&mut check).await;
    assert_eq!(report.rows, 9, "legacy rows and attested rows: {report:?}");
    assert!(!check.waiting());
    let (r, out) = s.verify().await;
    assert!(r.is_clean(), "{out}");
    assert_eq!((r.attested_rows, r.unattested_legacy_rows), (5, 10));
    assert!(
        out.contains("info: 10 row(s) numbered at or below seal_seq 10"),
        "{out}"
    );
    // A sink that still writes without a key after that stores unattested rows.
    s.plain.insert(&rows("late", 1, t)).await.unwrap();
    let (r, out) = s.verify().await;
    assert_eq!(named(&r, "row-unattested", "id=late-0 "), 1, "{out}");

    // Deleting every attestation does not make the rows legacy: every row is reported.
    s.sql("DELETE FROM audit_attestations").await;
    let (r, out) = s.verify().await;
    assert_eq!(
        r.findings
            .iter()
            .filter(|f| f.kind == "row-unattested")
            .count(),
        16,
        "{out}"
    );
    // The sealer keeps the boundary it knew: the unattested rows after it stay unsealed.
    s.plain.insert(&rows("after-delete", 1, t)).await.unwrap();
    let r = s.seal(&mut check).await;
    assert_eq!(r.rows, 0, "{r:?}");
    assert_eq!(check.refused(), 2, "late-0 and after-delete-0");
}

/// Every insert path attests exactly what PostgreSQL stores: awkward values (JSON that jsonb
/// rewrites, a repeated member name, COPY's special characters, a time before 2000 with a
/// sub-microsecond part) and redeliveries (a batch that is all duplicates, a batch with some).
#[tokio::test]
async fn every_insert_path_attests_what_it_stores() {
    let s = Attested::new().await;
    let t = Utc.with_ymd_and_hms(1999, 12, 31, 23, 59, 59).unwrap()
        + chrono::Duration::nanoseconds(123_456_789);
    let awkward = |id: &str| Row {
        subject: Some("tab\there\nnew line \\ back".into()),
        details: Some(r#"{"z": 1.0, "a": "\u00e9\n", "k": 1, "k": 2, "n": [1e2, -0, 0.1]}"#.into()),
        resource_id: Some(String::new()),
        ..row(id, t)
    };
    for (i, method) in [
        InsertMethod::CopyFirst,
        InsertMethod::Unnest,
        InsertMethod::Copy,
    ]
    .into_iter()
    .enumerate()
    {
        let store = s.store.clone().with_insert_method(method);
        let batch: Vec<Row> = (0..3).map(|j| awkward(&format!("m{i}-{j}"))).collect();
        store.insert(&batch).await.unwrap();
        // Redelivered whole, then with one new row.
        store.insert(&batch).await.unwrap();
        let mut more = batch.clone();
        more.push(awkward(&format!("m{i}-new")));
        let done = store.insert(&more).await.unwrap();
        assert_eq!((done.rows, done.duplicates), (1, 3), "{method:?}");
    }
    let (r, out) = s.verify().await;
    assert!(r.is_clean(), "{out}");
    assert_eq!(r.attested_rows, 12);
    let mut check = SealCheck::new(Attested::writer_keys());
    assert_eq!(s.seal(&mut check).await.rows, 12);
    assert_eq!(check.refused(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_maintain_role_reports_refused_rows_and_warns_without_a_writer_key() {
    use audit_manager::config::Role;
    let s = Attested::new().await;
    let kafka = common::TestKafka::new(1);
    kafka
        .cluster
        .create_topic("openg2p.audit.seals", 1, 1)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (key, writer) = (dir.path().join("sealer.key"), dir.path().join("writer.key"));
    audit_manager::integrity::seal::keygen(&key).unwrap();
    std::fs::write(
        &writer,
        format!("{}\n", hex::encode(writer_key().to_bytes())),
    )
    .unwrap();
    let writer_pub = dir.path().join("writer.key.pub");
    std::fs::write(
        &writer_pub,
        hex::encode(writer_key().verifying_key().as_bytes()),
    )
    .unwrap();
    let (url, bootstrap, k, p) = (
        s.db.url.clone(),
        kafka.bootstrap.clone(),
        key.clone(),
        writer_pub.clone(),
    );
    let mut app = common::TestApp::start_with(
        move |c| {
            c.roles = vec![Role::Maintain];
            c.database.url = url.into();
            c.kafka.bootstrap_servers = bootstrap;
            c.integrity.signing_key_file = Some(k);
            c.integrity.writer_public_key_files = vec![p];
            c.integrity.seal_interval = Duration::from_millis(50);
        },
        Default::default(),
    )
    .await;
    let t = Utc.with_ymd_and_hms(2026, 3, 1, 10, 0, 0).unwrap();
    s.store.insert(&rows("ok", 3, t)).await.unwrap();
    s.sql(FORGED).await;
    s.store.insert(&rows("ok2", 3, t)).await.unwrap();
    // With a 50 ms interval the seal lag alone can make maintain DEGRADED for a moment (the
    // sealer waits for the first attested write): wait for the refused rows' reason.
    let maintain = eventually(Duration::from_secs(30), "maintain DEGRADED", || async {
        let m = app.role_health("maintain").await;
        (m["status"] == "DEGRADED"
            && m["reason"]
                .as_str()
                .is_some_and(|r| r.contains("without a valid writer attestation")))
        .then_some(m)
    })
    .await;
    assert!(
        maintain["reason"]
            .as_str()
            .unwrap()
            .contains("without a valid writer attestation"),
        "{maintain}"
    );
    assert_eq!(maintain["sealing"]["unattested_rows"], 1, "{maintain}");
    assert_eq!(maintain["sealing"]["attestation"], "on", "{maintain}");
    let (_, metrics) = app.get_text("/metrics").await;
    // (The counter is per process; other tests of this binary may add to it.)
    assert!(
        metrics.contains("audit_seal_unattested_rows_total"),
        "{metrics}"
    );
    app.stop().await;
    assert!(!s.sealed_ids().await.contains(&"forged".to_string()));

    // Sealing on and no writer key anywhere: the sink and the sealer both warn at start.
    let spool = tempfile::tempdir().unwrap();
    let mut child = common::ChildServer::spawn(
        spool.path(),
        &[
            ("AUDIT_MANAGER__ROLES", "sink,maintain"),
            ("AUDIT_MANAGER__DATABASE__URL", &s.db.url),
            ("AUDIT_MANAGER__KAFKA__BOOTSTRAP_SERVERS", &kafka.bootstrap),
            (
                "AUDIT_MANAGER__INTEGRITY__SIGNING_KEY_FILE",
                &key.to_string_lossy(),
            ),
        ],
    );
    let log = eventually(Duration::from_secs(30), "both warnings", || async {
        let log = child.log().join("\n");
        (log.contains("integrity.writer_key_file is not set")
            && log.contains("rows are sealed without checking writer attestation"))
        .then_some(log)
    })
    .await;
    assert!(
        log.contains("WARN") || log.contains("\"level\":\"WARN\""),
        "{log}"
    );
    child.kill9();
}
