//! What orchestrators, Prometheus and API clients rely on (API.md "Operations" and
//! "Conventions"): health, readiness, metrics, the OpenAPI document, the error shape of
//! unknown paths and the headers every response carries.

mod support;

use reqwest::header::{CONTENT_TYPE, IF_NONE_MATCH};
use reqwest::{Method, StatusCode};
use serde_json::json;

use support::TestDatabase;
use support::app::{TestApp, assert_error, json, send, spawn_app};

support::backend_tests!(
    healthz_answers_ok,
    readyz_reports_the_database_up_and_redis_disabled,
    metrics_count_traffic_by_route_template_not_raw_path,
    metrics_show_key_gauges_per_tenant_and_state,
    openapi_document_describes_the_api,
    unknown_path_is_a_json_not_found,
    every_response_carries_nosniff,
);

async fn healthz_answers_ok(db: TestDatabase) {
    let app = spawn_app(&db).await;

    let (status, body) = json(app.get("/healthz").await).await;

    assert_eq!((status, body), (StatusCode::OK, json!({ "status": "ok" })));
}

async fn readyz_reports_the_database_up_and_redis_disabled(db: TestDatabase) {
    let app = spawn_app(&db).await;
    let expected = json!({ "status": "ok", "checks": { "database": "up", "redis": "disabled" } });

    for path in ["/readyz", "/readyz?strict=true"] {
        let (status, body) = json(app.get(path).await).await;
        assert_eq!((status, &body), (StatusCode::OK, &expected), "{path}");
    }
}

fn sample_lines<'t>(text: &'t str, metric: &str) -> Vec<&'t str> {
    text.lines().filter(|l| !l.starts_with('#') && l.starts_with(metric)).collect()
}

/// The value of the one sample of `metric` whose labels include all of `labels`.
fn sample(text: &str, metric: &str, labels: &[&str]) -> Option<f64> {
    let prefix = format!("{metric}{{");
    sample_lines(text, &prefix)
        .into_iter()
        .find(|line| labels.iter().all(|l| line.contains(l)))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

async fn metrics_text(app: &TestApp) -> String {
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert!(content_type.starts_with("text/plain"), "Prometheus text format: {content_type}");
    response.text().await.expect("metrics text")
}

async fn metrics_count_traffic_by_route_template_not_raw_path(db: TestDatabase) {
    let app = spawn_app(&db).await;
    app.create_tenant(json!({ "id": "acme" })).await;
    let (_, headers, _) = app.jwks("acme").await;
    let etag = headers.get("etag").unwrap().to_str().unwrap().to_owned();
    send(app.request(Method::GET, "/a/acme/.well-known/jwks.json").header(IF_NONE_MATCH, etag)).await;
    app.get("/a/tenant-nobody-knows/.well-known/jwks.json").await;
    app.get("/no/such/path-nobody-knows").await;

    let text = metrics_text(&app).await;

    let jwks = "keyward_jwks_requests_total";
    assert_eq!(sample(&text, jwks, &[r#"tenant="acme""#, r#"status="200""#]), Some(1.0), "{text}");
    assert_eq!(sample(&text, jwks, &[r#"tenant="acme""#, r#"status="304""#]), Some(1.0), "{text}");
    let http = "keyward_http_requests_total";
    let jwks_route = r#"route="/a/{tenant}/.well-known/jwks.json""#;
    let get = r#"method="GET""#;
    assert_eq!(sample(&text, http, &[jwks_route, get, r#"status="200""#]), Some(1.0), "{text}");
    assert_eq!(sample(&text, http, &[jwks_route, get, r#"status="304""#]), Some(1.0), "{text}");
    assert_eq!(sample(&text, http, &[jwks_route, get, r#"status="404""#]), Some(1.0), "{text}");
    assert_eq!(sample(&text, http, &[r#"route="/admin/tenants""#, r#"method="POST""#, r#"status="201""#]), Some(1.0));
    assert!(sample(&text, "keyward_http_request_duration_seconds_count", &[jwks_route]).is_some(), "{text}");
    // Client input never becomes a label value.
    for raw in ["/a/acme/", "tenant-nobody-knows", "path-nobody-knows"] {
        assert!(!text.contains(raw), "`{raw}` leaked into the metrics:\n{text}");
    }
}

async fn metrics_show_key_gauges_per_tenant_and_state(db: TestDatabase) {
    let app = spawn_app(&db).await;
    app.create_tenant(json!({ "id": "acme" })).await;
    app.stage_key("acme").await;
    app.stage_key("acme").await;

    let text = metrics_text(&app).await;

    let keys = "keyward_keys";
    assert_eq!(sample(&text, keys, &[r#"tenant="acme""#, r#"state="active""#]), Some(1.0), "{text}");
    assert_eq!(sample(&text, keys, &[r#"tenant="acme""#, r#"state="staged""#]), Some(2.0), "{text}");
    assert_eq!(sample(&text, keys, &[r#"tenant="acme""#, r#"state="revoked""#]), Some(0.0), "{text}");
    assert_eq!(sample(&text, keys, &[r#"tenant="default""#, r#"state="active""#]), Some(1.0), "{text}");
    assert!(text.lines().any(|l| l.starts_with("keyward_db_up ")), "{text}");
}

async fn openapi_document_describes_the_api(db: TestDatabase) {
    let app = spawn_app(&db).await;

    let (status, doc) = json(app.get("/openapi.json").await).await;

    assert_eq!(status, StatusCode::OK);
    let version = doc["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3."), "OpenAPI 3: {version:?}");
    let paths = doc["paths"].as_object().expect("paths");
    for (path, method) in [
        ("/.well-known/jwks.json", "get"),
        ("/a/{tenant}/.well-known/jwks.json", "get"),
        ("/a/{tenant}/.well-known/openid-configuration", "get"),
        ("/admin/tenants", "post"),
        ("/admin/tenants", "get"),
        ("/admin/tenants/{id}", "get"),
        ("/admin/tenants/{id}", "patch"),
        ("/a/{tenant}/admin/keys", "get"),
        ("/a/{tenant}/admin/keys", "post"),
        ("/a/{tenant}/admin/keys/{kid}/activate", "post"),
        ("/a/{tenant}/admin/keys/rotate", "post"),
        ("/a/{tenant}/admin/keys/revoke", "post"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
    ] {
        assert!(paths.get(path).and_then(|p| p.get(method)).is_some(), "{method} {path} is not documented");
    }
}

async fn unknown_path_is_a_json_not_found(db: TestDatabase) {
    let app = spawn_app(&db).await;

    for path in ["/nope", "/a/default/nope", "/admin", "/.well-known/jwks"] {
        let response = app.get(path).await;
        let content_type = response.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
        assert!(content_type.starts_with("application/json"), "{path}: {content_type}");
        assert_error(response, StatusCode::NOT_FOUND, "not_found").await;
    }
}

async fn every_response_carries_nosniff(db: TestDatabase) {
    let app = spawn_app(&db).await;
    let (_, headers, _) = app.jwks("default").await;
    let etag = headers.get("etag").unwrap().to_str().unwrap().to_owned();
    let big = "x".repeat(65 * 1024);

    let requests = [
        (app.request(Method::GET, "/healthz"), StatusCode::OK),
        (app.request(Method::GET, "/readyz"), StatusCode::OK),
        (app.request(Method::GET, "/metrics"), StatusCode::OK),
        (app.request(Method::GET, "/openapi.json"), StatusCode::OK),
        (app.request(Method::GET, "/.well-known/jwks.json"), StatusCode::OK),
        (app.request(Method::GET, "/.well-known/jwks.json").header(IF_NONE_MATCH, etag), StatusCode::NOT_MODIFIED),
        (app.request(Method::GET, "/.well-known/openid-configuration"), StatusCode::OK),
        (app.admin(Method::GET, "/admin/tenants"), StatusCode::OK),
        (app.admin(Method::POST, "/a/default/admin/keys"), StatusCode::CREATED),
        (app.request(Method::GET, "/a/UPPER/.well-known/jwks.json"), StatusCode::BAD_REQUEST),
        (app.request(Method::GET, "/admin/tenants"), StatusCode::UNAUTHORIZED),
        (app.request(Method::GET, "/a/nobody/.well-known/jwks.json"), StatusCode::NOT_FOUND),
        (app.request(Method::GET, "/nope"), StatusCode::NOT_FOUND),
        (app.request(Method::DELETE, "/healthz"), StatusCode::METHOD_NOT_ALLOWED),
        (app.admin(Method::POST, "/admin/tenants").json(&json!({ "id": "default" })), StatusCode::CONFLICT),
        (app.admin(Method::POST, "/admin/tenants").json(&json!({ "issuer": big })), StatusCode::PAYLOAD_TOO_LARGE),
        (app.admin(Method::POST, "/admin/tenants").body("id=x"), StatusCode::UNSUPPORTED_MEDIA_TYPE),
    ];

    for (request, status) in requests {
        let response = send(request).await;
        let nosniff = response.headers().get("x-content-type-options").map(|v| v.to_str().unwrap_or_default());
        assert_eq!((response.status(), nosniff), (status, Some("nosniff")), "{}", response.url());
    }
}
