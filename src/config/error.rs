//! Why the configuration could not be loaded.

use std::path::PathBuf;

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

/// A value out of range at `key` (below the root key, e.g. `spool.max_bytes`).
pub(super) fn invalid(key: &str, message: String) -> ConfigError {
    ConfigError::Invalid {
        key: format!("{}.{key}", super::ROOT_KEY),
        message,
    }
}

/// `v` at `key` must be at least 1.
pub(super) fn at_least_one<T: PartialOrd + From<u8> + std::fmt::Display>(
    key: &str,
    v: T,
) -> Result<(), ConfigError> {
    if v < T::from(1) {
        return Err(invalid(key, format!("must be at least 1 (got {v})")));
    }
    Ok(())
}

/// `v` at `key` must hold more than whitespace.
pub(super) fn non_empty(key: &str, v: &str) -> Result<(), ConfigError> {
    if v.trim().is_empty() {
        return Err(invalid(key, "must not be empty".to_string()));
    }
    Ok(())
}
