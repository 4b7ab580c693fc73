//! `topics ensure`: provisioning of the Kafka topics (e.g. a Helm hook Job).

use std::process::ExitCode;

use anyhow::Context;

use super::TopicsCommand;
use crate::config::Config;

pub async fn run(config: &Config, command: TopicsCommand) -> anyhow::Result<ExitCode> {
    let TopicsCommand::Ensure {
        partitions,
        timeout,
    } = command;
    let partitions = partitions.unwrap_or(config.kafka.topic_partitions);
    let mut out = std::io::stdout().lock();
    let ok = topics_ensure(config, partitions, timeout, &mut out).await?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `topics ensure`: unlike the forwarder's best-effort [`crate::forward::ensure_topics`], a
/// provisioning step must fail loudly, and it also grows topics that have too few partitions
/// (Kafka never shrinks them). Returns whether both topics now have at least `partitions`.
async fn topics_ensure(
    config: &Config,
    partitions: i32,
    timeout: std::time::Duration,
    out: &mut impl std::io::Write,
) -> anyhow::Result<bool> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::error::RDKafkaErrorCode;
    let kafka = &config.kafka;
    // The producer's properties carry the operator's security settings (SASL, TLS).
    let mut cc = crate::forward::producer_config(config, &Default::default());
    // A missing topic must read as missing, not be auto-created with the broker's defaults.
    cc.set("allow.auto.create.topics", "false");
    let admin: AdminClient<DefaultClientContext> = cc
        .create()
        .context("cannot create a Kafka admin client (check kafka.producer properties)")?;
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
            .with_context(|| {
                format!(
                    "cannot read the metadata of topic {topic} from {} \
                     (kafka.bootstrap_servers): is Kafka reachable?",
                    kafka.bootstrap_servers
                )
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
                    eprintln!(
                        "error: {topic}: Kafka refused ({done}): {code:?}. Allow this client \
                         CreateTopics/CreatePartitions (or AlterConfigs) on the topic, or create \
                         it yourself: kafka-topics.sh --create --topic {topic} --partitions \
                         {partitions} --replication-factor {replication}"
                    );
                }
                None => {
                    ok = false;
                    eprintln!("error: {topic}: Kafka answered without a result ({done})");
                }
            },
            (done, Err(e)) => {
                ok = false;
                eprintln!("error: {topic}: the request failed ({done}): {e}");
            }
        }
    }
    Ok(ok)
}
