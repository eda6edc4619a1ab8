//! Errors of the use cases, one variant per answer a caller can act on.

use crate::domain::{LifecycleError, PolicyError, TenantError};
use crate::keyset::SnapshotError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// What was asked for does not exist (`what`: "tenant", "key", ...).
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    /// The database cannot be reached; reads from memory still work, writes do not.
    #[error("the database is unavailable; try again shortly")]
    Unavailable,
    /// Anything else: logged in full where it happens, answered without detail.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl From<crate::crypto::RandomError> for ServiceError {
    fn from(e: crate::crypto::RandomError) -> Self {
        ServiceError::Internal(e.into())
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ServiceError::NotFound("tenant"),
            StoreError::Conflict(what) => ServiceError::Conflict(format!("{what} already exists")),
            StoreError::Stale(_) => ServiceError::Conflict("a concurrent change touched the same keys; retry".into()),
            e if e.is_unavailable() => ServiceError::Unavailable,
            e => ServiceError::Internal(e.into()),
        }
    }
}

impl From<LifecycleError> for ServiceError {
    fn from(e: LifecycleError) -> Self {
        match e {
            LifecycleError::UnknownKid => ServiceError::NotFound("key"),
            e => ServiceError::Conflict(e.to_string()),
        }
    }
}

impl From<PolicyError> for ServiceError {
    fn from(e: PolicyError) -> Self {
        ServiceError::Invalid(e.to_string())
    }
}

impl From<TenantError> for ServiceError {
    fn from(e: TenantError) -> Self {
        ServiceError::Invalid(e.to_string())
    }
}

impl From<SnapshotError> for ServiceError {
    fn from(e: SnapshotError) -> Self {
        ServiceError::Internal(e.into())
    }
}
