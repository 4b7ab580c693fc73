//! What every handler shares: the base path of the API and the state the router hands each
//! request.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use super::budget::BodyBudget;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::event::Limits;
use crate::health::Health;
use crate::spool::Spool;
use crate::store::Store;

/// Where the API lives: every route is under this path.
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
    pub bodies: BodyBudget,
    /// `privacy.*` compiled, or why it could not be (then ingest refuses every event rather
    /// than store personal data the rules should have removed; `serve` refuses to start).
    pub privacy: Result<Arc<crate::privacy::Privacy>, String>,
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
        let limits = Limits {
            mode: config.ingest.validation,
            max_future_skew: config.ingest.max_future_skew,
            max_event_bytes: usize::try_from(config.ingest.max_event_bytes).unwrap_or(usize::MAX),
        };
        let bodies = BodyBudget::new(config.http.max_in_flight_bytes);
        let privacy = crate::privacy::Privacy::from_config(&config.privacy)
            .map(Arc::new)
            .map_err(|e| e.to_string());
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
            privacy,
        }))
    }

    /// Serves `/seals` from `pool` (call before the state is shared).
    pub fn with_database(mut self, pool: sqlx::PgPool) -> AppState {
        if let Some(inner) = Arc::get_mut(&mut self.0) {
            inner.database = Some(pool);
        }
        self
    }

    /// Uses `privacy` (with its subject key store) instead of the one compiled from the
    /// configuration (call before the state is shared).
    pub fn with_privacy(mut self, privacy: Arc<crate::privacy::Privacy>) -> AppState {
        if let Some(inner) = Arc::get_mut(&mut self.0) {
            inner.privacy = Ok(privacy);
        }
        self
    }

    /// Serves the query role's routes from `store` (call before the router is built).
    pub fn with_query(mut self, store: Store, keys: Vec<ed25519_dalek::VerifyingKey>) -> AppState {
        if let Some(inner) = Arc::get_mut(&mut self.0) {
            inner.query = Some(store);
            inner.trusted_keys = keys;
        }
        self
    }
}
