//! Where settings come from: every source is a figment [`Layer`] whose metadata names its
//! origin (the file, or the exact environment variable), so an error points at what to fix.
//!
//! Layers, lowest first (figment merges later over earlier):
//!
//! 1. `UVICORN_HOST`/`UVICORN_PORT` (the reference service's listener; `http.listen` only),
//! 2. the YAML file,
//! 3. `DB_HOST`/`DB_PORT`/`DB_NAME`/`DB_USER`/`DB_PASSWORD`, then `DATABASE_URL` (`database.url`),
//! 4. `AUDIT_MANAGER__*`.
//!
//! figment's own `Env` provider is not used for layer 4: it reads only the process
//! environment (the loaders take an explicit one, so tests and tools can pass theirs), and it
//! guesses value types (`AUDIT_MANAGER__SPOOL__PATH=0755` would become the number 755, a
//! topic `123` a number); here every variable is the exact string it holds, and each field's
//! reader decides what the string means. The key mapping is the same as
//! `Env::prefixed("AUDIT_MANAGER__").split("__")` with lowercased keys.

use std::path::Path;

use figment::value::{Dict, Map, Value as FValue};
use figment::{Figment, Metadata, Profile, Provider};
use serde_yaml_ng::{Mapping, Value};
use url::Url;

use super::{CONFIG_PATH_ENV, ConfigError, DatabaseConfig, ENV_PREFIX, ROOT_KEY};

/// Variables of the reference service composing `database.url`.
pub(crate) const DB_VARS: [&str; 5] = ["DB_HOST", "DB_PORT", "DB_NAME", "DB_USER", "DB_PASSWORD"];
/// Default parts of the database URL when `DB_*` variables compose it.
const DEFAULT_DB_USER: &str = "postgres";
const DEFAULT_DB_HOST: &str = "localhost";
const DEFAULT_DB_PORT: u16 = 5432;
const DEFAULT_DB_NAME: &str = "auditmanager";

/// Metadata name of layers read from a file or text (errors say "in …").
const FILE_KIND: &str = "file";
/// Metadata name of layers read from environment variables (errors say "set by …").
const ENV_KIND: &str = "environment";

/// One source of settings: a dictionary below the root key, and where it came from.
pub(crate) struct Layer {
    kind: &'static str,
    origin: Origin,
    pub(crate) dict: Dict,
}

#[derive(Clone)]
enum Origin {
    /// The same text for every key: a file path, "YAML input", a variable name.
    Fixed(String),
    /// `AUDIT_MANAGER__*`: the variable is rebuilt from the key path.
    Prefixed,
}

impl Layer {
    /// How an error names the origin of `keys` (below the root) in this layer.
    pub(crate) fn describe(&self, keys: &[&str]) -> String {
        self.origin.describe(keys)
    }

    /// Whether the layer comes from environment variables (errors say "set by …").
    pub(crate) fn is_env(&self) -> bool {
        self.kind == ENV_KIND
    }
}

impl Origin {
    fn describe(&self, keys: &[&str]) -> String {
        match self {
            Origin::Fixed(s) => s.clone(),
            Origin::Prefixed => {
                let upper: Vec<String> = keys.iter().map(|k| k.to_ascii_uppercase()).collect();
                format!("environment variable {ENV_PREFIX}{}", upper.join("__"))
            }
        }
    }
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        let origin = self.origin.clone();
        Metadata::named(self.kind)
            .interpolater(move |_: &Profile, keys: &[&str]| origin.describe(keys))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

/// The configuration file: `path`, else `$CONFIG_PATH`, else none (text `""`).
pub(crate) fn read_file(
    path: Option<&Path>,
    env: &[(String, String)],
) -> Result<(String, String), ConfigError> {
    let from_env = env_get(env, CONFIG_PATH_ENV).map(std::path::PathBuf::from);
    match path.or(from_env.as_deref()) {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Io {
                path: p.to_path_buf(),
                source,
            })?;
            Ok((text, p.display().to_string()))
        }
        None => Ok((String::new(), "built-in defaults".to_string())),
    }
}

/// The YAML text's settings (the mapping below the root key; empty if absent/empty). Keys
/// whose value is empty (`~`) are dropped, so they keep their defaults.
pub(crate) fn yaml_layer(yaml: &str, origin: &str) -> Result<Layer, ConfigError> {
    let parse_err = |message: String| ConfigError::Parse {
        origin: origin.to_string(),
        message,
    };
    let mut doc: Value = if yaml.trim().is_empty() {
        Value::Null
    } else {
        serde_yaml_ng::from_str(yaml).map_err(|e| parse_err(format!("invalid YAML: {e}")))?
    };
    doc.apply_merge()
        .map_err(|e| parse_err(format!("invalid YAML merge (<<): {e}")))?;
    let top = match doc {
        Value::Null => Mapping::new(),
        Value::Mapping(m) => m,
        other => {
            return Err(parse_err(format!(
                "the top level must be a mapping with the single root key `{ROOT_KEY}:`, \
                 found {}",
                value_kind(&other)
            )));
        }
    };
    let mut root = Mapping::new();
    for (k, v) in top {
        match (k.as_str(), v) {
            (Some(ROOT_KEY), Value::Null) => {}
            (Some(ROOT_KEY), Value::Mapping(m)) => root = m,
            (Some(ROOT_KEY), other) => {
                return Err(parse_err(format!(
                    "`{ROOT_KEY}:` must be a mapping of settings, found {}",
                    value_kind(&other)
                )));
            }
            _ => {
                return Err(ConfigError::UnknownKey {
                    key: key_display(&k),
                    expected: format!(
                        "{ROOT_KEY} (all settings go under the root key `{ROOT_KEY}:`)"
                    ),
                    origin: origin.to_string(),
                });
            }
        }
    }
    strip_nulls(&mut root);
    let dict: Dict = serde_yaml_ng::from_value(Value::Mapping(root))
        .map_err(|e| parse_err(format!("keys must be names: {e}")))?;
    Ok(Layer {
        kind: FILE_KIND,
        origin: Origin::Fixed(origin.to_string()),
        dict,
    })
}

fn value_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn key_display(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        other => serde_yaml_ng::to_string(other)
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "<non-string key>".to_string()),
    }
}

fn strip_nulls(m: &mut Mapping) {
    m.retain(|_, v| !v.is_null());
    for (_, v) in m.iter_mut() {
        if let Value::Mapping(inner) = v {
            strip_nulls(inner);
        }
    }
}

/// Last non-empty value of `name` in `env`.
pub(crate) fn env_get<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter()
        .rev()
        .find(|(k, v)| k == name && !v.is_empty())
        .map(|(_, v)| v.as_str())
}

/// Sets `path` in `dict` to `value`, creating (or replacing non-dictionary) parents.
fn insert(dict: &mut Dict, path: &[String], value: FValue) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = dict;
    for seg in parents {
        let node = cur
            .entry(seg.clone())
            .or_insert_with(|| FValue::from(Dict::new()));
        if !matches!(node, FValue::Dict(..)) {
            *node = FValue::from(Dict::new());
        }
        cur = match node {
            FValue::Dict(_, d) => d,
            _ => return,
        };
    }
    cur.insert(last.clone(), value);
}

fn single(kind: &'static str, origin: String, path: &[&str], value: String) -> Layer {
    let mut dict = Dict::new();
    let path: Vec<String> = path.iter().map(|s| s.to_string()).collect();
    insert(&mut dict, &path, FValue::from(value));
    Layer {
        kind,
        origin: Origin::Fixed(origin),
        dict,
    }
}

/// `AUDIT_MANAGER__SECTION__KEY=value` → `section.key = "value"` (always a string).
///
/// Below `kafka.producer` / `kafka.consumer` the rest of the name is one property key, its
/// segments joined by `_` (`…__PRODUCER__MESSAGE_MAX_BYTES` → `message_max_bytes`); the
/// loader turns underscores into librdkafka's dots afterwards (see `reference`).
pub(crate) fn env_layer(env: &[(String, String)]) -> Result<Layer, ConfigError> {
    let mut vars: Vec<&(String, String)> = env
        .iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let mut dict = Dict::new();
    for (name, value) in vars {
        let mut segments: Vec<String> = name[ENV_PREFIX.len()..]
            .split("__")
            .map(|s| s.to_ascii_lowercase())
            .collect();
        if segments.iter().any(|s| s.is_empty()) {
            return Err(ConfigError::Env {
                name: name.to_string(),
                message: format!(
                    "empty key segment; use {ENV_PREFIX}SECTION__KEY, e.g. \
                     {ENV_PREFIX}SPOOL__MAX_BYTES"
                ),
            });
        }
        let is_prop_map = segments.len() > 2
            && segments[0] == "kafka"
            && (segments[1] == "producer" || segments[1] == "consumer");
        if is_prop_map {
            let prop = segments[2..].join("_");
            segments.truncate(2);
            segments.push(prop);
        }
        insert(&mut dict, &segments, FValue::from(value.clone()));
    }
    Ok(Layer {
        kind: ENV_KIND,
        origin: Origin::Prefixed,
        dict,
    })
}

/// `UVICORN_HOST`/`UVICORN_PORT` (the reference service's listener) as `http.listen`, below
/// every other source: they apply only when neither the file nor `AUDIT_MANAGER__HTTP__LISTEN`
/// sets the listener.
pub(crate) fn uvicorn_layer(env: &[(String, String)]) -> Option<Layer> {
    let host = env_get(env, "UVICORN_HOST");
    let port = env_get(env, "UVICORN_PORT");
    if host.is_none() && port.is_none() {
        return None;
    }
    let host = host.map(str::trim).unwrap_or("0.0.0.0");
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let listen = format!("{host}:{}", port.map(str::trim).unwrap_or("8000"));
    Some(single(
        ENV_KIND,
        "environment variables UVICORN_HOST/UVICORN_PORT".to_string(),
        &["http", "listen"],
        listen,
    ))
}

/// `database.url` from `DATABASE_URL`, else composed from `DB_*` over the URL the file gives
/// (or the built-in default): YAML < `DB_*` < `DATABASE_URL` (< `AUDIT_MANAGER__DATABASE__URL`,
/// the next layer).
pub(crate) fn database_layer(
    file: &Layer,
    env: &[(String, String)],
) -> Result<Option<Layer>, ConfigError> {
    if let Some(url) = env_get(env, "DATABASE_URL") {
        return Ok(Some(single(
            ENV_KIND,
            "environment variable DATABASE_URL".to_string(),
            &["database", "url"],
            url.to_string(),
        )));
    }
    let set: Vec<&str> = DB_VARS
        .into_iter()
        .filter(|n| env_get(env, n).is_some())
        .collect();
    if set.is_empty() {
        return Ok(None);
    }
    let current = file
        .dict
        .get("database")
        .and_then(|d| d.as_dict())
        .and_then(|d| d.get("url"))
        .and_then(|u| u.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| DatabaseConfig::default().url.0);
    let url = compose_db_url(&current, env)?;
    Ok(Some(single(
        ENV_KIND,
        format!("environment variables {}", set.join(", ")),
        &["database", "url"],
        url,
    )))
}

/// `postgres://user[:password]@host:port/name[?query]` from the `DB_*` variables, the missing
/// parts taken from `current` (its query string is kept); user and password percent-encoded.
fn compose_db_url(current: &str, env: &[(String, String)]) -> Result<String, ConfigError> {
    let default = || {
        Url::parse(&format!(
            "postgres://{DEFAULT_DB_USER}@{DEFAULT_DB_HOST}:{DEFAULT_DB_PORT}/{DEFAULT_DB_NAME}"
        ))
    };
    let mut url = match Url::parse(current) {
        Ok(u) if u.has_host() => u,
        _ => default().map_err(|e| db_env_error("DB_HOST", e))?,
    };
    let cannot = |name: &str, what: &str| ConfigError::Env {
        name: name.to_string(),
        message: format!("cannot use it as the database {what}"),
    };
    if let Some(h) = env_get(env, "DB_HOST") {
        let h = h.trim();
        let h = if h.contains(':') && !h.starts_with('[') {
            format!("[{h}]")
        } else {
            h.to_string()
        };
        url.set_host(Some(&h))
            .map_err(|e| db_env_error("DB_HOST", e))?;
    }
    match env_get(env, "DB_PORT") {
        Some(p) => match p.trim().parse::<u16>() {
            Ok(n) if n > 0 => url
                .set_port(Some(n))
                .map_err(|()| cannot("DB_PORT", "port"))?,
            _ => {
                return Err(ConfigError::Env {
                    name: "DB_PORT".to_string(),
                    message: format!("`{p}` is not a port number (allowed: 1-65535)"),
                });
            }
        },
        None if url.port().is_none() => url
            .set_port(Some(DEFAULT_DB_PORT))
            .map_err(|()| cannot("DB_PORT", "port"))?,
        None => {}
    }
    match env_get(env, "DB_USER") {
        Some(u) => url.set_username(u),
        None if url.username().is_empty() => url.set_username(DEFAULT_DB_USER),
        None => Ok(()),
    }
    .map_err(|()| cannot("DB_USER", "user"))?;
    if let Some(p) = env_get(env, "DB_PASSWORD") {
        url.set_password(Some(p))
            .map_err(|()| cannot("DB_PASSWORD", "password"))?;
    }
    if let Some(n) = env_get(env, "DB_NAME") {
        url.set_path(&format!("/{}", n.trim_start_matches('/')));
    } else if url.path().trim_start_matches('/').is_empty() {
        url.set_path(&format!("/{DEFAULT_DB_NAME}"));
    }
    Ok(url.to_string())
}

fn db_env_error(name: &str, e: url::ParseError) -> ConfigError {
    ConfigError::Env {
        name: name.to_string(),
        message: format!("does not make a valid database URL: {e}"),
    }
}

/// The process environment as UTF-8 pairs; a non-UTF-8 variable that the loader reads is an
/// error, other non-UTF-8 variables are ignored.
pub(crate) fn process_env() -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for (k, v) in std::env::vars_os() {
        match (k.into_string(), v.into_string()) {
            (Ok(k), Ok(v)) => out.push((k, v)),
            (Ok(k), Err(_)) if is_relevant_env(&k) => {
                return Err(ConfigError::Env {
                    name: k,
                    message: "value is not valid UTF-8".to_string(),
                });
            }
            (Err(k), _) if is_relevant_env(&k.to_string_lossy()) => {
                return Err(ConfigError::Env {
                    name: k.to_string_lossy().into_owned(),
                    message: "name is not valid UTF-8".to_string(),
                });
            }
            _ => {}
        }
    }
    Ok(out)
}

fn is_relevant_env(name: &str) -> bool {
    name.starts_with(ENV_PREFIX)
        || DB_VARS.contains(&name)
        || [
            CONFIG_PATH_ENV,
            "DATABASE_URL",
            "UVICORN_HOST",
            "UVICORN_PORT",
            "GIT_COMMIT",
            "BUILD_TIME",
        ]
        .contains(&name)
}

/// Where the value at `path` (below the root) came from: the nearest key on the path that a
/// layer set, described by that layer ("environment variable X", a file path, …), and whether
/// it is an environment variable.
pub(crate) fn origin_of(figment: &Figment, path: &[String]) -> Option<(String, bool)> {
    (1..=path.len()).rev().find_map(|n| {
        let md = figment.find_metadata(&path[..n].join("."))?;
        let keys: Vec<&str> = path.iter().map(String::as_str).collect();
        Some((
            md.interpolate(&Profile::Default, &keys),
            md.name == ENV_KIND,
        ))
    })
}

/// A figment extraction error in the operator's terms: the full key path, what is wrong, and
/// the file or environment variable that set it.
pub(crate) fn explain(err: figment::Error, figment: &Figment, fallback: &str) -> ConfigError {
    let key = std::iter::once(ROOT_KEY)
        .chain(err.path.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(".");
    let origin = origin_of(figment, &err.path);
    if let figment::error::Kind::UnknownField(_, expected) = &err.kind {
        let expected = if expected.is_empty() {
            "(none)".to_string()
        } else {
            expected.join(", ")
        };
        return ConfigError::UnknownKey {
            key,
            expected,
            origin: origin.map_or_else(|| fallback.to_string(), |(o, _)| o),
        };
    }
    let mut message = err.kind.to_string();
    if message.ends_with("expected a string") {
        message.push_str("; quote the value in YAML");
    }
    let source = match origin {
        Some((o, true)) => format!("set by {o}"),
        Some((o, false)) => format!("in {o}"),
        None => format!("in {fallback}"),
    };
    ConfigError::Invalid {
        key,
        message: format!("{message} ({source})"),
    }
}
