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

/// Names the upstream learns the caller by. A client cannot send them: every request is
/// stripped of `X-Consumer-*` before the policies run.
pub const X_CONSUMER_ID: HeaderName = HeaderName::from_static("x-consumer-id");
pub const X_CONSUMER_TENANT: HeaderName = HeaderName::from_static("x-consumer-tenant");
pub const X_CONSUMER_PLAN: HeaderName = HeaderName::from_static("x-consumer-plan");

/// A caller the gateway knows: from config, the management API or an authorizer.
#[derive(Debug, PartialEq, Eq)]
pub struct Consumer {
    pub id: Arc<str>,
    pub tenant: Option<Arc<str>>,
    pub plan: Option<Arc<str>>,
    /// Scopes the consumer holds; tokens may carry fewer.
    pub scopes: Box<[String]>,
    /// `X-Consumer-ID` (and `-Tenant`, `-Plan` where the identity config forwards them),
    /// rendered once: the upstream client writes them after the request's own fields for every
    /// request this consumer makes (ids are validated header-safe at load).
    pub upstream_fields: Box<[(HeaderName, HeaderValue)]>,
    /// Where this consumer sits in its config snapshot's consumer table, so that a policy's
    /// per-consumer table of the same snapshot is indexed rather than searched by id. `None`
    /// for a consumer the config does not list (named by a certificate or an authorizer).
    pub index: Option<u32>,
}

impl Consumer {
    /// A consumer whose requests tell the upstream its id only.
    pub fn new(id: &str, tenant: Option<&str>, plan: Option<&str>, scopes: Vec<String>) -> Self {
        Self::forwarding(id, tenant, plan, scopes, false)
    }

    /// A consumer whose requests also tell the upstream its tenant and plan when
    /// `tenant_and_plan` is set.
    pub fn forwarding(
        id: &str,
        tenant: Option<&str>,
        plan: Option<&str>,
        scopes: Vec<String>,
        tenant_and_plan: bool,
    ) -> Self {
        let mut fields = Vec::with_capacity(3);
        let mut add = |name: HeaderName, v: Option<&str>| {
            if let Some(v) = v.and_then(|v| HeaderValue::from_str(v).ok()) {
                fields.push((name, v));
            }
        };
        add(X_CONSUMER_ID, Some(id));
        if tenant_and_plan {
            add(X_CONSUMER_TENANT, tenant);
            add(X_CONSUMER_PLAN, plan);
        }
        Self {
            id: Arc::from(id),
            tenant: tenant.map(Arc::from),
            plan: plan.map(Arc::from),
            scopes: scopes.into(),
            upstream_fields: fields.into(),
            index: None,
        }
    }

    /// The same consumer at `index` in its snapshot's consumer table.
    pub fn at_index(mut self, index: u32) -> Self {
        self.index = Some(index);
        self
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

#[cfg(test)]
mod tests {
    use super::*;

    fn names(c: &Consumer) -> Vec<(&str, &[u8])> {
        c.upstream_fields
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes()))
            .collect()
    }

    #[test]
    fn upstream_fields_follow_the_forwarding_choice() {
        let scopes = vec!["accounts:read".to_string()];
        let plain = Consumer::new("partner-gold", Some("acme"), Some("gold"), scopes.clone());
        assert_eq!(names(&plain), [("x-consumer-id", &b"partner-gold"[..])]);
        let all = Consumer::forwarding("partner-gold", Some("acme"), Some("gold"), scopes, true);
        assert_eq!(
            names(&all),
            [
                ("x-consumer-id", &b"partner-gold"[..]),
                ("x-consumer-tenant", &b"acme"[..]),
                ("x-consumer-plan", &b"gold"[..]),
            ]
        );
        // Missing tenant and plan add nothing; a value no header may carry is left out.
        let odd = Consumer::forwarding("cert-cn", None, Some("bad\nplan"), Vec::new(), true);
        assert_eq!(names(&odd), [("x-consumer-id", &b"cert-cn"[..])]);
    }
}
