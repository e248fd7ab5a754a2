//! All-or-nothing checks across tiers (gateway, API, route, plan, quota, ...): a request passes
//! only if every tier admits it, and a tier that rejects consumes nothing from the others.
//!
//! Race freedom: every involved shard is locked, in one global order (store id, shard index),
//! before any tier decides, and all of them stay locked until the commit. The locks are taken
//! by nested calls ([`Tier::enter`]), each tier committing its own state on the way back out,
//! so no guard has to be stored anywhere and nothing is allocated.

use super::{Outcome, unix_nanos};
use std::time::{Duration, SystemTime};

/// The most tiers one [`check_all`] takes; the scenario needs at most seven. Every verdict
/// carries this many outcomes, so it is kept no larger than needed.
pub const MAX_TIERS: usize = 8;

/// One limit taking part in a [`check_all`]. Implemented by
/// [`RateTier`](super::RateTier) and [`QuotaTier`](super::QuotaTier).
pub trait Tier {
    /// Where this tier's lock sits in the global lock order.
    fn lock_order(&self) -> (u64, usize);

    /// Locks this tier's state, decides at `now` (ns since the epoch) without recording, calls
    /// `inner` with the decision while still holding the lock, and records the request iff
    /// `inner` returns true. Returns what `inner` returned.
    fn enter(&self, now: u64, inner: &mut dyn FnMut(Outcome) -> bool) -> bool;
}

/// The tiers asked for more than [`MAX_TIERS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("at most {MAX_TIERS} tiers per check")]
pub struct TooManyTiers;

/// The result of a [`check_all`]: every tier's outcome, in the order the tiers were given.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    pub(super) outcomes: [Outcome; MAX_TIERS],
    pub(super) len: usize,
    pub(super) rejected: Option<usize>,
}

impl Verdict {
    /// No tiers yet: the verdict a check writes into.
    pub const EMPTY: Self = Self {
        outcomes: [Outcome::EMPTY; MAX_TIERS],
        len: 0,
        rejected: None,
    };

    /// The verdict for tiers decided elsewhere (the Redis script), named the way
    /// [`check_all`] names them: admitted iff every tier admits, the rejecting tier that clears
    /// last. At most [`MAX_TIERS`] outcomes are kept.
    pub fn from_outcomes(outcomes: &[Outcome]) -> Self {
        let mut v = Verdict {
            outcomes: [Outcome::EMPTY; MAX_TIERS],
            len: outcomes.len().min(MAX_TIERS),
            rejected: None,
        };
        v.outcomes[..v.len].copy_from_slice(&outcomes[..v.len]);
        v.rejected = v.rejecting_tier();
        v
    }

    pub(super) fn rejecting_tier(&self) -> Option<usize> {
        (0..self.len)
            .filter_map(|i| self.outcomes[i].retry_after().map(|r| (r, i)))
            .max()
            .map(|(_, i)| i)
    }

    pub fn is_admit(&self) -> bool {
        self.rejected.is_none()
    }

    /// The rejecting tier that clears last (the one to name in the 429), if any rejected.
    pub fn rejected(&self) -> Option<usize> {
        self.rejected
    }

    /// Each tier's own outcome, as if it had been checked alone.
    pub fn outcomes(&self) -> &[Outcome] {
        &self.outcomes[..self.len]
    }

    /// When the same request would pass every tier, if it was rejected.
    pub fn retry_after(&self) -> Option<Duration> {
        self.rejected.and_then(|i| self.outcomes[i].retry_after())
    }

    /// The tier to report in the `RateLimit` header: the rejecting tier, or else the admitting
    /// tier with the fewest requests remaining.
    pub fn most_restrictive(&self) -> Option<usize> {
        self.rejected.or_else(|| {
            (0..self.len).min_by_key(|&i| match self.outcomes[i] {
                Outcome::Admit { remaining, .. } => remaining,
                Outcome::Reject { .. } => 0,
            })
        })
    }
}

/// Checks one request against every tier and records it in all of them, or in none.
///
/// Tiers may share a store and even a shard (the locks are re-entrant); the same key given
/// twice in one store is judged and recorded once.
pub fn check_all(tiers: &[&dyn Tier], now: SystemTime) -> Result<Verdict, TooManyTiers> {
    let mut verdict = Verdict::EMPTY;
    check_all_into(tiers, now, &mut verdict)?;
    Ok(verdict)
}

/// [`check_all`] writing into the caller's verdict: a verdict is a few hundred bytes, and the
/// request path would otherwise copy it on every hand-over.
pub fn check_all_into(
    tiers: &[&dyn Tier],
    now: SystemTime,
    verdict: &mut Verdict,
) -> Result<(), TooManyTiers> {
    if tiers.len() > MAX_TIERS {
        return Err(TooManyTiers);
    }
    // Each tier's place in the lock order is asked once, not once per comparison.
    let mut keys = [(u64::MAX, usize::MAX, 0usize); MAX_TIERS];
    let keys = &mut keys[..tiers.len()];
    for (i, (k, t)) in keys.iter_mut().zip(tiers).enumerate() {
        let (store, shard) = t.lock_order();
        *k = (store, shard, i);
    }
    keys.sort_unstable();
    let mut order = [0usize; MAX_TIERS];
    for (slot, k) in order.iter_mut().zip(keys.iter()) {
        *slot = k.2;
    }
    verdict.len = tiers.len();
    verdict.rejected = None;
    descend(
        tiers,
        &order[..tiers.len()],
        unix_nanos(now),
        &mut verdict.outcomes[..tiers.len()],
    );
    verdict.rejected = verdict.rejecting_tier();
    Ok(())
}

fn descend(tiers: &[&dyn Tier], order: &[usize], now: u64, out: &mut [Outcome]) -> bool {
    let Some((&first, rest)) = order.split_first() else {
        return out.iter().all(Outcome::is_admit);
    };
    tiers[first].enter(now, &mut |outcome| {
        out[first] = outcome;
        descend(tiers, rest, now, out)
    })
}

#[cfg(test)]
mod tests {
    use super::super::{KeyedLimiter, KeyedQuota, Limit, Period, QuotaLimit};
    use super::*;
    use std::sync::Arc;
    use std::time::UNIX_EPOCH;
    use tollgate_core::{Clock, ManualClock};

    fn limit(rate: f64, burst: u32) -> Limit {
        Limit::new(rate, burst).unwrap_or_else(|e| panic!("{e}"))
    }

    fn remaining(o: Outcome) -> u64 {
        match o {
            Outcome::Admit { remaining, .. } => remaining,
            Outcome::Reject { .. } => 0,
        }
    }

    fn check(tiers: &[&dyn Tier], now: SystemTime) -> Verdict {
        check_all(tiers, now).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_rejecting_tier_consumes_nothing_from_the_others() {
        let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        let gateway = KeyedLimiter::new(10);
        let route = KeyedLimiter::new(10);
        let plan = KeyedLimiter::new(10);
        let (gw_l, route_l, plan_l) = (limit(10_000.0, 5_000), limit(50.0, 50), limit(5.0, 5));
        let consumer = "partner-trial";
        let run = |now| {
            check(
                &[
                    &gateway.tier(&(), &gw_l),
                    &route.tier(&"/v1/accounts/{id}/transactions", &route_l),
                    &plan.tier(&consumer, &plan_l),
                ],
                now,
            )
        };
        for _ in 0..5 {
            assert!(run(clock.now()).is_admit());
        }
        let before = run_peek(&gateway, &route, &gw_l, &route_l, clock.now());
        let v = run(clock.now());
        assert!(!v.is_admit());
        assert_eq!(v.rejected(), Some(2));
        assert_eq!(v.most_restrictive(), Some(2));
        assert!(
            v.retry_after()
                .is_some_and(|r| r == Duration::from_millis(200))
        );
        assert_eq!(v.outcomes().len(), 3);
        assert_eq!(remaining(v.outcomes()[0]), 5_000 - 6);
        // The rejection left the gateway and route tiers untouched.
        let after = run_peek(&gateway, &route, &gw_l, &route_l, clock.now());
        assert_eq!(before, after);
        assert_eq!(remaining(after.0), 5_000 - 6);
        assert_eq!(remaining(after.1), 50 - 6);
    }

    fn run_peek(
        gateway: &KeyedLimiter<()>,
        route: &KeyedLimiter<&str>,
        gw_l: &Limit,
        route_l: &Limit,
        now: SystemTime,
    ) -> (Outcome, Outcome) {
        (
            gateway.peek(&(), gw_l, now),
            route.peek(&"/v1/accounts/{id}/transactions", route_l, now),
        )
    }

    #[test]
    fn quota_counts_only_when_every_tier_admits() {
        let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        let plan = KeyedLimiter::new(10);
        let quotas = KeyedQuota::new(10);
        let rate = limit(1.0, 1);
        let q = QuotaLimit::new(100, Period::Hour);
        let key = ("partner-gold", "POST /v1/payments");
        let v = check(
            &[&plan.tier(&"partner-gold", &rate), &quotas.tier(&key, &q)],
            clock.now(),
        );
        assert!(v.is_admit());
        assert_eq!(remaining(v.outcomes()[1]), 99);
        // The rate tier rejects: the quota must not count this one.
        let v = check(
            &[&plan.tier(&"partner-gold", &rate), &quotas.tier(&key, &q)],
            clock.now(),
        );
        assert_eq!(v.rejected(), Some(0));
        // One counted: a peek answers as the second request would, 98 left after it.
        let peek = quotas.peek(&key, &q, clock.now());
        assert_eq!(remaining(peek.into_outcome(clock.now())), 98);
    }

    #[test]
    fn the_tier_that_clears_last_is_named() {
        let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        let a = KeyedLimiter::new(10);
        let b = KeyedLimiter::new(10);
        let (la, lb) = (limit(10.0, 1), limit(1.0, 1));
        assert!(check(&[&a.tier(&1, &la), &b.tier(&1, &lb)], clock.now()).is_admit());
        let v = check(&[&a.tier(&1, &la), &b.tier(&1, &lb)], clock.now());
        assert_eq!(v.rejected(), Some(1));
        assert_eq!(v.retry_after(), Some(Duration::from_secs(1)));
    }

    #[test]
    fn shared_store_and_shard_do_not_deadlock() {
        let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        // One shard, so both keys share it.
        let lim = KeyedLimiter::new(1);
        let l = limit(1.0, 3);
        let v = check(&[&lim.tier(&"a", &l), &lim.tier(&"a", &l)], clock.now());
        assert!(v.is_admit());
        // The same key twice is judged and recorded once.
        assert_eq!(remaining(lim.peek(&"a", &l, clock.now())), 1);
    }

    #[test]
    fn empty_and_oversized_checks() {
        let now = UNIX_EPOCH;
        assert!(check(&[], now).is_admit());
        let lim = KeyedLimiter::new(10);
        let l = limit(1.0, 1);
        let t = lim.tier(&0, &l);
        let tiers: Vec<&dyn Tier> = (0..=MAX_TIERS).map(|_| &t as &dyn Tier).collect();
        assert_eq!(check_all(&tiers, now), Err(TooManyTiers));
    }

    #[test]
    fn concurrent_checks_never_over_admit() {
        let clock = Arc::new(ManualClock::new(
            UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        ));
        let shared = Arc::new(KeyedLimiter::new(64));
        let per_thread = Arc::new(KeyedLimiter::new(64));
        let shared_l = limit(0.001, 100);
        let own_l = limit(0.001, 40);
        let admitted: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4u32)
                .map(|t| {
                    let (shared, per_thread, clock) = (&shared, &per_thread, &clock);
                    let (shared_l, own_l) = (&shared_l, &own_l);
                    s.spawn(move || {
                        (0..200)
                            .filter(|_| {
                                // Tiers given in opposite orders on alternate threads.
                                let a = shared.tier(&0u32, shared_l);
                                let b = per_thread.tier(&t, own_l);
                                let tiers: [&dyn Tier; 2] =
                                    if t % 2 == 0 { [&a, &b] } else { [&b, &a] };
                                check(&tiers, clock.now()).is_admit()
                            })
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
        });
        // 4 × 40 would pass the per-thread tiers; the shared tier caps the total at 100.
        assert_eq!(admitted, 100);
        assert_eq!(remaining(shared.peek(&0, &shared_l, clock.now())), 0);
    }
}
