//! Signing keys and their lifecycle, as pure functions of (keys, policy, now).
//!
//! ```text
//!  staged ──activate──▶ active ──(next key activated)──▶ retired ──(overlap ends)──▶ expired
//!    └──────revoke────────┴──────────revoke─────────────────┴──▶ revoked
//! ```
//!
//! Every operation returns a [`Plan`]: the transitions to apply, in an order that never has
//! two active keys at once (demotions before promotions), plus whether a fresh key must be
//! generated first. The service generates key material and the store applies the plan in one
//! transaction, each transition guarded by its expected `from` state, so a plan computed from
//! stale data fails instead of doing damage, and applying the same plan twice is harmless.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{Period, Policy};

/// The asymmetric algorithms a tenant can sign with. HS256 is not here on purpose: shared
/// secrets verify legacy tokens, they never sign, and their type cannot be confused with these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SigningAlg {
    #[serde(rename = "ES256")]
    Es256,
    #[serde(rename = "EdDSA")]
    EdDsa,
    #[serde(rename = "RS256")]
    Rs256,
}

impl SigningAlg {
    pub const ALL: [SigningAlg; 3] = [SigningAlg::Es256, SigningAlg::EdDsa, SigningAlg::Rs256];

    /// The JOSE `alg` name.
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlg::Es256 => "ES256",
            SigningAlg::EdDsa => "EdDSA",
            SigningAlg::Rs256 => "RS256",
        }
    }

    pub fn parse(s: &str) -> Option<SigningAlg> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

impl std::fmt::Display for SigningAlg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    Staged,
    Active,
    Retired,
    Expired,
    Revoked,
}

impl KeyState {
    pub const ALL: [KeyState; 5] =
        [KeyState::Staged, KeyState::Active, KeyState::Retired, KeyState::Expired, KeyState::Revoked];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Staged => "staged",
            KeyState::Active => "active",
            KeyState::Retired => "retired",
            KeyState::Expired => "expired",
            KeyState::Revoked => "revoked",
        }
    }

    pub fn parse(s: &str) -> Option<KeyState> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether relying parties get this key in the JWKS. A retired key is published until
    /// it becomes `expired`; see [`Key::expires_at`] for when that is.
    pub fn is_published(self) -> bool {
        matches!(self, KeyState::Staged | KeyState::Active | KeyState::Retired)
    }
}

/// A key's metadata: everything but the key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub kid: String,
    pub alg: SigningAlg,
    pub state: KeyState,
    /// Also the time it was first published: a key is in the JWKS from the moment it exists.
    pub created_at: OffsetDateTime,
    pub activated_at: Option<OffsetDateTime>,
    pub retired_at: Option<OffsetDateTime>,
    pub expired_at: Option<OffsetDateTime>,
    pub revoked_at: Option<OffsetDateTime>,
    /// The latest `exp` of any token this key signed: a retired key stays published at
    /// least until then (plus leeway), whatever the configured overlap says.
    pub last_token_exp: Option<OffsetDateTime>,
}

/// Why a key may not verify a token right now. The order of checks in the verifier puts
/// these after `unknown_kid` and before the signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUnusable {
    Revoked,
    Expired,
    NotActive,
}

impl Key {
    /// When a retired key stops verifying and leaves the JWKS: the later of
    /// `retired_at + overlap` and the latest signed `exp` plus leeway. `None` until retired.
    pub fn expires_at(&self, overlap: Period, leeway: Period) -> Option<OffsetDateTime> {
        let retired_at = self.retired_at?;
        let by_overlap = retired_at + overlap.as_duration();
        Some(match self.last_token_exp {
            Some(exp) => by_overlap.max(exp + leeway.as_duration()),
            None => by_overlap,
        })
    }

    /// Earliest time a staged key may become active without `force`.
    pub fn activatable_at(&self, stage_lead: Period) -> OffsetDateTime {
        self.created_at + stage_lead.as_duration()
    }

    /// Whether a token signed by this key may verify at `now`.
    pub fn usable_for_verification(
        &self,
        now: OffsetDateTime,
        overlap: Period,
        leeway: Period,
    ) -> Result<(), KeyUnusable> {
        match self.state {
            KeyState::Active => Ok(()),
            KeyState::Staged => Err(KeyUnusable::NotActive),
            KeyState::Revoked => Err(KeyUnusable::Revoked),
            KeyState::Expired => Err(KeyUnusable::Expired),
            KeyState::Retired => match self.expires_at(overlap, leeway) {
                Some(at) if now >= at => Err(KeyUnusable::Expired),
                _ => Ok(()),
            },
        }
    }
}

/// Which key a transition applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef {
    Existing(String),
    /// The key the plan asks to generate (see [`Plan::fresh`]).
    Fresh,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub key: KeyRef,
    pub from: KeyState,
    pub to: KeyState,
}

/// What one lifecycle operation changes. Transitions are applied in order, all at the
/// plan's `now`; a fresh key is inserted (as `staged`) before any of them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub fresh: Option<SigningAlg>,
    pub transitions: Vec<Transition>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.fresh.is_none() && self.transitions.is_empty()
    }

    fn push(&mut self, key: KeyRef, from: KeyState, to: KeyState) {
        self.transitions.push(Transition { key, from, to });
    }

    fn existing(&mut self, key: &Key, to: KeyState) {
        self.push(KeyRef::Existing(key.kid.clone()), key.state, to);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LifecycleError {
    #[error("no key with that kid")]
    UnknownKid,
    #[error("the key is {0}, only a staged key can be activated")]
    NotStaged(&'static str),
    #[error(
        "the key has been published for less than stage_lead; it may be activated from {} (or use force=true)",
        rfc3339(ready_at)
    )]
    TooEarly { ready_at: OffsetDateTime },
}

fn rfc3339(t: &OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| t.to_string())
}

fn find<'k>(keys: &'k [Key], kid: &str) -> Result<&'k Key, LifecycleError> {
    keys.iter().find(|k| k.kid == kid).ok_or(LifecycleError::UnknownKid)
}

fn active(keys: &[Key]) -> impl Iterator<Item = &Key> {
    keys.iter().filter(|k| k.state == KeyState::Active)
}

/// The staged key relying parties have had longest: the best replacement for an active key.
fn oldest_staged(keys: &[Key]) -> Option<&Key> {
    keys.iter().filter(|k| k.state == KeyState::Staged).min_by_key(|k| (k.created_at, k.kid.clone()))
}

/// Publish a new key without letting it sign.
pub fn stage(alg: SigningAlg) -> Plan {
    Plan { fresh: Some(alg), transitions: Vec::new() }
}

/// Activate a staged key; the active key (if any) retires in the same plan.
pub fn activate(
    keys: &[Key],
    kid: &str,
    now: OffsetDateTime,
    stage_lead: Period,
    force: bool,
) -> Result<Plan, LifecycleError> {
    let key = find(keys, kid)?;
    if key.state != KeyState::Staged {
        return Err(LifecycleError::NotStaged(key.state.as_str()));
    }
    let ready_at = key.activatable_at(stage_lead);
    if !force && now < ready_at {
        return Err(LifecycleError::TooEarly { ready_at });
    }
    let mut plan = Plan::default();
    for old in active(keys) {
        plan.existing(old, KeyState::Retired);
    }
    plan.existing(key, KeyState::Active);
    Ok(plan)
}

/// Replace the active key now. The replacement is the staged key relying parties have had
/// longest, if there is one, else a fresh key. `emergency` revokes the old key instead of
/// retiring it (after a compromise its tokens must stop verifying).
pub fn rotate(keys: &[Key], alg: SigningAlg, emergency: bool) -> Plan {
    let demote_to = if emergency { KeyState::Revoked } else { KeyState::Retired };
    let mut plan = Plan::default();
    for old in active(keys) {
        plan.existing(old, demote_to);
    }
    promote_replacement(keys, alg, &mut plan);
    plan
}

fn promote_replacement(keys: &[Key], alg: SigningAlg, plan: &mut Plan) {
    match oldest_staged(keys) {
        Some(staged) => plan.existing(staged, KeyState::Active),
        None => {
            plan.fresh = Some(alg);
            plan.push(KeyRef::Fresh, KeyState::Staged, KeyState::Active);
        }
    }
}

/// Revoke one key (`Some(kid)`, from any state) or every active key (`None`). If that leaves
/// the tenant without an active key, a replacement is activated in the same plan so the
/// tenant can always sign. Revoking an already revoked key changes nothing.
pub fn revoke(keys: &[Key], kid: Option<&str>, alg: SigningAlg) -> Result<Plan, LifecycleError> {
    let targets: Vec<&Key> = match kid {
        Some(kid) => vec![find(keys, kid)?],
        None => active(keys).collect(),
    };
    let mut plan = Plan::default();
    let mut revoked_active = false;
    for key in targets.into_iter().filter(|k| k.state != KeyState::Revoked) {
        revoked_active |= key.state == KeyState::Active;
        plan.existing(key, KeyState::Revoked);
    }
    let has_active_left =
        active(keys).any(|k| !plan.transitions.iter().any(|t| t.key == KeyRef::Existing(k.kid.clone())));
    if revoked_active || !has_active_left {
        // A staged replacement must not itself be one of the revoked keys.
        let revoked: Vec<&KeyRef> = plan.transitions.iter().map(|t| &t.key).collect();
        let candidates: Vec<Key> =
            keys.iter().filter(|k| !revoked.contains(&&KeyRef::Existing(k.kid.clone()))).cloned().collect();
        promote_replacement(&candidates, alg, &mut plan);
    }
    Ok(plan)
}

/// The automatic schedule: what is due for this tenant at `now`. Applying the result and
/// planning again at the same `now` yields an empty plan (the loop is idempotent).
pub fn schedule(keys: &[Key], policy: &Policy, now: OffsetDateTime, leeway: Period) -> Plan {
    let mut plan = Plan::default();
    for key in keys.iter().filter(|k| k.state == KeyState::Retired) {
        if key.expires_at(policy.overlap, leeway).is_some_and(|at| now >= at) {
            plan.existing(key, KeyState::Expired);
        }
    }
    let current = active(keys).max_by_key(|k| k.activated_at);
    let Some(current) = current else {
        // Never expected (every operation keeps one active key), but self-healing is cheap.
        promote_replacement(keys, policy.signing_alg, &mut plan);
        return plan;
    };
    let activated_at = current.activated_at.unwrap_or(current.created_at);
    let rotate_at = activated_at + policy.rotation_period.as_duration();
    let stage_at = rotate_at - policy.stage_lead.as_duration();
    match oldest_staged(keys) {
        None if now >= stage_at => plan.fresh = Some(policy.signing_alg),
        Some(staged) if now >= rotate_at && now >= staged.activatable_at(policy.stage_lead) => {
            for old in active(keys) {
                plan.existing(old, KeyState::Retired);
            }
            plan.existing(staged, KeyState::Active);
        }
        _ => {}
    }
    plan
}

#[cfg(test)]
#[path = "key_tests.rs"]
mod tests;

/// A transition whose key is missing or no longer in the expected state: the plan was
/// computed from stale data and must be recomputed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key {kid} is not {expected} any more")]
pub struct StalePlan {
    pub kid: String,
    pub expected: &'static str,
}

impl Transition {
    /// Sets the state and the matching timestamp on `key`, checking the expected state.
    pub fn apply_to(&self, key: &mut Key, now: OffsetDateTime) -> Result<(), StalePlan> {
        if key.state != self.from {
            return Err(StalePlan { kid: key.kid.clone(), expected: self.from.as_str() });
        }
        key.state = self.to;
        let stamp = match self.to {
            KeyState::Active => &mut key.activated_at,
            KeyState::Retired => &mut key.retired_at,
            KeyState::Expired => &mut key.expired_at,
            KeyState::Revoked => &mut key.revoked_at,
            KeyState::Staged => return Ok(()),
        };
        *stamp = Some(now);
        Ok(())
    }
}

impl Plan {
    /// Applies the plan to an in-memory key list, all or nothing: the reference semantics
    /// the stores implement in SQL, and what simulations run on. `fresh_kid` names the key
    /// generated for [`Plan::fresh`].
    pub fn apply(&self, keys: &mut Vec<Key>, now: OffsetDateTime, fresh_kid: Option<&str>) -> Result<(), StalePlan> {
        let mut next = keys.clone();
        if let Some(alg) = self.fresh {
            let kid = fresh_kid.ok_or_else(|| StalePlan { kid: "<fresh>".into(), expected: "generated" })?;
            next.push(Key::new_staged(kid.to_owned(), alg, now));
        }
        for t in &self.transitions {
            let kid = match &t.key {
                KeyRef::Existing(kid) => kid.as_str(),
                KeyRef::Fresh => fresh_kid.unwrap_or_default(),
            };
            let key = next
                .iter_mut()
                .find(|k| k.kid == kid)
                .ok_or_else(|| StalePlan { kid: kid.to_owned(), expected: t.from.as_str() })?;
            t.apply_to(key, now)?;
        }
        *keys = next;
        Ok(())
    }
}

impl Key {
    pub fn new_staged(kid: String, alg: SigningAlg, now: OffsetDateTime) -> Key {
        Key {
            kid,
            alg,
            state: KeyState::Staged,
            created_at: now,
            activated_at: None,
            retired_at: None,
            expired_at: None,
            revoked_at: None,
            last_token_exp: None,
        }
    }
}
