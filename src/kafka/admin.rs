//! Topics: the forwarder creates its missing topics at start, best effort
//! ([`create_missing_topics`]); `topics ensure` provisions them and fails loudly
//! ([`ensure_topics`]).

use std::io::Write;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::error::error_text;
use super::producer::ProducerConfig;
use crate::config::{Config, KafkaConfig};

/// The forwarder's start: creates `kafka.topic` and `kafka.dlq_topic` if they are missing,
/// with the connection settings of `producer`. Never fails the startup:
/// many clusters forbid CreateTopics to applications, and producing works whenever the topics
/// exist; the log says what to do when they cannot be created.
pub async fn create_missing_topics(kafka: &KafkaConfig, producer: &ProducerConfig) {
    const TIMEOUT: Duration = Duration::from_secs(10);
    let admin: AdminClient<DefaultClientContext> = match producer.client_config().create() {
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

/// Why `topics ensure` could not check the topics at all (a topic Kafka refused to create or
/// grow is reported on `errors` instead, and the next topic is tried).
#[derive(Debug, thiserror::Error)]
pub enum TopicsError {
    #[error("cannot create a Kafka admin client (check kafka.producer properties)")]
    Client(#[source] KafkaError),
    #[error(
        "cannot read the metadata of topic {topic} from {bootstrap_servers} \
         (kafka.bootstrap_servers): is Kafka reachable?"
    )]
    Metadata {
        topic: String,
        bootstrap_servers: String,
        #[source]
        source: KafkaError,
    },
    #[error(transparent)]
    Output(#[from] std::io::Error),
}

/// `topics ensure`: unlike the forwarder's best-effort [`create_missing_topics`], a
/// provisioning step must fail loudly, and it also grows topics that have too few partitions
/// (Kafka never shrinks them). `producer` gives the connection settings (its properties carry
/// the operator's SASL and TLS). What was done goes to `out`, what Kafka refused to `errors`.
/// Returns whether both topics now have at least `partitions`.
pub async fn ensure_topics(
    config: &Config,
    producer: &ProducerConfig,
    partitions: i32,
    timeout: Duration,
    out: &mut impl Write,
    errors: &mut impl Write,
) -> Result<bool, TopicsError> {
    let kafka = &config.kafka;
    let mut cc = producer.client_config().clone();
    // A missing topic must read as missing, not be auto-created with the broker's defaults.
    cc.set("allow.auto.create.topics", "false");
    let admin: AdminClient<DefaultClientContext> = cc.create().map_err(TopicsError::Client)?;
    let opts = AdminOptions::new()
        .request_timeout(Some(timeout))
        .operation_timeout(Some(timeout));
    let replication = kafka.topic_replication;
    let mut ok = true;
    let mut topics = vec![(&kafka.topic, partitions), (&kafka.dlq_topic, partitions)];
    if config.integrity.signing_key_file.is_some() && !config.integrity.seal_topic.is_empty() {
        // Seals are few and read whole by verify: one partition is enough.
        topics.push((&config.integrity.seal_topic, 1));
    }
    for (topic, partitions) in topics {
        let name = topic.clone();
        let client = admin.inner();
        let metadata = tokio::task::block_in_place(|| client.fetch_metadata(Some(&name), timeout))
            .map_err(|source| TopicsError::Metadata {
                topic: topic.clone(),
                bootstrap_servers: kafka.bootstrap_servers.clone(),
                source,
            })?;
        let existing = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic.as_str())
            .filter(|t| t.error().is_none())
            .map(|t| t.partitions().len() as i32);
        let result = match existing {
            Some(n) if n >= partitions => {
                writeln!(
                    out,
                    "{topic}: exists with {n} partitions (at least {partitions})"
                )?;
                continue;
            }
            Some(n) => {
                let grow = NewPartitions::new(topic, partitions as usize);
                let r = admin.create_partitions([&grow], &opts).await;
                (format!("partitions {n} -> {partitions}"), r)
            }
            None => {
                let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
                let r = admin.create_topics([&new], &opts).await;
                (format!("created with {partitions} partitions"), r)
            }
        };
        match result {
            (done, Ok(results)) => match results.into_iter().next() {
                Some(Ok(_)) => writeln!(out, "{topic}: {done}")?,
                // Created by someone else between our metadata read and the request.
                Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => writeln!(
                    out,
                    "{topic}: exists (created concurrently); run again to check"
                )?,
                Some(Err((_, code))) => {
                    ok = false;
                    writeln!(
                        errors,
                        "error: {topic}: Kafka refused ({done}): {code:?}. Allow this client \
                         CreateTopics/CreatePartitions (or AlterConfigs) on the topic, or create \
                         it yourself: kafka-topics.sh --create --topic {topic} --partitions \
                         {partitions} --replication-factor {replication}"
                    )?;
                }
                None => {
                    ok = false;
                    writeln!(
                        errors,
                        "error: {topic}: Kafka answered without a result ({done})"
                    )?;
                }
            },
            (done, Err(e)) => {
                ok = false;
                writeln!(errors, "error: {topic}: the request failed ({done}): {e}")?;
            }
        }
    }
    Ok(ok)
}
