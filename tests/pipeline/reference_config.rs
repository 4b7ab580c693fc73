//! The reference service's `config/default.yaml` (tests/fixtures/reference-default.yaml),
//! unchanged, starts every role: an event posted to ingest reaches PostgreSQL, `GET /config`
//! shows the reference's keys with their effective values and no secret, and the envelope
//! carries the configured `service_id` / `api_version`.

use crate::common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use audit_manager::config::{Config, Role};
use audit_manager::serve::StartOptions;
use common::{TestApp, TestDb, count_rows, event};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference-default.yaml")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_default_yaml_starts_every_role() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool");
    // What an operator overrides for their environment; the file itself is unchanged.
    let env: Vec<(String, String)> = [
        ("CONFIG_PATH", fixture().to_string_lossy().into_owned()),
        ("UVICORN_HOST", "127.0.0.1".to_string()),
        ("UVICORN_PORT", "0".to_string()),
        ("DATABASE_URL", db.url.clone()),
        (
            "AUDIT_MANAGER__KAFKA__BOOTSTRAP_SERVERS",
            "embedded".to_string(),
        ),
        ("AUDIT_MANAGER__KAFKA__TOPIC_PARTITIONS", "2".to_string()),
        (
            "AUDIT_MANAGER__SPOOL__PATH",
            spool.to_string_lossy().into_owned(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let (config, notices) = Config::load_with_notices(None, &env).expect("reference config loads");
    assert_eq!(
        config.roles,
        Role::DEFAULT.to_vec(),
        "every write role by default"
    );
    let warned: Vec<&str> = notices
        .iter()
        .filter(|n| n.warning)
        .map(|n| n.key.as_str())
        .collect();
    assert_eq!(
        warned,
        [
            "audit_manager.kafka.producer.acks",
            "audit_manager.kafka.consumer.enable_auto_commit"
        ]
    );

    let mut app = TestApp::start_in(dir, move |c| *c = config, StartOptions::default()).await;

    let (status, body) = app.post_json("/events", &event("ref-cfg-1")).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["id"], "openg2p.auditmanager");
    assert_eq!(body["version"], "1.0");

    // Ingest → spool → forward (the reference's producer settings) → Kafka → sink → PostgreSQL.
    let pool = db.pool().await;
    let until = Instant::now() + Duration::from_secs(60);
    while count_rows(&pool).await != 1 {
        assert!(
            Instant::now() < until,
            "the event never reached audit_events"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (status, health) = app.get("/health").await;
    assert_eq!(status, 200, "{health}");
    for role in ["ingest", "forward", "sink", "maintain"] {
        assert!(
            health["response"]["roles"].get(role).is_some(),
            "{role} not running: {health}"
        );
    }

    let (status, body) = app.get("/config").await;
    assert_eq!(status, 200);
    let cfg = &body["response"];
    assert_eq!(cfg["service_id"], "openg2p.auditmanager");
    assert_eq!(cfg["api_version"], "1.0");
    assert_eq!(cfg["ingest"]["queue_max_size"], 10_000);
    assert_eq!(cfg["spool"]["max_pending_appends"], 10_000);
    assert_eq!(cfg["database"]["partition_check_interval_seconds"], 3600);
    assert_eq!(cfg["sink"]["batch_max_records"], 500);
    assert_eq!(cfg["sink"]["flush_interval"], "1s");
    assert_eq!(cfg["kafka"]["producer"]["acks"], "all");
    assert_eq!(cfg["kafka"]["producer"]["linger.ms"], "5");
    assert_eq!(cfg["kafka"]["producer"]["compression.type"], "gzip");
    assert!(
        cfg["kafka"]["consumer"].get("enable.auto.commit").is_none(),
        "{cfg}"
    );
    app.stop().await;
}

#[tokio::test]
async fn get_config_never_shows_secrets_from_the_reference_environment() {
    let env: Vec<(String, String)> = [
        ("CONFIG_PATH", fixture().to_string_lossy().into_owned()),
        ("DB_PASSWORD", "s3cr3t-db-pw".to_string()),
        (
            "AUDIT_MANAGER__KAFKA__PRODUCER__SASL_PASSWORD",
            "s3cr3t-kafka-pw".to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let (config, _) = Config::load_with_notices(None, &env).expect("loads");
    let app = TestApp::start_with(
        move |c| {
            let listen = c.http.listen;
            let path = c.spool.path.clone();
            *c = config;
            c.roles = vec![Role::Ingest];
            c.http.listen = listen;
            c.spool.path = path;
        },
        StartOptions::default(),
    )
    .await;
    let text = app.get_text("/config").await.1;
    for secret in ["s3cr3t-db-pw", "s3cr3t-kafka-pw", ":postgres@"] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    let body: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(
        body["response"]["database"]["url"],
        "postgresql://postgres:***@localhost:5432/auditmanager"
    );
    assert_eq!(
        body["response"]["kafka"]["producer"]["sasl.password"],
        "***"
    );
    assert_eq!(body["response"]["service_id"], "openg2p.auditmanager");
}
