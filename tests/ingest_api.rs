//! The HTTP contract: accepted forms, every documented error code, batch atomicity.

mod common;

use audit_manager::event::ValidationMode;
use common::{TestApp, code, event, exported_ids};
use serde_json::{Value, json};

#[tokio::test]
async fn single_event_is_accepted_and_spooled() {
    let mut app = TestApp::start().await;
    let (status, body) = app.post_json("/events", &event("evt-1")).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["response"]["accepted"], "evt-1");
    assert_eq!(body["id"], "openg2p.auditmanager");
    assert_eq!(body["version"], "1.0");
    assert_eq!(body["errors"], json!([]));
    let rt = body["responsetime"].as_str().unwrap();
    assert!(rt.ends_with('Z') && rt.len() == 24, "responsetime {rt}");

    let (status, _) = app
        .post_raw(
            "/events",
            "application/cloudevents+json; charset=utf-8",
            event("evt-2").to_string().into_bytes(),
        )
        .await;
    assert_eq!(status, 202);
    app.stop().await;
    assert_eq!(exported_ids(&app.spool_dir()), vec!["evt-1", "evt-2"]);
}

#[tokio::test]
async fn defaults_are_filled_before_spooling() {
    let mut app = TestApp::start().await;
    let mut ev = event("x");
    let obj = ev.as_object_mut().unwrap();
    obj.remove("id");
    obj.remove("time");
    let (status, body) = app.post_json("/events", &ev).await;
    assert_eq!(status, 202, "{body}");
    let id = body["response"]["accepted"].as_str().unwrap().to_owned();
    assert!(!id.is_empty());
    app.stop().await;
    let dir = app.spool_dir();
    let (_, stdout, _) = common::run_cli(
        &["spool", "export"],
        &[("AUDIT_MANAGER__SPOOL__PATH", dir.to_str().unwrap())],
    );
    let stored: Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(stored["id"], id.as_str());
    assert!(stored["time"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(stored["datacontenttype"], "application/json");
    assert_eq!(stored["data"]["changes"][0]["field"], "phone");
}

#[tokio::test]
async fn binary_mode_event_is_accepted() {
    let mut app = TestApp::start().await;
    let data = json!({"actor": {"id": "svc-1", "type": "service"}, "action": "login",
                      "outcome": "denied"});
    let resp = app
        .client
        .post(app.url("/events"))
        .header("content-type", "application/json")
        .header("ce-specversion", "1.0")
        .header("ce-id", "bin-1")
        .header("ce-source", "urn:openg2p:auth")
        .header("ce-type", "org.openg2p.auth.login")
        .header("ce-subject", "user%2F7")
        .header("ce-tenant", "north")
        .body(data.to_string())
        .send()
        .await
        .unwrap();
    let (status, body) = common::read(resp).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["response"]["accepted"], "bin-1");
    app.stop().await;
    let dir = app.spool_dir();
    let (_, stdout, _) = common::run_cli(
        &["spool", "export"],
        &[("AUDIT_MANAGER__SPOOL__PATH", dir.to_str().unwrap())],
    );
    let stored: Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(stored["subject"], "user/7");
    assert_eq!(stored["tenant"], "north");
    assert_eq!(stored["data"]["outcome"], "denied");
}

#[tokio::test]
async fn batch_forms_are_accepted_in_order() {
    let mut app = TestApp::start().await;
    let (status, body) = app
        .post_json(
            "/events/batch",
            &json!({"events": [event("b1"), event("b2")]}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["response"]["accepted"], json!(["b1", "b2"]));
    assert_eq!(body["response"]["count"], 2);
    let arr = json!([event("b3"), event("b4"), event("b5")]);
    let (status, body) = app
        .post_raw(
            "/events/batch",
            "application/cloudevents-batch+json",
            arr.to_string().into_bytes(),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["response"]["count"], 3);
    app.stop().await;
    assert_eq!(
        exported_ids(&app.spool_dir()),
        vec!["b1", "b2", "b3", "b4", "b5"]
    );
}

/// Every bad input gets its documented status and code, and the server keeps serving.
/// (`strict` mode: a future time and an empty batch are refused only there.)
#[tokio::test]
async fn bad_input_gets_documented_codes_and_server_keeps_serving() {
    let mut app = TestApp::start_with(
        |c| {
            c.http.max_body_bytes = 256 * 1024;
            c.ingest.max_batch_size = 3;
            c.ingest.validation = ValidationMode::Strict;
        },
        Default::default(),
    )
    .await;

    let without = |path: &[&str]| {
        let mut ev = event("bad");
        let (last, parents) = path.split_last().unwrap();
        let mut cur = &mut ev;
        for p in parents {
            cur = &mut cur[*p];
        }
        cur.as_object_mut().unwrap().remove(*last);
        ev
    };
    let with = |path: &[&str], v: Value| {
        let mut ev = event("bad");
        let mut cur = &mut ev;
        for p in path {
            cur = &mut cur[*p];
        }
        *cur = v;
        ev
    };
    let json_cases: Vec<(&str, Value, u16, &str, &str)> = vec![
        (
            "specversion",
            with(&["specversion"], json!("0.3")),
            422,
            "AUD-002",
            "specversion",
        ),
        ("no source", without(&["source"]), 422, "AUD-002", "source"),
        ("no type", without(&["type"]), 422, "AUD-002", "type"),
        ("no data", without(&["data"]), 422, "AUD-002", "data"),
        (
            "no actor id",
            without(&["data", "actor", "id"]),
            422,
            "AUD-002",
            "data.actor.id",
        ),
        (
            "no action",
            without(&["data", "action"]),
            422,
            "AUD-002",
            "data.action",
        ),
        (
            "bad outcome",
            with(&["data", "outcome"], json!("ok")),
            422,
            "AUD-002",
            "data.outcome",
        ),
        (
            "bad actor type",
            with(&["data", "actor", "type"], json!("robot")),
            422,
            "AUD-002",
            "data.actor.type",
        ),
        (
            "bad time",
            with(&["time"], json!("yesterday")),
            422,
            "AUD-002",
            "time",
        ),
        (
            "future time",
            with(&["time"], json!("2999-01-01T00:00:00Z")),
            422,
            "AUD-002",
            "time",
        ),
        ("not an object", json!([1, 2]), 422, "AUD-002", ""),
    ];
    for (what, body, status, want, field) in json_cases {
        let (got, resp) = app.post_json("/events", &body).await;
        assert_eq!(got, status, "{what}: {resp}");
        assert_eq!(code(&resp), want, "{what}: {resp}");
        let msg = resp["errors"][0]["message"].as_str().unwrap();
        assert!(
            msg.contains(field),
            "{what}: message {msg:?} should name {field}"
        );
        assert_eq!(resp["response"], Value::Null);
    }

    let deep = "[".repeat(100_000) + &"]".repeat(100_000);
    let raw_cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        (
            "non-JSON",
            "application/json",
            b"this is not json".to_vec(),
            400,
            "AUD-001",
        ),
        (
            "invalid UTF-8",
            "application/json",
            b"{\"id\":\"\xff\xfe\"}".to_vec(),
            400,
            "AUD-001",
        ),
        (
            "deep nesting",
            "application/json",
            deep.into_bytes(),
            400,
            "AUD-001",
        ),
        (
            "form",
            "application/x-www-form-urlencoded",
            b"a=b".to_vec(),
            415,
            "AUD-008",
        ),
        (
            "text",
            "text/plain",
            event("t").to_string().into_bytes(),
            415,
            "AUD-008",
        ),
        (
            "too big",
            "application/json",
            vec![b' '; 257 * 1024],
            413,
            "AUD-003",
        ),
    ];
    for (what, ct, body, status, want) in raw_cases {
        let (got, resp) = app.post_raw("/events", ct, body).await;
        assert_eq!(got, status, "{what}: {resp}");
        assert_eq!(code(&resp), want, "{what}: {resp}");
    }

    let four: Vec<Value> = (0..4).map(|i| event(&format!("e{i}"))).collect();
    let (got, resp) = app
        .post_json("/events/batch", &json!({ "events": four }))
        .await;
    assert_eq!((got, code(&resp)), (400, "AUD-007"), "{resp}");
    let (got, resp) = app.post_json("/events/batch", &json!({"events": []})).await;
    assert_eq!((got, code(&resp)), (422, "AUD-002"), "{resp}");
    let (got, resp) = app
        .post_raw("/events/batch", "text/csv", b"a,b".to_vec())
        .await;
    assert_eq!((got, code(&resp)), (415, "AUD-008"), "{resp}");

    // Still serving, and nothing of the above was spooled.
    let (status, body) = app.post_json("/events", &event("good")).await;
    assert_eq!(status, 202, "{body}");
    app.stop().await;
    assert_eq!(exported_ids(&app.spool_dir()), vec!["good"]);
}

#[tokio::test]
async fn a_single_event_over_max_event_bytes_is_413() {
    let app = TestApp::start_with(|c| c.ingest.max_event_bytes = 2048, Default::default()).await;
    let mut ev = event("big");
    ev["data"]["context"] = json!("x".repeat(4096));
    let (status, body) = app.post_json("/events", &ev).await;
    assert_eq!((status, code(&body)), (413, "AUD-003"), "{body}");
    let (status, body) = app
        .post_json("/events/batch", &json!({"events": [event("ok"), ev]}))
        .await;
    assert_eq!((status, code(&body)), (413, "AUD-003"), "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("events[1]"),
        "{body}"
    );
}

#[tokio::test]
async fn one_invalid_event_rejects_the_whole_batch() {
    let mut app = TestApp::start().await;
    let mut bad = event("b2");
    bad["data"].as_object_mut().unwrap().remove("action");
    let batch = json!({"events": [event("b1"), bad, event("b3")]});
    let (status, body) = app.post_json("/events/batch", &batch).await;
    assert_eq!((status, code(&body)), (422, "AUD-002"), "{body}");
    let msg = body["errors"][0]["message"].as_str().unwrap();
    assert!(msg.contains("events[1].data.action"), "{msg}");
    app.stop().await;
    assert!(
        exported_ids(&app.spool_dir()).is_empty(),
        "nothing of the batch is spooled"
    );
}

#[tokio::test]
async fn full_spool_answers_503_aud004_with_retry_after_and_never_202() {
    let mut app = TestApp::start_with(|c| c.spool.max_bytes = 4096, Default::default()).await;
    let mut accepted = Vec::new();
    let mut refused = 0;
    for i in 0..40 {
        let id = format!("f{i}");
        let resp = app
            .client
            .post(app.url("/events"))
            .json(&event(&id))
            .send()
            .await
            .unwrap();
        let retry_after = resp.headers().get("retry-after").cloned();
        let (status, body) = common::read(resp).await;
        match status {
            202 => {
                assert_eq!(refused, 0, "no 202 once the spool is full");
                accepted.push(id);
            }
            503 => {
                assert_eq!(code(&body), "AUD-004", "{body}");
                assert_eq!(retry_after.unwrap(), "1");
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(
        !accepted.is_empty() && refused > 0,
        "{} accepted, {refused} refused",
        accepted.len()
    );
    let (_, health) = app.get("/health").await;
    assert_eq!(
        health["response"]["roles"]["ingest"]["status"], "DEGRADED",
        "{health}"
    );

    // Room frees once delivered records are acknowledged: 202 again.
    let spool = app.running.as_ref().unwrap().spool.clone().unwrap();
    let first = spool.read_from(0, 1, usize::MAX).unwrap();
    spool
        .ack(first.iter().map(|s| s.seq()).collect())
        .await
        .unwrap();
    let (status, body) = app.post_json("/events", &event("after-room")).await;
    assert_eq!(status, 202, "{body}");
    accepted.remove(0);
    accepted.push("after-room".into());
    app.stop().await;
    assert_eq!(exported_ids(&app.spool_dir()), accepted);
}

#[tokio::test]
async fn ops_endpoints_answer() {
    let app = TestApp::start_with(
        |c| c.database.url = "postgres://audit:s3cr3t-pw@db.internal:5432/audit".into(),
        Default::default(),
    )
    .await;
    let (status, _) = app.post_json("/events", &event("m1")).await;
    assert_eq!(status, 202);

    let (status, health) = app.get("/health").await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["response"]["status"], "UP");
    assert_eq!(health["response"]["roles"]["ingest"]["spool"]["events"], 1);

    let (status, version) = app.get("/version").await;
    assert_eq!(status, 200);
    assert_eq!(
        version["response"]["service_version"],
        env!("CARGO_PKG_VERSION")
    );
    assert!(version["response"]["git_commit"].is_string());

    let (status, config) = app.get("/config").await;
    assert_eq!(status, 200);
    assert_eq!(config["response"]["kafka"]["topic"], "openg2p.audit.events");
    assert!(
        !config.to_string().contains("postgres://postgres@"),
        "no raw URLs: {config}"
    );

    let (status, doc) = app.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    for p in [
        "/events",
        "/events/batch",
        "/health",
        "/version",
        "/config",
        "/metrics",
    ] {
        let p = format!("/v1/auditmanager{p}");
        assert!(doc["paths"][&p].is_object(), "openapi lacks {p}");
    }

    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for m in [
        "audit_http_requests_total",
        "audit_events_accepted_total",
        "audit_spool_events",
        "audit_spool_bytes",
        "audit_spool_oldest_event_age_seconds",
        "audit_spool_commit_batch_events",
        "audit_spool_commit_duration_seconds",
    ] {
        assert!(text.contains(m), "metrics lack {m}:\n{text}");
    }
}

/// A NUL character or a duplicated key anywhere in the body is 422 AUD-002 naming the field,
/// in both modes and in every request form; nothing of it is spooled.
#[tokio::test]
async fn nul_and_duplicate_keys_are_422_in_both_modes() {
    let good = event("ok").to_string();
    let dup_outcome = good.replacen(
        r#""outcome":"success""#,
        r#""outcome":"failure","outcome":"success""#,
        1,
    );
    assert_ne!(dup_outcome, good);
    let nul_actor = good.replacen(r#""user-42""#, r#""user\u000042""#, 1);
    let nul_key = good.replacen(r#""changes""#, r#""chan\u0000ges""#, 1);
    let dup_top = good.replacen(r#""id":"ok""#, r#""id":"ok","id":"other""#, 1);
    let cases: Vec<(&str, &str, String, &str)> = vec![
        (
            "duplicate outcome",
            "/events",
            dup_outcome.clone(),
            "data.outcome",
        ),
        ("duplicate id", "/events", dup_top, "id"),
        (
            "NUL in actor id",
            "/events",
            nul_actor.clone(),
            "data.actor.id",
        ),
        ("NUL in a key", "/events", nul_key, "data.chan\\u0000ges"),
        (
            "duplicate in a batch",
            "/events/batch",
            format!(r#"{{"events":[{good},{dup_outcome}]}}"#),
            "events[1].data.outcome",
        ),
        (
            "NUL in a batch array",
            "/events/batch",
            format!("[{good},{nul_actor}]"),
            "events[1].data.actor.id",
        ),
    ];
    for mode in [ValidationMode::Compatible, ValidationMode::Strict] {
        let mut app = TestApp::start_with(|c| c.ingest.validation = mode, Default::default()).await;
        for (what, path, body, field) in &cases {
            let ct = if body.starts_with('[') {
                "application/cloudevents-batch+json"
            } else {
                "application/json"
            };
            let (status, resp) = app.post_raw(path, ct, body.clone().into_bytes()).await;
            assert_eq!(
                (status, code(&resp)),
                (422, "AUD-002"),
                "{mode} {what}: {resp}"
            );
            let msg = resp["errors"][0]["message"].as_str().unwrap();
            assert!(
                msg.starts_with(&format!("{field}: ")),
                "{mode} {what}: {msg:?} should name {field}"
            );
        }
        // Binary mode: a duplicated key in the body (= data), a NUL in a header value.
        for (header, body, field) in [
            (
                "x",
                r#"{"actor":{"id":"u"},"action":"a","outcome":"failure","outcome":"success"}"#,
                "data.outcome",
            ),
            (
                "a%00b",
                r#"{"actor":{"id":"u"},"action":"a","outcome":"success"}"#,
                "note",
            ),
        ] {
            let resp = app
                .client
                .post(app.url("/events"))
                .header("content-type", "application/json")
                .header("ce-specversion", "1.0")
                .header("ce-id", "bin")
                .header("ce-source", "s")
                .header("ce-type", "t")
                .header("ce-note", header)
                .body(body)
                .send()
                .await
                .unwrap();
            let (status, resp) = common::read(resp).await;
            assert_eq!((status, code(&resp)), (422, "AUD-002"), "{mode}: {resp}");
            let msg = resp["errors"][0]["message"].as_str().unwrap();
            assert!(msg.contains(field), "{mode}: {msg:?} should name {field}");
        }
        let (status, resp) = app
            .post_raw("/events", "application/json", good.clone().into_bytes())
            .await;
        assert_eq!(status, 202, "{mode}: {resp}");
        app.stop().await;
        assert_eq!(exported_ids(&app.spool_dir()), vec!["ok"], "{mode}");
    }
}
