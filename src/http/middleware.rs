//! Cross-cutting layers: per-route metrics, request spans, security headers, timeouts.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::{ApiError, ErrorCode};

/// Route template for labels and spans: never the raw path, which would put client input
/// (and unbounded cardinality) into metrics and logs. (`MatchedPath` clones as a pointer.)
pub fn route_of(req: &Request) -> Option<MatchedPath> {
    req.extensions().get::<MatchedPath>().cloned()
}

fn route_label(route: &Option<MatchedPath>) -> &str {
    route.as_ref().map_or("unmatched", MatchedPath::as_str)
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

pub async fn record_metrics(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = route_of(&req);
    let method = method_label(req.method());
    let started = Instant::now();
    let response = next.run(req).await;
    let route = route_label(&route);
    state.metrics.http_requests.with_label_values(&[route, method, response.status().as_str()]).inc();
    state.metrics.http_duration.with_label_values(&[route]).observe(started.elapsed().as_secs_f64());
    response
}

/// The request span: method, route template and request id; no URI, query or headers.
pub fn make_span(req: &Request) -> tracing::Span {
    let request_id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default();
    tracing::info_span!("request", method = %req.method(), route = %route_label(&route_of(req)), request_id = %request_id)
}

pub async fn not_found() -> Response {
    ApiError::new(ErrorCode::NotFound, "no such endpoint").into_response()
}

pub async fn method_not_allowed() -> Response {
    ApiError::new(ErrorCode::MethodNotAllowed, "this endpoint does not support that method").into_response()
}

pub async fn timed_out(err: tower::BoxError) -> Response {
    if err.is::<tower::timeout::error::Elapsed>() {
        ApiError { code: ErrorCode::Unavailable, message: "the request took too long".into(), retry_after: Some(1) }
            .into_response()
    } else {
        tracing::error!(error = %err, "middleware error");
        ApiError::internal().into_response()
    }
}
