//! The generated OpenAPI document against the running service: the same verdict on every event
//! fixture, the same routes, the same error codes, response bodies that match their documented
//! schemas, and the documentation pages.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

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

/// `(method, path)` of every `.route("...", get(..).post(..))` in `src/api/mod.rs`, with the
/// base path the API is nested under.
fn routes_in_source() -> BTreeSet<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api/mod.rs");
    let src = std::fs::read_to_string(path).expect("src/api/mod.rs");
    let mut out = BTreeSet::new();
    for chunk in src.split(".route(").skip(1) {
        let Some(rest) = chunk.strip_prefix('"') else {
            continue;
        };
        let Some((route, handlers)) = rest.split_once('"') else {
            continue;
        };
        // The handlers run to the call's closing parenthesis at depth 0.
        let mut depth = 0usize;
        let mut end = handlers.len();
        for (i, c) in handlers.char_indices() {
            match c {
                '(' => depth += 1,
                ')' if depth == 0 => {
                    end = i;
                    break;
                }
                ')' => depth -= 1,
                _ => {}
            }
        }
        for method in ["get", "post", "put", "delete", "patch"] {
            let handlers = &handlers[..end];
            let called = handlers
                .match_indices(method)
                .any(|(i, _)| handlers[i + method.len()..].starts_with('('));
            if called {
                out.insert((method.to_owned(), format!("{BASE}{route}")));
            }
        }
    }
    assert!(!out.is_empty(), "no routes found in src/api/mod.rs");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_routes_served_and_the_routes_documented_are_the_same() {
    let mut app = TestApp::start().await;
    let doc = served_document(&app).await;
    let served = routes_in_source();
    let mut documented = routes_in_document(&doc);
    for (method, path) in PENDING_ROUTES {
        let route = (method.to_string(), path.to_string());
        assert!(
            documented.remove(&route),
            "{method} {path} must be documented"
        );
        assert!(
            !served.contains(&route),
            "{method} {path} is served now: remove it from PENDING_ROUTES"
        );
    }
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty() && unserved.is_empty(),
        "served but not documented: {undocumented:?}; documented but not served: {unserved:?}"
    );

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
    app.stop().await;
}

/// Every `"AUD-nnn"` string literal in `src/` outside the document's own table.
fn codes_in_source() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs")
                && !path.ends_with("api/openapi.rs")
            {
                let src = std::fs::read_to_string(&path).expect("read source");
                for (i, _) in src.match_indices("\"AUD-") {
                    let code: String = src[i + 1..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                        .collect();
                    out.insert(code);
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut out);
    out
}

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
    let in_source = codes_in_source();
    assert!(
        in_source.contains("AUD-002"),
        "the scan finds codes: {in_source:?}"
    );
    assert_eq!(documented, in_source, "documented vs sent error codes");
    // Each code's row in the table names its status.
    let table = doc["components"]["schemas"]["ErrorCode"]["description"]
        .as_str()
        .expect("ErrorCode description");
    for code in &documented {
        assert!(
            table.contains(&format!("| {code} |")),
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
        serde_json::from_str(audit_manager::api::openapi::document_json()).expect("JSON");
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
