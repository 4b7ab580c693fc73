//! What readers see of personal data (docs/privacy.md, "Reading"): a reader without `pii`
//! never receives plaintext (pages, lookups, NDJSON and CSV exports), one with `pii` does and
//! its read is recorded as revealing it, everyone sees `[erased]` after `forget`, and
//! `/pseudonym` answers readers only, without recording the value.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use audit_manager::config::{AuthMode, Config, Role};
use common::{TestApp, TestDb, TestKafka, eventually};
use rand::Rng as _;
use serde_json::{Value, json};

const NID_1: &str = "NIDSECRET-ONE-7731";
const NID_2: &str = "NIDSECRET-TWO-8842";
const NAME: &str = "Wanjiku Secretname";

pub fn keys(dir: &Path) {
    std::fs::write(dir.join("hmac"), rand::rng().random::<[u8; 32]>()).unwrap();
    let (code, out, err) = common::run_cli(
        &[
            "privacy",
            "keygen",
            "--out",
            dir.join("keeper").to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
}

fn privacy_yaml(dir: &Path) -> String {
    format!(
        r#"  privacy:
    hmac_key_file: {:?}
    keeper_key_file: {:?}
    rules:
      - name: national-id
        select: "$.data.changes[?@.field=='national_id']['old','new']"
        action: encrypt
        subject: "$.data.resource.id"
      - name: actor-name
        select: "$.data.actor.name"
        action: pseudonymise
"#,
        dir.join("hmac"),
        dir.join("keeper")
    )
}

pub fn apply_privacy(c: &mut Config, dir: &Path) {
    let parsed =
        Config::from_yaml_str(&format!("audit_manager:\n{}", privacy_yaml(dir)), &[]).unwrap();
    c.privacy = parsed.privacy;
}

pub fn event(id: &str, person: &str, nid: &str) -> Value {
    json!({
        "specversion": "1.0", "id": id, "source": "urn:openg2p:registry",
        "type": "org.openg2p.beneficiary.updated",
        "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": {
            "actor": {"type": "user", "id": "officer-1", "name": NAME},
            "action": "beneficiary.update", "outcome": "success",
            "resource": {"type": "person", "id": person},
            "changes": [{"field": "national_id", "old": nid, "new": "NID-NEW"}]
        }
    })
}

/// `privacy forget` through the CLI, against the same database and keys.
pub fn forget(dir: &Path, db_url: &str, subject: &str) {
    let config: PathBuf = dir.join("cli.yaml");
    std::fs::write(
        &config,
        format!(
            "audit_manager:\n  database:\n    url: {db_url:?}\n{}",
            privacy_yaml(dir)
        ),
    )
    .unwrap();
    let (code, out, err) = common::run_cli(
        &[
            "--config",
            config.to_str().unwrap(),
            "privacy",
            "forget",
            "--subject",
            subject,
            "--reason",
            "erasure request",
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_without_pii_never_receive_plaintext_and_forgotten_values_read_erased() {
    use sha2::{Digest, Sha256};
    let hash = |t: &str| hex::encode(Sha256::digest(t.as_bytes()));
    let dir = tempfile::tempdir().unwrap();
    keys(dir.path());
    let db = TestDb::new().await;
    let kafka = TestKafka::new(1);
    let tokens = dir.path().join("tokens.yaml");
    std::fs::write(
        &tokens,
        format!(
            "principals:\n\
             - name: registry\n  role: emitter\n  token_sha256: \"{}\"\n  sources: [\"urn:openg2p:*\"]\n\
             - name: plain\n  role: reader\n  token_sha256: \"{}\"\n\
             - name: investigator\n  role: reader\n  pii: true\n  token_sha256: \"{}\"\n\
             - name: dpo\n  role: privacy_officer\n  token_sha256: \"{}\"\n",
            hash("emit-token"),
            hash("plain-token"),
            hash("pii-token"),
            hash("dpo-token"),
        ),
    )
    .unwrap();
    let (url, keydir) = (db.url.clone(), dir.path().to_path_buf());
    let mut app = TestApp::with_kafka(&kafka.bootstrap.clone(), move |c| {
        c.roles = vec![Role::Ingest, Role::Forward, Role::Sink, Role::Query];
        c.database.url = url.into();
        c.auth.mode = AuthMode::Token;
        c.auth.tokens_file = Some(tokens);
        c.sink.flush_interval = Duration::from_millis(50);
        c.kafka
            .consumer
            .insert("session.timeout.ms".into(), "6000".into());
        apply_privacy(c, &keydir);
    })
    .await;
    for (id, person, nid) in [("r-1", "P-1", NID_1), ("r-2", "P-2", NID_2)] {
        let r = app
            .client
            .post(app.url("/events"))
            .bearer_auth("emit-token")
            .json(&event(id, person, nid))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 202);
    }
    let pool = db.pool().await;
    eventually(Duration::from_secs(60), "both events stored", || async {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE id IN ('r-1', 'r-2')")
                .fetch_one(&pool)
                .await
                .ok()?;
        (n == 2).then_some(())
    })
    .await;
    let get = |path: &str, token: &'static str, accept: &'static str| {
        let req = app
            .client
            .get(app.url(path))
            .bearer_auth(token)
            .header("accept", accept);
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let secrets = [NID_1, NID_2, NAME];
    // Without `pii`: pages, lookups and exports carry no plaintext, only `[encrypted]`.
    for (path, accept) in [
        (
            "/events?type=org.openg2p.beneficiary.updated",
            "application/json",
        ),
        ("/events/r-1", "application/json"),
        (
            "/events?type=org.openg2p.beneficiary.updated",
            "application/x-ndjson",
        ),
        ("/events?type=org.openg2p.beneficiary.updated", "text/csv"),
    ] {
        let (status, body) = get(path, "plain-token", accept).await;
        assert_eq!(status, 200, "{body}");
        for s in secrets {
            assert!(
                !body.contains(s),
                "{s} sent to a reader without pii ({path} {accept})"
            );
        }
        assert!(body.contains("[encrypted]"), "{path} {accept}: {body}");
    }
    // With `pii`: the plaintext, and the read says how many values it revealed (old and new).
    let (status, body) = get("/events/r-1", "pii-token", "application/json").await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["response"]["events"][0]["details"]["changes"][0]["old"], NID_1,
        "{body}"
    );
    assert!(
        !body.contains(NAME),
        "pseudonymised values are not reversible"
    );
    eventually(
        Duration::from_secs(30),
        "the revealing read recorded",
        || async {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM audit_events WHERE type = 'org.openg2p.auditmanager.query' \
             AND auth_id = 'investigator' \
             AND (details->'context'->>'personal_data_revealed')::int = 2",
            )
            .fetch_one(&pool)
            .await
            .ok()?;
            (n == 1).then_some(())
        },
    )
    .await;
    // `/pseudonym`: readers only; the value is not recorded.
    let (status, body) = get("/pseudonym?value=P-1", "plain-token", "application/json").await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let pseudonym = v["response"]["pseudonyms"][0].as_str().unwrap().to_owned();
    assert!(pseudonym.starts_with("hmac-sha256:"));
    let (status, _) = get("/pseudonym?value=P-1", "emit-token", "application/json").await;
    assert_eq!(status, 403);
    // Forget P-2 over the API (privacy officers only): `[erased]` for everyone, P-1 still
    // readable with `pii`.
    let forget_as = |token: &'static str| {
        let req = app
            .client
            .post(app.url("/privacy/forget"))
            .bearer_auth(token)
            .json(&json!({"subject": "P-2", "reason": "erasure request #1"}));
        async move { common::read(req.send().await.unwrap()).await }
    };
    let (status, body) = forget_as("pii-token").await;
    assert_eq!((status, common::code(&body)), (403, "AUD-012"), "{body}");
    let (status, body) = forget_as("dpo-token").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["response"]["keys_destroyed"], 1, "{body}");
    assert_eq!(body["response"]["rows_unreadable"], 1, "{body}");
    assert!(
        body["response"]["residue"][0]
            .as_str()
            .unwrap()
            .contains("Kafka")
    );
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE type = 'org.openg2p.auditmanager.subject.forgotten' \
         AND actor_id = 'dpo' AND reason = 'erasure request #1'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(n, 1, "the forget event names the officer and the reason");
    let body = eventually(Duration::from_secs(10), "[erased] after forget", || async {
        let (_, body) = get("/events/r-2", "pii-token", "application/json").await;
        body.contains("[erased]").then_some(body)
    })
    .await;
    assert!(!body.contains(NID_2));
    let (_, body) = get("/events/r-2", "plain-token", "application/json").await;
    assert!(body.contains("[erased]"), "{body}");
    let (_, body) = get("/events/r-1", "pii-token", "application/json").await;
    assert!(body.contains(NID_1), "other subjects still decrypt: {body}");
    // No stored read or pseudonym event holds a secret or the looked-up value.
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT details::text FROM audit_events WHERE details IS NOT NULL")
            .fetch_all(&pool)
            .await
            .unwrap();
    let all = stored.join("\n");
    for s in secrets {
        assert!(!all.contains(s), "{s} stored in the database");
    }
    eventually(
        Duration::from_secs(30),
        "the pseudonym lookup recorded",
        || async {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM audit_events WHERE action = 'audit.pseudonym'",
            )
            .fetch_one(&pool)
            .await
            .ok()?;
            (n >= 1).then_some(())
        },
    )
    .await;
    app.stop().await;
}

/// The investigators' page in Chromium (as `ui_browser.rs`): a reader without `pii` sees
/// `[encrypted]`, and `[erased]` once the subject is forgotten; never the plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_encrypted_and_erased_never_plaintext() {
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed: run `npm ci --prefix tests/browser` (and \
         `apt-get install chromium`), as .ci/run does"
    );
    let dir = tempfile::tempdir().unwrap();
    keys(dir.path());
    let db = TestDb::new().await;
    let kafka = TestKafka::new(1);
    let (url, keydir) = (db.url.clone(), dir.path().to_path_buf());
    let mut app = TestApp::with_kafka(&kafka.bootstrap.clone(), move |c| {
        c.roles = vec![Role::Ingest, Role::Forward, Role::Sink, Role::Query];
        c.database.url = url.into();
        c.query.allow_anonymous = true;
        c.sink.flush_interval = Duration::from_millis(50);
        c.kafka
            .consumer
            .insert("session.timeout.ms".into(), "6000".into());
        apply_privacy(c, &keydir);
    })
    .await;
    for (id, person, nid) in [("b-1", "P-1", NID_1), ("b-2", "P-2", NID_2)] {
        let (status, body) = app.post_json("/events", &event(id, person, nid)).await;
        assert_eq!(status, 202, "{body}");
    }
    let pool = db.pool().await;
    eventually(Duration::from_secs(60), "both events stored", || async {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE id IN ('b-1', 'b-2')")
                .fetch_one(&pool)
                .await
                .ok()?;
        (n == 2).then_some(())
    })
    .await;
    forget(dir.path(), &db.url, "P-2");
    let expect = json!({
        "encrypted": {"id": "b-1", "resource": "P-1"},
        "erased": {"id": "b-2", "resource": "P-2"},
        "secrets": [NID_1, NID_2, NAME],
    });
    let base = format!("http://{}", app.addr);
    // Readers re-check keys every second: let the forget be seen.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg("privacy.mjs")
            .arg(&base)
            .current_dir(&browser_dir)
            .env("EXPECT", expect.to_string())
            .output()
            .expect("node runs (install Node.js)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "browser test failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("as [erased]"), "{stdout}");
    app.stop().await;
}
