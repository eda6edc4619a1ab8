//! `/admin/tenants`: create, list, read and change tenants and their policy.

use axum::extract::{Extension, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, tenant_id};
use crate::domain::{Actor, Period, PolicyPatch, SigningAlg, Tenant};
use crate::service::NewTenant;

pub fn router() -> Router<AppState> {
    Router::new().route("/admin/tenants", get(list).post(create)).route("/admin/tenants/{id}", get(read).patch(update))
}

/// A tenant as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TenantBody {
    id: String,
    issuer: String,
    audiences: Vec<String>,
    #[schema(example = "ES256")]
    signing_alg: &'static str,
    #[schema(value_type = String, example = "90d")]
    rotation_period: Period,
    #[schema(value_type = String, example = "7d")]
    overlap: Period,
    #[schema(value_type = String, example = "2d")]
    stage_lead: Period,
    #[schema(value_type = String, example = "15m")]
    access_token_ttl: Period,
    #[schema(value_type = String, example = "30d")]
    refresh_token_ttl: Period,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    updated_at: OffsetDateTime,
}

impl From<Tenant> for TenantBody {
    fn from(t: Tenant) -> Self {
        TenantBody {
            id: t.id.to_string(),
            issuer: t.issuer,
            audiences: t.audiences,
            signing_alg: t.policy.signing_alg.as_str(),
            rotation_period: t.policy.rotation_period,
            overlap: t.policy.overlap,
            stage_lead: t.policy.stage_lead,
            access_token_ttl: t.policy.access_token_ttl,
            refresh_token_ttl: t.policy.refresh_token_ttl,
            created_at: t.created_at,
            updated_at: t.updated_at,
        }
    }
}

/// Policy fields; absent ones take the configured defaults (on create) or keep their
/// value (on PATCH).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantFields {
    /// Slug `[a-z0-9][a-z0-9-]{0,62}`: required on create, cannot change on PATCH.
    id: Option<String>,
    /// Defaults to `<public url>/a/<id>`.
    issuer: Option<String>,
    /// Defaults to `[<id>]`.
    audiences: Option<Vec<String>>,
    #[schema(value_type = Option<String>, example = "ES256")]
    signing_alg: Option<SigningAlg>,
    #[schema(value_type = Option<String>, example = "90d")]
    rotation_period: Option<Period>,
    #[schema(value_type = Option<String>, example = "7d")]
    overlap: Option<Period>,
    #[schema(value_type = Option<String>, example = "2d")]
    stage_lead: Option<Period>,
    #[schema(value_type = Option<String>, example = "15m")]
    access_token_ttl: Option<Period>,
    #[schema(value_type = Option<String>, example = "30d")]
    refresh_token_ttl: Option<Period>,
}

impl TenantFields {
    fn policy(&self) -> PolicyPatch {
        PolicyPatch {
            signing_alg: self.signing_alg,
            rotation_period: self.rotation_period,
            overlap: self.overlap,
            stage_lead: self.stage_lead,
            access_token_ttl: self.access_token_ttl,
            refresh_token_ttl: self.refresh_token_ttl,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TenantResponse {
    tenant: TenantBody,
    /// The kid currently signing.
    active_kid: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TenantList {
    tenants: Vec<TenantBody>,
}

/// Create a tenant with its first active key.
#[utoipa::path(post, path = "/admin/tenants", tag = "admin",
    request_body = TenantFields,
    responses((status = 201, body = TenantResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 409, body = ErrorBody)),
    security(("admin" = [])))]
pub(crate) async fn create(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    ApiJson(body): ApiJson<TenantFields>,
) -> Result<Response, ApiError> {
    let id = tenant_id(body.id.as_deref().ok_or_else(|| ApiError::invalid("`id` is required"))?)?;
    let new = NewTenant { id, issuer: body.issuer.clone(), audiences: body.audiences.clone(), policy: body.policy() };
    let (tenant, active_kid) = state.keys.create_tenant(new, &actor).await?;
    let location = format!("/admin/tenants/{}", tenant.id);
    let body = TenantResponse { tenant: tenant.into(), active_kid: Some(active_kid) };
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(body)).into_response())
}

/// List all tenants.
#[utoipa::path(get, path = "/admin/tenants", tag = "admin",
    responses((status = 200, body = TenantList), (status = 401, body = ErrorBody)), security(("admin" = [])))]
pub(crate) async fn list(State(state): State<AppState>) -> Result<Json<TenantList>, ApiError> {
    let tenants = state.keys.list_tenants().await?;
    Ok(Json(TenantList { tenants: tenants.into_iter().map(TenantBody::from).collect() }))
}

/// Read one tenant.
#[utoipa::path(get, path = "/admin/tenants/{id}", tag = "admin", params(("id" = String, Path)),
    responses((status = 200, body = TenantResponse), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("admin" = [])))]
pub(crate) async fn read(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TenantResponse>, ApiError> {
    let id = tenant_id(&id)?;
    let tenant = state.keys.get_tenant(&id).await?;
    let active_kid = state.keys.registry().get(id.as_str()).and_then(|s| s.active_kid().map(str::to_owned));
    Ok(Json(TenantResponse { tenant: tenant.into(), active_kid }))
}

/// Change issuer, audiences or policy fields; the result is validated like a new tenant.
#[utoipa::path(patch, path = "/admin/tenants/{id}", tag = "admin", params(("id" = String, Path)),
    request_body = TenantFields,
    responses((status = 200, body = TenantResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("admin" = [])))]
pub(crate) async fn update(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    ApiJson(fields): ApiJson<TenantFields>,
) -> Result<Json<TenantResponse>, ApiError> {
    let id = tenant_id(&id)?;
    if fields.id.as_deref().is_some_and(|new| new != id.as_str()) {
        return Err(ApiError::invalid("a tenant id cannot be changed"));
    }
    let tenant =
        state.keys.update_tenant(&id, fields.issuer.clone(), fields.audiences.clone(), fields.policy(), &actor).await?;
    let active_kid = state.keys.registry().get(id.as_str()).and_then(|s| s.active_kid().map(str::to_owned));
    Ok(Json(TenantResponse { tenant: tenant.into(), active_kid }))
}
