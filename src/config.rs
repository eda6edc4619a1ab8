//! Settings: `config/default.toml` (compiled in), an optional override file, then the
//! environment variables API.md fixes. Parsed once at start-up into typed values; an
//! invalid value stops start-up with a message naming the setting.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Deserializer};
use time::OffsetDateTime;

use crate::domain::{Period, Policy, TenantId};

/// The documented defaults, compiled in so that the file and the binary cannot disagree.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Environment variable → setting. These names are part of the contract.
const ENV: &[(&str, &str)] = &[
    ("KEYWARD_LISTEN", "listen"),
    ("DATABASE_URL", "database_url"),
    ("REDIS_URL", "redis_url"),
    ("KEYWARD_REDIS_PREFIX", "redis_prefix"),
    ("KEYWARD_ADMIN_SECRETS", "admin_secrets"),
    ("KEYWARD_ISSUER_SECRETS", "issuer_secrets"),
    ("KEYWARD_MASTER_KEYS", "master_keys"),
    ("KEYWARD_MASTER_KEY_FILE", "master_key_file"),
    ("KEYWARD_PUBLIC_URL", "public_url"),
    ("KEYWARD_DEFAULT_TENANT", "default_tenant"),
    ("JWT_SECRET", "jwt_secret"),
    ("JWT_SECRET_OLD", "jwt_secret_old"),
    ("JWT_SECRET_OLD_NOT_AFTER", "jwt_secret_old_not_after"),
    ("KEYWARD_JWKS_MAX_AGE", "jwks_max_age"),
    ("KEYWARD_LEEWAY", "leeway"),
    ("KEYWARD_ROTATION_INTERVAL", "rotation_interval"),
    ("KEYWARD_RECONCILE_INTERVAL", "reconcile_interval"),
    ("KEYWARD_HEALTH_INTERVAL", "health_interval"),
    ("KEYWARD_REFRESH_REUSE_GRACE", "refresh_reuse_grace"),
    ("KEYWARD_VERIFY_CACHE_ENTRIES", "verify_cache_entries"),
    ("KEYWARD_TOKEN_LEDGER_RETENTION", "token_ledger_retention"),
    ("ALLOWED_ORIGINS", "allowed_origins"),
    ("KEYWARD_MAX_BODY_BYTES", "max_body_bytes"),
    ("KEYWARD_REQUEST_TIMEOUT", "request_timeout"),
    ("KEYWARD_SHUTDOWN_GRACE", "shutdown_grace"),
    ("KEYWARD_LOG_FORMAT", "log_format"),
    ("KEYWARD_LOG_LEVEL", "log_level"),
    ("RL_ENABLED", "rate_limits.enabled"),
    ("RL_VERIFY_PER_IP", "rate_limits.verify_per_ip"),
    ("RL_VERIFY_PER_TENANT", "rate_limits.verify_per_tenant"),
    ("RL_TOKEN_PER_IP", "rate_limits.token_per_ip"),
    ("RL_SESSIONS_PER_ISSUER", "rate_limits.sessions_per_issuer"),
    ("RL_AUDITED_REFUSALS_PER_IP", "rate_limits.audited_refusals_per_ip"),
    ("RL_OVERRIDES_JSON", "rate_limits.overrides"),
];

/// A configured secret: never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Secret(String::deserialize(d)?))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub listen: SocketAddr,
    pub database_url: Secret,
    #[serde(default)]
    pub redis_url: Option<Secret>,
    pub redis_prefix: String,
    #[serde(deserialize_with = "comma_list")]
    pub admin_secrets: Vec<Secret>,
    #[serde(deserialize_with = "comma_list")]
    pub issuer_secrets: Vec<Secret>,
    #[serde(default)]
    pub master_keys: Option<Secret>,
    pub master_key_file: PathBuf,
    #[serde(default)]
    pub public_url: Option<String>,
    pub default_tenant: TenantId,
    #[serde(default)]
    pub jwt_secret: Option<Secret>,
    #[serde(default)]
    pub jwt_secret_old: Option<Secret>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub jwt_secret_old_not_after: Option<OffsetDateTime>,
    pub jwks_max_age: Period,
    pub leeway: Period,
    pub rotation_interval: Period,
    pub reconcile_interval: Period,
    pub health_interval: Period,
    pub refresh_reuse_grace: Period,
    #[serde(deserialize_with = "number")]
    pub verify_cache_entries: usize,
    pub token_ledger_retention: Period,
    #[serde(deserialize_with = "comma_list")]
    pub allowed_origins: Vec<String>,
    #[serde(deserialize_with = "number")]
    pub max_body_bytes: usize,
    pub request_timeout: Period,
    pub shutdown_grace: Period,
    pub log_format: LogFormat,
    pub log_level: String,
    pub tenant_defaults: Policy,
    pub rate_limits: crate::ratelimit::Limits,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Invalid(String),
}

impl Settings {
    /// Defaults, then `file` (if any), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::Invalid(format!("config file {} does not exist", path.display())));
            }
            figment = figment.merge(Toml::file(path));
        }
        for (var, key) in ENV {
            // Every variable is taken as a string: figment would otherwise turn a numeric
            // secret into an integer. Typed settings parse their strings themselves.
            if let Ok(value) = std::env::var(var) {
                figment = figment.merge(Serialized::default(key, value));
            }
        }
        Self::extract(figment)
    }

    /// The compiled-in defaults alone (tests adjust fields from here).
    pub fn defaults() -> Settings {
        // The compiled-in file is covered by a unit test, so this cannot fail at run time.
        Self::extract(Figment::from(Toml::string(DEFAULT_TOML))).unwrap_or_else(|e| panic!("{e}"))
    }

    fn extract(figment: Figment) -> Result<Settings, ConfigError> {
        let settings: Settings = figment.extract().map_err(|e| {
            // figment names the key; the message never contains the offending value of a
            // secret because our deserializers do not echo input.
            let key = e.path.join(".");
            ConfigError::Invalid(format!("invalid setting `{key}`: {}", e.kind))
        })?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: String| Err(ConfigError::Invalid(format!("invalid setting `{key}`: {why}")));
        if let Err(e) = self.tenant_defaults.validate(self.jwks_max_age) {
            return bad("tenant_defaults", e.to_string());
        }
        for (key, value) in [
            ("rotation_interval", self.rotation_interval),
            ("reconcile_interval", self.reconcile_interval),
            ("health_interval", self.health_interval),
            ("request_timeout", self.request_timeout),
        ] {
            if value == Period::ZERO {
                return bad(key, "must be longer than zero".into());
            }
        }
        let prefix_ok = !self.redis_prefix.is_empty()
            && self.redis_prefix.len() <= 64
            && self.redis_prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_:.".contains(&b));
        if !prefix_ok {
            return bad("redis_prefix", "must be 1-64 characters of A-Z, a-z, 0-9, '-', '_', ':' or '.'".into());
        }
        if self.max_body_bytes < 1024 {
            return bad("max_body_bytes", "must be at least 1024".into());
        }
        if let Some(url) = &self.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return bad("public_url", "must start with http:// or https://".into());
        }
        for (key, secret) in [("jwt_secret", &self.jwt_secret), ("jwt_secret_old", &self.jwt_secret_old)] {
            if secret.as_ref().is_some_and(|s| s.expose().len() < 32) {
                return bad(key, "an HS256 secret must be at least 32 bytes".into());
            }
        }
        if self.admin_secrets.iter().chain(&self.issuer_secrets).any(|s| s.expose().len() < 16) {
            return bad("admin_secrets/issuer_secrets", "each secret must be at least 16 characters".into());
        }
        Ok(())
    }

    /// The base URL clients reach this service at, without a trailing slash.
    pub fn public_url(&self) -> String {
        match &self.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("http://{}", self.listen),
        }
    }
}

/// A list given either as a TOML array or as one comma-separated string (environment).
fn comma_list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: From<String>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    let items = match Raw::deserialize(d)? {
        Raw::One(s) => s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect(),
        Raw::Many(v) => v,
    };
    Ok(items.into_iter().map(T::from).collect())
}

impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret(s)
    }
}

/// A number given as a TOML integer or as a string (environment).
fn number<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(usize),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Int(n) => Ok(n),
        Raw::Text(s) => s.trim().parse().map_err(|_| serde::de::Error::custom("expected a whole number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_defaults_load_and_match_the_contract() {
        let s = Settings::defaults();
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.database_url.expose(), "sqlite://keyward.db?mode=rwc");
        assert_eq!(s.jwks_max_age, Period::from_secs(300));
        assert_eq!(s.leeway, Period::from_secs(30));
        assert_eq!(s.rotation_interval, Period::from_secs(30));
        assert_eq!(s.reconcile_interval, Period::from_secs(5));
        assert_eq!(s.default_tenant.as_str(), "default");
        assert_eq!(s.public_url(), "http://127.0.0.1:8080");
        assert!(s.redis_url.is_none() && s.admin_secrets.is_empty());
    }

    #[test]
    fn environment_values_override_and_lists_split_on_commas() {
        let figment = Figment::from(Toml::string(DEFAULT_TOML))
            .merge(Serialized::default("admin_secrets", "0123456789abcdef, fedcba9876543210"))
            .merge(Serialized::default("leeway", "1m"))
            .merge(Serialized::default("max_body_bytes", "2048"));
        let s = Settings::extract(figment).unwrap();
        assert_eq!(s.admin_secrets.len(), 2);
        assert_eq!(s.admin_secrets[1].expose(), "fedcba9876543210");
        assert_eq!(s.leeway, Period::from_secs(60));
        assert_eq!(s.max_body_bytes, 2048);
    }

    #[test]
    fn an_invalid_setting_is_named_in_the_error() {
        let figment = Figment::from(Toml::string(DEFAULT_TOML)).merge(Serialized::default("leeway", "soon"));
        let err = Settings::extract(figment).unwrap_err().to_string();
        assert!(err.contains("`leeway`"), "{err}");
        let figment = Figment::from(Toml::string(DEFAULT_TOML)).merge(Serialized::default("listen", "nowhere"));
        assert!(Settings::extract(figment).unwrap_err().to_string().contains("`listen`"));
        let figment =
            Figment::from(Toml::string(DEFAULT_TOML)).merge(Serialized::default("tenant_defaults.stage_lead", "1s"));
        assert!(Settings::extract(figment).unwrap_err().to_string().contains("tenant_defaults"));
    }

    #[test]
    fn rate_limits_come_from_rl_variables_including_json_overrides() {
        let figment = Figment::from(Toml::string(DEFAULT_TOML))
            .merge(Serialized::default("rate_limits.enabled", "false"))
            .merge(Serialized::default("rate_limits.token_per_ip", "5/m"))
            .merge(Serialized::default("rate_limits.overrides", r#"{"ip:10.0.0.7": "50000/s"}"#));
        let s = Settings::extract(figment).unwrap();
        assert!(!s.rate_limits.enabled);
        assert_eq!(s.rate_limits.token_per_ip, "5/m".parse().unwrap());
        assert_eq!(s.rate_limits.overrides["ip:10.0.0.7"], "50000/s".parse().unwrap());
        let bad = Figment::from(Toml::string(DEFAULT_TOML)).merge(Serialized::default("rate_limits.overrides", "[1]"));
        assert!(Settings::extract(bad).unwrap_err().to_string().contains("rate_limits"));
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let figment = Figment::from(Toml::string(DEFAULT_TOML))
            .merge(Serialized::default("admin_secrets", "super-secret-admin-value"));
        let s = Settings::extract(figment).unwrap();
        assert!(!format!("{s:?}").contains("super-secret-admin-value"));
    }
}
