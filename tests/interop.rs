//! Interoperability with an independent JWT implementation (`jsonwebtoken`, on aws-lc-rs):
//! what a relying party that never heard of Keyward does. It fetches the JWKS over HTTP and
//! verifies Keyward's access tokens with nothing else (issuer, audience and expiry checked);
//! and tokens that library makes, with `JWT_SECRET` as services already use it or with a
//! tenant's key, are accepted by `/verify`.

mod support;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, decode_header, encode};
use keyward::config::Secret;
use reqwest::StatusCode;
use serde_json::{Value, json};

use support::TestDatabase;
use support::app::{TestApp, json, spawn_app, spawn_app_with};
use support::tokens::{
    DEFAULT_TENANT, JWT_SECRET, JWT_SECRET_OLD, TenantKey, access_token, assert_accepted, assert_rejected,
    create_session, good_claims, issuer_of, metrics_text, now_unix, sample, with_payload,
};

support::backend_tests!(
    keyward_tokens_verify_with_jsonwebtoken_against_the_jwks_fetched_over_http,
    tokens_signed_before_a_rotation_still_verify_against_the_published_jwks,
    jsonwebtoken_checks_fail_where_they_should_on_keyward_tokens,
    verify_accepts_hs256_tokens_made_by_jsonwebtoken_with_jwt_secret,
    verify_accepts_tokens_jsonwebtoken_signs_with_the_tenants_key,
);

const ALGS: [(&str, &str, Algorithm); 3] =
    [("es", "ES256", Algorithm::ES256), ("ed", "EdDSA", Algorithm::EdDSA), ("rs", "RS256", Algorithm::RS256)];

/// The tenant's JWKS as a relying party gets it: one plain HTTP GET, parsed by the library.
async fn fetch_jwks(app: &TestApp, tenant: &str) -> JwkSet {
    let url = app.url(&format!("/a/{tenant}/.well-known/jwks.json"));
    let response = app.client.get(url).send().await.expect("JWKS request");
    assert_eq!(response.status(), StatusCode::OK);
    response.json::<JwkSet>().await.expect("a JWKS jsonwebtoken understands")
}

/// What a careful relying party checks: the algorithm it expects, `iss`, `aud`, `exp`, no
/// leeway, and that the registered claims it relies on are present.
fn validation(alg: Algorithm, issuer: &str, audience: &str) -> Validation {
    let mut validation = Validation::new(alg);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.leeway = 0;
    validation.validate_nbf = true;
    validation
}

/// Verifies `token` the way a relying party would: key by `kid` from the JWKS.
fn decode_with_jwks(token: &str, jwks: &JwkSet, validation: &Validation) -> jsonwebtoken::errors::Result<Value> {
    let header = decode_header(token)?;
    let kid = header.kid.expect("Keyward tokens carry a kid");
    let jwk = jwks.find(&kid).unwrap_or_else(|| panic!("kid {kid} is not in the JWKS"));
    let key = DecodingKey::from_jwk(jwk)?;
    decode::<Value>(token, &key, validation).map(|data| data.claims)
}

async fn keyward_tokens_verify_with_jsonwebtoken_against_the_jwks_fetched_over_http(db: TestDatabase) {
    let app = spawn_app(&db).await;

    for (tenant, alg_name, alg) in ALGS {
        app.create_tenant_with_alg(tenant, alg_name).await;
        let request = json!({ "user_id": "alice", "client_id": "web", "scope": "read", "claims": { "plan": "pro" } });
        let token = access_token(&create_session(&app, tenant, &request).await);
        let jwks = fetch_jwks(&app, tenant).await;

        let claims = decode_with_jwks(&token, &jwks, &validation(alg, &issuer_of(&app, tenant).await, tenant))
            .unwrap_or_else(|e| panic!("{alg_name}: jsonwebtoken refused a Keyward token: {e}"));

        assert_eq!(decode_header(&token).unwrap().alg, alg, "{alg_name}");
        assert_eq!((&claims["sub"], &claims["plan"]), (&json!("alice"), &json!("pro")), "{alg_name}: {claims}");
        assert_eq!(claims, assert_accepted(&app, tenant, &token).await["claims"], "{alg_name}: same claims both ways");
    }
}

async fn tokens_signed_before_a_rotation_still_verify_against_the_published_jwks(db: TestDatabase) {
    let app = spawn_app(&db).await;

    for (tenant, alg_name, alg) in ALGS {
        app.create_tenant_with_alg(tenant, alg_name).await;
        let before = access_token(&create_session(&app, tenant, &json!({ "user_id": "alice" })).await);
        let (status, rotated) = json(app.admin_post(&format!("/a/{tenant}/admin/keys/rotate")).await).await;
        assert_eq!(status, StatusCode::OK, "{rotated}");
        let after = access_token(&create_session(&app, tenant, &json!({ "user_id": "alice" })).await);
        let jwks = fetch_jwks(&app, tenant).await;
        let checks = validation(alg, &issuer_of(&app, tenant).await, tenant);

        for token in [&before, &after] {
            decode_with_jwks(token, &jwks, &checks).unwrap_or_else(|e| panic!("{alg_name}: {e}"));
        }
        assert_ne!(decode_header(&before).unwrap().kid, decode_header(&after).unwrap().kid);
    }
}

async fn jsonwebtoken_checks_fail_where_they_should_on_keyward_tokens(db: TestDatabase) {
    let app = spawn_app(&db).await;
    app.create_tenant_with_alg("es", "ES256").await;
    let token = access_token(&create_session(&app, "es", &json!({ "user_id": "alice" })).await);
    let jwks = fetch_jwks(&app, "es").await;
    let issuer = issuer_of(&app, "es").await;

    let wrong_audience = decode_with_jwks(&token, &jwks, &validation(Algorithm::ES256, &issuer, "other"));
    assert_eq!(wrong_audience.unwrap_err().kind(), &ErrorKind::InvalidAudience);
    let wrong_issuer = decode_with_jwks(&token, &jwks, &validation(Algorithm::ES256, "https://other", "es"));
    assert_eq!(wrong_issuer.unwrap_err().kind(), &ErrorKind::InvalidIssuer);
    let mut claims: Value = jsonwebtoken::dangerous::insecure_decode::<Value>(&token).unwrap().claims;
    claims["sub"] = json!("mallory");
    let tampered =
        decode_with_jwks(&with_payload(&token, &claims), &jwks, &validation(Algorithm::ES256, &issuer, "es"));
    assert_eq!(tampered.unwrap_err().kind(), &ErrorKind::InvalidSignature);
}

async fn verify_accepts_hs256_tokens_made_by_jsonwebtoken_with_jwt_secret(db: TestDatabase) {
    let app = spawn_app_with(&db, |s| {
        s.jwt_secret = Some(Secret::new(JWT_SECRET));
        s.jwt_secret_old = Some(Secret::new(JWT_SECRET_OLD));
    })
    .await;
    let claims = good_claims(&issuer_of(&app, DEFAULT_TENANT).await, DEFAULT_TENANT, now_unix());
    let made_with = |secret: &str, header: &Header| {
        encode(header, &claims, &EncodingKey::from_secret(secret.as_bytes())).expect("jsonwebtoken HS256")
    };
    let plain = Header::new(Algorithm::HS256);

    let current = assert_accepted(&app, DEFAULT_TENANT, &made_with(JWT_SECRET, &plain)).await;
    assert_eq!((&current["alg"], &current["claims"]), (&json!("HS256"), &claims));
    let previous = assert_accepted(&app, DEFAULT_TENANT, &made_with(JWT_SECRET_OLD, &plain)).await;
    assert_eq!(previous["alg"], "HS256");
    let text = metrics_text(&app).await;
    assert_eq!(sample(&text, "keyward_secret_fallback_total", &["tenant=\"default\""]), Some(1.0));

    let with_kid = Header { kid: current["kid"].as_str().map(str::to_owned), ..Header::new(Algorithm::HS256) };
    assert_accepted(&app, DEFAULT_TENANT, &made_with(JWT_SECRET, &with_kid)).await;
    assert_rejected(&app, DEFAULT_TENANT, &made_with("some-other-secret-0123456789abcdef", &plain), "bad_signature")
        .await;
    for alg in [Algorithm::HS384, Algorithm::HS512] {
        assert_rejected(&app, DEFAULT_TENANT, &made_with(JWT_SECRET, &Header::new(alg)), "unsupported_alg").await;
    }
}

async fn verify_accepts_tokens_jsonwebtoken_signs_with_the_tenants_key(db: TestDatabase) {
    let app = spawn_app(&db).await;

    for (tenant, alg_name, alg) in [("es", "ES256", Algorithm::ES256), ("ed", "EdDSA", Algorithm::EdDSA)] {
        app.create_tenant_with_alg(tenant, alg_name).await;
        let key = TenantKey::active(&app, &db, tenant).await;
        let encoding = match alg {
            Algorithm::ES256 => EncodingKey::from_ec_der(key.pkcs8()),
            _ => EncodingKey::from_ed_der(key.pkcs8()),
        };
        let claims = good_claims(&issuer_of(&app, tenant).await, tenant, now_unix());
        let header = Header { kid: Some(key.kid.clone()), ..Header::new(alg) };

        let token = encode(&header, &claims, &encoding).unwrap_or_else(|e| panic!("{alg_name}: {e}"));

        let body = assert_accepted(&app, tenant, &token).await;
        assert_eq!((&body["kid"], &body["alg"]), (&json!(key.kid), &json!(alg_name)));
    }
}
