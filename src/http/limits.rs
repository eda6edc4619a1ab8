//! Rate-limit middleware: 429 `rate_limited` with `Retry-After` once an actor exceeds its
//! limit (see [`crate::ratelimit`]).

use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::auth::client_ip;
use super::error::{ApiError, ErrorCode};
use super::extract::tenant_param;
use crate::domain::Actor;
use crate::ratelimit::Scope;

fn limit_error(wait: Duration) -> ApiError {
    ApiError {
        code: ErrorCode::RateLimited,
        message: "too many requests; retry later".into(),
        retry_after: Some(wait.as_secs_f64().ceil().max(1.0) as u64),
    }
}

fn limited(wait: Duration) -> Response {
    limit_error(wait).into_response()
}

/// `/verify` and `/introspect`: per client IP, then per tenant.
pub async fn verify(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let now = Instant::now();
    let ip = client_ip(req.extensions()).unwrap_or_default();
    if let Err(wait) = state.limiter.check(Scope::VerifyIp, &ip, now) {
        return limited(wait);
    }
    // Only known tenants get a bucket: unknown ids must not grow the table.
    let tenant = tenant_param(&mut req).await.unwrap_or_default();
    if state.keys.registry().get(&tenant).is_some()
        && let Err(wait) = state.limiter.check(Scope::VerifyTenant, &tenant, now)
    {
        return limited(wait);
    }
    next.run(req).await
}

/// The refresh grant: per client IP (answered in the token endpoint's OAuth shape).
pub async fn token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let ip = client_ip(req.extensions()).unwrap_or_default();
    if let Err(wait) = state.limiter.check(Scope::TokenIp, &ip, Instant::now()) {
        return super::tokens::oauth_shaped(limit_error(wait));
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
