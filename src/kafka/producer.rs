//! Every producer the service builds (the forwarder, the sink's dead-letter producer, `dlq
//! replay`, the seal publisher) gets its properties from [`ProducerConfig::new`], in three
//! layers: the role's defaults (for the forwarder: lz4, a bounded delivery timeout, a message
//! size that fits the largest event ingest accepts), then the operator's `kafka.producer` map
//! (the operator wins), then the properties the delivery guarantee rests on, which are forced
//! back and logged as a warning when the operator tried to change them: `enable.idempotence=true`
//! (no duplicates or reordering from librdkafka's own retries) and `acks=all` (the broker
//! acknowledges only once every in-sync replica has the record; the forwarder deletes the spool
//! copy and the sink commits the source offset of a dead letter on that acknowledgement).

use std::collections::BTreeMap;

use rdkafka::ClientConfig;
use rdkafka::error::KafkaResult;
use rdkafka::producer::{FutureProducer, ProducerContext, ThreadedProducer};

use crate::config::KafkaConfig;

/// Properties the at-least-once guarantee depends on, with the only accepted value.
const FORCED: &[(&str, &str)] = &[("enable.idempotence", "true"), ("acks", "all")];

/// Aliases librdkafka accepts for the forced properties.
const ALIASES: &[(&str, &str)] = &[("request.required.acks", "acks")];

/// A producer property the operator set that was replaced to keep deliveries safe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overridden {
    pub key: String,
    pub requested: String,
    pub forced: &'static str,
}

/// The three layers of every producer (see the module documentation): `bootstrap.servers` and
/// `client.id` from `kafka`, then `defaults`, then `kafka.producer`, then `enable.idempotence`
/// and `acks` forced; and the operator settings that had to be overridden.
pub fn properties(
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

/// The librdkafka configuration of the producer of one role, built once (its overrides are
/// logged then) and used for every client of that role: the producer, a replacement after a
/// fatal error, and the admin client that creates its topics (the producer's properties carry
/// the operator's security settings, SASL and TLS).
#[derive(Clone)]
pub struct ProducerConfig {
    config: ClientConfig,
}

impl ProducerConfig {
    /// The configuration of a producer of `role` (e.g. "forward", "dead-letter"):
    /// `bootstrap.servers` and `client.id`, the role's `defaults`, the operator's
    /// `kafka.producer`, and `enable.idempotence=true` / `acks=all` forced over all of them, each
    /// override logged as a warning.
    pub fn new(
        role: &str,
        kafka: &KafkaConfig,
        defaults: BTreeMap<String, String>,
    ) -> ProducerConfig {
        let (props, overridden) = properties(kafka, defaults);
        ProducerConfig::from_properties(role, props, &overridden)
    }

    /// The configuration of `props` as [`properties`] layered them; logs `overridden`.
    pub fn from_properties(
        role: &str,
        props: BTreeMap<String, String>,
        overridden: &[Overridden],
    ) -> ProducerConfig {
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
        let mut config = ClientConfig::new();
        for (k, v) in props {
            config.set(k, v);
        }
        ProducerConfig { config }
    }

    /// The value this configuration gives property `key`, if it sets it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.config.get(key)
    }

    /// The librdkafka configuration, for the other clients of this module.
    pub(super) fn client_config(&self) -> &ClientConfig {
        &self.config
    }

    /// A producer whose sends are futures resolved by the broker's acknowledgement.
    pub fn future_producer(&self) -> KafkaResult<FutureProducer> {
        self.config.create()
    }

    /// A producer with its own polling thread, delivering reports to `context`.
    pub fn threaded_producer<C: ProducerContext>(
        &self,
        context: C,
    ) -> KafkaResult<ThreadedProducer<C>> {
        self.config.create_with_context(context)
    }
}

/// A [`FutureProducer`] of `role` (see [`ProducerConfig::new`]).
pub fn future_producer(
    role: &str,
    kafka: &KafkaConfig,
    defaults: BTreeMap<String, String>,
) -> KafkaResult<FutureProducer> {
    ProducerConfig::new(role, kafka, defaults).future_producer()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

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
        let (p, o) = properties(&kafka, defaults);
        assert_eq!(p["enable.idempotence"], "true");
        assert_eq!(p["acks"], "all");
        assert_eq!(p["linger.ms"], "7", "the operator wins over role defaults");
        assert_eq!(p["bootstrap.servers"], "b1:9092");
        assert_eq!(o.len(), 2, "{o:?}");
        let cc = ProducerConfig::new("dead-letter", &kafka, BTreeMap::new());
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
}
