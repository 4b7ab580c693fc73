//! The README's quickstart, as a newcomer runs it: `serve --dev`, the README's `curl`, the row
//! in PostgreSQL. The commands and the event are read from README.md itself, so the README
//! cannot drift from what works. Only the database name and the port differ, set through the
//! ordinary configuration variables (a fresh database per run, a free port).

use crate::common;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use std::collections::HashSet;

use common::TestDb;

/// The README's Quickstart section.
fn quickstart() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let start = readme
        .find("## Quickstart")
        .expect("README has a Quickstart section");
    let rest = &readme[start + 3..];
    let end = rest.find("\n## ").unwrap_or(rest.len());
    rest[..end].to_string()
}

/// The shell code blocks of a Markdown text, continuation lines joined.
fn sh_blocks(md: &str) -> Vec<String> {
    md.split("```sh\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap_or("").replace("\\\n", " "))
        .collect()
}

/// The text between the first `open` after `from` and the next `close`.
fn between<'a>(s: &'a str, open: &str, close: &str) -> &'a str {
    let i = s.find(open).map(|i| i + open.len()).expect(open);
    let j = s[i..].find(close).expect(close);
    &s[i..i + j]
}

#[test]
fn readme_has_no_path_outside_the_repository() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    // Spelled in pieces so that grepping the repository for them finds nothing.
    let outside = [["..", "shared"].join("/"), ["design", "md"].join(".")];
    for bad in &outside {
        assert!(!readme.contains(bad.as_str()), "README.md mentions {bad}");
    }
    // Every relative link stays inside the repository.
    for link in readme.split("](").skip(1) {
        let target = link.split(')').next().unwrap_or("");
        if target.contains("://") || target.starts_with('#') {
            continue;
        }
        let mut depth = 0i32;
        for part in target.split('/') {
            match part {
                ".." => depth -= 1,
                "." | "" => {}
                _ => depth += 1,
            }
            assert!(
                depth >= 0,
                "README.md links outside the repository: {target}"
            );
        }
        assert!(
            !target.starts_with('/'),
            "README.md links to an absolute path: {target}"
        );
    }
}

#[test]
fn no_file_of_the_repository_points_outside_it() {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.map_while(Result::ok) {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                if !matches!(name.as_str(), "target" | ".git" | "corpus" | "artifacts") {
                    walk(&p, out);
                }
            } else if ["md", "rs", "toml", "yaml", "yml", "json", "tpl", "py"]
                .iter()
                .any(|ext| name.ends_with(&format!(".{ext}")))
                || name == "Dockerfile"
            {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(std::path::Path::new(env!("CARGO_MANIFEST_DIR")), &mut files);
    assert!(files.len() > 50, "found only {} files", files.len());
    let outside = [
        ["..", "shared"].join("/"),
        ["shared", "design.md"].join("/"),
    ];
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for bad in &outside {
            assert!(
                !text.contains(bad.as_str()),
                "{} mentions {bad}",
                file.display()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_quickstart_stores_the_curl_event_in_postgresql() {
    let qs = quickstart();
    let blocks = sh_blocks(&qs);
    let run = blocks.first().expect("a command block").trim().to_string();
    assert_eq!(
        run, "cargo run --release -- serve --dev",
        "the first command"
    );
    let curl = blocks
        .iter()
        .find(|b| b.trim_start().starts_with("curl "))
        .expect("a curl block in the Quickstart");
    let url = between(curl, "curl -i ", " ").to_string();
    let path = url
        .strip_prefix("http://localhost:8000")
        .expect("the curl goes to localhost:8000");
    let body = between(curl, "-d '", "'");
    let event: serde_json::Value = serde_json::from_str(body).expect("the curl body is JSON");
    let id = event["id"]
        .as_str()
        .expect("the README's event has an id")
        .to_string();
    let psql = blocks
        .iter()
        .find(|b| b.trim_start().starts_with("psql "))
        .expect("a psql block in the Quickstart");
    let query = between(psql, "-c \"", "\"").to_string();
    assert!(query.contains(&format!("'{id}'")), "{query}");
    assert!(
        blocks.iter().any(|b| b.trim() == ".ci/run"),
        "the Quickstart names the test command"
    );

    // A database that does not exist yet: `--dev` must create it.
    let db = TestDb::unborn();
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut child, rx, addr, seen) = spawn_dev(dir.path(), &db.url);
    let banner = seen.join("\n");
    assert!(
        banner.contains("DURABLE: every event answered 202 is on disk"),
        "{banner}"
    );
    assert!(!banner.contains("NOT DURABLE"), "{banner}");
    assert!(banner.contains("no Kafka"), "{banner}");
    assert!(!banner.contains("password"), "{banner}");

    let resp = reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("POST the README's event");
    assert_eq!(resp.status(), 202);
    let answer: serde_json::Value = resp.json().await.expect("envelope");
    assert_eq!(answer["response"]["accepted"], id.as_str(), "{answer}");

    // The README's own query finds the row once the sink stored it.
    let until = Instant::now() + Duration::from_secs(60);
    let row = loop {
        if let Ok(pool) = sqlx::PgPool::connect(&db.url).await {
            let found: Result<Option<(String, String, String, String)>, _> =
                sqlx::query_as(&format!(
                    "SELECT id, actor_id, action, outcome FROM ({query}) AS q",
                    query = query.replace("occurred_at, ", "")
                ))
                .fetch_optional(&pool)
                .await;
            pool.close().await;
            if let Ok(Some(row)) = found {
                break row;
            }
        }
        assert!(
            Instant::now() < until,
            "the README's event is not in audit_events after 60 s: {:#?}",
            rx.try_iter().collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(row.0, id);
    assert_eq!(
        row.1,
        event["data"]["actor"]["id"].as_str().expect("actor id")
    );
    assert_eq!(row.2, event["data"]["action"].as_str().expect("action"));
    assert_eq!(row.3, "success");

    // Durable end to end: load, kill -9 mid-way, restart on the same ./data: every event
    // answered 202 is stored, once.
    let acked: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let base = format!("http://{addr}{}", common::BASE);
    let clients = common::spawn_batch_clients(&base, 0, 4, &acked, &stop);
    let pool = sqlx::PgPool::connect(&db.url).await.expect("connect");
    common::eventually(
        Duration::from_secs(60),
        "rows stored under load",
        || async { (common::count_rows(&pool).await > 200).then_some(()) },
    )
    .await;
    child.kill().expect("kill -9");
    let _ = child.wait();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        c.await.expect("client");
    }
    let acked: HashSet<String> = acked.lock().unwrap().iter().cloned().collect();
    assert!(acked.len() >= 200, "too little load: {}", acked.len());
    let (mut child, _rx, _addr, _) = spawn_dev(dir.path(), &db.url);
    // Every 202'd event stored after kill -9 and restart, none twice.
    common::every_acked_stored_once(&pool, &acked, Duration::from_secs(60)).await;
    pool.close().await;

    // SIGTERM drains and exits 0.
    // SAFETY: plain kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let until = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < until, "no exit within 30 s of SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status}");
}

/// `serve --dev` started in `dir` (its `./data`) against `db_url`: the child, its stderr lines
/// still to come, its address and the lines up to the one naming it (the banner first).
fn spawn_dev(
    dir: &std::path::Path,
    db_url: &str,
) -> (
    std::process::Child,
    mpsc::Receiver<String>,
    String,
    Vec<String>,
) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_audit-manager"))
        .args(["serve", "--dev"])
        .current_dir(dir)
        .env("AUDIT_MANAGER__DATABASE__URL", db_url)
        .env("AUDIT_MANAGER__HTTP__LISTEN", "127.0.0.1:0")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .env_remove("CONFIG_PATH")
        .env_remove("DATABASE_URL")
        .env_remove("AUDIT_MANAGER__KAFKA__BOOTSTRAP_SERVERS")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn audit-manager serve --dev");
    let (tx, rx) = mpsc::channel::<String>();
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // The banner comes first; the listening address comes in the log.
    let mut seen = Vec::new();
    let until = Instant::now() + Duration::from_secs(60);
    let addr = loop {
        let line = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(l) => l,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                assert!(
                    child.try_wait().expect("wait").is_none(),
                    "exited: {seen:#?}"
                );
                assert!(Instant::now() < until, "no listening address: {seen:#?}");
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("stderr closed: {seen:#?}"),
        };
        seen.push(line.clone());
        let Ok(log) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if log["message"] == "audit-manager listening" {
            break log["addr"].as_str().expect("addr").to_string();
        }
    };
    (child, rx, addr, seen)
}

/// `serve --dev` with nothing listening at `database.url` stops at once and says what to run.
#[test]
fn dev_without_postgresql_says_what_to_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let out = Command::new(env!("CARGO_BIN_EXE_audit-manager"))
        .args(["serve", "--dev"])
        .current_dir(dir.path())
        .env(
            "AUDIT_MANAGER__DATABASE__URL",
            format!("postgres://postgres@127.0.0.1:{port}/auditmanager"),
        )
        .env("AUDIT_MANAGER__HTTP__LISTEN", "127.0.0.1:0")
        .env_remove("CONFIG_PATH")
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .output()
        .expect("run serve --dev");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("no PostgreSQL answers at postgres://postgres@127.0.0.1:"),
        "{stderr}"
    );
    assert!(
        stderr.contains("sudo apt-get install -y postgresql"),
        "{stderr}"
    );
    assert!(stderr.contains("docker run"), "{stderr}");
}
