//! Usage analytics types and the latency histogram.

use serde::Serialize;

// One histogram layout for the whole gateway: nodes record into it, the store adds it up.
pub use tollgate_core::usage::{LATENCY_BOUNDS_MS, LATENCY_BUCKETS, latency_bucket};

/// Counts one gateway node adds for one minute, consumer and API.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct UsageDelta {
    /// Start of the minute (unix ms, a multiple of 60 000).
    pub minute_ms: i64,
    /// The tenant whose API was called: API ids are unique within a tenant only.
    pub tenant: String,
    pub consumer: String,
    pub api: String,
    pub requests: u64,
    pub status_2xx: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    pub throttled: u64,
    /// At most [`LATENCY_BUCKETS`] counts; missing trailing buckets count as zero.
    pub latency_buckets: Vec<u64>,
}

/// Rows with `from_ms <= minute < to_ms`, summed per `bucket_ms` (60 000, 3 600 000 or
/// 86 400 000; buckets are aligned to the unix epoch, so days are UTC days), consumer, tenant
/// and API.
/// The answer is ordered by [`UsageKey`], so `after` and `limit` page through it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct UsageQuery {
    pub consumer: Option<String>,
    pub api: Option<String>,
    /// Only this tenant's APIs.
    pub tenant: Option<String>,
    pub from_ms: i64,
    pub to_ms: i64,
    pub bucket_ms: i64,
    /// Only rows after this one.
    pub after: Option<UsageKey>,
    /// At most this many rows; `None`: all of them.
    pub limit: Option<usize>,
}

/// What orders and identifies a usage row: its bucket's start, then consumer, tenant and API
/// id compared byte by byte (in this order: the derived `Ord` follows the fields).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct UsageKey {
    pub start_ms: i64,
    pub consumer: String,
    pub tenant: String,
    pub api: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageRow {
    pub start_ms: i64,
    pub consumer: String,
    pub tenant: String,
    pub api: String,
    pub requests: u64,
    pub status_2xx: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    pub throttled: u64,
    /// Always [`LATENCY_BUCKETS`] long.
    pub latency_buckets: Vec<u64>,
}

impl UsageRow {
    pub fn key(&self) -> UsageKey {
        UsageKey {
            start_ms: self.start_ms,
            consumer: self.consumer.clone(),
            tenant: self.tenant.clone(),
            api: self.api.clone(),
        }
    }

    /// The `q` quantile (0..=1) of latency in milliseconds, estimated from the histogram by
    /// linear interpolation inside the bucket that holds it (the first bucket starts at 0).
    /// A quantile in the unbounded last bucket is reported as the largest finite bound.
    /// `None` when there are no samples.
    pub fn latency_quantile_ms(&self, q: f64) -> Option<f64> {
        quantile(&self.latency_buckets, q)
    }
}

pub(crate) fn quantile(buckets: &[u64], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 || q.is_nan() {
        return None;
    }
    // Precision loss above 2^53 samples is irrelevant for an estimate.
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut below = 0u64;
    for (i, &n) in buckets.iter().enumerate() {
        if n == 0 {
            continue;
        }
        let above = below + n;
        if rank <= above as f64 {
            let Some(&upper) = LATENCY_BOUNDS_MS.get(i) else {
                return LATENCY_BOUNDS_MS.last().copied();
            };
            let lower = if i == 0 {
                0.0
            } else {
                LATENCY_BOUNDS_MS[i - 1]
            };
            let within = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
            return Some(lower + (upper - lower) * within);
        }
        below = above;
    }
    LATENCY_BOUNDS_MS.last().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(buckets: &[(usize, u64)]) -> UsageRow {
        let mut latency_buckets = vec![0; LATENCY_BUCKETS];
        for &(i, n) in buckets {
            latency_buckets[i] = n;
        }
        UsageRow {
            start_ms: 0,
            consumer: "c".into(),
            tenant: "t".into(),
            api: "a".into(),
            requests: latency_buckets.iter().sum(),
            status_2xx: 0,
            status_4xx: 0,
            status_5xx: 0,
            throttled: 0,
            latency_buckets,
        }
    }

    #[test]
    fn bounds_are_increasing() {
        assert!(LATENCY_BOUNDS_MS.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(latency_bucket(0.2), 0);
        assert_eq!(latency_bucket(1.0), 0);
        assert_eq!(latency_bucket(1.5), 1);
        assert_eq!(latency_bucket(10_001.0), LATENCY_BOUNDS_MS.len());
    }

    #[test]
    fn quantile_none_without_samples() {
        assert_eq!(row(&[]).latency_quantile_ms(0.5), None);
    }

    #[test]
    fn quantile_interpolates_inside_a_bucket() {
        // 100 samples in (10, 15]: the median is half-way through the bucket.
        let r = row(&[(6, 100)]);
        assert_eq!(LATENCY_BOUNDS_MS[6], 15.0);
        assert_eq!(r.latency_quantile_ms(0.5), Some(12.5));
        assert_eq!(r.latency_quantile_ms(1.0), Some(15.0));
        assert_eq!(r.latency_quantile_ms(0.0), Some(10.0));
    }

    #[test]
    fn quantile_across_buckets() {
        // 50 in [0, 1], 50 in (100, 150]: p50 is the top of the first, p75 mid second.
        let r = row(&[(0, 50), (12, 50)]);
        assert_eq!(r.latency_quantile_ms(0.5), Some(1.0));
        assert_eq!(r.latency_quantile_ms(0.75), Some(125.0));
        // p99 is 98% of the way through the second bucket.
        let p99 = r.latency_quantile_ms(0.99).unwrap_or_default();
        assert!((p99 - 149.0).abs() < 1e-9, "{p99}");
    }

    #[test]
    fn quantile_in_the_unbounded_bucket_is_the_last_bound() {
        let r = row(&[(LATENCY_BOUNDS_MS.len(), 3)]);
        assert_eq!(r.latency_quantile_ms(0.5), Some(10_000.0));
    }
}
