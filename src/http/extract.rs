//! Extractors that turn every malformed request into the contract's error shape: JSON
//! bodies (415 for another media type, 413 over the limit, 400 for bad JSON), optional
//! bodies, query strings and tenant path segments.

use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use bytes::Bytes;
use serde::de::DeserializeOwned;

use super::error::{ApiError, ErrorCode};
use crate::domain::TenantId;

fn from_json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => {
            ApiError::new(ErrorCode::UnsupportedMediaType, "send the body as application/json")
        }
        JsonRejection::BytesRejection(b) => from_bytes_rejection(b),
        other => ApiError::invalid(format!("invalid JSON body: {}", other.body_text())),
    }
}

pub(crate) fn from_bytes_rejection(rejection: BytesRejection) -> ApiError {
    if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(ErrorCode::PayloadTooLarge, "the request body is too large")
    } else {
        ApiError::invalid("the request body could not be read")
    }
}

/// A required JSON body.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let axum::Json(value) = axum::Json::<T>::from_request(req, state).await.map_err(from_json_rejection)?;
        Ok(ApiJson(value))
    }
}

/// A JSON body that may be absent: no body at all gives `None`; a body that is present
/// must be JSON with the JSON media type, like any other.
pub struct OptionalJson<T>(pub Option<T>);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let bytes =
            Bytes::from_request(Request::from_parts(parts.clone(), body), state).await.map_err(from_bytes_rejection)?;
        // An empty body is "no body", whatever Content-Type a client library added.
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(None));
        }
        let req = Request::from_parts(parts, axum::body::Body::from(bytes));
        let ApiJson(value) = ApiJson::<T>::from_request(req, state).await?;
        Ok(OptionalJson(Some(value)))
    }
}

/// A query string.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Query(value) = axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map_err(|e: QueryRejection| ApiError::invalid(format!("invalid query string: {}", e.body_text())))?;
        Ok(ApiQuery(value))
    }
}

/// The raw body, with the limit and read errors in the contract's shape (for handlers that
/// parse the body themselves).
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(req, state).await.map(RawBody).map_err(from_bytes_rejection)
    }
}

/// The media type of the body (`Content-Type` without parameters, lower case), if any.
pub fn media_type(headers: &axum::http::HeaderMap) -> Option<String> {
    let value = headers.get(axum::http::header::CONTENT_TYPE)?.to_str().ok()?;
    Some(value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
}

pub const FORM: &str = "application/x-www-form-urlencoded";

/// JSON, or a JSON-based type such as `application/merge-patch+json`.
pub fn is_json_type(media: &str) -> bool {
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

/// The `{tenant}` path parameter, percent-decoded exactly as handlers see it, for
/// middleware (which must not read the raw path: `/a/%61cme` is tenant `acme`).
pub async fn tenant_param(req: &mut Request) -> Option<String> {
    let (mut parts, body) = std::mem::take(req).into_parts();
    let params = axum::extract::RawPathParams::from_request_parts(&mut parts, &()).await.ok();
    *req = Request::from_parts(parts, body);
    params?.iter().find(|(name, _)| *name == "tenant").map(|(_, value)| value.to_owned())
}

/// Parses a tenant id from a path segment: 400 if it cannot be a tenant id at all.
pub fn tenant_id(raw: &str) -> Result<TenantId, ApiError> {
    TenantId::parse(raw).map_err(|e| ApiError::invalid(e.to_string()))
}
