//! The `sink` role: Kafka consumer group → batched idempotent inserts into `audit_events`.
//!
//! - [`client`]: consumer (manual commits, rebalance tracking, lag) and DLQ producer settings;
//! - [`batch`]: decoding a batch with the ingest's validation, offsets to commit (pure);
//! - [`dlq`]: dead letters with reason headers, and `dlq replay`;
//! - [`run`]: the loop — offsets are committed only after the database commit (and the DLQ
//!   acknowledgement of dead letters); failed batches are retried, never skipped.

pub mod batch;
pub mod client;
pub mod dlq;
pub mod run;

use std::sync::Arc;

use rdkafka::consumer::StreamConsumer;
use rdkafka::producer::FutureProducer;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::store::Store;

pub use run::{SinkLoop, SinkSettings};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot create the Kafka {what}: {source} (check kafka.* settings)")]
    Client {
        what: &'static str,
        #[source]
        source: rdkafka::error::KafkaError,
    },
}

/// Builds the sink's Kafka clients for `config` and `store`.
pub fn build(config: &Config, store: Store) -> Result<SinkLoop, SinkError> {
    let consumer: StreamConsumer<client::SinkContext> =
        client::consumer_config(&config.kafka, &config.kafka.consumer_group)
            .create_with_context(client::SinkContext::default())
            .map_err(|source| SinkError::Client {
                what: "consumer",
                source,
            })?;
    let producer: FutureProducer = client::producer_config(&config.kafka, "dead-letter")
        .create()
        .map_err(|source| SinkError::Client {
            what: "dead-letter producer",
            source,
        })?;
    Ok(SinkLoop {
        consumer: Arc::new(consumer),
        dead_letters: dlq::DeadLetters::new(producer, config.kafka.dlq_topic.clone()),
        store,
        settings: SinkSettings::from_config(config),
    })
}

/// Starts the sink loop; the task ends after `token` is cancelled and the loop has drained.
pub fn spawn(
    config: &Config,
    store: Store,
    token: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, SinkError> {
    let sink = build(config, store)?;
    Ok(tokio::spawn(async move {
        if let Err(e) = sink.run(token).await {
            tracing::error!(error = %e, "sink stopped: cannot subscribe to the topic");
        }
    }))
}
