//! `audit-loadgen --verify`: after a run, every id that got a 202 must be in `audit_events`
//! exactly once; it fails when they are not.

mod common;

use std::process::Command;
use std::time::Duration;

use audit_manager::config::Role;
use audit_manager::serve::StartOptions;
use common::{TestApp, TestDb};

fn loadgen(addr: std::net::SocketAddr, db_url: &str, extra: &[&str]) -> (i32, String, String) {
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
    let url = db.url.clone();
    let mut app = TestApp::start_with(
        move |c| {
            c.roles = Role::ALL.to_vec();
            c.kafka.bootstrap_servers = "embedded".into();
            c.kafka.topic_partitions = 2;
            c.sink.flush_interval = Duration::from_millis(50);
            c.database.url = url.into();
        },
        StartOptions::default(),
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
    app.stop().await;

    // Ingest only: events are accepted (202) but never reach the table.
    let mut ingest_only = TestApp::start().await;
    let (code, out, err) = loadgen(ingest_only.addr, &db.url, &["--verify-timeout", "1"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("2000 of 2000 accepted events missing from audit_events"),
        "{err}"
    );
    ingest_only.stop().await;
}
