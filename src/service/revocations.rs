//! Revoking sessions and single access tokens: committed to the database first (so no
//! revocation that was answered 200 can be lost), applied here before answering
//! (read-your-writes), then announced to every other replica.

use time::OffsetDateTime;

use super::{ServiceError, SessionService};
use crate::domain::{Actor, AuditEvent, EventKind, TenantId};
use crate::store::{SessionScope, StoreError};
use crate::token::revocation::Revocation;

impl SessionService {
    /// Revokes every session of the tenant, of one user, or one session. Returns how many
    /// sessions were newly revoked. Sessions created after this returns are not affected.
    pub async fn revoke_sessions(
        &self,
        tenant: &TenantId,
        scope: SessionScope,
        actor: &Actor,
    ) -> Result<u64, ServiceError> {
        let snapshot = self.snapshot(tenant)?;
        let policy = &snapshot.tenant.policy;
        let now = self.keys.now();
        // Kept until no token it can match is still valid: past the latest expiry of any
        // token Keyward issued to these sessions (the access-token lifetime may have been
        // shortened since), and, for cutoffs, which also catch tokens Keyward did not issue
        // (legacy HS256), for at least the refresh-token lifetime.
        let floor = match &scope {
            SessionScope::Session(_) => now + policy.access_token_ttl.as_duration(),
            _ => now + policy.access_token_ttl.max(policy.refresh_token_ttl).as_duration(),
        };
        let last_issued = self.keys.store.latest_token_exp(tenant, &scope).await?;
        let forget_after = last_issued.map_or(floor, |last| floor.max(last)) + self.leeway();
        let revocation = match &scope {
            SessionScope::All => Revocation::Tenant { cutoff: now, forget_after },
            SessionScope::User(user_id) => Revocation::User { user_id: user_id.clone(), cutoff: now, forget_after },
            SessionScope::Session(sid) => Revocation::Session { sid: sid.clone(), forget_after },
        };
        let template = AuditEvent::new(EventKind::SessionRevoked, Some(tenant), actor, now);
        let revoked = self.keys.store.revoke_sessions(tenant, &scope, &revocation, now, &[template]).await.map_err(
            |e| match e {
                StoreError::NotFound => ServiceError::NotFound("session"),
                e => e.into(),
            },
        )?;
        self.applied(tenant, revocation).await;
        Ok(revoked)
    }

    /// Revokes one access token until it would have expired. The expiry comes from the
    /// ledger of issued tokens; for a token Keyward did not issue, the caller's `exp`, else
    /// the tenant's access-token lifetime from now.
    pub async fn revoke_token(
        &self,
        tenant: &TenantId,
        jti: &str,
        exp: Option<OffsetDateTime>,
        actor: &Actor,
    ) -> Result<OffsetDateTime, ServiceError> {
        let snapshot = self.snapshot(tenant)?;
        let now = self.keys.now();
        let expires = match self.keys.store.token_expiry(tenant, jti).await? {
            Some(known) => known,
            None => exp.unwrap_or(now + snapshot.tenant.policy.access_token_ttl.as_duration()),
        };
        let forget_after = expires.max(now) + self.leeway();
        let revocation = Revocation::Token { jti: jti.to_owned(), forget_after };
        let event = AuditEvent::new(EventKind::TokenRevoked, Some(tenant), actor, now)
            .detail(serde_json::json!({ "jti": jti, "until": forget_after.unix_timestamp() }));
        self.keys.store.revoke_token(tenant, &revocation, now, &[event]).await?;
        self.applied(tenant, revocation).await;
        Ok(forget_after)
    }

    /// After the commit: apply here, count, and tell the other replicas.
    pub(super) async fn applied(&self, tenant: &TenantId, revocation: Revocation) {
        self.revocations.apply(tenant, revocation.clone());
        self.keys.metrics.revocations.with_label_values(&[tenant.as_str(), revocation.kind()]).inc();
        self.keys.notifier.revoked(tenant, &revocation, self.keys.now()).await;
    }

    fn leeway(&self) -> time::Duration {
        self.keys.settings().leeway.as_duration()
    }
}
