//! The response envelope every endpoint answers with (compatible with the reference service):
//!
//! ```json
//! {"id":"openg2p.auditmanager","version":"1.0","responsetime":"2026-11-22T19:23:11.123Z",
//!  "response":{...}|null,"errors":[{"errorCode":"AUD-002","message":"..."}]}
//! ```

use std::sync::RwLock;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Default envelope `id` (`service_id` in the configuration).
pub const SERVICE_ID: &str = "openg2p.auditmanager";
/// Default envelope `version` (`api_version` in the configuration).
pub const VERSION: &str = "1.0";

/// The envelope's `id` and `version`: one pair per process, set from the configuration when
/// the API starts (`set_identity`); every response, errors included, carries it.
static IDENTITY: RwLock<Option<(String, String)>> = RwLock::new(None);

/// Sets the envelope's `id` and `version` (`service_id`, `api_version`).
pub fn set_identity(id: &str, version: &str) {
    let mut guard = IDENTITY.write().unwrap_or_else(|e| e.into_inner());
    *guard = Some((id.to_owned(), version.to_owned()));
}

/// One problem: a stable code and a message that says what to do.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ErrorItem {
    #[serde(rename = "errorCode")]
    #[schema(value_type = super::openapi::ErrorCode)]
    pub error_code: &'static str,
    /// What was wrong and what to do about it; for AUD-002, `field.path: problem`.
    pub message: String,
}

#[derive(Serialize)]
struct Envelope<'a, T: Serialize> {
    id: &'a str,
    version: &'a str,
    responsetime: String,
    response: Option<&'a T>,
    errors: &'a [ErrorItem],
}

/// RFC 3339 with milliseconds and `Z`.
pub fn response_time() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Renders the envelope with `status`.
pub fn respond<T: Serialize>(
    status: StatusCode,
    response: Option<&T>,
    errors: &[ErrorItem],
) -> Response {
    let identity = IDENTITY.read().unwrap_or_else(|e| e.into_inner());
    let (id, version) = identity
        .as_ref()
        .map_or((SERVICE_ID, VERSION), |(i, v)| (i.as_str(), v.as_str()));
    let body = Envelope {
        id,
        version,
        responsetime: response_time(),
        response,
        errors,
    };
    match serde_json::to_vec(&body) {
        Ok(bytes) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            bytes,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot serialize response envelope");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
