//! Edge rules, evaluated before authentication so attacks cost little: CIDR allow and deny
//! lists and per-client-IP rate rules that block an address for a period.
//!
//! One [`EdgeRules`] is built per compiled config and shared (behind an `Arc`) by the [`Edge`]
//! policy of every route, so the per-address counters and blocks are global across routes.
//! The client address is `RequestCtx::client_ip`, which the pipeline has already resolved
//! through the trusted proxies.
//!
//! # Address lists
//!
//! IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are treated as their IPv4 form everywhere: in
//! the lists, for the client, and as the rate-limit key, so a dual-stack listener cannot be used
//! to dodge a rule. A configured IPv6 network that overlaps `::ffff:0:0/96` therefore also covers
//! the corresponding IPv4 addresses. Each list is compiled into sorted, merged, inclusive address
//! ranges per family and looked up with one binary search: O(log n) for any list size, and for
//! the usual handful of entries no slower than a linear scan.
//!
//! # Rate rules: "more than N requests in W"
//!
//! Each rule keeps, per address, [`SLOTS`] counters of width `w = floor(W / SLOTS)` (500 ms for
//! a 10 s window). A request is counted in its slot; the rule trips when the current slot and the
//! `SLOTS - 1` before it hold more than `N` requests. The error bound, which the model test
//! checks on random traffic:
//!
//! - **No false blocks**: counted slots never reach further back than `W`, so an address is only
//!   blocked if it really sent more than `N` requests in the last `W` (a client sending exactly
//!   at the limit is never blocked).
//! - **Guaranteed blocks**: every request of the last `(SLOTS - 1) * w` (≥ 95% of `W`) is
//!   counted, so more than `N` requests in that span always trip the rule. Only requests in the
//!   oldest ≤ `w` of the window may go uncounted.
//!
//! Exact sliding logs would need `N` timestamps per address (2.4 KB at N = 300); GCRA with burst
//! `N` admits up to `2N` in a window; two weighted fixed windows can block a client that sent
//! half the limit. The slotted window costs 80 bytes per rule and address.
//!
//! When a rule trips, the request gets 429 and the address is blocked until `now + block_for`.
//! During the block every request gets 429 with `Retry-After` counted down to the block's end
//! (whole seconds, rounded up, at least 1); blocked requests are not counted and do not extend
//! the block. The tripped rule's counters are cleared, so counting restarts when the block ends.
//!
//! # Memory
//!
//! Addresses live in [`SHARDS`] mutex-protected shards (the lock is held for one hash lookup and
//! a few additions). Each shard has a young and an old generation map of at most
//! `max_tracked_ips / (2 * SHARDS)` entries each, so the table never holds more than
//! `max_tracked_ips` addresses (at least 2 per shard for tiny caps), about 160 bytes each with one
//! rule. A request from an address in the old generation moves it to the young one; when the
//! young generation is full, the old one is dropped and the young one becomes old. An address
//! seen at least once per generation of its shard therefore survives any flood of new ones (with
//! the default table: once per 781 new addresses in its shard, about 50,000 overall), idle ones
//! are forgotten after two generations (their counters hold nothing a later request would
//! need), and a flood of new addresses only costs amortised O(1) per request. Blocked addresses that went quiet are carried
//! over (up to a quarter of a shard), so a block is only lifted early if the shard is flooded by
//! more than that many blocked addresses at once. [`EdgeRules::purge_idle`] drops idle entries
//! eagerly, e.g. from a timer.

use crate::limits::redis::{RedisLimiter, RedisSettings, SharedIpRule, SharedIpRules};
use http::header::RETRY_AFTER;
use http::{HeaderName, HeaderValue};
use ipnet::IpNet;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tollgate_config::FailureMode;
use tollgate_core::{Clock, GatewayError, Kind, Phase, Policy, RequestCtx, Step};

/// Counters per rule and address; see the module docs for the error bound this gives.
pub const SLOTS: usize = 20;

/// Number of independently locked shards of the per-address table.
pub const SHARDS: usize = 64;

/// The default bound on tracked addresses.
pub const DEFAULT_MAX_TRACKED_IPS: usize = 100_000;

/// Longest accepted window or block: keeps every nanosecond sum far from `u64::MAX`.
const MAX_PERIOD: Duration = Duration::from_secs(366 * 24 * 3600);

/// Shortest window: slots must be at least a few microseconds wide to mean anything.
const MIN_WINDOW: Duration = Duration::from_millis(1);

const NANOS_PER_SEC: u64 = 1_000_000_000;

const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// `::ffff:0:0/96`, the IPv4-mapped IPv6 range, as integers.
const MAPPED_LO: u128 = 0xffff_0000_0000;
const MAPPED_HI: u128 = 0xffff_ffff_ffff;

const FORBIDDEN_DETAIL: &str = "requests from this address are not allowed";
const BLOCKED_DETAIL: &str = "too many requests from this address; it is blocked for a while";

/// "More than `max_requests` requests in `window`" blocks the address for `block_for`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpRateRule {
    pub max_requests: u32,
    pub window: Duration,
    pub block_for: Duration,
}

/// What [`EdgeRules::new`] is built from; the config crate maps its format onto this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeConfig {
    /// When set, only these networks pass (an empty list refuses everyone).
    pub allow: Option<Vec<IpNet>>,
    /// Always refused, even when also allowed.
    pub deny: Vec<IpNet>,
    pub rate_rules: Vec<IpRateRule>,
    /// Bound on addresses the rate rules track at once.
    pub max_tracked_ips: usize,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            allow: None,
            deny: Vec::new(),
            rate_rules: Vec::new(),
            max_tracked_ips: DEFAULT_MAX_TRACKED_IPS,
        }
    }
}

/// A rejected [`EdgeConfig`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EdgeError {
    #[error("ip rate rule {index}: {reason}")]
    InvalidRule { index: usize, reason: &'static str },
    #[error("max_tracked_ips must be at least 1")]
    NoCapacity,
}

/// The decision for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// The address is in the deny list.
    Denied,
    /// An allow list is set and the address is not in it.
    NotAllowed,
    /// The address is blocked by rate rule `rule` (index in [`EdgeConfig::rate_rules`]).
    RateLimited {
        rule: usize,
        retry_after_secs: u64,
    },
    /// The rate rules are shared through Redis, Redis gave no answer, and the failure mode is
    /// `deny`.
    Unavailable,
}

/// The compiled edge rules of one config snapshot.
#[derive(Debug)]
pub struct EdgeRules {
    allow: Option<CidrSet>,
    deny: CidrSet,
    rate: Option<Arc<RateTable>>,
    shared: Option<SharedRules>,
}

/// The rate rules counted in Redis, so that an address is counted, and blocked, by every node
/// together. The in-process table stays the `local` fallback.
#[derive(Debug)]
struct SharedRules {
    redis: Arc<RedisLimiter>,
    settings: RedisSettings,
    failure_mode: FailureMode,
    rules: SharedIpRules,
}

impl EdgeRules {
    pub fn new(cfg: &EdgeConfig) -> Result<Self, EdgeError> {
        let rate = if cfg.rate_rules.is_empty() {
            None
        } else {
            Some(Arc::new(RateTable::new(
                &cfg.rate_rules,
                cfg.max_tracked_ips,
            )?))
        };
        Ok(Self {
            allow: cfg.allow.as_deref().map(CidrSet::new),
            deny: CidrSet::new(&cfg.deny),
            rate,
            shared: None,
        })
    }

    /// Counts and blocks through `redis` from now on (when there are rate rules), so several
    /// gateway processes act as one; `failure_mode` says what happens when Redis gives no
    /// answer: `local` judges by this process's own counts, `allow` lets the request by,
    /// `deny` refuses it with 503.
    pub fn share_through(
        &mut self,
        redis: Arc<RedisLimiter>,
        settings: RedisSettings,
        failure_mode: FailureMode,
    ) {
        let Some(table) = &self.rate else { return };
        let rules = table
            .rules
            .iter()
            .map(|r| SharedIpRule {
                key: format!(
                    "{}/{}/{}",
                    r.spec.max_requests,
                    r.spec.window.as_millis(),
                    r.spec.block_for.as_millis()
                ),
                slot_width: Duration::from_nanos(r.slot_ns),
                slots: SLOTS as u32,
                max_requests: r.max,
                block_for: Duration::from_nanos(r.block_ns),
            })
            .collect::<Vec<_>>();
        let rules = SharedIpRules::new(&settings, &rules);
        self.shared = Some(SharedRules {
            redis,
            settings,
            failure_mode,
            rules,
        });
    }

    /// Whether the rate rules are decided in Redis: then [`EdgeRules::check_shared`] decides.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Like [`check`](Self::check), with the rate rules counted in Redis when they are shared.
    pub async fn check_shared(&self, ip: IpAddr, now: SystemTime) -> Verdict {
        let Some(sh) = &self.shared else {
            return self.check(ip, now);
        };
        let ip = canonical(ip);
        if self.deny.contains(ip) {
            return Verdict::Denied;
        }
        if self.allow.as_ref().is_some_and(|a| !a.contains(ip)) {
            return Verdict::NotAllowed;
        }
        match sh.redis.check_ip(&sh.settings, &sh.rules, ip, now).await {
            Ok(None) => Verdict::Pass,
            Ok(Some((rule, left))) => Verdict::RateLimited {
                rule,
                retry_after_secs: retry_after_secs(duration_nanos(left)),
            },
            Err(e) => {
                tracing::debug!(error = %e, mode = ?sh.failure_mode, "shared edge rules unavailable");
                match sh.failure_mode {
                    FailureMode::Local => match &self.rate {
                        Some(table) => table.hit(ip, unix_nanos(now)),
                        None => Verdict::Pass,
                    },
                    FailureMode::Allow => Verdict::Pass,
                    FailureMode::Deny => Verdict::Unavailable,
                }
            }
        }
    }

    /// The 503 for [`Verdict::Unavailable`], as traffic control answers it.
    pub fn unavailable() -> GatewayError {
        GatewayError::new(
            Kind::ServiceUnavailable,
            "rate limits cannot be checked right now",
        )
        .with_header(RETRY_AFTER, HeaderValue::from(1u64))
        .with_extension("limit", "shared-limits".into())
        .with_cause("edge: the per-address rules are shared through Redis, which did not answer")
    }

    /// True when no rule can ever refuse a request: the policy need not be installed.
    pub fn is_empty(&self) -> bool {
        self.allow.is_none() && self.deny.is_empty() && self.rate.is_none()
    }

    /// Keeps the per-address counters and blocks of `prev` (the previous snapshot's rules) when
    /// the rate rules and capacity are unchanged, so a reload neither lifts blocks nor resets
    /// counts. Returns whether the state was carried over.
    pub fn carry_state_from(&mut self, prev: &EdgeRules) -> bool {
        match (&self.rate, &prev.rate) {
            (Some(new), Some(old))
                if new.rules_spec().eq(old.rules_spec()) && new.max_tracked == old.max_tracked =>
            {
                self.rate = Some(old.clone());
                true
            }
            _ => false,
        }
    }

    /// Decides one request from `ip` at `now`. Refused addresses are not counted, so a denied
    /// flood costs no table space.
    pub fn check(&self, ip: IpAddr, now: SystemTime) -> Verdict {
        self.check_with(ip, || now)
    }

    /// Like [`check`](Self::check), reading the clock only when a rate rule needs it.
    fn check_with(&self, ip: IpAddr, now: impl FnOnce() -> SystemTime) -> Verdict {
        let ip = canonical(ip);
        if self.deny.contains(ip) {
            return Verdict::Denied;
        }
        if self.allow.as_ref().is_some_and(|a| !a.contains(ip)) {
            return Verdict::NotAllowed;
        }
        match &self.rate {
            Some(table) => table.hit(ip, unix_nanos(now())),
            None => Verdict::Pass,
        }
    }

    /// Number of addresses the rate rules currently track (locks every shard in turn: for tests
    /// and metrics, not the request path).
    pub fn tracked_ips(&self) -> usize {
        self.rate.as_ref().map_or(0, |t| t.len())
    }

    /// Drops addresses whose counters are empty and that are not blocked at `now`.
    pub fn purge_idle(&self, now: SystemTime) {
        if let Some(t) = &self.rate {
            t.purge_idle(unix_nanos(now));
        }
    }

    /// The 403 for a refused address.
    pub fn forbidden(ip: IpAddr, verdict: Verdict) -> GatewayError {
        let why = match verdict {
            Verdict::Denied => "in the deny list",
            _ => "not in the allow list",
        };
        GatewayError::new(Kind::Forbidden, FORBIDDEN_DETAIL)
            .with_cause(format!("edge: {ip} is {why}"))
    }

    /// The 429 for an address blocked by rate rule `rule`: `Retry-After`, the IETF
    /// `RateLimit-Policy` / `RateLimit` headers and a `limit` member naming the rule.
    pub fn rate_limited(&self, ip: IpAddr, rule: usize, retry_after_secs: u64) -> GatewayError {
        let compiled = self.rate.as_ref().and_then(|t| t.rules.get(rule));
        let name = compiled.map_or("ip", |r| &*r.name);
        let mut err = GatewayError::new(Kind::TooManyRequests, BLOCKED_DETAIL)
            .with_header(RETRY_AFTER, HeaderValue::from(retry_after_secs))
            .with_extension("limit", name.into())
            .with_cause(format!("edge: {ip} blocked by ip rate rule {name}"));
        if let Some(r) = compiled {
            err = err.with_header(RATELIMIT_POLICY, r.policy_header.clone());
            // Names are `ip` or `ip-<n>`, so the value is always a valid header.
            if let Ok(v) = HeaderValue::from_str(&format!("\"{name}\";r=0;t={retry_after_secs}")) {
                err = err.with_header(RATELIMIT, v);
            }
        }
        err
    }
}

/// The edge policy: refuses listed addresses (403) and blocked ones (429).
#[derive(Debug)]
pub struct Edge {
    rules: Arc<EdgeRules>,
    clock: Arc<dyn Clock>,
}

impl Edge {
    pub fn new(rules: Arc<EdgeRules>, clock: Arc<dyn Clock>) -> Self {
        Self { rules, clock }
    }

    pub fn rules(&self) -> &Arc<EdgeRules> {
        &self.rules
    }
}

impl Policy for Edge {
    fn name(&self) -> &'static str {
        "edge"
    }

    fn phase(&self) -> Phase {
        Phase::Edge
    }

    fn on_request<'a>(
        &'a self,
        ctx: &'a mut RequestCtx,
        _req: &'a mut http::request::Parts,
    ) -> Step<'a> {
        let ip = ctx.client_ip;
        match self.rules.check_with(ip, || self.clock.now()) {
            Verdict::Pass => Step::Continue,
            v @ (Verdict::Denied | Verdict::NotAllowed) => {
                Step::Reject(EdgeRules::forbidden(ip, v))
            }
            Verdict::Unavailable => Step::Reject(EdgeRules::unavailable()),
            Verdict::RateLimited {
                rule,
                retry_after_secs,
            } => Step::Reject(self.rules.rate_limited(ip, rule, retry_after_secs)),
        }
    }
}

/// The IPv4 form of an IPv4-mapped IPv6 address, anything else unchanged.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Nanoseconds since the Unix epoch; a clock before 1970 reads as 0 rather than failing.
fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Whole seconds until the block ends, rounded up so a client that waits that long is let in,
/// and never 0 (which would invite an immediate retry).
fn retry_after_secs(remaining_ns: u64) -> u64 {
    remaining_ns.div_ceil(NANOS_PER_SEC).max(1)
}

// ---------------------------------------------------------------------------------------------
// Address lists

/// Networks as sorted, non-overlapping inclusive ranges per family.
#[derive(Debug, Default)]
struct CidrSet {
    v4: Box<[(u32, u32)]>,
    v6: Box<[(u128, u128)]>,
}

impl CidrSet {
    fn new(nets: &[IpNet]) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for net in nets {
            match net {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => {
                    let (lo, hi) = (u128::from(n.network()), u128::from(n.broadcast()));
                    v6.push((lo, hi));
                    // Clients are canonicalised to IPv4, so the mapped part of a v6 network
                    // must be matched as the IPv4 range it stands for.
                    let (mlo, mhi) = (lo.max(MAPPED_LO), hi.min(MAPPED_HI));
                    if mlo <= mhi {
                        // Both are within the mapped /96, so the differences fit 32 bits.
                        v4.push(((mlo - MAPPED_LO) as u32, (mhi - MAPPED_LO) as u32));
                    }
                }
            }
        }
        Self {
            v4: merge(v4),
            v6: merge(v6),
        }
    }

    fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// `ip` must be canonical (see [`canonical`]).
    fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => in_ranges(&self.v4, u32::from(a)),
            IpAddr::V6(a) => in_ranges(&self.v6, u128::from(a)),
        }
    }
}

fn merge<T: Ord + Copy>(mut ranges: Vec<(T, T)>) -> Box<[(T, T)]> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match out.last_mut() {
            Some(last) if lo <= last.1 => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out.into_boxed_slice()
}

fn in_ranges<T: Ord + Copy>(ranges: &[(T, T)], x: T) -> bool {
    // The last range starting at or before x is the only one that can hold it.
    let i = ranges.partition_point(|&(lo, _)| lo <= x);
    i.checked_sub(1)
        .and_then(|i| ranges.get(i))
        .is_some_and(|&(_, hi)| x <= hi)
}

// ---------------------------------------------------------------------------------------------
// Per-address rate state

#[derive(Debug)]
struct CompiledRule {
    spec: IpRateRule,
    max: u32,
    slot_ns: u64,
    block_ns: u64,
    name: Box<str>,
    policy_header: HeaderValue,
}

struct RateTable {
    rules: Box<[CompiledRule]>,
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    /// Entries per generation per shard.
    gen_cap: usize,
    max_tracked: usize,
}

impl std::fmt::Debug for RateTable {
    // The shards may hold 100k entries: never print them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateTable")
            .field("rules", &self.rules)
            .field("max_tracked", &self.max_tracked)
            .finish_non_exhaustive()
    }
}

impl RateTable {
    fn new(rules: &[IpRateRule], max_tracked: usize) -> Result<Self, EdgeError> {
        if max_tracked == 0 {
            return Err(EdgeError::NoCapacity);
        }
        let compiled = rules
            .iter()
            .enumerate()
            .map(|(index, r)| {
                let bad = |reason| EdgeError::InvalidRule { index, reason };
                if r.max_requests == 0 {
                    return Err(bad("max_requests must be at least 1"));
                }
                if r.window < MIN_WINDOW || r.window > MAX_PERIOD {
                    return Err(bad("window must be between 1 ms and 366 days"));
                }
                if r.block_for.is_zero() || r.block_for > MAX_PERIOD {
                    return Err(bad("block_for must be more than 0 and at most 366 days"));
                }
                let name: Box<str> = if rules.len() == 1 {
                    "ip".into()
                } else {
                    format!("ip-{index}").into()
                };
                let window_secs = duration_nanos(r.window).div_ceil(NANOS_PER_SEC);
                let policy = format!("\"{name}\";q={};w={window_secs}", r.max_requests);
                Ok(CompiledRule {
                    spec: *r,
                    max: r.max_requests,
                    // Floor, so SLOTS slots never span more than the window (no false blocks).
                    slot_ns: (duration_nanos(r.window) / SLOTS as u64).max(1),
                    block_ns: duration_nanos(r.block_for),
                    policy_header: HeaderValue::from_str(&policy)
                        .map_err(|_| bad("cannot render the RateLimit-Policy header"))?,
                    name,
                })
            })
            .collect::<Result<Box<[_]>, _>>()?;
        Ok(Self {
            rules: compiled,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            gen_cap: (max_tracked / (2 * SHARDS)).max(1),
            max_tracked,
        })
    }

    fn rules_spec(&self) -> impl Iterator<Item = IpRateRule> + '_ {
        self.rules.iter().map(|r| r.spec)
    }

    fn shard(&self, ip: IpAddr) -> Option<&Mutex<Shard>> {
        let i = self.hasher.hash_one(ip) % SHARDS as u64;
        self.shards.get(usize::try_from(i).ok()?)
    }

    fn hit(&self, ip: IpAddr, now: u64) -> Verdict {
        let Some(shard) = self.shard(ip) else {
            return Verdict::Pass;
        };
        // A panic elsewhere while holding the lock leaves only counters behind, which are
        // always safe to keep using.
        let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
        shard
            .entry(ip, now, self.gen_cap, self.rules.len())
            .hit(&self.rules, now)
    }

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(PoisonError::into_inner);
                s.young.len() + s.old.len()
            })
            .sum()
    }

    fn purge_idle(&self, now: u64) {
        for s in self.shards.iter() {
            let mut s = s.lock().unwrap_or_else(PoisonError::into_inner);
            s.young.retain(|_, e| !e.idle(&self.rules, now));
            s.old.retain(|_, e| !e.idle(&self.rules, now));
        }
    }
}

#[derive(Default)]
struct Shard {
    young: HashMap<IpAddr, Entry>,
    old: HashMap<IpAddr, Entry>,
}

impl Shard {
    fn entry(&mut self, ip: IpAddr, now: u64, gen_cap: usize, n_rules: usize) -> &mut Entry {
        if !self.young.contains_key(&ip) {
            // Taken out of the old generation before a rotation could drop it.
            let e = self.old.remove(&ip).unwrap_or_else(|| Entry::new(n_rules));
            if self.young.len() >= gen_cap {
                self.rotate(now, gen_cap);
            }
            return self.young.entry(ip).or_insert(e);
        }
        self.young.entry(ip).or_insert_with(|| Entry::new(n_rules))
    }

    fn rotate(&mut self, now: u64, gen_cap: usize) {
        let retired = std::mem::replace(&mut self.old, std::mem::take(&mut self.young));
        // Forgetting a blocked address would lift its block early, so quiet blocked addresses
        // are kept, but only up to half a generation: the young map keeps room for new
        // addresses, and rotations stay at least gen_cap / 2 inserts apart (amortised O(1)).
        self.young.extend(
            retired
                .into_iter()
                .filter(|(_, e)| e.blocked_until > now)
                .take(gen_cap / 2),
        );
    }
}

struct Entry {
    /// Unix nanos at which the block ends; 0 when not blocked.
    blocked_until: u64,
    blocked_rule: usize,
    windows: Box<[Window]>,
}

impl Entry {
    fn new(n_rules: usize) -> Self {
        Self {
            blocked_until: 0,
            blocked_rule: 0,
            windows: (0..n_rules).map(|_| Window::default()).collect(),
        }
    }

    fn hit(&mut self, rules: &[CompiledRule], now: u64) -> Verdict {
        if self.blocked_until != 0 {
            if now < self.blocked_until {
                // Not counted and not extended: the block ends when it was set to end.
                return Verdict::RateLimited {
                    rule: self.blocked_rule,
                    retry_after_secs: retry_after_secs(self.blocked_until - now),
                };
            }
            self.blocked_until = 0;
        }
        let mut trip: Option<(usize, u64)> = None;
        for (i, (w, r)) in self.windows.iter_mut().zip(rules).enumerate() {
            if w.add(now, r.slot_ns) > r.max {
                // Counting for this rule restarts when the block ends.
                w.counts = [0; SLOTS];
                let until = now.saturating_add(r.block_ns);
                // Several rules tripping at once: the longest block wins.
                if trip.is_none_or(|(_, u)| until > u) {
                    trip = Some((i, until));
                }
            }
        }
        match trip {
            None => Verdict::Pass,
            Some((rule, until)) => {
                self.blocked_until = until;
                self.blocked_rule = rule;
                Verdict::RateLimited {
                    rule,
                    retry_after_secs: retry_after_secs(until - now),
                }
            }
        }
    }

    fn idle(&self, rules: &[CompiledRule], now: u64) -> bool {
        self.blocked_until <= now
            && self
                .windows
                .iter()
                .zip(rules)
                .all(|(w, r)| w.expired(now, r.slot_ns))
    }
}

/// Counters of one rule for one address: slot `s` (time `s * slot_ns ..`) lives at
/// `s % SLOTS`; `head` is the newest slot written.
#[derive(Default)]
struct Window {
    head: u64,
    counts: [u32; SLOTS],
}

impl Window {
    /// Counts one request at `now` and returns the requests in the current and the `SLOTS - 1`
    /// previous slots.
    fn add(&mut self, now: u64, slot_ns: u64) -> u32 {
        let cur = now / slot_ns;
        if cur > self.head {
            let gap = cur - self.head;
            if gap >= SLOTS as u64 {
                self.counts = [0; SLOTS];
            } else {
                for s in self.head + 1..=cur {
                    self.counts[(s % SLOTS as u64) as usize] = 0;
                }
            }
            self.head = cur;
        }
        // A clock that stepped back lands in the newest slot: counted, and expiring no sooner
        // than the requests already there.
        let i = (self.head % SLOTS as u64) as usize;
        self.counts[i] = self.counts[i].saturating_add(1);
        self.counts.iter().fold(0u32, |a, &c| a.saturating_add(c))
    }

    fn expired(&self, now: u64, slot_ns: u64) -> bool {
        now / slot_ns >= self.head.saturating_add(SLOTS as u64) || self.counts == [0; SLOTS]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::time::Instant;
    use tollgate_core::{Listener, ManualClock};
    use tollgate_testkit::RedisServer;

    /// Deliberately not on a slot boundary, so no test depends on alignment.
    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(1_700_000_000_370_000_123)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().expect("test net")).collect()
    }

    fn scenario_rule() -> IpRateRule {
        IpRateRule {
            max_requests: 300,
            window: Duration::from_secs(10),
            block_for: Duration::from_secs(60),
        }
    }

    fn rate_rules(rules: Vec<IpRateRule>) -> EdgeRules {
        EdgeRules::new(&EdgeConfig {
            rate_rules: rules,
            ..EdgeConfig::default()
        })
        .expect("valid rules")
    }

    fn shared_rules(rules: Vec<IpRateRule>, mode: FailureMode) -> (RedisServer, EdgeRules) {
        let server = RedisServer::start().unwrap_or_else(|e| panic!("{e:#}"));
        let redis = Arc::new(RedisLimiter::open(&server.url()).unwrap_or_else(|e| panic!("{e}")));
        let mut shared = rate_rules(rules);
        let settings = RedisSettings {
            // Generous: this is about decisions, not latency, on a busy 2-core box.
            timeout: Duration::from_secs(2),
            key_prefix: Arc::from("edge-test:"),
            ..RedisSettings::default()
        };
        shared.share_through(redis, settings, mode);
        (server, shared)
    }

    /// The script is the table's algorithm on the gateway's clock: on the same traffic, the
    /// shared rules decide exactly as the in-process table, retry times included.
    #[tokio::test]
    async fn shared_rules_decide_like_the_in_process_table() {
        let rules = vec![
            // Blocks shorter than windows: what a trip leaves counted matters afterwards.
            IpRateRule {
                max_requests: 6,
                window: Duration::from_secs(1),
                block_for: Duration::from_millis(400),
            },
            IpRateRule {
                max_requests: 15,
                window: Duration::from_secs(4),
                block_for: Duration::from_secs(2),
            },
        ];
        let local = rate_rules(rules.clone());
        let (_server, shared) = shared_rules(rules, FailureMode::Deny);
        let addrs = [ip("192.0.2.1"), ip("192.0.2.2"), ip("2001:db8::1")];
        // Whole milliseconds, so the script's microseconds and the table's nanoseconds agree.
        let start = UNIX_EPOCH + Duration::from_millis(1_700_000_000_000);
        let mut t = start;
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut limited = 0;
        for i in 0..1500 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            t += Duration::from_millis(x % 40);
            let a = addrs[usize::try_from((x >> 20) % 3).unwrap_or(0)];
            let want = local.check(a, t);
            let got = shared.check_shared(a, t).await;
            assert_eq!(
                got,
                want,
                "request {i} from {a} at +{:?}",
                t.duration_since(start)
            );
            if matches!(want, Verdict::RateLimited { .. }) {
                limited += 1;
            }
        }
        assert!(
            (100..1400).contains(&limited),
            "the traffic must both pass and trip the rules: {limited} limited"
        );
    }

    /// Without Redis the failure mode decides: `deny` refuses, `local` counts in-process.
    #[tokio::test]
    async fn shared_rules_follow_the_failure_mode_when_redis_is_gone() {
        let rule = IpRateRule {
            max_requests: 2,
            window: Duration::from_secs(10),
            block_for: Duration::from_secs(60),
        };
        let a = ip("192.0.2.9");
        let (mut server, deny) = shared_rules(vec![rule], FailureMode::Deny);
        assert_eq!(deny.check_shared(a, t0()).await, Verdict::Pass);
        server.kill();
        assert_eq!(deny.check_shared(a, t0()).await, Verdict::Unavailable);
        let (mut server, local) = shared_rules(vec![rule], FailureMode::Local);
        server.kill();
        assert_eq!(local.check_shared(a, t0()).await, Verdict::Pass);
        assert_eq!(local.check_shared(a, t0()).await, Verdict::Pass);
        assert_eq!(local.check_shared(a, t0()).await, blocked(60));
        // Denied addresses never reach Redis.
        let mut listed = EdgeRules::new(&EdgeConfig {
            deny: nets(&["192.0.2.0/24"]),
            rate_rules: vec![rule],
            ..EdgeConfig::default()
        })
        .expect("valid rules");
        listed.share_through(
            Arc::new(RedisLimiter::open("redis://127.0.0.1:1/").expect("url")),
            RedisSettings::default(),
            FailureMode::Deny,
        );
        assert_eq!(listed.check_shared(a, t0()).await, Verdict::Denied);
    }

    fn blocked(secs: u64) -> Verdict {
        Verdict::RateLimited {
            rule: 0,
            retry_after_secs: secs,
        }
    }

    #[test]
    fn deny_list_matches_v4_v6_and_mapped_v6() {
        let r = EdgeRules::new(&EdgeConfig {
            deny: nets(&["203.0.113.0/24", "2001:db8::/32", "::ffff:198.51.100.0/120"]),
            ..EdgeConfig::default()
        })
        .expect("rules");
        let now = t0();
        for hit in [
            "203.0.113.0",
            "203.0.113.7",
            "203.0.113.255",
            "::ffff:203.0.113.7",
            "2001:db8::1",
            "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
            "198.51.100.9",
            "::ffff:198.51.100.9",
        ] {
            assert_eq!(r.check(ip(hit), now), Verdict::Denied, "{hit}");
        }
        for miss in [
            "203.0.112.255",
            "203.0.114.0",
            "::ffff:203.0.114.1",
            "2001:db9::1",
            "::203.0.113.7", // IPv4-compatible, not mapped: a plain IPv6 address
            "198.51.101.1",
            "127.0.0.1",
            "::1",
        ] {
            assert_eq!(r.check(ip(miss), now), Verdict::Pass, "{miss}");
        }
        assert_eq!(r.tracked_ips(), 0, "no rate rules, nothing tracked");
    }

    #[test]
    fn allow_list_admits_only_listed_and_deny_wins() {
        let r = EdgeRules::new(&EdgeConfig {
            allow: Some(nets(&["10.0.0.0/8", "2001:db8::/48"])),
            deny: nets(&["10.0.0.0/24"]),
            ..EdgeConfig::default()
        })
        .expect("rules");
        let now = t0();
        assert_eq!(r.check(ip("10.1.2.3"), now), Verdict::Pass);
        assert_eq!(r.check(ip("::ffff:10.1.2.3"), now), Verdict::Pass);
        assert_eq!(r.check(ip("2001:db8:0:1::1"), now), Verdict::Pass);
        assert_eq!(r.check(ip("11.0.0.1"), now), Verdict::NotAllowed);
        assert_eq!(r.check(ip("2001:db8:1::1"), now), Verdict::NotAllowed);
        assert_eq!(r.check(ip("10.0.0.5"), now), Verdict::Denied);

        let nobody = EdgeRules::new(&EdgeConfig {
            allow: Some(Vec::new()),
            ..EdgeConfig::default()
        })
        .expect("rules");
        assert_eq!(nobody.check(ip("10.1.2.3"), now), Verdict::NotAllowed);
        assert!(!nobody.is_empty());
        assert!(
            EdgeRules::new(&EdgeConfig::default())
                .expect("rules")
                .is_empty()
        );
    }

    #[test]
    fn a_v6_network_over_the_mapped_range_covers_ipv4() {
        let r = EdgeRules::new(&EdgeConfig {
            allow: Some(nets(&["::/0"])),
            ..EdgeConfig::default()
        })
        .expect("rules");
        assert_eq!(r.check(ip("192.0.2.1"), t0()), Verdict::Pass);
        assert_eq!(r.check(ip("2001:db8::1"), t0()), Verdict::Pass);
    }

    #[test]
    fn many_cidrs_are_matched_exactly() {
        // 10,000 /24s at every other /24 of 10.0.0.0/8: only the listed ones match.
        let list: Vec<IpNet> = (0..10_000u32)
            .map(|i| {
                let base = Ipv4Addr::from(0x0a00_0000 + (i * 2) * 256);
                IpNet::V4(ipnet::Ipv4Net::new(base, 24).expect("prefix"))
            })
            .collect();
        let r = EdgeRules::new(&EdgeConfig {
            deny: list,
            ..EdgeConfig::default()
        })
        .expect("rules");
        let now = t0();
        for i in (0..20_000u32).step_by(7) {
            let a = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i * 256 + 17));
            let want = if i % 2 == 0 {
                Verdict::Denied
            } else {
                Verdict::Pass
            };
            assert_eq!(r.check(a, now), want, "{a}");
        }
    }

    #[test]
    fn exactly_300_in_10s_pass_and_the_301st_trips_a_60s_block() {
        let r = rate_rules(vec![scenario_rule()]);
        let a = ip("192.0.2.10");
        // 300 requests spread over 9.4 s, then the 301st: more than 300 within the
        // (SLOTS - 1) / SLOTS = 95% of the window that is always counted (see the module docs).
        for i in 0..300u64 {
            let at = t0() + Duration::from_millis(i * 31);
            assert_eq!(r.check(a, at), Verdict::Pass, "request {i}");
        }
        let trip = t0() + Duration::from_millis(9_400);
        assert_eq!(r.check(a, trip), blocked(60));
        assert_eq!(
            r.check(a, trip + Duration::from_nanos(59_999_999_999)),
            blocked(1)
        );
        // The block ends exactly 60 s after the tripping request, and counting restarts.
        let end = trip + Duration::from_secs(60);
        for i in 0..300 {
            assert_eq!(r.check(a, end), Verdict::Pass, "after block {i}");
        }
        assert_eq!(r.check(a, end), blocked(60));
    }

    #[test]
    fn a_burst_of_301_trips_on_the_301st() {
        let r = rate_rules(vec![scenario_rule()]);
        let a = ip("2001:db8::7");
        for _ in 0..300 {
            assert_eq!(r.check(a, t0()), Verdict::Pass);
        }
        assert_eq!(r.check(a, t0()), blocked(60));
    }

    #[test]
    fn requests_older_than_the_window_do_not_count() {
        let r = rate_rules(vec![scenario_rule()]);
        let a = ip("192.0.2.11");
        for _ in 0..300 {
            assert_eq!(r.check(a, t0()), Verdict::Pass);
        }
        // Exactly W later the first 300 are out of (now - W, now].
        let later = t0() + Duration::from_secs(10);
        for _ in 0..300 {
            assert_eq!(r.check(a, later), Verdict::Pass);
        }
        assert_eq!(r.check(a, later), blocked(60));
    }

    #[test]
    fn a_client_exactly_at_the_limit_is_never_blocked() {
        let r = rate_rules(vec![scenario_rule()]);
        let a = ip("192.0.2.12");
        // Just under 30 requests per second for a minute: never more than 300 in any 10 s.
        for i in 0..1_800u64 {
            let at = t0() + Duration::from_nanos(i * 33_333_334);
            assert_eq!(r.check(a, at), Verdict::Pass, "request {i}");
        }
    }

    #[test]
    fn retry_after_counts_down_and_the_block_is_not_extended() {
        let r = rate_rules(vec![scenario_rule()]);
        let a = ip("192.0.2.13");
        for _ in 0..300 {
            r.check(a, t0());
        }
        assert_eq!(r.check(a, t0()), blocked(60));
        for (ms, secs) in [
            (1, 60),
            (500, 60),
            (999, 60),
            (1_000, 59),
            (1_001, 59),
            (30_000, 30),
            (59_000, 1),
            (59_999, 1),
        ] {
            // Hammering during the block changes nothing.
            for _ in 0..50 {
                assert_eq!(
                    r.check(a, t0() + Duration::from_millis(ms)),
                    blocked(secs),
                    "{ms} ms"
                );
            }
        }
        assert_eq!(r.check(a, t0() + Duration::from_secs(60)), Verdict::Pass);
    }

    #[test]
    fn addresses_are_isolated_and_mapped_v6_shares_the_v4_counter() {
        let r = rate_rules(vec![scenario_rule()]);
        let a = ip("192.0.2.20");
        for _ in 0..300 {
            r.check(a, t0());
        }
        assert_eq!(r.check(ip("::ffff:192.0.2.20"), t0()), blocked(60));
        for other in ["192.0.2.21", "2001:db8::20", "::ffff:192.0.2.22"] {
            for _ in 0..300 {
                assert_eq!(r.check(ip(other), t0()), Verdict::Pass, "{other}");
            }
        }
        assert_eq!(r.check(a, t0()), blocked(60));
    }

    #[test]
    fn several_rules_report_the_longest_block() {
        let r = rate_rules(vec![
            IpRateRule {
                max_requests: 5,
                window: Duration::from_secs(1),
                block_for: Duration::from_secs(2),
            },
            IpRateRule {
                max_requests: 8,
                window: Duration::from_secs(60),
                block_for: Duration::from_secs(600),
            },
        ]);
        let a = ip("192.0.2.30");
        for _ in 0..5 {
            assert_eq!(r.check(a, t0()), Verdict::Pass);
        }
        assert_eq!(
            r.check(a, t0()),
            Verdict::RateLimited {
                rule: 0,
                retry_after_secs: 2
            }
        );
        // After the short block, the long rule still remembers the first 6 requests.
        let later = t0() + Duration::from_secs(2);
        assert_eq!(r.check(a, later), Verdict::Pass);
        assert_eq!(r.check(a, later), Verdict::Pass);
        assert_eq!(
            r.check(a, later),
            Verdict::RateLimited {
                rule: 1,
                retry_after_secs: 600
            }
        );
        let e = r.rate_limited(a, 1, 600);
        assert_eq!(
            e.extensions.as_ref().and_then(|x| x.get("limit")),
            Some(&"ip-1".into())
        );
    }

    #[test]
    fn memory_stays_bounded_under_a_million_addresses_and_blocks_survive() {
        let r = rate_rules(vec![scenario_rule()]);
        let attacker = ip("192.0.2.40");
        for _ in 0..301 {
            r.check(attacker, t0());
        }
        for i in 0..1_000_000u32 {
            let a = IpAddr::V4(Ipv4Addr::from(0x6400_0000 + i));
            assert_eq!(r.check(a, t0()), Verdict::Pass);
        }
        let n = r.tracked_ips();
        assert!(n <= DEFAULT_MAX_TRACKED_IPS, "{n} tracked");
        // Each shard always keeps at least its old generation in full.
        assert!(
            n >= SHARDS * (DEFAULT_MAX_TRACKED_IPS / (2 * SHARDS)),
            "{n} tracked"
        );
        assert_eq!(r.check(attacker, t0()), blocked(60));

        // Everything is idle once the window and the block have passed.
        r.purge_idle(t0() + Duration::from_secs(61));
        assert_eq!(r.tracked_ips(), 0);
    }

    #[test]
    fn an_active_address_keeps_its_count_through_a_flood() {
        let r = EdgeRules::new(&EdgeConfig {
            rate_rules: vec![scenario_rule()],
            max_tracked_ips: 1_000,
            ..EdgeConfig::default()
        })
        .expect("rules");
        let a = ip("192.0.2.41");
        let mut flood = 0u32;
        // 3,000 new addresses, three times the table, with `a` seen every ten. Survival is
        // guaranteed only for an address seen at least once per generation of its shard (7
        // inserts here): at 100 new addresses per sighting, 1.6 land in `a`'s shard on average
        // and the 8 that evict it happen in a few percent of runs.
        for _ in 0..300 {
            assert_eq!(r.check(a, t0()), Verdict::Pass);
            for _ in 0..10 {
                flood += 1;
                r.check(IpAddr::V4(Ipv4Addr::from(0x6400_0000 + flood)), t0());
            }
        }
        assert!(r.tracked_ips() <= 1_000);
        assert_eq!(r.check(a, t0()), blocked(60));
    }

    #[test]
    fn reload_can_carry_state_over() {
        let old = rate_rules(vec![scenario_rule()]);
        let a = ip("192.0.2.50");
        for _ in 0..301 {
            old.check(a, t0());
        }
        let mut same = rate_rules(vec![scenario_rule()]);
        assert!(same.carry_state_from(&old));
        assert_eq!(same.check(a, t0()), blocked(60));

        let mut changed = rate_rules(vec![IpRateRule {
            max_requests: 100,
            ..scenario_rule()
        }]);
        assert!(!changed.carry_state_from(&old));
        assert_eq!(changed.check(a, t0()), Verdict::Pass);
    }

    #[test]
    fn invalid_configs_are_refused() {
        let bad = |rule: IpRateRule| rate_rules_result(vec![rule]).is_err();
        assert!(bad(IpRateRule {
            max_requests: 0,
            ..scenario_rule()
        }));
        assert!(bad(IpRateRule {
            window: Duration::ZERO,
            ..scenario_rule()
        }));
        assert!(bad(IpRateRule {
            window: Duration::MAX,
            ..scenario_rule()
        }));
        assert!(bad(IpRateRule {
            block_for: Duration::ZERO,
            ..scenario_rule()
        }));
        assert_eq!(
            EdgeRules::new(&EdgeConfig {
                rate_rules: vec![scenario_rule()],
                max_tracked_ips: 0,
                ..EdgeConfig::default()
            })
            .err(),
            Some(EdgeError::NoCapacity)
        );
    }

    fn rate_rules_result(rules: Vec<IpRateRule>) -> Result<EdgeRules, EdgeError> {
        EdgeRules::new(&EdgeConfig {
            rate_rules: rules,
            ..EdgeConfig::default()
        })
    }

    fn run(edge: &Edge, client: &str) -> Step<'static> {
        let mut ctx = RequestCtx::new(
            HeaderValue::from_static("req-1"),
            ip(client),
            Listener::Public,
            Instant::now(),
        );
        let (mut parts, ()) = http::Request::new(()).into_parts();
        match edge.on_request(&mut ctx, &mut parts) {
            Step::Continue => Step::Continue,
            Step::Reject(e) => Step::Reject(e),
            Step::Respond(r) => Step::Respond(r),
            Step::Wait(_) => panic!("the edge policy never waits"),
        }
    }

    #[test]
    fn the_policy_continues_forbids_and_rate_limits() {
        let clock = Arc::new(ManualClock::new(t0()));
        let rules = EdgeRules::new(&EdgeConfig {
            deny: nets(&["203.0.113.0/24"]),
            rate_rules: vec![scenario_rule()],
            ..EdgeConfig::default()
        })
        .expect("rules");
        let edge = Edge::new(Arc::new(rules), clock.clone());
        assert_eq!(edge.phase(), Phase::Edge);
        assert_eq!(edge.name(), "edge");

        let Step::Reject(e) = run(&edge, "203.0.113.9") else {
            panic!("denied address passed");
        };
        assert_eq!(e.kind, Kind::Forbidden);
        assert_eq!(e.status(), http::StatusCode::FORBIDDEN);
        assert_eq!(e.detail, FORBIDDEN_DETAIL);
        let body: serde_json::Value =
            serde_json::from_slice(&e.problem_json("req-1")).expect("json");
        assert_eq!(body["type"], "https://tollgate.dev/problems/forbidden");
        assert!(!body.to_string().contains("203.0.113.9"));

        for _ in 0..300 {
            assert!(matches!(run(&edge, "192.0.2.60"), Step::Continue));
        }
        let Step::Reject(e) = run(&edge, "192.0.2.60") else {
            panic!("301st request passed");
        };
        assert_eq!(e.kind, Kind::TooManyRequests);
        let resp = e.to_response("req-1");
        assert_eq!(resp.status(), http::StatusCode::TOO_MANY_REQUESTS);
        let h = resp.headers();
        assert_eq!(h[RETRY_AFTER], "60");
        assert_eq!(h["ratelimit-policy"], "\"ip\";q=300;w=10");
        assert_eq!(h["ratelimit"], "\"ip\";r=0;t=60");
        let body: serde_json::Value = serde_json::from_slice(resp.body()).expect("json");
        assert_eq!(body["type"], "https://tollgate.dev/problems/rate-limited");
        assert_eq!(body["limit"], "ip");

        clock.advance(Duration::from_millis(59_999));
        let Step::Reject(e) = run(&edge, "192.0.2.60") else {
            panic!("blocked address passed");
        };
        assert_eq!(e.to_response("r").headers()[RETRY_AFTER], "1");
        clock.advance(Duration::from_millis(1));
        assert!(matches!(run(&edge, "192.0.2.60"), Step::Continue));
        assert!(matches!(run(&edge, "192.0.2.61"), Step::Continue));
    }

    fn any_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<u32>().prop_map(|b| IpAddr::V4(Ipv4Addr::from(b))),
            any::<u128>().prop_map(|b| IpAddr::V6(Ipv6Addr::from(b))),
            any::<u32>().prop_map(|b| IpAddr::V6(Ipv4Addr::from(b).to_ipv6_mapped())),
        ]
    }

    /// Networks and addresses drawn near a few shared bases, so that hits are common.
    fn near_ip() -> impl Strategy<Value = IpAddr> {
        let bases: [u128; 4] = [
            0xc000_0200,             // 192.0.2.0 as v4 bits
            MAPPED_LO | 0xc000_0200, // ::ffff:192.0.2.0
            0x2001_0db8 << 96,       // 2001:db8::
            0,                       // :: / 0.0.0.0
        ];
        (0usize..4, any::<bool>(), any::<u128>(), 0u32..129).prop_map(move |(b, v4, r, bits)| {
            let mask = if bits >= 128 {
                u128::MAX
            } else {
                (1u128 << bits) - 1
            };
            let x = bases[b] ^ (r & mask);
            if v4 {
                IpAddr::V4(Ipv4Addr::from(x as u32))
            } else {
                IpAddr::V6(Ipv6Addr::from(x))
            }
        })
    }

    fn any_net() -> impl Strategy<Value = IpNet> {
        (near_ip(), 0u8..=128).prop_map(|(a, p)| {
            let p = if a.is_ipv4() { p % 33 } else { p };
            IpNet::new(a, p).expect("prefix in range")
        })
    }

    fn naive_contains(nets: &[IpNet], a: IpAddr) -> bool {
        let alt = match a {
            IpAddr::V4(v4) => Some(IpAddr::V6(v4.to_ipv6_mapped())),
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
        };
        nets.iter()
            .any(|n| n.contains(&a) || alt.is_some_and(|b| n.contains(&b)))
    }

    proptest! {
        #[test]
        fn cidr_lookup_equals_a_linear_scan(
            list in prop::collection::vec(any_net(), 0..40),
            probes in prop::collection::vec(prop_oneof![near_ip(), any_ip()], 1..60),
        ) {
            let r = EdgeRules::new(&EdgeConfig { deny: list.clone(), ..EdgeConfig::default() })
                .expect("rules");
            for a in probes {
                let want = if naive_contains(&list, a) { Verdict::Denied } else { Verdict::Pass };
                prop_assert_eq!(r.check(a, t0()), want, "{}", a);
            }
        }

        /// Against an exact sliding log: a block only happens with more than N requests in
        /// the last W, and always happens with more than N in the last (SLOTS - 1) slots.
        #[test]
        fn rate_rule_matches_its_error_bound(
            max in 1u32..12,
            window_ms in 1u64..20_000,
            block_ms in 1u64..5_000,
            gaps in prop::collection::vec(0u64..3_000_000_000, 1..400),
        ) {
            let rule = IpRateRule {
                max_requests: max,
                window: Duration::from_millis(window_ms),
                block_for: Duration::from_millis(block_ms),
            };
            let r = rate_rules(vec![rule]);
            let w = window_ms * 1_000_000;
            let slot = w / SLOTS as u64;
            let a = ip("192.0.2.70");
            let mut now = unix_nanos(t0());
            let mut log: Vec<u64> = Vec::new();
            let mut blocked_until = 0u64;
            for gap in gaps {
                // Scaled so the mean rate is about N per window: traffic hovers at the limit.
                now += gap % (2 * w / u64::from(max + 1)).max(1);
                let got = r.check(a, UNIX_EPOCH + Duration::from_nanos(now));
                if now < blocked_until {
                    let secs = (blocked_until - now).div_ceil(NANOS_PER_SEC).max(1);
                    prop_assert_eq!(got, blocked(secs));
                    continue;
                }
                log.push(now);
                let exact = log.iter().filter(|&&x| x > now - w).count() as u64;
                let sure = log.iter().filter(|&&x| x >= now - (SLOTS as u64 - 1) * slot).count()
                    as u64;
                match got {
                    Verdict::RateLimited { rule: 0, retry_after_secs } => {
                        prop_assert!(exact > u64::from(max), "blocked with {} in window", exact);
                        prop_assert_eq!(retry_after_secs, retry_after(block_ms));
                        log.clear();
                        blocked_until = now + block_ms * 1_000_000;
                    }
                    Verdict::Pass => {
                        prop_assert!(sure <= u64::from(max), "passed with {} in the sure span", sure);
                    }
                    other => prop_assert!(false, "unexpected {:?}", other),
                }
            }
        }

        #[test]
        fn no_input_panics(
            max in any::<u32>(),
            // Mostly valid periods (up to 366 days is 3.2e16 ns), some too long.
            window_ns in 0u64..40_000_000_000_000_000,
            block_ns in 0u64..40_000_000_000_000_000,
            cap in 0usize..300,
            list in prop::collection::vec(any_net(), 0..8),
            reqs in prop::collection::vec((any_ip(), any::<u64>()), 1..200),
        ) {
            let cfg = EdgeConfig {
                allow: if max % 3 == 0 { Some(list.clone()) } else { None },
                deny: list,
                rate_rules: vec![IpRateRule {
                    max_requests: max % 50,
                    window: Duration::from_nanos(window_ns),
                    block_for: Duration::from_nanos(block_ns),
                }],
                max_tracked_ips: cap,
            };
            let Ok(r) = EdgeRules::new(&cfg) else { return Ok(()); };
            for (a, t) in reqs {
                // Arbitrary times, including before 1970 and stepping backwards.
                let at = if t % 5 == 0 {
                    UNIX_EPOCH - Duration::from_nanos(t)
                } else {
                    UNIX_EPOCH + Duration::from_nanos(t)
                };
                if let Verdict::RateLimited { rule, retry_after_secs } = r.check(a, at) {
                    prop_assert!(retry_after_secs >= 1);
                    let e = r.rate_limited(a, rule, retry_after_secs);
                    prop_assert_eq!(e.kind, Kind::TooManyRequests);
                }
            }
            prop_assert!(r.tracked_ips() <= cap.max(2 * SHARDS));
        }
    }

    fn retry_after(block_ms: u64) -> u64 {
        block_ms.div_ceil(1_000).max(1)
    }
}
