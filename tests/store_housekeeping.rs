//! Conformance of the storage operations behind background jobs — leases, purging expired
//! rows, re-wrapping data keys — on both backends (`postgres::*`, `sqlite::*`).

mod support;

use keyward::crypto::{MasterKeys, generate};
use keyward::domain::{Policy, SigningAlg, Tenant, TenantId, rotate};
use keyward::keyset::key_owner;
use keyward::store::{self, IssuedAccess, NewKey, NewRefresh, SessionRecord, Store};
use keyward::token::revocation::Revocation;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

use support::TestDatabase;

support::backend_tests!(
    a_lease_is_held_by_one_holder_until_it_expires,
    purge_deletes_only_what_can_no_longer_matter,
    rewrap_is_a_compare_and_set,
);

const T0: OffsetDateTime = datetime!(2026-05-01 00:00:00 UTC);

fn master(spec: &str) -> MasterKeys {
    MasterKeys::parse(spec).unwrap()
}

async fn tenant_with_key(store: &dyn Store, master: &MasterKeys) -> (TenantId, String) {
    let id = TenantId::parse("acme").unwrap();
    let p = |s: &str| s.parse().unwrap();
    let tenant = Tenant {
        id: id.clone(),
        issuer: "https://issuer.test".into(),
        audiences: vec!["api".into()],
        policy: Policy {
            signing_alg: SigningAlg::Es256,
            rotation_period: p("90d"),
            overlap: p("7d"),
            stage_lead: p("2d"),
            access_token_ttl: p("15m"),
            refresh_token_ttl: p("30d"),
        },
        created_at: T0,
        updated_at: T0,
    };
    let generated = generate(SigningAlg::Es256).unwrap();
    let kid = generated.public.kid.clone();
    let sealed = master.seal(generated.private.as_bytes(), key_owner(&id, &kid)).unwrap();
    let fresh = NewKey { public: generated.public, sealed };
    store.create_tenant(&tenant, &rotate(&[], SigningAlg::Es256, false), Some(&fresh), T0, &[]).await.unwrap();
    (id, kid)
}

async fn a_lease_is_held_by_one_holder_until_it_expires(db: TestDatabase) {
    let store = store::connect(&db.url).await.unwrap();
    let until = T0 + Duration::seconds(30);

    assert!(store.acquire_lease("rotation", "a", T0, until).await.unwrap(), "a free lease is taken");
    assert!(!store.acquire_lease("rotation", "b", T0 + Duration::seconds(10), until).await.unwrap(), "held by a");
    assert!(store.acquire_lease("rotation", "a", T0 + Duration::seconds(10), until).await.unwrap(), "a renews");
    assert!(store.acquire_lease("other", "b", T0, until).await.unwrap(), "leases are independent");
    let later = T0 + Duration::seconds(31);
    assert!(
        store.acquire_lease("rotation", "b", later, later + Duration::seconds(30)).await.unwrap(),
        "expired: b takes it"
    );
    assert!(!store.acquire_lease("rotation", "a", later, later + Duration::seconds(30)).await.unwrap(), "now b's");
}

async fn purge_deletes_only_what_can_no_longer_matter(db: TestDatabase) {
    let store = store::connect(&db.url).await.unwrap();
    let master = master(&MasterKeys::generate_spec("k").unwrap());
    let (tenant, kid) = tenant_with_key(&*store, &master).await;
    let session = |id: &str| SessionRecord {
        id: id.into(),
        tenant: tenant.clone(),
        user_id: "alice".into(),
        client_id: None,
        scope: None,
        audience: None,
        claims: serde_json::json!({}),
        created_at: T0,
        expires_at: T0 + Duration::days(30),
        revoked_at: None,
    };
    let refresh = |n: u8, expires_at| NewRefresh { hash: [n; 32], issued_at: T0, expires_at };
    let access = |jti: &str, expires_at| IssuedAccess { jti: jti.into(), kid: kid.clone(), issued_at: T0, expires_at };
    let old = T0 + Duration::minutes(15);
    let recent = T0 + Duration::days(30);
    store.create_session(&session("s-old"), &refresh(1, old), &access("j-old", old), &[]).await.unwrap();
    store.create_session(&session("s-new"), &refresh(2, recent), &access("j-new", recent), &[]).await.unwrap();
    for (jti, forget_after) in [("r-old", old), ("r-new", recent)] {
        let r = Revocation::Token { jti: jti.into(), forget_after };
        store.revoke_token(&tenant, &r, T0, &[]).await.unwrap();
    }

    let purged = store.purge(T0 + Duration::days(1), T0 + Duration::days(1)).await.unwrap();

    assert_eq!((purged.refresh_tokens, purged.revocations, purged.access_tokens), (1, 1, 1));
    let live = store.live_revocations(&tenant, T0).await.unwrap();
    assert_eq!(live, vec![Revocation::Token { jti: "r-new".into(), forget_after: recent }]);
    assert_eq!(store.token_expiry(&tenant, "j-old").await.unwrap(), None);
    assert_eq!(store.token_expiry(&tenant, "j-new").await.unwrap(), Some(recent));
    assert_eq!(store.purge(T0 + Duration::days(1), T0 + Duration::days(1)).await.unwrap().refresh_tokens, 0);
}

async fn rewrap_is_a_compare_and_set(db: TestDatabase) {
    let store = store::connect(&db.url).await.unwrap();
    let old = MasterKeys::generate_spec("old").unwrap();
    let new = MasterKeys::generate_spec("new").unwrap();
    let (tenant, kid) = tenant_with_key(&*store, &master(&old)).await;
    let both = master(&format!("{},{}", *new, *old));
    let item = store.sealed_items().await.unwrap().into_iter().find(|i| i.id == kid).unwrap();
    let rewrapped = both.rewrap(&item.sealed, key_owner(&tenant, &kid)).unwrap().unwrap();

    assert!(store.rewrap(&item, &rewrapped).await.unwrap(), "first writer wins");
    assert!(!store.rewrap(&item, &rewrapped).await.unwrap(), "a stale read does not overwrite");

    let stored = store.sealed_items().await.unwrap().into_iter().find(|i| i.id == kid).unwrap();
    assert_eq!(stored.sealed.kek_id, "new");
    let plain = master(&new).open(&stored.sealed, key_owner(&tenant, &kid)).unwrap();
    assert_eq!(plain, master(&old).open(&item.sealed, key_owner(&tenant, &kid)).unwrap());
}
