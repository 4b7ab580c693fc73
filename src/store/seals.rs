//! `audit_seals` and the sequence sealing numbers rows with: the sealer's writes, and the reads
//! of the sealer, `verify`, `GET /seals` and the query role's integrity check. A seal's bytes,
//! hash and signature are `integrity::seal`'s; here they are columns.

use chrono::{DateTime, Utc};
use futures_util::stream::BoxStream;
use sqlx::{PgConnection, PgPool};

/// What a seal's published form (`integrity::SealLine`) is made of.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SealCopy {
    pub seal_no: i64,
    pub bytes: Vec<u8>,
    pub signature: Vec<u8>,
    pub key_id: String,
}

/// A row of `audit_seals` as `verify` reads it: the signed bytes, the stored hash and
/// signature, and the helper columns it checks against the bytes (readers use them to find
/// seals).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredSeal {
    pub seal_no: i64,
    pub bytes: Vec<u8>,
    pub hash: Vec<u8>,
    pub signature: Vec<u8>,
    pub published_at: Option<DateTime<Utc>>,
    pub lo_seq: i64,
    pub hi_seq: i64,
    pub leaves: i32,
    pub retention_records: i32,
}

/// A new seal, as the sealer stores it.
#[derive(Debug, Clone, Copy)]
pub struct NewSeal<'a> {
    pub seal_no: i64,
    pub bytes: &'a [u8],
    pub hash: &'a [u8],
    pub signature: &'a [u8],
    /// 16 hex digits.
    pub key_id: &'a str,
    /// µs since the epoch.
    pub created_at_us: i64,
    pub lo_seq: i64,
    pub hi_seq: i64,
    pub leaves: i32,
    pub retention_records: i32,
}

// ---------------------------------------------------------------------------------------------
// The sealer

/// `(last_value, is_called, clock_timestamp())` of `audit_events_seal_seq` (the sealer reads
/// it holding the seal write lock exclusively: its watermark).
pub async fn sequence_position(
    tx: &mut PgConnection,
) -> Result<(i64, bool, DateTime<Utc>), sqlx::Error> {
    sqlx::query_as("SELECT last_value, is_called, clock_timestamp() FROM audit_events_seal_seq")
        .fetch_one(tx)
        .await
}

/// The newest seal's bytes.
pub async fn newest_bytes(conn: &mut PgConnection) -> Result<Option<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar("SELECT bytes FROM audit_seals ORDER BY seal_no DESC LIMIT 1")
        .fetch_optional(conn)
        .await
}

/// Seal `seal_no`'s bytes.
pub async fn bytes_of(
    conn: &mut PgConnection,
    seal_no: i64,
) -> Result<Option<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar("SELECT bytes FROM audit_seals WHERE seal_no = $1")
        .bind(seal_no)
        .fetch_optional(conn)
        .await
}

/// Stores `seal` (in the transaction that marks its retention records signed).
pub async fn insert(tx: &mut PgConnection, seal: &NewSeal<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit_seals (seal_no, bytes, hash, signature, key_id, created_at, lo_seq,
             hi_seq, leaves, retention_records)
         VALUES ($1, $2, $3, $4, $5, to_timestamp($6::float8 / 1000000), $7, $8, $9, $10)",
    )
    .bind(seal.seal_no)
    .bind(seal.bytes)
    .bind(seal.hash)
    .bind(seal.signature)
    .bind(seal.key_id)
    .bind(seal.created_at_us as f64)
    .bind(seal.lo_seq)
    .bind(seal.hi_seq)
    .bind(seal.leaves)
    .bind(seal.retention_records)
    .execute(tx)
    .await
    .map(|_| ())
}

/// The seals numbered above `after`, in order (streamed).
pub fn copies_after(
    conn: &mut PgConnection,
    after: i64,
) -> BoxStream<'_, Result<SealCopy, sqlx::Error>> {
    sqlx::query_as(
        "SELECT seal_no, bytes, signature, key_id FROM audit_seals
          WHERE seal_no > $1 ORDER BY seal_no",
    )
    .bind(after)
    .fetch(conn)
}

/// The seals not yet on the seal topic (`published_at` NULL), oldest first.
pub async fn unpublished(conn: &mut PgConnection) -> Result<Vec<SealCopy>, sqlx::Error> {
    sqlx::query_as(
        "SELECT seal_no, bytes, signature, key_id FROM audit_seals
          WHERE published_at IS NULL ORDER BY seal_no",
    )
    .fetch_all(conn)
    .await
}

/// Marks seal `seal_no` published now.
pub async fn mark_published(conn: &mut PgConnection, seal_no: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE audit_seals SET published_at = now() WHERE seal_no = $1")
        .bind(seal_no)
        .execute(conn)
        .await
        .map(|_| ())
}

/// `(bytes, hash, signature)` of the newest seal.
pub async fn newest_signed(
    pool: &PgPool,
) -> Result<Option<(Vec<u8>, Vec<u8>, Vec<u8>)>, sqlx::Error> {
    sqlx::query_as("SELECT bytes, hash, signature FROM audit_seals ORDER BY seal_no DESC LIMIT 1")
        .fetch_optional(pool)
        .await
}

/// `(lag, unpublished)`: age in seconds of the oldest row no seal covers yet (`None` when
/// none), and how many seals are not on the seal topic. The newest seal's `hi` is read from
/// its signed bytes (offset 62, in both formats), not from the editable `hi_seq` column.
///
/// "Oldest" is the unsealed row with the lowest `seal_seq`, read through the index: one row,
/// where `min(ingested_at)` read every unsealed row (about 100 ms per 100 000 waiting rows, at
/// every pass, on the cores the sink writes with).
pub async fn lag_and_unpublished(pool: &PgPool) -> Result<(Option<f64>, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT (SELECT extract(epoch FROM now() - ingested_at)::float8
                   FROM audit_events
                  WHERE seal_seq > COALESCE((SELECT ('x' || encode(substring(bytes from 63 for 8), 'hex'))::bit(64)::int8
                                               FROM audit_seals ORDER BY seal_no DESC LIMIT 1), 0)
                  ORDER BY seal_seq LIMIT 1),
                (SELECT count(*) FROM audit_seals WHERE published_at IS NULL)",
    )
    .fetch_one(pool)
    .await
}

// ---------------------------------------------------------------------------------------------
// verify

/// Every seal, in number order (streamed).
pub fn all(conn: &mut PgConnection) -> BoxStream<'_, Result<StoredSeal, sqlx::Error>> {
    sqlx::query_as(
        "SELECT seal_no, bytes, hash, signature, published_at, lo_seq, hi_seq, leaves,
                retention_records
           FROM audit_seals ORDER BY seal_no",
    )
    .fetch(conn)
}

/// `(bytes, signature)` of the seals whose `retention_records` column is above 0, in order.
pub async fn with_retention(pool: &PgPool) -> Result<Vec<(Vec<u8>, Vec<u8>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT bytes, signature FROM audit_seals WHERE retention_records > 0 ORDER BY seal_no",
    )
    .fetch_all(pool)
    .await
}

// ---------------------------------------------------------------------------------------------
// GET /seals

/// Up to `limit` seals numbered above `after` and created in `[from, to)` (`None`: open), in
/// order.
pub async fn created_between(
    pool: &PgPool,
    after: i64,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    limit: i64,
) -> Result<Vec<SealCopy>, sqlx::Error> {
    sqlx::query_as(
        "SELECT seal_no, bytes, signature, key_id FROM audit_seals
          WHERE seal_no > $1 AND ($2::timestamptz IS NULL OR created_at >= $2)
            AND ($3::timestamptz IS NULL OR created_at < $3)
          ORDER BY seal_no LIMIT $4",
    )
    .bind(after)
    .bind(from)
    .bind(to)
    .bind(limit)
    .fetch_all(pool)
    .await
}

// ---------------------------------------------------------------------------------------------
// The query role's integrity check: seals located by their signed header, the first 70 bytes

/// The newest seal's header.
pub async fn newest_header(pool: &PgPool) -> Result<Option<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT substring(bytes from 1 for 70) FROM audit_seals ORDER BY seal_no DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await
}

/// The first seal numbered `n` or more: its number and header.
pub async fn first_header_from(
    pool: &PgPool,
    n: i64,
) -> Result<Option<(i64, Vec<u8>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT seal_no, substring(bytes from 1 for 70) FROM audit_seals
          WHERE seal_no >= $1 ORDER BY seal_no LIMIT 1",
    )
    .bind(n)
    .fetch_optional(pool)
    .await
}

/// `(seal_no, bytes, hash, signature, lo_seq, hi_seq)` of seal `no`.
pub type SealWithRange = (i64, Vec<u8>, Vec<u8>, Vec<u8>, i64, i64);

/// Seal `no` with its helper range columns.
pub async fn by_no(pool: &PgPool, no: i64) -> Result<Option<SealWithRange>, sqlx::Error> {
    sqlx::query_as(
        "SELECT seal_no, bytes, hash, signature, lo_seq, hi_seq FROM audit_seals
          WHERE seal_no = $1",
    )
    .bind(no)
    .fetch_optional(pool)
    .await
}

/// The database's clock and the highest seal number (`None` without seals).
pub async fn time_and_newest_no(
    pool: &PgPool,
) -> Result<(DateTime<Utc>, Option<i64>), sqlx::Error> {
    sqlx::query_as("SELECT clock_timestamp(), (SELECT max(seal_no) FROM audit_seals)")
        .fetch_one(pool)
        .await
}
