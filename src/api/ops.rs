//! Operational routes: health, version, effective config, metrics.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::envelope::{ErrorItem, respond};
use crate::health::Status;
use crate::spool::now_ms;

/// `GET /health`: 200 while every running role is UP or DEGRADED, 503 when one is DOWN.
#[utoipa::path(
    get,
    path = "/v1/auditmanager/health",
    tag = "operations",
    summary = "Health of the roles running in this process",
    responses(
        (status = 200, description = "Every running role is UP or DEGRADED",
         body = super::openapi::Envelope<super::openapi::HealthReport>),
        (status = 503, description = "A running role is DOWN, or the process is shutting down; \
                                      the same report, and one error per DOWN role \
                                      (AUD-005, AUD-006, AUD-009)",
         body = super::openapi::Envelope<super::openapi::HealthReport>),
    ),
)]
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
#[utoipa::path(
    get,
    path = "/v1/auditmanager/version",
    tag = "operations",
    summary = "Version and build of this service",
    responses((status = 200, description = "Version and build",
               body = super::openapi::Envelope<super::openapi::VersionInfo>)),
)]
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
#[utoipa::path(
    get,
    path = "/v1/auditmanager/config",
    tag = "operations",
    summary = "Effective configuration, without secrets",
    description = "Every key with its effective value, the reference service's keys included; \
                   passwords and credentials in URLs are redacted.",
    responses((status = 200, description = "The effective configuration",
               body = super::openapi::Envelope<super::openapi::EffectiveConfig>)),
)]
pub async fn config(State(state): State<AppState>) -> Response {
    respond(StatusCode::OK, Some(&state.config.redacted_json()), &[])
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(
    get,
    path = "/v1/auditmanager/metrics",
    tag = "operations",
    summary = "Prometheus metrics",
    responses((status = 200, description = "Prometheus text exposition format",
               content_type = "text/plain; version=0.0.4", body = String)),
)]
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

/// Anything else: 404 in the envelope, naming the base path.
pub async fn not_found() -> Response {
    let errors = [ErrorItem {
        error_code: "AUD-404",
        message: format!("no such route; the API lives under {}", super::BASE),
    }];
    respond::<()>(StatusCode::NOT_FOUND, None, &errors)
}
