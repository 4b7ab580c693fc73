//! The generated OpenAPI document against the running service: the same verdict on every event
//! fixture, the same routes, the same error codes, response bodies that match their documented
//! schemas, and the documentation pages.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use audit_manager::api::codes::ErrorCode;
use common::{BASE, TestApp};
use serde_json::{Value, json};

/// Routes the document describes that the router of this branch does not serve yet; each must
/// be removed from here when its handler lands (the test fails on a stale entry).
const PENDING_ROUTES: &[(&str, &str)] = &[];

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/events")
}

/// `(folder/name.json, bytes)` of every fixture in `folder`, sorted.
fn fixtures(folder: &str) -> Vec<(String, Vec<u8>)> {
    let dir = fixtures_dir().join(folder);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("dir entry").path();
            let name = format!(
                "{folder}/{}",
                path.file_name().expect("file name").to_string_lossy()
            );
            (name, std::fs::read(&path).expect("read fixture"))
        })
        .filter(|(name, _)| name.ends_with(".json"))
        .collect();
    out.sort();
    out
}

fn expectations() -> Value {
    let path = fixtures_dir().join("expectations.json");
    serde_json::from_slice(&std::fs::read(path).expect("expectations.json")).expect("JSON")
}

/// The document as the service serves it.
async fn served_document(app: &TestApp) -> Value {
    let (status, doc) = app.get("/openapi.json").await;
    assert_eq!(status, 200);
    doc
}

/// A validator for `pointer` (a `$ref` target such as `#/components/schemas/CloudEvent`)
/// resolving references inside the document.
fn validator(doc: &Value, reference: &str) -> jsonschema::Validator {
    let root = json!({"$ref": reference, "components": doc["components"]});
    jsonschema::draft202012::new(&root)
        .unwrap_or_else(|e| panic!("{reference} is not a valid JSON Schema: {e}"))
}

/// The schema `$ref` of a documented JSON response.
fn response_ref(doc: &Value, path: &str, method: &str, status: u16) -> String {
    let schema = &doc["paths"][path][method]["responses"][status.to_string()]["content"]["application/json"]
        ["schema"];
    schema["$ref"]
        .as_str()
        .unwrap_or_else(|| panic!("{method} {path} {status}: no JSON response schema documented"))
        .to_owned()
}

fn assert_matches(doc: &Value, reference: &str, body: &Value, what: &str) {
    let v = validator(doc, reference);
    let errors: Vec<String> = v.iter_errors(body).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "{what}: the body does not match {reference}: {errors:?}\nbody: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixtures_get_the_same_verdict_from_the_document_and_the_service() {
    let mut app = TestApp::start().await;
    let doc = served_document(&app).await;
    let schema = validator(&doc, "#/components/schemas/CloudEvent");
    let description = doc["components"]["schemas"]["CloudEvent"]["description"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let exp = expectations();
    let beyond = exp["beyond_schema"].as_object().expect("beyond_schema");
    let pending = exp["pending"].as_object().expect("pending");

    let mut problems: Vec<String> = Vec::new();
    let mut checked = 0;
    for (folder, accept) in [("accepted", true), ("rejected", false)] {
        for (name, bytes) in fixtures(folder) {
            checked += 1;
            let verdict = |ok: bool| if ok { "accepts" } else { "rejects" };
            // The document's verdict.
            let parsed: Result<Value, _> = serde_json::from_slice(&bytes);
            let by_schema = parsed.as_ref().is_ok_and(|v| schema.is_valid(v));
            match beyond.get(&name).and_then(Value::as_str) {
                Some(word) => {
                    if !by_schema {
                        problems.push(format!(
                            "{name}: listed as beyond JSON Schema, but the schema rejects it: \
                             drop it from beyond_schema"
                        ));
                    }
                    if !description.contains(word) {
                        problems.push(format!(
                            "{name}: the CloudEvent description does not state its rule \
                             (no {word:?})"
                        ));
                    }
                }
                None if by_schema != accept => problems.push(format!(
                    "{name}: the document {} it, the folder says it {}",
                    verdict(by_schema),
                    verdict(accept)
                )),
                None => {}
            }
            // The service's verdict.
            let (status, body) = app.post_raw("/events", "application/json", bytes).await;
            let by_service = match status {
                202 => true,
                400 | 413 | 422 => false,
                other => panic!("{name}: unexpected status {other}: {body}"),
            };
            match pending.get(&name).and_then(Value::as_str) {
                Some(feature) if by_service == accept => problems.push(format!(
                    "{name}: the service now {} it as the folder says ({feature} has landed): \
                     remove its `pending` marker from expectations.json",
                    verdict(by_service)
                )),
                Some(_) => {}
                None if by_service != accept => problems.push(format!(
                    "{name}: the service {} it ({status}: {body}), the folder says it {}",
                    verdict(by_service),
                    verdict(accept)
                )),
                None => {}
            }
        }
    }
    assert!(checked >= 30, "only {checked} fixtures found");
    assert!(problems.is_empty(), "drift:\n{}", problems.join("\n"));
    app.stop().await;
}

/// The `.rs` files under `src/api/`, with their text.
fn api_sources() -> Vec<(PathBuf, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api");
    let mut out: Vec<(PathBuf, String)> = std::fs::read_dir(&dir)
        .expect("read src/api")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "rs"))
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("read source");
            (path, text)
        })
        .collect();
    out.sort();
    out
}

fn routes_in_document(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            out.insert((method.clone(), path.clone()));
        }
    }
    out
}

/// The router list (`src/api/mod.rs`) registers each route with the `#[utoipa::path]` document of
/// its handler, so what is served is what is documented, provided no route bypasses the list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_routes_served_and_the_routes_documented_are_the_same() {
    let mut app = TestApp::start().await;
    let doc = served_document(&app).await;
    for (path, text) in api_sources() {
        for bypass in [
            ".route(\"",
            ".route_service(\"",
            ".nest(\"",
            ".nest_service(\"",
        ] {
            assert!(
                !text.contains(bypass),
                "{}: `{bypass}` registers a route outside the router list, undocumented; \
                 register it there with routes!(handler)",
                path.display()
            );
        }
    }
    let mut served = routes_in_document(&doc);
    for (method, path) in PENDING_ROUTES {
        let route = (method.to_string(), path.to_string());
        assert!(served.remove(&route), "{method} {path} must be documented");
    }

    // And the router answers each of them (the fallback would answer 404 AUD-404).
    for (method, path) in &served {
        let url = format!(
            "http://{}{}",
            app.addr,
            path.replace("{file}", "swagger-ui.css")
        );
        let resp = match method.as_str() {
            "get" => app.client.get(&url).send().await,
            "post" => {
                app.client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body("{}")
                    .send()
                    .await
            }
            other => panic!("no probe for {other}"),
        }
        .expect("request");
        let status = resp.status().as_u16();
        assert!(
            status != 404 && status != 405,
            "{method} {path}: {status}, the router does not serve it"
        );
    }
    for (method, path) in PENDING_ROUTES {
        let url = format!("http://{}{path}", app.addr);
        let resp = match *method {
            "get" => app.client.get(&url).send().await,
            "post" => app.client.post(&url).body("{}").send().await,
            other => panic!("no probe for {other}"),
        }
        .expect("request");
        let status = resp.status().as_u16();
        assert!(
            status == 404 || status == 405,
            "{method} {path} is served now ({status}): remove it from PENDING_ROUTES"
        );
    }
    app.stop().await;
}

/// The `.rs` files under `src/`, with their text, except the table of codes itself.
fn sources_but_the_codes() -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        for entry in std::fs::read_dir(dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("api/codes.rs")
            {
                let text = std::fs::read_to_string(&path).expect("read source");
                out.push((path, text));
            }
        }
    }
    let mut out = Vec::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut out);
    out
}

/// Every `"AUD-nnn"` string literal in `sources` (codes sent as strings, e.g. by health checks).
fn code_literals(sources: &[(PathBuf, String)]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (_, src) in sources {
        for (i, _) in src.match_indices("\"AUD-") {
            let code: String = src[i + 1..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            out.insert(code);
        }
    }
    out
}

/// The codes documented are the `ErrorCode` enum; each of them is sent somewhere (the code names
/// its variant outside `codes.rs`), and each code sent as a string is one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_error_codes_are_the_ones_the_code_sends() {
    let mut app = TestApp::start().await;
    let doc = served_document(&app).await;
    let documented: BTreeSet<String> = doc["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .expect("ErrorCode enum")
        .iter()
        .map(|c| c.as_str().expect("code").to_owned())
        .collect();
    let all: BTreeSet<String> = ErrorCode::ALL
        .iter()
        .map(|c| c.as_str().to_owned())
        .collect();
    assert_eq!(documented, all, "documented codes vs the ErrorCode enum");

    let sources = sources_but_the_codes();
    let unsent: Vec<String> = ErrorCode::ALL
        .iter()
        .filter(|c| {
            let variant = format!("ErrorCode::{c:?}");
            !sources.iter().any(|(_, src)| {
                src.match_indices(&variant).any(|(i, _)| {
                    !src[i + variant.len()..].starts_with(|c: char| c.is_alphanumeric())
                })
            })
        })
        .map(|c| format!("{c:?} ({c})"))
        .collect();
    assert!(unsent.is_empty(), "documented but never sent: {unsent:?}");
    let literals = code_literals(&sources);
    assert!(
        literals.contains("AUD-005"),
        "the scan finds codes: {literals:?}"
    );
    let undocumented: Vec<&String> = literals.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "sent but not documented: {undocumented:?}"
    );
    // Each code's row in the table names its status.
    let table = doc["components"]["schemas"]["ErrorCode"]["description"]
        .as_str()
        .expect("ErrorCode description");
    for code in ErrorCode::ALL {
        assert!(
            table.contains(&format!("| {code} | {} |", code.status().as_u16())),
            "{code} in the table"
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_response_bodies_match_their_documented_schemas() {
    let mut app = TestApp::start().await;
    let doc = served_document(&app).await;
    let path = |p: &str| format!("{BASE}{p}");

    for (route, status) in [("/health", 200), ("/version", 200), ("/config", 200)] {
        let (got, body) = app.get(route).await;
        assert_eq!(got, status, "{route}: {body}");
        let reference = response_ref(&doc, &path(route), "get", status);
        assert_matches(&doc, &reference, &body, route);
    }

    let event = common::event("drift-1");
    let (status, body) = app.post_json("/events", &event).await;
    assert_eq!(status, 202, "{body}");
    let reference = response_ref(&doc, &path("/events"), "post", 202);
    assert_matches(&doc, &reference, &body, "POST /events 202");

    let batch = json!({"events": [common::event("drift-2"), common::event("drift-3")]});
    let (status, body) = app.post_json("/events/batch", &batch).await;
    assert_eq!(status, 202, "{body}");
    let reference = response_ref(&doc, &path("/events/batch"), "post", 202);
    assert_matches(&doc, &reference, &body, "POST /events/batch 202");

    let array = serde_json::to_vec(&json!([common::event("drift-4")])).expect("JSON");
    let (status, body) = app
        .post_raw("/events/batch", "application/cloudevents-batch+json", array)
        .await;
    assert_eq!(status, 202, "the bare-array form: {body}");
    assert_matches(&doc, &reference, &body, "POST /events/batch (array) 202");

    let mut bad = common::event("drift-bad");
    bad["data"]["outcome"] = json!("maybe");
    for (route, body_bytes, content_type, status) in [
        (
            "/events",
            bad.to_string().into_bytes(),
            "application/json",
            422,
        ),
        ("/events", b"{not json".to_vec(), "application/json", 400),
        ("/events", b"{}".to_vec(), "text/plain", 415),
    ] {
        let (got, body) = app.post_raw(route, content_type, body_bytes).await;
        assert_eq!(got, status, "{route}: {body}");
        let reference = response_ref(&doc, &path(route), "post", status);
        assert_matches(&doc, &reference, &body, &format!("POST {route} {status}"));
    }

    let (status, body) = app.get("/no-such-route").await;
    assert_eq!(status, 404);
    assert_matches(
        &doc,
        "#/components/schemas/ErrorEnvelope",
        &body,
        "404 fallback",
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_and_redoc_serve_pages_that_render_the_document() {
    let mut app = TestApp::start().await;
    let doc = served_document(&app).await;
    assert_eq!(doc["openapi"], "3.1.0");
    let generated: Value =
        serde_json::from_str(&audit_manager::api::document_json()).expect("JSON");
    assert_eq!(
        doc, generated,
        "/openapi.json serves the generated document"
    );

    let mut assets: BTreeMap<String, String> = BTreeMap::new();
    for page in ["/docs", "/redoc"] {
        let resp = app
            .client
            .get(app.url(page))
            .send()
            .await
            .expect("get page");
        assert_eq!(resp.status().as_u16(), 200, "{page}");
        let content_type = resp.headers()["content-type"]
            .to_str()
            .expect("content type")
            .to_owned();
        assert!(
            content_type.starts_with("text/html"),
            "{page}: {content_type}"
        );
        let html = resp.text().await.expect("body");
        assert!(html.contains("<html"), "{page} is an HTML page");
        assert!(
            html.contains(&format!("{BASE}/openapi.json")),
            "{page} renders {BASE}/openapi.json"
        );
        // Every script and stylesheet it loads comes from this service.
        for attr in ["src=\"", "href=\""] {
            for (i, _) in html.match_indices(attr) {
                let url: String = html[i + attr.len()..]
                    .chars()
                    .take_while(|c| *c != '"')
                    .collect();
                assert!(url.starts_with(BASE), "{page} loads {url} from elsewhere");
                assets.insert(url, page.to_owned());
            }
        }
    }
    assert_eq!(assets.len(), 3, "swagger-ui js + css, redoc js: {assets:?}");
    for (url, page) in &assets {
        let resp = app
            .client
            .get(format!("http://{}{url}", app.addr))
            .send()
            .await
            .expect("get asset");
        assert_eq!(resp.status().as_u16(), 200, "{url} (for {page})");
        let content_type = resp.headers()["content-type"]
            .to_str()
            .expect("content type")
            .to_owned();
        let expected = if url.ends_with(".css") {
            "text/css"
        } else {
            "text/javascript"
        };
        assert!(content_type.starts_with(expected), "{url}: {content_type}");
        let len = resp.bytes().await.expect("body").len();
        assert!(len > 100_000, "{url} is the real bundle ({len} bytes)");
    }
    app.stop().await;
}

/// The official JSON Schema of OpenAPI 3.1 documents, vendored from the PyPI package
/// `openapi-spec-validator` 0.9.0 (`resources/schemas/v3.1/schema.json`, by the OpenAPI
/// Initiative; see `tests/fixtures/openapi-3.1/README.md`), so no network is needed.
fn openapi_3_1_schema() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/openapi-3.1/schema.json");
    serde_json::from_slice(&std::fs::read(path).expect("the OpenAPI 3.1 schema")).expect("JSON")
}

/// `(operationId, "method path")` of every operation of `doc`.
fn operation_ids(doc: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            if let Some(id) = op["operationId"].as_str() {
                out.push((id.to_owned(), format!("{method} {path}")));
            }
        }
    }
    out
}

/// What openapi-spec-validator checks: the document is valid against the OpenAPI 3.1 schema and
/// no two operations share an operationId (client generators name methods after it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_document_is_valid_openapi_3_1_with_unique_operation_ids() {
    let mut app = TestApp::start().await;
    let doc = served_document(&app).await;
    let schema = openapi_3_1_schema();
    let validator = jsonschema::draft202012::new(&schema).expect("the OpenAPI 3.1 schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(&doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "not valid OpenAPI 3.1: {errors:#?}");
    // The schema bites: a response without its required description is refused.
    let mut broken = doc.clone();
    broken["paths"][format!("{BASE}/health")]["get"]["responses"]["200"]
        .as_object_mut()
        .expect("the 200 of /health")
        .remove("description");
    assert!(
        !validator.is_valid(&broken),
        "a response needs a description"
    );

    let ids = operation_ids(&doc);
    assert!(
        ids.len() >= 18,
        "every operation has an operationId: {ids:?}"
    );
    let mut first: BTreeMap<&str, &str> = BTreeMap::new();
    let mut duplicates: Vec<String> = Vec::new();
    for (id, operation) in &ids {
        if let Some(earlier) = first.insert(id, operation) {
            duplicates.push(format!("{id:?}: {earlier} and {operation}"));
        }
    }
    assert!(
        duplicates.is_empty(),
        "operationIds used twice: {duplicates:?}"
    );
    app.stop().await;
}
