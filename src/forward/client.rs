//! The Kafka side of the forwarder: the producer, its delivery reports, the retry policy
//! ([`is_permanent`]) and topic creation.
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
        tracing::warn!(
            %error,
            "Kafka client error: {reason}. Events stay in the spool and are retried; check \
             kafka.bootstrap_servers, the network and the brokers"
        );
        self.state
            .set_problem(format!("Kafka client error: {error}: {reason}"));
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
        let bytes = record.value.len() + record.key.as_ref().map_or(0, String::len);
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

/// Whether the broker (or librdkafka) refused this record for good: sending it again cannot
/// succeed, so it is quarantined instead of blocking everything behind it. Everything else
/// (timeouts, broker down, leader changes, queue full, unknown topic that may yet be created,
/// a fatal producer state fixed by a new producer) is retried forever.
pub fn is_permanent(err: &KafkaError) -> bool {
    match err {
        KafkaError::MessageProduction(code) => is_permanent_code(*code),
        _ => false,
    }
}

/// See [`is_permanent`].
pub fn is_permanent_code(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        // Larger than the topic's max.message.bytes or the producer's message.max.bytes.
        C::MessageSizeTooLarge
            // RECORD_LIST_TOO_LARGE: the batch holding it can never fit.
            | C::MessageBatchTooLarge
            | C::InvalidTopic
            | C::TopicAuthorizationFailed
            // The broker's record validation (e.g. compaction needs a key).
            | C::InvalidRecord
            | C::PolicyViolation
            | C::UnsupportedForMessageFormat
            // Outside the topic's message.timestamp.difference.max.ms.
            | C::InvalidTimestamp
            // librdkafka could not build the message (e.g. bad header).
            | C::BadMessage
    )
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
            tracing::warn!(error = %e, "cannot create a Kafka admin client; topics are not checked");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permanent_rejections() {
        use RDKafkaErrorCode as C;
        for code in [
            C::MessageSizeTooLarge,
            C::MessageBatchTooLarge,
            C::InvalidTopic,
            C::TopicAuthorizationFailed,
            C::InvalidRecord,
            C::PolicyViolation,
        ] {
            assert!(
                is_permanent(&KafkaError::MessageProduction(code)),
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
            C::UnknownTopicOrPartition,
            C::UnknownTopic,
            C::RequestTimedOut,
            C::NotEnoughReplicas,
            C::PurgeQueue,
            C::PurgeInflight,
            C::Fatal,
            C::OutOfOrderSequenceNumber,
        ] {
            assert!(
                !is_permanent(&KafkaError::MessageProduction(code)),
                "{code:?}"
            );
        }
        // Only produce errors are about a record; anything else is about the connection.
        assert!(!is_permanent(&KafkaError::ClientCreation("x".into())));
        assert!(!is_permanent(&KafkaError::MetadataFetch(
            C::TopicAuthorizationFailed
        )));
    }

    #[test]
    fn error_kind_names_the_code() {
        let e = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        assert_eq!(error_kind(&e), "MessageTimedOut");
    }
}
