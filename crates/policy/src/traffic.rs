//! The `Traffic` policy of one route: every rate tier (gateway, API, route, the consumer's
//! plan or its temporary override), spike arrest and quotas (the plan's and the route's
//! business limit) checked together, all or nothing. The concurrency slot is taken first, so a
//! request refused for want of one consumes no tokens or quota.
//!
//! Limiter state lives in [`Stores`], which outlives config reloads: a reload changes limits,
//! never hands everyone a fresh burst. State whose key the config alone decides (the gateway's
//! bucket, a route's `per: all` bucket or quota, each configured consumer's plan bucket, plan
//! quota and override bucket) is pinned when the config is compiled ([`Stores::pin_bucket`]):
//! the route or the consumer's entry holds it, found by the consumer's index, so such a tier
//! costs its lock and its arithmetic, not a hash and two table probes. Per-consumer route limits
//! and callers told apart by address stay keyed in the shared stores.
//!
//! With `TOLLGATE_REDIS_URL` set ([`connect_redis_from_env`]) the rate and quota tiers are
//! decided by one Lua script in Redis instead ([`crate::limits::redis`]), so several gateway
//! processes share them; the policy then answers `Step::Wait`. When Redis fails, times out or
//! its breaker is open, the route's failure mode decides: `local` (the in-process stores, every
//! limit divided by `limits.redis.expected_nodes`), `allow` or `deny` (503). Without Redis the
//! synchronous path is unchanged: no future, no allocation beyond today's.

use crate::ConfigMap;
use crate::limits::breaker::BreakerSettings;
use crate::limits::headers::{
    PolicyItem, PolicyName, ratelimit_one, ratelimit_policy, retry_after,
};
use crate::limits::redis::{InvalidRedisUrl, RedisLimiter, RedisSettings};
use crate::limits::{
    ConcurrencyLimiter, KeyedLimiter, KeyedQuota, Limit, PinnedBucket, PinnedBucketTier,
    PinnedQuota, PinnedQuotaTier, QuotaLimit, QuotaTier, RateTier, TemporaryOverride, Tier,
    Verdict, check_all_into, check_pinned,
};
use http::HeaderName;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;
use tollgate_config::{Config, FailureMode, LimitScope, Period, RouteLimits};
use tollgate_core::{
    Clock, Consumer, Decision, GatewayError, Kind, Phase, Policy, RequestCtx, Step,
};

/// The environment variable naming the Redis that holds shared limits.
pub const REDIS_URL_VAR: &str = "TOLLGATE_REDIS_URL";

const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Who a bucket or counter belongs to.
#[derive(Debug, Clone, Eq)]
pub enum Subject {
    Everyone,
    Consumer(Arc<str>),
    /// Callers without a consumer are told apart by address.
    Ip(IpAddr),
}

/// A bucket or counter: which limit (a stable scope name) and whose.
#[derive(Debug, Clone, Eq)]
pub struct Key {
    pub scope: Arc<str>,
    pub subject: Subject,
}

/// Names compare by pointer first: a stored key was cloned from the snapshot's own `Arc`s, so
/// until a reload the comparison a lookup ends with needs no string compare.
fn same(a: &Arc<str>, b: &Arc<str>) -> bool {
    Arc::ptr_eq(a, b) || **a == **b
}

impl PartialEq for Subject {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Subject::Everyone, Subject::Everyone) => true,
            (Subject::Consumer(a), Subject::Consumer(b)) => same(a, b),
            (Subject::Ip(a), Subject::Ip(b)) => a == b,
            _ => false,
        }
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        same(&self.scope, &other.scope) && self.subject == other.subject
    }
}

// By content, as equality is: a pointer says nothing about keys from different snapshots.
impl std::hash::Hash for Subject {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        std::mem::discriminant(self).hash(h);
        match self {
            Subject::Everyone => {}
            Subject::Consumer(c) => c.hash(h),
            Subject::Ip(ip) => ip.hash(h),
        }
    }
}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.scope.hash(h);
        self.subject.hash(h);
    }
}

/// Limiter state shared by every snapshot of a running gateway.
pub struct Stores {
    pub rates: KeyedLimiter<Key>,
    pub quotas: KeyedQuota<Key>,
    pub concurrency: ConcurrencyLimiter<Key>,
    /// Set once at start when limits are shared through Redis; the in-process state here is
    /// then the `local` fallback.
    pub redis: OnceLock<Arc<RedisLimiter>>,
    /// State of the keys a config decides on its own (see [`Stores::pin_bucket`]).
    pinned_buckets: parking_lot::Mutex<Pins<PinnedBucket<Key>>>,
    pinned_quotas: parking_lot::Mutex<Pins<PinnedQuota<Key>>>,
}

/// Pinned state by key, so that every snapshot compiled while one holds a key's state gets
/// the same state: a reload keeps buckets and quota counts. Touched only when compiling.
struct Pins<P> {
    by_key: std::collections::HashMap<Key, Arc<P>>,
    /// At this size, state no snapshot holds any more (its route or consumer is gone) is
    /// dropped; the threshold doubles with what stays, so compiling stays linear.
    purge_at: usize,
}

impl<P> Default for Pins<P> {
    fn default() -> Self {
        Self {
            by_key: std::collections::HashMap::new(),
            purge_at: 1024,
        }
    }
}

impl<P> Pins<P> {
    fn pin(&mut self, key: Key, make: impl FnOnce(Key) -> P) -> Arc<P> {
        if self.by_key.len() >= self.purge_at {
            self.by_key.retain(|_, p| Arc::strong_count(p) > 1);
            self.purge_at = (self.by_key.len() * 2).max(1024);
        }
        if let Some(p) = self.by_key.get(&key) {
            return p.clone();
        }
        let p = Arc::new(make(key.clone()));
        self.by_key.insert(key, p.clone());
        p
    }
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores")
            .field("rate_keys", &self.rates.len())
            .finish_non_exhaustive()
    }
}

impl Stores {
    /// `max_keys` bounds each store; idle buckets and finished quota windows are evicted.
    pub fn new(max_keys: usize) -> Self {
        Self {
            rates: KeyedLimiter::new(max_keys),
            quotas: KeyedQuota::new(max_keys),
            concurrency: ConcurrencyLimiter::new(),
            redis: OnceLock::new(),
            pinned_buckets: parking_lot::Mutex::new(Pins::default()),
            pinned_quotas: parking_lot::Mutex::new(Pins::default()),
        }
    }

    /// The bucket of a key the config alone decides (not the request), to be held by the
    /// compiled config: its requests then reach their state without a lookup. Every snapshot
    /// asking for `key` while another holds it gets the same bucket.
    pub fn pin_bucket(&self, key: Key) -> Arc<PinnedBucket<Key>> {
        self.pinned_buckets.lock().pin(key, PinnedBucket::new)
    }

    /// The quota counter of a key the config alone decides; as [`Stores::pin_bucket`].
    pub fn pin_quota(&self, key: Key) -> Arc<PinnedQuota<Key>> {
        self.pinned_quotas.lock().pin(key, PinnedQuota::new)
    }

    /// Pinned buckets and quota counters held (by live snapshots or not yet purged).
    pub fn pinned_len(&self) -> usize {
        self.pinned_buckets.lock().by_key.len() + self.pinned_quotas.lock().by_key.len()
    }
}

/// Shares rate limits and quotas through Redis when [`REDIS_URL_VAR`] is set: call once, at
/// start, before compiling routes. An unusable URL is a problem that stops the start, named
/// after the variable (the message never contains the URL, hence never its password).
pub fn connect_redis_from_env(stores: &Stores) -> Result<(), tollgate_config::Problem> {
    let url = match std::env::var(REDIS_URL_VAR) {
        Ok(url) if !url.trim().is_empty() => url,
        _ => return Ok(()),
    };
    match connect_redis(stores, url.trim()) {
        Ok(shown) => {
            tracing::info!(redis = %shown, "rate limits and quotas shared through Redis");
            Ok(())
        }
        Err(e) => Err(tollgate_config::Problem {
            key_path: REDIS_URL_VAR.into(),
            line: None,
            message: e.to_string(),
        }),
    }
}

/// Shares rate limits and quotas through the Redis at `url` (connected on first use).
pub fn connect_redis(stores: &Stores, url: &str) -> Result<String, InvalidRedisUrl> {
    let limiter = Arc::new(RedisLimiter::open(url)?);
    let shown = limiter.redacted_url().to_string();
    // Already set means a second call at start: the first connection stays.
    let _ = stores.redis.set(limiter);
    Ok(shown)
}

/// A usage plan, compiled.
#[derive(Debug, Clone)]
pub struct PlanLimits {
    pub name: PolicyName,
    /// The plan's quota as a RateLimit policy name (names must be unique within a field).
    pub quota_name: PolicyName,
    pub rate: Limit,
    pub quota: Option<QuotaLimit>,
    /// Per-route rate overrides inside the plan, by route id.
    pub routes: ConfigMap<String, Limit>,
}

/// A configured consumer's limits: its plan, its override, and the state of both, pinned.
#[derive(Debug)]
pub struct ConsumerLimits {
    id: Arc<str>,
    /// Position of the consumer's plan in [`PlanBook::plans`].
    plan: Option<usize>,
    over: Option<TemporaryOverride>,
    /// Keyed (plan, consumer): a consumer moved to another plan starts on a bucket filled under
    /// that plan's limit, not the old plan's debt.
    plan_bucket: Option<Arc<PinnedBucket<Key>>>,
    plan_quota: Option<Arc<PinnedQuota<Key>>>,
    /// A live override gets its own bucket: a bucket's state is only meaningful under the
    /// limit that filled it, and an override must bite (or relieve) at once.
    override_bucket: Option<Arc<PinnedBucket<Key>>>,
}

/// Plans and per-consumer overrides of one config, shared by its routes.
#[derive(Debug, Default)]
pub struct PlanBook {
    /// In config order; consumers and routes refer to a plan by its position.
    pub plans: Vec<(String, PlanLimits)>,
    /// Configured consumers in config order, the order of [`Consumer::index`].
    consumers: Vec<ConsumerLimits>,
    /// Positions in `consumers` by id, for a consumer that does not carry its index.
    by_id: ConfigMap<String, usize>,
    /// Some consumer has an override (live or not): every route's traffic policy asks.
    any_override: bool,
    pub gateway: Option<Limit>,
    gateway_bucket: Option<Arc<PinnedBucket<Key>>>,
    pub utc_offset: i32,
    /// How the shared limits are consulted (only with Redis).
    pub redis: RedisSettings,
    /// What limited routes do when Redis fails, unless a route says otherwise.
    pub failure_mode: FailureMode,
    /// `local` failure mode divides every limit by this.
    pub expected_nodes: u32,
}

/// How the shared limits are consulted, from `limits.redis`.
pub fn redis_settings(cfg: &Config) -> RedisSettings {
    let r = &cfg.limits.redis;
    RedisSettings {
        timeout: r.timeout.get(),
        breaker: BreakerSettings {
            failures: r.breaker.failures.max(1),
            cool_down: r.breaker.cool_down.get(),
        },
        key_prefix: Arc::from(r.key_prefix.as_str()),
    }
}

fn period(p: Period) -> crate::limits::Period {
    match p {
        Period::Hour => crate::limits::Period::Hour,
        Period::Day => crate::limits::Period::Day,
        Period::Week => crate::limits::Period::Week,
        Period::Month => crate::limits::Period::Month,
    }
}

impl PlanBook {
    /// Compiles plans, overrides and the gateway limit; problems are (key path, message).
    /// The state of the gateway's bucket and of each consumer's plan and override is pinned in
    /// `stores`.
    pub fn build(cfg: &Config, stores: &Stores) -> Result<Self, Vec<(String, String)>> {
        let mut problems = Vec::new();
        let utc_offset = cfg
            .limits
            .quota_utc_offset
            .as_deref()
            .and_then(tollgate_config::parse_utc_offset)
            .unwrap_or(0);
        let r = &cfg.limits.redis;
        let mut book = PlanBook {
            utc_offset,
            redis: redis_settings(cfg),
            failure_mode: r.failure_mode,
            expected_nodes: r.expected_nodes.max(1),
            ..Default::default()
        };
        let mut limit = |rate: f64, burst: u32, key: String| match Limit::new(rate, burst) {
            Ok(l) => Some(l),
            Err(e) => {
                problems.push((key, format!("{e:?}")));
                None
            }
        };
        if let Some(g) = &cfg.limits.gateway {
            book.gateway = limit(g.rate, g.burst, "limits.gateway".into());
            book.gateway_bucket = book.gateway.map(|_| {
                stores.pin_bucket(Key {
                    scope: Arc::from(GATEWAY_SCOPE),
                    subject: Subject::Everyone,
                })
            });
        }
        for (name, p) in &cfg.plans {
            let Some(rate) = limit(p.rate, p.burst, format!("plans.{name}")) else {
                continue;
            };
            let mut routes = ConfigMap::default();
            for (rid, l) in &p.routes {
                if let Some(x) = limit(l.rate, l.burst, format!("plans.{name}.routes.{rid}")) {
                    routes.insert(rid.clone(), x);
                }
            }
            book.plans.push((
                name.clone(),
                PlanLimits {
                    name: PolicyName::new(&format!("plan-{name}")),
                    quota_name: PolicyName::new(&format!("quota-{name}")),
                    rate,
                    quota: p.quota.map(|q| {
                        QuotaLimit::new(q.limit, period(q.period)).with_offset(utc_offset)
                    }),
                    routes,
                },
            ));
        }
        let plan_at: ConfigMap<&str, usize> = book
            .plans
            .iter()
            .enumerate()
            .map(|(i, (name, _))| (name.as_str(), i))
            .collect();
        let override_scope: Arc<str> = Arc::from(OVERRIDE_SCOPE);
        // In config order, as the identity numbers consumers (`Consumer::index`).
        for (id, c) in &cfg.consumers {
            let over = c.rate_override.as_ref().and_then(|o| {
                limit(o.rate, o.burst, format!("consumers.{id}.override")).map(|l| {
                    TemporaryOverride {
                        limit: l,
                        expires_at: o.expires_at.0,
                    }
                })
            });
            let consumer: Arc<str> = Arc::from(id.as_str());
            let key = |scope: &Arc<str>| Key {
                scope: scope.clone(),
                subject: Subject::Consumer(consumer.clone()),
            };
            let plan = c.plan.as_deref().and_then(|p| plan_at.get(p).copied());
            let limits = plan.map(|i| &book.plans[i].1);
            let entry = ConsumerLimits {
                plan,
                plan_bucket: limits.map(|p| stores.pin_bucket(key(p.name.arc()))),
                plan_quota: limits
                    .filter(|p| p.quota.is_some())
                    .map(|p| stores.pin_quota(key(p.quota_name.arc()))),
                override_bucket: over
                    .is_some()
                    .then(|| stores.pin_bucket(key(&override_scope))),
                over,
                id: consumer.clone(),
            };
            book.any_override |= over.is_some();
            book.by_id.insert(id.clone(), book.consumers.len());
            book.consumers.push(entry);
        }
        if problems.is_empty() {
            Ok(book)
        } else {
            Err(problems)
        }
    }

    /// The limits of a configured consumer: found by its index, or by its id for one that
    /// carries none or comes from another snapshot (a cache may outlive a reload).
    fn consumer(&self, c: &Consumer) -> Option<&ConsumerLimits> {
        let by_index = c
            .index
            .and_then(|i| self.consumers.get(i as usize))
            .filter(|e| same(&e.id, &c.id));
        by_index.or_else(|| self.by_id.get(&*c.id).and_then(|&i| self.consumers.get(i)))
    }
}

/// Scope names of the gateway's bucket and of overrides' buckets.
const GATEWAY_SCOPE: &str = "gateway";
const OVERRIDE_SCOPE: &str = "override";

#[derive(Debug, Clone)]
struct Scoped<L, P = ()> {
    name: PolicyName,
    limit: L,
    per: LimitScope,
    /// The state, when its key does not depend on the request (`per: all`).
    pinned: Option<Arc<P>>,
}

/// Which limit refused a request: its problem type and the `limit` member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TierKind {
    Gateway,
    Api,
    Route,
    Plan,
    Spike,
    PlanQuota,
    RouteQuota,
}

impl TierKind {
    fn label(self) -> &'static str {
        match self {
            TierKind::Gateway => "gateway",
            TierKind::Api => "api",
            TierKind::Route => "route",
            TierKind::Plan => "plan",
            TierKind::Spike => "spike-arrest",
            TierKind::PlanQuota => "quota",
            TierKind::RouteQuota => "route-quota",
        }
    }
}

#[derive(Debug)]
pub struct Traffic {
    stores: Arc<Stores>,
    /// Set when limits are shared through Redis.
    redis: Option<Arc<RedisLimiter>>,
    failure_mode: FailureMode,
    book: Arc<PlanBook>,
    clock: Arc<dyn Clock>,
    api: Option<Scoped<Limit, PinnedBucket<Key>>>,
    route: Option<Scoped<Limit, PinnedBucket<Key>>>,
    spike: Option<Scoped<Limit, PinnedBucket<Key>>>,
    quota: Option<Scoped<QuotaLimit, PinnedQuota<Key>>>,
    concurrency: Option<Scoped<u32>>,
    gateway_scope: PolicyName,
    override_scope: PolicyName,
    /// Every plan as it applies to this route, in the book's order: a consumer's plan
    /// position finds the plan's rate here, its quota and its `RateLimit-Policy`.
    plans: Vec<RoutePlan>,
    /// `RateLimit-Policy` for callers without a plan.
    policy_header_no_plan: http::HeaderValue,
    /// Every tier of this route is a consumer's (plans, overrides): an anonymous request has
    /// nothing to check, not even the time.
    consumers_only: bool,
}

impl Traffic {
    /// `None` when nothing limits this route (no plans, no gateway limit, no route limits).
    pub fn new(
        stores: Arc<Stores>,
        book: Arc<PlanBook>,
        clock: Arc<dyn Clock>,
        scope_prefix: &str,
        route_id: &str,
        api_limits: Option<&RouteLimits>,
        route_limits: Option<&RouteLimits>,
    ) -> Option<Self> {
        // State whose key is the same for every request is pinned now.
        let everyone = |name: &PolicyName, per: LimitScope| {
            (per == LimitScope::All).then(|| Key {
                scope: name.arc().clone(),
                subject: Subject::Everyone,
            })
        };
        let rate = |name: String, limit: Result<Limit, _>, per: LimitScope| {
            let name = PolicyName::new(&name);
            limit.ok().map(|limit| Scoped {
                pinned: everyone(&name, per).map(|k| stores.pin_bucket(k)),
                name,
                limit,
                per,
            })
        };
        let api = api_limits.and_then(|l| l.rate.as_ref()).and_then(|l| {
            rate(
                format!("api:{scope_prefix}"),
                Limit::new(l.rate, l.burst),
                l.per,
            )
        });
        let route = route_limits.and_then(|l| l.rate.as_ref()).and_then(|l| {
            rate(
                format!("route:{route_id}"),
                Limit::new(l.rate, l.burst),
                l.per,
            )
        });
        let spike = route_limits
            .and_then(|l| l.spike_arrest.as_ref())
            .and_then(|s| {
                rate(
                    format!("spike:{route_id}"),
                    Limit::spike_arrest(s.rate),
                    s.per,
                )
            });
        let quota = route_limits.and_then(|l| l.quota.as_ref()).map(|q| {
            let name = PolicyName::new(&format!("quota:{route_id}"));
            Scoped {
                pinned: everyone(&name, q.per).map(|k| stores.pin_quota(k)),
                name,
                limit: QuotaLimit::new(q.limit, period(q.period)).with_offset(book.utc_offset),
                per: q.per,
            }
        });
        let concurrency = route_limits
            .and_then(|l| l.concurrency.as_ref())
            .map(|c| Scoped {
                name: PolicyName::new(&format!("concurrency:{route_id}")),
                limit: c.max,
                per: c.per,
                pinned: None,
            });
        let consumers_only = api.is_none()
            && route.is_none()
            && spike.is_none()
            && quota.is_none()
            && concurrency.is_none()
            && book.gateway.is_none();
        if consumers_only && book.plans.is_empty() && !book.any_override {
            return None;
        }
        let failure_mode = route_limits
            .and_then(|l| l.failure_mode)
            .or_else(|| api_limits.and_then(|l| l.failure_mode))
            .unwrap_or(book.failure_mode);
        let mut me = Self {
            redis: stores.redis.get().cloned(),
            failure_mode,
            stores,
            book,
            clock,
            api,
            route,
            spike,
            quota,
            concurrency,
            gateway_scope: PolicyName::new(GATEWAY_SCOPE),
            override_scope: PolicyName::new(OVERRIDE_SCOPE),
            plans: Vec::new(),
            policy_header_no_plan: http::HeaderValue::from_static(""),
            consumers_only,
        };
        me.policy_header_no_plan = me.policy_header(None, None, 1);
        let plans = me
            .book
            .plans
            .iter()
            .map(|(_, p)| {
                let mut plan = RoutePlan {
                    name: p.name.clone(),
                    rate: *p.routes.get(route_id).unwrap_or(&p.rate),
                    quota: p.quota,
                    quota_name: p.quota_name.clone(),
                    policy_header: http::HeaderValue::from_static(""),
                };
                plan.policy_header = me.policy_header(Some(&plan), None, 1);
                plan
            })
            .collect();
        me.plans = plans;
        Some(me)
    }

    /// The route's `RateLimit-Policy` for a caller on `plan` (or under `over`), with every
    /// limit as enforced: divided among `nodes` gateways when the in-process stores stand in
    /// for Redis (`local` failure mode), so the advertised quotas match the `RateLimit`
    /// remaining counts beside them.
    fn policy_header(
        &self,
        plan: Option<&RoutePlan>,
        over: Option<&Limit>,
        nodes: u32,
    ) -> http::HeaderValue {
        let rate = |l: &Limit| divided_rate(l, nodes);
        let quota = |q: &QuotaLimit| divided_quota(q, nodes);
        let mut items: Vec<PolicyItem<'_>> = Vec::new();
        if let Some(g) = &self.book.gateway {
            items.push(PolicyItem::rate(self.gateway_scope.as_str(), &rate(g)));
        }
        for s in [&self.api, &self.route, &self.spike].into_iter().flatten() {
            items.push(PolicyItem::rate(s.name.as_str(), &rate(&s.limit)));
        }
        match (over, plan) {
            (Some(o), _) => items.push(PolicyItem::rate(self.override_scope.as_str(), &rate(o))),
            (None, Some(p)) => items.push(PolicyItem::rate(p.name.as_str(), &rate(&p.rate))),
            (None, None) => {}
        }
        if let Some(q) = plan.and_then(|p| p.quota.as_ref().map(|q| (&p.quota_name, q))) {
            items.push(PolicyItem::quota(q.0.as_str(), &quota(q.1)));
        }
        if let Some(q) = &self.quota {
            items.push(PolicyItem::quota(q.name.as_str(), &quota(&q.limit)));
        }
        ratelimit_policy(&items)
    }

    fn subject(ctx: &RequestCtx, per: LimitScope) -> Subject {
        match per {
            LimitScope::All => Subject::Everyone,
            LimitScope::Consumer => match &ctx.consumer {
                Some(c) => Subject::Consumer(c.id.clone()),
                None => Subject::Ip(ctx.client_ip),
            },
        }
    }

    fn refuse(&self, kind: TierKind, name: &str, retry: std::time::Duration) -> GatewayError {
        let (k, detail) = match kind {
            TierKind::PlanQuota | TierKind::RouteQuota => {
                (Kind::QuotaExceeded, "the quota for this period is used up")
            }
            TierKind::Spike => (
                Kind::SpikeArrested,
                "requests are arriving faster than this route's smoothing allows",
            ),
            _ => (Kind::TooManyRequests, "the rate limit is exhausted"),
        };
        GatewayError::new(k, format!("{detail} ({})", kind.label()))
            .with_header(http::header::RETRY_AFTER, retry_after(retry))
            .with_extension("limit", kind.label().into())
            .with_extension("policy", name.into())
    }
}

/// A plan as it applies to one route.
#[derive(Debug)]
struct RoutePlan {
    /// The plan's bucket scope and `RateLimit` policy name (`plan-<name>`).
    name: PolicyName,
    /// The plan's per-route override for this route, else the plan's rate.
    rate: Limit,
    quota: Option<QuotaLimit>,
    quota_name: PolicyName,
    /// `RateLimit-Policy` for the plan's consumers on this route, rendered at compile time.
    policy_header: http::HeaderValue,
}

/// Where a tier's state lives.
enum Target<'a, P> {
    /// Held by the compiled config: the key does not depend on the request beyond who the
    /// (configured) consumer is.
    Pinned(&'a P),
    /// Looked up in the shared stores under this scope and the caller
    /// ([`Applicable::caller`]): per-consumer route limits, callers told apart by address,
    /// consumers the config does not list.
    Keyed(&'a Arc<str>),
}

/// One rate tier of a request: which kind, its bucket, its limit, its policy name. All
/// borrowed from the route's policy, so the list of a request's tiers is a few words each.
struct RateItem<'a> {
    kind: TierKind,
    target: Target<'a, PinnedBucket<Key>>,
    limit: &'a Limit,
    name: &'a PolicyName,
}

/// One quota tier of a request.
struct QuotaItem<'a> {
    kind: TierKind,
    target: Target<'a, PinnedQuota<Key>>,
    limit: &'a QuotaLimit,
    name: &'a PolicyName,
}

/// The tiers that apply to one request, rate tiers first, then quotas (the verdict's order);
/// the caller's plan and live override, looked up once; and, only if a tier is keyed by the
/// caller, who the caller is (owned, so that it can move into the future of a Redis check).
struct Applicable<'a> {
    rates: Few<RateItem<'a>, 5>,
    quotas: Few<QuotaItem<'a>, 2>,
    plan: Option<&'a RoutePlan>,
    over: Option<&'a TemporaryOverride>,
    caller: Option<Subject>,
}

impl Applicable<'_> {
    fn is_empty(&self) -> bool {
        self.rates.len() == 0 && self.quotas.len() == 0
    }

    /// (kind, policy name) of the `i`-th tier in verdict order.
    fn kind(&self, i: usize) -> Option<(TierKind, &PolicyName)> {
        match i.checked_sub(self.rates.len()) {
            None => self.rates.get(i).map(|r| (r.kind, r.name)),
            Some(q) => self.quotas.get(q).map(|q| (q.kind, q.name)),
        }
    }

    /// The key of a tier's state.
    fn key<P>(&self, target: &Target<'_, P>, pinned_key: impl Fn(&P) -> &Key) -> Key {
        match target {
            Target::Pinned(p) => pinned_key(p).clone(),
            Target::Keyed(scope) => Key {
                scope: (*scope).clone(),
                subject: self.caller.clone().unwrap_or(Subject::Everyone),
            },
        }
    }
}

/// A rate limit divided among `nodes` gateways (the `local` failure mode), each node keeping
/// at least one request of burst.
fn divided_rate(l: &Limit, nodes: u32) -> Limit {
    if nodes <= 1 {
        return *l;
    }
    let burst = (l.burst() / nodes).max(1);
    Limit::new(l.rate() / f64::from(nodes), burst).unwrap_or(*l)
}

/// A quota divided among `nodes` gateways, each keeping at least one request.
fn divided_quota(q: &QuotaLimit, nodes: u32) -> QuotaLimit {
    let mut q = *q;
    if nodes <= 1 {
        return q;
    }
    q.max = q.max.div_ceil(u64::from(nodes)).max(1);
    q
}

/// One tier of the in-process check, over pinned or keyed state.
enum Check<'a> {
    /// An unused slot of the fixed tier array; never handed to `check_all`.
    Empty,
    PinnedRate(PinnedBucketTier<'a, Key>),
    KeyedRate(RateTier<'a, Key>),
    PinnedQuota(PinnedQuotaTier<'a, Key>),
    KeyedQuota(QuotaTier<'a, Key>),
}

impl Tier for Check<'_> {
    fn lock_order(&self) -> (u64, usize) {
        match self {
            Check::Empty => NoTier.lock_order(),
            Check::PinnedRate(t) => t.lock_order(),
            Check::KeyedRate(t) => t.lock_order(),
            Check::PinnedQuota(t) => t.lock_order(),
            Check::KeyedQuota(t) => t.lock_order(),
        }
    }

    fn enter(&self, now: u64, inner: &mut dyn FnMut(crate::limits::Outcome) -> bool) -> bool {
        match self {
            Check::Empty => NoTier.enter(now, inner),
            Check::PinnedRate(t) => t.enter(now, inner),
            Check::KeyedRate(t) => t.enter(now, inner),
            Check::PinnedQuota(t) => t.enter(now, inner),
            Check::KeyedQuota(t) => t.enter(now, inner),
        }
    }
}

fn redis_key(prefix: &str, kind: char, key: &Key) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(prefix.len() + key.scope.len() + 40);
    s.push_str(prefix);
    s.push(kind);
    s.push('|');
    s.push_str(&key.scope);
    s.push('|');
    let _ = match &key.subject {
        Subject::Everyone => write!(s, "*"),
        Subject::Consumer(c) => write!(s, "c:{c}"),
        Subject::Ip(ip) => write!(s, "ip:{ip}"),
    };
    s
}

impl Traffic {
    /// Where the state of a tier named `scope` lives: pinned when compiled so, else keyed by
    /// the caller.
    fn target<'a, P>(scope: &'a PolicyName, pinned: Option<&'a Arc<P>>) -> Target<'a, P> {
        match pinned {
            Some(p) => Target::Pinned(p),
            None => Target::Keyed(scope.arc()),
        }
    }

    /// Every tier that applies to this request. `entry` is the caller's limits (if it is a
    /// configured consumer) and `plan` its plan on this route, both already looked up.
    fn applicable<'a>(
        &'a self,
        ctx: &RequestCtx,
        entry: Option<&'a ConsumerLimits>,
        plan: Option<&'a RoutePlan>,
        now: SystemTime,
    ) -> Applicable<'a> {
        // At most 5 rate tiers and 2 quotas: fixed-size, so the check allocates nothing.
        let mut a = Applicable {
            rates: Few::new(),
            quotas: Few::new(),
            plan: None,
            over: None,
            caller: None,
        };
        let mut keyed = false;
        if let Some(g) = &self.book.gateway {
            let target = Self::target(&self.gateway_scope, self.book.gateway_bucket.as_ref());
            keyed |= matches!(target, Target::Keyed(_));
            a.rates.push(RateItem {
                kind: TierKind::Gateway,
                target,
                limit: g,
                name: &self.gateway_scope,
            });
        }
        for (kind, s) in [
            (TierKind::Api, &self.api),
            (TierKind::Route, &self.route),
            (TierKind::Spike, &self.spike),
        ] {
            if let Some(s) = s {
                let target = Self::target(&s.name, s.pinned.as_ref());
                keyed |= matches!(target, Target::Keyed(_));
                a.rates.push(RateItem {
                    kind,
                    target,
                    limit: &s.limit,
                    name: &s.name,
                });
            }
        }
        if ctx.consumer.is_some() {
            a.plan = plan;
            a.over = entry
                .and_then(|e| e.over.as_ref())
                .filter(|o| now < o.expires_at);
            let effective = match (a.over, a.plan) {
                (Some(o), _) => Some((
                    &o.limit,
                    &self.override_scope,
                    entry.and_then(|e| e.override_bucket.as_ref()),
                )),
                (None, Some(p)) => {
                    Some((&p.rate, &p.name, entry.and_then(|e| e.plan_bucket.as_ref())))
                }
                (None, None) => None,
            };
            if let Some((limit, scope, pinned)) = effective {
                let target = Self::target(scope, pinned);
                keyed |= matches!(target, Target::Keyed(_));
                a.rates.push(RateItem {
                    kind: TierKind::Plan,
                    target,
                    limit,
                    name: scope,
                });
            }
            if let Some(p) = a.plan
                && let Some(q) = &p.quota
            {
                let target = Self::target(&p.quota_name, entry.and_then(|e| e.plan_quota.as_ref()));
                keyed |= matches!(target, Target::Keyed(_));
                a.quotas.push(QuotaItem {
                    kind: TierKind::PlanQuota,
                    target,
                    limit: q,
                    name: &p.quota_name,
                });
            }
        }
        if let Some(q) = &self.quota {
            let target = Self::target(&q.name, q.pinned.as_ref());
            keyed |= matches!(target, Target::Keyed(_));
            a.quotas.push(QuotaItem {
                kind: TierKind::RouteQuota,
                target,
                limit: &q.limit,
                name: &q.name,
            });
        }
        if keyed {
            a.caller = Some(Self::subject(ctx, LimitScope::Consumer));
        }
        a
    }

    /// The all-or-nothing check against the in-process state, into `verdict`, every limit
    /// divided among `nodes` gateways (the `local` failure mode; 1 otherwise). False if a tier
    /// could not be checked (never, by construction); the request is then refused.
    fn check_local(
        &self,
        a: &Applicable<'_>,
        now: SystemTime,
        nodes: u32,
        verdict: &mut Verdict,
    ) -> bool {
        let divided: Option<(Few<Limit, 5>, Few<QuotaLimit, 2>)> = (nodes > 1).then(|| {
            (
                a.rates
                    .iter()
                    .map(|r| divided_rate(r.limit, nodes))
                    .collect(),
                a.quotas
                    .iter()
                    .map(|q| divided_quota(q.limit, nodes))
                    .collect(),
            )
        });
        if a.caller.is_none() {
            // Every tier pinned (no tier keyed by the caller): the direct check.
            let rates = packed::<_, 5>(a.rates.iter().enumerate().filter_map(|(i, r)| {
                let limit = divided.as_ref().and_then(|d| d.0.get(i)).unwrap_or(r.limit);
                match r.target {
                    Target::Pinned(p) => Some((p, limit)),
                    Target::Keyed(_) => None,
                }
            }));
            let quotas = packed::<_, 2>(a.quotas.iter().enumerate().filter_map(|(i, q)| {
                let limit = divided.as_ref().and_then(|d| d.1.get(i)).unwrap_or(q.limit);
                match q.target {
                    Target::Pinned(p) => Some((p, limit)),
                    Target::Keyed(_) => None,
                }
            }));
            let rates = rates.as_ref().map_or(&[][..], |(r, n)| &r[..*n]);
            let quotas = quotas.as_ref().map_or(&[][..], |(q, n)| &q[..*n]);
            // A tier left out above (never: a pinned tier per item) fails the check.
            return rates.len() == a.rates.len()
                && quotas.len() == a.quotas.len()
                && check_pinned(rates, quotas, now, verdict).is_ok();
        }
        let stores = &*self.stores;
        // Keys are built only for keyed tiers.
        let keys: Option<Few<Key, 7>> = a.caller.as_ref().map(|_| {
            let rates = a.rates.iter().filter_map(|r| match r.target {
                Target::Keyed(_) => Some(a.key(&r.target, PinnedBucket::key)),
                Target::Pinned(_) => None,
            });
            let quotas = a.quotas.iter().filter_map(|q| match q.target {
                Target::Keyed(_) => Some(a.key(&q.target, PinnedQuota::key)),
                Target::Pinned(_) => None,
            });
            rates.chain(quotas).collect()
        });
        let mut next_key = keys.iter().flat_map(|k| k.iter());
        let mut tiers = [const { Check::Empty }; 7];
        let mut n = 0;
        for (i, r) in a.rates.iter().enumerate() {
            let limit = divided.as_ref().and_then(|d| d.0.get(i)).unwrap_or(r.limit);
            let check = match r.target {
                Target::Pinned(p) => Some(Check::PinnedRate(p.tier(limit))),
                Target::Keyed(_) => next_key
                    .next()
                    .map(|k| Check::KeyedRate(stores.rates.tier(k, limit))),
            };
            if !place(&mut tiers, &mut n, check) {
                return false;
            }
        }
        for (i, q) in a.quotas.iter().enumerate() {
            let limit = divided.as_ref().and_then(|d| d.1.get(i)).unwrap_or(q.limit);
            let check = match q.target {
                Target::Pinned(p) => Some(Check::PinnedQuota(p.tier(limit))),
                Target::Keyed(_) => next_key
                    .next()
                    .map(|k| Check::KeyedQuota(stores.quotas.tier(k, limit))),
            };
            if !place(&mut tiers, &mut n, check) {
                return false;
            }
        }
        let mut refs: [&dyn Tier; 7] = [&NoTier; 7];
        for (r, t) in refs.iter_mut().zip(&tiers) {
            *r = t;
        }
        check_all_into(&refs[..n], now, verdict).is_ok()
    }

    /// The check against Redis, or the failure mode's answer when Redis cannot give one.
    /// `Err` is the `deny` mode's 503. `Ok(None)` admits without a verdict (`allow`).
    async fn check_shared<'a>(
        &'a self,
        redis: &RedisLimiter,
        a: Applicable<'a>,
        now: SystemTime,
    ) -> (Applicable<'a>, Result<Option<Checked>, GatewayError>) {
        let prefix = &*self.book.redis.key_prefix;
        let rates: Vec<(String, Limit)> = a
            .rates
            .iter()
            .map(|r| {
                let key = a.key(&r.target, PinnedBucket::key);
                (redis_key(prefix, 'r', &key), *r.limit)
            })
            .collect();
        let quotas: Vec<(String, QuotaLimit)> = a
            .quotas
            .iter()
            .map(|q| {
                let key = a.key(&q.target, PinnedQuota::key);
                (redis_key(prefix, 'q', &key), *q.limit)
            })
            .collect();
        let error = match redis
            .check_all(&self.book.redis, &rates, &quotas, now)
            .await
        {
            Ok(verdict) => return (a, Ok(Some(Checked { verdict, nodes: 1 }))),
            Err(e) => e,
        };
        tracing::debug!(error = %error, mode = ?self.failure_mode, "shared limits unavailable");
        match self.failure_mode {
            FailureMode::Local => {
                let nodes = self.book.expected_nodes.max(1);
                let mut verdict = Verdict::EMPTY;
                let v = if self.check_local(&a, now, nodes, &mut verdict) {
                    Ok(Some(Checked { verdict, nodes }))
                } else {
                    Err(unchecked())
                };
                (a, v)
            }
            FailureMode::Allow => (a, Ok(None)),
            FailureMode::Deny => {
                let e = GatewayError::new(
                    Kind::ServiceUnavailable,
                    "rate limits cannot be checked right now",
                )
                .with_header(
                    http::header::RETRY_AFTER,
                    retry_after(std::time::Duration::from_secs(1)),
                )
                .with_extension("limit", "shared-limits".into())
                .with_cause(format!("shared limits: {error}"));
                (a, Err(e))
            }
        }
    }

    /// Headers, then the refusal if a tier rejected, else the request keeps its concurrency
    /// slot. `checked` is `None` when the rate and quota tiers were not consulted (the `allow`
    /// failure mode).
    fn finish(
        &self,
        ctx: &mut RequestCtx,
        a: &Applicable<'_>,
        checked: Option<&Checked>,
        slot: Option<Slot>,
    ) -> Result<(), GatewayError> {
        // RateLimit headers: the route's policies (rendered at compile time unless an override
        // is live or the limits are divided), and the service limit of the tightest tier.
        if let Some(Checked { verdict, nodes }) = checked
            && !a.is_empty()
        {
            let policy = match a.over {
                Some(o) => self.policy_header(a.plan, Some(&o.limit), *nodes),
                None if *nodes > 1 => self.policy_header(a.plan, None, *nodes),
                None => a
                    .plan
                    .map_or(&self.policy_header_no_plan, |p| &p.policy_header)
                    .clone(),
            };
            ctx.response_headers.push((RATELIMIT_POLICY, policy));
            let tight = verdict.rejected().or_else(|| verdict.most_restrictive());
            if let Some(i) = tight
                && let Some(o) = verdict.outcomes().get(i)
                && let Some((_, name)) = a.kind(i)
            {
                ctx.response_headers
                    .push((RATELIMIT, ratelimit_one(name, o)));
            }
            if let Some(i) = verdict.rejected()
                && let Some((kind, name)) = a.kind(i)
            {
                ctx.throttled = Some(kind.label());
                let retry = verdict.retry_after().unwrap_or_default();
                return Err(self.refuse(kind, name.as_str(), retry));
            }
        }
        // Held until the response body ends or the client goes away.
        if let Some(slot) = slot {
            ctx.held.push(Box::new(slot));
        }
        Ok(())
    }

    /// The route's concurrency slot, when it has a limit. Taken before any token: a request
    /// refused here must not use up the consumer's rate or quota.
    fn slot(&self, ctx: &mut RequestCtx) -> Result<Option<Slot>, GatewayError> {
        let Some(c) = &self.concurrency else {
            return Ok(None);
        };
        let key = Key {
            scope: c.name.arc().clone(),
            subject: Self::subject(ctx, c.per),
        };
        match self.stores.concurrency.try_acquire(key, c.limit) {
            Some(permit) => Ok(Some(permit)),
            None => {
                ctx.throttled = Some("concurrency");
                Err(GatewayError::new(
                    Kind::ConcurrencyLimited,
                    format!("more than {} requests in flight", c.limit),
                )
                .with_header(
                    http::header::RETRY_AFTER,
                    retry_after(std::time::Duration::from_secs(1)),
                )
                .with_extension("limit", "concurrency".into()))
            }
        }
    }
}

type Slot = crate::limits::Permit<Key>;

/// The rate and quota tiers' verdict, and among how many gateways their limits were divided
/// for it (1 unless the in-process stores stood in for Redis).
struct Checked {
    verdict: Verdict,
    nodes: u32,
}

impl Policy for Traffic {
    fn name(&self) -> &'static str {
        "traffic"
    }

    fn phase(&self) -> Phase {
        Phase::Limit
    }

    fn on_request<'a>(
        &'a self,
        ctx: &'a mut RequestCtx,
        _req: &'a mut http::request::Parts,
    ) -> Step<'a> {
        let entry = ctx.consumer.as_deref().and_then(|c| self.book.consumer(c));
        let plan = entry.and_then(|e| e.plan).and_then(|i| self.plans.get(i));
        // Only a consumer's own tiers apply here: a caller with neither a plan nor an override
        // has nothing to check, not even the time.
        if self.consumers_only && plan.is_none() && entry.is_none_or(|e| e.over.is_none()) {
            return Step::Continue;
        }
        let slot = match self.slot(ctx) {
            Ok(slot) => slot,
            Err(e) => return Step::Reject(e),
        };
        let now = self.clock.now();
        let a = self.applicable(ctx, entry, plan, now);
        if a.is_empty() {
            // No rate or quota tier: at most the concurrency slot.
            return step(self.finish(ctx, &a, None, slot));
        }
        if let Some(redis) = &self.redis {
            return Step::Wait(Box::pin(async move {
                // Nothing borrowed from a lock lives across this await: the check's Redis keys
                // are built before it, the context is only touched after it.
                let (a, checked) = self.check_shared(redis, a, now).await;
                let result = checked.and_then(|v| self.finish(ctx, &a, v.as_ref(), slot));
                match result {
                    Ok(()) => Decision::Continue,
                    Err(e) => Decision::Reject(e),
                }
            }));
        }
        let mut checked = Checked {
            verdict: Verdict::EMPTY,
            nodes: 1,
        };
        if !self.check_local(&a, now, 1, &mut checked.verdict) {
            return Step::Reject(unchecked());
        }
        step(self.finish(ctx, &a, Some(&checked), slot))
    }
}

/// A request whose tiers could not all be checked (more than a check takes, or a keyed tier
/// without its key: never, by construction) is refused, not let through unlimited.
fn unchecked() -> GatewayError {
    GatewayError::new(Kind::Internal, "the request's limits could not be checked")
}

/// Puts `check` in the next free place of `tiers`; false when there is none, or no check
/// (a keyed tier without its key), so that the check fails rather than skip a tier.
fn place<'a>(tiers: &mut [Check<'a>], n: &mut usize, check: Option<Check<'a>>) -> bool {
    match (tiers.get_mut(*n), check) {
        (Some(slot), Some(check)) => {
            *slot = check;
            *n += 1;
            true
        }
        _ => false,
    }
}

/// Up to `N` items in an array whose unused places repeat the first, and how many there are
/// (at most `N`; the rest are dropped); `None` for none.
fn packed<T: Copy, const N: usize>(mut items: impl Iterator<Item = T>) -> Option<([T; N], usize)> {
    let first = items.next()?;
    let mut out = [first; N];
    let mut n = 1;
    for (slot, item) in out.iter_mut().skip(1).zip(items) {
        *slot = item;
        n += 1;
    }
    Some((out, n))
}

fn step<'a>(finished: Result<(), GatewayError>) -> Step<'a> {
    match finished {
        Ok(()) => Step::Continue,
        Err(e) => Step::Reject(e),
    }
}

/// A few items on the stack: the per-request tier lists are tiny and bounded.
struct Few<T, const N: usize> {
    items: [Option<T>; N],
    len: usize,
}

impl<T, const N: usize> Few<T, N> {
    fn new() -> Self {
        Self {
            items: std::array::from_fn(|_| None),
            len: 0,
        }
    }

    /// Adds an item; beyond `N` (never, by construction) the item is dropped.
    fn push(&mut self, t: T) {
        if let Some(slot) = self.items.get_mut(self.len) {
            *slot = Some(t);
            self.len += 1;
        }
    }

    fn iter(&self) -> impl Iterator<Item = &T> {
        self.items[..self.len].iter().flatten()
    }

    fn get(&self, i: usize) -> Option<&T> {
        self.items.get(i).and_then(Option::as_ref)
    }

    fn len(&self) -> usize {
        self.len
    }
}

impl<T, const N: usize> FromIterator<T> for Few<T, N> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let mut f = Few::new();
        for t in iter {
            f.push(t);
        }
        f
    }
}

/// Fills unused slots of the fixed tier array; never handed to `check_all`.
struct NoTier;

impl Tier for NoTier {
    fn lock_order(&self) -> (u64, usize) {
        (u64::MAX, usize::MAX)
    }

    fn enter(&self, _now: u64, inner: &mut dyn FnMut(crate::limits::Outcome) -> bool) -> bool {
        inner(crate::limits::Outcome::Admit {
            remaining: u64::MAX,
            reset_after: std::time::Duration::ZERO,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher as _;

    fn book(stores: &Stores, consumers: &str) -> PlanBook {
        let yaml = format!(
            "listeners:\n  public: {{ addr: \"127.0.0.1:0\" }}\nplans:\n  gold: {{ rate: 10, burst: 10, quota: {{ limit: 100, period: day }} }}\n  silver: {{ rate: 1, burst: 1 }}\nconsumers:\n{consumers}"
        );
        let cfg = tollgate_config::parse_str(&yaml, &Default::default(), std::path::Path::new("."))
            .unwrap_or_else(|p| panic!("{p:?}"));
        PlanBook::build(&cfg, stores).unwrap_or_else(|p| panic!("{p:?}"))
    }

    fn plan_of(book: &PlanBook, c: &Consumer) -> Option<String> {
        book.consumer(c)
            .and_then(|e| e.plan)
            .map(|i| book.plans[i].0.clone())
    }

    #[test]
    fn a_consumer_finds_its_limits_by_index_and_otherwise_by_id() {
        let stores = Stores::new(10);
        let b = book(
            &stores,
            "  alice: { plan: gold }\n  bob: { plan: silver }\n  carol: { override: { rate: 5, burst: 5, expires_at: \"2099-01-01T00:00:00Z\" } }\n",
        );
        let alice = Consumer::new("alice", None, None, Vec::new()).at_index(0);
        assert_eq!(plan_of(&b, &alice).as_deref(), Some("gold"));
        // An index from another snapshot (a cached consumer) is checked against the id.
        let stale_bob = Consumer::new("bob", None, None, Vec::new()).at_index(0);
        assert_eq!(plan_of(&b, &stale_bob).as_deref(), Some("silver"));
        // Named by a certificate: no index, found by id (its override applies).
        let carol = Consumer::new("carol", None, None, Vec::new());
        assert!(b.consumer(&carol).is_some_and(|e| e.over.is_some()));
        assert!(b.any_override);
        let stranger = Consumer::new("mallory", None, None, Vec::new()).at_index(1);
        assert!(b.consumer(&stranger).is_none());
        let e = b.consumer(&alice).unwrap_or_else(|| panic!("alice"));
        assert!(e.plan_bucket.is_some() && e.plan_quota.is_some() && e.override_bucket.is_none());
        let e = b.consumer(&stale_bob).unwrap_or_else(|| panic!("bob"));
        assert!(e.plan_bucket.is_some() && e.plan_quota.is_none());
    }

    /// A reload pins the same state for the same keys, whatever the consumers' new positions;
    /// a consumer moved to another plan gets that plan's bucket.
    #[test]
    fn a_reload_keeps_each_keys_pinned_state() {
        let stores = Stores::new(10);
        let first = book(&stores, "  alice: { plan: gold }\n  bob: { plan: gold }\n");
        let bucket = |b: &PlanBook, id: &str| {
            b.consumer(&Consumer::new(id, None, None, Vec::new()))
                .and_then(|e| e.plan_bucket.clone())
                .unwrap_or_else(|| panic!("{id} has no plan bucket"))
        };
        // Aaron sorts first, so every index moves.
        let second = book(
            &stores,
            "  aaron: { plan: gold }\n  alice: { plan: gold }\n  bob: { plan: silver }\n",
        );
        assert!(Arc::ptr_eq(
            &bucket(&first, "alice"),
            &bucket(&second, "alice")
        ));
        assert!(!Arc::ptr_eq(
            &bucket(&first, "bob"),
            &bucket(&second, "bob")
        ));
        assert!(!Arc::ptr_eq(
            &bucket(&second, "aaron"),
            &bucket(&second, "alice")
        ));
        assert_eq!(&*bucket(&second, "bob").key().scope, "plan-silver");
    }

    #[test]
    fn pinned_state_is_shared_while_held_and_purged_once_nothing_holds_it() {
        let stores = Stores::new(10);
        let key = |s: &str| Key {
            scope: Arc::from(s),
            subject: Subject::Everyone,
        };
        let a = stores.pin_bucket(key("route:a"));
        assert!(Arc::ptr_eq(&a, &stores.pin_bucket(key("route:a"))));
        let q = stores.pin_quota(key("quota:a"));
        drop(a);
        // Held by nobody now: dropped when the table reaches its purge size.
        let held: Vec<_> = (0..1_100)
            .map(|i| stores.pin_bucket(key(&format!("route:{i}"))))
            .collect();
        assert_eq!(stores.pinned_len(), 1_100 + 1);
        assert!(Arc::ptr_eq(&q, &stores.pin_quota(key("quota:a"))));
        drop(held);
    }

    #[test]
    fn keys_are_equal_by_content_whether_or_not_they_share_their_names() {
        let scope: Arc<str> = Arc::from("plan-gold");
        let alice: Arc<str> = Arc::from("alice");
        let key = Key {
            scope: scope.clone(),
            subject: Subject::Consumer(alice.clone()),
        };
        // The same allocations (a lookup within one snapshot) and fresh ones (after a reload).
        assert_eq!(key, key.clone());
        let reloaded = Key {
            scope: Arc::from("plan-gold"),
            subject: Subject::Consumer(Arc::from("alice")),
        };
        assert_eq!(key, reloaded);
        let h = |k: &Key| foldhash::fast::FixedState::with_seed(7).hash_one(k);
        assert_eq!(h(&key), h(&reloaded));
        for other in [
            Key {
                scope: scope.clone(),
                subject: Subject::Consumer(Arc::from("bob")),
            },
            Key {
                scope: Arc::from("plan-silver"),
                subject: Subject::Consumer(alice),
            },
            Key {
                scope: scope.clone(),
                subject: Subject::Everyone,
            },
            Key {
                scope,
                subject: Subject::Ip(IpAddr::from([127, 0, 0, 1])),
            },
        ] {
            assert_ne!(key, other);
        }
    }
}
