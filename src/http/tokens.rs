//! Issuing: `POST /a/{tenant}/sessions` (issuing services, with a shared secret) and the
//! OAuth refresh grant at `POST /a/{tenant}/token` (the refresh token is the credential).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Extension, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, FORM, RawBody, is_json_type, media_type, tenant_id};
use crate::domain::Actor;
use crate::service::{IssuedTokens, RefreshError, SessionRequest};

pub fn issuer_router() -> Router<AppState> {
    Router::new().route("/a/{tenant}/sessions", post(create_session))
}

pub fn public_router() -> Router<AppState> {
    Router::new().route("/a/{tenant}/token", post(token))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    /// Becomes `sub`.
    user_id: String,
    client_id: Option<String>,
    scope: Option<String>,
    /// One of the tenant's audiences; otherwise the token carries all of them.
    audience: Option<String>,
    /// Custom claims; reserved names (iss, sub, aud, exp, nbf, iat, jti, sid, client_id,
    /// scope, typ) are refused.
    #[schema(value_type = Option<Object>)]
    claims: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Tokens, shown once.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TokenResponse {
    session_id: String,
    access_token: String,
    #[schema(example = "Bearer")]
    token_type: &'static str,
    /// Seconds until the access token expires.
    expires_in: u64,
    refresh_token: String,
}

impl From<IssuedTokens> for TokenResponse {
    fn from(t: IssuedTokens) -> Self {
        TokenResponse {
            session_id: t.session_id,
            access_token: t.access_token,
            token_type: "Bearer",
            expires_in: t.expires_in,
            refresh_token: t.refresh_token,
        }
    }
}

/// RFC 6749 5.1: token responses must not be cached.
fn no_store(status: StatusCode, body: impl Serialize) -> Response {
    let mut response = (status, Json(body)).into_response();
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// Start a session: an access token signed by the tenant's active key and a refresh token.
#[utoipa::path(post, path = "/a/{tenant}/sessions", tag = "issuing", params(("tenant" = String, Path)),
    request_body = CreateSession,
    responses((status = 201, body = TokenResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("issuer" = []), ("admin" = [])))]
pub(crate) async fn create_session(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
    ApiJson(body): ApiJson<CreateSession>,
) -> Result<Response, ApiError> {
    let tenant = tenant_id(&tenant)?;
    let request = SessionRequest {
        user_id: body.user_id,
        client_id: body.client_id,
        scope: body.scope,
        audience: body.audience,
        claims: body.claims.unwrap_or_default(),
    };
    let issued = state.sessions.create(&tenant, request, &actor).await?;
    Ok(no_store(StatusCode::CREATED, TokenResponse::from(issued)))
}

/// The refresh grant, form-encoded (RFC 6749) or JSON. (No `Debug`: it holds a refresh
/// token.)
#[derive(Deserialize, utoipa::ToSchema)]
pub struct TokenRequest {
    #[schema(example = "refresh_token")]
    grant_type: Option<String>,
    refresh_token: Option<String>,
}

/// RFC 6749 error body, with the contract's `message` beside `error_description`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OAuthError {
    error: &'static str,
    error_description: String,
    message: String,
}

/// An OAuth error answer: its status and body.
struct OAuthFailure(StatusCode, &'static str, String);

impl IntoResponse for OAuthFailure {
    fn into_response(self) -> Response {
        let OAuthFailure(status, error, description) = self;
        no_store(status, OAuthError { error, message: description.clone(), error_description: description })
    }
}

fn oauth_error(status: StatusCode, error: &'static str, description: impl Into<String>) -> Response {
    OAuthFailure(status, error, description.into()).into_response()
}

fn parse_token_request(headers: &HeaderMap, body: &Bytes) -> Result<TokenRequest, OAuthFailure> {
    let parsed = match media_type(headers).unwrap_or_default().as_str() {
        FORM => serde_urlencoded::from_bytes::<TokenRequest>(body).ok(),
        media if is_json_type(media) => serde_json::from_slice::<TokenRequest>(body).ok(),
        _ => {
            return Err(OAuthFailure(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_request",
                "send the grant as application/x-www-form-urlencoded or application/json".into(),
            ));
        }
    };
    parsed.ok_or_else(|| {
        OAuthFailure(StatusCode::BAD_REQUEST, "invalid_request", "the request body could not be parsed".into())
    })
}

/// Exchange a refresh token for a new access token and a new refresh token (rotation).
/// Presenting a used refresh token again (after a short grace) revokes the session.
#[utoipa::path(post, path = "/a/{tenant}/token", tag = "issuing", params(("tenant" = String, Path)),
    request_body(content = TokenRequest, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, body = TokenResponse), (status = 400, body = OAuthError),
        (status = 401, body = OAuthError, description = "invalid_grant"), (status = 404, body = ErrorBody)))]
pub(crate) async fn token(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Result<RawBody, ApiError>,
) -> Response {
    match grant(&state, peer, &tenant, &headers, body).await {
        Ok(response) => response,
        Err(e) => oauth_shaped(e),
    }
}

async fn grant(
    state: &AppState,
    peer: SocketAddr,
    tenant: &str,
    headers: &HeaderMap,
    body: Result<RawBody, ApiError>,
) -> Result<Response, ApiError> {
    let tenant = tenant_id(tenant)?;
    let RawBody(body) = body?;
    let request = match parse_token_request(headers, &body) {
        Ok(r) => r,
        Err(failure) => return Ok(failure.into_response()),
    };
    match request.grant_type.as_deref() {
        Some("refresh_token") => {}
        Some(_) => {
            return Ok(oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only refresh_token is supported",
            ));
        }
        None => return Ok(oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "grant_type is required")),
    }
    let Some(refresh_token) = request.refresh_token.filter(|t| !t.is_empty()) else {
        return Ok(oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "refresh_token is required"));
    };
    let actor = Actor { name: "refresh".into(), ip: Some(peer.ip().to_string()) };
    match state.sessions.refresh(&tenant, &refresh_token, &actor).await {
        Ok(issued) => Ok(no_store(StatusCode::OK, TokenResponse::from(issued))),
        Err(RefreshError::Grant(e)) => Ok(oauth_error(StatusCode::UNAUTHORIZED, "invalid_grant", e.to_string())),
        Err(RefreshError::Service(e)) => Err(e.into()),
    }
}

/// Any error of the token endpoint in the shape its clients parse: the contract's code and
/// message, plus RFC 6749's `error_description` (and `Retry-After` where it applies).
pub(crate) fn oauth_shaped(e: ApiError) -> Response {
    let retry_after = e.retry_after;
    let mut response = OAuthFailure(e.code.status(), e.code.as_str(), e.message).into_response();
    if let Some(secs) = retry_after {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}
