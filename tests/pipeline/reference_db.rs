//! Adopting a database the reference service created: its table, index names, partitions and
//! rows are kept, no index is built twice, and its rows are deduplicated against.

use crate::common;

use std::time::Duration;

use audit_manager::config::Role;
use audit_manager::serve::StartOptions;
use common::{TOPIC, TestApp, TestDb, TestKafka, count_rows, event_at, eventually, sink_config};
use sqlx::{Connection, PgConnection};

const WAIT: Duration = Duration::from_secs(60);

/// The reference's DDL and a few of its rows.
const REFERENCE_SCHEMA: &str = include_str!("../fixtures/reference-schema.sql");

/// The reference's index names, the primary key's, and the sealer's `seal_seq` index.
const REFERENCE_INDEXES: [&str; 7] = [
    "audit_events_pkey",
    "idx_audit_events_actor",
    "idx_audit_events_occurred_at",
    "idx_audit_events_resource",
    "idx_audit_events_seal_seq",
    "idx_audit_events_trace",
    "idx_audit_events_type",
];

async fn database_with(sql: &str) -> TestDb {
    let db = TestDb::new().await;
    let mut conn = PgConnection::connect(&db.url).await.expect("connect");
    sqlx::raw_sql(sql)
        .execute(&mut conn)
        .await
        .expect("the reference's DDL applies");
    conn.close().await.expect("close");
    db
}

async fn start_sink(kafka: &TestKafka, db: &TestDb) -> TestApp {
    let config = sink_config(kafka, &db.url, &[Role::Sink]);
    TestApp::start_with(move |c| *c = config, StartOptions::default()).await
}

/// `(table, index name, definition after USING)` of the parent and of every partition.
async fn indexes(pool: &sqlx::PgPool) -> Vec<(String, String, String)> {
    sqlx::query_as(
        "SELECT t.relname::text, c.relname::text,
                split_part(pg_get_indexdef(i.indexrelid), ' USING ', 2)
           FROM pg_index i
           JOIN pg_class c ON c.oid = i.indexrelid
           JOIN pg_class t ON t.oid = i.indrelid
          WHERE t.relname = 'audit_events'
             OR t.oid IN (SELECT inhrelid FROM pg_inherits
                           WHERE inhparent = 'audit_events'::regclass)
          ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await
    .expect("list indexes")
}

/// Asserts the parent and each partition carry exactly seven indexes (the primary key, the
/// reference's five, the `seal_seq` index) with distinct definitions; returns the parent's
/// index names.
async fn assert_seven_indexes_everywhere(pool: &sqlx::PgPool, partitions: &[&str]) -> Vec<String> {
    let all = indexes(pool).await;
    let mut tables: Vec<&str> = vec!["audit_events"];
    tables.extend_from_slice(partitions);
    for table in &tables {
        let defs: Vec<&str> = all
            .iter()
            .filter(|(t, _, _)| t == table)
            .map(|(_, _, d)| d.as_str())
            .collect();
        assert_eq!(
            defs.len(),
            7,
            "{table}: PK + 6 indexes expected, got {all:#?}"
        );
        let mut distinct = defs.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            7,
            "{table}: duplicate index definitions: {defs:?}"
        );
    }
    all.into_iter()
        .filter(|(t, _, _)| t == "audit_events")
        .map(|(_, name, _)| name)
        .collect()
}

async fn columns(pool: &sqlx::PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns
          WHERE table_name = 'audit_events' ORDER BY ordinal_position",
    )
    .fetch_all(pool)
    .await
    .expect("columns")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_adopts_a_reference_database_without_duplicate_indexes_or_rows() {
    let db = database_with(REFERENCE_SCHEMA).await;
    let pool = db.pool().await;
    assert_eq!(count_rows(&pool).await, 3, "the fixture's rows");
    let kafka = TestKafka::new(2);
    let _app = start_sink(&kafka, &db).await;

    // The same key keeps both on one partition, in order: when the new event's row is there, the
    // redelivery of the reference's row has been handled.
    let p = kafka.producer();
    let resent = event_at("ref-update-2", "2026-11-02T10:00:00Z");
    kafka
        .produce(&p, TOPIC, "k", resent.to_string().as_bytes())
        .await;
    let fresh = event_at("after-cutover", "2026-12-05T09:00:00Z");
    kafka
        .produce(&p, TOPIC, "k", fresh.to_string().as_bytes())
        .await;
    eventually(WAIT, "the post-cut-over event stored", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE id = $1")
            .bind("after-cutover")
            .fetch_one(&pool)
            .await
            .unwrap_or(0);
        (n == 1).then_some(())
    })
    .await;

    assert_eq!(
        count_rows(&pool).await,
        4,
        "the re-sent reference row is not stored twice"
    );
    let (action, details): (String, serde_json::Value) =
        sqlx::query_as("SELECT action, details FROM audit_events WHERE id = 'ref-update-2'")
            .fetch_one(&pool)
            .await
            .expect("the reference's row");
    assert_eq!(
        action, "beneficiary.update",
        "the reference's row is kept as it was"
    );
    assert_eq!(details["changes"][0]["field"], "phone");

    let mut names = assert_seven_indexes_everywhere(
        &pool,
        &[
            "audit_events_2026_10",
            "audit_events_2026_11",
            "audit_events_2026_12",
        ],
    )
    .await;
    names.sort_unstable();
    assert_eq!(
        names, REFERENCE_INDEXES,
        "the reference's index names are kept"
    );

    let cols = columns(&pool).await;
    for added in ["auth_type", "auth_id", "seal_seq"] {
        assert!(cols.iter().any(|c| c == added), "{added} added: {cols:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_equivalent_index_under_another_name_is_not_built_again() {
    // This service's index names before it took the reference's, e.g.
    // `audit_events_actor_idx`.
    let renamed = REFERENCE_SCHEMA
        .replace("idx_audit_events_trace", "audit_events_trace_id_idx")
        .replace(
            "idx_audit_events_occurred_at",
            "audit_events_occurred_at_idx",
        )
        .replace("idx_audit_events_actor", "audit_events_actor_idx")
        .replace("idx_audit_events_resource", "audit_events_resource_idx")
        .replace("idx_audit_events_type", "audit_events_type_idx");
    let db = database_with(&renamed).await;
    let pool = db.pool().await;
    let kafka = TestKafka::new(2);
    let _app = start_sink(&kafka, &db).await;

    let p = kafka.producer();
    let fresh = event_at("after-cutover", "2026-11-20T09:00:00Z");
    kafka
        .produce(&p, TOPIC, "k", fresh.to_string().as_bytes())
        .await;
    eventually(WAIT, "the event stored", || async {
        (count_rows(&pool).await == 4).then_some(())
    })
    .await;

    let mut names =
        assert_seven_indexes_everywhere(&pool, &["audit_events_2026_10", "audit_events_2026_11"])
            .await;
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "audit_events_actor_idx",
            "audit_events_occurred_at_idx",
            "audit_events_pkey",
            "audit_events_resource_idx",
            "audit_events_trace_id_idx",
            "audit_events_type_idx",
            "idx_audit_events_seal_seq",
        ]
    );
}

/// Preparing a table that already has every column, index and sequence takes no exclusive lock:
/// a long read (an investigator's export, a report) holding `audit_events` does not make a
/// restart or a maintenance pass wait, and so cannot queue every insert behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preparing_an_up_to_date_table_does_not_wait_for_readers() {
    let db = TestDb::new().await;
    let store = audit_manager::store::Store::connect_lazy(&db.url, 2).expect("store");
    store.prepare().await.expect("first prepare");
    let mut reader = PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut reader).await.unwrap();
    sqlx::query("LOCK TABLE audit_events IN ACCESS SHARE MODE")
        .execute(&mut reader)
        .await
        .unwrap();
    let again = tokio::time::timeout(Duration::from_secs(10), store.prepare()).await;
    sqlx::query("ROLLBACK").execute(&mut reader).await.unwrap();
    assert!(
        again.is_ok(),
        "prepare waited for a reader's lock: an ALTER TABLE ran on an up-to-date table"
    );
    again.unwrap().expect("second prepare");
    store.close().await;
}
