//! Every read of the query role is recorded as an audit event in the spool before it is
//! answered (`docs/query.md`): a read that succeeds, one refused for a bad parameter or a
//! database that did not answer, and one refused for its credentials (by the authentication
//! middleware, before any handler ran). What the query handlers and the middleware share.

use axum::http::{HeaderMap, Method, Uri, header};
use serde_json::{Map, Value, json};

use super::error::ApiError;
use super::spooling;
use super::state::{AppState, BASE};
use crate::query::export::Format;
use crate::query::params;
use crate::query::trail::{self, Action, Reader};
use crate::store::Store;

/// The query role's connections, or 503 AUD-005 where the role does not run (the page's
/// files answer the same).
pub(super) fn store(state: &AppState) -> Result<&Store, ApiError> {
    state.query.as_ref().ok_or_else(|| ApiError::NotReady {
        message: "the query role is not enabled in this process: add `query` (and `forward`) \
                  to `roles` here, or ask the deployment that runs it"
            .into(),
        retry_after: state.config.spool.retry_after,
    })
}

/// Spools the audit event of this read; the read is refused when it cannot be recorded.
pub(super) async fn record(
    state: &AppState,
    reader: &Reader,
    action: Action,
    outcome: &str,
    context: Map<String, Value>,
) -> Result<(), ApiError> {
    let now = chrono::Utc::now();
    let event = trail::event(reader, action, outcome, context, now);
    let normalized =
        crate::event::normalize(event, now, &state.limits).map_err(|r| ApiError::NotReady {
            message: format!("cannot record this read as an audit event: {}", r.message()),
            retry_after: state.config.spool.retry_after,
        })?;
    spooling::spool(
        state,
        &[spooling::to_record(normalized, crate::spool::now_ms())],
    )
    .await?;
    metrics::counter!("audit_query_requests_total", "action" => action.as_str(), "outcome" => outcome.to_owned())
        .increment(1);
    Ok(())
}

/// The longest raw text (a query string that does not parse, an id not yet verified) recorded
/// for a read: the record of a refusal must fit in an event whatever the request held.
const RECORDED_RAW_BYTES: usize = 2048;

/// `raw` cut to [`RECORDED_RAW_BYTES`] on a character boundary.
fn cut(raw: &str) -> &str {
    let mut end = raw.len().min(RECORDED_RAW_BYTES);
    while !raw.is_char_boundary(end) {
        end -= 1;
    }
    &raw[..end]
}

/// What a search asked for, as its audit event records it: the filters, or the raw query
/// string (cut to [`RECORDED_RAW_BYTES`]) when it does not parse.
pub(super) fn asked(
    query: Option<&str>,
    parsed: &Result<params::PageRequest, String>,
) -> Map<String, Value> {
    match parsed {
        Ok(req) => req.filter.to_json(),
        Err(_) => {
            let mut m = Map::new();
            m.insert("query".into(), json!(cut(query.unwrap_or(""))));
            m
        }
    }
}

/// Records a read refused after its reader was known — a bad parameter (400) or a database
/// that did not answer (503) — with outcome `failure` and the error's code in `context.error`,
/// then hands the error back to be answered. When even the record cannot be spooled, that
/// failure is the answer (503), as for any read.
pub(super) async fn failed(
    state: &AppState,
    reader: &Reader,
    action: Action,
    mut context: Map<String, Value>,
    e: ApiError,
) -> ApiError {
    context.insert("error".into(), json!(e.code()));
    match record(state, reader, action, "failure", context).await {
        Ok(()) => e,
        Err(unrecorded) => unrecorded,
    }
}

/// Whether `method` and `rel` (the path under the API's base) name a read of the query role:
/// `GET /events` or `GET /events/{id}`.
pub(super) fn is_read(method: &Method, rel: &str) -> bool {
    if method != Method::GET {
        return false;
    }
    match rel.strip_prefix("/events") {
        Some("") => true,
        Some(rest) => rest
            .strip_prefix('/')
            .is_some_and(|id| !id.is_empty() && !id.contains('/') && id != "batch"),
        None => false,
    }
}

/// Records a read refused for its credentials (401 AUD-010, decided by the authentication
/// middleware before any handler runs): actor `anonymous` (no principal was verified),
/// outcome `denied`, what was asked and `context.error`. Does nothing where the query role
/// does not run. `Err` when the record cannot be spooled: then that is the answer.
pub(super) async fn record_unauthenticated(
    state: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
    e: &ApiError,
) -> Result<(), ApiError> {
    if state.query.is_none() {
        return Ok(());
    }
    let rel = uri.path().strip_prefix(BASE).unwrap_or(uri.path());
    let (action, mut context) = match rel.strip_prefix("/events/") {
        Some(id) => {
            // As sent: percent-encoded where the client encoded it.
            let mut m = Map::new();
            m.insert("id".into(), json!(cut(id)));
            (Action::Query, m)
        }
        None => {
            let parsed = params::parse(uri.query(), state.config.query.max_page_size);
            let action = if export_format(headers).is_some() {
                Action::Export
            } else {
                Action::Query
            };
            (action, asked(uri.query(), &parsed))
        }
    };
    context.insert("error".into(), json!(e.code()));
    record(state, &Reader::anonymous(), action, "denied", context).await
}

/// The export an `Accept` header asks for, if any.
pub(super) fn export_format(headers: &HeaderMap) -> Option<Format> {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .and_then(Format::from_accept)
}
