//! Tokens: the compact JWS format, the verification pipeline, the verified-token cache,
//! revocation state, and the [`Verifier`] the `/verify` and `/introspect` endpoints call.
//!
//! The hot path reads only memory: the tenant's snapshot from the registry, the cache and
//! the revocation state. No database, no Redis, no private-key work.

pub mod cache;
pub mod claims;
pub mod jws;
pub mod reason;
pub mod revocation;
pub mod verify;

use std::sync::Arc;
use std::time::Instant;

pub use reason::Reason;
pub use verify::Checked;

use crate::clock::Clock;
use crate::domain::Period;
use crate::keyset::Registry;
use crate::metrics::Metrics;
use cache::VerifiedCache;
use revocation::Revocations;
use verify::{Rules, check, check_claims};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyError {
    /// No such tenant (404, not a token verdict).
    UnknownTenant,
    Rejected(Reason),
}

pub struct Verifier {
    registry: Arc<Registry>,
    /// Resolved once: a labelled lookup per request would cost a visible share of a hit.
    cache_hits: prometheus::IntCounter,
    cache_misses: prometheus::IntCounter,
    revocations: Arc<Revocations>,
    cache: Arc<VerifiedCache>,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    leeway: Period,
}

impl Verifier {
    pub fn new(
        registry: Arc<Registry>,
        revocations: Arc<Revocations>,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
        leeway: Period,
        cache: Arc<VerifiedCache>,
    ) -> Verifier {
        let cache_hits = metrics.verify_cache.with_label_values(&["hit"]);
        let cache_misses = metrics.verify_cache.with_label_values(&["miss"]);
        Verifier { registry, cache_hits, cache_misses, revocations, cache, metrics, clock, leeway }
    }

    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.revocations
    }

    pub fn cache(&self) -> &VerifiedCache {
        &self.cache
    }

    /// Verifies `token` for `tenant`, optionally requiring a specific audience, and counts
    /// the outcome.
    pub fn verify(&self, tenant: &str, token: &str, audience: Option<&str>) -> Result<Arc<Checked>, VerifyError> {
        let started = Instant::now();
        let result = self.verify_uncounted(tenant, token, audience);
        self.metrics.verify_duration.observe(started.elapsed().as_secs_f64());
        // An unknown tenant is a 404, not a verdict on a token: the HTTP metrics count it.
        let outcome = match &result {
            Ok((_, fallback)) => {
                if *fallback {
                    self.metrics.secret_fallback.with_label_values(&[tenant]).inc();
                }
                Some("ok")
            }
            Err(VerifyError::UnknownTenant) => None,
            Err(VerifyError::Rejected(reason)) => Some(reason.as_str()),
        };
        if let Some(outcome) = outcome {
            self.metrics.verify_total.with_label_values(&[tenant, outcome]).inc();
        }
        result.map(|(checked, _)| checked)
    }

    /// The verdict, and whether the previous HS256 secret is what accepted the token.
    fn verify_uncounted(
        &self,
        tenant: &str,
        token: &str,
        audience: Option<&str>,
    ) -> Result<(Arc<Checked>, bool), VerifyError> {
        let snapshot = self.registry.get(tenant).ok_or(VerifyError::UnknownTenant)?;
        let rules = Rules { now: self.clock.now(), leeway: self.leeway, audience };
        let checked = match self.cache.get(tenant, token) {
            Some(hit) if self.key_still_verifies(&snapshot, &hit, rules) => {
                self.cache_hits.inc();
                check_claims(&snapshot, &hit.claims, rules).map_err(VerifyError::Rejected)?;
                hit
            }
            stale => {
                self.cache_misses.inc();
                if stale.is_some() {
                    self.cache.remove(tenant, token);
                }
                let checked = Arc::new(check(&snapshot, token, rules).map_err(VerifyError::Rejected)?);
                let now = rules.now.unix_timestamp() as f64;
                self.cache.insert(tenant, token, Arc::clone(&checked), now);
                checked
            }
        };
        // Revocation is never cached: it is checked on every request, hit or miss.
        self.revocations.check(tenant, &checked.claims).map_err(VerifyError::Rejected)?;
        // Judged against the current roles: a cached token whose secret has since become
        // the previous one counts as a fallback.
        let fallback = checked.alg == verify::HS256
            && snapshot.hmac.iter().any(|s| s.kid == checked.kid && s.role == crate::keyset::SecretRole::Previous);
        Ok((checked, fallback))
    }

    /// Whether the key (or secret) that verified a cached token may still verify it. When
    /// not, the entry is dropped and the token goes through the full path, which gives the
    /// canonical reason.
    fn key_still_verifies(&self, snapshot: &crate::keyset::TenantKeys, hit: &Checked, rules: Rules<'_>) -> bool {
        if let Some(entry) = snapshot.keys.get(&hit.kid) {
            return entry.meta.usable_for_verification(rules.now, snapshot.tenant.policy.overlap, rules.leeway).is_ok();
        }
        snapshot.hmac.iter().any(|s| s.kid == hit.kid && s.is_live(rules.now))
    }
}
