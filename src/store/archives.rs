//! `audit_archives` and the reads of the archiver (`crate::archive`): the rows of one archive
//! part streamed from PostgreSQL, the seals naming them, the record of each part (written as
//! an intent before its objects are uploaded, marked verified after they were read back), the
//! retention gate (a month is dropped only when every row is in a verified part), and the
//! restore of archived rows.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use futures_util::stream::BoxStream;
use sqlx::{PgConnection, PgPool};

use super::columns::{self, COLUMNS, StoredRow};
use super::ident::quote_ident;
use super::seals::SealCopy;

/// One record per archive part. `manifest_hash` is NULL while the part is being written (an
/// intent: a crash leaves it, the next pass finishes it with the same bounds), set once the
/// part's objects were uploaded and read back.
pub const DDL: &str = "CREATE TABLE IF NOT EXISTS audit_archives (
        sequence      bigint      PRIMARY KEY,
        month         text        NOT NULL,
        part          integer     NOT NULL,
        seal_after    bigint      NOT NULL,
        seal_upto     bigint      NOT NULL,
        legacy        boolean     NOT NULL,
        created_at    timestamptz NOT NULL,
        manifest_path text        NOT NULL,
        rows          bigint,
        manifest_hash bytea,
        verified_at   timestamptz,
        UNIQUE (month, part)
    )";

/// The column of `audit_retention_log` naming the archive of a dropped month: the manifest
/// hash of its newest verified part (which names every earlier part through the manifests'
/// chain).
pub const RETENTION_MANIFEST_DDL: &str =
    "ALTER TABLE audit_retention_log ADD COLUMN archive_manifest bytea";

/// Creates `audit_archives` and adds `audit_retention_log.archive_manifest` when missing (in
/// the schema transaction of `Store::prepare`, after the integrity schema; the `ALTER TABLE`
/// only when needed, so later starts take no lock on the table).
pub async fn apply(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query(DDL).execute(&mut *tx).await?;
    let present: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_attribute
                         WHERE attrelid = 'audit_retention_log'::regclass
                           AND attname = 'archive_manifest' AND NOT attisdropped)",
    )
    .fetch_one(&mut *tx)
    .await?;
    if !present {
        sqlx::query(RETENTION_MANIFEST_DDL)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// The manifest hash of `month`'s newest verified part, if any.
pub async fn newest_manifest(
    conn: &mut PgConnection,
    month: &str,
) -> Result<Option<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT manifest_hash FROM audit_archives
          WHERE month = $1 AND manifest_hash IS NOT NULL
          ORDER BY part DESC LIMIT 1",
    )
    .bind(month)
    .fetch_optional(conn)
    .await
    .map(Option::flatten)
}

/// One row of `audit_archives`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ArchiveRecord {
    pub sequence: i64,
    /// `YYYY-MM`.
    pub month: String,
    pub part: i32,
    /// The part holds the month's rows with `seal_after < seal_seq <= seal_upto`…
    pub seal_after: i64,
    pub seal_upto: i64,
    /// …and, when set, its rows without `seal_seq` (stored before sealing began).
    pub legacy: bool,
    pub created_at: DateTime<Utc>,
    pub manifest_path: String,
    pub rows: Option<i64>,
    pub manifest_hash: Option<Vec<u8>>,
    pub verified_at: Option<DateTime<Utc>>,
}

/// Every record, by sequence.
pub async fn records(pool: &PgPool) -> Result<Vec<ArchiveRecord>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM audit_archives ORDER BY sequence")
        .fetch_all(pool)
        .await
}

/// Stores the intent to write a part.
pub async fn insert_intent(pool: &PgPool, r: &ArchiveRecord) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit_archives (sequence, month, part, seal_after, seal_upto, legacy,
             created_at, manifest_path) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(r.sequence)
    .bind(&r.month)
    .bind(r.part)
    .bind(r.seal_after)
    .bind(r.seal_upto)
    .bind(r.legacy)
    .bind(r.created_at)
    .bind(&r.manifest_path)
    .execute(pool)
    .await
    .map(|_| ())
}

/// Marks part `sequence` verified: its objects were uploaded and read back.
pub async fn mark_verified(
    pool: &PgPool,
    sequence: i64,
    rows: i64,
    manifest_hash: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE audit_archives SET rows = $2, manifest_hash = $3, verified_at = clock_timestamp()
          WHERE sequence = $1",
    )
    .bind(sequence)
    .bind(rows)
    .bind(manifest_hash)
    .execute(pool)
    .await
    .map(|_| ())
}

/// The rows of a part in `[lower, upper)`: `after < seal_seq <= upto`, then (with `legacy`)
/// the rows without `seal_seq`.
static PART_ROWS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {} FROM audit_events
          WHERE occurred_at >= $1 AND occurred_at < $2
            AND ((seal_seq > $3 AND seal_seq <= $4) OR ($5 AND seal_seq IS NULL))
          ORDER BY seal_seq NULLS LAST, occurred_at, id",
        columns::select_list()
    )
});

/// The rows of one part, in the order the part stores them (streamed).
pub fn part_rows(
    conn: &mut PgConnection,
    lower: DateTime<Utc>,
    upper: DateTime<Utc>,
    after: i64,
    upto: i64,
    legacy: bool,
) -> BoxStream<'_, Result<StoredRow, sqlx::Error>> {
    sqlx::query_as(&PART_ROWS)
        .bind(lower)
        .bind(upper)
        .bind(after)
        .bind(upto)
        .bind(legacy)
        .fetch(conn)
}

/// How many rows a part would hold.
pub async fn count_part(
    pool: &PgPool,
    lower: DateTime<Utc>,
    upper: DateTime<Utc>,
    after: i64,
    upto: i64,
    legacy: bool,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM audit_events
          WHERE occurred_at >= $1 AND occurred_at < $2
            AND ((seal_seq > $3 AND seal_seq <= $4) OR ($5 AND seal_seq IS NULL))",
    )
    .bind(lower)
    .bind(upper)
    .bind(after)
    .bind(upto)
    .bind(legacy)
    .fetch_one(pool)
    .await
}

/// The seals from the one whose range holds `first_seq` to the one holding `last_seq`, in
/// order (streamed). Ranges are read from the signed bytes (`lo` at offset 54, `hi` at 62).
pub fn seals_holding(
    conn: &mut PgConnection,
    first_seq: i64,
    last_seq: i64,
) -> BoxStream<'_, Result<SealCopy, sqlx::Error>> {
    sqlx::query_as(
        "WITH r AS (
            SELECT seal_no,
                   ('x' || encode(substring(bytes from 55 for 8), 'hex'))::bit(64)::int8 AS lo,
                   ('x' || encode(substring(bytes from 63 for 8), 'hex'))::bit(64)::int8 AS hi
              FROM audit_seals)
         SELECT s.seal_no, s.bytes, s.signature, s.key_id FROM audit_seals s
          WHERE s.seal_no >= (SELECT min(seal_no) FROM r WHERE hi >= $1)
            AND s.seal_no <= (SELECT min(seal_no) FROM r WHERE hi >= $2)
          ORDER BY s.seal_no",
    )
    .bind(first_seq)
    .bind(last_seq)
    .fetch(conn)
}

/// Why retention may not drop partition `name` (`[lower, upper)`) yet, or `None` when every
/// one of its rows is in a verified archive part. Run in the dropping transaction after
/// locking the partition, so no row can arrive between the check and the drop.
pub async fn unarchived_reason(
    tx: &mut PgConnection,
    name: &str,
    lower: DateTime<Utc>,
    upper: DateTime<Utc>,
) -> Result<Option<String>, sqlx::Error> {
    let quoted = quote_ident(name);
    sqlx::query(&format!("LOCK TABLE {quoted} IN ACCESS EXCLUSIVE MODE"))
        .execute(&mut *tx)
        .await?;
    let month = super::Month::of(lower).to_string();
    let (parts, pending, upto, legacy, archived): (i64, i64, Option<i64>, bool, Option<i64>) =
        sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE manifest_hash IS NULL),
                    max(seal_upto) FILTER (WHERE manifest_hash IS NOT NULL),
                    COALESCE(bool_or(legacy) FILTER (WHERE manifest_hash IS NOT NULL), false),
                    sum(rows) FILTER (WHERE manifest_hash IS NOT NULL)::int8
               FROM audit_archives WHERE month = $1",
        )
        .bind(&month)
        .fetch_one(&mut *tx)
        .await?;
    let (rows, outside): (i64, i64) = sqlx::query_as(&format!(
        "SELECT count(*), count(*) FILTER (WHERE (seal_seq IS NULL AND NOT $1)
                                            OR seal_seq > $2)
           FROM {quoted} WHERE occurred_at >= $3 AND occurred_at < $4"
    ))
    .bind(legacy)
    .bind(upto.unwrap_or(0))
    .bind(lower)
    .bind(upper)
    .fetch_one(&mut *tx)
    .await?;
    if rows == 0 && parts == 0 {
        return Ok(None);
    }
    if pending > 0 {
        return Ok(Some(format!(
            "{month}: an archive part is still being written (audit-manager archive run)"
        )));
    }
    if parts == 0 {
        return Ok(Some(format!("{month}: not archived yet ({rows} rows)")));
    }
    if outside > 0 {
        return Ok(Some(format!(
            "{month}: {outside} row(s) are in no verified archive part yet (rows stored after \
             the month was archived, or not sealed yet)"
        )));
    }
    if archived != Some(rows) {
        return Ok(Some(format!(
            "{month}: the partition holds {rows} rows but its verified archive parts {} \
             (run audit-manager verify and archive verify)",
            archived.unwrap_or(0)
        )));
    }
    Ok(None)
}

/// Whether a relation named `table` exists.
pub async fn table_exists(pool: &PgPool, table: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT to_regclass(quote_ident($1)) IS NOT NULL")
        .bind(table)
        .fetch_one(pool)
        .await
}

/// Creates `table` shaped like `audit_events` (not partitioned, with its primary key), for a
/// restore outside the live table.
pub async fn create_restore_table(pool: &PgPool, table: &str) -> Result<(), sqlx::Error> {
    let columns: Vec<String> = COLUMNS
        .iter()
        .map(|c| {
            format!(
                "{} {}{}",
                c.name,
                c.sql_type,
                if c.not_null { " NOT NULL" } else { "" }
            )
        })
        .collect();
    sqlx::query(&format!(
        "CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY ({}))",
        quote_ident(table),
        columns.join(", "),
        columns::PRIMARY_KEY
    ))
    .execute(pool)
    .await
    .map(|_| ())
}

/// Inserts whole rows (every column, `seal_seq` and `ingested_at` as archived) into `table`;
/// rows already there are kept. Returns how many were inserted.
pub async fn restore_rows(
    pool: &PgPool,
    table: &str,
    rows: &[StoredRow],
) -> Result<u64, sqlx::Error> {
    let names: Vec<&str> = COLUMNS.iter().map(|c| c.name).collect();
    let params: Vec<String> = COLUMNS
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let wire = if c.sql_type == "jsonb" {
                "text"
            } else {
                c.sql_type
            };
            format!("${}::{wire}[]", i + 1)
        })
        .collect();
    let select: Vec<String> = COLUMNS
        .iter()
        .map(|c| format!("{}::{}", c.name, c.sql_type))
        .collect();
    let sql = format!(
        "INSERT INTO {t} ({cols}) SELECT {select} FROM UNNEST({params}) AS u({cols})
         ON CONFLICT DO NOTHING",
        t = quote_ident(table),
        cols = names.join(", "),
        select = select.join(", "),
        params = params.join(", "),
    );
    let text = |f: fn(&StoredRow) -> Option<String>| rows.iter().map(f).collect::<Vec<_>>();
    let done = sqlx::query(&sql)
        .bind(text(|r| Some(r.id.clone())))
        .bind(rows.iter().map(|r| r.occurred_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.ingested_at).collect::<Vec<_>>())
        .bind(text(|r| Some(r.source.clone())))
        .bind(text(|r| Some(r.r#type.clone())))
        .bind(text(|r| r.subject.clone()))
        .bind(text(|r| Some(r.actor_type.clone())))
        .bind(text(|r| Some(r.actor_id.clone())))
        .bind(text(|r| r.resource_type.clone()))
        .bind(text(|r| r.resource_id.clone()))
        .bind(text(|r| Some(r.action.clone())))
        .bind(text(|r| Some(r.outcome.clone())))
        .bind(text(|r| r.reason.clone()))
        .bind(text(|r| r.trace_id.clone()))
        .bind(text(|r| r.details.clone()))
        .bind(text(|r| r.auth_type.clone()))
        .bind(text(|r| r.auth_id.clone()))
        .bind(rows.iter().map(|r| r.seal_seq).collect::<Vec<_>>())
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}
