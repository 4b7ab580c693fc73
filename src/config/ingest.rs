//! Event ingest limits (`audit_manager.ingest`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::error::at_least_one;
use super::value::{de_byte_size, de_duration, de_int};

/// Event ingest limits (`audit_manager.ingest`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Maximum number of events in one batch request. Default `500`.
    #[serde(deserialize_with = "de_int")]
    pub max_batch_size: usize,
    /// How far in the future an event's timestamp may lie before it is rejected (duration).
    /// Default `1h`.
    #[serde(
        deserialize_with = "de_duration",
        serialize_with = "humantime_serde::serialize"
    )]
    pub max_future_skew: Duration,
    /// Largest accepted single event after normalization, in bytes (byte size); larger events
    /// get 413. Keeps events under Kafka's default message size. Default `1MiB`.
    #[serde(deserialize_with = "de_byte_size")]
    pub max_event_bytes: u64,
    /// Rule set for events, at ingest and in the sink: `compatible` accepts what the reference
    /// service accepts and normalizes it; `strict` applies CloudEvents-strict rules. Default
    /// `compatible`.
    pub validation: crate::event::ValidationMode,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_batch_size: 500,
            max_future_skew: Duration::from_secs(3600),
            max_event_bytes: 1024 * 1024,
            validation: crate::event::ValidationMode::Compatible,
        }
    }
}

impl IngestConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        at_least_one("ingest.max_batch_size", self.max_batch_size as u64)?;
        at_least_one("ingest.max_event_bytes", self.max_event_bytes)
    }
}
