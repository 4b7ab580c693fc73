//! `ingest.validation: compatible` (the default): every event the reference service accepts
//! is accepted, normalized before spooling, and stored with the normalized values — checked in
//! the spool (`spool export`), in Kafka (forward role) and in the row (sink role), including a
//! record the reference itself left in Kafka.

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use audit_manager::config::Role;
use audit_manager::event::ValidationMode;
use audit_manager::serve::StartOptions;
use common::kafka::{MockKafka, TopicTail};
use common::{TOPIC, TestApp, TestDb, TestKafka, count_rows, eventually, sink_config};
use serde_json::{Value, json};
use sqlx::Connection;

const WAIT: Duration = Duration::from_secs(60);

/// An event as the reference's emitters send it; `tweak` makes it deviate from strict rules.
fn reference_event(id: &str, tweak: impl FnOnce(&mut Value)) -> Value {
    let mut v = json!({
        "specversion": "1.0",
        "id": id,
        "source": "/openg2p/registry",
        "type": "org.openg2p.beneficiary.viewed",
        "time": "2026-04-22T14:00:00Z",
        "data": {"actor": {"type": "user", "id": "u_1"}, "action": "view", "outcome": "success"}
    });
    tweak(&mut v);
    v
}

/// `(id, event, what the stored event must contain)` for every event-level rule.
fn cases() -> Vec<(String, Value, Value)> {
    let c = |id: &str, tweak: fn(&mut Value), expect: Value| {
        (id.to_owned(), reference_event(id, tweak), expect)
    };
    vec![
        c(
            "naive",
            |v| v["time"] = json!("2026-04-22T14:00:00"),
            json!({"time": "2026-04-22T14:00:00Z"}),
        ),
        c(
            "space",
            |v| v["time"] = json!("2026-04-22 14:00:00Z"),
            json!({"time": "2026-04-22T14:00:00Z"}),
        ),
        c(
            "date",
            |v| v["time"] = json!("2026-04-22"),
            json!({"time": "2026-04-22T00:00:00Z"}),
        ),
        c(
            "epoch",
            |v| v["time"] = json!(1_776_866_400),
            json!({"time": "2026-04-22T14:00:00Z"}),
        ),
        c(
            "nospec",
            |v| {
                v.as_object_mut().unwrap().shift_remove("specversion");
            },
            json!({"specversion": "1.0"}),
        ),
        c(
            "empties",
            |v| {
                v["subject"] = json!("");
                v["source"] = json!("");
                v["data"]["action"] = json!("");
            },
            json!({"subject": "", "source": "", "data": {"action": ""}}),
        ),
        c(
            "trace",
            |v| v["traceparent"] = json!("not-w3c"),
            json!({"traceparent": "not-w3c"}),
        ),
        c(
            "ctype",
            |v| v["datacontenttype"] = json!("text/plain"),
            json!({"datacontenttype": "text/plain"}),
        ),
        c(
            "future",
            |v| v["time"] = json!("2999-01-01T00:00:00Z"),
            json!({"time": "2999-01-01T00:00:00Z"}),
        ),
        c(
            "nulls",
            |v| {
                v["subject"] = Value::Null;
                v["traceparent"] = Value::Null;
                v["data"]["resource"] = Value::Null;
                v["data"]["reason"] = Value::Null;
                v["data"]["actor"]["name"] = Value::Null;
            },
            json!({"data": {"resource": null}}),
        ),
    ]
}

/// True when every key of `expect` has the same value in `got` (recursively for objects).
fn contains(got: &Value, expect: &Value) -> bool {
    match (got, expect) {
        (Value::Object(g), Value::Object(e)) => e
            .iter()
            .all(|(k, ev)| g.get(k).is_some_and(|gv| contains(gv, ev))),
        _ => got == expect,
    }
}

fn exported(spool_dir: &std::path::Path) -> Vec<Value> {
    let dir = spool_dir.to_string_lossy();
    let (code, stdout, stderr) = common::run_cli(
        &["spool", "export"],
        &[("AUDIT_MANAGER__SPOOL__PATH", dir.as_ref())],
    );
    assert_eq!(code, 0, "spool export failed: {stderr}");
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("export line is JSON"))
        .collect()
}

#[tokio::test]
async fn reference_events_are_accepted_and_spooled_normalized() {
    let mut app = TestApp::start().await;
    for (id, ev, _) in cases() {
        let (status, body) = app.post_json("/events", &ev).await;
        assert_eq!(status, 202, "{id}: {body}");
        assert_eq!(body["response"]["accepted"], id.as_str());
    }
    // An empty id gets a generated one.
    let (status, body) = app.post_json("/events", &reference_event("", |_| {})).await;
    assert_eq!(status, 202, "{body}");
    let generated = body["response"]["accepted"].as_str().unwrap().to_owned();
    assert_eq!(
        uuid::Uuid::parse_str(&generated).unwrap().get_version_num(),
        7
    );
    // Without Content-Type, read as JSON; a trailing slash is the same route.
    let resp = app
        .client
        .post(app.url("/events"))
        .body(reference_event("no-ct", |_| {}).to_string())
        .send()
        .await
        .unwrap();
    let (status, body) = common::read(resp).await;
    assert_eq!(status, 202, "no Content-Type: {body}");
    let (status, body) = app
        .post_json("/events/", &reference_event("slash", |_| {}))
        .await;
    assert_eq!(status, 202, "trailing slash: {body}");
    // An empty batch is 202 with count 0, with and without the trailing slash.
    for path in ["/events/batch", "/events/batch/"] {
        let (status, body) = app.post_json(path, &json!({"events": []})).await;
        assert_eq!(status, 202, "{path}: {body}");
        assert_eq!(body["response"], json!({"accepted": [], "count": 0}));
    }

    let (_, metrics) = app.get_text("/metrics").await;
    for rule in [
        "time_no_offset",
        "time_space_separator",
        "time_date_only",
        "time_unix_seconds",
        "time_future",
        "specversion_missing",
        "id_empty",
        "empty_string",
        "traceparent_not_w3c",
        "datacontenttype_not_json",
        "no_content_type",
        "trailing_slash",
        "empty_batch",
    ] {
        let line = format!("audit_events_normalized_total{{rule=\"{rule}\"}}");
        assert!(metrics.contains(&line), "{line} missing from /metrics");
    }
    app.stop().await;

    let stored: HashMap<String, Value> = exported(&app.spool_dir())
        .into_iter()
        .map(|v| (v["id"].as_str().unwrap().to_owned(), v))
        .collect();
    for (id, _, expect) in cases() {
        let got = &stored[&id];
        assert!(
            contains(got, &expect),
            "{id}: stored {got}, expected {expect}"
        );
    }
    let nulls = &stored["nulls"];
    assert!(nulls.get("subject").is_none() && nulls.get("traceparent").is_none());
    assert!(stored.contains_key(&generated));
    assert!(stored.contains_key("no-ct") && stored.contains_key("slash"));
    assert_eq!(stored.len(), cases().len() + 3);
}

/// Strict mode keeps refusing what compatible normalizes (the modes really differ).
#[tokio::test]
async fn strict_mode_refuses_the_same_events() {
    let app = TestApp::start_with(
        |c| c.ingest.validation = ValidationMode::Strict,
        StartOptions::default(),
    )
    .await;
    for (id, ev, _) in cases() {
        if id == "nulls" {
            continue; // null optional attributes are absent in both modes
        }
        let (status, body) = app.post_json("/events", &ev).await;
        assert_eq!(status, 422, "{id}: {body}");
    }
    let (status, _) = app
        .post_json("/events/", &reference_event("s", |_| {}))
        .await;
    assert_eq!(status, 404);
    let (status, _) = app.post_json("/events/batch", &json!({"events": []})).await;
    assert_eq!(status, 422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_records_carry_the_normalized_event() {
    let kafka = MockKafka::new(1, 3);
    let tail = TopicTail::start(&kafka.bootstrap, TOPIC);
    let app = TestApp::with_kafka(&kafka.bootstrap, |_| {}).await;
    let batch: Vec<Value> = cases().into_iter().map(|(_, ev, _)| ev).collect();
    let (status, body) = app
        .post_json("/events/batch", &json!({ "events": batch }))
        .await;
    assert_eq!(status, 202, "{body}");
    let n = cases().len();
    let msgs = tail
        .wait_for(Duration::from_secs(30), "every posted event", |m| {
            m.len() >= n
        })
        .await;
    let by_id: HashMap<&str, &Value> = msgs.iter().map(|m| (m.id(), &m.value)).collect();
    for (id, _, expect) in cases() {
        let got = by_id[id.as_str()];
        assert!(
            contains(got, &expect),
            "{id}: in Kafka {got}, expected {expect}"
        );
    }
    // Key: subject, else actor id — an empty subject falls back to the actor.
    let empties = msgs.iter().find(|m| m.id() == "empties").unwrap();
    assert_eq!(empties.key.as_deref(), Some("u_1"));
}

async fn rows_by_id(db: &TestDb) -> HashMap<String, Value> {
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("SET TIME ZONE 'UTC'")
        .execute(&mut conn)
        .await
        .unwrap();
    let rows: Vec<(String, sqlx::types::Json<Value>)> =
        sqlx::query_as("SELECT id, to_jsonb(a) - 'ingested_at' FROM audit_events a ORDER BY id")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    rows.into_iter().map(|(id, v)| (id, v.0)).collect()
}

/// What the reference's producer wrote to Kafka: `model_dump(mode="json")` of its model, i.e.
/// every optional field present (explicit `null`s, `roles: []`) and the time as the emitter
/// sent it (naive when the emitter used `datetime.utcnow()`).
fn reference_record(id: &str, time: &str) -> Vec<u8> {
    json!({
        "specversion": "1.0", "id": id, "source": "/openg2p/registry",
        "type": "org.openg2p.beneficiary.viewed", "subject": null, "time": time,
        "datacontenttype": "application/json", "traceparent": null,
        "data": {"actor": {"type": "user", "id": "u_1", "name": null, "roles": [], "ip": null,
                           "session_id": null},
                 "action": "view", "outcome": "success", "resource": null, "reason": null}
    })
    .to_string()
    .into_bytes()
}

async fn start_sink(kafka: &TestKafka, db: &TestDb, mode: ValidationMode) -> TestApp {
    let mut config = sink_config(kafka, &db.url, &[Role::Sink]);
    config.ingest.validation = mode;
    TestApp::start_with(move |c| *c = config, StartOptions::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reference_backlog_in_kafka_is_stored_not_dead_lettered() {
    let kafka = TestKafka::new(1);
    let db = TestDb::new().await;
    let p = kafka.producer();
    let records = [
        ("ref-naive", "2026-04-22T14:00:00"),
        ("ref-micros", "2026-04-22T14:00:00.123456"),
        ("ref-utc", "2026-04-22T14:00:00Z"),
    ];
    for (id, time) in records {
        kafka
            .produce(&p, TOPIC, "u_1", &reference_record(id, time))
            .await;
    }
    // A record whose id the reference left empty, and an event with a non-W3C traceparent as
    // our own ingest would have forwarded it.
    kafka
        .produce(
            &p,
            TOPIC,
            "u_1",
            &reference_record("", "2026-04-22T15:00:00"),
        )
        .await;
    let mut traced = reference_event("traced", |v| v["traceparent"] = json!("abc"));
    traced["time"] = json!("2026-04-22T16:00:00Z");
    kafka
        .produce(&p, TOPIC, "u_1", traced.to_string().as_bytes())
        .await;
    let _app = start_sink(&kafka, &db, ValidationMode::Compatible).await;
    let pool = db.pool().await;
    // Every record is either a row or a dead letter: 5 rows means none was dead-lettered.
    eventually(WAIT, "5 rows", || async {
        (count_rows(&pool).await == 5).then_some(())
    })
    .await;
    let rows = rows_by_id(&db).await;
    let row = |id: &str| {
        rows.get(id)
            .unwrap_or_else(|| panic!("no row {id}: {rows:?}"))
    };
    assert_eq!(row("ref-naive")["occurred_at"], "2026-04-22T14:00:00+00:00");
    assert_eq!(
        row("ref-micros")["occurred_at"],
        "2026-04-22T14:00:00.123456+00:00"
    );
    assert_eq!(row("ref-utc")["occurred_at"], "2026-04-22T14:00:00+00:00");
    for id in ["ref-naive", "ref-micros", "ref-utc"] {
        let r = row(id);
        assert_eq!(r["subject"], Value::Null, "{id}");
        assert_eq!(r["resource_type"], Value::Null, "{id}");
        assert_eq!(r["reason"], Value::Null, "{id}");
        assert_eq!(
            r["details"],
            Value::Null,
            "{id}: nulls and [] are not details"
        );
        assert_eq!(
            (&r["actor_id"], &r["outcome"]),
            (&json!("u_1"), &json!("success"))
        );
    }
    assert_eq!(row("traced")["trace_id"], Value::Null);
    let derived: Vec<&String> = rows
        .keys()
        .filter(|k| uuid::Uuid::parse_str(k).is_ok_and(|u| u.get_version_num() == 5))
        .collect();
    assert_eq!(derived.len(), 1, "the empty id got a derived one: {rows:?}");
    assert_eq!(rows[derived[0]]["occurred_at"], "2026-04-22T15:00:00+00:00");
}

/// The same naive-time record in strict mode is dead-lettered: the test above would fail
/// without compatible mode at the sink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_sink_dead_letters_the_reference_shape() {
    let kafka = TestKafka::new(1);
    let db = TestDb::new().await;
    let p = kafka.producer();
    kafka
        .produce(
            &p,
            TOPIC,
            "u_1",
            &reference_record("ref-strict", "2026-04-22T14:00:00"),
        )
        .await;
    let _app = start_sink(&kafka, &db, ValidationMode::Strict).await;
    let dead = kafka.dlq_records(1, WAIT);
    assert_eq!(dead.len(), 1);
    let error = dead[0]
        .1
        .iter()
        .find(|(k, _)| k == "x-audit-error")
        .map(|(_, v)| v.as_str())
        .unwrap_or_default();
    assert!(
        error.starts_with("schema-invalid") && error.contains("time"),
        "{error}"
    );
    assert_eq!(count_rows(&db.pool().await).await, 0);
}

/// Sources that read as another than they are: `/../` dot-segments and Unicode bidi controls.
fn suspicious_sources() -> Vec<(&'static str, &'static str, &'static str)> {
    // (id, source, metric reason)
    vec![
        ("dots", "/openg2p/registry/../payments", "dot_segment"),
        ("dot", "/openg2p/registry/./x", "dot_segment"),
        ("trailing", "/openg2p/registry/..", "dot_segment"),
        ("rlo", "/openg2p/\u{202E}yrtsiger", "bidi_control"),
        (
            "isolate",
            "/openg2p/\u{2066}registry\u{2069}",
            "bidi_control",
        ),
        ("mark", "/openg2p/registry\u{200F}", "bidi_control"),
        ("alm", "/openg2p/registry\u{061C}", "bidi_control"),
    ]
}

/// `strict` refuses a suspicious `source` with 422 naming `source` (single, batch, binary);
/// `compatible` stores it as sent and counts it by reason.
#[tokio::test]
async fn suspicious_sources_are_refused_in_strict_and_counted_in_compatible() {
    let strict = TestApp::start_with(
        |c| c.ingest.validation = ValidationMode::Strict,
        StartOptions::default(),
    )
    .await;
    for (id, source, _) in suspicious_sources() {
        let ev = reference_event(id, |v| v["source"] = json!(source));
        let (status, body) = strict.post_json("/events", &ev).await;
        assert_eq!(
            (status, common::code(&body)),
            (422, "AUD-002"),
            "{id}: {body}"
        );
        let msg = body["errors"][0]["message"].as_str().unwrap();
        assert!(msg.starts_with("source: contains"), "{id}: {msg}");
        let batch = json!({"events": [reference_event("fine", |_| {}), ev]});
        let (status, body) = strict.post_json("/events/batch", &batch).await;
        assert_eq!(status, 422, "{id}: {body}");
        let msg = body["errors"][0]["message"].as_str().unwrap();
        assert!(msg.starts_with("events[1].source: "), "{id}: {msg}");
    }
    // Binary mode: percent-encoded in the header (U+202E is E2 80 AE in UTF-8).
    for header in [
        "/openg2p/registry/%2E%2E/payments",
        "/openg2p/%E2%80%AEyrtsiger",
    ] {
        let resp = strict
            .client
            .post(strict.url("/events"))
            .header("content-type", "application/json")
            .header("ce-specversion", "1.0")
            .header("ce-id", "bin")
            .header("ce-source", header)
            .header("ce-type", "t")
            .body(json!({"actor": {"id": "u"}, "action": "a", "outcome": "success"}).to_string())
            .send()
            .await
            .unwrap();
        let (status, body) = common::read(resp).await;
        assert_eq!(status, 422, "{header}: {body}");
        let msg = body["errors"][0]["message"].as_str().unwrap();
        assert!(msg.starts_with("source: "), "{header}: {msg}");
    }
    let (status, body) = strict
        .post_json("/events", &reference_event("fine", |_| {}))
        .await;
    assert_eq!(status, 202, "{body}");

    let mut app = TestApp::start().await;
    for (id, source, _) in suspicious_sources() {
        let ev = reference_event(id, |v| v["source"] = json!(source));
        let (status, body) = app.post_json("/events", &ev).await;
        assert_eq!(status, 202, "{id}: {body}");
    }
    let (_, metrics) = app.get_text("/metrics").await;
    let count = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics"))
    };
    for (label, n) in [("dot_segment", 3), ("bidi_control", 4)] {
        assert_eq!(
            count(&format!(
                "audit_suspicious_source_total{{reason=\"{label}\"}}"
            )),
            n
        );
        assert_eq!(
            count(&format!(
                "audit_events_normalized_total{{rule=\"source_{label}\"}}"
            )),
            n
        );
    }
    app.stop().await;
    let stored: HashMap<String, Value> = exported(&app.spool_dir())
        .into_iter()
        .map(|v| (v["id"].as_str().unwrap().to_owned(), v))
        .collect();
    for (id, source, _) in suspicious_sources() {
        assert_eq!(stored[id]["source"], source, "{id}: kept as sent");
    }
}
