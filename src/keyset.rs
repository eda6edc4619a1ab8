//! In-memory key sets: what the hot path (JWKS, verification, signing) reads.
//!
//! One immutable [`TenantKeys`] snapshot per tenant, built from the database rows and
//! swapped atomically into the [`Registry`] when anything changes. A snapshot holds the
//! pre-serialized JWKS with its ETag, every key's metadata by kid with a parsed verifier,
//! and the active key's decrypted, parsed key pair, so that serving the JWKS is a map
//! lookup, verifying is one signature check, and signing never decrypts or parses.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::crypto::{EnvelopeError, KeyError, MasterKeys, Owner, PrivatePkcs8, PublicJwk, SigningKey, VerifyingKey};
use crate::domain::{Key, KeyState, Tenant, TenantId};
use crate::store::{LoadedTenant, SecretState, StoredKey, StoredSecret};

/// What the `Owner` of a signing key's sealed private half is (associated data).
pub fn key_owner<'a>(tenant: &'a TenantId, kid: &'a str) -> Owner<'a> {
    Owner { purpose: "key", tenant: tenant.as_str(), id: kid }
}

/// The pre-serialized JWKS of one tenant.
#[derive(Debug, Clone)]
pub struct Jwks {
    pub body: Bytes,
    /// Strong ETag (quoted), derived from the body: it changes exactly when the set does.
    pub etag: String,
}

impl Jwks {
    fn build(keys: &[&PublicJwk]) -> Jwks {
        #[derive(serde::Serialize)]
        struct Doc<'a> {
            keys: &'a [&'a PublicJwk],
        }
        // Serializing plain strings cannot fail.
        let body = serde_json::to_vec(&Doc { keys }).unwrap_or_default();
        let digest = Sha256::digest(&body);
        Jwks { etag: format!("\"{}\"", B64.encode(&digest[..18])), body: Bytes::from(body) }
    }
}

/// One key as the hot path sees it.
#[derive(Debug)]
pub struct KeyEntry {
    pub meta: Key,
    /// Present for keys that can verify (active and retired); a token naming any other
    /// key fails on the key's state before a signature is looked at.
    pub verifier: Option<VerifyingKey>,
}

/// Whether a shared secret is the one tokens are checked against first, or the one before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretRole {
    Current,
    Previous,
}

/// An HS256 shared secret, ready to verify. Never published, never used to sign.
pub struct HmacSecret {
    pub kid: String,
    pub role: SecretRole,
    pub key: aws_lc_rs::hmac::Key,
    /// The previous secret stops verifying after this time (`None`: until removed).
    pub not_after: Option<time::OffsetDateTime>,
}

impl std::fmt::Debug for HmacSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HmacSecret").field("kid", &self.kid).field("role", &self.role).finish_non_exhaustive()
    }
}

impl HmacSecret {
    /// Whether this secret may still verify at `now`.
    pub fn is_live(&self, now: time::OffsetDateTime) -> bool {
        self.not_after.is_none_or(|t| now < t)
    }
}

/// What the `Owner` of a sealed HS256 secret is (associated data).
pub fn secret_owner<'a>(tenant: &'a TenantId, kid: &'a str) -> Owner<'a> {
    Owner { purpose: "hmac", tenant: tenant.as_str(), id: kid }
}

/// A tenant's keys at one version. Immutable: changes build a new one.
#[derive(Debug)]
pub struct TenantKeys {
    pub tenant: Tenant,
    /// The database change counter this snapshot was built from.
    pub version: i64,
    pub jwks: Jwks,
    pub keys: HashMap<String, KeyEntry>,
    /// The active key, ready to sign. `None` only if the database has no active key,
    /// which the lifecycle and a unique index prevent.
    pub signer: Option<Arc<SigningKey>>,
    /// HS256 secrets, current first; empty until a secret is set.
    pub hmac: Vec<HmacSecret>,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot decrypt the private key of tenant `{tenant}` kid `{kid}`: {source}")]
    Decrypt { tenant: TenantId, kid: String, source: EnvelopeError },
    #[error("private key of tenant `{tenant}` kid `{kid}` is unusable: {source}")]
    Key { tenant: TenantId, kid: String, source: KeyError },
    #[error("private key of tenant `{tenant}` kid `{kid}` does not match its published public key")]
    Mismatch { tenant: TenantId, kid: String },
}

/// Publication order: the active key first, then staged (newest first), then retired
/// (newest first), kid breaking ties. A total order of the set alone, so equal sets give
/// equal bytes and ETags whatever order the keys were loaded or created in.
fn publication_rank(key: &Key) -> (u8, std::cmp::Reverse<time::OffsetDateTime>, &str) {
    let state = match key.state {
        KeyState::Active => 0,
        KeyState::Staged => 1,
        _ => 2,
    };
    (state, std::cmp::Reverse(key.created_at), key.kid.as_str())
}

impl TenantKeys {
    /// Builds the snapshot, decrypting the active key (and checking that staged keys
    /// decrypt). A key that cannot be decrypted or does not match its public half is an
    /// error: never serve or sign with garbage.
    pub fn build(loaded: LoadedTenant, master: &MasterKeys) -> Result<TenantKeys, SnapshotError> {
        let LoadedTenant { tenant, version, keys: stored, secrets } = loaded;
        let mut hmac = secrets
            .iter()
            .filter_map(|s| {
                let role = match s.state {
                    SecretState::Current => SecretRole::Current,
                    SecretState::Previous => SecretRole::Previous,
                    SecretState::Retired => return None,
                };
                Some(unseal_secret(&tenant.id, s, master).map(|key| HmacSecret {
                    kid: s.kid.clone(),
                    role,
                    key,
                    not_after: s.not_after,
                }))
            })
            .collect::<Result<Vec<_>, _>>()?;
        hmac.sort_by_key(|s| s.role != SecretRole::Current);
        let mut published: Vec<&StoredKey> = stored.iter().filter(|k| k.meta.state.is_published()).collect();
        published.sort_by_key(|k| publication_rank(&k.meta));
        let jwks = Jwks::build(&published.iter().map(|k| &k.public).collect::<Vec<_>>());

        let mut signer = None;
        for key in &stored {
            match key.meta.state {
                KeyState::Active => signer = Some(Arc::new(unseal_signer(&tenant.id, key, master)?)),
                // A staged key will sign one day: a replica that cannot open it must say so
                // now, not when the schedule activates it.
                KeyState::Staged => drop(unseal_signer(&tenant.id, key, master)?),
                _ => {}
            }
        }
        let keys = stored
            .into_iter()
            .map(|k| {
                let can_verify = matches!(k.meta.state, KeyState::Active | KeyState::Retired);
                let verifier = if can_verify { VerifyingKey::from_jwk(&k.public).ok() } else { None };
                (k.meta.kid.clone(), KeyEntry { meta: k.meta, verifier })
            })
            .collect();
        Ok(TenantKeys { tenant, version, jwks, keys, signer, hmac })
    }

    pub fn active_kid(&self) -> Option<&str> {
        self.signer.as_ref().map(|s| s.kid())
    }
}

fn unseal_secret(
    tenant: &TenantId,
    secret: &StoredSecret,
    master: &MasterKeys,
) -> Result<aws_lc_rs::hmac::Key, SnapshotError> {
    let plain = master
        .open(&secret.sealed, secret_owner(tenant, &secret.kid))
        .map_err(|source| SnapshotError::Decrypt { tenant: tenant.clone(), kid: secret.kid.clone(), source })?;
    Ok(aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &plain))
}

/// Decrypts and parses a key's private half and checks it against the public half.
pub fn unseal_signer(tenant: &TenantId, key: &StoredKey, master: &MasterKeys) -> Result<SigningKey, SnapshotError> {
    let kid = &key.meta.kid;
    let err_ctx = || (tenant.clone(), kid.clone());
    let plain: Zeroizing<Vec<u8>> = master
        .open(&key.sealed, key_owner(tenant, kid))
        .map_err(|source| SnapshotError::Decrypt { tenant: err_ctx().0, kid: err_ctx().1, source })?;
    let pkcs8 = PrivatePkcs8(plain);
    let signer = SigningKey::from_pkcs8(kid, key.meta.alg, &pkcs8).map_err(|source| SnapshotError::Key {
        tenant: err_ctx().0,
        kid: err_ctx().1,
        source,
    })?;
    let derived =
        signer.public_jwk().map_err(|source| SnapshotError::Key { tenant: err_ctx().0, kid: err_ctx().1, source })?;
    if derived != key.public {
        return Err(SnapshotError::Mismatch { tenant: err_ctx().0, kid: err_ctx().1 });
    }
    Ok(signer)
}

/// Every tenant's current snapshot. Readers take one lock-free load; writers replace a
/// tenant's entry with copy-on-write of the (small) map of pointers.
#[derive(Default)]
pub struct Registry {
    tenants: ArcSwap<HashMap<TenantId, Arc<TenantKeys>>>,
}

impl Registry {
    pub fn get(&self, tenant: &str) -> Option<Arc<TenantKeys>> {
        self.tenants.load().get(tenant).cloned()
    }

    /// Installs `snapshot` unless a newer version of the tenant is already installed (two
    /// reloads racing must not roll a tenant back). Returns the snapshot it replaced.
    pub fn install(&self, snapshot: TenantKeys) -> Option<Arc<TenantKeys>> {
        let snapshot = Arc::new(snapshot);
        let previous = self.tenants.rcu(|current| {
            let mut next = HashMap::clone(current);
            match next.get(&snapshot.tenant.id) {
                Some(existing) if existing.version > snapshot.version => {}
                _ => {
                    next.insert(snapshot.tenant.id.clone(), Arc::clone(&snapshot));
                }
            }
            next
        });
        previous.get(&snapshot.tenant.id).cloned()
    }

    pub fn all(&self) -> Vec<Arc<TenantKeys>> {
        let mut all: Vec<_> = self.tenants.load().values().cloned().collect();
        all.sort_by(|a, b| a.tenant.id.cmp(&b.tenant.id));
        all
    }

    pub fn version_of(&self, tenant: &TenantId) -> Option<i64> {
        self.tenants.load().get(tenant).map(|t| t.version)
    }
}

impl TenantKeys {
    /// Kids revoked in `self` that were not revoked in `before`.
    pub fn newly_revoked<'a>(&'a self, before: &'a TenantKeys) -> impl Iterator<Item = &'a str> + 'a {
        self.keys
            .values()
            .filter(move |k| {
                k.meta.state == KeyState::Revoked
                    && before.keys.get(&k.meta.kid).is_none_or(|b| b.meta.state != KeyState::Revoked)
            })
            .map(|k| k.meta.kid.as_str())
    }
}
