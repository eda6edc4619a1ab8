//! Tenants and their key policy. Pure data and validation: no I/O, no clock.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{Period, SigningAlg};

/// A tenant id: a slug `[a-z0-9][a-z0-9-]{0,62}`, safe in a URL path, a metric label and a
/// Redis key without escaping. Constructed only through [`TenantId::parse`].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct TenantId(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a tenant id is 1 to 63 characters of a-z, 0-9 and '-', starting with a letter or digit")]
pub struct InvalidTenantId;

impl TenantId {
    pub fn parse(s: &str) -> Result<Self, InvalidTenantId> {
        let bytes = s.as_bytes();
        let valid = !bytes.is_empty()
            && bytes.len() <= 63
            && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
            && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
        if valid { Ok(TenantId(s.to_owned())) } else { Err(InvalidTenantId) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Lets maps keyed by `TenantId` be queried with a `&str` from a request path, without
/// validating or allocating first.
impl std::borrow::Borrow<str> for TenantId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TenantId({})", self.0)
    }
}

impl<'de> Deserialize<'de> for TenantId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TenantId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// How a tenant's keys are used and rotated. All rules between the fields are checked by
/// [`Policy::validate`]; a `Policy` that reached the store has passed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub signing_alg: SigningAlg,
    /// Age at which the active key is replaced.
    pub rotation_period: Period,
    /// How long a retired key stays published and verifying.
    pub overlap: Period,
    /// Minimum time a key is published (staged) before it may sign.
    pub stage_lead: Period,
    pub access_token_ttl: Period,
    pub refresh_token_ttl: Period,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error(
        "stage_lead ({stage_lead}) must be at least the JWKS max-age ({max_age}), so relying parties fetch a key before it signs"
    )]
    StageLeadBelowMaxAge { stage_lead: Period, max_age: Period },
    #[error(
        "overlap ({overlap}) must be at least access_token_ttl + JWKS max-age ({needed}), so no unexpired token loses its key"
    )]
    OverlapTooShort { overlap: Period, needed: Period },
    #[error("rotation_period ({rotation_period}) must be longer than stage_lead ({stage_lead})")]
    RotationNotAfterStageLead { rotation_period: Period, stage_lead: Period },
    #[error("{0} must be longer than zero")]
    Zero(&'static str),
}

impl Policy {
    /// The contract's policy rules. `jwks_max_age` is the Cache-Control max-age relying
    /// parties are told to cache the JWKS for: every rule exists so that a relying party
    /// honouring it never meets an unknown kid and no valid token outlives its key.
    pub fn validate(&self, jwks_max_age: Period) -> Result<(), PolicyError> {
        for (name, value) in [
            ("rotation_period", self.rotation_period),
            ("access_token_ttl", self.access_token_ttl),
            ("refresh_token_ttl", self.refresh_token_ttl),
        ] {
            if value == Period::ZERO {
                return Err(PolicyError::Zero(name));
            }
        }
        if self.stage_lead < jwks_max_age {
            return Err(PolicyError::StageLeadBelowMaxAge { stage_lead: self.stage_lead, max_age: jwks_max_age });
        }
        let needed = self.access_token_ttl.saturating_add(jwks_max_age);
        if self.overlap < needed {
            return Err(PolicyError::OverlapTooShort { overlap: self.overlap, needed });
        }
        if self.rotation_period <= self.stage_lead {
            return Err(PolicyError::RotationNotAfterStageLead {
                rotation_period: self.rotation_period,
                stage_lead: self.stage_lead,
            });
        }
        Ok(())
    }
}

/// Policy fields a client may set; absent fields keep their current (or default) value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct PolicyPatch {
    pub signing_alg: Option<SigningAlg>,
    pub rotation_period: Option<Period>,
    pub overlap: Option<Period>,
    pub stage_lead: Option<Period>,
    pub access_token_ttl: Option<Period>,
    pub refresh_token_ttl: Option<Period>,
}

impl PolicyPatch {
    pub fn apply(&self, base: &Policy) -> Policy {
        Policy {
            signing_alg: self.signing_alg.unwrap_or(base.signing_alg),
            rotation_period: self.rotation_period.unwrap_or(base.rotation_period),
            overlap: self.overlap.unwrap_or(base.overlap),
            stage_lead: self.stage_lead.unwrap_or(base.stage_lead),
            access_token_ttl: self.access_token_ttl.unwrap_or(base.access_token_ttl),
            refresh_token_ttl: self.refresh_token_ttl.unwrap_or(base.refresh_token_ttl),
        }
    }
}

#[cfg(test)]
impl Policy {
    /// The runbook's policy (90-day rotation, 7-day overlap, 2-day stage lead, 15-minute
    /// tokens): the fixture unit tests across the crate start from.
    pub fn runbook() -> Policy {
        let p = |s: &str| s.parse::<Period>().expect("a fixture duration");
        Policy {
            signing_alg: SigningAlg::Es256,
            rotation_period: p("90d"),
            overlap: p("7d"),
            stage_lead: p("2d"),
            access_token_ttl: p("15m"),
            refresh_token_ttl: p("30d"),
        }
    }
}

/// A tenant as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tenant {
    pub id: TenantId,
    /// The `iss` of every token this tenant signs and the only one it verifies.
    pub issuer: String,
    /// Accepted `aud` values; the first is the default audience of issued tokens.
    pub audiences: Vec<String>,
    #[serde(flatten)]
    pub policy: Policy,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TenantError {
    #[error("issuer must be a non-empty string of at most 2048 characters")]
    Issuer,
    #[error("audiences must hold 1 to 32 distinct non-empty strings of at most 256 characters")]
    Audiences,
}

/// Checks the issuer and audiences a client supplied.
pub fn validate_identity(issuer: &str, audiences: &[String]) -> Result<(), TenantError> {
    if issuer.trim().is_empty() || issuer.len() > 2048 || issuer.chars().any(char::is_control) {
        return Err(TenantError::Issuer);
    }
    let distinct: std::collections::HashSet<&String> = audiences.iter().collect();
    let each_ok = audiences.iter().all(|a| !a.trim().is_empty() && a.len() <= 256 && !a.chars().any(char::is_control));
    if audiences.is_empty() || audiences.len() > 32 || distinct.len() != audiences.len() || !each_ok {
        return Err(TenantError::Audiences);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Period {
        s.parse().unwrap()
    }

    fn policy() -> Policy {
        Policy::runbook()
    }

    #[test]
    fn tenant_ids_are_slugs() {
        for ok in ["a", "default", "acme-prod", "0", &"a".repeat(63)] {
            assert!(TenantId::parse(ok).is_ok(), "{ok:?} rejected");
        }
        for bad in ["", "-a", "A", "acme_prod", "a b", "a/b", "é", &"a".repeat(64), "x'; drop table keys;--"] {
            assert_eq!(TenantId::parse(bad), Err(InvalidTenantId), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_runbook_policy_is_valid() {
        assert_eq!(policy().validate(p("5m")), Ok(()));
    }

    #[test]
    fn stage_lead_shorter_than_the_jwks_cache_is_refused() {
        let pol = Policy { stage_lead: p("1m"), ..policy() };
        assert!(matches!(pol.validate(p("5m")), Err(PolicyError::StageLeadBelowMaxAge { .. })));
    }

    #[test]
    fn overlap_must_cover_token_lifetime_plus_cache_age() {
        let pol = Policy { overlap: p("19m"), ..policy() };
        assert!(matches!(pol.validate(p("5m")), Err(PolicyError::OverlapTooShort { .. })));
        let pol = Policy { overlap: p("20m"), ..policy() };
        assert_eq!(pol.validate(p("5m")), Ok(()));
    }

    #[test]
    fn rotation_period_must_exceed_stage_lead() {
        let pol = Policy { rotation_period: p("2d"), ..policy() };
        assert!(matches!(pol.validate(p("5m")), Err(PolicyError::RotationNotAfterStageLead { .. })));
    }

    #[test]
    fn a_one_minute_cycle_is_accepted() {
        let pol = Policy {
            rotation_period: p("20s"),
            stage_lead: p("4s"),
            overlap: p("8s"),
            access_token_ttl: p("5s"),
            ..policy()
        };
        assert_eq!(pol.validate(p("2s")), Ok(()));
    }

    #[test]
    fn identity_rules() {
        assert_eq!(validate_identity("https://id.example/a/x", &["api".into()]), Ok(()));
        assert_eq!(validate_identity("", &["api".into()]), Err(TenantError::Issuer));
        assert_eq!(validate_identity("i", &[]), Err(TenantError::Audiences));
        assert_eq!(validate_identity("i", &["a".into(), "a".into()]), Err(TenantError::Audiences));
        assert_eq!(validate_identity("i", &[" ".into()]), Err(TenantError::Audiences));
    }
}
