//! Operational routes: health, readiness, version, effective config, metrics.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::envelope::{ErrorItem, respond};
use super::error::retry_after_secs;
use crate::config::Role;
use crate::health::Status;
use crate::spool::{Room, now_ms};

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

/// `GET /ready`: 200 when this process can take events now, else 503 with the reason's code.
///
/// With the ingest role: the HTTP server is running, the process is neither starting nor
/// draining, spool writes succeed (AUD-009) and the spool has room (AUD-004). Kafka and
/// PostgreSQL are deliberately not consulted: the spool absorbs their outages, so a readiness
/// probe must not take ingest out of a Service because of them. Without the ingest role: every
/// role's task is running. A role whose task ended is AUD-005 either way.
#[utoipa::path(
    get,
    path = "/v1/auditmanager/ready",
    tag = "operations",
    summary = "Readiness: can this process take events now?",
    description = "200 when the ingest role runs, the spool has room, spool writes succeed and \
                   the process is neither starting nor draining (without the ingest role: when \
                   its roles run); else 503 with AUD-004, AUD-005 or AUD-009 and `Retry-After`. \
                   Point readiness probes here and liveness probes at `/version`: a database or \
                   Kafka outage never takes ingest out of a Service, and never restarts a pod.",
    responses(
        (status = 200, description = "This process can take events now",
         body = super::openapi::Envelope<serde_json::Value>),
        (status = 503, description = "Not ready; `Retry-After` set",
         body = super::openapi::ErrorEnvelope),
    ),
)]
pub async fn ready(State(state): State<AppState>) -> Response {
    let roles: Vec<String> = state.config.roles.iter().map(|r| r.to_string()).collect();
    match readiness(&state) {
        Ok(()) => respond(
            StatusCode::OK,
            Some(&json!({ "status": "READY", "roles": roles })),
            &[],
        ),
        Err(item) => {
            let body = json!({ "status": "NOT_READY", "roles": roles });
            let mut resp = respond(StatusCode::SERVICE_UNAVAILABLE, Some(&body), &[item]);
            let secs = retry_after_secs(state.config.spool.retry_after);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            resp
        }
    }
}

/// Why this process cannot take events now, as the error item `/ready` answers with.
fn readiness(state: &AppState) -> Result<(), ErrorItem> {
    let not_ready = |error_code: &'static str, message: String| ErrorItem {
        error_code,
        message,
    };
    if state.shutdown.is_cancelled() {
        return Err(not_ready(
            "AUD-005",
            "draining: the process is shutting down; send events to another instance".into(),
        ));
    }
    if let Some(tasks) = state.health.tasks() {
        if !tasks.started() {
            return Err(not_ready(
                "AUD-005",
                "starting: the roles are not all running yet".into(),
            ));
        }
        if let Some((task, why)) = tasks.first_ended() {
            return Err(not_ready(
                "AUD-005",
                format!("the {task} task is not running ({why}); the process is shutting down"),
            ));
        }
    }
    if !state.config.has_role(Role::Ingest) {
        return Ok(());
    }
    let Some(spool) = &state.spool else {
        return Err(not_ready("AUD-005", "the ingest role has no spool".into()));
    };
    if let Err(e) = spool.health() {
        return Err(not_ready(
            "AUD-009",
            format!("spool writes are failing: {e}; check the disk under spool.path"),
        ));
    }
    let stats = spool.stats();
    if stats.room(state.config.ingest.max_event_bytes) == Room::Full {
        return Err(not_ready(
            "AUD-004",
            format!(
                "spool is full: {} of {} bytes (spool.max_bytes) hold events not yet delivered \
                 to Kafka; it takes events again once the forwarder delivers some (check \
                 Kafka and the forward role in /health)",
                stats.used_bytes(),
                stats.max_bytes
            ),
        ));
    }
    Ok(())
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
    security((), ("bearer" = []), ("mutualTLS" = [])),
    summary = "Effective configuration, without secrets",
    description = "Every key with its effective value, the reference service's keys included; \
                   passwords and credentials in URLs are redacted.",
    responses(
        (status = 200, description = "The effective configuration",
         body = super::openapi::Envelope<super::openapi::EffectiveConfig>),
        (status = 401, description = "AUD-010: no or invalid credentials (auth.mode token or mtls)",
         body = super::openapi::ErrorEnvelope,
         headers(("WWW-Authenticate" = String, description = "Bearer realm=\"audit-manager\""))),
        (status = 403, description = "AUD-012: the principal is not a reader",
         body = super::openapi::ErrorEnvelope),
    ),
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
