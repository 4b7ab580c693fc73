//! Structured-mode validation and normalization (see the module docs in `mod.rs`).

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, FixedOffset, SecondsFormat, TimeDelta, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use super::ValidationMode;
use super::rules::{Normalizations, Rule};
use super::source;
use super::table::{self, Absent, Empty, Field, Fill, Format, Shape};
#[cfg(test)]
use super::table::{INDEXED_CAPS, is_json_content_type, is_valid_traceparent};
use super::time::{self, parse_time};

/// Longest part of an offending value quoted back in an error message.
const MAX_QUOTED_CHARS: usize = 64;

/// The error for a value of `field` longer than its cap.
fn over_cap(field: &Field, value: &str) -> Option<FieldError> {
    let cap = field.cap?;
    (value.len() > cap).then(|| {
        FieldError::new(
            field.path,
            format!(
                "is {} bytes long, over the limit of {cap} bytes (identifiers are kept short \
                 enough for PostgreSQL to index them); send a shorter value",
                value.len()
            ),
        )
    })
}

/// The rule set and limits applied by [`normalize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `strict` refuses what `compatible` normalizes (see [`ValidationMode`]).
    pub mode: ValidationMode,
    /// `strict` mode: how far `time` may lie ahead of the server clock. (`compatible` has no
    /// limit; a time beyond it is only counted.)
    pub max_future_skew: Duration,
    /// Largest accepted size of the normalized, compactly serialized event.
    pub max_event_bytes: usize,
}

impl Default for Limits {
    /// The default mode (`compatible`), 5 minutes of future skew, 1 MiB per event.
    fn default() -> Self {
        Limits {
            mode: ValidationMode::default(),
            max_future_skew: Duration::from_secs(300),
            max_event_bytes: 1 << 20,
        }
    }
}

/// One problem with one field. `field` is a path such as `data.actor.id` or
/// `events[3].data.outcome`; the empty path means the event itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Prefix the path with `events[i].` (the event itself becomes `events[i]`).
    pub fn at_index(mut self, i: usize) -> Self {
        self.field = if self.field.is_empty() {
            format!("events[{i}]")
        } else {
            format!("events[{i}].{}", self.field)
        };
        self
    }
}

impl fmt::Display for FieldError {
    /// `field: message`; an error about the event as a whole reads `event: message`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let field = if self.field.is_empty() {
            "event"
        } else {
            &self.field
        };
        write!(f, "{field}: {}", self.message)
    }
}

/// Why one event was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Schema violations, all of them, in field order (→ 422).
    #[error("{}", self.message())]
    Invalid(Vec<FieldError>),
    /// `time` lies further ahead than `max_future_skew` and nothing else is wrong (→ 422).
    /// When other problems exist too, the same error is listed inside [`Rejection::Invalid`].
    #[error("{}", self.message())]
    TimeInFuture(FieldError),
    /// The normalized event is larger than `max_event_bytes` (→ 413).
    #[error("{}", self.message())]
    TooLarge {
        index: Option<usize>,
        size: usize,
        limit: usize,
    },
}

impl Rejection {
    /// Locate the rejection inside a batch: every field path gets the `events[i].` prefix,
    /// `TooLarge` records the index.
    pub fn at_index(self, i: usize) -> Rejection {
        match self {
            Rejection::Invalid(errors) => {
                Rejection::Invalid(errors.into_iter().map(|e| e.at_index(i)).collect())
            }
            Rejection::TimeInFuture(e) => Rejection::TimeInFuture(e.at_index(i)),
            Rejection::TooLarge { size, limit, .. } => Rejection::TooLarge {
                index: Some(i),
                size,
                limit,
            },
        }
    }

    /// One line listing every problem, `"; "`-joined.
    pub fn message(&self) -> String {
        match self {
            Rejection::Invalid(errors) => {
                let mut out = String::new();
                for (n, e) in errors.iter().enumerate() {
                    if n > 0 {
                        out.push_str("; ");
                    }
                    out.push_str(&e.to_string());
                }
                out
            }
            Rejection::TimeInFuture(e) => e.to_string(),
            Rejection::TooLarge { index, size, limit } => {
                let what = match index {
                    Some(i) => format!("events[{i}]"),
                    None => "event".to_owned(),
                };
                format!("{what}: normalized event is {size} bytes, over the limit of {limit} bytes")
            }
        }
    }

    /// The field errors carried (empty for `TooLarge`), e.g. for a JSON error body.
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            Rejection::Invalid(errors) => errors,
            Rejection::TimeInFuture(e) => std::slice::from_ref(e),
            Rejection::TooLarge { .. } => &[],
        }
    }
}

/// One validated event, ready to spool.
///
/// `json` is the normalized CloudEvent serialized compactly. Key order is the emitter's
/// attribute order; attributes filled in by defaults (`id`, `time`, `datacontenttype`,
/// `data.actor.type`) are appended at the end of their object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedEvent {
    /// The event `id` (as sent, or the generated UUIDv7).
    pub id: String,
    /// The event `time`, exactly as stored in `json`.
    pub time: String,
    /// Kafka key: `subject`, else `data.actor.id`.
    pub key: Option<String>,
    pub json: Vec<u8>,
    /// The `compatible`-mode rules this event needed (empty in `strict` mode).
    pub normalized: Normalizations,
}

/// Validate and normalize one structured-mode event (already parsed JSON).
///
/// All problems are collected. Defaults are filled in before serialization, so replaying the
/// stored `json` always yields the same `(id, time)`. A `null` value of an optional
/// CloudEvents attribute (`id`, `time`, `datacontenttype`, `subject`, `traceparent`) means
/// absent (CloudEvents JSON format); inside `data`, `null` for an optional field means absent
/// and is kept as sent.
pub fn normalize(
    value: Value,
    now: DateTime<Utc>,
    limits: &Limits,
) -> Result<NormalizedEvent, Rejection> {
    let (ev, normalized) = validate_map(value, now, limits)?;
    let id = str_field(&ev, "id").unwrap_or_default().to_owned();
    let time = str_field(&ev, "time").unwrap_or_default().to_owned();
    let key = kafka_key(&ev);
    // 1 KiB fits typical audit events without regrowth (and stays below glibc large-bin sizes).
    let mut json = Vec::with_capacity(1024);
    if let Err(e) = serde_json::to_writer(&mut json, &ev) {
        // Unreachable for a Value written to memory; reported rather than panicking.
        let msg = format!("cannot be serialized: {e}");
        return Err(Rejection::Invalid(vec![FieldError::new("", msg)]));
    }
    if json.len() > limits.max_event_bytes {
        return Err(Rejection::TooLarge {
            index: None,
            size: json.len(),
            limit: limits.max_event_bytes,
        });
    }
    Ok(NormalizedEvent {
        id,
        time,
        key,
        json,
        normalized,
    })
}

/// The validation and defaults of [`normalize`], returning the event object itself instead of
/// its serialization, with the `compatible`-mode rules it needed: for callers that go on working
/// with the fields (the sink's row mapping). `limits.max_event_bytes` is not checked here (it
/// applies to the serialized form).
pub fn validate_map(
    value: Value,
    now: DateTime<Utc>,
    limits: &Limits,
) -> Result<(Map<String, Value>, Normalizations), Rejection> {
    let mut ev = match value {
        Value::Object(map) => map,
        other => {
            let msg = format!("must be a JSON object (got {})", kind(&other));
            return Err(Rejection::Invalid(vec![FieldError::new("", msg)]));
        }
    };
    let mut c = Check {
        compatible: limits.mode == ValidationMode::Compatible,
        now,
        max_future_skew: limits.max_future_skew,
        errs: Vec::new(),
        rules: Normalizations::default(),
        future_error: false,
    };
    c.fields(&mut ev, table::EVENT);

    let mut errs = c.errs;
    if !errs.is_empty() {
        if c.future_error
            && errs.len() == 1
            && let Some(e) = errs.pop()
        {
            return Err(Rejection::TimeInFuture(e));
        }
        return Err(Rejection::Invalid(errs));
    }
    Ok((ev, c.rules))
}

/// A fresh UUIDv7 (hyphenated, lowercase) whose timestamp is `now` (whole milliseconds).
///
/// uuid's `fast-rng` feature draws the 74 random bits from a per-thread generator seeded from
/// the OS, not a syscall per id: the ids need to be unique, not unpredictable.
pub fn new_event_id(now: DateTime<Utc>) -> String {
    let millis = u64::try_from(now.timestamp_millis()).unwrap_or(0);
    let subsec_nanos = u32::try_from(millis % 1000).unwrap_or(0) * 1_000_000;
    let ts = uuid::Timestamp::from_unix_time(millis / 1000, subsec_nanos, 0, 0);
    let id = uuid::Uuid::new_v7(ts);
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    id.hyphenated().encode_lower(&mut buf).to_owned()
}

/// The table's rules applied to one event: the problems found so far and the `compatible`
/// rules applied.
struct Check {
    compatible: bool,
    now: DateTime<Utc>,
    max_future_skew: Duration,
    errs: Vec<FieldError>,
    rules: Normalizations,
    /// `time` is too far ahead (`strict`): alone, that is [`Rejection::TimeInFuture`].
    future_error: bool,
}

impl Check {
    /// Checks the members `fields` of `map`, in table order.
    fn fields(&mut self, map: &mut Map<String, Value>, fields: &[Field]) {
        for field in fields {
            self.field(map, field);
        }
    }

    fn field(&mut self, map: &mut Map<String, Value>, field: &Field) {
        let path = field.path;
        if let Shape::Unsupported { message, rule } = field.shape {
            if map.contains_key(field.key) {
                if self.compatible {
                    self.rules.add(rule);
                } else {
                    self.errs.push(FieldError::new(path, message));
                }
            }
            return;
        }
        let value = match map.get_mut(field.key) {
            None | Some(Value::Null) => return self.absent(map, field),
            Some(value) => value,
        };
        match (field.shape, value) {
            (Shape::Object(members), Value::Object(inner)) => self.fields(inner, members),
            (Shape::Object(_), v) => self.errs.push(not_object(path, v)),
            (Shape::Strings, Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    if !item.is_string() {
                        self.errs.push(not_string(&format!("{path}[{i}]"), item));
                    }
                }
            }
            (Shape::Strings, v) => self.errs.push(FieldError::new(
                path,
                format!("must be an array of strings (got {})", kind(v)),
            )),
            (Shape::Time, _) => self.time(map, field),
            (Shape::String(format), Value::String(s)) => {
                if self.string(field, format, s) {
                    let fill = self.fill(field);
                    map.insert(field.key.to_owned(), fill);
                }
            }
            (Shape::String(_), v) => self.errs.push(not_string(path, v)),
            (Shape::Unsupported { .. }, _) => {}
        }
    }

    /// An absent or `null` value.
    fn absent(&mut self, map: &mut Map<String, Value>, field: &Field) {
        match field.absent {
            Absent::Required => self.errs.push(required(field.path)),
            Absent::RequiredInStrict { value, rule } if self.compatible => {
                map.insert(field.key.to_owned(), Value::String(value.to_owned()));
                self.rules.add(rule);
            }
            Absent::RequiredInStrict { .. } => self.errs.push(required(field.path)),
            Absent::Filled(_) => {
                let fill = self.fill(field);
                map.insert(field.key.to_owned(), fill);
            }
            Absent::Optional => {}
            Absent::OptionalNullDropped => {
                map.shift_remove(field.key);
            }
        }
    }

    /// The default of a [`Absent::Filled`] field.
    fn fill(&self, field: &Field) -> Value {
        Value::String(match field.absent {
            Absent::Filled(Fill::Value(v)) => v.to_owned(),
            Absent::Filled(Fill::EventId) => new_event_id(self.now),
            Absent::Filled(Fill::IngestTime) => {
                self.now.to_rfc3339_opts(SecondsFormat::Millis, true)
            }
            // Not reached: only filled fields are refilled.
            _ => String::new(),
        })
    }

    /// A string value; true when it is to be replaced by the default (an empty `id`).
    fn string(&mut self, field: &Field, format: Format, s: &str) -> bool {
        let path = field.path;
        if s.is_empty() {
            match field.empty {
                Empty::Allowed => {}
                Empty::Kept(_) if self.compatible => {
                    self.rules.add(Rule::EmptyString);
                    return false;
                }
                Empty::Refilled(_) if self.compatible => {
                    self.rules.add(Rule::IdEmpty);
                    return true;
                }
                Empty::Kept(message) | Empty::Refilled(message) => {
                    self.errs.push(FieldError::new(path, message));
                    return false;
                }
            }
        }
        if let Some(e) = over_cap(field, s) {
            self.errs.push(e);
            if !format.checked_beyond_cap() {
                return false;
            }
        }
        if format.accepts(s) {
            return false;
        }
        match format {
            Format::Unambiguous => {
                for rule in source::suspicious(s) {
                    if self.compatible {
                        self.rules.add(rule);
                    } else {
                        self.errs
                            .push(FieldError::new(path, source::message(rule, s)));
                    }
                }
            }
            _ => match format.compatible_rule() {
                Some(rule) if self.compatible => self.rules.add(rule),
                _ => self
                    .errs
                    .push(FieldError::new(path, format_message(format, s))),
            },
        }
        false
    }

    /// `time`, present and not `null`: RFC 3339 is kept; `compatible` rewrites the other forms
    /// the reference reads. Beyond `max_future_skew`, `strict` refuses it and `compatible`
    /// counts it.
    fn time(&mut self, map: &mut Map<String, Value>, field: &Field) {
        let rewrite = match map.get(field.key) {
            Some(Value::String(s)) => match parse_time(s) {
                Some(t) => {
                    self.skew(t, s);
                    None
                }
                None if self.compatible => match time::parse_lenient(s) {
                    Some((t, rules)) => {
                        rules.iter().for_each(|r| self.rules.add(r));
                        Some(t)
                    }
                    None => {
                        self.errs.push(FieldError::new(
                            field.path,
                            format!(
                                "not a timestamp (got {}); send RFC 3339 such as \
                                 \"2026-04-22T14:00:00Z\" (a time without offset, a date alone \
                                 or Unix seconds are read too)",
                                quote(s)
                            ),
                        ));
                        None
                    }
                },
                None => {
                    self.errs
                        .push(FieldError::new(field.path, "not an RFC 3339 timestamp"));
                    None
                }
            },
            Some(Value::Number(n)) if self.compatible => match time::from_unix_number(n) {
                Some(t) => {
                    self.rules.add(Rule::TimeUnixSeconds);
                    Some(t)
                }
                None => {
                    self.errs.push(FieldError::new(
                        field.path,
                        format!("Unix time {n} is outside 1600-01-01 .. 9999-12-31"),
                    ));
                    None
                }
            },
            Some(v) => {
                self.errs.push(not_string(field.path, v));
                None
            }
            None => None,
        };
        if let Some(t) = rewrite {
            let fixed = t.to_rfc3339_opts(SecondsFormat::AutoSi, true);
            self.skew(t.fixed_offset(), &fixed);
            map.insert(field.key.to_owned(), Value::String(fixed));
        }
    }

    /// `time` further ahead than allowed: refused (`strict`) or counted (`compatible`).
    fn skew(&mut self, t: DateTime<FixedOffset>, raw: &str) {
        let Some(problem) = check_skew(raw, t, self.now, self.max_future_skew) else {
            return;
        };
        if self.compatible {
            self.rules.add(Rule::TimeFuture);
        } else {
            self.errs.push(problem);
            self.future_error = true;
        }
    }
}

/// The problem with a string of `format` that does not have it.
fn format_message(format: Format, s: &str) -> String {
    match format {
        Format::Exactly(v) => format!("must be {} (got {})", Value::from(v), quote(s)),
        Format::OneOf(values) => {
            format!("must be one of {} (got {})", values.join(", "), quote(s))
        }
        Format::JsonMediaType => format!(
            "must be a JSON content type (application/json or */*+json) (got {})",
            quote(s)
        ),
        Format::Traceparent => format!(
            "must be a W3C traceparent (00-<32 hex trace-id>-<16 hex parent-id>-<2 hex flags>) \
             (got {})",
            quote(s)
        ),
        // Named per kind found (`source::message`); `Any` accepts everything.
        Format::Unambiguous | Format::Any => String::new(),
    }
}

fn required(path: &str) -> FieldError {
    FieldError::new(path, "required")
}

fn not_string(path: &str, v: &Value) -> FieldError {
    FieldError::new(path, format!("must be a string (got {})", kind(v)))
}

fn not_object(path: &str, v: &Value) -> FieldError {
    FieldError::new(path, format!("must be a JSON object (got {})", kind(v)))
}

/// JSON type name of `v`, for error messages.
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// `s` as a JSON string literal, cut to [`MAX_QUOTED_CHARS`] characters.
fn quote(s: &str) -> String {
    let (cut, truncated) = match s.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((at, _)) => (&s[..at], true),
        None => (s, false),
    };
    let mut out = Value::String(cut.to_owned()).to_string();
    if truncated {
        out.push('…');
    }
    out
}

fn str_field<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    map.get(key).and_then(Value::as_str)
}

pub(super) fn check_skew(
    raw: &str,
    t: DateTime<FixedOffset>,
    now: DateTime<Utc>,
    max: Duration,
) -> Option<FieldError> {
    let ahead = t.with_timezone(&Utc).signed_duration_since(now);
    let limit = TimeDelta::from_std(max).unwrap_or(TimeDelta::MAX);
    if ahead <= limit {
        return None;
    }
    let ahead = ahead.to_std().unwrap_or_default();
    Some(FieldError::new(
        "time",
        format!(
            "{} is {} ahead of the server clock (at most {} allowed)",
            quote(raw),
            fmt_duration(ahead),
            fmt_duration(max)
        ),
    ))
}

/// Compact human duration: `1h2m3.25s`, `5m`, `0.5s`, `0s`.
pub(crate) fn fmt_duration(d: Duration) -> String {
    let total_ms = d.as_millis();
    let ms = total_ms % 1000;
    let total_s = total_ms / 1000;
    let (h, m, s) = (total_s / 3600, (total_s / 60) % 60, total_s % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if ms > 0 {
        let frac = format!("{ms:03}");
        out.push_str(&format!("{s}.{}s", frac.trim_end_matches('0')));
    } else if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// Kafka key of a (normalized) event: `subject`, else `data.actor.id`.
pub fn kafka_key(event: &Map<String, Value>) -> Option<String> {
    if let Some(subject) = str_field(event, "subject").filter(|s| !s.is_empty()) {
        return Some(subject.to_owned());
    }
    str_at(event, &["data", "actor", "id"])
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// The string at a path of object keys, e.g. `str_at(ev, &["data", "actor", "id"])`.
pub fn str_at<'a>(event: &'a Map<String, Value>, path: &[&str]) -> Option<&'a str> {
    let (last, parents) = path.split_last()?;
    let mut map = event;
    for key in parents {
        map = map.get(*key)?.as_object()?;
    }
    str_field(map, last)
}

/// Parse a stored normalized event (the `json` of a [`NormalizedEvent`]) back.
/// Fails on invalid JSON or when the top level is not an object.
pub fn parse_normalized(json: &[u8]) -> Result<Map<String, Value>, serde_json::Error> {
    serde_json::from_slice(json)
}

/// `time` of a stored normalized event, parsed.
pub fn event_time(event: &Map<String, Value>) -> Option<DateTime<FixedOffset>> {
    parse_time(str_field(event, "time")?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, 19, 23, 11).unwrap() + TimeDelta::milliseconds(123)
    }

    /// `strict`: the tests below are the strict rule set; `compatible` has its own module.
    fn limits() -> Limits {
        Limits {
            mode: ValidationMode::Strict,
            max_future_skew: Duration::from_secs(300),
            max_event_bytes: 64 * 1024,
        }
    }

    fn minimal() -> Value {
        json!({
            "specversion": "1.0",
            "source": "/benefits/api",
            "type": "org.example.benefit.approved",
            "data": {"actor": {"id": "u-1"}, "action": "approve", "outcome": "success"}
        })
    }

    fn errors_of(v: Value) -> Vec<String> {
        match normalize(v, now(), &limits()) {
            Err(Rejection::Invalid(errs)) => errs.iter().map(ToString::to_string).collect(),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    fn has_error(v: Value, expected: &str) {
        let errs = errors_of(v);
        assert!(
            errs.iter().any(|e| e == expected),
            "{expected:?} not in {errs:?}"
        );
    }

    fn with(mut v: Value, pointer: &str, new: Value) -> Value {
        *v.pointer_mut(pointer).unwrap() = new;
        v
    }

    fn without(mut v: Value, parent: &str, key: &str) -> Value {
        v.pointer_mut(parent)
            .unwrap()
            .as_object_mut()
            .unwrap()
            .shift_remove(key);
        v
    }

    #[test]
    fn full_event_round_trips_with_extras() {
        let input = json!({
            "specversion": "1.0",
            "id": "evt-42",
            "source": "/benefits/api",
            "type": "org.example.benefit.approved",
            "subject": "case-7",
            "time": "2026-11-22T19:20:00.5Z",
            "datacontenttype": "application/json; charset=utf-8",
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "tenantid": "gov-a",
            "sequence": 17,
            "data": {
                "actor": {
                    "type": "service", "id": "svc-9", "name": "Batch", "roles": ["a", "b"],
                    "ip": "10.0.0.1", "session_id": "s-1", "department": "welfare"
                },
                "action": "approve",
                "outcome": "success",
                "resource": {"type": "case", "id": "c-7", "region": "north"},
                "reason": "eligible",
                "changes": [{"field": "status", "from": "pending", "to": "approved"}],
                "context": {"request_id": "r-1"}
            }
        });
        let expected_json = serde_json::to_vec(&input).unwrap();
        let ev = normalize(input.clone(), now(), &limits()).unwrap();
        assert_eq!(ev.id, "evt-42");
        assert_eq!(ev.time, "2026-11-22T19:20:00.5Z");
        assert_eq!(ev.key.as_deref(), Some("case-7"));
        // Nothing added, removed or reordered.
        assert_eq!(ev.json, expected_json);
        let back = parse_normalized(&ev.json).unwrap();
        assert_eq!(Value::Object(back), input);
    }

    #[test]
    fn defaults_are_filled_and_appended() {
        let ev = normalize(minimal(), now(), &limits()).unwrap();
        let back = parse_normalized(&ev.json).unwrap();
        let id = uuid::Uuid::parse_str(&ev.id).unwrap();
        assert_eq!(id.get_version_num(), 7);
        let (secs, nanos) = id.get_timestamp().unwrap().to_unix();
        assert_eq!((secs, nanos / 1_000_000), (now().timestamp() as u64, 123));
        assert_eq!(back["id"], ev.id.as_str());
        assert_eq!(ev.time, "2026-11-22T19:23:11.123Z");
        assert_eq!(back["time"], ev.time.as_str());
        assert_eq!(back["datacontenttype"], "application/json");
        assert_eq!(back["data"]["actor"]["type"], "user");
        assert_eq!(ev.key.as_deref(), Some("u-1"));
        let keys: Vec<&str> = back.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "specversion",
                "source",
                "type",
                "data",
                "id",
                "time",
                "datacontenttype"
            ]
        );
        // Replaying the stored JSON is stable: same id and time, same bytes.
        let again = normalize(Value::Object(back), now() + TimeDelta::hours(1), &limits());
        let again = again.unwrap();
        assert_eq!(
            (again.id.as_str(), again.time.as_str()),
            (ev.id.as_str(), ev.time.as_str())
        );
        assert_eq!(again.json, ev.json);
    }

    #[test]
    fn generated_ids_are_unique_v7() {
        let ids: std::collections::HashSet<String> =
            (0..10_000).map(|_| new_event_id(now())).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(
            ids.iter()
                .all(|id| uuid::Uuid::parse_str(id).unwrap().get_version_num() == 7)
        );
        let other_thread = std::thread::spawn(|| new_event_id(now())).join().unwrap();
        assert!(!ids.contains(&other_thread));
    }

    #[test]
    fn nulls_on_optional_attributes_mean_absent() {
        let mut v = minimal();
        let obj = v.as_object_mut().unwrap();
        for k in ["id", "time", "datacontenttype", "subject", "traceparent"] {
            obj.insert(k.into(), Value::Null);
        }
        let ev = normalize(v, now(), &limits()).unwrap();
        let back = parse_normalized(&ev.json).unwrap();
        assert!(!back.contains_key("subject") && !back.contains_key("traceparent"));
        assert_eq!(back["datacontenttype"], "application/json");
        assert_eq!(ev.time, "2026-11-22T19:23:11.123Z");
        assert!(!ev.id.is_empty());
    }

    #[test]
    fn not_an_object() {
        assert_eq!(
            errors_of(json!([1])),
            ["event: must be a JSON object (got array)"]
        );
    }

    #[test]
    fn envelope_rules() {
        has_error(
            with(minimal(), "/specversion", json!("0.3")),
            r#"specversion: must be "1.0" (got "0.3")"#,
        );
        has_error(
            with(minimal(), "/specversion", json!(1.0)),
            "specversion: must be a string (got number)",
        );
        has_error(
            without(minimal(), "", "specversion"),
            "specversion: required",
        );
        has_error(
            with(minimal(), "/source", json!("")),
            "source: must not be empty",
        );
        has_error(without(minimal(), "", "source"), "source: required");
        has_error(
            with(minimal(), "/type", json!(true)),
            "type: must be a string (got boolean)",
        );
        has_error(without(minimal(), "", "type"), "type: required");
        let mut v = minimal();
        v["id"] = json!("");
        has_error(v, "id: must not be empty");
        let mut v = minimal();
        v["id"] = json!(7);
        has_error(v, "id: must be a string (got number)");
        let mut v = minimal();
        v["subject"] = json!("");
        has_error(v, "subject: must not be empty if present");
        let mut v = minimal();
        v["subject"] = json!(5);
        has_error(v, "subject: must be a string (got number)");
        let mut v = minimal();
        v["time"] = json!("2026-11-22T19:23:11");
        has_error(v, "time: not an RFC 3339 timestamp");
        let mut v = minimal();
        v["time"] = json!(1_700_000_000);
        has_error(v, "time: must be a string (got number)");
        let mut v = minimal();
        v["datacontenttype"] = json!("text/plain");
        has_error(
            v,
            r#"datacontenttype: must be a JSON content type (application/json or */*+json) (got "text/plain")"#,
        );
        let mut v = minimal();
        v["data_base64"] = json!("e30=");
        has_error(
            v,
            "data_base64: not supported: data must be a JSON object in `data`",
        );
        has_error(without(minimal(), "", "data"), "data: required");
        has_error(
            with(minimal(), "/data", json!("x")),
            "data: must be a JSON object (got string)",
        );
    }

    #[test]
    fn data_rules() {
        has_error(without(minimal(), "/data", "actor"), "data.actor: required");
        has_error(
            with(minimal(), "/data/actor", json!([])),
            "data.actor: must be a JSON object (got array)",
        );
        has_error(
            without(minimal(), "/data/actor", "id"),
            "data.actor.id: required",
        );
        has_error(
            with(minimal(), "/data/actor/id", json!("")),
            "data.actor.id: must not be empty",
        );
        has_error(
            with(minimal(), "/data/actor/id", json!(12)),
            "data.actor.id: must be a string (got number)",
        );
        let mut v = minimal();
        v["data"]["actor"]["type"] = json!("robot");
        has_error(
            v,
            r#"data.actor.type: must be one of user, system, service, anonymous (got "robot")"#,
        );
        let mut v = minimal();
        v["data"]["actor"]["name"] = json!(1);
        has_error(v, "data.actor.name: must be a string (got number)");
        let mut v = minimal();
        v["data"]["actor"]["roles"] = json!("admin");
        has_error(
            v,
            "data.actor.roles: must be an array of strings (got string)",
        );
        let mut v = minimal();
        v["data"]["actor"]["roles"] = json!(["a", "b", 3]);
        has_error(v, "data.actor.roles[2]: must be a string (got number)");
        let mut v = minimal();
        v["data"]["actor"]["ip"] = json!(false);
        has_error(v, "data.actor.ip: must be a string (got boolean)");
        let mut v = minimal();
        v["data"]["actor"]["session_id"] = json!({});
        has_error(v, "data.actor.session_id: must be a string (got object)");
        has_error(
            without(minimal(), "/data", "action"),
            "data.action: required",
        );
        has_error(
            with(minimal(), "/data/action", json!("")),
            "data.action: must not be empty",
        );
        has_error(
            without(minimal(), "/data", "outcome"),
            "data.outcome: required",
        );
        has_error(
            with(minimal(), "/data/outcome", json!("ok")),
            r#"data.outcome: must be one of success, failure, denied (got "ok")"#,
        );
        let mut v = minimal();
        v["data"]["resource"] = json!("case");
        has_error(v, "data.resource: must be a JSON object (got string)");
        let mut v = minimal();
        v["data"]["resource"] = json!({"id": "c-1"});
        has_error(v, "data.resource.type: required");
        let mut v = minimal();
        v["data"]["resource"] = json!({"type": "case", "id": 5});
        has_error(v, "data.resource.id: must be a string (got number)");
        let mut v = minimal();
        v["data"]["reason"] = json!(["x"]);
        has_error(v, "data.reason: must be a string (got array)");
    }

    #[test]
    fn all_errors_are_collected_in_field_order() {
        let v = json!({
            "specversion": "0.3",
            "type": "",
            "time": "yesterday",
            "data": {"actor": {"type": "robot"}, "outcome": "ok"}
        });
        let errs = errors_of(v);
        assert_eq!(
            errs,
            [
                r#"specversion: must be "1.0" (got "0.3")"#,
                "source: required",
                "type: must not be empty",
                "time: not an RFC 3339 timestamp",
                r#"data.actor.type: must be one of user, system, service, anonymous (got "robot")"#,
                "data.actor.id: required",
                "data.action: required",
                r#"data.outcome: must be one of success, failure, denied (got "ok")"#,
            ]
        );
        let rejection = normalize(json!({"data": {}}), now(), &limits()).unwrap_err();
        assert_eq!(
            rejection.message(),
            "specversion: required; source: required; type: required; data.actor: required; \
             data.action: required; data.outcome: required"
        );
        assert_eq!(rejection.to_string(), rejection.message());
    }

    #[test]
    fn future_skew() {
        let mut v = minimal();
        v["time"] = json!("2026-11-22T19:28:11.123Z"); // exactly the limit ahead
        assert!(normalize(v, now(), &limits()).is_ok());
        let mut v = minimal();
        v["time"] = json!("2026-11-22T21:23:11.623+01:00"); // 1h 0.5s ahead
        match normalize(v, now(), &limits()) {
            Err(Rejection::TimeInFuture(e)) => {
                assert_eq!(e.field, "time");
                assert_eq!(
                    e.message,
                    r#""2026-11-22T21:23:11.623+01:00" is 1h0.5s ahead of the server clock (at most 5m allowed)"#
                );
            }
            other => panic!("{other:?}"),
        }
        // Far past is fine.
        let mut v = minimal();
        v["time"] = json!("1999-01-01T00:00:00Z");
        assert!(normalize(v, now(), &limits()).is_ok());
        // With other problems, it is listed among them.
        let mut v = minimal();
        v["time"] = json!("2030-01-01T00:00:00Z");
        v["data"]["outcome"] = json!("maybe");
        let errs = errors_of(v);
        assert_eq!(errs.len(), 2);
        assert!(
            errs[0].starts_with("time: \"2030-01-01T00:00:00Z\" is "),
            "{errs:?}"
        );
    }

    #[test]
    fn offset_times_are_kept_verbatim() {
        for t in [
            "2026-11-22T21:23:11+02:00",
            "2026-11-22t13:00:00.000001-05:30",
            "2026-11-22T19:00:00z",
        ] {
            let mut v = minimal();
            v["time"] = json!(t);
            let ev = normalize(v, now(), &limits()).unwrap();
            assert_eq!(ev.time, t);
            assert_eq!(parse_normalized(&ev.json).unwrap()["time"], t);
        }
    }

    #[test]
    fn content_types() {
        for ok in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/vnd.example+json",
            "application/cloudevents+json;charset=UTF-8",
        ] {
            assert!(is_json_content_type(ok), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/jsonx",
            "+json",
            "application/+json",
            "json",
            "",
            "application/xml; x=+json",
        ] {
            assert!(!is_json_content_type(bad), "{bad}");
        }
    }

    #[test]
    fn kafka_key_is_subject_else_actor_id() {
        let mut v = minimal();
        v["subject"] = json!("case-9");
        assert_eq!(
            normalize(v, now(), &limits()).unwrap().key.as_deref(),
            Some("case-9")
        );
        assert_eq!(
            normalize(minimal(), now(), &limits())
                .unwrap()
                .key
                .as_deref(),
            Some("u-1")
        );
        let map = json!({"data": {"actor": {"id": "a"}}});
        assert_eq!(kafka_key(map.as_object().unwrap()).as_deref(), Some("a"));
        assert_eq!(kafka_key(&Map::new()), None);
    }

    #[test]
    fn too_large() {
        let small = Limits {
            max_event_bytes: 200,
            ..limits()
        };
        let mut v = minimal();
        v["data"]["context"] = json!({"blob": "x".repeat(300)});
        match normalize(v, now(), &small) {
            Err(Rejection::TooLarge {
                index: None,
                size,
                limit: 200,
            }) => assert!(size > 300),
            other => panic!("{other:?}"),
        }
        // The limit applies to the normalized size, inclusive.
        let exact = normalize(minimal(), now(), &limits()).unwrap().json.len();
        let fits = Limits {
            max_event_bytes: exact,
            ..limits()
        };
        assert!(normalize(minimal(), now(), &fits).is_ok());
    }

    #[test]
    fn at_index_prefixes_fields() {
        let r = normalize(
            json!({"specversion": "1.0", "data": {"actor": {"id": "x"}}}),
            now(),
            &limits(),
        )
        .unwrap_err()
        .at_index(3);
        let fields: Vec<&str> = r.field_errors().iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "events[3].source",
                "events[3].type",
                "events[3].data.action",
                "events[3].data.outcome"
            ]
        );
        assert!(
            r.message()
                .starts_with("events[3].source: required; events[3].type: required")
        );
        let r = normalize(json!(1), now(), &limits())
            .unwrap_err()
            .at_index(0);
        assert_eq!(r.message(), "events[0]: must be a JSON object (got number)");
        let r = Rejection::TooLarge {
            index: None,
            size: 10,
            limit: 5,
        }
        .at_index(2);
        assert_eq!(
            r,
            Rejection::TooLarge {
                index: Some(2),
                size: 10,
                limit: 5
            }
        );
        assert_eq!(
            r.message(),
            "events[2]: normalized event is 10 bytes, over the limit of 5 bytes"
        );
        let r = Rejection::TimeInFuture(FieldError::new("time", "ahead")).at_index(1);
        assert_eq!(r.message(), "events[1].time: ahead");
    }

    #[test]
    fn traceparent_rules() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(is_valid_traceparent(ok));
        assert!(is_valid_traceparent(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra"
        ));
        for bad in [
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00x",
            "",
        ] {
            assert!(!is_valid_traceparent(bad), "{bad}");
        }
        let mut v = minimal();
        v["traceparent"] = json!(ok);
        assert!(normalize(v, now(), &limits()).is_ok());
        let mut v = minimal();
        v["traceparent"] = json!("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let errs = errors_of(v);
        assert!(
            errs.len() == 1 && errs[0].starts_with("traceparent: must be a W3C traceparent"),
            "{errs:?}"
        );
        let mut v = minimal();
        v["traceparent"] = json!(1);
        has_error(v, "traceparent: must be a string (got number)");
    }

    #[test]
    fn quoted_values_are_escaped_and_truncated() {
        let long = "é".repeat(100);
        let q = quote(&long);
        assert_eq!(q, format!("\"{}\"…", "é".repeat(64)));
        assert_eq!(quote("a\"b"), r#""a\"b""#);
    }

    #[test]
    fn durations_format_compactly() {
        assert_eq!(fmt_duration(Duration::from_secs(0)), "0s");
        assert_eq!(fmt_duration(Duration::from_millis(500)), "0.5s");
        assert_eq!(fmt_duration(Duration::from_secs(300)), "5m");
        assert_eq!(fmt_duration(Duration::from_millis(3_723_250)), "1h2m3.25s");
    }
}

/// `compatible` mode: one test per rule, and the rules both modes share.
#[cfg(test)]
mod compatible_tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 4, 22, 15, 0, 0).unwrap()
    }

    fn limits(mode: ValidationMode) -> Limits {
        Limits {
            mode,
            max_future_skew: Duration::from_secs(3600),
            max_event_bytes: 64 * 1024,
        }
    }

    fn reference_event() -> Value {
        json!({
            "specversion": "1.0", "id": "r-1", "source": "/openg2p/registry",
            "type": "org.openg2p.beneficiary.viewed", "time": "2026-04-22T14:00:00Z",
            "data": {"actor": {"type": "user", "id": "u_1"}, "action": "view",
                     "outcome": "success"}
        })
    }

    /// Normalizes in `compatible` mode; returns the stored event and the rule labels.
    fn compat(v: Value) -> (Map<String, Value>, Vec<&'static str>) {
        let ev = normalize(v.clone(), now(), &limits(ValidationMode::Compatible))
            .unwrap_or_else(|e| panic!("{v}: {e}"));
        let stored = parse_normalized(&ev.json).unwrap();
        assert_eq!(stored["time"], ev.time.as_str());
        (stored, ev.normalized.iter().map(Rule::label).collect())
    }

    fn strict_refuses(v: Value, field: &str) {
        let e = normalize(v, now(), &limits(ValidationMode::Strict)).unwrap_err();
        assert!(
            e.field_errors().iter().any(|f| f.field == field),
            "strict should name {field}: {e}"
        );
    }

    fn with(key: &str, value: Value) -> Value {
        let mut v = reference_event();
        v[key] = value;
        v
    }

    #[test]
    fn an_event_strict_accepts_is_stored_identically() {
        let v = reference_event();
        let c = normalize(v.clone(), now(), &limits(ValidationMode::Compatible)).unwrap();
        let s = normalize(v, now(), &limits(ValidationMode::Strict)).unwrap();
        assert_eq!(c.json, s.json);
        assert!(c.normalized.is_empty() && s.normalized.is_empty());
    }

    #[test]
    fn naive_time_is_utc() {
        let v = with("time", json!("2026-04-22T14:00:00"));
        let (ev, rules) = compat(v.clone());
        assert_eq!(ev["time"], "2026-04-22T14:00:00Z");
        assert_eq!(rules, ["time_no_offset"]);
        strict_refuses(v, "time");
    }

    #[test]
    fn space_separated_time() {
        let v = with("time", json!("2026-04-22 14:00:00Z"));
        let (ev, rules) = compat(v.clone());
        assert_eq!(ev["time"], "2026-04-22T14:00:00Z");
        assert_eq!(rules, ["time_space_separator"]);
        strict_refuses(v, "time");
    }

    #[test]
    fn date_alone_is_midnight_utc() {
        let v = with("time", json!("2026-04-22"));
        let (ev, rules) = compat(v.clone());
        assert_eq!(ev["time"], "2026-04-22T00:00:00Z");
        assert_eq!(rules, ["time_date_only"]);
        strict_refuses(v, "time");
    }

    #[test]
    fn a_number_is_unix_seconds() {
        let v = with("time", json!(1_776_866_400));
        let (ev, rules) = compat(v.clone());
        assert_eq!(ev["time"], "2026-04-22T14:00:00Z");
        assert_eq!(rules, ["time_unix_seconds"]);
        strict_refuses(v, "time");
        let (ev, _) = compat(with("time", json!(1_776_866_400.5)));
        assert_eq!(ev["time"], "2026-04-22T14:00:00.500Z");
        let (ev, _) = compat(with("time", json!("1776866400")));
        assert_eq!(ev["time"], "2026-04-22T14:00:00Z");
    }

    #[test]
    fn other_reference_forms_are_rewritten_to_utc() {
        let (ev, rules) = compat(with("time", json!("2026-04-22T16:00+0200")));
        assert_eq!(ev["time"], "2026-04-22T14:00:00Z");
        assert_eq!(rules, ["time_other_format"]);
    }

    #[test]
    fn rfc3339_times_are_kept_verbatim() {
        let (ev, rules) = compat(with("time", json!("2026-04-22T16:00:00.1+02:00")));
        assert_eq!(ev["time"], "2026-04-22T16:00:00.1+02:00");
        assert!(rules.is_empty());
    }

    #[test]
    fn times_the_reference_refuses_are_refused() {
        for bad in [json!("yesterday"), json!(""), json!(true), json!(1e300)] {
            let e = normalize(
                with("time", bad.clone()),
                now(),
                &limits(ValidationMode::Compatible),
            )
            .unwrap_err();
            assert_eq!(e.field_errors()[0].field, "time", "{bad}: {e}");
        }
    }

    #[test]
    fn no_future_limit() {
        let v = with("time", json!("2031-01-01T00:00:00Z"));
        let (ev, rules) = compat(v.clone());
        assert_eq!(ev["time"], "2031-01-01T00:00:00Z");
        assert_eq!(rules, ["time_future"]);
        assert!(matches!(
            normalize(v, now(), &limits(ValidationMode::Strict)),
            Err(Rejection::TimeInFuture(_))
        ));
        // A naive future time is rewritten and counted for both.
        let (_, rules) = compat(with("time", json!("2031-01-01T00:00:00")));
        assert_eq!(rules, ["time_no_offset", "time_future"]);
    }

    #[test]
    fn missing_or_null_specversion_is_1_0() {
        let mut v = reference_event();
        v.as_object_mut().unwrap().shift_remove("specversion");
        let (ev, rules) = compat(v.clone());
        assert_eq!(ev["specversion"], "1.0");
        assert_eq!(rules, ["specversion_missing"]);
        strict_refuses(v, "specversion");
        let (ev, _) = compat(with("specversion", Value::Null));
        assert_eq!(ev["specversion"], "1.0");
        // Another version is still refused.
        let e = normalize(
            with("specversion", json!("0.3")),
            now(),
            &limits(ValidationMode::Compatible),
        )
        .unwrap_err();
        assert_eq!(e.field_errors()[0].field, "specversion");
    }

    #[test]
    fn empty_id_gets_a_generated_one() {
        let v = with("id", json!(""));
        let (ev, rules) = compat(v.clone());
        let id = ev["id"].as_str().unwrap();
        assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);
        assert_eq!(rules, ["id_empty"]);
        strict_refuses(v.clone(), "id");
        let (again, _) = compat(v);
        assert_ne!(again["id"], ev["id"], "each empty-id event gets its own id");
    }

    #[test]
    fn empty_strings_are_kept_as_sent() {
        let mut v = reference_event();
        v["source"] = json!("");
        v["type"] = json!("");
        v["subject"] = json!("");
        v["data"]["action"] = json!("");
        v["data"]["actor"]["id"] = json!("");
        v["data"]["resource"] = json!({"type": ""});
        let (ev, rules) = compat(v.clone());
        assert_eq!(
            (&ev["source"], &ev["type"], &ev["subject"]),
            (&json!(""), &json!(""), &json!(""))
        );
        assert_eq!(ev["data"]["action"], "");
        assert_eq!(ev["data"]["actor"]["id"], "");
        assert_eq!(ev["data"]["resource"]["type"], "");
        assert_eq!(rules, ["empty_string"]);
        for field in [
            "source",
            "type",
            "subject",
            "data.action",
            "data.actor.id",
            "data.resource.type",
        ] {
            strict_refuses(v.clone(), field);
        }
    }

    #[test]
    fn any_traceparent_is_kept() {
        let v = with("traceparent", json!("not-a-w3c-value"));
        let (ev, rules) = compat(v.clone());
        assert_eq!(ev["traceparent"], "not-a-w3c-value");
        assert_eq!(rules, ["traceparent_not_w3c"]);
        strict_refuses(v, "traceparent");
        // Still a string.
        let e = normalize(
            with("traceparent", json!(5)),
            now(),
            &limits(ValidationMode::Compatible),
        )
        .unwrap_err();
        assert_eq!(e.field_errors()[0].field, "traceparent");
    }

    #[test]
    fn any_datacontenttype_is_kept() {
        let v = with("datacontenttype", json!("text/plain"));
        let (ev, rules) = compat(v.clone());
        assert_eq!(ev["datacontenttype"], "text/plain");
        assert_eq!(rules, ["datacontenttype_not_json"]);
        strict_refuses(v, "datacontenttype");
    }

    #[test]
    fn data_base64_is_kept_as_an_extension() {
        let v = with("data_base64", json!("e30="));
        let (ev, rules) = compat(v.clone());
        assert_eq!(ev["data_base64"], "e30=");
        assert_eq!(rules, ["data_base64_kept"]);
        strict_refuses(v, "data_base64");
    }

    /// The shape the reference's model writes to Kafka (`model_dump(mode="json")`): every
    /// optional field present, as `null` when unset.
    #[test]
    fn explicit_nulls_of_optional_fields_are_absent() {
        let v = json!({
            "specversion": "1.0", "id": "r-2", "source": "/s", "type": "t", "subject": null,
            "time": "2026-04-22T14:00:00", "datacontenttype": "application/json",
            "traceparent": null,
            "data": {"actor": {"type": "user", "id": "u", "name": null, "roles": [],
                               "ip": null, "session_id": null},
                     "action": "view", "outcome": "success", "resource": null, "reason": null}
        });
        let (ev, rules) = compat(v);
        assert!(!ev.contains_key("subject") && !ev.contains_key("traceparent"));
        assert_eq!(ev["data"]["resource"], Value::Null, "data is kept as sent");
        assert_eq!(rules, ["time_no_offset"]);
    }

    #[test]
    fn data_rules_hold_in_both_modes() {
        for mode in [ValidationMode::Compatible, ValidationMode::Strict] {
            let mut v = reference_event();
            v["data"] = json!("x");
            let cases = [
                (v, "data"),
                (
                    with("data", json!({"action": "a", "outcome": "success"})),
                    "data.actor",
                ),
                (
                    with(
                        "data",
                        json!({"actor": {}, "action": "a", "outcome": "success"}),
                    ),
                    "data.actor.id",
                ),
                (
                    with("data", json!({"actor": {"id": "u"}, "outcome": "success"})),
                    "data.action",
                ),
                (
                    with(
                        "data",
                        json!({"actor": {"id": "u"}, "action": "a", "outcome": "ok"}),
                    ),
                    "data.outcome",
                ),
            ];
            for (v, field) in cases {
                let e = normalize(v, now(), &limits(mode)).unwrap_err();
                assert!(
                    e.field_errors().iter().any(|f| f.field == field),
                    "{mode}: {field} not in {e}"
                );
            }
        }
    }

    /// Sets the string at `pointer` (creating `data.resource` when needed).
    fn set(v: &mut Value, pointer: &str, value: &str) {
        if pointer.starts_with("/data/resource/") && v["data"].get("resource").is_none() {
            v["data"]["resource"] = json!({"type": "beneficiary"});
        }
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        v.pointer_mut(parent).unwrap()[key] = json!(value);
    }

    /// A string of `len` bytes: two-byte characters (and an ASCII one for an odd length).
    fn value_of(len: usize) -> String {
        // Multi-byte characters: the cap counts bytes, not characters.
        let mut s = "é".repeat(len / 2);
        if len % 2 == 1 {
            s.push('x');
        }
        s
    }

    #[test]
    fn indexed_values_longer_than_their_cap_are_refused_in_both_modes() {
        for (path, cap) in INDEXED_CAPS {
            let pointer = format!("/{}", path.replace('.', "/"));
            for mode in [ValidationMode::Compatible, ValidationMode::Strict] {
                let mut at = reference_event();
                set(&mut at, &pointer, &value_of(cap));
                let ok = normalize(at, now(), &limits(mode));
                match (path, mode) {
                    ("traceparent", ValidationMode::Strict) => {
                        // Not W3C: refused for that, not for its length.
                        let e = ok.unwrap_err();
                        assert!(!e.message().contains("bytes long"), "{e}");
                    }
                    _ => assert!(ok.is_ok(), "{mode} {path} at its cap: {ok:?}"),
                }
                let mut over = reference_event();
                set(&mut over, &pointer, &value_of(cap + 1));
                let e = normalize(over, now(), &limits(mode)).unwrap_err();
                let named: Vec<&FieldError> = e
                    .field_errors()
                    .iter()
                    .filter(|f| f.field == path)
                    .collect();
                assert!(
                    named.iter().any(|f| f.message.starts_with(&format!(
                        "is {} bytes long, over the limit of {cap} bytes",
                        cap + 1
                    ))),
                    "{mode} {path}: {e}"
                );
            }
        }
        // A later version of W3C Trace Context may append fields: still capped.
        let later = format!(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-{}",
            "a".repeat(600)
        );
        assert!(is_valid_traceparent(&later));
        for mode in [ValidationMode::Compatible, ValidationMode::Strict] {
            let e = normalize(with("traceparent", json!(later)), now(), &limits(mode)).unwrap_err();
            assert_eq!(e.field_errors()[0].field, "traceparent", "{e}");
        }
        // The lengths of the adversarial test: never accepted.
        for (pointer, len) in [("/id", 10_006), ("/data/actor/id", 12_000)] {
            let mut v = reference_event();
            set(&mut v, pointer, &"a".repeat(len));
            for mode in [ValidationMode::Compatible, ValidationMode::Strict] {
                assert!(
                    normalize(v.clone(), now(), &limits(mode)).is_err(),
                    "{pointer}"
                );
            }
        }
    }

    #[test]
    fn a_suspicious_source_is_refused_in_strict_and_counted_in_compatible() {
        for (source, rules) in [
            ("/openg2p/registry/../payments", &["source_dot_segment"][..]),
            ("/openg2p/registry/./x", &["source_dot_segment"]),
            ("/openg2p/registry/..", &["source_dot_segment"]),
            ("/openg2p/\u{202E}yrtsiger", &["source_bidi_control"]),
            ("/openg2p/registry\u{200F}", &["source_bidi_control"]),
            (
                "\u{2066}/a/../b\u{2069}",
                &["source_dot_segment", "source_bidi_control"],
            ),
        ] {
            let v = with("source", json!(source));
            let (stored, labels) = compat(v.clone());
            assert_eq!(stored["source"], source, "kept as sent");
            assert_eq!(labels, rules, "{source:?}");
            let e = normalize(v, now(), &limits(ValidationMode::Strict)).unwrap_err();
            let named = e
                .field_errors()
                .iter()
                .filter(|f| f.field == "source")
                .count();
            assert_eq!(named, rules.len(), "{source:?}: {e}");
        }
        for fine in [
            "/openg2p/registry",
            "urn:openg2p:registry",
            "https://h/.well-known/a",
        ] {
            let (_, labels) = compat(with("source", json!(fine)));
            assert!(labels.is_empty(), "{fine}");
            assert!(
                normalize(
                    with("source", json!(fine)),
                    now(),
                    &limits(ValidationMode::Strict)
                )
                .is_ok()
            );
        }
    }

    #[test]
    fn normalized_events_replay_to_the_same_bytes() {
        let mut v = reference_event();
        v["time"] = json!("2026-04-22 14:00:00");
        v["id"] = json!("");
        v.as_object_mut().unwrap().shift_remove("specversion");
        let l = limits(ValidationMode::Compatible);
        let first = normalize(v, now(), &l).unwrap();
        let again = normalize(
            Value::Object(parse_normalized(&first.json).unwrap()),
            now(),
            &l,
        )
        .unwrap();
        assert_eq!(again.json, first.json);
        assert!(again.normalized.is_empty(), "{:?}", again.normalized);
        // And strict accepts what compatible stored (for these rules).
        let strict = normalize(
            Value::Object(parse_normalized(&first.json).unwrap()),
            now(),
            &limits(ValidationMode::Strict),
        );
        assert!(strict.is_ok(), "{strict:?}");
    }
}
