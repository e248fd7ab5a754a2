//! The sharded, bounded map behind the rate limiters and quotas.
//!
//! Shard locks are re-entrant so that a multi-tier check (see [`super::tiers`]) can hold every
//! involved shard at once even when two tiers hash to the same shard of the same store: the
//! global lock order prevents deadlocks between threads, re-entrancy prevents a thread from
//! deadlocking on itself. The `RefCell` inside is never borrowed across a call into another
//! tier, so the re-entrant path cannot trip it.

use foldhash::quality::RandomState;
use hashbrown::HashTable;
use parking_lot::{ReentrantMutex, ReentrantMutexGuard};
use std::cell::RefCell;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bound on shards; enough to keep two to a few dozen cores from contending.
const MAX_SHARDS: usize = 32;

/// A stored value that becomes equivalent to "no entry" at some instant (ns since the epoch).
pub(crate) trait Expiring: Copy {
    fn expires_at(&self) -> u64;
}

pub(crate) struct Shard<K, V> {
    /// Entries under the store's hash ([`Keyed`]), which picks the shard and the bucket both.
    map: HashTable<(K, V)>,
    /// No entry expires before this instant, so a sweep before it would free nothing. Keeps a
    /// full shard of live keys from being rescanned on every new key.
    next_sweep: u64,
}

type Locked<K, V> = ReentrantMutex<RefCell<Shard<K, V>>>;
pub(crate) type Guard<'a, K, V> = ReentrantMutexGuard<'a, RefCell<Shard<K, V>>>;

/// Distinguishes stores (and pinned state) in the global lock order.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// A fresh place in the global lock order.
pub(crate) fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// A key with its hash, computed once per check: choosing the shard, reading and writing
/// would otherwise hash it three times.
pub(crate) struct Keyed<'a, K> {
    key: &'a K,
    hash: u64,
}

pub(crate) struct Store<K, V> {
    id: u64,
    // foldhash, randomly seeded per store: keys include client addresses, so the hash must not
    // be predictable, and SipHash cost more than the limiter itself on the hot path.
    hasher: RandomState,
    shards: Box<[Locked<K, V>]>,
    shard_cap: usize,
    overflows: AtomicU64,
}

impl<K: Hash + Eq + Clone, V: Expiring> Store<K, V> {
    /// A store of at most `max_keys` keys (rounded down to a multiple of the shard count).
    pub(crate) fn new(max_keys: usize) -> Self {
        let max_keys = max_keys.max(1);
        let shards = MAX_SHARDS.min(max_keys);
        let shard_cap = max_keys / shards;
        Self {
            id: next_id(),
            hasher: RandomState::default(),
            shards: (0..shards)
                .map(|_| {
                    ReentrantMutex::new(RefCell::new(Shard {
                        map: HashTable::new(),
                        next_sweep: 0,
                    }))
                })
                .collect(),
            shard_cap,
            overflows: AtomicU64::new(0),
        }
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn capacity(&self) -> usize {
        self.shard_cap * self.shards.len()
    }

    pub(crate) fn keyed<'a>(&self, key: &'a K) -> Keyed<'a, K> {
        Keyed {
            key,
            hash: self.hasher.hash_one(key),
        }
    }

    pub(crate) fn shard_of(&self, k: &Keyed<'_, K>) -> usize {
        // The table's buckets come from the hash's low bits and its tags from the top seven,
        // so the shard takes bits from the middle: the keys of one shard must not share the
        // bits that spread them inside it.
        usize::from((k.hash >> 32) as u16) % self.shards.len()
    }

    pub(crate) fn lock(&self, shard: usize) -> Guard<'_, K, V> {
        self.shards[shard % self.shards.len()].lock()
    }

    /// The live value of `key`, or `None` when absent or expired (the two are equivalent).
    pub(crate) fn get(guard: &Guard<'_, K, V>, k: &Keyed<'_, K>, now: u64) -> Option<V> {
        guard
            .borrow()
            .map
            .find(k.hash, |(key, _)| key == k.key)
            .map(|(_, v)| *v)
            .filter(|v| v.expires_at() > now)
    }

    /// Stores `value` for `key`. A new key in a full shard first evicts expired entries; if
    /// none are expired the key is not stored and the write is counted as an overflow.
    pub(crate) fn put(&self, guard: &Guard<'_, K, V>, k: &Keyed<'_, K>, value: V, now: u64) {
        let mut shard = guard.borrow_mut();
        // An entry that expires earlier than the recorded horizon moves it, or a full shard
        // would skip a sweep that could free space.
        shard.next_sweep = shard.next_sweep.min(value.expires_at());
        if let Some((_, slot)) = shard.map.find_mut(k.hash, |(key, _)| key == k.key) {
            *slot = value;
            return;
        }
        if shard.map.len() >= self.shard_cap && now >= shard.next_sweep {
            self.sweep(&mut shard, now);
        }
        if shard.map.len() < self.shard_cap {
            let hasher = &self.hasher;
            shard
                .map
                .insert_unique(k.hash, (k.key.clone(), value), |(key, _)| {
                    hasher.hash_one(key)
                });
        } else {
            self.overflows.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Drops every expired entry; for a periodic timer, since eviction is otherwise lazy.
    pub(crate) fn evict_expired(&self, now: u64) {
        for shard in self.shards.iter() {
            let guard = shard.lock();
            self.sweep(&mut guard.borrow_mut(), now);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().borrow().map.len())
            .sum()
    }

    pub(crate) fn overflows(&self) -> u64 {
        self.overflows.load(Ordering::Relaxed)
    }

    fn sweep(&self, shard: &mut Shard<K, V>, now: u64) {
        let mut next = u64::MAX;
        shard.map.retain(|(_, v)| {
            let at = v.expires_at();
            let keep = at > now;
            if keep {
                next = next.min(at);
            }
            keep
        });
        let hasher = &self.hasher;
        let len = shard.map.len();
        shard
            .map
            .shrink_to(len.saturating_mul(2), |(key, _)| hasher.hash_one(key));
        shard.next_sweep = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy)]
    struct Until(u64);

    impl Expiring for Until {
        fn expires_at(&self) -> u64 {
            self.0
        }
    }

    /// One hash picks both the shard and the bucket: keys must still spread over every shard,
    /// or a store would overflow long before it holds its capacity.
    #[test]
    fn keys_spread_over_the_shards_and_are_found_again() {
        let store: Store<String, Until> = Store::new(32 * 100);
        let keys: Vec<String> = (0..2_000).map(|i| format!("consumer-{i}")).collect();
        let mut per_shard = vec![0usize; 32];
        for k in &keys {
            let keyed = store.keyed(k);
            let shard = store.shard_of(&keyed);
            per_shard[shard] += 1;
            let guard = store.lock(shard);
            store.put(&guard, &keyed, Until(10), 0);
        }
        assert_eq!(store.overflows(), 0, "shards: {per_shard:?}");
        assert_eq!(store.len(), keys.len());
        // 62.5 keys per shard on average: no shard empty, none near its cap of 100.
        assert!(
            per_shard.iter().all(|&n| n > 20 && n < 100),
            "{per_shard:?}"
        );
        for k in &keys {
            let keyed = store.keyed(k);
            let guard = store.lock(store.shard_of(&keyed));
            assert!(Store::get(&guard, &keyed, 5).is_some(), "{k} lost");
            assert!(
                Store::get(&guard, &keyed, 10).is_none(),
                "{k} outlived its expiry"
            );
        }
        store.evict_expired(10);
        assert_eq!(store.len(), 0);
    }
}
