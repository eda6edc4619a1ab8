//! The key lifecycle through the admin API (API.md "Administration"): staging, activation
//! rules, rotation (also in an emergency), revocation with a replacement, the audit trail
//! of each change, and what concurrent calls leave behind. On both backends, through the
//! real server.

mod support;

use std::sync::Arc;

use keyward::clock::ManualClock;
use reqwest::StatusCode;
use serde_json::{Value, json};
use time::macros::datetime;

use futures::future::join_all;
use keyward::domain::Period;
use support::TestDatabase;
use support::app::{ADMIN_SECRET, TestApp, assert_error, json, spawn_app, spawn_app_with, spawn_app_with_clock};
use support::raw::AuditRow;

support::backend_tests!(
    staged_key_is_listed_as_staged_with_its_lifecycle_times,
    activating_a_just_staged_key_is_a_conflict,
    forced_activation_retires_the_active_key,
    staged_key_activates_without_force_once_stage_lead_has_passed,
    only_a_staged_key_can_be_activated,
    unknown_kid_is_not_found,
    rotation_activates_a_fresh_key_and_retires_the_old_one,
    rotation_prefers_the_staged_key_published_longest,
    emergency_rotation_revokes_the_old_key_and_unpublishes_it,
    revoking_one_key_unpublishes_it,
    revoking_the_active_key_by_kid_activates_a_replacement,
    revoking_all_active_keys_leaves_exactly_one_new_active_key,
    revoking_all_active_keys_promotes_a_staged_key_first,
    state_changes_are_audited_with_their_kid,
    concurrent_rotations_leave_exactly_one_active_key,
    every_key_staged_concurrently_is_published_when_its_call_returns,
    key_revoked_while_keys_are_being_staged_is_unpublished_when_the_call_returns,
);

fn active_kid(created: &Value) -> String {
    created["active_kid"].as_str().expect("active_kid").to_owned()
}

async fn audit_rows(db: &TestDatabase) -> Vec<AuditRow> {
    db.raw().await.audit_events().await
}

async fn staged_key_is_listed_as_staged_with_its_lifecycle_times(db: TestDatabase) {
    let clock = ManualClock::new(datetime!(2026-06-01 09:00 UTC));
    let app = spawn_app_with_clock(&db, Arc::new(clock.clone())).await;
    app.create_tenant(json!({ "id": "acme" })).await;
    clock.advance(time::Duration::hours(1));

    let (status, staged) = json(app.admin_post("/a/acme/admin/keys").await).await;

    assert_eq!(status, StatusCode::CREATED, "{staged}");
    assert_eq!(staged["state"], "staged");
    assert_eq!(staged["alg"], "ES256");
    assert_eq!(staged["created_at"], "2026-06-01T10:00:00Z");
    for unset in ["activated_at", "retired_at", "expires_at", "revoked_at"] {
        assert!(staged[unset].is_null(), "{unset}: {staged}");
    }
    let listed = app.keys("acme").await;
    assert_eq!(listed.len(), 2);
    assert_eq!(listed.iter().find(|k| k["kid"] == staged["kid"]), Some(&staged), "the list shows the same key");
    let (status, one) =
        json(app.admin_get(&format!("/a/acme/admin/keys/{}", staged["kid"].as_str().unwrap())).await).await;
    assert_eq!((status, &one), (StatusCode::OK, &staged));
}

async fn activating_a_just_staged_key_is_a_conflict(db: TestDatabase) {
    let app = spawn_app(&db).await;
    let active = active_kid(&app.create_tenant(json!({ "id": "acme", "stage_lead": "1h" })).await);
    let staged = app.stage_key("acme").await;

    let response = app.admin_post(&format!("/a/acme/admin/keys/{staged}/activate")).await;
    assert_error(response, StatusCode::CONFLICT, "conflict").await;
    let response = app.admin_post(&format!("/a/acme/admin/keys/{staged}/activate?force=false")).await;
    assert_error(response, StatusCode::CONFLICT, "conflict").await;

    assert_eq!(app.key_state("acme", &staged).await, "staged");
    assert_eq!(app.key_state("acme", &active).await, "active");
}

async fn forced_activation_retires_the_active_key(db: TestDatabase) {
    let app = spawn_app(&db).await;
    let old = active_kid(&app.create_tenant(json!({ "id": "acme" })).await);
    let new = app.stage_key("acme").await;

    let (status, body) = json(app.admin_post(&format!("/a/acme/admin/keys/{new}/activate?force=true")).await).await;

    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((&body["active_kid"], &body["retired_kid"]), (&json!(new), &json!(old)), "{body}");
    let keys = app.keys("acme").await;
    let old_view = keys.iter().find(|k| k["kid"] == old.as_str()).unwrap();
    let new_view = keys.iter().find(|k| k["kid"] == new.as_str()).unwrap();
    assert_eq!((&old_view["state"], &new_view["state"]), (&json!("retired"), &json!("active")));
    assert!(old_view["retired_at"].is_string() && old_view["expires_at"].is_string(), "{old_view}");
    assert!(new_view["activated_at"].is_string(), "{new_view}");
    assert_eq!(app.kids_in_state("acme", "active").await, [new.as_str()]);
    let mut published = app.jwks_kids("acme").await;
    published.sort();
    let mut expected = vec![old, new];
    expected.sort();
    assert_eq!(published, expected, "the retired key stays published during its overlap");
}

async fn staged_key_activates_without_force_once_stage_lead_has_passed(db: TestDatabase) {
    let clock = ManualClock::new(datetime!(2026-06-01 09:00 UTC));
    let app = spawn_app_with_clock(&db, Arc::new(clock.clone())).await;
    let old = active_kid(&app.create_tenant(json!({ "id": "acme", "stage_lead": "1h" })).await);
    let new = app.stage_key("acme").await;
    let path = format!("/a/acme/admin/keys/{new}/activate");

    clock.advance(time::Duration::minutes(59) + time::Duration::seconds(59));
    assert_error(app.admin_post(&path).await, StatusCode::CONFLICT, "conflict").await;
    clock.advance(time::Duration::seconds(1));
    let (status, body) = json(app.admin_post(&path).await).await;

    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((&body["active_kid"], &body["retired_kid"]), (&json!(new), &json!(old)));
    let view = app.keys("acme").await.into_iter().find(|k| k["kid"] == old.as_str()).unwrap();
    assert_eq!(view["retired_at"], "2026-06-01T10:00:00Z", "{view}");
    assert_eq!(view["expires_at"], "2026-06-08T10:00:00Z", "retired_at + 7d overlap: {view}");
}

async fn only_a_staged_key_can_be_activated(db: TestDatabase) {
    let app = spawn_app(&db).await;
    let retired = active_kid(&app.create_tenant(json!({ "id": "acme" })).await);
    let active = app.stage_key("acme").await;
    app.force_activate("acme", &active).await;
    let revoked = app.stage_key("acme").await;
    app.revoke_key("acme", &revoked).await;

    for kid in [&active, &retired, &revoked] {
        for query in ["", "?force=true"] {
            let response = app.admin_post(&format!("/a/acme/admin/keys/{kid}/activate{query}")).await;
            assert_error(response, StatusCode::CONFLICT, "conflict").await;
        }
    }

    assert_eq!(app.kids_in_state("acme", "active").await, [active]);
    assert_eq!(app.kids_in_state("acme", "retired").await, [retired]);
    assert_eq!(app.kids_in_state("acme", "revoked").await, [revoked]);
}

async fn unknown_kid_is_not_found(db: TestDatabase) {
    let app = spawn_app(&db).await;
    app.create_tenant(json!({ "id": "acme" })).await;
    let other_tenants_kid = app.kids_in_state("default", "active").await.remove(0);

    for kid in ["no-such-kid", other_tenants_kid.as_str()] {
        let activate = app.admin_post(&format!("/a/acme/admin/keys/{kid}/activate?force=true")).await;
        assert_error(activate, StatusCode::NOT_FOUND, "not_found").await;
        let revoke = app.admin_post_json("/a/acme/admin/keys/revoke", &json!({ "kid": kid })).await;
        assert_error(revoke, StatusCode::NOT_FOUND, "not_found").await;
        let read = app.admin_get(&format!("/a/acme/admin/keys/{kid}")).await;
        assert_error(read, StatusCode::NOT_FOUND, "not_found").await;
    }
    assert_eq!(app.key_state("default", &other_tenants_kid).await, "active");
}

async fn rotation_activates_a_fresh_key_and_retires_the_old_one(db: TestDatabase) {
    let app = spawn_app(&db).await;
    let old = active_kid(&app.create_tenant(json!({ "id": "acme", "signing_alg": "RS256" })).await);

    let (status, body) = json(app.admin_post("/a/acme/admin/keys/rotate").await).await;

    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["retired_kid"], old.as_str(), "{body}");
    let new = body["active_kid"].as_str().expect("active_kid").to_owned();
    assert_ne!(new, old);
    assert_eq!(app.kids_in_state("acme", "active").await, [new.as_str()]);
    assert_eq!(app.key_state("acme", &old).await, "retired");
    let key = app.keys("acme").await.into_iter().find(|k| k["kid"] == new.as_str()).unwrap();
    assert_eq!(key["alg"], "RS256", "the tenant's algorithm: {key}");
    assert_eq!(app.jwks_kids("acme").await, [new, old], "the active key first, then the retired one");
}

async fn rotation_prefers_the_staged_key_published_longest(db: TestDatabase) {
    let app = spawn_app(&db).await;
    let old = active_kid(&app.create_tenant(json!({ "id": "acme" })).await);
    let oldest_staged = app.stage_key("acme").await;
    let newer_staged = app.stage_key("acme").await;

    let (status, body) =
        json(app.admin_post_json("/a/acme/admin/keys/rotate", &json!({ "emergency": false })).await).await;

    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((&body["active_kid"], &body["retired_kid"]), (&json!(oldest_staged), &json!(old)), "{body}");
    assert_eq!(app.key_state("acme", &newer_staged).await, "staged");
    assert_eq!(app.keys("acme").await.len(), 3, "no fresh key was generated");
}

async fn emergency_rotation_revokes_the_old_key_and_unpublishes_it(db: TestDatabase) {
    let app = spawn_app(&db).await;
    let compromised = active_kid(&app.create_tenant(json!({ "id": "acme", "signing_alg": "EdDSA" })).await);

    let (status, body) =
        json(app.admin_post_json("/a/acme/admin/keys/rotate", &json!({ "emergency": true })).await).await;

    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["revoked_kid"], compromised.as_str(), "{body}");
    assert!(body.get("retired_kid").is_none_or(Value::is_null), "nothing was retired: {body}");
    let new = body["active_kid"].as_str().expect("active_kid").to_owned();
    assert_ne!(new, compromised);
    assert_eq!(app.key_state("acme", &compromised).await, "revoked");
    assert_eq!(app.jwks_kids("acme").await, [new], "the compromised key is gone at once");
}

async fn revoking_one_key_unpublishes_it(db: TestDatabase) {
    let app = spawn_app(&db).await;
    let retired = active_kid(&app.create_tenant(json!({ "id": "acme" })).await);
    let active = app.stage_key("acme").await;
    app.force_activate("acme", &active).await;
    let staged = app.stage_key("acme").await;

    let body = app.revoke_key("acme", &retired).await;

    assert_eq!((&body["revoked"], &body["active_kid"]), (&json!([retired]), &json!(active)), "{body}");
    assert_eq!(app.key_state("acme", &retired).await, "revoked");
    let view = app.keys("acme").await.into_iter().find(|k| k["kid"] == retired.as_str()).unwrap();
    assert!(view["revoked_at"].is_string(), "{view}");
    let mut published = app.jwks_kids("acme").await;
    published.sort();
    let mut expected = vec![active.clone(), staged.clone()];
    expected.sort();
    assert_eq!(published, expected);

    // Again: already revoked, nothing more to do.
    let again = app.revoke_key("acme", &retired).await;
    assert_eq!((&again["revoked"], &again["active_kid"]), (&json!([]), &json!(active)), "{again}");
}

async fn revoking_the_active_key_by_kid_activates_a_replacement(db: TestDatabase) {
    let app = spawn_app(&db).await;
    let old = active_kid(&app.create_tenant(json!({ "id": "acme" })).await);

    let body = app.revoke_key("acme", &old).await;

    assert_eq!(body["revoked"], json!([old]), "{body}");
    let new = body["active_kid"].as_str().expect("a replacement signs").to_owned();
    assert_ne!(new, old);
    assert_eq!(app.kids_in_state("acme", "active").await, [new.as_str()]);
    assert_eq!(app.jwks_kids("acme").await, [new]);
}

async fn revoking_all_active_keys_leaves_exactly_one_new_active_key(db: TestDatabase) {
    let app = spawn_app(&db).await;
    let old = active_kid(&app.create_tenant(json!({ "id": "acme" })).await);

    let (status, body) = json(app.admin_post("/a/acme/admin/keys/revoke").await).await;

    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["revoked"], json!([old]), "{body}");
    let new = body["active_kid"].as_str().expect("active_kid").to_owned();
    assert_ne!(new, old);
    assert_eq!(app.kids_in_state("acme", "active").await, [new.as_str()], "exactly one active key");
    assert_eq!(app.key_state("acme", &old).await, "revoked");
    assert_eq!(app.jwks_kids("acme").await, [new.as_str()]);

    // `{}` means the same as no body.
    let (status, body) = json(app.admin_post_json("/a/acme/admin/keys/revoke", &json!({})).await).await;
    assert_eq!((status, &body["revoked"]), (StatusCode::OK, &json!([new])), "{body}");
    assert_eq!(app.kids_in_state("acme", "active").await.len(), 1);
}

async fn revoking_all_active_keys_promotes_a_staged_key_first(db: TestDatabase) {
    let app = spawn_app(&db).await;
    let old = active_kid(&app.create_tenant(json!({ "id": "acme" })).await);
    let staged = app.stage_key("acme").await;

    let (status, body) = json(app.admin_post("/a/acme/admin/keys/revoke").await).await;

    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((&body["revoked"], &body["active_kid"]), (&json!([old]), &json!(staged)), "{body}");
    assert_eq!(app.keys("acme").await.len(), 2, "no fresh key was needed");
    assert_eq!(app.jwks_kids("acme").await, [staged]);
}

async fn state_changes_are_audited_with_their_kid(db: TestDatabase) {
    let app = spawn_app(&db).await;
    let first = active_kid(&app.create_tenant(json!({ "id": "acme" })).await);
    let second = app.stage_key("acme").await;
    app.force_activate("acme", &second).await;
    app.revoke_key("acme", &first).await;
    let (_, emergency) =
        json(app.admin_post_json("/a/acme/admin/keys/rotate", &json!({ "emergency": true })).await).await;
    let third = emergency["active_kid"].as_str().expect("active_kid").to_owned();

    let events: Vec<(String, Option<String>)> = audit_rows(&db)
        .await
        .into_iter()
        .filter(|r| r.tenant_id.as_deref() == Some("acme"))
        .inspect(|r| assert!(r.actor.starts_with("admin:"), "the admin secret's fingerprint: {r:?}"))
        .inspect(|r| assert!(!r.actor.contains(ADMIN_SECRET), "never the secret itself: {r:?}"))
        .map(|r| (r.kind, r.kid))
        .collect();

    let event = |kind: &str, kid: Option<&String>| (kind.to_owned(), kid.cloned());
    assert_eq!(
        events,
        [
            event("tenant.created", None),
            event("key.staged", Some(&first)),
            event("key.activated", Some(&first)),
            event("key.staged", Some(&second)),
            event("key.retired", Some(&first)),
            event("key.activated", Some(&second)),
            event("key.revoked", Some(&first)),
            event("key.staged", Some(&third)),
            event("key.revoked", Some(&second)),
            event("key.activated", Some(&third)),
        ]
    );
}

// ------------------------------------------------------------------------------ concurrency

/// An app that only learns about changes through its own calls: reconciliation (which
/// would paper over a lost update after a while) is pushed out of the test's reach.
async fn app_without_reconciliation(db: &TestDatabase) -> TestApp {
    spawn_app_with(db, |s| s.reconcile_interval = Period::from_secs(3_600)).await
}

async fn concurrent_rotations_leave_exactly_one_active_key(db: TestDatabase) {
    let app = app_without_reconciliation(&db).await;
    let first = active_kid(&app.create_tenant(json!({ "id": "acme" })).await);

    let responses = join_all((0..6).map(|_| app.admin_post("/a/acme/admin/keys/rotate"))).await;

    let mut activated = Vec::new();
    for response in responses {
        let (status, body) = json(response).await;
        match status {
            StatusCode::OK => activated.push(body["active_kid"].as_str().expect("active_kid").to_owned()),
            StatusCode::CONFLICT => assert_eq!(body["error"], "conflict", "{body}"),
            other => panic!("a rotation answered {other}: {body}"),
        }
    }
    assert!(!activated.is_empty(), "at least one rotation succeeds");
    let active = app.kids_in_state("acme", "active").await;
    assert_eq!(active.len(), 1, "exactly one active key: {active:?}");
    assert!(activated.contains(&active[0]), "the active key is one a rotation reported");
    assert_eq!(app.key_state("acme", &first).await, "retired");
    let (_, tenant) = json(app.admin_get("/admin/tenants/acme").await).await;
    assert_eq!(tenant["active_kid"], active[0].as_str(), "this replica signs with the active key: {tenant}");
    let mut published = app.jwks_kids("acme").await;
    let mut expected: Vec<String> =
        app.keys("acme").await.iter().map(|k| k["kid"].as_str().unwrap().to_owned()).collect();
    published.sort();
    expected.sort();
    assert_eq!(published, expected, "the JWKS is what the database holds (all active or retired)");
}

/// Stages a key; `None` if the call was refused as a conflict with a concurrent change
/// (a 409 the client may retry), after checking that refusal's shape.
async fn stage_or_conflict(app: &TestApp) -> Option<String> {
    let (status, body) = json(app.admin_post("/a/acme/admin/keys").await).await;
    match status {
        StatusCode::CREATED => Some(body["kid"].as_str().expect("kid").to_owned()),
        StatusCode::CONFLICT => {
            assert_eq!(body["error"], "conflict", "{body}");
            None
        }
        other => panic!("staging answered {other}: {body}"),
    }
}

/// Each staging call returns 201 only after its key is installed in this replica's key
/// set (read-your-writes), so once the calls have returned, every key staged is published,
/// and a call refused as a conflict left nothing behind.
async fn every_key_staged_concurrently_is_published_when_its_call_returns(db: TestDatabase) {
    let app = app_without_reconciliation(&db).await;
    app.create_tenant(json!({ "id": "acme" })).await;

    let outcomes = join_all((0..8).map(|_| stage_or_conflict(&app))).await;

    let mut staged: Vec<String> = outcomes.into_iter().flatten().collect();
    assert!(!staged.is_empty(), "at least one staging succeeds");
    let published = app.jwks_kids("acme").await;
    let missing: Vec<&String> = staged.iter().filter(|kid| !published.contains(kid)).collect();
    assert!(missing.is_empty(), "staged (201) but not published: {missing:?}; published: {published:?}");
    let mut stored = app.kids_in_state("acme", "staged").await;
    stored.sort();
    staged.sort();
    assert_eq!(stored, staged, "exactly the keys reported staged exist");
}

/// "A revoked key leaves the JWKS ... at once": also when other changes to the same
/// tenant are in flight.
async fn key_revoked_while_keys_are_being_staged_is_unpublished_when_the_call_returns(db: TestDatabase) {
    let app = app_without_reconciliation(&db).await;
    let compromised = active_kid(&app.create_tenant(json!({ "id": "acme" })).await);

    let revoke = async { json(app.admin_post("/a/acme/admin/keys/revoke").await).await };
    let stages = join_all((0..6).map(|_| stage_or_conflict(&app)));
    let ((mut status, mut revocation), outcomes) = tokio::join!(revoke, stages);
    if status == StatusCode::CONFLICT {
        // Refused as a conflict with the stagings: what an operator does next.
        (status, revocation) = json(app.admin_post("/a/acme/admin/keys/revoke").await).await;
    }

    assert_eq!((status, &revocation["revoked"]), (StatusCode::OK, &json!([compromised])), "{revocation}");
    let published = app.jwks_kids("acme").await;
    assert!(!published.contains(&compromised), "the revoked key is still published: {published:?}");
    let replacement = revocation["active_kid"].as_str().expect("active_kid").to_owned();
    assert!(published.contains(&replacement), "the replacement is not published: {published:?}");
    for kid in outcomes.iter().flatten() {
        assert!(published.contains(kid), "{kid} (staged, 201) is not published: {published:?}");
    }
    assert_eq!(app.kids_in_state("acme", "active").await, [replacement]);
}
