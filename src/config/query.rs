//! The investigators' read API (`audit_manager.query`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::error::{at_least_one, invalid};
use super::value::{de_bool, de_duration, de_int};

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

impl QueryConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        at_least_one("query.max_page_size", self.max_page_size as u64)?;
        if self.statement_timeout.is_zero() {
            return Err(invalid(
                "query.statement_timeout",
                "must be longer than 0s (0 would disable the timeout); e.g. \"10s\"".to_string(),
            ));
        }
        Ok(())
    }
}
