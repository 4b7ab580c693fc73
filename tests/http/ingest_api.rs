//! The HTTP contract: accepted forms, every documented error code, batch atomicity.

use crate::common;

use std::time::Duration;

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

/// `ev` as JSON text, the object at `pointer` (`""`: the event) starting with `before` members
/// `"p<i>": i`, then `"key": first`, then `between` more members, then its own members, which
/// name `key` again: the first occurrence is its `before + 1`th key.
fn duplicated(
    ev: &Value,
    pointer: &str,
    key: &str,
    first: &str,
    before: usize,
    between: usize,
) -> String {
    let mut ev = ev.clone();
    let object = std::mem::replace(ev.pointer_mut(pointer).unwrap(), json!("\u{1}"));
    assert!(object.get(key).is_some(), "{key} in {object}");
    let pad = |from: usize, n: usize| -> String {
        (from..from + n)
            .map(|i| format!(r#""p{i}":{i},"#))
            .collect()
    };
    let members = object.to_string();
    let spliced = format!(
        "{{{}{}:{},{}{}",
        pad(0, before),
        json!(key),
        json!(first),
        pad(before, between),
        &members[1..]
    );
    ev.to_string().replacen(r#""\u0001""#, &spliced, 1)
}

/// A body with a duplicated key after 16 and more other keys: 422 naming the key in every
/// request form and both modes, never 202 (the sink would dead-letter it, or Kafka would carry
/// a `source` other than the one checked against the principal's patterns).
#[tokio::test]
async fn a_duplicate_key_after_many_keys_is_422_in_every_form() {
    let mut cases: Vec<(String, &str)> = Vec::new();
    // The first occurrence among the first 17 keys, the second among the next 16 (what the
    // borrowed path let through), and further apart.
    for (before, between) in [(16, 0), (16, 5), (0, 18), (10, 12), (20, 0), (3, 40)] {
        let ev = event("dup");
        cases.extend([
            (
                duplicated(&ev, "/data", "outcome", "failure", before, between),
                "data.outcome",
            ),
            (
                duplicated(&ev, "", "source", "urn:forbidden", before, between),
                "source",
            ),
            (
                duplicated(&ev, "/data/actor", "id", "admin", before, between),
                "data.actor.id",
            ),
        ]);
    }
    for (body, _) in &cases {
        assert!(
            serde_json::from_str::<Value>(body).is_ok(),
            "valid JSON: {body}"
        );
    }
    let good = event("ok").to_string();
    for mode in [ValidationMode::Compatible, ValidationMode::Strict] {
        let mut app = TestApp::start_with(|c| c.ingest.validation = mode, Default::default()).await;
        for (body, field) in &cases {
            let (status, resp) = app
                .post_raw("/events", "application/json", body.clone().into_bytes())
                .await;
            assert_eq!(
                (status, code(&resp)),
                (422, "AUD-002"),
                "{mode} {body}: {resp}"
            );
            let msg = resp["errors"][0]["message"].as_str().unwrap();
            assert!(msg.starts_with(&format!("{field}: ")), "{mode}: {msg}");

            let batch = format!(r#"{{"events":[{good},{body}]}}"#);
            let (status, resp) = app
                .post_raw("/events/batch", "application/json", batch.into_bytes())
                .await;
            assert_eq!(
                (status, code(&resp)),
                (422, "AUD-002"),
                "{mode} batch: {resp}"
            );
            let msg = resp["errors"][0]["message"].as_str().unwrap();
            assert!(
                msg.starts_with(&format!("events[1].{field}: ")),
                "{mode}: {msg}"
            );
        }
        // Binary mode: the body is `data`.
        for (before, between) in [(16, 0), (16, 5), (0, 18)] {
            let data = duplicated(
                &event("b")["data"],
                "",
                "outcome",
                "failure",
                before,
                between,
            );
            let resp = app
                .client
                .post(app.url("/events"))
                .header("content-type", "application/json")
                .header("ce-specversion", "1.0")
                .header("ce-id", "bin")
                .header("ce-source", "s")
                .header("ce-type", "t")
                .body(data)
                .send()
                .await
                .unwrap();
            let (status, resp) = common::read(resp).await;
            assert_eq!((status, code(&resp)), (422, "AUD-002"), "{mode}: {resp}");
            let msg = resp["errors"][0]["message"].as_str().unwrap();
            assert!(msg.starts_with("data.outcome: "), "{mode}: {msg}");
        }
        app.stop().await;
        assert!(exported_ids(&app.spool_dir()).is_empty(), "{mode}");
    }
}

/// Values PostgreSQL cannot index (the lengths an adversarial test sent) are 422 naming the
/// field, in both modes and every request form; never 202 and then a dead letter.
#[tokio::test]
async fn indexed_values_over_their_cap_are_422_naming_the_field() {
    let long_id = {
        let mut e = event("x");
        e["id"] = json!("i".repeat(10_006));
        e
    };
    let long_actor = {
        let mut e = event("y");
        e["data"]["actor"]["id"] = json!("a".repeat(12_000));
        e
    };
    let long_resource = {
        let mut e = event("z");
        e["data"]["resource"]["type"] = json!("r".repeat(257));
        e
    };
    let cases = [
        (long_id, "id", 10_006, 1024),
        (long_actor, "data.actor.id", 12_000, 1024),
        (long_resource, "data.resource.type", 257, 256),
    ];
    for mode in [ValidationMode::Compatible, ValidationMode::Strict] {
        let mut app = TestApp::start_with(|c| c.ingest.validation = mode, Default::default()).await;
        for (ev, field, len, cap) in &cases {
            let expected = format!("{field}: is {len} bytes long, over the limit of {cap} bytes");
            let (status, resp) = app.post_json("/events", ev).await;
            assert_eq!(
                (status, code(&resp)),
                (422, "AUD-002"),
                "{mode} {field}: {resp}"
            );
            let msg = resp["errors"][0]["message"].as_str().unwrap();
            assert!(msg.starts_with(&expected), "{mode}: {msg}");
            let (status, resp) = app
                .post_json("/events/batch", &json!({"events": [event("ok"), ev]}))
                .await;
            assert_eq!(
                (status, code(&resp)),
                (422, "AUD-002"),
                "{mode} {field}: {resp}"
            );
            let msg = resp["errors"][0]["message"].as_str().unwrap();
            assert!(
                msg.starts_with(&format!("events[1].{expected}")),
                "{mode}: {msg}"
            );
        }
        // Binary mode: the id in its header.
        let resp = app
            .client
            .post(app.url("/events"))
            .header("content-type", "application/json")
            .header("ce-specversion", "1.0")
            .header("ce-id", "i".repeat(10_006))
            .header("ce-source", "s")
            .header("ce-type", "t")
            .body(event("b")["data"].to_string())
            .send()
            .await
            .unwrap();
        let (status, resp) = common::read(resp).await;
        assert_eq!((status, code(&resp)), (422, "AUD-002"), "{mode}: {resp}");
        let msg = resp["errors"][0]["message"].as_str().unwrap();
        assert!(msg.starts_with("id: is 10006 bytes long"), "{mode}: {msg}");
        app.stop().await;
        assert!(exported_ids(&app.spool_dir()).is_empty(), "{mode}");
    }
}

/// Every capped value at its cap, random so PostgreSQL cannot compress it into fitting: 202,
/// and the row is in the table with each value whole (the caps are storable, not just checked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_at_their_cap_are_stored() {
    use audit_manager::config::Role;
    use audit_manager::event::INDEXED_CAPS;
    use audit_manager::serve::StartOptions;
    use rand::Rng;
    use rand::distr::Alphanumeric;

    let random = |len: usize| -> String {
        rand::rng()
            .sample_iter(&Alphanumeric)
            .take(len)
            .map(char::from)
            .collect()
    };
    let kafka = common::TestKafka::new(1);
    let db = common::TestDb::new().await;
    let base = common::sink_config(&kafka, &db.url, &[Role::Ingest, Role::Forward, Role::Sink]);
    let opts = StartOptions {
        forward: Some(common::kafka::fast_settings()),
        ..StartOptions::default()
    };
    let app = TestApp::start_with(
        move |c| {
            let spool = c.spool.path.clone();
            *c = base;
            c.spool.path = spool;
        },
        opts,
    )
    .await;
    let mut ev = event("x");
    let mut sent = std::collections::HashMap::new();
    for (path, cap) in INDEXED_CAPS {
        let value = random(cap);
        let pointer = format!("/{}", path.replace('.', "/"));
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        ev.pointer_mut(parent).unwrap()[key] = json!(value);
        sent.insert(path, value);
    }
    // `compatible` (the default) keeps a traceparent that is not W3C.
    let (status, body) = app.post_json("/events", &ev).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["response"]["accepted"], sent["id"].as_str());

    let pool = db.pool().await;
    type Stored = (
        String,
        String,
        String,
        Option<String>,
        String,
        Option<String>,
        Option<String>,
    );
    let row: Stored = common::eventually(Duration::from_secs(60), "the row", || {
        let pool = pool.clone();
        async move {
            sqlx::query_as(
                "SELECT id, source, type, subject, actor_id, resource_type, resource_id \
                 FROM audit_events",
            )
            .fetch_optional(&pool)
            .await
            .ok()
            .flatten()
        }
    })
    .await;
    assert_eq!(row.0, sent["id"]);
    assert_eq!(row.1, sent["source"]);
    assert_eq!(row.2, sent["type"]);
    assert_eq!(row.3.as_deref(), Some(sent["subject"].as_str()));
    assert_eq!(row.4, sent["data.actor.id"]);
    assert_eq!(row.5.as_deref(), Some(sent["data.resource.type"].as_str()));
    assert_eq!(row.6.as_deref(), Some(sent["data.resource.id"].as_str()));
    assert_eq!(kafka.dlq_len(), 0, "nothing dead-lettered");
}
