//! A running Keyward for one test, in the zero2prod style: [`spawn_app`] builds the real
//! `Application` (the one `keyward serve` runs) on port 0 against the test's own database
//! and serves it on the test's runtime; [`TestApp`] is an HTTP client for it that speaks
//! the contract of API.md (paths, headers, JSON) and nothing else.
//!
//! Several apps may use one database in turn (a restart) as long as they share its master
//! key; [`TestApp::settings`] is what the next one is built from.
//!
//! Set `TEST_LOG=1` to see the application's logs.

use std::future::Future;
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use bytes::Bytes;
use keyward::clock::{Clock, SystemClock};
use keyward::config::{LogFormat, Secret, Settings};
use keyward::crypto::MasterKeys;
use keyward::domain::Period;
use keyward::startup::Application;
use reqwest::header::HeaderMap;
use reqwest::{Client, Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::TestDatabase;

/// The admin secret every test app accepts (unless a test configures others).
pub const ADMIN_SECRET: &str = "test-admin-secret-0123456789abcdef";
pub const ADMIN_HEADER: &str = "x-admin-secret";

/// How long [`eventually`] waits for something asynchronous before failing the test.
const EVENTUALLY: Duration = Duration::from_secs(10);
/// How long [`TestApp::stop`] gives the server to finish.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A new random master key in `KEYWARD_MASTER_KEYS` form (`test:<base64>`).
pub fn new_master_key() -> String {
    MasterKeys::generate_spec("test").expect("generating a master key").to_string()
}

/// The settings every test app starts from: the compiled-in defaults, on port 0 and the
/// test's database, with a known admin secret, a fresh master key and background loops
/// ticking every second, so that anything asynchronous shows within a bounded wait.
pub fn test_settings(db: &TestDatabase, master_keys: &str) -> Settings {
    let mut settings = Settings::defaults();
    settings.listen = "127.0.0.1:0".parse().expect("socket address");
    settings.database_url = Secret::new(db.url.clone());
    settings.admin_secrets = vec![Secret::new(ADMIN_SECRET)];
    settings.master_keys = Some(Secret::new(master_keys));
    settings.health_interval = Period::from_secs(1);
    settings.reconcile_interval = Period::from_secs(1);
    settings.rotation_interval = Period::from_secs(1);
    settings.shutdown_grace = Period::from_secs(2);
    settings.log_format = LogFormat::Pretty;
    settings
}

pub async fn spawn_app(db: &TestDatabase) -> TestApp {
    spawn_app_with(db, |_| {}).await
}

/// An app whose settings `tweak` adjusts first (e.g. a second admin secret).
pub async fn spawn_app_with(db: &TestDatabase, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = test_settings(db, &new_master_key());
    tweak(&mut settings);
    start_or_panic(settings, Arc::new(SystemClock)).await
}

/// An app that reads the time from `clock` (a `ManualClock` the test moves).
pub async fn spawn_app_with_clock(db: &TestDatabase, clock: Arc<dyn Clock>) -> TestApp {
    start_or_panic(test_settings(db, &new_master_key()), clock).await
}

async fn start_or_panic(settings: Settings, clock: Arc<dyn Clock>) -> TestApp {
    TestApp::start(settings, clock).await.unwrap_or_else(|e| panic!("the application did not start: {e:#}"))
}

fn init_logging() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            keyward::telemetry::init(LogFormat::Pretty, "debug");
        }
    });
}

pub struct TestApp {
    /// `http://127.0.0.1:<port>`
    pub address: String,
    pub port: u16,
    pub client: Client,
    pub admin_secret: String,
    /// `KEYWARD_MASTER_KEYS` of this app: what a restart on the same database needs.
    pub master_keys: String,
    /// What this app was built from; a restart builds from the same.
    pub settings: Settings,
    clock: Arc<dyn Clock>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    /// Builds and serves an app; the error is `Application::build`'s, as `serve` would
    /// report it.
    pub async fn start(settings: Settings, clock: Arc<dyn Clock>) -> anyhow::Result<TestApp> {
        init_logging();
        let application = Application::build_with_clock(settings.clone(), Arc::clone(&clock)).await?;
        let port = application.port();
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let server = tokio::spawn(application.run_until_stopped(async {
            let _ = shutdown_rx.await;
        }));
        let client = Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .expect("HTTP client");
        Ok(TestApp {
            address: format!("http://127.0.0.1:{port}"),
            port,
            client,
            admin_secret: settings.admin_secrets.first().map(|s| s.expose().to_owned()).unwrap_or_default(),
            master_keys: settings.master_keys.as_ref().map(|s| s.expose().to_owned()).unwrap_or_default(),
            settings,
            clock,
            shutdown: Some(shutdown_tx),
            server: Some(server),
        })
    }

    /// Shuts the server down the way SIGTERM does and waits until it has stopped.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            let outcome = tokio::time::timeout(STOP_TIMEOUT, server).await;
            match outcome {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => panic!("the server stopped with an error: {e:#}"),
                Ok(Err(e)) => panic!("the server task failed: {e}"),
                Err(_) => panic!("the server did not stop within {STOP_TIMEOUT:?}"),
            }
        }
    }

    /// Stops this app and starts a new one on the same database with the same settings
    /// (master key and admin secrets included) and clock: a process restart.
    pub async fn restart(self) -> TestApp {
        let (settings, clock) = (self.settings.clone(), Arc::clone(&self.clock));
        self.stop().await;
        start_or_panic(settings, clock).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    // ------------------------------------------------------------------ plain requests

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path))
    }

    /// A request carrying the admin secret.
    pub fn admin(&self, method: Method, path: &str) -> RequestBuilder {
        self.request(method, path).header(ADMIN_HEADER, &self.admin_secret)
    }

    pub async fn get(&self, path: &str) -> Response {
        send(self.request(Method::GET, path)).await
    }

    pub async fn admin_get(&self, path: &str) -> Response {
        send(self.admin(Method::GET, path)).await
    }

    /// A POST without a body (and without a Content-Type).
    pub async fn admin_post(&self, path: &str) -> Response {
        send(self.admin(Method::POST, path)).await
    }

    pub async fn admin_post_json(&self, path: &str, body: &Value) -> Response {
        send(self.admin(Method::POST, path).json(body)).await
    }

    pub async fn admin_patch_json(&self, path: &str, body: &Value) -> Response {
        send(self.admin(Method::PATCH, path).json(body)).await
    }

    /// A tenant's JWKS as parsed JSON (`Null` when the body is not JSON, e.g. a 304).
    pub async fn jwks(&self, tenant: &str) -> (StatusCode, HeaderMap, Value) {
        let (status, headers, body) = self.jwks_bytes(tenant).await;
        (status, headers, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    /// A tenant's JWKS exactly as served.
    pub async fn jwks_bytes(&self, tenant: &str) -> (StatusCode, HeaderMap, Bytes) {
        let response = self.get(&jwks_path(tenant)).await;
        let (status, headers) = (response.status(), response.headers().clone());
        (status, headers, response.bytes().await.expect("JWKS body"))
    }

    /// The kids a tenant's JWKS publishes, in the order served.
    pub async fn jwks_kids(&self, tenant: &str) -> Vec<String> {
        let (status, _, body) = self.jwks(tenant).await;
        assert_eq!(status, StatusCode::OK, "JWKS of {tenant}: {body}");
        kids_of(&body["keys"])
    }

    // --------------------------------------------------------- admin conveniences

    /// Creates a tenant from `body` (at least `{"id": ...}`); returns the 201 body.
    pub async fn create_tenant(&self, body: Value) -> Value {
        let response = self.admin_post_json("/admin/tenants", &body).await;
        let (status, created) = json(response).await;
        assert_eq!(status, StatusCode::CREATED, "creating tenant {body}: {created}");
        created
    }

    /// Creates a tenant signing with `alg`; returns its first active kid.
    pub async fn create_tenant_with_alg(&self, id: &str, alg: &str) -> String {
        let created = self.create_tenant(json!({ "id": id, "signing_alg": alg })).await;
        created["active_kid"].as_str().expect("active_kid").to_owned()
    }

    /// Stages a key with the tenant's algorithm; returns its kid.
    pub async fn stage_key(&self, tenant: &str) -> String {
        let (status, key) = json(self.admin_post(&format!("/a/{tenant}/admin/keys")).await).await;
        assert_eq!(status, StatusCode::CREATED, "staging a key for {tenant}: {key}");
        assert_eq!(key["state"], "staged", "{key}");
        key["kid"].as_str().expect("kid").to_owned()
    }

    /// `POST .../activate?force=true`; returns the 200 body.
    pub async fn force_activate(&self, tenant: &str, kid: &str) -> Value {
        let path = format!("/a/{tenant}/admin/keys/{kid}/activate?force=true");
        let (status, body) = json(self.admin_post(&path).await).await;
        assert_eq!(status, StatusCode::OK, "activating {kid}: {body}");
        body
    }

    /// Revokes one key; returns the 200 body.
    pub async fn revoke_key(&self, tenant: &str, kid: &str) -> Value {
        let path = format!("/a/{tenant}/admin/keys/revoke");
        let (status, body) = json(self.admin_post_json(&path, &json!({ "kid": kid })).await).await;
        assert_eq!(status, StatusCode::OK, "revoking {kid}: {body}");
        body
    }

    /// The admin view of every key of a tenant.
    pub async fn keys(&self, tenant: &str) -> Vec<Value> {
        let (status, body) = json(self.admin_get(&format!("/a/{tenant}/admin/keys")).await).await;
        assert_eq!(status, StatusCode::OK, "listing keys of {tenant}: {body}");
        body["keys"].as_array().expect("keys array").clone()
    }

    /// The state the admin API reports for one key.
    pub async fn key_state(&self, tenant: &str, kid: &str) -> String {
        let keys = self.keys(tenant).await;
        let key = keys.iter().find(|k| k["kid"] == kid).unwrap_or_else(|| panic!("{kid} not listed: {keys:?}"));
        key["state"].as_str().expect("state").to_owned()
    }

    /// The kids the admin API lists in `state`.
    pub async fn kids_in_state(&self, tenant: &str, state: &str) -> Vec<String> {
        let keys = self.keys(tenant).await;
        keys.iter().filter(|k| k["state"] == state).map(|k| k["kid"].as_str().expect("kid").to_owned()).collect()
    }
}

impl Drop for TestApp {
    /// A test that does not call [`TestApp::stop`] still stops its server.
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub fn jwks_path(tenant: &str) -> String {
    format!("/a/{tenant}/.well-known/jwks.json")
}

pub fn kids_of(keys: &Value) -> Vec<String> {
    keys.as_array()
        .expect("a `keys` array")
        .iter()
        .map(|k| k["kid"].as_str().expect("every JWK has a kid").to_owned())
        .collect()
}

pub async fn send(request: RequestBuilder) -> Response {
    request.send().await.expect("the request reached the server")
}

/// Status and JSON body (`Null` for an empty body); panics on a body that is not JSON.
pub async fn json(response: Response) -> (StatusCode, Value) {
    let status = response.status();
    let bytes = response.bytes().await.expect("response body");
    if bytes.is_empty() {
        return (status, Value::Null);
    }
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{status}: body is not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
    (status, body)
}

/// Asserts the contract's error shape, `{"error": code, "message": sentence}`, with the
/// exact status and code, and `nosniff`; returns the body.
pub async fn assert_error(response: Response, status: StatusCode, code: &str) -> Value {
    let nosniff = response.headers().get("x-content-type-options").cloned();
    let (actual, body) = json(response).await;
    assert_eq!((actual, body["error"].as_str()), (status, Some(code)), "body: {body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(!message.trim().is_empty(), "an error needs a human sentence: {body}");
    assert_eq!(nosniff.as_ref().map(|v| v.as_bytes()), Some(&b"nosniff"[..]), "{status} without nosniff");
    body
}

/// Polls `probe` until it yields a value, failing the test after a bounded wait: for what
/// the application does asynchronously (audit writes, background loops).
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "gave up after {EVENTUALLY:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
