//! `GET /ready` (can this process take events now?) and what `/health` says about roles that
//! stopped or records that were quarantined.
//!
//! Readiness must follow the spool and the process's own state, never Kafka or PostgreSQL: the
//! spool absorbs their outages, so a readiness probe that followed them would take ingest out of
//! a Service exactly when it is needed.

use crate::common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use audit_manager::api::{self, AppState};
use audit_manager::config::{Config, Role};
use audit_manager::health::{Health, RoleReport};
use audit_manager::serve::StartOptions;
use audit_manager::shutdown::{Supervisor, Task};
use audit_manager::spool::{Spool, SpoolOptions};
use common::kafka::{MockKafka, fast_settings};
use common::{ChaosProxy, TestApp, TestDb, TestKafka, code, event, eventually, sink_config};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);

async fn get(addr: SocketAddr, path: &str) -> (u16, Value, Option<String>) {
    let resp = reqwest::get(format!("http://{addr}{}{path}", common::BASE))
        .await
        .expect("GET");
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (status, body) = common::read(resp).await;
    (status, body, retry_after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_while_postgres_and_kafka_are_down_for_an_all_roles_process() {
    let kafka = TestKafka::new(1);
    let db = TestDb::new().await;
    let proxy = ChaosProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    proxy.cut();
    let config = sink_config(
        &kafka,
        &db.url_via(proxy.addr),
        &[Role::Ingest, Role::Forward, Role::Sink, Role::Maintain],
    );
    let opts = StartOptions {
        forward: Some(fast_settings()),
        ..StartOptions::default()
    };
    let mut app = TestApp::start_with(
        move |c| {
            let spool = c.spool.path.clone();
            *c = config;
            c.spool.path = spool;
        },
        opts,
    )
    .await;
    // PostgreSQL is unreachable: the sink and maintain roles are down, /health is 503...
    let health = eventually(WAIT, "/health to report the database down", || async {
        let (s, b) = app.get("/health").await;
        (s == 503).then_some(b)
    })
    .await;
    assert!(health.to_string().contains("AUD-006"), "{health}");
    // ...and Kafka goes away too.
    kafka.cluster.broker_down(1).expect("broker down");
    let (status, body, _) = get(app.addr, "/ready").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["response"]["status"], "READY");
    assert_eq!(body["errors"], json!([]));
    // Ready means it: the event is spooled.
    let (status, body) = app.post_json("/events", &event("during-outage")).await;
    assert_eq!(status, 202, "{body}");
    app.stop().await;
    assert_eq!(
        common::exported_ids(&app.spool_dir()),
        vec!["during-outage"]
    );
}

#[tokio::test]
async fn not_ready_aud004_while_the_spool_is_full() {
    let mut app =
        TestApp::start_with(|c| c.spool.max_bytes = 64 * 1024, StartOptions::default()).await;
    let (status, body, _) = get(app.addr, "/ready").await;
    assert_eq!(status, 200, "{body}");
    // Fill the spool until ingest refuses an event (nothing forwards it away).
    let mut n = 0;
    loop {
        let (status, body) = app.post_json("/events", &event(&format!("e{n}"))).await;
        if status == 503 {
            assert_eq!(code(&body), "AUD-004", "{body}");
            break;
        }
        assert_eq!(status, 202, "{body}");
        n += 1;
        assert!(n < 1000, "64 KiB of spool never filled up");
    }
    let (status, body, retry_after) = get(app.addr, "/ready").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(code(&body), "AUD-004", "{body}");
    assert_eq!(body["response"]["status"], "NOT_READY");
    assert_eq!(retry_after.as_deref(), Some("1"));
    app.stop().await;
}

/// Ingest + forward whose producer refuses records over 4000 bytes: a big event is quarantined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_degraded_while_the_quarantine_holds_records() {
    let kafka = MockKafka::new(1, 1);
    let mut app = TestApp::with_kafka(&kafka.bootstrap, |c| {
        c.kafka
            .producer
            .insert("message.max.bytes".into(), "4000".into());
    })
    .await;
    let ingest = app.role_health("ingest").await;
    assert_eq!(ingest["status"], "UP", "{ingest}");
    let mut big = event("too-big");
    big["data"]["blob"] = json!("x".repeat(20_000));
    let (status, _) = app.post_json("/events", &big).await;
    assert_eq!(status, 202);
    let ingest = eventually(WAIT, "the big event to be quarantined", || async {
        let ingest = app.role_health("ingest").await;
        (ingest["spool"]["quarantined"] == 1).then_some(ingest)
    })
    .await;
    assert_eq!(ingest["status"], "DEGRADED", "{ingest}");
    let reason = ingest["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("quarantine") && reason.contains("spool export --quarantine"),
        "{reason}"
    );
    // Degraded, still serving: ready, and /health is 200.
    assert_eq!(app.get("/health").await.0, 200);
    assert_eq!(get(app.addr, "/ready").await.0, 200);
    app.stop().await;
}

/// The API of an ingest process on its own listener, with its supervisor, so a test can put it
/// in states a real process passes through too quickly to observe from outside (a real process
/// stops accepting connections as soon as it drains).
struct Api {
    addr: SocketAddr,
    /// The API's "shutting down" token (what a signal cancels).
    draining: CancellationToken,
    supervisor: Supervisor,
    spool: Spool,
    _dir: tempfile::TempDir,
}

async fn api() -> Api {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        roles: vec![Role::Ingest, Role::Forward],
        ..Config::default()
    };
    config.spool.path = dir.path().join("spool");
    let opts = SpoolOptions {
        dir: config.spool.path.clone(),
        max_bytes: config.spool.max_bytes,
        max_pending_appends: 16,
    };
    let spool = tokio::task::spawn_blocking(move || Spool::open(&opts))
        .await
        .unwrap()
        .expect("spool opens");
    let supervisor = Supervisor::new(CancellationToken::new());
    let mut health = Health::supervised(supervisor.view());
    let up =
        || -> audit_manager::health::Check { Arc::new(|| RoleReport::up(serde_json::Map::new())) };
    health.register(Role::Ingest, &[Task::Http], up());
    health.register(Role::Forward, &[Task::Forward], up());
    let draining = CancellationToken::new();
    let state = AppState::new(
        Arc::new(config),
        Some(spool.clone()),
        health,
        audit_manager::metrics::install(),
        draining.clone(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, api::router(state)).await });
    Api {
        addr,
        draining,
        supervisor,
        spool,
        _dir: dir,
    }
}

/// A role task that runs until its supervisor's token is cancelled.
fn spawn_role(sup: &Supervisor, task: Task) {
    let token = sup.token().clone();
    sup.spawn(task, async move {
        token.cancelled().await;
        Ok::<(), String>(())
    });
}

#[tokio::test]
async fn not_ready_aud005_while_starting_or_draining() {
    let api = api().await;
    spawn_role(&api.supervisor, Task::Forward);
    let (status, body, retry_after) = get(api.addr, "/ready").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(code(&body), "AUD-005");
    assert!(body.to_string().contains("starting"), "{body}");
    assert!(retry_after.is_some());

    api.supervisor.mark_started();
    let (status, body, _) = get(api.addr, "/ready").await;
    assert_eq!(status, 200, "{body}");

    api.draining.cancel();
    let (status, body, retry_after) = get(api.addr, "/ready").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(code(&body), "AUD-005");
    assert!(body.to_string().contains("draining"), "{body}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    api.spool.close().await;
}

#[tokio::test]
async fn a_role_that_died_is_down_in_health_and_not_ready() {
    let api = api().await;
    let trigger = CancellationToken::new();
    api.supervisor.inject_panic(Task::Forward, trigger.clone());
    spawn_role(&api.supervisor, Task::Http);
    spawn_role(&api.supervisor, Task::Forward);
    api.supervisor.mark_started();
    let (status, body) = {
        let (s, b, _) = get(api.addr, "/health").await;
        (s, b)
    };
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["response"]["roles"]["forward"]["status"], "UP");

    trigger.cancel();
    let failure = api
        .supervisor
        .wait()
        .await
        .expect_err("the panic is a failure");
    assert_eq!(failure.task, Task::Forward);
    // The forward check itself still says UP; the supervisor knows better.
    let (status, body, _) = get(api.addr, "/health").await;
    assert_eq!(status, 503, "{body}");
    let forward = &body["response"]["roles"]["forward"];
    assert_eq!(forward["status"], "DOWN", "{body}");
    assert_eq!(forward["code"], "AUD-005", "{body}");
    assert!(
        forward["reason"]
            .as_str()
            .is_some_and(|r| r.contains("panicked")),
        "{body}"
    );
    let (status, body, _) = get(api.addr, "/ready").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(code(&body), "AUD-005");
    assert!(body.to_string().contains("forward task"), "{body}");
    api.spool.close().await;
}
