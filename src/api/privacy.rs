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
