//! Admin requests refused at the door (API.md "Administration" and "Conventions"): a
//! missing or wrong `x-admin-secret` is 401 before anything else is looked at, and is
//! audited; several secrets are valid at once; bodies of the wrong media type, size or
//! syntax get 415, 413 and 400. On both backends, through the real server.

mod support;

use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode};
use serde_json::json;

use keyward::config::Secret;
use support::TestDatabase;
use support::app::{
    ADMIN_HEADER, ADMIN_SECRET, TestApp, assert_error, eventually, json, send, spawn_app, spawn_app_with,
};
use support::raw::AuditRow;

support::backend_tests!(
    admin_calls_without_a_secret_are_unauthorized,
    admin_calls_with_a_wrong_secret_are_unauthorized,
    wrong_secret_is_refused_before_the_request_is_looked_at,
    refused_admin_call_is_audited,
    every_configured_admin_secret_is_accepted,
    json_endpoint_refuses_other_media_types,
    oversized_body_is_refused,
    malformed_json_is_a_bad_request,
);

async fn audit_rows(db: &TestDatabase) -> Vec<AuditRow> {
    db.raw().await.audit_events().await
}

// -------------------------------------------------------------------------- authentication

/// One request per kind of admin endpoint, each valid apart from its credentials.
fn admin_requests(app: &TestApp) -> Vec<reqwest::RequestBuilder> {
    vec![
        app.request(Method::GET, "/admin/tenants"),
        app.request(Method::GET, "/admin/tenants/default"),
        app.request(Method::POST, "/admin/tenants").json(&json!({ "id": "acme" })),
        app.request(Method::PATCH, "/admin/tenants/default").json(&json!({ "overlap": "8d" })),
        app.request(Method::GET, "/a/default/admin/keys"),
        app.request(Method::POST, "/a/default/admin/keys"),
        app.request(Method::POST, "/a/default/admin/keys/rotate"),
        app.request(Method::POST, "/a/default/admin/keys/revoke"),
    ]
}

async fn admin_calls_without_a_secret_are_unauthorized(db: TestDatabase) {
    let app = spawn_app(&db).await;
    let jwks_before = app.jwks_bytes("default").await.2;

    for request in admin_requests(&app) {
        assert_error(send(request).await, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }

    assert_eq!(app.jwks_bytes("default").await.2, jwks_before, "nothing changed");
    let (_, tenants) = json(app.admin_get("/admin/tenants").await).await;
    assert_eq!(tenants["tenants"].as_array().unwrap().len(), 1, "acme was not created: {tenants}");
}

async fn admin_calls_with_a_wrong_secret_are_unauthorized(db: TestDatabase) {
    let app = spawn_app(&db).await;
    let wrong = [
        "",
        "wrong-secret-wrong-secret-wrong-secret",
        &ADMIN_SECRET[..ADMIN_SECRET.len() - 1],
        &format!("{ADMIN_SECRET}x"),
        &ADMIN_SECRET.to_uppercase(),
    ];

    for secret in wrong {
        for request in admin_requests(&app) {
            let response = send(request.header(ADMIN_HEADER, secret)).await;
            assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
        }
    }
}

/// "A missing or wrong secret is 401 before anything else is looked at": not the media
/// type, the size or the syntax of the body, and not whether the tenant or kid exists.
async fn wrong_secret_is_refused_before_the_request_is_looked_at(db: TestDatabase) {
    let app = spawn_app(&db).await;
    let wrong = |method, path| app.request(method, path).header(ADMIN_HEADER, "not-the-admin-secret-0123456789");
    let requests = [
        wrong(Method::POST, "/admin/tenants").header(CONTENT_TYPE, "text/plain").body("id=acme"),
        wrong(Method::POST, "/admin/tenants").header(CONTENT_TYPE, "application/json").body("{not json"),
        wrong(Method::POST, "/admin/tenants").json(&json!({ "id": "UPPER", "rotation_period": "soon" })),
        wrong(Method::POST, "/admin/tenants").json(&json!({ "id": "acme", "padding": "x".repeat(70 * 1024) })),
        wrong(Method::GET, "/admin/tenants/nobody"),
        wrong(Method::GET, "/admin/tenants/NOT_A_SLUG"),
        wrong(Method::GET, "/a/nobody/admin/keys"),
        wrong(Method::POST, "/a/default/admin/keys/no-such-kid/activate?force=maybe"),
    ];

    for request in requests {
        assert_error(send(request).await, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
}

async fn refused_admin_call_is_audited(db: TestDatabase) {
    let app = spawn_app(&db).await;

    let response = send(app.request(Method::POST, "/a/default/admin/keys/rotate").header(ADMIN_HEADER, "guess")).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = app.get("/admin/tenants").await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // The refusal is written asynchronously: poll, bounded.
    let db_ref = &db;
    let refused = eventually("two admin.unauthorized audit events", move || async move {
        let rows: Vec<AuditRow> =
            audit_rows(db_ref).await.into_iter().filter(|r| r.kind == "admin.unauthorized").collect();
        (rows.len() >= 2).then_some(rows)
    })
    .await;
    assert_eq!(refused.len(), 2, "{refused:#?}");
    let (rotate, list) = (&refused[0], &refused[1]);
    assert_eq!(rotate.tenant_id.as_deref(), Some("default"), "{rotate:?}");
    assert_eq!(list.tenant_id, None, "{list:?}");
    for row in &refused {
        assert_eq!(row.actor, "anonymous", "{row:?}");
        assert_eq!(row.ip.as_deref(), Some("127.0.0.1"), "{row:?}");
        assert!(!format!("{row:?}").contains("guess"), "the presented secret is never stored: {row:?}");
    }
    let detail = |row: &AuditRow| row.detail.clone().unwrap_or_default();
    assert_eq!(detail(rotate)["secret_present"], true, "{rotate:?}");
    assert_eq!(detail(list)["secret_present"], false, "{list:?}");
}

async fn every_configured_admin_secret_is_accepted(db: TestDatabase) {
    const NEXT_SECRET: &str = "next-admin-secret-fedcba9876543210";
    let app =
        spawn_app_with(&db, |s| s.admin_secrets = vec![Secret::new(ADMIN_SECRET), Secret::new(NEXT_SECRET)]).await;

    for secret in [ADMIN_SECRET, NEXT_SECRET] {
        let response = send(app.request(Method::GET, "/admin/tenants").header(ADMIN_HEADER, secret)).await;
        assert_eq!(response.status(), StatusCode::OK, "{secret}");
    }
    let created = send(
        app.request(Method::POST, "/admin/tenants").header(ADMIN_HEADER, NEXT_SECRET).json(&json!({"id": "acme"})),
    )
    .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let other = send(app.request(Method::GET, "/admin/tenants").header(ADMIN_HEADER, "third-secret-0123456789abcdef"));
    assert_error(other.await, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

// -------------------------------------------------------------------------- request bodies

async fn json_endpoint_refuses_other_media_types(db: TestDatabase) {
    let app = spawn_app(&db).await;

    let requests = [
        app.admin(Method::POST, "/admin/tenants").header(CONTENT_TYPE, "text/plain").body(r#"{"id":"acme"}"#),
        app.admin(Method::POST, "/admin/tenants")
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body("id=acme"),
        app.admin(Method::POST, "/admin/tenants").body(r#"{"id":"acme"}"#),
        app.admin(Method::PATCH, "/admin/tenants/default").header(CONTENT_TYPE, "text/plain").body(r#"{}"#),
        app.admin(Method::POST, "/a/default/admin/keys/revoke").header(CONTENT_TYPE, "text/plain").body(r#"{}"#),
    ];

    for request in requests {
        assert_error(send(request).await, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type").await;
    }
    assert_error(app.admin_get("/admin/tenants/acme").await, StatusCode::NOT_FOUND, "not_found").await;
}

async fn oversized_body_is_refused(db: TestDatabase) {
    let app = spawn_app(&db).await;
    let padding = "x".repeat(64 * 1024);

    let create = app.admin_post_json("/admin/tenants", &json!({ "id": "acme", "issuer": padding })).await;
    assert_error(create, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    let stage = app.admin_post_json("/a/default/admin/keys", &json!({ "alg": padding })).await;
    assert_error(stage, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;

    assert_eq!(app.keys("default").await.len(), 1, "nothing was staged");
}

async fn malformed_json_is_a_bad_request(db: TestDatabase) {
    let app = spawn_app(&db).await;
    let bodies = [r#"{"id": "acme""#, "not json", r#"["acme"]"#, r#"{"id": 42}"#, "null"];

    for body in bodies {
        let request = app.admin(Method::POST, "/admin/tenants").header(CONTENT_TYPE, "application/json").body(body);
        assert_error(send(request).await, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    let request =
        app.admin(Method::POST, "/a/default/admin/keys/revoke").header(CONTENT_TYPE, "application/json").body("{kid:");
    assert_error(send(request).await, StatusCode::BAD_REQUEST, "invalid_request").await;
}
