//! Keeping this replica in step with the others: applying their notices as they arrive,
//! and reconciling with the database every interval (and whenever the notice stream may
//! have dropped something) by comparing each tenant's change counters with what this
//! replica has installed. Reconciliation alone guarantees convergence; notices make it fast.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;

use super::{KeyService, ServiceError};
use crate::domain::TenantId;
use crate::fanout::{Change, Event, Fanout, Notice};
use crate::token::revocation::Revocations;

pub struct Replicator {
    keys: Arc<KeyService>,
    revocations: Arc<Revocations>,
    fanout: Arc<dyn Fanout>,
    origin: String,
    /// The revocation counter of each tenant as of the last load from the database.
    revocation_versions: Mutex<HashMap<TenantId, i64>>,
}

/// What one reconciliation pass reloaded.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reconciled {
    pub key_sets: usize,
    pub revocation_sets: usize,
}

impl Replicator {
    pub fn new(keys: Arc<KeyService>, revocations: Arc<Revocations>) -> Replicator {
        let fanout = Arc::clone(keys.notifier.fanout());
        let origin = keys.notifier.origin().to_owned();
        Replicator { keys, revocations, fanout, origin, revocation_versions: Mutex::new(HashMap::new()) }
    }

    /// One pass over every tenant. A tenant that fails is logged and skipped, so one bad
    /// row cannot freeze the others; the pass reports an error afterwards.
    pub async fn reconcile(&self) -> Result<Reconciled, ServiceError> {
        let mut done = Reconciled::default();
        let mut failed = 0;
        let now = self.keys.now();
        for v in self.keys.store.tenant_versions().await? {
            if self.keys.registry().version_of(&v.id).is_none_or(|installed| installed < v.version) {
                match self.keys.reload(&v.id).await {
                    Ok(()) => done.key_sets += 1,
                    Err(e) => {
                        failed += 1;
                        tracing::error!(tenant = %v.id, error = %e, "could not reload key set");
                    }
                }
            }
            let known = self.revocation_versions.lock().unwrap_or_else(|e| e.into_inner()).get(&v.id).copied();
            if known.is_none_or(|k| k < v.revocations) {
                // Revocations only accumulate, so merging what the database holds into what
                // notices already brought is always correct.
                match self.keys.store.live_revocations(&v.id, now).await {
                    Ok(all) => {
                        for r in all {
                            self.revocations.apply(&v.id, r);
                        }
                        let mut versions = self.revocation_versions.lock().unwrap_or_else(|e| e.into_inner());
                        versions.insert(v.id.clone(), v.revocations);
                        done.revocation_sets += 1;
                    }
                    Err(e) => {
                        failed += 1;
                        tracing::error!(tenant = %v.id, error = %e, "could not reload revocations");
                    }
                }
            }
        }
        if failed > 0 {
            return Err(ServiceError::Internal(anyhow::anyhow!("{failed} tenants failed to reload")));
        }
        Ok(done)
    }

    /// Applies one event from the fan-out.
    pub async fn handle(self: &Arc<Self>, event: Event) {
        match event {
            Event::Notice(notice) if notice.origin == self.origin => {}
            Event::Notice(Notice { tenant, change: Change::Keys { version }, .. }) => {
                if self.keys.registry().version_of(&tenant).is_none_or(|installed| installed < version)
                    && let Err(e) = self.keys.reload(&tenant).await
                {
                    tracing::warn!(tenant = %tenant, error = %e, "could not apply a key-set notice; reconciliation will retry");
                }
            }
            Event::Notice(Notice { tenant, change: Change::Revoked { revocation }, .. }) => {
                self.revocations.apply(&tenant, revocation);
            }
            Event::Resubscribed => {
                self.reconcile_logged().await;
                // In the background: rewriting many entries must not hold up notices.
                let this = Arc::clone(self);
                tokio::spawn(async move { this.repair_deny_list().await });
            }
        }
    }

    /// Writes every live revocation to the shared deny-list again: Redis may have been
    /// unreachable when some were made, or restarted without them. Every replica does this
    /// when its subscription comes back; the writes are idempotent.
    async fn repair_deny_list(&self) {
        if !self.fanout.is_shared() {
            return;
        }
        let now = self.keys.now();
        let tenants = match self.keys.store.tenant_versions().await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "could not repair the deny-list");
                return;
            }
        };
        let mut written = 0;
        for v in tenants {
            match self.keys.store.live_revocations(&v.id, now).await {
                Ok(all) => {
                    for r in &all {
                        self.keys.notifier.deny(&v.id, r, now).await;
                        written += 1;
                    }
                }
                Err(e) => tracing::warn!(tenant = %v.id, error = %e, "could not repair the deny-list"),
            }
        }
        if written > 0 {
            tracing::info!(entries = written, "rewrote the shared deny-list");
        }
    }

    async fn reconcile_logged(&self) {
        match self.reconcile().await {
            Ok(r) if r.key_sets > 0 => tracing::info!(key_sets = r.key_sets, "reconciled key sets with the database"),
            Ok(_) => {}
            Err(e) => {
                self.keys.metrics.background_failures.with_label_values(&["reconcile"]).inc();
                tracing::warn!(error = %e, "reconciliation failed");
            }
        }
    }

    /// Applies notices as they come and reconciles every `interval`, until dropped.
    pub async fn run(self: Arc<Self>, interval: Duration) {
        let mut events = self.fanout.subscribe();
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Ok(event) => self.handle(event).await,
                    // Notices were dropped while this replica was busy: catch up from the truth.
                    Err(RecvError::Lagged(_)) => self.reconcile_logged().await,
                    Err(RecvError::Closed) => {
                        events = self.fanout.subscribe();
                        ticker.tick().await;
                    }
                },
                _ = ticker.tick() => self.reconcile_logged().await,
            }
        }
    }
}

/// Forgets revocations that can no longer match a live token, every `interval`.
pub async fn prune_loop(revocations: Arc<Revocations>, keys: Arc<KeyService>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let removed = revocations.prune(keys.now());
        if removed > 0 {
            tracing::debug!(removed, "forgot expired revocations");
        }
    }
}
