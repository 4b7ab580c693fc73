//! Authentication middleware: with `auth.mode` `token` or `mtls`, every route except the ones
//! the router list marks public ([`PublicRoutes`]: the operational and documentation routes and
//! the files of the investigators' page) needs a verified principal, put on the request as a
//! [`Caller`] for the handlers. Route-level permissions are decided here too:
//! `GET /config` needs a reader (403 AUD-012), the ingest routes an emitter (a reader gets 403
//! AUD-011: it may emit no source). Which `source`s an emitter may use is checked by the ingest
//! handlers, on the parsed events ([`check_sources`]).
//!
//! Refusals are counted in `audit_auth_rejected_total{code,principal}`. Tokens are never
//! logged or echoed.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, Method, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::codes::ErrorCode;
use super::error::ApiError;
use super::reads;
use super::state::{AppState, BASE};
use crate::auth::tls::PeerInfo;
use crate::auth::{AuthType, Caller, Role, count_rejection};
use crate::config::AuthMode;

/// The route templates anyone may call, as the router list marks them: probes, metrics, version,
/// the API documentation, and the investigators' page, which holds no data and fetches every row
/// through `GET /events` with the reader's own credentials.
#[derive(Clone, Debug, Default)]
pub struct PublicRoutes(Arc<BTreeSet<String>>);

impl PublicRoutes {
    pub fn new(templates: impl IntoIterator<Item = String>) -> PublicRoutes {
        PublicRoutes(Arc::new(templates.into_iter().collect()))
    }

    /// Whether the route `req` matched is public. A request that matched no route (it is
    /// answered 404) is not: credentials are checked first, so an unauthenticated caller learns
    /// nothing of the routes.
    fn admit(&self, req: &Request) -> bool {
        req.extensions()
            .get::<MatchedPath>()
            .is_some_and(|m| self.0.contains(m.as_str()))
    }

    /// The templates, sorted.
    pub fn templates(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }
}

/// What the `Authorization` headers of a request present.
#[derive(Debug, PartialEq, Eq)]
enum Presented<'a> {
    /// No header, or one that is not `Bearer <token>`.
    Nothing,
    /// One `Authorization: Bearer <token>` header (scheme case-insensitive).
    Bearer(&'a [u8]),
    /// More than one `Authorization` header. Which one counts would be a guess — and a proxy
    /// in front may have checked another one than this service would — so none does.
    Several,
}

fn bearer(headers: &HeaderMap) -> Presented<'_> {
    let mut all = headers.get_all(header::AUTHORIZATION).iter();
    let Some(v) = all.next() else {
        return Presented::Nothing;
    };
    if all.next().is_some() {
        return Presented::Several;
    }
    let Some((scheme, rest)) = v.as_bytes().split_at_checked(7) else {
        return Presented::Nothing;
    };
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return Presented::Nothing;
    }
    let token = rest.trim_ascii();
    if token.is_empty() {
        Presented::Nothing
    } else {
        Presented::Bearer(token)
    }
}

fn refuse(e: ApiError, principal: Option<&str>) -> Response {
    count_rejection(e.code().as_str(), principal);
    e.into_response()
}

/// A 401. On a read of the query role the refused attempt is recorded first, as every read is
/// (`docs/query.md`); when that record cannot be spooled, its 503 is the answer instead.
/// Takes the request's parts, not the request: its body is not `Sync`, so a reference to the
/// whole request cannot be held across the await.
async fn unauthenticated(
    state: &AppState,
    parts: (&Method, &Uri, &HeaderMap),
    why: String,
) -> Response {
    let e = ApiError::Unauthenticated(why);
    let (method, uri, headers) = parts;
    let rel = uri.path().strip_prefix(BASE).unwrap_or(uri.path());
    if reads::is_read(method, rel)
        && let Err(unrecorded) = reads::record_unauthenticated(state, headers, uri, &e).await
    {
        return unrecorded.into_response();
    }
    refuse(e, None)
}

/// The middleware (see the module documentation).
pub async fn authenticate(
    State((state, public)): State<(AppState, PublicRoutes)>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(auth) = &state.auth else {
        return next.run(req).await;
    };
    if public.admit(&req) {
        return next.run(req).await;
    }
    let path = req.uri().path();
    let caller = match auth.mode() {
        AuthMode::None => return next.run(req).await,
        AuthMode::Token => {
            let token = match bearer(req.headers()) {
                Presented::Bearer(token) => token,
                Presented::Nothing => {
                    let why = "no credentials: send `Authorization: Bearer <token>` (this \
                               service runs with auth.mode token; ask its operator for a token)";
                    return unauthenticated(
                        &state,
                        (req.method(), req.uri(), req.headers()),
                        why.into(),
                    )
                    .await;
                }
                Presented::Several => {
                    let why = "more than one Authorization header: send exactly one \
                               `Authorization: Bearer <token>`";
                    return unauthenticated(
                        &state,
                        (req.method(), req.uri(), req.headers()),
                        why.into(),
                    )
                    .await;
                }
            };
            match auth.by_token(token) {
                Some(principal) => Caller {
                    principal,
                    auth_type: AuthType::ApiKey,
                },
                None => {
                    let why = "the bearer token is not valid (unknown or revoked); check the \
                               token, or ask the operator for a new one";
                    return unauthenticated(
                        &state,
                        (req.method(), req.uri(), req.headers()),
                        why.into(),
                    )
                    .await;
                }
            }
        }
        AuthMode::Mtls => {
            let peer = req.extensions().get::<ConnectInfo<PeerInfo>>();
            let san = peer.and_then(|p| p.0.dns_san.clone());
            let Some(san) = san else {
                let why = if peer.is_some_and(|p| p.0.has_certificate) {
                    "the client certificate has no DNS name in its subject alternative names; \
                     issue one whose first DNS SAN is a principal's dns_san"
                } else {
                    "no client certificate: connect with TLS and a client certificate signed \
                     by the CA in http.tls.client_ca_file"
                };
                return unauthenticated(
                    &state,
                    (req.method(), req.uri(), req.headers()),
                    why.into(),
                )
                .await;
            };
            match auth.by_dns_san(&san) {
                Some(principal) => Caller {
                    principal,
                    auth_type: AuthType::ServiceAccount,
                },
                None => {
                    let why = format!(
                        "the client certificate names {san:?}, which no principal of \
                         auth.tokens_file has as dns_san; ask the operator to add it"
                    );
                    return unauthenticated(&state, (req.method(), req.uri(), req.headers()), why)
                        .await;
                }
            }
        }
    };
    let name = caller.principal.name.as_str();
    let rel = path.strip_prefix(BASE).unwrap_or(path);
    let reads = rel == "/config" || rel == "/seals" || rel == "/seals/keys";
    if reads && !caller.principal.may_read() {
        return refuse(
            ApiError::ReadForbidden(format!(
                "principal {name:?} is an emitter and may not read; use a reader's credentials"
            )),
            Some(name),
        );
    }
    // Readers may search (`GET /events`, decided and recorded by the query handlers), not emit.
    let emitting = req.method() == axum::http::Method::POST;
    if emitting
        && (rel == "/events" || rel == "/events/batch")
        && caller.principal.role != Role::Emitter
    {
        return refuse(
            ApiError::SourceForbidden(format!(
                "principal {name:?} is a reader and may emit events with no source; use an \
                 emitter's credentials"
            )),
            Some(name),
        );
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// Refuses (403 AUD-011) when `caller` may not emit one of `sources` (the `source` of every
/// event of the request, in order; `None` for an event without a string `source`, which
/// validation refuses). Names the principal and each forbidden source once.
pub fn check_sources<'a>(
    caller: Option<&Caller>,
    sources: impl IntoIterator<Item = Option<&'a str>>,
) -> Result<(), ApiError> {
    let Some(caller) = caller else {
        return Ok(());
    };
    let mut forbidden: Vec<&str> = Vec::new();
    for source in sources.into_iter().flatten() {
        if !caller.principal.may_emit(source) && !forbidden.contains(&source) {
            forbidden.push(source);
        }
    }
    if forbidden.is_empty() {
        return Ok(());
    }
    let name = &caller.principal.name;
    let allowed: Vec<&str> = caller
        .principal
        .sources
        .iter()
        .map(|p| p.as_str())
        .collect();
    count_rejection(ErrorCode::SourceForbidden.as_str(), Some(name));
    Err(ApiError::SourceForbidden(format!(
        "principal {name:?} may not emit events with source {}; it may use {}; nothing was \
         stored",
        forbidden
            .iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", "),
        allowed.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), Presented::Nothing);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc "),
        );
        assert_eq!(bearer(&h), Presented::Bearer(&b"abc"[..]));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer abc"),
        );
        assert_eq!(bearer(&h), Presented::Bearer(&b"abc"[..]));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), Presented::Nothing);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&h), Presented::Nothing);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        h.append(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer(&h), Presented::Several);
    }
}
