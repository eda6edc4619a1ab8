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
use crate::domain::{Actor, AuditEvent, EventKind};

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
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
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
            let actor = Actor { name: "anonymous".into(), ip };
            let tenant = tenant_in_path(req.uri().path());
            let detail = serde_json::json!({
                "method": req.method().as_str(),
                "path": req.uri().path(),
                "secret_present": req.headers().contains_key(ADMIN_HEADER),
            });
            let event =
                AuditEvent::new(EventKind::AdminUnauthorized, tenant.as_ref(), &actor, state.keys.now()).detail(detail);
            state.audit.submit(event);
            ApiError::unauthorized().into_response()
        }
    }
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
            let actor = Actor { name: "anonymous".into(), ip };
            let detail = serde_json::json!({ "method": req.method().as_str(), "path": req.uri().path() });
            let tenant = tenant_in_path(req.uri().path());
            let event =
                AuditEvent::new(EventKind::AdminUnauthorized, tenant.as_ref(), &actor, state.keys.now()).detail(detail);
            state.audit.submit(event);
            ApiError::new(
                super::error::ErrorCode::Unauthorized,
                "a valid x-issuer-secret or x-admin-secret header is required",
            )
            .into_response()
        }
    }
}

/// The tenant a path is about (`/a/{tenant}/...`), if it names a valid tenant id.
fn tenant_in_path(path: &str) -> Option<crate::domain::TenantId> {
    let rest = path.strip_prefix("/a/")?;
    crate::domain::TenantId::parse(rest.split('/').next()?).ok()
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

    #[test]
    fn tenant_is_read_from_tenant_paths_only() {
        assert_eq!(tenant_in_path("/a/acme/admin/keys").unwrap().as_str(), "acme");
        assert!(tenant_in_path("/admin/tenants").is_none());
        assert!(tenant_in_path("/a/BAD/admin").is_none());
    }
}
