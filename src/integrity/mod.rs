//! Tamper evidence for stored rows (guarantee 8), in data-flow order:
//!
//! - [`encoding`]: the canonical bytes and hash of one stored row (pure), with [`jcs`], the
//!   canonical form of its `details`;
//! - [`seal`]: the seal format, its hash and ed25519 signature, key files (pure);
//! - [`sealer`]: the maintain role's loop that seals new rows, gap-proof by a lock;
//! - [`verify`]: `audit-manager verify`, recomputing everything from the rows;
//! - [`publish`]: the off-database copies, `integrity.seal_topic` and `integrity.seal_dir`;
//! - [`attest`]: writer attestation — each storing transaction signed by the sink, checked by
//!   the sealer and `verify`.
//!
//! The format for third-party verifiers is `docs/integrity.md`.
//!
//! Errors: one [`IntegrityError`] for this module boundary; what verify *finds* is not an
//! error but a [`verify::Finding`].

pub mod attest;
pub mod encoding;
pub mod jcs;
pub mod publish;
pub mod seal;
pub mod sealer;
pub mod verify;

use serde::{Deserialize, Serialize};

/// Every transaction writing `audit_events` holds this lock shared
/// (`pg_advisory_xact_lock_shared`); the sealer takes it exclusively for an instant to find the
/// watermark (see [`sealer`]). ASCII "audit" followed by 4.
pub const SEAL_WRITE_LOCK: i64 = 0x6175_6469_7400_0004;
/// Held (per session, try-lock) by the one sealer working at a time.
pub const SEALER_LOCK: i64 = 0x6175_6469_7400_0005;

/// The sequence numbering rows for sealing. `CACHE 1`: values are handed out in order, so
/// `last_value` is the highest value drawn (see [`sealer`]).
pub const SEQUENCE_DDL: &str =
    "CREATE SEQUENCE IF NOT EXISTS audit_events_seal_seq AS bigint CACHE 1";

/// The default every new row's `seal_seq` takes.
pub const SEAL_SEQ_DEFAULT: &str = "nextval('audit_events_seal_seq'::regclass)";

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

/// Applies the schema integrity adds to `audit_events` (called by `Store::prepare` inside its
/// schema transaction, after the table's own columns).
///
/// `seal_seq` is added without a default first (a volatile default in `ADD COLUMN` would
/// rewrite every row of an adopted table); the default then applies to rows stored from then
/// on, and older rows keep NULL ("legacy, stored before sealing"). Both `ALTER TABLE`s run only
/// when needed: they take an exclusive lock on `audit_events`, which would queue every insert
/// behind any long-running query at every start and maintenance pass.
pub async fn apply_schema(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query(SEQUENCE_DDL).execute(&mut *conn).await?;
    let column: Option<(Option<String>,)> = sqlx::query_as(
        "SELECT pg_get_expr(d.adbin, d.adrelid)
           FROM pg_attribute a
           LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
          WHERE a.attrelid = 'audit_events'::regclass AND a.attname = 'seal_seq'
            AND NOT a.attisdropped",
    )
    .fetch_optional(&mut *conn)
    .await?;
    if column.is_none() {
        sqlx::query("ALTER TABLE audit_events ADD COLUMN IF NOT EXISTS seal_seq bigint")
            .execute(&mut *conn)
            .await?;
    }
    let default = column.and_then(|(d,)| d);
    if default.as_deref() != Some(SEAL_SEQ_DEFAULT) {
        if let Some(other) = &default {
            tracing::warn!(found = %other, "audit_events.seal_seq had another default; restoring it");
        }
        sqlx::query(&format!(
            "ALTER TABLE audit_events ALTER COLUMN seal_seq SET DEFAULT {SEAL_SEQ_DEFAULT}"
        ))
        .execute(&mut *conn)
        .await?;
    }
    for ddl in TABLES_DDL {
        sqlx::query(ddl).execute(&mut *conn).await?;
    }
    attest::apply_schema(&mut *conn).await?;
    let storage: Option<i8> = sqlx::query_scalar(
        "SELECT attstorage FROM pg_attribute
          WHERE attrelid = 'audit_seals'::regclass AND attname = 'bytes'",
    )
    .fetch_optional(&mut *conn)
    .await?;
    if storage != Some(SEAL_BYTES_STORAGE) {
        sqlx::query("ALTER TABLE audit_seals ALTER COLUMN bytes SET STORAGE EXTERNAL")
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// `attstorage` of `audit_seals.bytes`: `e`, stored out of line *uncompressed*. A seal's bytes
/// (up to 512 KiB, half of them hashes) shrink by only a quarter under PostgreSQL's default
/// `pglz`, which costs about 8 ms per full seal (2 µs per sealed row, measured) on the cores
/// the sink writes with; uncompressed they cost about 16 more bytes per sealed row on disk.
/// Set once (only when it differs), so later starts take no lock on the table.
const SEAL_BYTES_STORAGE: i8 = b'e' as i8;

/// Why an integrity operation could not run (not a finding: see [`verify::Finding`]).
#[derive(Debug, thiserror::Error)]
pub enum IntegrityError {
    #[error("{what}: {source}")]
    Database {
        what: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("{0}")]
    Corrupt(String),
    #[error("{0}")]
    Publish(String),
    #[error(transparent)]
    Key(#[from] seal::KeyError),
    #[error("{0}")]
    Config(String),
    /// The database's newest seal is behind, or other than, the newest seal of an
    /// off-database copy: seals were deleted or replaced. The sealer refuses to seal.
    #[error("{0}")]
    TipMismatch(String),
}

impl IntegrityError {
    /// The database or the integrity schema does not exist yet (`3D000`, `42P01`): the
    /// maintain role is still creating them.
    pub fn is_schema_missing(&self) -> bool {
        match self {
            IntegrityError::Database { source, .. } => matches!(
                source.as_database_error().and_then(|d| d.code()).as_deref(),
                Some("3D000" | "42P01")
            ),
            _ => false,
        }
    }

    /// `map_err` helper naming what was being done.
    pub fn db(what: impl Into<String>) -> impl FnOnce(sqlx::Error) -> IntegrityError {
        let what = what.into();
        move |source| IntegrityError::Database { what, source }
    }
}

/// One seal as published on the topic and served by `GET /seals` (one JSON line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SealLine {
    /// The seal number.
    pub seal_no: u64,
    /// Key id (16 hex digits) of the key that signed it.
    pub key_id: String,
    /// SHA-256 of `bytes`, hex.
    pub hash: String,
    /// ed25519 signature over the hash, hex.
    pub signature: String,
    /// The canonical seal bytes, base64 (standard alphabet, padded).
    pub bytes: String,
}

impl SealLine {
    pub fn new(seal_no: u64, bytes: &[u8], signature: &[u8], key_id: &str) -> SealLine {
        use base64::Engine as _;
        SealLine {
            seal_no,
            key_id: key_id.to_string(),
            hash: hex::encode(seal::seal_hash(bytes)),
            signature: hex::encode(signature),
            bytes: base64::engine::general_purpose::STANDARD.encode(bytes),
        }
    }

    /// The decoded seal bytes.
    pub fn decoded(&self) -> Option<Vec<u8>> {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(&self.bytes)
            .ok()
    }
}

/// Environment variable of the crash tests: `POINT` or `POINT@N` makes the process abort
/// (no unwinding, no flush: like SIGKILL) the Nth time (default 1st) it reaches the named point
/// of the sealer. Unset in production.
pub const FAULT_ENV: &str = "AUDIT_MANAGER_TEST_SEALER_ABORT";

/// Aborts the process here when [`FAULT_ENV`] names this point (test seam, only with the
/// `failpoints` cargo feature; without it this does nothing).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn fault_point(_name: &str) {}

/// Aborts the process here when [`FAULT_ENV`] names this point (test seam).
#[cfg(feature = "failpoints")]
pub fn fault_point(name: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static HITS: AtomicU64 = AtomicU64::new(0);
    let Ok(spec) = std::env::var(FAULT_ENV) else {
        return;
    };
    let (point, nth) = match spec.split_once('@') {
        Some((p, n)) => (p.to_string(), n.parse::<u64>().unwrap_or(1)),
        None => (spec, 1),
    };
    if point == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 >= nth {
        eprintln!("{FAULT_ENV}: aborting at {name}");
        std::process::abort();
    }
}

/// Records, in the transaction that drops it, what partition `name` held: verify then reports
/// its sealed rows as dropped by retention instead of deleted. Counting reads the whole
/// partition once, which retention does at most once a month per partition.
pub async fn record_retention(
    tx: &mut sqlx::PgConnection,
    name: &str,
    lower: Option<chrono::DateTime<chrono::Utc>>,
    upper: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<(), sqlx::Error> {
    let quoted = crate::store::schema::quote_ident(name);
    let (rows, sealed): (i64, i64) =
        sqlx::query_as(&format!("SELECT count(*), count(seal_seq) FROM {quoted}"))
            .fetch_one(&mut *tx)
            .await?;
    sqlx::query(
        "INSERT INTO audit_retention_log (partition, lower_bound, upper_bound, dropped_at, rows,
             sealed_rows) VALUES ($1, $2, $3, clock_timestamp(), $4, $5)",
    )
    .bind(name)
    .bind(lower)
    .bind(upper)
    .bind(rows)
    .bind(sealed)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// A row that contradicts the retention record `r` signed by a seal whose range starts after
/// `sealed_before` (that seal's `lo`): a row in the record's `occurred_at` bounds with a
/// `seal_seq` at or below it was committed before the drop (see `docs/integrity.md`), so the
/// drop would have removed it. Returns `(id, occurred_at, partition still in the catalog)`
/// when such a row is still stored: the partition was not really dropped, and the record is
/// not believed. One indexed probe per record (records are rare: one per dropped month).
pub async fn retention_contradiction(
    conn: &mut sqlx::PgConnection,
    r: &seal::RetentionRecord,
    sealed_before: i64,
) -> Result<Option<(String, chrono::DateTime<chrono::Utc>, bool)>, sqlx::Error> {
    let lower = seal::from_micros(r.lower_us).filter(|_| r.lower_us != i64::MIN);
    let upper = seal::from_micros(r.upper_us).filter(|_| r.upper_us != i64::MAX);
    let row: Option<(String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT id, occurred_at FROM audit_events
          WHERE occurred_at >= COALESCE($1, '-infinity'::timestamptz)
            AND occurred_at < COALESCE($2, 'infinity'::timestamptz)
            AND seal_seq <= $3
          LIMIT 1",
    )
    .bind(lower)
    .bind(upper)
    .bind(sealed_before)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((id, at)) = row else { return Ok(None) };
    let exists: bool = sqlx::query_scalar("SELECT to_regclass(quote_ident($1)) IS NOT NULL")
        .bind(&r.partition)
        .fetch_one(&mut *conn)
        .await?;
    Ok(Some((id, at, exists)))
}
