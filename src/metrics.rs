//! Every Prometheus metric Keyward exports, declared in one place with what it means.
//! Names and labels are part of the contract (API.md "Operations").
//!
//! Each [`Metrics`] owns its registry (no process-wide statics), so tests can run several
//! applications in one process without their counters mixing.

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Label value used instead of a tenant id that does not exist: unknown ids come from
/// clients, and letting them create label values would let anyone blow up cardinality.
pub const UNKNOWN_TENANT: &str = "_unknown";

pub struct Metrics {
    registry: Registry,
    /// Verifications by tenant and outcome (`ok` or a reason code).
    pub verify_total: IntCounterVec,
    /// Time spent verifying one token (hot path only, no HTTP).
    pub verify_duration: Histogram,
    /// Verified-token cache lookups by result (`hit`, `miss`): a low hit rate with many
    /// repeated tokens means `verify_cache_entries` is too small.
    pub verify_cache: IntCounterVec,
    /// JWKS requests by tenant and HTTP status (200, 304, 404).
    pub jwks_requests: IntCounterVec,
    /// Keys per tenant and state, as of the last scrape.
    pub keys: IntGaugeVec,
    /// Age of each tenant's active key.
    pub active_key_age: IntGaugeVec,
    /// Key rotations by tenant and kind (`manual`, `emergency`, `scheduled`, `revocation`).
    pub rotations: IntCounterVec,
    /// Revocations by tenant and kind (`key`, `session`, `user`, `tenant`, `token`).
    pub revocations: IntCounterVec,
    /// HS256 tokens accepted by the previous secret.
    pub secret_fallback: IntCounterVec,
    /// Refresh tokens presented again after use.
    pub refresh_reuse: IntCounterVec,
    /// HTTP requests by matched route, method and status.
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    /// 1 while the last database probe succeeded.
    pub db_up: IntGauge,
    /// 1 while the last Redis probe succeeded (0 when Redis is not configured).
    pub redis_up: IntGauge,
    /// Failed runs of a background loop, by loop (`rotation`, `reconcile`).
    pub background_failures: IntCounterVec,
    /// Audit events of refused requests not written: the writer's queue was full, or the
    /// caller exceeded `audited_refusals_per_ip`.
    pub audit_dropped: prometheus::IntCounter,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry.register(Box::new(metric.clone())).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    metric
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry.register(Box::new(metric.clone())).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let metric = IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry.register(Box::new(metric.clone())).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    metric
}

fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets);
    let metric = HistogramVec::new(opts, labels).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry.register(Box::new(metric.clone())).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    metric
}

impl Metrics {
    /// Registers every metric. Names are constants checked by the tests, so the panics in
    /// the helpers above are unreachable in a build that passed them.
    pub fn new() -> Metrics {
        let r = Registry::new();
        let verify_buckets = vec![0.000_02, 0.000_05, 0.000_1, 0.000_2, 0.000_5, 0.001, 0.002, 0.005, 0.01];
        let http_buckets = vec![0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
        Metrics {
            verify_total: counter(&r, "keyward_verify_total", "Token verifications by outcome", &["tenant", "outcome"]),
            verify_duration: {
                let opts = HistogramOpts::new("keyward_verify_duration_seconds", "Time to verify one token")
                    .buckets(verify_buckets);
                let metric = Histogram::with_opts(opts).unwrap_or_else(|e| panic!("metric: {e}"));
                r.register(Box::new(metric.clone())).unwrap_or_else(|e| panic!("metric: {e}"));
                metric
            },
            verify_cache: counter(&r, "keyward_verify_cache_total", "Verified-token cache lookups", &["result"]),
            jwks_requests: counter(&r, "keyward_jwks_requests_total", "JWKS requests", &["tenant", "status"]),
            keys: gauge_vec(&r, "keyward_keys", "Keys by state", &["tenant", "state"]),
            active_key_age: gauge_vec(
                &r,
                "keyward_active_key_age_seconds",
                "Seconds since the active key was activated",
                &["tenant"],
            ),
            rotations: counter(&r, "keyward_rotations_total", "Active key replacements", &["tenant", "kind"]),
            revocations: counter(&r, "keyward_revocations_total", "Revocations", &["tenant", "kind"]),
            secret_fallback: counter(
                &r,
                "keyward_secret_fallback_total",
                "HS256 tokens accepted by the previous secret",
                &["tenant"],
            ),
            refresh_reuse: counter(
                &r,
                "keyward_refresh_reuse_detected_total",
                "Used refresh tokens presented again",
                &["tenant"],
            ),
            http_requests: counter(&r, "keyward_http_requests_total", "HTTP requests", &["route", "method", "status"]),
            http_duration: histogram(
                &r,
                "keyward_http_request_duration_seconds",
                "HTTP request duration",
                &["route"],
                http_buckets,
            ),
            db_up: gauge(&r, "keyward_db_up", "1 if the database answered the last probe"),
            redis_up: gauge(&r, "keyward_redis_up", "1 if Redis answered the last probe"),
            background_failures: counter(
                &r,
                "keyward_background_failures_total",
                "Failed runs of background loops",
                &["task"],
            ),
            audit_dropped: {
                let metric = prometheus::IntCounter::new(
                    "keyward_audit_dropped_total",
                    "Audit events of refused requests not written (overload or per-IP limit)",
                )
                .unwrap_or_else(|e| panic!("metric keyward_audit_dropped_total: {e}"));
                r.register(Box::new(metric.clone())).unwrap_or_else(|e| panic!("metric: {e}"));
                metric
            },
            registry: r,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Encoding our own well-formed families into a String cannot fail.
        let _ = TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out);
        out
    }

    pub fn content_type() -> String {
        TextEncoder::new().format_type().to_owned()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contract_metric_is_exported() {
        let m = Metrics::new();
        m.verify_total.with_label_values(&["t", "ok"]).inc();
        m.verify_duration.observe(0.0001);
        m.jwks_requests.with_label_values(&["t", "200"]).inc();
        m.keys.with_label_values(&["t", "active"]).set(1);
        m.active_key_age.with_label_values(&["t"]).set(1);
        m.rotations.with_label_values(&["t", "manual"]).inc();
        m.revocations.with_label_values(&["t", "key"]).inc();
        m.secret_fallback.with_label_values(&["t"]).inc();
        m.refresh_reuse.with_label_values(&["t"]).inc();
        m.http_requests.with_label_values(&["/healthz", "GET", "200"]).inc();
        m.http_duration.with_label_values(&["/healthz"]).observe(0.001);
        let text = m.render();
        for name in [
            "keyward_verify_total{",
            "keyward_verify_duration_seconds_bucket",
            "keyward_jwks_requests_total{",
            "keyward_keys{",
            "keyward_active_key_age_seconds{",
            "keyward_rotations_total{",
            "keyward_revocations_total{",
            "keyward_secret_fallback_total{",
            "keyward_refresh_reuse_detected_total{",
            "keyward_http_requests_total{",
            "keyward_http_request_duration_seconds_bucket",
            "keyward_db_up ",
            "keyward_redis_up ",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }
}
