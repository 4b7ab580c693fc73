//! `spool stats | verify | export | requeue`: the spool, offline (stop the service first).

use std::process::ExitCode;

use super::SpoolCommand;
use crate::config::Config;
use crate::spool;

pub fn run(config: &Config, command: SpoolCommand) -> anyhow::Result<ExitCode> {
    let dir = &config.spool.path;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match command {
        SpoolCommand::Stats => spool::cli::stats(dir, &mut out)?,
        SpoolCommand::Verify => {
            let report = spool::cli::verify(dir, &mut out)?;
            if !report.is_clean() {
                return Ok(ExitCode::from(1));
            }
        }
        SpoolCommand::Export { quarantine } => {
            let n = spool::cli::export(dir, quarantine, &mut out)?;
            eprintln!("exported {n} record(s)");
        }
        SpoolCommand::Requeue => {
            let opts = spool::SpoolOptions {
                dir: dir.clone(),
                max_bytes: u64::MAX,
                max_pending_appends: 1,
            };
            let n = super::block_on(async {
                let s = spool::Spool::open(&opts)?;
                let n = s.requeue().await;
                s.close().await;
                n
            })??;
            eprintln!("requeued {n} record(s); they are forwarded when the service runs");
        }
    }
    Ok(ExitCode::SUCCESS)
}
