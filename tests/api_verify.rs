//! `/verify` and `/introspect` (API.md "Verification"): one test per reason code, each with a
//! token that would pass but for that one defect; which reason wins when several apply;
//! attacks, none accepted and none a server error; the request shapes; dual-secret HS256;
//! the verified-token cache under revocation; and the verification metrics.
//!
//! Tokens with chosen claims are signed with the tenant's real private key, read from the
//! database (see `support::tokens`), so every defect is exactly the one the test names.

mod support;

use std::sync::Arc;

use keyward::clock::{Clock as _, SystemClock};
use keyward::config::Secret;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

use support::TestDatabase;
use support::app::{TestApp, assert_error, json, new_master_key, send, spawn_app, spawn_app_with, test_settings};
use support::tokens::{
    AttackerKey, Canary, DEFAULT_TENANT, JWT_SECRET, JWT_SECRET_OLD, TenantKey, access_token, active_kid,
    assert_accepted, assert_rejected, assert_rejection, b64, claims_of, clock_now, compact, ec_public_key_encodings,
    good_claims, hs256, introspect, issuer_of, metrics_text, now_unix, sample, session_for_alice, signing_input,
    spawn_app_at, unix, verify, verify_body, with_flipped_signature, with_payload,
};

support::backend_tests!(
    // every reason code
    token_with_every_claim_right_verifies_with_its_kid_alg_and_claims,
    token_without_exp_is_malformed,
    token_with_a_crit_header_is_malformed,
    token_longer_than_8_kib_is_malformed,
    header_alg_other_than_the_keys_own_is_unsupported_alg,
    hs256_token_for_a_tenant_without_a_secret_is_unsupported_alg,
    hs256_token_with_any_kid_for_a_tenant_without_a_secret_is_unsupported_alg,
    hs256_token_naming_an_es256_key_and_es256_token_naming_a_secret_are_unsupported_alg,
    token_naming_an_unknown_kid_is_unknown_kid,
    asymmetric_token_without_kid_is_unknown_kid,
    token_of_a_revoked_key_is_key_revoked,
    token_of_a_retired_key_verifies_during_its_overlap_and_is_key_expired_after,
    token_of_a_staged_key_is_key_not_active,
    token_signed_by_another_key_under_the_active_kid_is_bad_signature,
    token_past_exp_and_the_leeway_is_expired,
    issued_token_expires_after_its_ttl_plus_the_leeway,
    token_before_its_nbf_is_not_yet_valid,
    token_from_another_issuer_is_issuer_mismatch,
    token_for_another_audience_is_audience_mismatch,
    requested_audience_must_be_in_the_token,
    token_of_a_revoked_session_is_session_revoked,
    revoked_token_is_token_revoked_and_its_session_lives_on,
    // precedence
    with_several_defects_the_earliest_reason_wins,
    revoked_key_wins_over_a_bad_signature_and_expiry,
    audience_mismatch_wins_over_a_revoked_session,
    // attacks
    alg_none_is_never_accepted,
    hs256_keyed_with_the_tenants_public_key_is_refused,
    token_resigned_with_a_weak_secret_is_refused,
    tampered_payload_with_the_original_signature_is_bad_signature,
    garbage_is_malformed_and_never_a_server_error,
    duplicate_header_or_registered_claim_members_are_malformed,
    verify_and_introspect_agree_on_a_payload_with_a_lone_surrogate_escape,
    sql_looking_kid_is_unknown_kid,
    sql_looking_tenant_is_a_bad_request_everywhere,
    jku_x5u_and_jwk_headers_are_never_followed,
    // request shapes
    token_may_come_as_a_bearer_header,
    verify_without_a_token_is_malformed,
    verify_with_an_unparsable_json_body_is_a_bad_request,
    verify_with_a_body_of_another_media_type_is_415,
    verify_on_an_unknown_tenant_is_not_found,
    verify_body_over_the_limit_is_413_in_the_error_shape,
    introspection_of_a_good_token_is_active_with_its_claims_and_kid,
    introspection_of_any_bad_token_is_only_inactive,
    introspection_on_an_unknown_tenant_is_not_found,
    introspection_without_any_body_is_inactive,
    // dual-secret HS256
    hs256_token_signed_with_jwt_secret_verifies_without_fallback,
    hs256_token_signed_with_jwt_secret_old_verifies_and_counts_a_fallback,
    jwt_secret_old_stops_verifying_after_its_not_after,
    jwt_secret_old_not_after_in_the_past_never_verifies,
    hs256_token_naming_a_secret_is_checked_against_that_secret_only,
    rotated_secret_keeps_the_old_one_verifying_until_previous_not_after,
    generated_secret_is_returned_once_and_verifies,
    secret_shorter_than_32_bytes_is_refused,
    jwt_secret_shorter_than_32_bytes_stops_start_up,
    jwt_secrets_are_kept_as_they_are_across_a_restart,
    jwt_secret_rotated_through_the_environment_keeps_the_old_one_verifying,
    only_the_current_and_the_previous_secret_verify,
    jwks_never_publishes_a_secret,
    // cache
    verifying_the_same_token_twice_gives_the_same_answer,
    cached_token_is_key_revoked_as_soon_as_its_key_is_revoked,
    cached_token_is_session_revoked_as_soon_as_its_session_is_revoked,
    cached_token_is_token_revoked_as_soon_as_it_is_revoked,
    // metrics
    verify_outcomes_and_durations_are_counted,
);

// ------------------------------------------------------------------------ fixture

/// An app with tenant `acme` (ES256, audience `acme`) and its active key in hand.
struct Acme {
    app: TestApp,
    key: TenantKey,
    issuer: String,
}

impl Acme {
    async fn start(db: &TestDatabase) -> Acme {
        Acme::on(spawn_app(db).await, db).await
    }

    async fn on(app: TestApp, db: &TestDatabase) -> Acme {
        app.create_tenant_with_alg("acme", "ES256").await;
        let key = TenantKey::active(&app, db, "acme").await;
        let issuer = issuer_of(&app, "acme").await;
        Acme { app, key, issuer }
    }

    /// Claims that pass every check now.
    fn claims(&self) -> Value {
        good_claims(&self.issuer, "acme", now_unix())
    }

    async fn rejects(&self, token: &str, reason: &str) {
        assert_rejected(&self.app, "acme", token, reason).await;
    }

    async fn accepts(&self, token: &str) -> Value {
        assert_accepted(&self.app, "acme", token).await
    }
}

/// `claims` with `changes` merged in (a `null` value removes the claim).
fn with(claims: &Value, changes: Value) -> Value {
    let mut out = claims.as_object().expect("claims object").clone();
    for (name, value) in changes.as_object().expect("changes object") {
        if value.is_null() {
            out.remove(name);
        } else {
            out.insert(name.clone(), value.clone());
        }
    }
    Value::Object(out)
}

/// An app whose default tenant has JWT_SECRET and JWT_SECRET_OLD.
async fn app_with_jwt_secrets(db: &TestDatabase) -> TestApp {
    spawn_app_with(db, |s| {
        s.jwt_secret = Some(Secret::new(JWT_SECRET));
        s.jwt_secret_old = Some(Secret::new(JWT_SECRET_OLD));
    })
    .await
}

/// Good claims for the default tenant at `now`.
async fn default_claims(app: &TestApp, now: i64) -> Value {
    good_claims(&issuer_of(app, DEFAULT_TENANT).await, DEFAULT_TENANT, now)
}

/// An HS256 token without kid, as common JWT libraries make them.
fn hs256_no_kid(secret: &str, claims: &Value) -> String {
    hs256(secret.as_bytes(), &json!({ "alg": "HS256", "typ": "JWT" }), claims)
}

async fn revoke_session(app: &TestApp, tenant: &str, sid: &str) {
    let path = format!("/a/{tenant}/admin/revoke/sessions");
    let (status, body) = json(app.admin_post_json(&path, &json!({ "session_id": sid })).await).await;
    assert_eq!((status, &body["revoked"]), (StatusCode::OK, &json!(1)), "{body}");
}

async fn revoke_jti(app: &TestApp, tenant: &str, jti: &str) {
    let path = format!("/a/{tenant}/admin/revoke/tokens");
    let (status, body) = json(app.admin_post_json(&path, &json!({ "jti": jti })).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn rotate_secret(app: &TestApp, tenant: &str, body: Option<Value>) -> Value {
    let path = format!("/a/{tenant}/admin/secrets/rotate");
    let response = match body {
        Some(body) => app.admin_post_json(&path, &body).await,
        None => app.admin_post(&path).await,
    };
    let (status, rotated) = json(response).await;
    assert_eq!(status, StatusCode::OK, "rotating the secret of {tenant}: {rotated}");
    rotated
}

fn string(value: &Value) -> String {
    value.as_str().unwrap_or_else(|| panic!("not a string: {value}")).to_owned()
}

// ------------------------------------------------------------- every reason code

async fn token_with_every_claim_right_verifies_with_its_kid_alg_and_claims(db: TestDatabase) {
    let acme = Acme::start(&db).await;
    let claims = with(&acme.claims(), json!({ "role": "admin", "nested": { "a": [1, 2] } }));

    let body = acme.accepts(&acme.key.sign(&claims)).await;

    assert_eq!(body, json!({ "active": true, "kid": acme.key.kid, "alg": "ES256", "claims": claims }));
}

async fn token_without_exp_is_malformed(db: TestDatabase) {
    let acme = Acme::start(&db).await;

    acme.rejects(&acme.key.sign(&with(&acme.claims(), json!({ "exp": null }))), "malformed").await;
    acme.rejects(&acme.key.sign(&with(&acme.claims(), json!({ "exp": "tomorrow" }))), "malformed").await;
}

async fn token_with_a_crit_header_is_malformed(db: TestDatabase) {
    let acme = Acme::start(&db).await;
    let header = with(&acme.key.header(), json!({ "crit": ["exp"], "exp": 1 }));

    acme.rejects(&acme.key.sign_with_header(&header, &acme.claims()), "malformed").await;
}

async fn token_longer_than_8_kib_is_malformed(db: TestDatabase) {
    let acme = Acme::start(&db).await;
    let base = acme.claims();
    // An ES256 signature is 64 bytes: 86 base64url characters, plus the dot.
    let length =
        |pad: usize| signing_input(&acme.key.header(), &with(&base, json!({ "pad": "x".repeat(pad) }))).len() + 87;
    let longest_allowed = (0..8192).rev().find(|&pad| length(pad) <= 8192).expect("a padding that fits");
    let sign = |pad: usize| acme.key.sign(&with(&base, json!({ "pad": "x".repeat(pad) })));
    let (fits, too_long) = (sign(longest_allowed), sign(longest_allowed + 1));
    assert!(fits.len() >= 8190 && fits.len() <= 8192, "{}", fits.len());
    assert!(too_long.len() > 8192, "{}", too_long.len());

    acme.accepts(&fits).await;
    acme.rejects(&too_long, "malformed").await;
    acme.rejects(&sign(20_000), "malformed").await;
}

async fn header_alg_other_than_the_keys_own_is_unsupported_alg(db: TestDatabase) {
    let acme = Acme::start(&db).await;

    for alg in ["RS256", "EdDSA", "ES384", "PS256", "HS512", "es256", "ES256 "] {
        let header = with(&acme.key.header(), json!({ "alg": alg }));
        let token = acme.key.sign_with_header(&header, &acme.claims());
        acme.rejects(&token, "unsupported_alg").await;
    }
}

async fn hs256_token_for_a_tenant_without_a_secret_is_unsupported_alg(db: TestDatabase) {
    let acme = Acme::start(&db).await;

    let token = hs256_no_kid(JWT_SECRET, &acme.claims());

    acme.rejects(&token, "unsupported_alg").await;
}

async fn hs256_token_with_any_kid_for_a_tenant_without_a_secret_is_unsupported_alg(db: TestDatabase) {
    let acme = Acme::start(&db).await;

    for kid in ["no-such-kid", "hs256-AAAAAAAAAAAA", acme.key.kid.as_str()] {
        let token = hs256(JWT_SECRET.as_bytes(), &json!({ "alg": "HS256", "kid": kid }), &acme.claims());
        acme.rejects(&token, "unsupported_alg").await;
    }
}

async fn hs256_token_naming_an_es256_key_and_es256_token_naming_a_secret_are_unsupported_alg(db: TestDatabase) {
    let app = app_with_jwt_secrets(&db).await;
    let es256 = TenantKey::active(&app, &db, DEFAULT_TENANT).await;
    let secret_kid =
        string(&rotate_secret(&app, DEFAULT_TENANT, Some(json!({ "secret": JWT_SECRET }))).await["current_kid"]);
    let claims = default_claims(&app, now_unix()).await;

    let hs_under_es_kid = hs256(JWT_SECRET.as_bytes(), &json!({ "alg": "HS256", "kid": es256.kid }), &claims);
    assert_rejected(&app, DEFAULT_TENANT, &hs_under_es_kid, "unsupported_alg").await;

    let es_under_secret_kid = es256.sign_with_header(&json!({ "alg": "ES256", "kid": secret_kid }), &claims);
    assert_rejected(&app, DEFAULT_TENANT, &es_under_secret_kid, "unsupported_alg").await;

    // The same secret under its own kid is fine: the refusals above are about the pairing.
    let good = hs256(JWT_SECRET.as_bytes(), &json!({ "alg": "HS256", "kid": secret_kid }), &claims);
    assert_accepted(&app, DEFAULT_TENANT, &good).await;
}

async fn token_naming_an_unknown_kid_is_unknown_kid(db: TestDatabase) {
    let acme = Acme::start(&db).await;
    let header = with(&acme.key.header(), json!({ "kid": "no-such-kid" }));

    acme.rejects(&acme.key.sign_with_header(&header, &acme.claims()), "unknown_kid").await;
}

async fn asymmetric_token_without_kid_is_unknown_kid(db: TestDatabase) {
    let acme = Acme::start(&db).await;

    let token = acme.key.sign_with_header(&json!({ "alg": "ES256", "typ": "at+jwt" }), &acme.claims());

    acme.rejects(&token, "unknown_kid").await;
}

async fn token_of_a_revoked_key_is_key_revoked(db: TestDatabase) {
    let acme = Acme::start(&db).await;
    let forged = acme.key.sign(&acme.claims());
    let issued = access_token(&session_for_alice(&acme.app, "acme").await);

    acme.app.revoke_key("acme", &acme.key.kid).await;

    acme.rejects(&forged, "key_revoked").await;
    acme.rejects(&issued, "key_revoked").await;
    let replacement = access_token(&session_for_alice(&acme.app, "acme").await);
    acme.accepts(&replacement).await;
}

async fn token_of_a_retired_key_verifies_during_its_overlap_and_is_key_expired_after(db: TestDatabase) {
    let clock = clock_now();
    let app = spawn_app_at(&db, &clock, |_| {}).await;
    app.create_tenant(json!({ "id": "acme", "access_token_ttl": "1m", "overlap": "10m" })).await;
    let old = TenantKey::active(&app, &db, "acme").await;
    let issuer = issuer_of(&app, "acme").await;
    let issued = access_token(&session_for_alice(&app, "acme").await);
    let (status, rotated) = json(app.admin_post("/a/acme/admin/keys/rotate").await).await;
    assert_eq!((status, &rotated["retired_kid"]), (StatusCode::OK, &json!(old.kid)), "{rotated}");

    clock.advance(Duration::minutes(9));
    let in_overlap = old.sign(&good_claims(&issuer, "acme", unix(clock.now())));
    assert_accepted(&app, "acme", &in_overlap).await;

    clock.advance(Duration::minutes(1) + Duration::seconds(1));
    // Only the key's age is wrong with this one: its own claims are fresh.
    let after_expiry = old.sign(&good_claims(&issuer, "acme", unix(clock.now())));
    assert_rejected(&app, "acme", &after_expiry, "key_expired").await;
    assert_rejected(&app, "acme", &with_flipped_signature(&after_expiry), "key_expired").await;
    assert_rejected(&app, "acme", &in_overlap, "key_expired").await;
    assert_rejected(&app, "acme", &issued, "key_expired").await;
}

async fn token_of_a_staged_key_is_key_not_active(db: TestDatabase) {
    let acme = Acme::start(&db).await;
    let staged = TenantKey::load(&acme.app, &db, "acme", &acme.app.stage_key("acme").await).await;

    acme.rejects(&staged.sign(&acme.claims()), "key_not_active").await;
}

async fn token_signed_by_another_key_under_the_active_kid_is_bad_signature(db: TestDatabase) {
    let acme = Acme::start(&db).await;
    let staged = TenantKey::load(&acme.app, &db, "acme", &acme.app.stage_key("acme").await).await;

    let token = staged.sign_with_header(&acme.key.header(), &acme.claims());

    acme.rejects(&token, "bad_signature").await;
    acme.rejects(&with_flipped_signature(&acme.key.sign(&acme.claims())), "bad_signature").await;
}

async fn token_past_exp_and_the_leeway_is_expired(db: TestDatabase) {
    let acme = Acme::start(&db).await;
    let now = now_unix();

    acme.rejects(&acme.key.sign(&with(&acme.claims(), json!({ "exp": now - 120 }))), "expired").await;
    // Within the 30 s leeway a token that has just expired still verifies.
    acme.accepts(&acme.key.sign(&with(&acme.claims(), json!({ "exp": now - 10 })))).await;
}

async fn issued_token_expires_after_its_ttl_plus_the_leeway(db: TestDatabase) {
    let clock = clock_now();
    let app = spawn_app_at(&db, &clock, |_| {}).await;
    app.create_tenant(json!({ "id": "acme", "access_token_ttl": "15m" })).await;
    let token = access_token(&session_for_alice(&app, "acme").await);
    assert_accepted(&app, "acme", &token).await;

    clock.advance(Duration::minutes(15) + Duration::seconds(29));
    assert_accepted(&app, "acme", &token).await;

    clock.advance(Duration::seconds(2));
    assert_rejected(&app, "acme", &token, "expired").await;
}

async fn token_before_its_nbf_is_not_yet_valid(db: TestDatabase) {
    let acme = Acme::start(&db).await;
    let now = now_unix();

    acme.rejects(&acme.key.sign(&with(&acme.claims(), json!({ "nbf": now + 300 }))), "not_yet_valid").await;
    acme.accepts(&acme.key.sign(&with(&acme.claims(), json!({ "nbf": now + 10 })))).await;
}

async fn token_from_another_issuer_is_issuer_mismatch(db: TestDatabase) {
    let acme = Acme::start(&db).await;

    let other = acme.key.sign(&with(&acme.claims(), json!({ "iss": "https://evil.example" })));
    acme.rejects(&other, "issuer_mismatch").await;
    let suffixed = acme.key.sign(&with(&acme.claims(), json!({ "iss": format!("{}/", acme.issuer) })));
    acme.rejects(&suffixed, "issuer_mismatch").await;
    acme.rejects(&acme.key.sign(&with(&acme.claims(), json!({ "iss": null }))), "issuer_mismatch").await;
}

async fn token_for_another_audience_is_audience_mismatch(db: TestDatabase) {
    let acme = Acme::start(&db).await;

    for aud in [json!("other"), json!(["other", "more"]), json!([]), json!(null)] {
        let token = acme.key.sign(&with(&acme.claims(), json!({ "aud": aud })));
        acme.rejects(&token, "audience_mismatch").await;
    }
    acme.accepts(&acme.key.sign(&with(&acme.claims(), json!({ "aud": ["other", "acme"] })))).await;
}

async fn requested_audience_must_be_in_the_token(db: TestDatabase) {
    let acme = Acme::start(&db).await;
    let token = acme.key.sign(&with(&acme.claims(), json!({ "aud": ["acme", "billing"] })));

    let (status, _) =
        json(verify_body(&acme.app, "acme", &json!({ "token": token, "audience": "billing" })).await).await;
    assert_eq!(status, StatusCode::OK);
    let response = verify_body(&acme.app, "acme", &json!({ "token": token, "audience": "reports" })).await;
    assert_rejection(response, "audience_mismatch").await;
}

async fn token_of_a_revoked_session_is_session_revoked(db: TestDatabase) {
    let acme = Acme::start(&db).await;
    let revoked = session_for_alice(&acme.app, "acme").await;
    let other = session_for_alice(&acme.app, "acme").await;

    revoke_session(&acme.app, "acme", &string(&revoked["session_id"])).await;

    acme.rejects(&access_token(&revoked), "session_revoked").await;
    acme.accepts(&access_token(&other)).await;
}

async fn revoked_token_is_token_revoked_and_its_session_lives_on(db: TestDatabase) {
    let acme = Acme::start(&db).await;
    let session = session_for_alice(&acme.app, "acme").await;
    let first = access_token(&session);
    let response = support::tokens::refresh(&acme.app, "acme", &string(&session["refresh_token"])).await;
    let (status, refreshed) = json(response).await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");

    revoke_jti(&acme.app, "acme", &string(&claims_of(&first)["jti"])).await;

    acme.rejects(&first, "token_revoked").await;
    acme.accepts(&access_token(&refreshed)).await;
}

// -------------------------------------------------------------------- precedence

async fn with_several_defects_the_earliest_reason_wins(db: TestDatabase) {
    let acme = Acme::start(&db).await;
    let staged = TenantKey::load(&acme.app, &db, "acme", &acme.app.stage_key("acme").await).await;
    let now = now_unix();
    let good = acme.claims();
    let expired = with(&good, json!({ "exp": now - 3600 }));
    let none = |header: Value, claims: &Value| compact(&header, claims, b"");
    let cases: Vec<(&str, String, &str)> = vec![
        ("expired and for another audience", acme.key.sign(&with(&expired, json!({ "aud": "other" }))), "expired"),
        ("bad signature and expired", with_flipped_signature(&acme.key.sign(&expired)), "bad_signature"),
        ("unknown kid and alg none", none(json!({ "alg": "none", "kid": "no-such-kid" }), &good), "unsupported_alg"),
        ("no exp and alg none", none(json!({ "alg": "none" }), &with(&good, json!({ "exp": null }))), "malformed"),
        ("crit and alg none", none(json!({ "alg": "none", "crit": ["x"] }), &good), "malformed"),
        (
            "wrong alg for the kid and a bad signature",
            compact(&with(&acme.key.header(), json!({ "alg": "EdDSA" })), &good, b"junk"),
            "unsupported_alg",
        ),
        (
            "unknown kid and a bad signature",
            compact(&with(&acme.key.header(), json!({ "kid": "no-such-kid" })), &good, b"junk"),
            "unknown_kid",
        ),
        ("staged key and a bad signature", compact(&staged.header(), &expired, b"junk"), "key_not_active"),
        (
            "not yet valid and from another issuer",
            acme.key.sign(&with(&good, json!({ "nbf": now + 3600, "iss": "https://evil.example" }))),
            "not_yet_valid",
        ),
        (
            "from another issuer and for another audience",
            acme.key.sign(&with(&good, json!({ "iss": "https://evil.example", "aud": "other" }))),
            "issuer_mismatch",
        ),
    ];

    for (defects, token, reason) in cases {
        let (status, body) = json(verify(&acme.app, "acme", &token).await).await;
        assert_eq!((status, &body["error"]), (StatusCode::UNAUTHORIZED, &json!(reason)), "{defects}: {body}");
    }
}

async fn revoked_key_wins_over_a_bad_signature_and_expiry(db: TestDatabase) {
    let acme = Acme::start(&db).await;
    let expired = acme.key.sign(&with(&acme.claims(), json!({ "exp": now_unix() - 3600 })));

    acme.app.revoke_key("acme", &acme.key.kid).await;

    acme.rejects(&with_flipped_signature(&expired), "key_revoked").await;
}

async fn audience_mismatch_wins_over_a_revoked_session(db: TestDatabase) {
    let acme = Acme::start(&db).await;
    let session = session_for_alice(&acme.app, "acme").await;
    revoke_session(&acme.app, "acme", &string(&session["session_id"])).await;

    let body = json!({ "token": access_token(&session), "audience": "reports" });

    assert_rejection(verify_body(&acme.app, "acme", &body).await, "audience_mismatch").await;
}

// ----------------------------------------------------------------------- attacks

async fn alg_none_is_never_accepted(db: TestDatabase) {
    let acme = Acme::start(&db).await;
    let claims = acme.claims();
    let real = acme.key.sign(&claims);
    let real_signature = real.rsplit_once('.').unwrap().1.to_owned();

    for alg in ["none", "None", "NONE", "nOnE", ""] {
        for header in [json!({ "alg": alg }), json!({ "alg": alg, "kid": acme.key.kid, "typ": "at+jwt" })] {
            let unsigned = compact(&header, &claims, b"");
            let with_real_signature = format!("{}.{real_signature}", signing_input(&header, &claims));
            for token in [unsigned, with_real_signature] {
                let (status, body) = json(verify(&acme.app, "acme", &token).await).await;
                assert_eq!(
                    (status, &body),
                    (StatusCode::UNAUTHORIZED, &json!({ "active": false, "error": "unsupported_alg" })),
                    "header {header}"
                );
            }
        }
    }
}

async fn hs256_keyed_with_the_tenants_public_key_is_refused(db: TestDatabase) {
    let app = app_with_jwt_secrets(&db).await;
    let kid = active_kid(&app, DEFAULT_TENANT).await;
    let (_, _, jwks) = app.jwks(DEFAULT_TENANT).await;
    let jwk = jwks["keys"].as_array().unwrap().iter().find(|k| k["kid"] == kid.as_str()).expect("active JWK").clone();
    let (raw_point, pem) = ec_public_key_encodings(&jwk);
    let claims = default_claims(&app, now_unix()).await;
    let x_and_y = raw_point[1..].to_vec();

    for hmac_key in [pem.as_bytes(), pem.trim_end().as_bytes(), &raw_point[..], &x_and_y[..]] {
        let under_kid = hs256(hmac_key, &json!({ "alg": "HS256", "kid": kid, "typ": "JWT" }), &claims);
        assert_rejected(&app, DEFAULT_TENANT, &under_kid, "unsupported_alg").await;
        // Without a kid it is tried against the tenant's shared secrets, which it is not.
        let no_kid = hs256(hmac_key, &json!({ "alg": "HS256", "typ": "JWT" }), &claims);
        assert_rejected(&app, DEFAULT_TENANT, &no_kid, "bad_signature").await;
    }
}

async fn token_resigned_with_a_weak_secret_is_refused(db: TestDatabase) {
    let app = app_with_jwt_secrets(&db).await;
    app.create_tenant_with_alg("acme", "ES256").await;
    let kid = active_kid(&app, DEFAULT_TENANT).await;
    let default = default_claims(&app, now_unix()).await;
    let acme = good_claims(&issuer_of(&app, "acme").await, "acme", now_unix());

    for weak in ["secret", "", "password", "your-256-bit-secret", "changeme"] {
        assert_rejected(&app, DEFAULT_TENANT, &hs256_no_kid(weak, &default), "bad_signature").await;
        let under_kid = hs256(weak.as_bytes(), &json!({ "alg": "HS256", "kid": kid }), &default);
        assert_rejected(&app, DEFAULT_TENANT, &under_kid, "unsupported_alg").await;
        assert_rejected(&app, "acme", &hs256_no_kid(weak, &acme), "unsupported_alg").await;
    }
}

async fn tampered_payload_with_the_original_signature_is_bad_signature(db: TestDatabase) {
    let acme = Acme::start(&db).await;
    let session = session_for_alice(&acme.app, "acme").await;
    let token = access_token(&session);
    acme.accepts(&token).await;

    let claims = claims_of(&token);
    for change in [
        json!({ "sub": "mallory" }),
        json!({ "scope": "admin" }),
        json!({ "exp": unix(OffsetDateTime::now_utc()) + 86_400 * 365 }),
        json!({ "role": "admin" }),
    ] {
        acme.rejects(&with_payload(&token, &with(&claims, change)), "bad_signature").await;
    }
}

async fn garbage_is_malformed_and_never_a_server_error(db: TestDatabase) {
    let acme = Acme::start(&db).await;
    let header = b64(acme.key.header().to_string());
    let payload = b64(acme.claims().to_string());
    let signature = acme.key.sign(&acme.claims()).rsplit_once('.').unwrap().1.to_owned();
    let cases: Vec<(&str, String)> = vec![
        ("one word", "garbage".into()),
        ("two segments", format!("{header}.{payload}")),
        ("four segments", format!("{header}.{payload}.{signature}.{signature}")),
        ("five segments (JWE)", format!("{header}.{payload}.a.b.{signature}")),
        ("only dots", "..".into()),
        ("empty header", format!(".{payload}.{signature}")),
        ("empty payload", format!("{header}..{signature}")),
        ("bad base64 header", format!("!!!.{payload}.{signature}")),
        ("bad base64 payload", format!("{header}.%%%.{signature}")),
        ("bad base64 signature", format!("{header}.{payload}.***")),
        ("padded base64", format!("{header}=.{payload}.{signature}")),
        ("header is an array", format!("{}.{payload}.{signature}", b64("[1]"))),
        ("header is null", format!("{}.{payload}.{signature}", b64("null"))),
        ("header is a string", format!("{}.{payload}.{signature}", b64("\"ES256\""))),
        ("header is not JSON", format!("{}.{payload}.{signature}", b64("{alg"))),
        ("header without alg", format!("{}.{payload}.{signature}", b64("{\"kid\":\"k\"}"))),
        ("alg is a number", format!("{}.{payload}.{signature}", b64("{\"alg\":256}"))),
        ("payload is an array", format!("{header}.{}.{signature}", b64("[]"))),
        ("payload is a number", format!("{header}.{}.{signature}", b64("42"))),
        ("payload is not JSON", format!("{header}.{}.{signature}", b64("exp=1"))),
        ("payload is not UTF-8", format!("{header}.{}.{signature}", b64([0xff, 0xfe, 0x7b]))),
        ("non-ASCII", "é.ü.ß".into()),
        ("whitespace inside", format!("{header} .{payload}.{signature}")),
        ("one huge segment", "a".repeat(9000)),
    ];

    for (what, token) in cases {
        let (status, body) = json(verify(&acme.app, "acme", &token).await).await;
        assert_eq!(
            (status, &body),
            (StatusCode::UNAUTHORIZED, &json!({ "active": false, "error": "malformed" })),
            "{what}"
        );
    }
}

async fn duplicate_header_or_registered_claim_members_are_malformed(db: TestDatabase) {
    let acme = Acme::start(&db).await;
    let (iss, exp) = (acme.issuer.clone(), now_unix() + 600);
    let header = acme.key.header().to_string();
    let good = format!(r#"{{"iss":"{iss}","aud":"acme","sub":"alice","exp":{exp}}}"#);
    acme.accepts(&acme.key.sign_raw(&header, &good)).await;

    // A parser that keeps the first member and one that keeps the last must never disagree
    // about what was verified.
    let kid = &acme.key.kid;
    let two_algs = format!(r#"{{"alg":"none","alg":"ES256","kid":"{kid}"}}"#);
    acme.rejects(&acme.key.sign_raw(&two_algs, &good), "malformed").await;
    let two_kids = format!(r#"{{"alg":"ES256","kid":"other","kid":"{kid}"}}"#);
    acme.rejects(&acme.key.sign_raw(&two_kids, &good), "malformed").await;
    for duplicated in [
        format!(r#"{{"iss":"{iss}","aud":"acme","sub":"alice","sub":"admin","exp":{exp}}}"#),
        format!(r#"{{"iss":"{iss}","aud":"acme","sub":"alice","exp":1,"exp":{exp}}}"#),
        format!(r#"{{"iss":"https://evil.example","iss":"{iss}","aud":"acme","sub":"alice","exp":{exp}}}"#),
        format!(r#"{{"iss":"{iss}","aud":"other","aud":"acme","sub":"alice","exp":{exp}}}"#),
    ] {
        acme.rejects(&acme.key.sign_raw(&header, &duplicated), "malformed").await;
    }
}

async fn verify_and_introspect_agree_on_a_payload_with_a_lone_surrogate_escape(db: TestDatabase) {
    let acme = Acme::start(&db).await;
    // What JavaScript's JSON.stringify writes for a string holding an unpaired surrogate,
    // e.g. user input copied into a custom claim by a service signing with JWT_SECRET.
    let (iss, exp) = (acme.issuer.clone(), now_unix() + 600);
    let payload = format!(r#"{{"iss":"{iss}","aud":"acme","sub":"alice","exp":{exp},"note":"\ud800"}}"#);
    let token = acme.key.sign_raw(&acme.key.header().to_string(), &payload);

    let response = verify(&acme.app, "acme", &token).await;
    let status = response.status();
    let text = response.text().await.expect("body");
    let (_, introspected) = introspect(&acme.app, "acme", &token).await;

    let answer: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("/verify answered {status} {text}: {e}"));
    assert_eq!(answer["active"], introspected["active"], "/verify: {answer}, /introspect: {introspected}");
}

async fn sql_looking_kid_is_unknown_kid(db: TestDatabase) {
    let acme = Acme::start(&db).await;

    for kid in ["' OR 1=1 --", "x'; DROP TABLE keys; --", "\" OR \"\"=\""] {
        let header = with(&acme.key.header(), json!({ "kid": kid }));
        acme.rejects(&acme.key.sign_with_header(&header, &acme.claims()), "unknown_kid").await;
    }
    // The keys are all still there.
    assert_eq!(acme.app.keys("acme").await.len(), 1);
    acme.accepts(&acme.key.sign(&acme.claims())).await;
}

async fn sql_looking_tenant_is_a_bad_request_everywhere(db: TestDatabase) {
    let acme = Acme::start(&db).await;
    let token = acme.key.sign(&acme.claims());
    let tenant = "%27%20OR%201%3D1%20--";

    let verify = send(acme.app.request(Method::POST, &format!("/a/{tenant}/verify")).json(&json!({ "token": token })));
    assert_error(verify.await, StatusCode::BAD_REQUEST, "invalid_request").await;
    let introspect = acme.app.request(Method::POST, &format!("/a/{tenant}/introspect")).form(&[("token", &token)]);
    assert_error(send(introspect).await, StatusCode::BAD_REQUEST, "invalid_request").await;
    let session = acme.app.admin_post_json(&format!("/a/{tenant}/sessions"), &json!({ "user_id": "alice" })).await;
    assert_error(session, StatusCode::BAD_REQUEST, "invalid_request").await;
    let form = [("grant_type", "refresh_token"), ("refresh_token", "kwrt_x")];
    let refresh = acme.app.request(Method::POST, &format!("/a/{tenant}/token")).form(&form);
    assert_error(send(refresh).await, StatusCode::BAD_REQUEST, "invalid_request").await;
    let jwks = acme.app.get(&format!("/a/{tenant}/.well-known/jwks.json")).await;
    assert_error(jwks, StatusCode::BAD_REQUEST, "invalid_request").await;
}

async fn jku_x5u_and_jwk_headers_are_never_followed(db: TestDatabase) {
    let acme = Acme::start(&db).await;
    let canary = Canary::start().await;
    let attacker = AttackerKey::generate();
    let remote = json!({
        "jku": format!("{}/jwks.json", canary.url),
        "x5u": format!("{}/cert.pem", canary.url),
        "jwk": attacker.public_jwk(),
    });

    let no_kid = with(&remote, json!({ "alg": "ES256" }));
    acme.rejects(&attacker.sign_with_header(&no_kid, &acme.claims()), "unknown_kid").await;
    let own_kid = with(&remote, json!({ "alg": "ES256", "kid": "attacker" }));
    acme.rejects(&attacker.sign_with_header(&own_kid, &acme.claims()), "unknown_kid").await;
    let tenant_kid = with(&remote, json!({ "alg": "ES256", "kid": acme.key.kid }));
    acme.rejects(&attacker.sign_with_header(&tenant_kid, &acme.claims()), "bad_signature").await;
    // The tenant's own token carrying the same headers verifies: they are simply ignored.
    acme.accepts(&acme.key.sign_with_header(&tenant_kid, &acme.claims())).await;

    assert_eq!(canary.contacts().await, 0, "a remote key URL was fetched");
}

// ---------------------------------------------------------------- request shapes

async fn token_may_come_as_a_bearer_header(db: TestDatabase) {
    let acme = Acme::start(&db).await;
    let token = acme.key.sign(&acme.claims());

    for scheme in ["Bearer", "bearer"] {
        let request =
            acme.app.request(Method::POST, "/a/acme/verify").header(AUTHORIZATION, format!("{scheme} {token}"));
        let (status, body) = json(send(request).await).await;
        assert_eq!((status, &body["kid"]), (StatusCode::OK, &json!(acme.key.kid)), "{scheme}: {body}");
    }
    let bad = acme.app.request(Method::POST, "/a/acme/verify").header(AUTHORIZATION, "Bearer not.a.token");
    assert_rejection(send(bad).await, "malformed").await;
}

async fn verify_without_a_token_is_malformed(db: TestDatabase) {
    let acme = Acme::start(&db).await;

    assert_rejection(send(acme.app.request(Method::POST, "/a/acme/verify")).await, "malformed").await;
    for body in [json!({}), json!({ "token": "" }), json!({ "audience": "acme" })] {
        assert_rejection(verify_body(&acme.app, "acme", &body).await, "malformed").await;
    }
}

async fn verify_with_an_unparsable_json_body_is_a_bad_request(db: TestDatabase) {
    let acme = Acme::start(&db).await;
    let post = |body: &'static str| {
        acme.app.request(Method::POST, "/a/acme/verify").header(CONTENT_TYPE, "application/json").body(body)
    };

    for body in ["not json", "{\"token\":", "{\"token\": 5}", "{\"token\": [\"a\"]}", "{\"token\": {}}"] {
        assert_error(send(post(body)).await, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    let bad_audience = json!({ "token": "a.b.c", "audience": 7 });
    assert_error(verify_body(&acme.app, "acme", &bad_audience).await, StatusCode::BAD_REQUEST, "invalid_request").await;
}

async fn verify_with_a_body_of_another_media_type_is_415(db: TestDatabase) {
    let acme = Acme::start(&db).await;
    let token = acme.key.sign(&acme.claims());

    for content_type in ["text/plain", "application/x-www-form-urlencoded"] {
        let request = acme
            .app
            .request(Method::POST, "/a/acme/verify")
            .header(CONTENT_TYPE, content_type)
            .body(format!("token={token}"));
        assert_error(send(request).await, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type").await;
    }
}

async fn verify_on_an_unknown_tenant_is_not_found(db: TestDatabase) {
    let acme = Acme::start(&db).await;
    let token = acme.key.sign(&acme.claims());

    assert_error(verify(&acme.app, "nobody", &token).await, StatusCode::NOT_FOUND, "not_found").await;
}

async fn verify_body_over_the_limit_is_413_in_the_error_shape(db: TestDatabase) {
    let acme = Acme::start(&db).await;
    let huge = json!({ "token": "a".repeat(70 * 1024) });

    let response = verify_body(&acme.app, "acme", &huge).await;

    assert_error(response, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
}

async fn introspection_of_a_good_token_is_active_with_its_claims_and_kid(db: TestDatabase) {
    let acme = Acme::start(&db).await;
    let token = access_token(&session_for_alice(&acme.app, "acme").await);

    let (status, body) = introspect(&acme.app, "acme", &token).await;

    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((&body["active"], &body["kid"]), (&json!(true), &json!(acme.key.kid)), "{body}");
    for (name, value) in claims_of(&token).as_object().unwrap() {
        assert_eq!(&body[name], value, "claim {name}: {body}");
    }
}

async fn introspection_of_any_bad_token_is_only_inactive(db: TestDatabase) {
    let acme = Acme::start(&db).await;
    let session = session_for_alice(&acme.app, "acme").await;
    let revoked = access_token(&session);
    revoke_session(&acme.app, "acme", &string(&session["session_id"])).await;
    let expired = acme.key.sign(&with(&acme.claims(), json!({ "exp": now_unix() - 3600 })));
    let none = compact(&json!({ "alg": "none" }), &acme.claims(), b"");

    for token in [revoked.as_str(), &expired, &none, "garbage", "", &"a".repeat(9000)] {
        let (status, body) = introspect(&acme.app, "acme", token).await;
        assert_eq!((status, &body), (StatusCode::OK, &json!({ "active": false })), "{token:.40}");
    }
    let no_field = acme.app.request(Method::POST, "/a/acme/introspect").form(&[("token_type_hint", "access_token")]);
    let (status, body) = json(send(no_field).await).await;
    assert_eq!((status, body), (StatusCode::OK, json!({ "active": false })));
}

async fn introspection_on_an_unknown_tenant_is_not_found(db: TestDatabase) {
    let acme = Acme::start(&db).await;
    let token = acme.key.sign(&acme.claims());

    let response = send(acme.app.request(Method::POST, "/a/nobody/introspect").form(&[("token", token)])).await;

    assert_error(response, StatusCode::NOT_FOUND, "not_found").await;
}

async fn introspection_without_any_body_is_inactive(db: TestDatabase) {
    let acme = Acme::start(&db).await;

    let (status, body) = json(send(acme.app.request(Method::POST, "/a/acme/introspect")).await).await;

    assert_eq!((status, body), (StatusCode::OK, json!({ "active": false })));
}

// -------------------------------------------------------------- dual-secret HS256

async fn fallbacks(app: &TestApp) -> f64 {
    let text = metrics_text(app).await;
    sample(&text, "keyward_secret_fallback_total", &["tenant=\"default\""]).unwrap_or(0.0)
}

async fn hs256_token_signed_with_jwt_secret_verifies_without_fallback(db: TestDatabase) {
    let app = app_with_jwt_secrets(&db).await;
    let claims = default_claims(&app, now_unix()).await;

    let body = assert_accepted(&app, DEFAULT_TENANT, &hs256_no_kid(JWT_SECRET, &claims)).await;

    assert_eq!((&body["alg"], &body["claims"]), (&json!("HS256"), &claims), "{body}");
    assert_eq!(fallbacks(&app).await, 0.0);
    // A good HS256 signature is not enough: the claims are checked like any other token's.
    let elsewhere = with(&claims, json!({ "iss": "https://evil.example" }));
    assert_rejected(&app, DEFAULT_TENANT, &hs256_no_kid(JWT_SECRET, &elsewhere), "issuer_mismatch").await;
}

async fn hs256_token_signed_with_jwt_secret_old_verifies_and_counts_a_fallback(db: TestDatabase) {
    let app = app_with_jwt_secrets(&db).await;
    let current =
        assert_accepted(&app, DEFAULT_TENANT, &hs256_no_kid(JWT_SECRET, &default_claims(&app, now_unix()).await)).await;

    let token = hs256_no_kid(JWT_SECRET_OLD, &default_claims(&app, now_unix()).await);
    let previous = assert_accepted(&app, DEFAULT_TENANT, &token).await;

    assert_eq!(previous["alg"], "HS256");
    assert_ne!(previous["kid"], current["kid"], "the previous secret has a kid of its own");
    assert_eq!(fallbacks(&app).await, 1.0);
}

async fn jwt_secret_old_stops_verifying_after_its_not_after(db: TestDatabase) {
    let clock = clock_now();
    let not_after = clock.now() + Duration::hours(1);
    let app = spawn_app_at(&db, &clock, |s| {
        s.jwt_secret = Some(Secret::new(JWT_SECRET));
        s.jwt_secret_old = Some(Secret::new(JWT_SECRET_OLD));
        s.jwt_secret_old_not_after = Some(not_after);
    })
    .await;
    let before = hs256_no_kid(JWT_SECRET_OLD, &default_claims(&app, unix(clock.now())).await);
    assert_accepted(&app, DEFAULT_TENANT, &before).await;

    clock.advance(Duration::hours(1) + Duration::seconds(1));

    let after = hs256_no_kid(JWT_SECRET_OLD, &default_claims(&app, unix(clock.now())).await);
    assert_rejected(&app, DEFAULT_TENANT, &after, "bad_signature").await;
    assert_accepted(&app, DEFAULT_TENANT, &hs256_no_kid(JWT_SECRET, &default_claims(&app, unix(clock.now())).await))
        .await;
}

async fn jwt_secret_old_not_after_in_the_past_never_verifies(db: TestDatabase) {
    let app = spawn_app_with(&db, |s| {
        s.jwt_secret = Some(Secret::new(JWT_SECRET));
        s.jwt_secret_old = Some(Secret::new(JWT_SECRET_OLD));
        s.jwt_secret_old_not_after = Some(OffsetDateTime::now_utc() - Duration::minutes(1));
    })
    .await;
    let claims = default_claims(&app, now_unix()).await;

    assert_rejected(&app, DEFAULT_TENANT, &hs256_no_kid(JWT_SECRET_OLD, &claims), "bad_signature").await;
    assert_accepted(&app, DEFAULT_TENANT, &hs256_no_kid(JWT_SECRET, &claims)).await;
    assert_eq!(fallbacks(&app).await, 0.0);
}

async fn hs256_token_naming_a_secret_is_checked_against_that_secret_only(db: TestDatabase) {
    let app = spawn_app_with(&db, |s| s.jwt_secret = Some(Secret::new(JWT_SECRET_OLD))).await;
    let rotated = rotate_secret(&app, DEFAULT_TENANT, Some(json!({ "secret": JWT_SECRET }))).await;
    let (current, previous) = (string(&rotated["current_kid"]), string(&rotated["previous_kid"]));
    let claims = default_claims(&app, now_unix()).await;
    let signed = |secret: &str, kid: &str| hs256(secret.as_bytes(), &json!({ "alg": "HS256", "kid": kid }), &claims);

    assert_eq!(assert_accepted(&app, DEFAULT_TENANT, &signed(JWT_SECRET, &current)).await["kid"], current.as_str());
    assert_eq!(
        assert_accepted(&app, DEFAULT_TENANT, &signed(JWT_SECRET_OLD, &previous)).await["kid"],
        previous.as_str()
    );
    assert_rejected(&app, DEFAULT_TENANT, &signed(JWT_SECRET_OLD, &current), "bad_signature").await;
    assert_rejected(&app, DEFAULT_TENANT, &signed(JWT_SECRET, &previous), "bad_signature").await;
    assert_rejected(&app, DEFAULT_TENANT, &signed(JWT_SECRET, "hs256-unknown"), "unknown_kid").await;
}

async fn rotated_secret_keeps_the_old_one_verifying_until_previous_not_after(db: TestDatabase) {
    let clock = clock_now();
    let app = spawn_app_at(&db, &clock, |s| s.jwt_secret = Some(Secret::new(JWT_SECRET_OLD))).await;
    let overlap = string(&support::tokens::tenant(&app, DEFAULT_TENANT).await["overlap"]);
    assert_eq!(overlap, "7d", "the test assumes the default overlap");

    let rotated = rotate_secret(&app, DEFAULT_TENANT, Some(json!({ "secret": JWT_SECRET }))).await;

    assert!(rotated.get("secret").is_none(), "a provided secret is never echoed: {rotated}");
    let not_after = OffsetDateTime::parse(&string(&rotated["previous_not_after"]), &Rfc3339).expect("RFC 3339");
    assert_eq!(not_after, clock.now() + Duration::days(7));
    let now = unix(clock.now());
    let new = assert_accepted(&app, DEFAULT_TENANT, &hs256_no_kid(JWT_SECRET, &default_claims(&app, now).await)).await;
    assert_eq!(new["kid"], rotated["current_kid"]);
    assert_eq!(fallbacks(&app).await, 0.0);
    let old =
        assert_accepted(&app, DEFAULT_TENANT, &hs256_no_kid(JWT_SECRET_OLD, &default_claims(&app, now).await)).await;
    assert_eq!(old["kid"], rotated["previous_kid"]);
    assert_eq!(fallbacks(&app).await, 1.0);

    clock.advance(Duration::days(7) + Duration::seconds(1));

    let now = unix(clock.now());
    assert_rejected(
        &app,
        DEFAULT_TENANT,
        &hs256_no_kid(JWT_SECRET_OLD, &default_claims(&app, now).await),
        "bad_signature",
    )
    .await;
    assert_accepted(&app, DEFAULT_TENANT, &hs256_no_kid(JWT_SECRET, &default_claims(&app, now).await)).await;
}

async fn generated_secret_is_returned_once_and_verifies(db: TestDatabase) {
    let app = spawn_app(&db).await;
    app.create_tenant_with_alg("acme", "ES256").await;
    let claims = good_claims(&issuer_of(&app, "acme").await, "acme", now_unix());

    let rotated = rotate_secret(&app, "acme", None).await;

    assert!(rotated["previous_kid"].is_null() && rotated["previous_not_after"].is_null(), "{rotated}");
    let secret = string(&rotated["secret"]);
    assert!(secret.len() >= 32, "{} bytes", secret.len());
    let body = assert_accepted(&app, "acme", &hs256_no_kid(&secret, &claims)).await;
    assert_eq!(body["kid"], rotated["current_kid"]);
    let again = rotate_secret(&app, "acme", Some(json!({ "secret": JWT_SECRET }))).await;
    assert!(again.get("secret").is_none(), "{again}");
    assert_eq!(again["previous_kid"], rotated["current_kid"]);
}

async fn secret_shorter_than_32_bytes_is_refused(db: TestDatabase) {
    let app = spawn_app(&db).await;
    let path = format!("/a/{DEFAULT_TENANT}/admin/secrets/rotate");

    let short = app.admin_post_json(&path, &json!({ "secret": "s".repeat(31) })).await;
    assert_error(short, StatusCode::BAD_REQUEST, "invalid_request").await;
    // Bytes, not characters: 16 two-byte characters are exactly 32 bytes.
    rotate_secret(&app, DEFAULT_TENANT, Some(json!({ "secret": "é".repeat(16) }))).await;
    let claims = default_claims(&app, now_unix()).await;
    assert_accepted(&app, DEFAULT_TENANT, &hs256_no_kid(&"é".repeat(16), &claims)).await;
}

async fn jwt_secret_shorter_than_32_bytes_stops_start_up(db: TestDatabase) {
    let mut settings = test_settings(&db, &new_master_key());
    settings.jwt_secret = Some(Secret::new("s".repeat(31)));

    let started = TestApp::start(settings, Arc::new(SystemClock)).await;

    let error = format!("{:#}", started.err().expect("start-up must fail"));
    assert!(error.contains("JWT_SECRET"), "{error}");
    assert!(!error.contains(&"s".repeat(31)), "the secret leaked into the error: {error}");
}

async fn jwt_secrets_are_kept_as_they_are_across_a_restart(db: TestDatabase) {
    let app = app_with_jwt_secrets(&db).await;
    let claims = default_claims(&app, now_unix()).await;
    let current = assert_accepted(&app, DEFAULT_TENANT, &hs256_no_kid(JWT_SECRET, &claims)).await["kid"].clone();
    let previous = assert_accepted(&app, DEFAULT_TENANT, &hs256_no_kid(JWT_SECRET_OLD, &claims)).await["kid"].clone();

    let app = app.restart().await;

    // Same secrets, same kids: tokens that name them keep verifying, nothing is rewritten.
    assert_eq!(assert_accepted(&app, DEFAULT_TENANT, &hs256_no_kid(JWT_SECRET, &claims)).await["kid"], current);
    assert_eq!(assert_accepted(&app, DEFAULT_TENANT, &hs256_no_kid(JWT_SECRET_OLD, &claims)).await["kid"], previous);
    let events = db.raw().await.audit_events().await;
    assert_eq!(events.iter().filter(|e| e.kind == "secret.rotated").count(), 1, "{events:?}");
}

async fn jwt_secret_rotated_through_the_environment_keeps_the_old_one_verifying(db: TestDatabase) {
    let app = spawn_app_with(&db, |s| s.jwt_secret = Some(Secret::new(JWT_SECRET_OLD))).await;
    let mut settings = app.settings.clone();
    app.stop().await;
    settings.jwt_secret = Some(Secret::new(JWT_SECRET));
    settings.jwt_secret_old = Some(Secret::new(JWT_SECRET_OLD));

    let app = TestApp::start(settings, Arc::new(SystemClock)).await.expect("restart with rotated secrets");

    let claims = default_claims(&app, now_unix()).await;
    assert_accepted(&app, DEFAULT_TENANT, &hs256_no_kid(JWT_SECRET, &claims)).await;
    assert_eq!(fallbacks(&app).await, 0.0);
    assert_accepted(&app, DEFAULT_TENANT, &hs256_no_kid(JWT_SECRET_OLD, &claims)).await;
    assert_eq!(fallbacks(&app).await, 1.0);
}

async fn only_the_current_and_the_previous_secret_verify(db: TestDatabase) {
    let app = spawn_app(&db).await;
    let first = string(&rotate_secret(&app, DEFAULT_TENANT, None).await["secret"]);
    rotate_secret(&app, DEFAULT_TENANT, Some(json!({ "secret": JWT_SECRET_OLD }))).await;
    rotate_secret(&app, DEFAULT_TENANT, Some(json!({ "secret": JWT_SECRET }))).await;
    let claims = default_claims(&app, now_unix()).await;

    assert_rejected(&app, DEFAULT_TENANT, &hs256_no_kid(&first, &claims), "bad_signature").await;
    assert_accepted(&app, DEFAULT_TENANT, &hs256_no_kid(JWT_SECRET_OLD, &claims)).await;
    assert_accepted(&app, DEFAULT_TENANT, &hs256_no_kid(JWT_SECRET, &claims)).await;
}

async fn jwks_never_publishes_a_secret(db: TestDatabase) {
    let app = app_with_jwt_secrets(&db).await;
    let rotated = rotate_secret(&app, DEFAULT_TENANT, None).await;
    let generated = string(&rotated["secret"]);

    for path in ["/.well-known/jwks.json", "/a/default/.well-known/jwks.json"] {
        let text = app.get(path).await.text().await.expect("JWKS text");
        let jwks: Value = serde_json::from_str(&text).expect("JWKS JSON");
        for jwk in jwks["keys"].as_array().expect("keys") {
            assert_ne!(jwk["kty"], "oct", "{jwk}");
            assert!(jwk.get("k").is_none(), "{jwk}");
        }
        for secret in [JWT_SECRET, JWT_SECRET_OLD, generated.as_str()] {
            assert!(!text.contains(secret) && !text.contains(&b64(secret)), "a secret is published at {path}");
        }
        for kid in [&rotated["current_kid"], &rotated["previous_kid"]] {
            assert!(!text.contains(&string(kid)), "a secret's kid is published at {path}");
        }
    }
}

// ------------------------------------------------------------------------- cache

async fn verifying_the_same_token_twice_gives_the_same_answer(db: TestDatabase) {
    let acme = Acme::start(&db).await;
    let good = access_token(&session_for_alice(&acme.app, "acme").await);
    let bad = acme.key.sign(&with(&acme.claims(), json!({ "aud": "other" })));

    for token in [good, bad] {
        let first = json(verify(&acme.app, "acme", &token).await).await;
        let second = json(verify(&acme.app, "acme", &token).await).await;
        assert_eq!(first, second);
    }
    // A cached answer is for one tenant only.
    acme.app.create_tenant_with_alg("other", "ES256").await;
    let token = acme.key.sign(&acme.claims());
    acme.accepts(&token).await;
    assert_rejected(&acme.app, "other", &token, "unknown_kid").await;
}

async fn cached_token_is_key_revoked_as_soon_as_its_key_is_revoked(db: TestDatabase) {
    let acme = Acme::start(&db).await;
    let token = access_token(&session_for_alice(&acme.app, "acme").await);
    acme.accepts(&token).await;
    acme.accepts(&token).await;

    acme.app.revoke_key("acme", &acme.key.kid).await;

    acme.rejects(&token, "key_revoked").await;
}

async fn cached_token_is_session_revoked_as_soon_as_its_session_is_revoked(db: TestDatabase) {
    let acme = Acme::start(&db).await;
    let session = session_for_alice(&acme.app, "acme").await;
    let token = access_token(&session);
    acme.accepts(&token).await;
    acme.accepts(&token).await;

    revoke_session(&acme.app, "acme", &string(&session["session_id"])).await;

    acme.rejects(&token, "session_revoked").await;
    let (status, body) = introspect(&acme.app, "acme", &token).await;
    assert_eq!((status, body), (StatusCode::OK, json!({ "active": false })));
}

async fn cached_token_is_token_revoked_as_soon_as_it_is_revoked(db: TestDatabase) {
    let acme = Acme::start(&db).await;
    let token = access_token(&session_for_alice(&acme.app, "acme").await);
    acme.accepts(&token).await;

    revoke_jti(&acme.app, "acme", &string(&claims_of(&token)["jti"])).await;

    acme.rejects(&token, "token_revoked").await;
}

// ----------------------------------------------------------------------- metrics

async fn verify_outcomes_and_durations_are_counted(db: TestDatabase) {
    let acme = Acme::start(&db).await;
    let good = acme.key.sign(&acme.claims());
    let expired = acme.key.sign(&with(&acme.claims(), json!({ "exp": now_unix() - 3600 })));

    for token in [good.as_str(), &good, &expired, "garbage"] {
        let _ = verify(&acme.app, "acme", token).await;
    }

    let text = metrics_text(&acme.app).await;
    let count =
        |outcome: &str| sample(&text, "keyward_verify_total", &["tenant=\"acme\"", &format!("outcome=\"{outcome}\"")]);
    assert_eq!((count("ok"), count("expired"), count("malformed")), (Some(2.0), Some(1.0), Some(1.0)), "{text}");
    let observed = sample(&text, "keyward_verify_duration_seconds_count", &[]).expect("duration histogram");
    assert!(observed >= 4.0, "{observed}");
    assert!(text.contains("keyward_verify_duration_seconds_bucket{"), "{text}");
}
