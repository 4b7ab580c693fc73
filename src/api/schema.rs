//! The request and response bodies of the HTTP API as the OpenAPI document describes them
//! (`ToSchema`). Most handlers build their payloads with `json!`; these types are their documented
//! shape, and `tests/http/openapi_drift.rs` checks the live bodies against them.
//!
//! The ingest handlers validate `serde_json::Value`s (the event module is a rule set, not a
//! serde type), so [`CloudEvent`] describes what that rule set accepts in the default
//! `compatible` mode. It is one self-contained item ([`cloud_event`]): whatever builds that
//! schema can replace it without touching the rest.

use std::borrow::Cow;

use serde::Serialize;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::{PartialSchema, ToSchema};

use super::codes::ErrorItem;

pub use cloud_event::CloudEvent;

/// The envelope of a successful response (every endpoint except `/metrics`, `/docs`, `/redoc`
/// answers with it); `errors` is empty, or lists the roles that are down on `/health`.
#[derive(Serialize, ToSchema)]
pub struct Envelope<T> {
    /// The service id (`service_id` of the reference's configuration).
    #[schema(example = "openg2p.auditmanager")]
    pub id: String,
    /// The API version (`api_version` of the reference's configuration).
    #[schema(example = "1.0")]
    pub version: String,
    /// When the response was made: RFC 3339, milliseconds, `Z`.
    #[schema(example = "2026-11-22T19:23:11.123Z")]
    pub responsetime: String,
    /// The payload.
    pub response: T,
    /// Empty on success; one item per problem otherwise.
    pub errors: Vec<ErrorItem>,
}

/// The envelope of a failed request: `response` is `null`, `errors` says why.
#[derive(Serialize, ToSchema)]
pub struct ErrorEnvelope {
    #[schema(example = "openg2p.auditmanager")]
    pub id: String,
    #[schema(example = "1.0")]
    pub version: String,
    #[schema(example = "2026-11-22T19:23:11.123Z")]
    pub responsetime: String,
    /// Always `null`.
    #[schema(schema_with = null_schema, required = true)]
    pub response: Option<()>,
    #[schema(min_items = 1)]
    pub errors: Vec<ErrorItem>,
}

fn null_schema() -> Schema {
    ObjectBuilder::new().schema_type(Type::Null).into()
}

/// `POST /events` answered 202: the event is durably spooled.
#[derive(Serialize, ToSchema)]
pub struct Accepted {
    /// The event's `id` (as sent, or the one generated at ingest).
    pub accepted: String,
}

/// A page of stored rows (role `query`).
#[derive(Serialize, ToSchema)]
pub struct EventsPage {
    /// The rows, newest first: every column of `audit_events` (`details` as JSON).
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<serde_json::Value>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// `POST /events/batch` answered 202: every event is durably spooled, in one commit.
#[derive(Serialize, ToSchema)]
pub struct BatchAccepted {
    /// The events' ids, in request order.
    pub accepted: Vec<String>,
    pub count: usize,
}

/// `{"events": [...]}`: the `application/json` form of a batch.
#[derive(Serialize, ToSchema)]
pub struct BatchRequest {
    pub events: Vec<CloudEvent>,
}

/// `GET /version`.
#[derive(Serialize, ToSchema)]
pub struct VersionInfo {
    #[schema(example = "0.1.0")]
    pub service_version: String,
    /// RFC 3339, or `unknown`.
    pub build_time: String,
    /// The commit built, or `unknown`.
    pub git_commit: String,
}

/// A role's, or the process's, state.
#[allow(dead_code)] // Only described: the handlers write these values as strings.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HealthStatus {
    /// Working.
    Up,
    /// Still serving emitters, but something needs attention (e.g. Kafka unreachable while the
    /// spool absorbs events).
    Degraded,
    /// Not working: `/health` answers 503.
    Down,
}

/// One role's health: its status, the code and reason when it is down, and role-specific
/// detail (spool size, consumer lag, …).
#[derive(Serialize, ToSchema)]
pub struct RoleHealth {
    pub status: HealthStatus,
    /// Why the role is `DOWN` (`AUD-005`, `AUD-006`, `AUD-009`).
    pub code: Option<String>,
    pub reason: Option<String>,
}

/// `GET /health`: the process and each running role (`ingest`, `forward`, `sink`, `maintain`).
#[derive(Serialize, ToSchema)]
pub struct HealthReport {
    pub status: HealthStatus,
    pub roles: std::collections::BTreeMap<String, RoleHealth>,
}

/// `GET /config`: the effective configuration, every key with its value, secrets redacted.
pub struct EffectiveConfig;

impl PartialSchema for EffectiveConfig {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "Sections as in the configuration file (`http`, `ingest`, `spool`, `kafka`, \
                 `sink`, `database`, …) plus the reference service's keys (`service_id`, \
                 `api_version`, …) with their effective values; passwords and credentials in \
                 URLs are redacted.",
            ))
            .into()
    }
}

impl ToSchema for EffectiveConfig {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("EffectiveConfig")
    }
}

/// One public key of `GET /seals/keys`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PublicKey {
    /// 16 hex digits: the first 8 bytes of SHA-256(public key).
    pub key_id: Option<String>,
    /// The ed25519 public key, 64 hex digits.
    pub public_key: Option<String>,
    /// `signing` (the sealer's key, `integrity.signing_key_file`) or `trusted`
    /// (`integrity.public_key_files`).
    pub role: &'static str,
    /// The key file could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Payload of `GET /seals/keys`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PublicKeys {
    pub keys: Vec<PublicKey>,
}

/// `CloudEvent` and its parts: what `compatible` validation accepts, as one JSON Schema.
pub mod cloud_event {
    use serde::Serialize;
    use utoipa::ToSchema;
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};

    /// `time` as `compatible` validation accepts it.
    fn event_time_schema() -> Schema {
        OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(TIME_PATTERN))
                .description(Some(
                    "RFC 3339 (`2026-04-22T14:00:00Z`, `…+05:30`); `compatible` also accepts no \
                     offset (UTC), a space instead of `T`, no seconds, a date alone (midnight \
                     UTC) and Unix seconds as a numeric string, and writes them back as RFC \
                     3339 `Z`",
                )),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Number)
                .description(Some(
                    "Unix seconds (`compatible` only; read as milliseconds beyond 2·10¹⁰, as \
                     the reference does)",
                )),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Null)
                .description(Some("absent: the ingest time")),
        )
        .description(Some(
            "When it happened; defaults to the ingest time. `strict`: RFC 3339 with `Z` or an \
             offset, at most `ingest.max_future_skew` ahead.",
        ))
        .into()
    }

    /// Dates and times `compatible` validation accepts as strings: what the reference service's
    /// model reads as a datetime (a date, then `T`, `t`, a space or `_` and `HH:MM[:SS[.frac]]`,
    /// then `Z`, `±HH:MM`, `±HHMM`, `±HH` or nothing; a date alone; Unix seconds as a numeric
    /// string). The minus sign may be U+2212, as Python prints it in some locales.
    pub const TIME_PATTERN: &str = "^(\\d{4}-\\d{2}-\\d{2}([Tt _]\\d{2}:\\d{2}(:\\d{2}(\\.\\d+)?)?\
     ([Zz]|[+\\-\u{2212}]\\d{2}(:?\\d{2})?)?)?|[+\\-]?\\d+(\\.\\d+)?)$";

    /// The CloudEvents version: `"1.0"`.
    #[allow(dead_code)] // Only described: the handlers write these values as strings.
    #[derive(Serialize, ToSchema)]
    pub enum SpecVersion {
        #[serde(rename = "1.0")]
        V1,
    }

    /// A CloudEvents 1.0 audit event in structured mode, as the default validation mode
    /// (`ingest.validation: compatible`) accepts it.
    ///
    /// **compatible** (default) accepts every event the reference service (OpenG2P Audit Manager)
    /// accepts and normalizes it before it is stored: `time` without an offset is UTC, with a space
    /// instead of `T`, a date alone (midnight UTC) or a number (Unix seconds) is written back as
    /// RFC 3339 `Z`; a missing `specversion` is `"1.0"`; empty strings are kept as sent, except an
    /// empty `id`, which is replaced by a generated one; any `traceparent` string is kept (the
    /// stored `trace_id` comes only from a valid W3C value); any `datacontenttype` is kept; there is
    /// no future-time limit. Each normalization is counted in
    /// `audit_events_normalized_total{rule}`.
    ///
    /// **strict** refuses what CloudEvents does not allow: `specversion` is required; `id`,
    /// `source`, `type`, `subject` and `data.actor.id`, `data.action`, `data.resource.type` must
    /// not be empty; `time` must be RFC 3339 with `Z` or an offset and at most
    /// `ingest.max_future_skew` ahead; `traceparent` must be W3C
    /// (`00-<32 hex>-<16 hex>-<2 hex>`); `datacontenttype` must be JSON (`application/json` or
    /// `*/*+json`).
    ///
    /// **Both modes**: `data` is an object with `actor.id`, `action` and a valid `outcome`; a NUL
    /// character (`\u0000`) or a key that appears twice in one object, anywhere in the event, is
    /// refused with 422 (PostgreSQL cannot store the first; the second would let one message say
    /// two things); `data_base64` is not supported; the size limit (`ingest.max_event_bytes`,
    /// 413) and JSON nesting (128 levels) apply. Values PostgreSQL indexes have length caps in
    /// bytes (422 beyond): `id`, `source`, `subject`, `data.actor.id`, `data.resource.id` 1024;
    /// `type`, `traceparent` 512; `data.resource.type` 256. `strict` refuses a `source` with a
    /// `.`/`..` path segment or a Unicode bidi control; `compatible` keeps and counts it. Defaults filled in before spooling: `id` (UUIDv7),
    /// `time` (ingest time), `datacontenttype` (`application/json`), `data.actor.type` (`user`).
    /// Any other top-level attribute (a CloudEvents extension) is kept. `null` for an optional
    /// attribute means absent.
    #[derive(Serialize, ToSchema)]
    #[schema(example = json!({
    "specversion": "1.0",
    "id": "0b5f9a6e-3c1d-4b8e-9f0a-2d7c6e5b4a31",
    "source": "/openg2p/registry",
    "type": "org.openg2p.beneficiary.updated",
    "subject": "beneficiary/b-1029",
    "time": "2026-11-22T10:00:00Z",
    "data": {
        "actor": {"type": "user", "id": "officer-7", "name": "Officer Seven"},
        "action": "beneficiary.update",
        "outcome": "success",
        "resource": {"type": "beneficiary", "id": "b-1029"},
        "changes": [{"field": "phone", "old": "1", "new": "2"}]
    }
}))]
    pub struct CloudEvent {
        /// `"1.0"`; absent means `"1.0"` (`compatible`; required in `strict`).
        #[schema(required = false)]
        pub specversion: SpecVersion,
        /// Unique per `source`; with `time` it is the row's primary key, so a retried event is
        /// stored once. Generated (UUIDv7) when absent (or empty, in `compatible`).
        pub id: Option<String>,
        /// Who emits it, e.g. `/openg2p/registry`.
        pub source: String,
        /// What happened, e.g. `org.openg2p.beneficiary.updated`.
        pub r#type: String,
        /// The entity concerned, e.g. `beneficiary/b-1029`; the Kafka key (else `data.actor.id`),
        /// so one entity's events stay in order.
        pub subject: Option<String>,
        #[schema(schema_with = event_time_schema, required = false)]
        pub time: Option<String>,
        /// Defaults to `application/json`.
        pub datacontenttype: Option<String>,
        /// W3C trace context (`00-<trace-id>-<parent-id>-<flags>`); its trace-id is stored as
        /// `trace_id`.
        pub traceparent: Option<String>,
        pub data: AuditData,
    }

    /// The audit payload: who did what, to what, with what outcome. Other keys (`changes`,
    /// `context`, …) are kept and stored in `details`.
    #[derive(Serialize, ToSchema)]
    pub struct AuditData {
        pub actor: Actor,
        /// What was done, e.g. `beneficiary.update`.
        pub action: String,
        pub outcome: Outcome,
        pub resource: Option<Resource>,
        /// Why (e.g. the reason for a denial).
        pub reason: Option<String>,
    }

    /// Who (or what system) did it. Other keys are kept (stored in `details.actor`).
    #[derive(Serialize, ToSchema)]
    pub struct Actor {
        /// Defaults to `user`.
        pub r#type: Option<ActorType>,
        pub id: String,
        pub name: Option<String>,
        pub roles: Option<Vec<String>>,
        pub ip: Option<String>,
        pub session_id: Option<String>,
    }

    #[allow(dead_code)] // Only described: the handlers write these values as strings.
    #[derive(Serialize, ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum ActorType {
        User,
        System,
        Service,
        Anonymous,
    }

    #[allow(dead_code)] // Only described: the handlers write these values as strings.
    #[derive(Serialize, ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum Outcome {
        Success,
        Failure,
        Denied,
    }

    /// The object acted upon. Other keys are kept (stored in `details.resource`).
    #[derive(Serialize, ToSchema)]
    pub struct Resource {
        pub r#type: String,
        pub id: Option<String>,
    }

    #[cfg(test)]
    mod tests {
        use serde_json::json;

        use super::*;

        #[test]
        fn the_time_schema_takes_the_forms_compatible_mode_reads() {
            let schema = serde_json::to_value(event_time_schema()).expect("schema");
            let v = jsonschema::draft202012::new(&schema).expect("valid JSON Schema");
            for ok in [
                json!("2026-04-22T14:00:00Z"),
                json!("2026-04-22T14:00:00.123456+05:30"),
                json!("2026-04-22T14:00:00"),
                json!("2026-04-22 14:00:00Z"),
                json!("2026-04-22_14:00"),
                json!("2026-04-22T14:00:00\u{2212}0300"),
                json!("2026-04-22"),
                json!("1776866400"),
                json!(1776866400),
                json!(1776866400.5),
                json!(null),
            ] {
                assert!(v.is_valid(&ok), "{ok} accepted");
            }
            for bad in [
                json!("yesterday"),
                json!("22/04/2026"),
                json!("2026-04-22T14"),
                json!("2026-04-22T14:00:00Zulu"),
                json!(true),
                json!({"t": 1}),
            ] {
                assert!(!v.is_valid(&bad), "{bad} refused");
            }
        }
    }
}
