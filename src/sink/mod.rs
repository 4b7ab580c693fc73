//! The `sink` role: Kafka consumer group → batched idempotent inserts into `audit_events`.
//!
//! - [`client`]: what the consumer reports (rebalance tracking, failed commits, lag);
//! - [`batch`]: decoding a batch with the ingest's validation, offsets to commit (pure);
//! - [`dlq`]: dead letters with reason headers, and `dlq replay`;
//! - [`run`]: the loop — offsets are committed only after the database commit (and the DLQ
//!   acknowledgement of dead letters); failed batches are retried, never skipped.

pub mod batch;
pub mod client;
pub mod dlq;
pub mod run;

use std::sync::Arc;

use crate::config::{Config, Role};
use crate::role::{RoleContext, Started};
use crate::shutdown::Task;
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
    #[error("cannot load integrity.writer_key_file: {0}")]
    WriterKey(#[from] crate::integrity::seal::KeyError),
    #[error("privacy: {0}")]
    Privacy(String),
}

/// `store` attesting every storing transaction with `integrity.writer_key_file`, when set.
/// Without it while this configuration seals or checks attestation, a warning: the rows will
/// not be sealed once attestation has begun, and are not protected before.
pub fn attesting(config: &Config, store: Store) -> Result<Store, SinkError> {
    let integrity = &config.integrity;
    match &integrity.writer_key_file {
        Some(path) => {
            let attestor = crate::integrity::attest::Attestor::load(path)?;
            tracing::info!(
                key_id = %hex::encode(attestor.key_id()),
                "attesting stored rows with the writer key"
            );
            Ok(store.with_attestor(attestor))
        }
        None => {
            if integrity.signing_key_file.is_some() || !integrity.writer_public_key_files.is_empty()
            {
                tracing::warn!(
                    "integrity.writer_key_file is not set: rows are stored without writer \
                     attestation, so a forged row cannot be told from a stored one before it is \
                     sealed (and, once attestation has begun, these rows are not sealed). Give \
                     the sink a key from `audit-manager keygen --out FILE`; see \
                     docs/integrity.md"
                );
            }
            Ok(store)
        }
    }
}

/// Builds the sink's Kafka clients for `config` and `store`.
pub fn build(config: &Config, store: Store) -> Result<SinkLoop, SinkError> {
    let store = attesting(config, store)?;
    let consumer = crate::kafka::consumer::stream_consumer(
        &config.kafka,
        &config.kafka.consumer_group,
        client::SinkContext::default(),
    )
    .map_err(|source| SinkError::Client {
        what: "consumer",
        source,
    })?;
    // Idempotent and acks=all like every producer: a dead letter's source offset is committed
    // on its acknowledgement, so it must be on every in-sync replica by then.
    let producer =
        crate::kafka::producer::future_producer("dead-letter", &config.kafka, Default::default())
            .map_err(|source| SinkError::Client {
            what: "dead-letter producer",
            source,
        })?;
    let privacy = crate::privacy::writer(config).map_err(SinkError::Privacy)?;
    Ok(SinkLoop {
        consumer: Arc::new(consumer),
        dead_letters: dlq::DeadLetters::new(producer, config.kafka.dlq_topic.clone()),
        store,
        settings: SinkSettings {
            privacy,
            ..SinkSettings::from_config(config)
        },
    })
}

/// Starts the sink role: builds its clients (failing fast on invalid settings or an unreadable
/// writer key) and returns the loop. The loop ends after the root token is cancelled and it
/// has drained, or with an error when the consumer cannot subscribe to the topic at all.
pub fn start(ctx: &RoleContext) -> anyhow::Result<Started> {
    let store = ctx.store()?;
    let check = crate::health::database_check(store.clone());
    let sink = build(&ctx.config, store.clone())?;
    let topic = ctx.config.kafka.topic.clone();
    let token = ctx.shutdown.child_token();
    Ok(
        Started::new(Role::Sink, check, &[Task::Sink, Task::DatabaseMonitor]).task(
            Task::Sink,
            async move {
                sink.run(token).await.map_err(|e| {
                    anyhow::anyhow!(
                        "the sink cannot subscribe to kafka.topic {topic:?}: {e}; check the topic \
                         name and the consumer's permissions"
                    )
                })
            },
        ),
    )
}
