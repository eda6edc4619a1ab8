//! Crash safety of scheduled rotation (issue 5, "Must show"): a failure inside the applier
//! leaves nothing half done, and the next tick completes the rotation; a process that ends
//! between the staging and the activation step is replaced by one that picks up where it
//! left off, activating the key relying parties already have rather than a fresh one.
//!
//! The failure is real, not mocked: a database trigger refuses one step of the transaction
//! (for one tenant), after the step before it has already been written.

mod support;

use std::sync::Arc;

use keyward::clock::ManualClock;
use keyward::domain::{Key, KeyState, TenantId};
use keyward::service::Tick;
use keyward::startup::Services;
use time::Duration;

use support::app::{TestApp, eventually, new_master_key, spawn_app_with_clock, test_settings};
use support::raw::RawConnection;
use support::rotation::{SIM_START, create_tenant, hourly, key_rows, kids_in, replica, scheduled_events, tenant_body};
use support::{Backend, TestDatabase};

support::backend_tests!(
    a_failure_inside_the_applier_rolls_back_the_whole_rotation_and_the_next_tick_completes_it,
    a_replica_started_after_a_crash_between_steps_activates_the_key_already_staged,
    a_loop_that_wakes_after_the_rotation_time_still_publishes_the_next_key_stage_lead_ahead,
);

/// The steps of a rotation's plan, in order: the active key retires, the staged key
/// activates. Each can be refused for tenant `acme` by a trigger.
const STEPS: [&str; 2] = ["retirement", "activation"];

const PG_REFUSE: &str = "CREATE FUNCTION keyward_test_refuse() RETURNS trigger LANGUAGE plpgsql AS \
    $$ BEGIN RAISE EXCEPTION 'injected failure: % -> % refused', OLD.state, NEW.state; END $$";
const PG_REFUSE_RETIREMENT: &str = "CREATE TRIGGER refuse_step BEFORE UPDATE ON keys FOR EACH ROW \
    WHEN (NEW.tenant_id = 'acme' AND OLD.state = 'active' AND NEW.state = 'retired') \
    EXECUTE FUNCTION keyward_test_refuse()";
const PG_REFUSE_ACTIVATION: &str = "CREATE TRIGGER refuse_step BEFORE UPDATE ON keys FOR EACH ROW \
    WHEN (NEW.tenant_id = 'acme' AND OLD.state = 'staged' AND NEW.state = 'active') \
    EXECUTE FUNCTION keyward_test_refuse()";
const PG_ALLOW: &str = "DROP TRIGGER refuse_step ON keys";
const SQLITE_REFUSE_RETIREMENT: &str = "CREATE TRIGGER refuse_step BEFORE UPDATE ON keys FOR EACH ROW \
    WHEN NEW.tenant_id = 'acme' AND OLD.state = 'active' AND NEW.state = 'retired' \
    BEGIN SELECT RAISE(ABORT, 'injected failure: retirement refused'); END";
const SQLITE_REFUSE_ACTIVATION: &str = "CREATE TRIGGER refuse_step BEFORE UPDATE ON keys FOR EACH ROW \
    WHEN NEW.tenant_id = 'acme' AND OLD.state = 'staged' AND NEW.state = 'active' \
    BEGIN SELECT RAISE(ABORT, 'injected failure: activation refused'); END";
const SQLITE_ALLOW: &str = "DROP TRIGGER refuse_step";

/// Makes the database refuse `step` of tenant `acme`'s rotation.
async fn refuse(raw: &mut RawConnection, backend: Backend, step: &str) {
    let sql = match (backend, step) {
        (Backend::Postgres, "retirement") => PG_REFUSE_RETIREMENT,
        (Backend::Postgres, _) => PG_REFUSE_ACTIVATION,
        (Backend::Sqlite, "retirement") => SQLITE_REFUSE_RETIREMENT,
        (Backend::Sqlite, _) => SQLITE_REFUSE_ACTIVATION,
    };
    raw.execute(sql, &[]).await.expect("creating the trigger");
}

async fn allow(raw: &mut RawConnection, backend: Backend) {
    let sql = if backend == Backend::Postgres { PG_ALLOW } else { SQLITE_ALLOW };
    raw.execute(sql, &[]).await.expect("dropping the trigger");
}

/// Everything a rotation step could have touched.
#[derive(Debug, PartialEq)]
struct Observed {
    rows: Vec<Key>,
    version: i64,
    audit_events: i64,
    active_rows: i64,
    served_version: Option<i64>,
    served_etag: String,
}

impl Observed {
    async fn read(services: &Services, db: &TestDatabase) -> Observed {
        let acme = TenantId::parse("acme").unwrap();
        let mut raw = db.raw().await;
        let snapshot = services.keys.registry().get("acme").expect("acme is served");
        Observed {
            rows: key_rows(services, "acme").await,
            version: services.store.load_tenant(&acme).await.unwrap().unwrap().version,
            audit_events: raw.count("SELECT COUNT(*) FROM audit_events WHERE tenant_id = 'acme'", &[]).await,
            active_rows: raw
                .count("SELECT COUNT(*) FROM keys WHERE tenant_id = 'acme' AND state = 'active'", &[])
                .await,
            served_version: services.keys.registry().version_of(&acme),
            served_etag: snapshot.jwks.etag.clone(),
        }
    }
}

async fn a_failure_inside_the_applier_rolls_back_the_whole_rotation_and_the_next_tick_completes_it(db: TestDatabase) {
    let clock = ManualClock::new(SIM_START);
    let services = replica(&test_settings(&db, &new_master_key()), &clock).await;
    let first = create_tenant(&services.keys, "acme", &hourly()).await;
    // A second tenant on the same schedule, which nothing refuses.
    create_tenant(&services.keys, "beta", &hourly()).await;
    clock.advance(Duration::minutes(50));
    assert_eq!(services.rotator.tick().await.unwrap(), Tick { leader: true, staged: 2, ..Tick::default() });
    let next = kids_in(&key_rows(&services, "acme").await, KeyState::Staged).pop().unwrap();
    clock.advance(Duration::minutes(10));
    let mut raw = db.raw().await;
    if db.backend == Backend::Postgres {
        raw.execute(PG_REFUSE, &[]).await.unwrap();
    }

    for (step, beta_activated) in STEPS.into_iter().zip([1, 0]) {
        refuse(&mut raw, db.backend, step).await;
        let before = Observed::read(&services, &db).await;

        let tick = services.rotator.tick().await.unwrap();

        let expected = Tick { leader: true, activated: beta_activated, failed_tenants: 1, ..Tick::default() };
        assert_eq!(tick, expected, "{step} refused for acme; beta rotates regardless");
        let after = Observed::read(&services, &db).await;
        assert_eq!(after, before, "a refused {step} leaves no trace: no state, version, audit event or JWKS change");
        assert_eq!(after.active_rows, 1);
        allow(&mut raw, db.backend).await;
    }
    let failures = services.metrics.render();
    assert!(failures.contains(r#"keyward_background_failures_total{task="rotation"} 2"#), "{failures}");

    let tick = services.rotator.tick().await.unwrap();

    assert_eq!(tick, Tick { leader: true, activated: 1, ..Tick::default() });
    let now = SIM_START + Duration::hours(1);
    let rows = key_rows(&services, "acme").await;
    assert_eq!(
        (kids_in(&rows, KeyState::Retired), kids_in(&rows, KeyState::Active)),
        (vec![first.clone()], vec![next.clone()])
    );
    assert!(rows.iter().all(|k| k.retired_at.is_none_or(|t| t == now) && k.activated_at.is_none_or(|t| t <= now)));
    assert_eq!(services.keys.registry().get("acme").unwrap().active_kid(), Some(next.as_str()), "served at once");
    let acme_kids = |rows: Vec<support::raw::AuditRow>| {
        rows.into_iter().filter(|r| r.tenant_id.as_deref() == Some("acme")).map(|r| r.kid.unwrap()).collect::<Vec<_>>()
    };
    assert_eq!(acme_kids(scheduled_events(&db, "key.staged").await), [next.as_str()]);
    assert_eq!(acme_kids(scheduled_events(&db, "key.retired").await), [first]);
    assert_eq!(acme_kids(scheduled_events(&db, "key.activated").await), [next]);
}

/// The process ends after the staging tick, before the activation is due; another one
/// starts once it is due. Its loop activates the key staged before the crash (which
/// relying parties have cached) instead of creating a fresh one.
async fn a_replica_started_after_a_crash_between_steps_activates_the_key_already_staged(db: TestDatabase) {
    let clock = ManualClock::new(SIM_START);
    let app = spawn_app_with_clock(&db, Arc::new(clock.clone())).await;
    let first = app.create_tenant(tenant_body("acme", &hourly())).await["active_kid"].as_str().unwrap().to_owned();
    clock.advance(Duration::minutes(50));
    let staged = eventually("the staging tick", || async { app.kids_in_state("acme", "staged").await.pop() }).await;
    let settings = app.settings.clone();
    app.stop().await;

    // Past the rotation time, and past the lease the dead process held.
    clock.advance(Duration::minutes(15));
    let app = TestApp::start(settings, Arc::new(clock.clone())).await.expect("the replacement starts");

    eventually("the staged key activated", || async {
        (app.kids_in_state("acme", "active").await == [staged.as_str()]).then_some(())
    })
    .await;
    let keys = app.keys("acme").await;
    assert_eq!(keys.len(), 2, "no fresh key was created: {keys:#?}");
    assert_eq!(app.key_state("acme", &first).await, "retired");
    let activated = keys.iter().find(|k| k["kid"] == staged.as_str()).unwrap();
    assert_eq!(activated["activated_at"], "2026-01-01T01:05:00Z", "activated by the replacement's first tick");
    assert_eq!(scheduled_events(&db, "key.staged").await.len(), 1);
    assert_eq!(scheduled_events(&db, "key.activated").await.len(), 1);
    app.stop().await;
}

/// No replica ran the loop through the whole staging window (all were down): the first
/// tick after it stages the next key and the active key keeps signing until the new one
/// has been published for stage_lead. A key is never activated unpublished.
async fn a_loop_that_wakes_after_the_rotation_time_still_publishes_the_next_key_stage_lead_ahead(db: TestDatabase) {
    let clock = ManualClock::new(SIM_START);
    let services = replica(&test_settings(&db, &new_master_key()), &clock).await;
    let first = create_tenant(&services.keys, "acme", &hourly()).await;
    clock.advance(Duration::minutes(75));

    assert_eq!(services.rotator.tick().await.unwrap(), Tick { leader: true, staged: 1, ..Tick::default() });
    let rows = key_rows(&services, "acme").await;
    assert_eq!(kids_in(&rows, KeyState::Active), [first.as_str()], "the overdue key still signs");
    let next = kids_in(&rows, KeyState::Staged).pop().unwrap();
    clock.advance(Duration::minutes(10) - Duration::seconds(1));
    assert_eq!(services.rotator.tick().await.unwrap(), Tick { leader: true, ..Tick::default() }, "not yet");
    clock.advance(Duration::seconds(1));
    assert_eq!(services.rotator.tick().await.unwrap(), Tick { leader: true, activated: 1, ..Tick::default() });

    let rows = key_rows(&services, "acme").await;
    let activated = rows.iter().find(|k| k.kid == next).unwrap();
    assert_eq!(activated.activated_at, Some(SIM_START + Duration::minutes(85)), "published 10 min before it signs");
    assert_eq!(kids_in(&rows, KeyState::Retired), [first]);
}
