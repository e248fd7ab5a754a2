//! Traffic control building blocks: GCRA rate limiters (token bucket semantics, keyed,
//! sharded, bounded), calendar-aligned quotas, spike arrest, concurrency limits, and the IETF
//! RateLimit headers. Time comes from an injected clock so every limit is tested exactly.
