//! Key lifecycle operations. Each one loads the tenant's keys, asks the pure planner in
//! `domain` what to change, generates key material if the plan needs a fresh key, and
//! has the store apply plan and audit events in one transaction. The new state is then
//! installed in this replica's registry before the call returns (read-your-writes).

use std::sync::Arc;

use time::OffsetDateTime;

use super::ServiceError;
use super::views::KeyView;
use crate::clock::Clock;
use crate::crypto::{MasterKeys, generate};
use crate::domain::{Actor, AuditEvent, EventKind, Key, KeyRef, KeyState, Period, Plan, Policy, SigningAlg, TenantId};
use crate::keyset::{Registry, TenantKeys, key_owner};
use crate::metrics::Metrics;
use crate::store::{LoadedTenant, NewKey, Store, StoreError, StoredKey};
use crate::token::cache::VerifiedCache;

use super::notify::Notifier;

/// How often a plan computed from data that changed underneath is recomputed before the
/// caller gets a 409. Each retry waits a little longer, with jitter, so a burst of
/// concurrent calls on one tenant spreads out instead of colliding again.
const STALE_RETRIES: u32 = 8;

/// The settings the use cases depend on.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    pub jwks_max_age: Period,
    pub leeway: Period,
    pub tenant_defaults: Policy,
    /// Base of default issuers: `<public_url>/a/<tenant>`.
    pub public_url: String,
}

pub struct KeyService {
    pub(super) store: Arc<dyn Store>,
    pub(super) master: Arc<MasterKeys>,
    pub(super) clock: Arc<dyn Clock>,
    registry: Arc<Registry>,
    /// Emptied of a key's tokens when the key is revoked.
    cache: Arc<VerifiedCache>,
    /// Tells other replicas about changes made here.
    pub(super) notifier: Arc<Notifier>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) settings: ServiceSettings,
}

/// What a [`KeyService`] is built from (see the fields of `KeyService` for what each is for).
pub struct KeyServiceDeps {
    pub store: Arc<dyn Store>,
    pub master: Arc<MasterKeys>,
    pub clock: Arc<dyn Clock>,
    pub registry: Arc<Registry>,
    pub cache: Arc<VerifiedCache>,
    pub notifier: Arc<Notifier>,
    pub metrics: Arc<Metrics>,
    pub settings: ServiceSettings,
}

/// One key's move, as applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyChange {
    pub kid: String,
    pub from: KeyState,
    pub to: KeyState,
}

impl KeyService {
    pub fn new(deps: KeyServiceDeps) -> KeyService {
        let KeyServiceDeps { store, master, clock, registry, cache, notifier, metrics, settings } = deps;
        KeyService { store, master, clock, registry, cache, notifier, metrics, settings }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn settings(&self) -> &ServiceSettings {
        &self.settings
    }

    /// The id of the master key that encrypts new material.
    pub fn master_key_id(&self) -> &str {
        self.master.primary_id()
    }

    pub fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    /// Builds and installs the snapshot of every tenant. Fails on the first key that cannot
    /// be decrypted: a replica with a wrong master key must not start.
    pub async fn load_all(&self) -> Result<usize, ServiceError> {
        let tenants = self.store.list_tenants().await?;
        for tenant in &tenants {
            self.reload(&tenant.id).await?;
        }
        Ok(tenants.len())
    }

    /// Rebuilds one tenant's snapshot from the database (reconciliation, notices, start).
    pub async fn reload(&self, tenant: &TenantId) -> Result<(), ServiceError> {
        let loaded = self.store.load_tenant(tenant).await?.ok_or(ServiceError::NotFound("tenant"))?;
        self.install(self.build(loaded)?);
        Ok(())
    }

    /// The snapshot of `loaded`, its keys decrypted: fails rather than serve or sign with a
    /// key this replica cannot open.
    pub(super) fn build(&self, loaded: LoadedTenant) -> Result<TenantKeys, ServiceError> {
        Ok(TenantKeys::build(loaded, &self.master)?)
    }

    /// Installs the snapshot of a change made here and tells the other replicas.
    pub(super) async fn publish(&self, snapshot: TenantKeys) {
        let (tenant, version) = (snapshot.tenant.id.clone(), snapshot.version);
        self.install(snapshot);
        self.notifier.keys_changed(&tenant, version).await;
    }

    /// After a change made here has been committed: rebuilds the tenant from the database
    /// and publishes it. The change stands whatever happens now, so a failure is logged,
    /// not returned (a caller told "failed" would retry a committed change); reconciliation
    /// installs it within `reconcile_interval`.
    pub(super) async fn reload_and_publish(&self, tenant: &TenantId) {
        let built = match self.store.load_tenant(tenant).await {
            Ok(Some(loaded)) => self.build(loaded),
            Ok(None) => return,
            Err(e) => Err(e.into()),
        };
        match built {
            Ok(snapshot) => self.publish(snapshot).await,
            Err(e) => {
                self.metrics.background_failures.with_label_values(&["reload"]).inc();
                tracing::warn!(tenant = %tenant, error = %e, "could not reload after a committed change");
            }
        }
    }

    /// Swaps the snapshot in; a key it shows newly revoked leaves the verified-token cache.
    fn install(&self, snapshot: TenantKeys) {
        let tenant = snapshot.tenant.id.clone();
        let revoked: Vec<String> = match self.registry.get(tenant.as_str()) {
            Some(before) => snapshot.newly_revoked(&before).map(str::to_owned).collect(),
            None => Vec::new(),
        };
        self.registry.install(snapshot);
        for kid in revoked {
            self.cache.forget_kid(tenant.as_str(), &kid);
        }
    }

    pub async fn list_keys(&self, tenant: &TenantId) -> Result<Vec<KeyView>, ServiceError> {
        let loaded = self.store.load_tenant(tenant).await?.ok_or(ServiceError::NotFound("tenant"))?;
        Ok(KeyView::all(&loaded, self.settings.leeway))
    }

    /// Publishes a new key that does not sign yet.
    pub async fn stage(
        &self,
        tenant: &TenantId,
        alg: Option<SigningAlg>,
        actor: &Actor,
    ) -> Result<KeyView, ServiceError> {
        let (loaded, _) = self
            .change(tenant, actor, serde_json::Value::Null, |t, _| {
                Ok(crate::domain::stage(alg.unwrap_or(t.tenant.policy.signing_alg)))
            })
            .await?;
        // The staged key is the newest key; `change` returns the post-change state.
        let views = KeyView::all(&loaded, self.settings.leeway);
        views
            .into_iter()
            .filter(|k| k.state == KeyState::Staged)
            .max_by_key(|k| k.created_at)
            .ok_or_else(|| ServiceError::Internal(anyhow::anyhow!("staged key missing after staging")))
    }

    pub async fn activate(
        &self,
        tenant: &TenantId,
        kid: &str,
        force: bool,
        actor: &Actor,
    ) -> Result<Vec<KeyChange>, ServiceError> {
        let detail = serde_json::json!({ "force": force });
        let (_, changes) = self
            .change(tenant, actor, detail, |t, now| {
                crate::domain::activate(&keys_of(t), kid, now, t.tenant.policy.stage_lead, force)
            })
            .await?;
        self.count_rotation(tenant, &changes, "manual");
        Ok(changes)
    }

    /// Replaces the active key now; `emergency` revokes the old one instead of retiring it.
    pub async fn rotate(
        &self,
        tenant: &TenantId,
        emergency: bool,
        actor: &Actor,
    ) -> Result<Vec<KeyChange>, ServiceError> {
        let detail = serde_json::json!({ "emergency": emergency });
        let (_, changes) = self
            .change(tenant, actor, detail, |t, _| {
                Ok(crate::domain::rotate(&keys_of(t), t.tenant.policy.signing_alg, emergency))
            })
            .await?;
        self.count_rotation(tenant, &changes, if emergency { "emergency" } else { "manual" });
        self.count_revocations(tenant, &changes);
        Ok(changes)
    }

    /// Revokes one key, or every active key when `kid` is `None`; activates a replacement
    /// when the active key goes.
    pub async fn revoke(
        &self,
        tenant: &TenantId,
        kid: Option<&str>,
        actor: &Actor,
    ) -> Result<(Vec<KeyChange>, Option<String>), ServiceError> {
        let detail = serde_json::json!({ "scope": if kid.is_some() { "kid" } else { "all_active" } });
        let (loaded, changes) = self
            .change(tenant, actor, detail, |t, _| crate::domain::revoke(&keys_of(t), kid, t.tenant.policy.signing_alg))
            .await?;
        self.count_rotation(tenant, &changes, "revocation");
        self.count_revocations(tenant, &changes);
        let active = loaded.keys.iter().find(|k| k.meta.state == KeyState::Active).map(|k| k.meta.kid.clone());
        Ok((changes, active))
    }

    fn count_rotation(&self, tenant: &TenantId, changes: &[KeyChange], kind: &str) {
        if changes.iter().any(|c| c.to == KeyState::Active) {
            self.metrics.rotations.with_label_values(&[tenant.as_str(), kind]).inc();
        }
    }

    fn count_revocations(&self, tenant: &TenantId, changes: &[KeyChange]) {
        let revoked = changes.iter().filter(|c| c.to == KeyState::Revoked).count();
        if revoked > 0 {
            self.metrics.revocations.with_label_values(&[tenant.as_str(), "key"]).inc_by(revoked as u64);
        }
    }

    /// The shared machinery of every key operation: plan, generate, apply with audit
    /// events, install. Returns the tenant as it is after the change, and what changed.
    pub(super) async fn change<F>(
        &self,
        tenant: &TenantId,
        actor: &Actor,
        detail: serde_json::Value,
        planner: F,
    ) -> Result<(LoadedTenant, Vec<KeyChange>), ServiceError>
    where
        F: Fn(&LoadedTenant, OffsetDateTime) -> Result<Plan, crate::domain::LifecycleError>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut loaded = self.store.load_tenant(tenant).await?.ok_or(ServiceError::NotFound("tenant"))?;
            let now = self.clock.now();
            let plan = planner(&loaded, now)?;
            if plan.is_empty() {
                return Ok((loaded, Vec::new()));
            }
            let fresh = match plan.fresh {
                Some(alg) => Some(self.new_key(tenant, alg).await?),
                None => None,
            };
            let changes = resolve(&plan, fresh.as_ref());
            let events = audit_events(tenant, actor, now, &changes, fresh.as_ref(), &detail);
            // The state after the plan, built (and its keys decrypted) before anything is
            // committed: a key this replica cannot open must never become active.
            let version = loaded.version;
            apply_locally(&mut loaded, &plan, fresh.clone(), now)?;
            let snapshot = self.build(loaded.clone())?;
            match self.store.apply_plan(tenant, version, &plan, fresh.as_ref(), now, &events).await {
                Ok(()) => {
                    self.publish(snapshot).await;
                    return Ok((loaded, changes));
                }
                Err(StoreError::Stale(stale)) if attempt < STALE_RETRIES => {
                    tracing::debug!(tenant = %tenant, kid = %stale.kid, attempt, "key plan was stale, recomputing");
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Generates and seals a key. RSA generation takes tens of milliseconds, so it runs
    /// off the async workers.
    pub(super) async fn new_key(&self, tenant: &TenantId, alg: SigningAlg) -> Result<NewKey, ServiceError> {
        let generated = tokio::task::spawn_blocking(move || generate(alg))
            .await
            .map_err(|e| ServiceError::Internal(e.into()))?
            .map_err(|e| ServiceError::Internal(e.into()))?;
        let sealed = self
            .master
            .seal(generated.private.as_bytes(), key_owner(tenant, &generated.public.kid))
            .map_err(|e| ServiceError::Internal(e.into()))?;
        Ok(NewKey { public: generated.public, sealed })
    }
}

/// 0–5 ms times the attempt number, from the clock's sub-millisecond noise (no need for a
/// cryptographic generator to spread retries).
fn backoff(attempt: u32) -> std::time::Duration {
    let jitter =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos()) % 5_000;
    std::time::Duration::from_micros(u64::from(jitter) * u64::from(attempt))
}

pub(crate) fn keys_of(loaded: &LoadedTenant) -> Vec<Key> {
    loaded.keys.iter().map(|k| k.meta.clone()).collect()
}

fn kid_of<'a>(key: &'a KeyRef, fresh: Option<&'a NewKey>) -> &'a str {
    match key {
        KeyRef::Existing(kid) => kid,
        KeyRef::Fresh => fresh.map(|f| f.public.kid.as_str()).unwrap_or_default(),
    }
}

/// The plan's transitions with concrete kids (a staged fresh key first).
pub(super) fn resolve(plan: &Plan, fresh: Option<&NewKey>) -> Vec<KeyChange> {
    let staged = fresh.map(|f| KeyChange { kid: f.public.kid.clone(), from: KeyState::Staged, to: KeyState::Staged });
    staged
        .into_iter()
        .chain(plan.transitions.iter().map(|t| KeyChange {
            kid: kid_of(&t.key, fresh).to_owned(),
            from: t.from,
            to: t.to,
        }))
        .collect()
}

pub(super) fn audit_events(
    tenant: &TenantId,
    actor: &Actor,
    now: OffsetDateTime,
    changes: &[KeyChange],
    fresh: Option<&NewKey>,
    detail: &serde_json::Value,
) -> Vec<AuditEvent> {
    changes
        .iter()
        .map(|c| {
            let kind = EventKind::for_key_state(c.to);
            let mut d = serde_json::json!({ "from": c.from.as_str() });
            if c.from == c.to {
                // A fresh key's "staged" entry: there is no previous state.
                d = serde_json::json!({ "alg": fresh.and_then(|f| f.public.signing_alg()).map(SigningAlg::as_str) });
            }
            if let (Some(obj), Some(extra)) = (d.as_object_mut(), detail.as_object()) {
                obj.extend(extra.clone());
            }
            AuditEvent::new(kind, Some(tenant), actor, now).kid(c.kid.clone()).detail(d)
        })
        .collect()
}

/// The committed plan applied to the loaded state, so this replica serves exactly what it
/// wrote without reading it back. The version moves on by one, as in the database.
pub(super) fn apply_locally(
    loaded: &mut LoadedTenant,
    plan: &Plan,
    fresh: Option<NewKey>,
    now: OffsetDateTime,
) -> Result<(), ServiceError> {
    let mut metas = keys_of(loaded);
    let fresh_kid = fresh.as_ref().map(|f| f.public.kid.clone());
    plan.apply(&mut metas, now, fresh_kid.as_deref()).map_err(|e| ServiceError::Internal(e.into()))?;
    let mut stored: Vec<StoredKey> = std::mem::take(&mut loaded.keys);
    if let (Some(fresh), Some(alg)) = (fresh, plan.fresh) {
        stored.push(StoredKey {
            meta: crate::domain::Key::new_staged(fresh.public.kid.clone(), alg, now),
            public: fresh.public,
            sealed: fresh.sealed,
        });
    }
    for key in &mut stored {
        if let Some(meta) = metas.iter().find(|m| m.kid == key.meta.kid) {
            key.meta = meta.clone();
        }
    }
    loaded.keys = stored;
    loaded.version += 1;
    Ok(())
}
