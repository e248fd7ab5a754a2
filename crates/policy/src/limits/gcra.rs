//! Token-bucket rate limits implemented as GCRA (the generic cell rate algorithm, in its
//! "virtual scheduling" form): one theoretical arrival time (TAT) per key instead of a token
//! count and a refill timestamp, so a check is one read, a little integer arithmetic and one
//! write, and `retry_after` falls out exactly.
//!
//! With emission interval `T = 1/rate` and tolerance `τ = T·(burst−1)`, a request at `now` is
//! admitted iff `now ≥ max(TAT, now) − τ`, and then `TAT ← max(TAT, now) + T`. An idle key
//! (no TAT, or a TAT in the past) therefore admits `burst` requests back to back and then one
//! per `T`, exactly like a bucket of `burst` tokens refilled at `rate`.

use super::store::{Expiring, Keyed, Store};
use super::tiers::Tier;
use super::{Outcome, unix_nanos};
use std::hash::Hash;
use std::time::{Duration, SystemTime};

const NANOS_PER_SEC: f64 = 1e9;

/// A rate limit: `rate` requests per second on average, at most `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    rate: f64,
    burst: u32,
    /// Emission interval T in ns.
    interval: u64,
    /// Tolerance τ = T·(burst−1) in ns.
    tolerance: u64,
}

/// Why a [`Limit`] could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidLimit {
    #[error("rate must be a finite number of requests per second, > 0 and ≤ 1e9")]
    Rate,
    #[error("burst must be at least 1")]
    Burst,
}

impl Limit {
    /// `rate` requests per second with bursts of up to `burst` requests.
    pub fn new(rate: f64, burst: u32) -> Result<Self, InvalidLimit> {
        if !rate.is_finite() || rate <= 0.0 || rate > NANOS_PER_SEC {
            return Err(InvalidLimit::Rate);
        }
        if burst == 0 {
            return Err(InvalidLimit::Burst);
        }
        // Rounded to whole ns: for any rate a config can express the error is far below the
        // 1% the limits promise, and integer TATs keep the hot path free of floats.
        let interval = ((NANOS_PER_SEC / rate).round() as u64).max(1);
        Ok(Self {
            rate,
            burst,
            interval,
            tolerance: interval.saturating_mul(u64::from(burst) - 1),
        })
    }

    /// `count` requests per `period` (e.g. 300 per 10 s) with bursts of up to `burst`.
    pub fn per_period(count: u32, period: Duration, burst: u32) -> Result<Self, InvalidLimit> {
        Self::new(f64::from(count) / period.as_secs_f64(), burst)
    }

    /// Apigee-style spike arrest: `rate` per second means one request every `1/rate` s, with
    /// no burst.
    pub fn spike_arrest(rate: f64) -> Result<Self, InvalidLimit> {
        Self::new(rate, 1)
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// The emission interval `1/rate`.
    pub fn interval(&self) -> Duration {
        Duration::from_nanos(self.interval)
    }

    /// The GCRA decision for a key whose live TAT is `tat` (`None` for an idle key), and the
    /// TAT to store if the request is admitted. Pure, so multi-tier checks can decide first and
    /// commit later.
    pub(crate) fn decide(&self, tat: Option<u64>, now: u64) -> (Outcome, u64) {
        let tat = tat.map_or(now, |t| t.max(now));
        let allow_at = tat.saturating_sub(self.tolerance);
        if now < allow_at {
            let outcome = Outcome::Reject {
                retry_after: Duration::from_nanos(allow_at - now),
                reset_after: Duration::from_nanos(tat - now),
            };
            return (outcome, tat);
        }
        let new_tat = tat.saturating_add(self.interval);
        let reset_after = new_tat - now;
        // Each further request at `now` would push TAT up by T; it passes while
        // TAT − now stays within τ, i.e. within burst·T = τ + T after the push.
        let full = self.tolerance.saturating_add(self.interval);
        let remaining = full.saturating_sub(reset_after) / self.interval;
        let outcome = Outcome::Admit {
            remaining,
            reset_after: Duration::from_nanos(reset_after),
        };
        (outcome, new_tat)
    }
}

/// A temporary limit for one consumer that replaces its plan's limit until `expires_at`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TemporaryOverride {
    pub limit: Limit,
    pub expires_at: SystemTime,
}

impl TemporaryOverride {
    /// The limit in force at `now`: the override until it expires, then `base`. The TAT is
    /// shared, so switching back never hands out a fresh burst.
    pub fn effective<'a>(this: Option<&'a Self>, base: &'a Limit, now: SystemTime) -> &'a Limit {
        match this {
            Some(o) if now < o.expires_at => &o.limit,
            _ => base,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Tat(pub(crate) u64);

impl Expiring for Tat {
    fn expires_at(&self) -> u64 {
        // A TAT in the past behaves exactly like no TAT at all.
        self.0
    }
}

/// GCRA state for many keys: sharded, bounded, idle keys evicted lazily.
///
/// The limit is passed on every check rather than fixed per store, so one store can serve a
/// tier whose keys have different limits (plans, per-consumer overrides).
///
/// Memory: at most [`capacity`](Self::capacity) keys. A new key arriving at a full shard first
/// evicts that shard's idle keys (TAT in the past; dropping them changes no decision). If every
/// key is still active, the new key is **not stored** and is judged as an idle key on each
/// request, i.e. admitted; [`overflows`](Self::overflows) counts these, so size the store for
/// the number of keys active within one `burst/rate` span.
pub struct KeyedLimiter<K> {
    store: Store<K, Tat>,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// A limiter holding state for at most `max_keys` keys (rounded down to a multiple of the
    /// shard count).
    pub fn new(max_keys: usize) -> Self {
        Self {
            store: Store::new(max_keys),
        }
    }

    /// Checks one request for `key` under `limit` and, if admitted, records it.
    pub fn check(&self, key: &K, limit: &Limit, now: SystemTime) -> Outcome {
        let now = unix_nanos(now);
        let key = self.store.keyed(key);
        let guard = self.store.lock(self.store.shard_of(&key));
        let tat = Store::get(&guard, &key, now).map(|t| t.0);
        let (outcome, new_tat) = limit.decide(tat, now);
        if outcome.is_admit() {
            self.store.put(&guard, &key, Tat(new_tat), now);
        }
        outcome
    }

    /// What [`check`](Self::check) would answer, without recording anything.
    pub fn peek(&self, key: &K, limit: &Limit, now: SystemTime) -> Outcome {
        let now = unix_nanos(now);
        let key = self.store.keyed(key);
        let guard = self.store.lock(self.store.shard_of(&key));
        limit
            .decide(Store::get(&guard, &key, now).map(|t| t.0), now)
            .0
    }

    /// This limiter as one tier of a [`check_all`](super::check_all).
    pub fn tier<'a>(&'a self, key: &'a K, limit: &'a Limit) -> RateTier<'a, K> {
        let key = self.store.keyed(key);
        RateTier {
            limiter: self,
            limit,
            shard: self.store.shard_of(&key),
            key,
        }
    }

    /// Drops every idle key now rather than when a shard fills up.
    pub fn evict_idle(&self, now: SystemTime) {
        self.store.evict_expired(unix_nanos(now));
    }

    /// Keys currently stored.
    pub fn len(&self) -> usize {
        self.store.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.store.capacity()
    }

    /// New keys that could not be stored because their shard was full of active keys.
    pub fn overflows(&self) -> u64 {
        self.store.overflows()
    }
}

/// One rate-limit tier of a multi-tier check; see [`KeyedLimiter::tier`].
pub struct RateTier<'a, K> {
    limiter: &'a KeyedLimiter<K>,
    key: Keyed<'a, K>,
    limit: &'a Limit,
    shard: usize,
}

impl<K: Hash + Eq + Clone> Tier for RateTier<'_, K> {
    fn lock_order(&self) -> (u64, usize) {
        (self.limiter.store.id(), self.shard)
    }

    fn enter(&self, now: u64, inner: &mut dyn FnMut(Outcome) -> bool) -> bool {
        let store = &self.limiter.store;
        let guard = store.lock(self.shard);
        let tat = Store::get(&guard, &self.key, now).map(|t| t.0);
        let (outcome, new_tat) = self.limit.decide(tat, now);
        let commit = inner(outcome);
        if commit && outcome.is_admit() {
            store.put(&guard, &self.key, Tat(new_tat), now);
        }
        commit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;
    use tollgate_core::{Clock, ManualClock};

    fn clock() -> ManualClock {
        ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_800_000_000))
    }

    fn limit(rate: f64, burst: u32) -> Limit {
        Limit::new(rate, burst).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn invalid_limits_are_refused() {
        assert_eq!(Limit::new(0.0, 1), Err(InvalidLimit::Rate));
        assert_eq!(Limit::new(f64::NAN, 1), Err(InvalidLimit::Rate));
        assert_eq!(Limit::new(-1.0, 1), Err(InvalidLimit::Rate));
        assert_eq!(Limit::new(1.0, 0), Err(InvalidLimit::Burst));
    }

    #[test]
    fn burst_then_steady_rate() {
        let clock = clock();
        let l = limit(10.0, 20);
        let lim = KeyedLimiter::new(100);
        for i in 0..20u64 {
            match lim.check(&"k", &l, clock.now()) {
                Outcome::Admit { remaining, .. } => assert_eq!(remaining, 19 - i),
                o => panic!("request {i} of the burst rejected: {o:?}"),
            }
        }
        assert!(!lim.check(&"k", &l, clock.now()).is_admit());
        // Then one per 100 ms, never two.
        for _ in 0..50 {
            clock.advance(Duration::from_millis(100));
            assert!(lim.check(&"k", &l, clock.now()).is_admit());
            assert!(!lim.check(&"k", &l, clock.now()).is_admit());
        }
    }

    #[test]
    fn accuracy_at_twice_the_rate_for_ten_seconds() {
        // The scenario's plans: gold, silver, bronze, trial.
        for (rate, burst) in [(1000.0, 2000), (100.0, 200), (10.0, 20), (5.0, 5)] {
            let clock = clock();
            let l = limit(rate, burst);
            let lim = KeyedLimiter::new(10);
            let step = Duration::from_secs_f64(1.0 / (2.0 * rate));
            // Requests at 0, step, ..., 10 s: the closed interval spans exactly 10 s, so the
            // expected count is not off by one request (2% of trial's 55).
            let sent = (2.0 * rate * 10.0) as u64 + 1;
            let mut admitted = 0u64;
            for _ in 0..sent {
                if lim.check(&1u8, &l, clock.now()).is_admit() {
                    admitted += 1;
                }
                clock.advance(step);
            }
            let expected = f64::from(burst) + rate * 10.0;
            let err = (admitted as f64 - expected).abs() / expected;
            assert!(
                err <= 0.01,
                "rate {rate} burst {burst}: admitted {admitted}, expected {expected}"
            );
        }
    }

    #[test]
    fn retry_after_is_exact() {
        for (rate, burst) in [(3.0, 1), (7.0, 4), (1000.0, 2000)] {
            let clock = clock();
            let l = limit(rate, burst);
            let lim = KeyedLimiter::new(10);
            let retry = loop {
                match lim.check(&"k", &l, clock.now()) {
                    Outcome::Reject { retry_after, .. } => break retry_after,
                    Outcome::Admit { .. } => {}
                }
            };
            assert!(retry > Duration::ZERO);
            let at = clock.now() + retry;
            assert!(!lim.peek(&"k", &l, at - Duration::from_nanos(1)).is_admit());
            assert!(lim.check(&"k", &l, at).is_admit());
        }
    }

    #[test]
    fn reset_after_is_when_the_bucket_is_full_again() {
        let clock = clock();
        let l = limit(10.0, 5);
        let lim = KeyedLimiter::new(10);
        for _ in 0..3 {
            lim.check(&"k", &l, clock.now());
        }
        let Outcome::Admit { reset_after, .. } = lim.peek(&"k", &l, clock.now()) else {
            panic!("rejected");
        };
        // Three used plus the peeked one: 400 ms to refill.
        assert_eq!(reset_after, Duration::from_millis(400));
        clock.advance(Duration::from_millis(300));
        assert_eq!(
            lim.peek(&"k", &l, clock.now()),
            Outcome::Admit {
                remaining: 4,
                reset_after: Duration::from_millis(100)
            }
        );
    }

    #[test]
    fn spike_arrest_spaces_requests_evenly() {
        let clock = clock();
        let l = Limit::spike_arrest(10.0).unwrap_or_else(|e| panic!("{e}"));
        let lim = KeyedLimiter::new(10);
        assert!(lim.check(&"k", &l, clock.now()).is_admit());
        match lim.check(&"k", &l, clock.now()) {
            Outcome::Reject { retry_after, .. } => {
                assert_eq!(retry_after, Duration::from_millis(100));
            }
            o => panic!("second request in the same instant admitted: {o:?}"),
        }
        clock.advance(Duration::from_millis(99));
        assert!(!lim.check(&"k", &l, clock.now()).is_admit());
        clock.advance(Duration::from_millis(1));
        assert!(lim.check(&"k", &l, clock.now()).is_admit());
        // Idle for a long time still grants only one: no burst accumulates.
        clock.advance(Duration::from_secs(60));
        assert!(lim.check(&"k", &l, clock.now()).is_admit());
        assert!(!lim.check(&"k", &l, clock.now()).is_admit());
    }

    #[test]
    fn keys_are_isolated() {
        let clock = clock();
        let l = limit(1.0, 2);
        let lim = KeyedLimiter::new(100);
        for _ in 0..2 {
            assert!(lim.check(&"partner-gold", &l, clock.now()).is_admit());
        }
        assert!(!lim.check(&"partner-gold", &l, clock.now()).is_admit());
        assert_eq!(
            lim.check(&"partner-gold-b", &l, clock.now()),
            Outcome::Admit {
                remaining: 1,
                reset_after: Duration::from_secs(1)
            }
        );
    }

    #[test]
    fn rejections_consume_nothing() {
        let clock = clock();
        let l = limit(1.0, 1);
        let lim = KeyedLimiter::new(10);
        assert!(lim.check(&"k", &l, clock.now()).is_admit());
        for _ in 0..100 {
            assert!(!lim.check(&"k", &l, clock.now()).is_admit());
        }
        clock.advance(Duration::from_secs(1));
        assert!(lim.check(&"k", &l, clock.now()).is_admit());
    }

    #[test]
    fn memory_stays_bounded() {
        let clock = clock();
        let l = limit(100.0, 10);
        let lim = KeyedLimiter::new(10_000);
        assert!(lim.capacity() <= 10_000);
        for i in 0..1_000_000u32 {
            lim.check(&i, &l, clock.now());
            if i % 50_000 == 0 {
                // Let earlier keys go idle so eviction, not only refusal, is exercised.
                clock.advance(Duration::from_secs(1));
            }
        }
        assert!(lim.len() <= 10_000, "{} keys stored", lim.len());
        assert!(lim.overflows() > 0);
        // Once earlier keys are idle, a new key is stored again (its state persists).
        clock.advance(Duration::from_secs(1));
        let late = u32::MAX;
        lim.check(&late, &l, clock.now());
        assert_eq!(
            lim.peek(&late, &l, clock.now()),
            Outcome::Admit {
                remaining: 8,
                reset_after: Duration::from_millis(20)
            }
        );
        clock.advance(Duration::from_secs(1));
        lim.evict_idle(clock.now());
        assert!(lim.is_empty());
    }

    #[test]
    fn temporary_override_expires() {
        let clock = clock();
        let base = limit(10.0, 10);
        let o = TemporaryOverride {
            limit: limit(100.0, 100),
            expires_at: clock.now() + Duration::from_secs(60),
        };
        assert_eq!(
            TemporaryOverride::effective(Some(&o), &base, clock.now()),
            &o.limit
        );
        clock.advance(Duration::from_secs(60));
        assert_eq!(
            TemporaryOverride::effective(Some(&o), &base, clock.now()),
            &base
        );
        assert_eq!(
            TemporaryOverride::effective(None, &base, clock.now()),
            &base
        );
    }

    #[test]
    fn check_runs_without_timing_assertions() {
        // A smoke run of the hot path over many keys; the criterion bench measures it.
        let clock = clock();
        let l = limit(1000.0, 2000);
        let lim = KeyedLimiter::new(1024);
        let mut admitted = 0u32;
        for i in 0..100_000u32 {
            if lim.check(&(i % 512), &l, clock.now()).is_admit() {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 100_000);
    }
}
