//! Shared-secret authentication of admin and issuer calls.
//!
//! Secrets are kept only as SHA-256 digests and compared in constant time against every
//! configured digest (no early exit), so neither timing nor length reveals anything. A
//! request is identified in the audit trail by a short fingerprint of the secret it used,
//! which tells operators which of several valid secrets is still in use during a rotation.

use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::ApiError;
use super::extract::tenant_param;
use crate::domain::{Actor, AuditEvent, EventKind, TenantId};
use crate::ratelimit::Scope;

pub const ADMIN_HEADER: &str = "x-admin-secret";
pub const ISSUER_HEADER: &str = "x-issuer-secret";

/// A set of accepted secrets, as digests.
#[derive(Clone, Default)]
pub struct SecretSet {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for SecretSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretSet({} secrets)", self.digests.len())
    }
}

pub fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// First 8 hex digits of the digest: identifies a secret in logs without revealing it.
pub fn fingerprint(digest: &[u8; 32]) -> String {
    crate::crypto::hex(&digest[..4])
}

impl SecretSet {
    pub fn from_secrets<'a>(secrets: impl IntoIterator<Item = &'a str>) -> SecretSet {
        SecretSet { digests: secrets.into_iter().map(digest).collect() }
    }

    pub fn from_digests(digests: Vec<[u8; 32]>) -> SecretSet {
        SecretSet { digests }
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// The fingerprint of the matching secret, if `presented` is one of the set.
    pub fn check(&self, presented: &str) -> Option<String> {
        let candidate = digest(presented);
        let mut matched: Option<&[u8; 32]> = None;
        for d in &self.digests {
            if bool::from(d.ct_eq(&candidate)) {
                matched = Some(d);
            }
        }
        matched.map(fingerprint)
    }
}

/// The caller's address (the TCP peer; forwarded headers are not trusted).
pub fn client_ip(req_ext: &axum::http::Extensions) -> Option<String> {
    req_ext.get::<ConnectInfo<std::net::SocketAddr>>().map(|ConnectInfo(addr)| addr.ip().to_string())
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Middleware for every admin route: 401 before anything else is looked at. The refusal
/// is audited (asynchronously, so a flood of bad requests cannot stall the database).
pub async fn require_admin(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let ip = client_ip(req.extensions());
    match header(req.headers(), ADMIN_HEADER).and_then(|s| state.admin_secrets.check(s)) {
        Some(fp) => {
            req.extensions_mut().insert(Actor { name: format!("admin:{fp}"), ip });
            next.run(req).await
        }
        None => {
            audit_refusal(&state, &mut req, ip).await;
            ApiError::unauthorized().into_response()
        }
    }
}

/// Audits a refused call, at most a few per second per address (beyond that they are
/// counted in `keyward_audit_dropped_total`), naming the tenant only if it exists: an
/// anonymous caller must not be able to flood the trail or forge entries for any slug.
async fn audit_refusal(state: &AppState, req: &mut Request, ip: Option<String>) {
    let address = ip.clone().unwrap_or_default();
    if state.limiter.check(Scope::AuthFailureIp, &address, std::time::Instant::now()).is_err() {
        state.metrics.audit_dropped.inc();
        return;
    }
    let tenant = tenant_param(req)
        .await
        .and_then(|t| TenantId::parse(&t).ok())
        .filter(|t| state.keys.registry().get(t.as_str()).is_some());
    // The path is the caller's text: kept, but bounded.
    let path: String = req.uri().path().chars().take(256).collect();
    let detail = serde_json::json!({
        "method": req.method().as_str(),
        "path": path,
        "route": req.extensions().get::<axum::extract::MatchedPath>().map(|m| m.as_str().to_owned()),
        "secret_present": req.headers().contains_key(ADMIN_HEADER) || req.headers().contains_key(ISSUER_HEADER),
    });
    let actor = Actor { name: "anonymous".into(), ip };
    let event = AuditEvent::new(EventKind::AdminUnauthorized, tenant.as_ref(), &actor, state.keys.now()).detail(detail);
    state.audit.submit(event);
}

/// Middleware for issuing routes: an issuer secret or an admin secret.
pub async fn require_issuer(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let ip = client_ip(req.extensions());
    let issuer = header(req.headers(), ISSUER_HEADER)
        .and_then(|s| state.issuer_secrets.check(s))
        .map(|fp| format!("issuer:{fp}"));
    let admin = || {
        header(req.headers(), ADMIN_HEADER).and_then(|s| state.admin_secrets.check(s)).map(|fp| format!("admin:{fp}"))
    };
    match issuer.or_else(admin) {
        Some(name) => {
            req.extensions_mut().insert(Actor { name, ip });
            next.run(req).await
        }
        None => {
            audit_refusal(&state, &mut req, ip).await;
            ApiError::new(
                super::error::ErrorCode::Unauthorized,
                "a valid x-issuer-secret or x-admin-secret header is required",
            )
            .into_response()
        }
    }
}

/// The admin actor the middleware attached.
pub fn actor(req_ext: &axum::http::Extensions) -> Actor {
    req_ext.get::<Actor>().cloned().unwrap_or_else(|| Actor::system("unknown"))
}

pub type SharedSecrets = Arc<SecretSet>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_configured_secret_matches_and_others_do_not() {
        let set = SecretSet::from_secrets(["first-secret-0123456", "second-secret-012345"]);
        assert_eq!(set.check("first-secret-0123456"), Some(fingerprint(&digest("first-secret-0123456"))));
        assert!(set.check("second-secret-012345").is_some());
        assert_eq!(set.check("first-secret-012345"), None);
        assert_eq!(set.check(""), None);
        assert_eq!(SecretSet::default().check("anything"), None);
    }

    #[test]
    fn debug_shows_no_digest() {
        let set = SecretSet::from_secrets(["first-secret-0123456"]);
        assert_eq!(format!("{set:?}"), "SecretSet(1 secrets)");
    }
}
