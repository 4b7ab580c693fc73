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
    /// An integer's exact decimal digits, as [`write_canonical_exact`] writes it: `-`? then no
    /// leading zero (`0` alone for zero).
    Integer(Cow<'a, str>),
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

/// The canonical form of row encoding 2 (see `docs/integrity.md`): RFC 8785, except that a
/// number whose value is an integer is written as its exact decimal digits (no exponent, no
/// fraction, `0` for zero), so integers beyond 2^53 hash exactly. Every other number is
/// written as RFC 8785 writes it (its nearest double), so for a value without integers beyond
/// ±2^53 both forms are the same bytes.
///
/// The value is read by [`exact::parse`], which keeps each number's digits as written (serde
/// reads a large integer as a double, and `arbitrary_precision` would change every
/// `serde_json::Value` of the service).
pub fn write_canonical_exact(out: &mut Vec<u8>, text: &str) -> Result<(), JcsError> {
    let value = exact::parse(text)?;
    write(out, &value)
}

/// [`write_canonical_exact`] as a string.
pub fn canonicalize_exact(text: &str) -> Result<String, JcsError> {
    let mut out = Vec::with_capacity(text.len());
    write_canonical_exact(&mut out, text)?;
    String::from_utf8(out).map_err(|e| JcsError::Parse(e.to_string()))
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
        Json::Integer(digits) => out.extend_from_slice(digits.as_bytes()),
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

/// A JSON reader that keeps numbers exact (for [`write_canonical_exact`]): strings and
/// structure as RFC 8259, each number classified from its digits as written.
mod exact {
    use std::borrow::Cow;

    use super::{JcsError, Json};

    /// Deepest nesting accepted (serde_json's limit too).
    const MAX_DEPTH: usize = 128;
    /// Most digits an exact integer may have: PostgreSQL's `numeric` (what `jsonb` stores)
    /// holds at most 131072 digits before the decimal point, so a stored value never exceeds
    /// it; the bound keeps `1e999999999` from expanding into a gigabyte.
    const MAX_INTEGER_DIGITS: usize = 131_072;

    pub(super) fn parse(text: &str) -> Result<Json<'_>, JcsError> {
        let mut p = Parser {
            text,
            bytes: text.as_bytes(),
            pos: 0,
        };
        let v = p.value(0)?;
        p.skip_ws();
        if p.pos != p.bytes.len() {
            return Err(p.error("trailing characters"));
        }
        Ok(v)
    }

    struct Parser<'a> {
        text: &'a str,
        bytes: &'a [u8],
        pos: usize,
    }

    impl<'a> Parser<'a> {
        fn error(&self, what: &str) -> JcsError {
            JcsError::Parse(format!("{what} at byte {}", self.pos))
        }

        fn skip_ws(&mut self) {
            while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.pos) {
                self.pos += 1;
            }
        }

        fn peek(&self) -> Option<u8> {
            self.bytes.get(self.pos).copied()
        }

        fn expect(&mut self, b: u8) -> Result<(), JcsError> {
            if self.peek() == Some(b) {
                self.pos += 1;
                Ok(())
            } else {
                Err(self.error(&format!("expected `{}`", b as char)))
            }
        }

        fn value(&mut self, depth: usize) -> Result<Json<'a>, JcsError> {
            if depth > MAX_DEPTH {
                return Err(self.error("nested too deeply"));
            }
            self.skip_ws();
            match self.peek() {
                Some(b'{') => self.object(depth),
                Some(b'[') => self.array(depth),
                Some(b'"') => Ok(Json::String(self.string()?)),
                Some(b't') => self.literal("true", Json::Bool(true)),
                Some(b'f') => self.literal("false", Json::Bool(false)),
                Some(b'n') => self.literal("null", Json::Null),
                Some(b'-' | b'0'..=b'9') => self.number(),
                _ => Err(self.error("expected a JSON value")),
            }
        }

        fn literal(&mut self, word: &str, v: Json<'a>) -> Result<Json<'a>, JcsError> {
            if self.bytes[self.pos..].starts_with(word.as_bytes()) {
                self.pos += word.len();
                Ok(v)
            } else {
                Err(self.error("expected a JSON value"))
            }
        }

        fn array(&mut self, depth: usize) -> Result<Json<'a>, JcsError> {
            self.pos += 1;
            let mut items = Vec::new();
            self.skip_ws();
            if self.peek() == Some(b']') {
                self.pos += 1;
                return Ok(Json::Array(items));
            }
            loop {
                items.push(self.value(depth + 1)?);
                self.skip_ws();
                match self.peek() {
                    Some(b',') => self.pos += 1,
                    Some(b']') => {
                        self.pos += 1;
                        return Ok(Json::Array(items));
                    }
                    _ => return Err(self.error("expected `,` or `]`")),
                }
            }
        }

        fn object(&mut self, depth: usize) -> Result<Json<'a>, JcsError> {
            self.pos += 1;
            let mut members = Vec::new();
            self.skip_ws();
            if self.peek() == Some(b'}') {
                self.pos += 1;
                return Ok(Json::Object(members));
            }
            loop {
                self.skip_ws();
                if self.peek() != Some(b'"') {
                    return Err(self.error("expected an object member name"));
                }
                let name = self.string()?;
                self.skip_ws();
                self.expect(b':')?;
                let v = self.value(depth + 1)?;
                members.push((name, v));
                self.skip_ws();
                match self.peek() {
                    Some(b',') => self.pos += 1,
                    Some(b'}') => {
                        self.pos += 1;
                        return Ok(Json::Object(members));
                    }
                    _ => return Err(self.error("expected `,` or `}`")),
                }
            }
        }

        /// A string, borrowed when it holds no escape; escapes are decoded by serde_json (the
        /// same decoding as row encoding 1).
        fn string(&mut self) -> Result<Cow<'a, str>, JcsError> {
            let start = self.pos;
            self.pos += 1;
            let mut escaped = false;
            loop {
                match self.peek() {
                    None => return Err(self.error("unterminated string")),
                    Some(b'"') => break,
                    Some(b'\\') => {
                        escaped = true;
                        self.pos += 2;
                    }
                    Some(0..=0x1f) => return Err(self.error("control character in a string")),
                    Some(_) => self.pos += 1,
                }
            }
            self.pos += 1;
            // Both ends are ASCII quotes: character boundaries of `text`.
            let quoted = &self.text[start..self.pos];
            if escaped {
                serde_json::from_str::<String>(quoted)
                    .map(Cow::Owned)
                    .map_err(|e| JcsError::Parse(e.to_string()))
            } else {
                Ok(Cow::Borrowed(&quoted[1..quoted.len() - 1]))
            }
        }

        fn digits(&mut self) -> usize {
            let from = self.pos;
            while let Some(b'0'..=b'9') = self.peek() {
                self.pos += 1;
            }
            self.pos - from
        }

        /// A number: an exact integer when its value is one, else its nearest double.
        fn number(&mut self) -> Result<Json<'a>, JcsError> {
            let start = self.pos;
            let negative = self.peek() == Some(b'-');
            if negative {
                self.pos += 1;
            }
            let int_start = self.pos;
            let int_len = self.digits();
            if int_len == 0 || (int_len > 1 && self.bytes[int_start] == b'0') {
                return Err(self.error("invalid number"));
            }
            let int = &self.text[int_start..int_start + int_len];
            let mut frac = "";
            if self.peek() == Some(b'.') {
                self.pos += 1;
                let from = self.pos;
                if self.digits() == 0 {
                    return Err(self.error("invalid number"));
                }
                frac = &self.text[from..self.pos];
            }
            let mut exp: i64 = 0;
            let mut exp_given = false;
            if let Some(b'e' | b'E') = self.peek() {
                exp_given = true;
                self.pos += 1;
                let minus = match self.peek() {
                    Some(b'-') => {
                        self.pos += 1;
                        true
                    }
                    Some(b'+') => {
                        self.pos += 1;
                        false
                    }
                    _ => false,
                };
                let from = self.pos;
                if self.digits() == 0 {
                    return Err(self.error("invalid number"));
                }
                // Saturating: an exponent beyond i64 is out of every range below anyway.
                let e = self.text[from..self.pos]
                    .parse::<i64>()
                    .unwrap_or(i64::MAX / 2);
                exp = if minus { -e } else { e };
            }
            let lexeme = &self.text[start..self.pos];
            if frac.is_empty() && !exp_given {
                // The common case, a plain integer: already its canonical digits (the grammar
                // allows no leading zero), except `-0`.
                return Ok(Json::Integer(if int == "0" {
                    Cow::Borrowed("0")
                } else {
                    Cow::Borrowed(lexeme)
                }));
            }
            // value = digits × 10^scale, digits without leading or trailing zeros.
            let all = format!("{int}{frac}");
            let digits = all.trim_start_matches('0');
            if digits.is_empty() {
                return Ok(Json::Integer(Cow::Borrowed("0")));
            }
            let trimmed = digits.trim_end_matches('0');
            let scale = exp
                .saturating_sub(frac.len() as i64)
                .saturating_add((digits.len() - trimmed.len()) as i64);
            if scale >= 0 {
                let total = (trimmed.len() as i64).saturating_add(scale);
                if total > MAX_INTEGER_DIGITS as i64 {
                    return Err(self.error("integer with more digits than PostgreSQL stores"));
                }
                let mut s = String::with_capacity(total as usize + 1);
                if negative {
                    s.push('-');
                }
                s.push_str(trimmed);
                s.extend(std::iter::repeat_n('0', scale as usize));
                return Ok(Json::Integer(Cow::Owned(s)));
            }
            // Correctly rounded, as serde_json's `float_roundtrip` (row encoding 1) reads it.
            match lexeme.parse::<f64>() {
                Ok(f) if f.is_finite() => Ok(Json::Number(f)),
                _ => Err(self.error("number out of range")),
            }
        }
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

    /// Arrays and objects of `leaf`s, up to 4 levels deep (keys with escapes and non-BMP text).
    fn nested(
        leaf: impl Strategy<Value = serde_json::Value> + 'static,
    ) -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        leaf.prop_recursive(4, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec(("[a-c\\\\\"\u{1}é€😀\u{e000}\u{ffff}]{0,3}", inner), 0..6)
                    .prop_map(|members| Value::Object(members.into_iter().collect())),
            ]
        })
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
        nested(leaf)
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
    #[test]
    fn exact_form_keeps_integers_and_matches_jcs_otherwise() {
        let cases = [
            ("9007199254740993", "9007199254740993"),
            ("-9007199254740993", "-9007199254740993"),
            (
                "123456789012345678901234567890",
                "123456789012345678901234567890",
            ),
            (
                "[1e21, 1.5e1, 1e2, -0, 0.0, 1.0, 12.50, 0e7]",
                "[1000000000000000000000,15,100,0,0,1,12.5,0]",
            ),
            (
                "[1e-7, 0.000001, 333333333.3333333, 4.5e15]",
                "[1e-7,0.000001,333333333.3333333,4500000000000000]",
            ),
            (
                r#"{"b": 1.0, "a": "é", "c": [1e2, -0], "\u20ac": "\n\"", "d": {}, "e": [], "f": null, "g": [true, false]}"#,
                "{\"a\":\"é\",\"b\":1,\"c\":[100,0],\"d\":{},\"e\":[],\"f\":null,\"g\":[true,false],\"€\":\"\\n\\\"\"}",
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(canonicalize_exact(input).unwrap(), expected, "{input}");
        }
        assert_ne!(
            canonicalize_exact(r#"{"n": 9007199254740993}"#).unwrap(),
            canonicalize_exact(r#"{"n": 9007199254740992}"#).unwrap()
        );
        for bad in [
            "{",
            "01",
            "1.",
            "-",
            "1e",
            "[1,]",
            "\"\u{1}\"",
            "[1] x",
            "1e999999999999",
        ] {
            assert!(canonicalize_exact(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            canonicalize_exact(r#"{"x": 1, "x": 2}"#),
            Err(JcsError::DuplicateName("x".into()))
        );
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(canonicalize_exact(&deep).is_err());
    }

    /// JSON without integers beyond ±2^53: the exact form is the JCS form.
    fn json_within_doubles() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-(1i64 << 53)..=(1i64 << 53)).prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite, not an integer", |f| f.is_finite()
                    && f.fract() != 0.0)
                .prop_map(Value::from),
            "[a-c\\\\\"\u{0}-\u{1f}é€😀\u{e000}\u{ffff}]{0,4}".prop_map(Value::String),
        ];
        nested(leaf)
    }

    proptest! {
        #[test]
        fn exact_form_equals_jcs_within_doubles(value in json_within_doubles(), pretty in any::<bool>()) {
            let text = if pretty {
                serde_json::to_string_pretty(&value).unwrap()
            } else {
                serde_json::to_string(&value).unwrap()
            };
            prop_assert_eq!(canonicalize_exact(&text).unwrap(), canonicalize(&text).unwrap());
        }

        #[test]
        fn exact_form_writes_every_64_bit_integer_exactly(i in any::<i64>(), u in any::<u64>()) {
            prop_assert_eq!(canonicalize_exact(&i.to_string()).unwrap(), i.to_string());
            prop_assert_eq!(canonicalize_exact(&format!("{u}.000e0")).unwrap(), u.to_string());
        }
    }
}
