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
        }
    }

    /// The request id as text; ids are validated visible ASCII, so this never fails in practice.
    pub fn request_id_str(&self) -> &str {
        self.request_id.to_str().unwrap_or("-")
    }
}
