//! Personal data through the whole pipeline (docs/privacy.md, "Where personal data can be"):
//! with one rule of each action, no selected value reaches the spool file, the Kafka topic, the
//! DLQ, a `pg_dump` of the audit database or the process log — whichever ingest path carried
//! it (single, batch, binary mode).

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::kafka::TopicTail;
use common::{ChildServer, TestApp, TestDb, TestKafka, eventually};
use rand::Rng as _;
use serde_json::{Value, json};

/// Key files and a config file with one rule of each action (and a second `encrypt`).
pub struct Setup {
    pub dir: tempfile::TempDir,
}

impl Setup {
    pub fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::write(p.join("hmac"), rand::rng().random::<[u8; 32]>()).unwrap();
        let (code, out, err) = common::run_cli(
            &[
                "privacy",
                "keygen",
                "--out",
                p.join("keeper").to_str().unwrap(),
            ],
            &[],
        );
        assert_eq!(code, 0, "{out}{err}");
        Setup { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The `privacy:` section (YAML), with the keeper's private key when `writer`.
    pub fn privacy_yaml(&self, writer: bool) -> String {
        let keeper = if writer {
            format!("  keeper_key_file: {:?}\n", self.path("keeper"))
        } else {
            format!("  keeper_public_key_file: {:?}\n", self.path("keeper.pub"))
        };
        format!(
            r#"privacy:
  hmac_key_file: {hmac:?}
{keeper}  rules:
    - name: phone
      select: "$.data.changes[?@.field=='phone']['old','new']"
      action: drop
    - name: account
      select: "$.data.changes[?@.field=='bank_account']['old','new']"
      action: mask
      keep_last: 2
    - name: actor-name
      select: "$.data.actor.name"
      types: ["org.openg2p.*"]
      action: pseudonymise
    - name: national-id
      select: "$.data.changes[?@.field=='national_id']['old','new']"
      action: encrypt
      subject: "$.data.resource.id"
    - name: address
      select: "$.data.resource.address"
      action: encrypt
      subject: "$.data.resource.id"
"#,
            hmac = self.path("hmac"),
        )
    }

    /// Applies the `privacy:` section to an in-process config.
    pub fn apply(&self, c: &mut audit_manager::config::Config, writer: bool) {
        let yaml = format!(
            "audit_manager:\n{}",
            self.privacy_yaml(writer)
                .lines()
                .map(|l| format!("  {l}\n"))
                .collect::<String>()
        );
        let parsed = audit_manager::config::Config::from_yaml_str(&yaml, &[]).unwrap();
        c.privacy = parsed.privacy;
    }
}

/// Random personal values, each with a prefix nothing else in a test has.
pub struct Secrets {
    pub phone_old: String,
    pub phone_new: String,
    pub account: String,
    pub name: String,
    pub nid: String,
    pub address: String,
}

impl Secrets {
    pub fn random() -> Secrets {
        let r = |tag: &str| {
            let n: u64 = rand::rng().random();
            format!("PII{tag}{n:016x}")
        };
        Secrets {
            phone_old: r("phoneold"),
            phone_new: r("phonenew"),
            account: r("account"),
            name: r("name"),
            nid: r("nid"),
            address: r("address"),
        }
    }

    /// What must not appear anywhere (a masked account keeps its last two characters).
    pub fn probes(&self) -> Vec<String> {
        vec![
            self.phone_old.clone(),
            self.phone_new.clone(),
            self.account[..self.account.len() - 2].to_owned(),
            self.name.clone(),
            self.nid.clone(),
            self.address.clone(),
        ]
    }
}

/// An event of `person` carrying `s`; `status` is a value no rule selects (a control: it must
/// be found where the secrets must not).
pub fn event(id: &str, time: &str, person: &str, s: &Secrets, status: &str) -> Value {
    json!({
        "specversion": "1.0", "id": id, "source": "urn:openg2p:registry",
        "type": "org.openg2p.beneficiary.updated", "time": time,
        "data": {
            "actor": {"type": "user", "id": "officer-1", "name": s.name},
            "action": "beneficiary.update", "outcome": "success",
            "resource": {"type": "person", "id": person, "address": s.address},
            "changes": [
                {"field": "phone", "old": s.phone_old, "new": s.phone_new},
                {"field": "bank_account", "old": "x", "new": s.account},
                {"field": "national_id", "old": s.nid, "new": "NID-NEW"},
                {"field": "status", "old": "active", "new": status}
            ]
        }
    })
}

/// Posts `events` spread over the three ingest paths: one by one (structured), as a batch,
/// and in binary mode (`ce-*` headers, body = `data`).
pub async fn post_every_way(client: &reqwest::Client, base: &str, events: &[Value]) {
    for (i, ev) in events.iter().enumerate() {
        let resp = match i % 3 {
            0 => client
                .post(format!("{base}/events"))
                .header("content-type", "application/json")
                .body(ev.to_string())
                .send()
                .await
                .unwrap(),
            1 => client
                .post(format!("{base}/events/batch"))
                .header("content-type", "application/json")
                .body(json!({ "events": [ev] }).to_string())
                .send()
                .await
                .unwrap(),
            _ => client
                .post(format!("{base}/events"))
                .header("content-type", "application/json")
                .header("ce-specversion", "1.0")
                .header("ce-id", ev["id"].as_str().unwrap())
                .header("ce-source", ev["source"].as_str().unwrap())
                .header("ce-type", ev["type"].as_str().unwrap())
                .header("ce-time", ev["time"].as_str().unwrap())
                .body(ev["data"].to_string())
                .send()
                .await
                .unwrap(),
        };
        let status = resp.status().as_u16();
        assert_eq!(status, 202, "{}", resp.text().await.unwrap_or_default());
    }
}

/// Every byte of every file under `dir`.
fn bytes_under(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(bytes_under(&p));
        } else if let Ok(b) = std::fs::read(&p) {
            out.extend(b);
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    memchr::memmem::find(hay, needle.as_bytes()).is_some()
}

fn now_ms() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Rules apply on every ingest path before the spool write: the raw spool file holds none of
/// the selected values, and does hold a value no rule selects.
#[tokio::test]
async fn the_spool_file_never_holds_a_selected_value() {
    let setup = Setup::new();
    let mut app = TestApp::start_with(|c| setup.apply(c, false), Default::default()).await;
    let mut all = Vec::new();
    let mut events = Vec::new();
    for i in 0..9 {
        let s = Secrets::random();
        let status = format!("CONTROL{i:04}");
        events.push(event(
            &format!("sp-{i}"),
            &now_ms(),
            &format!("P-{i}"),
            &s,
            &status,
        ));
        all.push((s, status));
    }
    post_every_way(&app.client, &app.url(""), &events).await;
    let dir = app.spool_dir();
    app.stop().await;
    let bytes = bytes_under(&dir);
    for (s, status) in &all {
        assert!(
            contains(&bytes, status),
            "the control value {status} is in the spool"
        );
        for p in s.probes() {
            assert!(!contains(&bytes, &p), "{p} reached the spool file");
        }
    }
    let (code, exported, err) = common::run_cli(
        &["spool", "export"],
        &[("AUDIT_MANAGER__SPOOL__PATH", dir.to_str().unwrap())],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(exported.lines().count(), 9);
    for line in exported.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let v = if v["value"].is_object() {
            v["value"].clone()
        } else {
            v
        };
        let marker = v
            .pointer("/data/_privacy/rules")
            .cloned()
            .unwrap_or(Value::Null);
        assert_eq!(
            marker,
            json!(["phone", "account", "actor-name", "national-id", "address"]),
            "{line}"
        );
    }
}

/// A config file for a child running every role against `kafka` and `db`.
fn agent_config(setup: &Setup, kafka: &TestKafka, db: &TestDb) -> PathBuf {
    let yaml = format!(
        "audit_manager:\n  roles: [ingest, forward, sink]\n  kafka:\n    bootstrap_servers: {:?}\n    consumer:\n      session.timeout.ms: \"6000\"\n      heartbeat.interval.ms: \"500\"\n  sink:\n    flush_interval: 50ms\n  database:\n    url: {:?}\n    partition_retention_months: 12\n{}",
        kafka.bootstrap,
        db.url,
        setup
            .privacy_yaml(true)
            .lines()
            .map(|l| format!("  {l}\n"))
            .collect::<String>()
    );
    let path = setup.path("agent.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// The whole pipeline, with a dead letter among the events: nothing selected reaches Kafka,
/// the DLQ, the database (`pg_dump`, subject keys included: they are wrapped) or the log (at
/// debug level); the control values do reach them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_selected_value_reaches_kafka_the_dlq_the_database_or_the_log() {
    let setup = Setup::new();
    let kafka = TestKafka::new(3);
    let db = TestDb::new().await;
    let config = agent_config(&setup, &kafka, &db);
    let spool = setup.path("spool");
    let mut agent = ChildServer::spawn_with_config(
        &config,
        &spool,
        &[
            ("RUST_LOG", "debug,audit_manager::serve=info"),
            ("AUDIT_MANAGER__ROLES", "ingest,forward,sink"),
        ],
    );
    agent.wait_ready(Duration::from_secs(30)).await;
    let base = format!("http://{}{}", agent.addr, common::BASE);
    let mut all = Vec::new();
    let mut events = Vec::new();
    for i in 0..6 {
        let s = Secrets::random();
        let status = format!("CONTROL{i:04}");
        events.push(event(
            &format!("pl-{i}"),
            &now_ms(),
            &format!("P-{i}"),
            &s,
            &status,
        ));
        all.push((s, status));
    }
    // Older than the retention: accepted, then dead-lettered by the sink.
    let s = Secrets::random();
    events.push(event(
        "pl-dead",
        "2020-01-01T00:00:00Z",
        "P-dead",
        &s,
        "CONTROLDEAD",
    ));
    all.push((s, "CONTROLDEAD".into()));
    let client = reqwest::Client::new();
    post_every_way(&client, &base, &events).await;
    let pool = db.pool().await;
    eventually(Duration::from_secs(60), "6 rows stored", || async {
        (common::count_rows(&pool).await == 6).then_some(())
    })
    .await;
    let dead = kafka.dlq_records(1, Duration::from_secs(30));
    assert_eq!(dead.len(), 1, "the expired event is dead-lettered");
    let topic = TopicTail::start(&kafka.bootstrap, common::TOPIC);
    let records = topic
        .wait_for(Duration::from_secs(30), "7 records", |m| m.len() >= 7)
        .await;
    let topic_text: String = records
        .iter()
        .map(|r| format!("{} {}\n", r.key.clone().unwrap_or_default(), r.value))
        .collect();
    let dlq_text: Vec<u8> = dead.iter().flat_map(|(v, _)| v.clone()).collect();
    let dump = std::process::Command::new("pg_dump")
        .arg(&db.url)
        .output()
        .expect("pg_dump");
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let dump = dump.stdout;
    agent.terminate();
    agent.wait_exit(Duration::from_secs(30)).await;
    let log = agent.log().join("\n");
    assert!(
        log.contains("audit-manager listening"),
        "the log was captured"
    );
    for (i, (s, status)) in all.iter().enumerate() {
        assert!(
            topic_text.contains(status.as_str()),
            "control {status} in Kafka"
        );
        if i < 6 {
            assert!(contains(&dump, status), "control {status} in the database");
        } else {
            assert!(contains(&dlq_text, status), "control {status} in the DLQ");
        }
        for p in s.probes() {
            assert!(!topic_text.contains(&p), "{p} reached Kafka");
            assert!(!contains(&dlq_text, &p), "{p} reached the DLQ");
            assert!(!contains(&dump, &p), "{p} reached the database");
            assert!(!log.contains(&p), "{p} reached the log");
        }
    }
    // Encrypted values are stored under subject keys, wrapped in the table.
    let dump_text = String::from_utf8_lossy(&dump);
    assert!(dump_text.contains("enc:v1:"));
    assert!(dump_text.contains("audit_subject_keys"));
    assert!(
        !dump_text.contains("sealed:v1:"),
        "no ingest envelope is stored"
    );
}

/// Kafka-less mode (`forward.target: postgres`): the direct writer applies the writer's half
/// as the sink does. Values sealed to the keeper at ingest are stored re-encrypted under their
/// subject's key (`enc:v1:`, a key row per subject), never as the ingest envelope, and no
/// selected value reaches the database.
#[tokio::test]
async fn the_kafka_less_writer_stores_subject_ciphertext_and_no_selected_value() {
    use audit_manager::config::{ForwardTarget, Role};
    let setup = Setup::new();
    let db = TestDb::new().await;
    let db_url = db.url.clone();
    let keeper_pub = setup.path("keeper.pub");
    let app = TestApp::start_with(
        |c| {
            setup.apply(c, true);
            c.privacy.keeper_public_key_file = Some(keeper_pub);
            c.roles = vec![Role::Ingest, Role::Forward];
            c.forward.target = ForwardTarget::Postgres;
            c.database.url = db_url.into();
        },
        audit_manager::serve::StartOptions {
            forward: Some(common::kafka::fast_settings()),
            ..Default::default()
        },
    )
    .await;
    let mut all = Vec::new();
    let mut events = Vec::new();
    for i in 0..3 {
        let s = Secrets::random();
        let status = format!("CONTROL{i:04}");
        events.push(event(
            &format!("kl-{i}"),
            &now_ms(),
            &format!("P-{i}"),
            &s,
            &status,
        ));
        all.push((s, status));
    }
    post_every_way(&app.client, &app.url(""), &events).await;
    let pool = db.pool().await;
    eventually(Duration::from_secs(60), "3 rows stored", || async {
        (common::count_rows(&pool).await == 3).then_some(())
    })
    .await;
    let dump = std::process::Command::new("pg_dump")
        .arg(&db.url)
        .output()
        .expect("pg_dump");
    assert!(dump.status.success());
    let dump_text = String::from_utf8_lossy(&dump.stdout);
    for (s, status) in &all {
        assert!(
            dump_text.contains(status.as_str()),
            "control {status} stored"
        );
        for p in s.probes() {
            assert!(!dump_text.contains(&p), "{p} reached the database");
        }
    }
    assert!(dump_text.contains("enc:v1:"), "values under subject keys");
    assert!(
        !dump_text.contains("sealed:v1:"),
        "no ingest envelope is stored"
    );
    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_subject_keys")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(keys, 3, "one key per subject");
}
