//! Archives of closed months (`audit_manager.archive`): Parquet parts, their seals and a signed
//! manifest per part in object storage; see `docs/archives.md`.

use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::error::invalid;
use super::value::{de_bool, de_int};

/// Archives of closed months (`audit_manager.archive`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArchiveConfig {
    /// Where archives go: `file:///absolute/path` or `s3://bucket/prefix` (AWS settings from
    /// the usual environment: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
    /// `AWS_ENDPOINT_URL`, …). Default: none (archiving off).
    pub url: Option<String>,
    /// A month is archived once it ended this many months ago. Default `2`.
    #[serde(deserialize_with = "de_int")]
    pub after_months: u32,
    /// Retention drops a month only when every one of its rows is in a verified archive part.
    /// Only meaningful with `url`. Default `true`.
    #[serde(deserialize_with = "de_bool")]
    pub require_before_drop: bool,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            url: None,
            after_months: 2,
            require_before_drop: true,
        }
    }
}

/// URL schemes an archive may use.
pub const SCHEMES: &[&str] = &["file", "s3", "s3a"];

impl ArchiveConfig {
    /// Whether archiving is configured.
    pub fn enabled(&self) -> bool {
        self.url.is_some()
    }

    /// Whether retention must wait for a verified archive of a month before dropping it.
    pub fn gates_retention(&self) -> bool {
        self.enabled() && self.require_before_drop
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let Some(url) = &self.url else {
            return Ok(());
        };
        let parsed = url::Url::parse(url).map_err(|e| {
            invalid(
                "archive.url",
                format!("is not a URL ({e}); use file:///absolute/path or s3://bucket/prefix"),
            )
        })?;
        if !SCHEMES.contains(&parsed.scheme()) {
            return Err(invalid(
                "archive.url",
                format!(
                    "scheme {}: is not supported; use file:///absolute/path or s3://bucket/prefix",
                    parsed.scheme()
                ),
            ));
        }
        if parsed.scheme() != "file" && parsed.host_str().is_none_or(str::is_empty) {
            return Err(invalid(
                "archive.url",
                "names no bucket; use s3://bucket/prefix".to_string(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        let with = |u: &str| ArchiveConfig {
            url: Some(u.into()),
            ..ArchiveConfig::default()
        };
        assert!(with("file:///var/lib/audit/archive").validate().is_ok());
        assert!(with("s3://bucket/prefix").validate().is_ok());
        assert!(with("ftp://x/y").validate().is_err());
        assert!(with("s3:///prefix").validate().is_err());
        assert!(with("not a url").validate().is_err());
        assert!(ArchiveConfig::default().validate().is_ok());
        assert!(!ArchiveConfig::default().gates_retention());
        assert!(with("s3://b/p").gates_retention());
    }
}
