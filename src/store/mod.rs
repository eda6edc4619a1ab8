//! Storage: the source of truth for tenants, keys (private halves sealed) and the audit
//! trail. One trait, [`Store`]; one implementation per backend, picked once from the
//! database URL's scheme by [`connect`]. Nothing outside this module knows which backend
//! is in use.
//!
//! Every method is one complete operation: a state change and its audit events commit in
//! one transaction or not at all. Callers never hold a transaction across the trait.

mod error;
mod migrations;
mod postgres;
mod rows;
mod sqlite;

use async_trait::async_trait;
use time::OffsetDateTime;

use crate::crypto::{PublicJwk, Sealed};
use crate::domain::{AuditEvent, Key, Plan, Tenant, TenantId};

pub use error::StoreError;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// A key as stored: metadata, public half and sealed private half.
#[derive(Debug, Clone)]
pub struct StoredKey {
    pub meta: Key,
    pub public: PublicJwk,
    pub sealed: Sealed,
}

/// Key material generated for a plan's fresh key, ready to insert.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub public: PublicJwk,
    pub sealed: Sealed,
}

/// A tenant with its keys, read in one consistent snapshot of the database.
#[derive(Debug, Clone)]
pub struct LoadedTenant {
    pub tenant: Tenant,
    /// The change counter matching exactly this tenant and these keys.
    pub version: i64,
    pub keys: Vec<StoredKey>,
}

/// A tenant's change counter, for reconciliation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantVersion {
    pub id: TenantId,
    pub version: i64,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `"postgres"` or `"sqlite"`, for logs and metrics only: never branch on it.
    fn backend(&self) -> &'static str;

    /// Runs the backend's pending migrations.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// A cheap round trip, for readiness.
    async fn ping(&self) -> Result<(), StoreError>;

    async fn get_meta(&self, key: &str) -> Result<Option<String>, StoreError>;

    /// Inserts `key` unless present; returns whether this call inserted it.
    async fn insert_meta(&self, key: &str, value: &str) -> Result<bool, StoreError>;

    /// Creates the tenant and applies `plan` (which brings its first active key) at
    /// `now`. [`StoreError::Conflict`] if the id exists.
    async fn create_tenant(
        &self,
        tenant: &Tenant,
        plan: &Plan,
        fresh: Option<&NewKey>,
        now: OffsetDateTime,
        events: &[AuditEvent],
    ) -> Result<(), StoreError>;

    /// Replaces issuer, audiences and policy. [`StoreError::NotFound`] if absent.
    async fn update_tenant(&self, tenant: &Tenant, events: &[AuditEvent]) -> Result<(), StoreError>;

    async fn get_tenant(&self, id: &TenantId) -> Result<Option<Tenant>, StoreError>;

    async fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError>;

    async fn tenant_versions(&self) -> Result<Vec<TenantVersion>, StoreError>;

    /// The tenant, its version and all its keys from one consistent read; `None` if absent.
    async fn load_tenant(&self, id: &TenantId) -> Result<Option<LoadedTenant>, StoreError>;

    /// All keys of a tenant, oldest first.
    async fn list_keys(&self, tenant: &TenantId) -> Result<Vec<StoredKey>, StoreError>;

    /// Applies a lifecycle plan at `now`: inserts the fresh key (if the plan has one) as
    /// staged, then each transition guarded by its expected `from` state, then the events.
    /// [`StoreError::Stale`] (and nothing written) if any key is not in its expected state.
    async fn apply_plan(
        &self,
        tenant: &TenantId,
        plan: &Plan,
        fresh: Option<&NewKey>,
        now: OffsetDateTime,
        events: &[AuditEvent],
    ) -> Result<(), StoreError>;

    /// Appends audit events that accompany no state change (e.g. refused admin calls).
    async fn record_audit(&self, events: &[AuditEvent]) -> Result<(), StoreError>;
}

/// Which backend a URL selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    pub fn from_url(url: &str) -> Result<Backend, StoreError> {
        let scheme = url.split_once(':').map(|(s, _)| s).unwrap_or_default();
        match scheme {
            "postgres" | "postgresql" => Ok(Backend::Postgres),
            "sqlite" => Ok(Backend::Sqlite),
            _ => Err(StoreError::Config("DATABASE_URL must start with postgres:// or sqlite:".into())),
        }
    }

    /// Embedded mode is allowed development conveniences (generated master key and admin
    /// secret) that production mode refuses.
    pub fn is_embedded(self) -> bool {
        self == Backend::Sqlite
    }
}

/// Connects to the database the URL names and runs its migrations.
pub async fn connect(url: &str) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    let store: std::sync::Arc<dyn Store> = match Backend::from_url(url)? {
        Backend::Postgres => std::sync::Arc::new(PgStore::connect(url).await?),
        Backend::Sqlite => std::sync::Arc::new(SqliteStore::connect(url).await?),
    };
    store.migrate().await?;
    Ok(store)
}
