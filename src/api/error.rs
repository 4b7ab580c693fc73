//! Error policy of the HTTP layer.
//!
//! Every failure a request can meet becomes one [`ApiError`] variant, and this file is the only
//! place that maps them to an `AUD-xxx` code (`codes.rs`, which gives its status) and headers. Messages say what was
//! wrong and what to do about it; they never echo secrets. 503s always carry `Retry-After`.

use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::codes::{ErrorCode, ErrorItem};
use super::envelope::respond;
use crate::event::FieldError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// AUD-001: the body is not JSON (or not decodable).
    #[error("{0}")]
    NotJson(String),
    /// AUD-002: schema violations, one per field.
    #[error("invalid event")]
    Invalid(Vec<FieldError>),
    /// AUD-003: body or a single event too large.
    #[error("{0}")]
    TooLarge(String),
    /// AUD-004: spool full or writer overloaded.
    #[error("{message}")]
    Backpressure {
        message: String,
        retry_after: Duration,
    },
    /// AUD-005: not ready (starting up, shutting down, role not running here).
    #[error("{message}")]
    NotReady {
        message: String,
        retry_after: Duration,
    },
    /// AUD-007: batch larger than `ingest.max_batch_size`.
    #[error("{0}")]
    BatchTooLarge(String),
    /// AUD-008: unsupported content type.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// AUD-009: the spool commit or fsync failed.
    #[error("{message}")]
    SpoolWrite {
        message: String,
        retry_after: Duration,
    },
    /// AUD-010: no or invalid credentials (answered with `WWW-Authenticate`).
    #[error("{0}")]
    Unauthenticated(String),
    /// AUD-011: the authenticated principal may not emit events with this `source`.
    #[error("{0}")]
    SourceForbidden(String),
    /// AUD-012: the authenticated principal may not read.
    #[error("{0}")]
    ReadForbidden(String),
    /// AUD-013: a bad query parameter (the message names it).
    #[error("{0}")]
    BadQuery(String),
    /// AUD-006: the database could not answer a query (unreachable, timed out).
    #[error("{message}")]
    Database {
        message: String,
        retry_after: Duration,
    },
    /// AUD-404: nothing at this address (an unknown route, an event id with no row).
    #[error("{0}")]
    NotFound(String),
    /// AUD-405: the route exists but not for this method (answered with `Allow`).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// AUD-400 (a 4xx) or AUD-500 (a 5xx): an answer the HTTP layer gave before any handler
    /// ran, e.g. a path that is not valid percent-encoded UTF-8, put in the envelope by
    /// [`envelope_errors`]. `status` is the one that layer chose.
    #[error("{message}")]
    Refused { status: StatusCode, message: String },
    /// AUD-408: the request body did not arrive within `http.body_timeout` (answered with
    /// `Connection: close`: the rest of the body is not waited for).
    #[error("{0}")]
    BodyTimeout(String),
}

/// `WWW-Authenticate` of every 401.
pub const WWW_AUTHENTICATE: &str = "Bearer realm=\"audit-manager\"";

impl ApiError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::NotJson(_) => ErrorCode::NotJson,
            ApiError::Invalid(_) => ErrorCode::Invalid,
            ApiError::TooLarge(_) => ErrorCode::TooLarge,
            ApiError::Backpressure { .. } => ErrorCode::Backpressure,
            ApiError::NotReady { .. } => ErrorCode::NotReady,
            ApiError::BatchTooLarge(_) => ErrorCode::BatchTooLarge,
            ApiError::UnsupportedMediaType(_) => ErrorCode::UnsupportedMediaType,
            ApiError::SpoolWrite { .. } => ErrorCode::SpoolWrite,
            ApiError::Unauthenticated(_) => ErrorCode::Unauthenticated,
            ApiError::SourceForbidden(_) => ErrorCode::SourceForbidden,
            ApiError::ReadForbidden(_) => ErrorCode::ReadForbidden,
            ApiError::BadQuery(_) => ErrorCode::BadQuery,
            ApiError::Database { .. } => ErrorCode::Database,
            ApiError::NotFound(_) => ErrorCode::NotFound,
            ApiError::MethodNotAllowed(_) => ErrorCode::MethodNotAllowed,
            ApiError::Refused { status, .. } if status.is_server_error() => ErrorCode::Internal,
            ApiError::Refused { .. } => ErrorCode::Refused,
            ApiError::BodyTimeout(_) => ErrorCode::BodyTimeout,
        }
    }

    /// The code's status; an answer refused by the HTTP layer keeps the status that layer chose.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Refused { status, .. } => *status,
            other => other.code().status(),
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::Backpressure { retry_after, .. }
            | ApiError::NotReady { retry_after, .. }
            | ApiError::SpoolWrite { retry_after, .. }
            | ApiError::Database { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// One error item per problem (each bad field gets its own).
    pub fn items(&self) -> Vec<ErrorItem> {
        let code = self.code();
        match self {
            ApiError::Invalid(fields) => fields
                .iter()
                .map(|f| ErrorItem::new(code, f.to_string()))
                .collect(),
            other => vec![ErrorItem::new(code, other.to_string())],
        }
    }
}

/// Seconds for `Retry-After`, rounded up, at least 1.
pub fn retry_after_secs(d: Duration) -> u64 {
    (d.as_millis().div_ceil(1000) as u64).max(1)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // Refused events are counted; a refused read is counted by the query role itself.
        if !matches!(
            self,
            ApiError::BadQuery(_)
                | ApiError::Database { .. }
                | ApiError::NotFound(_)
                | ApiError::MethodNotAllowed(_)
                | ApiError::Refused { .. }
        ) {
            metrics::counter!("audit_events_rejected_total", "code" => self.code().as_str())
                .increment(1);
        }
        let mut resp = respond::<()>(self.status(), None, &self.items());
        if let Some(d) = self.retry_after() {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs(d)));
        }
        if matches!(self, ApiError::Unauthenticated(_)) {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(WWW_AUTHENTICATE),
            );
        }
        if matches!(self, ApiError::BodyTimeout(_)) {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

impl ApiError {
    /// The error for an answer that reached [`envelope_errors`] without the envelope: the
    /// variant of its status where there is one, [`ApiError::Refused`] otherwise. `text` is the
    /// original body (axum's rejection message), `method` the request's.
    fn from_bare(
        status: StatusCode,
        method: &Method,
        retry_after: Option<u64>,
        text: String,
    ) -> ApiError {
        let said = |default: &str| {
            if text.is_empty() {
                default.to_owned()
            } else {
                format!("{default}: {text}")
            }
        };
        match status {
            StatusCode::NOT_FOUND => ApiError::NotFound(said("nothing at this address")),
            StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed(said(&format!(
                "method {method} is not allowed here; the Allow header lists the methods that are"
            ))),
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(said("request too large")),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                ApiError::UnsupportedMediaType(said("unsupported Content-Type"))
            }
            StatusCode::SERVICE_UNAVAILABLE => ApiError::NotReady {
                message: said("not available; retry later"),
                retry_after: Duration::from_secs(retry_after.unwrap_or(1)),
            },
            status if status.is_server_error() => ApiError::Refused {
                status,
                message: said(
                    "unexpected error inside the service; retry, and report it if it persists",
                ),
            },
            status => ApiError::Refused {
                status,
                message: said("the request was refused before it reached its handler"),
            },
        }
    }
}

/// The longest original body [`envelope_errors`] quotes (axum's rejections are one line).
const BARE_BODY_LIMIT: usize = 4096;

/// Middleware: an error answer (4xx, 5xx) that is not already the JSON envelope — axum's own
/// rejections (a malformed path, a method a route does not serve), or any layer's — is
/// rewritten as the envelope with an `AUD-xxx` code through [`ApiError`], keeping its status
/// and headers (`Allow`, `Retry-After`). Clients parse one error format on every route.
pub async fn envelope_errors(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let resp = next.run(req).await;
    let status = resp.status();
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = match axum::body::to_bytes(body, BARE_BODY_LIMIT).await {
        Ok(b) => String::from_utf8_lossy(&b).trim().to_owned(),
        Err(_) => String::new(),
    };
    let retry_after = parts
        .headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let mut out = ApiError::from_bare(status, &method, retry_after, text).into_response();
    let ours: Vec<header::HeaderName> = out.headers().keys().cloned().collect();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_LENGTH && !ours.contains(name) {
            out.headers_mut().append(name.clone(), value.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_503_carries_retry_after() {
        let d = Duration::from_millis(1500);
        for e in [
            ApiError::Backpressure {
                message: "x".into(),
                retry_after: d,
            },
            ApiError::NotReady {
                message: "x".into(),
                retry_after: d,
            },
            ApiError::SpoolWrite {
                message: "x".into(),
                retry_after: d,
            },
            ApiError::Database {
                message: "x".into(),
                retry_after: d,
            },
        ] {
            let resp = e.into_response();
            assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(resp.headers()[header::RETRY_AFTER], "2");
        }
    }

    #[test]
    fn auth_errors_have_their_codes_and_401_says_how_to_authenticate() {
        let resp = ApiError::Unauthenticated("x".into()).into_response();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            resp.headers()[header::WWW_AUTHENTICATE],
            "Bearer realm=\"audit-manager\""
        );
        assert_eq!(
            ApiError::SourceForbidden("x".into()).code().as_str(),
            "AUD-011"
        );
        assert_eq!(
            ApiError::ReadForbidden("x".into()).code().as_str(),
            "AUD-012"
        );
        assert_eq!(
            ApiError::ReadForbidden("x".into()).status(),
            StatusCode::FORBIDDEN
        );
    }

    #[test]
    fn invalid_lists_each_field() {
        let e = ApiError::Invalid(vec![
            FieldError {
                field: "events[1].source".into(),
                message: "required".into(),
            },
            FieldError {
                field: "events[1].data.action".into(),
                message: "required".into(),
            },
        ]);
        let items = e.items();
        assert_eq!(items.len(), 2);
        assert!(items[0].message.contains("events[1].source"));
        assert_eq!(items[1].error_code.as_str(), "AUD-002");
    }
}
