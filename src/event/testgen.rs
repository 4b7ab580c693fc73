//! The structured CloudEvents the fuzz targets and the tests generate, and the property the
//! two ways of reading an event must have on every one of them.
//!
//! [`Event`] is built with `arbitrary` from bytes: every attribute right, wrong, `null` or
//! absent, times in every form the reference reads, values around the length caps, repeated
//! keys, dictionary words such as outcomes and traceparents. The fuzz target
//! `normalize_structured` feeds it coverage-guided bytes; the property test below feeds it
//! random bytes in every `cargo test`, with most attributes set right ([`Event::mostly_valid`])
//! so that most events reach the borrowed path and its boundary.
//!
//! [`both_paths_agree`]: the skim (`borrowed.rs`) and the tree validator (`validate.rs`), two
//! evaluators of one rule table, decide the same for a body in both modes.

// A test oracle (built for tests and the fuzzers only): a disagreement panics, which is how
// libFuzzer and the property test report a finding.
#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]

use arbitrary::Arbitrary;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;

use super::{
    AuthContext, Incoming, Limits, Rejection, ValidationMode, authcontext, normalize, parse_json,
};

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

impl Event {
    /// The event with the attributes whose bit of `keep` is clear set right (a valid event has
    /// them all set right), so that most events generated from random bytes are valid but for
    /// a few attributes: the boundary where the two paths must agree. Bits (in order):
    /// `specversion`, `id`, `source`, `type`, `subject`, `time`, `datacontenttype`,
    /// `traceparent`, `data`, `data.actor`, `actor.type`, `actor.id`, `actor.name`,
    /// `actor.roles`, `actor.ip`, `actor.session_id`, `data.action`, `data.outcome`,
    /// `data.resource`, `data.reason`, the extra attributes. An attribute with a length cap
    /// set right is as long as its cap when its bit of `at_cap` is set (same bits).
    pub fn mostly_valid(mut self, keep: u32, at_cap: u32) -> Event {
        let kept = |bit: u32| keep & (1 << bit) != 0;
        // `SIZES[7]` is 1024 bytes, `SIZES[4]` 512; `wide`: two-byte characters.
        let capped = |bit: u32, short: &str, size: u8| {
            if at_cap & (1 << bit) != 0 {
                let wide = at_cap & (1 << (bit + 21).min(31)) != 0;
                Field::Text(Text::Sized { size, wide })
            } else {
                Field::Text(Text::Any(short.to_owned()))
            }
        };
        let set = |slot: &mut Field, bit: u32, value: Field| {
            if !kept(bit) {
                *slot = value;
            }
        };
        let text = |s: &str| Field::Text(Text::Any(s.to_owned()));
        // Word 0 is `1.0`.
        set(&mut self.specversion, 0, Field::Text(Text::Word(0)));
        set(&mut self.id, 1, capped(1, "e-1", 7));
        set(&mut self.source, 2, capped(2, "/registry", 7));
        set(&mut self.r#type, 3, capped(3, "org.example.updated", 4));
        set(&mut self.subject, 4, Field::Absent);
        if !kept(5) {
            // RFC 3339, of the instant generated if there was one.
            self.time = match self.time {
                Field::Text(Text::Time(_, secs, nanos)) => {
                    // Between 1970 and 2096: four-digit years.
                    Field::Text(Text::Time(0, secs.rem_euclid(4_000_000_000), nanos))
                }
                _ => Field::Text(Text::Time(0, 1_799_999_000, 0)),
            };
        }
        set(&mut self.datacontenttype, 6, Field::Absent);
        set(&mut self.traceparent, 7, Field::Absent);
        if !kept(8) && !matches!(self.data, Shaped::Object(_)) {
            self.data = Shaped::Object(Data::empty());
        }
        if !kept(20) {
            self.extra.clear();
        }
        if let Shaped::Object(data) = &mut self.data {
            if !kept(9) && !matches!(data.actor, Shaped::Object(_)) {
                data.actor = Shaped::Object(Actor::empty());
            }
            if let Shaped::Object(actor) = &mut data.actor {
                set(&mut actor.r#type, 10, Field::Absent);
                set(&mut actor.id, 11, capped(11, "u-1", 7));
                set(&mut actor.name, 12, Field::Absent);
                set(&mut actor.roles, 13, Field::Absent);
                set(&mut actor.ip, 14, Field::Absent);
                set(&mut actor.session_id, 15, Field::Absent);
                if !kept(20) {
                    actor.extra.clear();
                }
            }
            set(&mut data.action, 16, text("update"));
            // Word 7 is `success`.
            set(&mut data.outcome, 17, Field::Text(Text::Word(7)));
            if !kept(18) {
                data.resource = Shaped::Other(Field::Absent);
            }
            set(&mut data.reason, 19, Field::Absent);
            if !kept(20) {
                data.extra.clear();
            }
        }
        self
    }
}

impl Data {
    /// A `data` object with every member absent.
    fn empty() -> Data {
        Data {
            padding: Padding(0),
            actor: Shaped::Other(Field::Absent),
            action: Field::Absent,
            outcome: Field::Absent,
            resource: Shaped::Other(Field::Absent),
            reason: Field::Absent,
            extra: Vec::new(),
        }
    }
}

impl Actor {
    /// An actor object with every member absent.
    fn empty() -> Actor {
        Actor {
            padding: Padding(0),
            r#type: Field::Absent,
            id: Field::Absent,
            name: Field::Absent,
            roles: Field::Absent,
            ip: Field::Absent,
            session_id: Field::Absent,
            extra: Vec::new(),
        }
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

/// A verified sender, as `auth.mode: token` records it (the name needs escaping).
const AUTH: AuthContext<'static> = AuthContext {
    auth_type: "api_key",
    auth_id: "svc \"registry\"",
};

/// The borrowed path ([`Incoming`]) and the tree path (parse, authcontext, normalize) agree on
/// one body: the same parse error, the same rejection, or the same stored event (key order,
/// values, id, time, Kafka key and rules; a generated id aside). Only the spelling of the
/// stored bytes may differ, and so the size a `TooLarge` reports.
pub fn paths_agree(body: &[u8], mode: ValidationMode, ctx: Option<AuthContext<'_>>) {
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

/// [`paths_agree`] on `body` in both modes, with and without a verified sender.
pub fn both_paths_agree(body: &[u8]) {
    for mode in [ValidationMode::Strict, ValidationMode::Compatible] {
        for ctx in [None, Some(AUTH)] {
            paths_agree(body, mode, ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use arbitrary::Unstructured;
    use proptest::prelude::any;
    use proptest::test_runner::{Config, TestRunner};

    use super::*;

    /// Generated events through both paths in both modes (the fuzz target's property, run on
    /// 2 000 events in every `cargo test`). Many take the borrowed path, with values at their
    /// caps and a few attributes generated freely, so a rule one evaluator has and the other
    /// lacks is found.
    #[test]
    fn both_paths_agree_on_generated_events() {
        const CASES: u32 = 2_000;
        let mut runner = TestRunner::new(Config {
            cases: CASES,
            failure_persistence: None,
            ..Config::default()
        });
        let borrowed = Cell::new(0u32);
        let strategy = (
            proptest::collection::vec(any::<u8>(), 0..2048),
            any::<[u32; 5]>(),
        );
        let result = runner.run(&strategy, |(bytes, [a, b, c, d, at_cap])| {
            let Ok(event) = Event::arbitrary(&mut Unstructured::new(&bytes)) else {
                return Ok(());
            };
            // Each attribute kept as generated with probability 1/16, else set right.
            let body = event.mostly_valid(a & b & c & d, at_cap).to_json();
            if let Ok(Incoming::Borrowed(_)) =
                Incoming::parse(body.as_bytes(), ValidationMode::Compatible)
            {
                borrowed.set(borrowed.get() + 1);
            }
            both_paths_agree(body.as_bytes());
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
        // Without this the test could pass on events only the tree path ever sees.
        assert!(
            borrowed.get() >= CASES / 5,
            "only {} of {CASES} generated events took the borrowed path",
            borrowed.get()
        );
    }
}
