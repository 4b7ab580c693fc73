//! The command line: parsing (clap derive) and dispatch into the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{Config, Role};
use crate::spool;

#[derive(Debug, Parser)]
#[command(
    name = "audit-manager",
    version,
    about = "Durable audit-event pipeline"
)]
pub struct Cli {
    /// YAML configuration file (else $CONFIG_PATH; else built-in defaults + environment).
    #[arg(long, short, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: the HTTP API and the roles selected by `roles` / --roles.
    Serve {
        /// Comma-separated roles to run here (overrides `roles`): ingest,forward,sink,maintain.
        #[arg(long, value_delimiter = ',')]
        roles: Option<Vec<Role>>,
    },
    /// Inspect or repair the spool offline (stop the service first).
    Spool {
        #[command(subcommand)]
        command: SpoolCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum SpoolCommand {
    /// Events, bytes, oldest event age and quarantined records.
    Stats,
    /// Check every record's CRC and redb's page checksums; exits 1 on damage.
    Verify,
    /// Write every live event as NDJSON to stdout (progress on stderr when it is a terminal).
    Export {
        /// Export the quarantined records instead, each with the reason it was quarantined.
        #[arg(long)]
        quarantine: bool,
    },
    /// Move every quarantined record back into the spool, to be forwarded again.
    Requeue,
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::logging::init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    Config::load(path).context("invalid configuration")
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut config = load_config(cli.config.as_deref())?;
    match cli.command {
        Command::Serve { roles } => {
            if let Some(roles) = roles {
                config.roles = roles;
                config.validate().context("invalid --roles")?;
            }
            let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            rt.block_on(crate::serve::run(config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Spool { command } => spool_command(&config, command),
    }
}

fn spool_command(config: &Config, command: SpoolCommand) -> anyhow::Result<ExitCode> {
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
            let rt = tokio::runtime::Runtime::new()?;
            let n = rt.block_on(async {
                let s = spool::Spool::open(&opts)?;
                let n = s.requeue().await;
                s.close().await;
                n
            })?;
            eprintln!("requeued {n} record(s); they are forwarded when the service runs");
        }
    }
    Ok(ExitCode::SUCCESS)
}
