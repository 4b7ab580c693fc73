//! `dlq replay`: dead letters back onto `kafka.topic`, once the emitter is fixed.

use std::process::ExitCode;

use super::DlqCommand;
use crate::config::Config;

pub async fn run(config: &Config, command: DlqCommand) -> anyhow::Result<ExitCode> {
    let DlqCommand::Replay { limit } = command;
    let mut err = std::io::stderr();
    crate::sink::dlq::replay(&config.kafka, limit, &mut err).await?;
    Ok(ExitCode::SUCCESS)
}
