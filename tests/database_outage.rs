//! The database going away under two replicas (DESIGN.md "Where state lives"): they keep
//! serving the JWKS and verification from memory, report `degraded` (503 only when asked
//! `strict`), answer writes with 503 `unavailable`, and pick up where they were once the
//! database is back.
//!
//! The shared PostgreSQL server is never stopped: both replicas reach their test database
//! through a [`DatabaseProxy`], and the test cuts the proxy.

// `backend_tests!` goes unused: the outage is simulated in front of PostgreSQL only.
#[allow(unused_macros, unused_imports)]
mod support;

use std::time::{Duration, Instant};

use keyward::config::Secret;
use reqwest::StatusCode;
use serde_json::{Value, json};

use support::app::{TestApp, assert_error, eventually, json};
use support::replicas::faults::{DatabaseProxy, Traffic};
use support::replicas::{Cluster, gauge, readiness, session_is_revoked, start_session, time_until_verdict, verdict};

const TENANT: &str = "acme";

/// A write is refused once the pool gives up acquiring a connection (3 s in the store),
/// well before the request timeout: a client sees a prompt 503, never a hang.
const WRITE_BOUND: Duration = Duration::from_secs(5);

fn readiness_body(status: &str, database: &str) -> Value {
    json!({ "status": status, "checks": { "database": database, "redis": "up" } })
}

async fn wait_for_database(replica: &TestApp, state: &str) {
    eventually(&format!("{} to report the database {state}", replica.address), || async {
        let (_, body) = readiness(replica, false).await;
        (body["checks"]["database"] == state).then_some(())
    })
    .await;
}

#[tokio::test]
async fn replicas_serve_from_memory_and_refuse_writes_while_the_database_is_down() {
    let cluster = Cluster::on_shared_redis().await;
    let proxy = DatabaseProxy::start(&cluster.db).await;
    let mut settings = cluster.settings();
    settings.database_url = Secret::new(proxy.url(&cluster.db));
    let a = cluster.replica_with(settings.clone()).await;
    let b = cluster.replica_with(settings).await;
    cluster.redis.wait_for_subscribers(2).await;
    a.create_tenant(json!({ "id": TENANT })).await;
    eventually("the other replica to load the tenant", || async {
        (b.jwks(TENANT).await.0 == StatusCode::OK).then_some(())
    })
    .await;
    let session = start_session(&a, TENANT, "alice").await;
    let traffic = Traffic::start(vec![a.address.clone(), b.address.clone()], TENANT, &session.access_token);

    proxy.cut();

    for replica in [&a, &b] {
        wait_for_database(replica, "down").await;
        assert_eq!(readiness(replica, false).await, (StatusCode::OK, readiness_body("degraded", "down")));
        assert_eq!(
            readiness(replica, true).await,
            (StatusCode::SERVICE_UNAVAILABLE, readiness_body("degraded", "down"))
        );
        assert_eq!(gauge(replica, "keyward_db_up").await, 0.0);
        let path = format!("/a/{TENANT}/admin/revoke/sessions");
        let started = Instant::now();
        let response = replica.admin_post_json(&path, &json!({ "session_id": session.session_id })).await;
        let took = started.elapsed();
        assert_error(response, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
        eprintln!("a revocation with the database down was refused after {took:?}");
        assert!(took < WRITE_BOUND, "a refused write took {took:?}");
        let response = replica.admin_post_json(&format!("/a/{TENANT}/sessions"), &json!({ "user_id": "bob" })).await;
        assert_error(response, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    traffic.finish().await.assert_served_throughout("to both replicas with the database down");
    assert!(!session_is_revoked(&cluster.db, TENANT, &session.session_id).await, "a refused write left nothing behind");

    proxy.restore().await;
    let restored = Instant::now();

    for replica in [&a, &b] {
        wait_for_database(replica, "up").await;
        assert_eq!(readiness(replica, true).await, (StatusCode::OK, readiness_body("ok", "up")));
        assert_eq!(gauge(replica, "keyward_db_up").await, 1.0);
    }
    eprintln!("both replicas saw the database back after {:?}", restored.elapsed());
    let path = format!("/a/{TENANT}/admin/revoke/sessions");
    let response = a.admin_post_json(&path, &json!({ "session_id": session.session_id })).await;
    let answered = Instant::now();
    assert_eq!(json(response).await, (StatusCode::OK, json!({ "revoked": 1 })));
    time_until_verdict(&b, TENANT, &session.access_token, "session_revoked", answered).await;
    assert_eq!(verdict(&a, TENANT, &session.access_token).await, "session_revoked");
}
