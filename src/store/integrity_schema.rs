//! The schema tamper evidence adds (see `integrity`): the `seal_seq` column and its sequence,
//! the seals, the retention records waiting to be sealed, and the writer attestations. Applied
//! by [`super::Store::prepare`] inside its schema transaction, after the table's own columns.

use sqlx::PgConnection;

use super::columns;

/// The sequence numbering rows for sealing. `CACHE 1`: values are handed out in order, so
/// `last_value` is the highest value drawn (see `integrity::sealer`).
pub const SEQUENCE_DDL: &str =
    "CREATE SEQUENCE IF NOT EXISTS audit_events_seal_seq AS bigint CACHE 1";

/// The tables of the seals and of the retention drops waiting to be sealed.
pub const TABLES_DDL: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS audit_seals (
        seal_no           bigint      PRIMARY KEY,
        bytes             bytea       NOT NULL,
        hash              bytea       NOT NULL,
        signature         bytea       NOT NULL,
        key_id            text        NOT NULL,
        created_at        timestamptz NOT NULL,
        lo_seq            bigint      NOT NULL,
        hi_seq            bigint      NOT NULL,
        leaves            integer     NOT NULL,
        retention_records integer     NOT NULL,
        published_at      timestamptz
    )",
    "CREATE TABLE IF NOT EXISTS audit_retention_log (
        id          bigserial   PRIMARY KEY,
        partition   text        NOT NULL,
        lower_bound timestamptz,
        upper_bound timestamptz,
        dropped_at  timestamptz NOT NULL,
        rows        bigint      NOT NULL,
        sealed_rows bigint      NOT NULL,
        sealed_in   bigint
    )",
];

/// The table of attestations. `lo_seq`, `ingested_at` and `key_id` repeat signed fields (an
/// attestation whose copies differ from its bytes is not valid); `hi_seq` is the writer's
/// sequence position after it wrote, unsigned: it only tells where to look.
pub const ATTESTATIONS_DDL: &str = "CREATE TABLE IF NOT EXISTS audit_attestations (
        lo_seq      bigint      NOT NULL,
        hi_seq      bigint      NOT NULL,
        ingested_at timestamptz NOT NULL,
        key_id      text        NOT NULL,
        rows        integer     NOT NULL,
        bytes       bytea       NOT NULL,
        signature   bytea       NOT NULL
    )";

/// `attstorage` `e`: stored out of line *uncompressed*. A seal's bytes (up to 512 KiB, half of
/// them hashes) shrink by only a quarter under PostgreSQL's default `pglz`, which costs about
/// 8 ms per full seal (2 µs per sealed row, measured) on the cores the sink writes with;
/// uncompressed they cost about 16 more bytes per sealed row on disk. Attestation digests do
/// not compress at all. Set once (only when it differs), so later starts take no lock on the
/// table.
const EXTERNAL_STORAGE: i8 = b'e' as i8;

/// Applies the integrity schema.
///
/// `seal_seq` is added without a default first (a volatile default in `ADD COLUMN` would
/// rewrite every row of an adopted table); the default then applies to rows stored from then
/// on, and older rows keep NULL ("legacy, stored before sealing"). Both `ALTER TABLE`s run only
/// when needed: they take an exclusive lock on `audit_events`, which would queue every insert
/// behind any long-running query at every start and maintenance pass.
pub async fn apply(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query(SEQUENCE_DDL).execute(&mut *conn).await?;
    let seal_seq = columns::sealing();
    let column: Option<(Option<String>,)> = sqlx::query_as(
        "SELECT pg_get_expr(d.adbin, d.adrelid)
           FROM pg_attribute a
           LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
          WHERE a.attrelid = 'audit_events'::regclass AND a.attname = $1
            AND NOT a.attisdropped",
    )
    .bind(seal_seq.name)
    .fetch_optional(&mut *conn)
    .await?;
    if column.is_none() {
        sqlx::query(&columns::add_column(seal_seq))
            .execute(&mut *conn)
            .await?;
    }
    let default = column.and_then(|(d,)| d);
    if default.as_deref() != seal_seq.default
        && let Some(set_default) = columns::set_default(seal_seq)
    {
        if let Some(other) = &default {
            tracing::warn!(found = %other, "audit_events.seal_seq had another default; restoring it");
        }
        sqlx::query(&set_default).execute(&mut *conn).await?;
    }
    for ddl in TABLES_DDL {
        sqlx::query(ddl).execute(&mut *conn).await?;
    }
    apply_attestations(&mut *conn).await?;
    if storage_of(&mut *conn, "audit_seals").await? != Some(EXTERNAL_STORAGE) {
        sqlx::query("ALTER TABLE audit_seals ALTER COLUMN bytes SET STORAGE EXTERNAL")
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Creates the attestations' table and its indexes (`lo_seq`: the boundary; `hi_seq`: the
/// attestations of a sealer's window). Indexes are created only when missing: `CREATE INDEX`
/// locks the table against the sink's inserts even when the index exists.
async fn apply_attestations(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query(ATTESTATIONS_DDL).execute(&mut *conn).await?;
    for column in ["lo_seq", "hi_seq"] {
        let name = format!("audit_attestations_{column}");
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(&name)
            .fetch_one(&mut *conn)
            .await?;
        if !exists {
            sqlx::query(&format!(
                "CREATE INDEX IF NOT EXISTS {name} ON audit_attestations ({column})"
            ))
            .execute(&mut *conn)
            .await?;
        }
    }
    if storage_of(&mut *conn, "audit_attestations").await? != Some(EXTERNAL_STORAGE) {
        sqlx::query("ALTER TABLE audit_attestations ALTER COLUMN bytes SET STORAGE EXTERNAL")
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// `attstorage` of `table.bytes`.
async fn storage_of(conn: &mut PgConnection, table: &str) -> Result<Option<i8>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT attstorage FROM pg_attribute
          WHERE attrelid = $1::regclass AND attname = 'bytes'",
    )
    .bind(table)
    .fetch_optional(conn)
    .await
}
