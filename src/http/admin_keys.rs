//! `/a/{tenant}/admin/keys`: list, stage, activate, rotate and revoke signing keys.

use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiQuery, OptionalJson, tenant_id};
use crate::domain::{Actor, KeyState, SigningAlg};
use crate::service::{KeyChange, KeyView};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/a/{tenant}/admin/keys", get(list).post(stage))
        .route("/a/{tenant}/admin/keys/rotate", post(rotate))
        .route("/a/{tenant}/admin/keys/revoke", post(revoke))
        .route("/a/{tenant}/admin/keys/{kid}", get(read))
        .route("/a/{tenant}/admin/keys/{kid}/activate", post(activate))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyList {
    keys: Vec<KeyView>,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StageKey {
    /// Defaults to the tenant's `signing_alg`.
    #[schema(value_type = Option<String>, example = "ES256")]
    alg: Option<SigningAlg>,
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ActivateQuery {
    /// Activate even if the key has been published for less than `stage_lead`.
    force: Option<bool>,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// Revoke the previous active key instead of retiring it (after a compromise).
    #[serde(default)]
    emergency: bool,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeKey {
    /// The key to revoke; absent: every active key.
    kid: Option<String>,
}

/// Which key signs now, and what became of the one before.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Activation {
    active_kid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retired_kid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    revoked_kid: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Revocation {
    /// Keys revoked by this call (already revoked keys are not repeated).
    revoked: Vec<String>,
    /// The key signing after the call.
    active_kid: Option<String>,
}

fn activation(changes: &[KeyChange], demoted_to: KeyState) -> Activation {
    let kid_to =
        |state: KeyState| changes.iter().rev().find(|c| c.to == state && c.from != c.to).map(|c| c.kid.clone());
    let demoted = changes.iter().find(|c| c.from == KeyState::Active && c.to == demoted_to).map(|c| c.kid.clone());
    let mut body = Activation { active_kid: kid_to(KeyState::Active), retired_kid: None, revoked_kid: None };
    match demoted_to {
        KeyState::Revoked => body.revoked_kid = demoted,
        _ => body.retired_kid = demoted,
    }
    body
}

/// All keys of a tenant with their lifecycle times.
#[utoipa::path(get, path = "/a/{tenant}/admin/keys", tag = "admin", params(("tenant" = String, Path)),
    responses((status = 200, body = KeyList), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("admin" = [])))]
pub(crate) async fn list(State(state): State<AppState>, Path(tenant): Path<String>) -> Result<Json<KeyList>, ApiError> {
    let tenant = tenant_id(&tenant)?;
    Ok(Json(KeyList { keys: state.keys.list_keys(&tenant).await? }))
}

/// One key.
#[utoipa::path(get, path = "/a/{tenant}/admin/keys/{kid}", tag = "admin",
    params(("tenant" = String, Path), ("kid" = String, Path)),
    responses((status = 200, body = KeyView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("admin" = [])))]
pub(crate) async fn read(
    State(state): State<AppState>,
    Path((tenant, kid)): Path<(String, String)>,
) -> Result<Json<KeyView>, ApiError> {
    let tenant = tenant_id(&tenant)?;
    let keys = state.keys.list_keys(&tenant).await?;
    keys.into_iter().find(|k| k.kid == kid).map(Json).ok_or_else(|| ApiError::not_found("key"))
}

/// Publish a new key (staged: in the JWKS, not signing).
#[utoipa::path(post, path = "/a/{tenant}/admin/keys", tag = "admin", params(("tenant" = String, Path)),
    request_body(content = Option<StageKey>),
    responses((status = 201, body = KeyView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("admin" = [])))]
pub(crate) async fn stage(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
    OptionalJson(body): OptionalJson<StageKey>,
) -> Result<(StatusCode, Json<KeyView>), ApiError> {
    let tenant = tenant_id(&tenant)?;
    let view = state.keys.stage(&tenant, body.unwrap_or_default().alg, &actor).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// Activate a staged key; the active key retires in the same transaction.
#[utoipa::path(post, path = "/a/{tenant}/admin/keys/{kid}/activate", tag = "admin",
    params(("tenant" = String, Path), ("kid" = String, Path), ActivateQuery),
    responses((status = 200, body = Activation), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "not staged, or published for less than stage_lead")),
    security(("admin" = [])))]
pub(crate) async fn activate(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((tenant, kid)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<ActivateQuery>,
) -> Result<Json<Activation>, ApiError> {
    let tenant = tenant_id(&tenant)?;
    let changes = state.keys.activate(&tenant, &kid, query.force.unwrap_or(false), &actor).await?;
    Ok(Json(activation(&changes, KeyState::Retired)))
}

/// Replace the active key now: with a staged key if there is one, else a fresh key.
#[utoipa::path(post, path = "/a/{tenant}/admin/keys/rotate", tag = "admin", params(("tenant" = String, Path)),
    request_body(content = Option<RotateKey>),
    responses((status = 200, body = Activation), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("admin" = [])))]
pub(crate) async fn rotate(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
    OptionalJson(body): OptionalJson<RotateKey>,
) -> Result<Json<Activation>, ApiError> {
    let tenant = tenant_id(&tenant)?;
    let emergency = body.unwrap_or_default().emergency;
    let changes = state.keys.rotate(&tenant, emergency, &actor).await?;
    let demoted_to = if emergency { KeyState::Revoked } else { KeyState::Retired };
    Ok(Json(activation(&changes, demoted_to)))
}

/// Revoke one key (any state), or with no body every active key; a replacement is
/// activated in the same call when the active key goes.
#[utoipa::path(post, path = "/a/{tenant}/admin/keys/revoke", tag = "admin", params(("tenant" = String, Path)),
    request_body(content = Option<RevokeKey>),
    responses((status = 200, body = Revocation), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("admin" = [])))]
pub(crate) async fn revoke(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
    OptionalJson(body): OptionalJson<RevokeKey>,
) -> Result<Json<Revocation>, ApiError> {
    let tenant = tenant_id(&tenant)?;
    let kid = body.and_then(|b| b.kid);
    let (changes, active_kid) = state.keys.revoke(&tenant, kid.as_deref(), &actor).await?;
    let revoked = changes.iter().filter(|c| c.to == KeyState::Revoked).map(|c| c.kid.clone()).collect();
    Ok(Json(Revocation { revoked, active_kid }))
}
