//! The local durable spool (`audit_manager.spool`).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::error::{at_least_one, non_empty};
use super::value::{de_byte_size, de_duration, de_int};

/// Local durable spool settings (`audit_manager.spool`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpoolConfig {
    /// Directory holding the spool file. Default `./data/spool`.
    pub path: PathBuf,
    /// Live spooled bytes (byte size) above which ingest answers 503. Default `1GiB`.
    #[serde(deserialize_with = "de_byte_size")]
    pub max_bytes: u64,
    /// Memory for redb's page cache of the spool file (byte size). Each event is written once
    /// and read once shortly after, so a small cache costs little; reads beyond it come from
    /// the operating system's page cache. Default `16MiB`.
    #[serde(deserialize_with = "de_byte_size")]
    pub cache_bytes: u64,
    /// Append requests queued for the group-commit writer before new ones get 503 (overload).
    /// The reference's `ingest.queue_max_size` sets it. Default `4096`.
    #[serde(deserialize_with = "de_int")]
    pub max_pending_appends: usize,
    /// Bytes of encoded appends (byte size) queued for the group-commit writer before new ones
    /// get 503 (overload): bounds the memory the queue can hold, which `max_pending_appends`
    /// cannot (a 500-event batch is ~400 KB). Default `64MiB`.
    #[serde(deserialize_with = "de_byte_size")]
    pub max_pending_bytes: u64,
    /// Value of `Retry-After` on 503 responses (duration; rounded up to whole seconds when
    /// rendered, see [`SpoolConfig::retry_after_secs`]). Default `1s`.
    #[serde(
        deserialize_with = "de_duration",
        serialize_with = "humantime_serde::serialize"
    )]
    pub retry_after: Duration,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            path: PathBuf::from("./data/spool"),
            max_bytes: 1024 * 1024 * 1024,
            cache_bytes: 16 * 1024 * 1024,
            max_pending_appends: 4096,
            max_pending_bytes: 64 * 1024 * 1024,
            retry_after: Duration::from_secs(1),
        }
    }
}

impl SpoolConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        at_least_one("spool.max_bytes", self.max_bytes)?;
        at_least_one("spool.cache_bytes", self.cache_bytes)?;
        at_least_one("spool.max_pending_appends", self.max_pending_appends as u64)?;
        at_least_one("spool.max_pending_bytes", self.max_pending_bytes)?;
        non_empty("spool.path", &self.path.to_string_lossy())
    }

    /// `retry_after` rounded up to whole seconds, as rendered in the `Retry-After` header.
    pub fn retry_after_secs(&self) -> u64 {
        let d = self.retry_after;
        d.as_secs() + u64::from(d.subsec_nanos() > 0)
    }
}
