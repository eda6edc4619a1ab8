//! Audit events: who changed what, when, from where. Written in the same transaction as the
//! change they record, so the trail can never disagree with the state.

use serde::Serialize;
use time::OffsetDateTime;

use super::{KeyState, TenantId};

/// Event types. The dotted names are part of the contract (API.md, audit export).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum EventKind {
    #[serde(rename = "tenant.created")]
    TenantCreated,
    #[serde(rename = "tenant.updated")]
    TenantUpdated,
    #[serde(rename = "key.staged")]
    KeyStaged,
    #[serde(rename = "key.activated")]
    KeyActivated,
    #[serde(rename = "key.retired")]
    KeyRetired,
    #[serde(rename = "key.expired")]
    KeyExpired,
    #[serde(rename = "key.revoked")]
    KeyRevoked,
    #[serde(rename = "kek.rewrapped")]
    KekRewrapped,
    #[serde(rename = "secret.rotated")]
    SecretRotated,
    #[serde(rename = "session.created")]
    SessionCreated,
    #[serde(rename = "session.revoked")]
    SessionRevoked,
    #[serde(rename = "token.refreshed")]
    TokenRefreshed,
    #[serde(rename = "token.revoked")]
    TokenRevoked,
    #[serde(rename = "token.reuse_detected")]
    TokenReuseDetected,
    #[serde(rename = "admin.unauthorized")]
    AdminUnauthorized,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::TenantCreated => "tenant.created",
            EventKind::TenantUpdated => "tenant.updated",
            EventKind::KeyStaged => "key.staged",
            EventKind::KeyActivated => "key.activated",
            EventKind::KeyRetired => "key.retired",
            EventKind::KeyExpired => "key.expired",
            EventKind::KeyRevoked => "key.revoked",
            EventKind::KekRewrapped => "kek.rewrapped",
            EventKind::SecretRotated => "secret.rotated",
            EventKind::SessionCreated => "session.created",
            EventKind::SessionRevoked => "session.revoked",
            EventKind::TokenRefreshed => "token.refreshed",
            EventKind::TokenRevoked => "token.revoked",
            EventKind::TokenReuseDetected => "token.reuse_detected",
            EventKind::AdminUnauthorized => "admin.unauthorized",
        }
    }

    /// The event recording a key's move into `state`.
    pub fn for_key_state(state: KeyState) -> EventKind {
        match state {
            KeyState::Staged => EventKind::KeyStaged,
            KeyState::Active => EventKind::KeyActivated,
            KeyState::Retired => EventKind::KeyRetired,
            KeyState::Expired => EventKind::KeyExpired,
            KeyState::Revoked => EventKind::KeyRevoked,
        }
    }
}

/// Who acted: an admin (identified by a fingerprint of the secret used, never the secret),
/// an issuer, the CLI, or the rotation loop; and from which address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub name: String,
    pub ip: Option<String>,
}

impl Actor {
    pub fn system(name: &str) -> Actor {
        Actor { name: name.to_owned(), ip: None }
    }
}

/// One audit event, before the store gives it an id.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    pub at: OffsetDateTime,
    pub tenant: Option<TenantId>,
    pub actor: String,
    pub ip: Option<String>,
    pub kind: EventKind,
    pub kid: Option<String>,
    pub session_id: Option<String>,
    pub user_id: Option<String>,
    pub detail: serde_json::Value,
}

impl AuditEvent {
    pub fn new(kind: EventKind, tenant: Option<&TenantId>, actor: &Actor, at: OffsetDateTime) -> AuditEvent {
        AuditEvent {
            at,
            tenant: tenant.cloned(),
            actor: actor.name.clone(),
            ip: actor.ip.clone(),
            kind,
            kid: None,
            session_id: None,
            user_id: None,
            detail: serde_json::Value::Null,
        }
    }

    pub fn kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into());
        self
    }

    pub fn detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }
}
