//! The `AUD-xxx` error codes: one enum, each code with the HTTP status it is sent with and when.
//! Clients match on these strings (never on a message), so they are stable across releases; the
//! OpenAPI document's `ErrorCode` schema is this table.

use std::borrow::Cow;

use axum::http::StatusCode;
use serde::{Serialize, Serializer};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::{PartialSchema, ToSchema};

/// What went wrong, as the `errorCode` of an error item says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// AUD-001
    NotJson,
    /// AUD-002
    Invalid,
    /// AUD-003
    TooLarge,
    /// AUD-004
    Backpressure,
    /// AUD-005
    NotReady,
    /// AUD-006
    Database,
    /// AUD-007
    BatchTooLarge,
    /// AUD-008
    UnsupportedMediaType,
    /// AUD-009
    SpoolWrite,
    /// AUD-010
    Unauthenticated,
    /// AUD-011
    SourceForbidden,
    /// AUD-012
    ReadForbidden,
    /// AUD-013
    BadQuery,
    /// AUD-404
    NotFound,
    /// AUD-405
    MethodNotAllowed,
    /// AUD-400
    Refused,
    /// AUD-500
    Internal,
    /// AUD-408
    BodyTimeout,
}

impl ErrorCode {
    /// Every code, in the order the document's table lists them.
    pub const ALL: [ErrorCode; 18] = [
        ErrorCode::NotJson,
        ErrorCode::Invalid,
        ErrorCode::TooLarge,
        ErrorCode::Backpressure,
        ErrorCode::NotReady,
        ErrorCode::Database,
        ErrorCode::BatchTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::SpoolWrite,
        ErrorCode::Unauthenticated,
        ErrorCode::SourceForbidden,
        ErrorCode::ReadForbidden,
        ErrorCode::BadQuery,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Refused,
        ErrorCode::Internal,
        ErrorCode::BodyTimeout,
    ];

    /// The code as sent: `AUD-` and three digits.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotJson => "AUD-001",
            ErrorCode::Invalid => "AUD-002",
            ErrorCode::TooLarge => "AUD-003",
            ErrorCode::Backpressure => "AUD-004",
            ErrorCode::NotReady => "AUD-005",
            ErrorCode::Database => "AUD-006",
            ErrorCode::BatchTooLarge => "AUD-007",
            ErrorCode::UnsupportedMediaType => "AUD-008",
            ErrorCode::SpoolWrite => "AUD-009",
            ErrorCode::Unauthenticated => "AUD-010",
            ErrorCode::SourceForbidden => "AUD-011",
            ErrorCode::ReadForbidden => "AUD-012",
            ErrorCode::BadQuery => "AUD-013",
            ErrorCode::NotFound => "AUD-404",
            ErrorCode::MethodNotAllowed => "AUD-405",
            ErrorCode::Refused => "AUD-400",
            ErrorCode::Internal => "AUD-500",
            ErrorCode::BodyTimeout => "AUD-408",
        }
    }

    /// The code whose string is `code` (health checks report theirs as strings).
    pub fn parse(code: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == code)
    }

    /// The status the code is sent with. AUD-400 is sent with the 4xx the HTTP layer chose, 400
    /// when it is a malformed request.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::NotJson | ErrorCode::BatchTooLarge | ErrorCode::BadQuery => {
                StatusCode::BAD_REQUEST
            }
            ErrorCode::Refused => StatusCode::BAD_REQUEST,
            ErrorCode::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorCode::SourceForbidden | ErrorCode::ReadForbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorCode::Backpressure
            | ErrorCode::NotReady
            | ErrorCode::Database
            | ErrorCode::SpoolWrite => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// When the code is sent, as the document's table says it.
    pub fn when(self) -> &'static str {
        match self {
            ErrorCode::NotJson => "the body is not JSON (or not decodable)",
            ErrorCode::Invalid => {
                "schema violation; one error per bad field, named by path (and batch index)"
            }
            ErrorCode::TooLarge => {
                "body (`http.max_body_bytes`) or a single event (`ingest.max_event_bytes`) too large"
            }
            ErrorCode::Backpressure => {
                "spool full or writer overloaded (backpressure); `Retry-After` set, nothing stored"
            }
            ErrorCode::NotReady => {
                "not ready: starting up, shutting down, a role of this process has stopped, or the ingest role not enabled here"
            }
            ErrorCode::Database => {
                "database unreachable (`/health` of the sink and maintain roles), or a query it did not answer (unreachable, `query.statement_timeout`)"
            }
            ErrorCode::BatchTooLarge => "batch larger than `ingest.max_batch_size`",
            ErrorCode::UnsupportedMediaType => "unsupported `Content-Type`",
            ErrorCode::SpoolWrite => {
                "spool write or fsync failed (disk full, I/O error); `Retry-After` set"
            }
            ErrorCode::Unauthenticated => {
                "no or invalid credentials (`auth.mode` token or mtls); `WWW-Authenticate` set"
            }
            ErrorCode::SourceForbidden => {
                "the authenticated principal may not emit events with this `source` (a reader may emit none); nothing stored"
            }
            ErrorCode::ReadForbidden => {
                "the authenticated principal may not read (`GET /config` and the query role need a reader)"
            }
            ErrorCode::BadQuery => {
                "bad query parameter (unknown, repeated, empty, malformed; `/events`, `/seals`); the message names it"
            }
            ErrorCode::NotFound => {
                "no such route (the API lives under `/v1/auditmanager`), or no stored event with the id asked for"
            }
            ErrorCode::MethodNotAllowed => {
                "the route exists but not for this method; `Allow` lists the methods it serves"
            }
            ErrorCode::Refused => {
                "a malformed request refused before it reached a handler (e.g. a path that is not valid percent-encoded UTF-8); the status is 400 or the 4xx that layer chose, the message says why"
            }
            ErrorCode::Internal => {
                "an unexpected error inside the service (a bug); retry, and report it if it persists"
            }
            ErrorCode::BodyTimeout => {
                "the request body did not arrive within `http.body_timeout`; nothing stored, the connection is closed, send it again"
            }
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// The `errorCode` values, with a table of when each is sent.
impl PartialSchema for ErrorCode {
    fn schema() -> RefOr<Schema> {
        let mut table = String::from(
            "What went wrong, stable across releases (match on this, not on `message`).\n\n\
             | code | status | when |\n|---|---|---|\n",
        );
        for c in ErrorCode::ALL {
            table.push_str(&format!(
                "| {} | {} | {} |\n",
                c.as_str(),
                c.status().as_u16(),
                c.when()
            ));
        }
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(ErrorCode::ALL.iter().map(|c| c.as_str())))
            .description(Some(table))
            .into()
    }
}

impl ToSchema for ErrorCode {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ErrorCode")
    }
}

/// One problem: a stable code and a message that says what to do.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, ToSchema)]
pub struct ErrorItem {
    #[serde(rename = "errorCode")]
    pub error_code: ErrorCode,
    /// What was wrong and what to do about it; for AUD-002, `field.path: problem`.
    pub message: String,
}

impl ErrorItem {
    pub fn new(error_code: ErrorCode, message: impl Into<String>) -> ErrorItem {
        ErrorItem {
            error_code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_listed_once_and_parses_back() {
        let mut seen = std::collections::BTreeSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.as_str()), "{c} listed twice");
            assert_eq!(ErrorCode::parse(c.as_str()), Some(c));
            assert!(
                c.as_str().starts_with("AUD-") && c.as_str().len() == 7,
                "{c}"
            );
        }
        assert_eq!(ErrorCode::parse("AUD-999"), None);
    }

    #[test]
    fn an_item_serializes_as_the_envelope_carries_it() {
        let item = ErrorItem::new(ErrorCode::Invalid, "source: required");
        assert_eq!(
            serde_json::to_value(&item).expect("JSON"),
            serde_json::json!({"errorCode": "AUD-002", "message": "source: required"})
        );
    }
}
