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
    /// A client must finish sending the request head within this time.
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
    /// Idle keep-alive connections from clients are closed after this.
    pub idle_timeout: Duration,
}

impl Default for Server {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            max_uri_bytes: 8 * 1024,
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            max_body_bytes: None,
            trusted_proxies: Vec::new(),
            shutdown_grace: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
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
