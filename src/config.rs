//! Service configuration for audit-manager.
//!
//! # Layering
//!
//! The effective configuration is built from three layers, lowest first:
//!
//! 1. **Built-in defaults** — [`Config::default()`]; `config/default.yaml` documents every key
//!    with its default value (a unit test keeps the two in sync).
//! 2. **YAML file** — the path given on the command line, else `$CONFIG_PATH` if set. Every
//!    setting lives under the root key `audit_manager:`; an empty file (or an empty root)
//!    means "all defaults", and a key whose value is empty (`~`/nothing) also keeps its default.
//! 3. **Environment variables** — `AUDIT_MANAGER__SECTION__KEY=value` overrides
//!    `audit_manager.section.key`: strip the `AUDIT_MANAGER__` prefix, split the rest on double
//!    underscores (`__`) and lowercase each segment, e.g. `AUDIT_MANAGER__SPOOL__MAX_BYTES=2GiB`
//!    sets `audit_manager.spool.max_bytes`. Below the free-form librdkafka maps
//!    `kafka.producer` / `kafka.consumer` single underscores become dots, so
//!    `AUDIT_MANAGER__KAFKA__PRODUCER__MESSAGE_MAX_BYTES=2000` sets the producer property
//!    `message.max.bytes` to `"2000"`. `AUDIT_MANAGER__ROLES` takes a comma-separated list.
//!
//! Environment values are always inserted as *strings*: string settings keep the exact text
//! (`AUDIT_MANAGER__KAFKA__TOPIC=123` is the topic `"123"`), while numeric, byte-size and
//! duration settings also accept their string form (`"10"`, `"4MiB"`, `"250ms"`).
//!
//! The database URL additionally honours the variables of the reference Python service, with
//! this precedence (lowest first): YAML `database.url` < `DB_HOST`/`DB_PORT`/`DB_NAME`/
//! `DB_USER`/`DB_PASSWORD` < `DATABASE_URL` < `AUDIT_MANAGER__DATABASE__URL`. If any `DB_*`
//! variable is set, the URL becomes `postgres://{user}:{password}@{host}:{port}/{name}`, with the
//! missing parts taken from the URL of the lower layers (user `postgres`, host `localhost`, port
//! `5432`, database `auditmanager` when that URL has none; no password unless one is known) and
//! user/password percent-encoded.
//!
//! # Value formats
//!
//! * Durations are humantime strings: `"250ms"`, `"1s"`, `"1h 30m"`.
//! * Byte sizes are an integer number of bytes or a string with a unit: `B`, `KB`/`MB`/`GB`/`TB`
//!   (powers of 1000) or `KiB`/`MiB`/`GiB`/`TiB` (powers of 1024), e.g. `"4MiB"`, `"1GB"`.
//!
//! # Errors
//!
//! Unknown keys are rejected — in the file and in `AUDIT_MANAGER__*` variables alike — with the
//! full key path and the list of valid keys at that level, so typos never pass silently.
//! [`Config::validate`] then checks ranges and cross-field sanity.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use serde_yaml_ng::{Mapping, Value};

/// Root key of the YAML file; every setting lives below it.
pub const ROOT_KEY: &str = "audit_manager";
/// Prefix of the environment variables that override settings.
pub const ENV_PREFIX: &str = "AUDIT_MANAGER__";
/// Environment variable naming the config file when no path is given explicitly.
pub const CONFIG_PATH_ENV: &str = "CONFIG_PATH";

/// Replacement text for secrets in redacted output.
const MASK: &str = "***";
/// Default parts of the database URL (used when composing it from `DB_*` variables).
const DEFAULT_DB_USER: &str = "postgres";
const DEFAULT_DB_HOST: &str = "localhost";
const DEFAULT_DB_PORT: &str = "5432";
const DEFAULT_DB_NAME: &str = "auditmanager";

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error(
        "cannot read config file {}: {source} (check the path given on the command line or in \
         $CONFIG_PATH)",
        path.display()
    )]
    Io {
        /// The file that could not be read.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid YAML or does not have the expected top-level shape.
    #[error("cannot parse config {origin}: {message}")]
    Parse {
        /// Where the text came from (a file path or "YAML input").
        origin: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A key that the service does not know (usually a typo).
    #[error("unknown key {key} in {origin}; valid keys here: {expected}")]
    UnknownKey {
        /// Full dotted key path, e.g. `audit_manager.spool.max_byte`.
        key: String,
        /// Comma-separated list of the keys valid at that level.
        expected: String,
        /// Where the key came from (a file path, "YAML input" or an environment variable).
        origin: String,
    },
    /// A value of the wrong type or outside the allowed range.
    #[error("invalid value for {key}: {message}")]
    Invalid {
        /// Full dotted key path, e.g. `audit_manager.ingest.max_batch_size`.
        key: String,
        /// What is wrong, what is allowed and where the value came from.
        message: String,
    },
    /// A malformed environment variable (bad name, non-UTF-8 value, bad `DB_PORT`, ...).
    #[error("invalid environment variable {name}: {message}")]
    Env {
        /// The variable's name.
        name: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

// ---------------------------------------------------------------------------------------------
// Roles
// ---------------------------------------------------------------------------------------------

/// A part of the pipeline that can run in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// HTTP ingest into the local spool.
    Ingest,
    /// Spool -> Kafka forwarder.
    Forward,
    /// Kafka -> PostgreSQL sink.
    Sink,
    /// Maintenance: partition creation/retention.
    Maintain,
}

impl Role {
    /// All roles, in their canonical order.
    pub const ALL: [Role; 4] = [Role::Ingest, Role::Forward, Role::Sink, Role::Maintain];

    /// The lowercase name used in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Ingest => "ingest",
            Role::Forward => "forward",
            Role::Sink => "sink",
            Role::Maintain => "maintain",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error returned when parsing an unknown role name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownRole(pub String);

impl fmt::Display for UnknownRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown role `{}` (valid roles: ingest, forward, sink, maintain)",
            self.0
        )
    }
}

impl std::error::Error for UnknownRole {}

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        Role::ALL
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(t))
            .ok_or_else(|| UnknownRole(t.to_string()))
    }
}

// ---------------------------------------------------------------------------------------------
// Config structs
// ---------------------------------------------------------------------------------------------

/// The complete service configuration (`audit_manager:` in YAML).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Which parts of the pipeline run in this process: any of `ingest`, `forward`, `sink`,
    /// `maintain`. A YAML list or a comma-separated string (the env form:
    /// `AUDIT_MANAGER__ROLES=ingest,forward`). Must not be empty; duplicates collapse.
    /// Default: all four.
    #[serde(deserialize_with = "de_roles")]
    pub roles: Vec<Role>,
    /// HTTP server settings.
    pub http: HttpConfig,
    /// Event ingest limits.
    pub ingest: IngestConfig,
    /// Local durable spool (redb) settings.
    pub spool: SpoolConfig,
    /// Kafka connection and topic settings.
    pub kafka: KafkaConfig,
    /// Kafka -> PostgreSQL sink batching.
    pub sink: SinkConfig,
    /// PostgreSQL connection and partition maintenance.
    pub database: DatabaseConfig,
}

/// HTTP server settings (`audit_manager.http`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address and port the HTTP server binds to. Default `0.0.0.0:8000`.
    #[serde(deserialize_with = "de_socket_addr")]
    pub listen: SocketAddr,
    /// Largest accepted request body in bytes (byte size); larger bodies get 413.
    /// Default `4MiB`.
    #[serde(deserialize_with = "de_byte_size")]
    pub max_body_bytes: u64,
}

/// Event ingest limits (`audit_manager.ingest`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Maximum number of events in one batch request. Default `500`.
    #[serde(deserialize_with = "de_int")]
    pub max_batch_size: usize,
    /// How far in the future an event's timestamp may lie before it is rejected (duration).
    /// Default `1h`.
    #[serde(deserialize_with = "de_duration")]
    pub max_future_skew: Duration,
    /// Largest accepted single event after normalization, in bytes (byte size); larger events
    /// get 413. Keeps events under Kafka's default message size. Default `1MiB`.
    #[serde(deserialize_with = "de_byte_size")]
    pub max_event_bytes: u64,
    /// Rule set for events, at ingest and in the sink: `compatible` accepts what the reference
    /// service accepts and normalizes it; `strict` applies CloudEvents-strict rules. Default
    /// `compatible`.
    pub validation: crate::event::ValidationMode,
}

/// Local durable spool settings (`audit_manager.spool`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpoolConfig {
    /// Directory holding the spool file. Default `./data/spool`.
    pub path: PathBuf,
    /// Live spooled bytes (byte size) above which ingest answers 503. Default `1GiB`.
    #[serde(deserialize_with = "de_byte_size")]
    pub max_bytes: u64,
    /// Append requests queued for the group-commit writer before new ones get 503 (overload).
    /// Default `4096`.
    #[serde(deserialize_with = "de_int")]
    pub max_pending_appends: usize,
    /// Value of `Retry-After` on 503 responses (duration; rounded up to whole seconds when
    /// rendered, see [`SpoolConfig::retry_after_secs`]). Default `1s`.
    #[serde(deserialize_with = "de_duration")]
    pub retry_after: Duration,
}

/// Kafka settings (`audit_manager.kafka`).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` bootstrap brokers; `embedded` starts an in-process mock
    /// broker (development only). Default `kafka:9092`.
    pub bootstrap_servers: String,
    /// Topic carrying audit events. Default `openg2p.audit.events`.
    pub topic: String,
    /// Dead-letter topic for events the sink cannot store. Default `openg2p.audit.dlq`.
    pub dlq_topic: String,
    /// Consumer group of the sink. Default `openg2p-audit-consumer`.
    pub consumer_group: String,
    /// Kafka `client.id`. Default `openg2p-audit-manager`.
    pub client_id: String,
    /// Number of partitions when this service creates the topics. Default `12`.
    #[serde(deserialize_with = "de_int")]
    pub topic_partitions: i32,
    /// Replication factor when this service creates the topics (`-1` = broker default).
    /// Default `1`.
    #[serde(deserialize_with = "de_int")]
    pub topic_replication: i32,
    /// Extra librdkafka producer properties (`name: value`; numbers and booleans are turned
    /// into their string form). Default: none.
    #[serde(deserialize_with = "de_string_map")]
    pub producer: BTreeMap<String, String>,
    /// Extra librdkafka consumer properties, same format as `producer`. Default: none.
    #[serde(deserialize_with = "de_string_map")]
    pub consumer: BTreeMap<String, String>,
}

/// Kafka -> PostgreSQL sink batching (`audit_manager.sink`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SinkConfig {
    /// Maximum number of records written to PostgreSQL in one batch. Default `5000`.
    #[serde(deserialize_with = "de_int")]
    pub batch_max_records: usize,
    /// Longest time a partial batch waits before it is flushed (duration). Default `200ms`.
    #[serde(deserialize_with = "de_duration")]
    pub flush_interval: Duration,
}

/// PostgreSQL settings (`audit_manager.database`).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Connection URL, `postgres://user:password@host:port/dbname`. Secret-bearing: it is
    /// redacted in logs and in `GET /config`. Also settable through `DATABASE_URL` and the
    /// `DB_HOST`/`DB_PORT`/`DB_NAME`/`DB_USER`/`DB_PASSWORD` variables.
    /// Default `postgres://postgres@localhost:5432/auditmanager`.
    pub url: String,
    /// Monthly partitions kept created ahead: the current month plus N-1 following ones.
    /// Default `3`.
    #[serde(deserialize_with = "de_int")]
    pub partition_pre_create_months: u32,
    /// Months of partitions kept before old ones are dropped (`0` = never drop). Default `84`.
    #[serde(deserialize_with = "de_int")]
    pub partition_retention_months: u32,
    /// How often partition maintenance runs (duration). Default `1h`.
    #[serde(deserialize_with = "de_duration")]
    pub partition_check_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            roles: Role::ALL.to_vec(),
            http: HttpConfig::default(),
            ingest: IngestConfig::default(),
            spool: SpoolConfig::default(),
            kafka: KafkaConfig::default(),
            sink: SinkConfig::default(),
            database: DatabaseConfig::default(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8000)),
            max_body_bytes: 4 * 1024 * 1024,
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_batch_size: 500,
            max_future_skew: Duration::from_secs(3600),
            max_event_bytes: 1024 * 1024,
            validation: crate::event::ValidationMode::Compatible,
        }
    }
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            path: PathBuf::from("./data/spool"),
            max_bytes: 1024 * 1024 * 1024,
            max_pending_appends: 4096,
            retry_after: Duration::from_secs(1),
        }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: "kafka:9092".to_string(),
            topic: "openg2p.audit.events".to_string(),
            dlq_topic: "openg2p.audit.dlq".to_string(),
            consumer_group: "openg2p-audit-consumer".to_string(),
            client_id: "openg2p-audit-manager".to_string(),
            topic_partitions: 12,
            topic_replication: 1,
            producer: BTreeMap::new(),
            consumer: BTreeMap::new(),
        }
    }
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            batch_max_records: 5000,
            flush_interval: Duration::from_millis(200),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: format!(
                "postgres://{DEFAULT_DB_USER}@{DEFAULT_DB_HOST}:{DEFAULT_DB_PORT}/{DEFAULT_DB_NAME}"
            ),
            partition_pre_create_months: 3,
            partition_retention_months: 84,
            partition_check_interval: Duration::from_secs(3600),
        }
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &redact_url(&self.url))
            .field(
                "partition_pre_create_months",
                &self.partition_pre_create_months,
            )
            .field(
                "partition_retention_months",
                &self.partition_retention_months,
            )
            .field("partition_check_interval", &self.partition_check_interval)
            .finish()
    }
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("topic", &self.topic)
            .field("dlq_topic", &self.dlq_topic)
            .field("consumer_group", &self.consumer_group)
            .field("client_id", &self.client_id)
            .field("topic_partitions", &self.topic_partitions)
            .field("topic_replication", &self.topic_replication)
            .field("producer", &redact_properties(&self.producer))
            .field("consumer", &redact_properties(&self.consumer))
            .finish()
    }
}

impl SpoolConfig {
    /// `retry_after` rounded up to whole seconds, as rendered in the `Retry-After` header.
    pub fn retry_after_secs(&self) -> u64 {
        let d = self.retry_after;
        d.as_secs() + u64::from(d.subsec_nanos() > 0)
    }
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

impl Config {
    /// Whether this process runs role `r`.
    pub fn has_role(&self, r: Role) -> bool {
        self.roles.contains(&r)
    }

    /// Loads defaults < file (`path`, else `$CONFIG_PATH` if set) < process environment, then
    /// [validates](Config::validate) the result.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let env = process_env()?;
        Self::load_from(path, &env)
    }

    /// Same as [`Config::load`], but with an explicit environment (no process environment
    /// access). `CONFIG_PATH` is looked up in `env` when `path` is `None`.
    pub fn load_from(path: Option<&Path>, env: &[(String, String)]) -> Result<Config, ConfigError> {
        let from_env: Option<PathBuf> = if path.is_none() {
            env_get(env, CONFIG_PATH_ENV).map(PathBuf::from)
        } else {
            None
        };
        match path.or(from_env.as_deref()) {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Io {
                    path: p.to_path_buf(),
                    source,
                })?;
                build(&text, &p.display().to_string(), env)
            }
            None => build("", "built-in defaults", env),
        }
    }

    /// Parses YAML text (with the `audit_manager:` root) and overlays `env`, then validates.
    pub fn from_yaml_str(yaml: &str, env: &[(String, String)]) -> Result<Config, ConfigError> {
        build(yaml, "YAML input", env)
    }

    /// Non-secret effective configuration as JSON (for `GET /config`): byte sizes as integers,
    /// durations as humantime strings, the database password and secret-looking query
    /// parameters and Kafka properties replaced by `"***"`.
    pub fn redacted_json(&self) -> serde_json::Value {
        let dur = |d: Duration| humantime::format_duration(d).to_string();
        let props = |m: &BTreeMap<String, String>| {
            let obj: serde_json::Map<String, serde_json::Value> = redact_properties(m)
                .into_iter()
                .map(|(k, v)| (k, serde_json::Value::String(v)))
                .collect();
            serde_json::Value::Object(obj)
        };
        let roles: Vec<&str> = self.roles.iter().map(|r| r.as_str()).collect();
        serde_json::json!({
            "roles": roles,
            "http": {
                "listen": self.http.listen.to_string(),
                "max_body_bytes": self.http.max_body_bytes,
            },
            "ingest": {
                "max_batch_size": self.ingest.max_batch_size,
                "max_future_skew": dur(self.ingest.max_future_skew),
                "max_event_bytes": self.ingest.max_event_bytes,
                "validation": self.ingest.validation.as_str(),
            },
            "spool": {
                "path": self.spool.path.display().to_string(),
                "max_bytes": self.spool.max_bytes,
                "max_pending_appends": self.spool.max_pending_appends,
                "retry_after": dur(self.spool.retry_after),
            },
            "kafka": {
                "bootstrap_servers": self.kafka.bootstrap_servers,
                "topic": self.kafka.topic,
                "dlq_topic": self.kafka.dlq_topic,
                "consumer_group": self.kafka.consumer_group,
                "client_id": self.kafka.client_id,
                "topic_partitions": self.kafka.topic_partitions,
                "topic_replication": self.kafka.topic_replication,
                "producer": props(&self.kafka.producer),
                "consumer": props(&self.kafka.consumer),
            },
            "sink": {
                "batch_max_records": self.sink.batch_max_records,
                "flush_interval": dur(self.sink.flush_interval),
            },
            "database": {
                "url": redact_url(&self.database.url),
                "partition_pre_create_months": self.database.partition_pre_create_months,
                "partition_retention_months": self.database.partition_retention_months,
                "partition_check_interval": dur(self.database.partition_check_interval),
            },
        })
    }

    /// Checks ranges and cross-field sanity (called by the `load*` functions).
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &str, message: String) -> ConfigError {
            ConfigError::Invalid {
                key: format!("{ROOT_KEY}.{key}"),
                message,
            }
        }
        fn at_least_one<T: PartialOrd + From<u8> + fmt::Display>(
            key: &str,
            v: T,
        ) -> Result<(), ConfigError> {
            if v < T::from(1) {
                return Err(invalid(key, format!("must be at least 1 (got {v})")));
            }
            Ok(())
        }
        fn non_empty(key: &str, v: &str) -> Result<(), ConfigError> {
            if v.trim().is_empty() {
                return Err(invalid(key, "must not be empty".to_string()));
            }
            Ok(())
        }

        if self.roles.is_empty() {
            return Err(invalid(
                "roles",
                "must name at least one role (allowed: ingest, forward, sink, maintain)"
                    .to_string(),
            ));
        }
        at_least_one("http.max_body_bytes", self.http.max_body_bytes)?;
        at_least_one("ingest.max_batch_size", self.ingest.max_batch_size as u64)?;
        at_least_one("ingest.max_event_bytes", self.ingest.max_event_bytes)?;
        at_least_one("spool.max_bytes", self.spool.max_bytes)?;
        at_least_one(
            "spool.max_pending_appends",
            self.spool.max_pending_appends as u64,
        )?;
        non_empty("spool.path", &self.spool.path.to_string_lossy())?;
        non_empty("kafka.bootstrap_servers", &self.kafka.bootstrap_servers)?;
        non_empty("kafka.topic", &self.kafka.topic)?;
        non_empty("kafka.dlq_topic", &self.kafka.dlq_topic)?;
        non_empty("kafka.consumer_group", &self.kafka.consumer_group)?;
        if self.kafka.dlq_topic == self.kafka.topic {
            return Err(invalid(
                "kafka.dlq_topic",
                format!(
                    "must differ from kafka.topic (both are `{}`); pick a separate dead-letter \
                     topic",
                    self.kafka.topic
                ),
            ));
        }
        at_least_one("kafka.topic_partitions", self.kafka.topic_partitions)?;
        if self.kafka.topic_replication < 1 && self.kafka.topic_replication != -1 {
            return Err(invalid(
                "kafka.topic_replication",
                format!(
                    "must be at least 1, or -1 for the broker default (got {})",
                    self.kafka.topic_replication
                ),
            ));
        }
        at_least_one("sink.batch_max_records", self.sink.batch_max_records as u64)?;
        non_empty("database.url", &self.database.url)?;
        at_least_one(
            "database.partition_pre_create_months",
            self.database.partition_pre_create_months,
        )?;
        Ok(())
    }
}

/// The process environment as UTF-8 pairs; a non-UTF-8 variable that this module reads is an
/// error, other non-UTF-8 variables are ignored.
fn process_env() -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for (k, v) in std::env::vars_os() {
        match (k.into_string(), v.into_string()) {
            (Ok(k), Ok(v)) => out.push((k, v)),
            (Ok(k), Err(_)) if is_relevant_env(&k) => {
                return Err(ConfigError::Env {
                    name: k,
                    message: "value is not valid UTF-8".to_string(),
                });
            }
            (Err(k), _) if is_relevant_env(&k.to_string_lossy()) => {
                return Err(ConfigError::Env {
                    name: k.to_string_lossy().into_owned(),
                    message: "name is not valid UTF-8".to_string(),
                });
            }
            _ => {}
        }
    }
    Ok(out)
}

fn is_relevant_env(name: &str) -> bool {
    name.starts_with(ENV_PREFIX)
        || name == CONFIG_PATH_ENV
        || name == "DATABASE_URL"
        || DB_VARS.contains(&name)
}

const DB_VARS: [&str; 5] = ["DB_HOST", "DB_PORT", "DB_NAME", "DB_USER", "DB_PASSWORD"];

/// Last non-empty value of `name` in `env`.
fn env_get<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter()
        .rev()
        .find(|(k, v)| k == name && !v.is_empty())
        .map(|(_, v)| v.as_str())
}

/// Which environment variable set which key path (for error messages).
type EnvOrigins = Vec<(Vec<String>, String)>;

fn build(yaml: &str, origin: &str, env: &[(String, String)]) -> Result<Config, ConfigError> {
    let mut tree = parse_root(yaml, origin)?;
    apply_database_env(&mut tree, env)?;
    let env_origins = apply_env_overrides(&mut tree, env)?;
    let cfg = deserialize_tree(tree, origin, &env_origins)?;
    cfg.validate()?;
    Ok(cfg)
}

/// Parses the YAML text and returns the mapping below the root key (empty if absent/empty).
fn parse_root(yaml: &str, origin: &str) -> Result<Mapping, ConfigError> {
    let parse_err = |message: String| ConfigError::Parse {
        origin: origin.to_string(),
        message,
    };
    let mut doc: Value = if yaml.trim().is_empty() {
        Value::Null
    } else {
        serde_yaml_ng::from_str(yaml).map_err(|e| parse_err(format!("invalid YAML: {e}")))?
    };
    doc.apply_merge()
        .map_err(|e| parse_err(format!("invalid YAML merge (<<): {e}")))?;
    let top = match doc {
        Value::Null => return Ok(Mapping::new()),
        Value::Mapping(m) => m,
        other => {
            return Err(parse_err(format!(
                "the top level must be a mapping with the single root key `{ROOT_KEY}:`, \
                 found {}",
                value_kind(&other)
            )));
        }
    };
    let mut root = None;
    for (k, v) in top {
        match k.as_str() {
            Some(ROOT_KEY) => root = Some(v),
            _ => {
                return Err(ConfigError::UnknownKey {
                    key: key_display(&k),
                    expected: format!(
                        "{ROOT_KEY} (all settings go under the root key `{ROOT_KEY}:`)"
                    ),
                    origin: origin.to_string(),
                });
            }
        }
    }
    match root {
        None | Some(Value::Null) => Ok(Mapping::new()),
        Some(Value::Mapping(mut m)) => {
            strip_nulls(&mut m);
            Ok(m)
        }
        Some(other) => Err(parse_err(format!(
            "`{ROOT_KEY}:` must be a mapping of settings, found {}",
            value_kind(&other)
        ))),
    }
}

fn value_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn key_display(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        other => serde_yaml_ng::to_string(other)
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "<non-string key>".to_string()),
    }
}

/// Removes keys whose value is empty (`~`), so they fall back to their defaults.
fn strip_nulls(m: &mut Mapping) {
    m.retain(|_, v| !v.is_null());
    for (_, v) in m.iter_mut() {
        if let Value::Mapping(inner) = v {
            strip_nulls(inner);
        }
    }
}

fn key(s: &str) -> Value {
    Value::String(s.to_string())
}

/// Applies `DB_*` and `DATABASE_URL` to `database.url` (YAML < DB_* < DATABASE_URL).
fn apply_database_env(tree: &mut Mapping, env: &[(String, String)]) -> Result<(), ConfigError> {
    let any_db = DB_VARS.iter().any(|n| env_get(env, n).is_some());
    let new_url = if let Some(url) = env_get(env, "DATABASE_URL") {
        Some(url.to_string())
    } else if any_db {
        let current = tree
            .get("database")
            .and_then(|d| d.get("url"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| DatabaseConfig::default().url);
        Some(compose_db_url(&current, env)?)
    } else {
        None
    };
    if let Some(url) = new_url {
        let db = tree
            .entry(key("database"))
            .or_insert_with(|| Value::Mapping(Mapping::new()));
        if !db.is_mapping() {
            *db = Value::Mapping(Mapping::new());
        }
        if let Value::Mapping(m) = db {
            m.insert(key("url"), Value::String(url));
        }
    }
    Ok(())
}

/// Builds `postgres://user[:password]@host:port/name[?query]` from `DB_*` variables, taking
/// missing parts from `current`.
fn compose_db_url(current: &str, env: &[(String, String)]) -> Result<String, ConfigError> {
    let cur = PgUrl::parse(current);
    let user = match env_get(env, "DB_USER") {
        Some(u) => percent_encode(u),
        None => cur.user.unwrap_or_else(|| DEFAULT_DB_USER.to_string()),
    };
    let password = match env_get(env, "DB_PASSWORD") {
        Some(p) => Some(percent_encode(p)),
        None => cur.password,
    };
    let host = match env_get(env, "DB_HOST") {
        Some(h) if h.contains(':') && !h.starts_with('[') => format!("[{h}]"),
        Some(h) => h.to_string(),
        None => cur.host.unwrap_or_else(|| DEFAULT_DB_HOST.to_string()),
    };
    let port = match env_get(env, "DB_PORT") {
        Some(p) => match p.trim().parse::<u16>() {
            Ok(n) if n > 0 => n.to_string(),
            _ => {
                return Err(ConfigError::Env {
                    name: "DB_PORT".to_string(),
                    message: format!("`{p}` is not a port number (allowed: 1-65535)"),
                });
            }
        },
        None => cur.port.unwrap_or_else(|| DEFAULT_DB_PORT.to_string()),
    };
    let name = match env_get(env, "DB_NAME") {
        Some(n) => n.to_string(),
        None => cur.name.unwrap_or_else(|| DEFAULT_DB_NAME.to_string()),
    };
    let mut url = format!("postgres://{user}");
    if let Some(p) = password {
        url.push(':');
        url.push_str(&p);
    }
    url.push_str(&format!("@{host}:{port}/{name}"));
    if let Some(q) = cur.query {
        url.push('?');
        url.push_str(&q);
    }
    Ok(url)
}

/// The parts of a `postgres://` URL (kept in their encoded form).
#[derive(Debug, Default, PartialEq)]
struct PgUrl {
    user: Option<String>,
    password: Option<String>,
    host: Option<String>,
    port: Option<String>,
    name: Option<String>,
    query: Option<String>,
}

impl PgUrl {
    fn parse(url: &str) -> PgUrl {
        let mut out = PgUrl::default();
        let Some((_, rest)) = url.split_once("://") else {
            return out;
        };
        // The userinfo ends at the last '@' (passwords may hold unencoded '/', '?' or '#').
        let (userinfo, rest) = match rest.rfind('@') {
            Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
            None => (None, rest),
        };
        if let Some(ui) = userinfo {
            let (u, p) = match ui.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (ui, None),
            };
            out.user = Some(u.to_string()).filter(|s| !s.is_empty());
            out.password = p.map(str::to_string);
        }
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        out.query = query.map(str::to_string).filter(|q| !q.is_empty());
        let (hostport, name) = match rest.split_once('/') {
            Some((h, n)) => (h, Some(n)),
            None => (rest, None),
        };
        out.name = name.map(str::to_string).filter(|s| !s.is_empty());
        let (host, port) = if hostport.starts_with('[') {
            match hostport.find(']') {
                Some(i) => {
                    let port = hostport[i + 1..].strip_prefix(':');
                    (&hostport[..=i], port)
                }
                None => (hostport, None),
            }
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        out.host = Some(host.to_string()).filter(|s| !s.is_empty());
        out.port = port.map(str::to_string).filter(|s| !s.is_empty());
        out
    }
}

/// Percent-encodes everything except RFC 3986 unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Overlays `AUDIT_MANAGER__*` variables (as YAML strings) onto the tree.
fn apply_env_overrides(
    tree: &mut Mapping,
    env: &[(String, String)],
) -> Result<EnvOrigins, ConfigError> {
    let mut vars: Vec<&(String, String)> = env
        .iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let mut origins = EnvOrigins::new();
    for (name, value) in vars {
        let path = env_key_path(name)?;
        insert_path(tree, &path, Value::String(value.clone()));
        origins.push((path, name.clone()));
    }
    Ok(origins)
}

/// `AUDIT_MANAGER__KAFKA__PRODUCER__MESSAGE_MAX_BYTES` -> `[kafka, producer, message.max.bytes]`.
fn env_key_path(name: &str) -> Result<Vec<String>, ConfigError> {
    let rest = &name[ENV_PREFIX.len()..];
    let segments: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(ConfigError::Env {
            name: name.to_string(),
            message: format!(
                "empty key segment; use {ENV_PREFIX}SECTION__KEY, e.g. \
                 {ENV_PREFIX}SPOOL__MAX_BYTES"
            ),
        });
    }
    let is_prop_map = segments.len() > 2
        && segments[0] == "kafka"
        && (segments[1] == "producer" || segments[1] == "consumer");
    if is_prop_map {
        let prop = segments[2..].join(".").replace('_', ".");
        let mut path = segments[..2].to_vec();
        path.push(prop);
        Ok(path)
    } else {
        Ok(segments)
    }
}

/// Sets `path` in the tree to `value`, creating (or replacing non-mapping) intermediate nodes.
fn insert_path(tree: &mut Mapping, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = tree;
    for seg in parents {
        let node = cur
            .entry(key(seg))
            .or_insert_with(|| Value::Mapping(Mapping::new()));
        if !node.is_mapping() {
            *node = Value::Mapping(Mapping::new());
        }
        cur = match node {
            Value::Mapping(m) => m,
            _ => return,
        };
    }
    cur.insert(key(last), value);
}

fn deserialize_tree(
    tree: Mapping,
    origin: &str,
    env_origins: &EnvOrigins,
) -> Result<Config, ConfigError> {
    match serde_path_to_error::deserialize::<_, Config>(Value::Mapping(tree)) {
        Ok(cfg) => Ok(cfg),
        Err(err) => {
            let mut segs: Vec<String> = Vec::new();
            let mut display = ROOT_KEY.to_string();
            for seg in err.path().iter() {
                match seg {
                    serde_path_to_error::Segment::Seq { index } => {
                        display.push_str(&format!("[{index}]"));
                        segs.push(format!("[{index}]"));
                    }
                    serde_path_to_error::Segment::Map { key } => {
                        display.push('.');
                        display.push_str(key);
                        segs.push(key.clone());
                    }
                    serde_path_to_error::Segment::Enum { variant } => {
                        display.push('.');
                        display.push_str(variant);
                        segs.push(variant.clone());
                    }
                    serde_path_to_error::Segment::Unknown => {
                        display.push_str(".?");
                        segs.push("?".to_string());
                    }
                }
            }
            let mut message = err.into_inner().to_string();
            if message.ends_with("expected a string") {
                message.push_str("; quote the value in YAML");
            }
            if let Some((field, expected)) = parse_unknown_field(&message) {
                // Depending on where serde failed, the path may or may not end in the field.
                if segs.last().map(String::as_str) != Some(field.as_str()) {
                    display.push('.');
                    display.push_str(&field);
                    segs.push(field);
                }
                let origin = env_origin(env_origins, &segs)
                    .map(|n| format!("environment variable {n}"))
                    .unwrap_or_else(|| origin.to_string());
                return Err(ConfigError::UnknownKey {
                    key: display,
                    expected,
                    origin,
                });
            }
            let source = match env_origin(env_origins, &segs) {
                Some(n) => format!("set by environment variable {n}"),
                None => format!("in {origin}"),
            };
            Err(ConfigError::Invalid {
                key: display,
                message: format!("{message} ({source})"),
            })
        }
    }
}

/// The environment variable that set `segs` or something below it.
fn env_origin<'a>(env_origins: &'a EnvOrigins, segs: &[String]) -> Option<&'a str> {
    env_origins
        .iter()
        .rev()
        .find(|(path, _)| !segs.is_empty() && path.starts_with(segs))
        .map(|(_, name)| name.as_str())
}

/// Parses serde's "unknown field `x`, expected one of `a`, `b`" into (`x`, "a, b").
fn parse_unknown_field(message: &str) -> Option<(String, String)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (field, rest) = rest.split_once('`')?;
    let expected = if let Some(list) = rest.strip_prefix(", expected ") {
        let list = list.strip_prefix("one of ").unwrap_or(list);
        list.replace(" or ", ", ").replace('`', "")
    } else {
        "(none)".to_string()
    };
    Some((field.to_string(), expected))
}

// ---------------------------------------------------------------------------------------------
// Value helpers (lenient numbers, sizes, durations)
// ---------------------------------------------------------------------------------------------

/// A YAML scalar in any of its forms.
enum Scalar {
    Int(i128),
    Float(f64),
    Bool(bool),
    Str(String),
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a single value (number, string or boolean)")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Int(i128::from(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar::Int(i128::from(v)))
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<Scalar, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar::Float(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar, E> {
                Ok(Scalar::Str(v))
            }
        }
        d.deserialize_any(V)
    }
}

impl Scalar {
    fn into_string(self) -> String {
        match self {
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Bool(b) => b.to_string(),
            Scalar::Str(s) => s,
        }
    }
}

/// Integer types accepted by [`de_int`].
trait IntField: TryFrom<i128> {
    const MIN: i128;
    const MAX: i128;
}

macro_rules! int_field {
    ($($t:ty),*) => {$(
        impl IntField for $t {
            const MIN: i128 = <$t>::MIN as i128;
            const MAX: i128 = <$t>::MAX as i128;
        }
    )*};
}
int_field!(usize, u32, i32, u64);

/// An integer given as a YAML number or a numeric string (`"10"`).
fn de_int<'de, D: Deserializer<'de>, T: IntField>(d: D) -> Result<T, D::Error> {
    let n = match Scalar::deserialize(d)? {
        Scalar::Int(i) => i,
        Scalar::Str(s) => s
            .trim()
            .parse::<i128>()
            .map_err(|_| de::Error::custom(format!("expected a whole number, got `{s}`")))?,
        Scalar::Float(f) => {
            return Err(de::Error::custom(format!(
                "expected a whole number, got {f}"
            )));
        }
        Scalar::Bool(b) => {
            return Err(de::Error::custom(format!(
                "expected a whole number, got {b}"
            )));
        }
    };
    T::try_from(n).map_err(|_| {
        de::Error::custom(format!(
            "{n} is out of range (allowed: {} to {})",
            T::MIN,
            T::MAX
        ))
    })
}

/// A byte size: an integer, or a string like `"4MiB"` / `"1GB"` (see [`parse_byte_size`]).
fn de_byte_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match Scalar::deserialize(d)? {
        Scalar::Int(i) => u64::try_from(i)
            .map_err(|_| de::Error::custom(format!("byte size must not be negative (got {i})"))),
        Scalar::Str(s) => parse_byte_size(&s).map_err(de::Error::custom),
        other => Err(de::Error::custom(format!(
            "expected a byte size like 1048576, \"4MiB\" or \"1GB\", got {}",
            other.into_string()
        ))),
    }
}

/// A humantime duration string such as `"250ms"` or `"1h"`.
fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = match Scalar::deserialize(d)? {
        Scalar::Str(s) => s,
        Scalar::Int(0) => return Ok(Duration::ZERO),
        other => {
            let n = other.into_string();
            return Err(de::Error::custom(format!(
                "a duration needs a unit, e.g. \"{n}s\" or \"{n}ms\" (got {n})"
            )));
        }
    };
    humantime::parse_duration(s.trim()).map_err(|e| {
        de::Error::custom(format!(
            "invalid duration `{s}`: {e} (use e.g. \"250ms\", \"30s\", \"1h\")"
        ))
    })
}

/// A `SocketAddr` such as `0.0.0.0:8000` or `[::]:8000`.
fn de_socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let s = Scalar::deserialize(d)?.into_string();
    s.trim().parse().map_err(|_| {
        de::Error::custom(format!(
            "invalid listen address `{s}` (expected IP:port, e.g. \"0.0.0.0:8000\" or \
             \"[::]:8000\")"
        ))
    })
}

/// Roles as a list or a comma-separated string; duplicates collapse (first occurrence wins).
fn de_roles<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Role>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum RolesIn {
        List(Vec<String>),
        Csv(String),
    }
    let names: Vec<String> = match RolesIn::deserialize(d).map_err(|_| {
        de::Error::custom(
            "expected a list of roles or a comma-separated string (roles: ingest, forward, \
             sink, maintain)",
        )
    })? {
        RolesIn::List(v) => v,
        RolesIn::Csv(s) => s.split(',').map(str::to_string).collect(),
    };
    let mut out = Vec::new();
    for name in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        let r: Role = name.parse().map_err(de::Error::custom)?;
        if !out.contains(&r) {
            out.push(r);
        }
    }
    Ok(out)
}

/// A free-form `name: value` map; scalar values become their string form.
fn de_string_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let raw = BTreeMap::<String, Scalar>::deserialize(d)?;
    Ok(raw.into_iter().map(|(k, v)| (k, v.into_string())).collect())
}

/// Parses a byte size: a bare integer (bytes) or a number followed by a unit — `B`,
/// `KB`/`MB`/`GB`/`TB` (powers of 1000) or `KiB`/`MiB`/`GiB`/`TiB` (powers of 1024); units are
/// case-insensitive and may be separated by a space. Decimals are allowed when the result is
/// a whole number of bytes (`"1.5KiB"` = 1536).
pub fn parse_byte_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let hint = "use a number of bytes or a size like \"512KiB\", \"4MiB\", \"1GiB\", \"1GB\"";
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = (&t[..split], t[split..].trim());
    if num.is_empty() {
        return Err(format!("invalid byte size `{s}`: {hint}"));
    }
    let mult: u128 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "invalid byte size `{s}`: unknown unit `{unit}`; {hint}"
            ));
        }
    };
    let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
    if int_part.is_empty() && frac_part.is_empty() || frac_part.contains('.') {
        return Err(format!("invalid byte size `{s}`: {hint}"));
    }
    let digits = format!("{int_part}{frac_part}");
    let too_big = || format!("byte size `{s}` is too large (maximum {} bytes)", u64::MAX);
    if digits.len() > 30 {
        return Err(too_big());
    }
    let mantissa: u128 = digits
        .parse()
        .map_err(|_| format!("invalid byte size `{s}`: {hint}"))?;
    let scale = 10u128.pow(frac_part.len() as u32);
    let scaled = mantissa.checked_mul(mult).ok_or_else(too_big)?;
    if scaled % scale != 0 {
        return Err(format!("byte size `{s}` is not a whole number of bytes"));
    }
    u64::try_from(scaled / scale).map_err(|_| too_big())
}

// ---------------------------------------------------------------------------------------------
// Redaction
// ---------------------------------------------------------------------------------------------

/// Whether a property / query-parameter name looks secret.
fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["password", "secret", "sasl.jaas", "token", "key"]
        .iter()
        .any(|w| n.contains(w))
}

/// Kafka properties with secret-looking values replaced by `***`.
fn redact_properties(m: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    m.iter()
        .map(|(k, v)| {
            let v = if is_secret_name(k) {
                MASK.to_string()
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect()
}

/// The URL with its password (and secret-looking query parameters such as `password=`)
/// replaced by `***`. Also handles `key=value` connection strings (`host=x password=y`).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return redact_kv_dsn(url);
    };
    let (userinfo, hostpart) = match rest.rfind('@') {
        Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
        None => (None, rest),
    };
    let mut out = format!("{scheme}://");
    if let Some(ui) = userinfo {
        match ui.split_once(':') {
            Some((user, _)) => out.push_str(&format!("{user}:{MASK}@")),
            None => out.push_str(&format!("{ui}@")),
        }
    }
    match hostpart.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            let (query, fragment) = match query.split_once('#') {
                Some((q, f)) => (q, Some(f)),
                None => (query, None),
            };
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, _)) if is_secret_name(k) => format!("{k}={MASK}"),
                    _ => p.to_string(),
                })
                .collect();
            out.push_str(&params.join("&"));
            if let Some(f) = fragment {
                out.push('#');
                out.push_str(f);
            }
        }
        None => out.push_str(hostpart),
    }
    out
}

/// Masks secret values in a libpq `key=value` connection string.
fn redact_kv_dsn(dsn: &str) -> String {
    dsn.split(' ')
        .map(|part| match part.split_once('=') {
            Some((k, _)) if is_secret_name(k) => format!("{k}={MASK}"),
            _ => part.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn yaml(y: &str) -> Result<Config, ConfigError> {
        Config::from_yaml_str(y, &[])
    }

    fn with_env(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_yaml_str("", &env(pairs))
    }

    #[test]
    fn defaults_match_the_table() {
        let c = Config::default();
        assert_eq!(
            c.roles,
            vec![Role::Ingest, Role::Forward, Role::Sink, Role::Maintain]
        );
        assert_eq!(c.http.listen, "0.0.0.0:8000".parse::<SocketAddr>().unwrap());
        assert_eq!(c.http.max_body_bytes, 4_194_304);
        assert_eq!(c.ingest.max_batch_size, 500);
        assert_eq!(c.ingest.max_future_skew, Duration::from_secs(3600));
        assert_eq!(c.ingest.max_event_bytes, 1_048_576);
        assert_eq!(c.spool.path, PathBuf::from("./data/spool"));
        assert_eq!(c.spool.max_bytes, 1_073_741_824);
        assert_eq!(c.spool.max_pending_appends, 4096);
        assert_eq!(c.spool.retry_after, Duration::from_secs(1));
        assert_eq!(c.kafka.bootstrap_servers, "kafka:9092");
        assert_eq!(c.kafka.topic, "openg2p.audit.events");
        assert_eq!(c.kafka.dlq_topic, "openg2p.audit.dlq");
        assert_eq!(c.kafka.consumer_group, "openg2p-audit-consumer");
        assert_eq!(c.kafka.client_id, "openg2p-audit-manager");
        assert_eq!(c.kafka.topic_partitions, 12);
        assert_eq!(c.kafka.topic_replication, 1);
        assert!(c.kafka.producer.is_empty() && c.kafka.consumer.is_empty());
        assert_eq!(c.sink.batch_max_records, 5000);
        assert_eq!(c.sink.flush_interval, Duration::from_millis(200));
        assert_eq!(
            c.database.url,
            "postgres://postgres@localhost:5432/auditmanager"
        );
        assert_eq!(c.database.partition_pre_create_months, 3);
        assert_eq!(c.database.partition_retention_months, 84);
        assert_eq!(
            c.database.partition_check_interval,
            Duration::from_secs(3600)
        );
        c.validate().unwrap();
        // Empty inputs give the defaults.
        assert_eq!(yaml("").unwrap(), c);
        assert_eq!(yaml("# only a comment\n").unwrap(), c);
        assert_eq!(yaml("audit_manager:\n").unwrap(), c);
        assert_eq!(yaml("audit_manager:\n  http:\n  spool: ~\n").unwrap(), c);
        assert_eq!(Config::load_from(None, &[]).unwrap(), c);
    }

    #[test]
    fn default_yaml_matches_defaults_field_by_field() {
        let from_file = yaml(include_str!("../config/default.yaml")).unwrap();
        let d = Config::default();
        assert_eq!(from_file.roles, d.roles);
        assert_eq!(from_file.http, d.http);
        assert_eq!(from_file.ingest, d.ingest);
        assert_eq!(from_file.spool, d.spool);
        assert_eq!(from_file.kafka, d.kafka);
        assert_eq!(from_file.sink, d.sink);
        assert_eq!(from_file.database, d.database);
        assert_eq!(from_file, d);
    }

    /// Every key of the config appears in default.yaml (it documents every key).
    #[test]
    fn default_yaml_documents_every_key() {
        fn json_keys(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
            if let serde_json::Value::Object(m) = v {
                for (k, v) in m {
                    let p = format!("{prefix}.{k}");
                    out.push(p.clone());
                    json_keys(&p, v, out);
                }
            }
        }
        fn yaml_keys(prefix: &str, v: &Value, out: &mut Vec<String>) {
            if let Value::Mapping(m) = v {
                for (k, v) in m {
                    let p = format!("{prefix}.{}", k.as_str().unwrap());
                    out.push(p.clone());
                    yaml_keys(&p, v, out);
                }
            }
        }
        let doc: Value = serde_yaml_ng::from_str(include_str!("../config/default.yaml")).unwrap();
        let mut in_yaml = Vec::new();
        yaml_keys(ROOT_KEY, &doc[ROOT_KEY], &mut in_yaml);
        let mut in_cfg = Vec::new();
        json_keys(ROOT_KEY, &Config::default().redacted_json(), &mut in_cfg);
        in_yaml.sort();
        in_cfg.sort();
        assert_eq!(in_yaml, in_cfg);
        assert!(in_cfg.len() > 25, "{in_cfg:?}");
    }

    #[test]
    fn yaml_overrides() {
        let c = yaml(
            r#"
audit_manager:
  roles: [sink]
  http:
    listen: "127.0.0.1:9000"
    max_body_bytes: 2MiB
  ingest:
    max_batch_size: 10
    max_future_skew: 5m
  spool:
    path: /var/spool/am
    max_bytes: 1000
    retry_after: 1500ms
  kafka:
    topic: t1
    dlq_topic: t1.dlq
    topic_replication: -1
    producer:
      acks: all
      linger.ms: 5
      enable.idempotence: true
  database:
    url: postgres://u:p@db:5433/x
    partition_retention_months: 0
"#,
        )
        .unwrap();
        assert_eq!(c.roles, vec![Role::Sink]);
        assert_eq!(
            c.http.listen,
            "127.0.0.1:9000".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(c.http.max_body_bytes, 2 * 1024 * 1024);
        assert_eq!(c.ingest.max_batch_size, 10);
        assert_eq!(c.ingest.max_future_skew, Duration::from_secs(300));
        assert_eq!(
            c.ingest.max_event_bytes, 1_048_576,
            "untouched key keeps default"
        );
        assert_eq!(c.spool.path, PathBuf::from("/var/spool/am"));
        assert_eq!(c.spool.max_bytes, 1000);
        assert_eq!(c.spool.retry_after, Duration::from_millis(1500));
        assert_eq!(c.spool.retry_after_secs(), 2);
        assert_eq!(c.kafka.topic, "t1");
        assert_eq!(c.kafka.topic_replication, -1);
        assert_eq!(c.kafka.bootstrap_servers, "kafka:9092");
        assert_eq!(c.kafka.producer["acks"], "all");
        assert_eq!(c.kafka.producer["linger.ms"], "5");
        assert_eq!(c.kafka.producer["enable.idempotence"], "true");
        assert_eq!(c.database.url, "postgres://u:p@db:5433/x");
        assert_eq!(c.database.partition_retention_months, 0);
        assert!(!c.has_role(Role::Ingest) && c.has_role(Role::Sink));
    }

    #[test]
    fn env_overrides_yaml_with_nesting_and_property_maps() {
        let y = "audit_manager:\n  ingest:\n    max_batch_size: 10\n  kafka:\n    producer:\n      acks: all\n";
        let c = Config::from_yaml_str(
            y,
            &env(&[
                ("AUDIT_MANAGER__INGEST__MAX_BATCH_SIZE", "20"),
                ("AUDIT_MANAGER__HTTP__LISTEN", "[::1]:8080"),
                ("AUDIT_MANAGER__KAFKA__PRODUCER__MESSAGE_MAX_BYTES", "2000"),
                (
                    "AUDIT_MANAGER__KAFKA__CONSUMER__AUTO_OFFSET_RESET",
                    "earliest",
                ),
                ("AUDIT_MANAGER__SPOOL__MAX_BYTES", "512KiB"),
                ("AUDIT_MANAGER__SINK__FLUSH_INTERVAL", "1s"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.ingest.max_batch_size, 20);
        assert_eq!(c.http.listen, "[::1]:8080".parse::<SocketAddr>().unwrap());
        assert_eq!(
            c.kafka
                .producer
                .get("message.max.bytes")
                .map(String::as_str),
            Some("2000")
        );
        assert_eq!(c.kafka.producer["acks"], "all", "YAML map entries are kept");
        assert_eq!(c.kafka.consumer["auto.offset.reset"], "earliest");
        assert_eq!(c.spool.max_bytes, 512 * 1024);
        assert_eq!(c.sink.flush_interval, Duration::from_secs(1));
    }

    #[test]
    fn numeric_env_strings_are_accepted() {
        let c = with_env(&[
            ("AUDIT_MANAGER__INGEST__MAX_BATCH_SIZE", "10"),
            ("AUDIT_MANAGER__KAFKA__TOPIC_PARTITIONS", " 3 "),
            ("AUDIT_MANAGER__KAFKA__TOPIC_REPLICATION", "-1"),
            ("AUDIT_MANAGER__DATABASE__PARTITION_RETENTION_MONTHS", "0"),
            ("AUDIT_MANAGER__HTTP__MAX_BODY_BYTES", "1234"),
        ])
        .unwrap();
        assert_eq!(c.ingest.max_batch_size, 10);
        assert_eq!(c.kafka.topic_partitions, 3);
        assert_eq!(c.kafka.topic_replication, -1);
        assert_eq!(c.database.partition_retention_months, 0);
        assert_eq!(c.http.max_body_bytes, 1234);

        let e = with_env(&[("AUDIT_MANAGER__INGEST__MAX_BATCH_SIZE", "ten")]).unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(e, ConfigError::Invalid { ref key, .. }
            if key == "audit_manager.ingest.max_batch_size"),
            "{msg}"
        );
        assert!(
            msg.contains("AUDIT_MANAGER__INGEST__MAX_BATCH_SIZE"),
            "{msg}"
        );
        let e =
            yaml("audit_manager:\n  database:\n    partition_retention_months: -1\n").unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
        let e = yaml("audit_manager:\n  kafka:\n    topic: 123\n").unwrap_err();
        assert!(e.to_string().contains("quote the value"), "{e}");
        let e = yaml("audit_manager:\n  kafka:\n    topic_partitions: 1.5\n").unwrap_err();
        assert!(
            e.to_string()
                .contains("audit_manager.kafka.topic_partitions"),
            "{e}"
        );
    }

    #[test]
    fn string_fields_stay_strings_with_numeric_env() {
        let c = with_env(&[
            ("AUDIT_MANAGER__KAFKA__TOPIC", "123"),
            ("AUDIT_MANAGER__KAFKA__CLIENT_ID", "1e3"),
            ("AUDIT_MANAGER__KAFKA__CONSUMER_GROUP", "true"),
            ("AUDIT_MANAGER__SPOOL__PATH", "0755"),
        ])
        .unwrap();
        assert_eq!(c.kafka.topic, "123");
        assert_eq!(c.kafka.client_id, "1e3");
        assert_eq!(c.kafka.consumer_group, "true");
        assert_eq!(c.spool.path, PathBuf::from("0755"));
    }

    #[test]
    fn unknown_key_in_yaml_names_full_path() {
        let e =
            Config::from_yaml_str("audit_manager:\n  spool:\n    max_byte: 5\n", &[]).unwrap_err();
        match &e {
            ConfigError::UnknownKey {
                key,
                expected,
                origin,
            } => {
                assert_eq!(key, "audit_manager.spool.max_byte");
                assert_eq!(
                    expected,
                    "path, max_bytes, max_pending_appends, retry_after"
                );
                assert_eq!(origin, "YAML input");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            e.to_string(),
            "unknown key audit_manager.spool.max_byte in YAML input; valid keys here: path, \
             max_bytes, max_pending_appends, retry_after"
        );
        let e = yaml("audit_manager:\n  nope: 1\n").unwrap_err();
        assert!(
            e.to_string().starts_with("unknown key audit_manager.nope "),
            "{e}"
        );
        assert!(e.to_string().contains("roles, http, ingest"), "{e}");
    }

    #[test]
    fn unknown_key_in_file_names_the_file() {
        let dir = std::env::temp_dir().join(format!("cfgtest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.yaml");
        std::fs::write(&p, "audit_manager:\n  sink:\n    batch_max: 1\n").unwrap();
        let e = Config::load_from(Some(&p), &[]).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("audit_manager.sink.batch_max"), "{msg}");
        assert!(msg.contains(&p.display().to_string()), "{msg}");
        // CONFIG_PATH is used when no path is given.
        std::fs::write(&p, "audit_manager:\n  sink:\n    batch_max_records: 7\n").unwrap();
        let c = Config::load_from(None, &env(&[("CONFIG_PATH", p.to_str().unwrap())])).unwrap();
        assert_eq!(c.sink.batch_max_records, 7);
        std::fs::remove_dir_all(&dir).unwrap();
        let e = Config::load_from(Some(&dir.join("missing.yaml")), &[]).unwrap_err();
        assert!(matches!(e, ConfigError::Io { .. }), "{e:?}");
        assert!(e.to_string().starts_with("cannot read config file "), "{e}");
    }

    #[test]
    fn unknown_key_in_env_names_full_path_and_variable() {
        let e = with_env(&[("AUDIT_MANAGER__NOPE", "1")]).unwrap_err();
        match &e {
            ConfigError::UnknownKey { key, origin, .. } => {
                assert_eq!(key, "audit_manager.nope");
                assert_eq!(origin, "environment variable AUDIT_MANAGER__NOPE");
            }
            other => panic!("unexpected {other:?}"),
        }
        let e = with_env(&[("AUDIT_MANAGER__SPOOL__MAX_BYTE", "1")]).unwrap_err();
        assert!(
            matches!(e, ConfigError::UnknownKey { ref key, .. }
            if key == "audit_manager.spool.max_byte"),
            "{e:?}"
        );
        let e = with_env(&[("AUDIT_MANAGER__HTTP____LISTEN", "1")]).unwrap_err();
        assert!(matches!(e, ConfigError::Env { .. }), "{e:?}");
    }

    #[test]
    fn missing_or_wrong_root_is_an_error() {
        let e = yaml("spool:\n  path: /x\n").unwrap_err();
        assert!(
            matches!(e, ConfigError::UnknownKey { ref key, .. } if key == "spool"),
            "{e:?}"
        );
        assert!(e.to_string().contains("audit_manager"), "{e}");
        let e = yaml("audit_manager: {}\nother: 1\n").unwrap_err();
        assert!(e.to_string().contains("unknown key other"), "{e}");
        let e = yaml("- a\n- b\n").unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }), "{e:?}");
        let e = yaml("audit_manager: 5\n").unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }), "{e:?}");
        let e = yaml("audit_manager:\n  http: [\n").unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }), "{e:?}");
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_byte_size("0"), Ok(0));
        assert_eq!(parse_byte_size("123"), Ok(123));
        assert_eq!(parse_byte_size("10B"), Ok(10));
        assert_eq!(parse_byte_size("512KiB"), Ok(524_288));
        assert_eq!(parse_byte_size("4MiB"), Ok(4_194_304));
        assert_eq!(parse_byte_size("1GiB"), Ok(1_073_741_824));
        assert_eq!(parse_byte_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_byte_size("2 kb"), Ok(2_000));
        assert_eq!(parse_byte_size("1MB"), Ok(1_000_000));
        assert_eq!(parse_byte_size("1.5KiB"), Ok(1536));
        assert!(parse_byte_size("1.1KiB").is_err());
        assert!(parse_byte_size("4 MiBs").is_err());
        assert!(parse_byte_size("MiB").is_err());
        assert!(parse_byte_size("").is_err());
        assert!(parse_byte_size("-1").is_err());
        assert!(parse_byte_size("1.2.3").is_err());
        assert!(parse_byte_size("99999999999TiB").is_err());
        assert_eq!(parse_byte_size("16777215TiB"), Ok(16_777_215u64 << 40));
        let e = yaml("audit_manager:\n  http:\n    max_body_bytes: 4XB\n").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("audit_manager.http.max_body_bytes") && msg.contains("4XB"),
            "{msg}"
        );
        let e = yaml("audit_manager:\n  http:\n    max_body_bytes: -5\n").unwrap_err();
        assert!(e.to_string().contains("negative"), "{e}");
    }

    #[test]
    fn durations() {
        let c = yaml(
            "audit_manager:\n  sink:\n    flush_interval: 250ms\n  database:\n    \
             partition_check_interval: 1h 30m\n",
        )
        .unwrap();
        assert_eq!(c.sink.flush_interval, Duration::from_millis(250));
        assert_eq!(
            c.database.partition_check_interval,
            Duration::from_secs(5400)
        );
        let e = yaml("audit_manager:\n  sink:\n    flush_interval: 5\n").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("audit_manager.sink.flush_interval") && msg.contains("unit"),
            "{msg}"
        );
        let e = with_env(&[("AUDIT_MANAGER__SPOOL__RETRY_AFTER", "soon")]).unwrap_err();
        assert!(
            e.to_string().contains("AUDIT_MANAGER__SPOOL__RETRY_AFTER"),
            "{e}"
        );
        let s = SpoolConfig {
            retry_after: Duration::from_secs(3),
            ..SpoolConfig::default()
        };
        assert_eq!(s.retry_after_secs(), 3);
    }

    #[test]
    fn roles_list_and_comma_string() {
        let c = yaml("audit_manager:\n  roles: [forward, ingest, forward]\n").unwrap();
        assert_eq!(c.roles, vec![Role::Forward, Role::Ingest]);
        let c = with_env(&[("AUDIT_MANAGER__ROLES", "ingest, forward,ingest")]).unwrap();
        assert_eq!(c.roles, vec![Role::Ingest, Role::Forward]);
        let c = yaml("audit_manager:\n  roles: sink,maintain\n").unwrap();
        assert_eq!(c.roles, vec![Role::Sink, Role::Maintain]);
        let e = with_env(&[("AUDIT_MANAGER__ROLES", "")]).unwrap_err();
        assert!(matches!(e, ConfigError::Invalid { ref key, .. } if key == "audit_manager.roles"));
        let e = yaml("audit_manager:\n  roles: []\n").unwrap_err();
        assert!(e.to_string().contains("at least one role"), "{e}");
        let e = yaml("audit_manager:\n  roles: [ingest, sinks]\n").unwrap_err();
        assert!(e.to_string().contains("unknown role `sinks`"), "{e}");
        assert_eq!("Maintain".parse::<Role>(), Ok(Role::Maintain));
        assert!("x".parse::<Role>().is_err());
        assert_eq!(Role::Forward.to_string(), "forward");
    }

    #[test]
    fn database_env_precedence_and_encoding() {
        let y = "audit_manager:\n  database:\n    url: postgres://yu:yp@yhost:6000/ydb?sslmode=require\n";
        // DB_* compose from the YAML url's missing parts.
        let c = Config::from_yaml_str(
            y,
            &env(&[
                ("DB_USER", "a@b"),
                ("DB_PASSWORD", "p:/?# ü"),
                ("DB_HOST", "h"),
            ]),
        )
        .unwrap();
        assert_eq!(
            c.database.url,
            "postgres://a%40b:p%3A%2F%3F%23%20%C3%BC@h:6000/ydb?sslmode=require"
        );
        // Without a YAML url: the built-in defaults; no password unless given.
        let c = with_env(&[("DB_NAME", "other")]).unwrap();
        assert_eq!(c.database.url, "postgres://postgres@localhost:5432/other");
        let c = with_env(&[("DB_PORT", "6432"), ("DB_PASSWORD", "s3cret")]).unwrap();
        assert_eq!(
            c.database.url,
            "postgres://postgres:s3cret@localhost:6432/auditmanager"
        );
        // DATABASE_URL beats DB_*.
        let c = Config::from_yaml_str(
            y,
            &env(&[("DB_HOST", "h"), ("DATABASE_URL", "postgres://d@dh/dd")]),
        )
        .unwrap();
        assert_eq!(c.database.url, "postgres://d@dh/dd");
        // AUDIT_MANAGER__DATABASE__URL beats everything.
        let c = Config::from_yaml_str(
            y,
            &env(&[
                ("AUDIT_MANAGER__DATABASE__URL", "postgres://top@t/t"),
                ("DB_HOST", "h"),
                ("DATABASE_URL", "postgres://d@dh/dd"),
            ]),
        )
        .unwrap();
        assert_eq!(c.database.url, "postgres://top@t/t");
        // Without any: YAML.
        assert_eq!(
            yaml(y).unwrap().database.url,
            "postgres://yu:yp@yhost:6000/ydb?sslmode=require"
        );
        let e = with_env(&[("DB_PORT", "abc")]).unwrap_err();
        assert!(
            matches!(e, ConfigError::Env { ref name, .. } if name == "DB_PORT"),
            "{e:?}"
        );
        let c = with_env(&[("DB_HOST", "::1")]).unwrap();
        assert_eq!(
            c.database.url,
            "postgres://postgres@[::1]:5432/auditmanager"
        );
        assert_eq!(percent_encode("aZ09-._~ /"), "aZ09-._~%20%2F");
    }

    #[test]
    fn pg_url_parsing() {
        let p = PgUrl::parse("postgresql://u:p@[::1]:5433/db?x=1");
        assert_eq!(p.user.as_deref(), Some("u"));
        assert_eq!(p.password.as_deref(), Some("p"));
        assert_eq!(p.host.as_deref(), Some("[::1]"));
        assert_eq!(p.port.as_deref(), Some("5433"));
        assert_eq!(p.name.as_deref(), Some("db"));
        assert_eq!(p.query.as_deref(), Some("x=1"));
        let p = PgUrl::parse("postgres://h");
        assert_eq!(p.host.as_deref(), Some("h"));
        assert_eq!(
            (p.user, p.password, p.port, p.name),
            (None, None, None, None)
        );
        assert_eq!(PgUrl::parse("garbage"), PgUrl::default());
    }

    #[test]
    fn redacted_json_hides_secrets() {
        let c = Config::from_yaml_str(
            r#"
audit_manager:
  database:
    url: "postgres://user:hunter2@db:5432/x?sslmode=require&password=hunter3"
  kafka:
    producer:
      sasl.password: hunter4
      sasl.jaas.config: hunter5
      ssl.key.location: /k
      acks: all
    consumer:
      oauthbearer.token: hunter6
      client.secret: hunter7
"#,
            &[],
        )
        .unwrap();
        let j = c.redacted_json();
        let text = j.to_string();
        for s in [
            "hunter2", "hunter3", "hunter4", "hunter5", "hunter6", "hunter7", "/k",
        ] {
            assert!(!text.contains(s), "{s} leaked: {text}");
        }
        assert_eq!(
            j["database"]["url"],
            "postgres://user:***@db:5432/x?sslmode=require&password=***"
        );
        assert_eq!(j["kafka"]["producer"]["acks"], "all");
        assert_eq!(j["kafka"]["producer"]["sasl.password"], "***");
        assert_eq!(j["http"]["max_body_bytes"], 4_194_304);
        assert_eq!(j["spool"]["retry_after"], "1s");
        assert_eq!(j["sink"]["flush_interval"], "200ms");
        assert_eq!(
            j["roles"],
            serde_json::json!(["ingest", "forward", "sink", "maintain"])
        );
        assert_eq!(j["http"]["listen"], "0.0.0.0:8000");
    }

    #[test]
    fn redact_url_forms() {
        assert_eq!(redact_url("postgres://u@h/d"), "postgres://u@h/d");
        assert_eq!(redact_url("postgres://u:p@h/d"), "postgres://u:***@h/d");
        assert_eq!(redact_url("postgres://u:p/@x@h/d"), "postgres://u:***@h/d");
        assert_eq!(
            redact_url("postgres://h/d?sslmode=disable"),
            "postgres://h/d?sslmode=disable"
        );
        assert_eq!(
            redact_url("host=h password=pw user=u"),
            "host=h password=*** user=u"
        );
    }

    #[test]
    fn debug_hides_password() {
        let mut c = Config::default();
        c.database.url = "postgres://user:topsecret@db/x".to_string();
        c.kafka
            .producer
            .insert("sasl.password".into(), "kafkasecret".into());
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("topsecret") && !dbg.contains("kafkasecret"),
            "{dbg}"
        );
        assert!(dbg.contains("postgres://user:***@db/x"), "{dbg}");
        assert!(format!("{:#?}", c.database).contains("partition_retention_months"));
    }

    #[test]
    fn validate_errors() {
        fn check(mutate: impl FnOnce(&mut Config), key: &str) {
            let mut c = Config::default();
            mutate(&mut c);
            match c.validate() {
                Err(ConfigError::Invalid { key: k, message }) => {
                    assert_eq!(k, key, "{message}");
                    assert!(!message.is_empty());
                }
                other => panic!("expected error for {key}, got {other:?}"),
            }
        }
        check(|c| c.roles.clear(), "audit_manager.roles");
        check(
            |c| c.ingest.max_batch_size = 0,
            "audit_manager.ingest.max_batch_size",
        );
        check(
            |c| c.http.max_body_bytes = 0,
            "audit_manager.http.max_body_bytes",
        );
        check(
            |c| c.ingest.max_event_bytes = 0,
            "audit_manager.ingest.max_event_bytes",
        );
        check(|c| c.spool.max_bytes = 0, "audit_manager.spool.max_bytes");
        check(
            |c| c.spool.max_pending_appends = 0,
            "audit_manager.spool.max_pending_appends",
        );
        check(|c| c.kafka.topic = " ".into(), "audit_manager.kafka.topic");
        check(
            |c| c.kafka.dlq_topic.clear(),
            "audit_manager.kafka.dlq_topic",
        );
        check(
            |c| c.kafka.dlq_topic = c.kafka.topic.clone(),
            "audit_manager.kafka.dlq_topic",
        );
        check(
            |c| c.kafka.topic_partitions = 0,
            "audit_manager.kafka.topic_partitions",
        );
        check(
            |c| c.kafka.topic_replication = 0,
            "audit_manager.kafka.topic_replication",
        );
        check(
            |c| c.sink.batch_max_records = 0,
            "audit_manager.sink.batch_max_records",
        );
        check(
            |c| c.database.partition_pre_create_months = 0,
            "audit_manager.database.partition_pre_create_months",
        );
        // load* validates too.
        let e = with_env(&[("AUDIT_MANAGER__SINK__BATCH_MAX_RECORDS", "0")]).unwrap_err();
        assert!(e.to_string().contains("at least 1"), "{e}");
    }
}
