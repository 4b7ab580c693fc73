//! `partitions list | ensure | drop-expired`: the monthly partitions of `audit_events`.

use std::process::ExitCode;

use super::PartitionsCommand;
use crate::config::Config;

pub async fn run(config: &Config, command: PartitionsCommand) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    let db = &config.database;
    let store = crate::store::Store::connect_lazy(&db.url, 1)?
        .with_archive_gate(config.archive.gates_retention());
    store.prepare().await?;
    let mut out = std::io::stdout().lock();
    match command {
        PartitionsCommand::List => {
            let fmt = |t: Option<chrono::DateTime<chrono::Utc>>| {
                t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .unwrap_or_else(|| "-".into())
            };
            writeln!(
                out,
                "{:<28} {:<22} {:<22} {:>12} {:>12}",
                "partition", "from", "to", "rows~", "bytes"
            )?;
            for p in store.list_partitions().await? {
                writeln!(
                    out,
                    "{:<28} {:<22} {:<22} {:>12} {:>12}",
                    p.name,
                    fmt(p.lower),
                    fmt(p.upper),
                    p.rows_estimate.max(0),
                    p.bytes
                )?;
            }
        }
        PartitionsCommand::Ensure | PartitionsCommand::DropExpired => {
            let ensure = matches!(command, PartitionsCommand::Ensure);
            let now = chrono::Utc::now();
            let report = store
                .maintain(
                    now,
                    db.partition_pre_create_months,
                    db.partition_retention_months,
                    ensure,
                    !ensure,
                )
                .await?;
            let Some(report) = report else {
                eprintln!(
                    "another maintainer is working right now (advisory lock held); try again"
                );
                return Ok(ExitCode::from(1));
            };
            for name in &report.created {
                writeln!(out, "created {name}")?;
            }
            for name in &report.dropped {
                writeln!(out, "dropped {name}")?;
            }
            for (name, why) in &report.blocked {
                writeln!(out, "kept {name}: {why}")?;
            }
            if report.created.is_empty() && report.dropped.is_empty() && report.blocked.is_empty() {
                if !ensure && db.partition_retention_months == 0 {
                    writeln!(
                        out,
                        "nothing to do: database.partition_retention_months is 0 (keep forever)"
                    )?;
                } else {
                    writeln!(out, "nothing to do")?;
                }
            }
        }
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}
