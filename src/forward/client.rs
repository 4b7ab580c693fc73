//! The Kafka side of the forwarder: the producer, its delivery reports, the retry policy
//! ([`classify`]: is a failure about one record or about the system?) and topic creation.
//!
//! Delivery reports arrive on librdkafka's polling thread (a `ThreadedProducer`); the context
//! turns each into an [`Outcome`] on an unbounded channel. The channel needs no bound of its own:
//! the loop never has more records in flight than its window allows.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, PurgeConfig, ThreadedProducer,
};
use rdkafka::{ClientConfig, ClientContext};
use tokio::sync::mpsc;

use super::ForwardState;
use crate::config::KafkaConfig;
use crate::spool::Record;

/// The `content-type` header every record carries (docs/contract.md, "Events").
pub const CONTENT_TYPE: &str = "application/cloudevents+json";

/// What the broker (or librdkafka) said about one record.
#[derive(Debug)]
pub struct Outcome {
    pub seq: u64,
    pub bytes: usize,
    pub result: Result<(), KafkaError>,
}

/// Rides along with each record through librdkafka and comes back in its delivery report.
pub struct Pending {
    seq: u64,
    bytes: usize,
}

/// Routes delivery reports to the loop and librdkafka's client-level errors to `/health`.
pub struct ForwardContext {
    outcomes: mpsc::UnboundedSender<Outcome>,
    state: Arc<ForwardState>,
    /// The last connection error with a specific cause (TLS, SASL): librdkafka follows it with
    /// "all brokers are down", which must not hide it from `/health`.
    last_cause: std::sync::Mutex<Option<String>>,
}

impl ClientContext for ForwardContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", fac, "{msg}"),
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{msg}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", fac, "{msg}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", fac, "{msg}"),
        }
    }

    /// Connection-level trouble (all brokers down, transport, resolve, auth). It shows on
    /// `/health` at once; without this an outage would only surface when the first record's
    /// `message.timeout.ms` expires.
    fn error(&self, error: KafkaError, reason: &str) {
        let specific = connection_hint(reason);
        let hint = specific.unwrap_or("check kafka.bootstrap_servers, the network and the brokers");
        tracing::warn!(
            %error,
            "Kafka client error: {reason}. Events stay in the spool and are retried; {hint}"
        );
        let mut problem = format!("Kafka client error: {error}: {reason} ({hint})");
        if let Ok(mut last) = self.last_cause.lock() {
            let all_down = error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown);
            if specific.is_some() {
                *last = Some(problem.clone());
            } else if !all_down {
                *last = None;
            } else if let Some(cause) = last.as_ref() {
                problem = format!("{problem}; last cause: {cause}");
            }
        }
        self.state.set_problem(problem);
    }
}

impl ProducerContext for ForwardContext {
    type DeliveryOpaque = Box<Pending>;

    fn delivery(&self, report: &DeliveryResult<'_>, pending: Box<Pending>) {
        let result = match report {
            Ok(_) => Ok(()),
            Err((e, _)) => Err(e.clone()),
        };
        // A closed channel means the loop has stopped; the record stays in the spool.
        let _ = self.outcomes.send(Outcome {
            seq: pending.seq,
            bytes: pending.bytes,
            result,
        });
    }
}

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

/// The forward producer: one librdkafka handle with its polling thread.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<ThreadedProducer<ForwardContext>>,
    topic: Arc<str>,
}

impl Producer {
    /// Creates the producer; its delivery reports arrive on the returned receiver.
    pub fn new(
        config: &ClientConfig,
        topic: &str,
        state: Arc<ForwardState>,
    ) -> Result<(Producer, mpsc::UnboundedReceiver<Outcome>), KafkaError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let context = ForwardContext {
            outcomes: tx,
            state,
            last_cause: Default::default(),
        };
        let inner = config.create_with_context::<_, ThreadedProducer<_>>(context)?;
        let producer = Producer {
            inner: Arc::new(inner),
            topic: topic.into(),
        };
        Ok((producer, rx))
    }

    /// Hands one record to librdkafka (never blocks). On success returns the bytes it counts
    /// against the in-flight window; its [`Outcome`] follows on the channel.
    pub fn send(&self, seq: u64, record: &Record) -> Result<usize, KafkaError> {
        let bytes = produced_bytes(record);
        let headers = OwnedHeaders::new_with_capacity(1).insert(Header {
            key: "content-type",
            value: Some(CONTENT_TYPE),
        });
        let mut rec = BaseRecord::with_opaque_to(&self.topic, Box::new(Pending { seq, bytes }))
            .payload(record.value.as_slice())
            .headers(headers);
        if let Some(key) = &record.key {
            rec = rec.key(key.as_str());
        }
        self.inner.send(rec).map(|()| bytes).map_err(|(e, _)| e)
    }

    /// Drops the records still waiting in librdkafka's queue (not yet on the wire). Their
    /// outcomes arrive as `PurgeQueue` errors. Used after a failure so that later records of a
    /// partition are not delivered ahead of the failed one that will be re-sent.
    pub fn purge_queued(&self) {
        self.inner
            .purge(PurgeConfig::default().queue().non_blocking());
    }

    /// Drops everything outstanding, including requests on the wire (shutdown only).
    pub fn purge_all(&self) {
        self.inner
            .purge(PurgeConfig::default().queue().inflight().non_blocking());
    }

    /// The fatal error that makes this producer unusable (it must be replaced), if any.
    pub fn fatal_error(&self) -> Option<String> {
        self.inner
            .client()
            .fatal_error()
            .map(|(code, reason)| format!("{code:?}: {reason}"))
    }

    /// Asks a broker for the topic's metadata: does Kafka answer at all? Blocks up to `timeout`.
    pub fn probe(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.inner
            .client()
            .fetch_metadata(Some(&self.topic), timeout)
            .map(|_| ())
    }
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

/// Creates `kafka.topic` and `kafka.dlq_topic` if they are missing. Never fails the startup:
/// many clusters forbid CreateTopics to applications, and producing works whenever the topics
/// exist; the log says what to do when they cannot be created.
pub async fn ensure_topics(kafka: &KafkaConfig, client_config: &ClientConfig) {
    const TIMEOUT: Duration = Duration::from_secs(10);
    let admin: AdminClient<DefaultClientContext> = match client_config.create() {
        Ok(a) => a,
        Err(e) => {
            let error = error_text(&e);
            tracing::warn!(%error, "cannot create a Kafka admin client; topics are not checked");
            return;
        }
    };
    let replication = || TopicReplication::Fixed(kafka.topic_replication);
    let topics = [
        NewTopic::new(&kafka.topic, kafka.topic_partitions, replication()),
        NewTopic::new(&kafka.dlq_topic, kafka.topic_partitions, replication()),
    ];
    let opts = AdminOptions::new()
        .request_timeout(Some(TIMEOUT))
        .operation_timeout(Some(TIMEOUT));
    let names = format!("{} and {}", kafka.topic, kafka.dlq_topic);
    let hint = format!(
        "create them yourself (e.g. kafka-topics.sh --create --topic NAME --partitions {} \
         --replication-factor {}) or allow this client CreateTopics; forwarding goes on and \
         works as soon as the topics exist",
        kafka.topic_partitions, kafka.topic_replication
    );
    let results = match tokio::time::timeout(TIMEOUT * 2, admin.create_topics(&topics, &opts)).await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot create Kafka topics {names}: {hint}");
            return;
        }
        Err(_) => {
            tracing::warn!("no answer to creating Kafka topics {names}: {hint}");
            return;
        }
    };
    for r in results {
        match r {
            Ok(name) => tracing::info!(topic = %name, "created Kafka topic"),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!(topic = %name, "Kafka topic exists")
            }
            Err((name, code)) => {
                tracing::warn!(topic = %name, error = ?code, "cannot create Kafka topic: {hint}")
            }
        }
    }
}

/// What a record counts against the forwarder's in-flight window: its key and value, the bytes
/// the producer copies.
pub(super) fn produced_bytes(record: &Record) -> usize {
    record.value.len() + record.key.as_ref().map_or(0, String::len)
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
