//! RFC 8785 (JCS) canonical JSON, the form in which a row's `details` is hashed (pure, no I/O).
//!
//! JCS writes no whitespace, sorts object members by the UTF-16 code units of their names,
//! writes strings with the minimal escapes of ECMAScript's `JSON.stringify` and numbers as
//! IEEE 754 doubles in ECMAScript's shortest round-trip form.
//!
//! Why not `serde_json_canonicalizer`: the sealer and `verify` canonicalise every stored row,
//! and that crate spends about 5 µs on a typical `details` value (a boxed writer per token,
//! every member name parsed a second time, a buffer per member): more than the rest of sealing
//! a row together, on the cores the sink needs. This writer takes about 1 µs: the value is
//! parsed into a tree that borrows its strings from the input, numbers are formatted by
//! `ryu-js` (ECMAScript's algorithm) and strings escaped by `serde_json` (the same escapes as
//! JCS). The crate remains the reference: a property test checks that both give the same bytes
//! for arbitrary JSON.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// Why a JSON text has no canonical form.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JcsError {
    #[error("{0}")]
    Parse(String),
    #[error("object member {0:?} appears twice")]
    DuplicateName(String),
}

/// A parsed JSON value whose strings borrow from the input where they hold no escapes.
enum Json<'a> {
    Null,
    Bool(bool),
    /// JSON numbers are doubles in JCS (a larger integer is its nearest double).
    Number(f64),
    String(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    /// Members in input order; sorted when written.
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

/// The RFC 8785 form of a JSON text.
pub fn canonicalize(text: &str) -> Result<String, JcsError> {
    let mut out = Vec::with_capacity(text.len());
    write_canonical(&mut out, text)?;
    // Only UTF-8 is written: the input's strings, ASCII escapes and ASCII syntax.
    String::from_utf8(out).map_err(|e| JcsError::Parse(e.to_string()))
}

/// Appends the RFC 8785 form of `text` to `out`.
pub fn write_canonical(out: &mut Vec<u8>, text: &str) -> Result<(), JcsError> {
    let value: Json<'_> = serde_json::from_str(text).map_err(|e| JcsError::Parse(e.to_string()))?;
    write(out, &value)
}

fn write(out: &mut Vec<u8>, value: &Json<'_>) -> Result<(), JcsError> {
    match value {
        Json::Null => out.extend_from_slice(b"null"),
        Json::Bool(true) => out.extend_from_slice(b"true"),
        Json::Bool(false) => out.extend_from_slice(b"false"),
        // serde_json only produces finite numbers.
        Json::Number(n) => {
            out.extend_from_slice(ryu_js::Buffer::new().format_finite(*n).as_bytes())
        }
        Json::String(s) => write_string(out, s)?,
        Json::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(out, item)?;
            }
            out.push(b']');
        }
        Json::Object(members) => {
            let mut sorted: Vec<&(Cow<'_, str>, Json<'_>)> = members.iter().collect();
            sorted.sort_unstable_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.push(b'{');
            for (i, (name, item)) in sorted.iter().enumerate() {
                if i > 0 {
                    if sorted[i - 1].0 == *name {
                        return Err(JcsError::DuplicateName(name.to_string()));
                    }
                    out.push(b',');
                }
                write_string(out, name)?;
                out.push(b':');
                write(out, item)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_string(out: &mut Vec<u8>, s: &str) -> Result<(), JcsError> {
    serde_json::to_writer(out, s).map_err(|e| JcsError::Parse(e.to_string()))
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Json<'de>, E> {
        Ok(Json::Bool(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Json<'de>, E> {
        Ok(Json::Number(v as f64))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Json<'de>, E> {
        Ok(Json::Number(v as f64))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Json<'de>, E> {
        Ok(Json::Number(v))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let mut members = Vec::with_capacity(map.size_hint().unwrap_or(0));
        while let Some((Name(name), item)) = map.next_entry()? {
            members.push((name, item));
        }
        Ok(Json::Object(members))
    }
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

/// An object member's name, borrowed when it holds no escapes.
struct Name<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl<'de> Visitor<'de> for NameVisitor {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object member name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(v)))
            }
        }
        d.deserialize_str(NameVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc_8785_examples() {
        // RFC 8785 §3.2.2 and Appendix B number forms, §3.2.3 member order.
        let cases = [
            (
                r#"{"b": 1.0, "a": "é", "c": [1e2, -0]}"#,
                r#"{"a":"é","b":1,"c":[100,0]}"#,
            ),
            (
                "[1e21, 1e-7, 0.000001, 333333333.3333333, 4.5e15]",
                "[1e+21,1e-7,0.000001,333333333.3333333,4500000000000000]",
            ),
            (
                r#"{"\u20ac": 1, "\r": 2, "\ud83d\ude00": 3, "\u00f6": 4, "1": 5, "\u0080": 6}"#,
                "{\"\\r\":2,\"1\":5,\"\u{80}\":6,\"ö\":4,\"€\":1,\"😀\":3}",
            ),
            (
                r#""\u001f\/\"\\\b\f\n\t\u007f""#,
                "\"\\u001f/\\\"\\\\\\b\\f\\n\\t\u{7f}\"",
            ),
            ("9007199254740993", "9007199254740992"),
        ];
        for (input, expected) in cases {
            assert_eq!(canonicalize(input).unwrap(), expected, "{input}");
            assert_eq!(
                serde_json_canonicalizer::pipe(input).unwrap(),
                expected,
                "{input}"
            );
        }
    }

    #[test]
    fn errors_are_reported() {
        assert!(matches!(canonicalize("{"), Err(JcsError::Parse(_))));
        assert_eq!(
            canonicalize(r#"{"a": 1, "b": {"x": 1, "x": 2}}"#),
            Err(JcsError::DuplicateName("x".into()))
        );
    }

    fn json() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            any::<String>().prop_map(Value::String),
            "[a-c\\\\\"\u{0}-\u{1f}é€😀\u{e000}\u{ffff}]{0,4}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec(("[a-c\\\\\"\u{1}é€😀\u{e000}\u{ffff}]{0,3}", inner), 0..6)
                    .prop_map(|members| Value::Object(members.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Same bytes as the reference implementation, whatever the input's layout.
        #[test]
        fn matches_serde_json_canonicalizer(value in json(), pretty in any::<bool>()) {
            let text = if pretty {
                serde_json::to_string_pretty(&value).unwrap()
            } else {
                serde_json::to_string(&value).unwrap()
            };
            prop_assert_eq!(
                canonicalize(&text).unwrap(),
                serde_json_canonicalizer::to_string(&value).unwrap()
            );
        }
    }
}
