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
    /// Checks what the configuration alone can tell: every rule's JSONPaths parse (RFC 9535),
    /// names are unique, each action has the fields and keys it needs and no others. The key
    /// files' contents are read where the rules are compiled, when a process starts
    /// (`crate::privacy::Privacy::from_config`), which refuses startup naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.hmac_key_file.is_none() && !self.hmac_previous_key_files.is_empty() {
            return Err(invalid(
                "privacy.hmac_previous_key_files",
                "older key generations need the current one: set privacy.hmac_key_file".into(),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (index, rule) in self.rules.iter().enumerate() {
            let name = rule.name_at(index);
            let problem = |field: &str, message: String| {
                invalid(
                    &format!("privacy.rules[{index}].{field}"),
                    format!("rule {name:?}: {message}"),
                )
            };
            if name.is_empty() || !names.insert(name.clone()) {
                return Err(problem(
                    "name",
                    "rule names must be non-empty and unique".into(),
                ));
            }
            json_path(&rule.select).map_err(|m| problem("select", m))?;
            if rule.keep_last.is_some() && rule.action != PrivacyAction::Mask {
                return Err(problem(
                    "keep_last",
                    "only a `mask` rule keeps characters".into(),
                ));
            }
            if rule.subject.is_some() && rule.action != PrivacyAction::Encrypt {
                return Err(problem(
                    "subject",
                    "only an `encrypt` rule names a subject".into(),
                ));
            }
            match rule.action {
                PrivacyAction::Drop => {}
                PrivacyAction::Mask if rule.keep_last.is_none() => {
                    return Err(problem(
                        "keep_last",
                        "a `mask` rule needs keep_last (e.g. 2)".into(),
                    ));
                }
                PrivacyAction::Mask => {}
                PrivacyAction::Pseudonymise if self.hmac_key_file.is_none() => {
                    return Err(problem(
                        "action",
                        "`pseudonymise` needs privacy.hmac_key_file (at least 32 bytes of \
                         secret: `openssl rand 32 > FILE`)"
                            .into(),
                    ));
                }
                PrivacyAction::Pseudonymise => {}
                PrivacyAction::Encrypt => {
                    let subject = rule.subject.as_deref().ok_or_else(|| {
                        problem(
                            "subject",
                            "an `encrypt` rule needs subject: a JSONPath to the data subject's \
                             identifier (e.g. \"$.data.resource.id\")"
                                .into(),
                        )
                    })?;
                    json_path(subject).map_err(|m| problem("subject", m))?;
                    if self.keeper_public_key_file.is_none() && self.keeper_key_file.is_none() {
                        return Err(problem(
                            "action",
                            "`encrypt` needs the keeper key: privacy.keeper_public_key_file \
                             (ingest) or privacy.keeper_key_file (writers), from `audit-manager \
                             privacy keygen`"
                                .into(),
                        ));
                    }
                    if self.hmac_key_file.is_none() {
                        return Err(problem(
                            "action",
                            "`encrypt` names each subject's key by its pseudonym: set \
                             privacy.hmac_key_file"
                                .into(),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether some rule needs the keeper key.
    pub fn encrypts(&self) -> bool {
        self.rules
            .iter()
            .any(|r| r.action == PrivacyAction::Encrypt)
    }
}

/// `path` parsed as an RFC 9535 JSONPath, or why it is not one.
fn json_path(path: &str) -> Result<(), String> {
    serde_json_path::JsonPath::parse(path)
        .map(drop)
        .map_err(|e| format!("not an RFC 9535 JSONPath ({path:?}): {e}"))
}
