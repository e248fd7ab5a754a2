//! Traffic control building blocks: GCRA rate limiters (token bucket semantics, keyed,
//! sharded, bounded), calendar-aligned quotas, spike arrest, concurrency limits, and the IETF
//! RateLimit headers. Time comes from an injected clock so every limit is tested exactly.
//!
//! Everything here is synchronous and plain: no locks are held across an `.await`, and nothing
//! depends on the request pipeline. The parts:
//!
//! - [`Limit`] — `rate` requests/s with bursts of `burst` ([`Limit::spike_arrest`] is burst 1);
//!   [`TemporaryOverride`] swaps a consumer's limit until it expires.
//! - [`KeyedLimiter<K>`] — GCRA state per key: [`check`](KeyedLimiter::check) records,
//!   [`peek`](KeyedLimiter::peek) does not; both answer an [`Outcome`] whose `retry_after` is
//!   exact to the nanosecond.
//! - [`QuotaLimit`] / [`KeyedQuota<K>`] — `max` per hour, day, ISO week or month, aligned to a
//!   UTC offset; [`check_and_count`](KeyedQuota::check_and_count) and
//!   [`peek`](KeyedQuota::peek) answer a [`QuotaOutcome`]. A business limit is a quota keyed by
//!   (consumer, route).
//! - [`check_all`] — one request against several tiers ([`KeyedLimiter::tier`],
//!   [`KeyedQuota::tier`]): admitted only if every tier admits, recorded in all or none, race
//!   free across threads. The [`Verdict`] names the rejecting tier and keeps every tier's
//!   outcome for the headers.
//! - [`Pinned<K, S>`] ([`PinnedBucket<K>`], [`PinnedQuota<K>`]) — the state of one key, held by the compiled
//!   config instead of looked up per request (keys the config alone decides); tiers like the
//!   stores' ones, and [`check_pinned`], the same all-or-nothing check for a request whose
//!   every tier is pinned, without a tier object per tier.
//! - [`ConcurrencyLimiter<K>`] — in-flight slots per key; a [`Permit`] frees its slot on drop.
//! - [`headers`] — `RateLimit-Policy`, `RateLimit` and `Retry-After` values.
//! - [`redis`] — the same all-or-nothing check shared by several gateway processes: one Lua
//!   script per request in Redis, bounded by a timeout and a [`breaker`]; used when
//!   `TOLLGATE_REDIS_URL` is set.
//!
//! Typical use on the request path (integration pending):
//!
//! ```
//! use std::time::SystemTime;
//! use tollgate_policy::limits::{check_all, headers, KeyedLimiter, KeyedQuota, Limit, Period, QuotaLimit};
//!
//! let gateway = KeyedLimiter::<()>::new(1);
//! let plans = KeyedLimiter::<String>::new(100_000);
//! let business = KeyedQuota::<(String, String)>::new(100_000);
//! let gw = Limit::new(10_000.0, 5_000).unwrap();
//! let gold = Limit::new(1_000.0, 2_000).unwrap();
//! let payments = QuotaLimit::new(100, Period::Hour);
//!
//! let consumer = "partner-gold".to_string();
//! let key = (consumer.clone(), "POST /v1/payments".to_string());
//! let now = SystemTime::now();
//! let v = check_all(
//!     &[&gateway.tier(&(), &gw), &plans.tier(&consumer, &gold), &business.tier(&key, &payments)],
//!     now,
//! )
//! .unwrap();
//! assert!(v.is_admit());
//! let shown = v.most_restrictive().unwrap();
//! let header = headers::ratelimit(&[headers::ServiceLimit::from_outcome(
//!     ["gateway", "plan-gold", "payments"][shown],
//!     &v.outcomes()[shown],
//! )]);
//! assert!(header.to_str().unwrap().starts_with("\"payments\";r=99;t="));
//! ```
//!
//! Time is nanoseconds since the Unix epoch internally ([`unix_nanos`]); instants before the
//! epoch count as the epoch.

pub mod breaker;
mod concurrency;
mod gcra;
pub mod headers;
mod pinned;
mod quota;
pub mod redis;
mod store;
mod tiers;

pub use concurrency::{ConcurrencyLimiter, Permit};
pub use gcra::{InvalidLimit, KeyedLimiter, Limit, RateTier, TemporaryOverride};
pub use pinned::{
    Pinned, PinnedBucket, PinnedBucketTier, PinnedQuota, PinnedQuotaTier, PinnedTier, check_pinned,
};
pub use quota::{KeyedQuota, Period, QuotaLimit, QuotaOutcome, QuotaTier};
pub use tiers::{MAX_TIERS, Tier, TooManyTiers, Verdict, check_all, check_all_into};

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A limiter's decision for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Admitted. `remaining` more would be admitted right now; after `reset_after` the limit
    /// is back to its full allowance (bucket full, or quota window over).
    Admit {
        remaining: u64,
        reset_after: Duration,
    },
    /// Rejected. The first request admitted is one made `retry_after` from now (exactly);
    /// `reset_after` is as for `Admit`.
    Reject {
        retry_after: Duration,
        reset_after: Duration,
    },
}

impl Outcome {
    pub(crate) const EMPTY: Self = Self::Admit {
        remaining: 0,
        reset_after: Duration::ZERO,
    };

    pub fn is_admit(&self) -> bool {
        matches!(self, Self::Admit { .. })
    }

    /// `Some` iff rejected.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Reject { retry_after, .. } => Some(*retry_after),
            Self::Admit { .. } => None,
        }
    }
}

/// Nanoseconds since the Unix epoch, saturating (good until 2554).
pub fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
