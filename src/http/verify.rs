//! `/verify` and `/introspect`: services asking whether a token is good. Public and read
//! from memory only.

use std::borrow::Cow;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::{ApiError, ErrorBody, ErrorCode};
use super::extract::{FORM, RawBody, is_json_type, media_type, tenant_id};
use crate::token::{Reason, VerifyError};

pub fn router() -> Router<AppState> {
    Router::new().route("/a/{tenant}/verify", post(verify)).route("/a/{tenant}/introspect", post(introspect))
}

/// `POST /verify` body. Both fields optional; the token may come as a Bearer header.
/// (No `Debug`: it holds a bearer token.)
#[derive(Deserialize, utoipa::ToSchema)]
pub struct VerifyRequest<'a> {
    #[serde(borrow, default)]
    #[schema(value_type = Option<String>)]
    token: Option<Cow<'a, str>>,
    /// Require this `aud` instead of any of the tenant's audiences.
    #[serde(borrow, default)]
    #[schema(value_type = Option<String>)]
    audience: Option<Cow<'a, str>>,
}

/// 200: `active` with the key that verified the token and its claims.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Verified {
    active: bool,
    kid: String,
    #[schema(example = "ES256")]
    alg: String,
    #[schema(value_type = Object)]
    claims: serde_json::Value,
}

/// 401: `{"active": false, "error": <reason>}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Rejected {
    active: bool,
    #[schema(example = "expired")]
    error: &'static str,
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn rejected(reason: Reason) -> Response {
    let challenge = format!("Bearer error=\"invalid_token\", error_description=\"{}\"", reason.as_str());
    let mut response =
        (StatusCode::UNAUTHORIZED, Json(Rejected { active: false, error: reason.as_str() })).into_response();
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    response
}

/// Verify a token: signature, key state, expiry, issuer, audience and revocation.
#[utoipa::path(post, path = "/a/{tenant}/verify", tag = "verification", params(("tenant" = String, Path)),
    request_body(content = Option<VerifyRequest>, description = "or send the token as `Authorization: Bearer`"),
    responses((status = 200, body = Verified), (status = 400, body = ErrorBody),
        (status = 401, body = Rejected, description = "reason in `error`; WWW-Authenticate: Bearer error=\"invalid_token\""),
        (status = 404, body = ErrorBody), (status = 415, body = ErrorBody)))]
pub(crate) async fn verify(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let tenant = tenant_id(&tenant)?;
    let request = if body.iter().all(u8::is_ascii_whitespace) {
        VerifyRequest { token: None, audience: None }
    } else if !media_type(&headers).as_deref().is_none_or(is_json_type) {
        return Err(ApiError::new(ErrorCode::UnsupportedMediaType, "send the body as application/json"));
    } else {
        serde_json::from_slice::<VerifyRequest<'_>>(&body)
            .map_err(|_| ApiError::invalid("the body must be a JSON object whose `token` and `audience` are strings"))?
    };
    let token = request.token.as_deref().or_else(|| bearer(&headers));
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Ok(rejected(Reason::Malformed));
    };
    match state.verifier.verify(tenant.as_str(), token, request.audience.as_deref()) {
        Ok(checked) => {
            // The payload is the JSON object that was signed; it is embedded as is.
            let mut out = Vec::with_capacity(checked.payload.len() + 128);
            out.extend_from_slice(b"{\"active\":true,\"kid\":");
            // Writing a string into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut out, &checked.kid);
            out.extend_from_slice(b",\"alg\":\"");
            out.extend_from_slice(checked.alg.as_bytes());
            out.extend_from_slice(b"\",\"claims\":");
            out.extend_from_slice(&checked.payload);
            out.push(b'}');
            Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], out).into_response())
        }
        Err(VerifyError::UnknownTenant) => Err(ApiError::not_found("tenant")),
        Err(VerifyError::Rejected(reason)) => Ok(rejected(reason)),
    }
}

/// RFC 7662 request: `token=...` (form); `token_type_hint` is accepted and ignored.
/// (No `Debug`: it holds a bearer token.)
#[derive(Deserialize, utoipa::ToSchema)]
pub struct IntrospectRequest {
    token: Option<String>,
    #[allow(dead_code)]
    token_type_hint: Option<String>,
}

/// RFC 7662 introspection: always 200, `{"active": false}` for any token that does not
/// verify, else the claims with `active`, `kid` and `token_type`.
#[utoipa::path(post, path = "/a/{tenant}/introspect", tag = "verification", params(("tenant" = String, Path)),
    request_body(content = IntrospectRequest, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "RFC 7662 response", content_type = "application/json"),
        (status = 404, body = ErrorBody), (status = 415, body = ErrorBody)))]
pub(crate) async fn introspect(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let tenant = tenant_id(&tenant)?;
    // No body at all is simply no token: inactive, like any other token that does not verify.
    let request = if body.iter().all(u8::is_ascii_whitespace) {
        IntrospectRequest { token: None, token_type_hint: None }
    } else if media_type(&headers).as_deref() != Some(FORM) {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "send the body as application/x-www-form-urlencoded",
        ));
    } else {
        serde_urlencoded::from_bytes(&body)
            .map_err(|_| ApiError::invalid("the body must be a form with a `token` field"))?
    };
    let inactive = || Json(serde_json::json!({ "active": false })).into_response();
    let Some(token) = request.token.filter(|t| !t.is_empty()) else {
        return Ok(inactive());
    };
    match state.verifier.verify(tenant.as_str(), &token, None) {
        Ok(checked) => {
            let mut body = match serde_json::from_slice::<serde_json::Value>(&checked.payload) {
                Ok(serde_json::Value::Object(claims)) => claims,
                _ => return Ok(inactive()),
            };
            body.insert("active".into(), true.into());
            body.insert("kid".into(), checked.kid.clone().into());
            body.insert("token_type".into(), "access_token".into());
            Ok(Json(body).into_response())
        }
        Err(VerifyError::UnknownTenant) => Err(ApiError::not_found("tenant")),
        Err(VerifyError::Rejected(_)) => Ok(inactive()),
    }
}
