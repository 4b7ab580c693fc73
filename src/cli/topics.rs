//! `topics ensure`: provisioning of the Kafka topics (e.g. a Helm hook Job); the work is
//! [`crate::kafka::admin::ensure_topics`].

use std::process::ExitCode;

use super::TopicsCommand;
use crate::config::Config;

pub async fn run(config: &Config, command: TopicsCommand) -> anyhow::Result<ExitCode> {
    let TopicsCommand::Ensure {
        partitions,
        timeout,
    } = command;
    let partitions = partitions.unwrap_or(config.kafka.topic_partitions);
    // The producer's properties carry the operator's security settings (SASL, TLS).
    let producer = crate::forward::producer_config(config, &Default::default());
    let mut out = std::io::stdout().lock();
    let mut errors = std::io::stderr();
    let ensure = crate::kafka::admin::ensure_topics(
        config,
        &producer,
        partitions,
        timeout,
        &mut out,
        &mut errors,
    );
    Ok(if ensure.await? {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
