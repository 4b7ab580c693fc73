//! `GET /openapi.json` (the document), and `GET /docs` (Swagger UI) and `GET /redoc` (Redoc):
//! pages that render it, as the reference service serves them, with their scripts and styles
//! compiled into the binary (`docs_assets/`, see its README) so they work without internet
//! access.

use std::sync::{Arc, OnceLock};

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use bytes::Bytes;

use super::codes::{ErrorCode, ErrorItem};
use super::envelope::respond;
use super::schema::ErrorEnvelope;

/// The OpenAPI document as JSON: the state of `GET /openapi.json`, filled in once the router
/// list it describes (and which holds this route) is built.
#[derive(Clone, Default)]
pub struct Document(Arc<OnceLock<Bytes>>);

impl Document {
    /// Sets the document; only the first call counts.
    pub fn set(&self, json: String) {
        let _ = self.0.set(Bytes::from(json));
    }
}

/// `GET /openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/v1/auditmanager/openapi.json",
    tag = "documentation",
    operation_id = "openapi",
    summary = "This OpenAPI 3.1 document",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API",
               content_type = "application/json", body = Object)),
)]
pub async fn openapi_json(State(document): State<Document>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        document.0.get().cloned().unwrap_or_default(),
    )
        .into_response()
}

const SWAGGER_UI_PAGE: &str = r##"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>audit-manager API</title>
  <link rel="stylesheet" href="/v1/auditmanager/docs/assets/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/v1/auditmanager/docs/assets/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({
      url: "/v1/auditmanager/openapi.json",
      dom_id: "#swagger-ui",
      deepLinking: true,
    });
  </script>
</body>
</html>
"##;

const REDOC_PAGE: &str = r##"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>audit-manager API</title>
  <style>body { margin: 0; padding: 0; }</style>
</head>
<body>
  <redoc spec-url="/v1/auditmanager/openapi.json"></redoc>
  <script src="/v1/auditmanager/docs/assets/redoc.standalone.js"></script>
</body>
</html>
"##;

/// The files `/docs/assets/{file}` serves: name, content type, bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "swagger-ui-bundle.js",
        "text/javascript; charset=utf-8",
        include_bytes!("docs_assets/swagger-ui-bundle.js"),
    ),
    (
        "swagger-ui.css",
        "text/css; charset=utf-8",
        include_bytes!("docs_assets/swagger-ui.css"),
    ),
    (
        "redoc.standalone.js",
        "text/javascript; charset=utf-8",
        include_bytes!("docs_assets/redoc.standalone.js"),
    ),
];

/// `GET /docs`: Swagger UI.
#[utoipa::path(
    get,
    path = "/v1/auditmanager/docs",
    tag = "documentation",
    summary = "Swagger UI for this API",
    responses((status = 200, description = "An HTML page rendering /openapi.json",
               content_type = "text/html", body = String)),
)]
pub async fn swagger_ui() -> Html<&'static str> {
    Html(SWAGGER_UI_PAGE)
}

/// `GET /redoc`: Redoc.
#[utoipa::path(
    get,
    path = "/v1/auditmanager/redoc",
    tag = "documentation",
    summary = "Redoc for this API",
    responses((status = 200, description = "An HTML page rendering /openapi.json",
               content_type = "text/html", body = String)),
)]
pub async fn redoc() -> Html<&'static str> {
    Html(REDOC_PAGE)
}

/// `GET /docs/assets/{file}`: the pages' scripts and styles.
#[utoipa::path(
    get,
    path = "/v1/auditmanager/docs/assets/{file}",
    tag = "documentation",
    operation_id = "docs_asset",
    summary = "Scripts and styles of the documentation pages",
    params(("file" = String, Path, description = "swagger-ui-bundle.js, swagger-ui.css or \
                                                 redoc.standalone.js")),
    responses(
        (status = 200, description = "The file", content_type = "text/javascript", body = String),
        (status = 404, description = "AUD-404: no such file", body = ErrorEnvelope),
    ),
)]
pub async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, bytes)) => (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
                // The files change only with the binary.
                (
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("public, max-age=3600"),
                ),
            ],
            *bytes,
        )
            .into_response(),
        None => {
            let names: Vec<&str> = ASSETS.iter().map(|(name, _, _)| *name).collect();
            let errors = [ErrorItem::new(
                ErrorCode::NotFound,
                format!(
                    "no such documentation asset; there are {}",
                    names.join(", ")
                ),
            )];
            respond::<()>(StatusCode::NOT_FOUND, None, &errors)
        }
    }
}
