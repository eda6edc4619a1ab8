//! The verification pipeline over one tenant's snapshot: pure, no I/O, no clock reads.
//!
//! Checks run in the contract's order, so that when several defects apply the first one
//! in this order is reported: malformed → unsupported_alg → unknown_kid → key state →
//! signature → exp/nbf → iss → aud. Revocation (session, token) comes last and lives in
//! the [`super::Verifier`], because it depends on state outside the snapshot.

use aws_lc_rs::hmac;
use time::OffsetDateTime;

use super::jws::{Unverified, UnverifiedClaims, parse};
use super::reason::Reason;
use crate::domain::{KeyUnusable, Period, SigningAlg};
use crate::keyset::{HmacSecret, KeyEntry, TenantKeys};

/// The JOSE name of the legacy shared-secret algorithm.
pub const HS256: &str = "HS256";

/// A token whose signature and time/issuer/audience claims have been checked.
#[derive(Debug, Clone)]
pub struct Checked {
    pub kid: String,
    pub alg: &'static str,
    /// Now trusted.
    pub claims: UnverifiedClaims,
    /// The decoded payload, a JSON object, as signed.
    pub payload: Vec<u8>,
}

/// Which key(s) the header leads to.
enum Candidate<'s> {
    Key(&'s KeyEntry),
    Secret(&'s HmacSecret),
    /// HS256 without kid: current secret, then previous.
    AnySecret,
}

/// Verification settings that are not part of the snapshot.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    pub now: OffsetDateTime,
    pub leeway: Period,
    /// A specific `aud` the caller requires, instead of any of the tenant's audiences.
    pub audience: Option<&'a str>,
}

/// Parses, finds the key, checks its state and the signature, then the claims.
pub fn check(snapshot: &TenantKeys, token: &str, rules: Rules<'_>) -> Result<Checked, Reason> {
    let unverified = parse(token).map_err(|_| Reason::Malformed)?;
    let (kid, alg) = check_signature(snapshot, &unverified, rules)?;
    check_claims(snapshot, &unverified.claims, rules)?;
    Ok(Checked { kid, alg, claims: unverified.claims, payload: unverified.payload })
}

/// alg → kid → key state → signature. Returns the kid (or secret id) and alg that verified;
/// whether that was the previous HS256 secret is judged by the caller against the current
/// roles, which also holds for cached tokens.
fn check_signature(
    snapshot: &TenantKeys,
    token: &Unverified<'_>,
    rules: Rules<'_>,
) -> Result<(String, &'static str), Reason> {
    let now = rules.now;
    let candidate = candidate(snapshot, &token.alg, token.kid.as_deref())?;
    match candidate {
        Candidate::Key(entry) => {
            let policy = &snapshot.tenant.policy;
            entry.meta.usable_for_verification(now, policy.overlap, rules.leeway).map_err(|e| match e {
                KeyUnusable::Revoked => Reason::KeyRevoked,
                KeyUnusable::Expired => Reason::KeyExpired,
                KeyUnusable::NotActive => Reason::KeyNotActive,
            })?;
            let verifier = entry.verifier.as_ref().ok_or(Reason::BadSignature)?;
            if !verifier.verify(token.signing_input, &token.signature) {
                return Err(Reason::BadSignature);
            }
            Ok((entry.meta.kid.clone(), entry.meta.alg.as_str()))
        }
        Candidate::Secret(secret) => {
            if !secret.is_live(now) {
                return Err(Reason::KeyExpired);
            }
            if hmac::verify(&secret.key, token.signing_input, &token.signature).is_err() {
                return Err(Reason::BadSignature);
            }
            Ok((secret.kid.clone(), HS256))
        }
        Candidate::AnySecret => {
            // Current first; the previous one only while it is live.
            for secret in snapshot.hmac.iter().filter(|s| s.is_live(now)) {
                if hmac::verify(&secret.key, token.signing_input, &token.signature).is_ok() {
                    return Ok((secret.kid.clone(), HS256));
                }
            }
            Err(Reason::BadSignature)
        }
    }
}

/// Maps the header's `alg` and `kid` to what may verify the token. The header `alg` must
/// be exactly the named key's: this is what makes `none` and HS/RS/ES confusion impossible.
fn candidate<'s>(snapshot: &'s TenantKeys, alg: &str, kid: Option<&str>) -> Result<Candidate<'s>, Reason> {
    let secret = |kid: &str| snapshot.hmac.iter().find(|s| s.kid == kid);
    if let Some(alg) = SigningAlg::parse(alg) {
        let kid = kid.ok_or(Reason::UnknownKid)?;
        return match snapshot.keys.get(kid) {
            Some(entry) if entry.meta.alg == alg => Ok(Candidate::Key(entry)),
            Some(_) => Err(Reason::UnsupportedAlg),
            None if secret(kid).is_some() => Err(Reason::UnsupportedAlg),
            None => Err(Reason::UnknownKid),
        };
    }
    // A tenant without shared secrets does not accept HS256 at all, whatever the kid says.
    if alg != HS256 || snapshot.hmac.is_empty() {
        return Err(Reason::UnsupportedAlg);
    }
    match kid {
        Some(kid) => match secret(kid) {
            Some(s) => Ok(Candidate::Secret(s)),
            None if snapshot.keys.contains_key(kid) => Err(Reason::UnsupportedAlg),
            None => Err(Reason::UnknownKid),
        },
        None => Ok(Candidate::AnySecret),
    }
}

fn unix(now: OffsetDateTime) -> f64 {
    now.unix_timestamp() as f64 + f64::from(now.nanosecond()) / 1e9
}

/// exp/nbf (with leeway) → iss → aud.
pub fn check_claims(snapshot: &TenantKeys, claims: &UnverifiedClaims, rules: Rules<'_>) -> Result<(), Reason> {
    let now = unix(rules.now);
    let leeway = rules.leeway.as_secs() as f64;
    if claims.exp.is_some_and(|exp| now > exp + leeway) {
        return Err(Reason::Expired);
    }
    if claims.nbf.is_some_and(|nbf| nbf > now + leeway) {
        return Err(Reason::NotYetValid);
    }
    if claims.iss.as_deref() != Some(snapshot.tenant.issuer.as_str()) {
        return Err(Reason::IssuerMismatch);
    }
    let aud = claims.aud.as_ref().ok_or(Reason::AudienceMismatch)?;
    let accepted = match rules.audience {
        Some(wanted) => aud.contains(wanted),
        None => snapshot.tenant.audiences.iter().any(|a| aud.contains(a)),
    };
    if !accepted {
        return Err(Reason::AudienceMismatch);
    }
    Ok(())
}
