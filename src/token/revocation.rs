//! This replica's revocation state: what the hot path checks after the signature.
//!
//! - revoked session ids, kept until the last access token of the session has expired;
//! - revoked token ids (`jti`), kept until the token would have expired;
//! - per-user and per-tenant cutoffs: a session started before the cutoff is revoked
//!   (its start is read from the session id, or `iat` for tokens without one), which is
//!   how "revoke all of a user's sessions" costs one entry however many sessions there are
//!   and leaves sessions created afterwards alone.
//!
//! Every entry carries the time after which it can no longer match a live token, and
//! [`Revocations::prune`] forgets it then, so memory stays bounded by what is revoked
//! *and* still matters.

use std::collections::HashMap;
use std::sync::RwLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use time::OffsetDateTime;

use super::jws::UnverifiedClaims;
use super::reason::Reason;
use crate::domain::TenantId;

#[derive(Debug, Default, Clone)]
struct TenantRevocations {
    /// sid → forget after.
    sessions: HashMap<String, OffsetDateTime>,
    /// jti → forget after.
    tokens: HashMap<String, OffsetDateTime>,
    /// user id → (cutoff, forget after).
    users: HashMap<String, (OffsetDateTime, OffsetDateTime)>,
    /// Tenant-wide (cutoff, forget after).
    everyone: Option<(OffsetDateTime, OffsetDateTime)>,
}

impl TenantRevocations {
    fn len(&self) -> usize {
        self.sessions.len() + self.tokens.len() + self.users.len() + usize::from(self.everyone.is_some())
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A revocation, as applied to this replica's state (and sent to the others).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Revocation {
    Session {
        sid: String,
        #[serde(with = "time::serde::rfc3339")]
        forget_after: OffsetDateTime,
    },
    Token {
        jti: String,
        #[serde(with = "time::serde::rfc3339")]
        forget_after: OffsetDateTime,
    },
    User {
        user_id: String,
        #[serde(with = "time::serde::rfc3339")]
        cutoff: OffsetDateTime,
        #[serde(with = "time::serde::rfc3339")]
        forget_after: OffsetDateTime,
    },
    Tenant {
        #[serde(with = "time::serde::rfc3339")]
        cutoff: OffsetDateTime,
        #[serde(with = "time::serde::rfc3339")]
        forget_after: OffsetDateTime,
    },
}

impl Revocation {
    /// The metrics label (`keyward_revocations_total{kind}`).
    pub fn kind(&self) -> &'static str {
        match self {
            Revocation::Session { .. } => "session",
            Revocation::Token { .. } => "token",
            Revocation::User { .. } => "user",
            Revocation::Tenant { .. } => "tenant",
        }
    }
}

#[derive(Debug, Default)]
pub struct Revocations {
    tenants: RwLock<HashMap<TenantId, TenantRevocations>>,
}

/// When the session a token belongs to started: from a Keyward session id (µs precise),
/// but never later than the token's `iat` allows — a session cannot start after its token
/// was issued, and a foreign `sid` that happens to decode to a future time must not escape
/// a cutoff. `iat` has whole seconds, so it bounds the start at `iat + 1 s`.
fn session_start(claims: &UnverifiedClaims) -> Option<OffsetDateTime> {
    let from_sid = claims.sid.as_deref().and_then(session_created_at);
    let iat = claims.iat.and_then(|iat| OffsetDateTime::from_unix_timestamp_nanos((iat * 1e9) as i128).ok());
    match (from_sid, iat) {
        (Some(sid), Some(iat)) => Some(sid.min(iat + time::Duration::SECOND)),
        (Some(sid), None) => Some(sid),
        (None, iat) => iat,
    }
}

/// A new session id: 8 bytes of creation time (µs since the epoch, big-endian) and 8
/// random bytes, base64url. Sortable, unguessable, and carrying its own start time so
/// cutoffs can be checked without a lookup.
pub fn new_session_id(now: OffsetDateTime, random: [u8; 8]) -> String {
    let micros = (now.unix_timestamp_nanos() / 1_000) as u64;
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&micros.to_be_bytes());
    raw[8..].copy_from_slice(&random);
    B64.encode(raw)
}

/// The creation time inside a session id made by [`new_session_id`].
pub fn session_created_at(sid: &str) -> Option<OffsetDateTime> {
    if sid.len() != 22 {
        return None;
    }
    let raw = B64.decode(sid).ok()?;
    let micros = u64::from_be_bytes(raw.get(..8)?.try_into().ok()?);
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000).ok()
}

impl Revocations {
    /// `Ok` unless the token's session or the token itself is revoked.
    pub fn check(&self, tenant: &str, claims: &UnverifiedClaims) -> Result<(), Reason> {
        let all = self.tenants.read().unwrap_or_else(|e| e.into_inner());
        let Some(t) = all.get(tenant) else {
            return Ok(());
        };
        if claims.sid.as_ref().is_some_and(|sid| t.sessions.contains_key(sid)) {
            return Err(Reason::SessionRevoked);
        }
        let user_cutoff = claims.sub.as_ref().and_then(|sub| t.users.get(sub)).map(|(cutoff, _)| *cutoff);
        let cutoff = match (user_cutoff, t.everyone.map(|(c, _)| c)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        if let Some(cutoff) = cutoff {
            // A token whose start cannot be told is treated as started before the cutoff.
            if session_start(claims).is_none_or(|started| started < cutoff) {
                return Err(Reason::SessionRevoked);
            }
        }
        if claims.jti.as_ref().is_some_and(|jti| t.tokens.contains_key(jti)) {
            return Err(Reason::TokenRevoked);
        }
        Ok(())
    }

    pub fn apply(&self, tenant: &TenantId, revocation: Revocation) {
        let mut all = self.tenants.write().unwrap_or_else(|e| e.into_inner());
        let t = all.entry(tenant.clone()).or_default();
        let later = |a: OffsetDateTime, b: OffsetDateTime| a.max(b);
        match revocation {
            Revocation::Session { sid, forget_after } => {
                let e = t.sessions.entry(sid).or_insert(forget_after);
                *e = later(*e, forget_after);
            }
            Revocation::Token { jti, forget_after } => {
                let e = t.tokens.entry(jti).or_insert(forget_after);
                *e = later(*e, forget_after);
            }
            Revocation::User { user_id, cutoff, forget_after } => {
                let e = t.users.entry(user_id).or_insert((cutoff, forget_after));
                *e = (later(e.0, cutoff), later(e.1, forget_after));
            }
            Revocation::Tenant { cutoff, forget_after } => {
                let e = t.everyone.get_or_insert((cutoff, forget_after));
                *e = (later(e.0, cutoff), later(e.1, forget_after));
            }
        }
    }

    /// Forgets entries that can no longer match a live token. One tenant at a time under
    /// the write lock, so verification (which reads) is never stalled for a full scan.
    pub fn prune(&self, now: OffsetDateTime) -> usize {
        let tenants: Vec<TenantId> = self.tenants.read().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
        let mut removed = 0;
        for tenant in tenants {
            let mut all = self.tenants.write().unwrap_or_else(|e| e.into_inner());
            let Some(t) = all.get_mut(&tenant) else { continue };
            let before = t.len();
            t.sessions.retain(|_, until| *until > now);
            t.tokens.retain(|_, until| *until > now);
            t.users.retain(|_, (_, until)| *until > now);
            if t.everyone.is_some_and(|(_, until)| until <= now) {
                t.everyone = None;
            }
            removed += before - t.len();
            if t.is_empty() {
                all.remove(&tenant);
            }
        }
        removed
    }

    /// Entries held, for metrics and tests.
    pub fn len(&self) -> usize {
        let all = self.tenants.read().unwrap_or_else(|e| e.into_inner());
        all.values()
            .map(|t| t.sessions.len() + t.tokens.len() + t.users.len() + usize::from(t.everyone.is_some()))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    const T0: OffsetDateTime = datetime!(2026-01-01 00:00 UTC);

    fn tenant() -> TenantId {
        TenantId::parse("t").unwrap()
    }

    fn claims(sid: Option<String>, sub: &str, jti: &str) -> UnverifiedClaims {
        UnverifiedClaims { sid, sub: Some(sub.into()), jti: Some(jti.into()), exp: Some(0.0), ..Default::default() }
    }

    #[test]
    fn session_ids_carry_their_creation_time() {
        let sid = new_session_id(T0, [7; 8]);
        assert_eq!(sid.len(), 22);
        assert_eq!(session_created_at(&sid), Some(T0));
        assert_eq!(session_created_at("not-a-keyward-sid"), None);
    }

    #[test]
    fn a_revoked_session_rejects_its_tokens_and_only_those() {
        let r = Revocations::default();
        let sid = new_session_id(T0, [1; 8]);
        r.apply(&tenant(), Revocation::Session { sid: sid.clone(), forget_after: T0 + time::Duration::hours(1) });
        assert_eq!(r.check("t", &claims(Some(sid), "u", "j")), Err(Reason::SessionRevoked));
        assert_eq!(r.check("t", &claims(Some(new_session_id(T0, [2; 8])), "u", "j")), Ok(()));
        assert_eq!(r.check("other", &claims(None, "u", "j")), Ok(()));
    }

    #[test]
    fn a_user_cutoff_spares_sessions_started_after_it() {
        let r = Revocations::default();
        let cutoff = T0 + time::Duration::minutes(10);
        r.apply(
            &tenant(),
            Revocation::User { user_id: "u".into(), cutoff, forget_after: cutoff + time::Duration::hours(1) },
        );
        let before = new_session_id(cutoff - time::Duration::microseconds(1), [1; 8]);
        let after = new_session_id(cutoff + time::Duration::microseconds(1), [1; 8]);
        assert_eq!(r.check("t", &claims(Some(before.clone()), "u", "j")), Err(Reason::SessionRevoked));
        assert_eq!(r.check("t", &claims(Some(after), "u", "j")), Ok(()));
        assert_eq!(r.check("t", &claims(Some(before), "someone-else", "j")), Ok(()));
    }

    #[test]
    fn a_tenant_cutoff_hits_every_user_and_legacy_tokens_by_iat() {
        let r = Revocations::default();
        r.apply(&tenant(), Revocation::Tenant { cutoff: T0, forget_after: T0 + time::Duration::hours(1) });
        let mut legacy = claims(None, "x", "j");
        legacy.iat = Some((T0.unix_timestamp() - 5) as f64);
        assert_eq!(r.check("t", &legacy), Err(Reason::SessionRevoked));
        legacy.iat = Some((T0.unix_timestamp() + 5) as f64);
        assert_eq!(r.check("t", &legacy), Ok(()));
    }

    #[test]
    fn a_foreign_sid_that_decodes_to_a_later_time_does_not_escape_a_cutoff() {
        let r = Revocations::default();
        r.apply(
            &tenant(),
            Revocation::User { user_id: "u".into(), cutoff: T0, forget_after: T0 + time::Duration::hours(1) },
        );
        let mut legacy = claims(Some(new_session_id(T0 + time::Duration::days(3000), [9; 8])), "u", "j");
        legacy.iat = Some((T0.unix_timestamp() - 60) as f64);
        assert_eq!(r.check("t", &legacy), Err(Reason::SessionRevoked));
    }

    #[test]
    fn a_session_created_just_after_a_cutoff_survives_the_whole_second_iat_rounds_to() {
        let r = Revocations::default();
        let cutoff = T0 + time::Duration::milliseconds(500);
        r.apply(
            &tenant(),
            Revocation::User { user_id: "u".into(), cutoff, forget_after: T0 + time::Duration::hours(1) },
        );
        let started = T0 + time::Duration::milliseconds(700);
        let mut token = claims(Some(new_session_id(started, [1; 8])), "u", "j");
        token.iat = Some(T0.unix_timestamp() as f64);
        assert_eq!(r.check("t", &token), Ok(()));
    }

    #[test]
    fn a_revoked_jti_is_token_revoked() {
        let r = Revocations::default();
        r.apply(&tenant(), Revocation::Token { jti: "j1".into(), forget_after: T0 });
        assert_eq!(r.check("t", &claims(None, "u", "j1")), Err(Reason::TokenRevoked));
        assert_eq!(r.check("t", &claims(None, "u", "j2")), Ok(()));
    }

    #[test]
    fn entries_are_forgotten_once_they_cannot_match() {
        let r = Revocations::default();
        r.apply(&tenant(), Revocation::Token { jti: "j1".into(), forget_after: T0 });
        r.apply(&tenant(), Revocation::Session { sid: "s".into(), forget_after: T0 + time::Duration::hours(1) });
        assert_eq!(r.prune(T0), 1);
        assert_eq!(r.len(), 1);
        assert_eq!(r.prune(T0 + time::Duration::hours(1)), 1);
        assert!(r.is_empty());
    }
}
