//! The claims of the access tokens Keyward issues (RFC 9068 shape).

use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::domain::Tenant;
use crate::store::SessionRecord;

/// Claims Keyward sets itself; custom claims may not use these names.
pub const RESERVED: [&str; 11] = ["iss", "sub", "aud", "exp", "nbf", "iat", "jti", "sid", "client_id", "scope", "typ"];

/// The first reserved name among `custom`'s keys, if any.
pub fn reserved_name(custom: &Map<String, Value>) -> Option<&'static str> {
    RESERVED.into_iter().find(|name| custom.contains_key(*name))
}

/// `aud`: the requested audience if it is one of the tenant's, else the tenant's audiences
/// (a string when there is one).
pub fn audience(tenant: &Tenant, requested: Option<&str>) -> Value {
    match requested {
        Some(a) if tenant.audiences.iter().any(|t| t == a) => Value::String(a.to_owned()),
        _ if tenant.audiences.len() == 1 => Value::String(tenant.audiences[0].clone()),
        _ => Value::Array(tenant.audiences.iter().cloned().map(Value::String).collect()),
    }
}

/// Every claim of one access token of `session`.
pub fn access_token(
    tenant: &Tenant,
    session: &SessionRecord,
    jti: &str,
    iat: OffsetDateTime,
    exp: OffsetDateTime,
) -> Value {
    let mut claims = match &session.claims {
        Value::Object(custom) => custom.clone(),
        _ => Map::new(),
    };
    // Reserved names are refused when a session is created; removing them again here
    // means a stored row can never override them either.
    for name in RESERVED {
        claims.remove(name);
    }
    claims.insert("iss".into(), Value::String(tenant.issuer.clone()));
    claims.insert("sub".into(), Value::String(session.user_id.clone()));
    claims.insert("aud".into(), audience(tenant, session.audience.as_deref()));
    claims.insert("iat".into(), Value::from(iat.unix_timestamp()));
    claims.insert("exp".into(), Value::from(exp.unix_timestamp()));
    claims.insert("jti".into(), Value::String(jti.to_owned()));
    claims.insert("sid".into(), Value::String(session.id.clone()));
    if let Some(client_id) = &session.client_id {
        claims.insert("client_id".into(), Value::String(client_id.clone()));
    }
    if let Some(scope) = &session.scope {
        claims.insert("scope".into(), Value::String(scope.clone()));
    }
    Value::Object(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Policy, TenantId};

    fn tenant(audiences: &[&str]) -> Tenant {
        Tenant {
            id: TenantId::parse("t").unwrap(),
            issuer: "https://issuer".into(),
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
            policy: Policy::runbook(),
            created_at: OffsetDateTime::UNIX_EPOCH,
            updated_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn session(claims: Value, audience: Option<&str>) -> SessionRecord {
        SessionRecord {
            id: "sid".into(),
            tenant: TenantId::parse("t").unwrap(),
            user_id: "alice".into(),
            client_id: Some("app".into()),
            scope: Some("read".into()),
            audience: audience.map(str::to_owned),
            claims,
            created_at: OffsetDateTime::UNIX_EPOCH,
            expires_at: OffsetDateTime::UNIX_EPOCH,
            revoked_at: None,
        }
    }

    #[test]
    fn audience_is_the_requested_one_if_the_tenant_has_it() {
        let t = tenant(&["api", "admin"]);
        assert_eq!(audience(&t, Some("admin")), Value::from("admin"));
        assert_eq!(audience(&t, Some("other")), serde_json::json!(["api", "admin"]));
        assert_eq!(audience(&tenant(&["api"]), None), Value::from("api"));
    }

    #[test]
    fn custom_claims_never_override_reserved_ones() {
        let s = session(serde_json::json!({"role": "admin", "sub": "mallory", "iss": "evil"}), None);
        let c = access_token(&tenant(&["api"]), &s, "j", OffsetDateTime::UNIX_EPOCH, OffsetDateTime::UNIX_EPOCH);
        assert_eq!(c["sub"], "alice");
        assert_eq!(c["iss"], "https://issuer");
        assert_eq!(c["role"], "admin");
        assert_eq!(c["client_id"], "app");
        assert_eq!(c["scope"], "read");
    }

    #[test]
    fn reserved_names_are_found() {
        let custom = serde_json::json!({"role": 1, "exp": 2});
        assert_eq!(reserved_name(custom.as_object().unwrap()), Some("exp"));
    }
}
