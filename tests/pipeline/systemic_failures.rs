//! Systemic failures are outages, not verdicts on records: a database role that lost its INSERT
//! privilege and a broker that refuses every record must stall the pipeline loudly (`/health`
//! says why), dead-letter or quarantine nothing, and deliver everything once fixed.

use crate::common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use audit_manager::config::Role;
use audit_manager::serve::StartOptions;
use common::kafka::{MockKafka, TopicTail};
use common::{
    TOPIC, TestApp, TestDb, TestKafka, TestRole, count_rows, event_at, eventually, sink_config,
};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);
/// Longer than two of the database health pings (every 2 s), which must not hide the problem.
const STAYS_DOWN: Duration = Duration::from_secs(5);

/// `/health` while the sink's role may not insert: 503, sink and maintain DOWN, the reason
/// naming the SQLSTATE and the GRANT to run. `None` while it does not say so (yet).
fn privilege_problem(status: u16, body: &Value, role: &str) -> Option<String> {
    if status != 503 {
        return None;
    }
    let roles = &body["response"]["roles"];
    let mut reasons = Vec::new();
    for r in ["sink", "maintain"] {
        let report = &roles[r];
        let reason = report["reason"].as_str().unwrap_or_default();
        let named = reason.contains("42501")
            && reason.contains(&format!("GRANT SELECT, INSERT ON audit_events TO {role}"));
        if report["status"] != "DOWN" || report["code"] != "AUD-006" || !named {
            return None;
        }
        reasons.push(reason.to_string());
    }
    Some(reasons.join("\n"))
}

/// Acceptance 1: a sink whose database role lost INSERT on audit_events dead-letters nothing,
/// reports 503 naming the privilege problem for as long as it lasts, and stores every event
/// exactly once after the GRANT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_whose_role_lost_insert_stalls_loudly_and_stores_everything_after_the_grant() {
    let kafka = TestKafka::new(1);
    let db = TestDb::new().await;
    let role = TestRole::new(&db).await;
    let config = sink_config(&kafka, &role.url, &[Role::Sink, Role::Maintain]);
    let mut app = TestApp::start_with(move |c| *c = config, StartOptions::default()).await;
    let p = kafka.producer();
    let pool = db.pool().await;
    let at = "2026-11-04T00:00:00Z";

    // The sink works: the schema and this month's partition exist, owned by its role.
    let first = event_at("before-revoke", at).to_string();
    kafka.produce(&p, TOPIC, "k", first.as_bytes()).await;
    eventually(WAIT, "the first event stored", || async {
        (count_rows(&pool).await == 1).then_some(())
    })
    .await;

    role.admin(&format!("REVOKE INSERT ON audit_events FROM {}", role.name))
        .await;
    const N: usize = 40;
    for i in 0..N {
        let e = event_at(&format!("e-{i}"), at).to_string();
        kafka
            .produce(&p, TOPIC, &format!("k{}", i % 7), e.as_bytes())
            .await;
    }
    let reason = eventually(WAIT, "/health 503 naming the privilege problem", || async {
        let dead = kafka.dlq_len();
        assert_eq!(
            dead, 0,
            "events dead-lettered because the role lacks INSERT"
        );
        let (status, body) = app.get("/health").await;
        privilege_problem(status, &body, &role.name)
    })
    .await;
    // Health pings and maintenance passes succeed meanwhile; they must not hide the problem.
    let until = Instant::now() + STAYS_DOWN;
    while Instant::now() < until {
        let (status, body) = app.get("/health").await;
        assert!(
            privilege_problem(status, &body, &role.name).is_some(),
            "health stopped naming the privilege problem: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        kafka.dlq_len(),
        0,
        "no event dead-lettered while the role lacks INSERT; health said: {reason}"
    );
    assert_eq!(count_rows(&pool).await, 1);

    role.admin(&format!("GRANT INSERT ON audit_events TO {}", role.name))
        .await;
    eventually(WAIT, "every event stored after the GRANT", || async {
        (count_rows(&pool).await == N as i64 + 1).then_some(())
    })
    .await;
    let (n, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT id) FROM audit_events")
            .fetch_one(&pool)
            .await
            .expect("count");
    assert_eq!(
        (n, distinct),
        (N as i64 + 1, N as i64 + 1),
        "each event once"
    );
    eventually(WAIT, "health to recover", || async {
        (app.get("/health").await.0 == 200).then_some(())
    })
    .await;
    assert_eq!(kafka.dlq_len(), 0, "nothing dead-lettered");
    app.stop().await;
    pool.close().await;
}

/// The bisection guard: a column added as NOT NULL (no default) makes every row fail with a data
/// error (23502). That is the table's doing: the sink stalls with `/health` DOWN naming it, and
/// stores everything once the column gets a default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_not_null_column_stalls_the_sink_instead_of_dead_lettering_every_row() {
    let kafka = TestKafka::new(1);
    let db = TestDb::new().await;
    let config = sink_config(&kafka, &db.url, &[Role::Sink]);
    let mut app = TestApp::start_with(move |c| *c = config, StartOptions::default()).await;
    let p = kafka.producer();
    let pool = db.pool().await;
    let at = "2026-11-05T00:00:00Z";
    let first = event_at("before-alter", at).to_string();
    kafka.produce(&p, TOPIC, "k", first.as_bytes()).await;
    eventually(WAIT, "the first event stored", || async {
        (count_rows(&pool).await == 1).then_some(())
    })
    .await;
    for stmt in [
        "ALTER TABLE audit_events ADD COLUMN tenant text NOT NULL DEFAULT 'old'",
        "ALTER TABLE audit_events ALTER COLUMN tenant DROP DEFAULT",
    ] {
        sqlx::query(stmt).execute(&pool).await.expect(stmt);
    }
    const N: usize = 30;
    for i in 0..N {
        let e = event_at(&format!("n-{i}"), at).to_string();
        kafka
            .produce(&p, TOPIC, &format!("k{}", i % 5), e.as_bytes())
            .await;
    }
    eventually(WAIT, "/health DOWN naming the NOT NULL column", || async {
        assert_eq!(kafka.dlq_len(), 0, "rows dead-lettered");
        let sink = app.role_health("sink").await;
        let reason = sink["reason"].as_str().unwrap_or_default();
        (sink["status"] == "DOWN" && reason.contains("23502") && reason.contains("tenant"))
            .then_some(())
    })
    .await;
    sqlx::query("ALTER TABLE audit_events ALTER COLUMN tenant SET DEFAULT 'new'")
        .execute(&pool)
        .await
        .expect("set default");
    eventually(WAIT, "every event stored after the fix", || async {
        (count_rows(&pool).await == N as i64 + 1).then_some(())
    })
    .await;
    assert_eq!(kafka.dlq_len(), 0, "nothing dead-lettered");
    app.stop().await;
    pool.close().await;
}

fn ids(msgs: &[common::kafka::Consumed]) -> HashSet<String> {
    msgs.iter().map(|m| m.id().to_string()).collect()
}

/// Acceptance 2: a broker that refuses every record (topic authorization failed, injected with
/// the mock cluster) quarantines nothing; forward is DEGRADED with the reason, and everything is
/// delivered once the refusals stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarder_refused_by_the_broker_quarantines_nothing_and_delivers_after() {
    let kafka = MockKafka::new(1, 1);
    let tail = TopicTail::start(&kafka.bootstrap, TOPIC);
    let mut app = TestApp::with_kafka(&kafka.bootstrap, |_| {}).await;
    // Every produce request fails until the errors are cleared (far more than the test sends).
    kafka.cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 10_000],
    );
    const N: usize = 20;
    let mut want = HashSet::new();
    for i in 0..N {
        let id = format!("refused-{i:02}");
        let (status, _) = app.post_json("/events", &common::event(&id)).await;
        assert_eq!(status, 202);
        want.insert(id);
    }
    let fwd = eventually(
        WAIT,
        "forward DEGRADED with the broker's reason",
        || async {
            let fwd = app.role_health("forward").await;
            let reason = fwd["reason"].as_str().unwrap_or_default();
            (fwd["status"] == "DEGRADED" && reason.contains("TopicAuthorizationFailed"))
                .then_some(fwd)
        },
    )
    .await;
    assert!(
        fwd["reason"].as_str().unwrap_or_default().contains("WRITE"),
        "the reason says what to grant: {fwd}"
    );
    // The refusals go on for several retry rounds (backoff 50..500 ms) without a quarantine.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let ingest = app.role_health("ingest").await;
        let fwd = app.role_health("forward").await;
        assert_eq!(ingest["spool"]["quarantined"], 0, "{ingest}");
        assert_eq!(ingest["spool"]["events"], N as u64, "{ingest}");
        assert_eq!(fwd["kafka"]["quarantined_events"], 0, "{fwd}");
        assert_eq!(fwd["status"], "DEGRADED", "{fwd}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ids(&tail.snapshot()).is_empty(), "nothing got through");

    kafka.cluster.clear_request_errors(RDKafkaApiKey::Produce);
    tail.wait_for(WAIT, "every event after the refusals stop", |m| {
        ids(m).is_superset(&want)
    })
    .await;
    eventually(WAIT, "the spool drained, forward UP", || async {
        let ingest = app.role_health("ingest").await;
        let fwd = app.role_health("forward").await;
        (ingest["spool"]["events"] == 0 && fwd["status"] == "UP").then_some(())
    })
    .await;
    let ingest = app.role_health("ingest").await;
    assert_eq!(ingest["spool"]["quarantined"], 0, "{ingest}");
    app.stop().await;
}
