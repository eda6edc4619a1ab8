//! What relying parties fetch: the JWKS and the discovery document (API.md "Relying
//! parties"), on both backends, through the real HTTP server.

mod support;

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64URL};
use keyward::clock::ManualClock;
use keyward::config::Secret;
use reqwest::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use time::macros::datetime;

use support::TestDatabase;
use support::app::{
    TestApp, assert_error, eventually, json, jwks_path, kids_of, send, spawn_app, spawn_app_with, spawn_app_with_clock,
};

support::backend_tests!(
    jwks_publishes_staged_active_and_retired_keys_but_never_revoked_ones_for_every_algorithm,
    a_key_staged_with_another_algorithm_is_published_with_that_algorithm,
    shared_hs256_secrets_are_never_published,
    jwks_is_cacheable_for_five_minutes_with_a_strong_etag,
    if_none_match_with_the_current_etag_gives_304_with_an_empty_body,
    etag_changes_when_the_key_set_changes_and_stays_while_it_does_not,
    default_jwks_is_the_default_tenants_jwks,
    discovery_names_the_issuer_the_jwks_and_the_endpoints,
    discovery_of_the_default_tenant_is_served_at_the_root,
    unknown_tenant_has_neither_jwks_nor_discovery,
    malformed_tenant_in_a_public_path_is_a_bad_request,
    retired_key_leaves_the_jwks_once_its_overlap_has_passed,
);

const ALGS: [&str; 3] = ["ES256", "EdDSA", "RS256"];

/// JWK members that would leak a private key, and the symmetric key member.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// Checks one published JWK: required members, public parameters of the right shape for
/// `alg`, no private or symmetric member, and `kid` = RFC 7638 thumbprint.
fn assert_public_jwk(jwk: &Value, alg: &str) {
    let members = jwk.as_object().unwrap_or_else(|| panic!("a JWK is an object: {jwk}"));
    for private in PRIVATE_MEMBERS {
        assert!(!members.contains_key(private), "JWK publishes `{private}`: {jwk}");
    }
    assert_ne!(jwk["kty"], "oct", "symmetric key published: {jwk}");
    assert_eq!((&jwk["alg"], &jwk["use"]), (&json!(alg), &json!("sig")), "{jwk}");
    let decoded_len = |member: &str| {
        let text = jwk[member].as_str().unwrap_or_else(|| panic!("`{member}` missing: {jwk}"));
        B64URL.decode(text).unwrap_or_else(|e| panic!("`{member}` is not base64url ({e}): {jwk}")).len()
    };
    // RFC 7638: the required members, in lexicographic order, without whitespace.
    let canonical = match alg {
        "ES256" => {
            assert_eq!((&jwk["kty"], &jwk["crv"]), (&json!("EC"), &json!("P-256")), "{jwk}");
            assert_eq!((decoded_len("x"), decoded_len("y")), (32, 32), "P-256 coordinates: {jwk}");
            format!(
                r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
                jwk["x"].as_str().unwrap(),
                jwk["y"].as_str().unwrap()
            )
        }
        "EdDSA" => {
            assert_eq!((&jwk["kty"], &jwk["crv"]), (&json!("OKP"), &json!("Ed25519")), "{jwk}");
            assert_eq!(decoded_len("x"), 32, "Ed25519 public key: {jwk}");
            format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, jwk["x"].as_str().unwrap())
        }
        "RS256" => {
            assert_eq!(jwk["kty"], "RSA", "{jwk}");
            assert_eq!(decoded_len("n"), 256, "RSA-2048 modulus: {jwk}");
            assert_eq!(jwk["e"], "AQAB", "{jwk}");
            format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, jwk["e"].as_str().unwrap(), jwk["n"].as_str().unwrap())
        }
        other => panic!("unexpected alg {other}"),
    };
    let thumbprint = B64URL.encode(Sha256::digest(canonical.as_bytes()));
    assert_eq!(jwk["kid"], thumbprint, "kid is the RFC 7638 thumbprint: {jwk}");
}

fn header(headers: &reqwest::header::HeaderMap, name: impl reqwest::header::AsHeaderName) -> &str {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
}

async fn jwks_with_etag(app: &TestApp, tenant: &str, etag: &str) -> reqwest::Response {
    send(app.request(Method::GET, &jwks_path(tenant)).header(IF_NONE_MATCH, etag)).await
}

async fn jwks_publishes_staged_active_and_retired_keys_but_never_revoked_ones_for_every_algorithm(db: TestDatabase) {
    let app = spawn_app(&db).await;
    for alg in ALGS {
        let tenant = format!("t-{}", alg.to_lowercase());
        let first = app.create_tenant_with_alg(&tenant, alg).await;
        let second = app.stage_key(&tenant).await;
        let activation = app.force_activate(&tenant, &second).await;
        assert_eq!(activation["retired_kid"], first.as_str(), "{alg}: {activation}");
        let staged = app.stage_key(&tenant).await;
        let doomed = app.stage_key(&tenant).await;
        app.revoke_key(&tenant, &doomed).await;
        let current = app.stage_key(&tenant).await;
        app.force_activate(&tenant, &current).await; // `second` retires...
        app.revoke_key(&tenant, &second).await; // ...and is revoked

        let (status, headers, body) = app.jwks(&tenant).await;

        assert_eq!(status, StatusCode::OK, "{alg}: {body}");
        assert!(header(&headers, CONTENT_TYPE).starts_with("application/json"), "{alg}: {headers:?}");
        let members: Vec<&String> = body.as_object().expect("a JWK Set is an object").keys().collect();
        assert_eq!(members, ["keys"], "{alg}: {body}");
        let mut published = kids_of(&body["keys"]);
        published.sort();
        let mut expected = vec![current.clone(), staged.clone(), first.clone()];
        expected.sort();
        assert_eq!(published, expected, "{alg}: active, staged and retired, not the revoked `{doomed}` and `{second}`");
        for jwk in body["keys"].as_array().unwrap() {
            assert_public_jwk(jwk, alg);
        }
        assert_eq!(app.key_state(&tenant, &current).await, "active");
        assert_eq!(app.key_state(&tenant, &staged).await, "staged");
        assert_eq!(app.key_state(&tenant, &first).await, "retired");
        assert_eq!(app.key_state(&tenant, &doomed).await, "revoked");
        assert_eq!(app.key_state(&tenant, &second).await, "revoked");
    }
}

async fn a_key_staged_with_another_algorithm_is_published_with_that_algorithm(db: TestDatabase) {
    let app = spawn_app(&db).await;
    app.create_tenant_with_alg("acme", "ES256").await;

    let (status, key) = json(app.admin_post_json("/a/acme/admin/keys", &json!({ "alg": "RS256" })).await).await;

    assert_eq!(status, StatusCode::CREATED, "{key}");
    assert_eq!((&key["alg"], &key["state"]), (&json!("RS256"), &json!("staged")), "{key}");
    let (_, _, body) = app.jwks("acme").await;
    let jwk = body["keys"].as_array().unwrap().iter().find(|k| k["kid"] == key["kid"]).expect("staged key published");
    assert_public_jwk(jwk, "RS256");
}

/// HS256 secrets verify legacy tokens; they are symmetric, so publishing one would let
/// anyone mint tokens. Neither configured (`JWT_SECRET`, `JWT_SECRET_OLD`) nor rotated
/// secrets may show up in a JWKS, as an `oct` key or in any other form.
async fn shared_hs256_secrets_are_never_published(db: TestDatabase) {
    const CURRENT: &str = "current-hs256-secret-of-the-default-tenant";
    const OLD: &str = "previous-hs256-secret-of-the-default-tenant";
    const ROTATED: &str = "rotated-hs256-secret-of-the-acme-tenant-000";
    let app = spawn_app_with(&db, |s| {
        s.jwt_secret = Some(Secret::new(CURRENT));
        s.jwt_secret_old = Some(Secret::new(OLD));
    })
    .await;
    app.create_tenant_with_alg("acme", "ES256").await;
    let (status, rotated) =
        json(app.admin_post_json("/a/acme/admin/secrets/rotate", &json!({ "secret": ROTATED })).await).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let (status, generated) = json(app.admin_post("/a/acme/admin/secrets/rotate").await).await;
    assert_eq!(status, StatusCode::OK, "{generated}");
    let generated = generated["secret"].as_str().expect("a generated secret is shown once").to_owned();

    for tenant in ["default", "acme"] {
        let (status, _, body) = app.jwks_bytes(tenant).await;
        assert_eq!(status, StatusCode::OK);
        let doc: Value = serde_json::from_slice(&body).unwrap();
        for jwk in doc["keys"].as_array().unwrap() {
            assert!(jwk["kty"] != "oct" && jwk["alg"] != "HS256" && jwk.get("k").is_none(), "{tenant}: {jwk}");
        }
        let mut published = kids_of(&doc["keys"]);
        published.sort();
        let mut signing_keys: Vec<String> =
            app.keys(tenant).await.iter().map(|k| k["kid"].as_str().unwrap().to_owned()).collect();
        signing_keys.sort();
        assert_eq!(published, signing_keys, "{tenant}: only its signing keys");
        let text = String::from_utf8_lossy(&body);
        for secret in [CURRENT, OLD, ROTATED, generated.as_str()] {
            for form in [secret.to_owned(), B64URL.encode(secret), STANDARD.encode(secret)] {
                assert!(!text.contains(&form), "{tenant}: a shared secret is in the JWKS: {text}");
            }
        }
    }
}

async fn jwks_is_cacheable_for_five_minutes_with_a_strong_etag(db: TestDatabase) {
    let app = spawn_app(&db).await;
    app.create_tenant_with_alg("acme", "ES256").await;

    let (status, headers, _) = app.jwks("acme").await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, CACHE_CONTROL), "public, max-age=300");
    let etag = header(&headers, ETAG);
    assert!(etag.len() > 2 && etag.starts_with('"') && etag.ends_with('"'), "a strong, quoted ETag: {etag:?}");
    assert_eq!(header(&headers, "x-content-type-options"), "nosniff");
}

async fn if_none_match_with_the_current_etag_gives_304_with_an_empty_body(db: TestDatabase) {
    let app = spawn_app(&db).await;
    app.create_tenant_with_alg("acme", "EdDSA").await;
    let (_, headers, _) = app.jwks("acme").await;
    let etag = header(&headers, ETAG).to_owned();

    let not_modified = jwks_with_etag(&app, "acme", &etag).await;

    assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);
    let headers = not_modified.headers().clone();
    assert_eq!(header(&headers, ETAG), etag);
    assert_eq!(header(&headers, CACHE_CONTROL), "public, max-age=300");
    assert_eq!(header(&headers, "x-content-type-options"), "nosniff");
    assert!(not_modified.bytes().await.unwrap().is_empty(), "a 304 has no body");

    let other = jwks_with_etag(&app, "acme", "\"some-other-tag\"").await;
    assert_eq!(other.status(), StatusCode::OK, "a stale ETag gets the document");
    assert_eq!(header(other.headers(), ETAG), etag);
}

async fn etag_changes_when_the_key_set_changes_and_stays_while_it_does_not(db: TestDatabase) {
    let app = spawn_app(&db).await;
    app.create_tenant_with_alg("acme", "ES256").await;
    let (_, headers, initial) = app.jwks_bytes("acme").await;
    let initial_etag = header(&headers, ETAG).to_owned();

    // Nothing changes: reading again, and an operation that is refused.
    let (_, headers, again) = app.jwks_bytes("acme").await;
    assert_eq!((header(&headers, ETAG), &again), (initial_etag.as_str(), &initial));
    let active = app.kids_in_state("acme", "active").await.remove(0);
    let refused = app.admin_post(&format!("/a/acme/admin/keys/{active}/activate")).await;
    assert_eq!(refused.status(), StatusCode::CONFLICT);
    let (_, headers, _) = app.jwks_bytes("acme").await;
    assert_eq!(header(&headers, ETAG), initial_etag, "a refused operation changes nothing");

    // Staging adds a key: new document, new ETag, and the old ETag no longer matches.
    let staged = app.stage_key("acme").await;
    let (_, headers, body) = app.jwks("acme").await;
    let staged_etag = header(&headers, ETAG).to_owned();
    assert_ne!(staged_etag, initial_etag);
    assert!(kids_of(&body["keys"]).contains(&staged));
    let response = jwks_with_etag(&app, "acme", &initial_etag).await;
    assert_eq!(response.status(), StatusCode::OK, "the old ETag must not get a 304");
    assert_eq!(header(response.headers(), ETAG), staged_etag);

    // Revoking removes a key: the ETag moves on again.
    app.revoke_key("acme", &staged).await;
    let (_, headers, body) = app.jwks("acme").await;
    assert_ne!(header(&headers, ETAG), staged_etag);
    assert!(!kids_of(&body["keys"]).contains(&staged));
}

async fn default_jwks_is_the_default_tenants_jwks(db: TestDatabase) {
    let app = spawn_app(&db).await;

    let root = app.get("/.well-known/jwks.json").await;
    let root_status = root.status();
    let root_etag = header(root.headers(), ETAG).to_owned();
    let root_cache = header(root.headers(), CACHE_CONTROL).to_owned();
    let root_body = root.bytes().await.unwrap();
    let (status, headers, tenant_body) = app.jwks_bytes("default").await;

    assert_eq!((root_status, status), (StatusCode::OK, StatusCode::OK));
    assert_eq!(root_body, tenant_body, "same bytes");
    assert_eq!(root_etag, header(&headers, ETAG));
    assert_eq!(root_cache, "public, max-age=300");
    let doc: Value = serde_json::from_slice(&root_body).unwrap();
    assert_eq!(kids_of(&doc["keys"]), app.kids_in_state("default", "active").await, "the default tenant's key");
    let not_modified = send(app.request(Method::GET, "/.well-known/jwks.json").header(IF_NONE_MATCH, &root_etag)).await;
    assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);
}

async fn discovery_names_the_issuer_the_jwks_and_the_endpoints(db: TestDatabase) {
    let app = spawn_app_with(&db, |s| s.public_url = Some("https://keys.example.com/".into())).await;
    app.create_tenant(json!({ "id": "acme", "signing_alg": "EdDSA" })).await;
    app.create_tenant(json!({ "id": "globex", "issuer": "https://login.globex.test", "signing_alg": "RS256" })).await;

    let (status, acme) = json(app.get("/a/acme/.well-known/openid-configuration").await).await;
    let (_, globex) = json(app.get("/a/globex/.well-known/openid-configuration").await).await;

    assert_eq!(status, StatusCode::OK, "{acme}");
    assert_eq!(acme["issuer"], "https://keys.example.com/a/acme", "the default issuer: {acme}");
    assert_eq!(acme["jwks_uri"], "https://keys.example.com/a/acme/.well-known/jwks.json");
    assert_eq!(acme["token_endpoint"], "https://keys.example.com/a/acme/token");
    assert_eq!(acme["introspection_endpoint"], "https://keys.example.com/a/acme/introspect");
    assert_eq!(acme["id_token_signing_alg_values_supported"], json!(["EdDSA"]));
    assert_eq!(globex["issuer"], "https://login.globex.test", "the configured issuer: {globex}");
    assert_eq!(globex["jwks_uri"], "https://keys.example.com/a/globex/.well-known/jwks.json");
    assert_eq!(globex["id_token_signing_alg_values_supported"], json!(["RS256"]));
}

async fn discovery_of_the_default_tenant_is_served_at_the_root(db: TestDatabase) {
    let app = spawn_app(&db).await;

    let (status, root) = json(app.get("/.well-known/openid-configuration").await).await;
    let (_, tenant) = json(app.get("/a/default/.well-known/openid-configuration").await).await;

    assert_eq!(status, StatusCode::OK, "{root}");
    assert_eq!(root, tenant);
    for member in
        ["issuer", "jwks_uri", "id_token_signing_alg_values_supported", "introspection_endpoint", "token_endpoint"]
    {
        assert!(!root[member].is_null(), "`{member}` missing: {root}");
    }
    assert!(root["jwks_uri"].as_str().unwrap().ends_with("/a/default/.well-known/jwks.json"), "{root}");
}

async fn unknown_tenant_has_neither_jwks_nor_discovery(db: TestDatabase) {
    let app = spawn_app(&db).await;

    assert_error(app.get(&jwks_path("nobody")).await, StatusCode::NOT_FOUND, "not_found").await;
    assert_error(app.get("/a/nobody/.well-known/openid-configuration").await, StatusCode::NOT_FOUND, "not_found").await;
}

async fn malformed_tenant_in_a_public_path_is_a_bad_request(db: TestDatabase) {
    let app = spawn_app(&db).await;

    for tenant in ["UPPER", "a_b", &"a".repeat(64), "-leading-dash"] {
        let response = app.get(&jwks_path(tenant)).await;
        assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
}

/// A retired key is published while inside its overlap window, and leaves the JWKS (as
/// `expired`) once `retired_at + overlap` (plus leeway, since no token was signed) has
/// passed, without any admin call: the rotation loop (every second in tests) does it.
async fn retired_key_leaves_the_jwks_once_its_overlap_has_passed(db: TestDatabase) {
    let clock = ManualClock::new(datetime!(2026-06-01 09:00 UTC));
    let app = spawn_app_with_clock(&db, Arc::new(clock.clone())).await;
    let policy = json!({
        "id": "acme", "rotation_period": "1h", "stage_lead": "5m", "overlap": "6m", "access_token_ttl": "1m",
    });
    let old = app.create_tenant(policy).await["active_kid"].as_str().unwrap().to_owned();
    let (status, rotation) = json(app.admin_post("/a/acme/admin/keys/rotate").await).await;
    assert_eq!((status, &rotation["retired_kid"]), (StatusCode::OK, &json!(old)), "{rotation}");

    clock.advance(time::Duration::minutes(5));
    assert!(app.jwks_kids("acme").await.contains(&old), "inside the overlap the retired key stays published");

    clock.advance(time::Duration::seconds(60 + 30 + 1)); // past retired_at + 6m + 30s leeway
    let (app_ref, old_ref) = (&app, &old);
    let published = eventually("the retired key to leave the JWKS", move || async move {
        let kids = app_ref.jwks_kids("acme").await;
        (!kids.contains(old_ref)).then_some(kids)
    })
    .await;

    assert_eq!(published, [rotation["active_kid"].as_str().unwrap().to_owned()]);
    assert_eq!(app.key_state("acme", &old).await, "expired");
    let app = app.restart().await;
    assert!(!app.jwks_kids("acme").await.contains(&old), "an expired key stays unpublished after a restart");
}
