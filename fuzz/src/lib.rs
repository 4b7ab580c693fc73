//! Shared pieces of the fuzz targets: structured CloudEvent generation (`arbitrary`) and the
//! properties every accepted event must have.

use arbitrary::Arbitrary;
use audit_manager::event::{
    AuthContext, BatchBody, INDEXED_CAPS, Incoming, JsonError, Limits, Rejection, Row,
    ValidationMode, authcontext, normalize, parse_json, row_from_record, split_batch,
};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;

/// Words that steer the fuzzer to the values the rules care about.
const WORDS: &[&str] = &[
    "1.0",
    "0.3",
    "user",
    "system",
    "service",
    "anonymous",
    "robot",
    "success",
    "failure",
    "denied",
    "application/json",
    "application/cloudevents+json; charset=utf-8",
    "text/plain",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "u\u{0}x",
    "specversion",
    "id",
    "time",
    "data",
    "actor",
    "outcome",
    "source",
    "type",
    "subject",
    "action",
    "resource",
    "é/ü",
    "/registry/../payments",
    "/registry/./a",
    "/registry/..",
    "/registry/\u{202E}a",
    "/r\u{2066}x\u{2069}",
    "/r\u{200F}",
];

/// Lengths in bytes around the caps of the indexed attributes (`INDEXED_CAPS`), and the
/// lengths an adversarial test sent.
const SIZES: &[usize] = &[
    255, 256, 257, 511, 512, 513, 1023, 1024, 1025, 10_006, 12_000,
];

/// A string value: empty, a dictionary word, anything, a time in one of many forms, or a value
/// of a length around a cap (ASCII or two-byte characters, so bytes and characters differ).
#[derive(Arbitrary, Debug)]
pub enum Text {
    Empty,
    Word(u8),
    Any(String),
    Time(u8, i64, u32),
    Sized { size: u8, wide: bool },
}

impl Text {
    pub fn render(&self) -> String {
        match self {
            Text::Empty => String::new(),
            Text::Word(i) => WORDS[usize::from(*i) % WORDS.len()].to_owned(),
            Text::Any(s) => s.clone(),
            Text::Time(form, secs, nanos) => time_text(*form, *secs, *nanos),
            Text::Sized { size, wide } => {
                let len = SIZES[usize::from(*size) % SIZES.len()];
                if *wide {
                    "é".repeat(len / 2) + &"a".repeat(len % 2)
                } else {
                    "a".repeat(len)
                }
            }
        }
    }
}

/// Members `"p0":0, "p1":1, …` written at the start of an object (`count % 40` of them), so
/// what follows, repeated keys included, comes after more keys than a short list holds.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Padding(pub u8);

impl Padding {
    fn members(self) -> impl Iterator<Item = (String, Option<String>)> {
        (0..usize::from(self.0) % 40).map(|i| (format!("p{i}"), Some(i.to_string())))
    }
}

fn time_text(form: u8, secs: i64, nanos: u32) -> String {
    let t = DateTime::<Utc>::from_timestamp(secs % 400_000_000_000, nanos % 2_000_000_000)
        .unwrap_or_default();
    let rfc = t.to_rfc3339_opts(SecondsFormat::AutoSi, true);
    let naive = rfc.trim_end_matches('Z').to_owned();
    match form % 10 {
        0 => rfc,
        1 => naive,
        2 => naive.replacen('T', " ", 1),
        3 => t.format("%Y-%m-%d").to_string(),
        4 => t.timestamp().to_string(),
        5 => format!("{}.{:03}", t.timestamp(), t.timestamp_subsec_millis()),
        6 => format!("{naive}+0530"),
        7 => t.format("%Y-%m-%dT%H:%M").to_string(),
        8 => format!("{naive}\u{2212}02"),
        _ => t.to_rfc3339(),
    }
}

/// A JSON value for one attribute, including absent.
#[derive(Arbitrary, Debug)]
pub enum Field {
    Absent,
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(Text),
    Array(Vec<Text>),
    Object(Vec<(Text, Text)>),
}

impl Field {
    /// The JSON text, `None` when absent. Objects are written by hand so keys may repeat.
    fn json(&self) -> Option<String> {
        Some(match self {
            Field::Absent => return None,
            Field::Null => "null".into(),
            Field::Bool(b) => b.to_string(),
            Field::Int(i) => i.to_string(),
            Field::Float(f) => serde_json::to_string(f).unwrap_or_else(|_| "0".into()),
            Field::Text(t) => Value::String(t.render()).to_string(),
            Field::Array(items) => {
                let items: Vec<String> = items
                    .iter()
                    .map(|t| Value::String(t.render()).to_string())
                    .collect();
                format!("[{}]", items.join(","))
            }
            Field::Object(pairs) => object(
                pairs
                    .iter()
                    .map(|(k, v)| (k.render(), Some(Value::String(v.render()).to_string()))),
            ),
        })
    }
}

fn object(entries: impl Iterator<Item = (String, Option<String>)>) -> String {
    let parts: Vec<String> = entries
        .filter_map(|(k, v)| v.map(|v| format!("{}:{v}", Value::String(k))))
        .collect();
    format!("{{{}}}", parts.join(","))
}

#[derive(Arbitrary, Debug)]
pub struct Actor {
    pub padding: Padding,
    pub r#type: Field,
    pub id: Field,
    pub name: Field,
    pub roles: Field,
    pub ip: Field,
    pub session_id: Field,
    pub extra: Vec<(Text, Field)>,
}

#[derive(Arbitrary, Debug)]
pub struct Resource {
    pub r#type: Field,
    pub id: Field,
    pub extra: Vec<(Text, Field)>,
}

#[derive(Arbitrary, Debug)]
pub enum Shaped<T> {
    Object(T),
    Other(Field),
}

#[derive(Arbitrary, Debug)]
pub struct Data {
    pub padding: Padding,
    pub actor: Shaped<Actor>,
    pub action: Field,
    pub outcome: Field,
    pub resource: Shaped<Resource>,
    pub reason: Field,
    pub extra: Vec<(Text, Field)>,
}

/// A structured-mode CloudEvent whose every attribute may be right, wrong, null or absent, and
/// whose objects may repeat keys.
#[derive(Arbitrary, Debug)]
pub struct Event {
    pub padding: Padding,
    pub specversion: Field,
    pub id: Field,
    pub source: Field,
    pub r#type: Field,
    pub subject: Field,
    pub time: Field,
    pub datacontenttype: Field,
    pub traceparent: Field,
    pub data: Shaped<Data>,
    pub extra: Vec<(Text, Field)>,
}

fn extras(extra: &[(Text, Field)]) -> impl Iterator<Item = (String, Option<String>)> + '_ {
    extra.iter().map(|(k, v)| (k.render(), v.json()))
}

impl Event {
    /// The event as JSON text (keys in a fixed order, extras last).
    pub fn to_json(&self) -> String {
        let data = match &self.data {
            Shaped::Other(f) => f.json(),
            Shaped::Object(d) => {
                let actor = match &d.actor {
                    Shaped::Other(f) => f.json(),
                    Shaped::Object(a) => Some(object(
                        a.padding.members().chain(
                            [
                                ("type", a.r#type.json()),
                                ("id", a.id.json()),
                                ("name", a.name.json()),
                                ("roles", a.roles.json()),
                                ("ip", a.ip.json()),
                                ("session_id", a.session_id.json()),
                            ]
                            .into_iter()
                            .map(|(k, v)| (k.to_owned(), v))
                            .chain(extras(&a.extra)),
                        ),
                    )),
                };
                let resource = match &d.resource {
                    Shaped::Other(f) => f.json(),
                    Shaped::Object(r) => Some(object(
                        [("type", r.r#type.json()), ("id", r.id.json())]
                            .into_iter()
                            .map(|(k, v)| (k.to_owned(), v))
                            .chain(extras(&r.extra)),
                    )),
                };
                Some(object(
                    d.padding.members().chain(
                        [
                            ("actor", actor),
                            ("action", d.action.json()),
                            ("outcome", d.outcome.json()),
                            ("resource", resource),
                            ("reason", d.reason.json()),
                        ]
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .chain(extras(&d.extra)),
                    ),
                ))
            }
        };
        object(
            self.padding.members().chain(
                [
                    ("specversion", self.specversion.json()),
                    ("id", self.id.json()),
                    ("source", self.source.json()),
                    ("type", self.r#type.json()),
                    ("subject", self.subject.json()),
                    ("time", self.time.json()),
                    ("datacontenttype", self.datacontenttype.json()),
                    ("traceparent", self.traceparent.json()),
                    ("data", data),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .chain(extras(&self.extra)),
            ),
        )
    }
}

/// A fixed clock, so a finding reproduces.
pub fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default()
}

pub fn limits(mode: ValidationMode) -> Limits {
    Limits {
        mode,
        ..Limits::default()
    }
}

/// The properties of validation on one body, in both modes:
/// - parsing agrees with serde_json on what is JSON, and refuses NUL and duplicate keys for
///   both modes alike (the parser has no mode);
/// - an event `strict` accepts, `compatible` accepts and stores identically;
/// - an accepted event re-normalizes to the same bytes and needs no further rewrite;
/// - the sink turns every accepted event into a row in the same mode (nothing ingest accepted
///   is dead-lettered).
pub fn check_body(body: &[u8]) {
    for mode in [ValidationMode::Strict, ValidationMode::Compatible] {
        for ctx in [None, Some(AUTH)] {
            check_paths(body, mode, ctx);
        }
    }
    let ours = parse_json(body);
    let theirs = serde_json::from_slice::<Value>(body);
    check_split(body, theirs.as_ref(), ours.is_ok());
    let value = match (ours, theirs) {
        (Ok(v), Ok(t)) => {
            assert_eq!(v, t, "same value as serde_json");
            v
        }
        (Err(JsonError::Syntax(_)), Err(_)) => return,
        // NUL or duplicate key: refused before any mode applies, so both modes agree.
        (Err(JsonError::Nul(_) | JsonError::DuplicateKey(_)), Ok(_)) => return,
        (ours, theirs) => panic!("parse disagrees: ours {ours:?}, serde_json {theirs:?}"),
    };
    check_value(value);
}

/// A verified sender, as `auth.mode: token` records it (the name needs escaping).
const AUTH: AuthContext<'static> = AuthContext {
    auth_type: "api_key",
    auth_id: "svc \"registry\"",
};

/// The borrowed path ([`Incoming`]) and the tree path (parse, authcontext, normalize) agree on
/// one body: the same parse error, the same rejection, or the same stored event (key order,
/// values, id, time, Kafka key and rules; a generated id aside). Only the spelling of the
/// stored bytes may differ, and so the size a `TooLarge` reports.
fn check_paths(body: &[u8], mode: ValidationMode, ctx: Option<AuthContext<'_>>) {
    let limits = limits(mode);
    let tree = parse_json(body).map(|mut v| {
        authcontext::apply(&mut v, ctx);
        normalize(v, now(), &limits)
    });
    let ours = Incoming::parse(body, mode).map(|e| e.normalize(ctx, now(), &limits));
    let (tree, ours) = match (tree, ours) {
        (Err(t), Err(o)) => return assert_eq!(t, o, "same parse error"),
        (Ok(t), Ok(o)) => (t, o),
        (t, o) => panic!("parse disagrees: tree {t:?}, borrowed {o:?}"),
    };
    match (tree, ours) {
        (Ok(t), Ok(o)) => {
            let sent: Option<String> = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v.get("id")?.as_str().map(str::to_owned));
            let kept = |id: &str| sent.as_deref() == Some(id);
            assert_eq!(
                kept(&t.id),
                kept(&o.id),
                "both keep the id sent, or neither"
            );
            let generated = !kept(&t.id);
            let stored = |json: &[u8]| {
                let mut v: serde_json::Map<String, Value> =
                    serde_json::from_slice(json).expect("stored event parses");
                if generated {
                    v.shift_remove("id");
                }
                Value::Object(v).to_string()
            };
            assert_eq!(stored(&t.json), stored(&o.json), "same stored event");
            if !generated {
                assert_eq!(t.id, o.id);
            }
            assert_eq!(t.time, o.time);
            assert_eq!(t.key, o.key);
            assert_eq!(t.normalized, o.normalized);
        }
        (Err(Rejection::TooLarge { .. }), Err(Rejection::TooLarge { .. })) => {}
        (Err(t), Err(o)) => assert_eq!(t, o, "same rejection"),
        (Err(Rejection::TooLarge { .. }), Ok(_)) | (Ok(_), Err(Rejection::TooLarge { .. })) => {}
        (t, o) => panic!("validation disagrees: tree {t:?}, borrowed {o:?}"),
    }
}

/// Splitting a body as a batch agrees with parsing it whole: the same syntax verdict, the same
/// events in the same order, no refusal that parsing it whole would not make. The split only
/// skips over each event (serde_json checks escapes such as lone surrogates, and nesting depth,
/// only when it builds values), so a body refused whole may split: then one of its events is
/// refused when it is parsed on its own, which is when the batch handler parses it.
fn check_split(body: &[u8], whole: Result<&Value, &serde_json::Error>, whole_ok: bool) {
    let split = split_batch(body);
    let whole = match whole {
        Ok(whole) => whole,
        Err(e) => {
            match &split {
                Err(JsonError::Syntax(_)) => {}
                Ok(BatchBody::Events(raws)) => assert!(
                    raws.iter()
                        .any(|r| serde_json::from_str::<Value>(r.get()).is_err()),
                    "split accepts what serde_json refuses ({e}), and every event parses"
                ),
                other => panic!("split accepts what serde_json refuses ({e}): {other:?}"),
            }
            return;
        }
    };
    match split {
        Err(JsonError::Syntax(e)) => panic!("split refuses valid JSON: {e}"),
        Err(e) => assert!(!whole_ok, "split finds {e:?}, parsing it whole does not"),
        Ok(BatchBody::Events(raws)) => {
            let events = match whole {
                Value::Array(a) => a,
                Value::Object(o) => o["events"].as_array().expect("an events array"),
                other => panic!("events split out of {other}"),
            };
            assert_eq!(raws.len(), events.len());
            for (raw, event) in raws.iter().zip(events) {
                let parsed: Value = serde_json::from_str(raw.get()).expect("a split event parses");
                assert_eq!(&parsed, event);
            }
        }
        Ok(BatchBody::NoEventsArray) => {
            assert!(whole.is_object() && !whole.get("events").is_some_and(Value::is_array));
        }
        Ok(BatchBody::NotABatch) => assert!(!whole.is_object() && !whole.is_array()),
    }
}

pub fn check_value(value: Value) {
    let now = now();
    let strict = normalize(value.clone(), now, &limits(ValidationMode::Strict));
    let compat = normalize(value, now, &limits(ValidationMode::Compatible));
    if let Ok(s) = &strict {
        let c = compat
            .as_ref()
            .expect("compatible accepts what strict accepts");
        let without_id = |json: &[u8]| {
            let mut v: serde_json::Map<String, Value> =
                serde_json::from_slice(json).expect("own output");
            v.shift_remove("id");
            v
        };
        // Generated ids differ between the two calls; everything else is identical.
        assert_eq!(without_id(&s.json), without_id(&c.json));
        assert!(s.normalized.is_empty());
        settled(&s.json, ValidationMode::Strict);
    }
    if let Ok(c) = &compat {
        settled(&c.json, ValidationMode::Compatible);
    }
}

/// A stored event: re-normalizes to itself and maps to a row in `mode`.
fn settled(json: &[u8], mode: ValidationMode) {
    let again = parse_json(json).expect("own output parses");
    let second = normalize(again, now(), &limits(mode)).expect("normalized event stays valid");
    assert_eq!(second.json, json, "normalizing is idempotent");
    assert!(second.normalized.rewrites().is_empty());
    match row_from_record(json, now(), mode) {
        Ok(row) => storable(&row),
        Err(e) => panic!("the sink refuses what ingest accepted: {e}"),
    }
}

/// Every value of an accepted event that PostgreSQL indexes is within its cap, so the insert
/// cannot fail on the index (the widest index entry stays far below a third of a page).
fn storable(row: &Row) {
    let cap = |path: &str| {
        INDEXED_CAPS
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, cap)| *cap)
            .expect("a capped path")
    };
    let columns = [
        ("id", Some(&row.id)),
        ("source", Some(&row.source)),
        ("type", Some(&row.r#type)),
        ("subject", row.subject.as_ref()),
        ("data.actor.id", Some(&row.actor_id)),
        ("data.resource.type", row.resource_type.as_ref()),
        ("data.resource.id", row.resource_id.as_ref()),
    ];
    for (path, value) in columns {
        if let Some(value) = value {
            assert!(
                value.len() <= cap(path),
                "{path} of {} bytes stored",
                value.len()
            );
        }
    }
    // `trace_id` is 32 hex digits when set.
    assert!(row.trace_id.as_ref().is_none_or(|t| t.len() == 32));
}
