//! Scheduled rotation: the loop that stages, activates and expires keys on each tenant's
//! schedule, and re-wrapping private keys under a new master key.
//!
//! The loop is a pure planner (`domain::schedule`) plus the same guarded, versioned
//! applier every key operation uses, so a tick is idempotent and safe to interrupt at any
//! point: a crash before commit leaves nothing, after commit leaves a consistent state,
//! and the next tick plans from whatever is there. A lease in the database lets one
//! replica at a time run it; even two leaders at once could not double a rotation, since
//! the second plan would be stale.

use std::sync::Arc;
use std::time::Duration;

use super::{KeyChange, KeyService, ServiceError};
use crate::domain::{Actor, AuditEvent, EventKind, KeyState, Period, TenantId, schedule};
use crate::store::SealedKind;

/// The lease the rotation loop holds.
pub const ROTATION_LEASE: &str = "rotation";

/// What one tick did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tick {
    /// Whether this replica held the lease (and so did the work).
    pub leader: bool,
    pub staged: usize,
    pub activated: usize,
    pub expired: usize,
    pub failed_tenants: usize,
}

/// Result of `keyward kek rotate`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Rewrapped {
    /// Values re-wrapped under the primary master key by this run.
    pub rewrapped: usize,
    /// Values that already were.
    pub unchanged: usize,
}

pub struct Rotator {
    keys: Arc<KeyService>,
    /// How long the ledger of issued access tokens keeps a token after it expired.
    ledger_retention: time::Duration,
    /// When this replica last purged expired rows (hourly is plenty).
    last_purge: std::sync::Mutex<Option<time::OffsetDateTime>>,
    /// This replica's lease holder id.
    holder: String,
    /// How long a lease lasts without renewal: a few ticks, so a crashed leader is
    /// replaced quickly but a slow tick does not lose it.
    lease: time::Duration,
}

impl Rotator {
    pub fn new(keys: Arc<KeyService>, holder: String, interval: Duration, ledger_retention: Period) -> Rotator {
        let lease = time::Duration::try_from(interval * 3).unwrap_or(time::Duration::minutes(5));
        Rotator {
            keys,
            ledger_retention: ledger_retention.as_duration(),
            last_purge: std::sync::Mutex::new(None),
            holder,
            lease,
        }
    }

    /// Deletes rows nothing can use any more, at most once an hour (by the leader).
    async fn purge(&self, now: time::OffsetDateTime) -> Result<(), ServiceError> {
        {
            let last = self.last_purge.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|at| now - at < time::Duration::HOUR) {
                return Ok(());
            }
        }
        // A day of slack after expiry costs little and keeps recent history inspectable.
        let purged = self.keys.store.purge(now - time::Duration::DAY, now - self.ledger_retention).await?;
        *self.last_purge.lock().unwrap_or_else(|e| e.into_inner()) = Some(now);
        tracing::info!(
            refresh_tokens = purged.refresh_tokens,
            revocations = purged.revocations,
            access_tokens = purged.access_tokens,
            "purged expired rows"
        );
        Ok(())
    }

    /// One pass over every tenant, if this replica holds (or can take) the lease.
    pub async fn tick(&self) -> Result<Tick, ServiceError> {
        let now = self.keys.now();
        if !self.keys.store.acquire_lease(ROTATION_LEASE, &self.holder, now, now + self.lease).await? {
            return Ok(Tick::default());
        }
        let mut tick = Tick { leader: true, ..Tick::default() };
        if let Err(e) = self.purge(now).await {
            self.keys.metrics.background_failures.with_label_values(&["purge"]).inc();
            tracing::warn!(error = %e, "purging expired rows failed");
        }
        for tenant in self.keys.store.list_tenants().await? {
            match self.keys.run_schedule(&tenant.id).await {
                Ok(changes) => {
                    for c in &changes {
                        match c.to {
                            KeyState::Staged => tick.staged += 1,
                            KeyState::Active => tick.activated += 1,
                            KeyState::Expired => tick.expired += 1,
                            _ => {}
                        }
                    }
                }
                Err(e) => {
                    tick.failed_tenants += 1;
                    self.keys.metrics.background_failures.with_label_values(&["rotation"]).inc();
                    tracing::error!(tenant = %tenant.id, error = %e, "scheduled rotation failed; retrying next tick");
                }
            }
        }
        Ok(tick)
    }

    /// Ticks every `interval` until dropped.
    pub async fn run(self: Arc<Self>, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match self.tick().await {
                Ok(t) if t.staged + t.activated + t.expired > 0 => tracing::info!(
                    staged = t.staged,
                    activated = t.activated,
                    expired = t.expired,
                    "scheduled key rotation"
                ),
                Ok(_) => {}
                Err(e) => {
                    self.keys.metrics.background_failures.with_label_values(&["rotation"]).inc();
                    tracing::warn!(error = %e, "rotation tick failed");
                }
            }
        }
    }
}

impl KeyService {
    /// Applies whatever the schedule says is due for `tenant` now.
    pub async fn run_schedule(&self, tenant: &TenantId) -> Result<Vec<KeyChange>, ServiceError> {
        let leeway = self.settings.leeway;
        let detail = serde_json::json!({ "scheduled": true });
        let (_, changes) = self
            .change(tenant, &Actor::system("rotation"), detail, |t, now| {
                Ok(schedule(&super::keys::keys_of(t), &t.tenant.policy, now, leeway))
            })
            .await?;
        if changes.iter().any(|c| c.to == KeyState::Active) {
            self.metrics.rotations.with_label_values(&[tenant.as_str(), "scheduled"]).inc();
        }
        Ok(changes)
    }

    /// Re-wraps every stored data key under the primary master key. Online (ciphertexts and
    /// key material do not change, so running replicas are unaffected) and idempotent.
    pub async fn rotate_kek(&self, actor: &Actor) -> Result<Rewrapped, ServiceError> {
        let mut report = Rewrapped::default();
        let mut per_tenant: std::collections::BTreeMap<TenantId, usize> = Default::default();
        for item in self.store.sealed_items().await? {
            let owner = match item.kind {
                SealedKind::Key => crate::keyset::key_owner(&item.tenant, &item.id),
                SealedKind::Secret => crate::keyset::secret_owner(&item.tenant, &item.id),
            };
            let rewrapped = self.master.rewrap(&item.sealed, owner).map_err(|e| {
                ServiceError::Internal(anyhow::anyhow!("cannot unwrap {} of tenant {}: {e}", item.id, item.tenant))
            })?;
            match rewrapped {
                Some(new) if self.store.rewrap(&item, &new).await? => {
                    report.rewrapped += 1;
                    *per_tenant.entry(item.tenant.clone()).or_default() += 1;
                }
                // Already under the primary key, or changed concurrently (then it was
                // re-sealed under the primary key by whoever changed it).
                _ => report.unchanged += 1,
            }
        }
        let now = self.clock.now();
        let events: Vec<AuditEvent> = per_tenant
            .iter()
            .map(|(tenant, n)| {
                AuditEvent::new(EventKind::KekRewrapped, Some(tenant), actor, now)
                    .detail(serde_json::json!({ "rewrapped": n, "kek_id": self.master.primary_id() }))
            })
            .collect();
        self.store.record_audit(&events).await?;
        Ok(report)
    }
}
