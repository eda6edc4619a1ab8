//! `/a/{tenant}/admin/secrets/rotate`: zero-downtime rotation of the HS256 shared secret.

use axum::extract::{Extension, Path, State};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::extract::{OptionalJson, tenant_id};
use crate::domain::Actor;

pub fn router() -> Router<AppState> {
    Router::new().route("/a/{tenant}/admin/secrets/rotate", post(rotate))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateSecret {
    /// The new secret (UTF-8, at least 32 bytes); generated when absent.
    secret: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct SecretRotated {
    current_kid: String,
    previous_kid: Option<String>,
    /// Until when the previous secret still verifies (now + the tenant's overlap).
    #[serde(with = "time::serde::rfc3339::option")]
    previous_not_after: Option<OffsetDateTime>,
    /// Only when generated: shown once, never again.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

/// Rotate the HS256 secret: the current one becomes previous and keeps verifying until
/// `previous_not_after`.
#[utoipa::path(post, path = "/a/{tenant}/admin/secrets/rotate", tag = "admin", params(("tenant" = String, Path)),
    request_body(content = Option<RotateSecret>),
    responses((status = 200, body = SecretRotated), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("admin" = [])))]
pub(crate) async fn rotate(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
    OptionalJson(body): OptionalJson<RotateSecret>,
) -> Result<Json<SecretRotated>, ApiError> {
    let tenant = tenant_id(&tenant)?;
    let provided = body.and_then(|b| b.secret).map(Zeroizing::new);
    let rotated = state.keys.rotate_secret(&tenant, provided, &actor).await?;
    Ok(Json(SecretRotated {
        current_kid: rotated.current_kid,
        previous_kid: rotated.previous_kid,
        previous_not_after: rotated.previous_not_after,
        secret: rotated.generated.map(|s| s.to_string()),
    }))
}
