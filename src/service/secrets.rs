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
use crate::domain::{Actor, AuditEvent, EventKind, TenantId};
use crate::keyset::secret_owner;
use crate::store::{NewSecret, SecretState};

/// A decrypted stored secret and its `not_after`.
type Plain = (Zeroizing<Vec<u8>>, Option<OffsetDateTime>);

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
    let mut raw = [0u8; 9];
    SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| ServiceError::Internal(anyhow::anyhow!("random generator failed")))?;
    Ok(format!("hs256-{}", B64.encode(raw)))
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
        self.reload_and_notify(tenant).await?;
        Ok(RotatedSecret {
            previous_not_after: rotation.previous_kid.as_ref().map(|_| not_after),
            current_kid: rotation.current_kid,
            previous_kid: rotation.previous_kid,
            generated,
        })
    }

    /// Makes the tenant's secrets match JWT_SECRET / JWT_SECRET_OLD. Idempotent: nothing
    /// is written when the stored secrets already are these.
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
        let loaded = self.store.load_tenant(tenant).await?.ok_or(ServiceError::NotFound("tenant"))?;
        let stored = |state: SecretState| -> Result<Option<Plain>, ServiceError> {
            loaded
                .secrets
                .iter()
                .find(|s| s.state == state)
                .map(|s| {
                    let plain = self.master.open(&s.sealed, secret_owner(tenant, &s.kid)).map_err(|e| {
                        ServiceError::Internal(anyhow::anyhow!("cannot decrypt HS256 secret {}: {e}", s.kid))
                    })?;
                    Ok((plain, s.not_after))
                })
                .transpose()
        };
        let same = |stored: &Option<Plain>, wanted: Option<&Secret>, until| match (stored, wanted) {
            (None, None) => true,
            (Some((bytes, not_after)), Some(w)) => {
                bool::from(bytes.as_slice().ct_eq(w.expose().as_bytes())) && *not_after == until
            }
            _ => false,
        };
        if same(&stored(SecretState::Current)?, Some(current), None)
            && same(&stored(SecretState::Previous)?, previous, previous_not_after)
        {
            return Ok(false);
        }
        let new_current = self.seal_secret(tenant, current.expose())?;
        let new_previous = previous.map(|p| self.seal_secret(tenant, p.expose())).transpose()?;
        let now = self.clock.now();
        let event = AuditEvent::new(EventKind::SecretRotated, Some(tenant), &Actor::system("config"), now)
            .kid(new_current.kid.clone())
            .detail(serde_json::json!({ "source": "JWT_SECRET", "previous": new_previous.as_ref().map(|p| &p.kid) }));
        self.store
            .replace_secrets(
                tenant,
                &new_current,
                new_previous.as_ref().map(|p| (p, previous_not_after)),
                now,
                &[event],
            )
            .await?;
        self.reload_and_notify(tenant).await?;
        Ok(true)
    }
}
