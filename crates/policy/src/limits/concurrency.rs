//! Concurrency limits: at most `limit` requests in flight per key (consumer, route, upstream).
//! A [`Permit`] is the request's slot; dropping it frees the slot, so the pipeline frees it by
//! dropping the permit with the response body, whether the body ended or the client left.
//!
//! Keys live only while they have requests in flight, so memory is bounded by the number of
//! in-flight requests and no eviction is needed.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};

const SHARDS: usize = 16;

struct Inner<K> {
    hasher: RandomState,
    shards: [Mutex<HashMap<K, u32>>; SHARDS],
}

impl<K: Hash + Eq> Inner<K> {
    fn shard(&self, key: &K) -> MutexGuard<'_, HashMap<K, u32>> {
        let i = (self.hasher.hash_one(key) % SHARDS as u64) as usize;
        // A panic while holding the lock leaves counts that are still meaningful.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// In-flight counters per key. Cheap to clone; clones share the counters.
pub struct ConcurrencyLimiter<K> {
    inner: Arc<Inner<K>>,
}

impl<K> Clone for ConcurrencyLimiter<K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<K: Hash + Eq + Clone> Default for ConcurrencyLimiter<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Hash + Eq + Clone> ConcurrencyLimiter<K> {
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                hasher: RandomState::new(),
                shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            }),
        }
    }

    /// A slot for `key` if fewer than `limit` are in flight.
    pub fn try_acquire(&self, key: K, limit: u32) -> Option<Permit<K>> {
        {
            let mut shard = self.inner.shard(&key);
            let n = shard.entry(key.clone()).or_insert(0);
            if *n >= limit {
                if *n == 0 {
                    // A limit of zero must not leave an empty entry behind.
                    shard.remove(&key);
                }
                return None;
            }
            *n += 1;
        }
        Some(Permit {
            inner: self.inner.clone(),
            key: Some(key),
        })
    }

    /// Requests in flight for `key`.
    pub fn in_flight(&self, key: &K) -> u32 {
        self.inner.shard(key).get(key).copied().unwrap_or(0)
    }

    /// Keys with requests in flight.
    pub fn len(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One in-flight slot; frees it on drop.
#[must_use = "the slot is freed as soon as the permit is dropped"]
pub struct Permit<K: Hash + Eq> {
    inner: Arc<Inner<K>>,
    key: Option<K>,
}

impl<K: Hash + Eq> Drop for Permit<K> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let mut shard = self.inner.shard(&key);
        if let Some(n) = shard.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                shard.remove(&key);
            }
        }
    }
}

impl<K: Hash + Eq + std::fmt::Debug> std::fmt::Debug for Permit<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit").field("key", &self.key).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_static<T: Send + 'static>(_: &T) {}

    #[test]
    fn permits_are_released_on_drop() {
        let lim = ConcurrencyLimiter::new();
        let a = lim.try_acquire("partner-gold".to_string(), 2);
        let b = lim.try_acquire("partner-gold".to_string(), 2);
        assert!(a.is_some() && b.is_some());
        assert!(lim.try_acquire("partner-gold".to_string(), 2).is_none());
        assert_eq!(lim.in_flight(&"partner-gold".to_string()), 2);
        // Another key has its own slots.
        let other = lim.try_acquire("partner-silver".to_string(), 2);
        assert!(other.is_some());
        drop(a);
        assert_eq!(lim.in_flight(&"partner-gold".to_string()), 1);
        let c = lim.try_acquire("partner-gold".to_string(), 2);
        assert!(c.is_some());
        drop((b, c, other));
        assert!(lim.is_empty());
    }

    #[test]
    fn permits_move_across_threads() {
        let lim = ConcurrencyLimiter::new();
        let p = lim.try_acquire(7u64, 1);
        assert_send_static(&p);
        assert!(lim.try_acquire(7u64, 1).is_none());
        let handle = std::thread::spawn(move || drop(p));
        assert!(handle.join().is_ok());
        assert!(lim.try_acquire(7u64, 1).is_some());
    }

    #[test]
    fn zero_limit_refuses_and_stores_nothing() {
        let lim = ConcurrencyLimiter::new();
        assert!(lim.try_acquire("upstream-a", 0).is_none());
        assert!(lim.is_empty());
    }

    #[test]
    fn concurrent_acquires_respect_the_limit() {
        let lim = ConcurrencyLimiter::new();
        let held: Vec<Permit<&str>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let lim = lim.clone();
                    s.spawn(move || {
                        (0..50)
                            .filter_map(|_| lim.try_acquire("route", 10))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        });
        assert_eq!(held.len(), 10);
        drop(held);
        assert_eq!(lim.in_flight(&"route"), 0);
    }
}
