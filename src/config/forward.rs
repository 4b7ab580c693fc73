//! Spool -> Kafka forwarding (`audit_manager.forward`).

use serde::{Deserialize, Serialize};

use super::value::de_byte_size;

/// Spool -> Kafka forwarding (`audit_manager.forward`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForwardConfig {
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
            max_in_flight_bytes: 16 * 1024 * 1024,
        }
    }
}
