//! Service configuration for audit-manager.
//!
//! # Layering
//!
//! The effective configuration is built from these layers, lowest first (figment merges them
//! and remembers which one set each value, so errors name the file or variable to fix):
//!
//! 1. **Built-in defaults** — [`Config::default()`]; `config/default.yaml` documents every key
//!    with its default value (a unit test keeps the two in sync).
//! 2. **`UVICORN_HOST`/`UVICORN_PORT`** — the reference service's listener variables set
//!    `http.listen` when nothing above does.
//! 3. **YAML file** — the path given on the command line, else `$CONFIG_PATH` if set. Every
//!    setting lives under the root key `audit_manager:`; an empty file (or an empty root)
//!    means "all defaults", and a key whose value is empty (`~`/nothing) also keeps its default.
//! 4. **Database variables of the reference service** — see below.
//! 5. **Environment variables** — `AUDIT_MANAGER__SECTION__KEY=value` overrides
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
//! The reference service's own keys (`service_id`, `api_version`, `ingest.queue_max_size`,
//! its `kafka.producer`/`kafka.consumer` settings, …) are accepted and mapped; see
//! [`reference`]. `GIT_COMMIT`/`BUILD_TIME` override what `GET /version` reports.
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
//!
//! # Secrets
//!
//! Settings that can hold a secret are [`Redacted`]: `Debug` and `GET /config`
//! ([`Config::redacted_json`]) show them masked, and both are derived.

mod kafka;
pub mod redact;
pub mod reference;
mod sources;
mod value;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use figment::Figment;
use serde::{Deserialize, Serialize};

pub use redact::{Redacted, redact_url};
pub use reference::Notice;
pub use value::parse_byte_size;
use value::{de_bool, de_byte_size, de_duration, de_int, de_roles, de_socket_addr, de_string_map};

/// Root key of the YAML file; every setting lives below it.
pub const ROOT_KEY: &str = "audit_manager";
/// Prefix of the environment variables that override settings.
pub const ENV_PREFIX: &str = "AUDIT_MANAGER__";
/// Environment variable naming the config file when no path is given explicitly.
pub const CONFIG_PATH_ENV: &str = "CONFIG_PATH";

/// librdkafka properties (`kafka.producer` / `kafka.consumer`); secret-looking values are
/// masked in `Debug` and `GET /config`.
pub type KafkaProperties = Redacted<BTreeMap<String, String>>;

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
    /// The investigators' read API and page (never a default: it runs where it is asked for).
    Query,
}

impl Role {
    /// All roles, in their canonical order.
    pub const ALL: [Role; 5] = [
        Role::Ingest,
        Role::Forward,
        Role::Sink,
        Role::Maintain,
        Role::Query,
    ];
    /// The roles a process runs when `roles` is not set: the whole write pipeline. The read
    /// API (`query`) is opt-in, so it can live behind its own boundary.
    pub const DEFAULT: [Role; 4] = [Role::Ingest, Role::Forward, Role::Sink, Role::Maintain];

    /// The lowercase name used in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Ingest => "ingest",
            Role::Forward => "forward",
            Role::Sink => "sink",
            Role::Maintain => "maintain",
            Role::Query => "query",
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
            "unknown role `{}` (valid roles: ingest, forward, sink, maintain, query)",
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
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
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
    /// Spool -> Kafka forwarding.
    pub forward: ForwardConfig,
    /// Kafka -> PostgreSQL sink batching.
    pub sink: SinkConfig,
    /// PostgreSQL connection and partition maintenance.
    pub database: DatabaseConfig,
    /// Who may call the API: `none`, bearer tokens or client certificates.
    pub auth: AuthConfig,
    /// The investigators' read API (role `query`).
    pub query: QueryConfig,
    /// Tamper evidence: sealing stored rows and verifying them.
    pub integrity: IntegrityConfig,
    /// The `id` of every response envelope (the reference service's `service_id`).
    /// Default `openg2p.auditmanager`.
    pub service_id: String,
    /// The `version` of every response envelope (the reference service's `api_version`).
    /// Default `1.0`.
    pub api_version: String,
    /// `GIT_COMMIT` / `BUILD_TIME` from the environment: what `GET /version` reports instead
    /// of the values stamped at build time (images built outside git set them).
    #[serde(skip)]
    pub build_info: BuildInfo,
}

/// Build identity overrides for `GET /version` (not a YAML key).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildInfo {
    /// `GIT_COMMIT`, if set.
    pub git_commit: Option<String>,
    /// `BUILD_TIME`, if set.
    pub build_time: Option<String>,
}

/// HTTP server settings (`audit_manager.http`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address and port the HTTP server binds to. Default `0.0.0.0:8000`, or
    /// `UVICORN_HOST:UVICORN_PORT` when those are set.
    #[serde(deserialize_with = "de_socket_addr")]
    pub listen: SocketAddr,
    /// Largest accepted request body in bytes (byte size); larger bodies get 413.
    /// Default `4MiB`.
    #[serde(deserialize_with = "de_byte_size")]
    pub max_body_bytes: u64,
    /// Bytes of ingest request bodies held at once by the whole process, from the moment a
    /// request announces (`Content-Length`) or delivers them until it is answered; a request
    /// that does not fit gets 503 AUD-004 at once. Bounds the memory a flood of batches can
    /// take (a batch costs about 3.3 bytes more per body byte while it is decoded and spooled,
    /// see `docs/memory.md`). At least `max_body_bytes`. Default `8MiB`.
    #[serde(deserialize_with = "de_byte_size")]
    pub max_in_flight_bytes: u64,
    /// Longest a client may take to send a request's complete headers (duration), counted
    /// from when the connection is ready or its previous answer was sent; the connection is
    /// then closed without an answer (so idle keep-alive connections close after it too). The
    /// TLS handshake has the same bound of its own. Default `10s`.
    #[serde(
        deserialize_with = "de_duration",
        serialize_with = "humantime_serde::serialize"
    )]
    pub header_timeout: Duration,
    /// Longest an ingest request's body may take to arrive once its headers have (duration);
    /// a body still incomplete is answered 408 AUD-408, nothing of it is stored and the bytes
    /// it held in `max_in_flight_bytes` are given back. Default `30s`.
    #[serde(
        deserialize_with = "de_duration",
        serialize_with = "humantime_serde::serialize"
    )]
    pub body_timeout: Duration,
    /// Connections served at once (TLS handshakes included); further ones wait in the
    /// kernel's listen backlog until one closes. Default `10000`.
    #[serde(deserialize_with = "de_int")]
    pub max_connections: usize,
    /// On SIGTERM/SIGINT: how long requests in flight may still take to finish (duration);
    /// their connections are then cut. A cut request was not answered 202, so its client
    /// retries; everything answered 202 is in the spool either way. Keep it below the
    /// orchestrator's grace period (Kubernetes `terminationGracePeriodSeconds`, 30s by
    /// default). Default `20s`.
    #[serde(
        deserialize_with = "de_duration",
        serialize_with = "humantime_serde::serialize"
    )]
    pub shutdown_grace: Duration,
    /// TLS on the listener (plain HTTP when `cert_file` is not set).
    pub tls: TlsConfig,
}

/// TLS on the HTTP listener (`audit_manager.http.tls`). The files are re-read when they change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the server certificate chain (leaf first). Setting it (with `key_file`)
    /// turns TLS on. Default: none (plain HTTP).
    pub cert_file: Option<PathBuf>,
    /// PEM file with the server certificate's private key (PKCS#8, PKCS#1 or SEC1).
    /// Default: none.
    pub key_file: Option<PathBuf>,
    /// PEM file with the CA certificate(s) client certificates must chain to: enables mutual
    /// TLS (requires `auth.mode: mtls`). Default: none.
    pub client_ca_file: Option<PathBuf>,
}

impl TlsConfig {
    /// Whether the listener speaks TLS.
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some()
    }
}

/// How requests are authenticated (`audit_manager.auth`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// No authentication (rely on the network or mesh); the reference's behaviour.
    #[default]
    None,
    /// `Authorization: Bearer <token>`, tokens hashed in `auth.tokens_file`.
    Token,
    /// Client certificates (`http.tls.client_ca_file`), mapped to principals by DNS SAN.
    Mtls,
}

impl AuthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::None => "none",
            AuthMode::Token => "token",
            AuthMode::Mtls => "mtls",
        }
    }
}

/// Authentication settings (`audit_manager.auth`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `none`, `token` or `mtls`. Default `none`.
    pub mode: AuthMode,
    /// YAML file listing the principals (token hashes, DNS SANs, allowed sources); re-read when
    /// it changes. Required with `token` and `mtls`. Default: none.
    pub tokens_file: Option<PathBuf>,
}

/// Event ingest limits (`audit_manager.ingest`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Maximum number of events in one batch request. Default `500`.
    #[serde(deserialize_with = "de_int")]
    pub max_batch_size: usize,
    /// How far in the future an event's timestamp may lie before it is rejected (duration).
    /// Default `1h`.
    #[serde(
        deserialize_with = "de_duration",
        serialize_with = "humantime_serde::serialize"
    )]
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
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpoolConfig {
    /// Directory holding the spool file. Default `./data/spool`.
    pub path: PathBuf,
    /// Live spooled bytes (byte size) above which ingest answers 503. Default `1GiB`.
    #[serde(deserialize_with = "de_byte_size")]
    pub max_bytes: u64,
    /// Memory for redb's page cache of the spool file (byte size). Each event is written once
    /// and read once shortly after, so a small cache costs little; reads beyond it come from
    /// the operating system's page cache. Default `16MiB`.
    #[serde(deserialize_with = "de_byte_size")]
    pub cache_bytes: u64,
    /// Append requests queued for the group-commit writer before new ones get 503 (overload).
    /// The reference's `ingest.queue_max_size` sets it. Default `4096`.
    #[serde(deserialize_with = "de_int")]
    pub max_pending_appends: usize,
    /// Bytes of encoded appends (byte size) queued for the group-commit writer before new ones
    /// get 503 (overload): bounds the memory the queue can hold, which `max_pending_appends`
    /// cannot (a 500-event batch is ~400 KB). Default `64MiB`.
    #[serde(deserialize_with = "de_byte_size")]
    pub max_pending_bytes: u64,
    /// Value of `Retry-After` on 503 responses (duration; rounded up to whole seconds when
    /// rendered, see [`SpoolConfig::retry_after_secs`]). Default `1s`.
    #[serde(
        deserialize_with = "de_duration",
        serialize_with = "humantime_serde::serialize"
    )]
    pub retry_after: Duration,
}

/// Kafka settings (`audit_manager.kafka`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
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
    /// into their string form; `linger_ms` is `linger.ms`). Default: none.
    #[serde(deserialize_with = "de_string_map")]
    pub producer: KafkaProperties,
    /// Extra librdkafka consumer properties, same format as `producer`. Default: none.
    #[serde(deserialize_with = "de_string_map")]
    pub consumer: KafkaProperties,
}

/// Spool -> Kafka forwarding (`audit_manager.forward`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForwardConfig {
    /// Bytes (key + value, byte size) of events handed to the Kafka producer and not yet
    /// acknowledged by the broker. The forwarder stops reading the spool while they are out,
    /// and librdkafka's own queue (`queue.buffering.max.kbytes`) is sized from it, so a slow or
    /// unreachable broker leaves events in the spool on disk, not in memory. At least
    /// `ingest.max_event_bytes`. Default `16MiB`.
    #[serde(deserialize_with = "de_byte_size")]
    pub max_in_flight_bytes: u64,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        ForwardConfig {
            max_in_flight_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Kafka -> PostgreSQL sink batching (`audit_manager.sink`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SinkConfig {
    /// Maximum number of records written to PostgreSQL in one batch. Default `5000`.
    #[serde(deserialize_with = "de_int")]
    pub batch_max_records: usize,
    /// Bytes (key + value as consumed, byte size) of the records in one batch: a batch is
    /// written once it holds this much, and at most this much more is consumed and decoded
    /// ahead while it is being written. With the consumer's prefetch
    /// (`kafka.consumer.queued.max.messages.kbytes`) this bounds the sink's memory whatever the
    /// size of the events. Default `8MiB`.
    #[serde(deserialize_with = "de_byte_size")]
    pub batch_max_bytes: u64,
    /// Longest time a partial batch waits before it is flushed (duration). Default `200ms`.
    #[serde(
        deserialize_with = "de_duration",
        serialize_with = "humantime_serde::serialize"
    )]
    pub flush_interval: Duration,
}

/// PostgreSQL settings (`audit_manager.database`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Connection URL, `postgres://user:password@host:port/dbname`. Secret-bearing: it is
    /// redacted in logs and in `GET /config`. Also settable through `DATABASE_URL` and the
    /// `DB_HOST`/`DB_PORT`/`DB_NAME`/`DB_USER`/`DB_PASSWORD` variables.
    /// Default `postgres://postgres@localhost:5432/auditmanager`.
    pub url: Redacted<String>,
    /// Monthly partitions kept created ahead: the current month plus N-1 following ones.
    /// Default `3`.
    #[serde(deserialize_with = "de_int")]
    pub partition_pre_create_months: u32,
    /// Months of partitions kept before old ones are dropped (`0` = never drop). Default `84`.
    #[serde(deserialize_with = "de_int")]
    pub partition_retention_months: u32,
    /// How often partition maintenance runs (duration). Default `1h`.
    #[serde(
        deserialize_with = "de_duration",
        serialize_with = "humantime_serde::serialize"
    )]
    pub partition_check_interval: Duration,
}

/// The investigators' read API (`audit_manager.query`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueryConfig {
    /// Largest `limit` a page may ask for. Default `1000`.
    #[serde(deserialize_with = "de_int")]
    pub max_page_size: usize,
    /// `statement_timeout` of every query statement (duration). Default `10s`.
    #[serde(
        deserialize_with = "de_duration",
        serialize_with = "humantime_serde::serialize"
    )]
    pub statement_timeout: Duration,
    /// Lets the `query` role start without reader credentials (`auth.mode: none`): every
    /// caller can then read every event. Default `false`.
    #[serde(deserialize_with = "de_bool")]
    pub allow_anonymous: bool,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            max_page_size: 1000,
            statement_timeout: Duration::from_secs(10),
            allow_anonymous: false,
        }
    }
}

/// Tamper evidence (`audit_manager.integrity`); see `docs/integrity.md`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct IntegrityConfig {
    /// The sealer's ed25519 signing key (from `audit-manager keygen`), used by the maintain
    /// role. Without it nothing is sealed (a warning at start). Default: none.
    pub signing_key_file: Option<PathBuf>,
    /// Public keys (`FILE.pub` from `keygen`) that `verify` trusts; keys stored in the
    /// database are never trusted. List every key that ever signed (rotation). Default: none.
    pub public_key_files: Vec<PathBuf>,
    /// How often stored rows are sealed (duration). Default `1m`.
    #[serde(
        deserialize_with = "de_duration",
        serialize_with = "humantime_serde::serialize"
    )]
    pub seal_interval: Duration,
    /// Kafka topic every seal is also published to (the off-database copy).
    /// Default `openg2p.audit.seals`; `""` publishes no seal (then set `seal_dir`).
    pub seal_topic: String,
    /// Off-database copy of every seal as files, one per seal (used when there is no Kafka;
    /// `verify --seals-from-dir DIR` checks against it). The sealer also reads its newest seal
    /// at start, and refuses to seal over a database whose seals were deleted. Default: none.
    pub seal_dir: Option<PathBuf>,
    /// The writer key (from `audit-manager keygen`) of the processes that store rows (the
    /// sink): every storing transaction is attested (signed) with it. Held by those processes
    /// only, never by the database. Default: none (rows are stored unattested).
    pub writer_key_file: Option<PathBuf>,
    /// Public keys (`FILE.pub` of every writer key, past and present) whose attestations the
    /// sealer and `verify` accept. Empty: the sealer seals rows without checking attestation
    /// (a warning at start) and `verify` does not check it. Default: none.
    pub writer_public_key_files: Vec<PathBuf>,
}

impl Default for IntegrityConfig {
    fn default() -> Self {
        IntegrityConfig {
            signing_key_file: None,
            public_key_files: Vec::new(),
            seal_interval: Duration::from_secs(60),
            seal_topic: "openg2p.audit.seals".to_string(),
            seal_dir: None,
            writer_key_file: None,
            writer_public_key_files: Vec::new(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            roles: Role::DEFAULT.to_vec(),
            http: HttpConfig::default(),
            auth: AuthConfig::default(),
            ingest: IngestConfig::default(),
            spool: SpoolConfig::default(),
            kafka: KafkaConfig::default(),
            forward: ForwardConfig::default(),
            sink: SinkConfig::default(),
            database: DatabaseConfig::default(),
            query: QueryConfig::default(),
            integrity: IntegrityConfig::default(),
            service_id: "openg2p.auditmanager".to_string(),
            api_version: "1.0".to_string(),
            build_info: BuildInfo::default(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8000)),
            max_body_bytes: 4 * 1024 * 1024,
            max_in_flight_bytes: 8 * 1024 * 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            shutdown_grace: Duration::from_secs(20),
            tls: TlsConfig::default(),
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
            cache_bytes: 16 * 1024 * 1024,
            max_pending_appends: 4096,
            max_pending_bytes: 64 * 1024 * 1024,
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
            producer: KafkaProperties::default(),
            consumer: KafkaProperties::default(),
        }
    }
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            batch_max_records: 5000,
            batch_max_bytes: 8 * 1024 * 1024,
            flush_interval: Duration::from_millis(200),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: "postgres://postgres@localhost:5432/auditmanager".into(),
            partition_pre_create_months: 3,
            partition_retention_months: 84,
            partition_check_interval: Duration::from_secs(3600),
        }
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
    /// [validates](Config::validate) the result. What the loader changed on the way (the
    /// reference service's keys, safety overrides) is logged.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let env = sources::process_env()?;
        Self::load_from(path, &env)
    }

    /// Same as [`Config::load`], but with an explicit environment (no process environment
    /// access). `CONFIG_PATH` is looked up in `env` when `path` is `None`.
    pub fn load_from(path: Option<&Path>, env: &[(String, String)]) -> Result<Config, ConfigError> {
        let (config, notices) = Self::load_with_notices(path, env)?;
        for n in &notices {
            n.log();
        }
        Ok(config)
    }

    /// [`Config::load_from`] without logging: the configuration and what the loader had to
    /// tell the operator about it.
    pub fn load_with_notices(
        path: Option<&Path>,
        env: &[(String, String)],
    ) -> Result<(Config, Vec<Notice>), ConfigError> {
        let (text, origin) = sources::read_file(path, env)?;
        build(&text, &origin, env)
    }

    /// Parses YAML text (with the `audit_manager:` root) and overlays `env`, then validates.
    pub fn from_yaml_str(yaml: &str, env: &[(String, String)]) -> Result<Config, ConfigError> {
        build(yaml, "YAML input", env).map(|(c, _)| c)
    }

    /// Non-secret effective configuration as JSON (for `GET /config`): byte sizes as integers,
    /// durations as humantime strings, the database password and secret-looking query
    /// parameters and Kafka properties replaced by `"***"` (all derived: see [`Redacted`]),
    /// plus the reference service's key names with the values they stand for here.
    pub fn redacted_json(&self) -> serde_json::Value {
        let mut json = serde_json::to_value(self).unwrap_or_else(|e| {
            // Only a map with non-string keys could fail, and the config has none.
            serde_json::json!({ "error": format!("cannot render the configuration: {e}") })
        });
        reference::show_aliases(self, &mut json);
        json
    }

    /// The secret values this configuration holds (the database password and secret query
    /// parameters, secret Kafka properties), for [`redact::remember_secrets`].
    pub fn secret_values(&self) -> Vec<String> {
        let mut out = redact::url_secret_values(&self.database.url);
        out.extend(redact::property_secret_values(&self.kafka.producer));
        out.extend(redact::property_secret_values(&self.kafka.consumer));
        out
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
                "must name at least one role (allowed: ingest, forward, sink, maintain, query)"
                    .to_string(),
            ));
        }
        if self.has_role(Role::Query) && !self.has_role(Role::Forward) {
            return Err(invalid(
                "roles",
                "the query role records every query as an audit event through the local spool, \
                 which the forward role delivers: add `forward` (e.g. roles: [query, forward])"
                    .to_string(),
            ));
        }
        at_least_one("query.max_page_size", self.query.max_page_size as u64)?;
        if self.query.statement_timeout.is_zero() {
            return Err(invalid(
                "query.statement_timeout",
                "must be longer than 0s (0 would disable the timeout); e.g. \"10s\"".to_string(),
            ));
        }
        at_least_one("http.max_body_bytes", self.http.max_body_bytes)?;
        if self.http.max_in_flight_bytes < self.http.max_body_bytes {
            return Err(invalid(
                "http.max_in_flight_bytes",
                format!(
                    "must be at least http.max_body_bytes ({} bytes), or a request of the \
                     largest allowed size could never be accepted (got {} bytes)",
                    self.http.max_body_bytes, self.http.max_in_flight_bytes
                ),
            ));
        }
        for (key, d) in [
            ("http.header_timeout", self.http.header_timeout),
            ("http.body_timeout", self.http.body_timeout),
        ] {
            if d.is_zero() {
                return Err(invalid(
                    key,
                    "must be longer than 0s (0 would close every connection at once); e.g. \"10s\""
                        .to_string(),
                ));
            }
        }
        at_least_one("http.max_connections", self.http.max_connections as u64)?;
        at_least_one("ingest.max_batch_size", self.ingest.max_batch_size as u64)?;
        at_least_one("ingest.max_event_bytes", self.ingest.max_event_bytes)?;
        at_least_one("spool.max_bytes", self.spool.max_bytes)?;
        at_least_one("spool.cache_bytes", self.spool.cache_bytes)?;
        at_least_one(
            "spool.max_pending_appends",
            self.spool.max_pending_appends as u64,
        )?;
        at_least_one("spool.max_pending_bytes", self.spool.max_pending_bytes)?;
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
        kafka::check_properties("producer", &self.kafka.producer)?;
        kafka::check_properties("consumer", &self.kafka.consumer)?;
        at_least_one("sink.batch_max_records", self.sink.batch_max_records as u64)?;
        at_least_one("sink.batch_max_bytes", self.sink.batch_max_bytes)?;
        if self.forward.max_in_flight_bytes < self.ingest.max_event_bytes {
            return Err(invalid(
                "forward.max_in_flight_bytes",
                format!(
                    "must be at least ingest.max_event_bytes ({} bytes), or the largest event \
                     could never be sent (got {} bytes)",
                    self.ingest.max_event_bytes, self.forward.max_in_flight_bytes
                ),
            ));
        }
        non_empty("database.url", &self.database.url)?;
        // The same reading of the URL every connection uses (TLS parameters included);
        // dropped parameters are named by the store when it connects.
        if let Err(e) = crate::store::connect_options(&self.database.url) {
            return Err(invalid("database.url", e.to_string()));
        }
        at_least_one(
            "database.partition_pre_create_months",
            self.database.partition_pre_create_months,
        )?;
        if self.integrity.seal_interval.is_zero() {
            return Err(invalid(
                "integrity.seal_interval",
                "must be longer than 0 (e.g. \"1m\")".to_string(),
            ));
        }
        non_empty("service_id", &self.service_id)?;
        non_empty("api_version", &self.api_version)?;
        self.validate_auth()
    }

    /// `auth.*` and `http.tls.*` together: each mode names what it still needs.
    fn validate_auth(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: format!("{ROOT_KEY}.{key}"),
            message,
        };
        let tls = &self.http.tls;
        let empty = |p: &Option<PathBuf>| p.as_ref().is_some_and(|p| p.as_os_str().is_empty());
        for (key, p) in [
            ("auth.tokens_file", &self.auth.tokens_file),
            ("http.tls.cert_file", &tls.cert_file),
            ("http.tls.key_file", &tls.key_file),
            ("http.tls.client_ca_file", &tls.client_ca_file),
        ] {
            if empty(p) {
                return Err(invalid(
                    key,
                    "must not be empty: give a file path or leave the key out".into(),
                ));
            }
        }
        match (&tls.cert_file, &tls.key_file) {
            (Some(_), None) => {
                return Err(invalid(
                    "http.tls.key_file",
                    "http.tls.cert_file is set but the key is not: set http.tls.key_file to the \
                     PEM private key of the certificate (or remove cert_file for plain HTTP)"
                        .into(),
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "http.tls.cert_file",
                    "http.tls.key_file is set but the certificate is not: set \
                     http.tls.cert_file to the PEM certificate chain (or remove key_file)"
                        .into(),
                ));
            }
            _ => {}
        }
        if tls.client_ca_file.is_some() && !tls.enabled() {
            return Err(invalid(
                "http.tls.client_ca_file",
                "client certificates are verified during the TLS handshake, so TLS must be on: \
                 set http.tls.cert_file and http.tls.key_file too"
                    .into(),
            ));
        }
        match self.auth.mode {
            AuthMode::None => {
                if tls.client_ca_file.is_some() {
                    return Err(invalid(
                        "http.tls.client_ca_file",
                        "verifies client certificates, but auth.mode is `none`, which would \
                         ignore who they name: set auth.mode: mtls (and auth.tokens_file with \
                         the principals' dns_san), or remove client_ca_file"
                            .into(),
                    ));
                }
            }
            AuthMode::Token => {
                if self.auth.tokens_file.is_none() {
                    return Err(invalid(
                        "auth.tokens_file",
                        "auth.mode is `token`: set auth.tokens_file to the YAML file listing \
                         the principals and their token_sha256 (see docs/authentication.md)"
                            .into(),
                    ));
                }
                if tls.client_ca_file.is_some() {
                    return Err(invalid(
                        "http.tls.client_ca_file",
                        "verifies client certificates, which only auth.mode `mtls` maps to \
                         principals: set auth.mode: mtls, or remove client_ca_file to \
                         authenticate by token"
                            .into(),
                    ));
                }
            }
            AuthMode::Mtls => {
                if !tls.enabled() {
                    return Err(invalid(
                        "http.tls.cert_file",
                        "auth.mode is `mtls`: set http.tls.cert_file, http.tls.key_file and \
                         http.tls.client_ca_file (client certificates need TLS)"
                            .into(),
                    ));
                }
                if tls.client_ca_file.is_none() {
                    return Err(invalid(
                        "http.tls.client_ca_file",
                        "auth.mode is `mtls`: set http.tls.client_ca_file to the PEM CA that \
                         signs the client certificates"
                            .into(),
                    ));
                }
                if self.auth.tokens_file.is_none() {
                    return Err(invalid(
                        "auth.tokens_file",
                        "auth.mode is `mtls`: set auth.tokens_file to the YAML file mapping \
                         each client certificate's DNS SAN (dns_san) to a principal"
                            .into(),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Defaults < UVICORN_* < YAML < DB_* / DATABASE_URL < AUDIT_MANAGER__*, extracted with
/// provenance, then the reference service's keys mapped and the result validated.
fn build(
    yaml: &str,
    origin: &str,
    env: &[(String, String)],
) -> Result<(Config, Vec<Notice>), ConfigError> {
    let file = sources::yaml_layer(yaml, origin)?;
    let database = sources::database_layer(&file, env)?;
    let mut layers: Vec<_> = sources::uvicorn_layer(env).into_iter().collect();
    layers.push(file);
    layers.extend(database);
    layers.push(sources::env_layer(env)?);
    let aliases = reference::take_aliases(&mut layers);
    let figment = layers
        .into_iter()
        .fold(Figment::new(), |f, layer| f.merge(layer));
    let mut config: Config = figment
        .extract()
        .map_err(|e| sources::explain(e, &figment, origin))?;
    let notices = reference::apply(&mut config, &figment, aliases)?;
    config.build_info = BuildInfo {
        git_commit: sources::env_get(env, "GIT_COMMIT").map(str::to_string),
        build_time: sources::env_get(env, "BUILD_TIME").map(str::to_string),
    };
    // Validation errors may quote values: secrets are known to the log before it runs.
    redact::remember_secrets(config.secret_values());
    config.validate()?;
    Ok((config, notices))
}

#[cfg(test)]
mod tests;
