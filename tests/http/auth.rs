//! Authentication with bearer tokens (`auth.mode: token`): who may call what, what gets
//! stored, the recorded `authtype`/`authid`, and reloading the tokens file while running.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use audit_manager::config::{AuthMode, Config, Role};
use audit_manager::serve::StartOptions;
use common::kafka::{TopicTail, fast_settings};
use common::{BASE, TestApp, TestDb, TestKafka, code, event, eventually, read, run_cli};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const EMITTER_TOKEN: &str = "emitter-token-0123456789abcdef";
const READER_TOKEN: &str = "reader-token-0123456789abcdef";
const WAIT: Duration = Duration::from_secs(20);

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A principals file: `registry` (emitter of `/registry/*`) and `investigator` (reader).
fn principals() -> String {
    format!(
        "principals:\n  - name: registry\n    role: emitter\n    token_sha256: \"{}\"\n    \
         sources: [\"/registry/*\"]\n  - name: investigator\n    role: reader\n    \
         token_sha256: \"{}\"\n",
        hash(EMITTER_TOKEN),
        hash(READER_TOKEN)
    )
}

fn write_tokens(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("tokens.yaml");
    // Written beside and renamed, as a Secret volume update is: never read half-written.
    let tmp = dir.join("tokens.yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &p).unwrap();
    p
}

fn token_mode(c: &mut Config, tokens: PathBuf) {
    c.auth.mode = AuthMode::Token;
    c.auth.tokens_file = Some(tokens);
}

async fn start_token_app(tokens_dir: &Path) -> TestApp {
    let tokens = write_tokens(tokens_dir, &principals());
    TestApp::start_with(|c| token_mode(c, tokens), StartOptions::default()).await
}

fn registry_event(id: &str, source: &str) -> Value {
    let mut e = event(id);
    e["source"] = json!(source);
    e
}

async fn post(app: &TestApp, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
    let mut req = app
        .client
        .post(app.url(path))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    read(req.send().await.expect("request")).await
}

async fn get(app: &TestApp, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = app.client.get(app.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    read(req.send().await.expect("request")).await
}

/// The spool's live events as `spool export` prints them (the service must be stopped).
fn exported(spool_dir: &Path) -> Vec<Value> {
    let dir = spool_dir.to_string_lossy();
    let (rc, stdout, stderr) = run_cli(
        &["spool", "export"],
        &[("AUDIT_MANAGER__SPOOL__PATH", dir.as_ref())],
    );
    assert_eq!(rc, 0, "spool export failed: {stderr}");
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("export line is JSON"))
        .collect()
}

/// The value of the sample of `name` whose labels contain every one of `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn missing_wrong_and_reader_tokens_are_refused_and_nothing_is_spooled() {
    let tokens = tempfile::tempdir().unwrap();
    let app = start_token_app(tokens.path()).await;
    let ev = registry_event("e-1", "/registry/beneficiaries");
    let batch = json!({ "events": [ev.clone()] });
    // The metrics are the process's: other tests of this binary count their refusals in the
    // same `principal="unknown"` series while this one runs, so this test counts its own as
    // an increase of at least as many.
    let unknown_401s = || async {
        let (_, metrics) = app.get_text("/metrics").await;
        metric(
            &metrics,
            "audit_auth_rejected_total",
            &["code=\"AUD-010\"", "principal=\"unknown\""],
        )
    };
    let before = unknown_401s().await;

    let resp = app
        .client
        .post(app.url("/events"))
        .header("content-type", "application/json")
        .body(ev.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer realm=\"audit-manager\""
    );
    let (status, body) = read(resp).await;
    assert_eq!((status, code(&body)), (401, "AUD-010"), "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("Authorization: Bearer"),
        "{body}"
    );

    let (status, body) = post(&app, "/events", Some("not-a-token"), &ev).await;
    assert_eq!((status, code(&body)), (401, "AUD-010"), "{body}");
    assert!(
        !body.to_string().contains("not-a-token"),
        "a token is never echoed: {body}"
    );
    let (status, body) = post(&app, "/events/batch", None, &batch).await;
    assert_eq!((status, code(&body)), (401, "AUD-010"), "{body}");
    // Two `Authorization` headers are refused whatever they hold: which one counts would be a
    // guess, and a proxy in front may have checked the other one.
    for (first, second) in [
        (EMITTER_TOKEN, EMITTER_TOKEN),
        (EMITTER_TOKEN, "not-a-token"),
        ("not-a-token", EMITTER_TOKEN),
    ] {
        let resp = app
            .client
            .post(app.url("/events"))
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {first}"))
            .header("authorization", format!("Bearer {second}"))
            .body(ev.to_string())
            .send()
            .await
            .unwrap();
        let (status, body) = read(resp).await;
        assert_eq!((status, code(&body)), (401, "AUD-010"), "{body}");
        let msg = body["errors"][0]["message"].as_str().unwrap();
        assert!(msg.contains("more than one Authorization header"), "{msg}");
    }

    for path in ["/events", "/events/batch"] {
        let payload = if path == "/events" { &ev } else { &batch };
        let (status, body) = post(&app, path, Some(READER_TOKEN), payload).await;
        assert_eq!((status, code(&body)), (403, "AUD-011"), "{path}: {body}");
        assert!(
            body["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("\"investigator\" is a reader"),
            "{body}"
        );
    }
    assert_eq!(
        app.spool_events().await,
        0,
        "nothing of a refused request is spooled"
    );

    // The probes, metrics and documentation stay open.
    for path in [
        "/health",
        "/ready",
        "/version",
        "/metrics",
        "/openapi.json",
        "/docs",
        "/redoc",
        "/docs/assets/swagger-ui.css",
    ] {
        let resp = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{path} without a token");
    }
    let after = unknown_401s().await;
    assert!(after - before >= 6.0, "AUD-010 counted: {before} → {after}");
    let (_, metrics) = app.get_text("/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "audit_auth_rejected_total",
            &["code=\"AUD-011\"", "principal=\"investigator\""]
        ),
        2.0
    );

    // The emitter's own token works.
    let (status, body) = post(&app, "/events", Some(EMITTER_TOKEN), &ev).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(app.spool_events().await, 1);
}

#[tokio::test]
async fn an_emitter_may_use_only_its_sources_and_a_mixed_batch_stores_nothing() {
    let tokens = tempfile::tempdir().unwrap();
    let app = start_token_app(tokens.path()).await;

    let (status, body) = post(
        &app,
        "/events",
        Some(EMITTER_TOKEN),
        &registry_event("p-1", "/payments"),
    )
    .await;
    assert_eq!((status, code(&body)), (403, "AUD-011"), "{body}");
    let msg = body["errors"][0]["message"].as_str().unwrap();
    assert!(
        msg.contains("\"registry\"")
            && msg.contains("\"/payments\"")
            && msg.contains("/registry/*"),
        "names the principal, the source and what it may use: {msg}"
    );

    let mixed = json!({ "events": [
        registry_event("m-1", "/registry/a"),
        registry_event("m-2", "/payments"),
        registry_event("m-3", "/registry/b"),
    ]});
    let (status, body) = post(&app, "/events/batch", Some(EMITTER_TOKEN), &mixed).await;
    assert_eq!((status, code(&body)), (403, "AUD-011"), "{body}");
    // An invalid event does not hide the forbidden source: authorization comes first.
    let mut invalid_and_forbidden = registry_event("m-4", "/payments");
    invalid_and_forbidden["data"] = json!("not an object");
    let (status, body) = post(
        &app,
        "/events/batch",
        Some(EMITTER_TOKEN),
        &json!({ "events": [invalid_and_forbidden] }),
    )
    .await;
    assert_eq!((status, code(&body)), (403, "AUD-011"), "{body}");

    // Binary mode: the source comes from `ce-source`.
    let resp = app
        .client
        .post(app.url("/events"))
        .bearer_auth(EMITTER_TOKEN)
        .header("ce-specversion", "1.0")
        .header("ce-id", "b-1")
        .header("ce-source", "/payments")
        .header("ce-type", "org.openg2p.payment.made")
        .header("content-type", "application/json")
        .body(json!({"actor": {"id": "u"}, "action": "pay", "outcome": "success"}).to_string())
        .send()
        .await
        .unwrap();
    let (status, body) = read(resp).await;
    assert_eq!((status, code(&body)), (403, "AUD-011"), "{body}");
    assert_eq!(
        app.spool_events().await,
        0,
        "nothing of a refused request is spooled"
    );

    let allowed = json!({ "events": [
        registry_event("a-1", "/registry/a"),
        registry_event("a-2", "/registry/b/c"),
    ]});
    let (status, body) = post(&app, "/events/batch", Some(EMITTER_TOKEN), &allowed).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(app.spool_events().await, 2);
}

#[tokio::test]
async fn config_needs_a_reader() {
    let tokens = tempfile::tempdir().unwrap();
    let app = start_token_app(tokens.path()).await;
    let (status, body) = get(&app, "/config", None).await;
    assert_eq!((status, code(&body)), (401, "AUD-010"), "{body}");
    let (status, body) = get(&app, "/config", Some(EMITTER_TOKEN)).await;
    assert_eq!((status, code(&body)), (403, "AUD-012"), "{body}");
    let (status, body) = get(&app, "/config", Some(READER_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["response"]["auth"]["mode"], "token");
    // The seals are read by auditors: readers only (this process has no database: 503 after).
    for path in ["/seals", "/seals/keys"] {
        let (status, body) = get(&app, path, None).await;
        assert_eq!((status, code(&body)), (401, "AUD-010"), "{path}: {body}");
        let (status, body) = get(&app, path, Some(EMITTER_TOKEN)).await;
        assert_eq!((status, code(&body)), (403, "AUD-012"), "{path}: {body}");
        let (status, body) = get(&app, path, Some(READER_TOKEN)).await;
        assert_ne!(status, 401, "{path}: {body}");
        assert_ne!(status, 403, "{path}: {body}");
    }
    let (_, metrics) = app.get_text("/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "audit_auth_rejected_total",
            &["code=\"AUD-012\"", "principal=\"registry\""]
        ),
        3.0
    );
}

/// What an emitter claims about itself must not survive: the spooled event names the verified
/// principal, structured and binary mode alike.
#[tokio::test]
async fn the_spooled_authcontext_is_the_verified_principal() {
    let tokens = tempfile::tempdir().unwrap();
    let app = start_token_app(tokens.path()).await;
    let mut ev = registry_event("s-1", "/registry/a");
    ev["authtype"] = json!("user");
    ev["authid"] = json!("admin");
    let (status, body) = post(&app, "/events", Some(EMITTER_TOKEN), &ev).await;
    assert_eq!(status, 202, "{body}");
    let resp = app
        .client
        .post(app.url("/events"))
        .bearer_auth(EMITTER_TOKEN)
        .header("ce-specversion", "1.0")
        .header("ce-id", "s-2")
        .header("ce-source", "/registry/b")
        .header("ce-type", "org.openg2p.x")
        .header("ce-authtype", "user")
        .header("ce-authid", "admin")
        .header("content-type", "application/json")
        .body(json!({"actor": {"id": "u"}, "action": "a", "outcome": "success"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let dir = app.shutdown().await;
    let events = exported(&dir.path().join("spool"));
    assert_eq!(events.len(), 2);
    for e in &events {
        assert_eq!(
            (&e["authtype"], &e["authid"]),
            (&json!("api_key"), &json!("registry")),
            "{e}"
        );
    }
}

#[tokio::test]
async fn without_authentication_a_sent_authcontext_is_dropped() {
    let app = TestApp::start().await;
    let mut ev = registry_event("n-1", "/registry/a");
    ev["authtype"] = json!("api_key");
    ev["authid"] = json!("somebody");
    let (status, body) = app.post_json("/events", &ev).await;
    assert_eq!(status, 202, "{body}");
    let dir = app.shutdown().await;
    let events = exported(&dir.path().join("spool"));
    assert_eq!(events.len(), 1);
    assert!(
        events[0].get("authtype").is_none() && events[0].get("authid").is_none(),
        "{}",
        events[0]
    );
}

/// Through the whole pipeline: the Kafka record and the stored row carry the verified
/// principal, not what the emitter claimed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_and_the_row_record_the_verified_principal() {
    let kafka = TestKafka::new(1);
    let db = TestDb::new().await;
    let tokens = tempfile::tempdir().unwrap();
    let tokens = write_tokens(tokens.path(), &principals());
    let base = common::sink_config(&kafka, &db.url, &[Role::Ingest, Role::Forward, Role::Sink]);
    let opts = StartOptions {
        forward: Some(fast_settings()),
        ..StartOptions::default()
    };
    let app = TestApp::start_with(
        move |c| {
            let spool = c.spool.path.clone();
            *c = base;
            c.spool.path = spool;
            token_mode(c, tokens);
        },
        opts,
    )
    .await;
    let tail = TopicTail::start(&kafka.bootstrap, common::TOPIC);
    let mut ev = registry_event("k-1", "/registry/a");
    ev["authtype"] = json!("user");
    ev["authid"] = json!("admin");
    let (status, body) = post(&app, "/events", Some(EMITTER_TOKEN), &ev).await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = post(
        &app,
        "/events/batch",
        Some(EMITTER_TOKEN),
        &json!({ "events": [registry_event("k-2", "/registry/b")] }),
    )
    .await;
    assert_eq!(status, 202, "{body}");

    let records = tail
        .wait_for(WAIT, "both events in Kafka", |m| m.len() >= 2)
        .await;
    for r in &records {
        assert_eq!(r.value["authtype"], "api_key", "{}", r.value);
        assert_eq!(r.value["authid"], "registry", "{}", r.value);
    }
    let pool = db.pool().await;
    let rows: Vec<(String, Option<String>, Option<String>)> = eventually(WAIT, "2 rows", || {
        let pool = pool.clone();
        async move {
            let rows: Vec<(String, Option<String>, Option<String>)> =
                sqlx::query_as("SELECT id, auth_type, auth_id FROM audit_events ORDER BY id")
                    .fetch_all(&pool)
                    .await
                    .ok()?;
            (rows.len() == 2).then_some(rows)
        }
    })
    .await;
    for (id, auth_type, auth_id) in rows {
        assert_eq!(auth_type.as_deref(), Some("api_key"), "{id}");
        assert_eq!(auth_id.as_deref(), Some("registry"), "{id}");
    }
}

/// Tokens added to and removed from the file take effect while the service runs; a broken
/// file keeps the last good tokens and shows in `/health` until it is fixed.
#[tokio::test]
async fn the_tokens_file_is_reloaded_without_restart() {
    let tokens = tempfile::tempdir().unwrap();
    let app = start_token_app(tokens.path()).await;
    let ev = registry_event("r-1", "/registry/a");
    assert_eq!(post(&app, "/events", Some(EMITTER_TOKEN), &ev).await.0, 202);

    let new_token = "rotated-token-fedcba9876543210";
    write_tokens(
        tokens.path(),
        &format!(
            "principals:\n  - name: registry\n    role: emitter\n    token_sha256: \"{}\"\n    \
             sources: [\"/registry/*\"]\n",
            hash(new_token)
        ),
    );
    eventually(WAIT, "the new token to be accepted", || async {
        (post(&app, "/events", Some(new_token), &ev).await.0 == 202).then_some(())
    })
    .await;
    let (status, body) = post(&app, "/events", Some(EMITTER_TOKEN), &ev).await;
    assert_eq!(
        (status, code(&body)),
        (401, "AUD-010"),
        "the removed token: {body}"
    );
    let (status, _) = get(&app, "/config", Some(READER_TOKEN)).await;
    assert_eq!(status, 401, "the removed reader");
    assert_eq!(app.role_health("ingest").await["status"], "UP");

    // A broken file: the last good tokens stay, /health says what is wrong.
    write_tokens(
        tokens.path(),
        "principals:\n  - name: registry\n    role: admin\n",
    );
    let ingest = eventually(WAIT, "ingest to report the broken file", || async {
        let h = app.role_health("ingest").await;
        (h["status"] == "DEGRADED").then_some(h)
    })
    .await;
    let reason = ingest["reason"].as_str().unwrap();
    assert!(
        reason.contains("tokens.yaml") && reason.contains("admin"),
        "names the file and the problem: {reason}"
    );
    assert_eq!(post(&app, "/events", Some(new_token), &ev).await.0, 202);

    write_tokens(tokens.path(), &principals());
    eventually(WAIT, "ingest UP once the file is fixed", || async {
        (app.role_health("ingest").await["status"] == "UP").then_some(())
    })
    .await;
    assert_eq!(post(&app, "/events", Some(EMITTER_TOKEN), &ev).await.0, 202);
    assert_eq!(post(&app, "/events", Some(new_token), &ev).await.0, 401);
}

#[tokio::test]
async fn a_broken_tokens_file_refuses_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = write_tokens(dir.path(), "principals:\n  - name: a\n    role: reader\n");
    let mut config = Config {
        roles: vec![Role::Ingest],
        ..Config::default()
    };
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.spool.path = dir.path().join("spool");
    token_mode(&mut config, tokens);
    let e = audit_manager::serve::start(
        config,
        tokio_util::sync::CancellationToken::new(),
        StartOptions::default(),
    )
    .await
    .err()
    .expect("refused");
    let e = format!("{e:#}");
    assert!(
        e.contains("tokens.yaml") && e.contains("needs token_sha256"),
        "{e}"
    );
}

/// `audit-manager token hash` prints the line to paste, and a token hashed that way works.
#[tokio::test]
async fn token_hash_prints_the_line_for_the_tokens_file() {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let hash_of = |input: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_audit-manager"))
            .args(["token", "hash"])
            .env_remove("CONFIG_PATH")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let token = "c0ffee0123456789c0ffee0123456789";
    let (rc, line, _) = hash_of(&format!("{token}\n"));
    assert_eq!(rc, Some(0));
    assert_eq!(line.trim(), format!("token_sha256: \"{}\"", hash(token)));
    let (rc, out, err) = hash_of("\n");
    assert_eq!(rc, Some(2), "an empty token is refused: {out}");
    assert!(err.contains("no token"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let tokens = write_tokens(
        dir.path(),
        &format!(
            "principals:\n  - name: registry\n    role: emitter\n    {}\n    sources: [\"*\"]\n",
            line.trim()
        ),
    );
    let app = TestApp::start_with(|c| token_mode(c, tokens), StartOptions::default()).await;
    let resp = app
        .client
        .post(format!("http://{}{BASE}/events", app.addr))
        .bearer_auth(token)
        .json(&event("h-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
}

#[tokio::test]
async fn token_new_prints_a_fresh_token_and_its_line() {
    let (rc, token, line) = run_cli(&["token", "new"], &[]);
    assert_eq!(rc, 0, "{line}");
    let token = token.trim();
    assert_eq!(token.len(), 64, "{token}");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(
        line.contains(&format!("token_sha256: \"{}\"", hash(token))),
        "{line}"
    );
    let (_, other, _) = run_cli(&["token", "new"], &[]);
    assert_ne!(other.trim(), token, "a new token every time");
}

/// `auth.mode: none` on an address beyond loopback says so at startup; on loopback it does not.
#[tokio::test]
async fn no_authentication_beyond_loopback_is_warned_about() {
    let warning = "auth.mode is none and the listener is reachable beyond this host";
    let dir = tempfile::tempdir().unwrap();
    let open = common::ChildServer::spawn(
        &dir.path().join("a"),
        &[("AUDIT_MANAGER__HTTP__LISTEN", "0.0.0.0:0")],
    );
    assert!(
        open.log().iter().any(|l| l.contains(warning)),
        "{:#?}",
        open.log()
    );
    let local = common::ChildServer::spawn(&dir.path().join("b"), &[]);
    assert!(
        !local.log().iter().any(|l| l.contains(warning)),
        "{:#?}",
        local.log()
    );
    let tokens = write_tokens(dir.path(), &principals());
    let secured = common::ChildServer::spawn(
        &dir.path().join("c"),
        &[
            ("AUDIT_MANAGER__HTTP__LISTEN", "0.0.0.0:0"),
            ("AUDIT_MANAGER__AUTH__MODE", "token"),
            ("AUDIT_MANAGER__AUTH__TOKENS_FILE", tokens.to_str().unwrap()),
        ],
    );
    assert!(
        !secured.log().iter().any(|l| l.contains(warning)),
        "{:#?}",
        secured.log()
    );
}

/// Neither a valid nor a wrong token appears in the log, even at debug level.
#[tokio::test]
async fn tokens_are_never_logged() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = write_tokens(dir.path(), &principals());
    let mut server = common::ChildServer::spawn(
        &dir.path().join("spool"),
        &[
            ("AUDIT_MANAGER__AUTH__MODE", "token"),
            ("AUDIT_MANAGER__AUTH__TOKENS_FILE", tokens.to_str().unwrap()),
            ("RUST_LOG", "debug"),
        ],
    );
    server.wait_ready(WAIT).await;
    let client = reqwest::Client::new();
    let url = format!("http://{}{BASE}/events", server.addr);
    let wrong = "wrong-token-that-must-not-be-logged";
    for (token, want) in [(EMITTER_TOKEN, 202), (wrong, 401)] {
        let resp = client
            .post(&url)
            .bearer_auth(token)
            .json(&registry_event("l-1", "/registry/a"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), want);
    }
    server.terminate();
    server.wait_exit(WAIT).await;
    // The last line the process writes: everything before it has been read.
    let log = eventually(WAIT, "the child's whole log", || async {
        let log = server.log().join("\n");
        log.contains("drained").then_some(log)
    })
    .await;
    for secret in [EMITTER_TOKEN, wrong] {
        assert!(!log.contains(secret), "a token in the log:\n{log}");
    }
}

/// The OpenAPI document says which operations take credentials and what refusals look like.
#[tokio::test]
async fn the_openapi_document_describes_authentication() {
    let app = TestApp::start().await;
    let (status, doc) = app.get("/openapi.json").await;
    assert_eq!(status, 200);
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["scheme"], "bearer", "{schemes}");
    assert_eq!(schemes["mutualTLS"]["type"], "mutualTLS", "{schemes}");
    for (path, method, forbidden) in [
        ("/events", "post", "AUD-011"),
        ("/events/batch", "post", "AUD-011"),
        ("/config", "get", "AUD-012"),
    ] {
        let op = &doc["paths"][format!("{BASE}{path}")][method];
        let security = op["security"].to_string();
        assert!(
            security.contains("bearer") && security.contains("mutualTLS"),
            "{path}: {security}"
        );
        let responses = &op["responses"];
        assert!(
            responses["401"]["description"]
                .as_str()
                .unwrap_or("")
                .contains("AUD-010"),
            "{path}: {responses}"
        );
        assert!(
            responses["403"]["description"]
                .as_str()
                .unwrap_or("")
                .contains(forbidden),
            "{path}: {responses}"
        );
    }
    let health = &doc["paths"][format!("{BASE}/health")]["get"];
    assert!(
        health.get("security").is_none(),
        "probes need no credentials"
    );
}
