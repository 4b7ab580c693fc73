//! The Kafka side of the forwarder: the producer and its delivery reports. Whether a failed
//! delivery is about one record or about the system is [`crate::kafka::error::classify`]'s call.
//!
//! Delivery reports arrive on librdkafka's polling thread (a `ThreadedProducer`); the context
//! turns each into an [`Outcome`] on an unbounded channel. The channel needs no bound of its own:
//! the loop never has more records in flight than its window allows.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, PurgeConfig, ThreadedProducer,
};
use tokio::sync::mpsc;

use super::ForwardState;
use crate::kafka::error::connection_hint;
use crate::kafka::producer::ProducerConfig;
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

    fn stats(&self, statistics: rdkafka::Statistics) {
        crate::kafka::stats::record_producer(&statistics);
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
        config: &ProducerConfig,
        topic: &str,
        state: Arc<ForwardState>,
    ) -> Result<(Producer, mpsc::UnboundedReceiver<Outcome>), KafkaError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let context = ForwardContext {
            outcomes: tx,
            state,
            last_cause: Default::default(),
        };
        let inner = config.threaded_producer(context)?;
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

/// What a record counts against the forwarder's in-flight window: its key and value, the bytes
/// the producer copies.
pub(super) fn produced_bytes(record: &Record) -> usize {
    record.value.len() + record.key.as_ref().map_or(0, String::len)
}
