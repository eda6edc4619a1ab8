//! Fan-out of changes across replicas. After a replica commits a change to the database
//! and applies it to its own memory, it publishes a [`Notice`]; every other replica
//! applies it on receipt. Notices are an accelerator, never the source of truth: a replica
//! that misses one (Redis down, a partition, a restart) converges through reconciliation
//! against the database.
//!
//! Two implementations: [`RedisFanout`] for several replicas, and [`InProcessFanout`] for
//! the embedded single-node default (and for tests that run replicas in one process).

mod redis;

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::broadcast;

pub use self::redis::RedisFanout;
use crate::domain::TenantId;
use crate::token::revocation::Revocation;

/// A change another replica must apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// The replica that made the change (it ignores its own notices).
    pub origin: String,
    pub tenant: TenantId,
    #[serde(flatten)]
    pub change: Change,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// The tenant's keys, secrets or policy changed: reload it if behind `version`.
    Keys { version: i64 },
    /// A revocation to apply as is.
    Revoked { revocation: Revocation },
}

/// What a subscriber hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Notice(Notice),
    /// The subscription was (re)established: notices may have been missed before it, so
    /// the replica reconciles now rather than at its next interval.
    Resubscribed,
}

#[derive(Debug, thiserror::Error)]
#[error("fan-out unavailable: {0}")]
pub struct FanoutError(pub String);

#[async_trait]
pub trait Fanout: Send + Sync + 'static {
    /// `"redis"` or `"in-process"`, for logs.
    fn kind(&self) -> &'static str;

    /// Whether this implementation depends on an external service (for `/readyz`).
    fn is_shared(&self) -> bool;

    /// Sends a notice to every replica. Best effort: the caller has already committed.
    async fn publish(&self, notice: &Notice) -> Result<(), FanoutError>;

    /// Records a revocation in the shared deny-list, expiring when it can no longer match a
    /// live token, for consumers outside Keyward (e.g. a gateway that can read Redis).
    /// Repeatable: writing the same revocation again changes nothing.
    async fn deny(&self, tenant: &TenantId, revocation: &Revocation, now: OffsetDateTime) -> Result<(), FanoutError>;

    async fn ping(&self) -> Result<(), FanoutError>;

    /// Events from now on; the implementation keeps the subscription alive by itself.
    fn subscribe(&self) -> broadcast::Receiver<Event>;
}

/// Notices within one process: the embedded default has one replica, so this mostly
/// carries nothing; tests use one instance shared by several applications.
pub struct InProcessFanout {
    events: broadcast::Sender<Event>,
}

impl Default for InProcessFanout {
    fn default() -> Self {
        InProcessFanout { events: broadcast::channel(1024).0 }
    }
}

#[async_trait]
impl Fanout for InProcessFanout {
    fn kind(&self) -> &'static str {
        "in-process"
    }

    fn is_shared(&self) -> bool {
        false
    }

    async fn publish(&self, notice: &Notice) -> Result<(), FanoutError> {
        // No subscriber is not an error: a single replica has nobody to tell.
        let _ = self.events.send(Event::Notice(notice.clone()));
        Ok(())
    }

    async fn deny(&self, _: &TenantId, _: &Revocation, _: OffsetDateTime) -> Result<(), FanoutError> {
        Ok(())
    }

    async fn ping(&self) -> Result<(), FanoutError> {
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }
}

/// Picks the implementation from the configuration.
pub fn from_settings(redis_url: Option<&str>, prefix: &str) -> Result<Arc<dyn Fanout>, FanoutError> {
    match redis_url {
        Some(url) => Ok(Arc::new(RedisFanout::new(url, prefix)?)),
        None => Ok(Arc::new(InProcessFanout::default())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_round_trip_through_json() {
        let notice = Notice {
            origin: "r1".into(),
            tenant: TenantId::parse("acme").unwrap(),
            change: Change::Revoked {
                revocation: Revocation::User {
                    user_id: "alice".into(),
                    cutoff: time::OffsetDateTime::UNIX_EPOCH,
                    forget_after: time::OffsetDateTime::UNIX_EPOCH,
                },
            },
        };
        let text = serde_json::to_string(&notice).unwrap();
        assert_eq!(serde_json::from_str::<Notice>(&text).unwrap(), notice);
        let keys = Notice { change: Change::Keys { version: 7 }, ..notice };
        assert_eq!(serde_json::from_str::<Notice>(&serde_json::to_string(&keys).unwrap()).unwrap(), keys);
    }

    #[tokio::test]
    async fn in_process_subscribers_hear_published_notices() {
        let fanout = InProcessFanout::default();
        let mut rx = fanout.subscribe();
        let notice =
            Notice { origin: "a".into(), tenant: TenantId::parse("t").unwrap(), change: Change::Keys { version: 1 } };
        fanout.publish(&notice).await.unwrap();
        assert_eq!(rx.recv().await.unwrap(), Event::Notice(notice));
    }
}
