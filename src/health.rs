//! Readiness and the dependency probes behind `/readyz` and `keyward_*_up`.
//!
//! A replica is ready once its key sets are loaded, until it starts shutting down. The
//! database and Redis are probed in the background (a probe per request would let a load
//! balancer's polling hammer them); an outage makes the replica `degraded`, not unready,
//! because it keeps serving JWKS and verification from memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use crate::metrics::Metrics;
use crate::store::Store;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DependencyState {
    Up,
    Down,
    Disabled,
}

impl DependencyState {
    pub fn as_str(self) -> &'static str {
        match self {
            DependencyState::Up => "up",
            DependencyState::Down => "down",
            DependencyState::Disabled => "disabled",
        }
    }

    fn from_u8(v: u8) -> DependencyState {
        match v {
            0 => DependencyState::Up,
            1 => DependencyState::Down,
            _ => DependencyState::Disabled,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            DependencyState::Up => 0,
            DependencyState::Down => 1,
            DependencyState::Disabled => 2,
        }
    }
}

#[derive(Debug)]
pub struct Health {
    loaded: AtomicBool,
    stopping: AtomicBool,
    database: AtomicU8,
    redis: AtomicU8,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            loaded: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            database: AtomicU8::new(DependencyState::Up.to_u8()),
            redis: AtomicU8::new(DependencyState::Disabled.to_u8()),
        }
    }
}

impl Health {
    pub fn set_loaded(&self) {
        self.loaded.store(true, Ordering::Release);
    }

    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// Serving verification and JWKS from memory is possible.
    pub fn is_ready(&self) -> bool {
        self.loaded.load(Ordering::Acquire) && !self.stopping.load(Ordering::Acquire)
    }

    pub fn database(&self) -> DependencyState {
        DependencyState::from_u8(self.database.load(Ordering::Acquire))
    }

    pub fn redis(&self) -> DependencyState {
        DependencyState::from_u8(self.redis.load(Ordering::Acquire))
    }

    pub fn set_database(&self, state: DependencyState, metrics: &Metrics) {
        self.database.store(state.to_u8(), Ordering::Release);
        metrics.db_up.set(i64::from(state == DependencyState::Up));
    }

    pub fn set_redis(&self, state: DependencyState, metrics: &Metrics) {
        self.redis.store(state.to_u8(), Ordering::Release);
        metrics.redis_up.set(i64::from(state == DependencyState::Up));
    }
}

/// Probes the database every `interval` (each probe bounded by the interval) until the
/// task is dropped.
pub async fn probe_database(health: Arc<Health>, store: Arc<dyn Store>, metrics: Arc<Metrics>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let up = matches!(tokio::time::timeout(interval, store.ping()).await, Ok(Ok(())));
        let state = if up { DependencyState::Up } else { DependencyState::Down };
        if state != health.database() {
            tracing::warn!(database = state.as_str(), "database state changed");
        }
        health.set_database(state, &metrics);
    }
}

/// Probes the fan-out's shared service (Redis) every `interval`; `disabled` when there is
/// none.
pub async fn probe_fanout(
    health: Arc<Health>,
    fanout: Arc<dyn crate::fanout::Fanout>,
    metrics: Arc<Metrics>,
    interval: Duration,
) {
    if !fanout.is_shared() {
        health.set_redis(DependencyState::Disabled, &metrics);
        return;
    }
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let up = matches!(tokio::time::timeout(interval, fanout.ping()).await, Ok(Ok(())));
        let state = if up { DependencyState::Up } else { DependencyState::Down };
        if state != health.redis() {
            tracing::warn!(redis = state.as_str(), "redis state changed");
        }
        health.set_redis(state, &metrics);
    }
}
