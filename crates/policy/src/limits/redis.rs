//! Limits shared by several gateway processes through Redis: one Lua script per request checks
//! every tier (rate buckets and quotas) and records the request in all of them or in none, in
//! one round trip. Redis runs a script atomically, so this is race free across nodes exactly as
//! [`check_all`](super::check_all) is across threads, with the same semantics and the same
//! [`Verdict`].
//!
//! **Time** is the gateway's injected clock, passed to the script in whole microseconds, not
//! Redis's `TIME`: the algorithms stay deterministic under a `ManualClock` (tests run the real
//! script against a real Redis at chosen instants), quota windows are computed by the same code
//! as in-process, and one clock decides both. The cost is that gateway nodes must keep their
//! clocks in sync (NTP): a node whose clock is `d` ahead can admit about `d × rate` extra
//! requests once. Microseconds because Lua numbers are doubles, exact for integers only up to
//! 2^53 (nanoseconds since the epoch are not; microseconds are until the year 2255).
//!
//! **Keys** expire: a bucket once it would be full again (plus a second), a quota counter after
//! its window (plus a minute; its key names the window, so a late expiry never carries a count
//! over). An absent key means an idle bucket or an unused window, exactly as in-process.
//!
//! **Guarding**: every call is bounded by a timeout and goes through a [`Breaker`]; callers
//! decide what a failure means (the route's failure mode).

use super::breaker::{Admission, Breaker, BreakerSettings, Transition};
use super::tiers::{MAX_TIERS, Verdict};
use super::{Limit, Outcome, QuotaLimit, unix_nanos};
use futures_util::FutureExt as _;
use futures_util::future::{BoxFuture, Shared};
use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The all-or-nothing check. `KEYS`: rate buckets, then quota counters. `ARGV[1]`: now (µs since
/// the epoch); `ARGV[2]`: how many of the keys are rate buckets; then per rate bucket its
/// emission interval T and tolerance τ (µs, may be fractional), per quota its maximum and its
/// window's end (µs). Reply: four integers per key, in order — admitted (1/0), remaining,
/// retry after (µs), reset after (µs).
///
/// The GCRA arithmetic is [`Limit::decide`]'s; the quota's is `quota::decide`'s.
const SCRIPT: &str = r#"
local now = tonumber(ARGV[1])
local nrate = tonumber(ARGV[2])
local out, put, ttl = {}, {}, {}
local admit = true
local a = 3
-- One MGET rather than a GET per key: each redis.call costs microseconds inside a script.
local cur = redis.call('MGET', unpack(KEYS))
for i = 1, #KEYS do
  local x, y = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  a = a + 2
  local v = cur[i]
  if i <= nrate then
    local T, tol = x, y
    local tat = (v and tonumber(v)) or now
    if tat < now then tat = now end
    local allow_at = tat - tol
    if now < allow_at then
      admit = false
      out[#out + 1] = 0; out[#out + 1] = 0
      out[#out + 1] = math.ceil(allow_at - now); out[#out + 1] = math.ceil(tat - now)
    else
      local nt = tat + T
      put[i] = string.format('%.17g', nt)
      ttl[i] = math.ceil((nt - now) / 1000) + 1000
      local remaining = math.floor((tol + T - (nt - now)) / T + 1e-9)
      if remaining < 0 then remaining = 0 end
      out[#out + 1] = 1; out[#out + 1] = remaining
      out[#out + 1] = 0; out[#out + 1] = math.ceil(nt - now)
    end
  else
    local max, wend = x, y
    local used = (v and tonumber(v)) or 0
    local left = wend - now
    if left < 0 then left = 0 end
    if used >= max then
      admit = false
      out[#out + 1] = 0; out[#out + 1] = 0
      out[#out + 1] = math.ceil(left); out[#out + 1] = math.ceil(left)
    else
      put[i] = string.format('%d', used + 1)
      ttl[i] = math.ceil(left / 1000) + 60000
      out[#out + 1] = 1; out[#out + 1] = max - used - 1
      out[#out + 1] = 0; out[#out + 1] = math.ceil(left)
    end
  end
end
if admit then
  for i = 1, #KEYS do
    redis.call('SET', KEYS[i], put[i], 'PX', ttl[i])
  end
end
return out
"#;

/// The edge's per-address rate rules, with the in-process table's semantics (see `edge`'s
/// module docs): one block per address, which is not extended and during which nothing is
/// counted; every rule counted for every other request in its slotted window; a rule that
/// trips starts its count again, and of several tripping at once the longest block wins.
/// `KEYS[1]`: the address's block (`until:rule`, µs); then per rule its counter hash (slot
/// number → requests). `ARGV[1]`: now (µs since the epoch); then per rule: slot width (µs),
/// slots, the most requests a window may hold, block length (µs). Reply: `{0}` to pass, or
/// `{1, rule (from 1), block left (µs)}`. Time is the gateway's, as in [`SCRIPT`]; keys only
/// expire for tidiness.
const IP_SCRIPT: &str = r#"
local now = tonumber(ARGV[1])
local cur = redis.call('GET', KEYS[1])
if cur then
  local sep = string.find(cur, ':', 1, true)
  if sep then
    local untl = tonumber(string.sub(cur, 1, sep - 1))
    if untl and now < untl then
      return {1, tonumber(string.sub(cur, sep + 1)), math.ceil(untl - now)}
    end
  end
end
local trip, trip_until = 0, 0
for r = 1, #KEYS - 1 do
  local a = 2 + (r - 1) * 4
  local w, slots = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local max, block = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local h = KEYS[r + 1]
  local slot = math.floor(now / w)
  redis.call('HINCRBY', h, slot, 1)
  local all = redis.call('HGETALL', h)
  local sum = 0
  for i = 1, #all, 2 do
    if tonumber(all[i]) > slot - slots then
      sum = sum + tonumber(all[i + 1])
    else
      redis.call('HDEL', h, all[i])
    end
  end
  if sum > max then
    redis.call('DEL', h)
    local u = now + block
    if trip == 0 or u > trip_until then trip, trip_until = r, u end
  else
    redis.call('PEXPIRE', h, math.ceil(w * slots / 1000) + 1000)
  end
end
if trip == 0 then return {0} end
redis.call('SET', KEYS[1], string.format('%.17g', trip_until) .. ':' .. trip,
  'PX', math.ceil((trip_until - now) / 1000) + 1000)
return {1, trip, math.ceil(trip_until - now)}
"#;

/// One per-address rate rule as the shared check needs it.
#[derive(Debug, Clone)]
pub struct SharedIpRule {
    /// Names the rule's state in Redis by what it counts, so a reload that keeps the rule keeps
    /// its counts and blocks, whatever its position.
    pub key: String,
    pub slot_width: Duration,
    pub slots: u32,
    pub max_requests: u32,
    pub block_for: Duration,
}

/// The edge's rules as the shared check sends them: key prefixes and script arguments made
/// once per config, so a request only appends its address.
#[derive(Debug, Clone)]
pub struct SharedIpRules {
    /// `{prefix}ipb|{rule keys}|`: one block per address for this set of rules.
    block_prefix: String,
    /// Per rule: `{prefix}ipw|{key}|`, then slot width (µs), slots, most requests, block (µs).
    rules: Vec<(String, u64, u32, u32, u64)>,
}

impl SharedIpRules {
    pub fn new(settings: &RedisSettings, rules: &[SharedIpRule]) -> Self {
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        let mut block_prefix = format!("{}ipb|", settings.key_prefix);
        for r in rules {
            block_prefix.push_str(&r.key);
            block_prefix.push('|');
        }
        Self {
            block_prefix,
            rules: rules
                .iter()
                .map(|r| {
                    (
                        format!("{}ipw|{}|", settings.key_prefix, r.key),
                        us(r.slot_width),
                        r.slots,
                        r.max_requests,
                        us(r.block_for),
                    )
                })
                .collect(),
        }
    }
}

/// How the shared limits are consulted; from `limits.redis` in the config.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// The longest one check may take, connecting included.
    pub timeout: Duration,
    pub breaker: BreakerSettings,
    /// Prefix of every key.
    pub key_prefix: Arc<str>,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(50),
            breaker: BreakerSettings::default(),
            key_prefix: Arc::from("tollgate:"),
        }
    }
}

/// `TOLLGATE_REDIS_URL` could not be used.
#[derive(Debug, thiserror::Error)]
#[error("not a usable Redis URL ({0}); expected redis://[:password@]host:port/db")]
pub struct InvalidRedisUrl(String);

/// Why the shared limits gave no answer. The request then follows its failure mode.
#[derive(Debug, thiserror::Error)]
pub enum SharedLimitError {
    #[error("the Redis circuit breaker is open")]
    BreakerOpen,
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("unexpected reply from the limits script")]
    Reply,
    #[error("more than {MAX_TIERS} tiers")]
    TooManyTiers,
}

type Connecting = Shared<BoxFuture<'static, Result<MultiplexedConnection, redis::RedisError>>>;

/// The Redis side of traffic control: a client, one multiplexed connection (requests are
/// pipelined on it, so one is enough), the script and the breaker. Lives as long as the
/// gateway; cheap to share.
pub struct RedisLimiter {
    client: redis::Client,
    /// The current connection, or the attempt to make one, shared by every request waiting for
    /// it so a reconnect is one dial, not one per request. `u64` identifies the attempt, so a
    /// failure only discards the connection it happened on.
    conn: Mutex<Option<(u64, Connecting)>>,
    attempts: std::sync::atomic::AtomicU64,
    script: redis::Script,
    ip_script: redis::Script,
    breaker: Breaker,
    redacted: String,
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("url", &self.redacted)
            .finish_non_exhaustive()
    }
}

impl RedisLimiter {
    /// Parses `url` without connecting (the first request connects).
    pub fn open(url: &str) -> Result<Self, InvalidRedisUrl> {
        let client = redis::Client::open(url)
            // The parser's message never contains the URL, hence never the password.
            .map_err(|e| InvalidRedisUrl(e.to_string()))?;
        Ok(Self {
            client,
            conn: Mutex::new(None),
            attempts: std::sync::atomic::AtomicU64::new(0),
            script: redis::Script::new(SCRIPT),
            ip_script: redis::Script::new(IP_SCRIPT),
            breaker: Breaker::new(),
            redacted: tollgate_core::redact_url(url),
        })
    }

    /// The URL with any password replaced, for logs.
    pub fn redacted_url(&self) -> &str {
        &self.redacted
    }

    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// Checks one request against every tier at `now` and records it in all of them or none.
    /// `rates` and `quotas` are (key, limit), keys already prefixed; the verdict lists the rate
    /// tiers first, then the quotas, in the order given.
    pub async fn check_all(
        &self,
        settings: &RedisSettings,
        rates: &[(String, Limit)],
        quotas: &[(String, QuotaLimit)],
        now: SystemTime,
    ) -> Result<Verdict, SharedLimitError> {
        if rates.len() + quotas.len() > MAX_TIERS {
            return Err(SharedLimitError::TooManyTiers);
        }
        let invocation = invocation(&self.script, rates, quotas, now);
        let reply = self.run(settings, &invocation, now).await?;
        verdict(&reply, rates.len() + quotas.len())
    }

    /// Counts a request from `ip` (in its canonical form) against the edge's rate rules, or finds
    /// it blocked: `None` to pass, else the rule's position and how long the block lasts.
    pub async fn check_ip(
        &self,
        settings: &RedisSettings,
        rules: &SharedIpRules,
        ip: std::net::IpAddr,
        now: SystemTime,
    ) -> Result<Option<(usize, Duration)>, SharedLimitError> {
        let mut inv = self.ip_script.prepare_invoke();
        inv.key(format!("{}{ip}", rules.block_prefix))
            .arg(unix_nanos(now) / 1000);
        for (prefix, slot_us, slots, max, block_us) in &rules.rules {
            inv.key(format!("{prefix}{ip}"))
                .arg(slot_us)
                .arg(slots)
                .arg(max)
                .arg(block_us);
        }
        let reply = self.run(settings, &inv, now).await?;
        match reply.as_slice() {
            [0] => Ok(None),
            [1, rule, left] => {
                let rule = usize::try_from(*rule - 1).map_err(|_| SharedLimitError::Reply)?;
                if rule >= rules.rules.len() {
                    return Err(SharedLimitError::Reply);
                }
                Ok(Some((rule, micros(*left))))
            }
            _ => Err(SharedLimitError::Reply),
        }
    }

    /// Runs one script call through the breaker, within the timeout.
    async fn run(
        &self,
        settings: &RedisSettings,
        invocation: &redis::ScriptInvocation<'_>,
        now: SystemTime,
    ) -> Result<Vec<i64>, SharedLimitError> {
        match self.breaker.admit(&settings.breaker, now) {
            Admission::Refuse => return Err(SharedLimitError::BreakerOpen),
            Admission::Call | Admission::Probe => {}
        }
        let call = async {
            let (id, mut conn) = self.connection().await?;
            let reply = invocation
                .invoke_async::<Vec<i64>>(&mut conn)
                .await
                .map_err(|e| (Some(id), e.into()))?;
            Ok::<_, (Option<u64>, SharedLimitError)>(reply)
        };
        let result = match tokio::time::timeout(settings.timeout, call).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err((id, e))) => {
                if let (Some(id), SharedLimitError::Redis(re)) = (id, &e)
                    && !is_script_error(re)
                {
                    self.discard(id);
                }
                Err(e)
            }
            Err(_) => {
                // A stalled server: start over with a fresh connection rather than queueing
                // behind requests that may never be answered.
                self.discard_current();
                Err(SharedLimitError::Timeout(settings.timeout))
            }
        };
        let transition = match &result {
            Ok(_) => self.breaker.success(),
            Err(_) => self.breaker.failure(&settings.breaker, now),
        };
        match (transition, &result) {
            (Some(Transition::Opened), Err(e)) => tracing::warn!(
                redis = %self.redacted,
                error = %e,
                cool_down = ?settings.breaker.cool_down,
                "shared limits unavailable: circuit breaker opened; routes follow their failure mode"
            ),
            (Some(Transition::Closed), _) => {
                tracing::info!(redis = %self.redacted, "shared limits available again")
            }
            _ => {}
        }
        result
    }

    /// The current connection, dialling one if there is none. Never holds the lock while
    /// waiting.
    async fn connection(
        &self,
    ) -> Result<(u64, MultiplexedConnection), (Option<u64>, SharedLimitError)> {
        let (id, connecting) = {
            let mut slot = self.conn.lock();
            match &*slot {
                Some((id, c)) => (*id, c.clone()),
                None => {
                    let id = self
                        .attempts
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let client = self.client.clone();
                    let config = redis::AsyncConnectionConfig::new()
                        // Bounded separately from the request timeout: a dial that outlives
                        // the request that started it still serves the requests after it.
                        .set_connection_timeout(Some(Duration::from_secs(1)))
                        .set_response_timeout(None);
                    let c: Connecting = async move {
                        client
                            .get_multiplexed_async_connection_with_config(&config)
                            .await
                    }
                    .boxed()
                    .shared();
                    *slot = Some((id, c.clone()));
                    (id, c)
                }
            }
        };
        match connecting.await {
            Ok(conn) => Ok((id, conn)),
            Err(e) => {
                self.discard(id);
                Err((None, e.into()))
            }
        }
    }

    /// Forgets connection `id` (if still current) so the next call dials again.
    fn discard(&self, id: u64) {
        let mut slot = self.conn.lock();
        if slot.as_ref().is_some_and(|(current, _)| *current == id) {
            *slot = None;
        }
    }

    fn discard_current(&self) {
        *self.conn.lock() = None;
    }
}

/// A script error (a bug, or a key holding something else) says nothing about the connection.
fn is_script_error(e: &redis::RedisError) -> bool {
    !(e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() || e.is_timeout())
}

fn invocation<'s>(
    script: &'s redis::Script,
    rates: &[(String, Limit)],
    quotas: &[(String, QuotaLimit)],
    now: SystemTime,
) -> redis::ScriptInvocation<'s> {
    let now_ns = unix_nanos(now);
    let mut inv = script.prepare_invoke();
    inv.arg(now_ns / 1000).arg(rates.len());
    for (key, limit) in rates {
        let t = limit.interval().as_nanos() as f64 / 1000.0;
        let tol = t * f64::from(limit.burst() - 1);
        inv.key(key.as_str()).arg(t).arg(tol);
    }
    for (key, q) in quotas {
        let (_, end) = q.window_bounds_ns(now_ns);
        // The window is part of the key: a counter can never leak into the next window, even
        // if it outlives its TTL on a node whose clock is behind.
        inv.key(format!("{key}|{}", end / 1_000_000_000))
            .arg(q.max)
            .arg(end / 1000);
    }
    inv
}

fn micros(v: i64) -> Duration {
    Duration::from_micros(u64::try_from(v).unwrap_or(0))
}

fn verdict(reply: &[i64], n: usize) -> Result<Verdict, SharedLimitError> {
    if reply.len() != 4 * n {
        return Err(SharedLimitError::Reply);
    }
    let mut outcomes = [Outcome::EMPTY; MAX_TIERS];
    for (slot, r) in outcomes.iter_mut().zip(reply.chunks_exact(4)) {
        *slot = if r[0] == 1 {
            Outcome::Admit {
                remaining: u64::try_from(r[1]).unwrap_or(0),
                reset_after: micros(r[3]),
            }
        } else {
            Outcome::Reject {
                retry_after: micros(r[2]),
                reset_after: micros(r[3]),
            }
        };
    }
    Ok(Verdict::from_outcomes(&outcomes[..n]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_urls_are_refused_without_echoing_them() {
        let Err(e) = RedisLimiter::open("http://:topsecret@host/") else {
            panic!("accepted an http URL");
        };
        assert!(!e.to_string().contains("topsecret"), "{e}");
        assert!(RedisLimiter::open("redis://127.0.0.1:6379/").is_ok());
    }

    #[test]
    fn replies_become_verdicts() {
        let v =
            verdict(&[1, 4, 0, 200_000, 0, 0, 150, 1_000_000], 2).unwrap_or_else(|e| panic!("{e}"));
        assert!(!v.is_admit());
        assert_eq!(v.rejected(), Some(1));
        assert_eq!(v.retry_after(), Some(Duration::from_micros(150)));
        assert_eq!(
            v.outcomes()[0],
            Outcome::Admit {
                remaining: 4,
                reset_after: Duration::from_millis(200)
            }
        );
        assert!(verdict(&[1, 2, 3], 1).is_err());
    }

    // The script against a real redis-server, at instants set by a ManualClock: every decision
    // is compared with the in-process check_all, which the rest of the suite pins down.

    use super::super::{KeyedLimiter, KeyedQuota, Period, Tier, check_all};
    use std::time::UNIX_EPOCH;
    use tollgate_core::{Clock, ManualClock};
    use tollgate_testkit::RedisServer;

    fn limit(rate: f64, burst: u32) -> Limit {
        Limit::new(rate, burst).unwrap_or_else(|e| panic!("{e}"))
    }

    fn settings() -> RedisSettings {
        RedisSettings {
            // Generous: these tests are about decisions, not latency, on a busy 2-core box.
            timeout: Duration::from_secs(2),
            breaker: BreakerSettings {
                failures: 3,
                cool_down: Duration::from_millis(500),
            },
            key_prefix: Arc::from("t:"),
        }
    }

    fn redis() -> (RedisServer, RedisLimiter) {
        let server = RedisServer::start().unwrap_or_else(|e| panic!("{e:#}"));
        let limiter = RedisLimiter::open(&server.url()).unwrap_or_else(|e| panic!("{e}"));
        (server, limiter)
    }

    async fn shared(
        r: &RedisLimiter,
        rates: &[(&str, Limit)],
        quotas: &[(&str, QuotaLimit)],
        now: SystemTime,
    ) -> Verdict {
        let rates: Vec<_> = rates.iter().map(|(k, l)| (k.to_string(), *l)).collect();
        let quotas: Vec<_> = quotas.iter().map(|(k, q)| (k.to_string(), *q)).collect();
        r.check_all(&settings(), &rates, &quotas, now)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Same decision, same remaining, retry and reset equal to the microsecond (the script's
    /// unit; it rounds up, so never early).
    fn assert_same(local: &Verdict, remote: &Verdict, what: &str) {
        assert_eq!(local.rejected(), remote.rejected(), "{what}");
        assert_eq!(local.outcomes().len(), remote.outcomes().len(), "{what}");
        for (l, r) in local.outcomes().iter().zip(remote.outcomes()) {
            let close = |a: Duration, b: Duration| {
                assert!(
                    b >= a && b - a < Duration::from_micros(1),
                    "{what}: {l:?} vs {r:?}"
                )
            };
            match (l, r) {
                (
                    Outcome::Admit {
                        remaining: a,
                        reset_after: ra,
                    },
                    Outcome::Admit {
                        remaining: b,
                        reset_after: rb,
                    },
                ) => {
                    assert_eq!(a, b, "{what}: {l:?} vs {r:?}");
                    close(*ra, *rb);
                }
                (
                    Outcome::Reject {
                        retry_after: a,
                        reset_after: ra,
                    },
                    Outcome::Reject {
                        retry_after: b,
                        reset_after: rb,
                    },
                ) => {
                    close(*a, *b);
                    close(*ra, *rb);
                }
                _ => panic!("{what}: {l:?} vs {r:?}"),
            }
        }
    }

    #[tokio::test]
    async fn script_decides_exactly_like_the_in_process_check() {
        let (_server, r) = redis();
        let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        // Roomy stores: with one key per shard, two consumers hashing to the same shard would
        // not both be stored (bounded memory), and the in-process side would be judging idle keys.
        let gateway = KeyedLimiter::new(1024);
        let plans = KeyedLimiter::new(1024);
        let quotas = KeyedQuota::new(1024);
        let (gw, plan) = (limit(50.0, 20), limit(5.0, 4));
        let quota = QuotaLimit::new(12, Period::Hour);
        // Two consumers behind one gateway bucket, with irregular gaps (multiples of 1 µs).
        let mut admitted = 0;
        for i in 0..400u64 {
            let who = if i % 3 == 0 { "bob" } else { "alice" };
            let local = check_all(
                &[
                    &gateway.tier(&"gw", &gw) as &dyn Tier,
                    &plans.tier(&who, &plan),
                    &quotas.tier(&who, &quota),
                ],
                clock.now(),
            )
            .unwrap_or_else(|e| panic!("{e}"));
            let remote = shared(
                &r,
                &[("t:r|gw", gw), (&format!("t:r|plan|{who}"), plan)],
                &[(&format!("t:q|quota|{who}"), quota)],
                clock.now(),
            )
            .await;
            assert_same(&local, &remote, &format!("request {i} ({who})"));
            admitted += usize::from(remote.is_admit());
            clock.advance(Duration::from_micros(7_919 + (i * 104_729) % 90_001));
        }
        // Both quotas ran out within the run: all three tiers took turns rejecting.
        assert_eq!(admitted, 24);
    }

    #[tokio::test]
    async fn a_rejecting_tier_consumes_nothing_in_redis() {
        let (server, r) = redis();
        let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        let (route, plan) = (limit(50.0, 50), limit(5.0, 5));
        let q = QuotaLimit::new(100, Period::Day);
        let r = &r;
        let run = |now| async move {
            shared(
                r,
                &[("t:r|route", route), ("t:r|plan|trial", plan)],
                &[("t:q|day|trial", q)],
                now,
            )
            .await
        };
        for _ in 0..5 {
            assert!(run(clock.now()).await.is_admit());
        }
        let v = run(clock.now()).await;
        assert_eq!(v.rejected(), Some(1));
        assert_eq!(v.retry_after(), Some(Duration::from_millis(200)));
        // Route bucket: 5 used of 50; quota: 5 counted.
        let Outcome::Admit { remaining, .. } = v.outcomes()[0] else {
            panic!("route rejected: {v:?}");
        };
        assert_eq!(remaining, 44);
        let Outcome::Admit { remaining, .. } = v.outcomes()[2] else {
            panic!("quota rejected: {v:?}");
        };
        assert_eq!(remaining, 94);
        let end = QuotaLimit::new(1, Period::Day).window(clock.now()).1;
        let secs = end
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let count = server
            .command(&["GET", &format!("t:q|day|trial|{secs}")])
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(count, "5");
    }

    #[tokio::test]
    async fn accuracy_at_twice_the_rate_for_ten_seconds() {
        let (_server, r) = redis();
        for (rate, burst) in [(100.0, 200), (10.0, 20), (5.0, 5), (50.0, 1)] {
            let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
            let l = limit(rate, burst);
            let key = format!("t:r|acc|{rate}");
            let step = Duration::from_secs_f64(1.0 / (2.0 * rate));
            let sent = (2.0 * rate * 10.0) as u64 + 1;
            let mut admitted = 0u64;
            for _ in 0..sent {
                if shared(&r, &[(&key, l)], &[], clock.now()).await.is_admit() {
                    admitted += 1;
                }
                clock.advance(step);
            }
            let expected = f64::from(burst) + rate * 10.0;
            let err = (admitted as f64 - expected).abs() / expected;
            assert!(
                err <= 0.01,
                "rate {rate} burst {burst}: admitted {admitted}, expected {expected}"
            );
        }
    }

    #[tokio::test]
    async fn keys_expire_when_idle_and_quotas_reset_at_the_boundary() {
        let (server, r) = redis();
        let start = UNIX_EPOCH + Duration::from_secs(1_800_000_000 / 3600 * 3600 + 3599);
        let clock = ManualClock::new(start);
        let q = QuotaLimit::new(2, Period::Hour);
        let l = limit(10.0, 5);
        for _ in 0..2 {
            assert!(
                shared(&r, &[("t:r|ttl", l)], &[("t:q|h", q)], clock.now())
                    .await
                    .is_admit()
            );
        }
        assert_eq!(
            shared(&r, &[("t:r|ttl", l)], &[("t:q|h", q)], clock.now())
                .await
                .rejected(),
            Some(1)
        );
        // One second later a new hour has begun: the count starts over.
        clock.advance(Duration::from_secs(1));
        assert!(
            shared(&r, &[("t:r|ttl", l)], &[("t:q|h", q)], clock.now())
                .await
                .is_admit()
        );
        // The bucket's key lives until it would be full again plus a second, the quota's
        // until its window ends plus a minute: never forever.
        let pttl = |k: &str| -> i64 {
            server
                .command(&["PTTL", k])
                .unwrap_or_else(|e| panic!("{e:#}"))
                .parse()
                .unwrap_or(-9)
        };
        let bucket = pttl("t:r|ttl");
        assert!((1_000..=1_400).contains(&bucket), "bucket PTTL {bucket}");
        let secs = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        };
        let next_end = secs(clock.now()) + 3600;
        let quota = pttl(&format!("t:q|h|{next_end}"));
        assert!(
            (3_600_000..=3_661_000).contains(&quota),
            "quota PTTL {quota}"
        );
    }

    #[tokio::test]
    async fn a_dead_redis_fails_fast_and_the_breaker_recovers() {
        let (mut server, r) = redis();
        let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        let mut s = settings();
        s.timeout = Duration::from_millis(200);
        let rates = vec![("t:r|b".to_string(), limit(1.0, 1))];
        assert!(r.check_all(&s, &rates, &[], clock.now()).await.is_ok());
        server.kill();
        for i in 0..3 {
            let t = std::time::Instant::now();
            let res = r.check_all(&s, &rates, &[], clock.now()).await;
            assert!(res.is_err(), "call {i} on a dead Redis answered");
            assert!(
                t.elapsed() < Duration::from_millis(400),
                "{:?}",
                t.elapsed()
            );
        }
        // Three failures: open. No call goes out until the cool-down is over.
        assert!(r.breaker().is_open());
        assert!(matches!(
            r.check_all(&s, &rates, &[], clock.now()).await,
            Err(SharedLimitError::BreakerOpen)
        ));
        server.restart().unwrap_or_else(|e| panic!("{e:#}"));
        clock.advance(Duration::from_millis(499));
        assert!(matches!(
            r.check_all(&s, &rates, &[], clock.now()).await,
            Err(SharedLimitError::BreakerOpen)
        ));
        clock.advance(Duration::from_millis(1));
        // The probe reconnects and succeeds; the fresh Redis has an empty bucket.
        let v = r
            .check_all(&s, &rates, &[], clock.now())
            .await
            .unwrap_or_else(|e| panic!("probe failed: {e}"));
        assert!(v.is_admit());
        assert!(!r.breaker().is_open());
        assert!(
            !r.check_all(&s, &rates, &[], clock.now())
                .await
                .is_ok_and(|v| v.is_admit())
        );
    }
}
