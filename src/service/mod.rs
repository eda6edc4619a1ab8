//! Use cases: each public method is one operation an admin, an issuer, a relying party or
//! a background loop performs, composed from the store, the key-set registry, the clock
//! and the crypto. HTTP handlers and CLI commands call these and nothing below them.

mod audit_sink;
mod error;
mod keys;
mod notify;
mod replication;
mod revocations;
mod rotation;
mod secrets;
mod sessions;
mod tenants;
mod views;

pub use audit_sink::AuditSink;
pub use error::ServiceError;
pub use keys::{KeyChange, KeyService, KeyServiceDeps, ServiceSettings};
pub use notify::Notifier;
pub use replication::{Reconciled, Replicator, prune_loop};
pub use rotation::{ROTATION_LEASE, Rewrapped, Rotator, Tick};
pub use secrets::{MIN_SECRET_BYTES, RotatedSecret};
pub use sessions::{
    GrantError, IssuedTokens, REFRESH_PREFIX, RefreshError, SessionRequest, SessionService, hash_refresh_token,
};
pub use tenants::NewTenant;
pub use views::KeyView;
