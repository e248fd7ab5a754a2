//! A circuit breaker for the shared (Redis) limits, so a dead or stalled Redis costs each
//! request nothing once it is known to be down.
//!
//! - **Closed**: every request goes to Redis. `failures` consecutive failures open it.
//! - **Open** for `cool_down`: no request goes to Redis; each follows its failure mode.
//! - **Half-open** after the cool-down: exactly one request (the probe) goes to Redis while the
//!   others keep following their failure mode. Success closes the breaker, failure opens it
//!   for another cool-down. A probe that never reports (its request was dropped mid-flight) is
//!   replaced by a new one after another cool-down, so the breaker cannot stick half-open.
//!
//! Time is passed in (the gateway's injected clock), so every transition is tested exactly.
//! The state sits behind a mutex held for a few instructions and never across an `.await`.

use parking_lot::Mutex;
use std::time::{Duration, SystemTime};

/// When the breaker opens and how long it stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive failures that open the breaker (at least 1).
    pub failures: u32,
    /// How long an open breaker keeps requests away from Redis before one probe is let through.
    pub cool_down: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failures: 5,
            cool_down: Duration::from_secs(1),
        }
    }
}

/// What the breaker lets a request do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: call Redis.
    Call,
    /// Half-open: this request is the one probe; call Redis and report the result.
    Probe,
    /// Open: do not call Redis.
    Refuse,
}

/// A change worth one log line (never logged per request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Opened,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    /// No call until `until`; then the next request becomes the probe.
    Open {
        until: SystemTime,
    },
    /// A probe is out since `since`.
    HalfOpen {
        since: SystemTime,
    },
}

/// See the module docs.
#[derive(Debug)]
pub struct Breaker {
    state: Mutex<State>,
}

impl Default for Breaker {
    fn default() -> Self {
        Self::new()
    }
}

impl Breaker {
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    /// Whether a request at `now` may call Redis.
    pub fn admit(&self, s: &BreakerSettings, now: SystemTime) -> Admission {
        let mut st = self.state.lock();
        match *st {
            State::Closed { .. } => Admission::Call,
            State::Open { until } if now < until => Admission::Refuse,
            State::HalfOpen { since } if now < since + s.cool_down => Admission::Refuse,
            State::Open { .. } | State::HalfOpen { .. } => {
                *st = State::HalfOpen { since: now };
                Admission::Probe
            }
        }
    }

    /// Redis answered.
    pub fn success(&self) -> Option<Transition> {
        let mut st = self.state.lock();
        let was_closed = matches!(*st, State::Closed { .. });
        *st = State::Closed { failures: 0 };
        (!was_closed).then_some(Transition::Closed)
    }

    /// Redis failed or timed out at `now`.
    pub fn failure(&self, s: &BreakerSettings, now: SystemTime) -> Option<Transition> {
        let mut st = self.state.lock();
        let open = State::Open {
            until: now + s.cool_down,
        };
        match *st {
            State::Closed { failures } => {
                let failures = failures.saturating_add(1);
                if failures >= s.failures.max(1) {
                    *st = open;
                    Some(Transition::Opened)
                } else {
                    *st = State::Closed { failures };
                    None
                }
            }
            // A failed probe (or a late failure of a call made while closed) re-opens it.
            State::HalfOpen { .. } => {
                *st = open;
                None
            }
            State::Open { .. } => None,
        }
    }

    /// True while requests are kept away from Redis (open, or half-open with a probe out).
    pub fn is_open(&self) -> bool {
        !matches!(*self.state.lock(), State::Closed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;
    use tollgate_core::{Clock, ManualClock};

    fn setup() -> (ManualClock, Breaker, BreakerSettings) {
        let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        let s = BreakerSettings {
            failures: 3,
            cool_down: Duration::from_millis(500),
        };
        (clock, Breaker::new(), s)
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let (clock, b, s) = setup();
        assert_eq!(b.failure(&s, clock.now()), None);
        assert_eq!(b.failure(&s, clock.now()), None);
        // A success in between resets the count.
        assert_eq!(b.success(), None);
        assert_eq!(b.failure(&s, clock.now()), None);
        assert_eq!(b.failure(&s, clock.now()), None);
        assert_eq!(b.admit(&s, clock.now()), Admission::Call);
        assert_eq!(b.failure(&s, clock.now()), Some(Transition::Opened));
        assert!(b.is_open());
        assert_eq!(b.admit(&s, clock.now()), Admission::Refuse);
    }

    #[test]
    fn one_probe_after_the_cool_down() {
        let (clock, b, s) = setup();
        for _ in 0..3 {
            b.failure(&s, clock.now());
        }
        clock.advance(Duration::from_millis(499));
        assert_eq!(b.admit(&s, clock.now()), Admission::Refuse);
        clock.advance(Duration::from_millis(1));
        assert_eq!(b.admit(&s, clock.now()), Admission::Probe);
        // Only one probe at a time.
        assert_eq!(b.admit(&s, clock.now()), Admission::Refuse);
        assert_eq!(b.success(), Some(Transition::Closed));
        assert_eq!(b.admit(&s, clock.now()), Admission::Call);
        assert!(!b.is_open());
    }

    #[test]
    fn a_failed_probe_reopens_for_a_full_cool_down() {
        let (clock, b, s) = setup();
        for _ in 0..3 {
            b.failure(&s, clock.now());
        }
        clock.advance(Duration::from_millis(500));
        assert_eq!(b.admit(&s, clock.now()), Admission::Probe);
        clock.advance(Duration::from_millis(50));
        assert_eq!(b.failure(&s, clock.now()), None);
        clock.advance(Duration::from_millis(499));
        assert_eq!(b.admit(&s, clock.now()), Admission::Refuse);
        clock.advance(Duration::from_millis(1));
        assert_eq!(b.admit(&s, clock.now()), Admission::Probe);
    }

    #[test]
    fn a_lost_probe_is_replaced() {
        let (clock, b, s) = setup();
        for _ in 0..3 {
            b.failure(&s, clock.now());
        }
        clock.advance(Duration::from_millis(500));
        assert_eq!(b.admit(&s, clock.now()), Admission::Probe);
        // The probe's request went away without reporting.
        clock.advance(Duration::from_millis(499));
        assert_eq!(b.admit(&s, clock.now()), Admission::Refuse);
        clock.advance(Duration::from_millis(1));
        assert_eq!(b.admit(&s, clock.now()), Admission::Probe);
    }

    #[test]
    fn failures_while_open_do_not_extend_it() {
        let (clock, b, s) = setup();
        for _ in 0..3 {
            b.failure(&s, clock.now());
        }
        // Late failures of calls that started while closed.
        clock.advance(Duration::from_millis(400));
        b.failure(&s, clock.now());
        clock.advance(Duration::from_millis(100));
        assert_eq!(b.admit(&s, clock.now()), Admission::Probe);
    }
}
