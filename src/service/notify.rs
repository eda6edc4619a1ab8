//! Telling the other replicas about a change this replica has committed and applied.
//! Publishing is best effort by design: the database already holds the change, and every
//! replica's reconciliation finds it within `reconcile_interval` if a notice is lost.

use std::sync::Arc;

use crate::domain::TenantId;
use crate::fanout::{Change, Fanout, Notice};
use crate::metrics::Metrics;
use crate::token::revocation::Revocation;

pub struct Notifier {
    fanout: Arc<dyn Fanout>,
    /// This replica's id: receivers skip notices they sent themselves.
    origin: String,
    metrics: Arc<Metrics>,
}

impl Notifier {
    pub fn new(fanout: Arc<dyn Fanout>, origin: String, metrics: Arc<Metrics>) -> Notifier {
        Notifier { fanout, origin, metrics }
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn fanout(&self) -> &Arc<dyn Fanout> {
        &self.fanout
    }

    pub async fn keys_changed(&self, tenant: &TenantId, version: i64) {
        self.publish(tenant, Change::Keys { version }).await;
    }

    pub async fn revoked(&self, tenant: &TenantId, revocation: &Revocation, now: time::OffsetDateTime) {
        self.deny(tenant, revocation, now).await;
        self.publish(tenant, Change::Revoked { revocation: revocation.clone() }).await;
    }

    /// Writes the revocation to the shared deny-list (also used to repair it after Redis
    /// was unreachable or restarted empty).
    pub async fn deny(&self, tenant: &TenantId, revocation: &Revocation, now: time::OffsetDateTime) {
        if let Err(e) = self.fanout.deny(tenant, revocation, now).await {
            self.failed("deny", &e.to_string());
        }
    }

    async fn publish(&self, tenant: &TenantId, change: Change) {
        let notice = Notice { origin: self.origin.clone(), tenant: tenant.clone(), change };
        if let Err(e) = self.fanout.publish(&notice).await {
            self.failed("publish", &e.to_string());
        }
    }

    fn failed(&self, what: &str, error: &str) {
        self.metrics.background_failures.with_label_values(&["fanout"]).inc();
        tracing::warn!(
            operation = what,
            error,
            "could not notify other replicas; they will catch up by reconciliation"
        );
    }
}
