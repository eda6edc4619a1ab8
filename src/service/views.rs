//! What an operator sees of a key: its state and the times that matter, past and planned.

use serde::Serialize;
use time::OffsetDateTime;

use crate::domain::{KeyState, Period, SigningAlg};
use crate::store::LoadedTenant;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct KeyView {
    pub kid: String,
    #[schema(value_type = String, example = "ES256")]
    pub alg: SigningAlg,
    #[schema(value_type = String, example = "active")]
    pub state: KeyState,
    /// When the key was created, which is also when it was first published in the JWKS.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub activated_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub retired_at: Option<OffsetDateTime>,
    /// Null until retired; then when the key leaves the JWKS and stops verifying.
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    /// Staged keys: the earliest time the key may be activated (published + stage_lead).
    #[serde(with = "time::serde::rfc3339::option")]
    pub activatable_at: Option<OffsetDateTime>,
    /// Active key: when the schedule replaces it (activated + rotation_period).
    /// Staged key: when the schedule will activate it (only the one published longest).
    #[serde(with = "time::serde::rfc3339::option")]
    pub scheduled_at: Option<OffsetDateTime>,
    /// The latest `exp` of a token this key signed.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_token_exp: Option<OffsetDateTime>,
}

impl KeyView {
    /// Views of all keys of a tenant, oldest first.
    pub fn all(loaded: &LoadedTenant, leeway: Period) -> Vec<KeyView> {
        let policy = &loaded.tenant.policy;
        let rotates_at = loaded
            .keys
            .iter()
            .find(|k| k.meta.state == KeyState::Active)
            .and_then(|k| k.meta.activated_at)
            .map(|at| at + policy.rotation_period.as_duration());
        let next_kid = loaded
            .keys
            .iter()
            .filter(|k| k.meta.state == KeyState::Staged)
            .min_by_key(|k| (k.meta.created_at, k.meta.kid.clone()))
            .map(|k| k.meta.kid.as_str());
        loaded
            .keys
            .iter()
            .map(|k| {
                let m = &k.meta;
                let activatable_at = (m.state == KeyState::Staged).then(|| m.activatable_at(policy.stage_lead));
                let scheduled_at = match m.state {
                    KeyState::Active => rotates_at,
                    // The schedule activates the staged key published longest; others wait.
                    KeyState::Staged if Some(m.kid.as_str()) == next_kid => {
                        activatable_at.map(|a| rotates_at.map_or(a, |r| r.max(a)))
                    }
                    _ => None,
                };
                KeyView {
                    kid: m.kid.clone(),
                    alg: m.alg,
                    state: m.state,
                    created_at: m.created_at,
                    activated_at: m.activated_at,
                    retired_at: m.retired_at,
                    expires_at: m.expires_at(policy.overlap, leeway),
                    revoked_at: m.revoked_at,
                    activatable_at,
                    scheduled_at,
                    last_token_exp: m.last_token_exp,
                }
            })
            .collect()
    }
}
