//! Rate limits on the public and issuing endpoints: per client IP and per tenant on
//! `/verify` and `/introspect`, per IP on the refresh grant, per issuer on `/sessions`.
//!
//! Each limit is a GCRA (a token bucket with a one-second burst) kept in this replica's
//! memory. That is deliberate: verification must never wait on Redis, so limits are per
//! replica (divide by the replica count when sizing them). Idle entries are pruned, so
//! memory is bounded by the actors active in the last minute.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer};

const SHARDS: usize = 16;

/// A sustained rate, written `"100/s"`, `"600/m"` or `"1000/h"`.
#[derive(Clone, Copy, PartialEq)]
pub struct Rate {
    /// Time between two requests at the sustained rate.
    interval: Duration,
    per_second: f64,
}

impl Rate {
    pub fn per_second(n: f64) -> Option<Rate> {
        (n.is_finite() && n > 0.0).then(|| Rate { interval: Duration::from_secs_f64(1.0 / n), per_second: n })
    }

    /// GCRA's tolerance: how far ahead of the sustained schedule a caller may get, so that
    /// after a quiet second one second's worth of requests (at least one) passes at once.
    fn tolerance(self) -> Duration {
        Duration::from_secs(1).saturating_sub(self.interval)
    }
}

impl fmt::Debug for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/s", self.per_second)
    }
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Rate, String> {
        let bad = || format!("`{s}` is not a rate: use e.g. \"100/s\", \"600/m\" or \"1000/h\"");
        let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let n: f64 = n.trim().parse().map_err(|_| bad())?;
        let seconds = match unit.trim() {
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        Rate::per_second(n / seconds).ok_or_else(bad)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Rate, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// The configured limits (`[rate_limits]`, `RL_*`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(deserialize_with = "flag")]
    pub enabled: bool,
    pub verify_per_ip: Rate,
    pub verify_per_tenant: Rate,
    pub token_per_ip: Rate,
    pub sessions_per_issuer: Rate,
    /// Refused (unauthenticated) admin and issuer calls audited per client IP; beyond it
    /// they are still refused, but not written to the audit trail.
    pub audited_refusals_per_ip: Rate,
    /// Per-actor overrides: `"ip:10.0.0.7"`, `"tenant:acme"`, `"issuer:<fingerprint>"`.
    #[serde(default, deserialize_with = "overrides")]
    pub overrides: HashMap<String, Rate>,
}

/// A boolean from TOML, or "true"/"false" from the environment.
fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bool(bool),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Bool(b) => Ok(b),
        Raw::Text(t) => match t.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(serde::de::Error::custom("expected true or false")),
        },
    }
}

/// Overrides as a TOML table or as JSON text (`RL_OVERRIDES_JSON`).
fn overrides<'de, D: Deserializer<'de>>(d: D) -> Result<HashMap<String, Rate>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Json(String),
        Table(HashMap<String, Rate>),
    }
    match Raw::deserialize(d)? {
        Raw::Table(t) => Ok(t),
        Raw::Json(text) if text.trim().is_empty() => Ok(HashMap::new()),
        Raw::Json(text) => serde_json::from_str::<HashMap<String, String>>(&text)
            .map_err(|_| serde::de::Error::custom("must be a JSON object of \"scope:actor\": \"rate\""))?
            .into_iter()
            .map(|(k, v)| v.parse::<Rate>().map(|r| (k, r)).map_err(serde::de::Error::custom))
            .collect(),
    }
}

/// Which limit a request is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    VerifyIp,
    VerifyTenant,
    TokenIp,
    SessionsIssuer,
    AuthFailureIp,
}

impl Scope {
    /// Number of scopes (the last variant's index + 1: keep it the last).
    const COUNT: usize = Scope::AuthFailureIp as usize + 1;

    fn override_prefix(self) -> &'static str {
        match self {
            Scope::VerifyIp | Scope::TokenIp | Scope::AuthFailureIp => "ip",
            Scope::VerifyTenant => "tenant",
            Scope::SessionsIssuer => "issuer",
        }
    }
}

pub struct RateLimiter {
    limits: Limits,
    /// The overrides by prefix ("ip", "tenant", "issuer"), then actor: looked up with the
    /// request's `&str`, without building a key per request.
    overrides: HashMap<String, HashMap<String, Rate>>,
    /// Per scope, sharded: actor → theoretical arrival time of its next conforming request.
    buckets: Vec<Vec<Mutex<HashMap<String, Instant>>>>,
    hasher: RandomState,
}

impl RateLimiter {
    pub fn new(limits: Limits) -> RateLimiter {
        let mut overrides: HashMap<String, HashMap<String, Rate>> = HashMap::new();
        for (key, rate) in &limits.overrides {
            if let Some((prefix, actor)) = key.split_once(':') {
                overrides.entry(prefix.to_owned()).or_default().insert(actor.to_owned(), *rate);
            }
        }
        RateLimiter {
            limits,
            overrides,
            buckets: (0..Scope::COUNT).map(|_| (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect()).collect(),
            hasher: RandomState::new(),
        }
    }

    fn rate(&self, scope: Scope, actor: &str) -> Rate {
        if let Some(rate) = self.overrides.get(scope.override_prefix()).and_then(|by_actor| by_actor.get(actor)) {
            return *rate;
        }
        match scope {
            Scope::VerifyIp => self.limits.verify_per_ip,
            Scope::VerifyTenant => self.limits.verify_per_tenant,
            Scope::TokenIp => self.limits.token_per_ip,
            Scope::SessionsIssuer => self.limits.sessions_per_issuer,
            Scope::AuthFailureIp => self.limits.audited_refusals_per_ip,
        }
    }

    /// `Ok` if the request conforms; else how long until it would.
    pub fn check(&self, scope: Scope, actor: &str, now: Instant) -> Result<(), Duration> {
        if !self.limits.enabled {
            return Ok(());
        }
        let rate = self.rate(scope, actor);
        let shard = (self.hasher.hash_one(actor) as usize) % SHARDS;
        let mut map = self.buckets[scope as usize][shard].lock().unwrap_or_else(|e| e.into_inner());
        let tat = map.get(actor).copied().unwrap_or(now).max(now);
        let allowed_from = tat.checked_sub(rate.tolerance()).unwrap_or(now);
        if now < allowed_from {
            return Err(allowed_from - now);
        }
        match map.get_mut(actor) {
            Some(next) => *next = tat + rate.interval,
            // Only an actor's first request in a while allocates.
            None => {
                map.insert(actor.to_owned(), tat + rate.interval);
            }
        }
        Ok(())
    }

    /// Forgets actors whose bucket is full again (they have been idle long enough).
    pub fn prune(&self, now: Instant) {
        for shard in self.buckets.iter().flatten() {
            shard.lock().unwrap_or_else(|e| e.into_inner()).retain(|_, tat| *tat > now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: &str) -> Limits {
        Limits {
            enabled: true,
            verify_per_ip: rate.parse().unwrap(),
            verify_per_tenant: rate.parse().unwrap(),
            token_per_ip: rate.parse().unwrap(),
            sessions_per_issuer: rate.parse().unwrap(),
            audited_refusals_per_ip: rate.parse().unwrap(),
            overrides: HashMap::from([("ip:10.0.0.9".to_owned(), "1000/s".parse().unwrap())]),
        }
    }

    #[test]
    fn rates_parse_from_the_documented_spellings() {
        assert_eq!("100/s".parse::<Rate>().unwrap().per_second, 100.0);
        assert_eq!("600/m".parse::<Rate>().unwrap().per_second, 10.0);
        for bad in ["", "100", "x/s", "10/d", "0/s", "-1/s"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_burst_of_one_second_passes_then_requests_are_limited_until_tokens_refill() {
        let limiter = RateLimiter::new(limits("10/s"));
        let t0 = Instant::now();
        for i in 0..10 {
            assert_eq!(limiter.check(Scope::VerifyIp, "10.0.0.1", t0), Ok(()), "request {i}");
        }
        let wait = limiter.check(Scope::VerifyIp, "10.0.0.1", t0).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100), "{wait:?}");
        assert_eq!(limiter.check(Scope::VerifyIp, "10.0.0.1", t0 + wait), Ok(()));
        assert_eq!(limiter.check(Scope::VerifyIp, "10.0.0.2", t0), Ok(()), "another actor is not affected");
    }

    #[test]
    fn overrides_replace_the_default_for_one_actor() {
        let limiter = RateLimiter::new(limits("1/s"));
        let t0 = Instant::now();
        for _ in 0..100 {
            assert_eq!(limiter.check(Scope::VerifyIp, "10.0.0.9", t0), Ok(()));
        }
        assert_eq!(limiter.check(Scope::VerifyIp, "10.0.0.1", t0), Ok(()));
        assert!(limiter.check(Scope::VerifyIp, "10.0.0.1", t0).is_err());
    }

    #[test]
    fn idle_actors_are_forgotten() {
        let limiter = RateLimiter::new(limits("10/s"));
        let t0 = Instant::now();
        limiter.check(Scope::TokenIp, "a", t0).unwrap();
        limiter.prune(t0 + Duration::from_secs(2));
        assert!(limiter.buckets.iter().flatten().all(|s| s.lock().unwrap().is_empty()));
    }
}
