//! Forwarder settings and the librdkafka producer configuration derived from `kafka.*`.
//!
//! Every producer the service builds (the forwarder, the sink's dead-letter producer, `dlq
//! replay`) gets its properties from [`producer_client`], in three layers: the role's defaults
//! (for the forwarder: lz4, a bounded delivery timeout, a message size that fits the largest
//! event ingest accepts), then the operator's `kafka.producer` map (the operator wins), then
//! the properties the delivery guarantee rests on, which are forced back and logged as a warning
//! when the operator tried to change them: `enable.idempotence=true` (no duplicates or
//! reordering from librdkafka's own retries) and `acks=all` (the broker acknowledges only once
//! every in-sync replica has the record; the forwarder deletes the spool copy and the sink
//! commits the source offset of a dead letter on that acknowledgement).

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;

use crate::config::{Config, KafkaConfig};

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

/// Properties the at-least-once guarantee depends on, with the only accepted value.
const FORCED: &[(&str, &str)] = &[("enable.idempotence", "true"), ("acks", "all")];

/// Aliases librdkafka accepts for the forced properties.
const ALIASES: &[(&str, &str)] = &[("request.required.acks", "acks")];

/// Room added to `ingest.max_event_bytes` for the key, headers and record framing.
const MESSAGE_OVERHEAD: u64 = 64 * 1024;

/// librdkafka's own default `message.max.bytes`.
const LIBRDKAFKA_MESSAGE_MAX: u64 = 1_000_000;

/// A producer property the operator set that was replaced to keep deliveries safe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overridden {
    pub key: String,
    pub requested: String,
    pub forced: &'static str,
}

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
    layered_properties(&config.kafka, defaults)
}

/// The three layers of every producer (see the module documentation): `bootstrap.servers` and
/// `client.id` from `kafka`, then `defaults`, then `kafka.producer`, then [`FORCED`].
fn layered_properties(
    kafka: &KafkaConfig,
    defaults: BTreeMap<String, String>,
) -> (BTreeMap<String, String>, Vec<Overridden>) {
    let mut props = BTreeMap::new();
    props.insert(
        "bootstrap.servers".to_string(),
        kafka.bootstrap_servers.clone(),
    );
    props.insert("client.id".to_string(), kafka.client_id.clone());
    props.extend(defaults);
    for (k, v) in &kafka.producer {
        props.insert(k.clone(), v.clone());
    }
    let mut overridden = Vec::new();
    for (alias, canonical) in ALIASES {
        if let Some(v) = props.remove(*alias) {
            props.entry((*canonical).to_string()).or_insert(v);
        }
    }
    for (k, forced) in FORCED {
        let current = props.insert((*k).to_string(), (*forced).to_string());
        if let Some(requested) = current
            && !equivalent(k, &requested, forced)
        {
            overridden.push(Overridden {
                key: (*k).to_string(),
                requested,
                forced,
            });
        }
    }
    (props, overridden)
}

/// `acks=-1` means the same as `acks=all`; booleans are case-insensitive.
fn equivalent(key: &str, requested: &str, forced: &str) -> bool {
    let r = requested.trim().to_ascii_lowercase();
    r == forced || (key == "acks" && r == "-1")
}

/// The warning for one forced property of the producer of `role`.
fn override_warning(role: &str, o: &Overridden) -> String {
    format!(
        "kafka.producer.{} = {:?} is ignored for the {role} producer: it would weaken delivery \
         (events could be lost, duplicated or reordered); using {:?}. Remove it from \
         kafka.producer to silence this warning",
        o.key, o.requested, o.forced
    )
}

/// The librdkafka configuration of a producer of `role` (e.g. "forward", "dead-letter"):
/// `bootstrap.servers` and `client.id`, the role's `defaults`, the operator's `kafka.producer`,
/// and `enable.idempotence=true` / `acks=all` forced over all of them, each override logged as a
/// warning. Every producer the service builds comes from here.
pub fn producer_client(
    role: &str,
    kafka: &KafkaConfig,
    defaults: BTreeMap<String, String>,
) -> ClientConfig {
    let (props, overridden) = layered_properties(kafka, defaults);
    client_config(role, props, &overridden)
}

fn client_config(
    role: &str,
    props: BTreeMap<String, String>,
    overridden: &[Overridden],
) -> ClientConfig {
    for o in overridden {
        tracing::warn!(
            producer = role,
            property = %o.key,
            requested = %o.requested,
            used = o.forced,
            "{}",
            override_warning(role, o)
        );
    }
    let mut cc = ClientConfig::new();
    for (k, v) in props {
        cc.set(k, v);
    }
    cc
}

/// The librdkafka client configuration for the forward producer; logs every forced override.
pub fn producer_config(config: &Config, settings: &ForwardSettings) -> ClientConfig {
    let (props, overridden) = producer_properties(config, settings);
    client_config("forward", props, &overridden)
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
    fn every_producer_gets_the_safety_properties_forced() {
        let mut kafka = Config::default().kafka;
        kafka.bootstrap_servers = "b1:9092".into();
        for (k, v) in [
            ("enable.idempotence", "false"),
            ("acks", "0"),
            ("linger.ms", "7"),
        ] {
            kafka.producer.insert(k.into(), v.into());
        }
        let defaults = BTreeMap::from([("linger.ms".to_string(), "1".to_string())]);
        let (p, o) = layered_properties(&kafka, defaults);
        assert_eq!(p["enable.idempotence"], "true");
        assert_eq!(p["acks"], "all");
        assert_eq!(p["linger.ms"], "7", "the operator wins over role defaults");
        assert_eq!(p["bootstrap.servers"], "b1:9092");
        assert_eq!(o.len(), 2, "{o:?}");
        let cc = producer_client("dead-letter", &kafka, BTreeMap::new());
        assert_eq!(cc.get("enable.idempotence"), Some("true"));
        assert_eq!(cc.get("acks"), Some("all"));
    }

    #[test]
    fn the_warning_says_what_was_overridden_and_why() {
        let o = Overridden {
            key: "acks".into(),
            requested: "1".into(),
            forced: "all",
        };
        let text = override_warning("dead-letter", &o);
        assert!(text.contains("kafka.producer.acks = \"1\""), "{text}");
        assert!(text.contains("dead-letter producer"), "{text}");
        assert!(text.contains("using \"all\""), "{text}");
        assert!(text.contains("weaken delivery"), "{text}");
    }

    #[test]
    fn equivalent_safe_values_are_not_reported() {
        let (p, o) = props(&[("acks", "-1"), ("enable.idempotence", "TRUE")]);
        assert_eq!(p["acks"], "all");
        assert!(o.is_empty(), "{o:?}");
    }
}
