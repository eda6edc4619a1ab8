//! Tokens for the tests of issuing and verification: the contract's requests (`/sessions`,
//! `/token`, `/verify`, `/introspect`) as one-liners, and a forge for tokens no API would
//! ever sign.
//!
//! The forge signs with a tenant's real private key, taken the way only a test may: the
//! sealed row is read straight from the database and opened with the app's master key.
//! Signing itself is done here with aws-lc-rs, not with Keyward's own signer, so the header
//! and claims are exactly what a test writes (a `crit`, a `jku`, a wrong `alg`, no `exp`)
//! and a token is "good but for one defect" by construction.
//!
//! [`refresh_token_rows`] reads the `refresh_tokens` table directly: the one schema detail
//! outside `raw`, kept here so that tokens' checks live in one place.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aws_lc_rs::hmac;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RSA_PKCS1_SHA256, RsaKeyPair,
};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64};
use keyward::clock::{Clock, ManualClock};
use keyward::config::Settings;
use keyward::crypto::{MasterKeys, Sealed};
use keyward::domain::TenantId;
use keyward::keyset::key_owner;
use reqwest::header::WWW_AUTHENTICATE;
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};
use sqlx::Row as _;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use zeroize::Zeroizing;

use super::TestDatabase;
use super::app::{TestApp, json, new_master_key, send, test_settings};
use super::raw::RawConnection;

/// An issuer secret for apps that configure one (`x-issuer-secret`).
pub const ISSUER_SECRET: &str = "test-issuer-secret-0123456789abcdef";
pub const ISSUER_HEADER: &str = "x-issuer-secret";

/// An HS256 secret of the length API.md asks for (32 bytes).
pub const JWT_SECRET: &str = "current-jwt-secret-0123456789abcdef";
pub const JWT_SECRET_OLD: &str = "previous-jwt-secret-0123456789abcdef";

/// The default tenant every app creates at start (`KEYWARD_DEFAULT_TENANT`).
pub const DEFAULT_TENANT: &str = "default";

// ------------------------------------------------------------------------------- apps

/// An app reading the time from `clock`, with settings `tweak` adjusted first.
pub async fn spawn_app_at(db: &TestDatabase, clock: &ManualClock, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = test_settings(db, &new_master_key());
    tweak(&mut settings);
    let clock: Arc<dyn Clock> = Arc::new(clock.clone());
    TestApp::start(settings, clock).await.unwrap_or_else(|e| panic!("the application did not start: {e:#}"))
}

/// A manual clock starting at the current wall-clock second, so tokens it stamps look
/// ordinary to an outside library as well.
pub fn clock_now() -> ManualClock {
    let now = OffsetDateTime::now_utc();
    ManualClock::new(now.replace_nanosecond(0).unwrap_or(now))
}

pub fn unix(t: OffsetDateTime) -> i64 {
    t.unix_timestamp()
}

/// Wall-clock now, in seconds since the epoch.
pub fn now_unix() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// The tenant as the admin API shows it (`issuer`, `audiences`, policy).
pub async fn tenant(app: &TestApp, id: &str) -> Value {
    let (status, body) = json(app.admin_get(&format!("/admin/tenants/{id}")).await).await;
    assert_eq!(status, StatusCode::OK, "reading tenant {id}: {body}");
    body["tenant"].clone()
}

pub async fn issuer_of(app: &TestApp, id: &str) -> String {
    tenant(app, id).await["issuer"].as_str().expect("issuer").to_owned()
}

/// The active kid of a tenant, as the admin API lists it.
pub async fn active_kid(app: &TestApp, id: &str) -> String {
    let active = app.kids_in_state(id, "active").await;
    assert_eq!(active.len(), 1, "exactly one active key: {active:?}");
    active[0].clone()
}

// --------------------------------------------------------------------------- issuing

/// `POST /a/{tenant}/sessions` with the admin secret; asserts 201 and returns the body.
pub async fn create_session(app: &TestApp, tenant: &str, body: &Value) -> Value {
    let response = app.admin_post_json(&format!("/a/{tenant}/sessions"), body).await;
    let (status, created) = json(response).await;
    assert_eq!(status, StatusCode::CREATED, "creating a session on {tenant} from {body}: {created}");
    created
}

/// A session for `alice`; returns the 201 body.
pub async fn session_for_alice(app: &TestApp, tenant: &str) -> Value {
    create_session(app, tenant, &json!({ "user_id": "alice", "client_id": "web", "scope": "read" })).await
}

pub fn access_token(created: &Value) -> String {
    created["access_token"].as_str().expect("access_token").to_owned()
}

pub fn refresh_token(created: &Value) -> String {
    created["refresh_token"].as_str().expect("refresh_token").to_owned()
}

/// `POST /a/{tenant}/token` with a form body, as an OAuth client sends it.
pub async fn refresh(app: &TestApp, tenant: &str, refresh_token: &str) -> Response {
    let form = [("grant_type", "refresh_token"), ("refresh_token", refresh_token)];
    send(app.request(Method::POST, &format!("/a/{tenant}/token")).form(&form)).await
}

/// Asserts an RFC 6749 error answer of `/token`: status, `error`, and both
/// `error_description` and the contract's `message` as human sentences.
pub async fn assert_oauth_error(response: Response, status: StatusCode, error: &str) -> Value {
    let no_store = response.headers().get("cache-control").cloned();
    let (actual, body) = json(response).await;
    assert_eq!((actual, body["error"].as_str()), (status, Some(error)), "body: {body}");
    for field in ["error_description", "message"] {
        let text = body[field].as_str().unwrap_or_default();
        assert!(!text.trim().is_empty(), "`{field}` must be a sentence: {body}");
    }
    assert_eq!(no_store.as_ref().map(|v| v.as_bytes()), Some(&b"no-store"[..]), "token errors are not cached");
    body
}

// ----------------------------------------------------------------------- verification

/// `POST /a/{tenant}/verify` with `{"token": token}`.
pub async fn verify(app: &TestApp, tenant: &str, token: &str) -> Response {
    verify_body(app, tenant, &json!({ "token": token })).await
}

pub async fn verify_body(app: &TestApp, tenant: &str, body: &Value) -> Response {
    send(app.request(Method::POST, &format!("/a/{tenant}/verify")).json(body)).await
}

/// Asserts `/verify` accepts `token`; returns the 200 body.
pub async fn assert_accepted(app: &TestApp, tenant: &str, token: &str) -> Value {
    let (status, body) = json(verify(app, tenant, token).await).await;
    assert_eq!(status, StatusCode::OK, "expected the token to verify: {body}");
    assert_eq!(body["active"], true, "{body}");
    body
}

/// Asserts `/verify` refuses `token` for exactly `reason`, in the contract's shape.
pub async fn assert_rejected(app: &TestApp, tenant: &str, token: &str, reason: &str) {
    assert_rejection(verify(app, tenant, token).await, reason).await;
}

/// Asserts a `/verify` answer is `401 {"active":false,"error":reason}` with the Bearer
/// challenge.
pub async fn assert_rejection(response: Response, reason: &str) {
    let challenge = response.headers().get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (status, body) = json(response).await;
    assert_eq!((status, &body), (StatusCode::UNAUTHORIZED, &json!({ "active": false, "error": reason })));
    let challenge = challenge.unwrap_or_default();
    assert!(challenge.starts_with("Bearer ") && challenge.contains("error=\"invalid_token\""), "{challenge}");
}

/// `POST /a/{tenant}/introspect` with `token=...` (RFC 7662).
pub async fn introspect(app: &TestApp, tenant: &str, token: &str) -> (StatusCode, Value) {
    json(send(app.request(Method::POST, &format!("/a/{tenant}/introspect")).form(&[("token", token)])).await).await
}

// --------------------------------------------------------------------------- metrics

pub async fn metrics_text(app: &TestApp) -> String {
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), StatusCode::OK);
    response.text().await.expect("metrics text")
}

/// The value of the sample `metric{...}` whose labels include all of `labels` (each
/// written `name="value"`); for a metric without labels, pass none.
pub fn sample(text: &str, metric: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.strip_prefix(metric).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')))
        .find(|l| labels.iter().all(|label| l.contains(label)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

// ---------------------------------------------------------------------- compact JWS

pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    B64.encode(bytes)
}

pub fn b64_decode(text: &str) -> Vec<u8> {
    B64.decode(text).unwrap_or_else(|e| panic!("not base64url ({e}): {text}"))
}

/// `base64url(header) "." base64url(claims)`: what a signature covers.
pub fn signing_input(header: &Value, claims: &Value) -> String {
    format!("{}.{}", b64(header.to_string()), b64(claims.to_string()))
}

/// A compact JWS with the given signature bytes.
pub fn compact(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!("{}.{}", signing_input(header, claims), b64(signature))
}

/// The decoded header (part 0) or payload (part 1) of a compact token.
pub fn part(token: &str, index: usize) -> Value {
    let segment = token.split('.').nth(index).unwrap_or_else(|| panic!("no segment {index} in {token}"));
    serde_json::from_slice(&b64_decode(segment)).unwrap_or_else(|e| panic!("segment {index} is not JSON: {e}"))
}

pub fn header_of(token: &str) -> Value {
    part(token, 0)
}

pub fn claims_of(token: &str) -> Value {
    part(token, 1)
}

/// `token` with its payload replaced and its original signature kept.
pub fn with_payload(token: &str, claims: &Value) -> String {
    let segments: Vec<&str> = token.split('.').collect();
    assert_eq!(segments.len(), 3, "{token}");
    format!("{}.{}.{}", segments[0], b64(claims.to_string()), segments[2])
}

/// `token` with the last byte of its signature changed.
pub fn with_flipped_signature(token: &str) -> String {
    let (input, signature) = token.rsplit_once('.').expect("a compact token");
    let mut bytes = b64_decode(signature);
    let last = bytes.last_mut().expect("a signature");
    *last ^= 0x01;
    format!("{input}.{}", b64(bytes))
}

/// An HS256 token over `header` and `claims` with `key` as the HMAC key.
pub fn hs256(key: &[u8], header: &Value, claims: &Value) -> String {
    let input = signing_input(header, claims);
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), input.as_bytes());
    format!("{input}.{}", b64(tag.as_ref()))
}

/// Claims that pass every check of a tenant issuing for `issuer` and `audience` at `now`:
/// expiring in ten minutes, no session.
pub fn good_claims(issuer: &str, audience: &str, now: i64) -> Value {
    json!({
        "iss": issuer,
        "sub": "alice",
        "aud": audience,
        "iat": now,
        "exp": now + 600,
        "jti": format!("forged-{now}-{}", COUNTER.fetch_add(1, Ordering::Relaxed)),
    })
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

// --------------------------------------------------------------------------- forge

enum Pair {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
    Rs256(RsaKeyPair),
}

/// One of a tenant's key pairs, private half included, for signing arbitrary tokens.
pub struct TenantKey {
    pub kid: String,
    pub alg: String,
    pair: Pair,
    /// The private half as stored (PKCS#8 DER), for handing to another JWT library.
    pkcs8: Zeroizing<Vec<u8>>,
}

impl TenantKey {
    /// Reads `kid`'s sealed private half from `db` and opens it with `app`'s master key.
    pub async fn load(app: &TestApp, db: &TestDatabase, tenant: &str, kid: &str) -> TenantKey {
        let keys = app.keys(tenant).await;
        let view = keys.iter().find(|k| k["kid"] == kid).unwrap_or_else(|| panic!("{kid} not listed: {keys:?}"));
        let alg = view["alg"].as_str().expect("alg").to_owned();
        let row = db.raw().await.key_row(tenant, kid).await;
        let sealed = Sealed { kek_id: row.kek_id, wrapped_dek: row.wrapped_dek, ciphertext: row.private_key };
        let master = MasterKeys::parse(&app.master_keys).expect("the app's master keys");
        let tenant_id = TenantId::parse(tenant).expect("tenant id");
        let pkcs8 = master.open(&sealed, key_owner(&tenant_id, kid)).expect("opening the sealed private key");
        let pair = match alg.as_str() {
            "ES256" => {
                Pair::Es256(EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8).expect("ES256 PKCS#8"))
            }
            "EdDSA" => Pair::EdDsa(Ed25519KeyPair::from_pkcs8(&pkcs8).expect("Ed25519 PKCS#8")),
            "RS256" => Pair::Rs256(RsaKeyPair::from_pkcs8(&pkcs8).expect("RSA PKCS#8")),
            other => panic!("unexpected alg {other}"),
        };
        TenantKey { kid: kid.to_owned(), alg, pair, pkcs8 }
    }

    /// The private half, PKCS#8 DER.
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The tenant's active key.
    pub async fn active(app: &TestApp, db: &TestDatabase, tenant: &str) -> TenantKey {
        let kid = active_kid(app, tenant).await;
        TenantKey::load(app, db, tenant, &kid).await
    }

    /// The header Keyward itself writes: `alg`, `kid`, `typ`.
    pub fn header(&self) -> Value {
        json!({ "alg": self.alg, "kid": self.kid, "typ": "at+jwt" })
    }

    /// A token with this key's own header over `claims`.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with_header(&self.header(), claims)
    }

    /// A token over any `header` and `claims`, signed by this key whatever the header says.
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        let input = signing_input(header, claims);
        format!("{input}.{}", b64(self.signature(input.as_bytes())))
    }

    /// A token over a header and payload given as raw JSON text, byte for byte (duplicate
    /// members, odd escapes: what `serde_json::Value` cannot hold).
    pub fn sign_raw(&self, header: &str, payload: &str) -> String {
        let input = format!("{}.{}", b64(header), b64(payload));
        format!("{input}.{}", b64(self.signature(input.as_bytes())))
    }

    fn signature(&self, message: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match &self.pair {
            Pair::Es256(pair) => pair.sign(&rng, message).expect("ES256 signature").as_ref().to_vec(),
            Pair::EdDsa(pair) => pair.sign(message).as_ref().to_vec(),
            Pair::Rs256(pair) => {
                let mut signature = vec![0u8; pair.public_modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, &rng, message, &mut signature).expect("RS256 signature");
                signature
            }
        }
    }
}

/// A P-256 key pair that is none of any tenant's: what an attacker signs with.
pub struct AttackerKey {
    pair: EcdsaKeyPair,
}

impl AttackerKey {
    pub fn generate() -> AttackerKey {
        AttackerKey { pair: EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("P-256 key") }
    }

    /// Its public JWK, as an attacker would embed it in a `jwk` header.
    pub fn public_jwk(&self) -> Value {
        let point = self.pair.public_key().as_ref();
        json!({ "kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..65]), "use": "sig" })
    }

    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        let input = signing_input(header, claims);
        let signature = self.pair.sign(&SystemRandom::new(), input.as_bytes()).expect("ES256 signature");
        format!("{input}.{}", b64(signature.as_ref()))
    }
}

/// The two encodings of an EC public key a confused HS256 verifier might use as its HMAC
/// key: the SEC1 uncompressed point (`04 || x || y`) and the SPKI PEM built from it.
pub fn ec_public_key_encodings(jwk: &Value) -> (Vec<u8>, String) {
    let x = b64_decode(jwk["x"].as_str().expect("x"));
    let y = b64_decode(jwk["y"].as_str().expect("y"));
    let mut point = vec![0x04];
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    // SubjectPublicKeyInfo { id-ecPublicKey, prime256v1 } BIT STRING(point).
    let mut der = hex_bytes("3059301306072a8648ce3d020106082a8648ce3d030107034200");
    der.extend_from_slice(&point);
    let body = STANDARD.encode(&der);
    let lines: Vec<&str> = body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("base64")).collect();
    let pem = format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", lines.join("\n"));
    (point, pem)
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex")).collect()
}

// ---------------------------------------------------------------- remote-key canary

/// A local listener that counts every connection: the target of `jku`, `x5u` and `jwk`
/// headers, which a verifier must never follow.
pub struct Canary {
    pub url: String,
    contacts: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Canary {
    pub async fn start() -> Canary {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding the canary");
        let addr: SocketAddr = listener.local_addr().expect("canary address");
        let contacts = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&contacts);
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                seen.fetch_add(1, Ordering::SeqCst);
                drop(socket);
            }
        });
        Canary { url: format!("http://{addr}"), contacts, task }
    }

    /// Connections so far, after giving any fetch that was started a moment to arrive.
    pub async fn contacts(&self) -> usize {
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.contacts.load(Ordering::SeqCst)
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ------------------------------------------------------------------------ raw rows

/// Every stored refresh token row: its hash and its session id, as bytes.
pub async fn refresh_token_rows(db: &TestDatabase) -> Vec<(Vec<u8>, Vec<u8>)> {
    let sql = "SELECT token_hash, session_id FROM refresh_tokens";
    let pair = |hash: Vec<u8>, sid: String| (hash, sid.into_bytes());
    match db.raw().await {
        RawConnection::Postgres(mut conn) => {
            let rows = sqlx::query(sql).fetch_all(&mut conn).await.expect("refresh_tokens query");
            rows.iter().map(|r| pair(r.get(0), r.get(1))).collect()
        }
        RawConnection::Sqlite(mut conn) => {
            let rows = sqlx::query(sql).fetch_all(&mut conn).await.expect("refresh_tokens query");
            rows.iter().map(|r| pair(r.get(0), r.get(1))).collect()
        }
    }
}
