//! The OpenAPI 3.1 document of the HTTP API (`GET /openapi.json`), assembled at the top: the
//! router list (`mod.rs`) registers every operation with its `#[utoipa::path]` attribute, and
//! this file adds what is not an operation — the title, the tags, the security schemes and the
//! schemas no operation names (`schema.rs`, `codes.rs`).
//!
//! `tests/http/openapi_drift.rs` keeps the document true: it runs accepted and rejected fixture
//! events through the `CloudEvent` schema and through the service and demands the same
//! verdicts, checks the live response bodies against the documented ones, checks that every
//! documented route is served and that the `AUD-xxx` codes sent and documented are the same
//! sets, and validates the served document against the OpenAPI 3.1 schema.

use utoipa::OpenApi;

use super::codes::{ErrorCode, ErrorItem};
use super::schema::{BatchRequest, CloudEvent, ErrorEnvelope, HealthStatus};

/// The document without its operations, which the router list adds.
pub fn base() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// What the document says besides its operations: the title, the shared schemas, the security
/// schemes and the tags.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "audit-manager",
        description = "Durable audit events as CloudEvents 1.0 over HTTP. A 202 means the \
                       event is in the spool and fsynced; every response body is the envelope \
                       `{id, version, responsetime, response, errors}`.",
        license(name = "MPL-2.0"),
    ),
    components(schemas(
        CloudEvent,
        BatchRequest,
        ErrorItem,
        ErrorCode,
        ErrorEnvelope,
        HealthStatus,
        crate::integrity::SealLine,
    )),
    modifiers(&SecuritySchemes),
    tags(
        (name = "ingest", description = "Send audit events"),
        (name = "query", description = "Read stored events (role `query`); every read is itself recorded"),
        (name = "operations", description = "Health, readiness, version, configuration, metrics"),
        (name = "documentation", description = "This document and the pages that render it"),
        (name = "integrity", description = "Seals of the stored rows and the keys that sign them"),
    ),
)]
struct ApiDoc;

/// The two ways to authenticate (`auth.mode` token or mtls); the protected operations list
/// them beside "none", since `auth.mode: none` (the default) needs no credentials.
struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "auth.mode token: `Authorization: Bearer <token>`, the token's SHA-256 \
                         listed in auth.tokens_file",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "mutualTLS",
            SecurityScheme::MutualTls {
                description: Some(
                    "auth.mode mtls: a client certificate signed by http.tls.client_ca_file; \
                     its first DNS SAN names the principal"
                        .into(),
                ),
                extensions: None,
            },
        );
    }
}
