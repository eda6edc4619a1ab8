//! Revocation on every replica at once (API.md "Administration", DESIGN.md "Where state
//! lives"): two replicas on one PostgreSQL database and one Redis, a revocation answered by
//! one of them, and how soon the other rejects what was revoked. Propagation times are
//! measured from the 200 of the replica that was asked to the first rejection on the
//! other, printed, and held under a second.
//!
//! Each test has its own database and its own Redis prefix, so tests run in parallel on the
//! shared Redis without hearing each other.

// `backend_tests!` goes unused: replicas share one PostgreSQL database, never SQLite.
#[allow(unused_macros, unused_imports)]
mod support;

use std::time::{Duration, Instant};

use futures::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use support::app::{TestApp, eventually, json, send};
use support::replicas::{
    Cluster, Session, labelled, revocation_rows, session_is_revoked, start_session, time_until_unpublished,
    time_until_verdict, verdict, verify,
};

/// What the issue asks of every revocation: effective on every replica "in well under a
/// second".
const PROPAGATION_BOUND: Duration = Duration::from_secs(1);

const TENANT: &str = "acme";

/// Creates the tenant on `a` and waits until `b` serves it too.
async fn tenant_on_both(a: &TestApp, b: &TestApp) -> String {
    let created = a.create_tenant(json!({ "id": TENANT })).await;
    eventually("the other replica to load the new tenant", || async {
        (b.jwks(TENANT).await.0 == StatusCode::OK).then_some(())
    })
    .await;
    created["active_kid"].as_str().expect("active_kid").to_owned()
}

/// `POST` with a JSON body (or none) on `app`; returns the status, the body, and the
/// instant the answer arrived.
async fn admin_call(app: &TestApp, path: &str, body: Option<Value>) -> (StatusCode, Value, Instant) {
    let request = app.admin(Method::POST, path);
    let response = send(match body {
        Some(body) => request.json(&body),
        None => request,
    })
    .await;
    let answered = Instant::now();
    let (status, body) = json(response).await;
    (status, body, answered)
}

async fn revoke_sessions(app: &TestApp, body: Option<Value>) -> (Value, Instant) {
    let (status, body, answered) = admin_call(app, &format!("/a/{TENANT}/admin/revoke/sessions"), body).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    (body, answered)
}

/// Measures, prints and bounds how long `token` took to get `reason` on `replica`.
async fn assert_propagates(what: &str, replica: &TestApp, token: &str, reason: &str, since: Instant) {
    let took = time_until_verdict(replica, TENANT, token, reason, since).await;
    eprintln!("propagation of {what}: {took:?}");
    assert!(took < PROPAGATION_BOUND, "{what} took {took:?} to reach the other replica");
}

async fn assert_verdict_on(replicas: [&TestApp; 2], session: &Session, expected: &str) {
    for replica in replicas {
        let got = verdict(replica, TENANT, &session.access_token).await;
        assert_eq!(got, expected, "{}'s session {} on {}", session.user_id, session.session_id, replica.address);
    }
}

/// `grant_type=refresh_token` on `app`.
async fn refresh(app: &TestApp, refresh_token: &str) -> (StatusCode, Value) {
    let form = [("grant_type", "refresh_token"), ("refresh_token", refresh_token)];
    json(send(app.request(Method::POST, &format!("/a/{TENANT}/token")).form(&form)).await).await
}

#[tokio::test]
async fn session_revoked_on_one_replica_is_rejected_on_the_other_within_a_second() {
    let cluster = Cluster::on_shared_redis().await;
    let (a, b) = cluster.pair().await;
    tenant_on_both(&a, &b).await;
    let revoked = start_session(&a, TENANT, "alice").await;
    let kept = start_session(&a, TENANT, "alice").await;
    assert_verdict_on([&a, &b], &revoked, "ok").await;

    let (body, answered) = revoke_sessions(&a, Some(json!({ "session_id": revoked.session_id }))).await;

    assert_eq!(body, json!({ "revoked": 1 }));
    assert!(session_is_revoked(&cluster.db, TENANT, &revoked.session_id).await, "committed before the 200");
    assert_eq!(revocation_rows(&cluster.db, TENANT, "session", &revoked.session_id).await, 1);
    assert_propagates("a session revocation", &b, &revoked.access_token, "session_revoked", answered).await;
    assert_verdict_on([&a, &b], &revoked, "session_revoked").await;
    let counted = labelled(&a, "keyward_revocations_total", &[r#"tenant="acme""#, r#"kind="session""#]).await;
    assert_eq!(counted, 1.0, "counted once, by the replica that revoked");
    assert_verdict_on([&a, &b], &kept, "ok").await;
    let (status, body) = refresh(&b, &revoked.refresh_token).await;
    assert_eq!((status, &body["error"]), (StatusCode::UNAUTHORIZED, &json!("invalid_grant")), "{body}");
}

#[tokio::test]
async fn revoked_session_is_in_the_shared_deny_list_until_its_tokens_expire() {
    let cluster = Cluster::on_shared_redis().await;
    let (a, b) = cluster.pair().await;
    tenant_on_both(&a, &b).await;
    let session = start_session(&a, TENANT, "alice").await;

    revoke_sessions(&a, Some(json!({ "session_id": session.session_id }))).await;

    let key = format!("{}:revoked-session:{TENANT}:{}", cluster.redis.prefix, session.session_id);
    assert_eq!(cluster.redis.keys().await, std::slice::from_ref(&key));
    // Kept until the session's last access token (15 min by default, plus leeway) expires.
    let ttl = cluster.redis.ttl(&key).await;
    assert!((15 * 60..=16 * 60).contains(&ttl), "TTL {ttl} s");
}

/// A gateway reading the deny-list must see user-wide, tenant-wide and single-token
/// revocations too: cutoffs are stored as RFC 3339 times, tokens as keys per jti.
#[tokio::test]
async fn user_tenant_and_token_revocations_are_in_the_shared_deny_list() {
    let cluster = Cluster::on_shared_redis().await;
    let (a, b) = cluster.pair().await;
    tenant_on_both(&a, &b).await;
    let session = start_session(&a, TENANT, "alice").await;
    let (_, verified) = verify(&a, TENANT, &session.access_token).await;
    let jti = verified["claims"]["jti"].as_str().unwrap().to_owned();

    revoke_sessions(&a, Some(json!({ "user_id": "alice" }))).await;
    revoke_sessions(&a, None).await;
    let (status, _, _) = admin_call(&a, &format!("/a/{TENANT}/admin/revoke/tokens"), Some(json!({ "jti": jti }))).await;
    assert_eq!(status, StatusCode::OK);

    let prefix = &cluster.redis.prefix;
    let user_key = format!("{prefix}:revoked-user:{TENANT}:alice");
    let tenant_key = format!("{prefix}:revoked-tenant:{TENANT}");
    let token_key = format!("{prefix}:revoked-token:{TENANT}:{jti}");
    let mut keys = cluster.redis.keys().await;
    keys.sort();
    let mut expected = vec![tenant_key.clone(), token_key.clone(), user_key.clone()];
    expected.sort();
    assert_eq!(keys, expected);
    // Cutoffs also catch tokens Keyward did not issue, so they are kept for the refresh-token
    // lifetime (30 days by default); a single token only until it expires (15 minutes).
    for key in [&user_key, &tenant_key] {
        let value = cluster.redis.get(key).await;
        let cutoff = time::OffsetDateTime::parse(&value, &time::format_description::well_known::Rfc3339);
        assert!(cutoff.is_ok(), "{key} holds {value:?}");
        let ttl = cluster.redis.ttl(key).await;
        assert!((30 * 86_400..=30 * 86_400 + 60).contains(&ttl), "{key} TTL {ttl} s");
    }
    assert!((15 * 60..=16 * 60).contains(&cluster.redis.ttl(&token_key).await));
}

/// With reconciliation out of the picture (an hour apart), only a notice can carry the
/// revocation across: this is the fan-out itself, measured.
#[tokio::test]
async fn notices_alone_carry_a_revocation_to_the_other_replica_within_a_second() {
    let mut cluster = Cluster::on_shared_redis().await;
    cluster.reconcile_interval = keyward::domain::Period::from_secs(3600);
    let (a, b) = cluster.pair().await;
    tenant_on_both(&a, &b).await;
    let session = start_session(&b, TENANT, "alice").await;

    let (_, answered) = revoke_sessions(&a, Some(json!({ "session_id": session.session_id }))).await;

    assert_propagates("a session revocation by notice alone", &b, &session.access_token, "session_revoked", answered)
        .await;
}

#[tokio::test]
async fn user_revoke_rejects_that_users_sessions_only_on_both_replicas() {
    let cluster = Cluster::on_shared_redis().await;
    let (a, b) = cluster.pair().await;
    tenant_on_both(&a, &b).await;
    let alice = [start_session(&a, TENANT, "alice").await, start_session(&b, TENANT, "alice").await];
    let bob = start_session(&b, TENANT, "bob").await;

    let (body, answered) = revoke_sessions(&a, Some(json!({ "user_id": "alice" }))).await;

    assert_eq!(body, json!({ "revoked": 2 }));
    assert_eq!(revocation_rows(&cluster.db, TENANT, "user", "alice").await, 1, "committed before the 200");
    for session in &alice {
        assert!(session_is_revoked(&cluster.db, TENANT, &session.session_id).await);
    }
    assert_propagates("a user revocation", &b, &alice[0].access_token, "session_revoked", answered).await;
    for session in &alice {
        assert_verdict_on([&a, &b], session, "session_revoked").await;
    }
    assert_verdict_on([&a, &b], &bob, "ok").await;
    assert!(!session_is_revoked(&cluster.db, TENANT, &bob.session_id).await);
    let later = start_session(&b, TENANT, "alice").await;
    assert_verdict_on([&a, &b], &later, "ok").await;
}

#[tokio::test]
async fn tenant_wide_revoke_rejects_every_existing_session_and_spares_later_ones() {
    let cluster = Cluster::on_shared_redis().await;
    let (a, b) = cluster.pair().await;
    tenant_on_both(&a, &b).await;
    let before = [
        start_session(&a, TENANT, "alice").await,
        start_session(&b, TENANT, "bob").await,
        start_session(&a, TENANT, "carol").await,
    ];

    let (body, answered) = revoke_sessions(&a, None).await;

    assert_eq!(body, json!({ "revoked": 3 }));
    assert_eq!(revocation_rows(&cluster.db, TENANT, "tenant", "").await, 1, "committed before the 200");
    assert_propagates("a tenant-wide revocation", &b, &before[1].access_token, "session_revoked", answered).await;
    for session in &before {
        assert_verdict_on([&a, &b], session, "session_revoked").await;
        assert!(session_is_revoked(&cluster.db, TENANT, &session.session_id).await);
    }
    let after = [start_session(&a, TENANT, "alice").await, start_session(&b, TENANT, "dave").await];
    for session in &after {
        assert_verdict_on([&a, &b], session, "ok").await;
    }
}

#[tokio::test]
async fn empty_object_revokes_every_session_like_no_body() {
    let cluster = Cluster::on_shared_redis().await;
    let (a, b) = cluster.pair().await;
    tenant_on_both(&a, &b).await;
    let session = start_session(&b, TENANT, "alice").await;

    let (body, answered) = revoke_sessions(&a, Some(json!({}))).await;

    assert_eq!(body, json!({ "revoked": 1 }));
    assert_propagates("a tenant-wide revocation ({})", &b, &session.access_token, "session_revoked", answered).await;
}

#[tokio::test]
async fn token_revoked_on_one_replica_is_token_revoked_on_the_other() {
    let cluster = Cluster::on_shared_redis().await;
    let (a, b) = cluster.pair().await;
    tenant_on_both(&a, &b).await;
    let session = start_session(&a, TENANT, "alice").await;
    let (status, refreshed) = refresh(&a, &session.refresh_token).await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    let sibling = refreshed["access_token"].as_str().expect("access_token").to_owned();

    let path = format!("/a/{TENANT}/admin/revoke/tokens");
    let (status, body, answered) = admin_call(&a, &path, Some(json!({ "jti": session.jti }))).await;

    assert_eq!((status, &body["jti"]), (StatusCode::OK, &json!(session.jti)), "{body}");
    assert!(body["until"].is_string(), "{body}");
    assert_eq!(revocation_rows(&cluster.db, TENANT, "token", &session.jti).await, 1, "committed before the 200");
    assert_propagates("a token revocation", &b, &session.access_token, "token_revoked", answered).await;
    assert_eq!(verdict(&a, TENANT, &session.access_token).await, "token_revoked");
    for replica in [&a, &b] {
        assert_eq!(verdict(replica, TENANT, &sibling).await, "ok", "the session's other token on {}", replica.address);
    }
}

#[tokio::test]
async fn key_revoked_on_one_replica_leaves_the_other_replicas_jwks_within_a_second() {
    let cluster = Cluster::on_shared_redis().await;
    let (a, b) = cluster.pair().await;
    let leaked = tenant_on_both(&a, &b).await;
    let session = start_session(&a, TENANT, "alice").await;
    assert_eq!(session.kid, leaked);
    assert!(b.jwks_kids(TENANT).await.contains(&leaked));
    assert_verdict_on([&a, &b], &session, "ok").await; // now in both replicas' verified-token caches

    let path = format!("/a/{TENANT}/admin/keys/revoke");
    let (status, body, answered) = admin_call(&a, &path, Some(json!({ "kid": leaked }))).await;

    assert_eq!((status, &body["revoked"]), (StatusCode::OK, &json!([leaked])), "{body}");
    let replacement = body["active_kid"].as_str().expect("active_kid").to_owned();
    assert_ne!(replacement, leaked);
    let sql = "SELECT COUNT(*) FROM keys WHERE tenant_id = $1 AND kid = $2 AND state = 'revoked'";
    assert_eq!(cluster.db.raw().await.count(sql, &[TENANT, &leaked]).await, 1, "committed before the 200");
    let took = time_until_unpublished(&b, TENANT, &leaked, answered).await;
    eprintln!("propagation of a key revocation (JWKS): {took:?}");
    assert!(took < PROPAGATION_BOUND, "the revoked kid stayed in the other replica's JWKS for {took:?}");
    assert!(!a.jwks_kids(TENANT).await.contains(&leaked), "read-your-writes on the replica asked");
    assert!(b.jwks_kids(TENANT).await.contains(&replacement));
    assert_verdict_on([&a, &b], &session, "key_revoked").await;
    let fresh = start_session(&b, TENANT, "alice").await;
    assert_eq!(fresh.kid, replacement);
    assert_verdict_on([&a, &b], &fresh, "ok").await;
}

#[tokio::test]
async fn replica_started_after_revocations_rejects_them_on_its_first_request() {
    let cluster = Cluster::on_shared_redis().await;
    let (a, b) = cluster.pair().await;
    tenant_on_both(&a, &b).await;
    let by_session = start_session(&a, TENANT, "alice").await;
    let by_user = start_session(&a, TENANT, "bob").await;
    let by_jti = start_session(&a, TENANT, "carol").await;
    let untouched = start_session(&a, TENANT, "dave").await;
    b.stop().await;
    cluster.redis.wait_for_subscribers(1).await; // a stopped replica leaves the channel

    revoke_sessions(&a, Some(json!({ "session_id": by_session.session_id }))).await;
    revoke_sessions(&a, Some(json!({ "user_id": "bob" }))).await;
    let (status, body, _) =
        admin_call(&a, &format!("/a/{TENANT}/admin/revoke/tokens"), Some(json!({ "jti": by_jti.jti }))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let b = cluster.replica().await;
    cluster.redis.wait_for_subscribers(2).await;

    // No waiting: the first answers of the new replica already know.
    assert_eq!(verdict(&b, TENANT, &by_session.access_token).await, "session_revoked");
    assert_eq!(verdict(&b, TENANT, &by_user.access_token).await, "session_revoked");
    assert_eq!(verdict(&b, TENANT, &by_jti.access_token).await, "token_revoked");
    assert_eq!(verdict(&b, TENANT, &untouched.access_token).await, "ok");
}

#[tokio::test]
async fn every_revocation_answered_200_is_in_the_database_before_the_answer() {
    let cluster = Cluster::on_shared_redis().await;
    let (a, b) = cluster.pair().await;
    tenant_on_both(&a, &b).await;
    let mut sessions = Vec::new();
    for i in 0..12 {
        sessions.push(start_session(if i % 2 == 0 { &a } else { &b }, TENANT, &format!("user-{}", i % 4)).await);
    }

    // Concurrent revocations on both replicas, each checked in the database as soon as its
    // 200 arrives.
    let checks = sessions.iter().enumerate().map(|(i, s)| {
        let (replica, db) = (if i % 2 == 0 { &b } else { &a }, &cluster.db);
        async move {
            let (path, body, kind, subject) = match i % 3 {
                0 => ("sessions", json!({ "session_id": s.session_id }), "session", s.session_id.clone()),
                1 => ("tokens", json!({ "jti": s.jti }), "token", s.jti.clone()),
                _ => ("sessions", json!({ "user_id": s.user_id }), "user", s.user_id.clone()),
            };
            let (status, answer, _) =
                admin_call(replica, &format!("/a/{TENANT}/admin/revoke/{path}"), Some(body)).await;
            assert_eq!(status, StatusCode::OK, "{answer}");
            let rows = revocation_rows(db, TENANT, kind, &subject).await;
            assert!(rows >= 1, "revocation of {kind} {subject} answered 200 but is not in the database");
            if kind == "session" {
                assert!(session_is_revoked(db, TENANT, &subject).await, "session {subject} answered 200, not revoked");
            }
        }
    });
    join_all(checks).await;

    for (i, session) in sessions.iter().enumerate() {
        let expected = if i % 3 == 1 { "token_revoked" } else { "session_revoked" };
        for replica in [&a, &b] {
            eventually("every replica to apply every revocation", || async {
                let got = verdict(replica, TENANT, &session.access_token).await;
                // A token whose user was also revoked is session_revoked, which wins.
                (got == expected || got == "session_revoked").then_some(())
            })
            .await;
        }
    }
}

#[tokio::test]
async fn leak_drill_revokes_the_kid_and_every_session_it_signed_on_both_replicas() {
    let cluster = Cluster::on_shared_redis().await;
    let (a, b) = cluster.pair().await;
    let leaked = tenant_on_both(&a, &b).await;
    let alice1 = start_session(&a, TENANT, "alice").await;
    let alice2 = start_session(&b, TENANT, "alice").await;
    let bob = start_session(&a, TENANT, "bob").await;
    let (status, refreshed) = refresh(&b, &alice1.refresh_token).await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    let alice1_second = refreshed["access_token"].as_str().expect("access_token").to_owned();
    let mut tokens =
        vec![alice1.access_token.clone(), alice1_second, alice2.access_token.clone(), bob.access_token.clone()];

    // 1. Revoke the leaked kid (a replacement becomes active in the same call).
    let (status, body, _) =
        admin_call(&a, &format!("/a/{TENANT}/admin/keys/revoke"), Some(json!({ "kid": leaked }))).await;
    assert_eq!((status, &body["revoked"]), (StatusCode::OK, &json!([leaked])), "{body}");
    let replacement = body["active_kid"].as_str().expect("active_kid").to_owned();
    time_until_unpublished(&b, TENANT, &leaked, Instant::now()).await;

    // 2. What did it sign? Asked on the other replica.
    let (status, usage) = json(b.admin_get(&format!("/a/{TENANT}/admin/keys/{leaked}/tokens")).await).await;
    assert_eq!(status, StatusCode::OK, "{usage}");
    assert_eq!((&usage["kid"], &usage["tokens"]), (&json!(leaked), &json!(4)), "{usage}");
    let mut listed: Vec<(String, String, i64)> = usage["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .map(|s| {
            assert!(s["last_exp"].is_string(), "{s}");
            (
                s["session_id"].as_str().unwrap().to_owned(),
                s["user_id"].as_str().unwrap().to_owned(),
                s["tokens"].as_i64().unwrap(),
            )
        })
        .collect();
    listed.sort();
    let mut expected = vec![
        (alice1.session_id.clone(), "alice".to_owned(), 2),
        (alice2.session_id.clone(), "alice".to_owned(), 1),
        (bob.session_id.clone(), "bob".to_owned(), 1),
    ];
    expected.sort();
    assert_eq!(listed, expected);

    // 3. Revoke each of those sessions, alternating replicas.
    for (i, (session_id, _, _)) in listed.iter().enumerate() {
        let replica = if i % 2 == 0 { &a } else { &b };
        let (body, _) = revoke_sessions(replica, Some(json!({ "session_id": session_id }))).await;
        assert_eq!(body, json!({ "revoked": 1 }));
    }

    // 4. None of the leaked kid's tokens verifies anywhere; the replacement's do.
    let fresh = start_session(&b, TENANT, "alice").await;
    assert_eq!(fresh.kid, replacement);
    for token in tokens.drain(..) {
        for replica in [&a, &b] {
            let got = verdict(replica, TENANT, &token).await;
            assert!(["key_revoked", "session_revoked"].contains(&got.as_str()), "{got} on {}", replica.address);
        }
    }
    assert_verdict_on([&a, &b], &fresh, "ok").await;
}

#[tokio::test]
async fn key_staged_on_one_replica_is_published_by_the_other_within_a_second() {
    let cluster = Cluster::on_shared_redis().await;
    let (a, b) = cluster.pair().await;
    tenant_on_both(&a, &b).await;

    let (status, key, answered) = admin_call(&a, &format!("/a/{TENANT}/admin/keys"), None).await;

    assert_eq!(status, StatusCode::CREATED, "{key}");
    let kid = key["kid"].as_str().expect("kid").to_owned();
    let took = loop {
        if b.jwks_kids(TENANT).await.contains(&kid) {
            break answered.elapsed();
        }
        assert!(answered.elapsed() < Duration::from_secs(5), "{kid} never reached the other replica's JWKS");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    eprintln!("propagation of a staged key (JWKS): {took:?}");
    assert!(took < PROPAGATION_BOUND, "the staged kid took {took:?} to reach the other replica's JWKS");
}
