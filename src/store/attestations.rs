//! `audit_attestations`: what each storing transaction signed (written by the sink's inserts)
//! and the reads of the sealer and `verify`. The attestation's bytes, signature and checks are
//! `integrity::attest`'s; the store only carries them, through the [`Attest`] it is given.

use chrono::{DateTime, Utc};
use futures_util::stream::BoxStream;
use sqlx::PgConnection;

use super::locks::AdvisoryLock;
use crate::event::Row;

/// Bytes of a row digest (a truncated SHA-256, see `integrity::attest`: 2^128 work to make
/// another row match one).
pub const DIGEST_LEN: usize = 16;
/// What an attestation says about one row.
pub type RowDigest = [u8; DIGEST_LEN];

/// What a storing transaction learns when it takes the seal write lock, before it writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteStamp {
    /// The transaction's `now()`: the `ingested_at` of every row it stores.
    pub ingested_at: DateTime<Utc>,
    /// The sequence's last value drawn by anyone (0 when none): a lower bound, exclusive.
    pub lo: i64,
}

/// One signed attestation, ready to store.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The writer key's id, 16 hex digits.
    pub key_id: String,
    pub bytes: Vec<u8>,
    pub signature: Vec<u8>,
}

/// The writer key the store attests its writes with (`integrity::attest::Attestor`): the
/// store calls it, integrity implements it.
pub trait Attest: std::fmt::Debug + Send + Sync {
    /// The digests of `rows`, in order. Computed before the transaction: no lock is held while
    /// rows are hashed.
    fn digests(&self, rows: &[&Row]) -> Vec<RowDigest>;
    /// The attestation of a transaction stamped `stamp` that sent rows with `digests`.
    fn sign(&self, stamp: &WriteStamp, digests: &[RowDigest]) -> Signed;
}

/// Takes the seal write lock shared and reads the [`WriteStamp`]: one statement, the one the
/// write transaction runs anyway.
pub async fn stamp(tx: &mut PgConnection) -> Result<WriteStamp, sqlx::Error> {
    let (ingested_at, lo): (DateTime<Utc>, i64) = sqlx::query_as(
        "SELECT now(), CASE WHEN s.is_called THEN s.last_value \
         ELSE s.last_value - 1 END FROM audit_events_seal_seq s, \
         (SELECT pg_advisory_xact_lock_shared($1)) l",
    )
    .bind(AdvisoryLock::SealWrite.id())
    .fetch_one(tx)
    .await?;
    Ok(WriteStamp { ingested_at, lo })
}

/// Stores the attestation of the rows just written in this transaction (`rows` of them).
/// `hi_seq` is the sequence's last value now, at or above every number its rows drew (not the
/// session's `currval`, which is undefined when the column's default was removed and rows drew
/// none).
pub async fn record(
    tx: &mut PgConnection,
    stamp: &WriteStamp,
    rows: usize,
    signed: Signed,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit_attestations (lo_seq, hi_seq, ingested_at, key_id, rows, bytes,
             signature)
         SELECT $1, last_value, $2, $3, $4, $5, $6 FROM audit_events_seal_seq",
    )
    .bind(stamp.lo)
    .bind(stamp.ingested_at)
    .bind(signed.key_id)
    .bind(i32::try_from(rows).unwrap_or(i32::MAX))
    .bind(signed.bytes)
    .bind(signed.signature)
    .execute(tx)
    .await?;
    metrics::counter!("audit_attestations_written_total").increment(1);
    Ok(())
}

/// One row of `audit_attestations` (`rows` aside: the bytes say it).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredAttestation {
    pub lo_seq: i64,
    pub hi_seq: i64,
    pub ingested_at: DateTime<Utc>,
    pub key_id: String,
    pub bytes: Vec<u8>,
    pub signature: Vec<u8>,
}

/// Every attestation, in `lo_seq` order (streamed).
pub fn by_lo(conn: &mut PgConnection) -> BoxStream<'_, Result<StoredAttestation, sqlx::Error>> {
    sqlx::query_as(
        "SELECT lo_seq, hi_seq, ingested_at, key_id, bytes, signature FROM audit_attestations \
         ORDER BY lo_seq",
    )
    .fetch(conn)
}

/// The attestations whose rows may be numbered in `(after, upto]` (streamed).
pub fn overlapping(
    conn: &mut PgConnection,
    after: i64,
    upto: i64,
) -> BoxStream<'_, Result<StoredAttestation, sqlx::Error>> {
    sqlx::query_as(
        "SELECT lo_seq, hi_seq, ingested_at, key_id, bytes, signature FROM audit_attestations \
         WHERE hi_seq > $1 AND lo_seq < $2",
    )
    .bind(after)
    .bind(upto)
    .fetch(conn)
}
