//! Quotas: at most `max` requests per calendar window (hour, day, ISO week, month), windows
//! aligned to a fixed UTC offset, counted per key. A business limit ("100 payment initiations
//! per consumer per hour") is a quota keyed by (consumer, route).
//!
//! Windows are fixed, not sliding, because that is what usage plans sell ("10,000 per day")
//! and what AWS API Gateway and Apigee do; the count resets exactly at the boundary.

use super::store::{Expiring, Keyed, Store};
use super::tiers::Tier;
use super::{Outcome, unix_nanos};
use std::hash::Hash;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const NANOS: i64 = 1_000_000_000;
const DAY: i64 = 86_400;

/// The calendar unit of a quota window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    Hour,
    Day,
    /// ISO 8601 week: Monday 00:00 to the next Monday 00:00.
    Week,
    Month,
}

/// A quota: `max` requests per [`Period`], windows aligned to local time at `utc_offset`
/// seconds east of UTC (e.g. `7200` for UTC+02:00, so the day turns at 22:00 UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QuotaLimit {
    pub max: u64,
    pub period: Period,
    pub utc_offset: i32,
}

impl QuotaLimit {
    /// `max` per `period`, aligned to UTC.
    pub fn new(max: u64, period: Period) -> Self {
        Self {
            max,
            period,
            utc_offset: 0,
        }
    }

    /// The same quota aligned to another UTC offset, in seconds east of UTC.
    pub fn with_offset(self, utc_offset: i32) -> Self {
        Self { utc_offset, ..self }
    }

    /// The window containing `now`: `[start, end)`.
    pub fn window(&self, now: SystemTime) -> (SystemTime, SystemTime) {
        let (start, end) = self.window_ns(unix_nanos(now));
        (at(start), at(end))
    }

    /// `[start, end)` of the window containing `now`, both in ns since the epoch.
    pub(crate) fn window_bounds_ns(&self, now: u64) -> (u64, u64) {
        self.window_ns(now)
    }

    /// `[start, end)` of the window containing `now`, in ns since the epoch.
    fn window_ns(&self, now: u64) -> (u64, u64) {
        let offset = i64::from(self.utc_offset);
        let local = (now as i64).div_euclid(NANOS) + offset;
        let (start, end) = match self.period {
            Period::Hour => {
                let s = local - local.rem_euclid(3600);
                (s, s + 3600)
            }
            Period::Day => {
                let s = local - local.rem_euclid(DAY);
                (s, s + DAY)
            }
            Period::Week => {
                let day = local.div_euclid(DAY);
                // 1970-01-01 was a Thursday, three days after a Monday.
                let monday = day - (day + 3).rem_euclid(7);
                (monday * DAY, (monday + 7) * DAY)
            }
            Period::Month => {
                let (y, m, _) = civil_from_days(local.div_euclid(DAY));
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (
                    days_from_civil(y, m, 1) * DAY,
                    days_from_civil(ny, nm, 1) * DAY,
                )
            }
        };
        let to_ns =
            |local_secs: i64| ((local_secs - offset).max(0) as u64).saturating_mul(NANOS as u64);
        (to_ns(start), to_ns(end))
    }
}

fn at(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A quota decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaOutcome {
    /// Admitted; `remaining` more fit in the window ending at `resets_at`.
    Admit {
        remaining: u64,
        resets_at: SystemTime,
    },
    /// Exhausted until `resets_at`, which is `retry_after` from now.
    Reject {
        resets_at: SystemTime,
        retry_after: Duration,
    },
}

impl QuotaOutcome {
    pub fn is_admit(&self) -> bool {
        matches!(self, Self::Admit { .. })
    }

    /// The same decision relative to `now`, as rate limiters report it.
    pub fn into_outcome(self, now: SystemTime) -> Outcome {
        match self {
            Self::Admit {
                remaining,
                resets_at,
            } => Outcome::Admit {
                remaining,
                reset_after: resets_at.duration_since(now).unwrap_or_default(),
            },
            Self::Reject { retry_after, .. } => Outcome::Reject {
                retry_after,
                reset_after: retry_after,
            },
        }
    }
}

/// Count in the window ending at `end` (ns since the epoch), under the period and offset that
/// drew the window.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    end: u64,
    count: u64,
    period: Period,
    utc_offset: i32,
}

impl Expiring for Window {
    fn expires_at(&self) -> u64 {
        // A finished window counts nothing; dropping it is the same as a fresh key.
        self.end
    }
}

impl Window {
    /// The end of the window `now` falls in. A live stored window drawn under the same period
    /// and offset is that window: it was drawn at or before `now` and ends after it, and
    /// calendar windows do not overlap. That spares the calendar arithmetic on all but a
    /// window's first request. (A wall clock stepped back keeps counting into the window
    /// already drawn, which grants nothing twice.)
    fn end_at(limit: &QuotaLimit, stored: Option<&Window>, now: u64) -> u64 {
        match stored {
            Some(w) if w.period == limit.period && w.utc_offset == limit.utc_offset => w.end,
            _ => limit.window_ns(now).1,
        }
    }
}

pub(crate) fn decide(limit: &QuotaLimit, stored: Option<Window>, now: u64) -> (Outcome, Window) {
    let end = Window::end_at(limit, stored.as_ref(), now);
    let used = stored.filter(|w| w.end == end).map_or(0, |w| w.count);
    let until_end = Duration::from_nanos(end.saturating_sub(now));
    let window = |count| Window {
        end,
        count,
        period: limit.period,
        utc_offset: limit.utc_offset,
    };
    if used >= limit.max {
        let outcome = Outcome::Reject {
            retry_after: until_end,
            reset_after: until_end,
        };
        return (outcome, window(used));
    }
    let outcome = Outcome::Admit {
        remaining: limit.max - used - 1,
        reset_after: until_end,
    };
    (outcome, window(used + 1))
}

fn to_quota_outcome(o: Outcome, now: u64) -> QuotaOutcome {
    match o {
        Outcome::Admit {
            remaining,
            reset_after,
        } => QuotaOutcome::Admit {
            remaining,
            resets_at: at(now) + reset_after,
        },
        Outcome::Reject { retry_after, .. } => QuotaOutcome::Reject {
            resets_at: at(now) + retry_after,
            retry_after,
        },
    }
}

/// Quota counters for many keys: sharded, bounded, finished windows dropped.
///
/// Memory: at most [`capacity`](Self::capacity) keys. A new key arriving at a full shard
/// first evicts that shard's finished windows; if none are finished the key is **not stored**
/// and each of its requests is judged as the first of its window, i.e. admitted.
/// [`overflows`](Self::overflows) counts these; size the store for every key that can be
/// active within one window.
pub struct KeyedQuota<K> {
    store: Store<K, Window>,
}

impl<K: Hash + Eq + Clone> KeyedQuota<K> {
    pub fn new(max_keys: usize) -> Self {
        Self {
            store: Store::new(max_keys),
        }
    }

    /// Counts one request for `key` if the quota admits it.
    pub fn check_and_count(&self, key: &K, limit: &QuotaLimit, now: SystemTime) -> QuotaOutcome {
        let now = unix_nanos(now);
        let key = self.store.keyed(key);
        let guard = self.store.lock(self.store.shard_of(&key));
        let (outcome, window) = decide(limit, Store::get(&guard, &key, now), now);
        if outcome.is_admit() {
            self.store.put(&guard, &key, window, now);
        }
        to_quota_outcome(outcome, now)
    }

    /// What [`check_and_count`](Self::check_and_count) would answer, without counting.
    pub fn peek(&self, key: &K, limit: &QuotaLimit, now: SystemTime) -> QuotaOutcome {
        let now = unix_nanos(now);
        let key = self.store.keyed(key);
        let guard = self.store.lock(self.store.shard_of(&key));
        to_quota_outcome(decide(limit, Store::get(&guard, &key, now), now).0, now)
    }

    /// This quota as one tier of a [`check_all`](super::check_all): counted only if every
    /// tier admits.
    pub fn tier<'a>(&'a self, key: &'a K, limit: &'a QuotaLimit) -> QuotaTier<'a, K> {
        let key = self.store.keyed(key);
        QuotaTier {
            quota: self,
            limit,
            shard: self.store.shard_of(&key),
            key,
        }
    }

    /// Drops every finished window now rather than when a shard fills up.
    pub fn evict_finished(&self, now: SystemTime) {
        self.store.evict_expired(unix_nanos(now));
    }

    pub fn len(&self) -> usize {
        self.store.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.store.capacity()
    }

    /// New keys that could not be stored because their shard was full of live windows.
    pub fn overflows(&self) -> u64 {
        self.store.overflows()
    }
}

/// One quota tier of a multi-tier check; see [`KeyedQuota::tier`].
pub struct QuotaTier<'a, K> {
    quota: &'a KeyedQuota<K>,
    key: Keyed<'a, K>,
    limit: &'a QuotaLimit,
    shard: usize,
}

impl<K: Hash + Eq + Clone> Tier for QuotaTier<'_, K> {
    fn lock_order(&self) -> (u64, usize) {
        (self.quota.store.id(), self.shard)
    }

    fn enter(&self, now: u64, inner: &mut dyn FnMut(Outcome) -> bool) -> bool {
        let store = &self.quota.store;
        let guard = store.lock(self.shard);
        let (outcome, window) = decide(self.limit, Store::get(&guard, &self.key, now), now);
        let commit = inner(outcome);
        if commit && outcome.is_admit() {
            store.put(&guard, &self.key, window, now);
        }
        commit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};
    use tollgate_core::{Clock, ManualClock};

    fn utc(y: i32, m: u8, d: u8, h: u8, min: u8, s: u8) -> SystemTime {
        let month = Month::try_from(m).unwrap_or_else(|e| panic!("{e}"));
        let date = Date::from_calendar_date(y, month, d).unwrap_or_else(|e| panic!("{e}"));
        let time = Time::from_hms(h, min, s).unwrap_or_else(|e| panic!("{e}"));
        PrimitiveDateTime::new(date, time).assume_utc().into()
    }

    fn window(l: QuotaLimit, now: SystemTime) -> (SystemTime, SystemTime) {
        l.window(now)
    }

    #[test]
    fn hour_and_day_windows() {
        let now = utc(2026, 11, 28, 13, 45, 10);
        let hour = QuotaLimit::new(1, Period::Hour);
        assert_eq!(
            window(hour, now),
            (utc(2026, 11, 28, 13, 0, 0), utc(2026, 11, 28, 14, 0, 0))
        );
        // UTC+05:30: hours turn at half past in UTC.
        assert_eq!(
            window(hour.with_offset(19_800), now),
            (utc(2026, 11, 28, 13, 30, 0), utc(2026, 11, 28, 14, 30, 0))
        );
        let day = QuotaLimit::new(1, Period::Day);
        assert_eq!(
            window(day, now),
            (utc(2026, 11, 28, 0, 0, 0), utc(2026, 11, 29, 0, 0, 0))
        );
        // UTC+02:00: the local day starts at 22:00 UTC the evening before.
        let plus2 = day.with_offset(7200);
        assert_eq!(
            window(plus2, now),
            (utc(2026, 11, 27, 22, 0, 0), utc(2026, 11, 28, 22, 0, 0))
        );
        assert_eq!(
            window(plus2, utc(2026, 11, 28, 22, 0, 0)).0,
            utc(2026, 11, 28, 22, 0, 0)
        );
        // UTC−05:00: the day turns at 05:00 UTC.
        assert_eq!(
            window(day.with_offset(-18_000), utc(2026, 11, 28, 4, 59, 59)),
            (utc(2026, 11, 27, 5, 0, 0), utc(2026, 11, 28, 5, 0, 0))
        );
    }

    #[test]
    fn weeks_start_on_monday() {
        let week = QuotaLimit::new(1, Period::Week);
        // Saturday 2026-11-28 → Monday 2026-11-23 to Monday 2026-11-30.
        assert_eq!(
            window(week, utc(2026, 11, 28, 12, 0, 0)),
            (utc(2026, 11, 23, 0, 0, 0), utc(2026, 11, 30, 0, 0, 0))
        );
        // Exactly Monday midnight is the start of the new week.
        assert_eq!(
            window(week, utc(2026, 11, 30, 0, 0, 0)).0,
            utc(2026, 11, 30, 0, 0, 0)
        );
        // Sunday 23:30 UTC is already Monday in UTC+01:00.
        assert_eq!(
            window(week.with_offset(3600), utc(2026, 11, 29, 23, 30, 0)).0,
            utc(2026, 11, 29, 23, 0, 0)
        );
        // A week spanning a year change (Mon 2026-12-28).
        assert_eq!(
            window(week, utc(2027, 1, 1, 0, 0, 0)),
            (utc(2026, 12, 28, 0, 0, 0), utc(2027, 1, 4, 0, 0, 0))
        );
    }

    #[test]
    fn months_have_their_lengths() {
        let month = QuotaLimit::new(1, Period::Month);
        assert_eq!(
            window(month, utc(2028, 2, 29, 23, 59, 59)),
            (utc(2028, 2, 1, 0, 0, 0), utc(2028, 3, 1, 0, 0, 0))
        );
        assert_eq!(
            window(month, utc(2027, 2, 15, 0, 0, 0)),
            (utc(2027, 2, 1, 0, 0, 0), utc(2027, 3, 1, 0, 0, 0))
        );
        assert_eq!(
            window(month, utc(2100, 2, 28, 0, 0, 0)).1,
            utc(2100, 3, 1, 0, 0, 0)
        );
        assert_eq!(
            window(month, utc(2026, 12, 31, 12, 0, 0)),
            (utc(2026, 12, 1, 0, 0, 0), utc(2027, 1, 1, 0, 0, 0))
        );
        // UTC+02:00 in a leap year: March starts at 22:00 UTC on 29 February.
        assert_eq!(
            window(month.with_offset(7200), utc(2028, 2, 29, 22, 0, 0)).0,
            utc(2028, 2, 29, 22, 0, 0)
        );
    }

    #[test]
    fn civil_dates_agree_with_the_time_crate() {
        // Every 13th day from Feb 1970 to 2200, in UTC, UTC+14 and UTC−12 (January 1970 in
        // UTC+14 starts before the epoch, which the limiters clamp).
        for offset in [0i32, 50_400, -43_200] {
            let tz = UtcOffset::from_whole_seconds(offset).unwrap_or_else(|e| panic!("{e}"));
            let mut day = 40i64;
            while day < 84_000 {
                let secs = day * DAY + 43_210;
                let t = UNIX_EPOCH + Duration::from_secs(secs as u64);
                let local = OffsetDateTime::from(t).to_offset(tz);
                let first = local
                    .replace_day(1)
                    .map(|d| d.replace_time(Time::MIDNIGHT))
                    .unwrap_or_else(|e| panic!("{e}"));
                let (start, _) = QuotaLimit::new(1, Period::Month)
                    .with_offset(offset)
                    .window(t);
                assert_eq!(start, SystemTime::from(first), "day {day} offset {offset}");
                day += 13;
            }
        }
    }

    #[test]
    fn counts_reset_exactly_at_the_boundary() {
        for (period, end) in [
            (Period::Hour, utc(2028, 2, 29, 23, 0, 0)),
            (Period::Day, utc(2028, 3, 1, 0, 0, 0)),
            (Period::Week, utc(2028, 3, 6, 0, 0, 0)),
            (Period::Month, utc(2028, 3, 1, 0, 0, 0)),
        ] {
            let clock = ManualClock::new(utc(2028, 2, 29, 22, 10, 0));
            let q = KeyedQuota::new(10);
            let l = QuotaLimit::new(3, period);
            let key = ("partner-bronze", "POST /v1/payments");
            for left in [2, 1, 0] {
                assert_eq!(
                    q.check_and_count(&key, &l, clock.now()),
                    QuotaOutcome::Admit {
                        remaining: left,
                        resets_at: end
                    },
                    "{period:?}"
                );
            }
            let QuotaOutcome::Reject {
                retry_after,
                resets_at,
            } = q.check_and_count(&key, &l, clock.now())
            else {
                panic!("{period:?}: fourth request admitted");
            };
            assert_eq!(resets_at, end);
            assert_eq!(clock.now() + retry_after, end);
            clock.set(end - Duration::from_nanos(1));
            assert!(!q.check_and_count(&key, &l, clock.now()).is_admit());
            clock.set(end);
            assert!(
                q.check_and_count(&key, &l, clock.now()).is_admit(),
                "{period:?}"
            );
        }
    }

    #[test]
    fn a_reloaded_period_or_offset_draws_its_own_window() {
        // The stored window is reused only under the period and offset that drew it.
        let now = utc(2026, 11, 28, 10, 30, 0);
        let q = KeyedQuota::new(10);
        let key = "partner-gold";
        let month = QuotaLimit::new(100, Period::Month);
        for _ in 0..3 {
            q.check_and_count(&key, &month, now);
        }
        let hour = QuotaLimit::new(100, Period::Hour);
        assert_eq!(
            q.check_and_count(&key, &hour, now),
            QuotaOutcome::Admit {
                remaining: 99,
                resets_at: utc(2026, 11, 28, 11, 0, 0)
            }
        );
        assert!(matches!(
            q.check_and_count(&key, &hour, now),
            QuotaOutcome::Admit { remaining: 98, .. }
        ));
        // UTC+00:30: it is 11:00 local, the window ends at 12:00 local, 11:30 UTC.
        let shifted = hour.with_offset(1800);
        assert_eq!(
            q.check_and_count(&key, &shifted, now),
            QuotaOutcome::Admit {
                remaining: 99,
                resets_at: utc(2026, 11, 28, 11, 30, 0)
            }
        );
        // A day window in UTC+00:30 ends at 23:30 UTC: redrawn, not the hour's end.
        let day = QuotaLimit::new(100, Period::Day).with_offset(1800);
        assert_eq!(
            q.check_and_count(&key, &day, now),
            QuotaOutcome::Admit {
                remaining: 99,
                resets_at: utc(2026, 11, 28, 23, 30, 0)
            }
        );
    }

    #[test]
    fn peek_does_not_count_and_keys_are_isolated() {
        let now = utc(2026, 11, 28, 10, 0, 0);
        let q = KeyedQuota::new(10);
        let l = QuotaLimit::new(100, Period::Hour);
        for _ in 0..5 {
            q.peek(&("a", "r"), &l, now);
        }
        let first = q.check_and_count(&("a", "r"), &l, now);
        assert!(matches!(first, QuotaOutcome::Admit { remaining: 99, .. }));
        let other = q.check_and_count(&("b", "r"), &l, now);
        assert!(matches!(other, QuotaOutcome::Admit { remaining: 99, .. }));
        let route = q.check_and_count(&("a", "r2"), &l, now);
        assert!(matches!(route, QuotaOutcome::Admit { remaining: 99, .. }));
    }

    #[test]
    fn finished_windows_are_dropped() {
        let clock = ManualClock::new(utc(2026, 11, 28, 10, 0, 0));
        let q = KeyedQuota::new(64);
        let l = QuotaLimit::new(10, Period::Hour);
        for i in 0..10_000u32 {
            q.check_and_count(&i, &l, clock.now());
        }
        assert!(q.len() <= 64);
        assert!(q.overflows() > 0);
        clock.advance(Duration::from_secs(3600));
        q.evict_finished(clock.now());
        assert!(q.is_empty());
    }
}
