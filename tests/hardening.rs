//! Behaviours added after review: signing never uses a key another replica has demoted,
//! a refresh retried within the grace cannot fork a session, oversized tokens are refused
//! at issue, refused calls cannot flood the audit trail, and per-tenant limits see the
//! tenant the handler sees.

mod support;

use std::sync::Arc;

use keyward::clock::SystemClock;
use keyward::domain::{Actor, TenantId};
use keyward::startup::Services;
use reqwest::{Method, StatusCode};
use serde_json::json;

use support::TestDatabase;
use support::app::{assert_error, send, spawn_app, spawn_app_with};
use support::tokens::{
    access_token, active_kid, assert_oauth_error, create_session, header_of, metrics_text, refresh, refresh_token,
    sample, session_for_alice,
};

support::backend_tests!(
    a_session_is_never_signed_with_a_key_another_replica_has_revoked,
    a_refresh_retried_within_the_grace_supersedes_the_first_exchange,
    a_token_too_large_to_verify_is_refused_when_the_session_is_created,
    refused_calls_beyond_the_per_ip_limit_are_counted_not_audited,
);

async fn a_session_is_never_signed_with_a_key_another_replica_has_revoked(db: TestDatabase) {
    let app = spawn_app(&db).await;
    let old = active_kid(&app, "default").await;
    // Another replica (its own services on the same database) revokes the key; this app
    // has not heard of it: no shared fan-out, reconciliation an interval away.
    let other = Services::build(&app.settings, Arc::new(SystemClock)).await.unwrap();
    let tenant = TenantId::parse("default").unwrap();
    other.keys.revoke(&tenant, Some(&old), &Actor::system("test")).await.unwrap();

    let created = session_for_alice(&app, "default").await;

    let kid = header_of(&access_token(&created))["kid"].as_str().unwrap().to_owned();
    assert_ne!(kid, old, "signed with the revoked key");
    assert_eq!(active_kid(&app, "default").await, kid, "the replica caught up before signing");
}

async fn a_refresh_retried_within_the_grace_supersedes_the_first_exchange(db: TestDatabase) {
    let app = spawn_app(&db).await;
    let created = session_for_alice(&app, "default").await;
    let first = refresh_token(&created);
    let (status, exchanged) = support::app::json(refresh(&app, "default", &first).await).await;
    assert_eq!(status, StatusCode::OK);
    let (status, retried) = support::app::json(refresh(&app, "default", &first).await).await;
    assert_eq!(status, StatusCode::OK, "a retry within the grace still works: {retried}");

    // The first exchange's token was superseded: presenting it is reuse, and ends the session.
    let reused = refresh(&app, "default", exchanged["refresh_token"].as_str().unwrap()).await;
    assert_oauth_error(reused, StatusCode::UNAUTHORIZED, "invalid_grant").await;
    let after = refresh(&app, "default", retried["refresh_token"].as_str().unwrap()).await;
    assert_oauth_error(after, StatusCode::UNAUTHORIZED, "invalid_grant").await;
}

async fn a_token_too_large_to_verify_is_refused_when_the_session_is_created(db: TestDatabase) {
    let app = spawn_app(&db).await;
    let big = "x".repeat(2000);
    let body = json!({
        "user_id": "alice",
        "scope": big,
        "claims": { "a": "y".repeat(1990), "b": "z".repeat(1990) },
    });

    let response = send(app.admin(Method::POST, "/a/default/sessions").json(&body)).await;

    let error = assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
    assert!(error["message"].as_str().unwrap().contains("8192"), "{error}");
    // A session just under the limit is fine.
    create_session(&app, "default", &json!({ "user_id": "alice", "claims": { "a": "y".repeat(1990) } })).await;
}

async fn refused_calls_beyond_the_per_ip_limit_are_counted_not_audited(db: TestDatabase) {
    let app = spawn_app_with(&db, |s| s.rate_limits.audited_refusals_per_ip = "2/s".parse().unwrap()).await;
    let mut raw = db.raw().await;
    let refusals = "SELECT COUNT(*) FROM audit_events WHERE type = 'admin.unauthorized'";

    for _ in 0..10 {
        let response = send(app.request(Method::GET, "/admin/tenants").header("x-admin-secret", "wrong")).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }

    let dropped = support::app::eventually("the audit writer catches up", || async {
        let dropped = sample(&metrics_text(&app).await, "keyward_audit_dropped_total", &[])?;
        (dropped >= 8.0).then_some(dropped)
    })
    .await;
    let written = support::app::eventually("two refusals are written", || async {
        let n = db.raw().await.count(refusals, &[]).await;
        (n == 2).then_some(n)
    })
    .await;
    assert_eq!((written, dropped), (2, 8.0));
    assert_eq!(raw.count(refusals, &[]).await, 2);
}

#[tokio::test]
async fn the_per_tenant_verify_limit_sees_a_percent_encoded_tenant() {
    let db = TestDatabase::sqlite();
    let app = spawn_app_with(&db, |s| s.rate_limits.verify_per_tenant = "1/s".parse().unwrap()).await;
    let body = json!({ "token": "x.y.z" });

    let first = send(app.request(Method::POST, "/a/%64efault/verify").json(&body)).await;
    let second = send(app.request(Method::POST, "/a/default/verify").json(&body)).await;

    assert_eq!(first.status(), StatusCode::UNAUTHORIZED, "the first request is verified (and rejected)");
    assert_error(second, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
}
