//! The reference service's configuration (the OpenG2P Audit Manager, Python), accepted as it
//! is written so a migrating operator can start this service on their existing file, Helm
//! values and environment.
//!
//! | reference key | here |
//! |---|---|
//! | `service_id`, `api_version` | the same keys (envelope `id`, `version`) |
//! | `ingest.queue_max_size` | `spool.max_pending_appends` (info line) |
//! | `database.partition_check_interval_seconds` | `database.partition_check_interval` |
//! | `kafka.producer.acks` | kept `all`, WARNING (`"1"` loses acknowledged events) |
//! | `kafka.producer.linger_ms`, `compression_type` | librdkafka `linger.ms`, `compression.type` |
//! | `kafka.producer.max_batch_size` | librdkafka `batch.size` (bytes, as in its Kafka client) |
//! | `kafka.consumer.batch_max_records` | `sink.batch_max_records` |
//! | `kafka.consumer.flush_interval_ms` | `sink.flush_interval` |
//! | `kafka.consumer.auto_offset_reset` | librdkafka `auto.offset.reset` |
//! | `kafka.consumer.enable_auto_commit` | kept false, WARNING if true |
//!
//! More generally, a `kafka.producer` / `kafka.consumer` key without a dot is a librdkafka
//! property spelled with underscores (`message_max_bytes` → `message.max.bytes`); that is also
//! how `AUDIT_MANAGER__KAFKA__PRODUCER__…` variables arrive. When a reference key and this
//! service's own key are both set, this service's key wins, with a warning.

use std::collections::BTreeMap;
use std::time::Duration;

use figment::Figment;
use figment::value::Value as FValue;

use super::sources::{Layer, origin_of};
use super::value::de_int;
use super::{Config, ConfigError, ROOT_KEY};

/// Keys that exist only as the reference's spelling of one of ours; `GET /config` shows them
/// with the effective value of the key they map to.
pub const ALIAS_KEYS: [&str; 2] = [
    "ingest.queue_max_size",
    "database.partition_check_interval_seconds",
];

/// Something the loader did to the configuration that the operator should know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// A deliberate difference from what the configuration asked for (logged as WARN); else
    /// a mapping worth knowing (INFO).
    pub warning: bool,
    /// Full key path, e.g. `audit_manager.kafka.producer.acks`.
    pub key: String,
    /// What was done and why.
    pub message: String,
}

impl Notice {
    fn warn(key: &str, message: String) -> Notice {
        Notice {
            warning: true,
            key: format!("{ROOT_KEY}.{key}"),
            message,
        }
    }

    fn info(key: &str, message: String) -> Notice {
        Notice {
            warning: false,
            key: format!("{ROOT_KEY}.{key}"),
            message,
        }
    }

    /// Logs the notice at its level.
    pub fn log(&self) {
        if self.warning {
            tracing::warn!(key = %self.key, "{}", self.message);
        } else {
            tracing::info!(key = %self.key, "{}", self.message);
        }
    }
}

/// A reference-only key taken out of a layer before extraction.
pub(crate) struct Alias {
    key: &'static str,
    value: FValue,
    origin: String,
    from_env: bool,
}

/// Removes the [`ALIAS_KEYS`] from every layer (they are not fields of [`Config`]); the last
/// layer that set one wins, as for every other key.
pub(crate) fn take_aliases(layers: &mut [Layer]) -> Vec<Alias> {
    let mut out: Vec<Alias> = Vec::new();
    for layer in layers.iter_mut() {
        let from_env = layer.is_env();
        for key in ALIAS_KEYS {
            let Some((section, name)) = key.split_once('.') else {
                continue;
            };
            let removed = match layer.dict.get_mut(section) {
                Some(FValue::Dict(_, d)) => d.remove(name),
                _ => None,
            };
            if let Some(value) = removed {
                let origin = layer.describe(&[section, name]);
                out.retain(|a| a.key != key);
                out.push(Alias {
                    key,
                    value,
                    origin,
                    from_env,
                });
            }
        }
    }
    out
}

impl Alias {
    fn source(&self) -> String {
        if self.from_env {
            format!("set by {}", self.origin)
        } else {
            format!("in {}", self.origin)
        }
    }

    fn int<T: super::value::IntField>(&self) -> Result<T, ConfigError> {
        de_int::<_, T>(&self.value).map_err(|e| ConfigError::Invalid {
            key: format!("{ROOT_KEY}.{}", self.key),
            message: format!("{} ({})", e.kind, self.source()),
        })
    }
}

/// Maps the reference's keys onto this service's (see the module table) and returns what the
/// operator should be told.
pub(crate) fn apply(
    cfg: &mut Config,
    figment: &Figment,
    aliases: Vec<Alias>,
) -> Result<Vec<Notice>, ConfigError> {
    let mut notes = Vec::new();
    for alias in aliases {
        match alias.key {
            "ingest.queue_max_size" => {
                let n: usize = alias.int()?;
                let target = "spool.max_pending_appends";
                if figment.contains(target) {
                    notes.push(both_set(alias.key, target));
                } else {
                    cfg.spool.max_pending_appends = n;
                    notes.push(Notice::info(
                        alias.key,
                        format!(
                            "ingest.queue_max_size = {n} ({}) bounds the appends waiting for the \
                             spool's group commit ({target}): this service has no in-memory \
                             event queue, an event is on disk before its 202",
                            alias.source()
                        ),
                    ));
                }
            }
            "database.partition_check_interval_seconds" => {
                let secs: u64 = alias.int()?;
                let target = "database.partition_check_interval";
                if figment.contains(target) {
                    notes.push(both_set(alias.key, target));
                } else {
                    cfg.database.partition_check_interval = Duration::from_secs(secs);
                }
            }
            _ => {}
        }
    }
    database_url(cfg, &mut notes);
    producer(cfg, figment, &mut notes);
    consumer(cfg, figment, &mut notes)?;
    Ok(notes)
}

fn both_set(alias: &str, ours: &str) -> Notice {
    Notice::warn(
        alias,
        format!("{alias} and {ours} are both set; {ours} is used (remove {alias})"),
    )
}

/// The librdkafka spelling of a property key: underscores become dots.
fn dotted(key: &str) -> String {
    if key.contains('.') {
        key.to_string()
    } else {
        key.replace('_', ".")
    }
}

fn origin(figment: &Figment, map: &str, key: &str) -> String {
    let path = ["kafka".to_string(), map.to_string(), key.to_string()];
    match origin_of(figment, &path) {
        Some((o, true)) => format!("set by {o}"),
        Some((o, false)) => format!("in {o}"),
        None => "built in".to_string(),
    }
}

fn producer(cfg: &mut Config, figment: &Figment, notes: &mut Vec<Notice>) {
    let mut out = BTreeMap::new();
    for (key, value) in std::mem::take(&mut *cfg.kafka.producer) {
        let name = dotted(&key);
        match name.as_str() {
            "acks" | "request.required.acks" => {
                let v = value.trim().to_ascii_lowercase();
                if v != "all" && v != "-1" {
                    notes.push(Notice::warn(
                        &format!("kafka.producer.{key}"),
                        format!(
                            "kafka.producer.{key} = {value:?} ({}) is kept at \"all\": an event \
                             leaves the spool only once every in-sync replica has it; with \
                             acks={value} an acknowledged event is lost when the partition \
                             leader fails",
                            origin(figment, "producer", &key)
                        ),
                    ));
                }
                out.insert("acks".to_string(), "all".to_string());
            }
            "max.batch.size" => {
                notes.push(Notice::info(
                    &format!("kafka.producer.{key}"),
                    format!(
                        "kafka.producer.{key} = {value} ({}) is used as librdkafka batch.size \
                         (bytes per partition batch, as in the reference's Kafka client)",
                        origin(figment, "producer", &key)
                    ),
                ));
                out.insert("batch.size".to_string(), value);
            }
            _ => {
                out.insert(name, value);
            }
        }
    }
    *cfg.kafka.producer = out;
}

fn consumer(
    cfg: &mut Config,
    figment: &Figment,
    notes: &mut Vec<Notice>,
) -> Result<(), ConfigError> {
    let mut out = BTreeMap::new();
    for (key, value) in std::mem::take(&mut *cfg.kafka.consumer) {
        let name = dotted(&key);
        let path = format!("kafka.consumer.{key}");
        let invalid = |what: &str| ConfigError::Invalid {
            key: format!("{ROOT_KEY}.{path}"),
            message: format!(
                "expected {what}, got `{value}` ({})",
                origin(figment, "consumer", &key)
            ),
        };
        match name.as_str() {
            "batch.max.records" => {
                let n: usize = value
                    .trim()
                    .parse()
                    .map_err(|_| invalid("a whole number of records"))?;
                if figment.contains("sink.batch_max_records") {
                    notes.push(both_set(&path, "sink.batch_max_records"));
                } else {
                    cfg.sink.batch_max_records = n;
                }
            }
            "flush.interval.ms" => {
                let ms: u64 = value
                    .trim()
                    .parse()
                    .map_err(|_| invalid("a whole number of milliseconds"))?;
                if figment.contains("sink.flush_interval") {
                    notes.push(both_set(&path, "sink.flush_interval"));
                } else {
                    cfg.sink.flush_interval = Duration::from_millis(ms);
                }
            }
            "enable.auto.commit" => {
                if !matches!(value.trim().to_ascii_lowercase().as_str(), "false" | "0") {
                    notes.push(Notice::warn(
                        &path,
                        format!(
                            "{path} = {value} ({}) is kept false: the sink commits offsets only \
                             after the database commit, so a batch whose insert failed is read \
                             again instead of skipped",
                            origin(figment, "consumer", &key)
                        ),
                    ));
                }
            }
            "auto.offset.reset" => {
                if matches!(value.trim(), "latest" | "largest" | "end") {
                    notes.push(Notice::warn(
                        &path,
                        format!(
                            "{path} = {value} ({}): a consumer group without committed offsets \
                             starts at the end of the topic and never stores the audit events \
                             already in it; `earliest` (the default) skips none",
                            origin(figment, "consumer", &key)
                        ),
                    ));
                }
                out.insert(name, value);
            }
            _ => {
                out.insert(name, value);
            }
        }
    }
    *cfg.kafka.consumer = out;
    Ok(())
}

/// SQLAlchemy-style URLs (`postgresql+asyncpg://…`) name a Python driver; the URL is the
/// same without it.
fn database_url(cfg: &mut Config, notes: &mut Vec<Notice>) {
    let url = &cfg.database.url;
    let Some((scheme, rest)) = url.split_once("://") else {
        return;
    };
    if let Some((base, driver)) = scheme.split_once('+')
        && matches!(base, "postgres" | "postgresql")
    {
        notes.push(Notice::info(
            "database.url",
            format!("database.url names the Python driver `{driver}`; connecting with {base}://"),
        ));
        let plain = format!("{base}://{rest}");
        cfg.database.url = plain.into();
    }
}

/// `GET /config` entries of the [`ALIAS_KEYS`]: the effective values they stand for.
pub(crate) fn show_aliases(cfg: &Config, json: &mut serde_json::Value) {
    json["ingest"]["queue_max_size"] = cfg.spool.max_pending_appends.into();
    json["database"]["partition_check_interval_seconds"] =
        cfg.database.partition_check_interval.as_secs().into();
}
