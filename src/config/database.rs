//! PostgreSQL connection and partition maintenance (`audit_manager.database`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::{at_least_one, invalid, non_empty};
use super::value::{de_duration, de_int};
use super::{ConfigError, Redacted};

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

impl DatabaseConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        non_empty("database.url", &self.url)?;
        // The same reading of the URL every connection uses (TLS parameters included);
        // dropped parameters are named by the store when it connects.
        if let Err(e) = super::database_url::connect_options(&self.url) {
            return Err(invalid("database.url", e.to_string()));
        }
        at_least_one(
            "database.partition_pre_create_months",
            self.partition_pre_create_months,
        )
    }
}
