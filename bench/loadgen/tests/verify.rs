//! `audit-loadgen --verify`: after a run, every id that got a 202 must be in `audit_events`
//! exactly once; it fails when they are not.
//!
//! The service runs in this process (every role, the embedded broker) against a fresh database
//! on the test PostgreSQL (`postgres://postgres@127.0.0.1:5432`, or `$TEST_PG_URL`).

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use audit_manager::config::{Config, Role};
use audit_manager::serve::{self, Running, StartOptions};
use sqlx::{Connection as _, Executor as _};
use tokio_util::sync::CancellationToken;

fn pg_admin_url() -> String {
    std::env::var("TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A fresh database, dropped (with its connections) at the end of the test.
struct TestDb {
    name: String,
    url: String,
}

impl TestDb {
    async fn new() -> TestDb {
        let name = format!("audit_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(&format!("{}/postgres", pg_admin_url()))
            .await
            .expect("PostgreSQL at 127.0.0.1:5432 (or $TEST_PG_URL)");
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create test database");
        let _ = admin.close().await;
        TestDb {
            url: format!("{}/{name}", pg_admin_url()),
            name,
        }
    }

    async fn drop_now(self) {
        if let Ok(mut admin) =
            sqlx::PgConnection::connect(&format!("{}/postgres", pg_admin_url())).await
        {
            let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
            let _ = admin.execute(sql.as_str()).await;
            let _ = admin.close().await;
        }
    }
}

async fn start(tweak: impl FnOnce(&mut Config), spool: &std::path::Path) -> Running {
    let mut c = Config {
        roles: vec![Role::Ingest],
        ..Config::default()
    };
    c.http.listen = "127.0.0.1:0".parse().expect("addr");
    c.spool.path = spool.to_path_buf();
    tweak(&mut c);
    serve::start(c, CancellationToken::new(), StartOptions::default())
        .await
        .expect("service starts")
}

fn loadgen(addr: SocketAddr, db_url: &str, extra: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_audit-loadgen"))
        .args(["--url", &format!("http://{addr}")])
        .args([
            "--events",
            "2000",
            "--batch-size",
            "50",
            "--concurrency",
            "4",
            "--verify",
        ])
        .args(["--database-url", db_url])
        .args(extra)
        .output()
        .expect("run audit-loadgen");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_passes_through_the_whole_pipeline_and_fails_without_a_sink() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = db.url.clone();
    let app = start(
        move |c| {
            c.roles = Role::DEFAULT.to_vec();
            c.kafka.bootstrap_servers = "embedded".into();
            c.kafka.topic_partitions = 2;
            c.sink.flush_interval = Duration::from_millis(50);
            c.database.url = url.into();
        },
        &dir.path().join("all"),
    )
    .await;
    let (code, out, err) = loadgen(
        app.addr,
        &db.url,
        &["--verify-timeout", "90", "--rate", "4000"],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("verify: 2000 of 2000 accepted events in audit_events exactly once"),
        "{out}"
    );
    assert!(
        out.contains("end to end: all stored") && out.contains("after the last answer"),
        "the end-to-end time is read from the rows' ingested_at: {out}"
    );
    app.stop().await.expect("clean stop");

    // Ingest only: events are accepted (202) but never reach the table.
    let ingest_only = start(|_| {}, &dir.path().join("ingest")).await;
    let (code, out, err) = loadgen(ingest_only.addr, &db.url, &["--verify-timeout", "1"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("2000 of 2000 accepted events missing from audit_events"),
        "{err}"
    );
    ingest_only.stop().await.expect("clean stop");
    db.drop_now().await;
}
