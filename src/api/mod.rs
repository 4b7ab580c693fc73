//! The HTTP API under `/v1/auditmanager`, in the order a request meets it: the router list
//! below (each route with its handler, its document and whether it is public), authentication
//! (`auth.rs`), the handlers — ingest (`ingest.rs`, `spooling.rs`), the query role (`query.rs`,
//! `reads.rs`, `ui.rs`), operations (`ops.rs`), seals (`seals.rs`), documentation (`docs.rs`) —
//! and what every answer goes through: the error policy (`error.rs`, `codes.rs`) and the
//! envelope (`envelope.rs`). The OpenAPI document is made from the same list (`openapi.rs`,
//! `schema.rs`).

pub mod auth;
mod budget;
pub mod codes;
mod docs;
pub mod envelope;
pub mod error;
mod ingest;
mod openapi;
mod ops;
mod privacy;
mod query;
mod reads;
mod schema;
mod seals;
mod spooling;
mod state;
mod ui;

use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use crate::event::{Rule, ValidationMode};

pub use state::{AppInner, AppState, BASE};

use auth::PublicRoutes;
use envelope::Identity;

/// Whether a route needs credentials (with `auth.mode` `token` or `mtls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Anyone may call it.
    Public,
    /// A verified principal only; the handler or the middleware decides what it may do.
    Protected,
}

/// Every route of the API, once: its handler, whose `#[utoipa::path]` attribute gives its path,
/// method and document, and who may call it. The order is the document's. Every process serves
/// every route: the query routes answer 503 AUD-005 naming the role where it does not run.
fn route_list(document: &docs::Document) -> Vec<(Access, UtoipaMethodRouter<AppState>)> {
    use Access::{Protected, Public};
    vec![
        (Protected, routes!(ingest::post_event)),
        (Protected, routes!(ingest::post_batch)),
        (Protected, routes!(query::search)),
        (Protected, routes!(query::by_id)),
        (Protected, routes!(privacy::pseudonym)),
        (Protected, routes!(privacy::forget)),
        (Public, routes!(ui::index)),
        (Public, routes!(ui::index_no_slash)),
        (Public, routes!(ui::asset)),
        (Public, routes!(ops::health)),
        (Public, routes!(ops::ready)),
        (Public, routes!(ops::version)),
        (Protected, routes!(ops::config)),
        (Public, routes!(ops::metrics)),
        (Protected, routes!(seals::seals)),
        (Protected, routes!(seals::keys)),
        (
            Public,
            routes!(docs::openapi_json).with_state(document.clone()),
        ),
        (Public, routes!(docs::swagger_ui)),
        (Public, routes!(docs::redoc)),
        (Public, routes!(docs::asset)),
    ]
}

/// The routes, the OpenAPI document describing them and the templates of the public ones.
struct Routes {
    router: Router<AppState>,
    document: utoipa::openapi::OpenApi,
    public: PublicRoutes,
}

fn routes() -> Routes {
    let served = docs::Document::default();
    let mut public = Vec::new();
    let mut api = OpenApiRouter::with_openapi(openapi::base());
    for (access, route) in route_list(&served) {
        if access == Access::Public {
            public.extend(route.1.paths.keys().cloned());
        }
        api = api.routes(route);
    }
    let (router, document) = api.split_for_parts();
    served.set(to_json(&document));
    Routes {
        router,
        document,
        public: PublicRoutes::new(public),
    }
}

fn to_json(document: &utoipa::openapi::OpenApi) -> String {
    // Serializing a tree of strings and maps cannot fail; an empty document would show it.
    document.to_pretty_json().unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot serialize the OpenAPI document");
        String::from("{}")
    })
}

/// The OpenAPI 3.1 document `GET /openapi.json` serves, as JSON.
pub fn document_json() -> String {
    to_json(&routes().document)
}

pub fn router(state: AppState) -> Router {
    let compatible = state.limits.mode == ValidationMode::Compatible;
    let identity = Identity::of(&state.config);
    let Routes { router, public, .. } = routes();
    // From the inside out: authentication, then any bare error answer put in the envelope,
    // then every envelope written with the identity, then every answer counted.
    let app = router
        .fallback(ops::not_found)
        .layer(middleware::from_fn_with_state(
            (state.clone(), public),
            auth::authenticate,
        ))
        .layer(middleware::from_fn(error::envelope_errors))
        .layer(middleware::from_fn_with_state(identity, envelope::render))
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::Method;
    use tokio_util::sync::CancellationToken;
    use tower_service::Service as _;

    use super::*;
    use crate::auth::Authenticator;
    use crate::config::{AuthMode, Config};
    use crate::health::Health;

    #[test]
    fn the_document_is_openapi_3_1_and_lists_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(&document_json()).expect("JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        for path in ["events", "events/batch", "health", "ready", "docs", "redoc"] {
            assert!(
                doc["paths"][format!("/v1/auditmanager/{path}")].is_object(),
                "{path} documented"
            );
        }
    }

    #[test]
    fn the_probes_the_documentation_and_the_page_are_public_and_nothing_else() {
        let routes = routes();
        let public: BTreeSet<&str> = routes
            .public
            .templates()
            .map(|t| t.strip_prefix(BASE).expect("under the base"))
            .collect();
        let expected = BTreeSet::from([
            "/health",
            "/ready",
            "/version",
            "/metrics",
            "/docs",
            "/redoc",
            "/openapi.json",
            "/docs/assets/{file}",
            "/ui",
            "/ui/",
            "/ui/{file}",
        ]);
        assert_eq!(public, expected);
    }

    /// The router of a process with `auth.mode: token` and no role running.
    fn token_mode_router(dir: &std::path::Path) -> Router {
        let tokens = dir.join("tokens.yaml");
        let principal = format!(
            "principals:\n  - name: auditor\n    role: reader\n    token_sha256: \"{}\"\n",
            "0".repeat(64)
        );
        std::fs::write(&tokens, principal).expect("write tokens");
        let auth = Authenticator::load(AuthMode::Token, &tokens).expect("principals");
        let state = AppState::with_auth(
            Arc::new(Config::default()),
            None,
            Health::default(),
            crate::metrics::install(),
            CancellationToken::new(),
            Some(auth),
        );
        router(state)
    }

    #[tokio::test]
    async fn without_credentials_only_the_public_routes_answer() {
        let dir = tempfile::tempdir().expect("temp dir");
        let app = token_mode_router(dir.path());
        let status = |method: Method, path: &str| {
            let req = Request::builder()
                .method(method)
                .uri(path)
                .body(Body::empty())
                .expect("request");
            let mut app = app.clone();
            async move { app.call(req).await.expect("infallible").status().as_u16() }
        };
        for path in [
            "/health",
            "/ready",
            "/version",
            "/metrics",
            "/openapi.json",
            "/docs",
            "/redoc",
            "/docs/assets/swagger-ui.css",
            "/ui",
            "/ui/",
            "/ui/app.js",
        ] {
            let got = status(Method::GET, &format!("{BASE}{path}")).await;
            assert_ne!(got, 401, "GET {path} is public");
        }
        // A public route with a method it does not serve: 405, not 401.
        assert_eq!(status(Method::POST, &format!("{BASE}/health")).await, 405);
        for (method, path) in [
            (Method::POST, "/events"),
            (Method::POST, "/events/batch"),
            (Method::GET, "/events"),
            (Method::GET, "/events/e-1"),
            (Method::GET, "/config"),
            (Method::POST, "/config"),
            (Method::GET, "/seals"),
            (Method::GET, "/seals/keys"),
            // No route: credentials first, so nothing is learnt of the routes.
            (Method::GET, "/docs/assets/"),
            (Method::GET, "/docs/assets/a/b"),
            (Method::GET, "/healthz"),
            (Method::GET, ""),
        ] {
            let got = status(method.clone(), &format!("{BASE}{path}")).await;
            assert_eq!(got, 401, "{method} {path} needs credentials");
        }
        assert_eq!(
            status(Method::GET, "/health").await,
            401,
            "outside the base"
        );
    }
}
