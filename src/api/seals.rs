//! `GET /seals` (the seals, NDJSON) and `GET /seals/keys` (the public keys this service is
//! configured with). Served by processes that have a database (sink or maintain role).

use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures_util::StreamExt as _;
use serde::Serialize;

use super::AppState;
use super::envelope::respond;
use super::error::ApiError;
use crate::integrity::{SealLine, seal};

/// Seals read per database round trip while streaming (each at most 512 KiB).
const PAGE: i64 = 16;

/// Query of `GET /seals`: a half-open window on the seals' `created_at`. Documents the
/// parameters; [`window`] parses them (an unknown or repeated one is refused, so a typo such
/// as `form=` never silently widens the window to every seal).
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Read by the OpenAPI document only.
pub struct SealsQuery {
    /// Seals created at or after this instant (RFC 3339).
    pub from: Option<String>,
    /// Seals created before this instant (RFC 3339).
    pub to: Option<String>,
}

fn instant(name: &str, s: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            ApiError::BadQuery(format!(
                "parameter `{name}` is not an RFC 3339 time ({e}); e.g. 2026-01-31T00:00:00Z"
            ))
        })
}

/// `(from, to)`: the bounds of a `/seals` window, each optional.
type Window = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// `(from, to)` of the raw query string; 400 AUD-013 naming the parameter for anything but
/// `from` and `to`, each at most once and not empty.
fn window(query: Option<&str>) -> Result<Window, ApiError> {
    let (mut from, mut to) = (None, None);
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let slot = match &*name {
            "from" => &mut from,
            "to" => &mut to,
            other => {
                return Err(ApiError::BadQuery(format!(
                    "unknown parameter `{other}`; known parameters: from, to"
                )));
            }
        };
        if slot.is_some() {
            return Err(ApiError::BadQuery(format!(
                "parameter `{name}` is given more than once; give it at most once"
            )));
        }
        if value.is_empty() {
            return Err(ApiError::BadQuery(format!(
                "parameter `{name}` is empty; leave it out to not bound the window"
            )));
        }
        *slot = Some(instant(&name, &value)?);
    }
    Ok((from, to))
}

fn database(state: &AppState) -> Result<sqlx::PgPool, ApiError> {
    state.database.clone().ok_or_else(|| ApiError::Database {
        message: "this process has no database: seals are served by processes running the sink \
                  or maintain role"
            .into(),
        retry_after: Duration::from_secs(60),
    })
}

/// `GET /seals`: one JSON seal per line, oldest first.
#[utoipa::path(
    get,
    path = "/v1/auditmanager/seals",
    tag = "integrity",
    summary = "The seals created in a time window, as NDJSON",
    description = "One `SealLine` per line (the canonical seal bytes in base64, their SHA-256, \
                   the ed25519 signature and the key id), oldest first. The format of the bytes \
                   is documented in docs/integrity.md; check them with the public keys you \
                   trust, not with `/seals/keys` alone.",
    params(SealsQuery),
    responses(
        (status = 200, description = "The seals, one JSON object per line",
         content_type = "application/x-ndjson", body = SealLine),
        (status = 400, description = "A bad, unknown or repeated parameter (AUD-013)",
         body = super::openapi::ErrorEnvelope),
        (status = 503, description = "No database in this process, or it is unreachable (AUD-006)",
         body = super::openapi::ErrorEnvelope),
    ),
)]
pub async fn seals(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let (from, to) = window(query.as_deref())?;
    let pool = database(&state)?;
    let fetch = move |after: i64| {
        let pool = pool.clone();
        async move { crate::store::seals::created_between(&pool, after, from, to, PAGE).await }
    };
    // The first page is read before answering, so an unreachable database is a 503.
    let first = fetch(0).await.map_err(|e| ApiError::Database {
        message: format!("cannot read audit_seals: {e}"),
        retry_after: Duration::from_secs(5),
    })?;
    let pages = futures_util::stream::unfold(Some(first), move |page| {
        let fetch = fetch.clone();
        async move {
            let page = page?;
            if page.is_empty() {
                return None;
            }
            let last = page.last().map(|s| s.seal_no).unwrap_or(i64::MAX);
            let mut body = Vec::new();
            for s in &page {
                let line = SealLine::new(s.seal_no as u64, &s.bytes, &s.signature, &s.key_id);
                if serde_json::to_writer(&mut body, &line).is_ok() {
                    body.push(b'\n');
                }
            }
            let next = if (page.len() as i64) < PAGE {
                Some(Vec::new())
            } else {
                match fetch(last).await {
                    Ok(p) => Some(p),
                    Err(e) => {
                        // The status is sent; an incomplete last line tells the client.
                        tracing::warn!(error = %e, "reading seals failed mid-stream");
                        None
                    }
                }
            };
            Some((Ok::<_, std::io::Error>(body), next))
        }
    });
    Ok((
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        )],
        Body::from_stream(pages.boxed()),
    )
        .into_response())
}

/// One public key of `GET /seals/keys`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PublicKey {
    /// 16 hex digits: the first 8 bytes of SHA-256(public key).
    pub key_id: Option<String>,
    /// The ed25519 public key, 64 hex digits.
    pub public_key: Option<String>,
    /// `signing` (the sealer's key, `integrity.signing_key_file`) or `trusted`
    /// (`integrity.public_key_files`).
    pub role: &'static str,
    /// The key file could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Payload of `GET /seals/keys`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PublicKeys {
    pub keys: Vec<PublicKey>,
}

/// `GET /seals/keys`: the public keys this process is configured with.
#[utoipa::path(
    get,
    path = "/v1/auditmanager/seals/keys",
    tag = "integrity",
    summary = "The public keys this service signs and verifies seals with",
    description = "The public half of `integrity.signing_key_file` and every key of \
                   `integrity.public_key_files`. For convenience only: a verifier must take the \
                   keys it trusts from its own configuration.",
    responses((status = 200, description = "The configured public keys",
               body = super::openapi::Envelope<PublicKeys>)),
)]
pub async fn keys(State(state): State<AppState>) -> Response {
    let integrity = &state.config.integrity;
    let describe =
        |role: &'static str, r: Result<ed25519_dalek::VerifyingKey, seal::KeyError>| match r {
            Ok(k) => PublicKey {
                key_id: Some(hex::encode(seal::key_id(&k))),
                public_key: Some(hex::encode(k.as_bytes())),
                role,
                error: None,
            },
            Err(e) => PublicKey {
                key_id: None,
                public_key: None,
                role,
                error: Some(e.to_string()),
            },
        };
    let mut keys = Vec::new();
    if let Some(path) = &integrity.signing_key_file {
        keys.push(describe(
            "signing",
            seal::load_signing_key(path).map(|k| k.verifying_key()),
        ));
    }
    for path in &integrity.public_key_files {
        keys.push(describe("trusted", seal::load_public_key(path)));
    }
    respond(StatusCode::OK, Some(&PublicKeys { keys }), &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(q: &str) -> String {
        match window(Some(q)) {
            Err(e @ ApiError::BadQuery(_)) => e.to_string(),
            other => panic!("{q}: {other:?}"),
        }
    }

    #[test]
    fn the_window_takes_from_and_to_only() {
        let (from, to) = window(Some(
            "from=2026-01-01T00:00:00Z&to=2026-02-01T00:00:00%2B01:00",
        ))
        .expect("valid");
        assert_eq!(from.unwrap().to_rfc3339(), "2026-01-01T00:00:00+00:00");
        assert_eq!(to.unwrap().to_rfc3339(), "2026-01-31T23:00:00+00:00");
        assert_eq!(window(None).unwrap(), (None, None));
        assert!(refused("form=2026-01-01T00:00:00Z").contains("`form`"));
        assert!(
            refused("from=2026-01-01T00:00:00Z&from=2027-01-01T00:00:00Z")
                .contains("more than once")
        );
        assert!(refused("to=").contains("empty"));
        assert!(refused("to=yesterday").contains("`to`"));
    }
}
