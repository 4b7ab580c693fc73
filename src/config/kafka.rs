//! `kafka.producer` / `kafka.consumer` checked by librdkafka itself when the configuration is
//! loaded, so a misspelt or invalid property stops the start with the property's name, before
//! any role builds a client, and the message never quotes the value (rdkafka's own error
//! does: a misspelt `sasl.pasword` would print the password).

use rdkafka::error::KafkaError;

use super::redact::is_secret_name;
use super::{ConfigError, KafkaProperties, ROOT_KEY};

/// Checks one property map (`map` is `producer` or `consumer`).
pub(crate) fn check_properties(map: &str, props: &KafkaProperties) -> Result<(), ConfigError> {
    let native = match crate::kafka::native_config(props) {
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
