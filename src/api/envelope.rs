//! The response envelope every endpoint answers with (compatible with the reference service):
//!
//! ```json
//! {"id":"openg2p.auditmanager","version":"1.0","responsetime":"2026-11-22T19:23:11.123Z",
//!  "response":{...}|null,"errors":[{"errorCode":"AUD-002","message":"..."}]}
//! ```
//!
//! Handlers and errors answer with [`respond`], which holds the payload and the errors; the
//! [`render`] middleware writes the envelope with the service's [`Identity`] (its `id` and
//! `version`), which the router carries. An error answered before any handler ran (a refused
//! credential, an unknown route) gets the same identity as any other answer.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::value::RawValue;

use super::codes::ErrorItem;
use crate::config::Config;

/// The envelope's `id` and `version` (`service_id`, `api_version` of the configuration).
#[derive(Debug, Clone)]
pub struct Identity {
    id: Arc<str>,
    version: Arc<str>,
}

impl Identity {
    pub fn new(id: &str, version: &str) -> Identity {
        Identity {
            id: id.into(),
            version: version.into(),
        }
    }

    /// The identity `config` names.
    pub fn of(config: &Config) -> Identity {
        Identity::new(&config.service_id, &config.api_version)
    }
}

/// An answer waiting for its envelope: what [`respond`] leaves on the response for [`render`].
#[derive(Clone)]
struct Unrendered {
    responsetime: String,
    response: Option<Box<RawValue>>,
    errors: Vec<ErrorItem>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    id: &'a str,
    version: &'a str,
    responsetime: &'a str,
    response: Option<&'a RawValue>,
    errors: &'a [ErrorItem],
}

/// RFC 3339 with milliseconds and `Z`.
pub fn response_time() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Answers `status` with the envelope of `response` and `errors` (written by [`render`]).
pub fn respond<T: Serialize>(
    status: StatusCode,
    response: Option<&T>,
    errors: &[ErrorItem],
) -> Response {
    let response = match response.map(serde_json::value::to_raw_value).transpose() {
        Ok(response) => response,
        Err(e) => {
            tracing::error!(error = %e, "cannot serialize response envelope");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    let mut resp = (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
    )
        .into_response();
    resp.extensions_mut().insert(Unrendered {
        responsetime: response_time(),
        response,
        errors: errors.to_vec(),
    });
    resp
}

/// Middleware: writes the envelope of every answer made with [`respond`], with `identity`.
pub async fn render(State(identity): State<Identity>, req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let Some(unrendered) = resp.extensions_mut().remove::<Unrendered>() else {
        return resp;
    };
    let envelope = Envelope {
        id: &identity.id,
        version: &identity.version,
        responsetime: &unrendered.responsetime,
        response: unrendered.response.as_deref(),
        errors: &unrendered.errors,
    };
    match serde_json::to_vec(&envelope) {
        Ok(bytes) => {
            *resp.body_mut() = Body::from(bytes);
            resp
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot serialize response envelope");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::middleware;
    use serde_json::{Value, json};
    use tower_service::Service as _;

    use super::*;
    use crate::api::codes::ErrorCode;

    /// What `app` answers to any request: its status and its JSON body.
    async fn answer(app: Router) -> (StatusCode, Value) {
        let req = Request::builder()
            .uri("/")
            .body(Body::empty())
            .expect("request");
        let resp = app.into_service().call(req).await.expect("infallible");
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, serde_json::from_slice(&bytes).expect("JSON body"))
    }

    fn app(identity: Identity, status: StatusCode, errors: Vec<ErrorItem>) -> Router {
        Router::new()
            .fallback(move || async move { respond(status, Some(&json!({"n": 1})), &errors) })
            .layer(middleware::from_fn_with_state(identity, render))
    }

    #[tokio::test]
    async fn each_router_writes_its_own_identity() {
        let (status, one) = answer(app(
            Identity::new("one.audit", "1.0"),
            StatusCode::OK,
            vec![],
        ))
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            (&one["id"], &one["version"]),
            (&json!("one.audit"), &json!("1.0"))
        );
        assert_eq!(one["response"], json!({"n": 1}));
        assert_eq!(one["errors"], json!([]));
        assert!(
            one["responsetime"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z'))
        );

        let errors = vec![ErrorItem::new(ErrorCode::NotReady, "draining")];
        let (status, two) = answer(app(
            Identity::new("two.audit", "2.0"),
            StatusCode::SERVICE_UNAVAILABLE,
            errors,
        ))
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            (&two["id"], &two["version"]),
            (&json!("two.audit"), &json!("2.0"))
        );
        assert_eq!(
            two["errors"],
            json!([{"errorCode": "AUD-005", "message": "draining"}])
        );
    }
}
