//! Forwarder settings and the forward producer's defaults derived from them and from the
//! configuration; [`crate::kafka::producer`] layers the operator's `kafka.producer` over them
//! and forces the properties the delivery guarantee rests on.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::Config;
use crate::kafka::producer::{Overridden, ProducerConfig};

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

/// Room added to `ingest.max_event_bytes` for the key, headers and record framing.
const MESSAGE_OVERHEAD: u64 = 64 * 1024;

/// librdkafka's own default `message.max.bytes`.
const LIBRDKAFKA_MESSAGE_MAX: u64 = 1_000_000;

/// The forward producer's properties, and the operator settings that had to be overridden.
pub fn producer_properties(
    config: &Config,
    settings: &ForwardSettings,
) -> (BTreeMap<String, String>, Vec<Overridden>) {
    let mut defaults = BTreeMap::new();
    let mut set = |k: &str, v: String| {
        defaults.insert(k.to_string(), v);
    };
    set("compression.type", "lz4".into());
    set(
        "message.timeout.ms",
        settings.message_timeout.as_millis().to_string(),
    );
    // librdkafka refuses records above message.max.bytes before they reach the broker. Its
    // default (1,000,000) is below ingest's default event limit (1 MiB), so an event ingest
    // accepted could be refused locally; size it to what ingest lets through.
    let max_message = LIBRDKAFKA_MESSAGE_MAX.max(config.ingest.max_event_bytes + MESSAGE_OVERHEAD);
    set("message.max.bytes", max_message.to_string());
    // The in-flight window bounds what we hand over; keep librdkafka's queue above it so
    // "queue full" stays an exception.
    set(
        "queue.buffering.max.messages",
        (settings.max_in_flight_events * 2).max(100_000).to_string(),
    );
    // ... and by bytes: librdkafka's default (1 GiB) would let its queue, not the spool, hold
    // the backlog of a slow broker. Twice the window leaves room for its own copies and framing.
    set(
        "queue.buffering.max.kbytes",
        (settings.max_in_flight_bytes / 1024 * 2)
            .max(1024)
            .to_string(),
    );
    crate::kafka::producer::properties(&config.kafka, defaults)
}

/// The librdkafka client configuration for the forward producer; logs every forced override.
pub fn producer_config(config: &Config, settings: &ForwardSettings) -> ProducerConfig {
    let (props, overridden) = producer_properties(config, settings);
    ProducerConfig::from_properties("forward", props, &overridden)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(producer: &[(&str, &str)]) -> (BTreeMap<String, String>, Vec<Overridden>) {
        let mut c = Config::default();
        c.kafka.bootstrap_servers = "b1:9092".into();
        for (k, v) in producer {
            c.kafka.producer.insert((*k).into(), (*v).into());
        }
        producer_properties(&c, &ForwardSettings::default())
    }

    #[test]
    fn safe_defaults() {
        let (p, o) = props(&[]);
        assert_eq!(p["enable.idempotence"], "true");
        assert_eq!(p["acks"], "all");
        assert_eq!(p["compression.type"], "lz4");
        assert_eq!(p["bootstrap.servers"], "b1:9092");
        assert_eq!(p["client.id"], "openg2p-audit-manager");
        assert_eq!(p["message.timeout.ms"], "30000");
        // 1 MiB events (ingest's default limit) must fit.
        assert!(p["message.max.bytes"].parse::<u64>().unwrap() > 1024 * 1024);
        assert!(o.is_empty());
    }

    #[test]
    fn operator_wins_except_for_safety() {
        let (p, o) = props(&[
            ("compression.type", "zstd"),
            ("linger.ms", "50"),
            ("enable.idempotence", "false"),
            ("request.required.acks", "1"),
        ]);
        assert_eq!(p["compression.type"], "zstd");
        assert_eq!(p["linger.ms"], "50");
        assert_eq!(p["enable.idempotence"], "true");
        assert_eq!(p["acks"], "all");
        assert!(!p.contains_key("request.required.acks"));
        let keys: Vec<&str> = o.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, ["enable.idempotence", "acks"]);
        assert_eq!(o[1].requested, "1");
    }

    #[test]
    fn equivalent_safe_values_are_not_reported() {
        let (p, o) = props(&[("acks", "-1"), ("enable.idempotence", "TRUE")]);
        assert_eq!(p["acks"], "all");
        assert!(o.is_empty(), "{o:?}");
    }
}
