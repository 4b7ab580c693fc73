//! Partition maintenance and the store's inserts against the real PostgreSQL.

mod common;

use std::collections::BTreeSet;

use audit_manager::event::{ValidationMode, row_from_record};
use audit_manager::store::AdvisoryLock;
use audit_manager::store::{InsertMethod, Month, Store};
use chrono::{TimeZone, Utc};
use common::{TestDb, event_at, run_cli};
use sqlx::Connection;

fn now() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap()
}

async fn names(store: &Store) -> BTreeSet<String> {
    store
        .list_partitions()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn retention_drops_only_expired_partitions_by_catalog_bounds() {
    let db = TestDb::new().await;
    let store = Store::connect_lazy(&db.url, 2).unwrap();
    store.prepare().await.unwrap();
    store.prepare().await.expect("the DDL is idempotent");
    let m = |y, mo| Month::new(y, mo).unwrap();
    store
        .ensure_months([m(2019, 10), m(2019, 11), m(2020, 1), m(2026, 11)])
        .await
        .unwrap();
    let pool = db.pool().await;
    // Names that lie: bounds decide, not names.
    sqlx::query(
        "CREATE TABLE audit_events_archive PARTITION OF audit_events
         FOR VALUES FROM ('2018-01-01Z') TO ('2018-03-01Z')",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "CREATE TABLE audit_events_2001_01 PARTITION OF audit_events
         FOR VALUES FROM ('2027-06-01Z') TO ('2027-07-01Z')",
    )
    .execute(&pool)
    .await
    .unwrap();
    // 84 months before November 2026: the cutoff is 2019-11-01.
    let report = store
        .maintain(now(), 3, 84, true, true)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        report.created,
        vec!["audit_events_2026_12", "audit_events_2027_01"]
    );
    assert_eq!(
        report.dropped.iter().cloned().collect::<BTreeSet<_>>(),
        set(&["audit_events_archive", "audit_events_2019_10"])
    );
    assert_eq!(
        names(&store).await,
        set(&[
            "audit_events_2019_11",
            "audit_events_2020_01",
            "audit_events_2026_11",
            "audit_events_2026_12",
            "audit_events_2027_01",
            "audit_events_2001_01",
        ])
    );
    let again = store
        .maintain(now(), 3, 84, true, true)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again, Default::default(), "a second pass has nothing to do");
    let keep_forever = store
        .maintain(now(), 1, 0, false, true)
        .await
        .unwrap()
        .unwrap();
    assert!(keep_forever.dropped.is_empty(), "retention 0 never drops");
}

#[tokio::test]
async fn only_one_maintainer_works_at_a_time() {
    let db = TestDb::new().await;
    let a = Store::connect_lazy(&db.url, 2).unwrap();
    let b = Store::connect_lazy(&db.url, 2).unwrap();
    a.prepare().await.unwrap();
    // Another maintainer holds the lock: this one skips the pass and changes nothing.
    let mut holder = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(AdvisoryLock::Maintain.id())
        .execute(&mut holder)
        .await
        .unwrap();
    assert_eq!(a.maintain(now(), 3, 84, true, true).await.unwrap(), None);
    assert!(names(&a).await.is_empty());
    holder.close().await.unwrap();
    // Two at once: at least one works, and together they create each month exactly once.
    let (ra, rb) = tokio::join!(
        a.maintain(now(), 3, 84, true, true),
        b.maintain(now(), 3, 84, true, true)
    );
    let reports: Vec<_> = [ra.unwrap(), rb.unwrap()].into_iter().flatten().collect();
    assert!(!reports.is_empty());
    let created: Vec<String> = reports.into_iter().flat_map(|r| r.created).collect();
    assert_eq!(created.len(), 3, "{created:?}");
    assert_eq!(names(&a).await.len(), 3);
}

#[tokio::test]
async fn copy_and_unnest_write_identical_rows_and_collapse_duplicates() {
    for method in [InsertMethod::Copy, InsertMethod::CopyFirst] {
        copy_method_writes_what_unnest_writes(method).await;
    }
}

async fn copy_method_writes_what_unnest_writes(method: InsertMethod) {
    let db = TestDb::new().await;
    let unnest = Store::connect_lazy(&db.url, 2)
        .unwrap()
        .with_insert_method(InsertMethod::Unnest);
    let copy = Store::connect_lazy(&db.url, 2)
        .unwrap()
        .with_insert_method(method);
    unnest.prepare().await.unwrap();
    let mut tricky = event_at("tricky", "2026-11-01T10:00:00.123456Z");
    tricky["data"]["reason"] = serde_json::json!("tab\there, newline\nthere, back\\slash, ünïcødé");
    tricky["data"]["context"] = serde_json::json!({"quote": "\"", "tab": "\t"});
    let rows: Vec<_> = [tricky, event_at("plain", "2026-10-31T23:59:59Z")]
        .iter()
        .map(|e| {
            row_from_record(e.to_string().as_bytes(), now(), ValidationMode::default()).unwrap()
        })
        .collect();
    let first = copy.insert(&rows).await.unwrap();
    assert_eq!((first.rows, first.duplicates), (2, 0));
    let second = unnest.insert(&rows).await.unwrap();
    assert_eq!(
        (second.rows, second.duplicates),
        (0, 2),
        "same keys: no new rows"
    );
    let doubled = [rows.clone(), rows.clone()].concat();
    let third = copy.insert(&doubled).await.unwrap();
    assert_eq!((third.rows, third.duplicates), (0, 4));
    let pool = db.pool().await;
    let (reason, context): (String, serde_json::Value) =
        sqlx::query_as("SELECT reason, details->'context' FROM audit_events WHERE id = 'tricky'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(reason, "tab\there, newline\nthere, back\\slash, ünïcødé");
    assert_eq!(context, serde_json::json!({"quote": "\"", "tab": "\t"}));
    let micros: i64 = sqlx::query_scalar(
        "SELECT extract(microseconds FROM occurred_at)::int8 FROM audit_events WHERE id='tricky'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(micros, 123_456, "COPY keeps microseconds");
}

/// `CopyFirst` (the default): a batch mixing stored and new keys cannot be copied, so it is
/// written again by the conflict-skipping statement — new rows stored, stored ones counted as
/// duplicates, across several concurrent statements.
#[tokio::test]
async fn copy_first_falls_back_when_a_batch_holds_stored_keys() {
    let db = TestDb::new().await;
    let store = Store::connect_lazy(&db.url, 6)
        .unwrap()
        .with_insert_parallelism(4);
    store.prepare().await.unwrap();
    let row = |i: usize| {
        let e = event_at(&format!("e{i}"), "2026-11-03T08:00:00Z");
        row_from_record(e.to_string().as_bytes(), now(), ValidationMode::default()).unwrap()
    };
    let first: Vec<_> = (0..1000).map(row).collect();
    let done = store.insert(&first).await.unwrap();
    assert_eq!((done.rows, done.duplicates), (1000, 0));
    // Half of the rows already stored; split by id hash, every statement gets some of both.
    let mixed: Vec<_> = (0..2000).map(row).collect();
    let done = store.insert(&mixed).await.unwrap();
    assert_eq!((done.rows, done.duplicates), (1000, 1000));
    assert_eq!(common::count_rows(&db.pool().await).await, 2000);
}

/// A row PostgreSQL rejects (here: `details` that is not JSON) fails its statement; the sink's
/// bisection isolates it and stores every other row of the batch, with each insert method.
#[tokio::test]
async fn a_row_the_database_rejects_is_isolated_and_the_rest_stored() {
    for method in [
        InsertMethod::Unnest,
        InsertMethod::Copy,
        InsertMethod::CopyFirst,
    ] {
        let db = TestDb::new().await;
        let store = Store::connect_lazy(&db.url, 2)
            .unwrap()
            .with_insert_method(method);
        store.prepare().await.unwrap();
        let mut rows: Vec<_> = (0..9)
            .map(|i| {
                let e = event_at(&format!("r{i}"), "2026-11-03T08:00:00Z");
                row_from_record(e.to_string().as_bytes(), now(), ValidationMode::default()).unwrap()
            })
            .collect();
        rows[5].details = Some("{not json".into());
        let (done, bad) = audit_manager::sink::run::insert_bisecting(&store, &rows)
            .await
            .unwrap();
        assert_eq!(done.rows, 8, "{method:?}");
        assert_eq!(bad.len(), 1, "{method:?}");
        assert_eq!(bad[0].0, 5, "{method:?}");
        assert_eq!(bad[0].1.code().as_deref(), Some("22P02"), "{method:?}");
        assert_eq!(common::count_rows(&db.pool().await).await, 8);
    }
}

#[tokio::test]
async fn partitions_cli_ensure_list_drop_expired() {
    let db = TestDb::new().await;
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("AUDIT_MANAGER__DATABASE__PARTITION_PRE_CREATE_MONTHS", "2"),
        ("AUDIT_MANAGER__DATABASE__PARTITION_RETENTION_MONTHS", "1"),
    ];
    let (code, out, err) = run_cli(&["partitions", "ensure"], &env);
    assert_eq!(code, 0, "{err}");
    let this_month = Month::of(Utc::now());
    assert!(
        out.contains(&format!("created {}", this_month.table_name())),
        "{out}"
    );
    let store = Store::connect_lazy(&db.url, 1).unwrap();
    let old = this_month.plus(-3);
    store.ensure_months([old]).await.unwrap();
    let (code, out, err) = run_cli(&["partitions", "list"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&old.table_name()) && out.contains(&this_month.plus(1).table_name()),
        "{out}"
    );
    let (code, out, err) = run_cli(&["partitions", "drop-expired"], &env);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), format!("dropped {}", old.table_name()));
    assert_eq!(names(&store).await.len(), 2);
}

#[tokio::test]
async fn prepare_creates_a_missing_database() {
    let db = TestDb::unborn();
    let store = Store::connect_lazy(&db.url, 1).unwrap();
    store
        .prepare()
        .await
        .expect("database created, schema applied");
    let pool = db.pool().await;
    let indexes: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_indexes WHERE tablename = 'audit_events'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        indexes, 7,
        "primary key, the five indexes and the seal_seq index"
    );
    store.close().await;
}
