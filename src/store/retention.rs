//! `audit_retention_log`: what each dropped partition held, recorded in the transaction that
//! drops it, so `verify` reports its sealed rows as dropped by retention instead of deleted;
//! the sealer signs the records (see `integrity::sealer`, "Retention records").

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::ident::quote_ident;

/// Records, in the transaction that drops it, what partition `name` held, and the manifest
/// hash of its month's newest verified archive part (`archive_manifest`; NULL when the month
/// was never archived). Counting reads the whole partition once, which retention does at most
/// once a month per partition.
pub async fn record_drop(
    tx: &mut PgConnection,
    name: &str,
    lower: Option<DateTime<Utc>>,
    upper: Option<DateTime<Utc>>,
) -> Result<(), sqlx::Error> {
    let quoted = quote_ident(name);
    let (rows, sealed): (i64, i64) =
        sqlx::query_as(&format!("SELECT count(*), count(seal_seq) FROM {quoted}"))
            .fetch_one(&mut *tx)
            .await?;
    let manifest = match lower {
        Some(lower) => {
            super::archives::newest_manifest(&mut *tx, &super::Month::of(lower).to_string()).await?
        }
        None => None,
    };
    sqlx::query(
        "INSERT INTO audit_retention_log (partition, lower_bound, upper_bound, dropped_at, rows,
             sealed_rows, archive_manifest) VALUES ($1, $2, $3, clock_timestamp(), $4, $5, $6)",
    )
    .bind(name)
    .bind(lower)
    .bind(upper)
    .bind(rows)
    .bind(sealed)
    .bind(manifest)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// A dropped partition and the archive manifest its retention record names.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DropArchive {
    pub partition: String,
    pub dropped_at: DateTime<Utc>,
    pub archive_manifest: Option<Vec<u8>>,
}

/// Every record's partition, drop time and archive manifest hash, oldest first.
pub async fn archive_manifests(pool: &sqlx::PgPool) -> Result<Vec<DropArchive>, sqlx::Error> {
    sqlx::query_as(
        "SELECT partition, dropped_at, archive_manifest FROM audit_retention_log ORDER BY id",
    )
    .fetch_all(pool)
    .await
}

/// One record of `audit_retention_log`, times in µs since the epoch (an open bound as
/// `i64::MIN` / `i64::MAX`), as a seal signs it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LoggedDrop {
    pub id: i64,
    pub partition: String,
    pub lower_us: i64,
    pub upper_us: i64,
    pub dropped_at_us: i64,
    pub rows: i64,
    pub sealed_rows: i64,
}

/// The `SELECT` list of a [`LoggedDrop`].
const LOGGED_DROP: &str = "SELECT id, partition,
        COALESCE((extract(epoch FROM lower_bound) * 1000000)::int8, -9223372036854775808)
            AS lower_us,
        COALESCE((extract(epoch FROM upper_bound) * 1000000)::int8, 9223372036854775807)
            AS upper_us,
        (extract(epoch FROM dropped_at) * 1000000)::int8 AS dropped_at_us, rows, sealed_rows
   FROM audit_retention_log";

/// The records no seal signed yet, dropped at or before `dropped_by`, oldest first.
pub async fn unsigned(
    tx: &mut PgConnection,
    dropped_by: Option<DateTime<Utc>>,
) -> Result<Vec<LoggedDrop>, sqlx::Error> {
    sqlx::query_as(&format!(
        "{LOGGED_DROP} WHERE sealed_in IS NULL AND dropped_at <= $1 ORDER BY id"
    ))
    .bind(dropped_by)
    .fetch_all(tx)
    .await
}

/// Every record, signed or not, oldest first.
pub async fn all(pool: &sqlx::PgPool) -> Result<Vec<LoggedDrop>, sqlx::Error> {
    sqlx::query_as(&format!("{LOGGED_DROP} ORDER BY id"))
        .fetch_all(pool)
        .await
}

/// Marks the records `ids` signed by seal `seal_no` (in the transaction storing the seal).
pub async fn mark_sealed(
    tx: &mut PgConnection,
    seal_no: i64,
    ids: &[i64],
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE audit_retention_log SET sealed_in = $1 WHERE id = ANY($2)")
        .bind(seal_no)
        .bind(ids)
        .execute(tx)
        .await
        .map(|_| ())
}

/// A stored row in `[lower, upper)` (an open bound as `None`) numbered at or below
/// `sealed_before`, as `(id, occurred_at)`: one indexed probe.
pub async fn stored_row_within(
    conn: &mut PgConnection,
    lower: Option<DateTime<Utc>>,
    upper: Option<DateTime<Utc>>,
    sealed_before: i64,
) -> Result<Option<(String, DateTime<Utc>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, occurred_at FROM audit_events
          WHERE occurred_at >= COALESCE($1, '-infinity'::timestamptz)
            AND occurred_at < COALESCE($2, 'infinity'::timestamptz)
            AND seal_seq <= $3
          LIMIT 1",
    )
    .bind(lower)
    .bind(upper)
    .bind(sealed_before)
    .fetch_optional(conn)
    .await
}

/// Whether a relation named `partition` exists.
pub async fn partition_exists(
    conn: &mut PgConnection,
    partition: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT to_regclass(quote_ident($1)) IS NOT NULL")
        .bind(partition)
        .fetch_one(conn)
        .await
}
