//! Every read is itself an audit event: investigators read personal data, and that access is
//! what an audit trail is for. The event goes through the same validation and the same durable
//! spool as any emitter's event, and the read is answered only once it is spooled.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

/// `type` of the events recording reads.
pub const QUERY_EVENT_TYPE: &str = "org.openg2p.auditmanager.query";
/// `source` of the events recording reads.
pub const QUERY_EVENT_SOURCE: &str = "/auditmanager/query";

/// What was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A page of a search, or one event by id.
    Query,
    /// A streamed export.
    Export,
    /// A value turned into its pseudonyms (`GET /pseudonym`; the value is not recorded).
    Pseudonym,
    /// A data subject forgotten (`POST /privacy/forget`).
    Forget,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Query => "audit.query",
            Action::Export => "audit.export",
            Action::Pseudonym => "audit.pseudonym",
            Action::Forget => "privacy.forget",
        }
    }
}

/// Who read: the verified principal, or `anonymous` when the role runs without credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reader {
    /// The principal's name; `None` for an anonymous reader.
    pub name: Option<String>,
    /// How it was verified (`api_key`, `service_account`), recorded as the event's
    /// `authtype`/`authid` like any authenticated event's.
    pub auth_type: Option<&'static str>,
}

impl Reader {
    pub fn anonymous() -> Reader {
        Reader {
            name: None,
            auth_type: None,
        }
    }
}

/// The CloudEvent recording one read. `context` holds the filters (and, for a lookup, the id).
pub fn event(
    reader: &Reader,
    action: Action,
    outcome: &str,
    context: Map<String, Value>,
    now: DateTime<Utc>,
) -> Value {
    let actor = match &reader.name {
        Some(name) => json!({ "type": "user", "id": name }),
        None => json!({ "type": "anonymous", "id": "anonymous" }),
    };
    let mut event = json!({
        "specversion": "1.0",
        "id": crate::event::new_event_id(now),
        "source": QUERY_EVENT_SOURCE,
        "type": QUERY_EVENT_TYPE,
        "time": now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "datacontenttype": "application/json",
        "data": {
            "actor": actor,
            "action": action.as_str(),
            "outcome": outcome,
            "resource": { "type": "audit_events" },
            "context": context,
        }
    });
    let ctx = reader
        .name
        .as_deref()
        .zip(reader.auth_type)
        .map(|(auth_id, auth_type)| crate::event::authcontext::AuthContext { auth_type, auth_id });
    crate::event::authcontext::apply(&mut event, ctx);
    event
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Limits, ValidationMode, normalize};

    #[test]
    fn the_read_event_passes_strict_validation() {
        let mut ctx = Map::new();
        ctx.insert("actor_id".into(), Value::String("u-1".into()));
        let now = Utc::now();
        for reader in [
            Reader::anonymous(),
            Reader {
                name: Some("investigator".into()),
                auth_type: Some("api_key"),
            },
        ] {
            let ev = event(&reader, Action::Export, "success", ctx.clone(), now);
            let limits = Limits {
                mode: ValidationMode::Strict,
                max_future_skew: std::time::Duration::from_secs(3600),
                max_event_bytes: 1 << 20,
            };
            let n = normalize(ev, now, &limits).expect("valid");
            let v: Value = serde_json::from_slice(&n.json).unwrap();
            assert_eq!(v["data"]["action"], "audit.export");
            assert_eq!(v["data"]["context"]["actor_id"], "u-1");
        }
    }
}
