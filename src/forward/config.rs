//! Forwarder settings and the forward producer's defaults derived from them and from the
//! configuration; [`crate::kafka::producer`] layers the operator's `kafka.producer` over them
//! and forces the properties the delivery guarantee rests on.

use std::collections::BTreeMap;

use crate::config::{Config, ForwardSettings};
use crate::kafka::producer::{Overridden, ProducerConfig};

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
    // Feeds `audit_kafka_producer_queue_bytes` (librdkafka's own queue, docs/memory.md).
    set("statistics.interval.ms", "5000".into());
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
