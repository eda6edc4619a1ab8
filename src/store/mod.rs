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
mod sql;
mod sqlite;

use async_trait::async_trait;
use time::OffsetDateTime;

use crate::crypto::{PublicJwk, Sealed};
use crate::domain::{Actor, AuditEvent, Key, Plan, Tenant, TenantId};
use crate::token::revocation::Revocation;

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

/// The role of an HS256 shared secret. At most one current and one previous per tenant
/// (database constraints); rotation moves current to previous and previous to retired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretState {
    Current,
    Previous,
    Retired,
}

impl SecretState {
    pub fn as_str(self) -> &'static str {
        match self {
            SecretState::Current => "current",
            SecretState::Previous => "previous",
            SecretState::Retired => "retired",
        }
    }

    pub fn parse(s: &str) -> Option<SecretState> {
        [SecretState::Current, SecretState::Previous, SecretState::Retired].into_iter().find(|v| v.as_str() == s)
    }
}

/// An HS256 secret as stored (sealed like private keys).
#[derive(Debug, Clone)]
pub struct StoredSecret {
    pub kid: String,
    pub state: SecretState,
    pub sealed: Sealed,
    pub created_at: OffsetDateTime,
    /// When a previous secret stops verifying; `None` for current, or "until removed".
    pub not_after: Option<OffsetDateTime>,
}

/// A tenant with its keys and secrets, read in one consistent snapshot of the database.
#[derive(Debug, Clone)]
pub struct LoadedTenant {
    pub tenant: Tenant,
    /// The change counter matching exactly this tenant, these keys and secrets.
    pub version: i64,
    pub keys: Vec<StoredKey>,
    /// Current and previous HS256 secrets (retired ones are not loaded).
    pub secrets: Vec<StoredSecret>,
}

/// A session as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRecord {
    pub id: String,
    pub tenant: TenantId,
    pub user_id: String,
    pub client_id: Option<String>,
    pub scope: Option<String>,
    pub audience: Option<String>,
    /// Custom claims (a JSON object) of every access token of the session.
    pub claims: serde_json::Value,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
}

/// A refresh token to store: its hash only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRefresh {
    pub hash: [u8; 32],
    pub issued_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

/// An access token to record in the ledger of what each key signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedAccess {
    pub jti: String,
    pub kid: String,
    pub issued_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

/// How long the revocation of a session detected as reused is kept: at least until
/// `at_least_until`, and `after_last_token` past the expiry of the last access token the
/// session was issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevocationKeep {
    pub at_least_until: OffsetDateTime,
    pub after_last_token: time::Duration,
}

/// What presenting a refresh token led to.
#[derive(Debug, Clone, PartialEq)]
pub enum RefreshOutcome {
    /// Exchanged: the new refresh token and access token were stored.
    Rotated(SessionRecord),
    /// Presented again after use, outside the grace: the session is now revoked, and the
    /// revocation kept until the given time.
    Reused(SessionRecord, OffsetDateTime),
    /// Unknown token, or its session expired or revoked: nothing changed.
    Rejected(RefreshRejection),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshRejection {
    Unknown,
    Expired,
    SessionRevoked,
}

/// A new HS256 secret to store.
#[derive(Debug, Clone)]
pub struct NewSecret {
    pub kid: String,
    pub sealed: Sealed,
}

/// The secrets after a rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRotation {
    pub current_kid: String,
    pub previous_kid: Option<String>,
}

/// What a housekeeping pass deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    pub refresh_tokens: u64,
    pub revocations: u64,
    pub access_tokens: u64,
}

/// Which table a sealed value lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealedKind {
    /// A signing key's private half.
    Key,
    /// An HS256 secret.
    Secret,
}

/// A sealed value and where it lives, for re-wrapping under a new master key.
#[derive(Debug, Clone)]
pub struct SealedItem {
    pub kind: SealedKind,
    pub tenant: TenantId,
    pub id: String,
    pub sealed: Sealed,
}

/// A tenant's change counters, for reconciliation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantVersion {
    pub id: TenantId,
    /// Keys, secrets and policy.
    pub version: i64,
    /// Revocations.
    pub revocations: i64,
}

/// Which sessions an admin revokes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionScope {
    All,
    User(String),
    Session(String),
}

/// One audit event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    pub id: i64,
    pub at: OffsetDateTime,
    pub tenant: Option<String>,
    pub actor: String,
    pub kind: String,
    pub kid: Option<String>,
    pub session_id: Option<String>,
    pub user_id: Option<String>,
    pub ip: Option<String>,
    /// JSON text, or `None`.
    pub detail: Option<String>,
}

/// What one key signed in a window, per session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUsage {
    pub tokens: i64,
    pub sessions: Vec<SessionUsage>,
    /// More sessions matched than were returned.
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionUsage {
    pub session_id: String,
    pub user_id: String,
    pub tokens: i64,
    pub last_exp: OffsetDateTime,
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

    /// Inserts or replaces `key`.
    async fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError>;

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

    /// Replaces issuer, audiences and policy, if the tenant is still at `expected_version`
    /// ([`StoreError::Stale`] otherwise; [`StoreError::NotFound`] if it does not exist).
    async fn update_tenant(
        &self,
        tenant: &Tenant,
        expected_version: i64,
        events: &[AuditEvent],
    ) -> Result<(), StoreError>;

    async fn get_tenant(&self, id: &TenantId) -> Result<Option<Tenant>, StoreError>;

    async fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError>;

    async fn tenant_versions(&self) -> Result<Vec<TenantVersion>, StoreError>;

    /// The tenant, its version and all its keys from one consistent read; `None` if absent.
    async fn load_tenant(&self, id: &TenantId) -> Result<Option<LoadedTenant>, StoreError>;

    /// All keys of a tenant, oldest first.
    async fn list_keys(&self, tenant: &TenantId) -> Result<Vec<StoredKey>, StoreError>;

    /// Applies a lifecycle plan at `now`: moves the tenant from `expected_version` to the
    /// next version, inserts the fresh key (if the plan has one) as staged, then applies
    /// each transition guarded by its expected `from` state, then writes the events.
    /// [`StoreError::Stale`] (and nothing written) if the tenant changed since the plan was
    /// computed or any key is not in its expected state.
    async fn apply_plan(
        &self,
        tenant: &TenantId,
        expected_version: i64,
        plan: &Plan,
        fresh: Option<&NewKey>,
        now: OffsetDateTime,
        events: &[AuditEvent],
    ) -> Result<(), StoreError>;

    /// Stores a new session with its first refresh token, records its first access token
    /// (advancing the key's `last_token_exp`), and writes the events. [`StoreError::Stale`]
    /// if `access.kid` is no longer the active key (nothing written).
    async fn create_session(
        &self,
        session: &SessionRecord,
        refresh: &NewRefresh,
        access: &IssuedAccess,
        events: &[AuditEvent],
    ) -> Result<(), StoreError>;

    /// Exchanges the refresh token whose hash is `presented` at `now`: if it is unused (or
    /// was used less than `grace` ago) and its session is live, stores `refresh` and records
    /// `access` in the same transaction, extending the session. An exchange within the
    /// grace supersedes the token's earlier exchanges. A token used longer than `grace` ago
    /// (or superseded) is reuse: the session is revoked (and logged for every replica as a
    /// session revocation kept as `keep` says), and `token.reuse_detected` and
    /// `session.revoked` are written by `actor`. [`StoreError::Stale`] if `access.kid` is
    /// no longer the active key (nothing written).
    #[allow(clippy::too_many_arguments)]
    async fn refresh_session(
        &self,
        tenant: &TenantId,
        presented: &[u8; 32],
        now: OffsetDateTime,
        grace: time::Duration,
        refresh: &NewRefresh,
        access: &IssuedAccess,
        actor: &Actor,
        keep: RevocationKeep,
    ) -> Result<RefreshOutcome, StoreError>;

    /// One HS256 secret of the tenant, in any state.
    async fn secret(&self, tenant: &TenantId, kid: &str) -> Result<Option<StoredSecret>, StoreError>;

    /// The current secret becomes previous (verifying until `previous_not_after`), the
    /// previous one retires, and `new` becomes current.
    async fn rotate_secret(
        &self,
        tenant: &TenantId,
        new: &NewSecret,
        previous_not_after: Option<OffsetDateTime>,
        now: OffsetDateTime,
        events: &[AuditEvent],
    ) -> Result<SecretRotation, StoreError>;

    /// Retires every current and previous secret and installs `current` and `previous`
    /// (seeding from JWT_SECRET / JWT_SECRET_OLD).
    async fn replace_secrets(
        &self,
        tenant: &TenantId,
        current: &NewSecret,
        previous: Option<(&NewSecret, Option<OffsetDateTime>)>,
        now: OffsetDateTime,
        events: &[AuditEvent],
    ) -> Result<(), StoreError>;

    /// Revokes the sessions in `scope` (refresh tokens stop working at once) and logs
    /// `revocation` for every replica, in one transaction. Returns how many sessions were
    /// newly revoked; [`StoreError::NotFound`] for an unknown session id.
    async fn revoke_sessions(
        &self,
        tenant: &TenantId,
        scope: &SessionScope,
        revocation: &Revocation,
        now: OffsetDateTime,
        events: &[AuditEvent],
    ) -> Result<u64, StoreError>;

    /// Logs the revocation of one access token (`Revocation::Token`).
    async fn revoke_token(
        &self,
        tenant: &TenantId,
        revocation: &Revocation,
        now: OffsetDateTime,
        events: &[AuditEvent],
    ) -> Result<(), StoreError>;

    /// The latest expiry of any access token issued to the sessions in `scope`.
    async fn latest_token_exp(
        &self,
        tenant: &TenantId,
        scope: &SessionScope,
    ) -> Result<Option<OffsetDateTime>, StoreError>;

    /// When the access token `jti` of this tenant expires, if Keyward issued it.
    async fn token_expiry(&self, tenant: &TenantId, jti: &str) -> Result<Option<OffsetDateTime>, StoreError>;

    /// The tenant's revocations that can still match a live token at `now`.
    async fn live_revocations(&self, tenant: &TenantId, now: OffsetDateTime) -> Result<Vec<Revocation>, StoreError>;

    /// Up to `limit` audit events of `tenant` with id > `after_id` and `from <= at < to`,
    /// in id order (the order they were written). Paging keeps exports in constant memory.
    async fn audit_page(
        &self,
        tenant: &TenantId,
        from: OffsetDateTime,
        to: OffsetDateTime,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<AuditRecord>, StoreError>;

    /// Tokens `kid` signed with `from <= iat < to`, grouped by session (at most `limit`).
    async fn key_usage(
        &self,
        tenant: &TenantId,
        kid: &str,
        from: OffsetDateTime,
        to: OffsetDateTime,
        limit: i64,
    ) -> Result<KeyUsage, StoreError>;

    /// Takes or renews the lease `name` for `holder` until `until` if it is free, expired at
    /// `now`, or already `holder`'s. Returns whether `holder` holds it.
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<bool, StoreError>;

    /// Deletes refresh tokens that expired before `expired_before`, revocations that can no
    /// longer match a token after it, and ledger entries of access tokens that expired before
    /// `ledger_before`. Sessions and audit events are kept.
    async fn purge(&self, expired_before: OffsetDateTime, ledger_before: OffsetDateTime) -> Result<Purged, StoreError>;

    /// Every sealed value (private keys and HS256 secrets).
    async fn sealed_items(&self) -> Result<Vec<SealedItem>, StoreError>;

    /// Replaces the wrapped data key of `item` by `new`, only if the row still holds the
    /// wrapping `item` was read with. Returns whether it did.
    async fn rewrap(&self, item: &SealedItem, new: &Sealed) -> Result<bool, StoreError>;

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
