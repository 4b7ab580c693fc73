//! The command line: parsing (clap derive) and dispatch into the library.
//!
//! The clap types live here; each command is a small file beside this one that calls the
//! library. `token` and `keygen` need no configuration (they run wherever tokens and keys are
//! made); every other command loads it first. Commands that need async code share one runtime,
//! built by [`block_on`].

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{Config, Role};

mod archive;
mod dev_kafka;
mod dlq;
mod keygen;
mod partitions;
mod privacy;
mod serve;
mod spool;
mod token;
mod topics;
mod verify;

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
        #[arg(long, value_delimiter = ',', conflicts_with = "dev")]
        roles: Option<Vec<Role>>,
        /// Development: every role, an in-process Kafka broker (NOT durable) unless
        /// kafka.bootstrap_servers names one, and the local PostgreSQL of database.url.
        #[arg(long)]
        dev: bool,
    },
    /// Run an in-memory Kafka-protocol broker for development and tests (NOT durable).
    ///
    /// Prints its bootstrap address on stdout (and writes it to --bootstrap-file), creates
    /// `kafka.topic` and `kafka.dlq_topic`, and runs until SIGTERM or SIGINT.
    DevKafka {
        /// Partitions of each topic it creates (default: kafka.topic_partitions).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..=10_000))]
        partitions: Option<i32>,
        /// Also write the bootstrap address to this file (replaced atomically; removed on stop).
        #[arg(long, value_name = "FILE")]
        bootstrap_file: Option<PathBuf>,
        /// Answer every request this late (e.g. `50ms`): a slow broker, for benchmarks.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        rtt: Option<std::time::Duration>,
    },
    /// Inspect or repair the spool offline (stop the service first).
    Spool {
        #[command(subcommand)]
        command: SpoolCommand,
    },
    /// Monthly partitions of audit_events in PostgreSQL (database.*).
    Partitions {
        #[command(subcommand)]
        command: PartitionsCommand,
    },
    /// The dead-letter topic (kafka.dlq_topic).
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Check stored rows and seals for tampering (see docs/integrity.md).
    ///
    /// Prints one line per finding. Exits 0 when everything checks out, 1 when something was
    /// found, 2 when the check could not run.
    Verify {
        /// Only rows that occurred at or after this instant (RFC 3339).
        #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339)]
        from: Option<chrono::DateTime<chrono::Utc>>,
        /// Only rows that occurred before this instant (RFC 3339).
        #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339)]
        to: Option<chrono::DateTime<chrono::Utc>>,
        /// Also compare the seals with their published copies on integrity.seal_topic (finds
        /// deleted newest seals).
        #[arg(long)]
        seals_from_topic: bool,
        /// Also compare the seals with their copies in DIR (integrity.seal_dir, or a copy of
        /// it): finds deleted or changed seals without Kafka.
        #[arg(long, value_name = "DIR")]
        seals_from_dir: Option<PathBuf>,
    },
    /// Create an ed25519 key: FILE (mode 0600) and FILE.pub. The same command makes the sealer's
    /// key (integrity.signing_key_file) and a writer's key (integrity.writer_key_file).
    Keygen {
        /// Where to write the signing key; never overwritten.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Kafka topics kafka.topic and kafka.dlq_topic (provisioning, e.g. a Helm hook Job).
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Personal data: the keeper key, pseudonyms, forgetting a data subject (docs/privacy.md).
    Privacy {
        #[command(subcommand)]
        command: PrivacyCommand,
    },
    /// Bearer tokens for auth.mode token (auth.tokens_file holds only their hashes).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Archives of closed months in object storage (archive.*; see docs/archives.md).
    Archive {
        #[command(subcommand)]
        command: ArchiveCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ArchiveCommand {
    /// Archive every month that ended archive.after_months ago (or only --month) with rows in
    /// no verified part yet; finishes a part an interruption left. The maintain role does the
    /// same on its schedule.
    Run {
        /// Only this month (YYYY-MM), which must have ended.
        #[arg(long, value_name = "YYYY-MM")]
        month: Option<String>,
    },
    /// The archive parts recorded in audit_archives.
    List,
    /// Check an archive offline (no database): rows against their seals, the seals'
    /// signatures and chain, the manifests' signatures and chain.
    ///
    /// Prints one line per finding. Exits 0 when everything checks out, 1 when something was
    /// found, 2 when the check could not run.
    Verify {
        /// The archive: an object store URL (file:///…, s3://bucket/prefix) or a local
        /// directory (a copy of the archive).
        #[arg(value_name = "URL|PATH")]
        target: String,
        /// Only this month's rows and seals (YYYY-MM); the manifests' chain is always checked.
        #[arg(long, value_name = "YYYY-MM")]
        month: Option<String>,
        /// A trusted public key (FILE.pub of keygen); repeat for every key that ever signed.
        /// Default: integrity.public_key_files.
        #[arg(long = "public-key", value_name = "FILE")]
        public_key: Vec<PathBuf>,
    },
    /// Put a month's archived rows back into PostgreSQL for an investigation (after the
    /// month's archive verified clean).
    Restore {
        /// The month (YYYY-MM).
        #[arg(long, value_name = "YYYY-MM")]
        month: String,
        /// Restore into this table (created like audit_events) instead of audit_events.
        #[arg(long, value_name = "TABLE")]
        into: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Read a token on stdin and print the `token_sha256:` line for auth.tokens_file.
    ///
    /// Surrounding whitespace (the newline of `echo` or a file) is not part of the token.
    /// Example: `openssl rand -hex 32 | tee token | audit-manager token hash`.
    Hash,
    /// Make a new random token (256 bits from the OS, hex): with `--out FILE`, write it to
    /// FILE (mode 0600) and print its `token_sha256:` line on stdout; without, print the
    /// token on stdout and the line on stderr.
    ///
    /// Example: `audit-manager token new --out registry.token`. (`> registry.token` works too,
    /// but the shell creates that file with the umask's mode, often readable by everyone.)
    New {
        /// Write the token to this file, created with mode 0600 (owner read/write only).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Replace FILE if it exists (by default an existing file is never overwritten).
        #[arg(long, requires = "out")]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum PrivacyCommand {
    /// Create the keeper key (X25519): FILE (private, mode 0600) and FILE.pub.
    Keygen {
        /// Where to write the private key; never overwritten.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Print VALUE's pseudonym under every HMAC key generation (current first), to search by.
    Hash {
        /// The value, e.g. a national id.
        value: String,
    },
    /// Forget a data subject: record the forget event, then destroy its keys. Idempotent.
    Forget {
        /// The subject's identifier (as the rule's `subject` path selects it).
        #[arg(long)]
        subject: String,
        /// Why (recorded in the event).
        #[arg(long)]
        reason: String,
    },
    /// Let a forgotten subject be keyed again (its earlier values stay unreadable).
    Readmit {
        #[arg(long)]
        subject: String,
    },
    /// Stored rows per rule, subjects keyed, subjects forgotten.
    Report,
}

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create kafka.topic and kafka.dlq_topic, or add partitions, so each has at least N; with
    /// integrity.signing_key_file set, also integrity.seal_topic (one partition).
    ///
    /// Exits 0 when every topic exists with enough partitions, 1 when Kafka refused.
    Ensure {
        /// Partitions each topic must have at least (default: kafka.topic_partitions).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..=10_000))]
        partitions: Option<i32>,
        /// How long to wait for each answer from Kafka.
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
}

#[derive(Debug, Subcommand)]
pub enum PartitionsCommand {
    /// Every partition with its bounds (from the catalog), estimated rows and size.
    List,
    /// Create the current month and database.partition_pre_create_months - 1 ahead.
    Ensure,
    /// Drop partitions whose upper bound is at or before the retention cutoff.
    DropExpired,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Re-produce dead letters to kafka.topic (after fixing the emitter), oldest first.
    Replay {
        /// Replay at most N dead letters (default: all present when the replay starts).
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
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
            eprintln!("error: {}", crate::config::redact::scrub(&format!("{e:#}")));
            ExitCode::from(2)
        }
    }
}

/// Runs one command. An `Err` is a command that could not run (`main` prints it and exits 2);
/// a command's own verdict is its `ExitCode`.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let path = cli.config.as_deref();
    match cli.command {
        Command::Token { command } => token::run(command),
        Command::Keygen { out } => keygen::run(&out),
        Command::Serve { roles, dev } => serve::run(load_config(path)?, roles, dev),
        Command::DevKafka {
            partitions,
            bootstrap_file,
            rtt,
        } => dev_kafka::run(
            &load_config(path)?,
            partitions,
            bootstrap_file.as_deref(),
            rtt,
        ),
        Command::Spool { command } => spool::run(&load_config(path)?, command),
        Command::Partitions { command } => block_on(partitions::run(&load_config(path)?, command))?,
        Command::Dlq { command } => block_on(dlq::run(&load_config(path)?, command))?,
        Command::Verify {
            from,
            to,
            seals_from_topic,
            seals_from_dir,
        } => {
            let config = load_config(path)?;
            block_on(verify::run(
                &config,
                from,
                to,
                seals_from_topic,
                seals_from_dir,
            ))?
        }
        Command::Topics { command } => block_on(topics::run(&load_config(path)?, command))?,
        Command::Archive { command } => block_on(archive::run(&load_config(path)?, command))?,
        Command::Privacy {
            command: PrivacyCommand::Keygen { out },
        } => privacy::keygen(&out),
        Command::Privacy { command } => block_on(privacy::run(&load_config(path)?, command))?,
    }
}

/// Runs `future` to completion on the command's async runtime, the only one a command builds.
/// Multi-threaded: `topics ensure` blocks in place and `verify` reads on blocking threads.
fn block_on<F: Future>(future: F) -> anyhow::Result<F::Output> {
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    Ok(rt.block_on(future))
}

fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    Config::load(path).context("invalid configuration")
}

fn parse_rfc3339(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("not an RFC 3339 time ({e}); e.g. 2026-01-31T00:00:00Z"))
}
