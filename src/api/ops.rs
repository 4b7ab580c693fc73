//! Operational routes: health, version, effective config, metrics, OpenAPI document.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::envelope::{ErrorItem, respond};
use crate::health::Status;
use crate::spool::now_ms;

/// `GET /health`: 200 while every running role is UP or DEGRADED, 503 when one is DOWN.
pub async fn health(State(state): State<AppState>) -> Response {
    let (mut status, roles) = state.health.report();
    let mut errors: Vec<ErrorItem> = roles
        .iter()
        .filter(|(_, r)| r.status == Status::Down)
        .map(|(role, r)| ErrorItem {
            error_code: r.code.unwrap_or("AUD-005"),
            message: format!(
                "{role}: {}",
                r.reason.clone().unwrap_or_else(|| "down".into())
            ),
        })
        .collect();
    if state.shutdown.is_cancelled() {
        status = Status::Down;
        errors.push(ErrorItem {
            error_code: "AUD-005",
            message: "shutting down".into(),
        });
    }
    let http = if status == Status::Down {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body = json!({ "status": status, "roles": roles });
    respond(http, Some(&body), &errors)
}

/// `GET /version`.
pub async fn version(State(state): State<AppState>) -> Response {
    // Stamped at build, unless GIT_COMMIT / BUILD_TIME were set when the configuration was
    // loaded (images built outside git, as the reference service's are).
    let build = &state.config.build_info;
    let body = json!({
        "service_version": env!("CARGO_PKG_VERSION"),
        "build_time": build.build_time.as_deref().unwrap_or(env!("AUDIT_MANAGER_BUILD_TIME")),
        "git_commit": build.git_commit.as_deref().unwrap_or(env!("AUDIT_MANAGER_GIT_COMMIT")),
    });
    respond(StatusCode::OK, Some(&body), &[])
}

/// `GET /config`: the effective configuration without secrets.
pub async fn config(State(state): State<AppState>) -> Response {
    respond(StatusCode::OK, Some(&state.config.redacted_json()), &[])
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> Response {
    if let Some(spool) = &state.spool {
        let stats = spool.stats();
        metrics::gauge!("audit_spool_oldest_event_age_seconds")
            .set(stats.oldest_age_secs(now_ms()));
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// `GET /openapi.json`: the OpenAPI 3.1 document of this API.
pub async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        include_str!("openapi.json"),
    )
        .into_response()
}

/// Anything else: 404 in the envelope, naming the base path.
pub async fn not_found() -> Response {
    let errors = [ErrorItem {
        error_code: "AUD-404",
        message: format!("no such route; the API lives under {}", super::BASE),
    }];
    respond::<()>(StatusCode::NOT_FOUND, None, &errors)
}
