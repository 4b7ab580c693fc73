//! What a Kafka error says, for the roles that retry: [`classify`] asks first whether every
//! record would fail the same way (an outage: retried, shown on `/health`) before calling one
//! record bad (quarantined); the hints name the settings an operator changes; [`error_text`]
//! keeps configured secrets out of logs and `/health`.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// What to do about a connection-level error librdkafka reported (`reason`), when TLS or SASL
/// is the cause. librdkafka's own text says what failed; this names our settings.
pub fn connection_hint(reason: &str) -> Option<&'static str> {
    let r = reason.to_ascii_lowercase();
    Some(
        if r.contains("certificate verify failed") || r.contains("could not be verified") {
            "the broker's certificate is not trusted: set ssl.ca.location in kafka.producer and \
         kafka.consumer to the PEM file of the CA that signed it"
        } else if r.contains("ssl handshake failed") || r.contains("ssl:") {
            "the TLS handshake failed: check security.protocol and the ssl.* properties in \
         kafka.producer and kafka.consumer, and that the broker's listener speaks TLS"
        } else if r.contains("oauthbearer token") {
            "the client could not build its OAUTHBEARER token: check sasl.oauthbearer.config in \
         kafka.producer and kafka.consumer"
        } else if r.contains("sasl") || r.contains("authentication") {
            "the broker refused the credentials: check security.protocol, sasl.mechanism and the \
         sasl.* properties in kafka.producer and kafka.consumer"
        } else {
            return None;
        },
    )
}

/// A Kafka error as text for logs and `/health`: a property librdkafka refused is named
/// without its value (rdkafka's own text quotes the value), and remembered secrets are masked.
pub fn error_text(e: &KafkaError) -> String {
    let text = match e {
        KafkaError::ClientConfig(_, desc, key, _) => {
            format!("invalid Kafka client property {key}: {desc}")
        }
        other => other.to_string(),
    };
    crate::config::redact::scrub(&text).into_owned()
}

/// What a failed delivery says: about this one record, or about the system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryClass {
    /// This record can never be delivered as it is (too large, invalid, a timestamp outside
    /// the topic's window): it is quarantined so it does not block everything behind it.
    Record,
    /// Every record would fail the same way until the cluster or its configuration changes
    /// (brokers down, ACLs, authentication, a missing topic, a broker policy): retried forever,
    /// nothing quarantined, forward DEGRADED on `/health` with the reason.
    Outage,
}

/// Classifies a failed delivery by asking first whether every record would fail the same way.
///
/// Only produce errors about the record's own bytes are [`DeliveryClass::Record`]: message
/// or batch too large, an invalid or corrupt record (e.g. no key for a compacted topic), an
/// invalid timestamp (outside the topic's `message.timestamp.difference.max.ms`), and a record
/// librdkafka cannot build. Authorization (`TopicAuthorizationFailed`,
/// `ClusterAuthorizationFailed`), SASL and authentication failures, an unknown or invalid
/// topic, a broker policy (`PolicyViolation`), a message format the topic cannot store,
/// timeouts, leader changes, a full queue and fatal producer states are outages.
pub fn classify(err: &KafkaError) -> DeliveryClass {
    match err {
        KafkaError::MessageProduction(code) => classify_code(*code),
        _ => DeliveryClass::Outage,
    }
}

/// See [`classify`].
pub fn classify_code(code: RDKafkaErrorCode) -> DeliveryClass {
    use RDKafkaErrorCode as C;
    match code {
        // Larger than the topic's max.message.bytes or the producer's message.max.bytes.
        C::MessageSizeTooLarge
        | C::InvalidMessageSize
        // RECORD_LIST_TOO_LARGE: the batch holding it can never fit.
        | C::MessageBatchTooLarge
        // CORRUPT_MESSAGE: failed its CRC or, e.g., has no key for a compacted topic.
        | C::InvalidMessage
        // The broker's record validation.
        | C::InvalidRecord
        // Outside the topic's message.timestamp.difference.max.ms.
        | C::InvalidTimestamp
        // librdkafka could not build the message (e.g. bad header).
        | C::BadMessage => DeliveryClass::Record,
        _ => DeliveryClass::Outage,
    }
}

/// Whether the broker (or librdkafka) refused this record for good (see [`classify`]).
pub fn is_permanent(err: &KafkaError) -> bool {
    classify(err) == DeliveryClass::Record
}

/// See [`is_permanent`].
pub fn is_permanent_code(code: RDKafkaErrorCode) -> bool {
    classify_code(code) == DeliveryClass::Record
}

/// What the operator should do about an outage the broker explained, if there is a clear
/// remedy.
pub fn outage_hint(err: &KafkaError) -> Option<&'static str> {
    use RDKafkaErrorCode as C;
    Some(match err.rdkafka_error_code()? {
        C::TopicAuthorizationFailed => {
            "the broker's ACLs do not let this client write to kafka.topic: allow the client's \
             principal WRITE (and DESCRIBE) on the topic"
        }
        C::ClusterAuthorizationFailed => {
            "the broker's ACLs refuse the idempotent producer: allow the client's principal \
             IDEMPOTENT_WRITE on the cluster"
        }
        C::SaslAuthenticationFailed | C::Authentication => {
            "the broker refused the credentials: check sasl.* and security.protocol in \
             kafka.producer"
        }
        C::UnknownTopicOrPartition | C::UnknownTopic => {
            "kafka.topic does not exist: create it (or allow this client CreateTopics)"
        }
        C::InvalidTopic => "kafka.topic is not a valid topic name",
        C::PolicyViolation => {
            "a broker policy refuses these writes: check the topic's configuration against the \
             cluster's policies"
        }
        C::UnsupportedForMessageFormat => {
            "the topic's message format is too old for record headers: raise its \
             message.format.version"
        }
        _ => return None,
    })
}

/// The `/health` reason and log message for a delivery failure that is an outage.
pub fn describe_outage(err: &KafkaError) -> String {
    match outage_hint(err) {
        Some(hint) => format!("Kafka delivery failed: {err} ({hint})"),
        None => format!("Kafka delivery failed: {err}"),
    }
}

/// A short, bounded label for metrics (`kind` of `audit_forward_delivery_errors_total`).
pub fn error_kind(err: &KafkaError) -> String {
    match err.rdkafka_error_code() {
        Some(code) => format!("{code:?}"),
        None => "other".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_level_rejections_are_quarantined() {
        use RDKafkaErrorCode as C;
        for code in [
            C::MessageSizeTooLarge,
            C::InvalidMessageSize,
            C::MessageBatchTooLarge,
            C::InvalidMessage,
            C::InvalidRecord,
            C::InvalidTimestamp,
            C::BadMessage,
        ] {
            let e = KafkaError::MessageProduction(code);
            assert_eq!(classify(&e), DeliveryClass::Record, "{code:?}");
            assert!(is_permanent(&e), "{code:?}");
        }
    }

    /// The regression this policy exists for: a refusal of every record (ACLs, a missing or
    /// invalid topic, a broker policy) used to quarantine the whole stream.
    #[test]
    fn refusals_of_every_record_are_outages() {
        use RDKafkaErrorCode as C;
        for code in [
            C::TopicAuthorizationFailed,
            C::ClusterAuthorizationFailed,
            C::SaslAuthenticationFailed,
            C::Authentication,
            C::UnknownTopicOrPartition,
            C::UnknownTopic,
            C::InvalidTopic,
            C::PolicyViolation,
            C::UnsupportedForMessageFormat,
            C::InvalidRequiredAcks,
        ] {
            let e = KafkaError::MessageProduction(code);
            assert_eq!(classify(&e), DeliveryClass::Outage, "{code:?}");
            assert!(
                outage_hint(&e).is_some() || code == C::InvalidRequiredAcks,
                "{code:?}"
            );
        }
    }

    #[test]
    fn outages_are_retried() {
        use RDKafkaErrorCode as C;
        for code in [
            C::MessageTimedOut,
            C::AllBrokersDown,
            C::BrokerTransportFailure,
            C::QueueFull,
            C::NotLeaderForPartition,
            C::RequestTimedOut,
            C::NotEnoughReplicas,
            C::PurgeQueue,
            C::PurgeInflight,
            C::Fatal,
            C::OutOfOrderSequenceNumber,
        ] {
            assert_eq!(
                classify(&KafkaError::MessageProduction(code)),
                DeliveryClass::Outage,
                "{code:?}"
            );
        }
        // Only produce errors are about a record; anything else is about the connection.
        assert!(!is_permanent(&KafkaError::ClientCreation("x".into())));
        assert!(!is_permanent(&KafkaError::MetadataFetch(
            C::MessageSizeTooLarge
        )));
    }

    #[test]
    fn outage_reason_says_what_to_do() {
        let e = KafkaError::MessageProduction(RDKafkaErrorCode::TopicAuthorizationFailed);
        let text = describe_outage(&e);
        assert!(text.contains("WRITE"), "{text}");
        assert!(text.contains("Kafka delivery failed"), "{text}");
    }

    #[test]
    fn error_kind_names_the_code() {
        let e = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        assert_eq!(error_kind(&e), "MessageTimedOut");
    }
}
