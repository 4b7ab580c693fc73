//! The command line as an operator meets it: config errors, spool stats, graceful shutdown.

use crate::common;

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

/// The reference service's Helm chart configures it through the environment only: `DB_*`,
/// `AUDIT_MANAGER__KAFKA__BOOTSTRAP_SERVERS`, `CONFIG_PATH` (its default.yaml), `UVICORN_*`,
/// `GIT_COMMIT`/`BUILD_TIME`. The binary starts every role on exactly that, warns about the
/// two settings it keeps safe, and stores an event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_only_configuration_as_the_reference_helm_chart_sets_it() {
    use std::process::{Command, Stdio};

    let db = common::TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/reference-default.yaml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_audit-manager"))
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CONFIG_PATH", &fixture)
        .env("DB_HOST", "127.0.0.1")
        .env("DB_PORT", "5432")
        .env("DB_NAME", &db.name)
        .env("DB_USER", "postgres")
        .env("DB_PASSWORD", "helm-secret-pw")
        .env("AUDIT_MANAGER__KAFKA__BOOTSTRAP_SERVERS", "embedded")
        .env("AUDIT_MANAGER__KAFKA__TOPIC_PARTITIONS", "2")
        .env("AUDIT_MANAGER__SPOOL__PATH", dir.path().join("spool"))
        .env("AUDIT_MANAGER__SERVICE_ID", "helm.audit")
        .env("UVICORN_HOST", "127.0.0.1")
        // Port 0: the child binds a free port itself and names it in its log (no port race).
        .env("UVICORN_PORT", "0")
        .env("GIT_COMMIT", "0123abcd")
        .env("BUILD_TIME", "2026-04-22T14:00:00Z")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let until = Instant::now() + Duration::from_secs(60);
    let addr = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(addr) = text.lines().find_map(listening_addr) {
            break addr;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("exited before listening ({status}): {text}");
        }
        assert!(
            Instant::now() < until,
            "no listening line within 60 s: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let base = format!("http://{addr}{}", common::BASE);
    loop {
        if let Ok(r) = client.get(format!("{base}/health")).send().await
            && r.status().is_success()
        {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "exited before becoming ready ({status}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(Instant::now() < until, "not ready within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(
        stderr.contains("WARN")
            && stderr.contains(r#"kafka.producer.acks = "1""#)
            && stderr.contains(r#"is kept at "all""#),
        "{stderr}"
    );
    assert!(
        stderr.contains("kafka.consumer.enable_auto_commit = true")
            && stderr.contains("is kept false"),
        "{stderr}"
    );
    assert!(!stderr.contains("helm-secret-pw"), "{stderr}");

    let resp = client
        .post(format!("{base}/events"))
        .json(&event("helm-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["id"], "helm.audit", "envelope id from service_id");

    let pool = db.pool().await;
    let until = Instant::now() + Duration::from_secs(60);
    while common::count_rows(&pool).await != 1 {
        assert!(
            Instant::now() < until,
            "the event never reached audit_events"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let config: serde_json::Value = client
        .get(format!("{base}/config"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cfg = &config["response"];
    assert_eq!(
        cfg["database"]["url"],
        format!("postgresql://postgres:***@127.0.0.1:5432/{}", db.name)
    );
    assert_eq!(
        cfg["http"]["listen"], "127.0.0.1:0",
        "UVICORN_HOST/UVICORN_PORT"
    );
    assert_eq!(cfg["ingest"]["queue_max_size"], 10_000);
    let version: serde_json::Value = client
        .get(format!("{base}/version"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(version["response"]["git_commit"], "0123abcd");
    assert_eq!(version["response"]["build_time"], "2026-04-22T14:00:00Z");

    // SAFETY: plain kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let until = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < until, "no exit within 30 s of SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status {status}");
}

#[test]
fn a_typo_next_to_the_reference_keys_is_refused_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.yaml");
    let reference = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/reference-default.yaml"),
    )
    .unwrap();
    std::fs::write(&file, reference.replace("queue_max_size", "queue_max_sise")).unwrap();
    let (code, _, stderr) = run_cli(&["serve", "--config", file.to_str().unwrap()], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("unknown key audit_manager.ingest.queue_max_sise")
            && stderr.contains(file.to_str().unwrap()),
        "{stderr}"
    );
}

/// The address in the text-format "audit-manager listening" line (`... addr=IP:PORT ...`).
fn listening_addr(line: &str) -> Option<std::net::SocketAddr> {
    if !line.contains("audit-manager listening") {
        return None;
    }
    // Colour escapes may wrap the field name and the `=`; drop them before reading the value.
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| c.is_ascii_alphabetic());
        } else {
            plain.push(c);
        }
    }
    let rest = &plain[plain.find("addr=")? + "addr=".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// `token new --out FILE` writes the token readable by its owner only, never over an existing
/// file unless told, and prints the line for the principals file.
#[test]
fn token_new_out_writes_an_owner_only_file() {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("registry.token");
    let path = file.to_str().unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;

    let (code, stdout, stderr) = run_cli(&["token", "new", "--out", path], &[]);
    assert_eq!(code, 0, "{stderr}");
    let token = std::fs::read_to_string(&file).unwrap();
    let token = token.trim();
    assert_eq!(token.len(), 64, "{token}");
    assert_eq!(mode(&file), 0o600);
    assert_eq!(
        stdout.trim(),
        format!(
            "token_sha256: \"{}\"",
            hex::encode(Sha256::digest(token.as_bytes()))
        )
    );
    assert!(
        !stdout.contains(token) && !stderr.contains(token),
        "the token stays in the file"
    );

    let (code, _, stderr) = run_cli(&["token", "new", "--out", path], &[]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("exists") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap().trim(),
        token,
        "not overwritten"
    );

    // --force replaces it, owner-only even when the old file was not.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, stderr) = run_cli(&["token", "new", "--out", path, "--force"], &[]);
    assert_eq!(code, 0, "{stderr}");
    let replaced = std::fs::read_to_string(&file).unwrap();
    assert_ne!(replaced.trim(), token);
    assert_eq!(mode(&file), 0o600);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temporary file left beside it"
    );
}
