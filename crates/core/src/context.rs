//! The per-request context every pipeline stage reads and extends.

use http::{HeaderName, HeaderValue};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

/// Which public listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Listener {
    Public,
    Tls,
}

/// What the router found: names for logs and metrics, never raw request paths.
#[derive(Debug)]
pub struct RouteMeta {
    pub tenant: Arc<str>,
    pub api: Arc<str>,
    pub route_id: Arc<str>,
    /// The path template, e.g. `/v2/accounts/{id}`.
    pub template: Arc<str>,
}

/// Scopes granted to a request, wherever they come from (a token's claims, a consumer's
/// grants); shared, so recording them on a request costs a reference count.
pub trait Scopes: Send + Sync + std::fmt::Debug {
    fn list(&self) -> &[String];

    fn contains(&self, scope: &str) -> bool {
        self.list().iter().any(|s| s == scope)
    }
}

/// A caller the gateway knows: from config, the management API or an authorizer.
#[derive(Debug, PartialEq, Eq)]
pub struct Consumer {
    pub id: Arc<str>,
    pub tenant: Option<Arc<str>>,
    pub plan: Option<Arc<str>>,
    /// Scopes the consumer holds; tokens may carry fewer.
    pub scopes: Box<[String]>,
    /// `id` as a header value, rendered once (ids are validated header-safe at load).
    pub id_header: Option<HeaderValue>,
    /// `tenant` and `plan` as header values, rendered once.
    pub tenant_header: Option<HeaderValue>,
    pub plan_header: Option<HeaderValue>,
}

impl Consumer {
    pub fn new(id: &str, tenant: Option<&str>, plan: Option<&str>, scopes: Vec<String>) -> Self {
        Self {
            id: Arc::from(id),
            tenant: tenant.map(Arc::from),
            plan: plan.map(Arc::from),
            scopes: scopes.into(),
            id_header: HeaderValue::from_str(id).ok(),
            tenant_header: tenant.and_then(|t| HeaderValue::from_str(t).ok()),
            plan_header: plan.and_then(|p| HeaderValue::from_str(p).ok()),
        }
    }
}

impl Scopes for Consumer {
    fn list(&self) -> &[String] {
        &self.scopes
    }
}

/// The identity in a verified client certificate.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// Subject common name.
    pub common_name: Option<String>,
    /// DNS names from the subjectAltName extension.
    pub dns_names: Vec<String>,
    /// The subject as an RFC 4514 string, e.g. `CN=ledger-reader,O=Tollgate Demo`.
    pub subject: String,
}

impl ClientCert {
    /// Names that can identify the holder: the CN first, then DNS SANs.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.common_name
            .as_deref()
            .into_iter()
            .chain(self.dns_names.iter().map(String::as_str))
    }
}

/// State of one request as it moves through the pipeline.
#[derive(Debug)]
pub struct RequestCtx {
    pub request_id: HeaderValue,
    pub client_ip: IpAddr,
    pub listener: Listener,
    pub started: Instant,
    /// Set once routing succeeded.
    pub route: Option<Arc<RouteMeta>>,
    /// Which of the route's upstreams to use: 0 is the route's own, `n` the n-th version
    /// variant. Set by the versioning policy.
    pub variant: usize,
    /// Headers that policies want on the response, whatever produced it.
    pub response_headers: Vec<(HeaderName, HeaderValue)>,
    /// Fields the gateway adds to the upstream request (`X-Consumer-*`), written by the
    /// upstream client after the request's own. Only for names a client cannot send us: those
    /// are stripped from every request before the policies run.
    pub upstream_headers: Vec<(HeaderName, HeaderValue)>,
    /// The verified client certificate of the connection (TLS listener with mTLS).
    pub client_cert: Option<Arc<ClientCert>>,
    /// Set by authentication.
    pub consumer: Option<Arc<Consumer>>,
    /// Scopes granted to this request: a token's scopes, or the consumer's for other schemes.
    pub scopes: Option<Arc<dyn Scopes>>,
    /// Which scheme identified the caller (`api_key`, `jwt`, ...), for logs.
    pub auth_scheme: Option<&'static str>,
    /// Which limit refused the request, for metrics and usage (`plan`, `quota`, `ip`, ...).
    pub throttled: Option<&'static str>,
    /// Things released when the response ends or the client leaves (concurrency permits).
    pub held: Vec<Box<dyn std::any::Any + Send + Sync>>,
}

impl RequestCtx {
    pub fn new(
        request_id: HeaderValue,
        client_ip: IpAddr,
        listener: Listener,
        started: Instant,
    ) -> Self {
        Self {
            request_id,
            client_ip,
            listener,
            started,
            route: None,
            variant: 0,
            response_headers: Vec::new(),
            upstream_headers: Vec::new(),
            client_cert: None,
            consumer: None,
            scopes: None,
            auth_scheme: None,
            throttled: None,
            held: Vec::new(),
        }
    }

    /// The request id as text; ids are validated visible ASCII, so this never fails in practice.
    pub fn request_id_str(&self) -> &str {
        self.request_id.to_str().unwrap_or("-")
    }
}
