//! The OpenAPI 3 document at `/openapi.json`, generated from the handlers' annotations so
//! it cannot drift from the routes.

use axum::Json;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{admin_audit, admin_keys, admin_revoke, admin_secrets, admin_tenants, error, jwks, ops, tokens, verify};

#[derive(OpenApi)]
#[openapi(
    info(title = "Keyward", description = "Key management and token verification: JWKS with scheduled rotation, \
        token issuing and verification, revocation. Errors are always {\"error\": code, \"message\": sentence}."),
    paths(
        jwks::default_jwks, jwks::jwks, jwks::default_discovery, jwks::discovery,
        admin_tenants::create, admin_tenants::list, admin_tenants::read, admin_tenants::update,
        admin_keys::list, admin_keys::read, admin_keys::stage, admin_keys::activate, admin_keys::rotate,
        admin_keys::revoke, admin_secrets::rotate, admin_revoke::revoke_sessions, admin_revoke::revoke_token,
        admin_audit::export, admin_audit::key_tokens,
        tokens::create_session, tokens::token, verify::verify, verify::introspect,
        ops::healthz, ops::readyz, ops::metrics,
    ),
    components(schemas(error::ErrorBody)),
    modifiers(&Security),
    tags(
        (name = "relying parties", description = "Public: JWKS and discovery"),
        (name = "verification", description = "Public: verify and introspect tokens"),
        (name = "issuing", description = "Sessions (x-issuer-secret or x-admin-secret) and the refresh grant"),
        (name = "admin", description = "Requires x-admin-secret"),
        (name = "operations", description = "Health, readiness, metrics"),
    )
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new(super::auth::ADMIN_HEADER))),
        );
        components.add_security_scheme(
            "issuer",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new(super::auth::ISSUER_HEADER))),
        );
    }
}

pub(crate) async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
