//! Keeping this replica's snapshots in step with the database: the reconciliation pass
//! compares each tenant's change counter with the version of its installed snapshot and
//! rebuilds what differs. It bounds staleness whatever happened to notifications (and is
//! how changes made by the CLI reach a running server).

use std::sync::Arc;
use std::time::Duration;

use super::{KeyService, ServiceError};

impl KeyService {
    /// One pass; returns how many tenants were reloaded. A tenant that fails to load is
    /// logged and skipped so that one bad row cannot freeze every other tenant.
    pub async fn reconcile(&self) -> Result<usize, ServiceError> {
        let mut reloaded = 0;
        let mut failed = 0;
        for v in self.store.tenant_versions().await? {
            if self.registry().version_of(&v.id).is_some_and(|installed| installed >= v.version) {
                continue;
            }
            match self.reload(&v.id).await {
                Ok(()) => reloaded += 1,
                Err(e) => {
                    failed += 1;
                    tracing::error!(tenant = %v.id, error = %e, "could not reload tenant");
                }
            }
        }
        if failed > 0 {
            return Err(ServiceError::Internal(anyhow::anyhow!("{failed} tenants failed to reload")));
        }
        Ok(reloaded)
    }
}

/// Runs [`KeyService::reconcile`] every `interval` until dropped.
pub async fn reconcile_loop(keys: Arc<KeyService>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        match keys.reconcile().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(tenants = n, "reconciled key sets with the database"),
            Err(e) => {
                keys.metrics.background_failures.with_label_values(&["reconcile"]).inc();
                tracing::warn!(error = %e, "reconciliation failed");
            }
        }
    }
}

/// Forgets revocations that can no longer match a live token, every `interval`.
pub async fn prune_loop(
    revocations: Arc<crate::token::revocation::Revocations>,
    keys: Arc<KeyService>,
    interval: Duration,
) {
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
