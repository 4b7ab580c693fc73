//! `POST /events` and `POST /events/batch`: decode, validate, spool durably, answer 202.
//!
//! The answer is sent only after the spool commit holding the request's events returned, i.e.
//! after fsync. A batch is all-or-nothing: every event valid and spooled in one commit, or none.

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use serde_json::json;

use super::auth::check_sources;
use super::budget::Held;
use super::envelope::respond;
use super::error::ApiError;
use super::schema::{Accepted, BatchAccepted, BatchRequest, CloudEvent, Envelope, ErrorEnvelope};
use super::spooling::{spool, to_record};
use super::state::AppState;
use crate::auth::Caller;
use crate::event::authcontext::AuthContext;
use crate::event::{
    self, BatchBody, FieldError, Incoming, JsonError, Normalizations, Rejection, Rule,
    ValidationMode,
};
use crate::spool::now_ms;

/// The media types a request body may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Media {
    /// `application/json`
    Json,
    /// `application/cloudevents+json`
    CloudEvent,
    /// `application/cloudevents-batch+json`
    CloudEventBatch,
}

/// The body's media type. `compatible` reads a body without `Content-Type`, or with any other
/// `application/…+json` type, as JSON (as the reference does); the rule applied is added to
/// `rules`.
fn media(headers: &HeaderMap, mode: ValidationMode, rules: &mut Normalizations) -> Option<Media> {
    let compatible = mode == ValidationMode::Compatible;
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        if compatible {
            rules.add(Rule::NoContentType);
            return Some(Media::Json);
        }
        return None;
    };
    let essence = ct
        .to_str()
        .ok()?
        .split(';')
        .next()?
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Some(Media::Json),
        "application/cloudevents+json" => Some(Media::CloudEvent),
        "application/cloudevents-batch+json" => Some(Media::CloudEventBatch),
        other
            if compatible
                && other.starts_with("application/")
                && other.ends_with("+json")
                && other.len() > "application/+json".len() =>
        {
            rules.add(Rule::ContentTypeJsonSuffix);
            Some(Media::Json)
        }
        _ => None,
    }
}

fn content_type_error(headers: &HeaderMap, expected: &str) -> ApiError {
    let got = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_else(|| "none".into());
    ApiError::UnsupportedMediaType(format!(
        "unsupported Content-Type {got:?}; send {expected} \
         (e.g. curl -H 'Content-Type: application/json')"
    ))
}

/// Reads the body, refusing more than `http.max_body_bytes` (413 AUD-003). A body that fails
/// to arrive (the client disconnected, broken chunked encoding) is 400 AUD-001: only a body
/// over the limit is "too large". The body's bytes are charged to `http.max_in_flight_bytes`
/// (see `budget.rs`) until the returned [`Held`] is dropped; no room there is 503 AUD-004.
///
/// The whole body must arrive within `http.body_timeout`, else 408 AUD-408: a client trickling
/// a large announced body would otherwise hold its share of the budget (and every other
/// emitter out of it) for as long as it likes. What it held is given back as the read is
/// dropped.
async fn read_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Bytes, Held), ApiError> {
    let timeout = state.config.http.body_timeout;
    match tokio::time::timeout(timeout, receive_body(state, headers, body)).await {
        Ok(read) => read,
        Err(_) => {
            metrics::counter!("audit_http_timeouts_total", "phase" => "body").increment(1);
            Err(ApiError::BodyTimeout(format!(
                "the request body did not arrive within http.body_timeout ({}); nothing was \
                 stored, send the request again (on a slow link, in smaller batches)",
                humantime::format_duration(timeout)
            )))
        }
    }
}

/// [`read_body`] without its deadline.
async fn receive_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Bytes, Held), ApiError> {
    use futures_util::StreamExt as _;
    let mut held = state.bodies.none();
    let no_room = |state: &AppState| {
        metrics::counter!("audit_http_body_budget_refused_total").increment(1);
        ApiError::Backpressure {
            message: format!(
                "request bodies being processed already use the {}-byte bound \
                 (http.max_in_flight_bytes); nothing was stored, retry after the Retry-After \
                 delay (operators: raise the bound or add instances)",
                state.bodies.total()
            ),
            retry_after: state.config.spool.retry_after,
        }
    };
    let limit = state.config.http.max_body_bytes;
    let too_large = |n: Option<u64>| {
        let size = n.map(|n| format!(" ({n} bytes)")).unwrap_or_default();
        ApiError::TooLarge(format!(
            "request body{size} exceeds http.max_body_bytes = {limit} bytes; split it into \
             smaller batches"
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(declared));
    }
    // Charged before a byte is read: a flood of announced bodies is refused, not buffered.
    let announced = declared.map_or(0, |n| n as usize);
    if !held.take(announced) {
        return Err(no_room(state));
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let broken = |e: axum::Error| {
        // hyper's own message is generic; its source says what broke ("unexpected EOF").
        let mut why = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            why = format!("{why}: {s}");
            source = s.source();
        }
        ApiError::NotJson(format!(
            "the request body did not arrive completely ({why}); nothing was stored, send the \
             request again"
        ))
    };
    let mut chunks = body.into_data_stream();
    // Most bodies arrive as one chunk: keep it without copying.
    let Some(first) = chunks.next().await.transpose().map_err(broken)? else {
        return Ok((Bytes::new(), held));
    };
    let mut buf: Option<bytes::BytesMut> = None;
    let mut len = first.len();
    if len > limit {
        return Err(too_large(None));
    }
    // Without (or beyond) a Content-Length, bytes are charged as they arrive.
    let charge = |held: &mut Held, len: usize| held.take(len.saturating_sub(held.bytes()));
    if !charge(&mut held, len) {
        return Err(no_room(state));
    }
    while let Some(chunk) = chunks.next().await.transpose().map_err(broken)? {
        len += chunk.len();
        if len > limit {
            return Err(too_large(None));
        }
        if !charge(&mut held, len) {
            return Err(no_room(state));
        }
        let buf = buf.get_or_insert_with(|| {
            let capacity = declared.map_or(len, |n| n as usize).min(limit);
            let mut b = bytes::BytesMut::with_capacity(capacity);
            b.extend_from_slice(&first);
            b
        });
        buf.extend_from_slice(&chunk);
    }
    Ok((buf.map_or(first, bytes::BytesMut::freeze), held))
}

fn json_error(e: JsonError) -> ApiError {
    match e {
        JsonError::Syntax(e) => ApiError::NotJson(format!(
            "request body is not valid JSON: {e}; send one CloudEvent as a JSON object \
             (UTF-8, at most 128 levels deep)"
        )),
        JsonError::Nul(field) | JsonError::DuplicateKey(field) => ApiError::Invalid(vec![field]),
    }
}

fn reject(r: Rejection) -> ApiError {
    match r {
        Rejection::Invalid(fields) => ApiError::Invalid(fields),
        Rejection::TimeInFuture(field) => ApiError::Invalid(vec![field]),
        too_large @ Rejection::TooLarge { .. } => ApiError::TooLarge(format!(
            "{}; events are limited by ingest.max_event_bytes",
            too_large.message()
        )),
    }
}

fn not_ready_unless_accepting(state: &AppState) -> Result<(), ApiError> {
    if state.shutdown.is_cancelled() {
        return Err(ApiError::NotReady {
            message: "shutting down; retry against another instance".into(),
            retry_after: state.config.spool.retry_after,
        });
    }
    if state.spool.is_none() {
        return Err(ApiError::NotReady {
            message: "the ingest role is not enabled in this process (see `roles`)".into(),
            retry_after: state.config.spool.retry_after,
        });
    }
    Ok(())
}

/// `POST /v1/auditmanager/events`: one event, structured (`application/json`,
/// `application/cloudevents+json`) or binary mode (`ce-*` headers, body = `data`).
#[utoipa::path(
    post,
    path = "/v1/auditmanager/events",
    tag = "ingest",
    security((), ("bearer" = []), ("mutualTLS" = [])),
    summary = "Send one audit event",
    description = "One CloudEvent in structured mode (`application/json` or \
                   `application/cloudevents+json`), or in HTTP binary mode: the attributes as \
                   `ce-*` headers (`ce-specversion`, `ce-id`, `ce-source`, `ce-type`, `ce-time`, \
                   …, percent-encoded) and the body = `data` with its `Content-Type`. Answered \
                   202 only after the event is in the spool and fsynced.",
    request_body(content(
        (CloudEvent = "application/json"),
        (CloudEvent = "application/cloudevents+json"),
    )),
    responses(
        (status = 202, description = "Spooled durably", body = Envelope<Accepted>),
        (status = 400, description = "AUD-001: not JSON", body = ErrorEnvelope),
        (status = 401, description = "AUD-010: no or invalid credentials (auth.mode token or mtls)", body = ErrorEnvelope,
         headers(("WWW-Authenticate" = String, description = "Bearer realm=\"audit-manager\""))),
        (status = 403, description = "AUD-011: the principal may not emit events with this source (a reader may emit none); nothing stored", body = ErrorEnvelope),
        (status = 408, description = "AUD-408: the body did not arrive within http.body_timeout; nothing stored", body = ErrorEnvelope),
        (status = 413, description = "AUD-003: too large", body = ErrorEnvelope),
        (status = 415, description = "AUD-008: unsupported Content-Type", body = ErrorEnvelope),
        (status = 422, description = "AUD-002: invalid event, one error per field", body = ErrorEnvelope),
        (status = 503, description = "AUD-004 backpressure, AUD-005 not ready, AUD-009 spool write failed; nothing stored",
         body = ErrorEnvelope,
         headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ),
)]
pub async fn post_event(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = caller.map(|Extension(c)| c);
    not_ready_unless_accepting(&state)?;
    let mode = state.limits.mode;
    let mut rules = Normalizations::default();
    let binary = event::is_binary_mode(headers.keys().map(|k| k.as_str()));
    let (body, _held) = if binary {
        read_body(&state, &headers, body).await?
    } else {
        match media(&headers, mode, &mut rules) {
            Some(Media::Json | Media::CloudEvent) => {}
            _ => {
                return Err(content_type_error(
                    &headers,
                    "application/json or application/cloudevents+json (or binary mode with \
                     ce-* headers)",
                ));
            }
        }
        read_body(&state, &headers, body).await?
    };
    // `_held` lasts until the answer: the event and its record count against the body's bytes.
    let incoming = if binary {
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let pairs = headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes()));
        Incoming::Tree(event::from_binary(pairs, ct, &body).map_err(binary_error)?)
    } else {
        Incoming::parse(&body, mode).map_err(json_error)?
    };
    check_sources(caller.as_ref(), [incoming.source()])?;
    let now = chrono::Utc::now();
    let mut normalized = incoming
        .normalize(auth_context(caller.as_ref()), now, &state.limits)
        .map_err(reject)?;
    protect(&state, &mut normalized)?;
    let id = normalized.id.clone();
    normalized.normalized.iter().for_each(|r| rules.add(r));
    spool(&state, &[to_record(normalized, now_ms())]).await?;
    // Counted once the event is durable: a retried 503 is not counted twice.
    crate::metrics::count_normalizations(rules);
    Ok(respond(
        StatusCode::ACCEPTED,
        Some(&json!({ "accepted": id })),
        &[],
    ))
}

fn binary_error(e: event::BinaryError) -> ApiError {
    match e {
        event::BinaryError::NotJson(msg) => ApiError::NotJson(format!(
            "binary-mode body (the event's data) is not valid JSON: {msg}"
        )),
        event::BinaryError::Rejected(r) => reject(r),
    }
}

/// `POST /v1/auditmanager/events/batch`: `{"events":[...]}` (`application/json`) or a JSON
/// array (`application/cloudevents-batch+json`). All or nothing.
#[utoipa::path(
    post,
    path = "/v1/auditmanager/events/batch",
    tag = "ingest",
    security((), ("bearer" = []), ("mutualTLS" = [])),
    summary = "Send a batch of audit events, all or nothing",
    description = "`{\"events\": [...]}` (`application/json`) or a JSON array \
                   (`application/cloudevents-batch+json`), at most `ingest.max_batch_size` \
                   events. Every event valid and spooled in one fsynced commit, or none: one \
                   invalid event refuses the batch, and the errors name it (`events[3].time`).",
    request_body(content(
        (BatchRequest = "application/json"),
        (Vec<CloudEvent> = "application/cloudevents-batch+json"),
    )),
    responses(
        (status = 202, description = "Every event spooled durably, ids in request order",
         body = Envelope<BatchAccepted>),
        (status = 400, description = "AUD-001: not JSON; AUD-007: more than ingest.max_batch_size events", body = ErrorEnvelope),
        (status = 401, description = "AUD-010: no or invalid credentials (auth.mode token or mtls)", body = ErrorEnvelope,
         headers(("WWW-Authenticate" = String, description = "Bearer realm=\"audit-manager\""))),
        (status = 403, description = "AUD-011: the principal may not emit events with this source (a reader may emit none); nothing stored", body = ErrorEnvelope),
        (status = 408, description = "AUD-408: the body did not arrive within http.body_timeout; nothing stored", body = ErrorEnvelope),
        (status = 413, description = "AUD-003: too large", body = ErrorEnvelope),
        (status = 415, description = "AUD-008: unsupported Content-Type", body = ErrorEnvelope),
        (status = 422, description = "AUD-002: an invalid event; nothing stored", body = ErrorEnvelope),
        (status = 503, description = "AUD-004 backpressure, AUD-005 not ready, AUD-009 spool write failed; nothing stored",
         body = ErrorEnvelope,
         headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ),
)]
pub async fn post_batch(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = caller.map(|Extension(c)| c);
    not_ready_unless_accepting(&state)?;
    let mode = state.limits.mode;
    let mut request_rules = Normalizations::default();
    if media(&headers, mode, &mut request_rules).is_none() {
        return Err(content_type_error(
            &headers,
            "application/json with {\"events\":[...]} or application/cloudevents-batch+json \
             with a JSON array",
        ));
    }
    let (body, _held) = read_body(&state, &headers, body).await?;
    // Split only: each event is parsed when its turn comes (one parsed event alive at a time).
    let events = match event::split_batch(&body).map_err(json_error)? {
        BatchBody::Events(events) => events,
        BatchBody::NoEventsArray => {
            return Err(invalid("events", "required: an array of CloudEvents"));
        }
        BatchBody::NotABatch => {
            return Err(invalid(
                "events",
                "body must be {\"events\":[...]} or a JSON array of CloudEvents",
            ));
        }
    };
    let max = state.config.ingest.max_batch_size;
    if events.len() > max {
        return Err(ApiError::BatchTooLarge(format!(
            "batch has {} events, more than ingest.max_batch_size = {max}; split it",
            events.len()
        )));
    }
    if events.is_empty() {
        if mode == ValidationMode::Strict {
            return Err(invalid("events", "must contain at least one event"));
        }
        // `compatible`: the reference answers an empty batch with 202 and `count: 0`.
        request_rules.add(Rule::EmptyBatch);
        crate::metrics::count_normalizations(request_rules);
        return Ok(respond(
            StatusCode::ACCEPTED,
            Some(&json!({ "accepted": [], "count": 0 })),
            &[],
        ));
    }
    let ctx = auth_context(caller.as_ref());
    let now = chrono::Utc::now();
    let accepted_at = now_ms();
    let mut records = Vec::with_capacity(events.len());
    let mut rules = Vec::with_capacity(events.len());
    let mut problems: Vec<FieldError> = Vec::new();
    let mut too_large: Option<Rejection> = None;
    for (i, raw) in events.into_iter().enumerate() {
        let ev = Incoming::parse(raw.get().as_bytes(), mode)
            .map_err(|e| json_error(e.under(&format!("events[{i}]"))))?;
        // One forbidden source refuses the whole batch; nothing of it is spooled.
        check_sources(caller.as_ref(), [ev.source()])?;
        match ev.normalize(ctx, now, &state.limits) {
            Ok(mut n) => {
                protect(&state, &mut n)?;
                rules.push(n.normalized);
                records.push(to_record(n, accepted_at));
            }
            Err(r) => match r.at_index(i) {
                Rejection::Invalid(fields) => problems.extend(fields),
                Rejection::TimeInFuture(field) => problems.push(field),
                big @ Rejection::TooLarge { .. } => {
                    too_large.get_or_insert(big);
                }
            },
        }
    }
    if !problems.is_empty() {
        return Err(ApiError::Invalid(problems));
    }
    if let Some(big) = too_large {
        return Err(reject(big));
    }
    spool(&state, &records).await?;
    crate::metrics::count_normalizations(request_rules);
    rules
        .into_iter()
        .for_each(crate::metrics::count_normalizations);
    let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
    Ok(respond(
        StatusCode::ACCEPTED,
        Some(&json!({ "accepted": ids, "count": ids.len() })),
        &[],
    ))
}

/// Applies `privacy.rules` to an accepted event before it is spooled: the one place every
/// ingest path (single, batch, binary; skim or tree) passes through, so nothing a rule removes
/// reaches the spool.
fn protect(state: &AppState, ev: &mut event::NormalizedEvent) -> Result<(), ApiError> {
    let privacy = state.privacy.as_ref().map_err(|e| ApiError::NotReady {
        message: format!("privacy rules unusable ({e}); nothing was stored"),
        retry_after: state.config.spool.retry_after,
    })?;
    privacy.at_ingest(ev).map_err(|e| ApiError::NotReady {
        message: format!("{e}; nothing was stored, retry after the Retry-After delay"),
        retry_after: state.config.spool.retry_after,
    })
}

/// The `authtype`/`authid` to record for `caller` (none without authentication).
fn auth_context(caller: Option<&Caller>) -> Option<AuthContext<'_>> {
    caller.map(|c| AuthContext {
        auth_type: c.auth_type.as_str(),
        auth_id: &c.principal.name,
    })
}

fn invalid(field: &str, message: &str) -> ApiError {
    ApiError::Invalid(vec![FieldError {
        field: field.into(),
        message: message.into(),
    }])
}
