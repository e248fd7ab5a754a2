//! Shared shape of usage analytics: the latency histogram every node records and the store
//! adds up, so percentiles can be computed over any set of minutes and nodes.

/// Upper bounds (milliseconds) of the latency buckets; one more bucket catches everything above.
pub const LATENCY_BOUNDS_MS: &[f64] = &[
    1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0, 500.0,
    750.0, 1000.0, 2500.0, 5000.0, 10000.0,
];

/// Number of buckets, including the overflow bucket.
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;

/// The bucket a latency falls into.
pub fn latency_bucket(ms: f64) -> usize {
    LATENCY_BOUNDS_MS
        .iter()
        .position(|b| ms <= *b)
        .unwrap_or(LATENCY_BOUNDS_MS.len())
}

/// The `q` quantile (0..=1) of a bucketed histogram, interpolating linearly inside the bucket.
/// `None` without samples.
pub fn latency_quantile_ms(buckets: &[u64], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
    let mut seen = 0u64;
    for (i, &n) in buckets.iter().enumerate() {
        if n == 0 {
            continue;
        }
        if (seen + n) as f64 >= rank {
            let lo = if i == 0 {
                0.0
            } else {
                LATENCY_BOUNDS_MS[i - 1]
            };
            // The overflow bucket has no upper bound: report its lower edge.
            let Some(&hi) = LATENCY_BOUNDS_MS.get(i) else {
                return Some(lo);
            };
            let within = (rank - seen as f64) / n as f64;
            return Some(lo + (hi - lo) * within);
        }
        seen += n;
    }
    LATENCY_BOUNDS_MS.last().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_quantiles() {
        assert_eq!(latency_bucket(0.2), 0);
        assert_eq!(latency_bucket(1.0), 0);
        assert_eq!(latency_bucket(1.5), 1);
        assert_eq!(latency_bucket(1e9), LATENCY_BOUNDS_MS.len());
        let mut b = vec![0u64; LATENCY_BUCKETS];
        assert_eq!(latency_quantile_ms(&b, 0.5), None);
        b[latency_bucket(4.0)] = 100; // all samples in (3, 5]
        let p50 = latency_quantile_ms(&b, 0.5).expect("samples");
        assert!((3.0..=5.0).contains(&p50), "{p50}");
        b[latency_bucket(400.0)] = 2; // 2% slow
        let p99 = latency_quantile_ms(&b, 0.99).expect("samples");
        assert!((300.0..=500.0).contains(&p99), "{p99}");
        let p50 = latency_quantile_ms(&b, 0.5).expect("samples");
        assert!(p50 <= 5.0, "{p50}");
    }
}
