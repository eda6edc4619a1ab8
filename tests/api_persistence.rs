//! What survives the process, and how it is kept: restarts serve the same keys and the same
//! JWKS, private keys are at rest only sealed under the master key (a wrong master key
//! stops start-up), and the CLI works on the same database as the server.

mod support;

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64URL};
use keyward::clock::{ManualClock, SystemClock};
use keyward::config::Secret;
use keyward::crypto::{MasterKeys, Sealed};
use keyward::domain::TenantId;
use keyward::keyset::key_owner;
use reqwest::StatusCode;
use reqwest::header::{ETAG, IF_NONE_MATCH};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use time::macros::datetime;

use support::app::{
    TestApp, eventually, json, new_master_key, send, spawn_app, spawn_app_with, spawn_app_with_clock, test_settings,
};
use support::{Backend, TestDatabase};

support::backend_tests!(
    restart_keeps_the_same_kids_and_the_same_jwks,
    restart_keeps_the_same_jwks_bytes_for_keys_created_in_the_same_instant,
    different_master_key_stops_start_up_and_damages_nothing,
    private_keys_are_at_rest_only_sealed_under_the_master_key,
    shared_secrets_are_never_at_rest_in_the_clear,
    cli_manages_keys_on_the_same_database_as_the_server,
);

const ALGS: [&str; 3] = ["ES256", "EdDSA", "RS256"];

/// Everything a restart must keep: each tenant's JWKS (bytes and ETag) and key list.
async fn observable_state(app: &TestApp, tenants: &[&str]) -> Vec<(bytes::Bytes, String, Vec<Value>)> {
    let mut state = Vec::new();
    for tenant in tenants {
        let (status, headers, body) = app.jwks_bytes(tenant).await;
        assert_eq!(status, StatusCode::OK, "{tenant}");
        let etag = headers.get(ETAG).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        state.push((body, etag, app.keys(tenant).await));
    }
    state
}

async fn restart_keeps_the_same_kids_and_the_same_jwks(db: TestDatabase) {
    let app = spawn_app(&db).await;
    app.create_tenant_with_alg("acme", "RS256").await;
    let next = app.stage_key("acme").await;
    app.force_activate("acme", &next).await;
    app.stage_key("acme").await;
    let revoked = app.stage_key("acme").await;
    app.revoke_key("acme", &revoked).await;
    let before = observable_state(&app, &["default", "acme"]).await;

    let app = app.restart().await;

    let after = observable_state(&app, &["default", "acme"]).await;
    assert_eq!(after, before, "same JWKS bytes, ETags and keys after a restart");
    let (_, etag, _) = &before[1];
    let cached = send(app.request(reqwest::Method::GET, "/a/acme/.well-known/jwks.json").header(IF_NONE_MATCH, etag));
    assert_eq!(cached.await.status(), StatusCode::NOT_MODIFIED, "caches filled before the restart stay valid");
    assert_eq!(app.kids_in_state("acme", "active").await, [next]);
}

/// With a clock that does not move, keys share `created_at`; the JWKS must still be a
/// function of the key set alone, or replicas and restarts serve different bytes (and
/// ETags) for the same set.
async fn restart_keeps_the_same_jwks_bytes_for_keys_created_in_the_same_instant(db: TestDatabase) {
    let clock = ManualClock::new(datetime!(2026-06-01 09:00 UTC));
    let app = spawn_app_with_clock(&db, Arc::new(clock)).await;
    app.create_tenant(json!({ "id": "acme" })).await;
    // Stage until the newest kid sorts (in the database's collation) before an older one:
    // the case where the order the keys were created in and the order the database
    // returns them in differ.
    let mut raw = db.raw().await;
    app.stage_key("acme").await;
    for _ in 0..20 {
        let newest = app.stage_key("acme").await;
        let sql = "SELECT COUNT(*) FROM keys WHERE tenant_id = $1 AND state = 'staged' AND kid > $2";
        if raw.count(sql, &["acme", &newest]).await > 0 {
            break;
        }
    }
    let before = observable_state(&app, &["acme"]).await;

    let app = app.restart().await;

    let after = observable_state(&app, &["acme"]).await;
    assert_eq!(after[0].0, before[0].0, "same bytes");
    assert_eq!(after[0].1, before[0].1, "same ETag");
}

async fn different_master_key_stops_start_up_and_damages_nothing(db: TestDatabase) {
    let app = spawn_app(&db).await;
    app.create_tenant_with_alg("acme", "EdDSA").await;
    let before = observable_state(&app, &["default", "acme"]).await;
    let settings = app.settings.clone();
    app.stop().await;
    let same_id = new_master_key();
    let other_id = MasterKeys::generate_spec("other").unwrap().to_string();

    for wrong in [&same_id, &other_id] {
        let mut wrong_settings = settings.clone();
        wrong_settings.master_keys = Some(Secret::new(wrong.clone()));
        let error = match TestApp::start(wrong_settings, Arc::new(SystemClock)).await {
            Ok(_) => panic!("started with a master key that cannot decrypt the stored keys"),
            Err(e) => format!("{e:#}"),
        };
        assert!(error.to_lowercase().contains("decrypt"), "the error says what is wrong: {error}");
        let material = wrong.split_once(':').unwrap().1;
        assert!(!error.contains(material), "the error never shows key material: {error}");
    }

    let app = TestApp::start(settings, Arc::new(SystemClock)).await.expect("the right key still works");
    assert_eq!(observable_state(&app, &["default", "acme"]).await, before);
}

// ----------------------------------------------------------------------------- at rest

/// Every byte the database holds: the SQLite file and its write-ahead log (free pages and
/// all), or every row of every table on PostgreSQL as text (`bytea` as hex).
async fn everything_at_rest(db: &TestDatabase) -> Vec<u8> {
    match db.backend {
        Backend::Sqlite => {
            let path = PathBuf::from(db.url.trim_start_matches("sqlite://").split('?').next().unwrap());
            let mut bytes = std::fs::read(&path).expect("the SQLite file");
            let wal = PathBuf::from(format!("{}-wal", path.display()));
            bytes.extend(std::fs::read(wal).unwrap_or_default());
            bytes
        }
        Backend::Postgres => {
            let mut conn = PgConnection::connect(&db.url).await.expect("raw connection");
            let tables: Vec<String> =
                sqlx::query_scalar("SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'")
                    .fetch_all(&mut conn)
                    .await
                    .expect("table list");
            assert!(tables.iter().any(|t| t == "keys"), "{tables:?}");
            let mut text = String::new();
            for table in tables {
                // The name comes from the catalog; quoting keeps it an identifier.
                let sql = format!(
                    "SELECT COALESCE(string_agg(row_to_json(t)::text, E'\\n'), '') FROM \"{}\" t",
                    table.replace('"', "\"\"")
                );
                let rows: String =
                    sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(&mut conn).await.expect("table dump");
                text.push_str(&rows);
            }
            text.into_bytes()
        }
    }
}

/// Lets many needles be looked for in a large haystack: every window of the lengths the
/// encodings below produce.
struct WindowIndex(HashSet<Vec<u8>>);

/// Raw bytes and hex are checked in 16-byte runs; base64 in 18-byte runs (24 characters,
/// so every alignment of an encoded run shows up as some window).
const RAW_RUN: usize = 16;
const B64_RUN: usize = 18;

impl WindowIndex {
    fn new(haystack: &[u8]) -> WindowIndex {
        let lengths = [RAW_RUN, RAW_RUN * 2, B64_RUN / 3 * 4];
        WindowIndex(lengths.iter().flat_map(|&n| haystack.windows(n).map(<[u8]>::to_vec)).collect())
    }

    /// Which encoding of `run` (if any) is at rest.
    fn find(&self, run: &[u8]) -> Option<&'static str> {
        let hex: String = run.iter().map(|b| format!("{b:02x}")).collect();
        let candidates: Vec<(&'static str, Vec<u8>)> = if run.len() == RAW_RUN {
            vec![("raw", run.to_vec()), ("hex", hex.clone().into_bytes()), ("HEX", hex.to_uppercase().into_bytes())]
        } else {
            vec![("base64", STANDARD.encode(run).into_bytes()), ("base64url", B64URL.encode(run).into_bytes())]
        };
        candidates.into_iter().find(|(_, encoded)| self.0.contains(encoded)).map(|(name, _)| name)
    }
}

/// The runs of `secret` of length `len` that contain no byte of a public part (the public
/// key is inside a PKCS#8 and legitimately published).
fn secret_runs<'s>(secret: &'s [u8], public_parts: &[Vec<u8>], len: usize) -> Vec<&'s [u8]> {
    let mut public = vec![false; secret.len()];
    for part in public_parts.iter().filter(|p| !p.is_empty()) {
        for start in 0..secret.len().saturating_sub(part.len() - 1) {
            if secret[start..].starts_with(part) {
                public[start..start + part.len()].iter_mut().for_each(|p| *p = true);
            }
        }
    }
    (0..secret.len().saturating_sub(len - 1))
        .filter(|&i| !public[i..i + len].contains(&true))
        .map(|i| &secret[i..i + len])
        .collect()
}

/// A DER SEQUENCE spanning exactly `bytes`, starting with INTEGER 0 or 1: the shape of a
/// PKCS#8 `PrivateKeyInfo`/`OneAsymmetricKey` (`30 len 02 01 00|01 ...`).
fn is_pkcs8_shaped(bytes: &[u8]) -> bool {
    let (len, header) = match bytes {
        [0x30, n, ..] if *n < 0x80 => (usize::from(*n), 2),
        [0x30, 0x81, n, ..] => (usize::from(*n), 3),
        [0x30, 0x82, hi, lo, ..] => (usize::from(*hi) << 8 | usize::from(*lo), 4),
        _ => return false,
    };
    header + len == bytes.len() && matches!(bytes.get(header..header + 3), Some([0x02, 0x01, 0x00 | 0x01]))
}

/// The public parameters of the key pair in `pkcs8`, parsed independently of Keyward.
fn public_parts_of(alg: &str, pkcs8: &[u8]) -> Vec<Vec<u8>> {
    match alg {
        "ES256" => {
            let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8).expect("a P-256 PKCS#8");
            let point = pair.public_key().as_ref().to_vec();
            vec![point[1..33].to_vec(), point[33..].to_vec(), point]
        }
        "EdDSA" => vec![Ed25519KeyPair::from_pkcs8(pkcs8).expect("an Ed25519 PKCS#8").public_key().as_ref().to_vec()],
        "RS256" => {
            let pair = RsaKeyPair::from_pkcs8(pkcs8).expect("an RSA PKCS#8");
            let public = pair.public_key();
            vec![
                public.modulus().big_endian_without_leading_zero().to_vec(),
                public.exponent().big_endian_without_leading_zero().to_vec(),
            ]
        }
        other => panic!("unexpected alg {other}"),
    }
}

fn jwk_public_parts(jwk: &Value) -> Vec<Vec<u8>> {
    let decode = |member: &str| B64URL.decode(jwk[member].as_str().unwrap()).unwrap();
    match jwk["kty"].as_str().unwrap() {
        "EC" => vec![decode("x"), decode("y")],
        "OKP" => vec![decode("x")],
        "RSA" => vec![decode("n"), decode("e")],
        other => panic!("unexpected kty {other}"),
    }
}

async fn private_keys_are_at_rest_only_sealed_under_the_master_key(db: TestDatabase) {
    let app = spawn_app(&db).await;
    let mut keys = Vec::new();
    for alg in ALGS {
        let tenant = format!("t-{}", alg.to_lowercase());
        keys.push((tenant.clone(), app.create_tenant_with_alg(&tenant, alg).await, alg));
        keys.push((tenant.clone(), app.stage_key(&tenant).await, alg));
    }
    let master = MasterKeys::parse(&app.master_keys).unwrap();
    let impostor = MasterKeys::parse(&new_master_key()).unwrap(); // same id, other key
    let at_rest = everything_at_rest(&db).await;
    let index = WindowIndex::new(&at_rest);
    let mut raw = db.raw().await;

    for (tenant, kid, alg) in &keys {
        let row = raw.key_row(tenant, kid).await;
        let sealed = Sealed { kek_id: row.kek_id.clone(), wrapped_dek: row.wrapped_dek, ciphertext: row.private_key };
        let tenant_id = TenantId::parse(tenant).unwrap();
        let owner = key_owner(&tenant_id, kid);

        // The stored bytes are a sealed private key: the master key opens them into a PKCS#8
        // whose public half is the one published for this kid...
        assert_eq!(row.kek_id, "test", "{alg}");
        assert!(!is_pkcs8_shaped(&sealed.ciphertext), "{alg}: the stored private key is a bare PKCS#8");
        let plain = master.open(&sealed, owner).unwrap_or_else(|e| panic!("{alg} {kid}: {e}"));
        assert!(is_pkcs8_shaped(&plain), "{alg}: the sealed plaintext is not a PKCS#8");
        let public = public_parts_of(alg, &plain);
        let (_, _, jwks) = app.jwks(tenant).await;
        let jwk = jwks["keys"].as_array().unwrap().iter().find(|k| k["kid"] == kid.as_str()).expect("published");
        for part in jwk_public_parts(jwk) {
            assert!(public.contains(&part), "{alg}: the decrypted private key belongs to {kid}");
        }
        // ...and nothing else opens them: not another master key, not another row's owner.
        assert!(impostor.open(&sealed, owner).is_err(), "{alg}: opened with another master key");
        let other_tenant = TenantId::parse("default").unwrap();
        assert!(master.open(&sealed, key_owner(&other_tenant, kid)).is_err(), "{alg}: opened for another tenant");
        assert!(master.open(&sealed, key_owner(&tenant_id, "other-kid")).is_err(), "{alg}: opened for another kid");

        // Positive control: the scan does see this key's stored bytes...
        assert!(index.find(&sealed.ciphertext[..RAW_RUN]).is_some(), "{alg}: the scan misses the keys table");
        // ...and no run of the private key is anywhere at rest, in any usual encoding.
        let mut runs = secret_runs(&plain, &public, RAW_RUN);
        runs.extend(secret_runs(&plain, &public, B64_RUN));
        assert!(runs.len() > plain.len() / 2, "{alg}: too little of the key is secret to check");
        for run in runs {
            if let Some(encoding) = index.find(run) {
                panic!("{alg} {kid}: a run of the private key is stored in the clear ({encoding}): {run:02x?}");
            }
        }
    }
}

/// HS256 secrets, configured or rotated in, are sealed like private keys: no run of one is
/// anywhere in the database (tables, audit trail, free pages), in any usual encoding.
async fn shared_secrets_are_never_at_rest_in_the_clear(db: TestDatabase) {
    const CONFIGURED: &str = "configured-hs256-secret-0123456789abcdef";
    const ROTATED: &str = "rotated-in-hs256-secret-fedcba9876543210";
    let app = spawn_app_with(&db, |s| s.jwt_secret = Some(Secret::new(CONFIGURED))).await;
    app.create_tenant_with_alg("acme", "ES256").await;
    let (status, body) =
        json(app.admin_post_json("/a/acme/admin/secrets/rotate", &json!({ "secret": ROTATED })).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = json(app.admin_post("/a/acme/admin/secrets/rotate").await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let generated = body["secret"].as_str().expect("the generated secret, shown once").to_owned();

    let index = WindowIndex::new(&everything_at_rest(&db).await);

    for secret in [CONFIGURED, ROTATED, generated.as_str()] {
        let mut runs = secret_runs(secret.as_bytes(), &[], RAW_RUN);
        runs.extend(secret_runs(secret.as_bytes(), &[], B64_RUN));
        assert!(!runs.is_empty(), "{secret} is long enough to check");
        for run in runs {
            if let Some(encoding) = index.find(run) {
                panic!("a run of the shared secret {secret:?} is stored in the clear ({encoding})");
            }
        }
    }
}

// ----------------------------------------------------------------------------------- CLI

/// Runs the `keyward` binary on the test's database with nothing from the test's own
/// environment; returns its standard output as JSON. The wait happens off the test's
/// runtime thread: an app served in-process must keep running (a transaction it has open
/// would otherwise hold SQLite's write lock until the CLI gives up).
async fn keyward_cli(db: &TestDatabase, master_keys: &str, workdir: &std::path::Path, args: &[&str]) -> Value {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keyward"));
    command
        .args(args)
        .env_clear()
        .env("DATABASE_URL", &db.url)
        .env("KEYWARD_MASTER_KEYS", master_keys)
        .env("KEYWARD_LOG_LEVEL", "warn")
        .current_dir(workdir);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("the CLI thread")
        .expect("running the keyward binary");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "keyward {args:?} failed ({}):\n{stdout}\n{stderr}", output.status);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("keyward {args:?} printed no JSON ({e}):\n{stdout}"))
}

async fn cli_manages_keys_on_the_same_database_as_the_server(db: TestDatabase) {
    let master_keys = new_master_key();
    let workdir = tempfile::tempdir().unwrap();
    let cli = |args: &'static [&'static str]| keyward_cli(&db, &master_keys, workdir.path(), args);

    let created = cli(&["tenants", "create", "acme", "--alg", "EdDSA"]).await;
    let active = created["active_kid"].as_str().expect("active_kid").to_owned();
    let staged = cli(&["keys", "stage", "--tenant", "acme"]).await;
    let listed = cli(&["keys", "list", "--tenant", "acme"]).await;

    assert_eq!(created["tenant"]["signing_alg"], "EdDSA", "{created}");
    assert_eq!((&staged["state"], &staged["alg"]), (&json!("staged"), &json!("EdDSA")), "{staged}");
    let staged = staged["kid"].as_str().unwrap().to_owned();
    let states: Vec<(&str, &str)> = listed
        .as_array()
        .expect("a JSON array of keys")
        .iter()
        .map(|k| (k["kid"].as_str().unwrap(), k["state"].as_str().unwrap()))
        .collect();
    assert_eq!(states, [(active.as_str(), "active"), (staged.as_str(), "staged")], "{listed}");
    assert!(std::fs::read_dir(workdir.path()).unwrap().next().is_none(), "no development key file was written");

    // A server on the same database and master key serves both keys...
    let app = TestApp::start(test_settings(&db, &master_keys), Arc::new(SystemClock)).await.expect("app starts");
    let mut published = app.jwks_kids("acme").await;
    published.sort();
    let mut expected = vec![active.clone(), staged.clone()];
    expected.sort();
    assert_eq!(published, expected);

    // ...and picks up what the CLI does while it runs (reconciliation, every second here).
    let third = cli(&["keys", "stage", "--tenant", "acme"]).await["kid"].as_str().unwrap().to_owned();
    let (app_ref, third_ref) = (&app, &third);
    eventually("the key staged by the CLI to be published", move || async move {
        app_ref.jwks_kids("acme").await.contains(third_ref).then_some(())
    })
    .await;
}
