//! The query role's routes: `GET /events` (a page, or an export with `Accept:
//! application/x-ndjson` / `text/csv`) and `GET /events/{id}`. Each read is recorded as an
//! audit event in the spool before any row is returned (`reads.rs`).

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::codes::ErrorCode;
use super::envelope::respond;
use super::error::ApiError;
use super::reads::{asked, export_format, failed, record, store};
use super::schema::{Envelope, ErrorEnvelope, EventsPage};
use super::state::AppState;
use crate::auth::Caller;
use crate::query::export;
use crate::query::trail::{Action, Reader};
use crate::query::{integrity, params, sql};

/// Who is reading. Without authentication (the role then runs only with
/// `query.allow_anonymous`) everyone is `anonymous`; with it, only a reader principal may read,
/// and a refusal is recorded too (outcome `denied`) before it is answered with 403 AUD-012.
async fn reader(
    state: &AppState,
    caller: Option<Extension<Caller>>,
    action: Action,
    context: &Map<String, Value>,
) -> Result<Reader, ApiError> {
    let Some(Extension(caller)) = caller else {
        return Ok(Reader::anonymous());
    };
    let reader = Reader {
        name: Some(caller.principal.name.clone()),
        auth_type: Some(caller.auth_type.as_str()),
    };
    if caller.principal.may_read() {
        return Ok(reader);
    }
    record(state, &reader, action, "denied", context.clone()).await?;
    let name = &caller.principal.name;
    crate::auth::count_rejection(ErrorCode::ReadForbidden.as_str(), Some(name));
    Err(ApiError::ReadForbidden(format!(
        "principal {name:?} is an emitter and may not read audit events; use a reader's \
         credentials"
    )))
}

fn db_error(state: &AppState, e: sqlx::Error) -> ApiError {
    let timeout = state.config.query.statement_timeout;
    let hint = match &e {
        sqlx::Error::Database(d) if d.code().as_deref() == Some("57014") => format!(
            "the query ran longer than query.statement_timeout ({}); narrow it with a shorter \
             from/to window or a more selective filter",
            humantime::format_duration(timeout)
        ),
        _ => "the database did not answer the query; retry, and check /health".to_owned(),
    };
    tracing::warn!(error = %e, "query failed");
    metrics::counter!("audit_query_failures_total").increment(1);
    ApiError::Database {
        message: format!("{hint} ({e})"),
        retry_after: state.config.spool.retry_after,
    }
}

/// What the caller may see of encrypted values (`pii: true` in the principals file).
fn view(state: &AppState, caller: Option<&Extension<Caller>>) -> crate::privacy::read::View {
    let pii = caller.is_some_and(|Extension(c)| c.principal.sees_pii());
    match &state.privacy {
        Ok(p) => p.view(pii),
        Err(_) => crate::privacy::read::View::default(),
    }
}

/// Rewrites the encrypted values of `events` for `view`; failed authentications are flagged in
/// the row's `integrity` (added after this by the caller, so kept aside in `privacy`).
fn reveal(
    view: &crate::privacy::read::View,
    events: &mut [Value],
) -> crate::privacy::read::Revealed {
    let mut total = crate::privacy::read::Revealed::default();
    for e in events.iter_mut() {
        let r = view.row(e);
        total.plaintext += r.plaintext;
        total.tampered += r.tampered;
        if r.tampered > 0
            && let Value::Object(m) = e
        {
            m.insert(
                "privacy".into(),
                json!({ "integrity_failures": r.tampered,
                        "detail": "an encrypted value did not authenticate in this row and field \
                                   (moved from another row or field, or altered)" }),
            );
        }
    }
    total
}

/// The read's own audit event says when personal data was revealed.
fn note_revealed(context: &mut Map<String, Value>, r: crate::privacy::read::Revealed) {
    if r.plaintext > 0 {
        context.insert("personal_data_revealed".into(), json!(r.plaintext));
    }
    if r.tampered > 0 {
        context.insert(
            "encrypted_values_failing_authentication".into(),
            json!(r.tampered),
        );
    }
}

fn parse_rows(rows: Vec<String>) -> Vec<Value> {
    rows.iter()
        .map(|r| serde_json::from_str(r).unwrap_or(Value::Null))
        .collect()
}

/// `GET /v1/auditmanager/events`: newest first, keyset-paged; or every match as an export.
#[utoipa::path(
    get,
    path = "/v1/auditmanager/events",
    tag = "query",
    summary = "Search stored events (query role)",
    description = "Filters (all optional, combined with AND): `actor_id`, `resource_type`, \
                   `resource_id`, `type`, `outcome`, `subject`, `source`, `trace_id`, `from`, \
                   `to` (RFC 3339, the window is [from, to)). Newest first by `(occurred_at, id)`; \
                   `limit` (default 100, at most `query.max_page_size`) and `cursor` (the \
                   previous page's `next_cursor`). With `Accept: application/x-ndjson` or \
                   `text/csv` every match is streamed instead of a page. Every read is recorded \
                   as an audit event (`org.openg2p.auditmanager.query`).",
    params(
        ("actor_id" = Option<String>, Query), ("resource_type" = Option<String>, Query),
        ("resource_id" = Option<String>, Query), ("type" = Option<String>, Query),
        ("outcome" = Option<String>, Query), ("subject" = Option<String>, Query),
        ("source" = Option<String>, Query), ("trace_id" = Option<String>, Query),
        ("from" = Option<String>, Query, description = "RFC 3339, inclusive"),
        ("to" = Option<String>, Query, description = "RFC 3339, exclusive"),
        ("limit" = Option<u32>, Query), ("cursor" = Option<String>, Query),
    ),
    responses(
        (status = 200, description = "A page of rows (or the streamed export)", body = Envelope<EventsPage>),
        (status = 400, description = "AUD-013: a bad parameter, named", body = ErrorEnvelope),
        (status = 401, description = "AUD-010: no or invalid credentials", body = ErrorEnvelope),
        (status = 403, description = "AUD-012: the principal is not a reader (the refusal is recorded)", body = ErrorEnvelope),
        (status = 503, description = "AUD-006: the database did not answer; AUD-004/AUD-009: the read could not be recorded",
         body = ErrorEnvelope),
    ),
)]
pub async fn search(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let store = store(&state)?;
    let export = export_format(&headers);
    let action = if export.is_some() {
        Action::Export
    } else {
        Action::Query
    };
    let parsed = params::parse(query.as_deref(), state.config.query.max_page_size);
    let asked = asked(query.as_deref(), &parsed);
    let view = view(&state, caller.as_ref());
    let reader = reader(&state, caller, action, &asked).await?;
    let req = match parsed {
        Ok(req) => req,
        Err(msg) => {
            return Err(failed(&state, &reader, action, asked, ApiError::BadQuery(msg)).await);
        }
    };
    if let Some(format) = export {
        if req.limit_given {
            let e = ApiError::BadQuery(
                "parameter `limit` does not apply to an export, which streams every match; \
                 leave it out (or ask for application/json pages)"
                    .into(),
            );
            return Err(failed(&state, &reader, action, asked, e).await);
        }
        let mut context = req.filter.to_json();
        context.insert("format".into(), json!(format.content_type()));
        if view.pii {
            // Counted rows are not known before the stream ends: the export may reveal.
            context.insert("personal_data".into(), json!("may be revealed"));
        }
        record(&state, &reader, Action::Export, "success", context).await?;
        let body = export::stream(store.pool().clone(), req.filter, req.after, format, view);
        let mut resp = Response::new(Body::from_stream(body));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(format.content_type()),
        );
        return Ok(resp);
    }
    let result = sql::page(store.pool(), &req.filter, req.after.as_ref(), req.limit).await;
    let page = match result {
        Ok(page) => page,
        Err(e) => {
            let e = db_error(&state, e);
            return Err(failed(&state, &reader, action, asked, e).await);
        }
    };
    let sealed_up_to = integrity::sealed_up_to(store.pool()).await;
    let mut context = req.filter.to_json();
    context.insert("returned".into(), json!(page.rows.len()));
    if req.after.is_some() {
        context.insert("page".into(), json!("next"));
    }
    let mut events = parse_rows(page.rows);
    let revealed = reveal(&view, &mut events);
    note_revealed(&mut context, revealed);
    record(&state, &reader, Action::Query, "success", context).await?;
    for e in &mut events {
        let status = integrity::page_status(e, sealed_up_to);
        if let Value::Object(m) = e {
            m.insert("integrity".into(), json!({ "status": status }));
        }
    }
    let payload = json!({
        "events": events,
        "next_cursor": page.next.map(|c| c.encode()),
    });
    Ok(respond(StatusCode::OK, Some(&payload), &[]))
}

/// `GET /v1/auditmanager/events/{id}`: every row with this id.
#[utoipa::path(
    get,
    path = "/v1/auditmanager/events/{id}",
    tag = "query",
    summary = "The stored rows of one event id (query role)",
    params(("id" = String, Path, description = "The event's `id`")),
    responses(
        (status = 200, description = "The rows with this id, newest first", body = Envelope<EventsPage>),
        (status = 401, description = "AUD-010: no or invalid credentials", body = ErrorEnvelope),
        (status = 403, description = "AUD-012: the principal is not a reader (the refusal is recorded)", body = ErrorEnvelope),
        (status = 400, description = "AUD-400: the id in the path is not valid percent-encoded UTF-8 (the attempt is recorded)", body = ErrorEnvelope),
        (status = 404, description = "AUD-404: no row has this id", body = ErrorEnvelope),
        (status = 503, description = "AUD-006: the database did not answer", body = ErrorEnvelope),
    ),
)]
pub async fn by_id(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let store = store(&state)?;
    let Ok(Path(id)) = path else {
        // Only a path that is not valid percent-encoded UTF-8 gets here: no id can be read
        // from it, but the attempt is recorded like any other.
        let reader = reader(&state, caller, Action::Query, &Map::new()).await?;
        let e = ApiError::Refused {
            status: StatusCode::BAD_REQUEST,
            message: "the event id in the path is not valid percent-encoded UTF-8".into(),
        };
        return Err(failed(&state, &reader, Action::Query, Map::new(), e).await);
    };
    let mut asked = Map::new();
    asked.insert("id".into(), json!(id));
    let view = view(&state, caller.as_ref());
    let reader = reader(&state, caller, Action::Query, &asked).await?;
    let rows = match sql::by_id(store.pool(), &id).await {
        Ok(rows) => rows,
        Err(e) => {
            let e = db_error(&state, e);
            return Err(failed(&state, &reader, Action::Query, asked, e).await);
        }
    };
    let mut context = Map::new();
    context.insert("id".into(), json!(id));
    context.insert("returned".into(), json!(rows.len()));
    let empty = rows.is_empty();
    let mut events = parse_rows(rows);
    let revealed = reveal(&view, &mut events);
    note_revealed(&mut context, revealed);
    record(&state, &reader, Action::Query, "success", context).await?;
    if empty {
        return Err(ApiError::NotFound(format!(
            "no stored event has id {id:?} (it may still be on its way: spool → Kafka → sink)"
        )));
    }
    for e in &mut events {
        let at = e["occurred_at"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp_micros());
        let status = match at {
            Some(at) => {
                let interval = state.config.integrity.seal_interval;
                integrity::check_row(store.pool(), &state.trusted_keys, interval, &id, at).await
            }
            None => json!({ "status": "unknown", "detail": "the row's time cannot be read" }),
        };
        if let Value::Object(m) = e {
            m.insert("integrity".into(), status);
        }
    }
    let payload = json!({ "events": events, "next_cursor": null });
    Ok(respond(StatusCode::OK, Some(&payload), &[]))
}
