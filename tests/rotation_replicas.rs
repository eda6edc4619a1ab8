//! Two replicas running the rotation loop on one database (issue 5, "Must show"): exactly
//! one rotation per due time. The lease makes one replica at a time the leader; underneath
//! it, the tenant's version guard alone already prevents a double staging or activation
//! when two replicas plan from the same state.
//!
//! The concurrent tests run on PostgreSQL (the production backend for several replicas) on
//! a multi-threaded runtime, so both replicas really run at once; the deterministic ones
//! run on both backends.

mod support;

use std::sync::Arc;

use keyward::clock::{Clock, ManualClock};
use keyward::crypto::{MasterKeys, generate};
use keyward::domain::{KeyState, Period, TenantId, schedule};
use keyward::keyset::key_owner;
use keyward::service::{KeyService, Rotator, Tick};
use keyward::store::{NewKey, StoreError};
use time::Duration;

use support::TestDatabase;
use support::app::{new_master_key, test_settings};
use support::rotation::{SIM_START, create_tenant, hourly, key_rows, kids_in, replica, scheduled_events};

support::backend_tests!(
    a_plan_computed_from_a_version_another_replica_has_moved_is_refused_as_stale,
    a_replica_takes_over_the_loop_once_the_leaders_lease_has_lapsed,
);

/// Minutes since the start at which the hourly policy stages and activates keys during the
/// first three cycles (retired keys expire 20 minutes after each activation).
const STAGED_AT: [i64; 3] = [50, 110, 170];
const ACTIVATED_AT: [i64; 3] = [60, 120, 180];

async fn tick_both(a: &Arc<Rotator>, b: &Arc<Rotator>) -> (Tick, Tick) {
    let (a, b) = (Arc::clone(a), Arc::clone(b));
    let (ta, tb) =
        tokio::join!(tokio::spawn(async move { a.tick().await }), tokio::spawn(async move { b.tick().await }));
    (ta.unwrap().unwrap(), tb.unwrap().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_ticking_together_rotate_exactly_once_per_due_time() {
    let db = TestDatabase::postgres().await;
    let clock = ManualClock::new(SIM_START);
    let settings = test_settings(&db, &new_master_key());
    let (a, b) = (replica(&settings, &clock).await, replica(&settings, &clock).await);
    create_tenant(&a.keys, "acme", &hourly()).await;
    let mut total = Tick::default();

    // Minute by minute across three cycles, both replicas tick three times per minute.
    for _ in 0..200 {
        clock.advance(Duration::minutes(1));
        for _ in 0..3 {
            let (ta, tb) = tick_both(&a.rotator, &b.rotator).await;
            assert!(ta.leader != tb.leader, "exactly one leader per tick at {}: {ta:?} {tb:?}", clock.now());
            for t in [ta, tb] {
                total.staged += t.staged;
                total.activated += t.activated;
                total.expired += t.expired;
                total.failed_tenants += t.failed_tenants;
            }
        }
    }

    assert_eq!(total, Tick { leader: false, staged: 3, activated: 3, expired: 3, failed_tenants: 0 });
    let at = |rows: Vec<support::raw::AuditRow>| {
        rows.into_iter().map(|r| (r.at - SIM_START).whole_minutes()).collect::<Vec<_>>()
    };
    assert_eq!(at(scheduled_events(&db, "key.staged").await), STAGED_AT);
    assert_eq!(at(scheduled_events(&db, "key.activated").await), ACTIVATED_AT);
    assert_eq!(at(scheduled_events(&db, "key.expired").await), [80, 140, 200]);
    let rows = key_rows(&a, "acme").await;
    assert_eq!(rows.len(), 4, "one key per cycle: {rows:#?}");
    assert_eq!(kids_in(&rows, KeyState::Active).len(), 1);
}

/// Both replicas run the schedule at once with no lease at all.
async fn run_both(a: &Arc<KeyService>, b: &Arc<KeyService>, tenant: &TenantId) -> usize {
    let (a, b, ta, tb) = (Arc::clone(a), Arc::clone(b), tenant.clone(), tenant.clone());
    let (ca, cb) = tokio::join!(
        tokio::spawn(async move { a.run_schedule(&ta).await }),
        tokio::spawn(async move { b.run_schedule(&tb).await })
    );
    let (ca, cb) = (ca.unwrap().expect("replica a"), cb.unwrap().expect("replica b"));
    assert!(ca.is_empty() || cb.is_empty(), "both replicas changed keys: {ca:?} {cb:?}");
    ca.len() + cb.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_lease_the_version_guard_alone_prevents_a_double_rotation() {
    let db = TestDatabase::postgres().await;
    let clock = ManualClock::new(SIM_START);
    let settings = test_settings(&db, &new_master_key());
    let (a, b) = (replica(&settings, &clock).await, replica(&settings, &clock).await);
    create_tenant(&a.keys, "acme", &hourly()).await;
    let acme = TenantId::parse("acme").unwrap();

    for (stage, activate) in STAGED_AT.into_iter().zip(ACTIVATED_AT) {
        clock.set(SIM_START + Duration::minutes(stage));
        for _ in 0..5 {
            run_both(&a.keys, &b.keys, &acme).await;
        }
        assert_eq!(kids_in(&key_rows(&a, "acme").await, KeyState::Staged).len(), 1, "one key staged at {stage} min");
        clock.set(SIM_START + Duration::minutes(activate));
        for _ in 0..5 {
            run_both(&a.keys, &b.keys, &acme).await;
        }
        assert_eq!(kids_in(&key_rows(&a, "acme").await, KeyState::Staged).len(), 0, "activated at {activate} min");
    }

    assert_eq!(scheduled_events(&db, "key.staged").await.len(), 3);
    assert_eq!(scheduled_events(&db, "key.activated").await.len(), 3);
    let rows = key_rows(&a, "acme").await;
    assert_eq!((rows.len(), kids_in(&rows, KeyState::Active).len()), (4, 1), "{rows:#?}");
}

/// The interleaving the concurrent tests can only hope for, forced: both replicas plan from
/// the same version, both generate a key, both apply.
async fn a_plan_computed_from_a_version_another_replica_has_moved_is_refused_as_stale(db: TestDatabase) {
    let clock = ManualClock::new(SIM_START);
    let spec = new_master_key();
    let settings = test_settings(&db, &spec);
    let (a, b) = (replica(&settings, &clock).await, replica(&settings, &clock).await);
    create_tenant(&a.keys, "acme", &hourly()).await;
    clock.advance(Duration::minutes(50));
    let acme = TenantId::parse("acme").unwrap();
    let loaded = a.store.load_tenant(&acme).await.unwrap().unwrap();
    let metas: Vec<_> = loaded.keys.iter().map(|k| k.meta.clone()).collect();
    let plan = schedule(&metas, &loaded.tenant.policy, clock.now(), Period::from_secs(30));
    assert!(plan.fresh.is_some() && plan.transitions.is_empty(), "staging is due: {plan:?}");
    let master = MasterKeys::parse(&spec).unwrap();
    let new_key = || {
        let generated = generate(plan.fresh.unwrap()).unwrap();
        let sealed = master.seal(generated.private.as_bytes(), key_owner(&acme, &generated.public.kid)).unwrap();
        NewKey { public: generated.public, sealed }
    };
    let (key_a, key_b) = (new_key(), new_key());

    let first = a.store.apply_plan(&acme, loaded.version, &plan, Some(&key_a), clock.now(), &[]).await;
    let second = b.store.apply_plan(&acme, loaded.version, &plan, Some(&key_b), clock.now(), &[]).await;

    assert!(first.is_ok(), "{first:?}");
    assert!(matches!(second, Err(StoreError::Stale(_))), "{second:?}");
    let rows = key_rows(&b, "acme").await;
    assert_eq!(kids_in(&rows, KeyState::Staged), [key_a.public.kid.as_str()]);
    assert_eq!(rows.len(), 2);
}

/// The lease lasts three rotation intervals (3 s here) and the leader renews it on every
/// tick; when the leader stops, another replica becomes leader once the lease has lapsed,
/// and not before.
async fn a_replica_takes_over_the_loop_once_the_leaders_lease_has_lapsed(db: TestDatabase) {
    let clock = ManualClock::new(SIM_START);
    let settings = test_settings(&db, &new_master_key());
    assert_eq!(settings.rotation_interval, Period::from_secs(1));
    let (a, b) = (replica(&settings, &clock).await, replica(&settings, &clock).await);
    create_tenant(&a.keys, "acme", &hourly()).await;
    assert!(a.rotator.tick().await.unwrap().leader);
    clock.advance(Duration::seconds(2));
    assert!(!b.rotator.tick().await.unwrap().leader, "a holds the lease");
    assert!(a.rotator.tick().await.unwrap().leader, "and renews it");

    // a stops ticking (crashed).
    clock.advance(Duration::seconds(3));
    assert!(!b.rotator.tick().await.unwrap().leader, "a's lease runs until exactly now");
    clock.advance(Duration::milliseconds(1));
    assert!(b.rotator.tick().await.unwrap().leader, "taken over once lapsed");
    assert!(!a.rotator.tick().await.unwrap().leader, "a, back, is a follower");

    clock.set(SIM_START + Duration::minutes(50));
    assert_eq!(b.rotator.tick().await.unwrap(), Tick { leader: true, staged: 1, ..Tick::default() });
    assert_eq!(a.rotator.tick().await.unwrap(), Tick::default(), "the follower does nothing, even when work is due");
}
