//! Issuing (API.md "Issuing"): sessions and their access tokens, who may create them, how
//! refresh tokens are kept, and the refresh grant with rotation, the reuse grace, reuse
//! detection and the answers of RFC 6749 for everything else. On both backends, through
//! the real server.

mod support;

use std::collections::HashSet;
use std::time::Duration as StdDuration;

use keyward::config::Secret;
use keyward::domain::Period;
use keyward::service::hash_refresh_token;
use reqwest::header::{CACHE_CONTROL, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use time::Duration;

use support::TestDatabase;
use support::app::{ADMIN_HEADER, TestApp, assert_error, json, send, spawn_app, spawn_app_with};
use support::tokens::{
    ISSUER_HEADER, ISSUER_SECRET, access_token, active_kid, assert_accepted, assert_oauth_error, assert_rejected,
    claims_of, clock_now, create_session, header_of, issuer_of, metrics_text, now_unix, refresh, refresh_token,
    refresh_token_rows, sample, session_for_alice, spawn_app_at,
};

support::backend_tests!(
    // sessions
    session_answers_201_with_a_bearer_access_token_and_a_refresh_token,
    access_token_header_names_the_active_key_and_the_at_jwt_type,
    access_token_carries_the_registered_claims_and_the_custom_ones,
    aud_is_the_requested_audience_if_the_tenant_has_it_else_all_of_them,
    aud_of_a_single_audience_tenant_is_a_string,
    issuer_secret_or_admin_secret_may_create_sessions,
    session_without_a_valid_secret_is_unauthorized,
    reserved_claim_names_are_refused_as_custom_claims,
    invalid_session_requests_are_bad_requests,
    session_on_an_unknown_tenant_is_not_found,
    refresh_token_is_stored_only_as_its_hash,
    // refresh
    refresh_rotates_both_tokens_of_the_session,
    refresh_grant_may_be_sent_as_json,
    used_refresh_token_still_works_within_the_reuse_grace,
    used_refresh_token_after_the_grace_revokes_the_whole_session,
    reuse_grace_is_configurable,
    session_revoked_for_reuse_stays_revoked_after_a_restart,
    refresh_on_a_revoked_session_is_invalid_grant,
    refresh_on_an_expired_session_is_invalid_grant,
    unknown_refresh_token_is_invalid_grant,
    refresh_token_of_another_tenant_is_invalid_grant,
    token_endpoint_answers_other_mistakes_in_rfc_6749_terms,
    token_request_over_the_body_limit_is_413_with_an_error_body,
);

/// An app with tenant `acme` (audience `acme`).
async fn acme(db: &TestDatabase) -> TestApp {
    let app = spawn_app(db).await;
    app.create_tenant_with_alg("acme", "ES256").await;
    app
}

fn string(value: &Value) -> String {
    value.as_str().unwrap_or_else(|| panic!("not a string: {value}")).to_owned()
}

fn keys_of(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value.as_object().expect("an object").keys().map(String::as_str).collect();
    keys.sort_unstable();
    keys
}

async fn audit_types(db: &TestDatabase) -> Vec<(String, Option<String>)> {
    db.raw().await.audit_events().await.into_iter().map(|e| (e.kind, e.session_id)).collect()
}

// ----------------------------------------------------------------------- sessions

async fn session_answers_201_with_a_bearer_access_token_and_a_refresh_token(db: TestDatabase) {
    let app = acme(&db).await;

    let response = app.admin_post_json("/a/acme/sessions", &json!({ "user_id": "alice" })).await;

    let cache_control = response.headers().get(CACHE_CONTROL).cloned();
    let (status, body) = json(response).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(keys_of(&body), ["access_token", "expires_in", "refresh_token", "session_id", "token_type"]);
    assert_eq!((&body["token_type"], &body["expires_in"]), (&json!("Bearer"), &json!(900)));
    assert_eq!(cache_control.as_ref().map(|v| v.as_bytes()), Some(&b"no-store"[..]));
    let refresh = refresh_token(&body);
    let opaque = refresh.strip_prefix("kwrt_").expect("the refresh token prefix");
    assert!(opaque.len() >= 43, "at least 256 random bits: {refresh}");
    assert_eq!(access_token(&body).split('.').count(), 3);
    assert_accepted(&app, "acme", &access_token(&body)).await;
}

async fn access_token_header_names_the_active_key_and_the_at_jwt_type(db: TestDatabase) {
    let app = spawn_app(&db).await;

    for (tenant, alg) in [("es", "ES256"), ("ed", "EdDSA"), ("rs", "RS256")] {
        let kid = app.create_tenant_with_alg(tenant, alg).await;
        let token = access_token(&session_for_alice(&app, tenant).await);
        assert_eq!(header_of(&token), json!({ "alg": alg, "kid": kid, "typ": "at+jwt" }), "{tenant}");
        assert_eq!(assert_accepted(&app, tenant, &token).await["alg"], alg);
    }
}

async fn access_token_carries_the_registered_claims_and_the_custom_ones(db: TestDatabase) {
    let app = acme(&db).await;
    let before = now_unix();
    let request = json!({
        "user_id": "alice",
        "client_id": "web",
        "scope": "read write",
        "claims": { "tenant_role": "owner", "flags": [1, 2], "org": { "id": 7 } },
    });

    let created = create_session(&app, "acme", &request).await;

    let claims = claims_of(&access_token(&created));
    assert_eq!(claims["iss"], issuer_of(&app, "acme").await);
    assert_eq!((&claims["sub"], &claims["aud"]), (&json!("alice"), &json!("acme")));
    assert_eq!((&claims["client_id"], &claims["scope"]), (&json!("web"), &json!("read write")));
    assert_eq!(claims["sid"], created["session_id"]);
    assert_eq!(
        (&claims["tenant_role"], &claims["flags"], &claims["org"]),
        (&json!("owner"), &json!([1, 2]), &json!({ "id": 7 }))
    );
    let (iat, exp) = (claims["iat"].as_i64().expect("iat"), claims["exp"].as_i64().expect("exp"));
    assert!(iat >= before && iat <= now_unix(), "iat {iat}");
    assert_eq!(exp - iat, 900, "exp is iat + the access-token ttl");
    assert!(!string(&claims["jti"]).is_empty());
    let mut expected =
        vec!["aud", "client_id", "exp", "flags", "iat", "iss", "jti", "org", "scope", "sid", "sub", "tenant_role"];
    expected.sort_unstable();
    assert_eq!(keys_of(&claims), expected);
    let jtis: HashSet<String> = [
        claims,
        claims_of(&access_token(&session_for_alice(&app, "acme").await)),
        claims_of(&access_token(&session_for_alice(&app, "acme").await)),
    ]
    .iter()
    .map(|c| string(&c["jti"]))
    .collect();
    assert_eq!(jtis.len(), 3, "every token has its own jti");
}

async fn aud_is_the_requested_audience_if_the_tenant_has_it_else_all_of_them(db: TestDatabase) {
    let app = spawn_app(&db).await;
    app.create_tenant(json!({ "id": "acme", "audiences": ["api", "admin"] })).await;
    let aud_for = |audience: Option<&str>| {
        let mut body = json!({ "user_id": "alice" });
        if let Some(a) = audience {
            body["audience"] = json!(a);
        }
        let app = &app;
        async move { claims_of(&access_token(&create_session(app, "acme", &body).await))["aud"].clone() }
    };

    assert_eq!(aud_for(Some("admin")).await, json!("admin"));
    assert_eq!(aud_for(Some("api")).await, json!("api"));
    assert_eq!(aud_for(Some("elsewhere")).await, json!(["api", "admin"]));
    assert_eq!(aud_for(None).await, json!(["api", "admin"]));
}

async fn aud_of_a_single_audience_tenant_is_a_string(db: TestDatabase) {
    let app = spawn_app(&db).await;
    app.create_tenant(json!({ "id": "acme", "audiences": ["only"] })).await;

    for body in [json!({ "user_id": "alice" }), json!({ "user_id": "alice", "audience": "elsewhere" })] {
        let created = create_session(&app, "acme", &body).await;
        assert_eq!(claims_of(&access_token(&created))["aud"], "only", "{body}");
    }
}

async fn issuer_secret_or_admin_secret_may_create_sessions(db: TestDatabase) {
    let app = spawn_app_with(&db, |s| s.issuer_secrets = vec![Secret::new(ISSUER_SECRET)]).await;
    app.create_tenant_with_alg("acme", "ES256").await;
    let body = json!({ "user_id": "alice" });

    for (header, secret) in [(ISSUER_HEADER, ISSUER_SECRET), (ADMIN_HEADER, app.admin_secret.as_str())] {
        let request = app.request(Method::POST, "/a/acme/sessions").header(header, secret).json(&body);
        let (status, created) = json(send(request).await).await;
        assert_eq!(status, StatusCode::CREATED, "{header}: {created}");
        assert_accepted(&app, "acme", &access_token(&created)).await;
    }
    // An issuer secret is no admin secret.
    let admin = app.request(Method::GET, "/admin/tenants").header(ADMIN_HEADER, ISSUER_SECRET);
    assert_error(send(admin).await, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

async fn session_without_a_valid_secret_is_unauthorized(db: TestDatabase) {
    let app = spawn_app_with(&db, |s| s.issuer_secrets = vec![Secret::new(ISSUER_SECRET)]).await;
    app.create_tenant_with_alg("acme", "ES256").await;
    let body = json!({ "user_id": "alice" });
    let post = || app.request(Method::POST, "/a/acme/sessions").json(&body);

    assert_error(send(post()).await, StatusCode::UNAUTHORIZED, "unauthorized").await;
    for (header, wrong) in
        [(ISSUER_HEADER, "not-the-issuer-secret-at-all"), (ADMIN_HEADER, "not-the-admin-secret"), (ISSUER_HEADER, "")]
    {
        assert_error(send(post().header(header, wrong)).await, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
    // Credentials are checked before the tenant is looked at.
    let unknown = app.request(Method::POST, "/a/nobody/sessions").json(&body);
    assert_error(send(unknown).await, StatusCode::UNAUTHORIZED, "unauthorized").await;
    assert_eq!(db.raw().await.count("SELECT COUNT(*) FROM sessions", &[]).await, 0);
}

async fn reserved_claim_names_are_refused_as_custom_claims(db: TestDatabase) {
    let app = acme(&db).await;

    for name in ["iss", "sub", "aud", "exp", "nbf", "iat", "jti", "sid", "client_id", "scope", "typ"] {
        let body = json!({ "user_id": "alice", "claims": { "role": "admin", name: "mallory" } });
        let refused = assert_error(
            app.admin_post_json("/a/acme/sessions", &body).await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
        assert!(string(&refused["message"]).contains(name), "the message names `{name}`: {refused}");
    }
    assert_eq!(db.raw().await.count("SELECT COUNT(*) FROM sessions", &[]).await, 0);
}

async fn invalid_session_requests_are_bad_requests(db: TestDatabase) {
    let app = acme(&db).await;

    for body in [
        json!({}),
        json!({ "user_id": "" }),
        json!({ "user_id": 7 }),
        json!({ "user_id": "a\u{0}b" }),
        json!({ "user_id": "x".repeat(257) }),
        json!({ "user_id": "alice", "claims": ["role"] }),
        json!({ "user_id": "alice", "claims": { "blob": "x".repeat(5000) } }),
        json!({ "user_id": "alice", "surprise": true }),
    ] {
        let response = app.admin_post_json("/a/acme/sessions", &body).await;
        assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    let form = app.admin(Method::POST, "/a/acme/sessions").form(&[("user_id", "alice")]);
    assert_error(send(form).await, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type").await;
}

async fn session_on_an_unknown_tenant_is_not_found(db: TestDatabase) {
    let app = spawn_app(&db).await;

    let response = app.admin_post_json("/a/nobody/sessions", &json!({ "user_id": "alice" })).await;

    assert_error(response, StatusCode::NOT_FOUND, "not_found").await;
}

async fn refresh_token_is_stored_only_as_its_hash(db: TestDatabase) {
    let app = acme(&db).await;
    let created = session_for_alice(&app, "acme").await;
    let first = refresh_token(&created);
    let (status, refreshed) = json(refresh(&app, "acme", &first).await).await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    let second = refresh_token(&refreshed);

    let rows = refresh_token_rows(&db).await;

    assert_eq!(rows.len(), 2);
    let hashes: HashSet<Vec<u8>> = rows.iter().map(|(hash, _)| hash.clone()).collect();
    for token in [&first, &second] {
        assert!(hashes.contains(hash_refresh_token(token).as_slice()), "the SHA-256 of the token is its key");
        let opaque = token.strip_prefix("kwrt_").unwrap().as_bytes();
        for (hash, sid) in &rows {
            for column in [hash, sid] {
                assert!(!column.windows(opaque.len()).any(|w| w == opaque), "the token text is stored");
            }
        }
        let audit = format!("{:?}", db.raw().await.audit_events().await);
        assert!(!audit.contains(token.as_str()), "the token text is in the audit trail");
    }
}

// ------------------------------------------------------------------------ refresh

async fn refresh_rotates_both_tokens_of_the_session(db: TestDatabase) {
    let app = acme(&db).await;
    let created = session_for_alice(&app, "acme").await;
    let old_claims = claims_of(&access_token(&created));

    let response = refresh(&app, "acme", &refresh_token(&created)).await;

    let cache_control = response.headers().get(CACHE_CONTROL).cloned();
    let (status, refreshed) = json(response).await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    assert_eq!(cache_control.as_ref().map(|v| v.as_bytes()), Some(&b"no-store"[..]));
    assert_eq!(keys_of(&refreshed), ["access_token", "expires_in", "refresh_token", "session_id", "token_type"]);
    assert_eq!((&refreshed["session_id"], &refreshed["token_type"]), (&created["session_id"], &json!("Bearer")));
    assert_ne!(refresh_token(&refreshed), refresh_token(&created));
    assert_ne!(access_token(&refreshed), access_token(&created));
    let claims = claims_of(&access_token(&refreshed));
    assert_eq!(
        (&claims["sid"], &claims["sub"], &claims["scope"]),
        (&old_claims["sid"], &old_claims["sub"], &old_claims["scope"])
    );
    assert_ne!(claims["jti"], old_claims["jti"]);
    assert_eq!(header_of(&access_token(&refreshed))["kid"], active_kid(&app, "acme").await);
    assert_accepted(&app, "acme", &access_token(&refreshed)).await;
    // The new refresh token rotates again.
    let (status, again) = json(refresh(&app, "acme", &refresh_token(&refreshed)).await).await;
    assert_eq!(status, StatusCode::OK, "{again}");
}

async fn refresh_grant_may_be_sent_as_json(db: TestDatabase) {
    let app = acme(&db).await;
    let created = session_for_alice(&app, "acme").await;
    let body = json!({ "grant_type": "refresh_token", "refresh_token": refresh_token(&created) });

    let (status, refreshed) = json(send(app.request(Method::POST, "/a/acme/token").json(&body)).await).await;

    assert_eq!(status, StatusCode::OK, "{refreshed}");
    assert_accepted(&app, "acme", &access_token(&refreshed)).await;
}

async fn used_refresh_token_still_works_within_the_reuse_grace(db: TestDatabase) {
    let clock = clock_now();
    let app = spawn_app_at(&db, &clock, |_| {}).await;
    app.create_tenant_with_alg("acme", "ES256").await;
    let created = session_for_alice(&app, "acme").await;
    let (status, _) = json(refresh(&app, "acme", &refresh_token(&created)).await).await;
    assert_eq!(status, StatusCode::OK);

    // The client lost the answer and retries with the same token, within the 10 s default.
    clock.advance(Duration::seconds(9));
    let (status, retried) = json(refresh(&app, "acme", &refresh_token(&created)).await).await;

    assert_eq!(status, StatusCode::OK, "{retried}");
    assert_eq!(retried["session_id"], created["session_id"]);
    assert_accepted(&app, "acme", &access_token(&retried)).await;
    assert_accepted(&app, "acme", &access_token(&created)).await;
}

async fn used_refresh_token_after_the_grace_revokes_the_whole_session(db: TestDatabase) {
    let clock = clock_now();
    let app = spawn_app_at(&db, &clock, |_| {}).await;
    app.create_tenant_with_alg("acme", "ES256").await;
    let created = session_for_alice(&app, "acme").await;
    let bystander = session_for_alice(&app, "acme").await;
    let (_, rotated) = json(refresh(&app, "acme", &refresh_token(&created)).await).await;
    let sid = string(&created["session_id"]);

    clock.advance(Duration::seconds(11));
    let reuse = refresh(&app, "acme", &refresh_token(&created)).await;

    assert_oauth_error(reuse, StatusCode::UNAUTHORIZED, "invalid_grant").await;
    for token in [access_token(&created), access_token(&rotated)] {
        assert_rejected(&app, "acme", &token, "session_revoked").await;
    }
    let newest = refresh(&app, "acme", &refresh_token(&rotated)).await;
    assert_oauth_error(newest, StatusCode::UNAUTHORIZED, "invalid_grant").await;
    let events = audit_types(&db).await;
    assert!(events.contains(&("token.reuse_detected".to_owned(), Some(sid.clone()))), "{events:?}");
    let text = metrics_text(&app).await;
    assert_eq!(sample(&text, "keyward_refresh_reuse_detected_total", &["tenant=\"acme\""]), Some(1.0), "{text}");
    // Only that session: another session of the same user carries on.
    assert_accepted(&app, "acme", &access_token(&bystander)).await;
    let (status, _) = json(refresh(&app, "acme", &refresh_token(&bystander)).await).await;
    assert_eq!(status, StatusCode::OK);
}

async fn session_revoked_for_reuse_stays_revoked_after_a_restart(db: TestDatabase) {
    let clock = clock_now();
    let app = spawn_app_at(&db, &clock, |_| {}).await;
    app.create_tenant_with_alg("acme", "ES256").await;
    let created = session_for_alice(&app, "acme").await;
    let (_, rotated) = json(refresh(&app, "acme", &refresh_token(&created)).await).await;
    clock.advance(Duration::seconds(11));
    assert_oauth_error(
        refresh(&app, "acme", &refresh_token(&created)).await,
        StatusCode::UNAUTHORIZED,
        "invalid_grant",
    )
    .await;

    let app = app.restart().await;

    assert_rejected(&app, "acme", &access_token(&rotated), "session_revoked").await;
    assert_oauth_error(
        refresh(&app, "acme", &refresh_token(&rotated)).await,
        StatusCode::UNAUTHORIZED,
        "invalid_grant",
    )
    .await;
}

async fn reuse_grace_is_configurable(db: TestDatabase) {
    let app = spawn_app_with(&db, |s| s.refresh_reuse_grace = Period::from_secs(1)).await;
    app.create_tenant_with_alg("acme", "ES256").await;
    let created = session_for_alice(&app, "acme").await;
    let (status, _) = json(refresh(&app, "acme", &refresh_token(&created)).await).await;
    assert_eq!(status, StatusCode::OK);

    tokio::time::sleep(StdDuration::from_millis(1_300)).await;
    let reuse = refresh(&app, "acme", &refresh_token(&created)).await;

    assert_oauth_error(reuse, StatusCode::UNAUTHORIZED, "invalid_grant").await;
    assert_rejected(&app, "acme", &access_token(&created), "session_revoked").await;
}

async fn refresh_on_a_revoked_session_is_invalid_grant(db: TestDatabase) {
    let app = acme(&db).await;
    let by_id = session_for_alice(&app, "acme").await;
    let by_user = create_session(&app, "acme", &json!({ "user_id": "bob" })).await;

    for body in [json!({ "session_id": by_id["session_id"] }), json!({ "user_id": "bob" })] {
        let (status, revoked) = json(app.admin_post_json("/a/acme/admin/revoke/sessions", &body).await).await;
        assert_eq!((status, &revoked["revoked"]), (StatusCode::OK, &json!(1)), "{revoked}");
    }

    for created in [by_id, by_user] {
        assert_oauth_error(
            refresh(&app, "acme", &refresh_token(&created)).await,
            StatusCode::UNAUTHORIZED,
            "invalid_grant",
        )
        .await;
    }
    let events = audit_types(&db).await;
    assert!(!events.iter().any(|(kind, _)| kind == "token.reuse_detected"), "not reuse: {events:?}");
}

async fn refresh_on_an_expired_session_is_invalid_grant(db: TestDatabase) {
    let clock = clock_now();
    let app = spawn_app_at(&db, &clock, |_| {}).await;
    app.create_tenant(json!({ "id": "acme", "refresh_token_ttl": "1h" })).await;
    let created = session_for_alice(&app, "acme").await;
    let (status, body) = json(refresh(&app, "acme", &refresh_token(&created)).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    clock.advance(Duration::hours(1) + Duration::seconds(1));
    let expired = refresh(&app, "acme", &refresh_token(&body)).await;

    assert_oauth_error(expired, StatusCode::UNAUTHORIZED, "invalid_grant").await;
    let events = audit_types(&db).await;
    assert!(!events.iter().any(|(kind, _)| kind == "token.reuse_detected"), "not reuse: {events:?}");
}

async fn unknown_refresh_token_is_invalid_grant(db: TestDatabase) {
    let app = acme(&db).await;
    session_for_alice(&app, "acme").await;

    for token in ["kwrt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "garbage", "' OR 1=1 --", &"x".repeat(5000)] {
        assert_oauth_error(refresh(&app, "acme", token).await, StatusCode::UNAUTHORIZED, "invalid_grant").await;
    }
}

async fn refresh_token_of_another_tenant_is_invalid_grant(db: TestDatabase) {
    let app = acme(&db).await;
    app.create_tenant_with_alg("other", "ES256").await;
    let created = session_for_alice(&app, "acme").await;

    assert_oauth_error(
        refresh(&app, "other", &refresh_token(&created)).await,
        StatusCode::UNAUTHORIZED,
        "invalid_grant",
    )
    .await;
    // It was not consumed by the failed attempt.
    let (status, _) = json(refresh(&app, "acme", &refresh_token(&created)).await).await;
    assert_eq!(status, StatusCode::OK);
}

async fn token_endpoint_answers_other_mistakes_in_rfc_6749_terms(db: TestDatabase) {
    let app = acme(&db).await;
    let token = refresh_token(&session_for_alice(&app, "acme").await);
    let form = |pairs: &[(&str, &str)]| app.request(Method::POST, "/a/acme/token").form(pairs);

    let missing_grant = form(&[("refresh_token", &token)]);
    assert_oauth_error(send(missing_grant).await, StatusCode::BAD_REQUEST, "invalid_request").await;
    for grant in ["password", "authorization_code", "client_credentials"] {
        let other = form(&[("grant_type", grant), ("refresh_token", &token)]);
        assert_oauth_error(send(other).await, StatusCode::BAD_REQUEST, "unsupported_grant_type").await;
    }
    let missing_token = form(&[("grant_type", "refresh_token")]);
    assert_oauth_error(send(missing_token).await, StatusCode::BAD_REQUEST, "invalid_request").await;
    let bad_json = app.request(Method::POST, "/a/acme/token").header(CONTENT_TYPE, "application/json").body("{");
    assert_oauth_error(send(bad_json).await, StatusCode::BAD_REQUEST, "invalid_request").await;
    let text =
        app.request(Method::POST, "/a/acme/token").header(CONTENT_TYPE, "text/plain").body("grant_type=refresh_token");
    let (status, body) = json(send(text).await).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");
    let unknown = send(
        app.request(Method::POST, "/a/nobody/token")
            .form(&[("grant_type", "refresh_token"), ("refresh_token", &token)]),
    );
    assert_error(unknown.await, StatusCode::NOT_FOUND, "not_found").await;
    // None of the mistakes used up the refresh token.
    let (status, _) = json(refresh(&app, "acme", &token).await).await;
    assert_eq!(status, StatusCode::OK);
}

async fn token_request_over_the_body_limit_is_413_with_an_error_body(db: TestDatabase) {
    let app = acme(&db).await;
    let huge = "x".repeat(70 * 1024);

    let response = send(
        app.request(Method::POST, "/a/acme/token").form(&[("grant_type", "refresh_token"), ("refresh_token", &huge)]),
    )
    .await;

    let (status, body) = json(response).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(body["error"].is_string() && body["message"].is_string(), "{body}");
}
