//! `dev-kafka`: an in-memory Kafka-protocol broker for development and tests (NOT durable).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use crate::config::Config;

pub fn run(
    config: &Config,
    partitions: Option<i32>,
    bootstrap_file: Option<&Path>,
    rtt: Option<std::time::Duration>,
) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    let partitions = partitions.unwrap_or(config.kafka.topic_partitions);
    let topics = [config.kafka.topic.clone(), config.kafka.dlq_topic.clone()];
    let kafka = crate::kafka::dev::EmbeddedKafka::start_with_rtt(partitions, &topics, rtt)?;
    let bootstrap = kafka.bootstrap_servers().to_string();
    eprintln!("{}", crate::kafka::dev::NOT_DURABLE);
    eprintln!(
        "dev-kafka: topics {} ({partitions} partitions); stop with Ctrl-C or SIGTERM",
        topics.join(", ")
    );
    if let Some(file) = bootstrap_file {
        // Written next to the target and renamed, so a reader never sees half an address.
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, format!("{bootstrap}\n"))
            .and_then(|()| std::fs::rename(&tmp, file))
            .with_context(|| format!("cannot write --bootstrap-file {}", file.display()))?;
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{bootstrap}")
        .and_then(|()| stdout.flush())
        .context("cannot print the bootstrap address")?;
    drop(stdout);
    super::block_on(crate::shutdown::wait_for_signal())?;
    drop(kafka);
    if let Some(file) = bootstrap_file {
        let _ = std::fs::remove_file(file);
    }
    eprintln!("dev-kafka: stopped; its data is gone");
    Ok(ExitCode::SUCCESS)
}
