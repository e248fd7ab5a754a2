//! The config file's shape. Every struct refuses unknown keys, so a typo is an error rather than
//! a silently ignored setting. Maps are `BTreeMap` so that compile order, and therefore error
//! order and route precedence checks, are deterministic.

use crate::{Duration, Timestamp};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listeners: Listeners,
    #[serde(default)]
    pub server: Server,
    #[serde(default)]
    pub access_log: AccessLog,
    #[serde(default)]
    pub upstreams: BTreeMap<String, Upstream>,
    #[serde(default)]
    pub tenants: BTreeMap<String, Tenant>,
    /// How callers prove who they are: key hashing, JWT issuers, the gateway's own token
    /// issuer, mTLS, SigV4 and external authorizers.
    #[serde(default)]
    pub identity: Identity,
    /// Who may call: consumers and their credentials (stored hashed, never in plaintext).
    #[serde(default)]
    pub consumers: BTreeMap<String, Consumer>,
    /// Usage plans: per-consumer rate, burst and quota.
    #[serde(default)]
    pub plans: BTreeMap<String, Plan>,
    /// Gateway-wide (account) limits and how quotas align to the calendar.
    #[serde(default)]
    pub limits: Limits,
    /// Rules evaluated before authentication: CIDR lists and per-IP rate rules.
    #[serde(default)]
    pub edge: Edge,
}

/// A socket address, parsed at load time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddr(pub SocketAddr);

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.trim().parse().map(ListenAddr).map_err(|_| {
            serde::de::Error::custom(format!("`{s}` is not a socket address like 127.0.0.1:8080"))
        })
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Listeners {
    /// Plain HTTP/1.1 and h2c (prior knowledge).
    pub public: Option<PlainListener>,
    /// TLS with HTTP/1.1 and h2 by ALPN.
    pub tls: Option<TlsListener>,
    /// Admin API, metrics and health.
    pub admin: Option<AdminListener>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PlainListener {
    pub addr: ListenAddr,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsListener {
    pub addr: ListenAddr,
    /// Certificates chosen by SNI. The first one also answers clients that send no SNI or an
    /// unknown name.
    pub certificates: Vec<Certificate>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    /// PEM chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminListener {
    pub addr: ListenAddr,
    /// Environment variable holding the bearer token for admin routes. The token itself never
    /// appears in the file.
    #[serde(default = "default_token_env")]
    pub token_env: String,
}

fn default_token_env() -> String {
    "TOLLGATE_ADMIN_TOKEN".into()
}

/// Limits and behaviour shared by the public listeners.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// Cap on concurrently open client connections across listeners; further connections wait
    /// in the kernel's accept queue.
    pub max_connections: usize,
    /// A client must send a complete request head within this time; an idle keep-alive
    /// connection waiting for its next request is closed after it too.
    pub header_read_timeout: Duration,
    /// Request line (method, target, version) limit → 414 for a longer target.
    pub max_uri_bytes: usize,
    /// Total size of all request header names and values → 431 beyond.
    pub max_header_bytes: usize,
    /// Number of request header fields → 431 beyond.
    pub max_headers: usize,
    /// Default request body limit for every route (413 beyond); routes may lower or raise it.
    pub max_body_bytes: Option<u64>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// How long in-flight requests may run after SIGTERM before the process exits anyway.
    pub shutdown_grace: Duration,
    /// An HTTP/2 connection whose responses cannot move for this long (the client takes no
    /// more data) is closed, and its requests give back their upstream slots.
    pub send_timeout: Duration,
}

impl Default for Server {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            max_uri_bytes: 8 * 1024,
            max_header_bytes: 32 * 1024,
            max_headers: 64,
            max_body_bytes: None,
            trusted_proxies: Vec::new(),
            shutdown_grace: Duration::from_secs(30),
            send_timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLog {
    pub enabled: bool,
    /// `stdout`, `stderr`, or a file path (appended to).
    pub target: String,
}

impl Default for AccessLog {
    fn default() -> Self {
        Self {
            enabled: true,
            target: "stdout".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub targets: Vec<Target>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    /// Time until the upstream's response headers arrive.
    #[serde(default = "default_response_timeout")]
    pub response_timeout: Duration,
    #[serde(default = "default_pool_idle_timeout")]
    pub pool_idle_timeout: Duration,
    #[serde(default = "default_pool_max_idle")]
    pub pool_max_idle_per_target: usize,
    /// Requests in flight to one target at a time; further ones wait for a slot until their
    /// response timeout. Each in-flight request holds one connection, so this and the idle pool
    /// bound the connections to a target, which HTTP/2 clients (many streams per connection)
    /// would otherwise multiply without limit.
    #[serde(default = "default_max_requests_per_target")]
    pub max_requests_per_target: usize,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_response_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_pool_idle_timeout() -> Duration {
    Duration::from_secs(90)
}
fn default_pool_max_idle() -> usize {
    256
}
fn default_max_requests_per_target() -> usize {
    1024
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// `http://host:port`; no path.
    pub url: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub apis: BTreeMap<String, Api>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Api {
    /// Default upstream for the API's routes.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Deprecation applied to every route of the API unless a route says otherwise.
    #[serde(default)]
    pub deprecation: Option<Deprecation>,
    /// Listeners the API's routes are served on; default: `public` and `tls`.
    #[serde(default)]
    pub listeners: Option<Vec<ListenerName>>,
    /// Authentication for every route of the API unless a route says otherwise.
    #[serde(default)]
    pub auth: Option<RouteAuth>,
    /// Limits shared by all routes of the API (the API/stage tier).
    #[serde(default)]
    pub limits: Option<RouteLimits>,
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum ListenerName {
    Public,
    Tls,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Stable name used in logs and metrics; default `METHOD path` of the first method.
    #[serde(default)]
    pub id: Option<String>,
    /// Path template; `{name}` matches one segment.
    pub path: String,
    /// HTTP methods; at least one.
    pub methods: Vec<String>,
    #[serde(default)]
    pub upstream: Option<String>,
    #[serde(default)]
    pub listeners: Option<Vec<ListenerName>>,
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    #[serde(default)]
    pub deprecation: Option<Deprecation>,
    /// The version this path served is retired: answer 410 naming its successor.
    #[serde(default)]
    pub gone: Option<Gone>,
    /// Pick another upstream by the requested version (media type, query or header).
    #[serde(default)]
    pub versions: Option<VersionSelect>,
    /// Who may call this route; none means anyone.
    #[serde(default)]
    pub auth: Option<RouteAuth>,
    /// Rate limits, quotas, spike arrest and concurrency for this route.
    #[serde(default)]
    pub limits: Option<RouteLimits>,
}

/// RFC 9745 `Deprecation`, RFC 8594 `Sunset` and a successor link.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Deprecation {
    /// When the API was (or will be) deprecated, RFC 3339.
    pub since: Timestamp,
    /// When it stops working, RFC 3339.
    #[serde(default)]
    pub sunset: Option<Timestamp>,
    /// `Link: <successor>; rel="successor-version"`.
    #[serde(default)]
    pub successor: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Gone {
    pub successor: String,
    #[serde(default)]
    pub sunset: Option<Timestamp>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VersionSelect {
    /// Query parameter carrying the version, e.g. `version` for `?version=1`.
    #[serde(default)]
    pub query: Option<String>,
    /// Request header carrying the version, e.g. `Api-Version`.
    #[serde(default)]
    pub header: Option<String>,
    pub variants: Vec<VersionVariant>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VersionVariant {
    /// Value of the query parameter or header that selects this variant.
    pub version: String,
    /// `Accept` media type that selects this variant, e.g. `application/vnd.bank.v1+json`.
    #[serde(default)]
    pub media_type: Option<String>,
    pub upstream: String,
    #[serde(default)]
    pub deprecation: Option<Deprecation>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// File with the server secret that keys the HMAC-SHA256 of API keys and OAuth client
    /// secrets (`tollgate hash` computes a value for the config). Required when any consumer
    /// has an API key or a client secret.
    #[serde(default)]
    pub hash_secret_file: Option<PathBuf>,
    /// Header carrying API keys.
    #[serde(default = "default_api_key_header")]
    pub api_key_header: String,
    /// Trusted JWT issuers.
    #[serde(default)]
    pub jwt: Vec<JwtIssuer>,
    /// The gateway as an OAuth2 token issuer (client credentials grant).
    #[serde(default)]
    pub token_issuer: Option<TokenIssuer>,
    /// Client certificates on the TLS listener.
    #[serde(default)]
    pub mtls: Option<Mtls>,
    /// AWS Signature Version 4.
    #[serde(default)]
    pub sigv4: Option<SigV4>,
    /// External authorizers by name.
    #[serde(default)]
    pub authorizers: BTreeMap<String, Authorizer>,
    /// Also send `X-Consumer-Tenant` and `X-Consumer-Plan` upstream.
    #[serde(default)]
    pub forward_tenant_and_plan: bool,
}

impl Default for Identity {
    fn default() -> Self {
        Self {
            hash_secret_file: None,
            api_key_header: default_api_key_header(),
            jwt: Vec::new(),
            token_issuer: None,
            mtls: None,
            sigv4: None,
            authorizers: BTreeMap::new(),
            forward_tenant_and_plan: false,
        }
    }
}

fn default_api_key_header() -> String {
    "x-api-key".into()
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JwtIssuer {
    /// Expected `iss`.
    pub issuer: String,
    /// Accepted `aud` values; a token must name at least one.
    pub audiences: Vec<String>,
    /// JWKS endpoint (http://).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// JWKS file, relative to the config.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Shared secret for HMAC-signed tokens (HS256/384/512; `algorithms` names exactly one).
    /// The only way HMAC tokens are accepted: never with a public key.
    #[serde(default)]
    pub hmac_secret_file: Option<PathBuf>,
    /// Allowed algorithms, e.g. `[RS256, ES256]`.
    #[serde(default = "default_jwt_algorithms")]
    pub algorithms: Vec<String>,
    #[serde(default = "default_leeway")]
    pub leeway: Duration,
    /// Background JWKS refresh period (a `Cache-Control: max-age` shortens it).
    #[serde(default = "default_jwks_refresh")]
    pub refresh_interval: Duration,
    /// Unknown `kid`s trigger a refetch at most this often.
    #[serde(default = "default_min_refetch")]
    pub min_refetch_interval: Duration,
}

fn default_jwt_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into()]
}
fn default_leeway() -> Duration {
    Duration::from_secs(30)
}
fn default_jwks_refresh() -> Duration {
    Duration::from_secs(300)
}
fn default_min_refetch() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenIssuer {
    /// `iss` of tokens the gateway signs.
    pub issuer: String,
    /// `aud` of tokens the gateway signs.
    pub audience: String,
    /// PEM private key (EC P-256 → ES256).
    pub signing_key: PathBuf,
    /// Token lifetime, at most 15 minutes.
    #[serde(default = "default_token_ttl")]
    pub ttl: Duration,
}

fn default_token_ttl() -> Duration {
    Duration::from_secs(600)
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Mtls {
    /// PEM bundle of CAs that client certificates must chain to.
    pub client_ca: PathBuf,
    /// Header carrying the verified certificate subject to the upstream.
    #[serde(default = "default_cert_header")]
    pub subject_header: String,
}

fn default_cert_header() -> String {
    "x-client-cert-subject".into()
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SigV4 {
    pub service: String,
    pub region: String,
    #[serde(default = "default_sigv4_skew")]
    pub max_skew: Duration,
}

fn default_sigv4_skew() -> Duration {
    Duration::from_secs(300)
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Authorizer {
    /// `http://host:port/path` that receives `POST {"method","path","headers","client_ip"}`.
    pub url: String,
    #[serde(default = "default_authorizer_timeout")]
    pub timeout: Duration,
    /// Decisions are cached by the `Authorization` header for this long.
    #[serde(default = "default_authorizer_ttl")]
    pub cache_ttl: Duration,
}

fn default_authorizer_timeout() -> Duration {
    Duration::from_millis(500)
}
fn default_authorizer_ttl() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Consumer {
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub plan: Option<String>,
    /// Scopes the consumer may hold (and may request as an OAuth client).
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub api_keys: Vec<ApiKey>,
    /// HMAC of the OAuth2 client secret; the client id is the consumer id.
    #[serde(default)]
    pub client_secret_hash: Option<String>,
    /// JWT `sub`/`client_id` values that mean this consumer; default: the consumer id.
    #[serde(default)]
    pub jwt_subjects: Option<Vec<String>>,
    /// Client certificate subjects (CN or DNS SAN) that mean this consumer.
    #[serde(default)]
    pub certificate_subjects: Vec<String>,
    #[serde(default)]
    pub sigv4_keys: Vec<SigV4Key>,
    /// Temporary rate override, e.g. to throttle one partner during an incident.
    #[serde(rename = "override", default)]
    pub rate_override: Option<Override>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// Stable id for revocation and logs.
    pub id: String,
    /// `hmac-sha256:<hex>` of the key under the identity hash secret.
    pub hash: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SigV4Key {
    pub access_key: String,
    /// File holding the secret key (SigV4 needs the secret itself to recompute signatures).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Environment variable holding the secret key.
    #[serde(default)]
    pub secret_env: Option<String>,
}

/// Authentication a route requires.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteAuth {
    /// Any one of these schemes identifies the caller.
    #[serde(default)]
    pub any: Vec<AuthScheme>,
    /// All of these schemes must succeed and name the same consumer.
    #[serde(default)]
    pub all: Vec<AuthScheme>,
    /// Scopes the caller must hold (from its token or, for other schemes, its consumer).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// For `mtls`: certificate subjects allowed on this route (empty: any known consumer).
    #[serde(default)]
    pub certificate_subjects: Vec<String>,
    /// For `authorizer`: which configured authorizer decides.
    #[serde(default)]
    pub authorizer: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum AuthScheme {
    ApiKey,
    Jwt,
    Mtls,
    Sigv4,
    Authorizer,
}

/// A token bucket: `rate` requests per second sustained, `burst` at once.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub rate: f64,
    pub burst: u32,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Hour,
    Day,
    Week,
    Month,
}

/// At most `limit` requests per calendar `period`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    pub limit: u64,
    pub period: Period,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub rate: f64,
    pub burst: u32,
    #[serde(default)]
    pub quota: Option<Quota>,
    /// Per-route overrides of rate and burst inside the plan, by route id.
    #[serde(default)]
    pub routes: BTreeMap<String, RateLimit>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Gateway-wide (account) token bucket over all requests.
    #[serde(default)]
    pub gateway: Option<RateLimit>,
    /// Offset from UTC at which quota days, weeks and months begin, e.g. `+02:00`.
    #[serde(default)]
    pub quota_utc_offset: Option<String>,
    /// How limits shared through Redis behave; used only when `TOLLGATE_REDIS_URL` is set.
    #[serde(default)]
    pub redis: RedisLimits,
}

/// The Redis backend of traffic control. The URL comes from `TOLLGATE_REDIS_URL`, never from
/// the file, so the password stays out of config and logs.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RedisLimits {
    /// Longest a request waits for Redis before its failure mode applies.
    pub timeout: Duration,
    /// What a limited route does while Redis is unreachable; routes may override it.
    pub failure_mode: FailureMode,
    /// Gateway nodes sharing the Redis limits: `local` mode divides rates, bursts and quotas
    /// by this so the cluster as a whole stays near its limits.
    pub expected_nodes: u32,
    pub breaker: RedisBreaker,
    /// Prefix of every Redis key, so several gateways (or environments) can share a Redis.
    pub key_prefix: String,
}

impl Default for RedisLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(50),
            failure_mode: FailureMode::Local,
            expected_nodes: 1,
            breaker: RedisBreaker::default(),
            key_prefix: "tollgate:".into(),
        }
    }
}

/// Stops calling a failing Redis: open after `failures` consecutive failures, then one probe
/// request per `cool_down` until one succeeds.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RedisBreaker {
    pub failures: u32,
    pub cool_down: Duration,
}

impl Default for RedisBreaker {
    fn default() -> Self {
        Self {
            failures: 5,
            cool_down: Duration::from_secs(1),
        }
    }
}

/// What a limited request does when the shared limits cannot be consulted.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum FailureMode {
    /// Decide with the in-process limiter, limits divided by `expected_nodes`.
    #[default]
    Local,
    /// Admit without limiting (fail open).
    Allow,
    /// Refuse with 503 (fail closed).
    Deny,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Edge {
    /// When set, only these networks may call.
    #[serde(default)]
    pub allow: Vec<ipnet::IpNet>,
    /// These networks get 403 on every route.
    #[serde(default)]
    pub deny: Vec<ipnet::IpNet>,
    /// More than `max_requests` in `window` from one client IP blocks it for `block_for`.
    #[serde(default)]
    pub ip_rules: Vec<IpRule>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IpRule {
    pub max_requests: u32,
    pub window: Duration,
    pub block_for: Duration,
}

/// Who shares a route-level limit.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LimitScope {
    /// One bucket for all callers of the route.
    #[default]
    All,
    /// One bucket per consumer.
    Consumer,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteLimit {
    pub rate: f64,
    pub burst: u32,
    #[serde(default)]
    pub per: LimitScope,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteQuota {
    pub limit: u64,
    pub period: Period,
    #[serde(default)]
    pub per: LimitScope,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SpikeArrest {
    /// Requests per second, evenly spaced: N/s admits one request every 1/N s, no burst.
    pub rate: f64,
    #[serde(default)]
    pub per: LimitScope,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Concurrency {
    /// Requests in flight at once.
    pub max: u32,
    #[serde(default)]
    pub per: LimitScope,
}

/// Traffic control on a route (or every route of an API).
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RouteLimits {
    #[serde(default)]
    pub rate: Option<RouteLimit>,
    /// A business limit, e.g. 100 payment initiations per consumer per hour.
    #[serde(default)]
    pub quota: Option<RouteQuota>,
    #[serde(default)]
    pub spike_arrest: Option<SpikeArrest>,
    #[serde(default)]
    pub concurrency: Option<Concurrency>,
    /// Overrides `limits.redis.failure_mode` for this route (or API).
    #[serde(default)]
    pub failure_mode: Option<FailureMode>,
}

/// A temporary per-consumer override of its plan's rate and burst (incident response).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Override {
    pub rate: f64,
    pub burst: u32,
    pub expires_at: Timestamp,
}
