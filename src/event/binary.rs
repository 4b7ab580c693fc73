//! CloudEvents HTTP binary mode: attributes in `ce-*` headers, `data` in the body.

use serde_json::{Map, Value};

use super::json::{JsonError, NUL_MESSAGE, parse_json};
use super::validate::{FieldError, Rejection, kind};

/// Why a binary-mode request could not be turned into a structured event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BinaryError {
    /// The body is not JSON at all (→ 400). Carries the parser's message.
    #[error("request body is not valid JSON: {0}")]
    NotJson(String),
    /// Headers or data are unusable (→ 422), e.g. `data: must be a JSON object (got array)`.
    #[error(transparent)]
    Rejected(#[from] Rejection),
}

/// True when the request carries a `ce-specversion` header (any case).
pub fn is_binary_mode<'a>(header_names: impl IntoIterator<Item = &'a str>) -> bool {
    header_names
        .into_iter()
        .any(|n| n.eq_ignore_ascii_case("ce-specversion"))
}

/// Build the structured event from binary-mode `ce-*` headers and the body.
///
/// Header names are case-insensitive; the attribute is the lowercased rest of the name. Values
/// are trimmed of surrounding spaces/tabs and percent-decoded (CloudEvents HTTP binding
/// §3.1.3.2); they must decode to UTF-8. Every attribute becomes a JSON string, in header order;
/// then `datacontenttype` (from `content_type`, which wins over a `ce-datacontenttype` header),
/// then `data` (the body, which must be a JSON object). Other headers are ignored. A repeated
/// `ce-*` header or a `ce-data` header is an error, and so are a NUL character (`%00`) in a
/// value and a duplicated key or NUL anywhere in the body. The result still has to go through
/// [`normalize`](super::normalize).
pub fn from_binary<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Value, BinaryError> {
    let mut event = Map::new();
    let mut errs = Vec::new();
    for (name, raw) in headers {
        let Some(attr) = strip_prefix_ignore_case(name, "ce-") else {
            continue;
        };
        let attr = attr.to_ascii_lowercase();
        if attr.is_empty() {
            errs.push(FieldError::new(
                "",
                format!("header {name:?} names no attribute"),
            ));
            continue;
        }
        if attr.contains('\0') {
            errs.push(FieldError::new(
                "",
                format!("header {name:?}: a NUL character in an attribute name"),
            ));
            continue;
        }
        if attr == "data" {
            errs.push(FieldError::new(
                "data",
                "must be sent as the request body, not a header",
            ));
            continue;
        }
        if event.contains_key(&attr) {
            errs.push(FieldError::new(
                attr,
                format!("header {name:?} given more than once"),
            ));
            continue;
        }
        match percent_decode(trim_ows(raw)) {
            Ok(value) if value.contains('\0') => errs.push(FieldError::new(attr, NUL_MESSAGE)),
            Ok(value) => {
                event.insert(attr, Value::String(value));
            }
            Err(msg) => errs.push(FieldError::new(attr, format!("header {name:?}: {msg}"))),
        }
    }
    if let Some(ct) = content_type.filter(|ct| ct.contains('\0')) {
        errs.push(FieldError::new(
            "datacontenttype",
            format!("Content-Type {ct:?}: {NUL_MESSAGE}"),
        ));
    } else if let Some(ct) = content_type {
        event.insert("datacontenttype".to_owned(), Value::String(ct.to_owned()));
    }
    let data = match parse_json(body).map_err(|e| e.under("data")) {
        Ok(data) => data,
        Err(JsonError::Syntax(msg)) => return Err(BinaryError::NotJson(msg)),
        Err(JsonError::Nul(e) | JsonError::DuplicateKey(e)) => {
            errs.push(e);
            return Err(Rejection::Invalid(errs).into());
        }
    };
    match data {
        Value::Object(_) => {
            event.insert("data".to_owned(), data);
        }
        other => errs.push(FieldError::new(
            "data",
            format!("must be a JSON object (got {})", kind(&other)),
        )),
    }
    if errs.is_empty() {
        Ok(Value::Object(event))
    } else {
        Err(Rejection::Invalid(errs).into())
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn trim_ows(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

/// Decode `%XX` escapes (either hex case); the result must be UTF-8.
pub fn percent_decode(raw: &[u8]) -> Result<String, &'static str> {
    const NOT_UTF8: &str = "value is not valid UTF-8 after percent-decoding";
    if !raw.contains(&b'%') {
        return std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| NOT_UTF8);
    }
    let hex = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let hi = raw.get(i + 1).copied().and_then(hex);
            let lo = raw.get(i + 2).copied().and_then(hex);
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err("invalid percent-encoding");
            };
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| NOT_UTF8)
}

#[cfg(test)]
mod tests {
    use super::super::{Limits, normalize};
    use super::*;
    use chrono::{TimeZone, Utc};
    use serde_json::json;

    const BODY: &[u8] = br#"{"actor":{"id":"u-1"},"action":"login","outcome":"denied"}"#;

    fn headers() -> Vec<(&'static str, &'static [u8])> {
        vec![
            ("Host", b"example".as_slice()),
            ("CE-SpecVersion", b"1.0"),
            ("ce-id", b"evt-1"),
            ("Ce-Source", b"/auth"),
            ("ce-type", b"org.example.login"),
            ("ce-subject", b" user%20%C3%A9%2Fx%25 "),
            ("ce-time", b"2026-11-22T19:00:00Z"),
            ("ce-tenantid", b"gov-a"),
            (
                "ce-traceparent",
                b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        ]
    }

    #[test]
    fn detects_binary_mode() {
        assert!(is_binary_mode(["content-type", "CE-SPECVERSION"]));
        assert!(!is_binary_mode(["content-type", "ce-id"]));
    }

    #[test]
    fn builds_structured_event() {
        let v = from_binary(headers(), Some("application/json"), BODY).unwrap();
        assert_eq!(
            v,
            json!({
                "specversion": "1.0",
                "id": "evt-1",
                "source": "/auth",
                "type": "org.example.login",
                "subject": "user é/x%",
                "time": "2026-11-22T19:00:00Z",
                "tenantid": "gov-a",
                "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "datacontenttype": "application/json",
                "data": {"actor": {"id": "u-1"}, "action": "login", "outcome": "denied"}
            })
        );
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys.first().unwrap().as_str(), "specversion");
        assert_eq!(keys.last().unwrap().as_str(), "data");
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 19, 5, 0).unwrap();
        let ev = normalize(v, now, &Limits::default()).unwrap();
        assert_eq!(ev.key.as_deref(), Some("user é/x%"));
        assert_eq!(ev.time, "2026-11-22T19:00:00Z");
    }

    #[test]
    fn body_not_json() {
        let err = from_binary(headers(), Some("application/json"), b"{nope").unwrap_err();
        assert!(matches!(err, BinaryError::NotJson(_)), "{err:?}");
        let err = from_binary(headers(), None, b"").unwrap_err();
        assert!(matches!(err, BinaryError::NotJson(_)), "{err:?}");
    }

    #[test]
    fn data_not_object_and_header_errors_are_collected() {
        let mut h = headers();
        h.push(("ce-bad", b"%zz"));
        h.push(("ce-worse", b"%C3%28"));
        h.push(("CE-ID", b"again"));
        h.push(("ce-data", b"{}"));
        let err = from_binary(h, None, b"[1,2]").unwrap_err();
        let BinaryError::Rejected(Rejection::Invalid(errs)) = err else {
            panic!("{err:?}");
        };
        let msgs: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(
            msgs,
            [
                r#"bad: header "ce-bad": invalid percent-encoding"#,
                r#"worse: header "ce-worse": value is not valid UTF-8 after percent-decoding"#,
                r#"id: header "CE-ID" given more than once"#,
                "data: must be sent as the request body, not a header",
                "data: must be a JSON object (got array)",
            ]
        );
    }

    #[test]
    fn content_type_becomes_datacontenttype() {
        let mut h = headers();
        h.push(("ce-datacontenttype", b"text/plain"));
        let v = from_binary(h.clone(), Some("application/vnd.x+json"), BODY).unwrap();
        assert_eq!(v["datacontenttype"], "application/vnd.x+json");
        // Without Content-Type the header value stays, and normalize judges it.
        let v = from_binary(h, None, BODY).unwrap();
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 19, 5, 0).unwrap();
        let strict = Limits {
            mode: crate::event::ValidationMode::Strict,
            ..Limits::default()
        };
        let err = normalize(v, now, &strict).unwrap_err();
        assert!(
            err.message()
                .starts_with("datacontenttype: must be a JSON content type")
        );
    }

    #[test]
    fn nul_and_duplicate_keys_are_refused_and_named() {
        let mut h = headers();
        h.push(("ce-note", b"a%00b"));
        let err = from_binary(h, None, BODY).unwrap_err();
        let BinaryError::Rejected(Rejection::Invalid(errs)) = err else {
            panic!("{err:?}");
        };
        assert_eq!(errs[0].field, "note");
        assert!(errs[0].message.contains("NUL"), "{errs:?}");
        let body = br#"{"actor":{"id":"u"},"action":"a","outcome":"failure","outcome":"success"}"#;
        let err = from_binary(headers(), None, body).unwrap_err();
        let BinaryError::Rejected(Rejection::Invalid(errs)) = err else {
            panic!("{err:?}");
        };
        assert_eq!(errs[0].field, "data.outcome");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode(b"a%2fb%2F%41").unwrap(), "a/b/A");
        assert_eq!(percent_decode(b"plain").unwrap(), "plain");
        assert!(percent_decode(b"50%").is_err());
        assert!(percent_decode(b"%4").is_err());
        assert!(percent_decode(b"\xff").is_err());
    }
}
