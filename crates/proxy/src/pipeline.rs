//! The request pipeline: limits → routing → policies by phase → upstream → response hooks →
//! metrics and access log. One function per stage, one error type throughout.

use crate::access_log::Record;
use crate::body::ClientBody;
use crate::body::{RequestBody, ResponseBody};
use crate::compile::Snapshot;
use crate::forward;
use crate::gateway::Shared;
use crate::metrics::RouteMetrics;
use crate::router::{Builtin, CompiledRoute, Lookup};
use crate::upstream::Target;
use bytes::Bytes;
use http::header::HOST;
use http::{HeaderName, HeaderValue, Method, Request, Response, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};
use tollgate_core::trace::{TraceParent, new_request_id, sane_request_id};
use tollgate_core::{Decision, GatewayError, Kind, Listener, RequestCtx, Step};

use forward::TRACEPARENT;
pub use forward::X_REQUEST_ID;

/// What the accept loop knows about a connection, computed once per connection.
#[derive(Debug, Clone)]
pub(crate) struct ConnMeta {
    pub peer: SocketAddr,
    /// The peer IP rendered for `X-Forwarded-For`.
    pub peer_value: HeaderValue,
    pub listener: Listener,
    /// The verified client certificate (TLS listener with a client CA).
    pub client_cert: Option<Arc<tollgate_core::ClientCert>>,
}

/// The client's fields the pipeline itself reads, found by the protocol before the policies
/// run: HTTP/1.1's head parser recognises them as it goes (no lookups), HTTP/2 looks them up.
/// They are the client's as sent, which is what `X-Forwarded-Host`, the trace context and the
/// request id are about, whatever a policy later does to the map.
#[derive(Debug, Default)]
pub(crate) struct HeadFields {
    /// The first `X-Request-ID`.
    pub(crate) request_id: Option<HeaderValue>,
    /// The first `Host`.
    pub(crate) host: Option<HeaderValue>,
    /// The first `traceparent`.
    pub(crate) traceparent: Option<HeaderValue>,
    /// Some field is hop-by-hop (one of the fixed set, which includes `Connection`): without
    /// one there is nothing to remove before forwarding.
    pub(crate) hop_by_hop: bool,
}

impl HeadFields {
    pub(crate) fn of(h: &http::HeaderMap) -> Self {
        Self {
            request_id: h.get(X_REQUEST_ID).cloned(),
            host: h.get(HOST).cloned(),
            traceparent: h.get(TRACEPARENT).cloned(),
            hop_by_hop: h.keys().any(forward::is_hop_by_hop),
        }
    }
}

/// What the upstream stage learned, for the log.
#[derive(Default)]
struct UpstreamInfo {
    target: Option<Arc<Target>>,
    duration: Option<Duration>,
}

pub(crate) async fn handle(
    shared: Arc<Shared>,
    conn: ConnMeta,
    req: Request<ClientBody>,
    fields: &HeadFields,
) -> Result<Response<LoggedBody>, Infallible> {
    let started = Instant::now();
    let snap = shared.snapshot.load_full();
    let (parts, body) = req.into_parts();
    let request_id = match &fields.request_id {
        Some(v) if sane_request_id(v) => v.clone(),
        _ => new_request_id(&*shared.ids),
    };
    let client_ip = forward::client_ip(conn.peer.ip(), &parts.headers, &snap.trusted_proxies);
    // The context is made in place: it is large, and a move is a copy.
    let mut pending = Unanswered {
        shared: &shared,
        snap: &snap,
        listener: conn.listener,
        ctx: RequestCtx::new(request_id, client_ip, conn.listener, started),
        route: None,
        info: UpstreamInfo::default(),
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        version: parts.version,
        started,
        // Declared by the framing (`Content-Length`, or none at all): no field lookup.
        bytes_in: body.size_hint().exact(),
        answered: false,
    };
    pending.ctx.client_cert = conn.client_cert.clone();
    let mut body = Some(body);
    let p = &mut pending;
    let result = run(
        &shared,
        &snap,
        &mut p.ctx,
        &conn,
        parts,
        fields,
        &mut body,
        &mut p.route,
        &mut p.info,
    )
    .await;
    pending.answered = true;
    let ctx = &mut pending.ctx;
    let route = pending.route.take();
    let info = std::mem::take(&mut pending.info);
    let method = std::mem::take(&mut pending.method);
    let uri = std::mem::take(&mut pending.uri);
    let (version, bytes_in) = (pending.version, pending.bytes_in);
    // Refused before the body was read: read it off the wire so the client sees our answer.
    if let Some(b) = body.take() {
        crate::body::linger(b);
    }
    let (mut resp, error) = match result {
        Ok(r) => (r, None),
        Err(e) => {
            if e.fault() != tollgate_core::Fault::Client {
                tracing::warn!(
                    request_id = ctx.request_id_str(),
                    kind = e.kind.slug(),
                    cause = e.cause.as_deref().unwrap_or(""),
                    "request failed"
                );
            }
            let r = e.to_response(ctx.request_id_str()).map(ResponseBody::full);
            (r, Some(e))
        }
    };

    // A 405 matched a path but no route: the path's version notice still applies.
    if route.is_none()
        && error
            .as_ref()
            .is_some_and(|e| e.kind == Kind::MethodNotAllowed)
        && let Some(p) = snap.router(conn.listener).version_policy(uri.path())
    {
        let (mut head, body) = resp.into_parts();
        p.on_response(ctx, &mut head);
        resp = Response::from_parts(head, body);
    }
    // Response hooks run for every response once the route is known, whatever produced it.
    if let Some(r) = &route
        && !r.policies.is_empty()
    {
        // A policy that reads or changes response fields needs them all in the map.
        if r.edits_response {
            crate::body::materialize(&mut resp);
        }
        let (mut head, body) = resp.into_parts();
        for p in r.policies.iter().rev() {
            p.on_response(ctx, &mut head);
        }
        resp = Response::from_parts(head, body);
    }
    // Neither the policies' fields nor `X-Request-ID` go into the map here: they travel with
    // the body ([`LoggedBody::added_fields`], [`LoggedBody::request_id`]) and the protocol
    // writes them, which spares the map its first allocation on a limited route.
    let added = std::mem::take(&mut ctx.response_headers);

    let status = resp.status().as_u16();
    let completion = Completion {
        shared: shared.clone(),
        route: match route {
            Some(r) => Recorder::Route(r),
            None => Recorder::Unmatched(snap.unmatched.clone()),
        },
        consumer: ctx.consumer.as_ref().map(|c| c.id.clone()),
        throttled: ctx.throttled,
        held: std::mem::take(&mut ctx.held),
        log: snap.config().access_log.enabled,
        request_id: std::mem::replace(&mut ctx.request_id, HeaderValue::from_static("-")),
        client_ip: ctx.client_ip,
        listener: conn.listener,
        version,
        method,
        uri,
        status,
        started,
        upstream: info.target,
        upstream_duration: info.duration,
        bytes_in,
        bytes_out: 0,
        error: error.as_ref().map(|e| (e.kind.slug(), e.fault().as_str())),
    };
    Ok(resp.map(|inner| LoggedBody {
        inner,
        added,
        done: Some(Box::new(completion)),
        ended: false,
    }))
}

#[allow(clippy::too_many_arguments)]
async fn run(
    shared: &Shared,
    snap: &Snapshot,
    ctx: &mut RequestCtx,
    conn: &ConnMeta,
    mut parts: http::request::Parts,
    client: &HeadFields,
    body: &mut Option<ClientBody>,
    route_out: &mut Option<Arc<CompiledRoute>>,
    info: &mut UpstreamInfo,
) -> Result<Response<ResponseBody>, GatewayError> {
    check_limits(snap, &parts)?;
    // RFC 9113 §8.3.1: a `Host` naming another entity than `:authority` makes the request
    // malformed; let through, it would decide what the upstream is told the host is.
    if parts.version == Version::HTTP_2
        && let (Some(a), Some(h)) = (parts.uri.authority(), client.host.as_ref())
        && !h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes())
    {
        return Err(GatewayError::new(
            Kind::BadRequest,
            "the Host field names another authority than :authority",
        ));
    }
    // Edge rules come before routing and authentication: refusing an address must cost little
    // and apply to every path, known or not.
    if let Some(edge) = &snap.edge {
        use tollgate_policy::edge::{EdgeRules, Verdict};
        let now = shared.policy_env.clock.now();
        let verdict = if edge.is_shared() {
            // Boxed: the round trip's future is large, and only this configuration needs it.
            Box::pin(edge.check_shared(ctx.client_ip, now)).await
        } else {
            edge.check(ctx.client_ip, now)
        };
        match verdict {
            Verdict::Pass => {}
            Verdict::RateLimited {
                rule,
                retry_after_secs,
            } => {
                ctx.throttled = Some("ip");
                return Err(edge.rate_limited(ctx.client_ip, rule, retry_after_secs));
            }
            Verdict::Unavailable => return Err(EdgeRules::unavailable()),
            v => return Err(EdgeRules::forbidden(ctx.client_ip, v)),
        }
    }
    let route = route(snap, ctx.listener, &parts.method, parts.uri.path())?.clone();
    ctx.route = Some(route.meta.clone());
    *route_out = Some(route.clone());

    // The client's hop-by-hop fields go before the policies see the request: they describe
    // the client's connection, never the one to the upstream.
    if client.hop_by_hop {
        forward::strip_hop_by_hop(&mut parts.headers);
    }
    let noticed = forward::strip_identity(
        &mut parts.headers,
        &snap.identity.cert_header,
        &snap.identity.api_key_header,
    );
    for p in route.policies.iter() {
        let decision = match p.on_request(ctx, &mut parts) {
            Step::Continue => continue,
            Step::Reject(e) => Decision::Reject(e),
            Step::Respond(r) => Decision::Respond(r),
            Step::Wait(fut) => fut.await,
        };
        match decision {
            Decision::Continue => {}
            Decision::Reject(e) => return Err(e),
            Decision::Respond(r) => return Ok(r.map(ResponseBody::full)),
        }
    }
    // A partner's key is its secret, whatever the route's schemes: the upstream learns the
    // caller from `X-Consumer-ID`, and has no business holding the key (or logging it).
    if noticed.api_key {
        parts.headers.remove(&snap.identity.api_key_header);
    }

    if let Some(limit) = route.max_body_bytes
        && let Some(len) = body.as_ref().and_then(|b| b.size_hint().exact())
        && len > limit
    {
        return Err(GatewayError::new(
            Kind::PayloadTooLarge,
            format!("the request body exceeds the limit of {limit} bytes"),
        ));
    }

    if let Some(b) = route.builtin {
        let Some(body) = body.take() else {
            return Err(GatewayError::new(
                Kind::Internal,
                "request body already taken",
            ));
        };
        return builtin(snap, b, parts, body).await;
    }

    let upstream = route.upstreams.get(ctx.variant).ok_or_else(|| {
        GatewayError::new(Kind::Internal, "the route has no upstream").with_cause(format!(
            "route {} variant {} has no upstream",
            route.meta.route_id, ctx.variant
        ))
    })?;
    let target = upstream.pick().clone();

    // Trust is decided per request: a reload may change the trusted networks.
    let peer_trusted = forward::is_trusted(conn.peer.ip(), &snap.trusted_proxies);
    // The target's authority first: HTTP/2's `:authority` (RFC 9113 §8.3.1), or an HTTP/1.1
    // absolute-form target, for which `Host` is ignored (RFC 9112 §3.2.2).
    let host = parts
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        .or_else(|| client.host.clone());
    let proto = match ctx.listener {
        Listener::Public => "http",
        Listener::Tls => "https",
    };
    let (traceparent, continued) =
        TraceParent::child_or_new(client.traceparent.as_ref(), &*shared.ids);
    // W3C Trace Context §3.3: a vendor state describes the trace it came with; with that
    // trace's `traceparent` missing or invalid, we started another and the state is void.
    if noticed.tracestate && !continued {
        parts.headers.remove(forward::TRACESTATE);
    }
    let mut forwarded = forward::Forwarded::new(
        &parts.headers,
        &conn.peer_value,
        peer_trusted,
        proto,
        host,
        ctx.request_id.clone(),
        traceparent,
    );
    if let Some(c) = &ctx.consumer {
        forwarded.extra = &c.upstream_fields;
    }

    let Some(body) = body.take() else {
        return Err(GatewayError::new(
            Kind::Internal,
            "request body already taken",
        ));
    };
    let req = Request::from_parts(parts, RequestBody::new(body, route.max_body_bytes));
    let sent = Instant::now();
    info.target = Some(target.clone());
    let result = upstream
        .send(&target, req, Some(forwarded), sent, snap.limits.body_pause)
        .await;
    info.duration = Some(sent.elapsed());
    let resp = result.inspect_err(|e| {
        if e.fault() == tollgate_core::Fault::Upstream {
            shared
                .metrics
                .upstream_errors
                .get_or_create(&crate::metrics::UpstreamErrorLabels {
                    upstream: upstream.name.to_string(),
                    kind: e.kind.slug(),
                })
                .inc();
        }
    })?;
    // No hop-by-hop removal here: the upstream client leaves those fields out as it parses.
    Ok(resp.map(ResponseBody::Upstream))
}

/// Endpoints the gateway answers itself (OAuth2 token issuance and its key set).
async fn builtin(
    snap: &Snapshot,
    b: Builtin,
    parts: http::request::Parts,
    body: ClientBody,
) -> Result<Response<ResponseBody>, GatewayError> {
    use http_body_util::BodyExt;
    let resp = match b {
        Builtin::Jwks => tollgate_policy::auth::token_endpoint::jwks(&snap.identity),
        Builtin::Token => {
            let limit = tollgate_policy::auth::token_endpoint::MAX_TOKEN_REQUEST_BYTES;
            let bytes = match http_body_util::Limited::new(body, limit).collect().await {
                Ok(c) => c.to_bytes(),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                    return Err(GatewayError::new(
                        Kind::PayloadTooLarge,
                        format!("token requests are limited to {limit} bytes"),
                    ));
                }
                Err(_) => {
                    let r = tollgate_policy::auth::token_endpoint::unreadable_body();
                    return Ok(r.map(ResponseBody::full));
                }
            };
            tollgate_policy::auth::token_endpoint::token(
                &snap.identity,
                parts.headers.get(http::header::AUTHORIZATION),
                parts.headers.get(http::header::CONTENT_TYPE),
                &bytes,
            )
        }
    };
    Ok(resp.map(ResponseBody::full))
}

/// Refuses oversized request targets and header sections with a problem document before any
/// routing work. hyper's own (higher) limits stay as a backstop against truly huge heads.
fn check_limits(snap: &Snapshot, parts: &http::request::Parts) -> Result<(), GatewayError> {
    let l = &snap.limits;
    let target_len = parts.uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if target_len > l.max_uri_bytes {
        return Err(GatewayError::new(
            Kind::UriTooLong,
            format!("the request target exceeds {} bytes", l.max_uri_bytes),
        ));
    }
    if parts.headers.len() > l.max_headers {
        return Err(GatewayError::new(
            Kind::HeadersTooLarge,
            format!("more than {} request header fields", l.max_headers),
        ));
    }
    let size: usize = parts
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if size > l.max_header_bytes {
        return Err(GatewayError::new(
            Kind::HeadersTooLarge,
            format!("request header fields exceed {} bytes", l.max_header_bytes),
        ));
    }
    Ok(())
}

fn route<'s>(
    snap: &'s Snapshot,
    listener: Listener,
    method: &Method,
    path: &str,
) -> Result<&'s Arc<CompiledRoute>, GatewayError> {
    // Most paths have neither a dot nor an escape: one scan settles both checks below.
    if path.bytes().any(|b| b == b'.' || b == b'%') {
        // Dot segments would let `/public/../internal` reach an upstream as a different
        // resource than the one we routed; refuse rather than guess how it normalises.
        if has_dot_segment(path) {
            return Err(GatewayError::new(
                Kind::BadRequest,
                "the path contains `.` or `..` segments",
            ));
        }
        // RFC 3986 §2.1: `%` starts two hex digits. An upstream would decode anything else in
        // its own way (or refuse it), so the path it sees might not be the one we routed.
        if has_bad_escape(path) {
            return Err(GatewayError::new(
                Kind::BadRequest,
                "the path has a `%` that is not followed by two hex digits",
            ));
        }
    }
    match snap.router(listener).lookup(method, path) {
        Lookup::Found(r) => Ok(r),
        Lookup::MethodNotAllowed(allow) => Err(GatewayError::new(
            Kind::MethodNotAllowed,
            format!(
                "{method} is not allowed here; allowed: {}",
                allow.to_str().unwrap_or("")
            ),
        )
        .with_header(http::header::ALLOW, allow.clone())),
        Lookup::NotFound => Err(GatewayError::new(
            Kind::NotFound,
            "no API is registered at this path",
        )),
    }
}

/// Segments split at `/` and at an encoded one (`%2F`), which an upstream may decode before it
/// normalises: `/a/..%2Fadmin` is `/admin` to some.
fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|seg| {
        let mut rest = seg.as_bytes();
        loop {
            let cut = rest
                .windows(3)
                .position(|w| w[0] == b'%' && w[1] == b'2' && (w[2] | 0x20) == b'f');
            let (part, next) = match cut {
                Some(i) => (&rest[..i], Some(&rest[i + 3..])),
                None => (rest, None),
            };
            if is_dot_segment(part) {
                return true;
            }
            match next {
                Some(n) => rest = n,
                None => return false,
            }
        }
    })
}

fn has_bad_escape(path: &str) -> bool {
    let b = path.as_bytes();
    let mut i = 0;
    while let Some(at) = b[i..].iter().position(|&c| c == b'%') {
        let at = i + at;
        match b.get(at + 1..at + 3) {
            Some([h, l]) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => i = at + 3,
            _ => return true,
        }
    }
    false
}

/// `.` or `..`, with any dot possibly percent-encoded as `%2e`/`%2E`.
fn is_dot_segment(mut seg: &[u8]) -> bool {
    let mut dots = 0;
    while !seg.is_empty() {
        if seg[0] == b'.' {
            seg = &seg[1..];
        } else if seg.len() >= 3 && seg[0] == b'%' && seg[1] == b'2' && (seg[2] | 0x20) == b'e' {
            seg = &seg[3..];
        } else {
            return false;
        }
        dots += 1;
    }
    dots == 1 || dots == 2
}

/// A request between its head and its response. A client that leaves meanwhile makes the
/// connection drop the request's future, and with it this: the request is still recorded (a
/// log line with status 499 and `aborted`, its metrics and usage), and what it held (its
/// concurrency slots) is given back.
struct Unanswered<'a> {
    shared: &'a Arc<Shared>,
    snap: &'a Snapshot,
    listener: Listener,
    ctx: RequestCtx,
    route: Option<Arc<CompiledRoute>>,
    info: UpstreamInfo,
    method: Method,
    uri: Uri,
    version: Version,
    started: Instant,
    bytes_in: Option<u64>,
    answered: bool,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        Completion {
            shared: self.shared.clone(),
            route: match self.route.take() {
                Some(r) => Recorder::Route(r),
                None => Recorder::Unmatched(self.snap.unmatched.clone()),
            },
            consumer: self.ctx.consumer.as_ref().map(|c| c.id.clone()),
            throttled: self.ctx.throttled,
            held: std::mem::take(&mut self.ctx.held),
            log: self.snap.config().access_log.enabled,
            request_id: self.ctx.request_id.clone(),
            client_ip: self.ctx.client_ip,
            listener: self.listener,
            version: self.version,
            method: std::mem::take(&mut self.method),
            uri: std::mem::take(&mut self.uri),
            status: tollgate_core::CLIENT_CLOSED_REQUEST,
            started: self.started,
            upstream: self.info.target.take(),
            upstream_duration: None,
            bytes_in: self.bytes_in,
            bytes_out: 0,
            error: None,
        }
        .finish(true);
    }
}

/// Everything needed to record a request once its response has been fully sent (or the client
/// went away): metrics and the access log line.
pub(crate) struct Completion {
    shared: Arc<Shared>,
    route: Recorder,
    consumer: Option<Arc<str>>,
    throttled: Option<&'static str>,
    /// Released (dropped) when the request is recorded: concurrency permits.
    held: Vec<Box<dyn std::any::Any + Send + Sync>>,
    log: bool,
    request_id: HeaderValue,
    client_ip: std::net::IpAddr,
    listener: Listener,
    version: Version,
    method: Method,
    uri: Uri,
    status: u16,
    started: Instant,
    upstream: Option<Arc<Target>>,
    upstream_duration: Option<Duration>,
    bytes_in: Option<u64>,
    bytes_out: u64,
    error: Option<(&'static str, &'static str)>,
}

/// Where a request is counted: its route (moved from the request, not cloned), or the
/// snapshot's series for requests no route matched.
enum Recorder {
    Route(Arc<CompiledRoute>),
    Unmatched(Arc<RouteMetrics>),
}

impl Completion {
    fn finish(self, aborted: bool) {
        // A request its client left is aborted, whatever became of the answer nobody reads.
        let aborted = aborted || self.status == tollgate_core::CLIENT_CLOSED_REQUEST;
        let elapsed = self.started.elapsed();
        let route = match &self.route {
            Recorder::Route(r) => {
                r.metrics.record(self.status, elapsed);
                Some(&**r)
            }
            Recorder::Unmatched(m) => {
                m.record(self.status, elapsed);
                None
            }
        };
        if let Some(tier) = self.throttled {
            self.shared.metrics.throttled(tier);
        }
        // The response is over: give back concurrency slots.
        drop(self.held);
        // One read of the wall clock stamps both the usage minute and the log line.
        let at = self.shared.policy_env.clock.now();
        if let Some(r) = route {
            self.shared.usage.record(
                &r.meta.tenant,
                &r.meta.api,
                self.consumer.as_ref(),
                self.status,
                self.throttled.is_some(),
                elapsed,
                at,
            );
        }
        if !self.log {
            return;
        }
        self.shared.access_log.log(&Record {
            at,
            request_id: self.request_id.to_str().unwrap_or("-"),
            client_ip: self.client_ip,
            listener: match self.listener {
                Listener::Public => "public",
                Listener::Tls => "tls",
            },
            protocol: match self.version {
                Version::HTTP_2 => "HTTP/2",
                Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            method: &self.method,
            path: self.uri.path(),
            route: route.map(|r| &r.log),
            consumer: self.consumer.as_deref(),
            status: self.status,
            duration: elapsed,
            upstream_duration: self.upstream_duration,
            upstream: self.upstream.as_deref().map(|t| &t.label_json),
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            error: self.error.map(|e| e.0),
            fault: self.error.map(|e| e.1),
            aborted,
        });
    }
}

/// The response body as sent to the client; records the request when it ends or is dropped.
pub struct LoggedBody {
    inner: ResponseBody,
    /// Fields the policies add to every response (`RateLimit`, ...), after the response's own.
    added: Vec<(HeaderName, HeaderValue)>,
    /// Boxed: the response moves through several layers on its way to the writer, and one
    /// allocation costs less than carrying the record through every move.
    done: Option<Box<Completion>>,
    /// Polled past its end. With `inner.is_end_stream()` this says the body was sent whole;
    /// the record itself waits for the drop, which the writer does once the response is on
    /// the wire, so bookkeeping stays off the response's path.
    ended: bool,
}

impl LoggedBody {
    /// The upstream's fields when they were kept as they arrived; the response's map holds
    /// only what the gateway added. See [`crate::upstream::RawFields`].
    pub(crate) fn raw_fields(&self) -> Option<&crate::upstream::RawFields> {
        self.inner.raw_fields()
    }

    /// The response's `X-Request-ID`, which is not in its map (until the request is recorded).
    pub(crate) fn request_id(&self) -> Option<&HeaderValue> {
        self.done.as_ref().map(|c| &c.request_id)
    }

    /// Fields the policies add, written after the response's own; not in its map either.
    pub(crate) fn added_fields(&self) -> &[(HeaderName, HeaderValue)] {
        &self.added
    }

    /// Drops the content of an answer to HEAD (RFC 9110 §9.3.2), whose fields stay as they
    /// are. For protocols that would otherwise send whatever the body holds: a problem
    /// document or any other body the gateway wrote itself.
    pub(crate) fn clear_for_head(&mut self) {
        self.inner = ResponseBody::Full(None);
    }
}

/// Puts everything [`handle`] leaves to the protocol into the response's map: fields kept raw,
/// the policies' fields and `X-Request-ID`. For clients whose responses are written from the
/// map alone (HTTP/2).
pub(crate) fn materialize(resp: &mut Response<LoggedBody>) {
    if let Some(raw) = resp.body_mut().inner.take_raw_fields() {
        raw.into_map(resp.headers_mut());
    }
    let added = std::mem::take(&mut resp.body_mut().added);
    let map = resp.headers_mut();
    for (k, v) in added {
        map.append(k, v);
    }
    if let Some(id) = resp.body().request_id().cloned() {
        resp.headers_mut().insert(X_REQUEST_ID, id);
    }
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = crate::upstream::UpstreamBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let (Some(d), Some(c)) = (f.data_ref(), this.done.as_mut()) {
                    c.bytes_out += d.len() as u64;
                }
            }
            Some(Err(_)) => {
                if let Some(c) = this.done.take() {
                    (*c).finish(true);
                }
            }
            None => this.ended = true,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if let Some(c) = self.done.take() {
            // hyper may drop a body it never needed to poll (HEAD, 304, empty): not an abort.
            let aborted = !(self.ended || self.inner.is_end_stream());
            (*c).finish(aborted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{has_bad_escape, has_dot_segment};

    #[test]
    fn percent_signs_must_start_an_escape() {
        for p in ["/a%", "/a%2", "/a%zz", "/a%2g/b", "/%%41", "/a%20%"] {
            assert!(has_bad_escape(p), "{p}");
        }
        for p in ["/", "/a%20b", "/%2F%2f", "/a/%41%42%43", "/100%25"] {
            assert!(!has_bad_escape(p), "{p}");
        }
    }

    #[test]
    fn dot_segments_are_detected_plain_and_encoded() {
        for p in [
            "/a/../b",
            "/a/./b",
            "/..",
            "/a/%2e%2e/b",
            "/a/%2E./b",
            "/a/.%2e",
            // An encoded slash is a separator to an upstream that decodes it first.
            "/a/..%2fadmin",
            "/a/x%2F..%2Fy",
            "/a/%2e%2e%2f",
        ] {
            assert!(has_dot_segment(p), "{p}");
        }
        for p in [
            "/a/b",
            "/a/.well-known",
            "/a/..b",
            "/v1/file.json",
            "/a/%2e%2ex",
            "/a/x%2f.y",
            "/a/%2f%2f",
        ] {
            assert!(!has_dot_segment(p), "{p}");
        }
    }
}
