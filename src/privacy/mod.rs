//! Personal data in the trail: `privacy.rules` applied once, at ingest, before the spool write;
//! the store-side half; what readers see. `docs/privacy.md` is the user's account.
//!
//! - [`rules`]: the compiled rules (RFC 9535 JSONPath selection, `type` patterns);
//! - [`actions`]: `drop`, `mask`, `pseudonymise` (HMAC-SHA256 key generations);
//! - [`envelope`]: the ingest half of `encrypt` — values sealed under a data key wrapped to the
//!   keeper's X25519 public key (HPKE);
//! - [`subject_keys`]: the store half — each value re-encrypted under its data subject's own key
//!   (XChaCha20-Poly1305, the event id and field bound as associated data);
//! - [`raw`]: an event read and edited in its bytes — the part of it the rules' paths can read
//!   built as a tree, the treated values spliced back — so that neither side parses and
//!   re-serializes whole events.
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
pub mod raw;
pub mod read;
pub mod rules;
pub mod subject_keys;

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use serde_json::{Map, Value};
use serde_json_path::JsonPath;

use crate::config::{PrivacyAction, PrivacyConfig};
use actions::{DROPPED, HmacKey, HmacKeys};
use envelope::{Keeper, KeeperPublic, Sealer};
use raw::{Need, Pruned};
use rules::{Action, CompiledRule, Outcome};
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
    /// What the configuration's own check found (the rules' JSONPaths, fields and keys).
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
}

impl ConfigProblem {
    /// The configuration key at fault, below the root.
    pub fn key(&self) -> String {
        match self {
            ConfigProblem::Rule { index, field, .. } => format!("privacy.rules[{index}].{field}"),
            ConfigProblem::Key { key, .. } => format!("privacy.{key}"),
            ConfigProblem::Config(crate::config::ConfigError::Invalid { key, .. }) => {
                key.strip_prefix("audit_manager.").unwrap_or(key).to_owned()
            }
            ConfigProblem::Config(_) => "privacy".to_owned(),
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
    /// What the rules' paths (selections and subjects) can read of an event, with what
    /// ingest needs besides (`type`, the Kafka key's members, the marker).
    need: Need,
    /// Whether every rule applies to every event type (no `type` patterns).
    every_type: bool,
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
            need: Need::default(),
            every_type: true,
            hmac: None,
            sealer: None,
            keeper: None,
            subject_keys: None,
            data_keys: Mutex::new(HashMap::new()),
        }
    }

    /// Checks the configuration ([`PrivacyConfig::validate`]: JSONPaths, fields and keys per
    /// action), reads every key file, and compiles the rules; a problem names the rule or key.
    pub fn from_config(c: &PrivacyConfig) -> Result<Privacy, ConfigProblem> {
        c.validate()?;
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
        let mut need = Need::default();
        for members in [
            &["type"][..],
            &["subject"],
            &["data", "actor", "id"],
            &["data", MARKER],
        ] {
            need.add(&members.iter().map(|m| (*m).to_owned()).collect::<Vec<_>>());
        }
        // `validate` above refused what follows cannot compile: a path that does not parse, a
        // `mask` without `keep_last`, an `encrypt` without `subject`.
        for (index, r) in c.rules.iter().enumerate() {
            let name = r.name_at(index);
            let parse = |field: &'static str, path: &str| {
                JsonPath::parse(path).map_err(|e| ConfigProblem::Rule {
                    index,
                    name: name.clone(),
                    field,
                    message: format!("not an RFC 9535 JSONPath ({path:?}): {e}"),
                })
            };
            need.add(&raw::name_prefix(&r.select));
            if let Some(subject) = &r.subject {
                need.add(&raw::name_prefix(subject));
            }
            let select = parse("select", &r.select)?;
            let action = match r.action {
                PrivacyAction::Drop => Action::Drop,
                PrivacyAction::Mask => Action::Mask {
                    keep_last: r.keep_last.unwrap_or_default(),
                },
                PrivacyAction::Pseudonymise => Action::Pseudonymise,
                PrivacyAction::Encrypt => Action::Encrypt {
                    subject: parse("subject", r.subject.as_deref().unwrap_or_default())?,
                },
            };
            compiled.push(CompiledRule {
                name,
                select,
                types: r.types.clone(),
                action,
                counters: rules::Counters::default(),
            });
        }
        Ok(Privacy {
            every_type: compiled.iter().all(|r| r.types.is_empty()),
            rules: compiled,
            need,
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
    ///
    /// The rules run on the part of the event their paths can read ([`raw`]), and the treated
    /// values are spliced into the event's bytes; an event that cannot be read that way (never
    /// a normalized one) is treated on its whole tree, with the same outcome.
    pub fn at_ingest(&self, ev: &mut crate::event::NormalizedEvent) -> Result<(), Failure> {
        if self.rules.is_empty() {
            return Ok(());
        }
        if !self.every_type {
            match event_type(&ev.json) {
                Some(ty) if self.any_rule_for(&ty) => {}
                _ => return Ok(()),
            }
        }
        if let Ok(json) = std::str::from_utf8(&ev.json)
            && let Some(mut pruned) = Pruned::read(json, &self.need)
        {
            if pruned.value.get("type").and_then(Value::as_str).is_none() {
                return Ok(());
            }
            let applied = self.apply(&mut pruned.value, &ev.id, Stage::Ingest)?;
            if let Some(bytes) = pruned.write_back(json, &applied.treated, MARKER) {
                ev.json = bytes;
                if let Value::Object(map) = &pruned.value {
                    ev.key = crate::event::kafka_key(map);
                }
                self.count(&applied);
                return Ok(());
            }
        }
        if event_type(&ev.json).is_none_or(|ty| !self.any_rule_for(&ty)) {
            return Ok(());
        }
        let mut event: Value =
            serde_json::from_slice(&ev.json).map_err(|e| Failure::Json(e.to_string()))?;
        let applied = self.apply(&mut event, &ev.id, Stage::Ingest)?;
        ev.json = serde_json::to_vec(&event).map_err(|e| Failure::Json(e.to_string()))?;
        if let Value::Object(map) = &event {
            ev.key = crate::event::kafka_key(map);
        }
        self.count(&applied);
        Ok(())
    }

    /// The store-side step over one record's value, before it becomes a row: rules for a record
    /// that never went through them (no marker), sealed values re-encrypted under their
    /// subject's key, the marker's wrapped data keys removed. Bytes that need nothing come
    /// back borrowed. A value that is not an event object comes back as it is (decoding then
    /// says what is wrong with it).
    ///
    /// A record the rules already went through (the marker) is edited in its bytes; any other
    /// is treated on its whole tree.
    pub fn at_store<'a>(&self, value: &'a [u8]) -> Result<Cow<'a, [u8]>, Failure> {
        let sealed_inside = memchr::memmem::find(value, b"\"sealed:v1:").is_some();
        if !sealed_inside && self.rules.is_empty() {
            return Ok(Cow::Borrowed(value));
        }
        if let Some(done) = self.at_store_in_place(value, sealed_inside)? {
            return Ok(done);
        }
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
            let applied = self.apply(&mut event, &id, Stage::Store)?;
            self.count(&applied);
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

    /// [`Privacy::at_store`] for a record that needs no rules (marked, or of a type no rule
    /// applies to), in its bytes: each sealed value replaced by its re-encryption, the marker by
    /// itself without `keys`. `None` when the record needs the whole-tree treatment (rules to
    /// apply, a sealed value written with escapes, anything unusual).
    fn at_store_in_place<'a>(
        &self,
        value: &'a [u8],
        sealed_inside: bool,
    ) -> Result<Option<Cow<'a, [u8]>>, Failure> {
        let Ok(json) = std::str::from_utf8(value) else {
            return Ok(None);
        };
        let Some(top) = raw::members(json) else {
            return Ok(None);
        };
        let unique = |members: &raw::Members<'a>, name: &str| {
            let mut found = members.iter().filter(|(k, _)| k == name);
            match (found.next(), found.next()) {
                (Some((_, v)), None) => Ok(Some(*v)),
                (None, _) => Ok(None),
                (Some(_), Some(_)) => Err(()),
            }
        };
        let (Ok(Some(id)), Ok(ty), Ok(data)) = (
            unique(&top, "id"),
            unique(&top, "type"),
            unique(&top, "data"),
        ) else {
            return Ok(None);
        };
        let Ok(id) = serde_json::from_str::<String>(id.get()) else {
            return Ok(None);
        };
        let marker = match data.map(|d| (d, raw::members(d.get()))) {
            None => None,
            Some((_, Some(members))) => match unique(&members, MARKER) {
                Ok(m) => m,
                Err(()) => return Ok(None),
            },
            // `data` is not an object: no marker.
            Some((d, None)) if !d.get().starts_with('{') => None,
            Some(_) => return Ok(None),
        };
        let ty = match ty {
            Some(t) => serde_json::from_str::<Cow<'_, str>>(t.get()).ok(),
            None => None,
        };
        let rules_may_apply = !self.rules.is_empty() && ty.is_some_and(|ty| self.any_rule_for(&ty));
        if !sealed_inside && !rules_may_apply {
            return Ok(Some(Cow::Borrowed(value)));
        }
        if rules_may_apply && marker.is_none() {
            return Ok(None);
        }
        let marker: Option<(Range<usize>, Value)> = match marker {
            Some(m) => match serde_json::from_str(m.get()) {
                Ok(v) => Some((raw::span(json, m.get()), v)),
                Err(_) => return Ok(None),
            },
            None => None,
        };
        let mut edits: Vec<(Range<usize>, String)> = Vec::new();
        if sealed_inside {
            if self.keeper.is_none() {
                return Err(Failure::NoKeeper);
            }
            let Some(found) = raw::strings_starting_with(json, envelope::SEALED) else {
                return Ok(None);
            };
            let wrapped = marker
                .as_ref()
                .and_then(|(_, m)| m.get("keys"))
                .and_then(Value::as_object);
            let mut subject_key = SubjectKeyMemo::default();
            for (pointer, range) in found {
                let Some(sealed) = json.get(range.start + 1..range.end - 1) else {
                    return Ok(None);
                };
                let stored = self.reseal(
                    sealed,
                    wrapped.and_then(|w| w.get(sealed_kid(sealed))?.as_str()),
                    &id,
                    &pointer,
                    &mut subject_key,
                )?;
                if let Some(stored) = stored {
                    let text =
                        serde_json::to_string(&stored).map_err(|e| Failure::Json(e.to_string()))?;
                    edits.push((range, text));
                }
            }
        }
        if let Some((range, Value::Object(mut m))) = marker
            && m.remove("keys").is_some()
        {
            let text = serde_json::to_string(&m).map_err(|e| Failure::Json(e.to_string()))?;
            edits.push((range, text));
        }
        if edits.is_empty() {
            return Ok(Some(Cow::Borrowed(value)));
        }
        Ok(raw::splice(json, edits).map(Cow::Owned))
    }

    /// Every rule whose `type` patterns match, in order; the marker written. Returns what was
    /// treated (for [`Privacy::count`] once the event is kept).
    fn apply(&self, event: &mut Value, id: &str, stage: Stage) -> Result<Applied, Failure> {
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
        let mut applied = Applied::default();
        let mut data_key: Option<Arc<envelope::DataKey>> = None;
        let mut subject_key = SubjectKeyMemo::default();
        for (index, (rule, subject)) in self.rules.iter().zip(&subjects).enumerate() {
            if !rule.matches_type(&ty) {
                continue;
            }
            let pointers: Vec<String> = rule
                .select(event)
                .into_iter()
                .filter(|p| !applied.treated.contains(p))
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
                            Stage::Store => {
                                let key = self.subject_key(s, &mut subject_key)?;
                                stored_form(key.as_ref(), slot, id, &pointer)?
                            }
                        },
                    },
                };
                *slot = Value::String(new);
                applied.treated.push(pointer);
            }
            let outcome = if subject_missing {
                Outcome::SubjectMissing
            } else {
                Outcome::Applied
            };
            applied.rules.push((index, outcome));
        }
        let mut marker = Map::new();
        marker.insert(
            "rules".into(),
            Value::Array(
                applied
                    .rules
                    .iter()
                    .map(|(i, _)| Value::String(self.rules[*i].name.clone()))
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
        Ok(applied)
    }

    /// Counts an event's treated rules in `audit_privacy_rules_applied_total`.
    fn count(&self, applied: &Applied) {
        for (index, outcome) in &applied.rules {
            let rule = &self.rules[*index];
            rule.counters.increment(&rule.name, *outcome);
        }
    }

    /// The live key of `subject` (`None`: forgotten), remembered in `memo` for the event's
    /// other values (most of an event's values belong to one subject).
    fn subject_key(
        &self,
        subject: &str,
        memo: &mut SubjectKeyMemo,
    ) -> Result<Option<SubjectKey>, Failure> {
        if let Some((s, key)) = &memo.0
            && s == subject
        {
            return Ok(key.clone());
        }
        let hmac = self
            .hmac
            .as_ref()
            .ok_or_else(|| Failure::Keys("privacy.hmac_key_file is not set".into()))?;
        let keys = self
            .subject_keys
            .as_ref()
            .ok_or_else(|| Failure::Keys("this process has no subject key store".into()))?;
        let pseudonym = hmac.current.pseudonym(subject);
        let key = keys.key_for(&pseudonym).map_err(Failure::Keys)?;
        memo.0 = Some((subject.to_owned(), key.clone()));
        Ok(key)
    }

    /// A sealed value's stored form: opened with the data key it names (`wrapped`: the wrapped
    /// key its record carries under that name) and re-encrypted under its subject's key.
    /// `None` for a string that only looks sealed (left as it is).
    fn reseal(
        &self,
        sealed: &str,
        wrapped: Option<&str>,
        id: &str,
        pointer: &str,
        memo: &mut SubjectKeyMemo,
    ) -> Result<Option<String>, Failure> {
        let keeper = self.keeper.as_ref().ok_or(Failure::NoKeeper)?;
        let Some((kid, body)) = envelope::parse_sealed(sealed) else {
            return Ok(None);
        };
        let cipher = self.data_key(keeper, kid, wrapped)?;
        let (subject, value) = envelope::open_sealed(&cipher, &body, id, pointer)?;
        let key = self.subject_key(&subject, memo)?;
        stored_form(key.as_ref(), &value, id, pointer).map(Some)
    }

    /// Every sealed value opened with the data key its record carries and re-encrypted under
    /// its subject's key.
    fn reencrypt(&self, event: &mut Value, id: &str) -> Result<(), Failure> {
        if self.keeper.is_none() {
            return Err(Failure::NoKeeper);
        }
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
        let mut memo = SubjectKeyMemo::default();
        for pointer in found {
            let Some(slot) = event.pointer_mut(&pointer) else {
                continue;
            };
            let Some(sealed) = slot.as_str() else {
                continue;
            };
            let w = wrapped.get(sealed_kid(sealed)).map(String::as_str);
            if let Some(stored) = self.reseal(sealed, w, id, &pointer, &mut memo)? {
                *slot = Value::String(stored);
            }
        }
        Ok(())
    }

    /// The cipher of data key `kid`, unwrapped once per process.
    fn data_key(
        &self,
        keeper: &Keeper,
        kid: &str,
        wrapped: Option<&str>,
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

/// What [`Privacy::apply`] treated: the values' pointers, and the rules that changed a value
/// (by index) with their outcome.
#[derive(Default)]
struct Applied {
    treated: Vec<String>,
    rules: Vec<(usize, Outcome)>,
}

/// The last subject's key an event asked for.
#[derive(Default)]
struct SubjectKeyMemo(Option<(String, Option<SubjectKey>)>);

/// The stored form of `value` at `pointer` of event `id`: encrypted under its subject's key,
/// or [`ERASED`] when the subject was forgotten (`None`).
fn stored_form(
    key: Option<&SubjectKey>,
    value: &Value,
    id: &str,
    pointer: &str,
) -> Result<String, Failure> {
    match key {
        Some(key) => Ok(subject_keys::encrypt(key, value, id, pointer)?),
        None => Ok(ERASED.to_owned()),
    }
}

/// The data key id a sealed value names (empty when it names none).
fn sealed_kid(sealed: &str) -> &str {
    sealed
        .strip_prefix(envelope::SEALED)
        .and_then(|rest| rest.split_once(':'))
        .map_or("", |(kid, _)| kid)
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
