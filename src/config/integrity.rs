//! Tamper evidence (`audit_manager.integrity`): sealing stored rows and verifying them.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::error::invalid;
use super::value::de_duration;

/// Tamper evidence (`audit_manager.integrity`); see `docs/integrity.md`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct IntegrityConfig {
    /// The sealer's ed25519 signing key (from `audit-manager keygen`), used by the maintain
    /// role. Without it nothing is sealed (a warning at start). Default: none.
    pub signing_key_file: Option<PathBuf>,
    /// Public keys (`FILE.pub` from `keygen`) that `verify` trusts; keys stored in the
    /// database are never trusted. List every key that ever signed (rotation). Default: none.
    pub public_key_files: Vec<PathBuf>,
    /// How often stored rows are sealed (duration). Default `1m`.
    #[serde(
        deserialize_with = "de_duration",
        serialize_with = "humantime_serde::serialize"
    )]
    pub seal_interval: Duration,
    /// Kafka topic every seal is also published to (the off-database copy).
    /// Default `openg2p.audit.seals`; `""` publishes no seal (then set `seal_dir`).
    pub seal_topic: String,
    /// Off-database copy of every seal as files, one per seal (used when there is no Kafka;
    /// `verify --seals-from-dir DIR` checks against it). The sealer also reads its newest seal
    /// at start, and refuses to seal over a database whose seals were deleted. Default: none.
    pub seal_dir: Option<PathBuf>,
    /// The writer key (from `audit-manager keygen`) of the processes that store rows (the
    /// sink): every storing transaction is attested (signed) with it. Held by those processes
    /// only, never by the database. Default: none (rows are stored unattested).
    pub writer_key_file: Option<PathBuf>,
    /// Public keys (`FILE.pub` of every writer key, past and present) whose attestations the
    /// sealer and `verify` accept. Empty: the sealer seals rows without checking attestation
    /// (a warning at start) and `verify` does not check it. Default: none.
    pub writer_public_key_files: Vec<PathBuf>,
}

impl Default for IntegrityConfig {
    fn default() -> Self {
        IntegrityConfig {
            signing_key_file: None,
            public_key_files: Vec::new(),
            seal_interval: Duration::from_secs(60),
            seal_topic: "openg2p.audit.seals".to_string(),
            seal_dir: None,
            writer_key_file: None,
            writer_public_key_files: Vec::new(),
        }
    }
}

impl IntegrityConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.seal_interval.is_zero() {
            return Err(invalid(
                "integrity.seal_interval",
                "must be longer than 0 (e.g. \"1m\")".to_string(),
            ));
        }
        Ok(())
    }
}
