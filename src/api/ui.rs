//! `GET /ui/`: the investigators' page (role `query`). Its HTML, script and style are compiled
//! into the binary (`ui_assets/`): no CDN, no build step, nothing fetched from the internet.
//! The page holds no data; it reads through `GET /events` with the reader's credentials.

use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::reads;
use super::schema::ErrorEnvelope;
use super::state::AppState;

/// The files of the page: name, content type, bytes.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("ui_assets/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("ui_assets/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("ui_assets/app.css"),
    ),
];

fn serve(state: &AppState, name: &str) -> Result<Response, ApiError> {
    reads::store(state)?;
    let Some((_, content_type, body)) = ASSETS.iter().find(|(n, _, _)| *n == name) else {
        return Err(ApiError::NotFound(format!(
            "no such file of the investigators' page: {name}"
        )));
    };
    let mut resp = (*body).into_response();
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The page runs only its own script and talks only to this service.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Ok(resp)
}

/// `GET /v1/auditmanager/ui/`: the investigators' page.
#[utoipa::path(
    get,
    path = "/v1/auditmanager/ui/",
    tag = "query",
    summary = "The investigators' web page (query role)",
    description = "Search, timeline, event detail with the before/after of `changes`, pivots to \
                   a trace or an actor, NDJSON/CSV export. Served from the binary; works without \
                   internet access.",
    responses(
        (status = 200, description = "The page", content_type = "text/html"),
        (status = 503, description = "AUD-005: the query role does not run here", body = ErrorEnvelope),
    ),
)]
pub async fn index(State(state): State<AppState>) -> Result<Response, ApiError> {
    serve(&state, "index.html")
}

/// `GET /v1/auditmanager/ui`: the same page (the path without its trailing `/`).
#[utoipa::path(
    get,
    path = "/v1/auditmanager/ui",
    tag = "query",
    summary = "The investigators' web page (query role)",
    responses(
        (status = 200, description = "The page", content_type = "text/html"),
        (status = 503, description = "AUD-005: the query role does not run here", body = ErrorEnvelope),
    ),
)]
pub async fn index_no_slash(State(state): State<AppState>) -> Result<Response, ApiError> {
    serve(&state, "index.html")
}

/// `GET /v1/auditmanager/ui/{file}`: the page's script and style.
#[utoipa::path(
    get,
    path = "/v1/auditmanager/ui/{file}",
    tag = "query",
    operation_id = "ui_asset",
    summary = "A script or style of the investigators' page",
    params(("file" = String, Path, description = "`app.js` or `app.css`")),
    responses(
        (status = 200, description = "The file"),
        (status = 404, description = "AUD-404: no such file", body = ErrorEnvelope),
        (status = 503, description = "AUD-005: the query role does not run here", body = ErrorEnvelope),
    ),
)]
pub async fn asset(
    State(state): State<AppState>,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    serve(&state, &file)
}
