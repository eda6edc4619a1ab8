//! Scheduled rotation in real time (issue 5, "Must show": the running server on a short
//! policy). For a minute, tokens are issued continuously, a relying party caching the JWKS
//! for the served max-age checks each one's kid, and each is verified over HTTP at a random
//! moment before it expires, while the server's own loop stages, activates and expires
//! keys: nothing is refused, and at least two rotations happen.
//!
//! SQLite only, on purpose: this test is bound to the wall clock (about 65 s) and proves
//! the timing of the loop, not the backend (the manual-clock tests run on both).

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyward::domain::Period;
use reqwest::StatusCode;
use serde_json::json;
use time::OffsetDateTime;
use tokio::sync::Mutex;
use tokio::task::JoinSet;

use support::TestDatabase;
use support::app::{TestApp, assert_error, json, spawn_app_with};
use support::rotation::{RelyingParty, Rng};
use support::tokens::{access_token, claims_of, create_session, header_of, metrics_text, sample, verify};

support::backend_tests!(the_live_policy_is_the_tightest_the_rules_allow);

const RUN_FOR: Duration = Duration::from_secs(60);
const ISSUE_EVERY: Duration = Duration::from_millis(200);
/// Verification happens up to this long after issue: before the 5 s expiry, with room for
/// a slow request on a busy machine.
const VERIFY_WITHIN: time::Duration = time::Duration::milliseconds(3_500);

/// What one token met on its way.
#[derive(Debug)]
enum Outcome {
    Accepted,
    /// The kid was not in the relying party's cached JWKS.
    UnknownKid(String),
    /// Keyward refused a token that had not expired.
    Refused(String),
    /// Sent after its `exp` (the machine stalled): not a rotation's doing, counted apart.
    Late,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_of_tokens_across_scheduled_rotations_is_never_refused() {
    let db = TestDatabase::sqlite();
    let app = spawn_app_with(&db, |s| {
        s.jwks_max_age = Period::from_secs(2);
        s.rotation_interval = Period::from_secs(1);
        // A small leeway, so a retired key expires at retired_at + overlap, inside the run.
        s.leeway = Period::from_secs(1);
    })
    .await;
    let policy = json!({ "id": "acme", "rotation_period": "20s", "stage_lead": "4s", "overlap": "8s",
        "access_token_ttl": "5s" });
    let first = app.create_tenant(policy).await["active_kid"].as_str().unwrap().to_owned();
    let app = Arc::new(app);
    let rp = Arc::new(Mutex::new(RelyingParty::new(&app.address, "acme")));
    let mut rng = Rng::new(11);
    let mut signers = vec![first];
    let mut receipts = JoinSet::new();

    let started = Instant::now();
    while started.elapsed() < RUN_FOR {
        let token = access_token(&create_session(&app, "acme", &json!({ "user_id": "alice" })).await);
        let kid = header_of(&token)["kid"].as_str().unwrap().to_owned();
        if signers.last() != Some(&kid) {
            signers.push(kid.clone());
        }
        let delay = rng.up_to(VERIFY_WITHIN).unsigned_abs();
        receipts.spawn(receive(Arc::clone(&app), Arc::clone(&rp), token, kid, delay));
        tokio::time::sleep(ISSUE_EVERY).await;
    }
    let mut outcomes = Vec::new();
    while let Some(outcome) = receipts.join_next().await {
        outcomes.push(outcome.expect("a receipt task"));
    }

    let failures: Vec<String> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::UnknownKid(what) => Some(format!("unknown kid {what}")),
            Outcome::Refused(what) => Some(format!("refused {what}")),
            Outcome::Accepted | Outcome::Late => None,
        })
        .collect();
    let late = outcomes.iter().filter(|o| matches!(o, Outcome::Late)).count();
    let accepted = outcomes.iter().filter(|o| matches!(o, Outcome::Accepted)).count();
    assert!(failures.is_empty(), "{} of {} tokens failed: {failures:#?}", failures.len(), outcomes.len());
    assert!(accepted >= 200 && late * 20 <= outcomes.len(), "{accepted} accepted, {late} late");
    let distinct: BTreeSet<&String> = signers.iter().collect();
    assert_eq!(distinct.len(), signers.len(), "a key never signs again once replaced: {signers:?}");
    assert!(signers.len() >= 3, "at least two rotations while issuing: {signers:?}");
    let text = metrics_text(&app).await;
    let rotations = sample(&text, "keyward_rotations_total", &[r#"tenant="acme""#, r#"kind="scheduled""#]);
    assert!(rotations.is_some_and(|n| n >= 2.0), "scheduled rotations: {rotations:?}");
    assert!(!app.kids_in_state("acme", "expired").await.is_empty(), "a retired key expired during the run");
    assert!(rp.lock().await.fetches >= 10, "the relying party refetched as its copy aged");
}

/// The token reaches a relying party `delay` after issue: the relying party must know its
/// kid from its cached JWKS, and Keyward must accept it.
async fn receive(
    app: Arc<TestApp>,
    rp: Arc<Mutex<RelyingParty>>,
    token: String,
    kid: String,
    delay: Duration,
) -> Outcome {
    tokio::time::sleep(delay).await;
    if !rp.lock().await.knows(&kid, OffsetDateTime::now_utc()).await {
        return Outcome::UnknownKid(format!("{kid} at {}", OffsetDateTime::now_utc()));
    }
    let exp = claims_of(&token)["exp"].as_i64().unwrap();
    let sent_at = OffsetDateTime::now_utc().unix_timestamp();
    let (status, body) = json(verify(&app, "acme", &token).await).await;
    match status {
        StatusCode::OK => Outcome::Accepted,
        _ if body["error"] == "expired" && sent_at > exp => Outcome::Late,
        _ => Outcome::Refused(format!("{kid}: {status} {body}")),
    }
}

/// The live test's policy against a 2 s JWKS max-age: one second less stage lead, or one
/// second less overlap, and the API refuses it.
async fn the_live_policy_is_the_tightest_the_rules_allow(db: TestDatabase) {
    let app = spawn_app_with(&db, |s| s.jwks_max_age = Period::from_secs(2)).await;
    let live = json!({ "rotation_period": "20s", "stage_lead": "4s", "overlap": "8s", "access_token_ttl": "5s" });
    for (field, value) in [("stage_lead", "1s"), ("overlap", "6s")] {
        let mut body = live.clone();
        body["id"] = json!("tight");
        body[field] = json!(value);
        let response = app.admin_post_json("/admin/tenants", &body).await;
        assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    let mut body = live;
    body["id"] = json!("acme");
    app.create_tenant(body).await;
}
