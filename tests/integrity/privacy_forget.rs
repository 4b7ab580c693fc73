//! Forgetting a data subject against a sealed trail (docs/privacy.md, "Forgetting a person"):
//! SIGKILL at each step of `privacy forget` never leaves a key deleted without its event, a
//! rerun completes it with one event, the subject's values are unreadable under every key that
//! is left, other subjects' values still decrypt, and `verify` stays clean.

use crate::common;

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use audit_manager::privacy::envelope::Keeper;
use audit_manager::privacy::subject_keys::{self, SubjectKey};
use common::{ChildServer, TestDb, TestKafka, eventually};
use rand::Rng as _;
use serde_json::{Value, json};
use sqlx::Row as _;

const FORGOTTEN: &str = "org.openg2p.auditmanager.subject.forgotten";
const STEPS: [&str; 4] = [
    "before-event",
    "after-event",
    "before-delete",
    "after-delete",
];

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::write(p.join("hmac"), rand::rng().random::<[u8; 32]>()).unwrap();
        for args in [
            vec![
                "privacy",
                "keygen",
                "--out",
                p.join("keeper").to_str().unwrap(),
            ],
            vec!["keygen", "--out", p.join("signer").to_str().unwrap()],
        ] {
            let (code, out, err) = common::run_cli(&args, &[]);
            assert_eq!(code, 0, "{out}{err}");
        }
        std::fs::create_dir(p.join("seals")).unwrap();
        Setup { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// One config for the agent and the CLI.
    fn config(&self, kafka: &TestKafka, db: &TestDb) -> PathBuf {
        self.config_with(kafka, db, "hmac", &[])
    }

    /// [`Setup::config`] with HMAC key `current` and older generations `previous`.
    fn config_with(
        &self,
        kafka: &TestKafka,
        db: &TestDb,
        current: &str,
        previous: &[&str],
    ) -> PathBuf {
        let previous: Vec<PathBuf> = previous.iter().map(|p| self.path(p)).collect();
        let yaml = format!(
            r#"audit_manager:
  roles: [ingest, forward, sink, maintain]
  kafka:
    bootstrap_servers: {bootstrap:?}
    consumer:
      session.timeout.ms: "6000"
      heartbeat.interval.ms: "500"
  sink:
    flush_interval: 50ms
  database:
    url: {db:?}
  integrity:
    signing_key_file: {signer:?}
    public_key_files: [{signer_pub:?}]
    seal_interval: 200ms
    seal_topic: ""
    seal_dir: {seals:?}
  privacy:
    hmac_key_file: {hmac:?}
    hmac_previous_key_files: {previous:?}
    keeper_key_file: {keeper:?}
    rules:
      - name: actor-name
        select: "$.data.actor.name"
        action: pseudonymise
      - name: national-id
        select: "$.data.changes[?@.field=='national_id']['old','new']"
        action: encrypt
        subject: "$.data.resource.id"
"#,
            bootstrap = kafka.bootstrap,
            db = db.url,
            signer = self.path("signer"),
            signer_pub = self.path("signer.pub"),
            seals = self.path("seals"),
            hmac = self.path(current),
            previous = previous,
            keeper = self.path("keeper"),
        );
        let path = self.path(&format!("config-{current}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        path
    }
}

fn event(id: &str, person: &str) -> Value {
    json!({
        "specversion": "1.0", "id": id, "source": "urn:openg2p:registry",
        "type": "org.openg2p.beneficiary.updated",
        "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": {
            "actor": {"type": "user", "id": "officer-1", "name": "Officer Njeri"},
            "action": "beneficiary.update", "outcome": "success",
            "resource": {"type": "person", "id": person},
            "changes": [{"field": "national_id", "old": format!("NID-{person}"), "new": "x"}]
        }
    })
}

/// Every subject key still in the table, unwrapped.
async fn remaining_keys(pool: &sqlx::PgPool, keeper: &Keeper) -> Vec<SubjectKey> {
    sqlx::query("SELECT key_id, wrapped_key FROM audit_subject_keys WHERE wrapped_key IS NOT NULL")
        .fetch_all(pool)
        .await
        .unwrap()
        .iter()
        .map(|r| SubjectKey {
            id: r.get(0),
            secret: keeper.unwrap(&r.get::<String, _>(1)).unwrap(),
        })
        .collect()
}

/// The stored ciphertext of `changes[0].old` of event `id`.
async fn ciphertext(pool: &sqlx::PgPool, id: &str) -> String {
    let details: Value = sqlx::query_scalar("SELECT details FROM audit_events WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap();
    details["changes"][0]["old"].as_str().unwrap().to_owned()
}

/// Whether any of `keys` opens the value stored at `changes[0].old` of event `id`.
fn opens(keys: &[SubjectKey], stored: &str, id: &str) -> Option<Value> {
    let (_, body) = subject_keys::parse(stored)?;
    keys.iter()
        .find_map(|k| subject_keys::decrypt(k, &body, id, "/data/changes/0/old").ok())
}

async fn forget_events(pool: &sqlx::PgPool, pseudonym: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE type = $1 AND subject = $2")
        .bind(FORGOTTEN)
        .bind(pseudonym)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn live_keys(pool: &sqlx::PgPool, pseudonym: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM audit_subject_keys WHERE pseudonym = $1 AND wrapped_key IS NOT NULL",
    )
    .bind(pseudonym)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Runs `privacy forget` until it reports pausing at `step`, then SIGKILLs it.
fn forget_killed_at(config: &Path, subject: &str, step: &str) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_audit-manager"))
        .args(["--config", config.to_str().unwrap(), "privacy", "forget"])
        .args(["--subject", subject, "--reason", "erasure request"])
        .env("AUDIT_MANAGER_FORGET_PAUSE_AT", step)
        .env_remove("CONFIG_PATH")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            eprintln!("[forget] {line}");
            let _ = tx.send(line);
        }
    });
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let line = rx
            .recv_timeout(until.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("forget did not reach {step}"));
        if line.contains(&format!("forget paused at {step}")) {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_survives_sigkill_at_every_step_and_verify_stays_clean() {
    let setup = Setup::new();
    let kafka = TestKafka::new(3);
    let db = TestDb::new().await;
    let config = setup.config(&kafka, &db);
    let mut agent = ChildServer::spawn_with_config(
        &config,
        &setup.path("spool"),
        &[("AUDIT_MANAGER__ROLES", "ingest,forward,sink,maintain")],
    );
    agent.wait_ready(Duration::from_secs(30)).await;
    let client = reqwest::Client::new();
    let base = format!("http://{}{}", agent.addr, common::BASE);
    // One subject per step, and one that is never forgotten.
    let people: Vec<String> = (0..STEPS.len()).map(|i| format!("P-{i}")).collect();
    for (i, person) in people
        .iter()
        .chain(["P-keep".to_string()].iter())
        .enumerate()
    {
        for n in 0..2 {
            let r = client
                .post(format!("{base}/events"))
                .json(&event(&format!("ev-{i}-{n}"), person))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 202);
        }
    }
    let pool = db.pool().await;
    eventually(Duration::from_secs(60), "10 rows", || async {
        (common::count_rows(&pool).await == 10).then_some(())
    })
    .await;
    let keeper = Keeper::load(&setup.path("keeper")).unwrap();
    let keys = remaining_keys(&pool, &keeper).await;
    assert_eq!(keys.len(), 5, "one key per subject");
    for i in 0..5 {
        let id = format!("ev-{i}-0");
        assert!(opens(&keys, &ciphertext(&pool, &id).await, &id).is_some());
    }
    let hash = |v: &str| {
        let (code, out, err) = common::run_cli(
            &["--config", config.to_str().unwrap(), "privacy", "hash", v],
            &[],
        );
        assert_eq!(code, 0, "{err}");
        out.lines().next().unwrap().to_owned()
    };
    for (person, step) in people.iter().zip(STEPS) {
        let pseudonym = hash(person);
        forget_killed_at(&config, person, step);
        // Never a key deleted without its event.
        if live_keys(&pool, &pseudonym).await == 0 {
            assert_eq!(forget_events(&pool, &pseudonym).await, 1, "{step}");
        }
        let (code, out, err) = common::run_cli(
            &[
                "--config",
                config.to_str().unwrap(),
                "privacy",
                "forget",
                "--subject",
                person,
                "--reason",
                "erasure request",
            ],
            &[],
        );
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("stored rows now unreadable:"), "{out}");
        assert!(
            out.contains("Kafka topic"),
            "the report names what may hold copies: {out}"
        );
        assert_eq!(live_keys(&pool, &pseudonym).await, 0, "{step}");
        assert_eq!(
            forget_events(&pool, &pseudonym).await,
            1,
            "one event ({step})"
        );
    }
    // The forgotten subjects' values open under no key that is left; the others' still do.
    let keys = remaining_keys(&pool, &keeper).await;
    assert_eq!(keys.len(), 1);
    for i in 0..STEPS.len() {
        for n in 0..2 {
            let id = format!("ev-{i}-{n}");
            assert_eq!(opens(&keys, &ciphertext(&pool, &id).await, &id), None);
        }
    }
    let id = format!("ev-{}-0", STEPS.len());
    assert_eq!(
        opens(&keys, &ciphertext(&pool, &id).await, &id),
        Some(json!("NID-P-keep"))
    );
    // The forget events are stored and sealed; verify is clean.
    eventually(
        Duration::from_secs(30),
        "the forget events sealed",
        || async {
            let sealed: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM audit_events
             WHERE type = $1 AND seal_seq <= (SELECT max(hi_seq) FROM audit_seals)",
            )
            .bind(FORGOTTEN)
            .fetch_one(&pool)
            .await
            .unwrap();
            (sealed == STEPS.len() as i64).then_some(())
        },
    )
    .await;
    let (code, out, err) = common::run_cli(&["--config", config.to_str().unwrap(), "verify"], &[]);
    assert_eq!(code, 0, "verify after forget: {out}{err}");
    agent.terminate();
    agent.wait_exit(Duration::from_secs(30)).await;
}

/// After an HMAC key rotation (the old key kept in `hmac_previous_key_files`), `privacy hash`
/// gives the pseudonym under both keys, each finds the rows stored under it, and `verify`
/// reports nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_key_rotation_old_pseudonyms_are_still_found_and_verify_is_clean() {
    let setup = Setup::new();
    std::fs::write(setup.path("hmac2"), rand::rng().random::<[u8; 32]>()).unwrap();
    let kafka = TestKafka::new(3);
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let client = reqwest::Client::new();
    let before = setup.config_with(&kafka, &db, "hmac", &[]);
    let after = setup.config_with(&kafka, &db, "hmac2", &["hmac"]);
    for (round, config) in [&before, &after].into_iter().enumerate() {
        let mut agent = ChildServer::spawn_with_config(
            config,
            &setup.path("spool"),
            &[("AUDIT_MANAGER__ROLES", "ingest,forward,sink,maintain")],
        );
        agent.wait_ready(Duration::from_secs(30)).await;
        let base = format!("http://{}{}", agent.addr, common::BASE);
        let r = client
            .post(format!("{base}/events"))
            .json(&event(&format!("rot-{round}"), "P-rot"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 202);
        eventually(Duration::from_secs(60), "the event stored", || async {
            (common::count_rows(&pool).await == round as i64 + 1).then_some(())
        })
        .await;
        agent.terminate();
        agent.wait_exit(Duration::from_secs(30)).await;
    }
    let (code, out, err) = common::run_cli(
        &[
            "--config",
            after.to_str().unwrap(),
            "privacy",
            "hash",
            "Officer Njeri",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let pseudonyms: Vec<&str> = out.lines().collect();
    assert_eq!(pseudonyms.len(), 2, "{out}");
    for (p, id) in pseudonyms.iter().zip(["rot-1", "rot-0"]) {
        let found: Vec<String> =
            sqlx::query_scalar("SELECT id FROM audit_events WHERE details->'actor'->>'name' = $1")
                .bind(p)
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(found, vec![id.to_string()], "{p}");
    }
    // Seal what was stored (a maintain role alone), then verify.
    let mut sealer = ChildServer::spawn_with_config(
        &after,
        &setup.path("spool-sealer"),
        &[("AUDIT_MANAGER__ROLES", "maintain")],
    );
    eventually(Duration::from_secs(30), "both rows sealed", || async {
        let sealed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM audit_events
             WHERE seal_seq <= (SELECT max(hi_seq) FROM audit_seals)",
        )
        .fetch_one(&pool)
        .await
        .ok()?;
        (sealed == 2).then_some(())
    })
    .await;
    sealer.terminate();
    sealer.wait_exit(Duration::from_secs(30)).await;
    for config in [&before, &after] {
        let (code, out, err) =
            common::run_cli(&["--config", config.to_str().unwrap(), "verify"], &[]);
        assert_eq!(code, 0, "verify across the rotation: {out}{err}");
    }
}
