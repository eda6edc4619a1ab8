//! What relying parties fetch: the JWKS and the discovery document. Served from the
//! in-memory snapshot: a map lookup and a clone of pre-serialized bytes, no I/O.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::extract::tenant_id;
use crate::metrics::UNKNOWN_TENANT;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/.well-known/jwks.json", get(default_jwks))
        .route("/.well-known/openid-configuration", get(default_discovery))
        .route("/a/{tenant}/.well-known/jwks.json", get(jwks))
        .route("/a/{tenant}/.well-known/openid-configuration", get(discovery))
}

/// The JWKS of the configured default tenant.
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "relying parties",
    responses((status = 200, description = "JWK Set", content_type = "application/json"), (status = 304, description = "Not modified")))]
pub(crate) async fn default_jwks(State(state): State<AppState>, headers: HeaderMap) -> Response {
    serve_jwks(&state, state.default_tenant.as_str(), &headers)
}

/// A tenant's JWKS: every staged, active and in-overlap retired key; never a revoked or
/// expired key, a private parameter or a symmetric key.
#[utoipa::path(get, path = "/a/{tenant}/.well-known/jwks.json", tag = "relying parties",
    params(("tenant" = String, Path, description = "Tenant id")),
    responses((status = 200, description = "JWK Set", content_type = "application/json"),
        (status = 304, description = "Not modified (If-None-Match matched the ETag)"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn jwks(State(state): State<AppState>, Path(tenant): Path<String>, headers: HeaderMap) -> Response {
    if let Err(e) = tenant_id(&tenant) {
        return e.into_response();
    }
    serve_jwks(&state, &tenant, &headers)
}

fn serve_jwks(state: &AppState, tenant: &str, headers: &HeaderMap) -> Response {
    let Some(snapshot) = state.keys.registry().get(tenant) else {
        state.metrics.jwks_requests.with_label_values(&[UNKNOWN_TENANT, "404"]).inc();
        return ApiError::not_found("tenant").into_response();
    };
    let etag = &snapshot.jwks.etag;
    let not_modified =
        headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|v| etag_matches(v, etag));
    let status = if not_modified { StatusCode::NOT_MODIFIED } else { StatusCode::OK };
    state.metrics.jwks_requests.with_label_values(&[tenant, status.as_str()]).inc();
    let mut response = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = snapshot.jwks.body.clone().into_response();
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        r
    };
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, state.jwks_cache_control.clone());
    h.insert(header::ETAG, snapshot.jwks.etag_header.clone());
    response
}

/// RFC 9110 If-None-Match: a list of entity tags or `*`, compared weakly.
fn etag_matches(header: &str, etag: &str) -> bool {
    let bare = etag.trim_start_matches("W/");
    header.split(',').map(str::trim).any(|t| t == "*" || t.trim_start_matches("W/") == bare)
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Discovery {
    issuer: String,
    jwks_uri: String,
    token_endpoint: String,
    introspection_endpoint: String,
    verification_endpoint: String,
    id_token_signing_alg_values_supported: Vec<&'static str>,
    token_endpoint_auth_methods_supported: Vec<&'static str>,
    introspection_endpoint_auth_methods_supported: Vec<&'static str>,
    grant_types_supported: Vec<&'static str>,
    response_types_supported: Vec<&'static str>,
    subject_types_supported: Vec<&'static str>,
}

/// Discovery for the default tenant.
#[utoipa::path(get, path = "/.well-known/openid-configuration", tag = "relying parties",
    responses((status = 200, body = Discovery)))]
pub(crate) async fn default_discovery(State(state): State<AppState>) -> Response {
    let tenant = state.default_tenant.to_string();
    serve_discovery(&state, &tenant)
}

/// Discovery document: issuer and where the JWKS, token and introspection endpoints are.
#[utoipa::path(get, path = "/a/{tenant}/.well-known/openid-configuration", tag = "relying parties",
    params(("tenant" = String, Path, description = "Tenant id")),
    responses((status = 200, body = Discovery), (status = 404, body = ErrorBody)))]
pub(crate) async fn discovery(State(state): State<AppState>, Path(tenant): Path<String>) -> Response {
    if let Err(e) = tenant_id(&tenant) {
        return e.into_response();
    }
    serve_discovery(&state, &tenant)
}

fn serve_discovery(state: &AppState, tenant: &str) -> Response {
    let Some(snapshot) = state.keys.registry().get(tenant) else {
        return ApiError::not_found("tenant").into_response();
    };
    let base = format!("{}/a/{tenant}", state.public_url);
    let mut algs: Vec<&'static str> =
        snapshot.keys.values().filter(|k| k.meta.state.is_published()).map(|k| k.meta.alg.as_str()).collect();
    algs.sort_unstable();
    algs.dedup();
    let doc = Discovery {
        issuer: snapshot.tenant.issuer.clone(),
        jwks_uri: format!("{base}/.well-known/jwks.json"),
        token_endpoint: format!("{base}/token"),
        introspection_endpoint: format!("{base}/introspect"),
        verification_endpoint: format!("{base}/verify"),
        id_token_signing_alg_values_supported: algs,
        token_endpoint_auth_methods_supported: vec!["none"],
        introspection_endpoint_auth_methods_supported: vec!["none"],
        grant_types_supported: vec!["refresh_token"],
        response_types_supported: vec!["token"],
        subject_types_supported: vec!["public"],
    };
    let mut response = Json(doc).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, state.jwks_cache_control.clone());
    response
}

#[cfg(test)]
mod tests {
    use super::etag_matches;

    #[test]
    fn if_none_match_accepts_lists_weak_tags_and_star() {
        assert!(etag_matches("\"abc\"", "\"abc\""));
        assert!(etag_matches("\"x\", \"abc\"", "\"abc\""));
        assert!(etag_matches("W/\"abc\"", "\"abc\""));
        assert!(etag_matches("*", "\"abc\""));
        assert!(!etag_matches("\"abd\"", "\"abc\""));
        assert!(!etag_matches("abc", "\"abc\""));
    }
}
