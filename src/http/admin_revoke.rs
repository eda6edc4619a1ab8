//! `/a/{tenant}/admin/revoke/...`: revoke sessions (all, a user's, one) and single access
//! tokens, effective on every replica.

use axum::extract::{Extension, Path, State};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, OptionalJson, tenant_id};
use crate::domain::Actor;
use crate::store::SessionScope;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/a/{tenant}/admin/revoke/sessions", post(revoke_sessions))
        .route("/a/{tenant}/admin/revoke/tokens", post(revoke_token))
}

/// No body or `{}`: every session of the tenant; `user_id`: that user's; `session_id`: one.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeSessions {
    user_id: Option<String>,
    session_id: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SessionsRevoked {
    /// Sessions newly revoked by this call.
    revoked: u64,
}

/// Revoke sessions: their refresh tokens stop working and their access tokens fail with
/// `session_revoked` on every replica. Sessions created after the call are not affected.
#[utoipa::path(post, path = "/a/{tenant}/admin/revoke/sessions", tag = "admin", params(("tenant" = String, Path)),
    request_body(content = Option<RevokeSessions>),
    responses((status = 200, body = SessionsRevoked), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("admin" = [])))]
pub(crate) async fn revoke_sessions(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
    OptionalJson(body): OptionalJson<RevokeSessions>,
) -> Result<Json<SessionsRevoked>, ApiError> {
    let tenant = tenant_id(&tenant)?;
    let body = body.unwrap_or_default();
    let non_empty = |name: &str, v: String| {
        if v.is_empty() || v.len() > 256 {
            Err(ApiError::invalid(format!("`{name}` must be 1 to 256 characters")))
        } else {
            Ok(v)
        }
    };
    let scope = match (body.user_id, body.session_id) {
        (None, None) => SessionScope::All,
        (Some(user), None) => SessionScope::User(non_empty("user_id", user)?),
        (None, Some(sid)) => SessionScope::Session(non_empty("session_id", sid)?),
        (Some(_), Some(_)) => return Err(ApiError::invalid("give `user_id` or `session_id`, not both")),
    };
    let revoked = state.sessions.revoke_sessions(&tenant, scope, &actor).await?;
    Ok(Json(SessionsRevoked { revoked }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeToken {
    jti: String,
    /// For a token Keyward did not issue: its `exp` (Unix seconds), so the revocation lasts
    /// as long as the token. Ignored for Keyward's own tokens, whose expiry is known.
    exp: Option<i64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenRevoked {
    jti: String,
    /// The revocation is kept until then (the token's expiry plus leeway).
    #[serde(with = "time::serde::rfc3339")]
    until: OffsetDateTime,
}

/// Revoke one access token by `jti`: it fails with `token_revoked` on every replica until
/// it would have expired.
#[utoipa::path(post, path = "/a/{tenant}/admin/revoke/tokens", tag = "admin", params(("tenant" = String, Path)),
    request_body = RevokeToken,
    responses((status = 200, body = TokenRevoked), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("admin" = [])))]
pub(crate) async fn revoke_token(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
    ApiJson(body): ApiJson<RevokeToken>,
) -> Result<Json<TokenRevoked>, ApiError> {
    let tenant = tenant_id(&tenant)?;
    if body.jti.is_empty() || body.jti.len() > 256 {
        return Err(ApiError::invalid("`jti` must be 1 to 256 characters"));
    }
    let exp = body
        .exp
        .map(|e| OffsetDateTime::from_unix_timestamp(e).map_err(|_| ApiError::invalid("`exp` is out of range")))
        .transpose()?;
    let until = state.sessions.revoke_token(&tenant, &body.jti, exp, &actor).await?;
    Ok(Json(TokenRevoked { jti: body.jti, until }))
}
