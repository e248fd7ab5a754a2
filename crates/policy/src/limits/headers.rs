//! Response headers for limited routes, per draft-ietf-httpapi-ratelimit-headers-11 (May 2026;
//! the wire format is unchanged since -09): both fields are Structured Field Lists (RFC 9651) of
//! Strings naming a policy, with parameters.
//!
//! - `RateLimit-Policy: "plan-gold";q=2000;w=2` — quota `q` per window `w` seconds (§3).
//! - `RateLimit: "plan-gold";r=1999;t=2` — `r` still available, effective window `t` seconds
//!   (§4).
//! - `Retry-After` (RFC 9110 §10.2.3) in whole seconds, rounded up and at least 1, so a client
//!   that waits exactly that long is admitted.
//!
//! A token bucket has no fixed window; it is advertised as its burst over the time a full
//! bucket takes to refill (`q = burst`, `w = ⌈burst/rate⌉`), the sustained rate as the
//! vendor parameter `tollgate-rate` (requests per second) so clients can pace themselves.

use super::quota::{Period, QuotaLimit};
use super::{Limit, Outcome};
use http::HeaderValue;
use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

/// One `RateLimit-Policy` member.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyItem<'a> {
    pub name: &'a str,
    /// `q`: the quota, in requests.
    pub quota: u64,
    /// `w`: the window in seconds, if the policy has one.
    pub window: Option<u64>,
    /// `tollgate-rate`: the sustained rate of a token bucket, in requests per second.
    pub rate: Option<f64>,
}

impl<'a> PolicyItem<'a> {
    /// A token-bucket limit (see the module docs for the mapping).
    pub fn rate(name: &'a str, limit: &Limit) -> Self {
        let refill = f64::from(limit.burst()) / limit.rate();
        Self {
            name,
            quota: u64::from(limit.burst()),
            window: Some((refill.ceil() as u64).max(1)),
            rate: Some(limit.rate()),
        }
    }

    /// A calendar quota; months and weeks advertise their nominal length (31 and 7 days).
    pub fn quota(name: &'a str, limit: &QuotaLimit) -> Self {
        let window = match limit.period {
            Period::Hour => 3600,
            Period::Day => 86_400,
            Period::Week => 7 * 86_400,
            Period::Month => 31 * 86_400,
        };
        Self {
            name,
            quota: limit.max,
            window: Some(window),
            rate: None,
        }
    }

    /// A concurrency limit (`qu="concurrent-requests"`, no window).
    pub fn concurrency(name: &'a str, limit: u32) -> Self {
        Self {
            name,
            quota: u64::from(limit),
            window: None,
            rate: None,
        }
    }
}

/// One `RateLimit` member: the state of a named policy after this request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceLimit<'a> {
    pub name: &'a str,
    /// `r`: requests still available now.
    pub remaining: u64,
    /// `t`: seconds until the policy's quota is fully available again.
    pub reset: Option<u64>,
}

impl<'a> ServiceLimit<'a> {
    pub fn from_outcome(name: &'a str, outcome: &Outcome) -> Self {
        let (remaining, reset) = match *outcome {
            Outcome::Admit {
                remaining,
                reset_after,
            } => (remaining, reset_after),
            Outcome::Reject { reset_after, .. } => (0, reset_after),
        };
        Self {
            name,
            remaining,
            reset: Some(ceil_secs(reset)),
        }
    }
}

/// `RateLimit-Policy` for the given policies.
pub fn ratelimit_policy(items: &[PolicyItem<'_>]) -> HeaderValue {
    let mut s = String::with_capacity(32 * items.len());
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        push_sf_string(&mut s, item.name);
        let _ = write!(s, ";q={}", item.quota.min(SF_INTEGER_MAX));
        if item.window.is_none() && item.rate.is_none() {
            s.push_str(";qu=\"concurrent-requests\"");
        }
        if let Some(w) = item.window {
            let _ = write!(s, ";w={}", w.clamp(1, SF_INTEGER_MAX));
        }
        if let Some(rate) = item.rate {
            push_sf_decimal(&mut s, ";tollgate-rate=", rate);
        }
    }
    header_value(s)
}

/// `RateLimit` for the given service limits.
pub fn ratelimit(items: &[ServiceLimit<'_>]) -> HeaderValue {
    let mut s = String::with_capacity(24 * items.len());
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        push_sf_string(&mut s, item.name);
        let _ = write!(s, ";r={}", item.remaining.min(SF_INTEGER_MAX));
        if let Some(t) = item.reset {
            let _ = write!(s, ";t={}", t.min(SF_INTEGER_MAX));
        }
    }
    header_value(s)
}

/// `Retry-After` in whole seconds: rounded up, at least 1.
pub fn retry_after(after: Duration) -> HeaderValue {
    HeaderValue::from(ceil_secs(after).max(1))
}

/// Whole seconds, rounded up.
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// RFC 9651 §3.3.1: Integers have at most 15 digits.
const SF_INTEGER_MAX: u64 = 999_999_999_999_999;

/// An RFC 9651 String: printable ASCII with `"` and `\` escaped. Anything else is replaced by
/// `_`, so a policy name from config can never produce an invalid header.
fn push_sf_string(s: &mut String, v: &str) {
    s.push('"');
    for c in v.chars() {
        match c {
            '"' | '\\' => {
                s.push('\\');
                s.push(c);
            }
            ' '..='~' => s.push(c),
            _ => s.push('_'),
        }
    }
    s.push('"');
}

/// An RFC 9651 Decimal: at most 12 integer and 3 fractional digits, at least one of each.
fn push_sf_decimal(s: &mut String, prefix: &str, v: f64) {
    let v = v.clamp(0.0, 999_999_999_999.999);
    let mut d = format!("{v:.3}");
    while d.ends_with('0') && !d.ends_with(".0") {
        d.pop();
    }
    s.push_str(prefix);
    s.push_str(&d);
}

fn header_value(s: String) -> HeaderValue {
    // Only printable ASCII is ever written, which HeaderValue always accepts.
    HeaderValue::try_from(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A policy's name with its `RateLimit` rendering: the structured-field string (quoted,
/// escaped) and `;r=`, rendered once when the config is compiled instead of on every request.
#[derive(Debug, Clone)]
pub struct PolicyName {
    name: Arc<str>,
    prefix: Box<[u8]>,
}

impl PolicyName {
    pub fn new(name: &str) -> Self {
        let mut s = String::with_capacity(name.len() + 5);
        push_sf_string(&mut s, name);
        s.push_str(";r=");
        Self {
            name: Arc::from(name),
            prefix: s.into_bytes().into(),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// The name itself, to share (as a limiter key's scope).
    pub fn arc(&self) -> &Arc<str> {
        &self.name
    }
}

/// `RateLimit` for a single service limit, rendered without `core::fmt`: it is built on every
/// limited request.
pub fn ratelimit_one(name: &PolicyName, outcome: &Outcome) -> HeaderValue {
    let (remaining, reset) = match *outcome {
        Outcome::Admit {
            remaining,
            reset_after,
        } => (remaining, reset_after),
        Outcome::Reject { reset_after, .. } => (0, reset_after),
    };
    // Rendered on the stack and copied once into the value's own exact-size storage: a `Vec`
    // with spare capacity would become a `Bytes` with a second allocation for its header.
    let mut buf = [0u8; 128];
    let mut n = 0;
    let mut put = |b: &[u8]| {
        let end = n + b.len();
        if let Some(dst) = buf.get_mut(n..end) {
            dst.copy_from_slice(b);
        }
        n = end;
    };
    put(&name.prefix);
    put(itoa::Buffer::new()
        .format(remaining.min(SF_INTEGER_MAX))
        .as_bytes());
    put(b";t=");
    put(itoa::Buffer::new()
        .format(ceil_secs(reset).min(SF_INTEGER_MAX))
        .as_bytes());
    match buf.get(..n) {
        Some(value) => HeaderValue::from_bytes(value)
            .unwrap_or_else(|_| ratelimit(&[ServiceLimit::from_outcome(name.as_str(), outcome)])),
        // A name too long for the buffer: the general form.
        None => ratelimit(&[ServiceLimit::from_outcome(name.as_str(), outcome)]),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn single_service_limit_matches_the_general_form() {
        use super::*;
        let o = Outcome::Admit {
            remaining: 42,
            reset_after: std::time::Duration::from_millis(16_200),
        };
        let rejected = Outcome::Reject {
            retry_after: std::time::Duration::from_millis(1),
            reset_after: std::time::Duration::from_secs(3),
        };
        let huge = Outcome::Admit {
            remaining: u64::MAX,
            reset_after: std::time::Duration::from_secs(u64::MAX / 2),
        };
        // Names around and beyond the stack buffer, and the widest numbers.
        let long = "r".repeat(200);
        for name in [
            "plan-gold",
            "route:payments.initiate",
            "a\"b\\c\u{e9}",
            &long[..80],
            &long[..100],
            &long,
        ] {
            for o in [o, rejected, huge] {
                assert_eq!(
                    ratelimit_one(&PolicyName::new(name), &o),
                    ratelimit(&[ServiceLimit::from_outcome(name, &o)]),
                    "{name} {o:?}"
                );
            }
        }
    }

    use super::*;

    fn limit(rate: f64, burst: u32) -> Limit {
        Limit::new(rate, burst).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn policy_header() {
        let gold = limit(1000.0, 2000);
        let route = limit(50.0, 50);
        let quota = QuotaLimit::new(10_000_000, Period::Month);
        let v = ratelimit_policy(&[
            PolicyItem::rate("plan-gold", &gold),
            PolicyItem::rate("route", &route),
            PolicyItem::quota("quota", &quota),
        ]);
        assert_eq!(
            v,
            "\"plan-gold\";q=2000;w=2;tollgate-rate=1000.0, \"route\";q=50;w=1;tollgate-rate=50.0, \
             \"quota\";q=10000000;w=2678400"
        );
        let odd = ratelimit_policy(&[PolicyItem::rate("spike", &limit(0.3, 1))]);
        assert_eq!(odd, "\"spike\";q=1;w=4;tollgate-rate=0.3");
        let conc = ratelimit_policy(&[PolicyItem::concurrency("upstream", 64)]);
        assert_eq!(conc, "\"upstream\";q=64;qu=\"concurrent-requests\"");
    }

    #[test]
    fn service_limit_header() {
        let admit = Outcome::Admit {
            remaining: 42,
            reset_after: Duration::from_millis(16_001),
        };
        let reject = Outcome::Reject {
            retry_after: Duration::from_millis(200),
            reset_after: Duration::from_secs(3),
        };
        let v = ratelimit(&[
            ServiceLimit::from_outcome("plan-gold", &admit),
            ServiceLimit::from_outcome("gateway", &reject),
            ServiceLimit {
                name: "conc",
                remaining: 3,
                reset: None,
            },
        ]);
        assert_eq!(
            v,
            "\"plan-gold\";r=42;t=17, \"gateway\";r=0;t=3, \"conc\";r=3"
        );
    }

    #[test]
    fn names_are_escaped() {
        let v = ratelimit(&[ServiceLimit {
            name: "a\"b\\c\u{e9}",
            remaining: 1,
            reset: Some(0),
        }]);
        assert_eq!(v, "\"a\\\"b\\\\c_\";r=1;t=0");
    }

    #[test]
    fn retry_after_rounds_up_to_at_least_one() {
        assert_eq!(retry_after(Duration::ZERO), "1");
        assert_eq!(retry_after(Duration::from_nanos(1)), "1");
        assert_eq!(retry_after(Duration::from_secs(1)), "1");
        assert_eq!(retry_after(Duration::from_millis(1001)), "2");
        assert_eq!(retry_after(Duration::from_secs(3600)), "3600");
    }
}
