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
//! [`Config::validate`] then checks ranges (each section in its own file, with its own
//! `validate`) and cross-field sanity.
//!
//! # Secrets
//!
//! Settings that can hold a secret are [`Redacted`]: `Debug` and `GET /config`
//! ([`Config::redacted_json`]) show them masked, and both are derived.

pub mod archive;
mod auth;
mod database;
mod database_url;
mod error;
mod forward;
mod http;
mod ingest;
mod integrity;
mod kafka;
mod privacy;
mod query;
pub mod redact;
pub mod reference;
mod role;
mod sink;
mod sources;
mod spool;
mod value;

use std::collections::BTreeMap;
use std::path::Path;

use figment::Figment;
use serde::{Deserialize, Serialize};

pub use archive::ArchiveConfig;
pub use auth::{AuthConfig, AuthMode};
pub use database::DatabaseConfig;
pub use database_url::{Parsed, UrlError, connect_options};
pub use error::ConfigError;
pub use forward::{ForwardConfig, ForwardSettings, ForwardTarget};
pub use http::{HttpConfig, TlsConfig};
pub use ingest::IngestConfig;
pub use integrity::IntegrityConfig;
pub use kafka::KafkaConfig;
pub use privacy::{PrivacyAction, PrivacyConfig, PrivacyRuleConfig};
pub use query::QueryConfig;
pub use redact::{Redacted, redact_url};
pub use reference::Notice;
pub use role::{Role, UnknownRole};
pub use sink::SinkConfig;
pub use spool::SpoolConfig;
pub use value::parse_byte_size;

use error::{invalid, non_empty};
use value::de_roles;

/// Root key of the YAML file; every setting lives below it.
pub const ROOT_KEY: &str = "audit_manager";
/// Prefix of the environment variables that override settings.
pub const ENV_PREFIX: &str = "AUDIT_MANAGER__";
/// Environment variable naming the config file when no path is given explicitly.
pub const CONFIG_PATH_ENV: &str = "CONFIG_PATH";

/// librdkafka properties (`kafka.producer` / `kafka.consumer`); secret-looking values are
/// masked in `Debug` and `GET /config`.
pub type KafkaProperties = Redacted<BTreeMap<String, String>>;

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
    /// Archives of closed months in object storage (Parquet, seals, signed manifests).
    pub archive: ArchiveConfig,
    /// Personal data in events: rules applied at ingest and the keys they use.
    pub privacy: PrivacyConfig,
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
            archive: ArchiveConfig::default(),
            privacy: PrivacyConfig::default(),
            service_id: "openg2p.auditmanager".to_string(),
            api_version: "1.0".to_string(),
            build_info: BuildInfo::default(),
        }
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

    /// The seal topic the sealer publishes to: `integrity.seal_topic`, or none (`""`) in
    /// Kafka-less mode (`forward.target: postgres`), where `integrity.seal_dir` keeps the copy.
    pub fn seal_topic(&self) -> &str {
        match self.forward.target {
            ForwardTarget::Kafka => &self.integrity.seal_topic,
            ForwardTarget::Postgres => "",
        }
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
        if let Some(url) = &self.privacy.keys_database_url {
            out.extend(redact::url_secret_values(url));
        }
        out
    }

    /// Checks ranges and cross-field sanity (called by the `load*` functions): each section
    /// checks itself, this adds what spans sections. The first problem found is reported, in
    /// this order: roles, query, http, ingest, spool, kafka, sink, forward, database,
    /// integrity, the envelope, then auth with the listener's TLS.
    pub fn validate(&self) -> Result<(), ConfigError> {
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
        self.query.validate()?;
        self.http.validate()?;
        self.ingest.validate()?;
        self.spool.validate()?;
        self.kafka.validate()?;
        self.sink.validate()?;
        self.forward.validate_roles(self.has_role(Role::Sink))?;
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
        self.database.validate()?;
        self.integrity.validate()?;
        self.archive.validate()?;
        self.privacy.validate()?;
        non_empty("service_id", &self.service_id)?;
        non_empty("api_version", &self.api_version)?;
        // Who may call and how the listener proves it: each mode names what it still needs.
        self.auth.validate()?;
        self.http.tls.validate()?;
        self.auth.validate_with_tls(&self.http.tls)
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
    // Kafka-less mode without `roles`: the default pipeline, less the sink it has no use for.
    if config.forward.target == ForwardTarget::Postgres && !figment.contains("roles") {
        config.roles.retain(|r| *r != Role::Sink);
    }
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
