//! `dlq replay`: dead letters back into the pipeline, once the cause is fixed. With
//! `forward.target: kafka` they are re-produced from the DLQ topic to `kafka.topic`; with
//! `forward.target: postgres` (Kafka-less mode) the rows of `audit_dead_letters` are written
//! into `audit_events` and leave the table once stored.

use std::process::ExitCode;

use super::DlqCommand;
use crate::config::{Config, ForwardTarget};

pub async fn run(config: &Config, command: DlqCommand) -> anyhow::Result<ExitCode> {
    let DlqCommand::Replay { limit } = command;
    let mut err = std::io::stderr();
    match config.forward.target {
        ForwardTarget::Kafka => {
            crate::sink::dlq::replay(&config.kafka, limit, &mut err).await?;
        }
        ForwardTarget::Postgres => {
            let store = crate::store::Store::connect_lazy(&config.database.url, 2)?;
            let store = crate::sink::attesting(config, store)?;
            let r = crate::forward::postgres::replay(config, &store, limit, &mut err).await;
            store.close().await;
            r?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
