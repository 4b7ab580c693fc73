//! The HTTP API under `/v1/auditmanager`: authentication (`auth.rs`), ingest routes (`ingest.rs`), operational routes
//! (`ops.rs`), the envelope (`envelope.rs`), the one error → status mapping (`error.rs`), the
//! OpenAPI document generated from the handlers (`openapi.rs`) and the pages rendering it
//! (`docs.rs`).

pub mod auth;
mod budget;
mod docs;
pub mod envelope;
pub mod error;
mod ingest;
pub mod openapi;
mod ops;
mod query;
mod seals;
mod ui;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::event::{Limits, Rule, ValidationMode};
use crate::health::Health;
use crate::spool::Spool;
use crate::store::Store;

pub const BASE: &str = "/v1/auditmanager";

/// Everything a handler needs; one reference count to clone per request.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

impl std::ops::Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

pub struct AppInner {
    pub config: Arc<Config>,
    pub limits: Limits,
    /// The spool, when this process runs the ingest role.
    pub spool: Option<Spool>,
    pub health: Health,
    pub metrics: PrometheusHandle,
    /// Cancelled when the process starts draining: ingest answers 503 AUD-005 from then on.
    pub shutdown: CancellationToken,
    /// The principals, unless `auth.mode` is `none`.
    pub auth: Option<Authenticator>,
    /// The read-only connections of the query role, when this process runs it.
    pub query: Option<Store>,
    /// Public keys the query role checks seals with (`integrity.public_key_files`).
    pub trusted_keys: Vec<ed25519_dalek::VerifyingKey>,
    /// The database, when this process runs a role that has one (sink, maintain): `/seals`.
    pub database: Option<sqlx::PgPool>,
    /// Bytes of request bodies in flight (`http.max_in_flight_bytes`).
    pub bodies: budget::BodyBudget,
}

impl AppState {
    pub fn new(
        config: Arc<Config>,
        spool: Option<Spool>,
        health: Health,
        metrics: PrometheusHandle,
        shutdown: CancellationToken,
    ) -> AppState {
        AppState::with_auth(config, spool, health, metrics, shutdown, None)
    }

    /// [`AppState::new`] with the principals that authenticate requests.
    pub fn with_auth(
        config: Arc<Config>,
        spool: Option<Spool>,
        health: Health,
        metrics: PrometheusHandle,
        shutdown: CancellationToken,
        auth: Option<Authenticator>,
    ) -> AppState {
        envelope::set_identity(&config.service_id, &config.api_version);
        let limits = Limits {
            mode: config.ingest.validation,
            max_future_skew: config.ingest.max_future_skew,
            max_event_bytes: usize::try_from(config.ingest.max_event_bytes).unwrap_or(usize::MAX),
        };
        let bodies = budget::BodyBudget::new(config.http.max_in_flight_bytes);
        AppState(Arc::new(AppInner {
            config,
            limits,
            spool,
            health,
            metrics,
            shutdown,
            auth,
            query: None,
            trusted_keys: Vec::new(),
            database: None,
            bodies,
        }))
    }

    /// Serves `/seals` from `pool` (call before the state is shared).
    pub fn with_database(mut self, pool: sqlx::PgPool) -> AppState {
        if let Some(inner) = Arc::get_mut(&mut self.0) {
            inner.database = Some(pool);
        }
        self
    }

    /// Serves the query role's routes from `store` (call before [`router`]).
    pub fn with_query(mut self, store: Store, keys: Vec<ed25519_dalek::VerifyingKey>) -> AppState {
        if let Some(inner) = Arc::get_mut(&mut self.0) {
            inner.query = Some(store);
            inner.trusted_keys = keys;
        }
        self
    }
}

pub fn router(state: AppState) -> Router {
    let compatible = state.limits.mode == ValidationMode::Compatible;
    // The query routes answer 503 AUD-005 naming the role when it does not run here.
    let api = Router::new()
        .route("/events", post(ingest::post_event).get(query::search))
        .route("/events/{id}", get(query::by_id))
        .route("/ui", get(ui::index_no_slash))
        .route("/ui/", get(ui::index))
        .route("/ui/{file}", get(ui::asset))
        .route("/events/batch", post(ingest::post_batch))
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/version", get(ops::version))
        .route("/config", get(ops::config))
        .route("/metrics", get(ops::metrics))
        .route("/seals", get(seals::seals))
        .route("/seals/keys", get(seals::keys))
        .route("/openapi.json", get(openapi::serve))
        .route("/docs", get(docs::swagger_ui))
        .route("/redoc", get(docs::redoc))
        .route("/docs/assets/{file}", get(docs::asset));
    let app = Router::new()
        .nest(BASE, api)
        .fallback(ops::not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .layer(middleware::from_fn(error::envelope_errors))
        .layer(middleware::from_fn(track))
        .with_state(state);
    if !compatible {
        return app;
    }
    // `compatible`: a trailing `/` is the same route (the reference redirects it). The path must
    // be rewritten before routing, so the app becomes the fallback of an outer router whose
    // layer (which wraps the fallback too) runs first.
    Router::new()
        .fallback_service(app)
        .layer(middleware::from_fn(trailing_slash))
}

async fn trailing_slash(req: Request, next: Next) -> Response {
    next.run(trim_slash(req)).await
}

/// Strips one trailing `/` from the request path (not from `/` itself) and counts it.
fn trim_slash(mut req: Request) -> Request {
    let uri = req.uri();
    let path = uri.path();
    if path.len() > 1 && path.ends_with('/') {
        let trimmed = &path[..path.len() - 1];
        let pq = match uri.query() {
            Some(q) => format!("{trimmed}?{q}"),
            None => trimmed.to_owned(),
        };
        let mut parts = uri.clone().into_parts();
        if let Ok(pq) = pq.parse() {
            parts.path_and_query = Some(pq);
            if let Ok(new) = axum::http::Uri::from_parts(parts) {
                *req.uri_mut() = new;
                crate::metrics::count_normalizations(Rule::TrailingSlash.into());
            }
        }
    }
    req
}

/// Counts every answer by route template and status, and times it.
async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let started = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::histogram!("audit_http_request_duration_seconds", "route" => route.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("audit_http_requests_total", "route" => route, "status" => status)
        .increment(1);
    resp
}
