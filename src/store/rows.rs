//! Row decoding shared by both backends. Each backend implements [`Columns`] for its row
//! type (the only place timestamp representations differ); turning columns into domain
//! values is written once, here.

use time::OffsetDateTime;

use super::{
    AuditRecord, IssuedAccess, SealedItem, SealedKind, SecretState, SessionRecord, SessionUsage, StoreError, StoredKey,
    StoredSecret, TenantVersion,
};
use crate::crypto::{PublicJwk, Sealed};
use crate::domain::{Actor, AuditEvent, EventKind, Key, KeyState, Period, Policy, SigningAlg, Tenant, TenantId};
use crate::token::revocation::Revocation;

/// Typed column access over a backend's row.
pub(super) trait Columns {
    fn text(&self, col: &str) -> Result<String, StoreError>;
    fn text_opt(&self, col: &str) -> Result<Option<String>, StoreError>;
    fn int(&self, col: &str) -> Result<i64, StoreError>;
    fn bytes(&self, col: &str) -> Result<Vec<u8>, StoreError>;
    fn ts(&self, col: &str) -> Result<OffsetDateTime, StoreError>;
    fn ts_opt(&self, col: &str) -> Result<Option<OffsetDateTime>, StoreError>;
}

pub(super) fn corrupt(what: impl Into<String>) -> StoreError {
    StoreError::Corrupt(what.into())
}

pub(super) fn tenant_id(text: &str) -> Result<TenantId, StoreError> {
    TenantId::parse(text).map_err(|_| corrupt("tenant id"))
}

fn period(row: &impl Columns, col: &str) -> Result<Period, StoreError> {
    let secs = row.int(col)?;
    u64::try_from(secs).map(Period::from_secs).map_err(|_| corrupt(col))
}

pub(super) const TENANT_COLUMNS: &str = "id, issuer, CAST(audiences AS TEXT) AS audiences, signing_alg, rotation_period_s, overlap_s, \
     stage_lead_s, access_token_ttl_s, refresh_token_ttl_s, created_at, updated_at";

pub(super) fn tenant(row: &impl Columns) -> Result<Tenant, StoreError> {
    let audiences: Vec<String> = serde_json::from_str(&row.text("audiences")?).map_err(|_| corrupt("audiences"))?;
    Ok(Tenant {
        id: tenant_id(&row.text("id")?)?,
        issuer: row.text("issuer")?,
        audiences,
        policy: Policy {
            signing_alg: SigningAlg::parse(&row.text("signing_alg")?).ok_or_else(|| corrupt("signing_alg"))?,
            rotation_period: period(row, "rotation_period_s")?,
            overlap: period(row, "overlap_s")?,
            stage_lead: period(row, "stage_lead_s")?,
            access_token_ttl: period(row, "access_token_ttl_s")?,
            refresh_token_ttl: period(row, "refresh_token_ttl_s")?,
        },
        created_at: row.ts("created_at")?,
        updated_at: row.ts("updated_at")?,
    })
}

pub(super) fn tenant_version(row: &impl Columns) -> Result<TenantVersion, StoreError> {
    Ok(TenantVersion {
        id: tenant_id(&row.text("id")?)?,
        version: row.int("version")?,
        revocations: row.int("revocation_version")?,
    })
}

/// Column values of a revocation row: kind, subject, cutoff, forget_after.
pub(super) fn revocation_parts(r: &Revocation) -> (&'static str, &str, Option<OffsetDateTime>, OffsetDateTime) {
    match r {
        Revocation::Session { sid, forget_after } => ("session", sid, None, *forget_after),
        Revocation::Token { jti, forget_after } => ("token", jti, None, *forget_after),
        Revocation::User { user_id, cutoff, forget_after } => ("user", user_id, Some(*cutoff), *forget_after),
        Revocation::Tenant { cutoff, forget_after } => ("tenant", "", Some(*cutoff), *forget_after),
    }
}

pub(super) fn revocation(row: &impl Columns) -> Result<Revocation, StoreError> {
    let subject = row.text("subject")?;
    let forget_after = row.ts("forget_after")?;
    let cutoff = || row.ts_opt("cutoff")?.ok_or_else(|| corrupt("revocation cutoff"));
    Ok(match row.text("kind")?.as_str() {
        "session" => Revocation::Session { sid: subject, forget_after },
        "token" => Revocation::Token { jti: subject, forget_after },
        "user" => Revocation::User { user_id: subject, cutoff: cutoff()?, forget_after },
        "tenant" => Revocation::Tenant { cutoff: cutoff()?, forget_after },
        _ => return Err(corrupt("revocation kind")),
    })
}

pub(super) const AUDIT_COLUMNS: &str = "id, at, tenant_id, actor, type, kid, session_id, user_id, ip, detail";

pub(super) fn audit_record(row: &impl Columns) -> Result<AuditRecord, StoreError> {
    Ok(AuditRecord {
        id: row.int("id")?,
        at: row.ts("at")?,
        tenant: row.text_opt("tenant_id")?,
        actor: row.text("actor")?,
        kind: row.text("type")?,
        kid: row.text_opt("kid")?,
        session_id: row.text_opt("session_id")?,
        user_id: row.text_opt("user_id")?,
        ip: row.text_opt("ip")?,
        detail: row.text_opt("detail")?,
    })
}

pub(super) fn session_usage(row: &impl Columns) -> Result<SessionUsage, StoreError> {
    Ok(SessionUsage {
        session_id: row.text("session_id")?,
        user_id: row.text("user_id")?,
        tokens: row.int("tokens")?,
        last_exp: row.ts("last_exp")?,
    })
}

/// The audit events of an admin session revocation.
pub(super) fn session_revoked_event(
    tenant: &TenantId,
    scope: &super::SessionScope,
    count: u64,
    template: &AuditEvent,
) -> AuditEvent {
    let mut e = template.clone();
    e.kind = EventKind::SessionRevoked;
    e.tenant = Some(tenant.clone());
    let scope_name = match scope {
        super::SessionScope::All => "tenant",
        super::SessionScope::User(u) => {
            e.user_id = Some(u.clone());
            "user"
        }
        super::SessionScope::Session(s) => {
            e.session_id = Some(s.clone());
            "session"
        }
    };
    e.detail = serde_json::json!({ "scope": scope_name, "revoked": count });
    e
}

pub(super) const KEY_COLUMNS: &str = "kid, alg, state, public_jwk, kek_id, wrapped_dek, private_key, created_at, \
     activated_at, retired_at, expired_at, revoked_at, last_token_exp";

pub(super) fn stored_key(row: &impl Columns) -> Result<StoredKey, StoreError> {
    let kid = row.text("kid")?;
    let public: PublicJwk = serde_json::from_str(&row.text("public_jwk")?).map_err(|_| corrupt("public_jwk"))?;
    if public.kid != kid {
        return Err(corrupt(format!("public_jwk of key {kid} names another kid")));
    }
    Ok(StoredKey {
        meta: Key {
            alg: SigningAlg::parse(&row.text("alg")?).ok_or_else(|| corrupt("alg"))?,
            state: KeyState::parse(&row.text("state")?).ok_or_else(|| corrupt("state"))?,
            created_at: row.ts("created_at")?,
            activated_at: row.ts_opt("activated_at")?,
            retired_at: row.ts_opt("retired_at")?,
            expired_at: row.ts_opt("expired_at")?,
            revoked_at: row.ts_opt("revoked_at")?,
            last_token_exp: row.ts_opt("last_token_exp")?,
            kid,
        },
        public,
        sealed: Sealed {
            kek_id: row.text("kek_id")?,
            wrapped_dek: row.bytes("wrapped_dek")?,
            ciphertext: row.bytes("private_key")?,
        },
    })
}

/// The timestamp column a transition into `state` sets.
pub(super) fn stamp_column(state: KeyState) -> Option<&'static str> {
    match state {
        KeyState::Staged => None,
        KeyState::Active => Some("activated_at"),
        KeyState::Retired => Some("retired_at"),
        KeyState::Expired => Some("expired_at"),
        KeyState::Revoked => Some("revoked_at"),
    }
}

/// The guarded state change of one transition: `$1` tenant, `$2` kid, `$3` new state,
/// `$4` expected state, and `$5` the time, when the new state has a timestamp column.
pub(super) fn transition_sql(stamp: Option<&str>) -> String {
    let set_stamp = stamp.map(|c| format!(", {c} = $5")).unwrap_or_default();
    format!("UPDATE keys SET state = $3{set_stamp} WHERE tenant_id = $1 AND kid = $2 AND state = $4")
}

pub(super) fn audiences_json(tenant: &Tenant) -> String {
    // Serializing a Vec<String> cannot fail.
    serde_json::to_string(&tenant.audiences).unwrap_or_else(|_| "[]".into())
}

pub(super) fn jwk_json(jwk: &PublicJwk) -> String {
    serde_json::to_string(jwk).unwrap_or_default()
}

pub(super) fn period_i64(p: Period) -> i64 {
    i64::try_from(p.as_secs()).unwrap_or(i64::MAX)
}

pub(super) const SESSION_COLUMNS: &str =
    "id, tenant_id, user_id, client_id, scope, audience, claims, created_at, expires_at, revoked_at";

pub(super) fn session(row: &impl Columns) -> Result<SessionRecord, StoreError> {
    Ok(SessionRecord {
        id: row.text("id")?,
        tenant: tenant_id(&row.text("tenant_id")?)?,
        user_id: row.text("user_id")?,
        client_id: row.text_opt("client_id")?,
        scope: row.text_opt("scope")?,
        audience: row.text_opt("audience")?,
        claims: serde_json::from_str(&row.text("claims")?).map_err(|_| corrupt("session claims"))?,
        created_at: row.ts("created_at")?,
        expires_at: row.ts("expires_at")?,
        revoked_at: row.ts_opt("revoked_at")?,
    })
}

pub(super) const SECRET_COLUMNS: &str = "kid, state, kek_id, wrapped_dek, secret, created_at, not_after";

pub(super) fn stored_secret(row: &impl Columns) -> Result<StoredSecret, StoreError> {
    Ok(StoredSecret {
        kid: row.text("kid")?,
        state: SecretState::parse(&row.text("state")?).ok_or_else(|| corrupt("secret state"))?,
        sealed: Sealed {
            kek_id: row.text("kek_id")?,
            wrapped_dek: row.bytes("wrapped_dek")?,
            ciphertext: row.bytes("secret")?,
        },
        created_at: row.ts("created_at")?,
        not_after: row.ts_opt("not_after")?,
    })
}

/// The audit events of a detected refresh token reuse.
pub(super) fn reuse_events(session: &SessionRecord, actor: &Actor, now: OffsetDateTime) -> Vec<AuditEvent> {
    let event = |kind| {
        let mut e = AuditEvent::new(kind, Some(&session.tenant), actor, now);
        e.session_id = Some(session.id.clone());
        e.user_id = Some(session.user_id.clone());
        e
    };
    vec![
        event(EventKind::TokenReuseDetected).detail(serde_json::json!({ "client_id": session.client_id })),
        event(EventKind::SessionRevoked).detail(serde_json::json!({ "reason": "refresh_token_reuse" })),
    ]
}

pub(super) fn refreshed_event(session: &SessionRecord, actor: &Actor, access: &IssuedAccess) -> AuditEvent {
    let mut e = AuditEvent::new(EventKind::TokenRefreshed, Some(&session.tenant), actor, access.issued_at)
        .kid(access.kid.clone())
        .detail(serde_json::json!({ "jti": access.jti }));
    e.session_id = Some(session.id.clone());
    e.user_id = Some(session.user_id.clone());
    e
}

pub(super) fn sealed_item(row: &impl Columns, kind: SealedKind) -> Result<SealedItem, StoreError> {
    Ok(SealedItem {
        kind,
        tenant: tenant_id(&row.text("tenant_id")?)?,
        id: row.text("kid")?,
        sealed: Sealed {
            kek_id: row.text("kek_id")?,
            wrapped_dek: row.bytes("wrapped_dek")?,
            ciphertext: row.bytes("ciphertext")?,
        },
    })
}

/// What presenting a refresh token means, decided from its row and its session's: the one
/// rule both backends apply inside their transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RefreshDecision {
    SessionRevoked,
    /// A second holder: the session must be revoked.
    Reuse,
    Expired,
    /// Exchange it; `retry` when it was already exchanged moments ago (a client retrying
    /// after a lost response), whose earlier exchange is then superseded.
    Exchange {
        retry: bool,
    },
}

/// The facts about a presented refresh token the decision needs.
#[derive(Debug, Clone, Copy)]
pub(super) struct PresentedRefresh {
    pub session_revoked: bool,
    pub superseded: bool,
    pub used_at: Option<OffsetDateTime>,
    /// Whether a token from an earlier exchange of this one has itself been used (only
    /// asked when `used_at` is within the grace).
    pub child_used: bool,
    pub token_expires: OffsetDateTime,
    pub session_expires: OffsetDateTime,
}

impl PresentedRefresh {
    pub fn used_within(&self, now: OffsetDateTime, grace: time::Duration) -> bool {
        self.used_at.is_some_and(|used| now - used <= grace)
    }

    pub fn decide(&self, now: OffsetDateTime, grace: time::Duration) -> RefreshDecision {
        if self.session_revoked {
            return RefreshDecision::SessionRevoked;
        }
        let used_long_ago = self.used_at.is_some_and(|used| now - used > grace);
        if self.superseded || used_long_ago || (self.used_within(now, grace) && self.child_used) {
            return RefreshDecision::Reuse;
        }
        if self.token_expires <= now || self.session_expires <= now {
            return RefreshDecision::Expired;
        }
        RefreshDecision::Exchange { retry: self.used_at.is_some() }
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    const NOW: OffsetDateTime = datetime!(2026-01-01 12:00 UTC);
    const GRACE: time::Duration = time::Duration::seconds(10);

    fn fresh() -> PresentedRefresh {
        PresentedRefresh {
            session_revoked: false,
            superseded: false,
            used_at: None,
            child_used: false,
            token_expires: NOW + time::Duration::days(1),
            session_expires: NOW + time::Duration::days(1),
        }
    }

    #[test]
    fn the_refresh_decision_table() {
        let secs = time::Duration::seconds;
        let cases = [
            (fresh(), RefreshDecision::Exchange { retry: false }),
            (PresentedRefresh { used_at: Some(NOW - secs(3)), ..fresh() }, RefreshDecision::Exchange { retry: true }),
            (PresentedRefresh { used_at: Some(NOW - secs(11)), ..fresh() }, RefreshDecision::Reuse),
            (PresentedRefresh { used_at: Some(NOW - secs(3)), child_used: true, ..fresh() }, RefreshDecision::Reuse),
            (PresentedRefresh { superseded: true, ..fresh() }, RefreshDecision::Reuse),
            (PresentedRefresh { token_expires: NOW, ..fresh() }, RefreshDecision::Expired),
            (PresentedRefresh { session_expires: NOW - secs(1), ..fresh() }, RefreshDecision::Expired),
            (PresentedRefresh { session_revoked: true, superseded: true, ..fresh() }, RefreshDecision::SessionRevoked),
            (PresentedRefresh { used_at: Some(NOW - secs(11)), token_expires: NOW, ..fresh() }, RefreshDecision::Reuse),
        ];
        for (presented, expected) in cases {
            assert_eq!(presented.decide(NOW, GRACE), expected, "{presented:?}");
        }
    }
}
