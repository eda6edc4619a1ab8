//! HS256 shared secrets: rotation with a verifying previous secret (dual-secret
//! fallback), and seeding the default tenant from JWT_SECRET / JWT_SECRET_OLD.
//!
//! A secret is a string whose UTF-8 bytes are the HMAC key, as common JWT libraries use
//! `JWT_SECRET`. Secrets are sealed at rest like private keys and never published.

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::{KeyService, ServiceError};
use crate::config::Secret;
use crate::crypto::random_bytes;
use crate::domain::{Actor, AuditEvent, EventKind, TenantId};
use crate::keyset::secret_owner;
use crate::store::NewSecret;

/// Shortest accepted secret, in bytes (RFC 7518 3.2: at least the hash size).
pub const MIN_SECRET_BYTES: usize = 32;

/// The outcome of a rotation; `secret` only when Keyward generated it (shown once).
#[derive(Clone)]
pub struct RotatedSecret {
    pub current_kid: String,
    pub previous_kid: Option<String>,
    pub previous_not_after: Option<OffsetDateTime>,
    pub generated: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for RotatedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotatedSecret").field("current_kid", &self.current_kid).finish_non_exhaustive()
    }
}

fn random_kid() -> Result<String, ServiceError> {
    Ok(format!("hs256-{}", B64.encode(random_bytes::<9>()?)))
}

fn check_secret(secret: &str) -> Result<(), ServiceError> {
    if secret.len() < MIN_SECRET_BYTES {
        return Err(ServiceError::Invalid(format!("an HS256 secret must be at least {MIN_SECRET_BYTES} bytes")));
    }
    Ok(())
}

impl KeyService {
    fn seal_secret(&self, tenant: &TenantId, secret: &str) -> Result<NewSecret, ServiceError> {
        let kid = random_kid()?;
        let sealed = self
            .master
            .seal(secret.as_bytes(), secret_owner(tenant, &kid))
            .map_err(|e| ServiceError::Internal(e.into()))?;
        Ok(NewSecret { kid, sealed })
    }

    /// The current secret becomes previous, verifying until now + the tenant's overlap;
    /// `provided` (or a generated secret) becomes current.
    pub async fn rotate_secret(
        &self,
        tenant: &TenantId,
        provided: Option<Zeroizing<String>>,
        actor: &Actor,
    ) -> Result<RotatedSecret, ServiceError> {
        let current = self.store.get_tenant(tenant).await?.ok_or(ServiceError::NotFound("tenant"))?;
        let generated = match &provided {
            Some(secret) => {
                check_secret(secret)?;
                None
            }
            None => {
                let mut raw = Zeroizing::new([0u8; 32]);
                SystemRandom::new()
                    .fill(raw.as_mut())
                    .map_err(|_| ServiceError::Internal(anyhow::anyhow!("random generator failed")))?;
                Some(Zeroizing::new(B64.encode(raw.as_ref())))
            }
        };
        let secret = provided.as_ref().or(generated.as_ref()).map(|s| s.as_str()).unwrap_or_default();
        let new = self.seal_secret(tenant, secret)?;
        let now = self.clock.now();
        let not_after = now + current.policy.overlap.as_duration();
        let event = AuditEvent::new(EventKind::SecretRotated, Some(tenant), actor, now).kid(new.kid.clone()).detail(
            serde_json::json!({ "generated": generated.is_some(), "previous_not_after": not_after.unix_timestamp() }),
        );
        let rotation = self.store.rotate_secret(tenant, &new, Some(not_after), now, &[event]).await?;
        self.reload_and_publish(tenant).await;
        Ok(RotatedSecret {
            previous_not_after: rotation.previous_kid.as_ref().map(|_| not_after),
            current_kid: rotation.current_kid,
            previous_kid: rotation.previous_kid,
            generated,
        })
    }

    /// Installs JWT_SECRET / JWT_SECRET_OLD when those settings changed since they were last
    /// applied. The kids they were installed under are kept in `meta` (never a digest of a
    /// secret: that would allow guessing it offline), and "unchanged" means those stored
    /// secrets decrypt to exactly these settings. So a restart with unchanged settings never
    /// undoes a rotation made through the API since; changing the settings takes over again.
    pub async fn seed_secrets(
        &self,
        tenant: &TenantId,
        current: &Secret,
        previous: Option<&Secret>,
        previous_not_after: Option<OffsetDateTime>,
    ) -> Result<bool, ServiceError> {
        check_secret(current.expose())?;
        if let Some(p) = previous {
            check_secret(p.expose())?;
        }
        let meta_key = format!("jwt_secret_seed:{tenant}");
        let recorded = self.store.get_meta(&meta_key).await?.and_then(|text| serde_json::from_str::<Seed>(&text).ok());
        if let Some(seed) = recorded
            && seed.not_after == previous_not_after.map(OffsetDateTime::unix_timestamp_nanos)
            && self.stored_secret_is(tenant, Some(&seed.current), Some(current)).await?
            && self.stored_secret_is(tenant, seed.previous.as_deref(), previous).await?
        {
            return Ok(false);
        }
        let new_current = self.seal_secret(tenant, current.expose())?;
        let new_previous = previous.map(|p| self.seal_secret(tenant, p.expose())).transpose()?;
        let now = self.clock.now();
        let event = AuditEvent::new(EventKind::SecretRotated, Some(tenant), &Actor::system("config"), now)
            .kid(new_current.kid.clone())
            .detail(serde_json::json!({ "source": "JWT_SECRET", "previous": new_previous.as_ref().map(|p| &p.kid) }));
        let previous_pair = new_previous.as_ref().map(|p| (p, previous_not_after));
        self.store.replace_secrets(tenant, &new_current, previous_pair, now, &[event]).await?;
        let seed = Seed {
            current: new_current.kid.clone(),
            previous: new_previous.map(|p| p.kid),
            not_after: previous_not_after.map(OffsetDateTime::unix_timestamp_nanos),
        };
        self.store.set_meta(&meta_key, &serde_json::to_string(&seed).unwrap_or_default()).await?;
        self.reload_and_publish(tenant).await;
        Ok(true)
    }

    /// Whether the stored secret `kid` (in any state) is exactly `wanted`; both absent is true.
    async fn stored_secret_is(
        &self,
        tenant: &TenantId,
        kid: Option<&str>,
        wanted: Option<&Secret>,
    ) -> Result<bool, ServiceError> {
        let (Some(kid), Some(wanted)) = (kid, wanted) else {
            return Ok(kid.is_none() && wanted.is_none());
        };
        let Some(stored) = self.store.secret(tenant, kid).await? else {
            return Ok(false);
        };
        let plain = self
            .master
            .open(&stored.sealed, secret_owner(tenant, kid))
            .map_err(|e| ServiceError::Internal(anyhow::anyhow!("cannot decrypt HS256 secret {kid}: {e}")))?;
        Ok(bool::from(plain.as_slice().ct_eq(wanted.expose().as_bytes())))
    }
}

/// What JWT_SECRET / JWT_SECRET_OLD were last installed as.
#[derive(serde::Serialize, serde::Deserialize)]
struct Seed {
    current: String,
    previous: Option<String>,
    /// JWT_SECRET_OLD_NOT_AFTER in Unix nanoseconds.
    not_after: Option<i128>,
}
