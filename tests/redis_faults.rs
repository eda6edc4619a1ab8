//! Redis failing under two replicas (DESIGN.md "Where state lives", API.md "Operations"):
//! each test runs its own `redis-server` on a free port, kills it with SIGKILL and starts it
//! again on the same port. While it is down the replicas keep serving verification and
//! the JWKS from memory, say `degraded` (not unready), and revocations still reach every
//! replica through reconciliation with the database; once it is back, notices flow again.

// `backend_tests!` goes unused: replicas share one PostgreSQL database, never SQLite.
#[allow(unused_macros, unused_imports)]
mod support;

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use reqwest::StatusCode;
use serde_json::{Value, json};

use support::app::{TestApp, eventually, json};
use support::replicas::faults::{RedisServer, Traffic};
use support::replicas::{
    Cluster, gauge, readiness, revocation_rows, session_is_revoked, start_session, time_until_unpublished,
    time_until_verdict, verdict,
};

const TENANT: &str = "acme";

/// Reconciliation runs every second (`Cluster`): a revocation made while Redis is down
/// must reach the other replica within a few intervals.
const RECONCILE_BOUND: Duration = Duration::from_secs(3);

async fn tenant_on_both(a: &TestApp, b: &TestApp) {
    a.create_tenant(json!({ "id": TENANT })).await;
    eventually("the other replica to load the new tenant", || async {
        (b.jwks(TENANT).await.0 == StatusCode::OK).then_some(())
    })
    .await;
}

fn readiness_body(status: &str, redis: &str) -> Value {
    json!({ "status": status, "checks": { "database": "up", "redis": redis } })
}

/// Waits until `replica`'s probes report Redis as `redis` (`"up"` or `"down"`).
async fn wait_for_redis(replica: &TestApp, redis: &str) {
    eventually(&format!("{} to report redis {redis}", replica.address), || async {
        let (_, body) = readiness(replica, false).await;
        (body["checks"]["redis"] == redis).then_some(())
    })
    .await;
}

/// Revokes one session on `app`; returns how long the call took and when its 200 came.
async fn revoke_session(app: &TestApp, session_id: &str) -> (Duration, Instant) {
    let started = Instant::now();
    let response =
        app.admin_post_json(&format!("/a/{TENANT}/admin/revoke/sessions"), &json!({ "session_id": session_id })).await;
    let answered = Instant::now();
    let (status, body) = json(response).await;
    assert_eq!((status, body), (StatusCode::OK, json!({ "revoked": 1 })));
    (answered - started, answered)
}

#[tokio::test]
async fn replicas_keep_verifying_and_serving_the_jwks_while_redis_is_down() {
    let mut redis = RedisServer::start().await;
    let cluster = Cluster::new(&redis.url()).await;
    let (a, b) = cluster.pair().await;
    tenant_on_both(&a, &b).await;
    let session = start_session(&a, TENANT, "alice").await;
    for replica in [&a, &b] {
        assert_eq!(readiness(replica, true).await, (StatusCode::OK, readiness_body("ok", "up")));
        assert_eq!(gauge(replica, "keyward_redis_up").await, 1.0);
    }
    let traffic = Traffic::start(vec![a.address.clone(), b.address.clone()], TENANT, &session.access_token);
    tokio::time::sleep(Duration::from_millis(300)).await;

    redis.kill();

    for replica in [&a, &b] {
        wait_for_redis(replica, "down").await;
        assert_eq!(readiness(replica, false).await, (StatusCode::OK, readiness_body("degraded", "down")));
        assert_eq!(
            readiness(replica, true).await,
            (StatusCode::SERVICE_UNAVAILABLE, readiness_body("degraded", "down"))
        );
        assert_eq!(gauge(replica, "keyward_redis_up").await, 0.0);
    }
    // Long enough for several probes, reconciliations and resubscription attempts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    traffic.finish().await.assert_served_throughout("to both replicas around the kill of Redis");
    for replica in [&a, &b] {
        assert_eq!(verdict(replica, TENANT, &session.access_token).await, "ok");
    }
}

#[tokio::test]
async fn revocation_made_while_redis_is_down_reaches_the_other_replica_and_notices_resume_when_it_returns() {
    let mut redis = RedisServer::start().await;
    let cluster = Cluster::new(&redis.url()).await;
    let (a, b) = cluster.pair().await;
    tenant_on_both(&a, &b).await;
    let during = start_session(&a, TENANT, "alice").await;
    let after = start_session(&a, TENANT, "bob").await;
    let staged = a.stage_key(TENANT).await;
    eventually("the other replica to publish the staged key", || async {
        b.jwks_kids(TENANT).await.contains(&staged).then_some(())
    })
    .await;
    redis.kill();
    wait_for_redis(&a, "down").await;

    // A still answers: the database holds the revocation, Redis is only the fast path.
    let (took, answered) = revoke_session(&a, &during.session_id).await;
    eprintln!("revocation answered in {took:?} with Redis down");
    assert!(took < Duration::from_secs(2), "a revocation took {took:?} with Redis down");
    assert!(session_is_revoked(&cluster.db, TENANT, &during.session_id).await);
    assert_eq!(revocation_rows(&cluster.db, TENANT, "session", &during.session_id).await, 1);
    let propagation = time_until_verdict(&b, TENANT, &during.access_token, "session_revoked", answered).await;
    eprintln!("propagation with Redis down (reconciliation every 1 s): {propagation:?}");
    assert!(propagation < RECONCILE_BOUND, "reached the other replica after {propagation:?}");
    a.revoke_key(TENANT, &staged).await;
    let answered = Instant::now();
    let took = time_until_unpublished(&b, TENANT, &staged, answered).await;
    eprintln!("key revocation with Redis down left the other replica's JWKS after {took:?}");
    assert!(took < RECONCILE_BOUND, "the revoked kid stayed published for {took:?}");

    redis.restart().await;
    for replica in [&a, &b] {
        wait_for_redis(replica, "up").await;
        assert_eq!(readiness(replica, true).await, (StatusCode::OK, readiness_body("ok", "up")));
        assert_eq!(gauge(replica, "keyward_redis_up").await, 1.0);
    }
    cluster.redis.wait_for_subscribers(2).await;
    let mut listener = cluster.redis.listen().await;

    let (_, answered) = revoke_session(&a, &after.session_id).await;

    let propagation = time_until_verdict(&b, TENANT, &after.access_token, "session_revoked", answered).await;
    eprintln!("propagation after Redis came back: {propagation:?}");
    assert!(propagation < Duration::from_secs(1), "reached the other replica after {propagation:?}");
    // And it came by notice: the revocation was published on the channel.
    let mut messages = listener.on_message();
    let notice = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(message) = messages.next().await {
            let notice: Value = serde_json::from_slice(message.get_payload_bytes()).expect("a JSON notice");
            if notice["revocation"]["sid"] == after.session_id.as_str() {
                return notice;
            }
        }
        panic!("the subscription ended");
    })
    .await
    .expect("a notice of the revocation on the channel");
    assert_eq!((&notice["tenant"], &notice["change"]), (&json!(TENANT), &json!("revoked")), "{notice}");
}

#[tokio::test]
async fn replica_restarted_while_redis_is_down_rejects_revoked_sessions_on_its_first_request() {
    let mut redis = RedisServer::start().await;
    let cluster = Cluster::new(&redis.url()).await;
    let (a, b) = cluster.pair().await;
    tenant_on_both(&a, &b).await;
    let revoked = start_session(&a, TENANT, "alice").await;
    let kept = start_session(&a, TENANT, "bob").await;
    b.stop().await;
    redis.kill();

    revoke_session(&a, &revoked.session_id).await;
    let b = cluster.replica().await;

    assert_eq!(verdict(&b, TENANT, &revoked.access_token).await, "session_revoked");
    assert_eq!(verdict(&b, TENANT, &kept.access_token).await, "ok");
    assert_eq!(readiness(&b, false).await, (StatusCode::OK, readiness_body("degraded", "down")));
    assert_eq!(readiness(&b, true).await.0, StatusCode::SERVICE_UNAVAILABLE);
}

/// A frozen Redis (SIGSTOP: connections open, nothing answers) is worse than a dead one:
/// every command waits for its timeout. Replicas must still serve, answer revocations
/// promptly, and converge through the database.
#[tokio::test]
async fn replicas_keep_serving_and_revoking_while_redis_hangs() {
    let redis = RedisServer::start().await;
    let cluster = Cluster::new(&redis.url()).await;
    let (a, b) = cluster.pair().await;
    tenant_on_both(&a, &b).await;
    let kept = start_session(&a, TENANT, "alice").await;
    let during = start_session(&a, TENANT, "bob").await;
    let after = start_session(&a, TENANT, "carol").await;
    let traffic = Traffic::start(vec![a.address.clone(), b.address.clone()], TENANT, &kept.access_token);

    redis.pause();

    let (took, answered) = revoke_session(&a, &during.session_id).await;
    eprintln!("revocation answered in {took:?} with Redis frozen");
    assert!(took < Duration::from_secs(3), "a revocation took {took:?} with Redis frozen");
    let propagation = time_until_verdict(&b, TENANT, &during.access_token, "session_revoked", answered).await;
    eprintln!("propagation with Redis frozen: {propagation:?}");
    assert!(propagation < RECONCILE_BOUND, "reached the other replica after {propagation:?}");
    for replica in [&a, &b] {
        wait_for_redis(replica, "down").await;
        assert_eq!(readiness(replica, false).await, (StatusCode::OK, readiness_body("degraded", "down")));
    }
    traffic.finish().await.assert_served_throughout("to both replicas with Redis frozen");

    redis.resume();

    for replica in [&a, &b] {
        wait_for_redis(replica, "up").await;
    }
    cluster.redis.wait_for_subscribers(2).await;
    let (_, answered) = revoke_session(&a, &after.session_id).await;
    let propagation = time_until_verdict(&b, TENANT, &after.access_token, "session_revoked", answered).await;
    eprintln!("propagation after Redis thawed: {propagation:?}");
    assert!(propagation < Duration::from_secs(1), "reached the other replica after {propagation:?}");
}

/// The shared deny-list is for consumers outside Keyward (a gateway reading Redis): a
/// session revoked while Redis was down must be in it once Redis is back, or that gateway
/// accepts a session every replica rejects.
#[tokio::test]
async fn session_revoked_while_redis_is_down_reaches_the_deny_list_when_redis_returns() {
    let mut redis = RedisServer::start().await;
    let cluster = Cluster::new(&redis.url()).await;
    let (a, b) = cluster.pair().await;
    tenant_on_both(&a, &b).await;
    let session = start_session(&a, TENANT, "alice").await;
    redis.kill();
    wait_for_redis(&a, "down").await;

    revoke_session(&a, &session.session_id).await;
    redis.restart().await;

    let key = format!("{}:revoked-session:{TENANT}:{}", cluster.redis.prefix, session.session_id);
    eventually("the revoked session in the shared deny-list", || async {
        cluster.redis.keys().await.contains(&key).then_some(())
    })
    .await;
}
