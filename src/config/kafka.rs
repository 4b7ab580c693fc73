//! The Kafka section (`audit_manager.kafka`) and the checks of its client properties.
//!
//! `kafka.producer` / `kafka.consumer` checked by librdkafka itself when the configuration is
//! loaded, so a misspelt or invalid property stops the start with the property's name, before
//! any role builds a client, and the message never quotes the value (rdkafka's own error
//! does: a misspelt `sasl.pasword` would print the password).

use rdkafka::ClientConfig;
use rdkafka::config::NativeClientConfig;
use rdkafka::error::{KafkaError, KafkaResult};
use serde::{Deserialize, Serialize};

use super::error::{at_least_one, invalid, non_empty};
use super::redact::is_secret_name;
use super::value::{de_int, de_string_map};
use super::{ConfigError, KafkaProperties, ROOT_KEY};

/// Kafka settings (`audit_manager.kafka`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` bootstrap brokers; `embedded` starts an in-process mock
    /// broker (development only). Default `kafka:9092`.
    pub bootstrap_servers: String,
    /// Topic carrying audit events. Default `openg2p.audit.events`.
    pub topic: String,
    /// Dead-letter topic for events the sink cannot store. Default `openg2p.audit.dlq`.
    pub dlq_topic: String,
    /// Consumer group of the sink. Default `openg2p-audit-consumer`.
    pub consumer_group: String,
    /// Kafka `client.id`. Default `openg2p-audit-manager`.
    pub client_id: String,
    /// Number of partitions when this service creates the topics. Default `12`.
    #[serde(deserialize_with = "de_int")]
    pub topic_partitions: i32,
    /// Replication factor when this service creates the topics (`-1` = broker default).
    /// Default `1`.
    #[serde(deserialize_with = "de_int")]
    pub topic_replication: i32,
    /// Extra librdkafka producer properties (`name: value`; numbers and booleans are turned
    /// into their string form; `linger_ms` is `linger.ms`). Default: none.
    #[serde(deserialize_with = "de_string_map")]
    pub producer: KafkaProperties,
    /// Extra librdkafka consumer properties, same format as `producer`. Default: none.
    #[serde(deserialize_with = "de_string_map")]
    pub consumer: KafkaProperties,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: "kafka:9092".to_string(),
            topic: "openg2p.audit.events".to_string(),
            dlq_topic: "openg2p.audit.dlq".to_string(),
            consumer_group: "openg2p-audit-consumer".to_string(),
            client_id: "openg2p-audit-manager".to_string(),
            topic_partitions: 12,
            topic_replication: 1,
            producer: KafkaProperties::default(),
            consumer: KafkaProperties::default(),
        }
    }
}

impl KafkaConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        non_empty("kafka.bootstrap_servers", &self.bootstrap_servers)?;
        non_empty("kafka.topic", &self.topic)?;
        non_empty("kafka.dlq_topic", &self.dlq_topic)?;
        non_empty("kafka.consumer_group", &self.consumer_group)?;
        if self.dlq_topic == self.topic {
            return Err(invalid(
                "kafka.dlq_topic",
                format!(
                    "must differ from kafka.topic (both are `{}`); pick a separate dead-letter \
                     topic",
                    self.topic
                ),
            ));
        }
        at_least_one("kafka.topic_partitions", self.topic_partitions)?;
        if self.topic_replication < 1 && self.topic_replication != -1 {
            return Err(invalid(
                "kafka.topic_replication",
                format!(
                    "must be at least 1, or -1 for the broker default (got {})",
                    self.topic_replication
                ),
            ));
        }
        check_properties("producer", &self.producer)?;
        check_properties("consumer", &self.consumer)
    }
}

/// librdkafka's reading of a property map: refuses a property it does not know or a value it
/// cannot parse, and fills in its own defaults. It builds no client (that is `crate::kafka`'s
/// job): the configuration only asks librdkafka whether it would take these properties.
fn librdkafka_reading<'a>(
    props: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> KafkaResult<NativeClientConfig> {
    let mut cc = ClientConfig::new();
    for (k, v) in props {
        cc.set(k, v);
    }
    cc.create_native_config()
}

/// Checks one property map (`map` is `producer` or `consumer`).
pub(crate) fn check_properties(map: &str, props: &KafkaProperties) -> Result<(), ConfigError> {
    let native = match librdkafka_reading(props) {
        Ok(n) => n,
        Err(KafkaError::ClientConfig(_, desc, key, value)) => {
            // librdkafka quotes the value of typed properties ("Invalid value \"x\" for …");
            // for a secret-looking name only a reason that does not is kept.
            let reason = if is_secret_name(&key) && !value.is_empty() && desc.contains(&value) {
                "not accepted by librdkafka".to_string()
            } else {
                desc
            };
            return Err(ConfigError::Invalid {
                key: format!("{ROOT_KEY}.kafka.{map}.{key}"),
                message: format!(
                    "{reason} (names and values must be librdkafka properties: see \
                     https://github.com/confluentinc/librdkafka/blob/master/CONFIGURATION.md)"
                ),
            });
        }
        Err(e) => {
            return Err(ConfigError::Invalid {
                key: format!("{ROOT_KEY}.kafka.{map}"),
                message: format!("cannot be checked by librdkafka: {e}"),
            });
        }
    };
    let features = native.get("builtin.features").unwrap_or_default();
    let has = |f: &str| features.split(',').any(|x| x == f);
    let get = |k: &str| native.get(k).unwrap_or_default().to_ascii_lowercase();
    let protocol = get("security.protocol");
    if protocol.contains("ssl") && !has("ssl") {
        return Err(ConfigError::Invalid {
            key: format!("{ROOT_KEY}.kafka.{map}.security.protocol"),
            message: "this build of audit-manager has no TLS for Kafka".to_string(),
        });
    }
    if protocol.starts_with("sasl") {
        let mechanism = get("sasl.mechanisms");
        let feature = match mechanism.as_str() {
            "gssapi" => "sasl_gssapi",
            "plain" => "sasl_plain",
            "scram-sha-256" | "scram-sha-512" => "sasl_scram",
            "oauthbearer" => "sasl_oauthbearer",
            _ => "",
        };
        if !feature.is_empty() && !has(feature) {
            let set = props.contains_key("sasl.mechanism") || props.contains_key("sasl.mechanisms");
            let what = if set {
                format!("SASL mechanism {}", mechanism.to_ascii_uppercase())
            } else {
                format!(
                    "security.protocol is {protocol} but sasl.mechanism is not set, and \
                     librdkafka's default, {},",
                    mechanism.to_ascii_uppercase()
                )
            };
            return Err(ConfigError::Invalid {
                key: format!("{ROOT_KEY}.kafka.{map}.sasl.mechanism"),
                message: format!(
                    "{what} is not available in this build (Kerberos needs Cyrus SASL, which \
                     is not built in): set sasl.mechanism to SCRAM-SHA-512, SCRAM-SHA-256, \
                     PLAIN or OAUTHBEARER"
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> KafkaProperties {
        let mut p = KafkaProperties::default();
        for (k, v) in pairs {
            p.insert((*k).into(), (*v).into());
        }
        p
    }

    #[test]
    fn tls_and_sasl_settings_pass() {
        check_properties(
            "producer",
            &props(&[
                ("security.protocol", "sasl_ssl"),
                ("sasl.mechanism", "SCRAM-SHA-512"),
                ("sasl.username", "audit"),
                ("sasl.password", "hunter2"),
                ("ssl.ca.location", "/etc/audit-manager/tls/kafka/ca.crt"),
                (
                    "ssl.certificate.location",
                    "/etc/audit-manager/tls/kafka/tls.crt",
                ),
                ("ssl.key.location", "/etc/audit-manager/tls/kafka/tls.key"),
                ("ssl.key.password", "hunter3"),
            ]),
        )
        .unwrap();
        for mechanism in ["PLAIN", "SCRAM-SHA-256", "OAUTHBEARER"] {
            check_properties(
                "consumer",
                &props(&[
                    ("security.protocol", "SASL_SSL"),
                    ("sasl.mechanisms", mechanism),
                ]),
            )
            .unwrap();
        }
    }

    #[test]
    fn kerberos_is_refused_with_the_alternatives() {
        let e = check_properties(
            "producer",
            &props(&[
                ("security.protocol", "sasl_plaintext"),
                ("sasl.mechanism", "GSSAPI"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("kafka.producer.sasl.mechanism"), "{e}");
        assert!(e.contains("GSSAPI") && e.contains("SCRAM-SHA-512"), "{e}");
    }

    #[test]
    fn sasl_without_a_mechanism_says_to_set_one() {
        let e = check_properties("consumer", &props(&[("security.protocol", "sasl_ssl")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("sasl.mechanism is not set"), "{e}");
        assert!(e.contains("GSSAPI"), "{e}");
    }

    #[test]
    fn a_misspelt_secret_is_named_without_its_value() {
        let e = check_properties("producer", &props(&[("sasl.pasword", "hunter2-xyz")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("kafka.producer.sasl.pasword"), "{e}");
        assert!(!e.contains("hunter2-xyz"), "{e}");
        let e = check_properties("consumer", &props(&[("security.protocol", "tls")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("kafka.consumer.security.protocol"), "{e}");
    }
}
