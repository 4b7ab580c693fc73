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
//! The format for third-party verifiers is `docs/integrity.md`. The tables, their DDL and every
//! statement reading or writing them are the store's (`store::integrity_schema`,
//! `store::seals`, `store::attestations`, `store::retention`, `store::rows`): this module
//! encodes, signs and checks, and its loops call the store.
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

use crate::store::retention;

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
    let row = retention::stored_row_within(&mut *conn, lower, upper, sealed_before).await?;
    let Some((id, at)) = row else { return Ok(None) };
    let exists = retention::partition_exists(&mut *conn, &r.partition).await?;
    Ok(Some((id, at, exists)))
}
