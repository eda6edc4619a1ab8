//! The storage conformance suite: one specification of the `Store` trait, run against every
//! implementation (`postgres::*` and `sqlite::*`, see `support::backend_tests!`), each test
//! on a fresh database of its own.
//!
//! The in-memory `Plan::apply` is the reference: whatever a lifecycle plan does to a key
//! list in memory, a store must do to its rows, all or nothing, with the database itself
//! refusing a second active key.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use keyward::clock::{Clock, SystemClock};
use keyward::crypto::{MasterKeys, PrivatePkcs8, PublicJwk, Sealed, generate};
use keyward::domain::{
    Actor, AuditEvent, EventKind, Key, KeyRef, KeyState, Period, Plan, Policy, SigningAlg, StalePlan, Tenant, TenantId,
    Transition, activate, revoke, rotate, schedule, stage,
};
use keyward::keyset::key_owner;
use keyward::store::{self, NewKey, Store, StoreError, StoredKey, TenantVersion};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestCaseResult, TestRunner};
use serde_json::json;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

use support::TestDatabase;
use support::raw::{AuditRow, RawConnection};

support::backend_tests!(
    migrations_are_idempotent,
    created_tenant_reads_back_with_one_active_key,
    creating_an_existing_tenant_is_a_conflict_and_writes_nothing,
    update_replaces_the_policy_and_bumps_the_version,
    updating_an_unknown_tenant_is_not_found_and_writes_nothing,
    an_update_computed_from_an_older_version_is_stale_and_writes_nothing,
    stage_then_activate_matches_the_reference_model,
    stale_plan_changes_nothing,
    applying_the_same_plan_twice_is_refused_as_stale,
    second_active_key_is_refused_by_the_database,
    plan_that_would_leave_two_active_keys_is_a_conflict,
    private_keys_are_sealed_at_rest_for_every_algorithm,
    tenants_are_listed_by_id_with_their_versions,
    unknown_tenants_are_absent,
    meta_is_written_once,
    ping_answers,
    lifecycle_sequences_match_the_reference_model,
);

// ------------------------------------------------------------------------------ fixtures

/// A time with a non-zero microsecond part, so a store that dropped them would show.
const T0: OffsetDateTime = datetime!(2026-03-01 12:00:00.123456 UTC);
const HOUR: i64 = 3_600;
const DAY: i64 = 86_400;
/// The clock-skew allowance the rotation loop passes to `schedule`.
const LEEWAY: Period = Period::from_secs(60);

fn runbook_policy() -> Policy {
    Policy {
        signing_alg: SigningAlg::Es256,
        rotation_period: Period::from_secs(90 * DAY as u64),
        overlap: Period::from_secs(7 * DAY as u64),
        stage_lead: Period::from_secs(2 * DAY as u64),
        access_token_ttl: Period::from_secs(15 * 60),
        refresh_token_ttl: Period::from_secs(30 * DAY as u64),
    }
}

fn tenant_id(id: &str) -> TenantId {
    TenantId::parse(id).unwrap()
}

fn new_tenant(id: &str, at: OffsetDateTime) -> Tenant {
    Tenant {
        id: tenant_id(id),
        issuer: format!("https://id.example/{id}"),
        audiences: vec!["api".into(), "admin-console".into()],
        policy: runbook_policy(),
        created_at: at,
        updated_at: at,
    }
}

fn master_keys() -> MasterKeys {
    MasterKeys::parse(&MasterKeys::generate_spec("test-kek").unwrap()).unwrap()
}

/// Fresh key material sealed the way the service seals it, and its PKCS#8 for the checks
/// on what is at rest.
fn new_key(master: &MasterKeys, tenant: &TenantId, alg: SigningAlg) -> (NewKey, PrivatePkcs8) {
    let generated = generate(alg).unwrap();
    let sealed = master.seal(generated.private.as_bytes(), key_owner(tenant, &generated.public.kid)).unwrap();
    (NewKey { public: generated.public, sealed }, generated.private)
}

fn admin() -> Actor {
    Actor { name: "admin:3f2a9c".into(), ip: Some("192.0.2.10".into()) }
}

/// The audit events the service writes with a plan: one per key that changes.
fn events_for(plan: &Plan, tenant: &TenantId, fresh_kid: Option<&str>, at: OffsetDateTime) -> Vec<AuditEvent> {
    let fresh_kid = fresh_kid.unwrap_or("<none>");
    let mut events = Vec::new();
    if plan.fresh.is_some() {
        events.push(AuditEvent::new(EventKind::KeyStaged, Some(tenant), &admin(), at).kid(fresh_kid));
    }
    for t in &plan.transitions {
        let kid = match &t.key {
            KeyRef::Existing(kid) => kid.as_str(),
            KeyRef::Fresh => fresh_kid,
        };
        let event = AuditEvent::new(EventKind::for_key_state(t.to), Some(tenant), &admin(), at);
        events.push(event.kid(kid).detail(json!({ "from": t.from.as_str() })));
    }
    events
}

fn metas(keys: &[StoredKey]) -> Vec<Key> {
    keys.iter().map(|k| k.meta.clone()).collect()
}

/// Keys in one order whatever the backend's collation: oldest first, then by kid bytes.
fn sorted(mut keys: Vec<Key>) -> Vec<Key> {
    keys.sort_by(|a, b| (a.created_at, &a.kid).cmp(&(b.created_at, &b.kid)));
    keys
}

/// A connected store holding one tenant, created the way the service creates one: with a
/// first key that is active at once.
struct Fixture {
    store: Arc<dyn Store>,
    raw: RawConnection,
    master: MasterKeys,
    tenant: Tenant,
    first_kid: String,
}

impl Fixture {
    async fn new(db: &TestDatabase, id: &str) -> Fixture {
        let store = store::connect(&db.url).await.unwrap();
        let master = master_keys();
        let tenant = new_tenant(id, T0);
        let first_kid = create(&*store, &master, &tenant).await.public.kid;
        Fixture { store, raw: db.raw().await, master, tenant, first_kid }
    }

    fn id(&self) -> &TenantId {
        &self.tenant.id
    }

    /// Generates the plan's fresh key (if it has one) and applies the plan with its events;
    /// returns the fresh kid.
    async fn apply(&self, plan: &Plan, now: OffsetDateTime) -> Result<Option<String>, StoreError> {
        let fresh = plan.fresh.map(|alg| new_key(&self.master, self.id(), alg).0);
        let fresh_kid = fresh.as_ref().map(|k| k.public.kid.clone());
        let events = events_for(plan, self.id(), fresh_kid.as_deref(), now);
        let version = self.store.load_tenant(self.id()).await?.map(|t| t.version).unwrap_or_default();
        self.store.apply_plan(self.id(), version, plan, fresh.as_ref(), now, &events).await?;
        Ok(fresh_kid)
    }

    async fn keys(&self) -> Vec<Key> {
        metas(&self.store.list_keys(self.id()).await.unwrap())
    }

    async fn version(&self) -> i64 {
        self.store.load_tenant(self.id()).await.unwrap().unwrap().version
    }

    /// Everything a failed operation must leave untouched.
    async fn everything(&mut self) -> Everything {
        let loaded = self.store.load_tenant(self.id()).await.unwrap().unwrap();
        Everything {
            tenant: loaded.tenant,
            version: loaded.version,
            keys: loaded.keys.into_iter().map(|k| (k.meta, k.public, k.sealed)).collect(),
            audit: self.raw.audit_events().await,
        }
    }
}

#[derive(Debug, PartialEq)]
struct Everything {
    tenant: Tenant,
    version: i64,
    keys: Vec<(Key, PublicJwk, Sealed)>,
    audit: Vec<AuditRow>,
}

/// Creates `tenant` with its first key, active at `tenant.created_at`; returns that key.
async fn create(store: &dyn Store, master: &MasterKeys, tenant: &Tenant) -> NewKey {
    let now = tenant.created_at;
    let plan = rotate(&[], tenant.policy.signing_alg, false);
    let (fresh, _) = new_key(master, &tenant.id, tenant.policy.signing_alg);
    let events = events_for(&plan, &tenant.id, Some(&fresh.public.kid), now);
    store.create_tenant(tenant, &plan, Some(&fresh), now, &events).await.unwrap();
    fresh
}

// --------------------------------------------------------------------------------- tests

async fn migrations_are_idempotent(db: TestDatabase) {
    let store = store::connect(&db.url).await.unwrap();
    let mut raw = db.raw().await;
    let applied = "SELECT COUNT(*) FROM _sqlx_migrations";
    let before = raw.count(applied, &[]).await;

    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    let second_replica = store::connect(&db.url).await.unwrap();

    assert!(before >= 1, "connect runs the migrations");
    assert_eq!(raw.count(applied, &[]).await, before, "none ran twice");
    assert_eq!(second_replica.list_tenants().await.unwrap(), vec![]);
    let expected_backend = match db.backend {
        support::Backend::Postgres => "postgres",
        support::Backend::Sqlite => "sqlite",
    };
    assert_eq!(store.backend(), expected_backend);
}

async fn created_tenant_reads_back_with_one_active_key(db: TestDatabase) {
    let store = store::connect(&db.url).await.unwrap();
    let master = master_keys();
    let now = SystemClock.now();
    let tenant = new_tenant("acme", now);
    let plan = rotate(&[], SigningAlg::Es256, false);
    let (fresh, _) = new_key(&master, &tenant.id, SigningAlg::Es256);
    let kid = fresh.public.kid.clone();
    let mut events = vec![
        AuditEvent::new(EventKind::TenantCreated, Some(&tenant.id), &admin(), now)
            .detail(json!({ "issuer": tenant.issuer, "audiences": tenant.audiences })),
    ];
    events.extend(events_for(&plan, &tenant.id, Some(&kid), now));

    store.create_tenant(&tenant, &plan, Some(&fresh), now, &events).await.unwrap();

    let loaded = store.load_tenant(&tenant.id).await.unwrap().unwrap();
    assert_eq!(loaded.tenant, tenant);
    assert_eq!(loaded.keys.len(), 1);
    let key = &loaded.keys[0];
    assert_eq!(
        key.meta,
        Key {
            kid: kid.clone(),
            alg: SigningAlg::Es256,
            state: KeyState::Active,
            created_at: now,
            activated_at: Some(now),
            retired_at: None,
            expired_at: None,
            revoked_at: None,
            last_token_exp: None,
        }
    );
    assert_eq!(key.public, fresh.public);
    assert!(key.sealed == fresh.sealed, "the sealed private half reads back unchanged");
    assert_eq!(store.get_tenant(&tenant.id).await.unwrap(), Some(tenant.clone()));
    assert_eq!(
        store.tenant_versions().await.unwrap(),
        vec![TenantVersion { id: tenant.id, version: loaded.version, revocations: 0 }]
    );
    let written: Vec<AuditRow> = events.iter().map(AuditRow::from).collect();
    assert_eq!(db.raw().await.audit_events().await, written);
    assert_eq!(
        written.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
        ["tenant.created", "key.staged", "key.activated"]
    );
}

async fn creating_an_existing_tenant_is_a_conflict_and_writes_nothing(db: TestDatabase) {
    let mut fx = Fixture::new(&db, "acme").await;
    let before = fx.everything().await;
    let again = Tenant { issuer: "https://elsewhere.example".into(), ..new_tenant("acme", T0 + Duration::hours(1)) };
    let plan = rotate(&[], SigningAlg::EdDsa, false);
    let (fresh, _) = new_key(&fx.master, fx.id(), SigningAlg::EdDsa);
    let events = events_for(&plan, fx.id(), Some(&fresh.public.kid), again.created_at);

    let result = fx.store.create_tenant(&again, &plan, Some(&fresh), again.created_at, &events).await;

    assert!(matches!(result, Err(StoreError::Conflict("tenant"))), "got {result:?}");
    assert_eq!(fx.everything().await, before);
}

async fn update_replaces_the_policy_and_bumps_the_version(db: TestDatabase) {
    let mut fx = Fixture::new(&db, "acme").await;
    let before = fx.everything().await;
    let later = T0 + Duration::hours(5);
    let updated = Tenant {
        issuer: "https://id.example/acme/v2".into(),
        audiences: vec!["billing".into()],
        policy: Policy {
            signing_alg: SigningAlg::EdDsa,
            rotation_period: Period::from_secs(30 * DAY as u64),
            overlap: Period::from_secs(2 * DAY as u64),
            stage_lead: Period::from_secs(DAY as u64),
            access_token_ttl: Period::from_secs(5 * 60),
            refresh_token_ttl: Period::from_secs(7 * DAY as u64),
        },
        updated_at: later,
        ..fx.tenant.clone()
    };
    let event = AuditEvent::new(EventKind::TenantUpdated, Some(fx.id()), &admin(), later)
        .detail(json!({ "rotation_period": "30d", "signing_alg": "EdDSA" }));

    fx.store.update_tenant(&updated, before.version, std::slice::from_ref(&event)).await.unwrap();

    let after = fx.everything().await;
    assert_eq!(after.tenant, updated);
    assert_eq!(after.tenant.created_at, T0, "creation time is not the update's to change");
    assert_eq!(after.version, before.version + 1);
    assert_eq!(after.keys, before.keys);
    assert_eq!(after.audit.last(), Some(&AuditRow::from(&event)));
    assert_eq!(after.audit.len(), before.audit.len() + 1);
}

async fn an_update_computed_from_an_older_version_is_stale_and_writes_nothing(db: TestDatabase) {
    let mut fx = Fixture::new(&db, "acme").await;
    let before = fx.everything().await;
    let updated = Tenant { issuer: "https://elsewhere".into(), ..fx.tenant.clone() };

    let result = fx.store.update_tenant(&updated, before.version - 1, &[]).await;

    assert!(matches!(result, Err(StoreError::Stale(_))), "got {result:?}");
    assert_eq!(fx.everything().await, before);
}

async fn updating_an_unknown_tenant_is_not_found_and_writes_nothing(db: TestDatabase) {
    let mut fx = Fixture::new(&db, "acme").await;
    let before = fx.everything().await;
    let ghost = new_tenant("ghost", T0);
    let event = AuditEvent::new(EventKind::TenantUpdated, Some(&ghost.id), &admin(), T0);

    let result = fx.store.update_tenant(&ghost, 2, &[event]).await;

    assert!(matches!(result, Err(StoreError::NotFound)), "got {result:?}");
    assert_eq!(fx.store.get_tenant(&ghost.id).await.unwrap(), None);
    assert_eq!(fx.everything().await, before, "not even the audit event is written");
}

async fn stage_then_activate_matches_the_reference_model(db: TestDatabase) {
    let mut fx = Fixture::new(&db, "acme").await;
    let mut model = fx.keys().await;
    let version = fx.version().await;
    let audit = fx.raw.audit_count().await;
    let staged_at = T0 + Duration::hours(1);
    let activated_at = staged_at + runbook_policy().stage_lead.as_duration() + Duration::seconds(1);

    let stage_plan = stage(SigningAlg::EdDsa);
    let new_kid = fx.apply(&stage_plan, staged_at).await.unwrap().unwrap();
    stage_plan.apply(&mut model, staged_at, Some(&new_kid)).unwrap();
    assert_eq!(sorted(fx.keys().await), sorted(model.clone()));
    let activate_plan = activate(&model, &new_kid, activated_at, runbook_policy().stage_lead, false).unwrap();
    fx.apply(&activate_plan, activated_at).await.unwrap();
    activate_plan.apply(&mut model, activated_at, None).unwrap();

    let keys = fx.keys().await;
    assert_eq!(sorted(keys.clone()), sorted(model));
    let by_kid: HashMap<&str, &Key> = keys.iter().map(|k| (k.kid.as_str(), k)).collect();
    let (old, new) = (by_kid[fx.first_kid.as_str()], by_kid[new_kid.as_str()]);
    assert_eq!((old.state, old.activated_at, old.retired_at), (KeyState::Retired, Some(T0), Some(activated_at)));
    assert_eq!(
        (new.alg, new.state, new.created_at, new.activated_at, new.retired_at),
        (SigningAlg::EdDsa, KeyState::Active, staged_at, Some(activated_at), None)
    );
    assert_eq!(fx.version().await, version + 2, "one version per applied plan");
    assert_eq!(fx.raw.audit_count().await, audit + 3, "staged, retired, activated");
}

/// Two replicas rotate at once from the same data. The second plan inserts its fresh key
/// before it finds the old key no longer active: the insert must be rolled back with
/// everything else.
async fn stale_plan_changes_nothing(db: TestDatabase) {
    let mut fx = Fixture::new(&db, "acme").await;
    let keys = fx.keys().await;
    let now = T0 + Duration::days(1);
    let first_replica = rotate(&keys, SigningAlg::Es256, false);
    let second_replica = rotate(&keys, SigningAlg::Es256, false);
    fx.apply(&first_replica, now).await.unwrap();
    let before = fx.everything().await;

    let result = fx.apply(&second_replica, now).await;

    let expected = StalePlan { kid: fx.first_kid.clone(), expected: "active" };
    assert!(matches!(&result, Err(StoreError::Stale(stale)) if *stale == expected), "got {result:?}");
    assert_eq!(fx.everything().await, before);
}

async fn applying_the_same_plan_twice_is_refused_as_stale(db: TestDatabase) {
    let mut fx = Fixture::new(&db, "acme").await;
    let staged_at = T0 + Duration::hours(1);
    let new_kid = fx.apply(&stage(SigningAlg::Es256), staged_at).await.unwrap().unwrap();
    let now = staged_at + Duration::days(3);
    let plan = activate(&fx.keys().await, &new_kid, now, runbook_policy().stage_lead, false).unwrap();
    fx.apply(&plan, now).await.unwrap();
    let before = fx.everything().await;

    let result = fx.apply(&plan, now + Duration::seconds(1)).await;

    let expected = StalePlan { kid: fx.first_kid.clone(), expected: "active" };
    assert!(matches!(&result, Err(StoreError::Stale(stale)) if *stale == expected), "got {result:?}");
    assert_eq!(fx.everything().await, before);
}

async fn second_active_key_is_refused_by_the_database(db: TestDatabase) {
    let mut fx = Fixture::new(&db, "acme").await;
    create(&*fx.store, &fx.master, &new_tenant("other", T0)).await;
    let staged_kid = fx.apply(&stage(SigningAlg::Es256), T0 + Duration::hours(1)).await.unwrap().unwrap();
    let before = fx.everything().await;

    let result = fx
        .raw
        .execute("UPDATE keys SET state = 'active' WHERE tenant_id = $1 AND kid = $2", &["acme", &staged_kid])
        .await;

    let error = result.expect_err("the database accepted a second active key");
    let db_error = error.as_database_error().expect("a database error");
    assert!(db_error.is_unique_violation(), "not a unique violation: {db_error}");
    assert_eq!(fx.everything().await, before);
    let active = fx.raw.count("SELECT COUNT(*) FROM keys WHERE state = 'active'", &[]).await;
    assert_eq!(active, 2, "one per tenant: the constraint is per tenant, not per table");
}

async fn plan_that_would_leave_two_active_keys_is_a_conflict(db: TestDatabase) {
    let mut fx = Fixture::new(&db, "acme").await;
    let staged_kid = fx.apply(&stage(SigningAlg::Es256), T0 + Duration::hours(1)).await.unwrap().unwrap();
    let before = fx.everything().await;
    let promote_only = Plan {
        fresh: None,
        transitions: vec![Transition {
            key: KeyRef::Existing(staged_kid),
            from: KeyState::Staged,
            to: KeyState::Active,
        }],
    };

    let result = fx.apply(&promote_only, T0 + Duration::days(3)).await;

    assert!(matches!(result, Err(StoreError::Conflict(_))), "got {result:?}");
    assert_eq!(fx.everything().await, before);
}

async fn private_keys_are_sealed_at_rest_for_every_algorithm(db: TestDatabase) {
    let mut fx = Fixture::new(&db, "acme").await;
    for (i, alg) in SigningAlg::ALL.into_iter().enumerate() {
        let now = T0 + Duration::hours(i as i64 + 1);
        let (fresh, pkcs8) = new_key(&fx.master, fx.id(), alg);
        let kid = fresh.public.kid.clone();
        let events = events_for(&stage(alg), fx.id(), Some(&kid), now);
        let version = fx.store.load_tenant(fx.id()).await.unwrap().unwrap().version;
        fx.store.apply_plan(fx.id(), version, &stage(alg), Some(&fresh), now, &events).await.unwrap();

        let row = fx.raw.key_row("acme", &kid).await;

        let plain = pkcs8.as_bytes();
        assert_eq!(row.private_key, fresh.sealed.ciphertext, "{alg}: stored as sealed");
        assert_eq!((row.kek_id.as_str(), &row.wrapped_dek), ("test-kek", &fresh.sealed.wrapped_dek), "{alg}");
        for column in [&row.private_key, &row.wrapped_dek] {
            assert!(!contains(column, plain), "{alg}: PKCS#8 in the clear");
            assert!(!plain.windows(16).any(|w| contains(column, w)), "{alg}: a 16-byte run of the PKCS#8 at rest");
        }
        let stored = fx.store.list_keys(fx.id()).await.unwrap().into_iter().find(|k| k.meta.kid == kid).unwrap();
        assert_eq!(stored.meta.alg, alg);
        let opened = fx.master.open(&stored.sealed, key_owner(fx.id(), &kid)).unwrap();
        assert_eq!(opened.as_slice(), plain, "{alg}: the master key gives the PKCS#8 back");
        let elsewhere = fx.master.open(&stored.sealed, key_owner(&tenant_id("other"), &kid));
        assert!(elsewhere.is_err(), "{alg}: sealed for this tenant only");
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn tenants_are_listed_by_id_with_their_versions(db: TestDatabase) {
    let store = store::connect(&db.url).await.unwrap();
    let master = master_keys();
    let tenants: Vec<Tenant> = ["zeta", "alpha", "mid-1"].iter().map(|id| new_tenant(id, T0)).collect();
    for tenant in &tenants {
        create(&*store, &master, tenant).await;
    }
    let before = store.tenant_versions().await.unwrap();
    let mid = Tenant {
        issuer: "https://id.example/mid-1/v2".into(),
        updated_at: T0 + Duration::hours(1),
        ..tenants[2].clone()
    };

    let version = store.load_tenant(&mid.id).await.unwrap().unwrap().version;
    store.update_tenant(&mid, version, &[]).await.unwrap();

    let listed = store.list_tenants().await.unwrap();
    assert_eq!(listed, vec![tenants[1].clone(), mid.clone(), tenants[0].clone()]);
    let ids: Vec<&str> = before.iter().map(|v| v.id.as_str()).collect();
    assert_eq!(ids, ["alpha", "mid-1", "zeta"]);
    let after = store.tenant_versions().await.unwrap();
    let bumped: Vec<i64> = before.iter().map(|v| if v.id == mid.id { v.version + 1 } else { v.version }).collect();
    assert_eq!(after.iter().map(|v| v.version).collect::<Vec<_>>(), bumped);
    for (version, tenant) in after.iter().zip(&listed) {
        assert_eq!(version.id, tenant.id);
        assert_eq!(store.load_tenant(&tenant.id).await.unwrap().unwrap().version, version.version);
    }
}

async fn unknown_tenants_are_absent(db: TestDatabase) {
    let fx = Fixture::new(&db, "acme").await;
    let nobody = tenant_id("nobody");

    assert_eq!(fx.store.get_tenant(&nobody).await.unwrap(), None);
    assert!(fx.store.load_tenant(&nobody).await.unwrap().is_none());
    assert!(fx.store.list_keys(&nobody).await.unwrap().is_empty());
    assert_eq!(fx.store.list_tenants().await.unwrap(), vec![fx.tenant.clone()]);
}

async fn meta_is_written_once(db: TestDatabase) {
    let store = store::connect(&db.url).await.unwrap();

    let first = store.insert_meta("admin_secret_sha256", "first").await.unwrap();
    let second = store.insert_meta("admin_secret_sha256", "second").await.unwrap();

    assert!(first, "the first insert inserts");
    assert!(!second, "the second insert does nothing");
    assert_eq!(store.get_meta("admin_secret_sha256").await.unwrap().as_deref(), Some("first"));
    assert_eq!(store.get_meta("never_set").await.unwrap(), None);
}

async fn ping_answers(db: TestDatabase) {
    let store = store::connect(&db.url).await.unwrap();

    store.ping().await.unwrap();
}

// ------------------------------------------------------------------ the lifecycle property

/// One step of a random history: wait, then ask the planner for something.
#[derive(Debug, Clone)]
struct Step {
    wait: Duration,
    op: Op,
}

#[derive(Debug, Clone)]
enum Op {
    Stage(SigningAlg),
    /// Activate the key at this position, whatever its state: refusals are part of it.
    Activate {
        key: Index,
        force: bool,
    },
    Rotate {
        emergency: bool,
    },
    /// Revoke the key at this position, or every active key.
    Revoke {
        key: Option<Index>,
    },
    /// Whatever the rotation loop finds due.
    Schedule,
    /// The previous plan again, as a replica with stale data would apply it.
    Replay,
}

fn histories() -> impl Strategy<Value = Vec<Step>> {
    // RSA generation is slow, and the lifecycle does not depend on the algorithm.
    let alg = prop_oneof![Just(SigningAlg::Es256), Just(SigningAlg::EdDsa)];
    let op = prop_oneof![
        3 => alg.prop_map(Op::Stage),
        2 => (any::<Index>(), any::<bool>()).prop_map(|(key, force)| Op::Activate { key, force }),
        1 => any::<bool>().prop_map(|emergency| Op::Rotate { emergency }),
        1 => proptest::option::of(any::<Index>()).prop_map(|key| Op::Revoke { key }),
        3 => Just(Op::Schedule),
        2 => Just(Op::Replay),
    ];
    let wait = prop_oneof![Just(0), Just(1), Just(HOUR), Just(2 * DAY + 1), Just(8 * DAY), Just(91 * DAY)]
        .prop_map(Duration::seconds);
    proptest::collection::vec((wait, op).prop_map(|(wait, op)| Step { wait, op }), 1..=15)
}

/// Random histories of lifecycle operations, each on a tenant of its own: after every step
/// the store holds exactly what `Plan::apply` computes in memory, including refusing the
/// same stale plans, and exactly one key is active.
async fn lifecycle_sequences_match_the_reference_model(db: TestDatabase) {
    let store = store::connect(&db.url).await.unwrap();
    let raw = Mutex::new(db.raw().await);
    let runtime = tokio::runtime::Handle::current();
    // proptest's runner is synchronous (it re-runs the body to shrink a failure), so it
    // runs on a blocking thread and drives each history on this runtime through the
    // handle, while this test's thread awaits it and so keeps the runtime's I/O turning.
    let outcome = tokio::task::spawn_blocking(move || {
        let config = Config { cases: 20, max_shrink_iters: 256, failure_persistence: None, ..Config::default() };
        let master = master_keys();
        let tenants = AtomicUsize::new(0);
        TestRunner::new(config).run(&histories(), |history| {
            let id = tenant_id(&format!("history-{}", tenants.fetch_add(1, Ordering::Relaxed)));
            let mut raw = raw.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            runtime.block_on(replay_history(&*store, &mut raw, &master, &id, &history))
        })
    })
    .await
    .unwrap();
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
}

fn fail(e: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

async fn replay_history(
    store: &dyn Store,
    raw: &mut RawConnection,
    master: &MasterKeys,
    id: &TenantId,
    history: &[Step],
) -> TestCaseResult {
    let tenant = new_tenant(id.as_str(), T0);
    let policy = tenant.policy.clone();
    let first = create(store, master, &tenant).await;
    let mut model = Vec::new();
    rotate(&[], policy.signing_alg, false).apply(&mut model, T0, Some(&first.public.kid)).map_err(fail)?;
    let mut material = HashMap::from([(first.public.kid.clone(), first)]);
    let mut version = store.load_tenant(id).await.map_err(fail)?.ok_or_else(|| fail("tenant missing"))?.version;
    let audit_sql = "SELECT COUNT(*) FROM audit_events WHERE tenant_id = $1";
    let mut audit = raw.count(audit_sql, &[id.as_str()]).await;
    let mut now = T0;
    let mut previous: Option<Plan> = None;

    for step in history {
        now += step.wait;
        let keys = model.clone();
        let pick = |i: &Index| keys[i.index(keys.len())].kid.clone();
        let planned = match &step.op {
            Op::Stage(alg) => Some(stage(*alg)),
            Op::Activate { key, force } => activate(&keys, &pick(key), now, policy.stage_lead, *force).ok(),
            Op::Rotate { emergency } => Some(rotate(&keys, policy.signing_alg, *emergency)),
            Op::Revoke { key } => revoke(&keys, key.as_ref().map(pick).as_deref(), policy.signing_alg).ok(),
            Op::Schedule => Some(schedule(&keys, &policy, now, LEEWAY)),
            Op::Replay => previous.clone(),
        };
        if let Some(plan) = planned.filter(|p| !p.is_empty()) {
            let fresh = plan.fresh.map(|alg| new_key(master, id, alg).0);
            let fresh_kid = fresh.as_ref().map(|k| k.public.kid.clone());
            let events = events_for(&plan, id, fresh_kid.as_deref(), now);

            let expected = plan.apply(&mut model, now, fresh_kid.as_deref());
            let outcome = store.apply_plan(id, version, &plan, fresh.as_ref(), now, &events).await;

            match (expected, outcome) {
                (Ok(()), Ok(())) => {
                    version += 1;
                    audit += events.len() as i64;
                    if let Some(fresh) = fresh {
                        material.insert(fresh.public.kid.clone(), fresh);
                    }
                }
                (Err(stale), Err(StoreError::Stale(found))) => prop_assert_eq!(found, stale),
                (expected, outcome) => {
                    return Err(fail(format!("{plan:?}: the model says {expected:?}, the store {outcome:?}")));
                }
            }
            previous = Some(plan);
        }

        let loaded = store.load_tenant(id).await.map_err(fail)?.ok_or_else(|| fail("tenant missing"))?;
        let listed = store.list_keys(id).await.map_err(fail)?;
        prop_assert_eq!(sorted(metas(&loaded.keys)), sorted(model.clone()), "after {:?}", step);
        prop_assert_eq!(metas(&listed), metas(&loaded.keys), "list_keys and load_tenant agree");
        prop_assert!(listed.windows(2).all(|w| w[0].meta.created_at <= w[1].meta.created_at), "oldest first");
        prop_assert_eq!(loaded.version, version, "one version per applied plan, none per refused one");
        prop_assert_eq!(raw.count(audit_sql, &[id.as_str()]).await, audit, "events only with applied plans");
        let active = loaded.keys.iter().filter(|k| k.meta.state == KeyState::Active).count();
        prop_assert_eq!(active, 1, "exactly one active key after {:?}", step);
        for key in &loaded.keys {
            let written = &material[&key.meta.kid];
            prop_assert_eq!(&key.public, &written.public);
            prop_assert!(key.sealed == written.sealed, "sealed key of {} changed", key.meta.kid);
        }
    }
    Ok(())
}
