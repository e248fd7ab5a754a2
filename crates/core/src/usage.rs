//! Shared shape of usage analytics: the latency histogram every node records and the store
//! adds up, so percentiles can be computed over any set of minutes and nodes (the store
//! computes them).

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets() {
        assert!(LATENCY_BOUNDS_MS.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(latency_bucket(0.2), 0);
        assert_eq!(latency_bucket(1.0), 0);
        assert_eq!(latency_bucket(1.5), 1);
        assert_eq!(latency_bucket(1e9), LATENCY_BOUNDS_MS.len());
    }
}
