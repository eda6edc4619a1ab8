//! Scheduled rotation on a manual clock (issue 5, "Must show": the deterministic
//! simulation). Three full cycles of a 90-day policy with a 7-day overlap, tokens issued
//! every simulated minute and received by relying parties that cache the JWKS for max-age:
//! no relying party ever meets an unknown kid, no live token is ever refused, and every
//! key moves through its states on schedule.
//!
//! Two levels: the pure planner with the real snapshot and verifier code, minute by minute
//! (fast: ~400 000 tokens); and the real service stack (store, key service, HTTP JWKS and
//! /verify) in coarser steps.

mod support;

use keyward::clock::{Clock, ManualClock};
use keyward::domain::{Actor, KeyState, Period, PolicyPatch, TenantId};
use keyward::service::SessionRequest;
use reqwest::StatusCode;
use time::Duration;

use support::TestDatabase;
use support::app::{eventually, new_master_key, spawn_app_with_clock, test_settings};
use support::rotation::{
    RelyingParty, Rng, SIM_START, ServedApp, SimConfig, create_tenant, hourly, policy, simulate, tenant_body,
};
use support::tokens::{header_of, metrics_text, sample};

support::backend_tests!(
    the_rotation_loop_rotates_on_schedule_and_reports_it_in_metrics,
    a_retired_key_outlives_a_shortened_overlap_while_a_token_it_signed_is_live,
);

const DAY: Duration = Duration::days(1);

/// The contract's routine policy: rotate every 90 days, publish the next key 2 days ahead,
/// keep the old one 7 days; 15-minute tokens, JWKS cached 5 minutes, 30 s leeway, and the
/// rotation loop waking every 30 s.
fn routine(run_for: Duration) -> SimConfig {
    SimConfig {
        policy: policy("90d", "2d", "7d", "15m"),
        jwks_max_age: Duration::minutes(5),
        leeway: Period::from_secs(30),
        tick: Duration::seconds(30),
        issue_every: Duration::minutes(1),
        run_for,
        seed: 0x6b65_7977_6172_6435,
        full_check_every: 97,
    }
}

#[test]
fn three_ninety_day_cycles_never_show_an_unknown_kid_nor_refuse_a_live_token() {
    // Three cycles, and long enough for the third retired key to expire.
    let report = simulate(&routine(280 * DAY));

    assert_eq!(report.tokens, 280 * 24 * 60, "one token per simulated minute");
    assert!(report.ticks >= 280 * 24 * 120, "one tick per 30 s: {}", report.ticks);
    assert_eq!((report.unknown_kids, report.false_rejections), (0, 0), "first failures: {:#?}", report.examples);
    assert!(report.fully_checked > 4_000, "tokens signed and verified for real: {}", report.fully_checked);
    assert!(report.jwks_fetches > 60_000, "the relying party refetched every 5-6 min: {}", report.jwks_fetches);

    use KeyState::{Active, Expired, Retired, Staged};
    assert_eq!(
        report.key(1),
        [(Staged, Duration::ZERO), (Active, Duration::ZERO), (Retired, 90 * DAY), (Expired, 97 * DAY)]
    );
    assert_eq!(report.key(2), [(Staged, 88 * DAY), (Active, 90 * DAY), (Retired, 180 * DAY), (Expired, 187 * DAY)]);
    assert_eq!(report.key(3), [(Staged, 178 * DAY), (Active, 180 * DAY), (Retired, 270 * DAY), (Expired, 277 * DAY)]);
    assert_eq!(report.key(4), [(Staged, 268 * DAY), (Active, 270 * DAY)]);
    assert!(report.key(5).is_empty(), "one new key per cycle: {:?}", report.timeline);
    assert_eq!(report.max_published, 2, "the JWKS never holds more than the active key and one neighbour");
}

#[test]
fn a_too_short_overlap_still_cannot_cut_off_a_live_token() {
    // An overlap shorter than the token lifetime would be refused by the API; the planner
    // must still keep the retired key until its last token has expired (plus leeway).
    let mut config = routine(100 * DAY);
    config.policy.overlap = Period::from_secs(60);
    assert!(config.policy.validate(Period::from_secs(300)).is_err(), "the API would refuse this policy");

    let report = simulate(&config);

    assert_eq!((report.unknown_kids, report.false_rejections), (0, 0), "first failures: {:#?}", report.examples);
    let last_exp = report.last_token_exp[&1];
    assert_eq!(last_exp, 90 * DAY + Duration::minutes(14), "the last token of key 1 was issued a minute before 90 d");
    let expired = last_exp + Duration::seconds(30);
    use KeyState::{Active, Expired, Retired, Staged};
    assert_eq!(
        report.key(1),
        [(Staged, Duration::ZERO), (Active, Duration::ZERO), (Retired, 90 * DAY), (Expired, expired)]
    );
}

#[test]
fn the_simulation_catches_a_stage_lead_shorter_than_the_jwks_max_age() {
    // The control experiment: a key that signs one minute after it is published reaches
    // relying parties whose cached JWKS predates it. The simulation must see that.
    let mut config = routine(92 * DAY);
    config.policy.stage_lead = Period::from_secs(60);

    let report = simulate(&config);

    assert!(report.unknown_kids > 0, "a too-short stage_lead went unnoticed");
    assert_eq!(report.false_rejections, 0, "{:#?}", report.examples);
}

/// Steps of the service-stack run: between one minute and two hours, so the relying
/// party's 5-minute cache is sometimes fresh and mostly stale.
const MAX_STEP_MINUTES: u64 = 120;

#[tokio::test]
async fn the_service_stack_rotates_three_times_without_refusing_a_token() {
    // SQLite: the store is the same code path on both backends (the conformance suite
    // shows that), and this run makes ~10 000 round trips.
    let db = TestDatabase::sqlite();
    let clock = ManualClock::new(SIM_START);
    let mut settings = test_settings(&db, &new_master_key());
    // The app's own loop ticks at start-up, then not for an hour of real time: this test
    // runs the schedule itself.
    settings.rotation_interval = Period::from_secs(3600);
    let app = ServedApp::start(settings, &clock).await;
    let acme = TenantId::parse("acme").unwrap();
    let ninety_days = policy("90d", "2d", "7d", "15m");
    create_tenant(&app.state.keys, "acme", &ninety_days).await;
    let mut rp = RelyingParty::new(&app.address, "acme");
    let mut rng = Rng::new(7);
    let ttl = Duration::minutes(15);
    let (mut tokens, mut unknown_kids, mut rejections) = (0u64, Vec::new(), Vec::new());

    while clock.now() < SIM_START + 280 * DAY {
        tick(&app, &acme).await;
        let issued = app
            .state
            .sessions
            .create(&acme, SessionRequest { user_id: "alice".into(), ..Default::default() }, &Actor::system("test"))
            .await
            .expect("issuing a token");
        let kid = header_of(&issued.access_token)["kid"].as_str().unwrap().to_owned();
        tokens += 1;
        // The token reaches the relying party some time within its lifetime; the rotation
        // loop has kept running meanwhile.
        let delay = rng.up_to(ttl);
        clock.advance(delay);
        tick(&app, &acme).await;
        let now = clock.now();
        if !rp.knows(&kid, now).await {
            unknown_kids.push(format!("{kid} at {now}"));
        }
        let (status, body) = app.verify("acme", &issued.access_token).await;
        if status != StatusCode::OK {
            rejections.push(format!("{now}: {body}"));
        }
        let step = Duration::minutes(1 + i64::try_from(rng.next_u64() % MAX_STEP_MINUTES).unwrap());
        clock.advance((step - delay).max(Duration::ZERO));
    }

    assert!(
        unknown_kids.is_empty(),
        "{} unknown kids: {:?}",
        unknown_kids.len(),
        &unknown_kids[..unknown_kids.len().min(5)]
    );
    assert!(rejections.is_empty(), "{} rejections: {:?}", rejections.len(), &rejections[..rejections.len().min(5)]);
    assert!(tokens > 3_000 && rp.fetches > 1_000, "{tokens} tokens, {} JWKS fetches", rp.fetches);
    let keys = app.state.keys.list_keys(&acme).await.unwrap();
    let states: Vec<KeyState> = keys.iter().map(|k| k.state).collect();
    use KeyState::{Active, Expired};
    assert_eq!(states, [Expired, Expired, Expired, Active], "three scheduled rotations in 280 days: {keys:#?}");
    let step = Duration::minutes(i64::try_from(MAX_STEP_MINUTES).unwrap());
    for pair in keys.windows(2) {
        let (old, new) = (&pair[0], &pair[1]);
        let rotated = new.activated_at.unwrap();
        let due = old.activated_at.unwrap() + 90 * DAY;
        assert!(rotated >= due && rotated <= due + step, "{} activated at {rotated}, due {due}", new.kid);
        assert!(new.created_at >= due - 2 * DAY && new.created_at <= due - 2 * DAY + step, "{new:?}");
        assert_eq!(old.retired_at, Some(rotated), "the old key retires as the new one activates");
    }
    for old in &keys[..3] {
        let (retired, expired) = (old.retired_at.unwrap(), old.expires_at.unwrap());
        assert!(expired >= retired + 7 * DAY && expired <= retired + 7 * DAY + step, "{old:?}");
    }
    app.stop().await;
}

/// One run of the schedule for `tenant`. (The app's own loop ticks once at start-up and
/// may do some of the work; both plan from the database, so who does it does not matter.)
async fn tick(app: &ServedApp, tenant: &TenantId) {
    app.state.keys.run_schedule(tenant).await.expect("the scheduled run");
}

/// The rotation loop the server itself runs (every second here) on a manual clock: the
/// next key is staged at rotation_period − stage_lead, activated at rotation_period, the
/// retired key expires after the overlap, and the metrics tell an operator so.
async fn the_rotation_loop_rotates_on_schedule_and_reports_it_in_metrics(db: TestDatabase) {
    let clock = ManualClock::new(SIM_START);
    let app = spawn_app_with_clock(&db, std::sync::Arc::new(clock.clone())).await;
    let first = app.create_tenant(tenant_body("acme", &hourly())).await["active_kid"].as_str().unwrap().to_owned();

    clock.advance(Duration::minutes(50));
    let next =
        eventually("the next key staged at 50 min", || async { app.kids_in_state("acme", "staged").await.pop() }).await;
    let staged = app.keys("acme").await.into_iter().find(|k| k["kid"] == next.as_str()).unwrap();
    assert_eq!(
        (&staged["created_at"], &staged["scheduled_at"]),
        (&"2026-01-01T00:50:00Z".into(), &"2026-01-01T01:00:00Z".into()),
        "{staged}"
    );
    clock.advance(Duration::minutes(10));
    eventually("the staged key activated at 60 min", || async {
        (app.kids_in_state("acme", "active").await == [next.as_str()]).then_some(())
    })
    .await;
    clock.advance(Duration::minutes(10));

    let text = metrics_text(&app).await;
    let acme = r#"tenant="acme""#;
    assert_eq!(sample(&text, "keyward_rotations_total", &[acme, r#"kind="scheduled""#]), Some(1.0), "{text}");
    assert_eq!(sample(&text, "keyward_active_key_age_seconds", &[acme]), Some(600.0), "activated 10 min ago");
    for (state, n) in [("staged", 0.0), ("active", 1.0), ("retired", 1.0), ("expired", 0.0), ("revoked", 0.0)] {
        let label = format!(r#"state="{state}""#);
        assert_eq!(sample(&text, "keyward_keys", &[acme, &label]), Some(n), "{state} keys");
    }
    assert_eq!(app.key_state("acme", &first).await, "retired");

    clock.advance(Duration::minutes(10));
    eventually("the retired key expired 20 min after retiring", || async {
        (app.key_state("acme", &first).await == "expired").then_some(())
    })
    .await;
    let text = metrics_text(&app).await;
    assert_eq!(sample(&text, "keyward_keys", &[acme, r#"state="expired""#]), Some(1.0));
    assert_eq!(sample(&text, "keyward_keys", &[acme, r#"state="retired""#]), Some(0.0));
    assert_eq!(sample(&text, "keyward_active_key_age_seconds", &[acme]), Some(1200.0));
    assert!(!app.jwks_kids("acme").await.contains(&first), "an expired key leaves the JWKS");
}

/// The operator shortens the token lifetime to 1 min and the overlap to 6 min (a valid
/// policy) just after a 15-minute token was issued: the key that signed it retires on
/// schedule but stays published and verifying until that token has expired (plus leeway),
/// tracked through the store's record of the latest `exp` each key signed.
async fn a_retired_key_outlives_a_shortened_overlap_while_a_token_it_signed_is_live(db: TestDatabase) {
    let clock = ManualClock::new(SIM_START);
    let mut settings = test_settings(&db, &new_master_key());
    settings.rotation_interval = Period::from_secs(3600);
    let app = ServedApp::start(settings, &clock).await;
    let acme = TenantId::parse("acme").unwrap();
    let first = create_tenant(&app.state.keys, "acme", &hourly()).await;
    clock.advance(Duration::minutes(50));
    tick(&app, &acme).await;
    clock.advance(Duration::minutes(9));
    let request = SessionRequest { user_id: "alice".into(), ..Default::default() };
    let token = app.state.sessions.create(&acme, request, &Actor::system("test")).await.unwrap().access_token;
    let shorter = PolicyPatch {
        access_token_ttl: Some(Period::from_secs(60)),
        overlap: Some(Period::from_secs(360)),
        ..PolicyPatch::default()
    };
    app.state.keys.update_tenant(&acme, None, None, shorter, &Actor::system("test")).await.unwrap();
    clock.advance(Duration::minutes(1));
    tick(&app, &acme).await;

    // The token expires at 74 min; with 30 s leeway its key must last until 74:30.
    let view = app.state.keys.list_keys(&acme).await.unwrap().into_iter().find(|k| k.kid == first).unwrap();
    assert_eq!(view.retired_at, Some(SIM_START + Duration::hours(1)), "rotated on schedule: {view:?}");
    assert_eq!(view.expires_at, Some(SIM_START + Duration::seconds(74 * 60 + 30)), "{view:?}");
    let mut rp = RelyingParty::new(&app.address, "acme");
    for at in [Duration::minutes(66), Duration::minutes(70), Duration::seconds(74 * 60 + 29)] {
        clock.set(SIM_START + at);
        tick(&app, &acme).await;
        assert!(rp.knows(&first, clock.now()).await, "published at {at}");
        let (status, body) = app.verify("acme", &token).await;
        assert_eq!(status, StatusCode::OK, "at {at}: {body}");
    }
    clock.set(SIM_START + Duration::seconds(74 * 60 + 30));
    tick(&app, &acme).await;
    let (status, body) = app.verify("acme", &token).await;
    assert_eq!((status, &body["error"]), (StatusCode::UNAUTHORIZED, &"key_expired".into()), "{body}");
    assert!(!RelyingParty::new(&app.address, "acme").knows(&first, clock.now()).await, "unpublished");
    app.stop().await;
}
