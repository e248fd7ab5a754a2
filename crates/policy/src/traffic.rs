//! The `Traffic` policy of one route: every rate tier (gateway, API, route, the consumer's
//! plan or its temporary override), spike arrest and quotas (the plan's and the route's
//! business limit) checked together, all or nothing, then the concurrency slot.
//!
//! Limiter state lives in [`Stores`], which outlives config reloads: a reload changes limits,
//! never hands everyone a fresh burst.
//!
//! With `TOLLGATE_REDIS_URL` set ([`connect_redis_from_env`]) the rate and quota tiers are
//! decided by one Lua script in Redis instead ([`crate::limits::redis`]), so several gateway
//! processes share them; the policy then answers `Step::Wait`. When Redis fails, times out or
//! its breaker is open, the route's failure mode decides: `local` (the in-process stores, every
//! limit divided by `limits.redis.expected_nodes`), `allow` or `deny` (503). Without Redis the
//! synchronous path is unchanged: no future, no allocation beyond today's.

use crate::ConfigMap;
use crate::limits::breaker::BreakerSettings;
use crate::limits::headers::{PolicyItem, ratelimit_one, ratelimit_policy, retry_after};
use crate::limits::redis::{InvalidRedisUrl, RedisLimiter, RedisSettings};
use crate::limits::{
    ConcurrencyLimiter, KeyedLimiter, KeyedQuota, Limit, QuotaLimit, TemporaryOverride, Tier,
    Verdict, check_all_into,
};
use http::HeaderName;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;
use tollgate_config::{Config, FailureMode, LimitScope, Period, RouteLimits};
use tollgate_core::{Clock, Decision, GatewayError, Kind, Phase, Policy, RequestCtx, Step};

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
    /// Set once at start when limits are shared through Redis; the in-process stores above are
    /// then the `local` fallback.
    pub redis: OnceLock<Arc<RedisLimiter>>,
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
        }
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
    pub name: Arc<str>,
    /// The plan's quota as a RateLimit policy name (names must be unique within a field).
    pub quota_name: Arc<str>,
    pub rate: Limit,
    pub quota: Option<QuotaLimit>,
    /// Per-route rate overrides inside the plan, by route id.
    pub routes: ConfigMap<String, Limit>,
}

/// Plans and per-consumer overrides of one config, shared by its routes.
#[derive(Debug, Default)]
pub struct PlanBook {
    pub plans: ConfigMap<String, PlanLimits>,
    pub overrides: ConfigMap<String, TemporaryOverride>,
    pub gateway: Option<Limit>,
    pub utc_offset: i32,
    /// How the shared limits are consulted (only with Redis).
    pub redis: RedisSettings,
    /// What limited routes do when Redis fails, unless a route says otherwise.
    pub failure_mode: FailureMode,
    /// `local` failure mode divides every limit by this.
    pub expected_nodes: u32,
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
    pub fn build(cfg: &Config) -> Result<Self, Vec<(String, String)>> {
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
            redis: RedisSettings {
                timeout: r.timeout.get(),
                breaker: BreakerSettings {
                    failures: r.breaker.failures.max(1),
                    cool_down: r.breaker.cool_down.get(),
                },
                key_prefix: Arc::from(r.key_prefix.as_str()),
            },
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
            book.plans.insert(
                name.clone(),
                PlanLimits {
                    name: Arc::from(format!("plan-{name}")),
                    quota_name: Arc::from(format!("quota-{name}")),
                    rate,
                    quota: p.quota.map(|q| {
                        QuotaLimit::new(q.limit, period(q.period)).with_offset(utc_offset)
                    }),
                    routes,
                },
            );
        }
        for (id, c) in &cfg.consumers {
            if let Some(o) = &c.rate_override
                && let Some(l) = limit(o.rate, o.burst, format!("consumers.{id}.override"))
            {
                book.overrides.insert(
                    id.clone(),
                    TemporaryOverride {
                        limit: l,
                        expires_at: o.expires_at.0,
                    },
                );
            }
        }
        if problems.is_empty() {
            Ok(book)
        } else {
            Err(problems)
        }
    }
}

#[derive(Debug, Clone)]
struct Scoped<L> {
    name: Arc<str>,
    limit: L,
    per: LimitScope,
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
    api: Option<Scoped<Limit>>,
    route: Option<Scoped<Limit>>,
    spike: Option<Scoped<Limit>>,
    quota: Option<Scoped<QuotaLimit>>,
    concurrency: Option<Scoped<u32>>,
    gateway_scope: Arc<str>,
    override_scope: Arc<str>,
    /// Every plan as it applies to this route, by plan name: one lookup per request finds the
    /// plan's rate here, its quota and its `RateLimit-Policy`.
    plans: ConfigMap<String, RoutePlan>,
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
        let rate = |name: String, l: &tollgate_config::RouteLimit| {
            Limit::new(l.rate, l.burst).ok().map(|limit| Scoped {
                name: Arc::from(name),
                limit,
                per: l.per,
            })
        };
        let api = api_limits
            .and_then(|l| l.rate.as_ref())
            .and_then(|l| rate(format!("api:{scope_prefix}"), l));
        let route = route_limits
            .and_then(|l| l.rate.as_ref())
            .and_then(|l| rate(format!("route:{route_id}"), l));
        let spike = route_limits
            .and_then(|l| l.spike_arrest.as_ref())
            .and_then(|s| {
                Limit::spike_arrest(s.rate).ok().map(|limit| Scoped {
                    name: Arc::from(format!("spike:{route_id}")),
                    limit,
                    per: s.per,
                })
            });
        let quota = route_limits.and_then(|l| l.quota.as_ref()).map(|q| Scoped {
            name: Arc::from(format!("quota:{route_id}")),
            limit: QuotaLimit::new(q.limit, period(q.period)).with_offset(book.utc_offset),
            per: q.per,
        });
        let concurrency = route_limits
            .and_then(|l| l.concurrency.as_ref())
            .map(|c| Scoped {
                name: Arc::from(format!("concurrency:{route_id}")),
                limit: c.max,
                per: c.per,
            });
        let consumers_only = api.is_none()
            && route.is_none()
            && spike.is_none()
            && quota.is_none()
            && concurrency.is_none()
            && book.gateway.is_none();
        if consumers_only && book.plans.is_empty() && book.overrides.is_empty() {
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
            gateway_scope: Arc::from("gateway"),
            override_scope: Arc::from("override"),
            plans: ConfigMap::default(),
            policy_header_no_plan: http::HeaderValue::from_static(""),
            consumers_only,
        };
        me.policy_header_no_plan = me.policy_header(None, None);
        let plans = me
            .book
            .plans
            .iter()
            .map(|(name, p)| {
                let mut plan = RoutePlan {
                    name: p.name.clone(),
                    rate: *p.routes.get(route_id).unwrap_or(&p.rate),
                    quota: p.quota,
                    quota_name: p.quota_name.clone(),
                    policy_header: http::HeaderValue::from_static(""),
                };
                plan.policy_header = me.policy_header(Some(&plan), None);
                (name.clone(), plan)
            })
            .collect();
        me.plans = plans;
        Some(me)
    }

    /// The route's `RateLimit-Policy` for a caller on `plan` (or under `over`).
    fn policy_header(&self, plan: Option<&RoutePlan>, over: Option<&Limit>) -> http::HeaderValue {
        let mut items: Vec<PolicyItem<'_>> = Vec::new();
        if let Some(g) = &self.book.gateway {
            items.push(PolicyItem::rate(&self.gateway_scope, g));
        }
        for s in [&self.api, &self.route, &self.spike].into_iter().flatten() {
            items.push(PolicyItem::rate(&s.name, &s.limit));
        }
        match (over, plan) {
            (Some(o), _) => items.push(PolicyItem::rate(&self.override_scope, o)),
            (None, Some(p)) => items.push(PolicyItem::rate(&p.name, &p.rate)),
            (None, None) => {}
        }
        if let Some(q) = plan.and_then(|p| p.quota.as_ref().map(|q| (&p.quota_name, q))) {
            items.push(PolicyItem::quota(q.0, q.1));
        }
        if let Some(q) = &self.quota {
            items.push(PolicyItem::quota(&q.name, &q.limit));
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
    name: Arc<str>,
    /// The plan's per-route override for this route, else the plan's rate.
    rate: Limit,
    quota: Option<QuotaLimit>,
    quota_name: Arc<str>,
    /// `RateLimit-Policy` for the plan's consumers on this route, rendered at compile time.
    policy_header: http::HeaderValue,
}

/// One rate tier of a request: which kind, its bucket, its limit, its policy name.
struct RateItem<'a> {
    kind: TierKind,
    key: Key,
    limit: Limit,
    name: &'a Arc<str>,
}

/// One quota tier of a request.
struct QuotaItem<'a> {
    kind: TierKind,
    key: Key,
    limit: QuotaLimit,
    name: &'a Arc<str>,
}

/// The tiers that apply to one request: keys and limits owned, so that they can move into the
/// future of a Redis check; names borrowed from the route's policy. Rate tiers first, then
/// quotas (the verdict's order). Also the caller's plan and live override, looked up once.
struct Applicable<'a> {
    rates: Few<RateItem<'a>, 5>,
    quotas: Few<QuotaItem<'a>, 2>,
    plan: Option<&'a RoutePlan>,
    over: Option<&'a TemporaryOverride>,
}

impl Applicable<'_> {
    fn is_empty(&self) -> bool {
        self.rates.len() == 0 && self.quotas.len() == 0
    }

    /// Every limit divided among `nodes` gateways (the `local` failure mode): rates, bursts
    /// and quotas, each node keeping at least one request.
    fn divided(mut self, nodes: u32) -> Self {
        if nodes <= 1 {
            return self;
        }
        for r in self.rates.iter_mut() {
            let burst = (r.limit.burst() / nodes).max(1);
            if let Ok(d) = Limit::new(r.limit.rate() / f64::from(nodes), burst) {
                r.limit = d;
            }
        }
        for q in self.quotas.iter_mut() {
            q.limit.max = q.limit.max.div_ceil(u64::from(nodes)).max(1);
        }
        self
    }

    /// (kind, policy name) of the `i`-th tier in verdict order.
    fn kind(&self, i: usize) -> Option<(TierKind, &Arc<str>)> {
        match i.checked_sub(self.rates.len()) {
            None => self.rates.get(i).map(|r| (r.kind, r.name)),
            Some(q) => self.quotas.get(q).map(|q| (q.kind, q.name)),
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
    /// Keys and limits for every tier that applies to this request.
    /// `plan` is the caller's plan on this route, already looked up.
    fn applicable<'a>(
        &'a self,
        ctx: &RequestCtx,
        plan: Option<&'a RoutePlan>,
        now: SystemTime,
    ) -> Applicable<'a> {
        // At most 5 rate tiers and 2 quotas: fixed-size, so the check allocates nothing.
        let mut a = Applicable {
            rates: Few::new(),
            quotas: Few::new(),
            plan: None,
            over: None,
        };
        if let Some(g) = &self.book.gateway {
            a.rates.push(RateItem {
                kind: TierKind::Gateway,
                key: Key {
                    scope: self.gateway_scope.clone(),
                    subject: Subject::Everyone,
                },
                limit: *g,
                name: &self.gateway_scope,
            });
        }
        for (kind, s) in [
            (TierKind::Api, &self.api),
            (TierKind::Route, &self.route),
            (TierKind::Spike, &self.spike),
        ] {
            if let Some(s) = s {
                a.rates.push(RateItem {
                    kind,
                    key: Key {
                        scope: s.name.clone(),
                        subject: Self::subject(ctx, s.per),
                    },
                    limit: s.limit,
                    name: &s.name,
                });
            }
        }
        if let Some(c) = &ctx.consumer {
            a.plan = plan;
            // A live override gets its own bucket: a bucket's state is only meaningful under
            // the limit that filled it, and an override must bite (or relieve) at once.
            a.over = self
                .book
                .overrides
                .get(&*c.id)
                .filter(|o| now < o.expires_at);
            // Per plan: a consumer moved to another plan starts on a bucket filled under that
            // plan's limit, not the old plan's debt.
            let effective = match (a.over, a.plan) {
                (Some(o), _) => Some((o.limit, &self.override_scope)),
                (None, Some(p)) => Some((p.rate, &p.name)),
                (None, None) => None,
            };
            if let Some((limit, scope)) = effective {
                a.rates.push(RateItem {
                    kind: TierKind::Plan,
                    key: Key {
                        scope: scope.clone(),
                        subject: Subject::Consumer(c.id.clone()),
                    },
                    limit,
                    name: scope,
                });
            }
            if let Some(p) = a.plan
                && let Some(q) = p.quota
            {
                a.quotas.push(QuotaItem {
                    kind: TierKind::PlanQuota,
                    key: Key {
                        scope: p.quota_name.clone(),
                        subject: Subject::Consumer(c.id.clone()),
                    },
                    limit: q,
                    name: &p.quota_name,
                });
            }
        }
        if let Some(q) = &self.quota {
            a.quotas.push(QuotaItem {
                kind: TierKind::RouteQuota,
                key: Key {
                    scope: q.name.clone(),
                    subject: Self::subject(ctx, q.per),
                },
                limit: q.limit,
                name: &q.name,
            });
        }
        a
    }

    /// The all-or-nothing check against the in-process stores, into `verdict`. False only if
    /// there were more tiers than a check takes (never, by construction).
    fn check_local(&self, a: &Applicable<'_>, now: SystemTime, verdict: &mut Verdict) -> bool {
        let stores = &*self.stores;
        let rate_tiers: Few<_, 5> = a
            .rates
            .iter()
            .map(|r| stores.rates.tier(&r.key, &r.limit))
            .collect();
        let quota_tiers: Few<_, 2> = a
            .quotas
            .iter()
            .map(|q| stores.quotas.tier(&q.key, &q.limit))
            .collect();
        let mut refs: [&dyn Tier; 7] = [&NoTier; 7];
        let mut n = 0;
        for t in rate_tiers.iter() {
            refs[n] = t;
            n += 1;
        }
        for t in quota_tiers.iter() {
            refs[n] = t;
            n += 1;
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
    ) -> (Applicable<'a>, Result<Option<Verdict>, GatewayError>) {
        let prefix = &*self.book.redis.key_prefix;
        let rates: Vec<(String, Limit)> = a
            .rates
            .iter()
            .map(|r| (redis_key(prefix, 'r', &r.key), r.limit))
            .collect();
        let quotas: Vec<(String, QuotaLimit)> = a
            .quotas
            .iter()
            .map(|q| (redis_key(prefix, 'q', &q.key), q.limit))
            .collect();
        let error = match redis
            .check_all(&self.book.redis, &rates, &quotas, now)
            .await
        {
            Ok(v) => return (a, Ok(Some(v))),
            Err(e) => e,
        };
        tracing::debug!(error = %error, mode = ?self.failure_mode, "shared limits unavailable");
        match self.failure_mode {
            FailureMode::Local => {
                let a = a.divided(self.book.expected_nodes);
                let mut v = Verdict::from_outcomes(&[]);
                let checked = self.check_local(&a, now, &mut v);
                (a, Ok(checked.then_some(v)))
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
                .with_extension("limit", "shared-limits".into());
                (a, Err(e))
            }
        }
    }

    /// Headers, the refusal if a tier rejected, then the concurrency slot. `verdict` is `None`
    /// when the rate and quota tiers were not consulted (the `allow` failure mode).
    fn finish(
        &self,
        ctx: &mut RequestCtx,
        a: &Applicable<'_>,
        verdict: Option<&Verdict>,
    ) -> Result<(), GatewayError> {
        // RateLimit headers: the route's policies (rendered at compile time unless an override
        // is live), and the service limit of the tightest tier.
        if let Some(verdict) = verdict
            && !a.is_empty()
        {
            let policy = match a.over {
                Some(o) => self.policy_header(a.plan, Some(&o.limit)),
                None => a
                    .plan
                    .map_or(&self.policy_header_no_plan, |p| &p.policy_header)
                    .clone(),
            };
            ctx.response_headers.push((RATELIMIT_POLICY, policy));
            let tight = verdict.rejected().or_else(|| verdict.most_restrictive());
            if let Some(i) = tight
                && let Some(o) = verdict.outcomes().get(i)
            {
                let name = a.kind(i).map_or("", |k| &**k.1);
                ctx.response_headers
                    .push((RATELIMIT, ratelimit_one(name, o)));
            }
            if let Some(i) = verdict.rejected()
                && let Some((kind, name)) = a.kind(i)
            {
                ctx.throttled = Some(kind.label());
                let retry = verdict.retry_after().unwrap_or_default();
                return Err(self.refuse(kind, name, retry));
            }
        }
        if let Some(c) = &self.concurrency {
            let key = Key {
                scope: c.name.clone(),
                subject: Self::subject(ctx, c.per),
            };
            match self.stores.concurrency.try_acquire(key, c.limit) {
                // Held until the response body ends or the client goes away.
                Some(permit) => ctx.held.push(Box::new(permit)),
                None => {
                    ctx.throttled = Some("concurrency");
                    return Err(GatewayError::new(
                        Kind::ConcurrencyLimited,
                        format!("more than {} requests in flight", c.limit),
                    )
                    .with_header(
                        http::header::RETRY_AFTER,
                        retry_after(std::time::Duration::from_secs(1)),
                    )
                    .with_extension("limit", "concurrency".into()));
                }
            }
        }
        Ok(())
    }
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
        let plan = ctx
            .consumer
            .as_ref()
            .and_then(|c| c.plan.as_deref())
            .and_then(|p| self.plans.get(p));
        // Only a consumer's own tiers apply here: a caller with neither a plan nor an override
        // has nothing to check, not even the time.
        if self.consumers_only
            && plan.is_none()
            && ctx
                .consumer
                .as_ref()
                .is_none_or(|c| !self.book.overrides.contains_key(&*c.id))
        {
            return Step::Continue;
        }
        let now = self.clock.now();
        let a = self.applicable(ctx, plan, now);
        if a.is_empty() {
            // No rate or quota tier: at most the concurrency slot.
            return step(self.finish(ctx, &a, None));
        }
        if let Some(redis) = &self.redis {
            return Step::Wait(Box::pin(async move {
                // Nothing borrowed from a lock lives across this await: the check owns its
                // keys, the context is only touched after it.
                let (a, checked) = self.check_shared(redis, a, now).await;
                let result = checked.and_then(|v| self.finish(ctx, &a, v.as_ref()));
                match result {
                    Ok(()) => Decision::Continue,
                    Err(e) => Decision::Reject(e),
                }
            }));
        }
        let mut verdict = Verdict::from_outcomes(&[]);
        let checked = self.check_local(&a, now, &mut verdict);
        step(self.finish(ctx, &a, checked.then_some(&verdict)))
    }
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

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.items[..self.len].iter_mut().flatten()
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
