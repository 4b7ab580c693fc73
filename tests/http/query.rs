//! The query role against a real PostgreSQL: every filter alone and combined returns exactly
//! the rows a model of the data set says it should (property test), pages return every row
//! once while rows arrive, the statements use the indexes and prune partitions (EXPLAIN),
//! exports stream every match, and every read is itself recorded as an audit event.

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use audit_manager::config::{Config, Role};
use audit_manager::event::Row;
use audit_manager::query::{Filter, sql};
use audit_manager::store::Store;
use chrono::{DateTime, TimeZone, Utc};
use common::{TestApp, TestDb, TestKafka, code, eventually};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use serde_json::Value;

const ACTORS: [&str; 4] = ["alice", "bob", "carol", "dave"];
const RESOURCE_TYPES: [Option<&str>; 3] = [Some("beneficiary"), Some("payment"), None];
const RESOURCE_IDS: [&str; 3] = ["r1", "r2", "r3"];
const TYPES: [&str; 3] = ["t.login", "t.update", "t.approve"];
const OUTCOMES: [&str; 3] = ["success", "failure", "denied"];
const SUBJECTS: [Option<&str>; 3] = [None, Some("s1"), Some("s2")];
const SOURCES: [&str; 2] = ["/registry", "/payments"];
const TRACES: [Option<&str>; 3] = [None, Some("trace-a"), Some("trace-b")];

fn base_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

/// `n` rows over four months; timestamps repeat (ties are broken by `id`).
fn dataset(n: usize, seed: u64) -> Vec<Row> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let resource_type = RESOURCE_TYPES[rng.random_range(0..3)];
            let slots = (n as i64 / 2).max(1);
            let slot: i64 = rng.random_range(0..slots);
            Row {
                id: format!("ev-{i:05}"),
                occurred_at: base_time() + chrono::Duration::minutes(slot * 172_800 / slots),
                source: SOURCES[rng.random_range(0..2)].into(),
                r#type: TYPES[rng.random_range(0..3)].into(),
                subject: SUBJECTS[rng.random_range(0..3)].map(Into::into),
                actor_type: "user".into(),
                actor_id: ACTORS[rng.random_range(0..4)].into(),
                resource_type: resource_type.map(Into::into),
                resource_id: resource_type.map(|_| RESOURCE_IDS[rng.random_range(0..3)].into()),
                action: "a".into(),
                outcome: OUTCOMES[rng.random_range(0..3)].into(),
                reason: None,
                trace_id: TRACES[rng.random_range(0..3)].map(Into::into),
                auth_type: None,
                auth_id: None,
                details: Some(format!(
                    r#"{{"n":{i},"changes":[{{"field":"x","before":1,"after":2}}]}}"#
                )),
            }
        })
        .collect()
}

/// The model: what a search must return, in order.
fn expected(rows: &[Row], f: &Filter) -> Vec<String> {
    let eq =
        |want: &Option<String>, have: Option<&str>| want.as_deref().is_none_or(|w| have == Some(w));
    let mut hits: Vec<&Row> = rows
        .iter()
        .filter(|r| {
            eq(&f.actor_id, Some(&r.actor_id))
                && eq(&f.resource_type, r.resource_type.as_deref())
                && eq(&f.resource_id, r.resource_id.as_deref())
                && eq(&f.r#type, Some(&r.r#type))
                && eq(&f.outcome, Some(&r.outcome))
                && eq(&f.subject, r.subject.as_deref())
                && eq(&f.source, Some(&r.source))
                && eq(&f.trace_id, r.trace_id.as_deref())
                && f.from.is_none_or(|t| r.occurred_at >= t)
                && f.to.is_none_or(|t| r.occurred_at < t)
        })
        .collect();
    hits.sort_by(|a, b| (b.occurred_at, &b.id).cmp(&(a.occurred_at, &a.id)));
    hits.into_iter().map(|r| r.id.clone()).collect()
}

fn query_string(f: &Filter, limit: usize) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in f.to_json() {
        q.append_pair(&k, v.as_str().unwrap());
    }
    q.append_pair("limit", &limit.to_string());
    q.finish()
}

/// Loads `rows` through the store (the sink's own write path).
async fn load(db: &TestDb, rows: &[Row]) {
    let store = Store::connect_lazy(&db.url, 4).expect("store");
    store.prepare().await.expect("schema");
    for chunk in rows.chunks(5000) {
        store.insert(chunk).await.expect("insert");
    }
    sqlx::query("ANALYZE audit_events")
        .execute(store.pool())
        .await
        .expect("analyze");
    store.close().await;
}

/// Query + forward (reads are recorded into the spool and forwarded to the mock broker; no
/// sink, so the data set stays exactly what the test loaded).
async fn query_app(db: &TestDb, kafka: &TestKafka, tweak: impl FnOnce(&mut Config)) -> TestApp {
    let url = db.url.clone();
    let bootstrap = kafka.bootstrap.clone();
    TestApp::with_kafka(&bootstrap, move |c| {
        c.roles = vec![Role::Query, Role::Forward];
        c.database.url = url.into();
        c.query.allow_anonymous = true;
        tweak(c);
    })
    .await
}

/// Every id of a search, following `next_cursor` page by page.
async fn all_pages(app: &TestApp, f: &Filter, limit: usize) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = query_string(f, limit);
        if let Some(c) = &cursor {
            q.push_str("&cursor=");
            q.push_str(c);
        }
        let (status, body) = app.get(&format!("/events?{q}")).await;
        assert_eq!(status, 200, "{q}: {body}");
        let events = body["response"]["events"].as_array().expect("events");
        assert!(events.len() <= limit);
        ids.extend(events.iter().map(|e| e["id"].as_str().unwrap().to_owned()));
        match body["response"]["next_cursor"].as_str() {
            Some(c) => {
                assert_eq!(events.len(), limit, "a page before the last is full");
                cursor = Some(c.to_owned());
            }
            None => break,
        }
    }
    ids
}

fn pick<T: Clone + std::fmt::Debug + 'static>(
    values: &'static [T],
) -> impl Strategy<Value = Option<T>> {
    proptest::option::weighted(0.35, proptest::sample::select(values))
}

fn filters() -> impl Strategy<Value = Filter> {
    let text = (
        pick(&ACTORS),
        pick(&RESOURCE_TYPES).prop_map(Option::flatten),
        pick(&RESOURCE_IDS),
        pick(&TYPES),
        pick(&OUTCOMES),
        pick(&SUBJECTS).prop_map(Option::flatten),
        pick(&SOURCES),
        pick(&TRACES).prop_map(Option::flatten),
    );
    let window = (
        proptest::option::of(0i64..130),
        proptest::option::of(1i64..60),
    );
    (text, window).prop_map(|((a, rt, ri, t, o, s, src, tr), (from, len))| Filter {
        actor_id: a.map(Into::into),
        resource_type: rt.map(Into::into),
        resource_id: ri.map(Into::into),
        r#type: t.map(Into::into),
        outcome: o.map(Into::into),
        subject: s.map(Into::into),
        source: src.map(Into::into),
        trace_id: tr.map(Into::into),
        from: from.map(|d| base_time() + chrono::Duration::days(d)),
        to: from
            .zip(len)
            .map(|(d, l)| base_time() + chrono::Duration::days(d + l)),
    })
}

#[test]
fn every_filter_alone_and_combined_returns_exactly_the_matching_rows() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let rows = dataset(600, 7);
    let (db, kafka, mut app) = rt.block_on(async {
        let db = TestDb::new().await;
        load(&db, &rows).await;
        let kafka = TestKafka::new(1);
        let app = query_app(&db, &kafka, |_| {}).await;
        (db, kafka, app)
    });
    // Each filter alone, every value (the combinations come from the property below).
    for f in [
        ACTORS
            .map(|v| Filter {
                actor_id: Some(v.into()),
                ..Filter::default()
            })
            .to_vec(),
        TYPES
            .map(|v| Filter {
                r#type: Some(v.into()),
                ..Filter::default()
            })
            .to_vec(),
        OUTCOMES
            .map(|v| Filter {
                outcome: Some(v.into()),
                ..Filter::default()
            })
            .to_vec(),
        SOURCES
            .map(|v| Filter {
                source: Some(v.into()),
                ..Filter::default()
            })
            .to_vec(),
        RESOURCE_IDS
            .map(|v| Filter {
                resource_id: Some(v.into()),
                ..Filter::default()
            })
            .to_vec(),
        vec![
            Filter {
                resource_type: Some("payment".into()),
                ..Filter::default()
            },
            Filter {
                subject: Some("s1".into()),
                ..Filter::default()
            },
            Filter {
                trace_id: Some("trace-b".into()),
                ..Filter::default()
            },
            Filter {
                from: Some(base_time() + chrono::Duration::days(40)),
                ..Filter::default()
            },
            Filter {
                to: Some(base_time() + chrono::Duration::days(40)),
                ..Filter::default()
            },
            Filter::default(),
        ],
    ]
    .concat()
    {
        let got = rt.block_on(all_pages(&app, &f, 97));
        assert_eq!(got, expected(&rows, &f), "{f:?}");
    }
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 48,
        ..ProptestConfig::default()
    });
    runner
        .run(&(filters(), 1usize..40), |(f, limit)| {
            let got = rt.block_on(all_pages(&app, &f, limit));
            prop_assert_eq!(got, expected(&rows, &f), "{:?} limit {}", f, limit);
            Ok(())
        })
        .unwrap();
    rt.block_on(app.stop());
    drop((db, kafka));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagination_returns_every_row_once_while_rows_arrive() {
    let db = TestDb::new().await;
    let rows = dataset(400, 11);
    load(&db, &rows).await;
    let kafka = TestKafka::new(1);
    let app = query_app(&db, &kafka, |_| {}).await;
    let writer = Store::connect_lazy(&db.url, 2).expect("store");
    let before: BTreeSet<String> = rows.iter().map(|r| r.id.clone()).collect();
    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut extra = 0usize;
    loop {
        let q = match &cursor {
            Some(c) => format!("/events?limit=13&cursor={c}"),
            None => "/events?limit=13".to_owned(),
        };
        let (status, body) = app.get(&q).await;
        assert_eq!(status, 200, "{body}");
        for e in body["response"]["events"].as_array().unwrap() {
            seen.push(e["id"].as_str().unwrap().to_owned());
        }
        // Between pages, rows arrive: newer than everything, and spread over the past.
        let mut new_rows = dataset(3, 100 + extra as u64);
        for (i, r) in new_rows.iter_mut().enumerate() {
            r.id = format!("late-{extra:04}-{i}");
            if i == 0 {
                r.occurred_at = Utc::now();
            }
        }
        extra += 1;
        writer.insert(&new_rows).await.expect("insert while paging");
        match body["response"]["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let unique: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "a row was returned twice");
    let missing: Vec<_> = before.difference(&unique).collect();
    assert!(missing.is_empty(), "rows never returned: {missing:?}");
    writer.close().await;
    let mut app = app;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_are_400_aud_013_naming_them() {
    let db = TestDb::new().await;
    load(&db, &dataset(10, 1)).await;
    let kafka = TestKafka::new(1);
    let mut app = query_app(&db, &kafka, |c| c.query.max_page_size = 50).await;
    for (q, name) in [
        ("actorid=alice", "actorid"),
        ("limit=51", "limit"),
        ("from=last-week", "from"),
        ("cursor=bogus", "cursor"),
        ("type=a&type=b", "type"),
    ] {
        let (status, body) = app.get(&format!("/events?{q}")).await;
        assert_eq!(status, 400, "{q}: {body}");
        assert_eq!(code(&body), "AUD-013");
        let msg = body["errors"][0]["message"].as_str().unwrap();
        assert!(msg.contains(&format!("`{name}`")), "{q}: {msg}");
    }
    let (status, body) = app.get("/events/ev-00003").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["response"]["events"][0]["id"], "ev-00003");
    assert_eq!(body["response"]["events"][0]["details"]["n"], 3);
    let (status, body) = app.get("/events/no-such-event").await;
    assert_eq!(status, 404, "{body}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_stream_every_match_as_ndjson_and_csv() {
    let db = TestDb::new().await;
    // More rows than one export page, so the export crosses page boundaries.
    let rows = dataset(2600, 5);
    load(&db, &rows).await;
    let kafka = TestKafka::new(1);
    let mut app = query_app(&db, &kafka, |c| c.query.max_page_size = 10).await;
    let f = Filter {
        source: Some("/registry".into()),
        ..Filter::default()
    };
    let want = expected(&rows, &f);
    assert!(want.len() > 1000);
    let get = |accept: &'static str| {
        app.client
            .get(app.url("/events?source=%2Fregistry"))
            .header("accept", accept)
            .send()
    };
    let resp = get("application/x-ndjson").await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let text = resp.text().await.unwrap();
    let ids: Vec<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(ids, want);

    let resp = get("text/csv").await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let mut lines = text.split("\r\n").filter(|l| !l.is_empty());
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(&header[..3], ["id", "occurred_at", "ingested_at"]);
    let csv_ids: Vec<String> = lines
        .map(|l| l.split(',').next().unwrap().to_owned())
        .collect();
    assert_eq!(csv_ids, want);

    // An export is not a page: `limit` does not apply.
    let resp = app
        .client
        .get(app.url("/events?limit=5"))
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    app.stop().await;
}

/// Index names in `plan` and below it.
fn index_names(plan: &Value, out: &mut Vec<String>) {
    if let Some(idx) = plan["Index Name"].as_str() {
        out.push(idx.to_owned());
    }
    for c in plan["Plans"].as_array().into_iter().flatten() {
        index_names(c, out);
    }
}

/// Every scan of a table in `plan`: (node type, partition, the indexes it reads through; a
/// bitmap heap scan's come from its bitmap index scans).
fn scans(plan: &Value, out: &mut Vec<(String, String, Vec<String>)>) {
    if let Some(rel) = plan["Relation Name"].as_str() {
        let mut idx = Vec::new();
        index_names(plan, &mut idx);
        out.push((
            plan["Node Type"].as_str().unwrap_or("").to_owned(),
            rel.to_owned(),
            idx,
        ));
        return;
    }
    for c in plan["Plans"].as_array().into_iter().flatten() {
        scans(c, out);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_use_their_index_and_only_the_windows_partitions() {
    let db = TestDb::new().await;
    // Enough rows and distinct values that an index is the planner's honest choice.
    let mut rows = dataset(40_000, 3);
    for (i, r) in rows.iter_mut().enumerate() {
        r.actor_id = format!("user-{}", i % 2000);
        r.resource_id = r
            .resource_type
            .as_ref()
            .map(|_| format!("res-{}", i % 3000));
        r.r#type = format!("type-{}", i % 300);
        r.trace_id = Some(format!("{:032x}", i / 3));
    }
    load(&db, &rows).await;
    let store = Store::connect_read_only(&db.url, 2, Duration::from_secs(10)).expect("store");
    let pool = store.pool();
    // Which parent index each partition's index belongs to.
    let parents: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.relname::text, p.relname::text FROM pg_inherits i \
         JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent \
         WHERE c.relkind = 'i'",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let parent_of = |idx: &str| {
        parents
            .iter()
            .find(|(c, _)| c == idx)
            .map(|(_, p)| p.clone())
            .unwrap_or_else(|| idx.to_owned())
    };
    let window = |f: Filter| Filter {
        from: Some(Utc.with_ymd_and_hms(2026, 2, 5, 0, 0, 0).unwrap()),
        to: Some(Utc.with_ymd_and_hms(2026, 3, 7, 0, 0, 0).unwrap()),
        ..f
    };
    let sample = &rows[123];
    for (name, f, index) in [
        (
            "actor",
            window(Filter {
                actor_id: Some(sample.actor_id.clone()),
                ..Filter::default()
            }),
            "idx_audit_events_actor",
        ),
        (
            "resource",
            window(Filter {
                resource_type: Some("payment".into()),
                resource_id: Some("res-7".into()),
                ..Filter::default()
            }),
            "idx_audit_events_resource",
        ),
        (
            "type",
            window(Filter {
                r#type: Some(sample.r#type.clone()),
                ..Filter::default()
            }),
            "idx_audit_events_type",
        ),
        (
            "trace",
            window(Filter {
                trace_id: sample.trace_id.clone(),
                ..Filter::default()
            }),
            "idx_audit_events_trace",
        ),
    ] {
        let plan = sql::explain(pool, &f, None, 100).await.expect("explain");
        let mut found = Vec::new();
        scans(&plan[0]["Plan"], &mut found);
        assert!(!found.is_empty(), "{name}: no scans in {plan}");
        let partitions: BTreeSet<&str> = found.iter().map(|(_, rel, _)| rel.as_str()).collect();
        assert_eq!(
            partitions,
            BTreeSet::from(["audit_events_2026_02", "audit_events_2026_03"]),
            "{name}: the window spans February and March only; plan: {plan}"
        );
        for (node, rel, indexes) in &found {
            assert!(
                !indexes.is_empty() && indexes.iter().all(|i| parent_of(i) == index),
                "{name}: {rel} is read by a {node} on {indexes:?}, not the {index} index; \
                 plan: {plan}"
            );
        }
    }
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_read_is_recorded_as_an_audit_event_that_becomes_a_row() {
    let db = TestDb::new().await;
    load(&db, &dataset(20, 2)).await;
    let kafka = TestKafka::new(1);
    let url = db.url.clone();
    let bootstrap = kafka.bootstrap.clone();
    let mut app = TestApp::with_kafka(&bootstrap, move |c| {
        c.roles = vec![Role::Query, Role::Forward, Role::Sink];
        c.database.url = url.into();
        c.query.allow_anonymous = true;
        c.sink.flush_interval = Duration::from_millis(50);
        c.kafka
            .consumer
            .insert("session.timeout.ms".into(), "6000".into());
    })
    .await;
    let (status, _) = app.get("/events?actor_id=alice&limit=3").await;
    assert_eq!(status, 200);
    let resp = app
        .client
        .get(app.url("/events?outcome=denied"))
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let pool = db.pool().await;
    let recorded: Vec<(String, String, Value)> = eventually(
        Duration::from_secs(30),
        "both reads stored as audit events",
        || {
            let pool = pool.clone();
            async move {
                let rows: Vec<(String, String, Value)> = sqlx::query_as(
                    "SELECT action, outcome, details FROM audit_events \
                     WHERE type = 'org.openg2p.auditmanager.query' ORDER BY occurred_at",
                )
                .fetch_all(&pool)
                .await
                .ok()?;
                (rows.len() >= 2).then_some(rows)
            }
        },
    )
    .await;
    assert_eq!(recorded[0].0, "audit.query");
    assert_eq!(recorded[0].1, "success");
    assert_eq!(recorded[0].2["context"]["actor_id"], "alice");
    assert_eq!(recorded[1].0, "audit.export");
    assert_eq!(recorded[1].2["context"]["outcome"], "denied");
    app.stop().await;
}

#[tokio::test]
async fn the_query_role_refuses_to_start_without_reader_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        roles: vec![Role::Query, Role::Forward],
        ..Config::default()
    };
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.spool.path = dir.path().join("spool");
    let err = audit_manager::serve::start(
        config,
        tokio_util::sync::CancellationToken::new(),
        audit_manager::serve::StartOptions::default(),
    )
    .await
    .err()
    .expect("refused");
    let msg = format!("{err:#}");
    assert!(msg.contains("query.allow_anonymous"), "{msg}");
}

/// `(actor_id, outcome, auth_type, auth_id, details)` of a recorded read.
type ReadRow = (String, String, Option<String>, Option<String>, Value);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_readers_read_and_every_read_or_refusal_becomes_a_row() {
    use sha2::{Digest, Sha256};
    let hash = |t: &str| hex::encode(Sha256::digest(t.as_bytes()));
    let db = TestDb::new().await;
    load(&db, &dataset(30, 4)).await;
    let kafka = TestKafka::new(1);
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.yaml");
    std::fs::write(
        &tokens,
        format!(
            "principals:\n  - name: registry\n    role: emitter\n    token_sha256: \"{}\"\n    \
             sources: [\"/registry/*\"]\n  - name: investigator\n    role: reader\n    \
             token_sha256: \"{}\"\n",
            hash("emitter-secret-token"),
            hash("reader-secret-token")
        ),
    )
    .unwrap();
    let url = db.url.clone();
    let mut app = TestApp::with_kafka(&kafka.bootstrap.clone(), move |c| {
        c.roles = vec![Role::Query, Role::Forward, Role::Sink];
        c.database.url = url.into();
        c.auth.mode = audit_manager::config::AuthMode::Token;
        c.auth.tokens_file = Some(tokens);
        c.query.statement_timeout = Duration::from_millis(500);
        c.sink.flush_interval = Duration::from_millis(50);
        c.kafka
            .consumer
            .insert("session.timeout.ms".into(), "6000".into());
    })
    .await;
    let get = |path: &str, token: Option<&'static str>| {
        let mut req = app.client.get(app.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move { common::read(req.send().await.unwrap()).await }
    };
    let (status, body) = get("/events?actor_id=alice", None).await;
    assert_eq!((status, code(&body)), (401, "AUD-010"), "{body}");
    let (status, body) = get("/events?actor_id=bob", Some("emitter-secret-token")).await;
    assert_eq!((status, code(&body)), (403, "AUD-012"), "{body}");
    let (status, body) = get("/events/ev-00001", Some("emitter-secret-token")).await;
    assert_eq!((status, code(&body)), (403, "AUD-012"), "{body}");
    let (status, body) = get("/events?actor_id=carol", Some("reader-secret-token")).await;
    assert_eq!(status, 200, "{body}");
    // The page itself holds no data: a browser loads it before any credential is entered.
    let (status, _) = get("/ui/", None).await;
    assert_eq!(status, 200);
    // A reader's refused reads: a bad parameter, and a database that does not answer (the
    // table locked past query.statement_timeout).
    let (status, body) = get("/events?actorid=dave", Some("reader-secret-token")).await;
    assert_eq!((status, code(&body)), (400, "AUD-013"), "{body}");
    let pool = db.pool().await;
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE audit_events IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let (status, body) = get("/events?actor_id=erin", Some("reader-secret-token")).await;
    assert_eq!((status, code(&body)), (503, "AUD-006"), "{body}");
    let (status, body) = get("/events/ev-00002", Some("reader-secret-token")).await;
    assert_eq!((status, code(&body)), (503, "AUD-006"), "{body}");
    lock.rollback().await.unwrap();
    let (status, body) = get("/events/ev-00003", Some("not-a-token")).await;
    assert_eq!((status, code(&body)), (401, "AUD-010"), "{body}");

    let recorded: Vec<ReadRow> = eventually(
        Duration::from_secs(30),
        "the reads and refusals stored as audit events",
        || {
            let pool = pool.clone();
            async move {
                let rows: Vec<ReadRow> = sqlx::query_as(
                    "SELECT actor_id, outcome, auth_type, auth_id, details FROM audit_events \
                         WHERE type = 'org.openg2p.auditmanager.query' ORDER BY occurred_at",
                )
                .fetch_all(&pool)
                .await
                .ok()?;
                (rows.len() >= 8).then_some(rows)
            }
        },
    )
    .await;
    assert_eq!(
        recorded.len(),
        8,
        "one event per read or refusal: {recorded:?}"
    );
    // Refused for its credentials: no principal was verified, the attempt is anonymous.
    let (actor, outcome, auth_type, _, details) = &recorded[0];
    assert_eq!((actor.as_str(), outcome.as_str()), ("anonymous", "denied"));
    assert_eq!(auth_type.as_deref(), None);
    assert_eq!(details["context"]["actor_id"], "alice");
    assert_eq!(details["context"]["error"], "AUD-010");
    let recorded = recorded[1..].to_vec();
    let (actor, outcome, auth_type, auth_id, details) = &recorded[0];
    assert_eq!((actor.as_str(), outcome.as_str()), ("registry", "denied"));
    assert_eq!(details["context"]["actor_id"], "bob");
    assert_eq!(auth_id.as_deref(), Some("registry"));
    assert_eq!(auth_type.as_deref(), Some("api_key"));
    assert_eq!(recorded[1].2.as_deref(), Some("api_key"));
    assert_eq!(recorded[1].4["context"]["id"], "ev-00001");
    let (actor, outcome, _, auth_id, details) = &recorded[2];
    assert_eq!(
        (actor.as_str(), outcome.as_str()),
        ("investigator", "success")
    );
    assert_eq!(auth_id.as_deref(), Some("investigator"));
    assert_eq!(details["context"]["actor_id"], "carol");
    // The reader's failures: what was asked and the code answered.
    let failures: Vec<(&str, &str, &Value)> = recorded[3..6]
        .iter()
        .map(|(actor, outcome, _, _, details)| {
            (actor.as_str(), outcome.as_str(), &details["context"])
        })
        .collect();
    assert!(
        failures
            .iter()
            .all(|(a, o, _)| (*a, *o) == ("investigator", "failure")),
        "{failures:?}"
    );
    assert_eq!(failures[0].2["query"], "actorid=dave");
    assert_eq!(failures[0].2["error"], "AUD-013");
    assert_eq!(failures[1].2["actor_id"], "erin");
    assert_eq!(failures[1].2["error"], "AUD-006");
    assert_eq!(failures[2].2["id"], "ev-00002");
    assert_eq!(failures[2].2["error"], "AUD-006");
    let (actor, outcome, _, _, details) = &recorded[6];
    assert_eq!((actor.as_str(), outcome.as_str()), ("anonymous", "denied"));
    assert_eq!(details["context"]["id"], "ev-00003");
    assert_eq!(details["context"]["error"], "AUD-010");
    app.stop().await;
}

/// Every error answer is the envelope with a code: a parameter `/seals` does not know, and
/// what the HTTP framework refuses on its own (a method a route does not serve, a path that
/// is not UTF-8).
#[tokio::test]
async fn every_error_is_the_envelope_with_a_code() {
    let mut app = TestApp::start().await;
    let check = |what: &str, resp: reqwest::Response, status: u16, want: &str| {
        assert_eq!(resp.status().as_u16(), status, "{what}");
        let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with("application/json"), "{what}: {ct}");
        let what = what.to_owned();
        let want = want.to_owned();
        async move {
            let body: Value = resp.json().await.unwrap();
            assert_eq!(code(&body), want, "{what}: {body}");
            assert!(
                body["errors"][0]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty())
            );
            assert!(
                body["response"].is_null() && body["id"].is_string(),
                "{body}"
            );
            body
        }
    };
    for q in [
        "form=2026-01-01T00:00:00Z",
        "from=2026-01-01T00:00:00Z&from=2026-02-01T00:00:00Z",
        "to=",
        "to=yesterday",
    ] {
        let resp = app
            .client
            .get(app.url(&format!("/seals?{q}")))
            .send()
            .await
            .unwrap();
        check(q, resp, 400, "AUD-013").await;
    }
    let resp = app.client.delete(app.url("/events")).send().await.unwrap();
    let allow = resp.headers()["allow"].to_str().unwrap().to_owned();
    assert!(allow.contains("POST") && allow.contains("GET"), "{allow}");
    let body = check("DELETE /events", resp, 405, "AUD-405").await;
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("DELETE")
    );
    let resp = app
        .client
        .get(app.url("/events/batch"))
        .send()
        .await
        .unwrap();
    check("GET /events/batch", resp, 405, "AUD-405").await;
    let resp = app
        .client
        .get(app.url("/docs/assets/%FF"))
        .send()
        .await
        .unwrap();
    check("a path that is not UTF-8", resp, 400, "AUD-400").await;
    let resp = app.client.get(app.url("/nowhere")).send().await.unwrap();
    check("an unknown route", resp, 404, "AUD-404").await;
    app.stop().await;
}
