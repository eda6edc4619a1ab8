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

    pub async fn revoked(&self, tenant: &TenantId, revocation: &Revocation) {
        if let Revocation::Session { sid, forget_after } = revocation {
            let ttl = (*forget_after - time::OffsetDateTime::now_utc()).max(time::Duration::SECOND);
            let ttl = std::time::Duration::try_from(ttl).unwrap_or(std::time::Duration::from_secs(1));
            if let Err(e) = self.fanout.deny_session(tenant, sid, ttl).await {
                self.failed("deny_session", &e.to_string());
            }
        }
        self.publish(tenant, Change::Revoked { revocation: revocation.clone() }).await;
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
