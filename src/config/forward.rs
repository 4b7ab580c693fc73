//! Spool -> Kafka forwarding (`audit_manager.forward`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::invalid;
use super::value::de_byte_size;
use super::{Config, ConfigError};

/// Spool -> Kafka forwarding (`audit_manager.forward`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForwardConfig {
    /// Where the forward role delivers spooled events: `kafka` (the default: produced to
    /// `kafka.topic`, stored by the `sink` role) or `postgres` (written straight into
    /// `audit_events`, no broker and no `sink` role; see docs/kafka-less.md).
    pub target: ForwardTarget,
    /// Bytes (key + value, byte size) of events handed to the Kafka producer and not yet
    /// acknowledged by the broker. The forwarder stops reading the spool while they are out,
    /// and librdkafka's own queue (`queue.buffering.max.kbytes`) is sized from it, so a slow or
    /// unreachable broker leaves events in the spool on disk, not in memory. At least
    /// `ingest.max_event_bytes`. Default `16MiB`.
    #[serde(deserialize_with = "de_byte_size")]
    pub max_in_flight_bytes: u64,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        ForwardConfig {
            target: ForwardTarget::default(),
            max_in_flight_bytes: 16 * 1024 * 1024,
        }
    }
}

/// `forward.target`: where the forward role delivers spooled events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardTarget {
    /// Produce to `kafka.topic`; the `sink` role stores the records.
    #[default]
    Kafka,
    /// Write straight into `audit_events` (Kafka-less mode).
    Postgres,
}

impl ForwardTarget {
    pub fn as_str(self) -> &'static str {
        match self {
            ForwardTarget::Kafka => "kafka",
            ForwardTarget::Postgres => "postgres",
        }
    }
}

impl ForwardConfig {
    /// `forward.target: postgres` rules out a `sink` role in the same configuration: nothing
    /// would ever reach the topic it consumes.
    pub fn validate_roles(&self, has_sink: bool) -> Result<(), ConfigError> {
        if self.target == ForwardTarget::Postgres && has_sink {
            return Err(invalid(
                "roles",
                "forward.target is postgres: the forward role writes events straight into \
                 PostgreSQL, so there is no Kafka topic for a sink to consume. Remove `sink` \
                 from roles (e.g. roles: [ingest, forward, maintain]), or set forward.target: \
                 kafka"
                    .to_string(),
            ));
        }
        Ok(())
    }
}

/// Tuning of the spool → Kafka loop. Not part of the YAML contract: the defaults suit a sidecar
/// and a central deployment alike; tests shorten the timings.
#[derive(Debug, Clone)]
pub struct ForwardSettings {
    /// Most records handed to the producer and not yet acknowledged by the broker.
    pub max_in_flight_events: usize,
    /// Most bytes (key + value) handed to the producer and not yet acknowledged.
    pub max_in_flight_bytes: usize,
    /// Most records read from the spool in one read transaction.
    pub read_batch_events: usize,
    /// How often an idle forwarder looks for new records in the spool.
    pub idle_poll: Duration,
    /// First wait after a failed delivery before the undelivered records are sent again.
    pub retry_backoff_min: Duration,
    /// Longest such wait (the backoff doubles up to this).
    pub retry_backoff_max: Duration,
    /// On shutdown, how long to wait for outstanding delivery reports before giving up on them
    /// (they stay in the spool and are sent again after the restart).
    pub flush_timeout: Duration,
    /// Default `message.timeout.ms`: how long librdkafka keeps retrying one record before it
    /// reports a failure to us. Bounded so an outage surfaces as failed deliveries (the record
    /// stays in the spool and is re-sent) instead of an ever-growing, invisible queue.
    pub message_timeout: Duration,
}

impl ForwardSettings {
    /// These settings with the bounds the configuration sets (`forward.max_in_flight_bytes`):
    /// the configuration always decides them, whoever chose the timings.
    pub fn bounded_by(self, config: &Config) -> ForwardSettings {
        ForwardSettings {
            max_in_flight_bytes: usize::try_from(config.forward.max_in_flight_bytes)
                .unwrap_or(usize::MAX),
            ..self
        }
    }
}

impl Default for ForwardSettings {
    fn default() -> Self {
        ForwardSettings {
            max_in_flight_events: 20_000,
            max_in_flight_bytes: 16 * 1024 * 1024,
            read_batch_events: 2_000,
            idle_poll: Duration::from_millis(10),
            retry_backoff_min: Duration::from_millis(200),
            retry_backoff_max: Duration::from_secs(10),
            flush_timeout: Duration::from_secs(5),
            message_timeout: Duration::from_secs(30),
        }
    }
}
