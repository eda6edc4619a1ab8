//! A bounded cache of verified tokens, keyed by tenant and the full token.
//!
//! A hit skips parsing and the signature check only. Everything that can change after a
//! token was verified is checked again on every hit by the caller: the key's state (a
//! revoked key fails at once even before [`VerifiedCache::forget_kid`] runs), exp/nbf,
//! issuer, audience and revocation. An expired token is never answered from the cache (its
//! `exp` is re-checked); its entry is dropped when its shard next fills up.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};

use super::verify::Checked;

const SHARDS: usize = 16;

struct Entry {
    tenant: Box<str>,
    token: Box<str>,
    checked: Arc<Checked>,
}

pub struct VerifiedCache {
    shards: Vec<Mutex<HashMap<u64, Entry>>>,
    per_shard: usize,
    /// Keyed with a per-process random seed: clients cannot aim tokens at one shard.
    hasher: RandomState,
}

impl VerifiedCache {
    /// A cache holding about `capacity` tokens; 0 disables it.
    pub fn new(capacity: usize) -> VerifiedCache {
        VerifiedCache {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: capacity.div_ceil(SHARDS),
            hasher: RandomState::new(),
        }
    }

    /// Where a token lives. Hashing only the signature segment is enough to tell tokens
    /// apart (only verified tokens are stored, and lookups compare the whole token) and
    /// much cheaper than hashing a 500-byte token.
    fn slot(&self, tenant: &str, token: &str) -> (usize, u64) {
        let signature = token.rsplit_once('.').map_or(token, |(_, s)| s);
        let hash = self.hasher.hash_one((tenant, signature));
        ((hash % SHARDS as u64) as usize, hash)
    }

    pub fn get(&self, tenant: &str, token: &str) -> Option<Arc<Checked>> {
        if self.per_shard == 0 {
            return None;
        }
        let (shard, hash) = self.slot(tenant, token);
        let map = self.shards[shard].lock().unwrap_or_else(|e| e.into_inner());
        // Compare the full token: a hash match alone must never admit a token.
        map.get(&hash).filter(|e| &*e.tenant == tenant && &*e.token == token).map(|e| Arc::clone(&e.checked))
    }

    /// Stores a verified token. `now` (unix seconds) lets a full shard drop expired
    /// entries first.
    pub fn insert(&self, tenant: &str, token: &str, checked: Arc<Checked>, now: f64) {
        if self.per_shard == 0 {
            return;
        }
        let (shard, hash) = self.slot(tenant, token);
        let mut map = self.shards[shard].lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= self.per_shard {
            map.retain(|_, e| e.checked.claims.exp.is_some_and(|exp| exp > now));
        }
        if map.len() >= self.per_shard {
            // Still full of live tokens: drop a quarter, whichever the map yields first.
            let victims: Vec<u64> = map.keys().take(self.per_shard / 4 + 1).copied().collect();
            for k in victims {
                map.remove(&k);
            }
        }
        map.insert(hash, Entry { tenant: tenant.into(), token: token.into(), checked });
    }

    pub fn remove(&self, tenant: &str, token: &str) {
        let (shard, hash) = self.slot(tenant, token);
        self.shards[shard].lock().unwrap_or_else(|e| e.into_inner()).remove(&hash);
    }

    /// Drops every entry verified by `kid` of `tenant` (after the key is revoked).
    pub fn forget_kid(&self, tenant: &str, kid: &str) {
        for shard in &self.shards {
            shard
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|_, e| !(&*e.tenant == tenant && e.checked.kid == kid));
        }
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::jws::UnverifiedClaims;

    fn checked(kid: &str, exp: f64) -> Arc<Checked> {
        Arc::new(Checked {
            kid: kid.into(),
            alg: "ES256",
            claims: UnverifiedClaims { exp: Some(exp), ..Default::default() },
            payload: b"{}".to_vec(),
        })
    }

    #[test]
    fn hits_only_for_the_same_tenant_and_token() {
        let cache = VerifiedCache::new(100);
        cache.insert("t", "tok", checked("k", 100.0), 0.0);
        assert!(cache.get("t", "tok").is_some());
        assert!(cache.get("t", "tok2").is_none());
        assert!(cache.get("u", "tok").is_none());
    }

    #[test]
    fn forgetting_a_kid_drops_its_tokens_only() {
        let cache = VerifiedCache::new(100);
        cache.insert("t", "a", checked("k1", 100.0), 0.0);
        cache.insert("t", "b", checked("k2", 100.0), 0.0);
        cache.insert("u", "c", checked("k1", 100.0), 0.0);
        cache.forget_kid("t", "k1");
        assert!(cache.get("t", "a").is_none());
        assert!(cache.get("t", "b").is_some());
        assert!(cache.get("u", "c").is_some());
    }

    #[test]
    fn stays_bounded_and_evicts_expired_entries_first() {
        let cache = VerifiedCache::new(64);
        for i in 0..1000 {
            cache.insert("t", &format!("tok{i}"), checked("k", f64::from(i)), f64::from(i));
        }
        assert!(cache.len() <= 64 + SHARDS, "len {}", cache.len());
        assert!(cache.get("t", "tok999").is_some(), "the newest live entry survives");
    }

    #[test]
    fn capacity_zero_disables_the_cache() {
        let cache = VerifiedCache::new(0);
        cache.insert("t", "a", checked("k", 100.0), 0.0);
        assert!(cache.get("t", "a").is_none());
    }
}
