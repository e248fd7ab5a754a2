//! Limiter state found once, when a config is compiled, instead of on every request: the one
//! bucket or quota window of a key the config alone decides (the gateway's bucket, a route's
//! shared bucket, a configured consumer's plan bucket and plan quota).
//!
//! A keyed store hashes the key, picks a shard, probes its table to read and again to write;
//! here the compiled route holds the state itself, so a check is a lock, the arithmetic and a
//! store. The state takes part in [`check_all`](super::check_all) like any other tier: it has
//! its own place in the global lock order, and its lock is re-entrant like a shard's, so the
//! same state named twice in one check is judged and recorded once.

use super::gcra::Tat;
use super::quota::{self, Window};
use super::store::{Expiring, next_id};
use super::tiers::{MAX_TIERS, Tier, TooManyTiers, Verdict};
use super::{Limit, Outcome, QuotaLimit, unix_nanos};
use parking_lot::{ReentrantMutex, ReentrantMutexGuard};
use std::cell::Cell;
use std::time::SystemTime;

/// What pinned state holds (a GCRA bucket's TAT, a quota window) and how it decides under its
/// limit. Implemented for the two kinds; not nameable outside the crate.
pub trait State: Copy {
    type Limit;

    /// The decision for a request at `now` given the live state (`None`: idle or expired), and
    /// the state to record if the request is admitted.
    fn decide(limit: &Self::Limit, live: Option<Self>, now: u64) -> (Outcome, Self);

    /// From this instant (ns since the epoch) the state means the same as none.
    fn until(&self) -> u64;
}

impl State for Tat {
    type Limit = Limit;

    fn decide(limit: &Limit, live: Option<Self>, now: u64) -> (Outcome, Self) {
        let (outcome, tat) = limit.decide(live.map(|t| t.0), now);
        (outcome, Tat(tat))
    }

    fn until(&self) -> u64 {
        self.expires_at()
    }
}

impl State for Window {
    type Limit = QuotaLimit;

    fn decide(limit: &QuotaLimit, live: Option<Self>, now: u64) -> (Outcome, Self) {
        quota::decide(limit, live, now)
    }

    fn until(&self) -> u64 {
        self.expires_at()
    }
}

/// The state of one key behind its own lock, held by whoever compiled it.
pub struct Pinned<K, S> {
    key: K,
    /// Its place in the global lock order.
    id: u64,
    state: ReentrantMutex<Cell<Option<S>>>,
}

/// A GCRA bucket, pinned.
pub type PinnedBucket<K> = Pinned<K, Tat>;
/// A quota window, pinned.
pub type PinnedQuota<K> = Pinned<K, Window>;

type Guard<'a, S> = ReentrantMutexGuard<'a, Cell<Option<S>>>;

impl<K: std::fmt::Debug, S> std::fmt::Debug for Pinned<K, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Pinned").field(&self.key).finish()
    }
}

impl<K, S: State> Pinned<K, S> {
    /// Idle state (nothing recorded yet) for `key`.
    pub fn new(key: K) -> Self {
        Self {
            key,
            id: next_id(),
            state: ReentrantMutex::new(Cell::new(None)),
        }
    }

    /// The key this state belongs to (what a shared store would call it).
    pub fn key(&self) -> &K {
        &self.key
    }

    /// This state as one tier of a [`check_all`](super::check_all): recorded only if every
    /// tier admits.
    pub fn tier<'a>(&'a self, limit: &'a S::Limit) -> PinnedTier<'a, K, S> {
        PinnedTier {
            pinned: self,
            limit,
        }
    }

    /// What a check under `limit` would answer at `now`, without recording anything.
    pub fn peek(&self, limit: &S::Limit, now: SystemTime) -> Outcome {
        self.lock_and_decide(limit, unix_nanos(now)).0
    }

    /// Locks the state and decides on it (an expired state is the same as none); the guard
    /// comes back with the state to record if the request is admitted.
    fn lock_and_decide(&self, limit: &S::Limit, now: u64) -> (Outcome, Guard<'_, S>, S) {
        let guard = self.state.lock();
        let live = guard.get().filter(|s| s.until() > now);
        let (outcome, next) = S::decide(limit, live, now);
        (outcome, guard, next)
    }
}

/// One tier of a multi-tier check; see [`Pinned::tier`].
pub struct PinnedTier<'a, K, S: State> {
    pinned: &'a Pinned<K, S>,
    limit: &'a S::Limit,
}

pub type PinnedBucketTier<'a, K> = PinnedTier<'a, K, Tat>;
pub type PinnedQuotaTier<'a, K> = PinnedTier<'a, K, Window>;

impl<K, S: State> Tier for PinnedTier<'_, K, S> {
    fn lock_order(&self) -> (u64, usize) {
        (self.pinned.id, 0)
    }

    fn enter(&self, now: u64, inner: &mut dyn FnMut(Outcome) -> bool) -> bool {
        let (outcome, guard, next) = self.pinned.lock_and_decide(self.limit, now);
        let commit = inner(outcome);
        if commit && outcome.is_admit() {
            guard.set(Some(next));
        }
        commit
    }
}

/// [`check_all`](super::check_all) for a request whose every tier is pinned: the same
/// all-or-nothing decision in the same global lock order, without a tier object, a virtual
/// call and a nested closure per tier. Every slot is locked in order, every tier decided on
/// what it holds, and all of them recorded, or none. `verdict` gets the rate tiers' outcomes,
/// then the quotas', in the order given.
pub fn check_pinned<K>(
    rates: &[(&PinnedBucket<K>, &Limit)],
    quotas: &[(&PinnedQuota<K>, &QuotaLimit)],
    now: SystemTime,
    verdict: &mut Verdict,
) -> Result<(), TooManyTiers> {
    let n = rates.len() + quotas.len();
    if n > MAX_TIERS {
        return Err(TooManyTiers);
    }
    let now = unix_nanos(now);
    // (place in the lock order, which tier): rates are 0.., quotas follow.
    let mut order = [(u64::MAX, 0usize); MAX_TIERS];
    let ids = rates
        .iter()
        .map(|(b, _)| b.id)
        .chain(quotas.iter().map(|(q, _)| q.id));
    for (i, (slot, id)) in order.iter_mut().zip(ids).enumerate() {
        *slot = (id, i);
    }
    let order = &mut order[..n];
    order.sort_unstable();
    // Each tier is decided as soon as its lock is held (nothing else can change its state
    // then), and the state to record is kept beside the guard until every tier has answered.
    let mut held: [Held<'_>; MAX_TIERS] = [const { Held::None }; MAX_TIERS];
    let mut admit = true;
    for &(_, i) in order.iter() {
        let (outcome, h) = match i.checked_sub(rates.len()) {
            None => {
                let (bucket, limit) = rates[i];
                let (outcome, guard, next) = bucket.lock_and_decide(limit, now);
                (outcome, Held::Rate(guard, next))
            }
            Some(q) => {
                let (window, limit) = quotas[q];
                let (outcome, guard, next) = window.lock_and_decide(limit, now);
                (outcome, Held::Quota(guard, next))
            }
        };
        admit &= outcome.is_admit();
        verdict.outcomes[i] = outcome;
        held[i] = h;
    }
    if admit {
        for h in &held[..n] {
            match h {
                Held::Rate(g, next) => g.set(Some(*next)),
                Held::Quota(g, next) => g.set(Some(*next)),
                Held::None => {}
            }
        }
    }
    verdict.len = n;
    verdict.rejected = verdict.rejecting_tier();
    Ok(())
}

/// A locked tier of [`check_pinned`] and the state it records if the request is admitted.
enum Held<'a> {
    None,
    Rate(Guard<'a, Tat>, Tat),
    Quota(Guard<'a, Window>, Window),
}

#[cfg(test)]
mod tests {
    use super::super::{KeyedLimiter, KeyedQuota, Period, check_all};
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};
    use tollgate_core::{Clock, ManualClock};

    fn limit(rate: f64, burst: u32) -> Limit {
        Limit::new(rate, burst).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Pinned state decides exactly as a keyed store does for the same requests: the same
    /// outcomes, admissions and retry times, step by step, through bursts, refills and a quota
    /// window's end.
    #[test]
    fn pinned_state_decides_as_the_keyed_store_does() {
        let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        let rate = limit(5.0, 3);
        let quota = QuotaLimit::new(7, Period::Hour);
        let (keyed_rates, keyed_quotas) = (KeyedLimiter::new(10), KeyedQuota::new(10));
        let (bucket, window) = (PinnedBucket::new("k"), PinnedQuota::new("k"));
        let (direct_bucket, direct_window) = (PinnedBucket::new("k"), PinnedQuota::new("k"));
        for step in 0..40u64 {
            let now = clock.now();
            let pinned = check_all(&[&bucket.tier(&rate), &window.tier(&quota)], now)
                .unwrap_or_else(|e| panic!("{e}"));
            let mut direct = Verdict::EMPTY;
            check_pinned(
                &[(&direct_bucket, &rate)],
                &[(&direct_window, &quota)],
                now,
                &mut direct,
            )
            .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(direct, pinned, "step {step}");
            let keyed = check_all(
                &[
                    &keyed_rates.tier(&"k", &rate),
                    &keyed_quotas.tier(&"k", &quota),
                ],
                now,
            )
            .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(pinned, keyed, "step {step}");
            assert_eq!(bucket.peek(&rate, now), keyed_rates.peek(&"k", &rate, now));
            // Uneven steps: some inside the emission interval, some past it, one past the hour.
            let ms = if step == 30 {
                3_600_000
            } else {
                70 + (step % 4) * 60
            };
            clock.advance(Duration::from_millis(ms));
        }
        assert_eq!(*bucket.key(), "k");
    }

    /// Named twice in one check, pinned state is judged once and records one request, as a
    /// key given twice to a keyed store is.
    #[test]
    fn the_same_pinned_bucket_twice_in_one_check_records_once() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let rate = limit(1.0, 2);
        let bucket = PinnedBucket::new(());
        let v = check_all(&[&bucket.tier(&rate), &bucket.tier(&rate)], now)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(v.is_admit());
        // Burst 2: one request recorded, so one more is admitted, then none.
        assert!(bucket.peek(&rate, now).is_admit());
        let v = check_all(&[&bucket.tier(&rate)], now).unwrap_or_else(|e| panic!("{e}"));
        assert!(v.is_admit());
        assert!(!bucket.peek(&rate, now).is_admit());
    }

    /// A rejecting tier leaves pinned state untouched, whichever side of it in the lock order.
    #[test]
    fn a_rejection_elsewhere_records_nothing_in_pinned_state() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let (wide, narrow) = (limit(100.0, 100), limit(1.0, 1));
        let quota = QuotaLimit::new(10, Period::Day);
        let before = PinnedBucket::new(0);
        let shut = PinnedBucket::new(1);
        let after = PinnedQuota::new(2);
        let tiers = || {
            check_all(
                &[
                    &before.tier(&wide),
                    &shut.tier(&narrow),
                    &after.tier(&quota),
                ],
                now,
            )
            .unwrap_or_else(|e| panic!("{e}"))
        };
        let direct = || {
            let mut v = Verdict::EMPTY;
            check_pinned(
                &[(&before, &wide), (&shut, &narrow)],
                &[(&after, &quota)],
                now,
                &mut v,
            )
            .unwrap_or_else(|e| panic!("{e}"));
            v
        };
        assert!(tiers().is_admit());
        let v = tiers();
        assert_eq!(v.rejected(), Some(1));
        for i in 0..6 {
            let v = if i % 2 == 0 { tiers() } else { direct() };
            assert!(!v.is_admit());
            assert_eq!(v.rejected(), Some(1));
        }
        match (before.peek(&wide, now), after.peek(&quota, now)) {
            (Outcome::Admit { remaining: r, .. }, Outcome::Admit { remaining: q, .. }) => {
                assert_eq!(r, 98, "only the admitted request was recorded");
                assert_eq!(q, 8);
            }
            other => panic!("{other:?}"),
        }
    }

    /// Threads mixing the direct check and `check_all` over the same pinned state, in
    /// different orders, neither deadlock nor admit more than the tightest tier allows.
    #[test]
    fn concurrent_direct_and_general_checks_admit_exactly_the_burst() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let (tight, wide) = (limit(0.001, 300), limit(0.001, 100_000));
        let quota = QuotaLimit::new(100_000, Period::Day);
        let (a, b, q) = (
            PinnedBucket::new(1),
            PinnedBucket::new(2),
            PinnedQuota::new(3),
        );
        let admitted = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for t in 0..4 {
                let (a, b, q, admitted) = (&a, &b, &q, &admitted);
                s.spawn(move || {
                    for i in 0..500 {
                        let v = if (i + t) % 2 == 0 {
                            let mut v = Verdict::EMPTY;
                            check_pinned(&[(b, &wide), (a, &tight)], &[(q, &quota)], now, &mut v)
                                .map(|()| v)
                        } else {
                            check_all(&[&q.tier(&quota), &a.tier(&tight), &b.tier(&wide)], now)
                        };
                        if v.is_ok_and(|v| v.is_admit()) {
                            admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.into_inner(), 300);
        match q.peek(&quota, now) {
            Outcome::Admit { remaining, .. } => assert_eq!(remaining, 100_000 - 300 - 1),
            other => panic!("{other:?}"),
        }
    }

    /// The direct check takes the same bucket twice (re-entrant lock) and records it once, and
    /// refuses more tiers than a verdict holds.
    #[test]
    fn the_direct_check_records_a_repeated_bucket_once_and_bounds_its_tiers() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let rate = limit(1.0, 2);
        let bucket = PinnedBucket::new(());
        let mut v = Verdict::EMPTY;
        check_pinned(&[(&bucket, &rate), (&bucket, &rate)], &[], now, &mut v)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(v.is_admit());
        assert_eq!(v.outcomes().len(), 2);
        assert!(bucket.peek(&rate, now).is_admit(), "one of two burst used");
        let many = [(&bucket, &rate); MAX_TIERS + 1];
        let none: [(&PinnedQuota<()>, &QuotaLimit); 0] = [];
        assert_eq!(check_pinned(&many, &none, now, &mut v), Err(TooManyTiers));
    }
}
