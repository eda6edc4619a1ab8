//! Issuing: sessions, access tokens signed by the tenant's active key, and rotating
//! refresh tokens with reuse detection.
//!
//! Refresh tokens are 256 random bits with a recognizable prefix (so secret scanners can
//! spot leaked ones), shown once and stored only as SHA-256 hashes.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::{KeyService, ServiceError};
use crate::crypto::{SigningKey, random_bytes};
use crate::domain::{Actor, AuditEvent, EventKind, Period, TenantId};
use crate::keyset::TenantKeys;
use crate::store::{
    IssuedAccess, NewRefresh, RefreshOutcome, RefreshRejection, RevocationKeep, SessionRecord, StoreError,
};
use crate::token::revocation::{Revocation, Revocations, new_session_id};
use crate::token::{claims, jws};

/// Prefix of every refresh token.
pub const REFRESH_PREFIX: &str = "kwrt_";

/// Custom claims larger than this (serialized) are refused; the signed token as a whole is
/// also checked against the 8 KiB verifiers accept.
const MAX_CUSTOM_CLAIMS_BYTES: usize = 4096;

/// What an issuing service asks for.
#[derive(Debug, Clone, Default)]
pub struct SessionRequest {
    pub user_id: String,
    pub client_id: Option<String>,
    pub scope: Option<String>,
    pub audience: Option<String>,
    pub claims: Map<String, Value>,
}

/// Tokens handed to the client: shown once.
#[derive(Clone)]
pub struct IssuedTokens {
    pub session_id: String,
    pub access_token: String,
    pub expires_in: u64,
    pub refresh_token: String,
}

impl std::fmt::Debug for IssuedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedTokens").field("session_id", &self.session_id).finish_non_exhaustive()
    }
}

/// Why a refresh grant failed (all are OAuth `invalid_grant`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("the refresh token is not valid")]
    Unknown,
    #[error("the refresh token or its session has expired")]
    Expired,
    #[error("the session has been revoked")]
    Revoked,
    #[error("the refresh token was already used; the session has been revoked")]
    Reused,
}

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error(transparent)]
    Grant(#[from] GrantError),
    #[error(transparent)]
    Service(#[from] ServiceError),
}

pub struct SessionService {
    pub(super) keys: Arc<KeyService>,
    pub(super) revocations: Arc<Revocations>,
    /// How long after its first use a refresh token may be presented again (a client
    /// retrying after a lost response) before it counts as reuse.
    reuse_grace: Period,
}

pub fn hash_refresh_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn check_field(name: &str, value: Option<&str>, max: usize) -> Result<(), ServiceError> {
    match value {
        Some(v) if v.is_empty() || v.len() > max || v.chars().any(char::is_control) => {
            Err(ServiceError::Invalid(format!("`{name}` must be 1 to {max} characters without control characters")))
        }
        _ => Ok(()),
    }
}

impl SessionService {
    pub fn new(keys: Arc<KeyService>, revocations: Arc<Revocations>, reuse_grace: Period) -> SessionService {
        SessionService { keys, revocations, reuse_grace }
    }

    pub(super) fn snapshot(&self, tenant: &TenantId) -> Result<Arc<TenantKeys>, ServiceError> {
        self.keys.registry().get(tenant.as_str()).ok_or(ServiceError::NotFound("tenant"))
    }

    pub async fn create(
        &self,
        tenant: &TenantId,
        req: SessionRequest,
        actor: &Actor,
    ) -> Result<IssuedTokens, ServiceError> {
        check_field("user_id", Some(&req.user_id), 256)?;
        check_field("client_id", req.client_id.as_deref(), 256)?;
        check_field("scope", req.scope.as_deref(), 2048)?;
        check_field("audience", req.audience.as_deref(), 256)?;
        if let Some(name) = claims::reserved_name(&req.claims) {
            return Err(ServiceError::Invalid(format!("custom claim `{name}` is reserved")));
        }
        if Value::Object(req.claims.clone()).to_string().len() > MAX_CUSTOM_CLAIMS_BYTES {
            return Err(ServiceError::Invalid(format!("custom claims exceed {MAX_CUSTOM_CLAIMS_BYTES} bytes")));
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let snapshot = self.snapshot(tenant)?;
            let policy = &snapshot.tenant.policy;
            let now = self.keys.now();
            let session = SessionRecord {
                id: new_session_id(now, random_bytes()?),
                tenant: tenant.clone(),
                user_id: req.user_id.clone(),
                client_id: req.client_id.clone(),
                scope: req.scope.clone(),
                audience: req.audience.clone(),
                claims: Value::Object(req.claims.clone()),
                created_at: now,
                expires_at: now + policy.refresh_token_ttl.as_duration(),
                revoked_at: None,
            };
            let (signer, access) = new_access(&snapshot, now)?;
            let access_token = sign_access(&snapshot, &signer, &session, &access)?;
            let (refresh_token, refresh) = self.new_refresh(now, policy.refresh_token_ttl)?;
            let mut event = AuditEvent::new(EventKind::SessionCreated, Some(tenant), actor, now)
                .kid(access.kid.clone())
                .detail(serde_json::json!({ "client_id": session.client_id, "jti": access.jti }));
            event.session_id = Some(session.id.clone());
            event.user_id = Some(session.user_id.clone());
            match self.keys.store.create_session(&session, &refresh, &access, &[event]).await {
                Ok(()) => {
                    return Ok(IssuedTokens {
                        session_id: session.id,
                        access_token,
                        expires_in: policy.access_token_ttl.as_secs(),
                        refresh_token,
                    });
                }
                Err(StoreError::Stale(_)) if attempt < 3 => self.catch_up(tenant).await?,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The key this replica signed with is no longer active in the database (a rotation or
    /// revocation it has not heard of yet): catch up before signing again.
    async fn catch_up(&self, tenant: &TenantId) -> Result<(), ServiceError> {
        tracing::info!(tenant = %tenant, "signing key was demoted elsewhere; reloading before signing again");
        self.keys.reload(tenant).await
    }

    /// The refresh grant: exchanges a refresh token for a new access token and a new
    /// refresh token. Reuse revokes the session on this replica before answering.
    pub async fn refresh(
        &self,
        tenant: &TenantId,
        presented: &str,
        actor: &Actor,
    ) -> Result<IssuedTokens, RefreshError> {
        let mut attempt = 0;
        let (snapshot, signer, access, refresh_token, outcome) = loop {
            attempt += 1;
            let snapshot = self.snapshot(tenant)?;
            let policy = &snapshot.tenant.policy;
            let now = self.keys.now();
            let (signer, access) = new_access(&snapshot, now)?;
            let (refresh_token, refresh) = self.new_refresh(now, policy.refresh_token_ttl)?;
            // If this turns out to be reuse, the session's tokens are refused until the last
            // one it was issued has expired.
            let keep = RevocationKeep {
                at_least_until: self.session_forget_after(now, policy.access_token_ttl),
                after_last_token: self.keys.settings().leeway.as_duration(),
            };
            let presented_hash = hash_refresh_token(presented);
            let grace = self.reuse_grace.as_duration();
            match self
                .keys
                .store
                .refresh_session(tenant, &presented_hash, now, grace, &refresh, &access, actor, keep)
                .await
            {
                Ok(outcome) => break (snapshot, signer, access, refresh_token, outcome),
                Err(StoreError::Stale(_)) if attempt < 3 => self.catch_up(tenant).await?,
                Err(e) => return Err(ServiceError::from(e).into()),
            }
        };
        let policy = &snapshot.tenant.policy;
        match outcome {
            RefreshOutcome::Rotated(session) => {
                let access_token = sign_access(&snapshot, &signer, &session, &access)?;
                Ok(IssuedTokens {
                    session_id: session.id,
                    access_token,
                    expires_in: policy.access_token_ttl.as_secs(),
                    refresh_token,
                })
            }
            RefreshOutcome::Reused(session, forget_after) => {
                self.applied(tenant, Revocation::Session { sid: session.id.clone(), forget_after }).await;
                self.keys.metrics.refresh_reuse.with_label_values(&[tenant.as_str()]).inc();
                tracing::warn!(tenant = %tenant, session = %session.id, "refresh token reuse detected; session revoked");
                Err(GrantError::Reused.into())
            }
            RefreshOutcome::Rejected(RefreshRejection::Unknown) => Err(GrantError::Unknown.into()),
            RefreshOutcome::Rejected(RefreshRejection::Expired) => Err(GrantError::Expired.into()),
            RefreshOutcome::Rejected(RefreshRejection::SessionRevoked) => Err(GrantError::Revoked.into()),
        }
    }

    /// At least this long a revoked session's tokens are refused: every token issued
    /// before now has expired by then (under the current lifetime).
    fn session_forget_after(&self, now: OffsetDateTime, access_ttl: Period) -> OffsetDateTime {
        now + access_ttl.as_duration() + self.keys.settings().leeway.as_duration()
    }

    fn new_refresh(&self, now: OffsetDateTime, ttl: Period) -> Result<(String, NewRefresh), ServiceError> {
        let token = format!("{REFRESH_PREFIX}{}", B64.encode(random_bytes::<32>()?));
        let record =
            NewRefresh { hash: hash_refresh_token(&token), issued_at: now, expires_at: now + ttl.as_duration() };
        Ok((token, record))
    }
}

/// The active key (cached key pair) and the ledger record of the token it will sign now.
fn new_access(snapshot: &TenantKeys, now: OffsetDateTime) -> Result<(Arc<SigningKey>, IssuedAccess), ServiceError> {
    let signer =
        snapshot.signer.clone().ok_or_else(|| ServiceError::Internal(anyhow::anyhow!("tenant has no active key")))?;
    let access = IssuedAccess {
        jti: B64.encode(random_bytes::<16>()?),
        kid: signer.kid().to_owned(),
        issued_at: now,
        expires_at: now + snapshot.tenant.policy.access_token_ttl.as_duration(),
    };
    Ok((signer, access))
}

fn sign_access(
    snapshot: &TenantKeys,
    signer: &SigningKey,
    session: &SessionRecord,
    access: &IssuedAccess,
) -> Result<String, ServiceError> {
    let claims = claims::access_token(&snapshot.tenant, session, &access.jti, access.issued_at, access.expires_at);
    let token = jws::sign(signer, "at+jwt", &claims).map_err(|e| ServiceError::Internal(e.into()))?;
    // Every verifier (this one included) calls a longer token malformed.
    if token.len() > jws::MAX_TOKEN_BYTES {
        return Err(ServiceError::Invalid(format!(
            "the access token would be {} bytes, over the {} verifiers accept: shorten claims, scope or audiences",
            token.len(),
            jws::MAX_TOKEN_BYTES
        )));
    }
    Ok(token)
}
