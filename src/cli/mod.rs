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
    /// Bearer tokens for auth.mode token (auth.tokens_file holds only their hashes).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
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

fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    Config::load(path).context("invalid configuration")
}

fn parse_rfc3339(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("not an RFC 3339 time ({e}); e.g. 2026-01-31T00:00:00Z"))
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Token commands need no configuration: they run wherever tokens are made.
    match cli.command {
        Command::Token {
            command: TokenCommand::Hash,
        } => {
            let mut input = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut input)
                .context("cannot read the token from stdin")?;
            println!("{}", token_hash_line(&input)?);
            return Ok(ExitCode::SUCCESS);
        }
        Command::Token {
            command: TokenCommand::New { out, force },
        } => {
            let mut bytes = [0u8; 32];
            std::io::Read::read_exact(
                &mut std::fs::File::open("/dev/urandom")
                    .context("cannot open /dev/urandom for a random token")?,
                &mut bytes,
            )
            .context("cannot read /dev/urandom for a random token")?;
            let token = hex::encode(bytes);
            let line = token_hash_line(token.as_bytes())?;
            match out {
                Some(path) => {
                    write_secret_file(&path, format!("{token}\n").as_bytes(), force)?;
                    println!("{line}");
                }
                None => {
                    eprintln!("{line}");
                    println!("{token}");
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    if let Command::Keygen { out } = &cli.command {
        let id = crate::integrity::seal::keygen(out)?;
        println!(
            "wrote signing key {} and public key {}.pub (key id {})",
            out.display(),
            out.display(),
            hex::encode(id)
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut config = load_config(cli.config.as_deref())?;
    match cli.command {
        Command::Keygen { .. } => unreachable!("handled above"),
        Command::Verify {
            from,
            to,
            seals_from_topic,
            seals_from_dir,
        } => {
            let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            rt.block_on(verify_command(
                &config,
                from,
                to,
                seals_from_topic,
                seals_from_dir,
            ))
        }
        Command::Serve { roles, dev } => {
            if let Some(roles) = roles {
                config.roles = roles;
                config.validate().context("invalid --roles")?;
            }
            if dev {
                apply_dev(&mut config);
                config
                    .validate()
                    .context("invalid configuration for --dev")?;
                eprint!("{}", dev_banner(&config));
            }
            let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            serve_exit_code(rt.block_on(crate::serve::run(config)))
        }
        Command::Token { .. } => Ok(ExitCode::SUCCESS),
        Command::Spool { command } => spool_command(&config, command),
        Command::Partitions { command } => {
            let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            rt.block_on(partitions_command(&config, command))
        }
        Command::Dlq {
            command: DlqCommand::Replay { limit },
        } => {
            let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            let mut err = std::io::stderr();
            rt.block_on(crate::sink::dlq::replay(&config.kafka, limit, &mut err))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::DevKafka {
            partitions,
            bootstrap_file,
            rtt,
        } => dev_kafka(&config, partitions, bootstrap_file.as_deref(), rtt),
        Command::Topics {
            command:
                TopicsCommand::Ensure {
                    partitions,
                    timeout,
                },
        } => {
            let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            let partitions = partitions.unwrap_or(config.kafka.topic_partitions);
            let mut out = std::io::stdout().lock();
            let ok = rt.block_on(topics_ensure(&config, partitions, timeout, &mut out))?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

/// Writes `contents` to `path` readable by its owner only (0600), durably. Without `force` an
/// existing file is refused; with it, the content is written to a new file beside `path` and
/// renamed over it, so the replaced file never holds a half-written token and the mode is
/// 0600 whatever the old file's was.
fn write_secret_file(path: &Path, contents: &[u8], force: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    let create = |p: &Path| {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        opts.open(p)
    };
    let target = if force {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".{}.tmp", std::process::id()));
        path.with_file_name(name)
    } else {
        path.to_owned()
    };
    let mut f = create(&target).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists && !force {
            anyhow::anyhow!(
                "{} exists; it is not overwritten (pass --force to replace it, or choose \
                 another file)",
                path.display()
            )
        } else {
            anyhow::anyhow!("cannot create {}: {e}", target.display())
        }
    })?;
    let written = f.write_all(contents).and_then(|()| f.sync_all());
    let written = written.and_then(|()| {
        if force {
            std::fs::rename(&target, path)
        } else {
            Ok(())
        }
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&target);
        anyhow::bail!("cannot write {}: {e}", path.display());
    }
    Ok(())
}

/// The `token_sha256: "<hex>"` line for the token in `input` (surrounding whitespace
/// trimmed); refuses an empty token and one a bearer header cannot carry.
pub fn token_hash_line(input: &[u8]) -> anyhow::Result<String> {
    let token = input.trim_ascii();
    if token.is_empty() {
        anyhow::bail!(
            "no token on stdin; pipe one in, e.g. `openssl rand -hex 32 | tee token | \
             audit-manager token hash`"
        );
    }
    if !token.iter().all(|b| b.is_ascii_graphic()) {
        anyhow::bail!(
            "the token holds spaces, control or non-ASCII characters, which an \
             `Authorization: Bearer` header cannot carry reliably; use e.g. `openssl rand -hex 32`"
        );
    }
    if token.len() < 16 {
        tracing::warn!(
            "the token is only {} characters long: anyone who guesses it can write audit \
             events; prefer `openssl rand -hex 32`",
            token.len()
        );
    }
    Ok(format!(
        "token_sha256: \"{}\"",
        hex::encode(crate::auth::token_hash(token))
    ))
}

/// Exit code of `serve`: 0 after a drain on SIGTERM/SIGINT; 1 when a role failed while running
/// (the others were drained first), so the orchestrator restarts the process; other errors
/// (could not start) go to `main`, which exits 2.
fn serve_exit_code(result: anyhow::Result<()>) -> anyhow::Result<ExitCode> {
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.downcast_ref::<crate::shutdown::TaskFailure>().is_some() => {
            eprintln!("error: {}", crate::config::redact::scrub(&format!("{e:#}")));
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e),
    }
}

/// `serve --dev`: every write role (and `query` when readers can be told apart, or anonymous
/// reads are allowed), and the
/// in-process broker unless the configuration names a real
/// one. Everything else keeps its configured value: the defaults already are the development
/// setup (`0.0.0.0:8000`, `./data/spool`, `postgres://postgres@localhost:5432/auditmanager`,
/// a database the store creates when it is missing), and the environment still overrides them.
pub fn apply_dev(config: &mut Config) {
    config.roles = Role::DEFAULT.to_vec();
    // The read side too, when the configuration says who may read.
    if config.query.allow_anonymous || config.auth.mode != crate::config::AuthMode::None {
        config.roles.push(Role::Query);
    }
    if config.kafka.bootstrap_servers == crate::config::KafkaConfig::default().bootstrap_servers {
        config.kafka.bootstrap_servers = crate::serve::EMBEDDED_KAFKA.to_string();
    }
}

/// What `serve --dev` keeps and what it does not: printed before anything starts, so it is the
/// first thing a newcomer reads.
pub fn dev_banner(config: &Config) -> String {
    let rule = "=".repeat(78);
    let embedded = config.kafka.bootstrap_servers == crate::serve::EMBEDDED_KAFKA;
    let kafka = if embedded {
        "in-process development broker: NOT DURABLE. Events forwarded to it and not yet\n\
         \x20               stored in PostgreSQL are LOST when this process stops."
            .to_string()
    } else {
        format!(
            "{} (kafka.bootstrap_servers): as durable as that cluster",
            config.kafka.bootstrap_servers
        )
    };
    let warning = if embedded {
        "NOT DURABLE PAST KAFKA: never send real audit events to --dev."
    } else {
        "Development settings: check every key before using this for real audit events."
    };
    format!(
        "{rule}\n\
         audit-manager serve --dev: every role in one process, for development\n\
         \x20 API          http://{listen}/v1/auditmanager  (try GET /health)\n\
         \x20 spool        {spool}: durable, every 202 is fsynced here first\n\
         \x20 Kafka        {kafka}\n\
         \x20 PostgreSQL   {db}: durable; the database is created if missing\n\
         \n\
         \x20 {warning}\n\
         {rule}\n",
        listen = config.http.listen,
        spool = config.spool.path.display(),
        db = crate::config::redact_url(&config.database.url),
    )
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

async fn verify_command(
    config: &Config,
    from: Option<chrono::DateTime<chrono::Utc>>,
    to: Option<chrono::DateTime<chrono::Utc>>,
    seals_from_topic: bool,
    seals_from_dir: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    use crate::integrity::{publish, seal, verify};
    use std::io::{IsTerminal as _, Write as _};
    let files = &config.integrity.public_key_files;
    if files.is_empty() {
        anyhow::bail!(
            "integrity.public_key_files is empty: verify trusts only the public keys in its \
             configuration. List the sealer's FILE.pub (and every earlier key) there"
        );
    }
    let mut keys = std::collections::BTreeMap::new();
    for f in files {
        let k = seal::load_public_key(f)?;
        keys.insert(seal::key_id(&k), k);
    }
    let topic = if seals_from_topic {
        let kafka = config.kafka.clone();
        let name = config.integrity.seal_topic.clone();
        let t = tokio::task::spawn_blocking(move || {
            publish::read_topic(&kafka, &name, std::time::Duration::from_secs(60))
        })
        .await??;
        Some(t)
    } else {
        None
    };
    let dir = match seals_from_dir {
        Some(d) => {
            Some(tokio::task::spawn_blocking(move || publish::SealDir::new(d).read_all()).await??)
        }
        None => None,
    };
    let writer_keys =
        crate::integrity::attest::WriterKeys::load(&config.integrity.writer_public_key_files)?;
    // Two streams for the seals and rows, two more for the attestation pass.
    let store = crate::store::Store::connect_lazy(&config.database.url, 5)?.for_long_reads();
    let opts = verify::VerifyOptions {
        writer_keys,
        from,
        to,
        topic,
        dir,
        seal_interval: Some(config.integrity.seal_interval),
        progress: std::io::stderr().is_terminal(),
        retention_months: Some(config.database.partition_retention_months),
    };
    let mut out = std::io::stdout().lock();
    let started = std::time::Instant::now();
    let report = verify::verify(store.pool(), &keys, &opts, &mut out)
        .await
        .context("verify could not run")?;
    out.flush()?;
    store.close().await;
    eprintln!(
        "verify: {} seal(s), {} row(s) checked in {:.1}s; {} pending (newer than the newest \
         seal), {} legacy (stored before sealing began), {} dropped by retention; {} finding(s)",
        report.seals,
        report.rows_ok,
        started.elapsed().as_secs_f64(),
        report.pending_rows,
        report.legacy_rows,
        report.retained_rows,
        report.findings.len()
    );
    if report.attestation_checked {
        eprintln!(
            "verify: writer attestation: {} row(s) attested, {} unattested-legacy (stored before \
             attestation began)",
            report.attested_rows, report.unattested_legacy_rows
        );
    } else {
        eprintln!(
            "verify: writer attestation not checked (integrity.writer_public_key_files is empty)"
        );
    }
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn partitions_command(
    config: &Config,
    command: PartitionsCommand,
) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    let db = &config.database;
    let store = crate::store::Store::connect_lazy(&db.url, 1)?;
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
            if report.created.is_empty() && report.dropped.is_empty() {
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

fn dev_kafka(
    config: &Config,
    partitions: Option<i32>,
    bootstrap_file: Option<&Path>,
    rtt: Option<std::time::Duration>,
) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    let partitions = partitions.unwrap_or(config.kafka.topic_partitions);
    let topics = [config.kafka.topic.clone(), config.kafka.dlq_topic.clone()];
    let kafka = crate::devkafka::EmbeddedKafka::start_with_rtt(partitions, &topics, rtt)?;
    let bootstrap = kafka.bootstrap_servers().to_string();
    eprintln!("{}", crate::devkafka::NOT_DURABLE);
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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(crate::shutdown::wait_for_signal());
    drop(kafka);
    if let Some(file) = bootstrap_file {
        let _ = std::fs::remove_file(file);
    }
    eprintln!("dev-kafka: stopped; its data is gone");
    Ok(ExitCode::SUCCESS)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shutdown::{Task, TaskFailure};

    #[test]
    fn a_role_failure_exits_non_zero() {
        assert_eq!(serve_exit_code(Ok(())).ok(), Some(ExitCode::SUCCESS));
        let failure = TaskFailure {
            task: Task::Forward,
            reason: "panicked: boom".into(),
        };
        let code = serve_exit_code(Err(anyhow::Error::from(failure)));
        assert_eq!(code.ok(), Some(ExitCode::FAILURE));
        // Startup errors keep going to `main` (exit 2 with the message).
        assert!(serve_exit_code(Err(anyhow::anyhow!("cannot listen"))).is_err());
    }

    #[test]
    fn dev_runs_every_role_on_the_embedded_broker_by_default() {
        let mut c = Config {
            roles: vec![Role::Ingest],
            ..Config::default()
        };
        apply_dev(&mut c);
        assert_eq!(c.roles, Role::DEFAULT.to_vec());
        assert_eq!(c.kafka.bootstrap_servers, crate::serve::EMBEDDED_KAFKA);
        assert_eq!(
            c.database.url,
            "postgres://postgres@localhost:5432/auditmanager"
        );
        let banner = dev_banner(&c);
        assert!(banner.contains("NOT DURABLE PAST KAFKA"), "{banner}");
        c.query.allow_anonymous = true;
        apply_dev(&mut c);
        assert_eq!(c.roles.last(), Some(&Role::Query));
    }

    #[test]
    fn dev_keeps_a_configured_broker_and_database_and_hides_the_password() {
        let mut c = Config::default();
        c.kafka.bootstrap_servers = "b1:9092".into();
        c.database.url = "postgres://u:s3cret@db:5432/x".into();
        apply_dev(&mut c);
        assert_eq!(c.kafka.bootstrap_servers, "b1:9092");
        let banner = dev_banner(&c);
        assert!(
            banner.contains("b1:9092") && !banner.contains("NOT DURABLE PAST"),
            "{banner}"
        );
        assert!(!banner.contains("s3cret"), "{banner}");
    }
}
