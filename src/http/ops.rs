//! Endpoints for orchestrators and Prometheus: liveness, readiness, metrics.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::extract::ApiQuery;
use crate::domain::KeyState;
use crate::metrics::Metrics;

pub fn router() -> Router<AppState> {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).route("/metrics", get(metrics))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Status {
    status: &'static str,
}

/// Liveness: 200 while the process runs.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Status)))]
pub(crate) async fn healthz() -> Json<Status> {
    Json(Status { status: "ok" })
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
pub struct ReadyQuery {
    /// Also answer 503 when the database or Redis is down.
    strict: Option<bool>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Checks {
    #[schema(example = "up")]
    database: &'static str,
    #[schema(example = "disabled")]
    redis: &'static str,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `ok`, or `degraded` while a shared dependency is down (this replica still serves
    /// JWKS and verification from memory).
    #[schema(example = "ok")]
    status: &'static str,
    checks: Checks,
}

/// Readiness: 200 while key sets are loaded, even if the database or Redis is down
/// (`degraded`); 503 while loading or shutting down, or with `strict=true` also while a
/// dependency is down.
#[utoipa::path(get, path = "/readyz", tag = "operations", params(ReadyQuery),
    responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub(crate) async fn readyz(State(state): State<AppState>, ApiQuery(query): ApiQuery<ReadyQuery>) -> Response {
    use crate::health::DependencyState::{Disabled, Up};
    let database = state.health.database();
    let redis = state.health.redis();
    let dependencies_ok = database == Up && matches!(redis, Up | Disabled);
    let ready = state.health.is_ready();
    let status = match (ready, dependencies_ok) {
        (false, _) => "unavailable",
        (true, true) => "ok",
        (true, false) => "degraded",
    };
    let code = if !ready || (query.strict.unwrap_or(false) && !dependencies_ok) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body = Readiness { status, checks: Checks { database: database.as_str(), redis: redis.as_str() } };
    (code, Json(body)).into_response()
}

/// Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    refresh_key_gauges(&state);
    let mut response = state.metrics.render().into_response();
    if let Ok(v) = HeaderValue::from_str(&Metrics::content_type()) {
        response.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    response
}

/// Key gauges are derived from the snapshots at scrape time: always current, and no
/// bookkeeping on every change.
fn refresh_key_gauges(state: &AppState) {
    let now = state.keys.now();
    for snapshot in state.keys.registry().all() {
        let tenant = snapshot.tenant.id.as_str();
        for key_state in KeyState::ALL {
            let n = snapshot.keys.values().filter(|k| k.meta.state == key_state).count();
            state.metrics.keys.with_label_values(&[tenant, key_state.as_str()]).set(n as i64);
        }
        let active_since =
            snapshot.keys.values().find(|k| k.meta.state == KeyState::Active).and_then(|k| k.meta.activated_at);
        if let Some(at) = active_since {
            state.metrics.active_key_age.with_label_values(&[tenant]).set((now - at).whole_seconds());
        }
    }
}
