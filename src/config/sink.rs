//! Kafka -> PostgreSQL sink batching (`audit_manager.sink`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::error::at_least_one;
use super::value::{de_byte_size, de_duration, de_int};

/// Kafka -> PostgreSQL sink batching (`audit_manager.sink`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SinkConfig {
    /// Maximum number of records written to PostgreSQL in one batch. Default `5000`.
    #[serde(deserialize_with = "de_int")]
    pub batch_max_records: usize,
    /// Bytes (key + value as consumed, byte size) of the records in one batch: a batch is
    /// written once it holds this much, and at most this much more is consumed and decoded
    /// ahead while it is being written. With the consumer's prefetch
    /// (`kafka.consumer.queued.max.messages.kbytes`) this bounds the sink's memory whatever the
    /// size of the events. Default `8MiB`.
    #[serde(deserialize_with = "de_byte_size")]
    pub batch_max_bytes: u64,
    /// Longest time a partial batch waits before it is flushed (duration). Default `200ms`.
    #[serde(
        deserialize_with = "de_duration",
        serialize_with = "humantime_serde::serialize"
    )]
    pub flush_interval: Duration,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            batch_max_records: 5000,
            batch_max_bytes: 8 * 1024 * 1024,
            flush_interval: Duration::from_millis(200),
        }
    }
}

impl SinkConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        at_least_one("sink.batch_max_records", self.batch_max_records as u64)?;
        at_least_one("sink.batch_max_bytes", self.batch_max_bytes)
    }
}
