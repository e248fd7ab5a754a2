//! Usage analytics on the request path: every routed request is counted per minute, tenant, API
//! and consumer (requests, status classes, throttled, a latency histogram), and per second per
//! consumer for "who is behind this spike" queries. The management plane drains the minute
//! counts into the store; nothing here does I/O.
//!
//! Two short mutex sections per request, never held across an await; the maps stay small
//! because they are drained every second.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tollgate_core::Clock;
use tollgate_core::usage::{LATENCY_BUCKETS, latency_bucket};

/// The consumer name recorded for requests that carried no identity.
pub const ANONYMOUS: &str = "anonymous";

/// Seconds of per-consumer history kept for [`Usage::top_consumers`].
const RECENT_SECONDS: usize = 3600;

/// Identity of a count: the minute and the addresses of the shared names. Names come from the
/// compiled snapshot, so hashing three addresses replaces hashing three strings on every
/// request; the entry holds the `Arc`s, so an address cannot be reused while it is a key. After
/// a reload the same names may arrive under new addresses and get entries of their own, which
/// the store adds up like counts from two nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    minute_ms: i64,
    tenant: usize,
    api: usize,
    consumer: usize,
}

fn addr(s: &Arc<str>) -> usize {
    Arc::as_ptr(s).cast::<u8>() as usize
}

#[derive(Debug)]
struct Entry {
    tenant: Arc<str>,
    api: Arc<str>,
    consumer: Arc<str>,
    counts: Counts,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    pub status_2xx: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    pub throttled: u64,
    pub latency: [u64; LATENCY_BUCKETS],
}

impl Default for Counts {
    fn default() -> Self {
        Self {
            requests: 0,
            status_2xx: 0,
            status_4xx: 0,
            status_5xx: 0,
            throttled: 0,
            latency: [0; LATENCY_BUCKETS],
        }
    }
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.requests += o.requests;
        self.status_2xx += o.status_2xx;
        self.status_4xx += o.status_4xx;
        self.status_5xx += o.status_5xx;
        self.throttled += o.throttled;
        for (a, b) in self.latency.iter_mut().zip(o.latency.iter()) {
            *a += b;
        }
    }
}

/// Counts for one minute, tenant, API and consumer, as drained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    pub minute_ms: i64,
    pub tenant: Arc<str>,
    pub api: Arc<str>,
    pub consumer: Arc<str>,
    pub counts: Counts,
}

pub struct Usage {
    clock: Arc<dyn Clock>,
    anonymous: Arc<str>,
    minutes: Mutex<HashMap<Key, Entry, foldhash::fast::RandomState>>,
    recent: Mutex<VecDeque<Second>>,
}

/// Requests per identified consumer (keyed by the name's address, see [`Key`]) in one second
/// (unix seconds).
type Second = (
    i64,
    HashMap<usize, (Arc<str>, u64), foldhash::fast::RandomState>,
);

impl std::fmt::Debug for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Usage").finish_non_exhaustive()
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Usage {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            anonymous: Arc::from(ANONYMOUS),
            minutes: Mutex::default(),
            recent: Mutex::default(),
        }
    }

    fn now_ms(&self) -> i64 {
        unix_ms(self.clock.now())
    }

    /// Counts one request, finished at `at` by the injected clock (read once per request by the
    /// caller, which also stamps the access log line with it).
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        tenant: &Arc<str>,
        api: &Arc<str>,
        consumer: Option<&Arc<str>>,
        status: u16,
        throttled: bool,
        elapsed: Duration,
        at: SystemTime,
    ) {
        let now = unix_ms(at);
        let consumer = consumer.unwrap_or(&self.anonymous);
        let key = Key {
            minute_ms: now - now.rem_euclid(60_000),
            tenant: addr(tenant),
            api: addr(api),
            consumer: addr(consumer),
        };
        let bucket = latency_bucket(elapsed.as_secs_f64() * 1000.0);
        {
            let mut minutes = lock(&self.minutes);
            let c = &mut minutes
                .entry(key)
                .or_insert_with(|| Entry {
                    tenant: tenant.clone(),
                    api: api.clone(),
                    consumer: consumer.clone(),
                    counts: Counts::default(),
                })
                .counts;
            c.requests += 1;
            match status {
                200..=299 => c.status_2xx += 1,
                400..=499 => c.status_4xx += 1,
                500..=599 => c.status_5xx += 1,
                _ => {}
            }
            if throttled {
                c.throttled += 1;
            }
            c.latency[bucket] += 1;
        }
        if Arc::ptr_eq(consumer, &self.anonymous) {
            return;
        }
        let second = now.div_euclid(1000);
        let mut recent = lock(&self.recent);
        if recent.back().is_none_or(|(s, _)| *s != second) {
            if recent.len() >= RECENT_SECONDS {
                recent.pop_front();
            }
            recent.push_back((second, HashMap::default()));
        }
        if let Some((_, m)) = recent.back_mut() {
            m.entry(addr(consumer))
                .or_insert_with(|| (consumer.clone(), 0))
                .1 += 1;
        }
    }

    /// Takes everything counted since the last drain.
    pub fn drain(&self) -> Vec<Delta> {
        let taken = std::mem::take(&mut *lock(&self.minutes));
        taken
            .into_iter()
            .map(|(k, e)| Delta {
                minute_ms: k.minute_ms,
                tenant: e.tenant,
                api: e.api,
                consumer: e.consumer,
                counts: e.counts,
            })
            .collect()
    }

    /// Puts drained counts back, after the store refused them, so nothing is lost.
    pub fn restore(&self, deltas: Vec<Delta>) {
        let mut minutes = lock(&self.minutes);
        for d in deltas {
            let key = Key {
                minute_ms: d.minute_ms,
                tenant: addr(&d.tenant),
                api: addr(&d.api),
                consumer: addr(&d.consumer),
            };
            match minutes.get_mut(&key) {
                Some(e) => e.counts.add(&d.counts),
                None => {
                    minutes.insert(
                        key,
                        Entry {
                            tenant: d.tenant,
                            api: d.api,
                            consumer: d.consumer,
                            counts: d.counts,
                        },
                    );
                }
            }
        }
    }

    /// Identified consumers by requests in the last `window` (at most an hour), highest first.
    pub fn top_consumers(&self, window: Duration) -> Vec<(Arc<str>, u64)> {
        let now_s = self.now_ms().div_euclid(1000);
        let since = now_s - window.as_secs().min(RECENT_SECONDS as u64) as i64;
        let mut totals: HashMap<Arc<str>, u64> = HashMap::new();
        for (s, m) in lock(&self.recent).iter() {
            if *s < since || *s > now_s {
                continue;
            }
            for (c, n) in m.values() {
                *totals.entry(c.clone()).or_default() += n;
            }
        }
        let mut out: Vec<_> = totals.into_iter().collect();
        out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;
    use tollgate_core::ManualClock;

    #[test]
    fn counts_per_minute_and_consumer_and_drains_once() {
        let clock = Arc::new(ManualClock::new(
            UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        ));
        let u = Usage::new(clock.clone());
        let (t, a): (Arc<str>, Arc<str>) = (Arc::from("retail"), Arc::from("accounts"));
        let gold: Arc<str> = Arc::from("partner-gold");
        for _ in 0..3 {
            u.record(
                &t,
                &a,
                Some(&gold),
                200,
                false,
                Duration::from_millis(4),
                clock.now(),
            );
        }
        u.record(
            &t,
            &a,
            Some(&gold),
            429,
            true,
            Duration::from_micros(300),
            clock.now(),
        );
        u.record(
            &t,
            &a,
            None,
            401,
            false,
            Duration::from_millis(1),
            clock.now(),
        );
        clock.advance(Duration::from_secs(60));
        u.record(
            &t,
            &a,
            Some(&gold),
            502,
            false,
            Duration::from_millis(20),
            clock.now(),
        );

        let mut d = u.drain();
        d.sort_by_key(|d| (d.minute_ms, d.consumer.clone()));
        assert_eq!(d.len(), 3);
        assert_eq!(&*d[0].consumer, ANONYMOUS);
        let first = &d[1].counts;
        assert_eq!(
            (
                first.requests,
                first.status_2xx,
                first.status_4xx,
                first.throttled
            ),
            (4, 3, 1, 1)
        );
        assert_eq!(first.latency.iter().sum::<u64>(), 4);
        assert_eq!(d[2].counts.status_5xx, 1);
        assert!(u.drain().is_empty(), "a drain takes everything once");

        u.restore(d.clone());
        u.restore(d);
        let again = u.drain();
        assert_eq!(again.iter().map(|d| d.counts.requests).sum::<u64>(), 12);
    }

    #[test]
    fn top_consumers_cover_the_window_only() {
        let clock = Arc::new(ManualClock::new(
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000),
        ));
        let u = Usage::new(clock.clone());
        let (t, a): (Arc<str>, Arc<str>) = (Arc::from("t"), Arc::from("a"));
        let (x, y): (Arc<str>, Arc<str>) = (Arc::from("x"), Arc::from("y"));
        for _ in 0..50 {
            u.record(&t, &a, Some(&x), 200, false, Duration::ZERO, clock.now());
        }
        clock.advance(Duration::from_secs(120));
        for _ in 0..5 {
            u.record(&t, &a, Some(&y), 200, false, Duration::ZERO, clock.now());
            u.record(&t, &a, Some(&x), 200, false, Duration::ZERO, clock.now());
        }
        u.record(&t, &a, Some(&y), 200, false, Duration::ZERO, clock.now());
        u.record(&t, &a, None, 200, false, Duration::ZERO, clock.now());
        let top = u.top_consumers(Duration::from_secs(60));
        assert_eq!(top, vec![(y.clone(), 6), (x.clone(), 5)]);
        let top = u.top_consumers(Duration::from_secs(600));
        assert_eq!(top[0], (x, 55));
    }
}
