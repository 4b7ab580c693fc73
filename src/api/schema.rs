//! The request and response bodies of the HTTP API as the OpenAPI document describes them
//! (`ToSchema`). Most handlers build their payloads with `json!`; these types are their documented
//! shape, and `tests/http/openapi_drift.rs` checks the live bodies against them.
//!
//! The ingest handlers validate `serde_json::Value`s against the event rule table, so
//! [`CloudEvent`]'s schema is built from that table ([`crate::event::schema`]).

use std::borrow::Cow;

use serde::Serialize;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::{PartialSchema, ToSchema};

use super::codes::ErrorItem;

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

/// A structured-mode CloudEvent as the default validation mode (`compatible`) accepts it. Its
/// schema, and the components it refers to, are built from the event rule table
/// ([`crate::event::schema`]), so the document and the validator cannot drift apart.
#[derive(Serialize)]
pub struct CloudEvent;

impl PartialSchema for CloudEvent {
    fn schema() -> RefOr<Schema> {
        crate::event::schema::cloud_event_schema()
    }
}

impl ToSchema for CloudEvent {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.extend(crate::event::schema::cloud_event_components());
    }
}
