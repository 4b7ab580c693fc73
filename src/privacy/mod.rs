//! Personal data in the trail: `privacy.rules` applied once, at ingest, before the spool write;
//! the store-side half; what readers see. `docs/privacy.md` is the user's account.
//!
//! - [`rules`]: the compiled rules (RFC 9535 JSONPath selection, `type` patterns);
//! - [`actions`]: `drop`, `mask`, `pseudonymise` (HMAC-SHA256 key generations);
//! - [`envelope`]: the ingest half of `encrypt` — values sealed under a data key wrapped to the
//!   keeper's X25519 public key (HPKE);
//! - [`subject_keys`]: the store half — each value re-encrypted under its data subject's own key
//!   (XChaCha20-Poly1305, the event id and field bound as associated data).
//!
//! # Where each step runs
//! [`Privacy::at_ingest`] is the one function every ingest path (single, batch, binary; skim or
//! tree) calls on a normalized event before it is spooled: nothing a rule removes reaches the
//! spool, Kafka, the DLQ or the database. It leaves a marker in the event, `data._privacy`
//! (`{"rules": [names of the rules that changed a value], "keys": {id: wrapped data key}}`),
//! written whenever some rule's `type` patterns matched the event.
//!
//! [`Privacy::at_store`] is the one function the writers (the sink, the Kafka-less forward)
//! call on a record before mapping it to a row: a record without the marker (one published to
//! Kafka by another producer) gets the rules then; sealed values are opened and re-encrypted
//! under their subject's key; the marker's wrapped keys are removed (the row keeps the names).
//! A record with the marker is never given the rules again.

pub mod actions;
pub mod envelope;
pub mod forget;
pub mod read;
pub mod rules;
pub mod subject_keys;

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use serde_json::{Map, Value};
use serde_json_path::JsonPath;

use crate::config::{PrivacyAction, PrivacyConfig};
use actions::{DROPPED, HmacKey, HmacKeys};
use envelope::{Keeper, KeeperPublic, Sealer};
use rules::{Action, CompiledRule};
pub use subject_keys::{SubjectKey, SubjectKeys};

/// The member of `data` that says which rules were applied.
pub const MARKER: &str = "_privacy";
/// Its JSON pointer.
pub const MARKER_POINTER: &str = "/data/_privacy";
/// What a value of a forgotten subject reads as, for everyone.
pub const ERASED: &str = "[erased]";
/// What an encrypted value reads as without `pii`.
pub const ENCRYPTED: &str = "[encrypted]";

/// Why the configuration cannot be used (refuses startup).
#[derive(Debug, thiserror::Error)]
pub enum ConfigProblem {
    #[error("rule {name:?} (privacy.rules[{index}]): {message}")]
    Rule {
        index: usize,
        name: String,
        field: &'static str,
        message: String,
    },
    #[error("{message}")]
    Key { key: &'static str, message: String },
}

impl ConfigProblem {
    /// The configuration key at fault, below the root.
    pub fn key(&self) -> String {
        match self {
            ConfigProblem::Rule { index, field, .. } => format!("privacy.rules[{index}].{field}"),
            ConfigProblem::Key { key, .. } => format!("privacy.{key}"),
        }
    }
}

/// Why an event could not be treated (the event is then not stored).
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("the event could not be read for the privacy rules: {0}")]
    Json(String),
    #[error("{0}")]
    Crypto(#[from] envelope::CryptoError),
    #[error("subject keys unavailable: {0}")]
    Keys(String),
    #[error(
        "the record holds sealed personal data but this process has no privacy.keeper_key_file \
         (give the writer the keeper's private key)"
    )]
    NoKeeper,
}

/// The compiled privacy configuration and its keys.
pub struct Privacy {
    rules: Vec<CompiledRule>,
    hmac: Option<HmacKeys>,
    sealer: Option<Sealer>,
    keeper: Option<Keeper>,
    subject_keys: Option<Arc<dyn SubjectKeys>>,
    /// Data keys unwrapped by this process, by id.
    data_keys: Mutex<HashMap<String, Arc<chacha20poly1305::XChaCha20Poly1305>>>,
}

impl std::fmt::Debug for Privacy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Privacy")
            .field("rules", &self.rules)
            .field("hmac", &self.hmac)
            .field("sealer", &self.sealer.is_some())
            .field("keeper", &self.keeper.is_some())
            .finish()
    }
}

impl Default for Privacy {
    fn default() -> Self {
        Privacy::none()
    }
}

/// Which side applies the rules: ingest seals `encrypt` values to the keeper; a writer applying
/// them to an unmarked record encrypts under the subject's key directly.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Ingest,
    Store,
}

impl Privacy {
    /// No rules, no keys.
    pub fn none() -> Privacy {
        Privacy {
            rules: Vec::new(),
            hmac: None,
            sealer: None,
            keeper: None,
            subject_keys: None,
            data_keys: Mutex::new(HashMap::new()),
        }
    }

    /// Compiles every rule and reads every key file; a problem names the rule or key.
    pub fn from_config(c: &PrivacyConfig) -> Result<Privacy, ConfigProblem> {
        let key_problem = |key: &'static str, message: String| ConfigProblem::Key { key, message };
        let hmac = match &c.hmac_key_file {
            Some(p) => {
                let current =
                    HmacKey::load(p).map_err(|e| key_problem("hmac_key_file", e.to_string()))?;
                let previous = c
                    .hmac_previous_key_files
                    .iter()
                    .map(|p| HmacKey::load(p))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| key_problem("hmac_previous_key_files", e.to_string()))?;
                Some(HmacKeys { current, previous })
            }
            None if !c.hmac_previous_key_files.is_empty() => {
                return Err(key_problem(
                    "hmac_previous_key_files",
                    "older key generations need the current one: set privacy.hmac_key_file".into(),
                ));
            }
            None => None,
        };
        let keeper = match &c.keeper_key_file {
            Some(p) => {
                Some(Keeper::load(p).map_err(|e| key_problem("keeper_key_file", e.to_string()))?)
            }
            None => None,
        };
        let public = match &c.keeper_public_key_file {
            Some(p) => Some(
                KeeperPublic::load(p)
                    .map_err(|e| key_problem("keeper_public_key_file", e.to_string()))?,
            ),
            None => keeper.as_ref().map(Keeper::public),
        };
        let mut compiled = Vec::with_capacity(c.rules.len());
        let mut names = HashSet::new();
        for (index, r) in c.rules.iter().enumerate() {
            let name = r.name_at(index);
            let problem = |field: &'static str, message: String| ConfigProblem::Rule {
                index,
                name: name.clone(),
                field,
                message,
            };
            if name.is_empty() || !names.insert(name.clone()) {
                return Err(problem(
                    "name",
                    "rule names must be non-empty and unique".into(),
                ));
            }
            let select = JsonPath::parse(&r.select).map_err(|e| {
                problem(
                    "select",
                    format!("not an RFC 9535 JSONPath ({:?}): {e}", r.select),
                )
            })?;
            if r.keep_last.is_some() && r.action != PrivacyAction::Mask {
                return Err(problem(
                    "keep_last",
                    "only a `mask` rule keeps characters".into(),
                ));
            }
            if r.subject.is_some() && r.action != PrivacyAction::Encrypt {
                return Err(problem(
                    "subject",
                    "only an `encrypt` rule names a subject".into(),
                ));
            }
            let action = match r.action {
                PrivacyAction::Drop => Action::Drop,
                PrivacyAction::Mask => Action::Mask {
                    keep_last: r.keep_last.ok_or_else(|| {
                        problem("keep_last", "a `mask` rule needs keep_last (e.g. 2)".into())
                    })?,
                },
                PrivacyAction::Pseudonymise => {
                    if hmac.is_none() {
                        return Err(problem(
                            "action",
                            "`pseudonymise` needs privacy.hmac_key_file (at least 32 bytes of \
                             secret: `openssl rand 32 > FILE`)"
                                .into(),
                        ));
                    }
                    Action::Pseudonymise
                }
                PrivacyAction::Encrypt => {
                    let subject = r.subject.as_deref().ok_or_else(|| {
                        problem(
                            "subject",
                            "an `encrypt` rule needs subject: a JSONPath to the data subject's \
                             identifier (e.g. \"$.data.resource.id\")"
                                .into(),
                        )
                    })?;
                    let subject = JsonPath::parse(subject).map_err(|e| {
                        problem(
                            "subject",
                            format!("not an RFC 9535 JSONPath ({subject:?}): {e}"),
                        )
                    })?;
                    if public.is_none() {
                        return Err(problem(
                            "action",
                            "`encrypt` needs the keeper key: privacy.keeper_public_key_file \
                             (ingest) or privacy.keeper_key_file (writers), from `audit-manager \
                             privacy keygen`"
                                .into(),
                        ));
                    }
                    if hmac.is_none() {
                        return Err(problem(
                            "action",
                            "`encrypt` names each subject's key by its pseudonym: set \
                             privacy.hmac_key_file"
                                .into(),
                        ));
                    }
                    Action::Encrypt { subject }
                }
            };
            compiled.push(CompiledRule {
                name,
                select,
                types: r.types.clone(),
                action,
            });
        }
        Ok(Privacy {
            rules: compiled,
            hmac,
            sealer: public.map(Sealer::new),
            keeper,
            subject_keys: None,
            data_keys: Mutex::new(HashMap::new()),
        })
    }

    /// This configuration with the store of subject keys (writers, readers, forget).
    pub fn with_subject_keys(mut self, keys: Arc<dyn SubjectKeys>) -> Privacy {
        self.subject_keys = Some(keys);
        self
    }

    pub fn has_rules(&self) -> bool {
        !self.rules.is_empty()
    }

    pub fn hmac(&self) -> Option<&HmacKeys> {
        self.hmac.as_ref()
    }

    pub fn keeper(&self) -> Option<&Keeper> {
        self.keeper.as_ref()
    }

    pub fn subject_keys(&self) -> Option<&Arc<dyn SubjectKeys>> {
        self.subject_keys.as_ref()
    }

    /// What a reader with (or without) `pii` sees.
    pub fn view(&self, pii: bool) -> read::View {
        read::View {
            pii,
            keys: self.subject_keys.clone(),
        }
    }

    /// The rule names, in order.
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.name.as_str())
    }

    /// Whether some rule applies to events of type `ty`.
    fn any_rule_for(&self, ty: &str) -> bool {
        self.rules.iter().any(|r| r.matches_type(ty))
    }

    /// Applies the rules to one normalized event before it is spooled: `json` is rewritten and
    /// `key` (the Kafka key, possibly made from a treated value) recomputed. Events no rule's
    /// `type` matches are left untouched, bytes and all.
    pub fn at_ingest(&self, ev: &mut crate::event::NormalizedEvent) -> Result<(), Failure> {
        if self.rules.is_empty() {
            return Ok(());
        }
        match event_type(&ev.json) {
            Some(ty) if self.any_rule_for(&ty) => {}
            _ => return Ok(()),
        }
        let mut event: Value =
            serde_json::from_slice(&ev.json).map_err(|e| Failure::Json(e.to_string()))?;
        self.apply(&mut event, &ev.id, Stage::Ingest)?;
        ev.json = serde_json::to_vec(&event).map_err(|e| Failure::Json(e.to_string()))?;
        if let Value::Object(map) = &event {
            ev.key = crate::event::kafka_key(map);
        }
        Ok(())
    }

    /// The store-side step over one record's value, before it becomes a row: rules for a record
    /// that never went through them (no marker), sealed values re-encrypted under their
    /// subject's key, the marker's wrapped data keys removed. Bytes that need nothing come
    /// back borrowed. A value that is not an event object comes back as it is (decoding then
    /// says what is wrong with it).
    pub fn at_store<'a>(&self, value: &'a [u8]) -> Result<Cow<'a, [u8]>, Failure> {
        let sealed_inside = memchr::memmem::find(value, b"\"sealed:v1:").is_some();
        let rules_may_apply =
            !self.rules.is_empty() && event_type(value).is_some_and(|ty| self.any_rule_for(&ty));
        if !sealed_inside && !rules_may_apply {
            return Ok(Cow::Borrowed(value));
        }
        let Ok(mut event) = serde_json::from_slice::<Value>(value) else {
            return Ok(Cow::Borrowed(value));
        };
        let Some(id) = event.get("id").and_then(Value::as_str).map(str::to_owned) else {
            return Ok(Cow::Borrowed(value));
        };
        let marked = event.pointer(MARKER_POINTER).is_some();
        if rules_may_apply && !marked {
            self.apply(&mut event, &id, Stage::Store)?;
        }
        if sealed_inside {
            self.reencrypt(&mut event, &id)?;
        }
        if let Some(Value::Object(marker)) = event.pointer_mut(MARKER_POINTER) {
            marker.remove("keys");
        }
        serde_json::to_vec(&event)
            .map(Cow::Owned)
            .map_err(|e| Failure::Json(e.to_string()))
    }

    /// Every rule whose `type` patterns match, in order; the marker written.
    fn apply(&self, event: &mut Value, id: &str, stage: Stage) -> Result<(), Failure> {
        let ty = event
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        // Subjects are read from the event as it arrived, before any rule changed it.
        let subjects: Vec<Option<String>> = self
            .rules
            .iter()
            .map(|r| match &r.action {
                Action::Encrypt { subject } if r.matches_type(&ty) => {
                    resolve_subject(subject, event)
                }
                _ => None,
            })
            .collect();
        let mut treated: HashSet<String> = HashSet::new();
        let mut applied: Vec<&str> = Vec::new();
        let mut data_key: Option<Arc<envelope::DataKey>> = None;
        for (rule, subject) in self.rules.iter().zip(&subjects) {
            if !rule.matches_type(&ty) {
                continue;
            }
            let pointers: Vec<String> = rule
                .select(event)
                .into_iter()
                .filter(|p| !treated.contains(p))
                .collect();
            if pointers.is_empty() {
                continue;
            }
            let mut subject_missing = false;
            for pointer in pointers {
                let Some(slot) = event.pointer_mut(&pointer) else {
                    continue;
                };
                let new = match &rule.action {
                    Action::Drop => DROPPED.to_owned(),
                    Action::Mask { keep_last } => actions::mask(slot, *keep_last),
                    Action::Pseudonymise => match &self.hmac {
                        Some(h) => h.current.pseudonym(&actions::text(slot)),
                        None => DROPPED.to_owned(),
                    },
                    Action::Encrypt { .. } => match subject {
                        None => {
                            // Fail closed: without a subject there is no key to shred.
                            subject_missing = true;
                            DROPPED.to_owned()
                        }
                        Some(s) => match stage {
                            Stage::Ingest => {
                                let sealer = self.sealer.as_ref().ok_or(Failure::NoKeeper)?;
                                let key = match &data_key {
                                    Some(k) => k.clone(),
                                    None => data_key.insert(sealer.data_key()?).clone(),
                                };
                                Sealer::seal(&key, s, slot, id, &pointer)?
                            }
                            Stage::Store => self.encrypt_for(s, slot, id, &pointer)?,
                        },
                    },
                };
                *slot = Value::String(new);
                treated.insert(pointer);
            }
            let outcome = if subject_missing {
                "subject-missing"
            } else {
                "applied"
            };
            metrics::counter!(
                "audit_privacy_rules_applied_total",
                "rule" => rule.name.clone(),
                "outcome" => outcome
            )
            .increment(1);
            applied.push(&rule.name);
        }
        let mut marker = Map::new();
        marker.insert(
            "rules".into(),
            Value::Array(
                applied
                    .iter()
                    .map(|n| Value::String((*n).to_owned()))
                    .collect(),
            ),
        );
        if let Some(k) = &data_key {
            let mut keys = Map::new();
            keys.insert(k.id.clone(), Value::String(k.wrapped.clone()));
            marker.insert("keys".into(), Value::Object(keys));
        }
        if let Some(Value::Object(data)) = event.get_mut("data") {
            data.insert(MARKER.into(), Value::Object(marker));
        }
        Ok(())
    }

    /// The stored form of `value` of `subject` at `pointer` of event `id`: encrypted under the
    /// subject's key, or [`ERASED`] when the subject was forgotten.
    fn encrypt_for(
        &self,
        subject: &str,
        value: &Value,
        id: &str,
        pointer: &str,
    ) -> Result<String, Failure> {
        let hmac = self
            .hmac
            .as_ref()
            .ok_or_else(|| Failure::Keys("privacy.hmac_key_file is not set".into()))?;
        let keys = self
            .subject_keys
            .as_ref()
            .ok_or_else(|| Failure::Keys("this process has no subject key store".into()))?;
        let pseudonym = hmac.current.pseudonym(subject);
        match keys.key_for(&pseudonym).map_err(Failure::Keys)? {
            Some(key) => Ok(subject_keys::encrypt(&key, value, id, pointer)?),
            None => Ok(ERASED.to_owned()),
        }
    }

    /// Every sealed value opened with the data key its record carries and re-encrypted under
    /// its subject's key.
    fn reencrypt(&self, event: &mut Value, id: &str) -> Result<(), Failure> {
        let keeper = self.keeper.as_ref().ok_or(Failure::NoKeeper)?;
        let wrapped: HashMap<String, String> = event
            .pointer(&format!("{MARKER_POINTER}/keys"))
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        let mut found = Vec::new();
        sealed_pointers(event, &mut String::new(), &mut found);
        for pointer in found {
            let Some(slot) = event.pointer_mut(&pointer) else {
                continue;
            };
            let Some((kid, body)) = slot.as_str().and_then(envelope::parse_sealed) else {
                continue;
            };
            let cipher = self.data_key(keeper, kid, wrapped.get(kid))?;
            let (subject, value) = envelope::open_sealed(&cipher, &body, id, &pointer)?;
            let stored = self.encrypt_for(&subject, &value, id, &pointer)?;
            *slot = Value::String(stored);
        }
        Ok(())
    }

    /// The cipher of data key `kid`, unwrapped once per process.
    fn data_key(
        &self,
        keeper: &Keeper,
        kid: &str,
        wrapped: Option<&String>,
    ) -> Result<Arc<chacha20poly1305::XChaCha20Poly1305>, Failure> {
        let mut cache = self
            .data_keys
            .lock()
            .map_err(|_| Failure::Keys("data key cache poisoned".into()))?;
        if let Some(c) = cache.get(kid) {
            return Ok(c.clone());
        }
        let wrapped = wrapped.ok_or(Failure::Crypto(envelope::CryptoError::Malformed(
            "record: a sealed value names a data key the record does not carry",
        )))?;
        if envelope::wrapped_id(wrapped) != kid {
            return Err(Failure::Crypto(envelope::CryptoError::Authentication));
        }
        let secret = keeper.unwrap(wrapped)?;
        let c = Arc::new(envelope::cipher(&secret));
        cache.insert(kid.to_owned(), c.clone());
        Ok(c)
    }
}

/// JSON pointers of every string starting with `sealed:v1:`.
fn sealed_pointers(v: &Value, at: &mut String, out: &mut Vec<String>) {
    match v {
        Value::String(s) if s.starts_with(envelope::SEALED) => out.push(at.clone()),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = at.len();
                at.push('/');
                at.push_str(&i.to_string());
                sealed_pointers(item, at, out);
                at.truncate(len);
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                let len = at.len();
                at.push('/');
                at.push_str(&k.replace('~', "~0").replace('/', "~1"));
                sealed_pointers(item, at, out);
                at.truncate(len);
            }
        }
        _ => {}
    }
}

/// The subject's identifier: exactly one string or number at `path`, not empty.
fn resolve_subject(path: &JsonPath, event: &Value) -> Option<String> {
    let node = path.query(event).exactly_one().ok()?;
    match node {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The event's `type`, read without building a tree.
fn event_type(json: &[u8]) -> Option<Cow<'_, str>> {
    #[derive(Deserialize)]
    struct TypeOnly<'a> {
        #[serde(rename = "type", borrow)]
        ty: Option<Cow<'a, str>>,
    }
    serde_json::from_slice::<TypeOnly>(json).ok()?.ty
}

#[cfg(test)]
mod tests;

/// The privacy step of a process that stores or reads rows (sink, Kafka-less forward, query):
/// the compiled configuration with the subject key store when it holds the keeper key.
pub fn writer(config: &crate::config::Config) -> Result<Arc<Privacy>, String> {
    let privacy = Privacy::from_config(&config.privacy).map_err(|e| e.to_string())?;
    let privacy = match subject_keys::open_store(config)? {
        Some(keys) => privacy.with_subject_keys(keys),
        None => privacy,
    };
    Ok(Arc::new(privacy))
}
