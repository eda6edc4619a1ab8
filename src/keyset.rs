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
    /// The ETag as a header value, built once.
    pub etag_header: http::HeaderValue,
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
        let etag = format!("\"{}\"", B64.encode(&digest[..18]));
        // Quotes and base64url characters are always a valid header value.
        let etag_header = http::HeaderValue::from_str(&etag).unwrap_or(http::HeaderValue::from_static("\"\""));
        Jwks { etag, etag_header, body: Bytes::from(body) }
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use time::macros::datetime;

    use super::*;
    use crate::crypto::generate;
    use crate::domain::{Period, Plan, Policy, SigningAlg, activate, revoke, rotate, schedule, stage};

    const T0: time::OffsetDateTime = datetime!(2026-01-01 00:00 UTC);

    fn policy() -> Policy {
        Policy::runbook()
    }

    fn tenant() -> Tenant {
        Tenant {
            id: TenantId::parse("acme").unwrap(),
            issuer: "https://issuer.test".into(),
            audiences: vec!["api".into()],
            policy: policy(),
            created_at: T0,
            updated_at: T0,
        }
    }

    /// Applies `plan` to the stored keys as the store would, generating the fresh key.
    fn apply(keys: &mut Vec<StoredKey>, plan: &Plan, now: time::OffsetDateTime, master: &MasterKeys, id: &TenantId) {
        let fresh = plan.fresh.map(|alg| {
            let g = generate(alg).unwrap();
            let sealed = master.seal(g.private.as_bytes(), key_owner(id, &g.public.kid)).unwrap();
            StoredKey { meta: Key::new_staged(g.public.kid.clone(), alg, now), public: g.public, sealed }
        });
        let mut metas: Vec<Key> = keys.iter().map(|k| k.meta.clone()).collect();
        plan.apply(&mut metas, now, fresh.as_ref().map(|f| f.meta.kid.as_str())).unwrap();
        keys.extend(fresh);
        for k in keys.iter_mut() {
            k.meta = metas.iter().find(|m| m.kid == k.meta.kid).unwrap().clone();
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Stage,
        Activate(usize),
        Rotate(bool),
        Revoke(Option<usize>),
        Days(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            Just(Op::Stage),
            (0usize..6).prop_map(Op::Activate),
            any::<bool>().prop_map(Op::Rotate),
            proptest::option::of(0usize..6).prop_map(Op::Revoke),
            (1u8..120).prop_map(Op::Days),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// After any sequence of lifecycle operations, the published JWKS holds the active
        /// key and never a revoked or expired key, and the snapshot signs with the one
        /// active key.
        #[test]
        fn jwks_invariants_hold_after_any_sequence(ops in proptest::collection::vec(op(), 1..25)) {
            let master = MasterKeys::parse(&MasterKeys::generate_spec("k").unwrap()).unwrap();
            let id = tenant().id;
            let pol = policy();
            let mut keys = Vec::new();
            let mut now = T0;
            apply(&mut keys, &rotate(&[], SigningAlg::Es256, false), now, &master, &id);
            for (version, op) in ops.into_iter().enumerate() {
                let metas: Vec<Key> = keys.iter().map(|k| k.meta.clone()).collect();
                let kid = |i: usize| metas[i % metas.len()].kid.clone();
                let plan = match op {
                    Op::Stage => Some(stage(SigningAlg::Es256)),
                    Op::Activate(i) => activate(&metas, &kid(i), now, pol.stage_lead, true).ok(),
                    Op::Rotate(emergency) => Some(rotate(&metas, SigningAlg::Es256, emergency)),
                    Op::Revoke(i) => revoke(&metas, i.map(kid).as_deref(), SigningAlg::Es256).ok(),
                    Op::Days(d) => {
                        now += time::Duration::days(i64::from(d));
                        Some(schedule(&metas, &pol, now, Period::from_secs(30)))
                    }
                };
                if let Some(plan) = plan {
                    apply(&mut keys, &plan, now, &master, &id);
                }
                let loaded = LoadedTenant { tenant: tenant(), version: version as i64, keys: keys.clone(), secrets: Vec::new() };
                let snapshot = TenantKeys::build(loaded, &master).unwrap();
                let jwks: serde_json::Value = serde_json::from_slice(&snapshot.jwks.body).unwrap();
                let published: Vec<&str> = jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap()).collect();
                let active: Vec<&Key> = keys.iter().map(|k| &k.meta).filter(|m| m.state == KeyState::Active).collect();
                prop_assert_eq!(active.len(), 1);
                prop_assert!(published.contains(&active[0].kid.as_str()), "active key published");
                prop_assert_eq!(snapshot.active_kid(), Some(active[0].kid.as_str()));
                for k in &keys {
                    if matches!(k.meta.state, KeyState::Revoked | KeyState::Expired) {
                        prop_assert!(!published.contains(&k.meta.kid.as_str()), "{} key published", k.meta.state.as_str());
                    }
                }
                prop_assert!(jwks["keys"].as_array().unwrap().iter().all(|k| k.get("d").is_none() && k["kty"] != "oct"));
            }
        }
    }
}
