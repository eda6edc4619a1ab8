//! Several replicas of Keyward in one test, and what they share:
//!
//! - [`RedisNamespace`]: a per-test key prefix (and so a per-test notice channel) on a
//!   Redis server, whose keys are deleted again when the test ends, so tests running in
//!   parallel on the shared Redis never hear each other;
//! - [`Cluster`]: one PostgreSQL test database, one master key, one admin secret and one
//!   Redis namespace, from which any number of replicas ([`TestApp`]s) are started;
//! - client helpers for what replicas are asked: sessions, verification verdicts,
//!   readiness, metrics, and the raw rows that prove a revocation was committed.
//!
//! Breaking what they share (a private Redis to kill, a database to cut off, traffic to
//! keep up meanwhile) lives in [`faults`].
//!
//! Every wait is bounded; every child process and task is ended when its guard drops, also
//! when the test panics.

pub mod faults;

use std::net::TcpListener as StdTcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyward::clock::SystemClock;
use keyward::config::{Secret, Settings};
use keyward::domain::Period;
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::app::{TestApp, json, new_master_key, send, test_settings};
use super::{TestDatabase, random_hex};

/// The Redis the tests share: `KEYWARD_TEST_REDIS_URL`, by default the local server.
pub fn shared_redis_url() -> String {
    std::env::var("KEYWARD_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// How long a test waits for a Redis server to answer, or for subscribers to appear.
const REDIS_WAIT: Duration = Duration::from_secs(10);
/// Bound on every command the tests themselves send to Redis.
const REDIS_COMMAND: Duration = Duration::from_secs(2);

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    let listener = StdTcpListener::bind("127.0.0.1:0").expect("binding an ephemeral port");
    listener.local_addr().expect("local address").port()
}

// ------------------------------------------------------------------------ Redis namespace

async fn redis_connection(url: &str) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url)?;
    match tokio::time::timeout(REDIS_COMMAND, client.get_multiplexed_async_connection()).await {
        Ok(result) => result,
        Err(_) => Err(redis::RedisError::from((redis::ErrorKind::Io, "connecting timed out"))),
    }
}

/// A prefix of Redis keys and channels that belongs to one test.
pub struct RedisNamespace {
    pub url: String,
    /// `kwtest-<16 hex digits>`: what the replicas get as `redis_prefix`.
    pub prefix: String,
}

impl RedisNamespace {
    pub fn new(url: &str) -> RedisNamespace {
        RedisNamespace { url: url.to_owned(), prefix: format!("kwtest-{}", random_hex(8)) }
    }

    /// A namespace on the shared Redis.
    pub fn shared() -> RedisNamespace {
        RedisNamespace::new(&shared_redis_url())
    }

    /// The channel the replicas publish change notices on.
    pub fn channel(&self) -> String {
        format!("{}:notices", self.prefix)
    }

    async fn connection(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        redis_connection(&self.url).await
    }

    /// How many connections are subscribed to the notice channel right now (0 if Redis
    /// does not answer).
    pub async fn subscribers(&self) -> i64 {
        let Ok(mut conn) = self.connection().await else { return 0 };
        let mut numsub = redis::cmd("PUBSUB");
        numsub.arg("NUMSUB").arg(self.channel());
        match tokio::time::timeout(REDIS_COMMAND, numsub.query_async::<(String, i64)>(&mut conn)).await {
            Ok(Ok((_, n))) => n,
            _ => 0,
        }
    }

    /// Waits until exactly `n` connections listen on the notice channel: every replica has
    /// subscribed, so a notice published from now on reaches all of them.
    pub async fn wait_for_subscribers(&self, n: i64) {
        let deadline = Instant::now() + REDIS_WAIT;
        loop {
            let now = self.subscribers().await;
            if now == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{now} subscribers on {} after {REDIS_WAIT:?}, want {n}",
                self.channel()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every key under the prefix.
    pub async fn keys(&self) -> Vec<String> {
        let mut conn = self.connection().await.expect("connecting to Redis");
        let pattern = format!("{}:*", self.prefix);
        let mut cursor = 0u64;
        let mut keys = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .expect("SCAN");
            keys.extend(batch);
            if next == 0 {
                return keys;
            }
            cursor = next;
        }
    }

    /// The remaining time to live of `key` in seconds (`-2`: no such key, `-1`: no TTL).
    pub async fn ttl(&self, key: &str) -> i64 {
        let mut conn = self.connection().await.expect("connecting to Redis");
        redis::cmd("TTL").arg(key).query_async(&mut conn).await.expect("TTL")
    }

    /// The value of `key` (empty when absent).
    pub async fn get(&self, key: &str) -> String {
        let mut conn = self.connection().await.expect("connecting to Redis");
        let value: Option<String> = redis::cmd("GET").arg(key).query_async(&mut conn).await.expect("GET");
        value.unwrap_or_default()
    }

    /// Subscribes the test itself to the notice channel.
    pub async fn listen(&self) -> redis::aio::PubSub {
        let client = redis::Client::open(self.url.as_str()).expect("Redis URL");
        let mut pubsub = tokio::time::timeout(REDIS_COMMAND, client.get_async_pubsub())
            .await
            .expect("subscribing timed out")
            .expect("subscribing");
        pubsub.subscribe(self.channel()).await.expect("SUBSCRIBE");
        pubsub
    }

    /// Deletes every key under the prefix (blocking: it runs in `Drop`).
    fn clean_up(&self) -> redis::RedisResult<usize> {
        let client = redis::Client::open(self.url.as_str())?;
        let mut conn = client.get_connection_with_timeout(REDIS_COMMAND)?;
        conn.set_read_timeout(Some(REDIS_COMMAND))?;
        conn.set_write_timeout(Some(REDIS_COMMAND))?;
        let pattern = format!("{}:*", self.prefix);
        let mut cursor = 0u64;
        let mut deleted = 0;
        loop {
            let (next, batch): (u64, Vec<String>) =
                redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000).query(&mut conn)?;
            if !batch.is_empty() {
                deleted += redis::cmd("DEL").arg(&batch).query::<usize>(&mut conn)?;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }
}

impl Drop for RedisNamespace {
    fn drop(&mut self) {
        // A private server may be gone already, and then there is nothing left to clean.
        let _ = self.clean_up();
    }
}

// --------------------------------------------------------------------------- replicas

/// What several replicas share: one PostgreSQL database, one master key (and the common
/// admin secret of [`test_settings`]), one Redis namespace.
pub struct Cluster {
    pub redis: RedisNamespace,
    pub db: TestDatabase,
    pub master_keys: String,
    /// Every replica's `reconcile_interval`.
    pub reconcile_interval: Period,
}

impl Cluster {
    /// A fresh PostgreSQL database and a fresh namespace on the Redis at `redis_url`;
    /// replicas reconcile every second.
    pub async fn new(redis_url: &str) -> Cluster {
        Cluster {
            redis: RedisNamespace::new(redis_url),
            db: TestDatabase::postgres().await,
            master_keys: new_master_key(),
            reconcile_interval: Period::from_secs(1),
        }
    }

    /// On the shared Redis.
    pub async fn on_shared_redis() -> Cluster {
        Cluster::new(&shared_redis_url()).await
    }

    /// What every replica is built from: the test defaults plus Redis, checked every second.
    pub fn settings(&self) -> Settings {
        let mut settings = test_settings(&self.db, &self.master_keys);
        settings.redis_url = Some(Secret::new(self.redis.url.clone()));
        settings.redis_prefix = self.redis.prefix.clone();
        settings.reconcile_interval = self.reconcile_interval;
        settings.health_interval = Period::from_secs(1);
        settings
    }

    /// Starts one more replica.
    pub async fn replica(&self) -> TestApp {
        self.replica_with(self.settings()).await
    }

    pub async fn replica_with(&self, settings: Settings) -> TestApp {
        TestApp::start(settings, Arc::new(SystemClock))
            .await
            .unwrap_or_else(|e| panic!("a replica did not start: {e:#}"))
    }

    /// Two replicas, both listening for notices when this returns.
    pub async fn pair(&self) -> (TestApp, TestApp) {
        let a = self.replica().await;
        let b = self.replica().await;
        self.redis.wait_for_subscribers(2).await;
        (a, b)
    }
}

// ------------------------------------------------------------- asking a replica things

/// A session as `POST /a/{tenant}/sessions` answers it.
#[derive(Debug, Clone)]
pub struct Session {
    pub user_id: String,
    pub session_id: String,
    pub access_token: String,
    pub refresh_token: String,
    /// The token's `jti` and `kid`, read back through `/verify`.
    pub jti: String,
    pub kid: String,
}

/// Starts a session for `user` and reads its token's `jti` and `kid` back from `/verify`.
pub async fn start_session(app: &TestApp, tenant: &str, user: &str) -> Session {
    let response = app.admin_post_json(&format!("/a/{tenant}/sessions"), &json!({ "user_id": user })).await;
    let (status, body) = json(response).await;
    assert_eq!(status, StatusCode::CREATED, "starting a session for {user}: {body}");
    let field = |name: &str| body[name].as_str().unwrap_or_else(|| panic!("`{name}` in {body}")).to_owned();
    let access_token = field("access_token");
    let (status, verified) = verify(app, tenant, &access_token).await;
    assert_eq!(status, StatusCode::OK, "a fresh token verifies: {verified}");
    Session {
        user_id: user.to_owned(),
        session_id: field("session_id"),
        refresh_token: field("refresh_token"),
        jti: verified["claims"]["jti"].as_str().expect("jti claim").to_owned(),
        kid: verified["kid"].as_str().expect("kid").to_owned(),
        access_token,
    }
}

/// `POST /a/{tenant}/verify` with the token in the body.
pub async fn verify(app: &TestApp, tenant: &str, token: &str) -> (StatusCode, Value) {
    let response =
        send(app.request(reqwest::Method::POST, &format!("/a/{tenant}/verify")).json(&json!({ "token": token })));
    json(response.await).await
}

/// `"ok"` for a token that verifies, else the reason of the 401. Anything else fails the
/// test.
pub async fn verdict(app: &TestApp, tenant: &str, token: &str) -> String {
    let (status, body) = verify(app, tenant, token).await;
    match status {
        StatusCode::OK if body["active"] == true => "ok".to_owned(),
        StatusCode::UNAUTHORIZED if body["active"] == false => {
            body["error"].as_str().unwrap_or_else(|| panic!("a 401 without a reason: {body}")).to_owned()
        }
        _ => panic!("/verify answered {status}: {body}"),
    }
}

/// How long polling gives a change to show on another replica before the test fails.
const PROPAGATION_LIMIT: Duration = Duration::from_secs(5);

/// Polls `app` every 2 ms until `token` gets `expected`; returns the time since `since`
/// (normally the instant the other replica's 200 arrived).
pub async fn time_until_verdict(app: &TestApp, tenant: &str, token: &str, expected: &str, since: Instant) -> Duration {
    loop {
        let got = verdict(app, tenant, token).await;
        if got == expected {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < PROPAGATION_LIMIT,
            "{} still says `{got}` after {PROPAGATION_LIMIT:?}, want `{expected}`",
            app.address
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// As [`time_until_verdict`], for a kid leaving the JWKS.
pub async fn time_until_unpublished(app: &TestApp, tenant: &str, kid: &str, since: Instant) -> Duration {
    loop {
        if !app.jwks_kids(tenant).await.iter().any(|k| k == kid) {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < PROPAGATION_LIMIT,
            "{kid} still published by {} after {PROPAGATION_LIMIT:?}",
            app.address
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// `GET /readyz` (`?strict=true` if `strict`).
pub async fn readiness(app: &TestApp, strict: bool) -> (StatusCode, Value) {
    json(app.get(if strict { "/readyz?strict=true" } else { "/readyz" }).await).await
}

/// The value of an unlabelled metric (`keyward_redis_up`, `keyward_db_up`).
pub async fn gauge(app: &TestApp, metric: &str) -> f64 {
    let text = app.get("/metrics").await.text().await.expect("metrics text");
    text.lines()
        .find_map(|line| line.strip_prefix(metric)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample of {metric}"))
}

/// The value of the sample of `metric` whose labels include every one of `labels`
/// (written as `tenant="acme"`), or 0 when there is none yet.
pub async fn labelled(app: &TestApp, metric: &str, labels: &[&str]) -> f64 {
    let text = app.get("/metrics").await.text().await.expect("metrics text");
    let prefix = format!("{metric}{{");
    text.lines()
        .filter(|line| line.starts_with(&prefix) && labels.iter().all(|l| line.contains(l)))
        .find_map(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

// ------------------------------------------------------- what the database holds, raw

/// Rows of `revocations` for one tenant, kind and subject (`""` for a tenant-wide one).
pub async fn revocation_rows(db: &TestDatabase, tenant: &str, kind: &str, subject: &str) -> i64 {
    db.raw()
        .await
        .count(
            "SELECT COUNT(*) FROM revocations WHERE tenant_id = $1 AND kind = $2 AND subject = $3",
            &[tenant, kind, subject],
        )
        .await
}

/// Whether the session row is marked revoked.
pub async fn session_is_revoked(db: &TestDatabase, tenant: &str, session_id: &str) -> bool {
    let sql = "SELECT COUNT(*) FROM sessions WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NOT NULL";
    db.raw().await.count(sql, &[tenant, session_id]).await == 1
}
