//! Master key (KEK) rotation (issue 5, "Must show"): `keyward kek rotate` re-wraps every
//! stored data key under the newest master key, online and idempotently; afterwards the old
//! master key can be removed and every key still signs and verifies, HS256 secrets
//! included, while a replica holding only the old master key can no longer start.

mod support;

use std::process::Command;
use std::sync::Arc;

use keyward::clock::{ManualClock, SystemClock};
use keyward::crypto::MasterKeys;
use keyward::domain::{Actor, KeyState, TenantId};
use keyward::startup::Services;
use serde_json::{Value, json};
use time::Duration;

use support::TestDatabase;
use support::app::{TestApp, json as json_body, new_master_key, test_settings};
use support::rotation::{SIM_START, create_tenant, hourly, key_rows, kids_in, replica};
use support::tokens::{
    JWT_SECRET, JWT_SECRET_OLD, access_token, assert_accepted, good_claims, hs256, issuer_of, now_unix,
    session_for_alice,
};

support::backend_tests!(
    after_kek_rotation_the_old_master_key_can_go_and_every_key_still_signs_and_verifies,
    a_replica_lacking_the_master_key_of_a_staged_key_refuses_to_start,
    a_staged_key_the_replica_cannot_open_is_never_activated,
);

/// One tenant per signing algorithm.
const TENANTS: [(&str, &str); 3] = [("es", "ES256"), ("ed", "EdDSA"), ("rs", "RS256")];

const NOT_UNDER_NEW: &str = "SELECT COUNT(*) FROM keys WHERE kek_id <> 'new'";
const SECRETS_NOT_UNDER_NEW: &str = "SELECT COUNT(*) FROM hmac_secrets WHERE kek_id <> 'new'";
const UNDER_OLD: &str = "SELECT (SELECT COUNT(*) FROM keys WHERE kek_id = 'old') \
    + (SELECT COUNT(*) FROM hmac_secrets WHERE kek_id = 'old')";

async fn start(db: &TestDatabase, master_keys: &str) -> anyhow::Result<TestApp> {
    TestApp::start(test_settings(db, master_keys), Arc::new(SystemClock)).await
}

/// `keyward kek rotate` as an operator runs it: the binary, on the server's database and
/// master keys, nothing else from this process's environment. Returns the JSON report.
async fn kek_rotate(db: &TestDatabase, master_keys: &str) -> Value {
    let (url, keys) = (db.url.clone(), master_keys.to_owned());
    let dir = tempfile::tempdir().expect("a working directory");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_keyward"))
            .args(["kek", "rotate"])
            .env_clear()
            .env("DATABASE_URL", url)
            .env("KEYWARD_MASTER_KEYS", keys)
            .env("KEYWARD_LOG_LEVEL", "warn")
            .current_dir(dir.path())
            .output()
            .expect("running keyward")
    })
    .await
    .expect("the CLI task");
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "keyward kek rotate failed: {}\n{stdout}\n{stderr}", output.status);
    // The report comes first, then a sentence for the operator.
    let report = serde_json::Deserializer::from_str(&stdout).into_iter::<Value>().next();
    report.and_then(Result::ok).unwrap_or_else(|| panic!("no JSON report in: {stdout}"))
}

async fn after_kek_rotation_the_old_master_key_can_go_and_every_key_still_signs_and_verifies(db: TestDatabase) {
    let old = MasterKeys::generate_spec("old").unwrap().to_string();
    let new = MasterKeys::generate_spec("new").unwrap().to_string();
    let both = format!("{new},{old}");

    // Everything sealed under `old`: a retired and an active key per algorithm, a staged
    // key, and two HS256 secrets; tokens signed by each.
    let app = start(&db, &old).await.unwrap();
    let mut tokens = Vec::new();
    for (tenant, alg) in TENANTS {
        app.create_tenant_with_alg(tenant, alg).await;
        tokens.push((tenant, access_token(&session_for_alice(&app, tenant).await)));
        let (status, body) = json_body(app.admin_post(&format!("/a/{tenant}/admin/keys/rotate")).await).await;
        assert_eq!(status, reqwest::StatusCode::OK, "{body}");
        tokens.push((tenant, access_token(&session_for_alice(&app, tenant).await)));
        app.stage_key(tenant).await;
    }
    for secret in [JWT_SECRET_OLD, JWT_SECRET] {
        let body = json!({ "secret": secret });
        let (status, body) = json_body(app.admin_post_json("/a/es/admin/secrets/rotate", &body).await).await;
        assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    }
    let issuer = issuer_of(&app, "es").await;
    let hs_header = json!({ "alg": "HS256", "typ": "JWT" });
    let hs_tokens =
        [JWT_SECRET, JWT_SECRET_OLD].map(|s| hs256(s.as_bytes(), &hs_header, &good_claims(&issuer, "es", now_unix())));
    app.stop().await;
    let sealed_under_old = db.raw().await.count(UNDER_OLD, &[]).await;
    assert!(sealed_under_old >= 3 * 3 + 2, "keys and secrets sealed under `old`: {sealed_under_old}");

    // `new` first: new material is sealed under it, old material still opens. The CLI
    // re-wraps while this replica serves.
    let app = start(&db, &both).await.unwrap();
    app.create_tenant_with_alg("late", "ES256").await;
    let report = kek_rotate(&db, &both).await;
    assert_eq!(report["rewrapped"].as_i64(), Some(sealed_under_old), "{report}");
    let again = kek_rotate(&db, &both).await;
    assert_eq!(again["rewrapped"], 0, "a second run has nothing to do: {again}");
    assert_eq!(again["unchanged"].as_i64(), report["unchanged"].as_i64().map(|n| n + sealed_under_old), "{again}");
    for (tenant, token) in &tokens {
        assert_accepted(&app, tenant, token).await;
    }
    app.stop().await;
    let mut raw = db.raw().await;
    assert_eq!((raw.count(NOT_UNDER_NEW, &[]).await, raw.count(SECRETS_NOT_UNDER_NEW, &[]).await), (0, 0));

    // `old` removed from the configuration.
    let app = start(&db, &new).await.expect("starts with only the new master key");
    for (tenant, _) in TENANTS {
        let fresh = access_token(&session_for_alice(&app, tenant).await);
        assert_accepted(&app, tenant, &fresh).await;
    }
    for (tenant, token) in &tokens {
        assert_accepted(&app, tenant, token).await;
    }
    for token in &hs_tokens {
        assert_accepted(&app, "es", token).await;
    }
    app.stop().await;

    // And the old master key alone no longer opens anything.
    let refused = start(&db, &old).await.err().expect("a replica with only the old master key must not start");
    assert!(format!("{refused:#}").contains("KEYWARD_MASTER_KEYS"), "{refused:#}");
}

/// The operator removed `old` without running `keyward kek rotate`, while a key staged by a
/// replica still encrypting with `old` waits for its activation. Start-up proves the master
/// keys open every key that signs; a staged key will sign, so a replica that cannot open it
/// must not start (as it does not when it cannot open the active key).
async fn a_replica_lacking_the_master_key_of_a_staged_key_refuses_to_start(db: TestDatabase) {
    let old = MasterKeys::generate_spec("old").unwrap().to_string();
    let new = MasterKeys::generate_spec("new").unwrap().to_string();
    let clock = ManualClock::new(SIM_START);
    let acme = TenantId::parse("acme").unwrap();
    let replica_with = |keys: String| {
        let (db, clock) = (&db, &clock);
        async move { replica(&test_settings(db, &keys), clock).await }
    };
    create_tenant(&replica_with(old.clone()).await.keys, "acme", &hourly()).await;
    // A replica with `new` first rotates (its new key is sealed under `new`)...
    replica_with(format!("{new},{old}")).await.keys.rotate(&acme, false, &Actor::system("test")).await.unwrap();
    // ...and one not yet reconfigured stages the next key under `old`.
    let staged = replica_with(format!("{old},{new}")).await.keys.stage(&acme, None, &Actor::system("test")).await;
    assert_eq!(db.raw().await.key_row("acme", &staged.unwrap().kid).await.kek_id, "old");

    let started = Services::build(&test_settings(&db, &new), std::sync::Arc::new(clock.clone())).await;

    let refused = started.err().expect("a replica that cannot open the staged key must not start");
    assert!(format!("{refused:#}").contains("KEYWARD_MASTER_KEYS"), "{refused:#}");
}

/// A staged key whose private half this replica cannot open (sealed under a master key it
/// does not have) comes due. Whatever the loop does, the database must not name as active
/// a key no replica can sign with, and what this replica signs with must be what the
/// database says is active.
async fn a_staged_key_the_replica_cannot_open_is_never_activated(db: TestDatabase) {
    let clock = ManualClock::new(SIM_START);
    let services = replica(&test_settings(&db, &new_master_key()), &clock).await;
    let first = create_tenant(&services.keys, "acme", &hourly()).await;
    clock.advance(Duration::minutes(50));
    services.rotator.tick().await.unwrap();
    let staged = kids_in(&key_rows(&services, "acme").await, KeyState::Staged).pop().unwrap();
    let sql = "UPDATE keys SET kek_id = 'gone' WHERE tenant_id = 'acme' AND state = 'staged'";
    assert_eq!(db.raw().await.execute(sql, &[]).await.unwrap(), 1, "sealed under a master key nobody has");
    clock.advance(Duration::minutes(10));

    let tick = services.rotator.tick().await.unwrap();

    let active = kids_in(&key_rows(&services, "acme").await, KeyState::Active);
    assert_ne!(active, [staged.as_str()], "the unopenable key became active ({tick:?})");
    let signer = services.keys.registry().get("acme").unwrap().active_kid().map(str::to_owned);
    assert_eq!(signer.as_deref(), active.first().map(String::as_str), "serving what the database says");
    assert_eq!(active, [first], "the current key keeps signing until a usable key can replace it");
}
