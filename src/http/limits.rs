//! Rate-limit middleware: 429 `rate_limited` with `Retry-After` once an actor exceeds its
//! limit (see [`crate::ratelimit`]).

use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::auth::client_ip;
use super::error::{ApiError, ErrorCode};
use crate::domain::Actor;
use crate::ratelimit::Scope;

fn limited(wait: Duration) -> Response {
    ApiError {
        code: ErrorCode::RateLimited,
        message: "too many requests; retry later".into(),
        retry_after: Some(wait.as_secs_f64().ceil().max(1.0) as u64),
    }
    .into_response()
}

fn tenant_segment(path: &str) -> &str {
    path.strip_prefix("/a/").and_then(|rest| rest.split('/').next()).unwrap_or_default()
}

/// `/verify` and `/introspect`: per client IP, then per tenant.
pub async fn verify(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let now = Instant::now();
    let ip = client_ip(req.extensions()).unwrap_or_default();
    if let Err(wait) = state.limiter.check(Scope::VerifyIp, &ip, now) {
        return limited(wait);
    }
    // Only known tenants get a bucket: unknown ids must not grow the table.
    let tenant = tenant_segment(req.uri().path());
    if state.keys.registry().get(tenant).is_some()
        && let Err(wait) = state.limiter.check(Scope::VerifyTenant, tenant, now)
    {
        return limited(wait);
    }
    next.run(req).await
}

/// The refresh grant: per client IP.
pub async fn token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let ip = client_ip(req.extensions()).unwrap_or_default();
    if let Err(wait) = state.limiter.check(Scope::TokenIp, &ip, Instant::now()) {
        return limited(wait);
    }
    next.run(req).await
}

/// `/sessions`: per authenticated issuer (runs after the issuer check).
pub async fn sessions(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let issuer = req.extensions().get::<Actor>().map(|a| a.name.split_once(':').map_or(a.name.as_str(), |(_, fp)| fp));
    if let Some(issuer) = issuer
        && let Err(wait) = state.limiter.check(Scope::SessionsIssuer, issuer, Instant::now())
    {
        return limited(wait);
    }
    next.run(req).await
}
