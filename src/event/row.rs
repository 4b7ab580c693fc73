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

use super::ValidationMode;
use super::json::{JsonError, parse_json};
use super::rules::{Normalizations, Rule};
use super::table::is_valid_traceparent;
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
    /// The CloudEvents `authtype` this service set at ingest (`api_key`, `service_account`);
    /// `None` without authentication.
    pub auth_type: Option<String>,
    /// The CloudEvents `authid` this service set at ingest (the principal's name).
    pub auth_id: Option<String>,
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

/// Limits for re-validating a consumed record in `mode`: time skew and size were ingest's
/// business.
fn sink_limits(mode: ValidationMode) -> Limits {
    Limits {
        mode,
        max_future_skew: std::time::Duration::from_secs(100 * 366 * 24 * 3600),
        max_event_bytes: usize::MAX,
    }
}

/// Namespace of the name-based ids given to consumed records whose `id` is `""`.
const EMPTY_ID_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6f1c_2b1e_53a4_4d4e_9a3c_0e6b_7d2f_a915);

/// Decodes and validates one Kafka record value in `mode` and maps it to its row.
pub fn row_from_record(
    value: &[u8],
    now: DateTime<Utc>,
    mode: ValidationMode,
) -> Result<Row, RowError> {
    row_from_record_counted(value, now, mode).map(|(row, _)| row)
}

/// [`row_from_record`], also returning the `compatible`-mode rules the record needed (e.g. a
/// naive `time` in a backlog the reference service left in Kafka).
pub fn row_from_record_counted(
    value: &[u8],
    now: DateTime<Utc>,
    mode: ValidationMode,
) -> Result<(Row, Normalizations), RowError> {
    let parsed = parse_json(value).map_err(|e| match e {
        JsonError::Syntax(m) => RowError::Undecodable(format!("value is not JSON: {m}")),
        JsonError::Nul(f) => RowError::Unstorable(format!(
            "{}: contains a NUL character (\\u0000), which PostgreSQL text and jsonb cannot \
             store",
            if f.field.is_empty() {
                "the event"
            } else {
                &f.field
            }
        )),
        JsonError::DuplicateKey(f) => RowError::Invalid(f.to_string()),
    })?;
    let Value::Object(mut map) = parsed else {
        return Err(RowError::Undecodable(
            "value is JSON but not an object".into(),
        ));
    };
    // Events in Kafka carry the `id` and `time` fixed at ingest (the reference service's too).
    // A record without them would get a fresh id or time on every redelivery and defeat
    // deduplication.
    let mut missing = Vec::new();
    if !map.get("id").is_some_and(Value::is_string) {
        missing.push("id: required (events in Kafka must be normalized)".to_owned());
    }
    if map.get("time").is_none_or(Value::is_null) {
        missing.push("time: required (events in Kafka must be normalized)".to_owned());
    }
    let mut rules = Normalizations::default();
    if mode == ValidationMode::Compatible && map.get("id").and_then(Value::as_str) == Some("") {
        // Ingest would generate a random id; a redelivered record must map to the same row, so
        // the id is derived from the record's bytes.
        let id = uuid::Uuid::new_v5(&EMPTY_ID_NAMESPACE, value);
        map.insert("id".to_owned(), Value::String(id.hyphenated().to_string()));
        rules.add(Rule::IdEmpty);
    }
    // The same validation as ingest, working on the parsed object itself: no re-serialization
    // and re-parse per row on the sink's hot path.
    let (event, applied) = match validate_map(Value::Object(map), now, &sink_limits(mode)) {
        Err(rejection) => {
            let mut all = missing;
            all.push(rejection.to_string());
            return Err(RowError::Invalid(all.join("; ")));
        }
        Ok(_) if !missing.is_empty() => return Err(RowError::Invalid(missing.join("; "))),
        Ok(ok) => ok,
    };
    applied.iter().for_each(|r| rules.add(r));
    Ok((to_row(&event)?, rules))
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
    // `compatible` keeps any traceparent string; only a W3C one names a trace.
    let trace_id = str_at(event, &["traceparent"])
        .filter(|tp| is_valid_traceparent(tp))
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
        auth_type: str_at(event, &["authtype"]).map(str::to_owned),
        auth_id: str_at(event, &["authid"]).map(str::to_owned),
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, 19, 0, 0).unwrap()
    }

    fn row(v: Value) -> Row {
        row_from_record(v.to_string().as_bytes(), now(), ValidationMode::Strict).unwrap()
    }

    fn details_of(r: &Row) -> Option<Value> {
        r.details
            .as_deref()
            .map(|d| serde_json::from_str(d).unwrap())
    }

    #[test]
    fn authcontext_fills_the_auth_columns() {
        let base = json!({
            "specversion": "1.0", "id": "e1", "source": "urn:auth", "type": "auth.login",
            "time": "2026-11-01T10:00:00Z",
            "data": {"actor": {"id": "u-1"}, "action": "login", "outcome": "success"}
        });
        let r = row(base.clone());
        assert_eq!((r.auth_type, r.auth_id), (None, None));
        let mut with = base;
        with["authtype"] = json!("api_key");
        with["authid"] = json!("registry");
        let r = row(with);
        assert_eq!(r.auth_type.as_deref(), Some("api_key"));
        assert_eq!(r.auth_id.as_deref(), Some("registry"));
        assert!(r.details.is_none(), "authcontext is not part of details");
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
        let e = row_from_record(b"\x00\x01not json", now(), ValidationMode::Strict).unwrap_err();
        assert_eq!(e.kind(), "undecodable");
        let e = row_from_record(b"[1,2]", now(), ValidationMode::Strict).unwrap_err();
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
            ValidationMode::Strict,
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
            ValidationMode::Strict,
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
            ValidationMode::Strict,
        )
        .unwrap_err();
        assert_eq!(e.kind(), "unstorable");
        assert!(e.to_string().contains("data.changes[0].new"), "{e}");
    }

    /// A record as the reference service left it in Kafka (`model_dump(mode="json")` of its
    /// model): explicit nulls, a naive time, an empty subject, a non-W3C traceparent.
    fn reference_record(id: &str) -> Vec<u8> {
        json!({
            "specversion": "1.0", "id": id, "source": "/openg2p/registry",
            "type": "org.openg2p.beneficiary.viewed", "subject": "",
            "time": "2026-04-22T14:00:00.250000", "datacontenttype": "text/plain",
            "traceparent": "abc",
            "data": {"actor": {"type": "user", "id": "u_1", "name": null, "roles": [],
                               "ip": null, "session_id": null},
                     "action": "view", "outcome": "success", "resource": null, "reason": null}
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn reference_shaped_record_is_a_row_in_compatible_mode() {
        let (r, rules) =
            row_from_record_counted(&reference_record("r-1"), now(), ValidationMode::Compatible)
                .unwrap();
        assert_eq!(r.id, "r-1");
        assert_eq!(
            r.occurred_at,
            Utc.with_ymd_and_hms(2026, 4, 22, 14, 0, 0).unwrap()
                + chrono::TimeDelta::milliseconds(250)
        );
        assert_eq!(r.subject.as_deref(), Some(""));
        assert_eq!(r.trace_id, None, "only a W3C traceparent names a trace");
        assert_eq!((r.resource_type, r.reason, r.details), (None, None, None));
        let labels: Vec<&str> = rules.rewrites().iter().map(Rule::label).collect();
        assert_eq!(labels, ["time_no_offset"]);
        // Strict dead-letters it, naming what it refuses.
        let e =
            row_from_record(&reference_record("r-1"), now(), ValidationMode::Strict).unwrap_err();
        assert_eq!(e.kind(), "schema-invalid");
        assert!(e.to_string().contains("time: not an RFC 3339"), "{e}");
    }

    #[test]
    fn empty_id_in_kafka_gets_an_id_derived_from_the_record() {
        let rec = reference_record("");
        let a = row_from_record(&rec, now(), ValidationMode::Compatible).unwrap();
        let b = row_from_record(&rec, now(), ValidationMode::Compatible).unwrap();
        assert_eq!(a.id, b.id, "a redelivery maps to the same row");
        assert_eq!(uuid::Uuid::parse_str(&a.id).unwrap().get_version_num(), 5);
        let other = row_from_record(
            &reference_record("")
                .into_iter()
                .map(|c| if c == b'u' { b'v' } else { c })
                .collect::<Vec<_>>(),
            now(),
            ValidationMode::Compatible,
        );
        assert_ne!(other.map(|r| r.id).ok(), Some(a.id));
    }

    #[test]
    fn duplicate_keys_are_schema_invalid_in_both_modes() {
        let rec = br#"{"specversion":"1.0","id":"d","source":"s","type":"t","time":"2026-11-01T10:00:00Z","data":{"actor":{"id":"u"},"action":"a","outcome":"failure","outcome":"success"}}"#;
        for mode in [ValidationMode::Compatible, ValidationMode::Strict] {
            let e = row_from_record(rec, now(), mode).unwrap_err();
            assert_eq!(e.kind(), "schema-invalid");
            assert!(e.to_string().contains("data.outcome"), "{e}");
        }
    }

    #[test]
    fn missing_time_is_refused_in_both_modes() {
        let rec = br#"{"specversion":"1.0","id":"d","source":"s","type":"t","time":null,"data":{"actor":{"id":"u"},"action":"a","outcome":"success"}}"#;
        for mode in [ValidationMode::Compatible, ValidationMode::Strict] {
            let e = row_from_record(rec, now(), mode).unwrap_err();
            assert!(e.to_string().contains("time: required"), "{e}");
        }
    }
}
