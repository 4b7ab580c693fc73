//! Mapping a Kafka record (a normalized CloudEvent) to one `audit_events` row (pure: no I/O).
//!
//! The columns and the `details` rules are fixed by the contract (docs/contract.md, "The table"):
//! `details` holds the rest of `data` — `actor` without `id`/`type`, `resource` without
//! `id`/`type` (both with empty values dropped), and every other key of `data` as is, except the
//! keys that have their own column (`action`, `outcome`, `reason`). It is NULL when nothing is
//! left.
//!
//! The sink decides "schema-invalid" with the very same [`normalize`] the ingest uses, so an
//! event the API would refuse is never stored, and one it accepted always is. Only the limits
//! that depend on *when* and *where* the event is checked are relaxed: a record consumed later
//! cannot be "too far in the future", and its size was already bounded by ingest and Kafka.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::validate::{Limits, str_at, validate_map};

/// One `audit_events` row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub id: String,
    pub occurred_at: DateTime<Utc>,
    pub source: String,
    pub r#type: String,
    pub subject: Option<String>,
    pub actor_type: String,
    pub actor_id: String,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub action: String,
    pub outcome: String,
    pub reason: Option<String>,
    pub trace_id: Option<String>,
    /// `details` as compact JSON text, `None` for SQL NULL.
    pub details: Option<String>,
}

/// Why a record cannot become a row. The [`RowError::kind`] is the stable label used in the
/// DLQ `x-audit-error` header prefix and in the dead-letter metric.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowError {
    /// The value is not a JSON object.
    #[error("undecodable: {0}")]
    Undecodable(String),
    /// Valid JSON, but not an event the ingest would accept (the message lists every field).
    #[error("schema-invalid: {0}")]
    Invalid(String),
    /// A valid event PostgreSQL cannot store (e.g. a NUL character in a string).
    #[error("unstorable: {0}")]
    Unstorable(String),
}

impl RowError {
    pub fn kind(&self) -> &'static str {
        match self {
            RowError::Undecodable(_) => "undecodable",
            RowError::Invalid(_) => "schema-invalid",
            RowError::Unstorable(_) => "unstorable",
        }
    }
}

/// Limits for re-validating a consumed record: time skew and size were ingest's business.
const SINK_LIMITS: Limits = Limits {
    max_future_skew: std::time::Duration::from_secs(100 * 366 * 24 * 3600),
    max_event_bytes: usize::MAX,
};

/// Decodes and validates one Kafka record value and maps it to its row.
pub fn row_from_record(value: &[u8], now: DateTime<Utc>) -> Result<Row, RowError> {
    let parsed: Value = serde_json::from_slice(value)
        .map_err(|e| RowError::Undecodable(format!("value is not JSON: {e}")))?;
    let Value::Object(map) = parsed else {
        return Err(RowError::Undecodable(
            "value is JSON but not an object".into(),
        ));
    };
    // The forwarder only publishes normalized events: `id` and `time` are fixed at ingest. A
    // record without them would get a fresh id on every redelivery and defeat deduplication.
    let mut missing = Vec::new();
    for key in ["id", "time"] {
        if !map.get(key).is_some_and(Value::is_string) {
            missing.push(format!(
                "{key}: required (events in Kafka must be normalized)"
            ));
        }
    }
    // The same validation as ingest, working on the parsed object itself: no re-serialization
    // and re-parse per row on the sink's hot path.
    let event = match validate_map(Value::Object(map), now, &SINK_LIMITS) {
        Err(rejection) => {
            let mut all = missing;
            all.push(rejection.to_string());
            return Err(RowError::Invalid(all.join("; ")));
        }
        Ok(_) if !missing.is_empty() => return Err(RowError::Invalid(missing.join("; "))),
        Ok(ev) => ev,
    };
    if let Some(path) = find_nul_in_map(&event, &mut String::new()) {
        return Err(RowError::Unstorable(format!(
            "{path} contains a NUL character (\\u0000), which PostgreSQL text and jsonb cannot \
             store"
        )));
    }
    to_row(&event)
}

/// Maps a normalized (already validated) event to its row.
pub fn to_row(event: &Map<String, Value>) -> Result<Row, RowError> {
    let need = |path: &[&str]| {
        str_at(event, path)
            .map(str::to_owned)
            .ok_or_else(|| RowError::Invalid(format!("{}: required", path.join("."))))
    };
    let occurred_at = super::event_time(event)
        .ok_or_else(|| RowError::Invalid("time: not an RFC 3339 timestamp".into()))?
        .with_timezone(&Utc);
    let data = event
        .get("data")
        .and_then(Value::as_object)
        .ok_or_else(|| RowError::Invalid("data: required".into()))?;
    let trace_id = str_at(event, &["traceparent"])
        .and_then(|tp| tp.split('-').nth(1))
        .map(str::to_owned);
    Ok(Row {
        id: need(&["id"])?,
        occurred_at,
        source: need(&["source"])?,
        r#type: need(&["type"])?,
        subject: str_at(event, &["subject"]).map(str::to_owned),
        actor_type: need(&["data", "actor", "type"])?,
        actor_id: need(&["data", "actor", "id"])?,
        resource_type: str_at(event, &["data", "resource", "type"]).map(str::to_owned),
        resource_id: str_at(event, &["data", "resource", "id"]).map(str::to_owned),
        action: need(&["data", "action"])?,
        outcome: need(&["data", "outcome"])?,
        reason: str_at(event, &["data", "reason"]).map(str::to_owned),
        trace_id,
        details: details(data).map(|d| Value::Object(d).to_string()),
    })
}

/// `data` keys that have their own columns.
const COLUMN_KEYS: [&str; 3] = ["action", "outcome", "reason"];

/// The `details` object, or `None` when nothing is left.
fn details(data: &Map<String, Value>) -> Option<Map<String, Value>> {
    let mut out = Map::new();
    for (key, value) in data {
        match key.as_str() {
            "actor" | "resource" => {
                if let Value::Object(obj) = value {
                    let rest: Map<String, Value> = obj
                        .iter()
                        .filter(|(k, v)| k.as_str() != "id" && k.as_str() != "type" && !empty(v))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    if !rest.is_empty() {
                        out.insert(key.clone(), Value::Object(rest));
                    }
                }
            }
            k if COLUMN_KEYS.contains(&k) => {}
            _ => {
                out.insert(key.clone(), value.clone());
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

/// `null`, `""`, `[]` and `{}` are empty.
fn empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Bool(_) | Value::Number(_) => false,
    }
}

/// Path of the first string or key containing NUL, if any.
fn find_nul(v: &Value, path: &mut String) -> Option<String> {
    match v {
        Value::String(s) if s.contains('\0') => Some(display_path(path)),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            let len = path.len();
            path.push_str(&format!("[{i}]"));
            let found = find_nul(item, path);
            path.truncate(len);
            found
        }),
        Value::Object(map) => find_nul_in_map(map, path),
        _ => None,
    }
}

fn find_nul_in_map(map: &Map<String, Value>, path: &mut String) -> Option<String> {
    map.iter().find_map(|(k, item)| {
        let len = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(k);
        let found = if k.contains('\0') {
            Some(display_path(path))
        } else {
            find_nul(item, path)
        };
        path.truncate(len);
        found
    })
}

fn display_path(path: &str) -> String {
    if path.is_empty() {
        "the event".into()
    } else {
        path.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, 19, 0, 0).unwrap()
    }

    fn row(v: Value) -> Row {
        row_from_record(v.to_string().as_bytes(), now()).unwrap()
    }

    fn details_of(r: &Row) -> Option<Value> {
        r.details
            .as_deref()
            .map(|d| serde_json::from_str(d).unwrap())
    }

    #[test]
    fn login_without_resource_has_null_details() {
        let r = row(json!({
            "specversion": "1.0", "id": "e1", "source": "urn:auth", "type": "auth.login",
            "time": "2026-11-01T10:00:00.250+02:00",
            "data": {"actor": {"id": "u-1"}, "action": "login", "outcome": "success"}
        }));
        assert_eq!(r.id, "e1");
        assert_eq!(
            r.occurred_at,
            Utc.with_ymd_and_hms(2026, 11, 1, 8, 0, 0).unwrap()
                + chrono::TimeDelta::milliseconds(250)
        );
        assert_eq!(
            (r.source.as_str(), r.r#type.as_str()),
            ("urn:auth", "auth.login")
        );
        assert_eq!(
            r.actor_type, "user",
            "default actor type filled in by normalize"
        );
        assert_eq!(r.actor_id, "u-1");
        assert_eq!(
            (r.action.as_str(), r.outcome.as_str()),
            ("login", "success")
        );
        assert_eq!(
            (r.subject, r.resource_type, r.resource_id),
            (None, None, None)
        );
        assert_eq!((r.reason, r.trace_id, r.details), (None, None, None));
    }

    #[test]
    fn update_keeps_changes_and_actor_extras_in_details() {
        let r = row(json!({
            "specversion": "1.0", "id": "e2", "source": "s", "type": "t", "subject": "b/1",
            "time": "2026-11-01T10:00:00Z",
            "data": {
                "actor": {"type": "user", "id": "u-1", "name": "Alice", "roles": ["officer"],
                          "ip": "", "session_id": null},
                "action": "update", "outcome": "success",
                "resource": {"type": "beneficiary", "id": "123"},
                "changes": [{"field": "phone", "old": "1", "new": "2"}],
                "context": {}
            }
        }));
        assert_eq!(r.subject.as_deref(), Some("b/1"));
        assert_eq!(r.resource_type.as_deref(), Some("beneficiary"));
        assert_eq!(r.resource_id.as_deref(), Some("123"));
        // Empty actor values dropped; other data keys as is (even an empty one); a resource
        // with nothing beyond id/type leaves no `resource` key.
        assert_eq!(
            details_of(&r),
            Some(json!({
                "actor": {"name": "Alice", "roles": ["officer"]},
                "changes": [{"field": "phone", "old": "1", "new": "2"}],
                "context": {}
            }))
        );
    }

    #[test]
    fn payment_resource_extras_kept_without_id_and_type() {
        let r = row(json!({
            "specversion": "1.0", "id": "e3", "source": "s", "type": "payment.sent",
            "time": "2026-11-01T10:00:00Z",
            "data": {
                "actor": {"type": "system", "id": "scheduler"},
                "action": "pay", "outcome": "failure", "reason": "insufficient funds",
                "resource": {"type": "payment", "id": "p-9", "amount": 120.5,
                             "currency": "KES", "note": ""}
            }
        }));
        assert_eq!(r.actor_type, "system");
        assert_eq!(r.outcome, "failure");
        assert_eq!(r.reason.as_deref(), Some("insufficient funds"));
        assert_eq!(
            details_of(&r),
            Some(json!({"resource": {"amount": 120.5, "currency": "KES"}}))
        );
    }

    #[test]
    fn denied_outcome_and_trace_id_from_traceparent() {
        let r = row(json!({
            "specversion": "1.0", "id": "e4", "source": "s", "type": "t",
            "time": "2026-11-01T10:00:00Z",
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "data": {"actor": {"type": "service", "id": "svc"}, "action": "read",
                     "outcome": "denied"}
        }));
        assert_eq!(r.outcome, "denied");
        assert_eq!(r.actor_type, "service");
        assert_eq!(
            r.trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
    }

    #[test]
    fn not_json_is_undecodable() {
        let e = row_from_record(b"\x00\x01not json", now()).unwrap_err();
        assert_eq!(e.kind(), "undecodable");
        let e = row_from_record(b"[1,2]", now()).unwrap_err();
        assert_eq!(e.kind(), "undecodable");
    }

    #[test]
    fn missing_actor_is_schema_invalid_with_the_ingest_message() {
        let e = row_from_record(
            json!({"specversion": "1.0", "id": "x", "time": "2026-11-01T10:00:00Z",
                   "source": "s", "type": "t", "data": {"action": "a", "outcome": "success"}})
            .to_string()
            .as_bytes(),
            now(),
        )
        .unwrap_err();
        assert_eq!(e.kind(), "schema-invalid");
        assert!(e.to_string().contains("data.actor: required"), "{e}");
    }

    #[test]
    fn event_without_id_or_time_is_refused_not_given_fresh_ones() {
        let e = row_from_record(
            json!({"specversion": "1.0", "source": "s", "type": "t",
                   "data": {"actor": {"id": "u"}, "action": "a", "outcome": "success"}})
            .to_string()
            .as_bytes(),
            now(),
        )
        .unwrap_err();
        assert_eq!(e.kind(), "schema-invalid");
        assert!(e.to_string().contains("id: required"), "{e}");
        assert!(e.to_string().contains("time: required"), "{e}");
    }

    #[test]
    fn far_future_time_is_accepted_at_the_sink() {
        let r = row(json!({
            "specversion": "1.0", "id": "f", "source": "s", "type": "t",
            "time": "2031-01-01T00:00:00Z",
            "data": {"actor": {"id": "u"}, "action": "a", "outcome": "success"}
        }));
        assert_eq!(
            r.occurred_at,
            Utc.with_ymd_and_hms(2031, 1, 1, 0, 0, 0).unwrap()
        );
    }

    #[test]
    fn nul_character_is_unstorable_and_named() {
        let e = row_from_record(
            json!({"specversion": "1.0", "id": "n", "source": "s", "type": "t",
                   "time": "2026-11-01T10:00:00Z",
                   "data": {"actor": {"id": "u"}, "action": "a", "outcome": "success",
                            "changes": [{"new": "a\u{0}b"}]}})
            .to_string()
            .as_bytes(),
            now(),
        )
        .unwrap_err();
        assert_eq!(e.kind(), "unstorable");
        assert!(e.to_string().contains("data.changes[0].new"), "{e}");
    }
}
