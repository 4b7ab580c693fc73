//! Parsing JSON bodies and Kafka records while refusing what serde_json lets through silently.
//!
//! Two things are valid JSON (RFC 8259 only says keys *should* be unique) yet can never be an
//! audit fact:
//! - a duplicated object key: serde_json keeps the last value, so
//!   `{"outcome":"failure", …, "outcome":"success"}` would be stored as a success while another
//!   reader of the same bytes may see a failure — the message would say two things;
//! - a NUL character (`\u0000`) in a string or a key: PostgreSQL `text` and `jsonb` cannot store
//!   it, so the event could never reach the database.
//!
//! [`parse_json`] builds the same [`Value`] as `serde_json::from_slice` (same recursion limit,
//! same number handling, key order preserved) in the same single pass, and reports the first
//! such problem with the path of the field. Paths are written as in validation errors
//! (`data.actor.id`, `data.changes[0].new`); an index at the top level reads `[3]`.

use std::cell::RefCell;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::value::RawValue;
use serde_json::{Map, Number, Value};

use super::validate::FieldError;

/// Why a body could not be parsed into an event value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// Not JSON at all (→ 400); carries serde_json's message (with line and column).
    #[error("{0}")]
    Syntax(String),
    /// A string or key contains U+0000 (→ 422; the sink dead-letters it as unstorable).
    #[error("{0}")]
    Nul(FieldError),
    /// An object names the same key twice (→ 422).
    #[error("{0}")]
    DuplicateKey(FieldError),
}

impl JsonError {
    /// The field problem carried, `None` for a syntax error.
    pub fn field_error(&self) -> Option<&FieldError> {
        match self {
            JsonError::Syntax(_) => None,
            JsonError::Nul(e) | JsonError::DuplicateKey(e) => Some(e),
        }
    }

    /// Prefixes the path of a field problem (e.g. `data` for a binary-mode body, `events` for a
    /// batch sent as a bare array).
    pub fn under(self, prefix: &str) -> JsonError {
        let re = |e: FieldError| {
            let field = match (e.field.is_empty(), e.field.starts_with('[')) {
                (true, _) => prefix.to_owned(),
                (false, true) => format!("{prefix}{}", e.field),
                (false, false) => format!("{prefix}.{}", e.field),
            };
            FieldError::new(field, e.message)
        };
        match self {
            JsonError::Syntax(m) => JsonError::Syntax(m),
            JsonError::Nul(e) => JsonError::Nul(re(e)),
            JsonError::DuplicateKey(e) => JsonError::DuplicateKey(re(e)),
        }
    }
}

/// Message for a NUL character in a string value.
pub const NUL_MESSAGE: &str = "contains a NUL character (\\u0000), which PostgreSQL cannot store; \
     remove it (or encode binary content, e.g. as base64)";
const NUL_KEY_MESSAGE: &str = "key contains a NUL character (\\u0000), which PostgreSQL cannot \
     store; rename the key";
const DUPLICATE_MESSAGE: &str = "key given more than once in the same object; send each key once \
     (a duplicated key would make the event say two things)";

/// Parses `bytes` as one JSON document; see the module docs for what is refused besides
/// invalid JSON. Trailing non-whitespace is a syntax error, as with `serde_json::from_slice`.
pub fn parse_json(bytes: &[u8]) -> Result<Value, JsonError> {
    let found = RefCell::new(None);
    let root = Node {
        parent: None,
        seg: Seg::Root,
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = Seed {
        at: &root,
        found: &found,
    }
    .deserialize(&mut de)
    .and_then(|v| de.end().map(|()| v))
    .map_err(|e| JsonError::Syntax(e.to_string()))?;
    match found.into_inner() {
        Some(problem) => Err(problem),
        None => Ok(value),
    }
}

/// A batch request body split into its events, each left unparsed: a slice of the body. The
/// batch handler parses, checks and normalizes one event at a time, so only one event's parsed
/// form is alive at once instead of the whole batch's (a parsed event takes several times its
/// JSON size; `docs/memory.md`).
#[derive(Debug)]
pub enum BatchBody<'a> {
    /// A JSON array, or an object whose `events` member is one.
    Events(Vec<&'a RawValue>),
    /// An object without an `events` array.
    NoEventsArray,
    /// Neither an object nor an array.
    NotABatch,
}

/// Splits a batch body (`{"events":[...]}` or a bare array) into its events without parsing
/// them. Syntax is checked for the whole body, as [`parse_json`] would; its other checks (NUL,
/// duplicated keys) apply to the object around the events here, and to each event when it is
/// parsed with [`parse_json`].
pub fn split_batch(bytes: &[u8]) -> Result<BatchBody<'_>, JsonError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    de.deserialize_any(Outer)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| JsonError::Syntax(e.to_string()))?
}

/// The top level of a batch body.
struct Outer;

impl<'de> Visitor<'de> for Outer {
    type Value = Result<BatchBody<'de>, JsonError>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut events = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(e) = seq.next_element::<&'de RawValue>()? {
            events.push(e);
        }
        Ok(Ok(BatchBody::Events(events)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut keys: Vec<String> = Vec::new();
        let mut events = None;
        let mut problem = None;
        while let Some(key) = map.next_key::<String>()? {
            let raw: &'de RawValue = map.next_value()?;
            let field = || key.replace('\0', "\\u0000");
            let this = if key.contains('\0') {
                Some(JsonError::Nul(FieldError::new(field(), NUL_KEY_MESSAGE)))
            } else if keys.contains(&key) {
                Some(JsonError::DuplicateKey(FieldError::new(
                    field(),
                    DUPLICATE_MESSAGE,
                )))
            } else if key == "events" && raw.get().starts_with('[') {
                events = Some(
                    serde_json::from_str::<Vec<&'de RawValue>>(raw.get())
                        .map_err(serde::de::Error::custom)?,
                );
                None
            } else {
                // Not an event: checked whole, as the rest of the body always was.
                parse_json(raw.get().as_bytes())
                    .err()
                    .map(|e| e.under(&field()))
            };
            if problem.is_none() {
                problem = this;
            }
            keys.push(key);
        }
        Ok(match (problem, events) {
            (Some(p), _) => Err(p),
            (None, Some(events)) => Ok(BatchBody::Events(events)),
            (None, None) => Ok(BatchBody::NoEventsArray),
        })
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Ok(BatchBody::NotABatch))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Ok(BatchBody::NotABatch))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Ok(BatchBody::NotABatch))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Ok(BatchBody::NotABatch))
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Ok(BatchBody::NotABatch))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Ok(BatchBody::NotABatch))
    }
}

/// One step of the path from the root to the value being parsed, kept on the stack: building
/// it costs nothing unless a problem is found.
#[derive(Clone, Copy)]
enum Seg<'a> {
    Root,
    Key(&'a str),
    Index(usize),
}

#[derive(Clone, Copy)]
struct Node<'a> {
    parent: Option<&'a Node<'a>>,
    seg: Seg<'a>,
}

impl Node<'_> {
    fn path(&self) -> String {
        let mut segs = Vec::new();
        let mut at = Some(self);
        while let Some(n) = at {
            segs.push(n.seg);
            at = n.parent;
        }
        let mut out = String::new();
        for seg in segs.iter().rev() {
            match seg {
                Seg::Root => {}
                Seg::Key(k) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(&k.replace('\0', "\\u0000"));
                }
                Seg::Index(i) => out.push_str(&format!("[{i}]")),
            }
        }
        out
    }
}

struct Seed<'a, 'f> {
    at: &'a Node<'a>,
    found: &'f RefCell<Option<JsonError>>,
}

impl Seed<'_, '_> {
    /// Records the first problem only: the event is refused either way.
    fn report(&self, at: &Node<'_>, make: fn(FieldError) -> JsonError, message: &str) {
        let mut found = self.found.borrow_mut();
        if found.is_none() {
            *found = Some(make(FieldError::new(at.path(), message)));
        }
    }

    fn string(self, s: String) -> Value {
        if s.contains('\0') {
            self.report(self.at, JsonError::Nul, NUL_MESSAGE);
        }
        Value::String(s)
    }
}

impl<'de> DeserializeSeed<'de> for Seed<'_, '_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_, '_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(self.string(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(self.string(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        loop {
            let node = Node {
                parent: Some(self.at),
                seg: Seg::Index(out.len()),
            };
            let seed = Seed {
                at: &node,
                found: self.found,
            };
            match seq.next_element_seed(seed)? {
                Some(v) => out.push(v),
                None => return Ok(Value::Array(out)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let node = Node {
                parent: Some(self.at),
                seg: Seg::Key(&key),
            };
            if key.contains('\0') {
                self.report(&node, JsonError::Nul, NUL_KEY_MESSAGE);
            }
            let value = map.next_value_seed(Seed {
                at: &node,
                found: self.found,
            })?;
            match out.entry(key) {
                Entry::Vacant(slot) => {
                    slot.insert(value);
                }
                Entry::Occupied(mut slot) => {
                    let node = Node {
                        parent: Some(self.at),
                        seg: Seg::Key(slot.key()),
                    };
                    self.report(&node, JsonError::DuplicateKey, DUPLICATE_MESSAGE);
                    slot.insert(value);
                }
            }
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn split(body: &str) -> Result<Vec<String>, JsonError> {
        match split_batch(body.as_bytes())? {
            BatchBody::Events(e) => Ok(e.iter().map(|r| r.get().to_owned()).collect()),
            BatchBody::NoEventsArray => Ok(vec!["<no events array>".into()]),
            BatchBody::NotABatch => Ok(vec!["<not a batch>".into()]),
        }
    }

    #[test]
    fn a_batch_is_split_into_unparsed_events() {
        assert_eq!(
            split(r#"[{"a":1}, {"b":[2]}]"#).unwrap(),
            [r#"{"a":1}"#, r#"{"b":[2]}"#]
        );
        assert_eq!(
            split(r#"{"x":{"y":1},"events":[ {"a":1} ]}"#).unwrap(),
            [r#"{"a":1}"#]
        );
        assert_eq!(split(r#"{"events":[]}"#).unwrap(), Vec::<String>::new());
        assert_eq!(
            split(r#"{"events":{"a":1}}"#).unwrap(),
            ["<no events array>"]
        );
        assert_eq!(split(r#"{"other":1}"#).unwrap(), ["<no events array>"]);
        assert_eq!(split("\"text\"").unwrap(), ["<not a batch>"]);
        // An event's own problems wait for its turn: splitting does not look inside it.
        assert_eq!(split(r#"[{"a":1,"a":2}]"#).unwrap(), [r#"{"a":1,"a":2}"#]);
        let lone = split(r#"[{"a":"\ud800"}]"#).unwrap();
        assert!(matches!(
            parse_json(lone[0].as_bytes()),
            Err(JsonError::Syntax(_))
        ));
    }

    #[test]
    fn problems_around_the_events_are_found_when_splitting() {
        let e = split(r#"{"events":[],"events":[]}"#).unwrap_err();
        assert!(
            matches!(&e, JsonError::DuplicateKey(f) if f.field == "events"),
            "{e:?}"
        );
        let e = split(r#"{"meta":{"k":1,"k":2},"events":[]}"#).unwrap_err();
        assert!(
            matches!(&e, JsonError::DuplicateKey(f) if f.field == "meta.k"),
            "{e:?}"
        );
        let e = split(r#"{"n\u0000":1,"events":[]}"#).unwrap_err();
        assert!(matches!(&e, JsonError::Nul(_)), "{e:?}");
        let e = split(r#"{"events":[{"a":1}]"#).unwrap_err();
        assert!(matches!(e, JsonError::Syntax(_)), "unterminated: {e:?}");
        let e = split(r#"[{"a":1}] x"#).unwrap_err();
        assert!(
            matches!(e, JsonError::Syntax(_)),
            "trailing characters: {e:?}"
        );
    }

    fn problem(body: &str) -> FieldError {
        match parse_json(body.as_bytes()) {
            Err(JsonError::Nul(e) | JsonError::DuplicateKey(e)) => e,
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn same_value_as_serde_json() {
        for body in [
            r#"{"b":1,"a":[true,null,-3,1.5e3,"x\ny",{"z":{}}],"c":18446744073709551615}"#,
            "[]",
            "\"\\u00e9\"",
            "  12 ",
        ] {
            let ours = parse_json(body.as_bytes()).unwrap();
            let theirs: Value = serde_json::from_str(body).unwrap();
            assert_eq!(ours, theirs, "{body}");
            assert_eq!(
                ours.to_string(),
                theirs.to_string(),
                "key order kept: {body}"
            );
        }
    }

    /// Found by the `normalize` fuzz target: without serde_json's `float_roundtrip`, a number
    /// such as 1.3e103 was read as its neighbour and stored as 1.2999999999999999e103.
    #[test]
    fn numbers_are_stored_as_sent() {
        for n in [
            "1.3e103",
            "0.1",
            "120.5",
            "5e-324",
            "1.7976931348623157e308",
        ] {
            let v = parse_json(n.as_bytes()).unwrap();
            let back = v.to_string();
            assert_eq!(parse_json(back.as_bytes()).unwrap(), v, "{n} -> {back}");
            assert_eq!(
                back.parse::<f64>().unwrap(),
                n.parse::<f64>().unwrap(),
                "{n}"
            );
        }
    }

    #[test]
    fn syntax_errors_and_depth_as_serde_json() {
        for body in ["", "{", "{\"a\":1} x", "[1,]", "\"\\ud800\""] {
            assert!(
                matches!(parse_json(body.as_bytes()), Err(JsonError::Syntax(_))),
                "{body}"
            );
        }
        let deep = "[".repeat(200) + &"]".repeat(200);
        let err = parse_json(deep.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("recursion limit"), "{err}");
    }

    #[test]
    fn duplicated_keys_are_named_with_their_path() {
        let e = problem(r#"{"data":{"outcome":"failure","action":"a","outcome":"success"}}"#);
        assert_eq!(e.field, "data.outcome");
        assert!(e.message.starts_with("key given more than once"), "{e}");
        assert_eq!(problem(r#"{"id":"a","id":"a"}"#).field, "id");
        assert_eq!(
            problem(r#"{"events":[{},{"data":{"changes":[1,{"k":1,"k":2}]}}]}"#).field,
            "events[1].data.changes[1].k"
        );
        assert_eq!(problem(r#"[{"a":1},{"a":1,"a":1}]"#).field, "[1].a");
        // Same key in different objects is fine.
        assert!(parse_json(br#"{"a":{"a":1},"b":{"a":2}}"#).is_ok());
    }

    #[test]
    fn nul_in_strings_and_keys_is_named() {
        let e = problem(r#"{"data":{"actor":{"id":"u\u0000"}}}"#);
        assert_eq!(e.field, "data.actor.id");
        assert_eq!(e.message, NUL_MESSAGE);
        let e = problem(r#"{"data":{"x\u0000y":1}}"#);
        assert_eq!(e.field, "data.x\\u0000y");
        assert!(e.message.starts_with("key contains a NUL"), "{e}");
        assert_eq!(problem(r#"["ok","\u0000"]"#).field, "[1]");
        assert_eq!(problem(r#""\u0000""#).field, "");
        // An escaped backslash followed by u0000 is not NUL.
        assert_eq!(parse_json(br#""\\u0000""#).unwrap(), json!("\\u0000"));
    }

    #[test]
    fn the_first_problem_is_reported() {
        let e = problem(r#"{"a":"\u0000","b":1,"b":2}"#);
        assert_eq!(e.field, "a");
    }

    #[test]
    fn under_prefixes_paths() {
        let e = parse_json(br#"[{"a":1,"a":2}]"#)
            .unwrap_err()
            .under("events");
        assert_eq!(e.field_error().unwrap().field, "events[0].a");
        let e = parse_json(br#"{"a":1,"a":2}"#).unwrap_err().under("data");
        assert_eq!(e.field_error().unwrap().field, "data.a");
        let e = parse_json(br#""\u0000""#).unwrap_err().under("data");
        assert_eq!(e.field_error().unwrap().field, "data");
    }
}
