//! Tenants and their policy through the admin API (API.md "Administration" and the tenant
//! policy rules of "Configuration"), on both backends, through the real server.

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use support::TestDatabase;
use support::app::{assert_error, json, send, spawn_app, spawn_app_with};

support::backend_tests!(
    created_tenant_has_the_default_policy_and_an_active_key,
    created_tenant_is_listed_and_readable,
    malformed_tenant_ids_are_refused,
    policies_breaking_the_rules_are_refused,
    existing_tenant_cannot_be_created_again,
    unknown_tenant_is_not_found_for_every_admin_read,
    patch_changes_the_policy,
    patch_is_validated_like_create,
);

/// How many audit events name `tenant`.
async fn audit_count(db: &TestDatabase, tenant: &str) -> usize {
    db.raw().await.audit_events().await.iter().filter(|e| e.tenant_id.as_deref() == Some(tenant)).count()
}

fn active_kid(created: &Value) -> String {
    created["active_kid"].as_str().expect("active_kid").to_owned()
}

async fn created_tenant_has_the_default_policy_and_an_active_key(db: TestDatabase) {
    let app = spawn_app_with(&db, |s| s.public_url = Some("https://keys.example.com".into())).await;

    let response = app.admin_post_json("/admin/tenants", &json!({ "id": "acme" })).await;

    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers().get("location").and_then(|v| v.to_str().ok()), Some("/admin/tenants/acme"));
    let (_, body) = json(response).await;
    let tenant = &body["tenant"];
    assert_eq!(tenant["id"], "acme", "{body}");
    assert_eq!(tenant["issuer"], "https://keys.example.com/a/acme");
    assert_eq!(tenant["audiences"], json!(["acme"]));
    assert_eq!(tenant["signing_alg"], "ES256");
    for (field, default) in [
        ("rotation_period", "90d"),
        ("overlap", "7d"),
        ("stage_lead", "2d"),
        ("access_token_ttl", "15m"),
        ("refresh_token_ttl", "30d"),
    ] {
        assert_eq!(tenant[field], default, "{field}: {body}");
    }
    let kid = active_kid(&body);
    assert_eq!(app.kids_in_state("acme", "active").await, [kid.as_str()]);
    assert_eq!(app.jwks_kids("acme").await, [kid]);
}

async fn created_tenant_is_listed_and_readable(db: TestDatabase) {
    let app = spawn_app(&db).await;
    let spec = json!({
        "id": "globex", "issuer": "https://login.globex.test", "audiences": ["api", "console"],
        "signing_alg": "EdDSA", "rotation_period": "30d", "overlap": "2d", "stage_lead": "1d",
        "access_token_ttl": "10m", "refresh_token_ttl": "14d",
    });
    let created = app.create_tenant(spec.clone()).await;

    let (status, read) = json(app.admin_get("/admin/tenants/globex").await).await;
    let (_, list) = json(app.admin_get("/admin/tenants").await).await;

    assert_eq!(status, StatusCode::OK, "{read}");
    for (field, value) in spec.as_object().unwrap() {
        assert_eq!(&read["tenant"][field], value, "{field}: {read}");
    }
    assert_eq!(read["active_kid"], created["active_kid"]);
    let ids: Vec<&str> = list["tenants"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["default", "globex"], "{list}");
}

async fn malformed_tenant_ids_are_refused(db: TestDatabase) {
    let app = spawn_app(&db).await;
    let too_long = "a".repeat(64);
    let bad_ids = ["UPPER", "a_b", too_long.as_str(), "../x", "", "-a", "a b", "é"];

    for id in bad_ids {
        let response = app.admin_post_json("/admin/tenants", &json!({ "id": id })).await;
        assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    for id in ["UPPER", "a_b", too_long.as_str()] {
        assert_error(app.admin_get(&format!("/admin/tenants/{id}")).await, StatusCode::BAD_REQUEST, "invalid_request")
            .await;
        assert_error(app.admin_get(&format!("/a/{id}/admin/keys")).await, StatusCode::BAD_REQUEST, "invalid_request")
            .await;
    }
    let missing = app.admin_post_json("/admin/tenants", &json!({ "issuer": "https://x.test" })).await;
    assert_error(missing, StatusCode::BAD_REQUEST, "invalid_request").await;

    let (_, list) = json(app.admin_get("/admin/tenants").await).await;
    assert_eq!(list["tenants"].as_array().unwrap().len(), 1, "only the default tenant: {list}");
    let longest = "a".repeat(63);
    app.create_tenant(json!({ "id": longest })).await;
}

async fn policies_breaking_the_rules_are_refused(db: TestDatabase) {
    let app = spawn_app(&db).await;
    let bad = [
        // stage_lead below the JWKS max-age (5m)
        json!({ "stage_lead": "4m59s" }),
        // overlap below access_token_ttl + JWKS max-age: 15m + 5m
        json!({ "overlap": "19m59s" }),
        json!({ "access_token_ttl": "1h", "overlap": "1h4m" }),
        // rotation_period not longer than stage_lead
        json!({ "rotation_period": "2d", "stage_lead": "2d" }),
        json!({ "rotation_period": "1d", "stage_lead": "2d" }),
        // not durations, or not a policy at all
        json!({ "rotation_period": "soon" }),
        json!({ "rotation_period": 7_776_000 }),
        json!({ "overlap": "-7d" }),
        json!({ "access_token_ttl": "0s" }),
        json!({ "signing_alg": "HS256" }),
        json!({ "signing_alg": "none" }),
        json!({ "colour": "blue" }),
        json!({ "audiences": [] }),
        json!({ "issuer": "" }),
    ];

    for fields in bad {
        let mut body = fields.clone();
        body["id"] = json!("acme");
        let response = app.admin_post_json("/admin/tenants", &body).await;
        assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
    }

    assert_error(app.admin_get("/admin/tenants/acme").await, StatusCode::NOT_FOUND, "not_found").await;
    // The limits themselves are accepted.
    app.create_tenant(json!({ "id": "acme", "stage_lead": "5m", "overlap": "20m", "rotation_period": "5m1s" })).await;
}

async fn existing_tenant_cannot_be_created_again(db: TestDatabase) {
    let app = spawn_app(&db).await;
    let first = app.create_tenant(json!({ "id": "acme" })).await;

    let again = app.admin_post_json("/admin/tenants", &json!({ "id": "acme", "signing_alg": "RS256" })).await;
    assert_error(again, StatusCode::CONFLICT, "conflict").await;
    let default = app.admin_post_json("/admin/tenants", &json!({ "id": "default" })).await;
    assert_error(default, StatusCode::CONFLICT, "conflict").await;

    assert_eq!(app.keys("acme").await.len(), 1, "no key was added");
    assert_eq!(app.jwks_kids("acme").await, [active_kid(&first)]);
}

async fn unknown_tenant_is_not_found_for_every_admin_read(db: TestDatabase) {
    let app = spawn_app(&db).await;

    let requests = [
        app.admin(Method::GET, "/admin/tenants/nobody"),
        app.admin(Method::PATCH, "/admin/tenants/nobody").json(&json!({ "overlap": "8d" })),
        app.admin(Method::GET, "/a/nobody/admin/keys"),
        app.admin(Method::POST, "/a/nobody/admin/keys"),
        app.admin(Method::POST, "/a/nobody/admin/keys/rotate"),
        app.admin(Method::POST, "/a/nobody/admin/keys/revoke"),
        app.admin(Method::POST, "/a/nobody/admin/keys/some-kid/activate?force=true"),
    ];

    for request in requests {
        assert_error(send(request).await, StatusCode::NOT_FOUND, "not_found").await;
    }
}

async fn patch_changes_the_policy(db: TestDatabase) {
    let app = spawn_app(&db).await;
    app.create_tenant(json!({ "id": "acme" })).await;

    let audited = audit_count(&db, "acme").await;

    let patch = json!({ "overlap": "8d", "access_token_ttl": "5m", "audiences": ["api"], "signing_alg": "EdDSA" });
    let (status, patched) = json(app.admin_patch_json("/admin/tenants/acme", &patch).await).await;

    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(audit_count(&db, "acme").await, audited + 1, "the change is audited");
    let (_, read) = json(app.admin_get("/admin/tenants/acme").await).await;
    for tenant in [&patched["tenant"], &read["tenant"]] {
        assert_eq!(tenant["overlap"], "8d", "{tenant}");
        assert_eq!(tenant["access_token_ttl"], "5m");
        assert_eq!(tenant["audiences"], json!(["api"]));
        assert_eq!(tenant["signing_alg"], "EdDSA");
        assert_eq!(tenant["rotation_period"], "90d", "untouched fields keep their value");
    }
    // A new signing_alg applies to keys created from now on.
    let kid = app.stage_key("acme").await;
    let key = app.keys("acme").await.into_iter().find(|k| k["kid"] == kid.as_str()).unwrap();
    assert_eq!(key["alg"], "EdDSA", "{key}");
}

async fn patch_is_validated_like_create(db: TestDatabase) {
    let app = spawn_app(&db).await;
    app.create_tenant(json!({ "id": "acme" })).await;
    let (_, before) = json(app.admin_get("/admin/tenants/acme").await).await;
    let audited = audit_count(&db, "acme").await;
    let bad = [
        json!({ "stage_lead": "4m" }),
        json!({ "overlap": "19m" }),
        json!({ "access_token_ttl": "7d" }), // overlap 7d < 7d + 5m
        json!({ "rotation_period": "2d" }),  // = stage_lead
        json!({ "rotation_period": "soon" }),
        json!({ "colour": "blue" }),
        json!({ "id": "renamed" }),
        json!({ "signing_alg": "HS256" }),
    ];

    for patch in bad {
        let response = app.admin_patch_json("/admin/tenants/acme", &patch).await;
        assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
    }

    let (_, after) = json(app.admin_get("/admin/tenants/acme").await).await;
    assert_eq!(after, before, "a refused PATCH changes nothing");
    assert_eq!(audit_count(&db, "acme").await, audited, "and audits no change");
}
