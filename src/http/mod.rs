//! The HTTP API of API.md. Each resource module owns its `router()`; they are merged and
//! wrapped in the cross-cutting layers here, and nowhere else.

pub mod admin_audit;
pub mod admin_keys;
pub mod admin_revoke;
pub mod admin_secrets;
pub mod admin_tenants;
pub mod auth;
pub mod error;
pub mod extract;
pub mod jwks;
pub mod limits;
pub mod middleware;
pub mod openapi;
pub mod ops;
pub mod tokens;
pub mod verify;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::routing::get;
use tower::ServiceBuilder;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};

use crate::domain::TenantId;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::service::{AuditSink, KeyService, SessionService};
use crate::token::Verifier;
use auth::SecretSet;

/// Everything a handler may use. Cheap to clone (pointers).
#[derive(Clone)]
pub struct AppState {
    pub keys: Arc<KeyService>,
    pub sessions: Arc<SessionService>,
    pub verifier: Arc<Verifier>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub limiter: Arc<crate::ratelimit::RateLimiter>,
    pub admin_secrets: Arc<SecretSet>,
    pub issuer_secrets: Arc<SecretSet>,
    pub audit: AuditSink,
    pub default_tenant: TenantId,
    pub public_url: Arc<str>,
    /// `public, max-age=<jwks_max_age>`, built once.
    pub jwks_cache_control: HeaderValue,
}

/// Settings of the HTTP layer itself.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub allowed_origins: Vec<String>,
    /// Send HSTS (only meaningful when clients reach us over HTTPS).
    pub https: bool,
}

fn admin_cors(origins: &[String]) -> CorsLayer {
    let origins: Vec<HeaderValue> = origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST, Method::PATCH])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            HeaderName::from_static(auth::ADMIN_HEADER),
            HeaderName::from_static(auth::ISSUER_HEADER),
        ])
        .max_age(Duration::from_secs(600))
}

/// Relying parties may fetch keys from any origin (a browser app verifying tokens).
fn public_cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::any())
        .allow_methods([Method::GET, Method::HEAD])
        .expose_headers([header::ETAG, header::CACHE_CONTROL])
}

pub fn router(state: AppState, settings: &HttpSettings) -> Router {
    let admin = Router::new()
        .merge(admin_tenants::router())
        .merge(admin_keys::router())
        .merge(admin_secrets::router())
        .merge(admin_revoke::router())
        .merge(admin_audit::router())
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::require_admin))
        .layer(admin_cors(&settings.allowed_origins));
    // Route layers run outside-in in reverse order of addition: authentication first, then
    // the per-issuer limit.
    let issuing = tokens::issuer_router()
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), limits::sessions))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::require_issuer))
        .merge(tokens::public_router().route_layer(axum::middleware::from_fn_with_state(state.clone(), limits::token)))
        .layer(admin_cors(&settings.allowed_origins));
    let verification =
        verify::router().route_layer(axum::middleware::from_fn_with_state(state.clone(), limits::verify));
    let public = jwks::router().layer(public_cors());
    let ops = ops::router().route("/openapi.json", get(openapi::document));

    let request_id = HeaderName::from_static("x-request-id");
    let mut app = Router::new()
        .merge(public)
        .merge(admin)
        .merge(issuing)
        .merge(verification)
        .merge(ops)
        .fallback(middleware::not_found)
        .method_not_allowed_fallback(middleware::method_not_allowed);
    // Innermost first: the body limit and timeout, then metrics, ids and the request span;
    // the headers every response carries go on last (outermost), so that answers made by
    // the layers themselves (a timeout's 503) carry them too.
    app = app.layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
            .layer(TraceLayer::new_for_http().make_span_with(middleware::make_span).on_response(
                DefaultOnResponse::new().level(tracing::Level::INFO).latency_unit(tower_http::LatencyUnit::Micros),
            ))
            .layer(PropagateRequestIdLayer::new(request_id))
            .layer(axum::middleware::from_fn_with_state(state.clone(), middleware::record_metrics))
            .layer(HandleErrorLayer::new(middleware::timed_out))
            .timeout(settings.request_timeout)
            .layer(DefaultBodyLimit::max(settings.max_body_bytes)),
    );
    app =
        app.layer(SetResponseHeaderLayer::if_not_present(header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
    for (name, value) in [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CONTENT_SECURITY_POLICY, "default-src 'none'; frame-ancestors 'none'"),
    ] {
        app = app.layer(SetResponseHeaderLayer::overriding(name, HeaderValue::from_static(value)));
    }
    if settings.https {
        app = app.layer(SetResponseHeaderLayer::overriding(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=63072000; includeSubDomains"),
        ));
    }
    app.with_state(state)
}
