//! Archives of closed months: a round trip verifies offline (no database) and reads the same in
//! DuckDB; restore brings back the same timeline; every kind of tampering with an archive is
//! found and named; retention never drops a month without a verified archive (late rows,
//! crashes at every step); real S3 (moto) with an unreachable store and conflicting objects.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use audit_manager::archive::objects::Objects;
use audit_manager::archive::run::{Archiver, PassReport};
use audit_manager::archive::verify::{Report, verify};
use audit_manager::event::Row;
use audit_manager::integrity::seal::{self, Signer};
use audit_manager::integrity::sealer::seal_pass;
use audit_manager::store::query::{Search, page};
use audit_manager::store::{Month, Store, StoredRow};
use chrono::{DateTime, TimeZone, Utc};
use common::{TestDb, run_cli};
use sqlx::{Connection, PgPool};

pub fn row(id: &str, at: DateTime<Utc>) -> Row {
    Row {
        id: id.into(),
        occurred_at: at,
        source: "/registry".into(),
        r#type: "org.openg2p.registry.update".into(),
        subject: id.len().is_multiple_of(2).then(|| format!("subject-{id}")),
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
        details: Some(format!(
            r#"{{"changes":[{{"field":"phone","new":"é{id}"}}],"amount":12.5,"big":9007199254740993}}"#
        )),
    }
}

pub fn rows(prefix: &str, n: usize, at: DateTime<Utc>) -> Vec<Row> {
    (0..n)
        .map(|i| {
            row(
                &format!("{prefix}-{i}"),
                at + chrono::Duration::minutes(i as i64),
            )
        })
        .collect()
}

pub fn march() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 2, 10, 0, 0).unwrap()
}

pub fn april() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 4, 2, 10, 0, 0).unwrap()
}

/// A scratch database with a sealing key, and an archive directory.
pub struct Fixture {
    pub db: TestDb,
    pub store: Store,
    pub pool: PgPool,
    pub signer: Signer,
    pub dir: tempfile::TempDir,
    pub key_file: PathBuf,
    pub pub_file: PathBuf,
}

impl Fixture {
    pub async fn new() -> Fixture {
        let db = TestDb::new().await;
        let store = Store::connect_lazy(&db.url, 8).expect("store");
        store.prepare().await.expect("schema");
        let pool = db.pool().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let key_file = dir.path().join("seal.key");
        seal::keygen(&key_file).expect("keygen");
        let signer = Signer::new(seal::load_signing_key(&key_file).expect("key"));
        let pub_file = dir.path().join("seal.key.pub");
        Fixture {
            db,
            store,
            pool,
            signer,
            dir,
            key_file,
            pub_file,
        }
    }

    pub async fn insert(&self, rows: &[Row]) {
        self.store.insert(rows).await.expect("insert");
    }

    pub async fn seal(&self) {
        let mut conn = sqlx::PgConnection::connect(&self.db.url)
            .await
            .expect("conn");
        let r = seal_pass(&mut conn, &self.signer, None)
            .await
            .expect("seal pass");
        assert!(r.locked);
    }

    pub fn archive_dir(&self) -> PathBuf {
        self.dir.path().join("archive")
    }

    pub fn archive_url(&self) -> String {
        format!("file://{}", self.archive_dir().display())
    }

    pub fn archiver(&self) -> Archiver {
        let signer = Signer::new(seal::load_signing_key(&self.key_file).expect("key"));
        let objects = Objects::open(&self.archive_url()).expect("objects");
        Archiver::new(self.store.clone(), objects, signer, 0)
    }

    pub async fn archive(&self) -> PassReport {
        self.archiver()
            .pass(Utc::now(), None)
            .await
            .expect("archive pass")
    }

    /// `archive verify` of `dir` in the library, with the fixture's key.
    pub async fn verify_dir(&self, dir: &Path) -> (Report, String) {
        let keys = [(self.signer.key_id(), self.signer.verifying_key())]
            .into_iter()
            .collect();
        let objects = Objects::open(dir.to_str().expect("utf8 path")).expect("objects");
        let mut out = Vec::new();
        let r = verify(&objects, &keys, None, &mut out)
            .await
            .expect("verify runs");
        (r, String::from_utf8(out).expect("utf8"))
    }

    /// A configuration file for the command line.
    pub fn config_file(&self, retention_months: u32) -> PathBuf {
        let path = self.dir.path().join("config.yaml");
        std::fs::write(
            &path,
            format!(
                "audit_manager:\n  database:\n    url: {}\n    partition_retention_months: {retention_months}\n  \
                 integrity:\n    signing_key_file: {}\n    public_key_files: [{}]\n  \
                 archive:\n    url: {}\n    after_months: 0\n",
                self.db.url,
                self.key_file.display(),
                self.pub_file.display(),
                self.archive_url()
            ),
        )
        .expect("write config");
        path
    }

    /// Every row of `[from, to)`, by `seal_seq`.
    pub async fn stored(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<StoredRow> {
        let mut conn = self.pool.acquire().await.expect("conn");
        use futures_util::TryStreamExt as _;
        audit_manager::store::rows::numbered_between(&mut conn, Some(from), Some(to))
            .try_collect()
            .await
            .expect("rows")
    }

    /// Retention with the archive gate: `(dropped, blocked)` partition names.
    pub async fn retention(&self, months: u32) -> (Vec<String>, Vec<(String, String)>) {
        let r = self
            .store
            .clone()
            .with_archive_gate(true)
            .maintain(Utc::now(), 1, months, false, true)
            .await
            .expect("maintain")
            .expect("lock");
        (r.dropped, r.blocked)
    }

    pub async fn partition_exists(&self, name: &str) -> bool {
        sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(name)
            .fetch_one(&self.pool)
            .await
            .expect("catalog")
    }
}

/// The standard archive: 40 rows in March, 25 in April, sealed (one seal holds rows of both
/// months), both months archived.
pub async fn standard() -> Fixture {
    let f = Fixture::new().await;
    f.insert(&rows("mar", 40, march())).await;
    f.insert(&rows("apr", 25, april())).await;
    f.seal().await;
    let r = f.archive().await;
    assert!(r.locked);
    assert_eq!(
        r.parts
            .iter()
            .map(|p| (p.month.as_str(), p.part, p.rows))
            .collect::<Vec<_>>(),
        [("2026-03", 1, 40), ("2026-04", 1, 25)]
    );
    f
}

fn month_bounds(m: Month) -> (DateTime<Utc>, DateTime<Utc>) {
    (m.start().unwrap(), m.plus(1).start().unwrap())
}

/// Whether a missing tool fails the test instead of skipping it: under CI (`CI=true`), or when
/// `var` names the tool explicitly (`.ci/run` sets it).
fn required(var: &str) -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true") || std::env::var_os(var).is_some()
}

/// The Python with DuckDB: `$AUDIT_TEST_PYTHON`, else `python3`. `None` (the test is skipped,
/// loudly) when it has no DuckDB, except under CI, where that fails the test.
fn duckdb_python() -> Option<String> {
    let python = std::env::var("AUDIT_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python)
        .args(["-c", "import duckdb"])
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(python);
    }
    if required("AUDIT_TEST_PYTHON") {
        panic!("{python} has no duckdb module (pip install duckdb, or set AUDIT_TEST_PYTHON)");
    }
    eprintln!("SKIPPED the DuckDB check: {python} has no duckdb module (set AUDIT_TEST_PYTHON)");
    None
}

#[tokio::test]
async fn a_round_trip_verifies_offline_reads_in_duckdb_and_restores_the_timeline() {
    let f = standard().await;
    let (mar_from, mar_to) = month_bounds(Month::new(2026, 3).unwrap());
    let before = f.stored(mar_from, mar_to).await;
    assert_eq!(before.len(), 40);
    let timeline = |pool: PgPool| async move {
        let search = Search {
            equal: vec![("actor_id", "u-1")],
            from: Some(mar_from),
            to: Some(mar_to),
            after: None,
        };
        page(&pool, &search, 1000).await.expect("page").rows
    };
    let timeline_before = timeline(f.pool.clone()).await;
    assert_eq!(timeline_before.len(), 40);

    // Offline: the command line with the archive directory and the public key, no database.
    let dir = f.archive_dir();
    let (code, out, err) = run_cli(
        &[
            "archive",
            "verify",
            dir.to_str().unwrap(),
            "--public-key",
            f.pub_file.to_str().unwrap(),
        ],
        &[(
            "AUDIT_MANAGER__DATABASE__URL",
            "postgres://nobody@127.0.0.1:1/none",
        )],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("2 manifest(s), 2 part(s)"), "{err}");
    assert!(err.contains("65 row(s) checked"), "{err}");

    // An independent reader sees the same rows and values.
    if let Some(python) = duckdb_python() {
        let script = r#"
import duckdb, json, sys
con = duckdb.connect()
rows = con.execute(
    "SELECT id, epoch_us(occurred_at), CAST(details AS VARCHAR), seal_seq, subject, year, month "
    "FROM read_parquet(?, hive_partitioning = true, "
    "                  hive_types = {'year': INTEGER, 'month': INTEGER}) "
    "WHERE month = 3 ORDER BY seal_seq",
    [sys.argv[1] + "/**/*.parquet"]).fetchall()
total = con.execute("SELECT count(*) FROM read_parquet(?)", [sys.argv[1] + "/**/*.parquet"]).fetchone()[0]
print(json.dumps({"total": total, "rows": rows}))
"#;
        let out = Command::new(python)
            .args(["-c", script, dir.to_str().unwrap()])
            .output()
            .expect("python");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(v["total"], 65);
        let got = v["rows"].as_array().expect("rows");
        assert_eq!(got.len(), before.len());
        for (g, b) in got.iter().zip(&before) {
            let details =
                audit_manager::integrity::jcs::canonicalize_exact(b.details.as_deref().unwrap())
                    .unwrap();
            assert_eq!(
                g,
                &serde_json::json!([
                    b.id,
                    b.occurred_at.timestamp_micros(),
                    details,
                    b.seal_seq,
                    b.subject,
                    2026,
                    3
                ])
            );
        }
    }

    // Retention drops March (archived), then restore brings back the same timeline.
    let (dropped, blocked) = f.retention(1).await;
    assert!(blocked.is_empty(), "{blocked:?}");
    assert!(
        dropped.contains(&"audit_events_2026_03".to_string()),
        "{dropped:?}"
    );
    assert!(f.stored(mar_from, mar_to).await.is_empty());
    let config = f.config_file(1);
    let (code, out, err) = run_cli(
        &[
            "-c",
            config.to_str().unwrap(),
            "archive",
            "restore",
            "--month",
            "2026-03",
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("40 inserted"), "{out}");
    assert_eq!(f.stored(mar_from, mar_to).await, before);
    assert_eq!(timeline(f.pool.clone()).await, timeline_before);

    // Into another table.
    let (code, out, err) = run_cli(
        &[
            "-c",
            config.to_str().unwrap(),
            "archive",
            "restore",
            "--month",
            "2026-04",
            "--into",
            "investigation_april",
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM investigation_april")
        .fetch_one(&f.pool)
        .await
        .unwrap();
    assert_eq!(n, 25);

    // `archive list` shows both parts verified.
    let (code, out, err) = run_cli(&["-c", config.to_str().unwrap(), "archive", "list"], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.matches("verified").count(), 2, "{out}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// The standard archive plus a later part of March (rows stored after March was archived).
async fn with_late_part() -> Fixture {
    let f = standard().await;
    f.insert(&rows("late", 3, march() + chrono::Duration::days(20)))
        .await;
    f.seal().await;
    let r = f.archive().await;
    assert_eq!(
        r.parts
            .iter()
            .map(|p| (p.month.as_str(), p.part, p.rows, p.sequence))
            .collect::<Vec<_>>(),
        [("2026-03", 2, 3, 3)]
    );
    f
}

#[tokio::test]
async fn every_tampering_with_an_archive_is_found_and_named() {
    let f = with_late_part().await;
    let clean = f.archive_dir();
    let (r, out) = f.verify_dir(&clean).await;
    assert!(r.is_clean(), "{out}");
    assert_eq!((r.manifests, r.parts, r.rows_ok), (3, 3, 68));

    let mar1 = "year=2026/month=03/part-0001-00001.parquet";
    let apr_manifest = "year=2026/month=04/_part-0001.manifest.json";
    let scratch = f.dir.path().join("tampered");
    let fresh = |name: &str| {
        let d = scratch.join(name);
        copy_dir(&clean, &d);
        d
    };

    // A flipped byte in a Parquet file.
    let d = fresh("flipped");
    let p = d.join(mar1);
    let mut bytes = std::fs::read(&p).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&p, bytes).unwrap();
    let (r, out) = f.verify_dir(&d).await;
    assert!(!r.is_clean());
    assert!(
        out.contains(&format!("file-changed month=2026-03 file={mar1}")),
        "{out}"
    );

    // A removed row (the file rewritten without it).
    let d = fresh("removed-row");
    let p = d.join(mar1);
    let mut kept = Vec::new();
    audit_manager::archive::parquet::read_rows(std::fs::read(&p).unwrap().into(), |rows| {
        kept.extend(rows.into_iter().filter(|r| r.id != "mar-7"));
        Ok(())
    })
    .unwrap();
    assert_eq!(kept.len(), 39);
    let mut w = audit_manager::archive::parquet::FileWriter::new().unwrap();
    for r in kept {
        w.push(r).unwrap();
    }
    std::fs::write(&p, w.finish().unwrap()).unwrap();
    let (_, out) = f.verify_dir(&d).await;
    assert!(
        out.contains(&format!("file-changed month=2026-03 file={mar1}")),
        "{out}"
    );
    assert!(out.contains("row-missing month=2026-03 row=mar-7"), "{out}");

    // An edited manifest.
    let d = fresh("edited-manifest");
    let p = d.join(apr_manifest);
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.contains("\"rows\": 25"));
    std::fs::write(&p, text.replace("\"rows\": 25", "\"rows\": 24")).unwrap();
    let (_, out) = f.verify_dir(&d).await;
    assert!(
        out.contains(&format!(
            "manifest-signature month=2026-04 file={apr_manifest}"
        )),
        "{out}"
    );

    // A removed manifest in the middle of the chain.
    let d = fresh("removed-manifest");
    std::fs::remove_file(d.join(apr_manifest)).unwrap();
    let (_, out) = f.verify_dir(&d).await;
    assert!(
        out.contains(
            "manifest-missing month=2026-03 file=year=2026/month=03/_part-0002.manifest.json: \
             manifest(s) 2 to 2 are missing"
        ),
        "{out}"
    );

    // A manifest re-signed with a key nobody trusts.
    let d = fresh("resigned");
    let p = d.join(apr_manifest);
    let read =
        audit_manager::archive::manifest::read(&std::fs::read(&p).unwrap(), &Default::default())
            .unwrap();
    let stranger = Signer::new(ed25519_dalek::SigningKey::from_bytes(&[77; 32]));
    let (bytes, _) = audit_manager::archive::manifest::sign(&read.manifest, &stranger).unwrap();
    std::fs::write(&p, bytes).unwrap();
    let (_, out) = f.verify_dir(&d).await;
    assert!(
        out.contains(&format!(
            "manifest-unknown-key month=2026-04 file={apr_manifest}: signed by key {}",
            hex::encode(stranger.key_id())
        )),
        "{out}"
    );

    // The command line exits 1 on findings and names them.
    let (code, out, err) = run_cli(
        &[
            "archive",
            "verify",
            scratch.join("removed-row").to_str().unwrap(),
            "--month",
            "2026-03",
            "--public-key",
            f.pub_file.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("row-missing month=2026-03 row=mar-7"), "{out}");
    // … and 2 when it cannot run: no trusted key, or no archive at that path.
    let (code, _, err) = run_cli(&["archive", "verify", clean.to_str().unwrap()], &[]);
    assert_eq!(code, 2, "{err}");
    let empty = f.dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    for wrong in [f.dir.path().join("nothing-here"), empty] {
        let (code, _, err) = run_cli(
            &[
                "archive",
                "verify",
                wrong.to_str().unwrap(),
                "--public-key",
                f.pub_file.to_str().unwrap(),
            ],
            &[],
        );
        assert_eq!(code, 2, "{err}");
    }
}

#[tokio::test]
async fn retention_waits_for_a_verified_archive_of_every_row_late_rows_included() {
    let f = Fixture::new().await;
    f.insert(&rows("mar", 10, march())).await;
    f.seal().await;
    // Not archived: kept, and said why.
    let (dropped, blocked) = f.retention(1).await;
    assert!(dropped.is_empty());
    assert_eq!(blocked.len(), 1);
    assert!(
        blocked[0].1.contains("not archived yet (10 rows)"),
        "{blocked:?}"
    );
    f.archive().await;
    // A late row arrives for March after it was archived, not sealed yet.
    f.insert(&rows("late", 1, march() + chrono::Duration::days(3)))
        .await;
    let (dropped, blocked) = f.retention(1).await;
    assert!(dropped.is_empty());
    assert!(
        blocked[0]
            .1
            .contains("1 row(s) are in no verified archive part"),
        "{blocked:?}"
    );
    // Sealed but not archived yet: still kept.
    f.seal().await;
    let r = f.archive().await;
    assert_eq!(r.parts.len(), 1);
    assert_eq!((r.parts[0].part, r.parts[0].rows), (2, 1));
    let (dropped, blocked) = f.retention(1).await;
    assert!(blocked.is_empty(), "{blocked:?}");
    assert_eq!(dropped, ["audit_events_2026_03"]);
    // The drop's retention record is there (the next seal signs it), naming the manifest of
    // the month's newest part: the hash of the object itself, as `archive verify` computes it.
    let (n, named): (i64, Option<Vec<u8>>) = sqlx::query_as(
        "SELECT rows, archive_manifest FROM audit_retention_log
          WHERE partition = 'audit_events_2026_03'",
    )
    .fetch_one(&f.pool)
    .await
    .unwrap();
    assert_eq!(n, 11);
    let path = audit_manager::archive::layout::manifest_file(Month::new(2026, 3).unwrap(), 2);
    let keys = [(f.signer.key_id(), f.signer.verifying_key())]
        .into_iter()
        .collect();
    let manifest = audit_manager::archive::manifest::read(
        &std::fs::read(f.archive_dir().join(&path)).unwrap(),
        &keys,
    )
    .unwrap();
    assert_eq!(named.as_deref(), Some(&manifest.hash[..]), "{path}");
    // `archive list` ties the record to the part.
    let config = f.config_file(1);
    let (code, out, err) = run_cli(&["-c", config.to_str().unwrap(), "archive", "list"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("dropped audit_events_2026_03 at ")
            && out.contains(&format!(
                "archived, its retention record names manifest {} (2026-03 part 2, sequence 2)",
                hex::encode(manifest.hash)
            )),
        "{out}"
    );
    let (r, out) = f.verify_dir(&f.archive_dir()).await;
    assert!(r.is_clean(), "{out}");
    assert_eq!(r.rows_ok, 11);
    // `verify` on the database: the dropped month's rows are archived, not missing (once the
    // next seal signed the retention record).
    f.seal().await;
    let keys = [(f.signer.key_id(), f.signer.verifying_key())]
        .into_iter()
        .collect();
    let mut out = Vec::new();
    let report = audit_manager::integrity::verify::verify(
        &f.pool,
        &keys,
        &audit_manager::integrity::verify::VerifyOptions::default(),
        &mut out,
    )
    .await
    .expect("verify runs");
    let out = String::from_utf8(out).unwrap();
    assert!(report.is_clean(), "{out}");
    assert!(
        out.contains(
            "11 sealed rows checked as dropped; archived: 11 row(s) in 2 verified archive part(s)"
        ),
        "{out}"
    );
}

/// `archive run` killed at `point` (the process aborts there, like SIGKILL): the month is
/// never dropped meanwhile, and the next run completes a part that verifies.
async fn crash_at(point: &str) {
    let f = Fixture::new().await;
    f.insert(&rows("mar", 30, march())).await;
    f.seal().await;
    let config = f.config_file(1);
    let config = config.to_str().unwrap();
    let (code, out, err) = run_cli(
        &["-c", config, "archive", "run"],
        &[("AUDIT_MANAGER_TEST_SEALER_ABORT", point)],
    );
    assert_ne!(
        code, 0,
        "{point}: the run should have been killed\n{out}\n{err}"
    );
    assert!(err.contains(&format!("aborting at {point}")), "{err}");
    let (dropped, blocked) = f.retention(1).await;
    assert!(dropped.is_empty(), "{point}: dropped {dropped:?}");
    assert!(
        blocked[0].1.contains("still being written"),
        "{point}: {blocked:?}"
    );
    assert!(f.partition_exists("audit_events_2026_03").await);
    let (code, out, err) = run_cli(&["-c", config, "archive", "run"], &[]);
    assert_eq!(code, 0, "{point}: {out}\n{err}");
    assert!(
        out.contains(
            "archived 2026-03 part 1 (30 rows, manifest 1), finished after an interruption"
        ),
        "{point}: {out}"
    );
    let (r, out) = f.verify_dir(&f.archive_dir()).await;
    assert!(r.is_clean(), "{point}: {out}");
    assert_eq!(r.rows_ok, 30);
    // Killed during the drop: the drop and its record roll back together; the next pass drops.
    let (code, _, err) = run_cli(
        &["-c", config, "partitions", "drop-expired"],
        &[("AUDIT_MANAGER_TEST_SEALER_ABORT", "retention-before-commit")],
    );
    assert_ne!(code, 0, "{err}");
    assert!(f.partition_exists("audit_events_2026_03").await);
    let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_retention_log")
        .fetch_one(&f.pool)
        .await
        .unwrap();
    assert_eq!(logged, 0);
    let (code, out, err) = run_cli(&["-c", config, "partitions", "drop-expired"], &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(!f.partition_exists("audit_events_2026_03").await);
}

#[tokio::test]
async fn killed_after_a_parquet_upload_the_next_run_completes() {
    crash_at("archive-after-parquet-upload").await;
}

#[tokio::test]
async fn killed_before_the_read_back_the_next_run_completes() {
    crash_at("archive-before-readback").await;
}

#[tokio::test]
async fn killed_after_the_upload_before_the_record_the_next_run_completes() {
    crash_at("archive-before-record").await;
}

#[tokio::test]
async fn an_existing_object_with_other_content_is_never_overwritten() {
    let f = Fixture::new().await;
    f.insert(&rows("mar", 5, march())).await;
    f.seal().await;
    let planted = f
        .archive_dir()
        .join("year=2026/month=03/part-0001-00001.parquet");
    std::fs::create_dir_all(planted.parent().unwrap()).unwrap();
    std::fs::write(&planted, b"someone else's object").unwrap();
    let err = f
        .archiver()
        .pass(Utc::now(), None)
        .await
        .expect_err("the pass must stop");
    assert!(err.to_string().contains("never overwritten"), "{err}");
    assert_eq!(std::fs::read(&planted).unwrap(), b"someone else's object");
    let (dropped, _) = f.retention(1).await;
    assert!(dropped.is_empty());
    // Moved away, the next pass completes.
    std::fs::rename(&planted, f.dir.path().join("evidence")).unwrap();
    let r = f.archive().await;
    assert_eq!((r.parts.len(), r.parts[0].resumed), (1, true));
    let (r, out) = f.verify_dir(&f.archive_dir()).await;
    assert!(r.is_clean(), "{out}");
}

// ---------------------------------------------------------------------------------------------
// Real object storage: an S3-compatible server (moto) on loopback

/// A moto S3 server: `$AUDIT_TEST_S3_ENDPOINT` when set (started by `.ci/run`), else one this
/// test starts (`$AUDIT_TEST_MOTO_SERVER`, else `moto_server` on PATH) and stops.
pub struct S3 {
    pub endpoint: String,
    child: Option<std::process::Child>,
}

impl Drop for S3 {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn moto_command() -> Option<String> {
    let cmd = std::env::var("AUDIT_TEST_MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
    let found = Command::new(&cmd)
        .arg("--help")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Some(cmd);
    }
    if required("AUDIT_TEST_MOTO_SERVER") {
        panic!(
            "no S3 server for the archive tests: set AUDIT_TEST_S3_ENDPOINT or put moto_server on PATH (pip install 'moto[server]')"
        );
    }
    eprintln!("SKIPPED: no S3 server (set AUDIT_TEST_S3_ENDPOINT or install moto[server])");
    None
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl S3 {
    /// The shared server, or a new one; `None` (skipped loudly, failing under CI) without one.
    pub async fn start() -> Option<S3> {
        if let Ok(endpoint) = std::env::var("AUDIT_TEST_S3_ENDPOINT") {
            return Some(S3 {
                endpoint,
                child: None,
            });
        }
        let cmd = moto_command()?;
        Some(S3::start_on(&cmd, free_port()).await)
    }

    /// A moto server of our own on `port`.
    pub async fn start_on(cmd: &str, port: u16) -> S3 {
        let child = Command::new(cmd)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start moto_server");
        let s3 = S3 {
            endpoint: format!("http://127.0.0.1:{port}"),
            child: Some(child),
        };
        let client = reqwest::Client::new();
        common::eventually(std::time::Duration::from_secs(60), "moto to answer", || {
            let url = format!("{}/", s3.endpoint);
            let client = client.clone();
            async move { client.get(url).send().await.ok().map(|_| ()) }
        })
        .await;
        s3
    }

    /// Creates a bucket with a fresh name and returns it.
    pub async fn bucket(&self) -> String {
        let name = format!("audit-{}", uuid::Uuid::new_v4().simple());
        let r = reqwest::Client::new()
            .put(format!("{}/{name}", self.endpoint))
            .send()
            .await
            .expect("create bucket");
        assert!(r.status().is_success(), "create bucket: {}", r.status());
        name
    }

    /// The S3 settings of this server (path-style requests over plain HTTP, test credentials).
    pub fn options(&self) -> Vec<(&'static str, String)> {
        vec![
            ("aws_endpoint", self.endpoint.clone()),
            ("aws_allow_http", "true".into()),
            ("aws_access_key_id", "test".into()),
            ("aws_secret_access_key", "test".into()),
            ("aws_region", "us-east-1".into()),
        ]
    }

    /// The same as environment variables for a child process.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    pub fn objects(&self, url: &str) -> Objects {
        let opts = self.options();
        let opts: Vec<(&str, &str)> = opts.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Objects::open_with(url, &opts).expect("S3 objects")
    }
}

#[tokio::test]
async fn archives_go_to_s3_verify_from_there_and_are_never_overwritten() {
    let Some(s3) = S3::start().await else { return };
    let f = Fixture::new().await;
    f.insert(&rows("mar", 20, march())).await;
    f.insert(&rows("apr", 5, april())).await;
    f.seal().await;
    let bucket = s3.bucket().await;
    let url = format!("s3://{bucket}/audit/archive");
    let objects = s3.objects(&url);
    let signer = Signer::new(seal::load_signing_key(&f.key_file).unwrap());
    let archiver = Archiver::new(f.store.clone(), objects.clone(), signer, 0);
    let r = archiver
        .pass(Utc::now(), None)
        .await
        .expect("archive to S3");
    assert_eq!(r.parts.len(), 2);
    let listed = objects.list().await.unwrap();
    assert!(
        listed.contains(&"year=2026/month=03/part-0001-00001.parquet".to_string()),
        "{listed:?}"
    );
    // Offline verify straight from the bucket (the command line, AWS settings from the
    // environment as in production).
    let env = s3.env();
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.push((
        "AUDIT_MANAGER__DATABASE__URL",
        "postgres://nobody@127.0.0.1:1/none",
    ));
    let (code, out, err) = run_cli(
        &[
            "archive",
            "verify",
            &url,
            "--public-key",
            f.pub_file.to_str().unwrap(),
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("25 row(s) checked"), "{err}");
    // An existing object is never overwritten: PutMode::Create against the real protocol.
    let path = "year=2026/month=03/part-0001-00001.parquet";
    let (size, sha) = objects.digest(path).await.unwrap();
    let e = objects
        .create(path, bytes::Bytes::from_static(b"other content"))
        .await
        .expect_err("must refuse");
    assert!(e.to_string().contains("never overwritten"), "{e}");
    assert_eq!(objects.digest(path).await.unwrap(), (size, sha));
    // A bucket that is not there: the store refuses, the error says so.
    let missing = s3.objects("s3://no-such-bucket-here/x");
    let e = missing.probe().await.expect_err("no bucket");
    assert!(e.to_string().contains("no-such-bucket-here"), "{e}");
}

/// A maintain role (retention one month, archiving to `url` on the S3 server at `endpoint`
/// with the test credentials) and a probe of its `/health` report.
struct Maintainer {
    child: common::ChildServer,
    health: String,
}

impl Maintainer {
    async fn spawn(f: &Fixture, endpoint: &str, url: &str) -> Maintainer {
        let spool = f.dir.path().join("spool");
        let key = f.key_file.to_str().unwrap().to_string();
        let env: Vec<(&str, &str)> = vec![
            ("AUDIT_MANAGER__ROLES", "maintain"),
            ("AUDIT_MANAGER__DATABASE__URL", &f.db.url),
            ("AUDIT_MANAGER__DATABASE__PARTITION_CHECK_INTERVAL", "1s"),
            ("AUDIT_MANAGER__DATABASE__PARTITION_RETENTION_MONTHS", "1"),
            ("AUDIT_MANAGER__INTEGRITY__SIGNING_KEY_FILE", &key),
            ("AUDIT_MANAGER__INTEGRITY__SEAL_TOPIC", ""),
            ("AUDIT_MANAGER__ARCHIVE__URL", url),
            ("AUDIT_MANAGER__ARCHIVE__AFTER_MONTHS", "0"),
            ("AWS_ENDPOINT_URL", endpoint),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
        ];
        let mut child = common::ChildServer::spawn(&spool, &env);
        child.wait_ready(std::time::Duration::from_secs(60)).await;
        let health = format!("http://{}{}/health", child.addr, common::BASE);
        Maintainer { child, health }
    }

    /// The maintain role's part of `/health`.
    async fn report(&self) -> Option<serde_json::Value> {
        let v: serde_json::Value = reqwest::get(&self.health).await.ok()?.json().await.ok()?;
        Some(v["response"]["roles"]["maintain"].clone())
    }

    /// Waits for DEGRADED because archiving fails, and for retention to report the month
    /// blocked; returns the reason.
    async fn degraded(&self) -> String {
        let degraded = common::eventually(
            std::time::Duration::from_secs(60),
            "maintain DEGRADED by the failing store",
            || async {
                let m = self.report().await?;
                (m["status"] == "DEGRADED"
                    && m["reason"].as_str()?.contains("archiving is failing"))
                .then_some(m)
            },
        )
        .await;
        common::eventually(
            std::time::Duration::from_secs(30),
            "retention to report the month blocked",
            || async {
                let m = self.report().await?;
                (!m["archive"]["retention_blocked"].as_array()?.is_empty()).then_some(())
            },
        )
        .await;
        let reason = degraded["reason"].as_str().unwrap().to_string();
        assert!(reason.contains("check archive.url"), "{degraded}");
        reason
    }

    /// Waits for the month to be archived and dropped and the role UP again.
    async fn recovered(&self, f: &Fixture) {
        common::eventually(
            std::time::Duration::from_secs(90),
            "the month archived and dropped",
            || async { (!f.partition_exists("audit_events_2026_03").await).then_some(()) },
        )
        .await;
        common::eventually(
            std::time::Duration::from_secs(30),
            "maintain UP",
            || async {
                let m = self.report().await?;
                (m["status"] == "UP").then_some(())
            },
        )
        .await;
    }
}

/// `archive verify` of the archive at `url` on `s3`, with the fixture's key.
async fn verify_s3(f: &Fixture, s3: &S3, url: &str) -> (Report, String) {
    let keys = [(f.signer.key_id(), f.signer.verifying_key())]
        .into_iter()
        .collect();
    let mut out = Vec::new();
    let r = verify(&s3.objects(url), &keys, None, &mut out)
        .await
        .unwrap();
    (r, String::from_utf8(out).unwrap())
}

#[tokio::test]
async fn an_unreachable_store_blocks_retention_and_degrades_health_until_it_returns() {
    let Some(cmd) = moto_command() else { return };
    let f = Fixture::new().await;
    f.insert(&rows("mar", 12, march())).await;
    f.seal().await;
    // Nothing listens on the port yet: every request is refused at the TCP level.
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let bucket = format!("audit-{}", uuid::Uuid::new_v4().simple());
    let url = format!("s3://{bucket}/archive");
    let mut m = Maintainer::spawn(&f, &endpoint, &url).await;
    m.degraded().await;
    // Retention kept the month meanwhile.
    assert!(f.partition_exists("audit_events_2026_03").await);
    // The store returns (with the bucket): archived, then dropped, and healthy again.
    let s3 = S3::start_on(&cmd, port).await;
    let r = reqwest::Client::new()
        .put(format!("{}/{bucket}", s3.endpoint))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    m.recovered(&f).await;
    let (r, out) = verify_s3(&f, &s3, &url).await;
    assert!(r.is_clean(), "{out}");
    assert_eq!(r.rows_ok, 12);
    m.child.kill9();
}

/// Turns moto's request authentication on (`true`: every request is checked against its IAM,
/// where the test credentials do not exist) or off.
async fn moto_checks_credentials(s3: &S3, on: bool) {
    let r = reqwest::Client::new()
        .post(format!("{}/moto-api/reset-auth", s3.endpoint))
        .header("content-type", "text/plain")
        .body(if on { "0" } else { "inf" })
        .send()
        .await
        .expect("moto reset-auth");
    assert!(r.status().is_success(), "moto reset-auth: {}", r.status());
}

#[tokio::test]
async fn a_store_refusing_the_credentials_blocks_retention_and_degrades_health_until_it_accepts() {
    let Some(cmd) = moto_command() else { return };
    let f = Fixture::new().await;
    f.insert(&rows("mar", 12, march())).await;
    f.seal().await;
    // A server of this test's own: authentication is server-wide.
    let s3 = S3::start_on(&cmd, free_port()).await;
    let bucket = s3.bucket().await;
    let url = format!("s3://{bucket}/archive");
    moto_checks_credentials(&s3, true).await;
    let refused = s3.objects(&url).probe().await.expect_err("refused");
    assert!(
        refused.to_string().contains("InvalidAccessKeyId"),
        "{refused}"
    );
    let mut m = Maintainer::spawn(&f, &s3.endpoint, &url).await;
    let reason = m.degraded().await;
    assert!(reason.contains("InvalidAccessKeyId"), "{reason}");
    // Nothing was dropped, and no part is recorded as verified.
    assert!(f.partition_exists("audit_events_2026_03").await);
    let verified: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_archives WHERE manifest_hash IS NOT NULL")
            .fetch_one(&f.pool)
            .await
            .unwrap();
    assert_eq!(verified, 0);
    // The credentials are accepted again: archived, dropped, healthy.
    moto_checks_credentials(&s3, false).await;
    m.recovered(&f).await;
    let (r, out) = verify_s3(&f, &s3, &url).await;
    assert!(r.is_clean(), "{out}");
    assert_eq!(r.rows_ok, 12);
    m.child.kill9();
}

// ---------------------------------------------------------------------------------------------
// Privacy rules: archives carry what the table stores

/// An event of `person` whose national id an `encrypt` rule selects.
fn personal_event(id: &str, at: DateTime<Utc>, person: &str) -> serde_json::Value {
    serde_json::json!({
        "specversion": "1.0", "id": id, "source": "urn:openg2p:registry",
        "type": "org.openg2p.beneficiary.updated",
        "time": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": {
            "actor": {"type": "user", "id": "officer-1"},
            "action": "beneficiary.update", "outcome": "success",
            "resource": {"type": "person", "id": person},
            "changes": [{"field": "national_id", "old": format!("NID-{person}-{id}"), "new": "NID-new"}],
            "status": "CONTROL-visible"
        }
    })
}

/// The `old` value of `changes[0]` in the `details` text of a row.
fn national_id(details: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(details).unwrap();
    v["changes"][0]["old"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_privacy_rules_archived_values_are_ciphertext_and_forget_makes_them_unreadable() {
    use audit_manager::privacy::envelope::Keeper;
    use audit_manager::privacy::subject_keys::{self, SubjectKey};
    use rand::Rng as _;
    let f = Fixture::new().await;
    let p = f.dir.path();
    std::fs::write(p.join("hmac"), rand::rng().random::<[u8; 32]>()).unwrap();
    let keeper_file = p.join("keeper");
    let (code, out, err) = run_cli(
        &["privacy", "keygen", "--out", keeper_file.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    let config = f.config_file(0);
    let mut yaml = std::fs::read_to_string(&config).unwrap();
    yaml.push_str(&format!(
        "  privacy:\n    hmac_key_file: {:?}\n    keeper_key_file: {:?}\n    rules:\n      \
         - name: national-id\n        select: \"$.data.changes[?@.field=='national_id']['old','new']\"\n        \
         action: encrypt\n        subject: \"$.data.resource.id\"\n",
        p.join("hmac"),
        keeper_file
    ));
    std::fs::write(&config, &yaml).unwrap();
    // The rows as a writer stores them: each national id under its subject's key.
    let cfg = audit_manager::config::Config::from_yaml_str(&yaml, &[]).unwrap();
    let privacy = audit_manager::privacy::writer(&cfg).unwrap();
    let events: Vec<(String, Vec<u8>)> = ["P-gone", "P-keep"]
        .iter()
        .flat_map(|person| (0..3).map(move |n| (person, n)))
        .enumerate()
        .map(|(i, (person, n))| {
            let id = format!("pv-{person}-{n}");
            let at = march() + chrono::Duration::minutes(i as i64);
            let bytes = serde_json::to_vec(&personal_event(&id, at, person)).unwrap();
            (id, bytes)
        })
        .collect();
    let rows: Vec<Row> = tokio::task::spawn_blocking(move || {
        events
            .iter()
            .map(|(id, bytes)| {
                audit_manager::write::decode(
                    Some(bytes),
                    Utc::now(),
                    None,
                    audit_manager::event::ValidationMode::Strict,
                    &privacy,
                )
                .unwrap_or_else(|e| panic!("{id}: {}", e.header()))
            })
            .collect()
    })
    .await
    .unwrap();
    f.insert(&rows).await;
    f.seal().await;
    let r = f.archive().await;
    assert_eq!(r.parts.len(), 1);
    assert_eq!(r.parts[0].rows, 6);

    // What the archive holds, read by the Parquet reader of `archive verify`.
    let mut archived: Vec<(String, String)> = Vec::new();
    for path in walk(&f.archive_dir()) {
        if path.extension().is_some_and(|e| e == "parquet") {
            let bytes = bytes::Bytes::from(std::fs::read(&path).unwrap());
            audit_manager::archive::parquet::read_rows(bytes, |rows| {
                archived.extend(
                    rows.into_iter()
                        .map(|r| (r.id, r.details.unwrap_or_default())),
                );
                Ok(())
            })
            .unwrap();
        }
    }
    archived.sort();
    assert_eq!(archived.len(), 6);
    for (id, details) in &archived {
        assert!(
            !details.contains("NID-"),
            "{id}: a national id in the clear: {details}"
        );
        assert!(details.contains("CONTROL-visible"), "{id}: {details}");
        assert!(
            national_id(details).starts_with("enc:v1:"),
            "{id}: {details}"
        );
        let stored: String =
            sqlx::query_scalar("SELECT details::text FROM audit_events WHERE id = $1")
                .bind(id)
                .fetch_one(&f.pool)
                .await
                .unwrap();
        assert_eq!(
            national_id(&stored),
            national_id(details),
            "{id}: the table's value"
        );
    }
    // An independent reader sees ciphertext only, in every encrypted field.
    if let Some(python) = duckdb_python() {
        let script = r#"
import duckdb, json, sys
con = duckdb.connect()
rows = con.execute(
    "SELECT id, json_extract_string(details, '$.changes[0].old'), "
    "       json_extract_string(details, '$.changes[0].new'), CAST(details AS VARCHAR) "
    "FROM read_parquet(?) ORDER BY id", [sys.argv[1] + "/**/*.parquet"]).fetchall()
print(json.dumps(rows))
"#;
        let out = Command::new(python)
            .args(["-c", script, f.archive_dir().to_str().unwrap()])
            .output()
            .expect("python");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rows: Vec<(String, String, String, String)> =
            serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(rows.len(), 6);
        for (id, old, new, details) in &rows {
            assert!(old.starts_with("enc:v1:"), "{id}: {old}");
            assert!(new.starts_with("enc:v1:"), "{id}: {new}");
            assert!(!details.contains("NID-"), "{id}: {details}");
            let ours = archived.iter().find(|(i, _)| i == id).unwrap();
            assert_eq!(&national_id(&ours.1), old, "{id}");
        }
    }

    // Every archived value opens under its subject's key before `forget`…
    let keeper = Keeper::load(&keeper_file).unwrap();
    let keys = || async {
        sqlx::query_as::<_, (String, String)>(
            "SELECT key_id, wrapped_key FROM audit_subject_keys WHERE wrapped_key IS NOT NULL",
        )
        .fetch_all(&f.pool)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, wrapped)| SubjectKey {
            id,
            secret: keeper.unwrap(&wrapped).unwrap(),
        })
        .collect::<Vec<_>>()
    };
    let opens = |keys: &[SubjectKey], id: &str, details: &str| {
        let stored = national_id(details);
        let (_, body) = subject_keys::parse(&stored)?;
        keys.iter()
            .find_map(|k| subject_keys::decrypt(k, &body, id, "/data/changes/0/old").ok())
    };
    let before = keys().await;
    assert_eq!(before.len(), 2, "one key per subject");
    for (id, details) in &archived {
        let person = if id.contains("P-gone") {
            "P-gone"
        } else {
            "P-keep"
        };
        assert_eq!(
            opens(&before, id, details),
            Some(serde_json::json!(format!("NID-{person}-{id}"))),
            "{id}"
        );
    }
    // …and `forget` makes the forgotten subject's archived values unreadable, the other
    // subject's not.
    let (code, out, err) = run_cli(
        &[
            "--config",
            config.to_str().unwrap(),
            "privacy",
            "forget",
            "--subject",
            "P-gone",
            "--reason",
            "erasure request",
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    let after = keys().await;
    assert_eq!(after.len(), 1);
    for (id, details) in &archived {
        let opened = opens(&after, id, details);
        if id.contains("P-gone") {
            assert_eq!(opened, None, "{id} still opens after forget");
        } else {
            assert!(opened.is_some(), "{id}: another subject's value lost");
        }
    }
    // The archive is unchanged by forget: `archive verify` (offline) still passes.
    let (code, out, err) = run_cli(
        &[
            "archive",
            "verify",
            f.archive_dir().to_str().unwrap(),
            "--public-key",
            f.pub_file.to_str().unwrap(),
        ],
        &[(
            "AUDIT_MANAGER__DATABASE__URL",
            "postgres://nobody@127.0.0.1:1/none",
        )],
    );
    assert_eq!(code, 0, "archive verify after forget: {out}\n{err}");
    assert!(err.contains("6 row(s) checked"), "{err}");
}
