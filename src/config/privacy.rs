//! Personal data in events (`audit_manager.privacy`): rules applied at ingest, before the spool
//! write, and the keys they use. See `docs/privacy.md`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::error::invalid;

/// Personal-data rules and their keys (`audit_manager.privacy`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrivacyConfig {
    /// The rules, applied in order to every event whose `type` they match. Default: none.
    pub rules: Vec<PrivacyRuleConfig>,
    /// `pseudonymise`: the current HMAC key (at least 32 bytes of secret, e.g.
    /// `openssl rand 32 > FILE`). Default: none.
    pub hmac_key_file: Option<PathBuf>,
    /// Older HMAC key generations: `privacy hash` and `/pseudonym` still answer with their
    /// pseudonyms, so values stored before a rotation stay searchable. Default: none.
    pub hmac_previous_key_files: Vec<PathBuf>,
    /// `encrypt` at ingest: values are sealed to this X25519 public key (`FILE.pub` from
    /// `audit-manager privacy keygen`). Default: none.
    pub keeper_public_key_file: Option<PathBuf>,
    /// The private half of the keeper key, held by the processes that store rows (sink,
    /// Kafka-less forward), read them (query) and `forget`. Default: none.
    pub keeper_key_file: Option<PathBuf>,
    /// The database holding `audit_subject_keys`; default `database.url`. A separate database
    /// keeps the subject keys out of the audit data's backups.
    pub keys_database_url: Option<super::Redacted<String>>,
}

/// One rule of `privacy.rules`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyRuleConfig {
    /// Used in the metric and in the stored marker; default `rule-<index>`.
    #[serde(default)]
    pub name: Option<String>,
    /// RFC 9535 JSONPath over the whole event selecting the values to treat.
    pub select: String,
    /// `type` patterns (`*` = any run of characters); default: every event.
    #[serde(default)]
    pub types: Vec<String>,
    /// What becomes of a selected value.
    pub action: PrivacyAction,
    /// `mask`: how many characters are kept at the end.
    #[serde(default)]
    pub keep_last: Option<usize>,
    /// `encrypt`: JSONPath to the data subject's identifier.
    #[serde(default)]
    pub subject: Option<String>,
}

/// What a rule does to the values it selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PrivacyAction {
    /// Replaced by `"[dropped]"`.
    Drop,
    /// `*` for every character but the last `keep_last`.
    Mask,
    /// `hmac-sha256:<key-id>:<hex>` under `hmac_key_file`.
    Pseudonymise,
    /// Encrypted under the data subject's own key (crypto-shredding).
    Encrypt,
}

impl PrivacyRuleConfig {
    /// The rule's name: `name`, else `rule-<index>`.
    pub fn name_at(&self, index: usize) -> String {
        self.name.clone().unwrap_or_else(|| format!("rule-{index}"))
    }
}

impl PrivacyConfig {
    /// Compiles every rule and reads every key file, refusing startup with the rule or key
    /// named.
    pub fn validate(&self) -> Result<(), ConfigError> {
        crate::privacy::Privacy::from_config(self)
            .map(drop)
            .map_err(|e| invalid(&e.key(), e.to_string()))
    }

    /// Whether some rule needs the keeper key.
    pub fn encrypts(&self) -> bool {
        self.rules
            .iter()
            .any(|r| r.action == PrivacyAction::Encrypt)
    }
}
