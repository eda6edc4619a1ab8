//! Redis fan-out: PUBLISH/SUBSCRIBE on one channel for notices, plus the shared session
//! deny-list (keys with TTLs). Every key and the channel live under a configurable prefix,
//! so several deployments (or test runs) can share one Redis.
//!
//! Both connections recover by themselves: commands go through a lazily (re)connecting
//! `ConnectionManager` with short timeouts, so a Redis outage costs a request a bounded
//! delay and never a hang; the subscription runs in its own task that resubscribes with
//! backoff and announces [`Event::Resubscribed`] so the replica reconciles what it missed.

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt as _;
use redis::AsyncCommands as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use super::{Event, Fanout, FanoutError, Notice};
use crate::domain::TenantId;
use crate::token::revocation::Revocation;
use time::OffsetDateTime;

/// Bound on every Redis command: an outage must not stall the caller.
const COMMAND_TIMEOUT: Duration = Duration::from_millis(500);
/// How often an idle subscription is pinged to detect a silently dead connection.
const SUBSCRIPTION_PING: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

pub struct RedisFanout {
    conn: ConnectionManager,
    channel: String,
    prefix: String,
    events: broadcast::Sender<Event>,
    subscriber: JoinHandle<()>,
}

impl Drop for RedisFanout {
    fn drop(&mut self) {
        self.subscriber.abort();
    }
}

fn err(e: impl std::fmt::Display) -> FanoutError {
    FanoutError(e.to_string())
}

impl RedisFanout {
    /// Connects lazily: a replica starts (degraded) even while Redis is down.
    pub fn new(url: &str, prefix: &str) -> Result<RedisFanout, FanoutError> {
        let client =
            redis::Client::open(url).map_err(|_| FanoutError("REDIS_URL is not a valid redis:// URL".into()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(MAX_BACKOFF);
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(err)?;
        let channel = format!("{prefix}:notices");
        let (events, _) = broadcast::channel(1024);
        let subscriber = tokio::spawn(subscribe_loop(client, channel.clone(), events.clone()));
        Ok(RedisFanout { conn, channel, prefix: prefix.to_owned(), events, subscriber })
    }
}

async fn bounded<T>(f: impl Future<Output = redis::RedisResult<T>>) -> Result<T, FanoutError> {
    match tokio::time::timeout(COMMAND_TIMEOUT, f).await {
        Ok(r) => r.map_err(err),
        Err(_) => Err(FanoutError("timed out".into())),
    }
}

#[async_trait]
impl Fanout for RedisFanout {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn is_shared(&self) -> bool {
        true
    }

    async fn publish(&self, notice: &Notice) -> Result<(), FanoutError> {
        let payload = serde_json::to_string(notice).map_err(err)?;
        let mut conn = self.conn.clone();
        bounded(conn.publish::<_, _, usize>(&self.channel, payload)).await.map(|_| ())
    }

    async fn deny(&self, tenant: &TenantId, revocation: &Revocation, now: OffsetDateTime) -> Result<(), FanoutError> {
        let Some((key, value, forget_after)) = deny_entry(&self.prefix, tenant, revocation) else {
            return Ok(());
        };
        let ttl = (forget_after - now).whole_seconds();
        if ttl <= 0 {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        bounded(conn.set_ex::<_, _, ()>(key, value, ttl.unsigned_abs())).await
    }

    async fn ping(&self) -> Result<(), FanoutError> {
        let mut conn = self.conn.clone();
        bounded(redis::cmd("PING").query_async::<String>(&mut conn)).await.map(|_| ())
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }
}

/// The deny-list key, its value and when it stops mattering. The layout is an interface
/// for gateways (docs/ARCHITECTURE.md): a session is revoked if
/// `<prefix>:revoked-session:<tenant>:<sid>` exists, or if it started before the RFC 3339
/// time stored at `<prefix>:revoked-user:<tenant>:<user>` or `<prefix>:revoked-tenant:<tenant>`;
/// an access token is revoked if `<prefix>:revoked-token:<tenant>:<jti>` exists.
fn deny_entry(prefix: &str, tenant: &TenantId, r: &Revocation) -> Option<(String, String, OffsetDateTime)> {
    let rfc3339 = |t: &OffsetDateTime| t.format(&time::format_description::well_known::Rfc3339).ok();
    Some(match r {
        Revocation::Session { sid, forget_after } => {
            (format!("{prefix}:revoked-session:{tenant}:{sid}"), "1".into(), *forget_after)
        }
        Revocation::Token { jti, forget_after } => {
            (format!("{prefix}:revoked-token:{tenant}:{jti}"), "1".into(), *forget_after)
        }
        Revocation::User { user_id, cutoff, forget_after } => {
            (format!("{prefix}:revoked-user:{tenant}:{user_id}"), rfc3339(cutoff)?, *forget_after)
        }
        Revocation::Tenant { cutoff, forget_after } => {
            (format!("{prefix}:revoked-tenant:{tenant}"), rfc3339(cutoff)?, *forget_after)
        }
    })
}

/// Keeps one subscription alive for the life of the fan-out.
async fn subscribe_loop(client: redis::Client, channel: String, events: broadcast::Sender<Event>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match subscribe_once(&client, &channel, &events).await {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => tracing::debug!(error = %e, "redis subscription attempt failed"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Subscribes and forwards notices until the connection is lost. `Ok` after a session that
/// was established (so the caller retries quickly), `Err` if it never was.
async fn subscribe_once(
    client: &redis::Client,
    channel: &str,
    events: &broadcast::Sender<Event>,
) -> Result<(), FanoutError> {
    let pubsub = bounded(client.get_async_pubsub()).await?;
    let (mut sink, mut stream) = pubsub.split();
    bounded(sink.subscribe(channel)).await?;
    tracing::info!(channel, "subscribed to change notices");
    let _ = events.send(Event::Resubscribed);
    let mut ping = tokio::time::interval(SUBSCRIPTION_PING);
    ping.tick().await;
    loop {
        tokio::select! {
            message = stream.next() => {
                let Some(message) = message else { break };
                match serde_json::from_slice::<Notice>(message.get_payload_bytes()) {
                    Ok(notice) => {
                        let _ = events.send(Event::Notice(notice));
                    }
                    Err(e) => tracing::warn!(error = %e, "ignoring a malformed change notice"),
                }
            }
            _ = ping.tick() => {
                if bounded(sink.ping::<redis::Value>()).await.is_err() {
                    break;
                }
            }
        }
    }
    tracing::warn!(channel, "lost the change-notice subscription; reconnecting");
    Ok(())
}
