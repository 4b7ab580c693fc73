//! The command line as an operator meets it: config errors, spool stats, graceful shutdown.

mod common;

use std::time::{Duration, Instant};

use common::{ChildServer, event, exported_ids, run_cli};

#[test]
fn a_config_typo_is_refused_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.yaml");
    std::fs::write(&file, "audit_manager:\n  spool:\n    max_byte: 1GiB\n").unwrap();
    let (code, _, stderr) = run_cli(&["serve", "--config", file.to_str().unwrap()], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("audit_manager.spool.max_byte"), "{stderr}");

    let (code, _, stderr) = run_cli(&["serve"], &[("AUDIT_MANAGER__HTTP__LISTN", "x")]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("listn"), "{stderr}");
}

#[test]
fn spool_commands_on_a_missing_spool_say_where_they_looked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nowhere");
    let (code, _, stderr) = run_cli(
        &["spool", "stats"],
        &[("AUDIT_MANAGER__SPOOL__PATH", path.to_str().unwrap())],
    );
    assert_eq!(code, 2);
    assert!(stderr.contains("nowhere"), "{stderr}");
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let mut server = ChildServer::spawn(&spool, &[]);
    server.wait_ready(Duration::from_secs(30)).await;
    let url = format!("http://{}{}/events", server.addr, common::BASE);
    let client = reqwest::Client::new();
    let mut acked = Vec::new();
    for i in 0..20 {
        let id = format!("t{i}");
        let resp = client.post(&url).json(&event(&id)).send().await.unwrap();
        assert_eq!(resp.status(), 202);
        acked.push(id);
    }
    // SAFETY: plain kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let until = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < until, "no exit within 20 s of SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status {status}");

    let (code, stdout, _) = run_cli(
        &["spool", "stats"],
        &[("AUDIT_MANAGER__SPOOL__PATH", spool.to_str().unwrap())],
    );
    assert_eq!(code, 0);
    assert!(stdout.contains("events:            20"), "{stdout}");
    assert_eq!(exported_ids(&spool), acked);
}
