//! Archives of closed months in object storage, verifiable offline with the files and the
//! public keys alone (`docs/archives.md`), in data-flow order:
//!
//! - [`layout`]: where each object of a month's part lives (Hive-style `year=YYYY/month=MM/`);
//! - [`objects`]: the object store behind `archive.url` (`file://`, `s3://`), written
//!   never-overwrite and read back;
//! - [`parquet`]: the Arrow schema from the one column list (`store::columns`) and the
//!   streaming Parquet writer and reader;
//! - [`manifest`]: the signed manifest of a part, chained by the previous manifest's hash;
//! - [`run`]: `archive run` and the maintain role's pass — stream a month from PostgreSQL,
//!   upload, read back, record in `audit_archives`;
//! - [`verify`]: `archive verify`, offline: row hashes against the seals' leaves, the seals'
//!   signatures and chain, the manifests' signatures and chain;
//! - [`restore`]: `archive restore`, rows back into PostgreSQL for an investigation.
//!
//! Every SQL statement is the store's (`store::archives`).

pub mod layout;
pub mod manifest;
pub mod objects;
pub mod parquet;
pub mod restore;
pub mod run;
pub mod verify;

/// What `/health` of the maintain role tells about archiving (shared by the archive pass and
/// the partition pass).
#[derive(Debug, Clone, Default)]
pub struct ArchiveStatus {
    /// Why the last archive pass failed (the object store unreachable, refusing, …).
    pub error: Option<String>,
    /// Expired partitions retention kept, with why.
    pub blocked: Vec<(String, String)>,
    /// When the last pass succeeded.
    pub last_pass: Option<chrono::DateTime<chrono::Utc>>,
}

/// [`ArchiveStatus`] shared between tasks.
pub type ArchiveState = std::sync::Arc<std::sync::Mutex<ArchiveStatus>>;

/// Why an archive operation could not run (what `archive verify` *finds* is a
/// [`verify::Finding`], not an error).
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{what}: {source}")]
    Database {
        what: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("object store {what}: {source}")]
    Store {
        what: String,
        #[source]
        source: object_store::Error,
    },
    #[error("{0}")]
    Parquet(String),
    #[error("{0}")]
    Config(String),
    /// An object exists with other content than this archiver would write: never overwritten.
    #[error("{0}")]
    Conflict(String),
    /// What was uploaded does not read back as written.
    #[error("{0}")]
    ReadBack(String),
    #[error(transparent)]
    Key(#[from] crate::integrity::seal::KeyError),
    #[error("{0}")]
    Other(String),
}

impl ArchiveError {
    /// `map_err` helper naming what was being done.
    pub fn db(what: impl Into<String>) -> impl FnOnce(sqlx::Error) -> ArchiveError {
        let what = what.into();
        move |source| ArchiveError::Database { what, source }
    }

    /// `map_err` helper naming what was being done.
    pub fn store(what: impl Into<String>) -> impl FnOnce(object_store::Error) -> ArchiveError {
        let what = what.into();
        move |source| ArchiveError::Store { what, source }
    }
}

impl From<::parquet::errors::ParquetError> for ArchiveError {
    fn from(e: ::parquet::errors::ParquetError) -> Self {
        ArchiveError::Parquet(e.to_string())
    }
}

impl From<arrow_schema::ArrowError> for ArchiveError {
    fn from(e: arrow_schema::ArrowError) -> Self {
        ArchiveError::Parquet(e.to_string())
    }
}
