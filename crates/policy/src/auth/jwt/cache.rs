//! Verified-token cache: a token seen before skips signature verification until its `exp`.
//!
//! Keyed by SHA-256 of the token so the cache never holds bearer credentials. Sharded
//! `Mutex<HashMap>`: critical sections are a hash lookup, never an await, and moka's compile
//! cost buys nothing at this size.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use super::Claims;

const SHARDS: usize = 16;

pub(crate) type CacheKey = [u8; 32];

pub(crate) fn cache_key(token: &str) -> CacheKey {
    Sha256::digest(token.as_bytes()).into()
}

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) claims: Arc<Claims>,
    /// Index of the issuer and the generation of its key set at verification time: a key set
    /// that changed since (a key removed is a key revoked) makes the entry worthless.
    pub(crate) issuer: usize,
    pub(crate) generation: u64,
}

#[derive(Debug)]
pub(crate) struct TokenCache {
    shards: Vec<Mutex<HashMap<CacheKey, Entry>>>,
    per_shard: usize,
}

impl TokenCache {
    pub(crate) fn new(capacity: usize) -> Self {
        let per_shard = capacity.div_ceil(SHARDS);
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard,
        }
    }

    fn shard(&self, key: &CacheKey) -> MutexGuard<'_, HashMap<CacheKey, Entry>> {
        // The key is a uniform hash already, so one byte spreads entries evenly.
        let m = &self.shards[usize::from(key[0]) % SHARDS];
        // A panic elsewhere while holding the lock leaves a consistent map (every operation
        // is a single insert or remove), so poisoning is ignored.
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached claims, unless the token has reached `exp` or its issuer's keys changed.
    pub(crate) fn get(
        &self,
        key: &CacheKey,
        now: SystemTime,
        generation_of: impl Fn(usize) -> u64,
    ) -> Option<Arc<Claims>> {
        if self.per_shard == 0 {
            return None;
        }
        let mut shard = self.shard(key);
        let entry = shard.get(key)?;
        if now < entry.claims.expires_at && entry.generation == generation_of(entry.issuer) {
            return Some(entry.claims.clone());
        }
        shard.remove(key);
        None
    }

    pub(crate) fn insert(&self, key: CacheKey, entry: Entry, now: SystemTime) {
        if self.per_shard == 0 || now >= entry.claims.expires_at {
            return;
        }
        let mut shard = self.shard(&key);
        if shard.len() >= self.per_shard && !shard.contains_key(&key) {
            shard.retain(|_, e| now < e.claims.expires_at);
            if shard.len() >= self.per_shard {
                // Still full of live entries: drop an arbitrary one. Eviction order hardly
                // matters; a miss only costs one signature verification.
                if let Some(victim) = shard.keys().next().copied() {
                    shard.remove(&victim);
                }
            }
        }
        shard.insert(key, entry);
    }

    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}
