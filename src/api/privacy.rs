//! `GET /pseudonym` (readers) and `POST /privacy/forget` (privacy officers); both audited like
//! every read (`docs/privacy.md`).

use axum::extract::{Extension, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Map, json};

use super::envelope::respond;
use super::error::ApiError;
use super::reads::record;
use super::schema::ErrorEnvelope;
use super::state::AppState;
use crate::auth::Caller;
use crate::query::trail::{Action, Reader};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct PseudonymParams {
    /// The value (e.g. a national id); it is not recorded.
    pub value: String,
}

fn reader_of(caller: &Option<Extension<Caller>>) -> Reader {
    match caller {
        Some(Extension(c)) => Reader {
            name: Some(c.principal.name.clone()),
            auth_type: Some(c.auth_type.as_str()),
        },
        None => Reader::anonymous(),
    }
}

fn hmac(state: &AppState) -> Result<&crate::privacy::actions::HmacKeys, ApiError> {
    state
        .privacy
        .as_ref()
        .ok()
        .and_then(|p| p.hmac())
        .ok_or_else(|| ApiError::NotReady {
            message: "privacy.hmac_key_file is not set in this process: there are no pseudonyms"
                .into(),
            retry_after: state.config.spool.retry_after,
        })
}

/// `GET /v1/auditmanager/pseudonym?value=…`: the value's pseudonyms under every HMAC key
/// generation (current first), to search stored events by.
#[utoipa::path(
    get,
    path = "/v1/auditmanager/pseudonym",
    tag = "query",
    summary = "A value's pseudonyms under every key generation (readers; audited)",
    params(PseudonymParams),
    responses(
        (status = 200, description = "`{\"pseudonyms\": [...]}`, current key first"),
        (status = 401, description = "AUD-010: no or invalid credentials", body = ErrorEnvelope),
        (status = 403, description = "AUD-012: not a reader", body = ErrorEnvelope),
        (status = 503, description = "AUD-005: no HMAC key here; AUD-004/AUD-009: the read could not be recorded", body = ErrorEnvelope),
    ),
)]
pub async fn pseudonym(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    Query(params): Query<PseudonymParams>,
) -> Result<Response, ApiError> {
    if let Some(Extension(c)) = &caller
        && !c.principal.may_read()
    {
        return Err(ApiError::ReadForbidden(format!(
            "principal {:?} is an emitter and may not read; use a reader's credentials",
            c.principal.name
        )));
    }
    let pseudonyms = hmac(&state)?.all_pseudonyms(&params.value);
    let mut context = Map::new();
    context.insert("generations".into(), json!(pseudonyms.len()));
    record(
        &state,
        &reader_of(&caller),
        Action::Pseudonym,
        "success",
        context,
    )
    .await?;
    Ok(respond(
        StatusCode::OK,
        Some(&json!({ "pseudonyms": pseudonyms })),
        &[],
    ))
}

/// The body of `POST /privacy/forget`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ForgetRequest {
    /// The data subject's identifier (as the `encrypt` rules' `subject` path selects it).
    pub subject: String,
    /// Why; recorded in the forget event.
    pub reason: String,
}

/// `POST /v1/auditmanager/privacy/forget`: forgets a data subject, as `audit-manager privacy
/// forget` does (the event first, then the keys). Privacy officers only.
#[utoipa::path(
    post,
    path = "/v1/auditmanager/privacy/forget",
    tag = "query",
    summary = "Forget a data subject (privacy officers; recorded as an audit event)",
    request_body(content = ForgetRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The forget report: pseudonym, whether the event was recorded now, keys destroyed, rows made unreadable, what may still hold a copy"),
        (status = 400, description = "AUD-013: subject or reason missing", body = ErrorEnvelope),
        (status = 401, description = "AUD-010: no or invalid credentials", body = ErrorEnvelope),
        (status = 403, description = "AUD-012: not a privacy officer", body = ErrorEnvelope),
        (status = 503, description = "AUD-005: no HMAC key here; AUD-006: the database did not answer", body = ErrorEnvelope),
    ),
)]
pub async fn forget(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    body: Result<axum::Json<ForgetRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let who = match &caller {
        Some(Extension(c)) if c.principal.may_forget() => c.principal.name.clone(),
        Some(Extension(c)) => {
            return Err(ApiError::ReadForbidden(format!(
                "principal {:?} is not a privacy officer (role privacy_officer in the \
                 principals file) and may not forget a data subject",
                c.principal.name
            )));
        }
        None => {
            return Err(ApiError::ReadForbidden(
                "forgetting a data subject needs authentication (auth.mode token or mtls) and a \
                 privacy officer's credentials"
                    .into(),
            ));
        }
    };
    let axum::Json(req) = body.map_err(|e| {
        ApiError::BadQuery(format!(
            "send {{\"subject\": \"…\", \"reason\": \"…\"}} as application/json ({e})"
        ))
    })?;
    let privacy = state.privacy.as_ref().map_err(|e| ApiError::NotReady {
        message: format!("privacy configuration unusable: {e}"),
        retry_after: state.config.spool.retry_after,
    })?;
    let db_error = |e: String| ApiError::Database {
        message: format!("{e}; nothing was forgotten, retry"),
        retry_after: state.config.spool.retry_after,
    };
    let audit = crate::store::Store::connect_lazy(&state.config.database.url, 2)
        .map_err(|e| db_error(e.to_string()))?;
    let audit =
        crate::sink::attesting(&state.config, audit).map_err(|e| db_error(e.to_string()))?;
    let keys = crate::store::Store::connect_lazy(
        &crate::privacy::subject_keys::keys_url(&state.config),
        2,
    )
    .map_err(|e| db_error(e.to_string()))?;
    let result = crate::privacy::forget::forget(
        privacy,
        &audit,
        keys.pool(),
        &req.subject,
        &req.reason,
        &who,
        crate::privacy::forget::residue(&state.config),
    )
    .await;
    audit.close().await;
    keys.close().await;
    let report = result.map_err(|e| match e {
        crate::privacy::forget::ForgetError::Store(e) => db_error(e.to_string()),
        crate::privacy::forget::ForgetError::NoHmacKey => ApiError::NotReady {
            message: e.to_string(),
            retry_after: state.config.spool.retry_after,
        },
        other => ApiError::BadQuery(other.to_string()),
    })?;
    Ok(respond(StatusCode::OK, Some(&json!(report)), &[]))
}
